"""Hyperparameter search on Optuna: ``edgezoo tune``.

Each trial is one short ``train()`` in this process, in its own dir under ``OUT/trials``.
Its mid-run evaluations go to the trial (``train``'s ``on_eval`` hook), so a pruner can
stop a trial that is behind the others at the same step. The study lives in an RDB
storage (SQLite by default, in ``OUT``), opened with ``load_if_exists``: running the same
command again resumes it, and several processes (or machines, on a shared database) can
work on one study. A trial cut by Ctrl-C is run again on resume. What comes out is in
``zoo.tune_report``: the best settings as an ``edgezoo train`` line, and plots.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from edgezoo.errors import ConfigError, ResourceError
from edgezoo.zoo.train import train
from edgezoo.zoo.train_config import TrainConfig
from edgezoo.zoo.tune_cli import PRUNERS, SAMPLERS
from edgezoo.zoo.tune_space import Param, build_space, grid_of, trial_settings

# What a trial is scored on, per family, and which way is better.
OBJECTIVE = {
    "lm": ("val_loss", "minimize"),
    "cls": ("val_accuracy", "maximize"),
    "s2s": ("val_loss", "minimize"),
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneConfig:
    """A search: the base run, the space, the sampler/pruner and where the study lives."""

    out: str
    family: str = "lm"
    size: str = "nano"
    data: str | None = None
    steps: int = 200  # per trial
    context: int | None = None
    vocab_size: int | None = None
    batch_size: int = 16  # used when batch_size is not searched
    eval_every: int | None = None  # default: steps // 5, four mid-run reports
    eval_batches: int = 8
    val_frac: float = 0.05
    seed: int = 1337
    device: str = "cpu"
    trials: int = 20  # finished trials (complete or pruned) the study should hold
    timeout: float | None = None  # seconds for this process
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None  # default: sqlite:///OUT/study.db
    study_name: str = "edgezoo-tune"
    search: list[str] | None = None  # parameter names (default: all tunable)
    ranges: list[str] = field(default_factory=list)  # NAME=LOW:HIGH[:log] | NAME=A,B
    grid_points: int = 3  # per numeric range, with --sampler grid

    @property
    def every(self) -> int:
        return self.eval_every or max(1, self.steps // 5)

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"


@dataclass
class TuneResult:
    study: optuna.Study
    best: FrozenTrial | None  # None: no trial finished with a value
    command: str | None  # the best trial as an ``edgezoo train`` line


def base_config(tc: TuneConfig) -> TrainConfig:
    """The run every trial starts from; a trial overrides only what it samples."""
    return TrainConfig(
        family=tc.family,
        size=tc.size,
        data=tc.data,
        out=str(Path(tc.out) / "trials"),
        steps=tc.steps,
        batch_size=tc.batch_size,
        context=tc.context,
        vocab_size=tc.vocab_size,
        val_frac=tc.val_frac,
        eval_every=tc.every,
        eval_batches=tc.eval_batches,
        checkpoint_every=tc.steps,  # only the final save: trials are short
        keep_checkpoints=1,
        seed=tc.seed,
        device=tc.device,
        progress=False,
    )


def check(tc: TuneConfig) -> None:
    """One-line errors for settings no trial could use, before any storage is opened."""
    if tc.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {tc.sampler!r}; use one of {', '.join(SAMPLERS)}")
    if tc.pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {tc.pruner!r}; use one of {', '.join(PRUNERS)}")
    if tc.trials < 1 or tc.grid_points < 1:
        raise ConfigError("--trials and --grid-points must be 1 or more.")
    if tc.pruner != "none" and tc.every >= tc.steps:
        raise ConfigError(
            f"a budget too small to evaluate: --steps {tc.steps} has no mid-run evaluation at "
            f"--eval-every {tc.every} for the {tc.pruner} pruner; raise --steps, lower "
            "--eval-every or use --pruner none."
        )


def make_sampler(tc: TuneConfig, space: dict[str, Param]) -> optuna.samplers.BaseSampler:
    """Grid over ``grid_points`` values per range; TPE starts from a quarter of the trials
    at random (at least 2, at most Optuna's 10), so short studies get to use its model."""
    if tc.sampler == "grid":
        return optuna.samplers.GridSampler(grid_of(space, tc.grid_points), seed=tc.seed)
    if tc.sampler == "random":
        return optuna.samplers.RandomSampler(seed=tc.seed)
    startup = max(2, min(10, tc.trials // 4))
    return optuna.samplers.TPESampler(seed=tc.seed, n_startup_trials=startup)


def make_pruner(tc: TuneConfig) -> optuna.pruners.BasePruner:
    if tc.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if tc.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=tc.every, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(tc: TuneConfig, space: dict[str, Param]) -> optuna.Study:
    """Create the study, or load it: a resumed or shared search continues the same one."""
    Path(tc.out).mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        storage=tc.storage_url(),
        study_name=tc.study_name,
        direction=OBJECTIVE[tc.family][1],
        sampler=make_sampler(tc, space),
        pruner=make_pruner(tc),
        load_if_exists=True,
    )


def suggest(trial: optuna.Trial, p: Param) -> float:
    if p.choices:
        return trial.suggest_categorical(p.name, list(p.choices))
    if p.is_int:
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, log=p.log)


def trial_dir(tc: TuneConfig, number: int) -> Path:
    return Path(tc.out) / "trials" / f"trial-{number:04d}"


def objective(
    tc: TuneConfig, base: TrainConfig, space: dict[str, Param]
) -> Callable[[optuna.Trial], float]:
    """Train one sampled config; its mid-run evaluations are reported, and may prune it."""
    metric = OBJECTIVE[tc.family][0]

    def run(trial: optuna.Trial) -> float:
        params = {name: suggest(trial, p) for name, p in space.items()}
        cfg = replace(base, out=str(trial_dir(tc, trial.number)), **trial_settings(base, params))
        trial.set_user_attr("train_config", asdict(cfg))

        def on_eval(step: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[metric], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{metric} {metrics[metric]:.4f} at step {step}")

        try:
            result = train(cfg, on_eval=on_eval)
        except ResourceError as e:  # diverged (non-finite loss): a bad config, not a crash
            trial.set_user_attr("diverged", str(e))
            raise optuna.TrialPruned(str(e)) from None
        return result.metrics[metric]

    return run


def retry_interrupted(study: optuna.Study) -> int:
    """Queue once more every failed trial (a Ctrl-C, a crash) with its own values."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    for t in failed:
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return len(failed)


def clean_trial_dirs(tc: TuneConfig, study: optuna.Study) -> None:
    """Delete the dirs of finished trials except the best one's (running ones stay)."""
    best = _best(study)
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished() and (best is None or t.number != best.number):
            shutil.rmtree(trial_dir(tc, t.number), ignore_errors=True)


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_tune(tc: TuneConfig) -> TuneResult:
    """Run (or resume) the search until the study holds ``tc.trials`` finished trials."""
    from edgezoo.zoo.tune_report import write_outputs

    check(tc)
    base = base_config(tc)
    space = build_space(base, tc.steps, tc.search, tc.ranges)
    study = open_study(tc, space)
    _note_grid(tc, space)
    retried = retry_interrupted(study)
    remaining = tc.trials - _finished(study)
    _say(f"study {tc.study_name!r} in {tc.storage_url()}: {_finished(study)} finished trials"
         f"{f', {retried} interrupted one(s) queued again' if retried else ''}; {max(0, remaining)} to run")  # fmt: skip
    if remaining > 0:
        try:
            study.optimize(
                objective(tc, base, space),
                n_trials=remaining,
                timeout=tc.timeout,
                callbacks=[
                    optuna.study.MaxTrialsCallback(tc.trials, states=FINISHED),
                    lambda s, _t: clean_trial_dirs(tc, s),
                ],
            )
        except KeyboardInterrupt:
            _say("interrupted: run the same command again to resume the study.")
            raise
    clean_trial_dirs(tc, study)
    best = _best(study)
    command = write_outputs(tc, study, best) if best is not None else None
    return TuneResult(study, best, command)


def _note_grid(tc: TuneConfig, space: dict[str, Param]) -> None:
    if tc.sampler != "grid":
        return
    size = 1
    for values in grid_of(space, tc.grid_points).values():
        size *= len(values)
    if size > tc.trials:
        _say(f"the grid has {size} points; --trials {tc.trials} runs {tc.trials} of them")


def _say(message: str) -> None:
    print(f"tune: {message}", file=sys.stderr)


def trial_values(study: optuna.Study) -> list[dict[str, Any]]:
    """Each trial's number, state, value and params: the search's history as plain data."""
    return [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
        for t in study.get_trials(deepcopy=False)
    ]
