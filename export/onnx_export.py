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
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from edgezoo import atomic, manifest
from edgezoo.errors import ExportError
from export import validate
from export.optimize import optimize_for_ort
from export.wrappers import (
    DecoderForExport,
    classifier_wrapper,
    decoder_inputs,
    decoder_io_names,
    encoder_inputs,
    encoder_io_names,
)
from zoo.config import BertConfig, LlamaConfig
from zoo.modeldir import WEIGHTS_FILE, load_model
from zoo.tokenizer import load_tokenizer

OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf's hard limit is 2 GB
PORTABLE_FILE = "model.onnx"


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


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Save, with weights in ``<name>.data`` beside it when the graph is too big for protobuf."""
    if proto.ByteSize() > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
        )
    else:
        onnx.save_model(proto, str(path))


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


def io_signature(path: Path) -> dict[str, list]:
    model = onnx.load(str(path), load_external_data=False)

    def sig(values):
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return {
        "inputs": sig(model.graph.input),
        "outputs": sig(model.graph.output),
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }


def file_facts(path: Path) -> dict:
    files = [
        path,
        *(
            [path.with_name(path.name + ".data")]
            if path.with_name(path.name + ".data").exists()
            else []
        ),
    ]
    return {"sha256": atomic.sha256_file(path), "bytes": sum(f.stat().st_size for f in files)}


def versions() -> dict[str, str]:
    import onnxruntime
    import onnxscript

    import edgezoo

    return {
        "edgezoo": edgezoo.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
    }


def source_commit() -> str | None:
    """The edgezoo git commit that produced an artifact, when running from a checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


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
    vocab = load_tokenizer(model_dir).get_vocab_size()
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
    atomic.ensure_free_disk(
        out_dir,
        sum(p.numel() * 4 for p in model.parameters()) * (3 if fast else 1),
        "the ONNX export",
    )
    common = {
        "source_weights_sha256": atomic.sha256_file(model_dir / WEIGHTS_FILE),
        "source_commit": source_commit(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    variants: dict[str, dict] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        export_portable(model, tmp / PORTABLE_FILE, opset)
        entry = _validate_portable(model, tmp / PORTABLE_FILE, tolerance, greedy_steps, vocab)
        entry.update(
            file=PORTABLE_FILE,
            graph="portable",
            precision="fp32",
            exporter=f"torch.onnx.export(dynamo=True) opset {opset}",
            export_s=round(time.perf_counter() - t0, 2),
            backends=["ort-cpu", "ort-cuda", "ort-trt", "tensorrt"],
            **io_signature(tmp / PORTABLE_FILE),
            **common,
        )
        variants["fp32"] = entry
        if optimize:
            opt_file = "model.opt.onnx"
            fusions = optimize_for_ort(tmp / PORTABLE_FILE, tmp / opt_file, model.config)
            try:
                opt_entry = _validate_portable(
                    model, tmp / opt_file, tolerance, greedy_steps, vocab, ort_only=True
                )
            except ExportError as e:  # keep the portable graph; say why the fused one was dropped
                notes.append(f"ORT-optimized graph dropped: {e}")
            else:
                opt_entry.update(
                    file=opt_file,
                    graph="ort-optimized",
                    precision="fp32",
                    fusions=fusions,
                    exporter="onnxruntime.transformers.optimizer on the portable graph",
                    backends=["ort-cpu", "ort-cuda"],
                    **io_signature(tmp / opt_file),
                    **common,
                )
                variants["opt"] = opt_entry
        skipped = (
            gqa_unsupported(model.config)
            if fast and model.config.family == "lm"
            else "not a decoder"
        )
        if fast and not skipped:
            from export.gqa_graph import build_gqa_decoder, validate_gqa

            gqa_file = "model.gqa.onnx"
            build_gqa_decoder(model, tmp / gqa_file)
            gqa = validate_gqa(model, tmp / gqa_file, tolerance, greedy_steps, vocab)
            gqa.update(
                file=gqa_file,
                graph="gqa",
                precision="fp32",
                exporter="edgezoo.export.gqa_graph (onnx.helper, ORT contrib ops)",
                backends=["ort-cpu", "ort-cuda"],
                **io_signature(tmp / gqa_file),
                **common,
            )
            variants["gqa"] = gqa
        elif fast and model.config.family == "lm":
            notes.append(f"no GroupQueryAttention graph: {skipped}")
        for entry in variants.values():
            entry.update(file_facts(tmp / entry["file"]))
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


def gqa_unsupported(cfg: LlamaConfig) -> str | None:
    """Why ORT's GroupQueryAttention cannot run this model (None when it can)."""
    if cfg.head_dim % 16:
        return f"head_dim {cfg.head_dim} is not a multiple of 16 (GroupQueryAttention needs that)"
    return None


def _validate_portable(
    model, path: Path, tolerance: float, greedy_steps: int, vocab: int, ort_only: bool = False
) -> dict:
    validate.check_graph(path, ort_only)
    sess = validate.session(path)
    result = validate.compare_logits(model, sess, tolerance, vocab)
    if model.config.family == "lm" and greedy_steps:
        steps, mismatch = validate.compare_greedy(
            model,
            lambda p, n: validate.greedy_tokens_onnx(sess, model.config, p, n),
            greedy_steps,
            vocab,
        )
        if mismatch is not None:
            raise ExportError(
                f"greedy decoding through the ONNX KV cache diverged from PyTorch at step {mismatch}."
            )
        result.greedy_steps = steps
    return result.as_dict()
