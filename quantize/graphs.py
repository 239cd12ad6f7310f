"""Make smaller ONNX graphs with ONNX Runtime's own quantization tools.

Each function reads an fp32 graph and writes one compressed graph; choosing, validating
and recording variants is ``quantize.pipeline``'s job.

* ``int8_dynamic``: ``quantize_dynamic`` — MatMul weights int8 (per-channel optional),
  activations quantized on the fly (DynamicQuantizeLinear + MatMulInteger). Gather
  (embeddings), norms, softmax and attention stay fp32: they are not matmuls with constant
  weights, and quantizing the norms would cost accuracy for no speed. Optionally with one
  activation scale per row (``per_row_activations``) instead of one per call, so that a
  token's logits do not depend on the other tokens it shares a call with.
* ``weight_only``: ``MatMulNBitsQuantizer`` — weights 4- or 8-bit in blocks along the
  input dimension, activations fp32 (or int8 inside the kernel with ``accuracy_level=4``).
  The fastest decode form on CPU (PERF-NOTES §2). Embeddings are quantized too
  (GatherBlockQuantized) and a tied LM head is untied first so that it can be quantized —
  otherwise the fp32 embedding dominates small models and int4 files come out bigger than
  int8 ones. Tables narrower than one block (T5's relative position bias, [buckets, heads])
  stay fp32: a padded block would save nothing and cost accuracy. The LM head can stay at
  8 bits (mixed precision, as llama.cpp and ORT GenAI).
* ``fp16``: ORT's float16 converter, graph inputs/outputs kept fp32, norms and softmax
  kept fp32 where fp16 would overflow.
* ``int8_static``: ``quantize_static`` in QDQ format with calibration data (MinMax,
  Entropy or Percentile); symmetric activations and weights when meant for TensorRT.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgezoo.errors import ExportError


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _save(model: onnx.ModelProto, dst: Path) -> None:
    from edgezoo.onnx_files import save_onnx

    save_onnx(model, dst)


def int8_dynamic(
    src: Path,
    dst: Path,
    per_channel: bool = True,
    with_head: bool = False,
    per_row: bool = False,
) -> dict:
    """``quantize_dynamic`` of every MatMul with a constant weight. ``with_head``: untie a tied
    LM head first (``MatMul(x, Transpose(embedding))`` has no constant weight, so it would
    stay fp32 — a tenth of a decode step at ``small``, measured) so that it is quantized; the
    embedding Gather stays fp32. ``per_row``: quantize activations with one scale per token
    (``per_row_activations``). Returns what was done for the manifest.

    Weights take 7 bits (``reduce_range``): without VNNI (AVX2-only x86) ONNX Runtime's
    int8 kernels add pairs of 8-bit products in 16 bits, which full-range weights overflow
    — measured on an AVX2 host, 10 % of a test matrix's outputs off by up to 181 (exact
    with 7-bit weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    untied = False
    with contextlib.ExitStack() as stack:
        source = src
        if with_head:
            model = onnx.load(str(src))
            merged = merge_head_chunks(model)
            untied = untie_lm_head(model)
            if untied or merged:  # quantize_dynamic reads a file: stage the graph beside dst
                staged = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=dst.parent)))
                source = staged / src.name
                _save(model, source)
            del model
        with _quiet():
            quantize_dynamic(
                str(source),
                str(dst),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                reduce_range=True,
                # The GQA graph's contrib ops defeat shape inference: tensors it cannot type
                # are fp32 (every activation of these graphs is).
                extra_options={
                    "MatMulConstBOnly": True,
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                },
                use_external_data_format=True,  # weights in <name>.data, like every graph we write
            )
        if per_row:
            model = onnx.load(str(dst))
            per_row_activations(model)
            _save(model, dst)
    head = "int8" if untied else "fp32 (tied to the embedding)" if with_head else None
    return {
        "per_channel": per_channel,
        **({"lm_head": head, "untied_lm_head": untied} if head else {}),
        "activation_scales": "per row" if per_row else "per call",
        "weight_bits": 7,
        "kept_fp32": "Gather (embeddings), norms, softmax, attention",
    }


def per_row_activations(model: onnx.ModelProto) -> int:
    """Rewrite each ``DynamicQuantizeLinear`` (one uint8 scale and zero point for the whole
    tensor: a call's every token) as symmetric quantization with one scale per row:
    ``round(127 · x / max|row|) + 128``. The ``MatMulInteger`` consumers are unchanged; the
    row's ``max|row|``, ``[..., 1]``, broadcasts in the ``Mul`` that dequantizes their
    output, whose weight scale takes the 1/127 (one op fewer per input than computing the
    scale). An all-zero row gets 0 · anything = 0, so it needs no guard.

    Why: with one scale per call, a token's logits move (median 0.09 on the trained
    ``small``) when it shares a call with other tokens — speculative checks of several
    guesses, or other requests in a batch — so greedy text changes with how it was batched.
    Per row, a token's integer products are exact and its own. Costs four small ops per
    quantized input. Returns how many were rewritten."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    prefix = "per_row_quant"
    axes, step, zero_point = f"{prefix}.axes", f"{prefix}.step", f"{prefix}.zero_point"
    constants = {step: np.array(1 / 127, np.float32), zero_point: np.array(128, np.uint8)}
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
        constants[axes] = np.array([-1], np.int64)
    nodes, rewritten, replaced = [], 0, set()
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        rewritten += 1
        x, (quantized, row_max, row_zero_point), name = node.input[0], node.output, node.name
        reduce = (
            helper.make_node("ReduceMax", [f"{name}/abs", axes], [row_max], keepdims=1)
            if opset >= 18
            else helper.make_node("ReduceMax", [f"{name}/abs"], [row_max], axes=[-1], keepdims=1)
        )
        nodes += [
            helper.make_node("Abs", [x], [f"{name}/abs"]),
            reduce,
            helper.make_node("Div", [x, row_max], [f"{name}/unit"]),  # in [-1, 1]
            helper.make_node("QuantizeLinear", [f"{name}/unit", step, zero_point], [quantized]),
            helper.make_node("Identity", [zero_point], [row_zero_point]),
        ]
        for user in consumers.get(row_max, []):  # the dequantizing Mul(scale, weight scale)
            if user.op_type != "Mul":
                raise ExportError(f"{name}: its scale feeds a {user.op_type}, not a Mul")
            i, weight_scale = next((i, n) for i, n in enumerate(user.input) if n != row_max)
            scaled = numpy_helper.to_array(inits[weight_scale]) / np.float32(127)
            user.input[i] = f"{weight_scale}/127"
            graph.initializer.append(numpy_helper.from_array(scaled, user.input[i]))
            replaced.add(weight_scale)
    if rewritten:
        for i, node in enumerate(nodes):
            if not node.name:
                node.name = f"{prefix}/{node.op_type}_{i}"
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
        for name in replaced - {i for n in nodes for i in n.input}:
            graph.initializer.remove(inits[name])  # weight scales replaced by their /127
    return rewritten


def untie_lm_head(model: onnx.ModelProto) -> bool:
    """Replace ``MatMul(x, Transpose(embedding))`` with its own transposed initializer."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in list(graph.node):
        if node.op_type == "Transpose" and node.input[0] in inits:
            weight = numpy_helper.to_array(inits[node.input[0]]).T.copy()
            graph.initializer.append(numpy_helper.from_array(weight, "lm_head.weight"))
            for consumer in graph.node:
                for i, name in enumerate(consumer.input):
                    if name == node.output[0]:
                        consumer.input[i] = "lm_head.weight"
            graph.node.remove(node)
            return True
    return False


def merge_head_chunks(model: onnx.ModelProto) -> bool:
    """Join an LM head written in column slices (``export.gqa_graph._lm_head``: MatMuls of
    one input whose outputs a Concat makes ``logits``) back into one ``MatMul`` named
    ``lm_head``, so that quantization sees one head (its bits, its block, untying)."""
    graph = model.graph
    concat = next((n for n in graph.node if n.op_type == "Concat" and "logits" in n.output), None)
    if concat is None:
        return False
    producers = {out: n for n in graph.node for out in n.output}
    inits = {i.name: i for i in graph.initializer}
    parts = [producers.get(name) for name in concat.input]
    if not all(p is not None and p.op_type == "MatMul" and p.input[1] in inits for p in parts):
        return False
    if len({p.input[0] for p in parts}) != 1:
        return False
    weight = np.concatenate([numpy_helper.to_array(inits[p.input[1]]) for p in parts], axis=1)
    at = list(graph.node).index(parts[0])
    for node in [*parts, concat]:
        graph.node.remove(node)
    for p in parts:
        graph.initializer.remove(inits[p.input[1]])
    graph.initializer.append(numpy_helper.from_array(weight, "lm_head.weight"))
    head = helper.make_node("MatMul", [parts[0].input[0], "lm_head.weight"], list(concat.output))
    head.name = "lm_head"
    graph.node.insert(at, head)
    return True


def lm_head_node(model: onnx.ModelProto) -> str | None:
    """The MatMul producing ``logits`` (the LM head), if the graph has one."""
    for node in model.graph.node:
        if node.op_type == "MatMul" and "logits" in node.output:
            return node.name
    return None


def narrow_gathers(model: onnx.ModelProto, block_size: int) -> list[str]:
    """Gather nodes whose constant table is narrower than one quantization block."""
    widths = {i.name: i.dims[-1] for i in model.graph.initializer if i.dims}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Gather" and widths.get(n.input[0], block_size) < block_size
    ]


# Block sizes MatMulNBits quantizes (MLAS); "auto" picks per matrix (``block_sizes``).
BLOCK_SIZES = (256, 128, 64, 32, 16)
AUTO_BLOCK = "auto"
INT4_BLOCK = 32  # int4's auto: GenAI's and llama.cpp's block; wider ones cost int4 accuracy


def widest_block(k: int) -> int:
    """The widest block that divides an input dimension ``k`` (no padded block; 32 when
    none does: the quantizer pads)."""
    return next((b for b in BLOCK_SIZES if k % b == 0), INT4_BLOCK)


def block_sizes(model: onnx.ModelProto, bits: int, block_size: int | str) -> dict[str, int]:
    """Each constant-weight MatMul's block size. A fixed ``block_size`` applies to all.
    ``auto``: int4 keeps 32-wide blocks; int8 takes the widest block dividing each matrix's
    input dimension — an 8-bit code loses little to a wider block (a row of 256 shares one
    scale; per-channel int8, one scale per whole column, is the usual default), and the
    kernel works per block (its int8 activations take one scale per block too): ``medium``
    decoded in 3.85 ms per token against 5.74 ms with blocks of 32 (2 threads, AVX512-VNNI
    host)."""
    fixed = block_size if block_size != AUTO_BLOCK else INT4_BLOCK if bits == 4 else None
    inits = {i.name: i for i in model.graph.initializer}
    sizes = {}
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and len(weight.dims) == 2:
            sizes[node.name] = fixed or widest_block(weight.dims[0])
    return sizes


def _nbits_pass(
    model: onnx.ModelProto,
    bits: int,
    block_size: int,
    symmetric: bool,
    accuracy_level: int,
    ops: tuple[str, ...],
    exclude: list[str],
) -> onnx.ModelProto:
    """One ``MatMulNBitsQuantizer`` pass: every node of ``ops`` not in ``exclude`` (nor
    quantized by an earlier pass)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        nodes_to_exclude=exclude or None,
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    q.process()
    return q.model.model


def weight_only(
    src: Path,
    dst: Path,
    bits: int = 4,
    block_size: int | str = AUTO_BLOCK,
    symmetric: bool = True,
    accuracy_level: int = 4,
    head_bits: int | None = 8,
    embeddings: bool = True,
) -> dict:
    """MatMulNBits weight-only quantization; returns what was done for the manifest.
    ``block_size``: one of ``BLOCK_SIZES``, or ``auto`` (``block_sizes``)."""
    model = onnx.load(str(src))
    merge_head_chunks(model)
    untied = untie_lm_head(model)
    for i, node in enumerate(model.graph.node):  # the passes pick nodes by name
        node.name = node.name or f"{node.op_type}_{i}"
    head = lm_head_node(model)
    split_head = bool(head and head_bits and head_bits != bits)
    main = block_sizes(model, bits, block_size)
    if split_head:
        main.pop(head)
        head_block = block_sizes(model, head_bits, block_size)[head]
    table_block = INT4_BLOCK if block_size == AUTO_BLOCK else int(block_size)
    narrow = narrow_gathers(model, table_block) if embeddings else []
    with _quiet():
        for block in sorted(set(main.values())):
            others = [n for n, b in main.items() if b != block]
            exclude = [*others, *([head] if split_head else [])]
            model = _nbits_pass(model, bits, block, symmetric, accuracy_level, ("MatMul",), exclude)
        if split_head:
            model = _nbits_pass(
                model, head_bits, head_block, symmetric, accuracy_level, ("MatMul",), []
            )
        if embeddings:
            model = _nbits_pass(
                model, bits, table_block, symmetric, accuracy_level, ("Gather",), narrow
            )
    _save(model, dst)
    used = sorted(set(main.values())) or [table_block]
    return {
        "bits": bits,
        "block_size": used[0] if len(used) == 1 else f"per matrix, {used[0]}-{used[-1]}",
        "block_choice": "auto" if block_size == AUTO_BLOCK else "fixed",
        "symmetric": symmetric,
        "accuracy_level": accuracy_level,
        "lm_head_bits": head_bits if split_head else bits if head else None,
        "embeddings_quantized": embeddings,
        "untied_lm_head": untied,
        **({"fp32_tables": len(narrow)} if narrow else {}),
    }


FP16_KEEP_FP32 = [
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "LayerNormalization",
    "SkipLayerNormalization",
    "Softmax",
    "ReduceMean",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Range",
    "CumSum",
]


def fp16(src: Path, dst: Path, keep_io_types: bool = True) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with _quiet():
        model = convert_float_to_float16(
            model,
            keep_io_types=keep_io_types,
            op_block_list=FP16_KEEP_FP32,
            disable_shape_infer=True,
        )
    drop_repeated_nodes(model)
    _save(model, dst)


def drop_repeated_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes identical to an earlier one (name, op, inputs, outputs, attributes);
    returns how many. onnxruntime 1.31's float16 converter adds one Cast per consumer when
    an fp16 tensor feeds several fp32-kept ops (fixed in 1.32), all with one name and
    output: a graph ORT refuses ("two nodes with same node name")."""
    seen: set[bytes] = set()
    kept = []
    for node in model.graph.node:
        key = node.SerializeToString()
        if key not in seen:
            seen.add(key)
            kept.append(node)
    dropped = len(model.graph.node) - len(kept)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return dropped


def int8_static(
    src: Path,
    dst: Path,
    reader,
    method: str = "minmax",
    per_channel: bool = True,
    symmetric: bool = False,
) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "MatMulConstBOnly": True}
    with _quiet():
        quantize_static(
            str(src),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=per_channel,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options=extra,
            use_external_data_format=True,
        )
    return {"calibration": method, "per_channel": per_channel, "symmetric_activations": symmetric}


class FeedReader:
    """``CalibrationDataReader`` over a list of ready-made input dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)
