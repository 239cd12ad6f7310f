"""Resumable training checkpoints: written atomically, verified by checksum, last K kept.

A checkpoint is a folder ``checkpoints/step-00000100/`` holding ``model.safetensors``
(weights), ``state.pt`` (optimizer, scheduler, RNG; loaded with ``weights_only=True``)
and ``trainer.json`` (step, configs, sha256 of each file). The folder is built beside its
final name and renamed into place, so a killed run leaves whole checkpoints only; one that
fails its checksum on load is skipped, with a warning, for the previous good one.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgezoo import atomic
from edgezoo.errors import CheckpointError
from edgezoo.zoo.modeldir import WEIGHTS_FILE

STATE_FILE = "state.pt"
META_FILE = "trainer.json"


@dataclass
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any]


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep``.

    ``weights`` is a full (unsharded) state dict; ``training_state`` holds the optimizer
    state keyed by parameter name, so a run with another world size can resume it."""
    from safetensors.torch import save_file

    root = checkpoint_dir(run_dir)
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    needed = sum(t.numel() * t.element_size() for t in weights.values()) * 3  # + Adam moments
    atomic.ensure_free_disk(root, needed, f"checkpoint step {step}")
    target = root / f"step-{step:08d}"
    with atomic.atomic_dir(target) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        torch.save(training_state, tmp / STATE_FILE)
        files = {name: atomic.sha256_file(tmp / name) for name in (WEIGHTS_FILE, STATE_FILE)}
        (tmp / META_FILE).write_text(json.dumps({**meta, "step": step, "sha256": files}, indent=2))
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def remove_partial(run_dir: str | Path) -> None:
    """Delete half-built checkpoint folders a killed run left behind (never a complete one)."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(".step-"):
                shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def verify(path: Path) -> Checkpoint:
    """Read a checkpoint's metadata and check every file against its recorded sha256."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has no readable {META_FILE} ({e})") from e
    for name, digest in meta.get("sha256", {}).items():
        f = path / name
        if not f.is_file() or atomic.sha256_file(f) != digest:
            raise CheckpointError(
                f"checkpoint {path}: {name} is truncated or corrupt (checksum mismatch)"
            )
    return Checkpoint(path, int(meta["step"]), meta)


def latest_valid(run_dir: str | Path) -> Checkpoint | None:
    """The newest checkpoint that passes its checksums; corrupt ones are skipped loudly."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return verify(path)
        except CheckpointError as e:
            warnings.warn(f"{e}; falling back to the previous checkpoint", stacklevel=2)
    return None


def load_checkpoint(ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, training state) of a verified checkpoint."""
    from safetensors.torch import load_file

    weights = load_file(str(ckpt.path / WEIGHTS_FILE))
    return weights, torch.load(ckpt.path / STATE_FILE, map_location="cpu", weights_only=True)
