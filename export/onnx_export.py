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
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from tokenizers import Tokenizer

from edgezoo import atomic, manifest
from edgezoo.errors import ExportError
from edgezoo.export import validate
from edgezoo.export.optimize import optimize_for_ort
from edgezoo.export.provenance import source_commit, versions
from edgezoo.export.wrappers import (
    DecoderForExport,
    classifier_wrapper,
    decoder_inputs,
    encoder_inputs,
)
from edgezoo.io_names import decoder_io_names, encoder_io_names
from edgezoo.onnx_files import file_facts, io_signature, save_onnx
from edgezoo.zoo.config import BertConfig, LlamaConfig
from edgezoo.zoo.modeldir import WEIGHTS_FILE, load_model
from edgezoo.zoo.tokenizer import load_tokenizer

OPSET = 18
PORTABLE_FILE = "model.onnx"
OPTIMIZED_FILE = "model.opt.onnx"
GQA_FILE = "model.gqa.onnx"


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
        inputs, outputs = encoder_io_names(with_token_types=isinstance(cfg, BertConfig))
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
    proto = program.model_proto
    _rename_dims(proto, rename)
    save_onnx(proto, path)


def _exporter_summary(error: Exception) -> str:
    """The informative lines of an exporter error: the failing op / node and its module."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    keep = [
        line
        for line in lines
        if any(k in line for k in ("aten::", "Unsupported", "node", "op", "layers."))
    ]
    return " | ".join((keep or lines)[:4])[:600] or type(error).__name__


def _rename_dims(proto: onnx.ModelProto, rename: dict[str, dict[int, str]]) -> None:
    """Give the exporter's generated symbols (``s53``) the names Optimum uses."""
    for value in [*proto.graph.input, *proto.graph.output]:
        for axis, name in rename.get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_param = name


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
    opset: int
    tolerance: float
    greedy_steps: int
    tokenizer: Tokenizer


@dataclass
class GraphKind:
    """One graph an export writes: how to build it, and what its manifest entry says."""

    variant: str  # manifest name
    file: str
    graph: str  # "portable" | "ort-optimized" | "gqa"
    exporter: str
    backends: list[str]
    build: Callable[[torch.nn.Module, Path, _ExportSettings], dict]  # writes + validates
    optional: bool = False  # a failure drops this graph with a note instead of the export


def _build_portable(model: torch.nn.Module, tmp: Path, s: _ExportSettings) -> dict:
    t0 = time.perf_counter()
    export_portable(model, tmp / PORTABLE_FILE, s.opset)
    entry = _validate_portable(model, tmp / PORTABLE_FILE, s.tolerance, s.greedy_steps, s.tokenizer)
    return {**entry, "export_s": round(time.perf_counter() - t0, 2)}


def _build_optimized(model: torch.nn.Module, tmp: Path, s: _ExportSettings) -> dict:
    fusions = optimize_for_ort(tmp / PORTABLE_FILE, tmp / OPTIMIZED_FILE, model.config)
    entry = _validate_portable(
        model, tmp / OPTIMIZED_FILE, s.tolerance, s.greedy_steps, s.tokenizer, ort_only=True
    )
    return {**entry, "fusions": fusions}


def _build_gqa(model: torch.nn.Module, tmp: Path, s: _ExportSettings) -> dict:
    from edgezoo.export.gqa_graph import build_gqa_decoder, validate_gqa

    build_gqa_decoder(model, tmp / GQA_FILE)
    return validate_gqa(model, tmp / GQA_FILE, s.tolerance, s.greedy_steps, s.tokenizer)


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
                )
            )
    return kinds


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
    model = load_model(model_dir)
    settings = _ExportSettings(opset, tolerance, greedy_steps, load_tokenizer(model_dir))
    out_dir = _writable_onnx_dir(model_dir)
    atomic.ensure_free_disk(
        out_dir,
        sum(p.numel() * 4 for p in model.parameters()) * (3 if fast else 1),
        "the ONNX export",
    )
    common = _provenance(model_dir)
    variants: dict[str, dict] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        tmp = Path(tmp)
        for kind in graph_kinds(model.config, opset, fast, optimize, notes):
            try:
                entry = kind.build(model, tmp, settings)
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
        for entry in variants.values():  # all validated: move them in (a rename each)
            for f in (entry["file"], entry["file"] + ".data"):
                if (tmp / f).exists():
                    shutil.move(str(tmp / f), str(out_dir / f))
    for name, entry in variants.items():
        manifest.add_variant(
            model_dir,
            name,
            entry,
            model_type=model.config.to_hf_dict()["model_type"],
            family=model.config.family,
            export_notes=notes,
        )
    return ExportResult(model_dir, variants, notes)


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
    model,
    path: Path,
    tolerance: float,
    greedy_steps: int,
    tokenizer: Tokenizer,
    ort_only: bool = False,
) -> dict:
    validate.check_graph(path, ort_only)
    sess = validate.session(path)
    vocab = tokenizer.get_vocab_size()
    result = validate.compare_logits(model, sess, tolerance, vocab)
    if model.config.family == "lm" and greedy_steps:
        steps, mismatch = validate.compare_greedy(
            model,
            lambda p, n: validate.runtime_greedy(sess, "portable", model, tokenizer, p, n),
            greedy_steps,
            vocab,
        )
        if mismatch is not None:
            raise ExportError(
                f"greedy decoding through the ONNX KV cache diverged from PyTorch at step {mismatch}."
            )
        result.greedy_steps = steps
    return result.as_dict()
