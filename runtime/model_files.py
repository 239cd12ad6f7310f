"""Find what to load: the model dir, its tokenizer and config, and the right variant.

``path`` may be a model dir or an ``.onnx`` file beside its tokenizer (in the model dir or
its ``onnx/`` folder). Variants come from ``onnx/manifest.json``; a bare ``.onnx`` file
without a manifest is described by inspecting its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgezoo import io_names, manifest
from edgezoo.errors import CheckpointError, ConfigError
from edgezoo.jsonfile import read_object
from edgezoo.onnx_files import file_facts
from edgezoo.runtime.backends import GRAPH_PREFERENCE

PRECISIONS = ("fp32", "fp16", "int8", "int4")


@dataclass
class ModelFiles:
    model_dir: Path
    onnx_path: Path
    variant: str
    entry: dict[str, Any]
    config: dict[str, Any]
    family: str
    reason: str


# Uses rival variants (same graph and precision) are timed for by the quality gate
# (``quantize.rivals``), and the timing each is judged by.
REQUESTS = "requests"  # a prompt, then tokens one at a time
MULTI_TOKEN = "multi-token calls"  # several tokens per call: a speculative check
BATCHED = "batched decode"  # one token for each of several prompts per call: a busy server
USES = {REQUESTS: "request_ms", MULTI_TOKEN: "check_ms", BATCHED: "batch_step_ms"}


def locate(
    path: str | Path,
    backend: str,
    variant: str = "fp32",
    graph: str = "auto",
    use: str = REQUESTS,
) -> ModelFiles:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist; pass a model dir (with onnx/) or an .onnx file."
        )
    if path.is_file():
        return _from_file(path, backend)
    info = manifest.read(path)
    if not info["variants"]:
        raise CheckpointError(
            f"{path} has no exported ONNX model; run `edgezoo export {path}` first."
        )
    name, entry, reason = select_variant(info["variants"], backend, variant, graph, use)
    onnx_path = manifest.onnx_dir(path) / entry["file"]
    if not onnx_path.is_file():
        raise CheckpointError(
            f"{onnx_path} is listed in the manifest but missing; re-run `edgezoo export {path}`."
        )
    entry = _with_cache_key(entry, onnx_path, backend)
    return ModelFiles(path, onnx_path, name, entry, _config(path), info.get("family", "lm"), reason)


def select_variant(
    variants: dict[str, dict],
    backend: str,
    wanted: str,
    graph: str = "auto",
    use: str = REQUESTS,
) -> tuple[str, dict, str]:
    """Pick a variant by precision (the best graph for the backend), ``auto`` or exact name;
    of rival graphs of one precision, the one timed fastest for ``use`` (``USES``).

    ``graph`` (portable | ort-optimized | gqa) restricts the choice, e.g. to compare graphs."""
    usable = {
        k: v
        for k, v in variants.items()
        if backend in v.get("backends", []) and v.get("format") != "ort"
    }
    if graph != "auto":
        usable = {k: v for k, v in usable.items() if v.get("graph") == graph}
    if wanted in variants and wanted not in PRECISIONS:
        if backend not in variants[wanted].get("backends", []):
            raise ConfigError(
                f"variant {wanted!r} cannot run on {backend} (it runs on {variants[wanted].get('backends')})."
            )
        return wanted, variants[wanted], f"variant {wanted!r} as asked"
    if wanted == "auto":
        recommended = {k: v for k, v in usable.items() if backend in v.get("recommended", {})}
        if recommended:
            best = max(recommended, key=lambda k: recommended[k]["recommended"][backend]["speedup"])
            why = recommended[best]["recommended"][backend]
            return (
                best,
                usable[best],
                f"auto: {best} is the fastest variant recommended for {backend} ({why['speedup']:.2f}× fp32, quality {why['quality_change']})",
            )
        wanted = "fp32"
        auto_note = "auto: no quantized variant is recommended for this backend yet, using fp32; "
    else:
        auto_note = ""
    if wanted not in PRECISIONS:
        raise ConfigError(
            f"unknown variant {wanted!r}; use auto, a precision ({', '.join(PRECISIONS)}) or one of: {', '.join(variants)}"
        )
    for kind in GRAPH_PREFERENCE[backend]:
        names = [
            n for n, e in usable.items() if e.get("precision") == wanted and e.get("graph") == kind
        ]
        if names:
            name, measured = preferred_rival(names, usable, backend, use)
            return (
                name,
                usable[name],
                f"{auto_note}{name} ({kind} graph, {wanted}) is the best {wanted} graph for {backend}"
                + measured,
            )
    have = ", ".join(f"{k} ({v.get('precision')}, {v.get('graph')})" for k, v in variants.items())
    hint = " Make one with `edgezoo quantize`." if wanted != "fp32" else ""
    only = f" with a {graph} graph" if graph != "auto" else ""
    raise ConfigError(f"no {wanted} variant{only} that runs on {backend}; available: {have}.{hint}")


def preferred_rival(
    names: list[str], variants: dict[str, dict], backend: str, use: str
) -> tuple[str, str]:
    """Of graphs of one kind and precision (int8 GQA: weight-only and dynamic), the one the
    quality gate timed fastest for ``use`` on ``backend``, and why; the first one when they
    were not timed (which is faster depends on the CPU: see ``quantize.rivals``)."""
    for name in names:
        if use in variants[name].get("preferred", {}).get(backend, []):
            timed = ", ".join(
                f"{n} {variants[n]['rival_timing'][backend][USES[use]]:.1f} ms"
                for n in names
                if USES[use] in variants[n].get("rival_timing", {}).get(backend, {})
            )
            return name, f" (the fastest for {use} as the quality gate timed them: {timed})"
    return names[0], ""


def _config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{model_dir} has no config.json; the runtime needs it next to the ONNX files."
        )
    return read_object(
        path,
        "restore it from the model it was exported from (every Hugging Face config names its "
        "model_type); the runtime reads the context length and labels from it.",
        required=("model_type",),
    )


TENSORRT_BACKENDS = ("ort-trt", "tensorrt")


def engine_cache_key(onnx_path: Path, entry: dict[str, Any]) -> str:
    """The sha256 that keys a graph's TensorRT engine cache: graph file and weights together.

    The manifest's when the graph has an entry; a bare ``.onnx`` is hashed here (plain
    hashlib, no onnx needed), so two different graphs never share one engine cache."""
    return entry.get("sha256") or file_facts(onnx_path)["sha256"]


def _with_cache_key(entry: dict[str, Any], onnx_path: Path, backend: str) -> dict[str, Any]:
    """The entry with its ``sha256`` filled in where a TensorRT backend keys a cache by it
    (hashing reads the whole graph, so not for the other backends)."""
    if backend not in TENSORRT_BACKENDS or entry.get("sha256"):
        return entry
    return {**entry, "sha256": engine_cache_key(onnx_path, entry)}


def _from_file(path: Path, backend: str = "ort-cpu") -> ModelFiles:
    if path.suffix not in (".onnx", ".ort"):
        raise CheckpointError(f"{path} is not an .onnx/.ort file or a model dir.")
    model_dir = path.parent.parent if path.parent.name == manifest.ONNX_DIR else path.parent
    info = manifest.read(model_dir)
    for name, entry in info["variants"].items():
        if entry["file"] == path.name:
            return ModelFiles(
                model_dir,
                path,
                name,
                _with_cache_key(entry, path, backend),
                _config(model_dir),
                info.get("family", "lm"),
                f"file {path.name}",
            )
    graph, inputs = _graph_kind(path)
    family = "lm" if any(io_names.is_past(n) for n in inputs) else "cls"
    entry = {
        "file": path.name,
        "graph": graph,
        "precision": "unknown",
        "backends": list(GRAPH_PREFERENCE),
    }
    return ModelFiles(
        model_dir,
        path,
        path.stem,
        _with_cache_key(entry, path, backend),
        _config(model_dir),
        family,
        f"file {path.name} (no manifest entry)",
    )


def _graph_kind(path: Path) -> tuple[str, list[str]]:
    """("gqa" | "portable", input names) of a graph that has no manifest entry.

    With onnx installed the ops are read (``GroupQueryAttention`` means an in-place cache);
    the edge install has no onnx, so there the inputs decide: only our GQA graphs take a
    KV cache without ``position_ids`` (positions come from the mask inside the kernel)."""
    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is None:
            return _graph_kind_from_session(path)
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, ORT's Fail/InvalidProtobuf: one message
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable ONNX graph ({first}): truncated or corrupt. Copy it "
            "again, or re-run `edgezoo export` (and `edgezoo quantize`) to rebuild it."
        ) from e
    ops = {n.op_type for n in proto.graph.node}
    inputs = [i.name for i in proto.graph.input]
    if not inputs:
        raise CheckpointError(
            f"{path} holds no graph inputs: truncated or not an exported model; re-run `edgezoo export`."
        )
    return ("gqa" if "GroupQueryAttention" in ops else "portable"), inputs


def _graph_kind_from_session(path: Path) -> tuple[str, list[str]]:
    """The edge install's way (no onnx): ask ONNX Runtime for the inputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    gqa = any(io_names.is_past(n) for n in inputs) and io_names.POSITION_IDS not in inputs
    return ("gqa" if gqa else "portable"), inputs
