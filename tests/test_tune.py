"""`edgezoo tune`: resume from SQLite, pruning, the best command line, the grid, bad input.

Trials are tiny (nano reshaped, context 32, a dozen steps) so a study of a few trials takes
seconds; what is checked is the search's behaviour, not the losses it finds.
"""

from __future__ import annotations

import itertools
import json

import pytest

optuna = pytest.importorskip("optuna")

from conftest import lm_train_config  # noqa: E402

from edgezoo.cli import build_parser, main  # noqa: E402
from edgezoo.errors import ConfigError  # noqa: E402
from edgezoo.zoo import train as train_mod  # noqa: E402
from edgezoo.zoo import tune as tune_mod  # noqa: E402
from edgezoo.zoo.presets import make_config, non_embedding_params, resized  # noqa: E402
from edgezoo.zoo.train_config import TrainConfig, config_from_args  # noqa: E402
from edgezoo.zoo.tune import TuneConfig, open_study, run_tune  # noqa: E402
from edgezoo.zoo.tune_space import COMMAND_FIELDS, budget_width, build_space  # noqa: E402

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def tiny_tune(corpus, out, **overrides) -> TuneConfig:
    base = dict(
        out=str(out),
        data=str(corpus),
        steps=12,
        context=32,
        vocab_size=600,
        batch_size=4,
        eval_every=4,
        eval_batches=2,
        trials=2,
        pruner="none",
        search=["lr"],
        ranges=["lr=1e-3:1e-2:log", "warmup_steps=0"],
    )
    return TuneConfig(**{**base, **overrides})


def _trials(tc: TuneConfig, states=None):
    study = optuna.load_study(study_name=tc.study_name, storage=tc.storage_url())
    return study.get_trials(states=states)


def test_eval_callback_stops_training_and_sees_each_evaluation(text_corpus, tmp_path):
    seen = []

    def on_eval(step, metrics):
        seen.append((step, metrics["val_loss"]))
        if step == 8:
            raise optuna.TrialPruned("behind")

    run = tmp_path / "run"
    with pytest.raises(optuna.TrialPruned):
        train_mod.train(lm_train_config(text_corpus, run, eval_every=4), on_eval=on_eval)
    assert [s for s, _ in seen] == [4, 8]
    steps = [json.loads(line)["step"] for line in (run / "training.jsonl").read_text().splitlines()]
    assert max(steps) == 8  # stopped at the report, not at step 24
    assert not (run / "model.safetensors").exists()


def test_interrupted_study_resumes_from_its_sqlite_file(text_corpus, tmp_path, monkeypatch):
    tc = tiny_tune(text_corpus, tmp_path / "study", trials=2)
    run_tune(tc)
    assert len(_trials(tc, FINISHED)) == 2

    real_train = tune_mod.train

    def ctrl_c_at_first_eval(cfg, on_eval=None):
        def interrupted(step, metrics):
            raise KeyboardInterrupt

        return real_train(cfg, on_eval=interrupted)

    monkeypatch.setattr(tune_mod, "train", ctrl_c_at_first_eval)
    with pytest.raises(KeyboardInterrupt):
        run_tune(tiny_tune(text_corpus, tmp_path / "study", trials=4))
    failed = _trials(tc, (optuna.trial.TrialState.FAIL,))
    assert len(failed) == 1 and len(_trials(tc, FINISHED)) == 2

    monkeypatch.setattr(tune_mod, "train", real_train)
    result = run_tune(tiny_tune(text_corpus, tmp_path / "study", trials=4))
    trials = _trials(tc)
    assert len(_trials(tc, FINISHED)) == 4 and len(trials) == 5
    retry = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params  # the cut trial, again
    kept = sorted(p.name for p in (tmp_path / "study" / "trials").iterdir())
    assert kept == [f"trial-{result.best.number:04d}"]  # every other trial dir is cleaned


def test_median_pruner_cuts_a_trial_that_is_behind(text_corpus, tmp_path):
    tc = tiny_tune(text_corpus, tmp_path / "study", trials=3, pruner="median",
                   ranges=["lr=1e-5:1e-2:log", "warmup_steps=0"])  # fmt: skip
    study = open_study(tc, build_space(tune_mod.base_config(tc), tc.steps, tc.search, tc.ranges))
    for lr in (5e-3, 5e-3, 1e-5):  # the last barely learns: behind at the first report
        study.enqueue_trial({"lr": lr, "warmup_steps": 0})
    run_tune(tc)
    trials = _trials(tc)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert list(trials[0].intermediate_values) == [4, 8]
    assert list(trials[2].intermediate_values) == [4]  # stopped at its first report
    assert trials[2].intermediate_values[4] > trials[0].intermediate_values[4]


def test_best_command_parses_and_reproduces_the_best_trial(text_corpus, tmp_path):
    tc = tiny_tune(
        text_corpus, tmp_path / "study", trials=2, sampler="random",
        search=["lr", "layers", "weight_decay", "batch_size"],
        ranges=["layers=1:3", "batch_size=4,8", "warmup_steps=2"],
    )  # fmt: skip
    result = run_tune(tc)
    command = (tmp_path / "study" / "best_command.txt").read_text().strip()
    assert command == result.command and command.startswith("edgezoo train ")
    import shlex

    args = build_parser().parse_args(shlex.split(command)[1:])
    parsed = config_from_args(args)
    ran = TrainConfig(**result.best.user_attrs["train_config"])
    for name in COMMAND_FIELDS:
        assert getattr(parsed, name) == getattr(ran, name), name
    assert parsed.layers == result.best.params["layers"]
    assert parsed.width == budget_width(ran, parsed.layers)
    best = json.loads((tmp_path / "study" / "best_params.json").read_text())
    assert best["trial"] == result.best.number and best["params"] == result.best.params
    assert (tmp_path / "study" / "optimization_history.png").stat().st_size > 0


def test_grid_sampler_enumerates_the_grid(text_corpus, tmp_path):
    tc = tiny_tune(
        text_corpus, tmp_path / "study", sampler="grid", steps=4, trials=50, grid_points=3,
        search=["lr", "batch_size"], ranges=["lr=1e-3:1e-2:log", "batch_size=4,8"],
    )  # fmt: skip
    run_tune(tc)
    seen = sorted((t.params["lr"], t.params["batch_size"]) for t in _trials(tc))
    assert seen == sorted(itertools.product([0.001, 0.00316, 0.01], [4, 8]))


def test_budget_width_keeps_the_non_embedding_parameters():
    base = TrainConfig(size="nano")
    target = non_embedding_params(make_config("lm", "nano"))
    for layers in (2, 4, 8):
        got = non_embedding_params(
            resized(make_config("lm", "nano"), layers, budget_width(base, layers))
        )
        assert abs(got - target) / target < 0.15, layers
    assert budget_width(base, 4) == 128  # the preset itself


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--range", "momentum=0.1:0.9"], "unknown parameter 'momentum'"),
        (["--search", "lr,dropout"], "unknown parameter 'dropout'"),
        (["--range", "lr=0.01:0.001"], "is empty"),
        (["--range", "lr=0:0.1:log"], "log range needs LOW > 0"),
        (["--range", "batch_size="], "has no range"),
        (["--range", "layers=1:3000"], "cannot hold"),
        (["--steps", "5", "--eval-every", "5"], "budget too small to evaluate"),
    ],
)
def test_bad_input_gets_one_line(tmp_path, capsys, flags, message):
    assert main(["tune", "--out", str(tmp_path / "s"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "s" / "study.db").exists()  # refused before a study was made


def test_train_refuses_a_width_the_heads_cannot_split(text_corpus, tmp_path):
    with pytest.raises(ConfigError, match="multiple of 8"):
        train_mod.train(lm_train_config(text_corpus, tmp_path / "run", width=100))


def test_without_optuna_tune_names_its_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a)
    )
    assert main(["tune", "--out", str(tmp_path / "s")]) == 2
    assert 'needs the tune extra: pip install "edgezoo[tune]"' in capsys.readouterr().err
