"""torch → ONNX with PyTorch's own exporter (``torch.onnx.export(dynamo=True)``).

Why the dynamo exporter: it is the maintained one (the TorchScript exporter is
deprecated), it records dynamic dimensions as named symbols, and with ``optimize=True`` its
graph is already folded (~80 nodes per decoder layer before ONNX Runtime's own fusions).

Opset 18: the lowest opset where every op we emit has its current form (``ReduceMean``
with axes as input, ``Split`` with ``num_outputs``), supported by ONNX Runtime ≥ 1.14 and
TensorRT ≥ 8.6, so the portable graph stays portable.

Traps designed around: ``torch.export`` specialises a dimension whose sample size is 0 or
1, so we trace with batch 2, sequence 3 and past 4 — and then prove the axes stayed dynamic
by validating at batch 1, sequence 1 and past 0 (see ``export.validate``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer

if TYPE_CHECKING:
    import onnx_ir

from edgezoo import atomic, manifest
from edgezoo.chat_config import add_default_chat_template
from edgezoo.dirlock import locks_model_dir
from edgezoo.errors import ExportError
from edgezoo.export import validate
from edgezoo.export.gqa_graph import GQA_SHAPES
from edgezoo.export.optimize import optimize_for_ort
from edgezoo.export.provenance import source_commit, versions
from edgezoo.export.wrappers import (
    DecoderForExport,
    classifier_wrapper,
    decoder_inputs,
    encoder_inputs,
)
from edgezoo.io_names import decoder_io_names, encoder_io_names
from edgezoo.memory import ensure_available, release_freed
from edgezoo.model_card import write_card
from edgezoo.onnx_files import data_file, file_facts, io_signature, publish
from edgezoo.progress import stage
from edgezoo.zoo.config import BertConfig, LlamaConfig
from edgezoo.zoo.modeldir import WEIGHTS_FILE, fp32_weight_bytes, load_config, load_model
from edgezoo.zoo.tokenizer import load_tokenizer

OPSET = 18
PORTABLE_FILE = "model.onnx"
OPTIMIZED_FILE = "model.opt.onnx"
GQA_FILE = "model.gqa.onnx"
# Peak resident memory of an export, measured per preset (benchmarks/export_cost.py): the
# model, then one graph at a time (the ORT optimizer holds one in Python protobufs).
EXPORT_MEMORY_FACTOR = 3
EXPORT_MEMORY_OVERHEAD = 1_000_000_000  # torch, the exporter and ORT themselves


@dataclass
class ExportResult:
    model_dir: Path
    variants: dict[str, dict]
    notes: list[str]


def export_portable(model: torch.nn.Module, path: Path, opset: int = OPSET) -> None:
    """Trace ``model`` to ``path`` with dynamic batch, sequence and past length."""
    cfg = model.config
    batch = torch.export.Dim("batch", min=1, max=1024)
    if cfg.family == "lm":
        wrapper = DecoderForExport(model).eval()
        sample = decoder_inputs(cfg, batch=2, seq=3, past=4)
        inputs, outputs = decoder_io_names(cfg.num_hidden_layers)
        seq = torch.export.Dim("sequence_length", min=1, max=cfg.max_position_embeddings)
        past = torch.export.Dim("past_sequence_length", min=0, max=cfg.max_position_embeddings)
        kv = tuple({0: batch, 2: past} for _ in range(2 * cfg.num_hidden_layers))
        dynamic = ({0: batch, 1: seq}, {0: batch, 1: torch.export.Dim.AUTO}, {0: batch, 1: seq}, kv)
        rename = {"attention_mask": {1: "total_sequence_length"}}
        rename.update({name: {2: "total_sequence_length"} for name in outputs[1:]})
    else:
        wrapper = classifier_wrapper(model).eval()
        sample = encoder_inputs(cfg, batch=2, seq=8)
        is_bert = isinstance(cfg, BertConfig)
        inputs, outputs = encoder_io_names(with_token_types=is_bert, with_hidden=is_bert)
        seq = torch.export.Dim("sequence_length", min=1, max=cfg.max_position_embeddings)
        dynamic = tuple({0: batch, 1: seq} for _ in inputs)
        rename = {}
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                tuple(sample),
                dynamo=True,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=dynamic,
                optimize=True,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; name the op and where it failed
        raise ExportError(
            f"torch.onnx.export failed for {type(model).__name__}: {_exporter_summary(e)}"
        ) from e
    _rename_dims(program.model, rename)
    data_file(path).unlink(missing_ok=True)
    # Straight from the exporter's IR to disk with the weights as external data: no
    # protobuf holding every weight (which stops at 2 GB), no second copy of the weights.
    program.save(str(path), external_data=True)
    del program
    _forget_rewriter_state()


def _forget_rewriter_state() -> None:
    """Drop the exported graph that onnxscript's rewriter keeps after ``optimize=True``.

    Its pattern matchers are module-level objects that remember the last graph they
    matched (``_graph``, ``_current_node``, ``_match``); that graph's initializers wrap the
    model's parameters, so without this the whole model stays alive after the export and
    the validation sessions stack on top of it (seen with onnxscript 0.7, onnx-ir 1.1)."""
    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:  # a layout without this class has nothing to forget
        return
    for obj in gc.get_objects():
        if isinstance(obj, SimplePatternMatcher):
            for attr in ("_graph", "_current_node", "_match"):
                if attr in vars(obj):
                    setattr(obj, attr, None)


def _exporter_summary(error: Exception) -> str:
    """The informative lines of an exporter error: the failing op / node and its module."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    keep = [
        line
        for line in lines
        if any(k in line for k in ("aten::", "Unsupported", "node", "op", "layers."))
    ]
    return " | ".join((keep or lines)[:4])[:600] or type(error).__name__


def _rename_dims(model: onnx_ir.Model, rename: dict[str, dict[int, str]]) -> None:
    """Give the exporter's generated symbols (``s53``) the names Optimum uses."""
    import onnx_ir

    for value in [*model.graph.inputs, *model.graph.outputs]:
        axes = rename.get(value.name)
        if not axes or value.shape is None:
            continue
        dims = list(value.shape.dims)
        for axis, name in axes.items():
            dims[axis] = onnx_ir.SymbolicDim(name)
        value.shape = onnx_ir.Shape(dims)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs pages of progress; keep warnings that matter, drop the chatter."""
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass
class _ExportSettings:
    config: LlamaConfig | BertConfig
    opset: int
    tolerance: float
    tokenizer: Tokenizer


@dataclass
class GraphKind:
    """One graph an export writes: how to build and check it, what its manifest entry says.

    Graphs built from the PyTorch model (``needs_model``) are built first; the model is
    then freed, and the rest are built from files and every graph validated against the
    PyTorch reference computed beforehand, so model and ORT session are never both resident.
    """

    variant: str  # manifest name
    file: str
    graph: str  # "portable" | "ort-optimized" | "gqa"
    exporter: str
    backends: list[str]
    build: Callable[[torch.nn.Module | None, Path, _ExportSettings], dict]  # writes the file
    validate: Callable[[Path, validate.Reference, _ExportSettings], dict]
    needs_model: bool = True
    optional: bool = False  # a failure drops this graph with a note instead of the export


def _build_portable(model: torch.nn.Module | None, tmp: Path, s: _ExportSettings) -> dict:
    t0 = time.perf_counter()
    export_portable(model, tmp / PORTABLE_FILE, s.opset)
    return {"export_s": round(time.perf_counter() - t0, 2)}


def _build_optimized(model: torch.nn.Module | None, tmp: Path, s: _ExportSettings) -> dict:
    fusions = optimize_for_ort(tmp / PORTABLE_FILE, tmp / OPTIMIZED_FILE, s.config)
    release_freed()  # the optimizer held the whole graph in Python protobufs
    return {"fusions": fusions}


def _build_gqa(model: torch.nn.Module | None, tmp: Path, s: _ExportSettings) -> dict:
    from edgezoo.export.gqa_graph import build_gqa_decoder

    build_gqa_decoder(model, tmp / GQA_FILE)
    return {}


def _check_portable(tmp: Path, ref: validate.Reference, s: _ExportSettings) -> dict:
    return _validate_portable(tmp / PORTABLE_FILE, ref, s.tolerance, s.tokenizer)


def _check_optimized(tmp: Path, ref: validate.Reference, s: _ExportSettings) -> dict:
    return _validate_portable(tmp / OPTIMIZED_FILE, ref, s.tolerance, s.tokenizer, ort_only=True)


def _check_gqa(tmp: Path, ref: validate.Reference, s: _ExportSettings) -> dict:
    from edgezoo.export.gqa_graph import validate_gqa

    return validate_gqa(tmp / GQA_FILE, ref, s.tolerance, s.tokenizer)


def graph_kinds(
    cfg: LlamaConfig | BertConfig, opset: int, fast: bool, optimize: bool, notes: list[str]
) -> list[GraphKind]:
    """The graphs to write for this model, in build order (later ones may read earlier ones)."""
    gpu_and_cpu = ["ort-cpu", "ort-cuda"]
    kinds = [
        GraphKind(
            "fp32",
            PORTABLE_FILE,
            "portable",
            f"torch.onnx.export(dynamo=True) opset {opset}",
            ["ort-cpu", "ort-cuda", "ort-trt", "tensorrt"],
            _build_portable,
            _check_portable,
        )
    ]
    if optimize:
        kinds.append(
            GraphKind(
                "opt",
                OPTIMIZED_FILE,
                "ort-optimized",
                "onnxruntime.transformers.optimizer on the portable graph",
                gpu_and_cpu,
                _build_optimized,
                _check_optimized,
                needs_model=False,
                optional=True,
            )
        )
    if fast and cfg.family == "lm":
        skipped = gqa_unsupported(cfg)
        if skipped:
            notes.append(f"no GroupQueryAttention graph: {skipped}")
        else:
            kinds.append(
                GraphKind(
                    "gqa",
                    GQA_FILE,
                    "gqa",
                    "edgezoo.export.gqa_graph (onnx.helper, ORT contrib ops)",
                    gpu_and_cpu,
                    _build_gqa,
                    _check_gqa,
                )
            )
    return kinds


@locks_model_dir("export")
def to_onnx(
    model_dir: str | Path,
    opset: int = OPSET,
    tolerance: float = 1e-4,
    greedy_steps: int = 64,
    fast: bool = True,
    optimize: bool = True,
) -> ExportResult:
    """Export ``model_dir`` to ``model_dir/onnx/``, validate, and record it in the manifest.

    Everything is built in a temporary folder and only moved into ``onnx/`` after it
    validated, so a failed export leaves any earlier export untouched.
    """
    model_dir = Path(model_dir)
    if load_config(model_dir).family == "s2s":  # a missing or broken config.json: said first
        from edgezoo.export.seq2seq_export import export_seq2seq

        entry = export_seq2seq(model_dir, opset, tolerance, min(greedy_steps, 32))
        return ExportResult(model_dir, {"fp32": entry}, [])
    weight_bytes = fp32_weight_bytes(model_dir)
    ensure_available(
        EXPORT_MEMORY_FACTOR * weight_bytes + EXPORT_MEMORY_OVERHEAD,
        f"exporting {model_dir.name} ({weight_bytes / 1e9:.2f} GB of fp32 weights)",
    )
    model = load_model(model_dir)
    cfg = model.config
    tokenizer = load_tokenizer(model_dir)
    settings = _ExportSettings(cfg, opset, tolerance, tokenizer)
    out_dir = _writable_onnx_dir(model_dir)
    atomic.ensure_free_disk(out_dir, weight_bytes * (3 if fast else 1), "the ONNX export")
    common = _provenance(model_dir)
    variants: dict[str, dict] = {}
    notes: list[str] = []
    kinds = graph_kinds(cfg, opset, fast, optimize, notes)
    with_gqa = any(k.graph == "gqa" for k in kinds)
    ref = validate.reference(
        model, tokenizer.get_vocab_size(), greedy_steps, GQA_SHAPES if with_gqa else None
    )
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        tmp = Path(tmp)
        built = _build_from_model(kinds, model, tmp, settings, model_dir.name)
        del model  # from here on only files: the graphs and the reference outputs
        release_freed()
        for kind in kinds:
            try:
                with stage(f"export {model_dir.name}: check the {kind.graph} graph"):
                    facts = (
                        built[kind.variant] if kind.needs_model else kind.build(None, tmp, settings)
                    )
                    entry = {**kind.validate(tmp, ref, settings), **facts}
                release_freed()  # the session is gone; do not let the next one stack on it
            except ExportError as e:
                if not kind.optional:
                    raise
                notes.append(f"{kind.graph} graph dropped: {e}")  # keep the others
                continue
            entry.update(
                file=kind.file,
                graph=kind.graph,
                precision="fp32",
                exporter=kind.exporter,
                backends=kind.backends,
                **io_signature(tmp / kind.file),
                **common,
                **file_facts(tmp / kind.file),
            )
            variants[kind.variant] = entry
        for entry in variants.values():  # all validated: move them in (renames)
            publish(tmp / entry["file"], out_dir)
    for name, entry in variants.items():
        manifest.add_variant(
            model_dir,
            name,
            entry,
            recording=tuple(variants),
            model_type=cfg.to_hf_dict()["model_type"],
            family=cfg.family,
            export_notes=notes,
        )
    if cfg.family == "lm" and add_default_chat_template(model_dir):
        notes.append("added the zoo's default chat template to tokenizer_config.json")
    write_card(model_dir)  # the card's variants table now lists the new graphs
    return ExportResult(model_dir, variants, notes)


def _build_from_model(
    kinds: list[GraphKind], model: torch.nn.Module, tmp: Path, s: _ExportSettings, name: str
) -> dict[str, dict]:
    """Build the graphs that need the PyTorch model (one progress stage each)."""
    built = {}
    for k in kinds:
        if k.needs_model:
            with stage(f"export {name}: build the {k.graph} graph"):
                built[k.variant] = k.build(model, tmp, s)
    return built


def _writable_onnx_dir(model_dir: Path) -> Path:
    out_dir = manifest.onnx_dir(model_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(
            f"cannot create {out_dir} ({e.strerror}); make the model dir writable."
        ) from e
    if not os.access(out_dir, os.W_OK):
        raise ExportError(
            f"{out_dir} is not writable; fix its permissions or copy the model dir somewhere writable."
        )
    return out_dir


def _provenance(model_dir: Path) -> dict:
    return {
        "source_weights_sha256": atomic.sha256_file(model_dir / WEIGHTS_FILE),
        "source_commit": source_commit(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def gqa_unsupported(cfg: LlamaConfig) -> str | None:
    """Why ORT's GroupQueryAttention cannot run this model (None when it can)."""
    if cfg.head_dim % 16:
        return f"head_dim {cfg.head_dim} is not a multiple of 16 (GroupQueryAttention needs that)"
    return None


def _validate_portable(
    path: Path,
    ref: validate.Reference,
    tolerance: float,
    tokenizer: Tokenizer,
    ort_only: bool = False,
) -> dict:
    validate.check_graph(path, ort_only)
    sess = validate.session(path)
    result = validate.compare_outputs(sess, ref.portable, tolerance)
    if ref.greedy_tokens:
        mismatch = validate.first_greedy_mismatch(ref, sess, "portable", tokenizer)
        if mismatch is not None:
            raise ExportError(
                f"greedy decoding through the ONNX KV cache diverged from PyTorch at step {mismatch}."
            )
        result.greedy_steps = len(ref.greedy_tokens)
    return result.as_dict()
