"""The fast decoder graph for ONNX Runtime: fused ops and an in-place KV cache.

A straight torch export of a Llama layer is ~80 nodes that concatenate the KV cache every
step. ONNX Runtime has contrib ops for exactly this architecture, the ones ONNX Runtime
GenAI's model builder emits; per layer this graph is about a dozen nodes:

    SkipSimplifiedLayerNormalization (residual add + RMSNorm) → MatMul (packed QKV)
    → GroupQueryAttention (rotary fused, causal mask from seqlens, KV cache)
    → MatMul (o_proj) → SkipSimplifiedLayerNormalization → SwiGLU MLP (3 MatMul)

GroupQueryAttention takes ``past_key_values.*`` as a buffer preallocated to the maximum
length: when the runtime binds ``present.*`` to the same buffer, the kernel writes the
new keys in place and nothing is copied per step. ``attention_mask`` only supplies the
valid lengths (``seqlens_k = sum(mask) - 1``, ``total_sequence_length``), so prompts in a
batch are right-padded and positions follow from the lengths.

No library writes this graph from a plain PyTorch module (optimum and the ORT transformer
optimizer do not fuse the dynamo export into GroupQueryAttention; ORT GenAI's builder
needs its own package and reloads the weights through transformers), so it is built here
from the weights with ``onnx.helper`` and validated against PyTorch like any export.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from tokenizers import Tokenizer

from edgezoo import io_names
from edgezoo.errors import ExportError
from edgezoo.export import validate
from edgezoo.onnx_files import WeightWriter
from edgezoo.zoo.config import LlamaConfig

MS = "com.microsoft"
# GroupQueryAttention cannot continue a multi-token prompt on a batch > 1 (ORT refuses
# "batch_size must be 1 when sequence_length > 1 and past context is given").
GQA_SHAPES = [(1, 1, 0), (2, 7, 0), (1, 1, 9), (1, 4, 5), (2, 1, 33)]


class GraphBuilder:
    """Tiny helper: name nodes, stream initializers to the data file, emit a model."""

    def __init__(self, weights: WeightWriter) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.weights = weights
        self._n = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(self.weights.tensor(name, array))
        return name

    def op(
        self,
        op_type: str,
        inputs: list[str],
        n_out: int = 1,
        domain: str = "",
        name: str | None = None,
        **attrs,
    ) -> list[str]:
        self._n += 1
        name = name or f"{op_type}_{self._n}"
        outputs = [f"{name}/out{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attrs)
        )
        return outputs


def _weight(t: torch.Tensor) -> np.ndarray:
    """nn.Linear stores [out, in]; MatMul wants [in, out]."""
    return t.detach().float().numpy().T.copy()


def _rms_norm(g: GraphBuilder, x: str, weight: str, eps: float) -> str:
    """The first layer's RMSNorm (later ones fuse with the residual add): ORT's
    SimplifiedLayerNormalization, one kernel where standard ops (until RMSNormalization in
    opset 23) take seven, each a dispatch that small models pay for on every token."""
    return g.op(
        "SimplifiedLayerNormalization",
        [x, weight],
        axis=-1,
        epsilon=eps,
        stash_type=1,
        name="layers.0.input_layernorm",
    )[0]


class _Attention(NamedTuple):
    """What every layer's GroupQueryAttention shares, computed once from the mask."""

    seqlens_k: str
    total_sequence_length: str
    cos_cache: str
    sin_cache: str


def build_gqa_decoder(model: torch.nn.Module, path: Path, opset: int = 18) -> None:
    """Write ``model`` (a zoo Llama) as the fused GroupQueryAttention graph at ``path``."""
    cfg: LlamaConfig = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    weights = WeightWriter(path)
    try:
        proto = _build(GraphBuilder(weights), cfg, sd, model, opset)
    finally:
        weights.close()
    onnx.save_model(proto, str(path))  # the graph only: every weight is in the data file


def _build(
    g: GraphBuilder, cfg: LlamaConfig, sd: dict, model: torch.nn.Module, opset: int
) -> onnx.ModelProto:
    shared = _attention_inputs(g, cfg, model.model.rotary_emb.inv_freq.float().numpy())
    embed = g.const("model.embed_tokens.weight", sd["model.embed_tokens.weight"].numpy())
    hidden = g.op("Gather", [embed, io_names.INPUT_IDS], name="embed_tokens")[0]
    first_norm = "model.layers.0.input_layernorm.weight"
    residual = hidden
    normed = _rms_norm(g, hidden, g.const(first_norm, sd[first_norm].numpy()), cfg.rms_norm_eps)
    for i in range(cfg.num_hidden_layers):
        attn = _attention_block(g, sd, cfg, i, normed, shared)
        normed, residual = _skip_norm(
            g,
            sd,
            attn,
            residual,
            f"model.layers.{i}.post_attention_layernorm",
            cfg.rms_norm_eps,
            name=f"layers.{i}.post_attention_layernorm",
        )
        mlp = _mlp_block(g, sd, i, normed)
        last = i + 1 == cfg.num_hidden_layers
        normed, residual = _skip_norm(
            g,
            sd,
            mlp,
            residual,
            "model.norm" if last else f"model.layers.{i + 1}.input_layernorm",
            cfg.rms_norm_eps,
            name="final_norm" if last else f"layers.{i + 1}.input_layernorm",
        )
    if cfg.tie_word_embeddings:  # one copy on disk; ORT folds the transpose at load
        head = g.op("Transpose", [embed], perm=[1, 0], name="lm_head.transpose")[0]
        g.op("MatMul", [_logits_positions(g, normed), head], name="lm_head")
    else:
        _lm_head(g, _logits_positions(g, normed), _weight(sd["lm_head.weight"]))
    g.nodes[-1].output[0] = io_names.LOGITS

    inputs, outputs = _graph_io(cfg)
    inputs.append(
        helper.make_tensor_value_info(io_names.LOGITS_FROM, TensorProto.INT64, [1])
    )  # its initializer (0) is the default a caller may override
    graph = helper.make_graph(g.nodes, "edgezoo-llama-gqa", inputs, outputs, g.inits)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
        producer_name="edgezoo",
    )
    proto.ir_version = 9
    return proto


# The largest LM head weight written as one MatMul; a larger one is split by columns.
HEAD_CHUNK_BYTES = 32 * 2**20


def _lm_head(g: GraphBuilder, x: str, weight: np.ndarray) -> None:
    """An untied LM head ``[hidden, vocab]``: column slices of at most ``HEAD_CHUNK_BYTES``,
    their logits concatenated. Why: ONNX Runtime prepacks each MatMul weight at load,
    holding the weight's file pages and its packed copy at once, and the head is by far the
    largest weight (``medium``: 98 MB of 499) — in one piece it put ~60 MB on the load's
    peak memory that decoding never needs again (``medium`` fp32, a fresh process that loads
    and decodes: 557 → 495 MB peak in three pieces, decode step unchanged). The quantizers
    join the pieces first (``quantize.graphs.merge_head_chunks``)."""
    chunks = -(-weight.nbytes // HEAD_CHUNK_BYTES)
    if chunks <= 1:
        g.op("MatMul", [x, g.const("lm_head.weight", weight)], name="lm_head")
        return
    parts = [
        g.op(
            "MatMul",
            [x, g.const(f"lm_head.weight.{i}", np.ascontiguousarray(w))],
            name=f"lm_head.{i}",
        )[0]
        for i, w in enumerate(np.array_split(weight, chunks, axis=1))
    ]
    g.op("Concat", parts, axis=-1, name="lm_head")


def _logits_positions(g: GraphBuilder, normed: str) -> str:
    """The final hidden states from position ``logits_from`` on (a Slice on the sequence
    axis). A prompt's next token needs only its last position's logits: computing all of
    them is a [prompt, vocabulary] matrix product and output (512 tokens × 32k vocabulary:
    65 MB) thrown away — measured 12–33 % of a 512-token prefill at ``medium``. The input
    defaults to 0 (every position), which validation, scoring and speculative checks need."""
    start = g.const(io_names.LOGITS_FROM, np.array([0], np.int64))
    end = g.const("logits_positions.end", np.array([np.iinfo(np.int64).max], np.int64))
    axis = g.const("logits_positions.axis", np.array([1], np.int64))
    return g.op("Slice", [normed, start, end, axis], name="logits_positions")[0]


def _attention_inputs(g: GraphBuilder, cfg: LlamaConfig, inv_freq: np.ndarray) -> _Attention:
    """seqlens_k and total_sequence_length from the mask (so prompts in a batch can be
    right-padded), and the rotary cos/sin tables for every position of the context."""
    one = g.const("one", np.array([1], np.int64))
    mask = io_names.ATTENTION_MASK
    row_sums = g.op("ReduceSum", [mask, one], keepdims=0, name="mask_row_sums")[0]
    seqlens = g.op(
        "Cast",
        [g.op("Sub", [row_sums, one], name="seqlens_k_i64")[0]],
        to=TensorProto.INT32,
        name="seqlens_k",
    )[0]
    total = g.op("Shape", [mask], name="mask_shape")[0]
    total = g.op(
        "Gather", [total, g.const("axis1", np.array(1, np.int64))], axis=0, name="total_len_i64"
    )[0]
    total = g.op("Cast", [total], to=TensorProto.INT32, name="total_sequence_length")[0]
    positions = np.arange(cfg.max_position_embeddings, dtype=np.float32)[:, None]
    freqs = positions * inv_freq[None, :]
    cos = g.const("cos_cache", np.cos(freqs).astype(np.float32))
    sin = g.const("sin_cache", np.sin(freqs).astype(np.float32))
    return _Attention(seqlens, total, cos, sin)


def _linear(g: GraphBuilder, sd: dict, x: str, weight: str, name: str) -> str:
    return g.op("MatMul", [x, g.const(weight, _weight(sd[weight]))], name=name)[0]


def _attention_block(
    g: GraphBuilder, sd: dict, cfg: LlamaConfig, i: int, normed: str, shared: _Attention
) -> str:
    """Packed QKV MatMul → GroupQueryAttention (rotary fused, cache in place) → o_proj."""
    p = f"model.layers.{i}.self_attn"
    qkv_w = np.concatenate([_weight(sd[f"{p}.{n}_proj.weight"]) for n in ("q", "k", "v")], axis=1)
    qkv = g.op(
        "MatMul", [normed, g.const(f"{p}.qkv_proj.weight", qkv_w)], name=f"layers.{i}.qkv_proj"
    )[0]
    past_key, past_value = io_names.past_names(cfg.num_hidden_layers)[2 * i : 2 * i + 2]
    attn, _, _ = g.op(
        "GroupQueryAttention",
        [qkv, "", "", past_key, past_value, *shared],
        n_out=3,
        domain=MS,
        name=f"layers.{i}.attn",
        num_heads=cfg.num_attention_heads,
        kv_num_heads=cfg.num_key_value_heads,
        do_rotary=1,
        rotary_interleaved=0,
        scale=float(1.0 / np.sqrt(cfg.head_dim)),
    )
    g.nodes[-1].output[1] = io_names.present_of(past_key)
    g.nodes[-1].output[2] = io_names.present_of(past_value)
    return _linear(g, sd, attn, f"{p}.o_proj.weight", f"layers.{i}.o_proj")


def _mlp_block(g: GraphBuilder, sd: dict, i: int, normed: str) -> str:
    """SwiGLU: down(silu(gate(x)) * up(x)), silu as x * sigmoid(x)."""
    p = f"model.layers.{i}.mlp"
    gate = _linear(g, sd, normed, f"{p}.gate_proj.weight", f"layers.{i}.gate_proj")
    up = _linear(g, sd, normed, f"{p}.up_proj.weight", f"layers.{i}.up_proj")
    act = g.op(
        "Mul",
        [gate, g.op("Sigmoid", [gate], name=f"layers.{i}.sigmoid")[0]],
        name=f"layers.{i}.silu",
    )[0]
    down_in = g.op("Mul", [act, up], name=f"layers.{i}.swiglu")[0]
    return _linear(g, sd, down_in, f"{p}.down_proj.weight", f"layers.{i}.down_proj")


def _skip_norm(
    g: GraphBuilder, sd: dict, x: str, residual: str, norm: str, eps: float, name: str
) -> tuple[str, str]:
    """Residual add + RMSNorm in one kernel; returns (normed, new residual)."""
    weight = f"{norm}.weight"
    normed, _, _, residual = g.op(
        "SkipSimplifiedLayerNormalization",
        [x, residual, g.const(weight, sd[weight].numpy())],
        n_out=4,
        domain=MS,
        epsilon=eps,
        name=name,
    )
    return normed, residual


def _graph_io(cfg: LlamaConfig) -> tuple[list, list]:
    """Inputs and outputs with Optimum's names and dim symbols; no position_ids (the kernel
    derives positions from the mask)."""
    hd, kv_heads = cfg.head_dim, cfg.num_key_value_heads
    batch, seq, total = io_names.BATCH, io_names.SEQUENCE, io_names.TOTAL_SEQUENCE
    value = helper.make_tensor_value_info
    inputs = [
        value(io_names.INPUT_IDS, TensorProto.INT64, [batch, seq]),
        value(io_names.ATTENTION_MASK, TensorProto.INT64, [batch, total]),
    ]
    outputs = [value(io_names.LOGITS, TensorProto.FLOAT, [batch, seq, cfg.vocab_size])]
    for name in io_names.past_names(cfg.num_hidden_layers):
        inputs.append(value(name, TensorProto.FLOAT, [batch, kv_heads, io_names.PAST_SEQUENCE, hd]))
        outputs.append(
            value(io_names.present_of(name), TensorProto.FLOAT, [batch, kv_heads, total, hd])
        )
    return inputs, outputs


def validate_gqa(
    path: Path, ref: validate.Reference, tolerance: float, tokenizer: Tokenizer
) -> dict:
    """Same checks as the portable graph (``ref.gqa`` cases: no position ids), plus greedy
    decoding through the runtime's shared buffer cache (``SharedBufferCache``, as deployed)."""
    validate.check_graph(path)
    sess = validate.session(path)
    result = validate.compare_outputs(sess, ref.gqa, tolerance, what="GQA graph")
    if ref.greedy_tokens:
        mismatch = validate.first_greedy_mismatch(ref, sess, "gqa", tokenizer)
        if mismatch is not None:
            raise ExportError(
                f"greedy decoding through the GQA graph's in-place cache diverged from PyTorch at step {mismatch}."
            )
        result.greedy_steps = len(ref.greedy_tokens)
    entry = result.as_dict()
    entry["kv_cache"] = "shared past/present buffer of max length (bind present to past)"
    return entry
