"""Device, precision and optimizer choices of the training loop, apart from the loop so the
throughput and GPU benchmarks build exactly the trainer's optimizer and autocast."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from edgezoo.errors import ConfigError
from edgezoo.zoo.train_config import TrainConfig


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when visible; asking for CUDA without it fails now, not mid-run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA device is visible; use --device cpu."
        )
    return torch.device(name)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA GPUs that support it; fp32 everywhere else (CPU stays exact)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
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
