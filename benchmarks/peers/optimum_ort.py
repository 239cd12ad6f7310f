"""Peer ``optimum-ort``: Hugging Face Optimum's ONNX export of the model run by
``ORTModelForCausalLM.generate`` (int8 through ``ORTQuantizer`` dynamic quantization), the
stock Hugging Face route to ONNX Runtime that edgezoo's own export is compared with.
"""

from __future__ import annotations

import contextlib
import itertools
import platform
import time
from pathlib import Path
from typing import Any

from .cache import built, cached, source_stamp
from .common import Decode, Loaded, PeerUnavailable, quiet, require, torch_threads, version


def load(model_dir: Path, precision: str, threads: int, work: Path) -> Loaded:
    require("optimum.onnxruntime", "optimum-onnx[onnxruntime]")
    if precision == "int4":
        raise PeerUnavailable("optimum-ort: ORTQuantizer has no int4 weight-only mode")
    import onnxruntime as ort

    with quiet():
        from optimum.onnxruntime import ORTModelForCausalLM

    versions = (
        f"optimum {version('optimum')}, optimum-onnx {version('optimum-onnx')}, "
        f"onnxruntime {ort.__version__}, transformers {version('transformers')}"
    )
    stamp = source_stamp(model_dir, peer=versions)

    def export(tmp: Path) -> None:
        with quiet():
            m = ORTModelForCausalLM.from_pretrained(
                model_dir,
                export=True,
                use_cache=True,
                provider="CPUExecutionProvider",
                session_options=_session_options(threads),
            )
            m.save_pretrained(tmp)

    fp32_dir, seconds = cached(work / "optimum-ort-fp32", stamp, export)
    built_notes = [built(seconds)]
    file_name, how = "model.onnx", "fp32"
    folder = fp32_dir
    if precision == "int8":
        folder, seconds, how = _quantize_int8(fp32_dir, work, stamp)
        built_notes.append(
            "cached quantization" if seconds is None else f"quantized in {seconds:.1f} s"
        )
        file_name = "model_quantized.onnx"

    t0 = time.perf_counter()
    with quiet():
        model = ORTModelForCausalLM.from_pretrained(
            folder,
            file_name=file_name,
            use_cache=True,
            provider="CPUExecutionProvider",
            session_options=_session_options(threads),
        )
    load_s = time.perf_counter() - t0
    model.generation_config.eos_token_id = None  # fixed token counts: EOS must not stop
    note = (
        f"{versions}; ORTModelForCausalLM(export=True, use_cache=True, CPUExecutionProvider, "
        f"intra_op={threads}, inter_op=1, use_io_binding={model.use_io_binding}), {how}; "
        f"{', '.join(built_notes)}; greedy generate(), step times from a StoppingCriteria per "
        "token; EOS disabled (eos_token_id=None)"
    )
    return Loaded(_decoder(model, threads), load_s, note)


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return so


def _quantize_int8(fp32_dir: Path, work: Path, stamp: dict) -> tuple[Path, float | None, str]:
    """The cached int8 dynamic quantization of the fp32 export: (folder, seconds, how)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    isa = _int8_isa()
    qconfig = getattr(AutoQuantizationConfig, isa)(is_static=False, per_channel=False)

    def quantize(tmp: Path) -> None:
        with quiet():
            q = ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx")
            q.quantize(save_dir=tmp, quantization_config=qconfig)
            for name in ("config.json", "generation_config.json"):
                if (fp32_dir / name).is_file() and not (tmp / name).is_file():
                    (tmp / name).write_bytes((fp32_dir / name).read_bytes())

    folder, seconds = cached(work / "optimum-ort-int8", {**stamp, "isa": isa}, quantize)
    how = f"int8 dynamic ORTQuantizer AutoQuantizationConfig.{isa}(is_static=False, per_channel=False)"
    return folder, seconds, how


def _int8_isa() -> str:
    """The AutoQuantizationConfig preset for this CPU."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def _decoder(model: Any, threads: int) -> Decode:
    """Greedy ``generate()`` with a StoppingCriteria that timestamps every generated token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    class _Stamps(StoppingCriteria):
        """Called once per generated token: its timestamps give per-step times."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    def decode(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        ids = torch.tensor([prompt])
        stamps = _Stamps()
        with torch_threads(threads), quiet():
            t0 = time.perf_counter()
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=pad,
                stopping_criteria=StoppingCriteriaList([stamps]),
            )
        times = [t0, *stamps.times]
        steps = [b - a for a, b in itertools.pairwise(times[1:])]
        return out[0, len(prompt) :].tolist(), times[1] - t0, steps

    return decode
