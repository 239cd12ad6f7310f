"""Create ONNX Runtime sessions with the options that matter for speed, and clear errors."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from edgezoo.errors import CheckpointError
from edgezoo.runtime import backends

DEFAULT_THREADS = 0  # 0 = ONNX Runtime's choice (one per physical core)
ALLOW_SPINNING = "session.intra_op.allow_spinning"  # the session config key


def make_session(
    path: Path,
    backend: str,
    threads: int = DEFAULT_THREADS,
    *,
    model_sha256: str = "",
    profile: backends.ProfileShapes | None = None,
    fp16: bool = False,
    int8: bool = False,
    optimization: str = "all",
    spin: bool = True,
) -> ort.InferenceSession:
    """``spin``: whether the intra-op threads busy-wait for the next run after one ends
    (ORT's default: the fastest back-to-back runs). A session that alternates with another
    in the same process — a draft model beside its target — must not: its spinning threads
    take the cores the other session is running on (measured: a nano draft's spinning
    pool halved a small target's speculative decode on 2 cores)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry(ALLOW_SPINNING, "1" if spin else "0")
    providers = backends.providers_for(
        backend, model_sha256=model_sha256, profile=profile, fp16=fp16, int8=int8
    )
    if backend in ("ort-cuda", "ort-trt"):
        backends.preload_cuda_libraries()
    if backend == "ort-trt":
        backends.trt_cache_dir(model_sha256, backends.tensorrt_version()).mkdir(
            parents=True, exist_ok=True
        )
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # ORT raises Fail/InvalidGraph/... with long C++ traces
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"ONNX Runtime cannot load {path.name}: {first_line}. The file may be truncated or corrupt; "
            "re-run `edgezoo export` (and `edgezoo quantize`) to rebuild it."
        ) from e
    backends.check_provider_taken(backend, session.get_providers())
    return session


def spins(session: ort.InferenceSession) -> bool:
    """Whether ``session``'s intra-op threads busy-wait between runs (ORT's default)."""
    try:
        entry = session.get_session_options().get_session_config_entry(ALLOW_SPINNING)
    except RuntimeError:  # not set: ONNX Runtime's default, spinning
        return True
    return entry != "0"
