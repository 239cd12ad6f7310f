"""Execution backends: which ONNX Runtime providers to use, with which options.

Pure logic (no GPU needed to run it), so every option a GPU path uses is unit-tested on
CPU: provider lists, TensorRT engine/timing cache folders keyed by the model's sha256 and
the TensorRT version, and explicit optimisation profiles (min/opt/max shapes) built from
the model's context length — without them TensorRT rebuilds its engine whenever the
sequence grows, which costs tens of seconds per step.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgezoo import io_names
from edgezoo.errors import ConfigError

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
# Which exported graphs each backend can run, best first (see edgezoo.manifest).
GRAPH_PREFERENCE = {
    "ort-cpu": ("gqa", "ort-optimized", "portable"),
    "ort-cuda": ("gqa", "ort-optimized", "portable"),
    "ort-trt": ("portable",),  # TensorRT rejects ORT's contrib ops
    "tensorrt": ("portable",),
}


def cache_root() -> Path:
    return Path(os.environ.get("EDGEZOO_CACHE", Path.home() / ".cache" / "edgezoo"))


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def resolve_backend(name: str, providers: list[str] | None = None) -> tuple[str, str]:
    """(backend, reason). ``auto`` picks CUDA when ORT has it, else CPU; TensorRT is never
    picked automatically because its first engine build takes minutes."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    providers = providers if providers is not None else available_providers()
    if name == "auto":
        if "CUDAExecutionProvider" in providers:
            return "ort-cuda", "auto: onnxruntime has the CUDA execution provider"
        return "ort-cpu", "auto: no CUDA execution provider in onnxruntime, using the CPU"
    needs = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}.get(name)
    if needs and needs not in providers:
        raise ConfigError(
            f"backend {name!r} needs onnxruntime's {needs}, which this install lacks "
            f"(available: {', '.join(providers)}). Install the GPU build: pip install 'edgezoo[gpu]' "
            "(and CUDA/TensorRT libraries), or use backend='ort-cpu'."
        )
    if name == "tensorrt" and tensorrt_version() is None:
        raise ConfigError(
            "backend 'tensorrt' needs the tensorrt Python package: pip install 'edgezoo[tensorrt]'."
        )
    return name, f"asked for {name}"


@dataclass
class ProfileShapes:
    """TensorRT optimisation profile: min/opt/max shape per dynamic input."""

    min: dict[str, list[int]] = field(default_factory=dict)
    opt: dict[str, list[int]] = field(default_factory=dict)
    max: dict[str, list[int]] = field(default_factory=dict)

    @staticmethod
    def _fmt(shapes: dict[str, list[int]]) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())

    def as_trt_ep_options(self) -> dict[str, str]:
        return {
            "trt_profile_min_shapes": self._fmt(self.min),
            "trt_profile_opt_shapes": self._fmt(self.opt),
            "trt_profile_max_shapes": self._fmt(self.max),
        }


def decoder_profile(inputs: list[dict], context: int, max_batch: int = 8) -> ProfileShapes:
    """Profiles covering prefill (seq up to the context) and decode (past up to context-1)."""
    prof = ProfileShapes()
    for spec in inputs:
        name = spec["name"]
        if name in ("input_ids", "position_ids"):
            prof.min[name], prof.opt[name], prof.max[name] = [1, 1], [1, 1], [max_batch, context]
        elif name == "attention_mask":
            prof.min[name], prof.opt[name], prof.max[name] = (
                [1, 1],
                [1, context // 2],
                [max_batch, context],
            )
        elif io_names.is_past(name):
            heads, head_dim = spec["shape"][1], spec["shape"][3]
            prof.min[name] = [1, heads, 0, head_dim]
            prof.opt[name] = [1, heads, context // 2, head_dim]
            prof.max[name] = [max_batch, heads, context - 1, head_dim]
    return prof


def encoder_profile(inputs: list[dict], context: int, max_batch: int = 32) -> ProfileShapes:
    prof = ProfileShapes()
    for spec in inputs:
        prof.min[spec["name"]], prof.opt[spec["name"]], prof.max[spec["name"]] = (
            [1, 1],
            [1, min(128, context)],
            [max_batch, context],
        )
    return prof


def trt_cache_dir(model_sha256: str, trt_version: str | None) -> Path:
    """Engines are only valid for one model and one TensorRT version: key by both.

    An empty hash would put every graph's engines in one folder (and TensorRT would load
    another model's engine), so it is refused."""
    if len(model_sha256) < 16:
        raise ConfigError(
            f"TensorRT engine cache needs the graph's sha256, got {model_sha256!r}; "
            "re-run `edgezoo export` so the manifest records it."
        )
    return cache_root() / "tensorrt" / f"{model_sha256[:16]}-trt{trt_version or 'unknown'}"


def providers_for(
    backend: str,
    *,
    device_id: int = 0,
    model_sha256: str = "",
    profile: ProfileShapes | None = None,
    fp16: bool = False,
    int8: bool = False,
) -> list[Any]:
    """The ``providers=`` list for ``InferenceSession`` (with fallbacks after the main one)."""
    if backend == "ort-cpu":
        return ["CPUExecutionProvider"]
    cuda = (
        "CUDAExecutionProvider",
        {
            "device_id": device_id,
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": True,
            # fp32 graphs stay fp32: TF32 matmuls (ORT's default) round inputs to 10
            # mantissa bits, enough to flip near-tie greedy tokens against the CPU.
            # The fp16 variants are the fast path on a GPU.
            "use_tf32": "0",
        },
    )
    if backend == "ort-cuda":
        return [cuda, "CPUExecutionProvider"]
    if backend == "ort-trt":
        cache = trt_cache_dir(model_sha256, tensorrt_version())
        options: dict[str, Any] = {
            "device_id": device_id,
            "trt_fp16_enable": fp16,
            "trt_int8_enable": int8,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_max_workspace_size": 2 << 30,
        }
        if profile is not None:
            options.update(profile.as_trt_ep_options())
        return [("TensorrtExecutionProvider", options), cuda, "CPUExecutionProvider"]
    raise ConfigError(f"backend {backend!r} does not run through ONNX Runtime providers")


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries that pip's ``nvidia-*`` wheels (or PyTorch) installed,
    so the CUDA provider finds them without ``LD_LIBRARY_PATH``. Loading them late from
    ``ort.InferenceSession`` finds only the system's search path. Once per process: an
    encoder–decoder opens three sessions, a draft and its target two."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is not None:
        with contextlib.suppress(Exception):  # a library still missing: check_provider_taken
            preload()


MAIN_PROVIDER = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}


class ProviderNotStarted(ConfigError):
    """A GPU backend's execution provider is in onnxruntime but did not start."""

    def __init__(self, message: str, provider: str) -> None:
        super().__init__(message)
        self.provider = provider


def check_provider_taken(backend: str, session_providers: list[str]) -> None:
    """ONNX Runtime falls back to the CPU, with only a log line, when a GPU provider's
    libraries fail to load; a backend asked for by name must run where it says
    (``load(backend="auto")`` catches this and takes the CPU)."""
    wanted = MAIN_PROVIDER.get(backend)
    if wanted and wanted not in session_providers:
        raise ProviderNotStarted(
            f"backend {backend!r}: ONNX Runtime could not start {wanted} (the session "
            f"runs on {', '.join(session_providers)}); its CUDA/cuDNN"
            f"{'/TensorRT' if backend == 'ort-trt' else ''} libraries are missing or do not "
            "match onnxruntime-gpu's CUDA version. Install them (pip install "
            "'onnxruntime-gpu[cuda,cudnn]') or use backend='ort-cpu'.",
            wanted,
        )


def device_type(backend: str) -> str:
    """Where I/O binding keeps tensors between steps for this backend."""
    return "cuda" if backend in ("ort-cuda", "ort-trt") else "cpu"
