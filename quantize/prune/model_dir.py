"""``prune_dir``: from one model dir to a new, pruned model dir, with a report of the change.

Ties the tools to model dirs in the one order that works: structured pruning →
optional recovery fine-tune through ``zoo.train`` → unstructured sparsity (so the
fine-tune cannot refill the zeros) → optional evaluation before and after. The new dir
is written atomically with ``prune.json`` (``PruneReport``) saying what was removed;
``PruneReport.table`` is what ``edgezoo prune`` prints.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgezoo.errors import ConfigError
from edgezoo.jsonfile import read_object
from edgezoo.quantize.prune.blocks import count_parameters, format_count
from edgezoo.quantize.prune.importance import (
    IMPORTANCE,
    activation_importance,
    calibration_batches,
)
from edgezoo.quantize.prune.plan import LayerPlan, check_fraction
from edgezoo.quantize.prune.structured import structured_prune
from edgezoo.quantize.prune.unstructured import linear_sparsity, magnitude_prune

if TYPE_CHECKING:
    from torch import nn

REPORT_FILE = "prune.json"


@dataclass
class PruneReport:
    source: str
    out: str | None
    family: str
    importance: str
    heads: float  # fractions asked for
    mlp: float
    sparsity_target: float
    params_before: int
    params_after: int
    layers: list[LayerPlan]
    sparsity: float = 0.0  # achieved, over the block Linear weights
    sparsity_before: float = 0.0
    finetune_steps: int = 0
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """The human summary ``edgezoo prune`` prints."""
        lines = [
            f"{self.source} -> {self.out}   (family {self.family}, importance {self.importance})"
        ]
        rows = [("params", format_count(self.params_before), format_count(self.params_after))]
        if self.layers:
            first = self.layers[0]
            kv = self.family == "lm"
            before = f"{first.heads_total}" + (f" ({first.units_total} kv)" if kv else "")
            after = f"{first.heads_kept}" + (f" ({len(first.units_kept)} kv)" if kv else "")
            rows.append(("heads / layer", before, after))
            rows.append(("mlp channels", str(first.channels_total), str(len(first.channels_kept))))
        rows.append(("sparsity", f"{self.sparsity_before:.1%}", f"{self.sparsity:.1%}"))
        for key in ("perplexity", "loss", "accuracy", "macro_f1"):
            if key in self.metrics_before or key in self.metrics_after:
                rows.append(
                    (key, _metric(self.metrics_before, key), _metric(self.metrics_after, key))
                )
        change = self.params_after / max(self.params_before, 1) - 1
        lines.append(f"{'':<16} {'before':>12} {'after':>12}")
        for name, b, a in rows:
            suffix = f"   ({change:+.1%})" if name == "params" else ""
            lines.append(f"{name:<16} {b:>12} {a:>12}{suffix}")
        if self.finetune_steps:
            lines.append(f"recovery fine-tune: {self.finetune_steps} steps")
        if self.layers:
            lines.append("")
            lines.append(f"{'layer':<6} {'heads kept':<26} {'mlp kept':>12}")
            for p in self.layers:
                units = ",".join(map(str, p.units_kept))
                label = "kv groups" if self.family == "lm" else "heads"
                heads = f"{p.heads_kept}/{p.heads_total} ({label} {units})"
                lines.append(
                    f"{p.index:<6} {heads:<26} {len(p.channels_kept):>5}/{p.channels_total:<6}"
                )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _metric(metrics: dict[str, float], key: str) -> str:
    return f"{metrics[key]:.4g}" if key in metrics else "-"


def _check_request(src: Path, out: Path, importance: str, finetune_steps: int, force: bool) -> None:
    """Refuse, before loading anything, what ``prune_dir`` cannot or must not do."""
    if importance not in IMPORTANCE:
        raise ConfigError(f"--importance {importance!r}: choose one of {', '.join(IMPORTANCE)}.")
    if finetune_steps < 0:
        raise ConfigError(f"--finetune-steps {finetune_steps} must be 0 (none) or more.")
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the model being pruned; write to a new dir.")
    if out.resolve() in src.resolve().parents:
        # --force replaces --out whole: that would delete the source and its siblings
        raise ConfigError(
            f"--out {out} contains the model being pruned ({src}); write to a new dir beside it."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(
            f"{out} already exists and is not empty; pick another --out or pass --force."
        )


def _heads_note(report: PruneReport) -> None:
    """Say so when ``--heads`` was smaller than one removable unit and removed nothing."""
    asked = [p for p in report.layers if report.heads and p.units_total > 1]
    if asked and len(asked[0].units_kept) == asked[0].units_total:
        unit = (
            f"one KV group ({asked[0].heads_per_unit} query heads) of {asked[0].units_total}"
            if report.family == "lm"
            else f"one head of {asked[0].units_total}"
        )
        report.notes.append(f"--heads {report.heads} removed nothing: the smallest step is {unit}.")


def prune_dir(
    model_dir: str | Path,
    out: str | Path,
    heads: float = 0.0,
    mlp: float = 0.0,
    sparsity: float = 0.0,
    importance: str = "weight",
    calib_data: str | None = None,
    calib_batches: int = 8,
    finetune_steps: int = 0,
    data: str | None = None,
    finetune_lr: float = 1e-3,
    finetune_batch_size: int = 16,
    evaluate: bool = False,
    force: bool = False,
    progress: bool = False,
) -> PruneReport:
    """Prune ``model_dir`` into a new model dir ``out`` and report what changed.

    Structured pruning first, then the optional recovery fine-tune (``zoo.train`` with
    ``init_from`` the pruned weights: the pruned architecture is kept), then unstructured
    sparsity (after the fine-tune, which would otherwise refill the zeros). ``out`` is
    built beside its final place and renamed in only when complete. With ``evaluate``,
    perplexity (LM) or accuracy (classifier) on ``data`` (default: the built-in corpus)
    before and after.
    """
    from edgezoo import atomic
    from edgezoo.zoo.modeldir import load_model, save_model_dir
    from edgezoo.zoo.tokenizer import copy_tokenizer

    heads, mlp = check_fraction("heads", heads), check_fraction("mlp", mlp)
    sparsity = check_fraction("sparsity", sparsity)
    src, out = Path(model_dir), Path(out)
    _check_request(src, out, importance, finetune_steps, force)
    model = load_model(src)
    cfg = model.config
    act = None
    if importance == "activation" and (heads or mlp):
        act = activation_importance(
            model, calibration_batches(src, cfg, calib_data or data, calib_batches)
        )
    pruned, plans = structured_prune(model, heads, mlp, act)
    report = PruneReport(
        source=str(src),
        out=str(out),
        family=cfg.family,
        importance=importance,
        heads=heads,
        mlp=mlp,
        sparsity_target=sparsity,
        params_before=count_parameters(model),
        params_after=count_parameters(pruned),
        layers=plans,
        finetune_steps=finetune_steps,
        sparsity_before=linear_sparsity(model),
    )
    _heads_note(report)
    if evaluate:
        report.metrics_before = _evaluate(src, data)
    with atomic.atomic_dir(out) as tmp:
        if finetune_steps:
            _finetune(
                pruned, src, tmp, finetune_steps, data, finetune_lr, finetune_batch_size, progress
            )
            pruned = load_model(tmp)
        else:
            save_model_dir(pruned, tmp)
            copy_tokenizer(src, tmp)
        if sparsity:
            magnitude_prune(pruned, sparsity)
            save_model_dir(pruned, tmp)
        report.sparsity = linear_sparsity(pruned)
        if evaluate:
            report.metrics_after = _evaluate(tmp, data)
        atomic.write_json(tmp / REPORT_FILE, report.to_dict())
    return report


def _evaluate(model_dir: Path, data: str | None) -> dict[str, float]:
    from edgezoo.zoo.evaluate import evaluate_dir

    return evaluate_dir(model_dir, data, "val")


def _finetune(
    model: nn.Module,
    src: Path,
    out: Path,
    steps: int,
    data: str | None,
    lr: float,
    batch_size: int,
    progress: bool,
) -> None:
    """Recovery fine-tune of the pruned ``model`` into ``out`` through ``zoo.train``."""
    from edgezoo.zoo.checkpoint import checkpoint_dir
    from edgezoo.zoo.modeldir import save_model_dir
    from edgezoo.zoo.presets import preset_names
    from edgezoo.zoo.tokenizer import copy_tokenizer
    from edgezoo.zoo.train import RUN_FILE, train
    from edgezoo.zoo.train_config import TrainConfig

    cfg = model.config
    context = None
    run_file = src / RUN_FILE
    if run_file.is_file():  # the source run's context, when it was trained here
        fix = "restore it or delete it (the fine-tune then uses the model's full context)."
        context = read_object(run_file, fix).get("context")
    if cfg.family == "lm":
        context = min(context or cfg.max_position_embeddings, cfg.max_position_embeddings)
    with tempfile.TemporaryDirectory(prefix=".prune-stage-", dir=out.parent) as stage:
        save_model_dir(model, stage)
        copy_tokenizer(src, stage)
        train(
            TrainConfig(
                family=cfg.family,
                size=cfg.preset if cfg.preset in preset_names(cfg.family) else "nano",
                data=data,
                out=str(out),
                steps=steps,
                init_from=stage,
                context=context,
                lr=lr,
                batch_size=batch_size,
                warmup_steps=max(1, min(20, steps // 10)),
                eval_every=steps,
                checkpoint_every=steps,
                keep_checkpoints=1,
                progress=progress,
            )
        )
    # The fine-tune's checkpoints and run.json point at temporary paths and cannot be
    # resumed; its settings are in prune.json and its loss curve in training.jsonl.
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
    (out / RUN_FILE).unlink(missing_ok=True)
