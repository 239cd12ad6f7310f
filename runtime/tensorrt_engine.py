"""Native TensorRT backend: build an engine from the portable ONNX graph, cache it, run it.

Built with polygraphy (NVIDIA's own wrapper over the TensorRT Python API): one explicit
optimisation profile covering batch, prompt and past lengths up to the model's context, so
the engine is built once, not per sequence length. Engines and the timing cache live in a
folder keyed by the graph's sha256 and the TensorRT version (an engine is only valid for
both). The session below speaks the small part of ``onnxruntime.InferenceSession`` the
runtime uses (``get_inputs``, ``get_outputs``, ``run``), so ``LanguageModel`` and
``Classifier`` run unchanged on it.

Needs an NVIDIA GPU with ``pip install 'edgezoo[tensorrt]'``; this code has not been run
on a GPU in this project's CI (no GPU there) — only its pure parts are tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgezoo.errors import ConfigError
from edgezoo.runtime import backends
from edgezoo.runtime.model_files import engine_cache_key


@dataclass
class TensorSpec:
    """What ``InferenceSession.get_inputs()`` items expose: name, shape, type."""

    name: str
    shape: list
    type: str = "tensor(float)"


def engine_path(model_sha256: str, fp16: bool, max_batch: int) -> Path:
    precision = "fp16" if fp16 else "fp32"
    return (
        backends.trt_cache_dir(model_sha256, backends.tensorrt_version())
        / f"engine-{precision}-b{max_batch}.plan"
    )


def profile_triplets(
    profile: backends.ProfileShapes,
) -> dict[str, tuple[list[int], list[int], list[int]]]:
    return {name: (profile.min[name], profile.opt[name], profile.max[name]) for name in profile.min}


class TensorRTSession:
    """An engine with ``run(output_names, feeds)`` like an ORT session (numpy in and out)."""

    def __init__(
        self,
        onnx_path: Path,
        entry: dict[str, Any],
        profile: backends.ProfileShapes,
        fp16: bool,
        max_batch: int,
    ) -> None:
        try:
            from polygraphy.backend.common import BytesFromPath
            from polygraphy.backend.trt import (
                CreateConfig,
                EngineFromBytes,
                EngineFromNetwork,
                NetworkFromOnnxPath,
                Profile,
                SaveEngine,
                TrtRunner,
            )
        except ImportError as e:
            raise ConfigError(
                "backend 'tensorrt' needs tensorrt and polygraphy: pip install 'edgezoo[tensorrt]'."
            ) from e
        path = engine_path(engine_cache_key(onnx_path, entry), fp16, max_batch)
        path.parent.mkdir(parents=True, exist_ok=True)
        timing_cache = path.parent / "timing.cache"
        if path.is_file():
            engine = EngineFromBytes(BytesFromPath(str(path)))
        else:
            trt_profile = Profile()
            for name, (lo, opt, hi) in profile_triplets(profile).items():
                trt_profile.add(name, min=lo, opt=opt, max=hi)
            config = CreateConfig(
                fp16=fp16, profiles=[trt_profile], load_timing_cache=str(timing_cache)
            )
            built = EngineFromNetwork(
                NetworkFromOnnxPath(str(onnx_path)),
                config=config,
                save_timing_cache=str(timing_cache),
            )
            engine = SaveEngine(built, str(path))
        self._runner = TrtRunner(engine)
        self._runner.activate()
        self._inputs = [
            TensorSpec(i["name"], i["shape"], f"tensor({_ort_type(i['dtype'])})")
            for i in entry["inputs"]
        ]
        self._outputs = [
            TensorSpec(o["name"], o["shape"], f"tensor({_ort_type(o['dtype'])})")
            for o in entry["outputs"]
        ]

    def get_inputs(self) -> list[TensorSpec]:
        return self._inputs

    def get_outputs(self) -> list[TensorSpec]:
        return self._outputs

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._runner.infer(feed_dict=feeds, copy_outputs_to_host=True)
        names = output_names or [o.name for o in self._outputs]
        return [np.asarray(result[n]) for n in names]

    def __del__(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is not None and runner.is_active:
            runner.deactivate()


def _ort_type(dtype: str) -> str:
    return {"float32": "float", "float16": "float16", "int64": "int64", "int32": "int32"}.get(
        dtype, dtype
    )


def load_tensorrt(files, tokenizer, *, reason: str, fp16: bool, max_batch: int):
    """``runtime.load(..., backend="tensorrt")``: the portable graph on a native engine."""
    from edgezoo.runtime.classifier import Classifier
    from edgezoo.runtime.language_model import LanguageModel

    if files.entry.get("graph") != "portable":
        raise ConfigError(
            f"TensorRT needs the portable graph; {files.variant} is a {files.entry.get('graph')} graph."
        )
    context = int(files.config.get("max_position_embeddings", 512))
    make = backends.decoder_profile if files.family == "lm" else backends.encoder_profile
    profile = make(files.entry.get("inputs", []), context, max_batch)
    session = TensorRTSession(files.onnx_path, files.entry, profile, fp16, max_batch)
    common = {"backend": "tensorrt", "variant": files.variant, "reason": reason}
    if files.family == "lm":
        return LanguageModel(
            session, tokenizer, files.config, graph="portable", device="cpu", **common
        )
    return Classifier(session, tokenizer, files.config, **common)
