"""Peer ``pytorch-eager``: our own zoo model in plain PyTorch (fp32, or int8 through
``torch.ao`` dynamic quantization), the baseline every other peer's tokens are checked against.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from .common import Loaded, PeerUnavailable, torch_threads


def load(model_dir: Path, precision: str, threads: int, work: Path) -> Loaded:
    import torch
    from torch import nn

    from edgezoo.zoo.generate import time_greedy_decode
    from edgezoo.zoo.modeldir import load_model

    if precision == "int4":
        raise PeerUnavailable("pytorch-eager has no int4 path (fp32, or int8 via quantize_dynamic)")
    t0 = time.perf_counter()
    model = load_model(model_dir)
    how = "fp32"
    if precision == "int8":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated
                model = torch.ao.quantization.quantize_dynamic(
                    model, {nn.Linear}, dtype=torch.qint8
                )
        except Exception as e:
            raise PeerUnavailable(
                f"torch.ao quantize_dynamic failed on torch {torch.__version__}: "
                f"{type(e).__name__}: {e}"
            ) from e
        how = f"int8 torch.ao quantize_dynamic(nn.Linear, qint8, engine {torch.backends.quantized.engine})"
    load_s = time.perf_counter() - t0

    def decode(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        with torch_threads(threads):
            return time_greedy_decode(model, prompt, n)

    note = (
        f"torch {torch.__version__}, zoo LlamaForCausalLM (SDPA attention, concatenating KV "
        f"cache), {how}, torch.set_num_threads({threads}), inference_mode; EOS ignored"
    )
    return Loaded(decode, load_s, note)
