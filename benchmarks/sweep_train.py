"""Train a planned sweep run (or reuse it) and score it window by window on held-out text.

Every run of a sweep shares one tokenizer and one set of held-out windows, so losses
compare across sizes and a bootstrap can resample the same windows for every size.
Finished runs are kept in ``WORK/<key>/sweep_run.json`` and reused when asked for again
with the same settings; a killed run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.sweep_plan import PlannedRun
from edgezoo import atomic, heldout
from edgezoo.errors import DataError

RESULT_FILE = "sweep_run.json"
# Cosine all the way to zero: with batches of 4 sequences the last steps at 10 % of the lr
# still moved a run's final loss by ~0.1 nats, more than neighbouring sizes differ early on.
MIN_LR_RATIO = 0.0
SWEEP_EVAL_TOKENS = 65_536  # 8× the training eval's: ~500 windows for the bootstrap


def shared_tokenizer(work: Path, source: str, vocab: int):
    """Train the sweep's tokenizer once (``WORK/tokenizer.json``) and return it.

    Every run then trains with this one (``--tokenizer``) instead of its own from the
    same text (~10–20 s a run here); ``run`` checks each run's tokenizer by fingerprint,
    so a run with another vocabulary cannot slip into a fit."""
    from tokenizers import Tokenizer

    from edgezoo.zoo import data
    from edgezoo.zoo.tokenizer import train_tokenizer

    path = work / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    tok = train_tokenizer((text for _, text in data.iter_documents(source)), vocab)
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, tok.to_str())
    return tok


def eval_windows(source: str, tok, context: int) -> list[np.ndarray]:
    """The held-out windows every size is scored on (the training split never sees them)."""
    from edgezoo.zoo import data

    splits = data.token_cache(source, tok, 0.05)
    return heldout.lm_windows(data.heldout_stream(splits), context, SWEEP_EVAL_TOKENS)


def window_losses(model_dir: Path, windows: list[np.ndarray], batch: int = 32) -> np.ndarray:
    """Summed next-token loss per window (nats): what the bootstrap resamples."""
    import torch
    import torch.nn.functional as F

    from edgezoo.zoo.modeldir import load_model

    model = load_model(model_dir).eval()
    out = np.zeros(len(windows))
    i = 0
    with torch.no_grad():
        while i < len(windows):  # batches of equal-length windows (only the last is short)
            j = i + 1
            while j < len(windows) and j - i < batch and len(windows[j]) == len(windows[i]):
                j += 1
            ids = torch.from_numpy(np.stack(windows[i:j]))
            logits, _ = model(ids[:, :-1])
            loss = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
            out[i:j] = loss.sum(dim=1).numpy()
            i = j
    return out


def run(
    plan: PlannedRun,
    work: Path,
    *,
    source: str,
    vocab: int,
    context: int,
    batch: int,
    windows: list[np.ndarray],
    tokenizer,
) -> dict:
    """Train ``plan`` into ``WORK/<key>`` (or reuse/resume it); its result with window losses."""
    from edgezoo.zoo import checkpoint as ckpt
    from edgezoo.zoo.tokenizer import load_tokenizer, tokenizer_fingerprint
    from edgezoo.zoo.train import TrainConfig, train

    out = work / plan.key
    settings = {
        "plan": asdict(plan),
        "data": source,
        "vocab": vocab,
        "context": context,
        "batch": batch,
        "eval_windows": len(windows),
        "min_lr_ratio": MIN_LR_RATIO,
    }
    done = out / RESULT_FILE
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("settings") == settings:
            return previous
    cfg = TrainConfig(
        family="lm",
        size=plan.size,
        data=source,
        out=str(out),
        steps=plan.steps,
        batch_size=batch,
        context=context,
        tokenizer=str(work / "tokenizer.json"),
        lr=plan.lr,
        min_lr_ratio=MIN_LR_RATIO,
        warmup_steps=max(2, plan.steps // 20),
        eval_every=10**9,
        checkpoint_every=max(10, plan.steps // 4),
        keep_checkpoints=1,
        log_every=max(1, plan.steps // 20),
        progress=False,
        resume=bool(ckpt.list_checkpoints(out)),
    )
    fingerprint = tokenizer_fingerprint(tokenizer)
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    if tokenizer_fingerprint(load_tokenizer(out)) != fingerprint:
        raise DataError(
            f"{out} trained a different tokenizer than the sweep's ({fingerprint}); losses would "
            "not compare. Delete the sweep's work folder and run it again."
        )
    losses = window_losses(out, windows)
    scored = np.array([len(w) - 1 for w in windows])
    record = {
        "settings": settings,
        "key": plan.key,
        **asdict(plan),
        "flops": plan.flops,
        "val_loss": float(losses.sum() / scored.sum()),
        "train_eval_val_loss": result.metrics["val_loss"],
        "window_loss_sums": [round(float(x), 5) for x in losses],
        "window_tokens": scored.tolist(),
        "train_tokens_per_s": result.tokens_per_s,
        "wall_s": wall,
        "model_dir": str(out),
    }
    atomic.write_json(done, record)
    print(
        f"{plan.key}: val loss {record['val_loss']:.4f} ({wall:.0f} s, "
        f"{result.tokens_per_s:,.0f} tok/s)",
        flush=True,
    )
    return record
