"""The training loop: plain PyTorch, resumable.

``train(TrainConfig(...))`` or ``edgezoo train ...`` / ``python -m edgezoo.zoo.train ...``.
AdamW with linear warmup and cosine decay, gradient clipping and accumulation, periodic
evaluation, atomic checkpoints every N steps and exact resume. Which examples a step sees
depends only on (seed, step), so a resumed run replays the uninterrupted one exactly on CPU.
On CUDA: bf16 autocast, fused AdamW and optional ``torch.compile``. What is settled before
the first step lives in ``train_setup``; what a step optimises, in ``train_tasks``; the
optimizer, schedule and precision in ``train_optim``; the log and progress bar in
``train_log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer
from torch import nn

from edgezoo import atomic
from edgezoo.chat_config import DEFAULT_CHAT_TEMPLATE
from edgezoo.errors import ConfigError, ResourceError
from edgezoo.zoo import checkpoint as ckpt
from edgezoo.zoo.config import ModelConfig
from edgezoo.zoo.modeldir import build_model, save_model_dir, store_tied_once, with_tied
from edgezoo.zoo.presets import FAMILIES, make_config
from edgezoo.zoo.tensor_parallel import check_tp
from edgezoo.zoo.tokenizer import save_tokenizer
from edgezoo.zoo.train_config import TrainConfig, add_arguments, config_from_args
from edgezoo.zoo.train_log import LOG_FILE, progress_bar, truncate_log, write_record
from edgezoo.zoo.train_optim import autocast_for, lr_lambda, make_optimizer, pick_device
from edgezoo.zoo.train_setup import (
    RUN_FILE,
    check_resumable,
    init_weights_from,
    model_config,
    prepare_data,
    resume_point,
)
from edgezoo.zoo.train_tasks import ClassifyTask, LMTask, Seq2SeqTask

if TYPE_CHECKING:
    from edgezoo.zoo.distributed import Dist

# Called at each mid-run evaluation with (step, metrics); raising stops the run there
# (``edgezoo tune`` raises optuna.TrialPruned to cut a trial that is behind).
EvalCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """Where the model went, how many steps it has, its final metrics and training speed."""

    out: Path
    steps: int
    metrics: dict[str, float]
    tokens_per_s: float


@dataclass
class _Run:
    """What the steps of a run share once it is set up, passed as one value."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    micro: int  # examples per forward pass on each process
    task: LMTask | ClassifyTask | Seq2SeqTask
    model_cfg: ModelConfig
    model: nn.Module  # the bare model: its parameters, state and evaluation
    train_model: nn.Module  # the same, wrapped (DDP/FSDP, torch.compile) for the forward pass
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps: int
    start_step: int
    completed: int = 0  # optimizer steps the weights hold: what an interrupt must save
    saved: int = -1  # the step of the last checkpoint this run wrote
    log: Any = None  # training.jsonl, open on rank 0 only
    on_eval: EvalCallback | None = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.task.tokens_per_example

    @property
    def meta(self) -> dict[str, Any]:
        """What every checkpoint records about the run that wrote it."""
        return {
            "model_config": self.model_cfg.to_hf_dict(),
            "train_config": asdict(self.cfg),
            "world_size": self.dist.world,
            "tensor_parallel": self.dist.tp,
        }


def train(cfg: TrainConfig, on_eval: EvalCallback | None = None) -> TrainResult:
    """Train (or resume) a model into ``cfg.out`` and return its final evaluation.

    ``on_eval(step, metrics)`` sees every mid-run evaluation (on each process; ranks other
    than 0 get ``{}`` unless under FSDP or TP); an exception it raises ends the run there, with
    the log closed and no final save (a search abandoning a trial, not a Ctrl-C)."""
    cfg, dist, device = _start(cfg)
    tok, context, task, labels = prepare_data(cfg, dist, Path(cfg.out))
    if cfg.distill_from:
        from edgezoo.zoo.distill import with_teacher

        task = with_teacher(cfg, task, tok, context)
    run = _build(cfg, dist, device, tok, task, labels)
    run.on_eval = on_eval
    _open_log(run, tok, context)
    metrics, elapsed = _run_steps(run)
    return _finish(run, metrics, elapsed)


def _start(cfg: TrainConfig) -> tuple[TrainConfig, Dist, torch.device]:
    """Check what needs no data, join the process group and tell a fresh run from a resume."""
    from edgezoo.zoo import distributed

    if cfg.steps is not None and cfg.steps < 1:
        raise ConfigError(f"steps={cfg.steps} would train nothing; use steps >= 1.")
    if cfg.grad_accum < 1 or cfg.batch_size < 1:
        raise ConfigError(
            f"batch_size={cfg.batch_size}, grad_accum={cfg.grad_accum}: both must be >= 1."
        )
    if cfg.family not in FAMILIES:
        raise ConfigError(f"unknown family {cfg.family!r}; valid families: {', '.join(FAMILIES)}")
    make_config(cfg.family, cfg.size)  # validates the size early, listing valid ones
    dist = distributed.setup(cfg.device, cfg.fsdp, cfg.tp, cfg.sequence_parallel)
    device = dist.device if dist.world > 1 else pick_device(cfg.device)
    autocast_for(device, cfg.precision)  # an unusable --precision fails before anything is written
    out = Path(cfg.out)
    if dist.restarted and ckpt.list_checkpoints(out):
        cfg = replace(cfg, resume=True)  # torchrun --max-restarts brought us back: continue
    check_resumable(out, cfg)
    if cfg.batch_size % (cfg.grad_accum * dist.dp_world):
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be divisible by grad_accum × data-parallel processes = {cfg.grad_accum * dist.dp_world}."
        )
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return cfg, dist, device


def _build(
    cfg: TrainConfig,
    dist: Dist,
    device: torch.device,
    tok: Tokenizer,
    task: LMTask | ClassifyTask | Seq2SeqTask,
    labels: list[str] | None,
) -> _Run:
    """Model, optimizer and schedule, seeded, wrapped and (on resume) restored, in this order."""
    model_cfg = model_config(cfg, tok.get_vocab_size(), labels)
    check_tp(model_cfg, dist.tp)
    if model_cfg.vocab_size < tok.get_vocab_size():
        raise ConfigError(
            f"tokenizer has {tok.get_vocab_size()} tokens but the model only {model_cfg.vocab_size}."
        )
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    if cfg.init_from and not cfg.resume:
        init_weights_from(model, cfg.init_from)
    steps = (
        cfg.steps
        if cfg.steps is not None
        else (
            math.ceil(cfg.tokens / (cfg.batch_size * task.tokens_per_example))
            if cfg.tokens
            else 1000
        )
    )
    start_step, state = resume_point(cfg, dist, Path(cfg.out), model_cfg)
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
    return _Run(
        cfg=cfg,
        dist=dist,
        device=device,
        micro=cfg.batch_size // (cfg.grad_accum * dist.dp_world),
        task=task,
        model_cfg=model_cfg,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scheduler=scheduler,
        steps=steps,
        start_step=start_step,
        completed=start_step,
    )


def _open_log(run: _Run, tok: Tokenizer, context: int) -> None:
    """Rank 0 records the run's settings and tokenizer and continues its log from the start step."""
    if run.dist.is_main:
        atomic.write_json(run.out / RUN_FILE, asdict(run.cfg))
        template = DEFAULT_CHAT_TEMPLATE if run.cfg.family == "lm" else None
        save_tokenizer(tok, run.out, context, chat_template=template)
        truncate_log(run.out / LOG_FILE, run.start_step)
        run.log = open(run.out / LOG_FILE, "a")


def _save(run: _Run, step: int) -> dict[str, torch.Tensor]:
    """Gather the full state (a collective under FSDP); rank 0 writes it."""
    weights, optim_state = run.dist.full_state(run.model, run.optimizer)
    if run.dist.is_main:
        training_state = {
            "optimizer": optim_state,
            "scheduler": run.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        ckpt.save_checkpoint(
            run.out,
            step,
            store_tied_once(weights, run.model_cfg),
            training_state,
            run.meta,
            keep=run.cfg.keep_checkpoints,
        )
    run.dist.barrier()
    run.saved = step
    return weights


def _evaluate(run: _Run) -> dict[str, float]:
    """FSDP's and TP's forward is a collective, so every rank evaluates; else rank 0 alone."""
    if not (run.dist.fsdp or run.dist.tp > 1 or run.dist.is_main):
        return {}
    run.model.eval()
    return run.task.evaluate(
        run.model, run.device, run.micro * run.cfg.grad_accum, run.cfg.eval_batches
    )


@contextlib.contextmanager
def _saved_on_interrupt(run: _Run):
    """Ctrl-C in a single process first checkpoints the last *completed* step.

    ``run.completed``, not a loop index: an interrupt during an evaluation or a checkpoint
    save, in the loop or in ``_finish``, comes after its step's update. A step already
    checkpointed is not written twice. ``--resume`` then continues from exactly there."""
    try:
        yield
    except KeyboardInterrupt:
        if run.completed > run.start_step and not run.dist.active:
            if run.saved != run.completed:
                _save(run, run.completed)
            print(
                f"\ninterrupted: checkpoint at step {run.completed} saved; continue with --resume",
                file=sys.stderr,
            )
        if run.log:
            run.log.close()
        raise


# ---------------------------------------------------------------- the loop -------------


def _run_steps(run: _Run) -> tuple[dict[str, float], float]:
    """Every step with its log, eval and checkpoint; the last eval's metrics and seconds taken.

    Out of memory gets advice on what to change; Ctrl-C saves the last completed step
    (``_saved_on_interrupt``).
    """
    cfg, start, steps = run.cfg, run.start_step, run.steps
    progress = progress_bar(cfg.progress and run.dist.is_main, start, steps)
    t_start, step, metrics = time.perf_counter(), start, {}
    last_log = (t_start, start)  # when and at which step the last log line was written
    with _saved_on_interrupt(run):
        try:
            for step in range(start, steps):
                loss_value, grad_norm = _step(run, step)
                done = step + 1
                if run.log and (done % cfg.log_every == 0 or done == steps):
                    last_log = _log_step(run, done, loss_value, grad_norm, last_log, t_start)
                if done % cfg.eval_every == 0 and done != steps:
                    metrics = _evaluate(run)
                    if run.log:
                        write_record(run.log, {"step": done, "event": "eval", **metrics})
                    _report_eval(run, done, metrics)
                if done % cfg.checkpoint_every == 0 and done != steps:
                    _save(run, done)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(
                        loss=f"{loss_value:.3f}",
                        lr=f"{run.scheduler.get_last_lr()[0]:.2e}",
                        tok_s=f"{(done - start) * run.tokens_per_step / max(time.perf_counter() - t_start, 1e-9):,.0f}",
                    )
        except torch.cuda.OutOfMemoryError as e:
            raise ResourceError(
                f"CUDA ran out of memory at step {step + 1} (micro-batch {run.micro}): lower --batch-size, raise "
                "--grad-accum (same global batch, less memory), shorten --context or pick a smaller --size."
            ) from e
        finally:
            if progress is not None:
                progress.close()
    return metrics, time.perf_counter() - t_start


def _report_eval(run: _Run, done: int, metrics: dict[str, float]) -> None:
    """Hand an evaluation to ``run.on_eval``; if it stops the run, close the log first."""
    if run.on_eval is None:
        return
    try:
        run.on_eval(done, metrics)
    except Exception:
        if run.log:
            run.log.close()
        raise


def _step(run: _Run, step: int) -> tuple[float, torch.Tensor]:
    """One optimizer step over grad_accum micro-batches; its examples depend on (seed, step)."""
    cfg, dist, micro, device = run.cfg, run.dist, run.micro, run.device
    run.model.train()
    loss_sum = torch.zeros((), device=device)
    first = step * cfg.batch_size + dist.dp_rank * micro * cfg.grad_accum
    for m in range(cfg.grad_accum):
        idx = run.task.sampler.items(first + m * micro, micro)
        with (
            dist.no_sync_unless(run.train_model, m == cfg.grad_accum - 1),
            autocast_for(device, cfg.precision),
        ):
            loss = run.task.loss(run.train_model, idx, device) / cfg.grad_accum
        loss.backward()
        loss_sum += loss.detach()
    grad_norm = dist.clip_grad_norm(run.model, cfg.grad_clip)
    with _interrupts_deferred():  # weights, schedule and step count move together
        run.optimizer.step()
        run.scheduler.step()
        run.completed = step + 1
    run.optimizer.zero_grad(set_to_none=True)
    loss_value = dist.mean(loss_sum).item()
    if not math.isfinite(loss_value):
        raise ResourceError(
            f"loss became {loss_value} at step {step + 1}; lower --lr or raise --warmup-steps."
        )
    return loss_value, grad_norm


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold a Ctrl-C until the block is done, then raise it.

    Between ``optimizer.step()`` and recording the step, an interrupt would leave weights
    one update ahead of the step a checkpoint says they hold. Signals only reach the main
    thread, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if caught:
        raise KeyboardInterrupt


def _log_step(
    run: _Run,
    done: int,
    loss_value: float,
    grad_norm: torch.Tensor,
    last_log: tuple[float, int],
    t_start: float,
) -> tuple[float, int]:
    """Write a step's log line (tokens/s since the previous line); returns (now, done)."""
    now = time.perf_counter()
    t_last, step_last = last_log
    tps = (done - step_last) * run.tokens_per_step / max(now - t_last, 1e-9)
    write_record(
        run.log,
        {
            "step": done,
            "loss": loss_value,
            "lr": run.scheduler.get_last_lr()[0],
            "grad_norm": float(
                grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            ),
            "tokens_per_s": tps,
            "epoch": run.task.sampler.epoch_of(done * run.cfg.batch_size),
            "elapsed_s": now - t_start,
        },
    )
    return now, done


def _finish(run: _Run, metrics: dict[str, float], elapsed: float) -> TrainResult:
    """Save the last step, evaluate a plain copy, write the model dir and eval.json; tear down.

    Ctrl-C anywhere in here checkpoints the last step as it does mid-run, so ``--resume``
    only has this part left to do."""
    dist, steps = run.dist, run.steps
    tokens_per_s = (steps - run.start_step) * run.tokens_per_step / max(elapsed, 1e-9)
    with _saved_on_interrupt(run):
        weights = (
            _save(run, steps)
            if steps > run.start_step
            else dist.full_state(run.model, run.optimizer)[0]
        )
        if dist.is_main:
            final = build_model(run.model_cfg)  # a plain copy on CPU, whatever the wrapping
            final.load_state_dict(with_tied(weights, run.model_cfg))
            metrics = _final_evaluation(run, final)
            _write_model_dir(run, final, metrics, tokens_per_s)
    dist.barrier()
    dist.teardown()
    return TrainResult(run.out, steps, metrics, tokens_per_s)


def _final_evaluation(run: _Run, final: nn.Module) -> dict[str, float]:
    """The whole held-out set (no ``--eval-batches`` cap): the number in ``eval.json``."""
    final.eval()
    return run.task.evaluate(final.to(run.device), run.device, run.micro * run.cfg.grad_accum, None)


def _write_model_dir(
    run: _Run, final: nn.Module, metrics: dict[str, float], tokens_per_s: float
) -> None:
    """Weights, the log's last line and eval.json; rank 0 only."""
    save_model_dir(final, run.out)
    write_record(
        run.log,
        {"step": run.steps, "event": "final", **metrics, "train_tokens_per_s": tokens_per_s},
    )
    atomic.write_json(
        run.out / "eval.json", {"step": run.steps, "data": run.cfg.resolved_data(), **metrics}
    )
    run.log.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m edgezoo.zoo.train``: the entry point torchrun starts on every process."""
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
