"""The training loop: one file, plain PyTorch, resumable.

``train(TrainConfig(...))`` or ``edgezoo train ...`` / ``python -m edgezoo.zoo.train ...``.
AdamW with linear warmup and cosine decay, gradient clipping and accumulation, periodic
evaluation, atomic checkpoints every N steps and exact resume. Which examples a step sees
depends only on (seed, step), so a resumed run replays the uninterrupted one exactly on CPU.
On CUDA: bf16 autocast, fused AdamW and optional ``torch.compile``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from edgezoo import atomic
from edgezoo.errors import CheckpointError, ConfigError, DataError, ResourceError
from edgezoo.zoo import checkpoint as ckpt
from edgezoo.zoo import data
from edgezoo.zoo.config import LlamaConfig, ModelConfig
from edgezoo.zoo.metrics import classification_report, perplexity
from edgezoo.zoo.modeldir import (
    build_model,
    load_config,
    save_model_dir,
    store_tied_once,
    with_tied,
)
from edgezoo.zoo.presets import FAMILIES, make_config
from edgezoo.zoo.tokenizer import copy_tokenizer, load_tokenizer, save_tokenizer, train_tokenizer
from edgezoo.zoo.train_config import TrainConfig, add_arguments, config_from_args

LOG_FILE = "training.jsonl"
RUN_FILE = "run.json"  # the TrainConfig a run was started with, for resume checks
# Changing these mid-run would silently change what a resumed run computes.
RESUME_MUST_MATCH = (
    "family",
    "size",
    "data",
    "batch_size",
    "grad_accum",
    "seed",
    "context",
    "vocab_size",
    "val_frac",
    "lr",
    "warmup_steps",
)


@dataclass
class TrainResult:
    out: Path
    steps: int
    metrics: dict[str, float]
    tokens_per_s: float


# ---------------------------------------------------------------- device & precision ---


def pick_device(name: str) -> torch.device:
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


# ---------------------------------------------------------------- tasks ----------------


class LMTask:
    """Next-token prediction on windows of the token cache."""

    def __init__(self, splits: data.TokenSplits, context: int, seed: int) -> None:
        self.train = data.LMWindows(splits.train, context)
        self.val = data.LMWindows(splits.val, context) if len(splits.val) > 1 else self.train
        self.sampler = data.EpochSampler(self.train.n_windows, seed)
        self.tokens_per_example = self.train.context

    def loss(self, model: nn.Module, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        x, y = (torch.from_numpy(t).to(device, non_blocking=True) for t in self.train.batch(idx))
        logits, _ = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, device: torch.device, batch: int, max_batches: int
    ) -> dict[str, float]:
        n = min(self.val.n_windows, batch * max_batches)
        losses = []
        for start in range(0, n, batch):
            window_ids = np.arange(start, min(n, start + batch))
            x, y = (torch.from_numpy(t).to(device) for t in self.val.batch(window_ids))
            logits, _ = model(x)
            losses.append(
                F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
                ).item()
            )
        mean = sum(losses) / (n * self.val.context)
        return {"val_loss": mean, "val_ppl": perplexity(mean)}


class ClassifyTask:
    """Sequence classification on a labelled set."""

    def __init__(
        self, train: data.LabelledSet, val: data.LabelledSet, n_labels: int, seed: int
    ) -> None:
        self.train, self.val, self.n_labels = train, val, n_labels
        self.sampler = data.EpochSampler(len(train.ids), seed)
        self.tokens_per_example = int(np.mean([len(s) for s in train.ids]))

    def loss(self, model: nn.Module, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        ids, mask, labels = (torch.from_numpy(t).to(device) for t in self.train.batch(idx))
        return F.cross_entropy(model(ids, mask).float(), labels)

    @torch.no_grad()
    def predict(
        self, model: nn.Module, dataset: data.LabelledSet, device: torch.device, batch: int = 64
    ) -> np.ndarray:
        preds = []
        for start in range(0, len(dataset.ids), batch):
            ids, mask, _ = (
                torch.from_numpy(t).to(device)
                for t in dataset.batch(np.arange(start, min(len(dataset.ids), start + batch)))
            )
            preds.append(model(ids, mask).argmax(-1).cpu().numpy())
        return np.concatenate(preds)

    def evaluate(
        self, model: nn.Module, device: torch.device, batch: int, max_batches: int
    ) -> dict[str, float]:
        report = classification_report(
            self.val.labels, self.predict(model, self.val, device), self.n_labels
        )
        return {f"val_{k}": v for k, v in report.items()}


# ---------------------------------------------------------------- setup ----------------


def _check_resumable(out: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    run_file = out / RUN_FILE
    has_ckpt = bool(ckpt.list_checkpoints(out))
    if not cfg.resume:
        if has_ckpt:
            raise ConfigError(
                f"{out} already holds a training run; pass --resume to continue it or pick a new --out."
            )
        return None
    if not run_file.is_file() or not has_ckpt:
        raise CheckpointError(
            f"--resume: {out} has no checkpoint to resume from; drop --resume to start fresh."
        )
    previous = json.loads(run_file.read_text())
    now = asdict(cfg)
    diffs = [
        f"{k}: {previous.get(k)!r} -> {now.get(k)!r}"
        for k in RESUME_MUST_MATCH
        if previous.get(k) != now.get(k)
    ]
    if diffs:
        raise ConfigError(
            f"cannot resume {out}: its run was started with different settings ({'; '.join(diffs)}). "
            "Resume with the original settings or start a new --out."
        )
    return previous


def _tokenizer(cfg: TrainConfig, out: Path, default_vocab: int):
    if cfg.resume:
        return load_tokenizer(out)
    if cfg.init_from:
        copy_tokenizer(cfg.init_from, out)
        return load_tokenizer(out)
    source = cfg.resolved_data()
    if cfg.family == "lm":
        texts = (text for _, text in data.iter_documents(source, cfg.text_field))
    else:
        texts = (text for text, _ in data.read_labelled(source, cfg.text_field, cfg.label_field))
    return train_tokenizer(texts, cfg.vocab_size or default_vocab, cfg.tokenizer_chars)


def _model_config(cfg: TrainConfig, vocab: int, labels: list[str] | None) -> ModelConfig:
    if cfg.init_from:
        base = load_config(cfg.init_from)
        if cfg.family == "lm" and base.family != "lm":
            raise ConfigError(
                f"--init-from {cfg.init_from} is a {base.family} model; an LM needs an LM to start from."
            )
        if labels is not None:
            # A classifier from a classifier (new head if the labels changed) or from a
            # pre-trained LM: the decoder gets a classification head on its last token.
            if isinstance(base, LlamaConfig):
                base = replace(base, id2label=dict(enumerate(labels)), tie_word_embeddings=False)
            else:
                base.num_labels, base.id2label = len(labels), dict(enumerate(labels))
        return base
    extra = {"num_labels": len(labels)} if labels is not None else {}
    model_cfg = make_config(cfg.family, cfg.size, vocab_size=vocab, **extra)
    if labels is not None:
        model_cfg.id2label = dict(enumerate(labels))
    if cfg.context:
        model_cfg.max_position_embeddings = max(model_cfg.max_position_embeddings, cfg.context)
    return model_cfg


def _init_weights_from(model: nn.Module, source: str) -> None:
    """Load every tensor whose name and shape match (a new label set re-initialises the head)."""
    from safetensors.torch import load_file

    src = load_file(str(Path(source) / "model.safetensors"))
    own = model.state_dict()
    loadable = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    if len(loadable) < len(own) // 2:
        raise ConfigError(
            f"--init-from {source}: only {len(loadable)} of {len(own)} tensors fit this model."
        )
    model.load_state_dict(loadable, strict=False)


# ---------------------------------------------------------------- the loop -------------


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) a model into ``cfg.out`` and return its final evaluation."""
    from edgezoo.zoo import distributed

    if cfg.family not in FAMILIES:
        raise ConfigError(f"unknown family {cfg.family!r}; valid families: {', '.join(FAMILIES)}")
    make_config(cfg.family, cfg.size)  # validates the size early, listing valid ones
    dist = distributed.setup(cfg.device, cfg.fsdp)
    device = dist.device if dist.world > 1 else pick_device(cfg.device)
    out = Path(cfg.out)
    if distributed.restarted_by_torchrun() and ckpt.list_checkpoints(out):
        cfg = replace(cfg, resume=True)  # torchrun --max-restarts brought us back: continue
    _check_resumable(out, cfg)
    if cfg.batch_size % (cfg.grad_accum * dist.world):
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be divisible by grad_accum × processes = {cfg.grad_accum * dist.world}."
        )
    micro = cfg.batch_size // (cfg.grad_accum * dist.world)
    source = cfg.resolved_data()
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    preset_vocab = make_config(cfg.family, cfg.size).vocab_size

    # Rank 0 trains (or loads) the tokenizer; the others receive it.
    tok_json = _tokenizer(cfg, out, preset_vocab).to_str() if dist.is_main else None
    tok = Tokenizer.from_str(dist.broadcast_object(tok_json))

    labels = None
    if cfg.family == "lm":
        context = cfg.context or make_config("lm", cfg.size).max_position_embeddings
        if dist.is_main:
            splits = data.token_cache(source, tok, cfg.val_frac, cfg.text_field)
        dist.barrier()
        splits = (
            data.token_cache(source, tok, cfg.val_frac, cfg.text_field)
            if not dist.is_main
            else splits
        )
        task: LMTask | ClassifyTask = LMTask(splits, context, cfg.seed)
    else:
        context = cfg.context or 128
        rows = data.read_labelled(source, cfg.text_field, cfg.label_field)
        labels = sorted({label for _, label in rows})
        if len(labels) < 2:
            raise DataError(
                f"{source} has a single label {labels}; a classifier needs at least two classes."
            )
        train_rows, val_rows = data.split_labelled(rows, cfg.val_frac)
        task = ClassifyTask(
            data.encode_labelled(train_rows, tok, context, labels),
            data.encode_labelled(val_rows, tok, context, labels),
            len(labels),
            cfg.seed,
        )

    model_cfg = _model_config(cfg, tok.get_vocab_size(), labels)
    if model_cfg.vocab_size < tok.get_vocab_size():
        raise ConfigError(
            f"tokenizer has {tok.get_vocab_size()} tokens but the model only {model_cfg.vocab_size}."
        )
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    if cfg.init_from and not cfg.resume:
        _init_weights_from(model, cfg.init_from)

    steps = cfg.steps or (
        math.ceil(cfg.tokens / (cfg.batch_size * task.tokens_per_example)) if cfg.tokens else 1000
    )
    start_step, state = 0, None
    if cfg.resume:
        if dist.is_main:
            ckpt.remove_partial(out)
        dist.barrier()
        found = ckpt.latest_valid(out)
        if found is None:
            raise CheckpointError(
                f"--resume: every checkpoint in {out} is corrupt; start a new run."
            )
        if found.meta.get("model_config") != model_cfg.to_hf_dict():
            raise ConfigError(
                f"cannot resume {out}: the checkpoint's model config differs from this run's."
            )
        state = ckpt.load_checkpoint(found)
        start_step = found.step
    model.to(device)
    train_model = dist.wrap(model)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, steps, cfg.min_lr_ratio)
    )
    if state is not None:
        weights, training_state = state
        dist.load_full_state(
            model, optimizer, with_tied(weights, model_cfg), training_state["optimizer"]
        )
        scheduler.load_state_dict(training_state["scheduler"])
        torch.set_rng_state(training_state["torch_rng"])
    if cfg.compile:
        train_model = torch.compile(train_model)

    if dist.is_main:
        atomic.write_json(out / RUN_FILE, asdict(cfg))
        save_tokenizer(tok, out, context)
        _truncate_log(out / LOG_FILE, start_step)
    log = open(out / LOG_FILE, "a") if dist.is_main else None
    meta = {
        "model_config": model_cfg.to_hf_dict(),
        "train_config": asdict(cfg),
        "world_size": dist.world,
    }

    def save(step: int) -> dict[str, torch.Tensor]:
        """Gather the full state (a collective under FSDP); rank 0 writes it."""
        weights, optim_state = dist.full_state(model, optimizer)
        if dist.is_main:
            training_state = {
                "optimizer": optim_state,
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            ckpt.save_checkpoint(
                out,
                step,
                store_tied_once(weights, model_cfg),
                training_state,
                meta,
                keep=cfg.keep_checkpoints,
            )
        dist.barrier()
        return weights

    def evaluate() -> dict[str, float]:
        """FSDP's forward is a collective, so every rank evaluates; otherwise rank 0 alone."""
        if not (dist.fsdp or dist.is_main):
            return {}
        model.eval()
        return task.evaluate(model, device, micro * cfg.grad_accum, cfg.eval_batches)

    progress = _progress(cfg.progress and dist.is_main, start_step, steps)
    tokens_per_step = cfg.batch_size * task.tokens_per_example
    t_start, step, metrics, loss_value = time.perf_counter(), start_step, {}, float("nan")
    t_last, step_last = t_start, start_step
    try:
        for step in range(start_step, steps):
            model.train()
            loss_sum = torch.zeros((), device=device)
            first = step * cfg.batch_size + dist.rank * micro * cfg.grad_accum
            for m in range(cfg.grad_accum):
                idx = task.sampler.items(first + m * micro, micro)
                with (
                    dist.no_sync_unless(train_model, m == cfg.grad_accum - 1),
                    autocast_for(device),
                ):
                    loss = task.loss(train_model, idx, device) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = dist.mean(loss_sum).item()
            if not math.isfinite(loss_value):
                raise ResourceError(
                    f"loss became {loss_value} at step {step + 1}; lower --lr or raise --warmup-steps."
                )
            done = step + 1
            if log and (done % cfg.log_every == 0 or done == steps):
                now = time.perf_counter()
                tps = (done - step_last) * tokens_per_step / max(now - t_last, 1e-9)
                t_last, step_last = now, done
                _log(
                    log,
                    {
                        "step": done,
                        "loss": loss_value,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(
                            grad_norm.full_tensor()
                            if hasattr(grad_norm, "full_tensor")
                            else grad_norm
                        ),
                        "tokens_per_s": tps,
                        "epoch": task.sampler.epoch_of(done * cfg.batch_size),
                        "elapsed_s": now - t_start,
                    },
                )
            if done % cfg.eval_every == 0 and done != steps:
                metrics = evaluate()
                if log:
                    _log(log, {"step": done, "event": "eval", **metrics})
            if done % cfg.checkpoint_every == 0 and done != steps:
                save(done)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    loss=f"{loss_value:.3f}",
                    lr=f"{scheduler.get_last_lr()[0]:.2e}",
                    tok_s=f"{(done - start_step) * tokens_per_step / max(time.perf_counter() - t_start, 1e-9):,.0f}",
                )
    except torch.cuda.OutOfMemoryError as e:
        raise ResourceError(
            f"CUDA ran out of memory at step {step + 1} (micro-batch {micro}): lower --batch-size, raise "
            "--grad-accum (same global batch, less memory), shorten --context or pick a smaller --size."
        ) from e
    except KeyboardInterrupt:
        if step > start_step and not dist.active:
            save(step)
            print(
                f"\ninterrupted: checkpoint at step {step} saved; continue with --resume",
                file=sys.stderr,
            )
        raise
    finally:
        if progress is not None:
            progress.close()

    elapsed = time.perf_counter() - t_start
    tokens_per_s = (steps - start_step) * tokens_per_step / max(elapsed, 1e-9)
    weights = save(steps) if steps > start_step else dist.full_state(model, optimizer)[0]
    if dist.is_main:
        final = build_model(model_cfg)  # a plain copy on CPU, whatever the wrapping
        final.load_state_dict(with_tied(weights, model_cfg))
        final.eval()
        metrics = task.evaluate(final.to(device), device, micro * cfg.grad_accum, cfg.eval_batches)
        save_model_dir(final, out)
        _log(log, {"step": steps, "event": "final", **metrics, "train_tokens_per_s": tokens_per_s})
        atomic.write_json(out / "eval.json", {"step": steps, "data": source, **metrics})
        log.close()
    dist.barrier()
    dist.teardown()
    return TrainResult(out, steps, metrics, tokens_per_s)


def _progress(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, disable=None
    )


def _log(f, record: dict[str, Any]) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines after the checkpoint so the log reads as one run."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    atomic.write_text(path, "".join(line + "\n" for line in kept))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m edgezoo.zoo.train", description="Train a zoo model (works under torchrun)."
    )
    add_arguments(p)
    result = train(config_from_args(p.parse_args(argv)))
    print(json.dumps({"out": str(result.out), "steps": result.steps, **result.metrics}))
    return 0


if __name__ == "__main__":
    from edgezoo.errors import run_guarded

    sys.exit(run_guarded(main))
