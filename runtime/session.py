"""Create ONNX Runtime sessions with the options that matter for speed, and clear errors."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from edgezoo.errors import CheckpointError
from edgezoo.runtime import backends

DEFAULT_THREADS = 0  # 0 = ONNX Runtime's choice (one per physical core)
ALLOW_SPINNING = "session.intra_op.allow_spinning"  # the session config keys
STOP_SPINNING = "session.force_spinning_stop"  # threads stop spinning when a run returns


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
    takes_turns: bool = False,
) -> ort.InferenceSession:
    """``spin``: whether the intra-op threads busy-wait for work (ORT's default: the
    fastest back-to-back runs); off, every operator of a run wakes them from sleep.

    ``takes_turns``: the session alternates with another in this process, a draft model
    with its target: its threads spin while a run lasts and stop as it returns, so neither
    session's idle pool takes the cores the other is running on. Measured on 2 cores with an
    int4 draft of a ``small`` target: the target's pool spinning on after its runs and the
    draft's asleep (or taking turns alone), 1.09-1.15x the target alone; both taking
    turns, 1.61x. The price is the model's own plain loop, whose next run waits for its
    threads to wake: nothing measurable at ``small``, 15-30 % per token at ``nano``."""
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
    if takes_turns:
        opts.add_session_config_entry(STOP_SPINNING, "1")
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
    """Whether ``session``'s intra-op threads busy-wait for work (ORT's default)."""
    return _config(session, ALLOW_SPINNING, "1") != "0"


def has_pool(session: ort.InferenceSession) -> bool:
    """Whether ``session`` runs on more threads than the caller's (1 intra-op thread: no
    pool, every operator on the thread that called ``run``)."""
    return session.get_session_options().intra_op_num_threads != 1


def keeps_spinning(session: ort.InferenceSession) -> bool:
    """Whether ``session``'s threads go on spinning after a run has returned (they take
    cores from whatever runs next in the process)."""
    return spins(session) and _config(session, STOP_SPINNING, "0") != "1"


def _config(session: ort.InferenceSession, key: str, default: str) -> str:
    try:
        return session.get_session_options().get_session_config_entry(key)
    except RuntimeError:  # not set: ONNX Runtime's default
        return default
