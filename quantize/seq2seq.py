"""Quantized variants of an encoder–decoder (s2s) export: its three graphs as one variant.

An s2s export is three graphs (Optimum's ``encoder_model`` / ``decoder_model`` /
``decoder_with_past_model``, see ``export.seq2seq_export``) recorded as one manifest
variant whose ``graphs`` names them. A quantized variant is the same three graphs, each
made by the method the LM path uses (``quantize.graphs``) and written as
``encoder_model.<variant>.onnx`` & co. beside the fp32 ones. All three are built in one
staging folder and checked together — the encoder output fed to the first decoder step,
its cache to the cached step, logits compared with fp32's at both steps — before any is
published: a variant is never half replaced.

Only methods without calibration are offered: weight-only MatMulNBits int8 / int4 (the
fast CPU decode form) and fp16. Static int8 would need calibration feeds for each graph's
own inputs (encoder states, cross-attention caches), which the LM path does not make.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgezoo import io_names, manifest
from edgezoo.errors import CheckpointError, ConfigError, EdgeZooError, ExportError
from edgezoo.onnx_files import file_facts, io_signature, publish
from edgezoo.progress import stage

METHODS = {"int8": "weight-only-8", "int4": "weight-only-4", "fp16": "fp16"}
ROLES = ("encoder", "decoder", "decoder_with_past")
CHECK_PAIRS = 8  # held-out sources the logit check runs

# Builds one graph: (fp32 graph, where to write it) -> what was done, for the manifest.
MakeFn = Callable[[Path, Path], dict]


def plan(variants: dict[str, dict], to: str) -> list[tuple[str, str, str]]:
    """(variant name, source variant, method) for ``--to`` on an s2s export."""
    if "fp32" not in variants or "graphs" not in variants["fp32"]:
        raise CheckpointError(
            "no fp32 encoder-decoder graphs to quantize; run `edgezoo export` first."
        )
    if to not in METHODS:
        raise ConfigError(
            f"--to {to} is not available for an encoder-decoder (s2s) model: it needs "
            f"calibration inputs for three graphs. Choose one of {', '.join(METHODS)}."
        )
    return [(to, "fp32", METHODS[to])]


def variant_file(fp32_file: str, name: str) -> str:
    """``encoder_model.onnx`` -> ``encoder_model.int8.onnx`` (as ``model.int8.onnx``)."""
    stem = fp32_file.removesuffix(".onnx")
    return f"{stem}.{name}.onnx"


def graph_paths(model_dir: Path, entry: dict) -> dict[str, Path]:
    """role -> path of each graph an s2s variant names."""
    folder = manifest.onnx_dir(model_dir)
    graphs = entry.get("graphs") or {}
    missing = [r for r in ROLES if r not in graphs]
    if missing:
        raise CheckpointError(
            f"{model_dir}: the s2s variant names no {missing[0]} graph; re-run `edgezoo export`."
        )
    return {role: folder / graphs[role]["file"] for role in ROLES}


def build_variant(
    model_dir: Path,
    name: str,
    source: str,
    method: str,
    make: MakeFn,
    tolerance: float,
    precision: str,
    backends: list[str],
    check_sources: list[list[int]] | None = None,
) -> dict:
    """Build, check and publish the three graphs of ``name``; return its manifest entry.

    ``check_sources``: token ids of a few held-out sources for the logit check."""
    src_entry = manifest.read(model_dir)["variants"][source]
    sources = graph_paths(model_dir, src_entry)
    onnx_dir = manifest.onnx_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=onnx_dir) as tmp:
        staged = {
            role: Path(tmp) / variant_file(src_entry["graphs"][role]["file"], name)
            for role in ROLES
        }
        t0 = time.perf_counter()
        details = {}
        for role in ROLES:
            with stage(f"quantize {model_dir.name}: {name} {role} graph from {source} ({method})"):
                details[role] = _made(make, sources[role], staged[role], role)
        build_s = time.perf_counter() - t0
        delta = logit_delta(sources, staged, check_sources)
        if not delta <= tolerance:
            raise ExportError(
                f"{name}: logits moved by {delta:.2f} vs {source} (limit {tolerance}); "
                "variant not written."
            )
        graphs = {
            role: {"file": staged[role].name, **io_signature(path), **file_facts(path)}
            for role, path in staged.items()
        }
        for path in staged.values():
            publish(path, onnx_dir)
    return {
        "file": graphs["decoder"]["file"],
        "aliases": [graphs["encoder"]["file"], graphs["decoder_with_past"]["file"]],
        "graph": src_entry.get("graph", "portable"),
        "precision": precision,
        "method": method,
        "source_variant": source,
        "backends": backends,
        "graphs": graphs,
        "quantization": details["decoder"],
        "max_abs_diff_vs_fp32": delta,
        "build_s": round(build_s, 2),
        "sha256": graphs["decoder"]["sha256"],  # as the fp32 entry: the decoder's
        "bytes": sum(g["bytes"] for g in graphs.values()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def check_sources(model_dir: Path, pairs: list[tuple[str, str]], longest: int) -> list[list[int]]:
    """Token ids of the first held-out sources, cut as training cut them."""
    from edgezoo.runtime.api import load_tokenizer

    tok = load_tokenizer(model_dir)
    return [e.ids[:longest] or [0] for e in tok.encode_batch([s for s, _ in pairs[:CHECK_PAIRS]])]


def _made(make: MakeFn, src: Path, dst: Path, role: str) -> dict:
    """``make``, with a failure to read or convert the source graph said in one line."""
    try:
        return make(src, dst)
    except EdgeZooError:
        raise
    except Exception as e:  # onnx / protobuf / ORT's quantizer raise many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(
            f"could not quantize the {role} graph {src.name} ({first}); if it is damaged, "
            "re-run `edgezoo export`."
        ) from e


# Sources when no held-out pairs are at hand: fixed ids, the same for every model.
FIXED_SOURCES = [[5, 17, 42, 99, 7, 64, 23, 11, 8], [9, 30, 12, 4, 4, 4]]


def logit_delta(
    reference: dict[str, Path], candidate: dict[str, Path], sources: list[list[int]] | None = None
) -> float:
    """Max |Δ logits| of the first and the cached decoder step on a batch of ``sources``
    (held-out ones where the caller has them: logits on inputs the model never saw move
    more than on its own data): a sanity check that the three graphs load, fit together
    and still compute the same model. Quality is judged on held-out pairs afterwards."""
    sources = sources or FIXED_SOURCES
    ref, cand = _two_steps(reference, sources), _two_steps(candidate, sources)
    return float(max(np.abs(a - b).max() for a, b in zip(ref, cand, strict=True)))


def _two_steps(paths: dict[str, Path], sources: list[list[int]]) -> tuple[np.ndarray, ...]:
    """Logits of the first decoder step (two target tokens) and of one cached step."""
    import onnxruntime as ort

    sessions = {}
    for role, path in paths.items():
        try:
            sessions[role] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT error: the variant is broken
            raise ExportError(f"{path.name} does not load in ONNX Runtime: {e}") from e
    vocab = _vocab_size(sessions["decoder"])
    width = max(len(s) for s in sources)
    ids = np.zeros((len(sources), width), np.int64)
    mask = np.zeros_like(ids)
    for r, row in enumerate(sources):
        ids[r, : len(row)], mask[r, : len(row)] = np.array(row) % vocab, 1
    target = ids[:, :1] * 0  # the decoder start (pad) token, then two of the source's own
    target = np.concatenate([target, ids[:, :2]], axis=1)
    try:
        (hidden,) = sessions["encoder"].run(
            None, {io_names.INPUT_IDS: ids, io_names.ATTENTION_MASK: mask}
        )
        first = sessions["decoder"].run(
            None,
            {
                io_names.ENCODER_ATTENTION_MASK: mask,
                io_names.INPUT_IDS: target[:, :2],
                io_names.ENCODER_HIDDEN_STATES: hidden,
            },
        )
        past = [i.name for i in sessions["decoder_with_past"].get_inputs()]
        cache = dict(zip([n for n in past if io_names.is_past(n)], first[1:], strict=True))
        feed = {io_names.ENCODER_ATTENTION_MASK: mask, io_names.INPUT_IDS: target[:, 2:]}
        second = sessions["decoder_with_past"].run(None, {**feed, **cache})
    except Exception as e:  # ORT error: the variant is broken
        raise ExportError(f"the quantized encoder-decoder graphs do not run together: {e}") from e
    return first[0].astype(np.float32), second[0].astype(np.float32)


def _vocab_size(decoder) -> int:
    dim = decoder.get_outputs()[0].shape[-1]
    return dim if isinstance(dim, int) and dim > 0 else 256
