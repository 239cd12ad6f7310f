"""Device, precision and optimizer choices of the training loop, apart from the loop so the
throughput and GPU benchmarks build exactly the trainer's optimizer and autocast."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from edgezoo.errors import ConfigError
from edgezoo.zoo.train_config import PRECISIONS, TrainConfig


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when visible; asking for CUDA without it fails now, not mid-run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA device is visible; use --device cpu."
        )
    return torch.device(name)


def autocast_for(device: torch.device, precision: str = "auto"):
    """The forward pass's autocast for ``--precision``.

    auto: bf16 on CUDA GPUs that support it, fp32 elsewhere (CPU stays exact); bf16: also on
    CPU, where matmuls then run in bf16 (fast on CPUs with AMX or AVX-512 BF16); fp32: never.
    Weights, gradients and optimizer state stay fp32 in every case."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return contextlib.nullcontext()
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and device.type == "cuda" and not cuda_bf16:
        raise ConfigError("--precision bf16: this GPU has no bf16 support; use fp32 (or auto).")
    if precision == "bf16" or cuda_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW decaying only matrices (not norms, biases); shared with the throughput benchmark."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, **extra)


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1, then cosine down to ``min_ratio`` at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
