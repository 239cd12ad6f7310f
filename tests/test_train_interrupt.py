"""Ctrl-C during an evaluation or a checkpoint save (mid-run or at the end), and a torn log
line, on resume."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import lm_train_config, loss_curve

from edgezoo.zoo import checkpoint as ckpt
from edgezoo.zoo import train as train_mod
from edgezoo.zoo.train import train

STEPS = 12


@pytest.fixture(scope="module")
def reference_run(text_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    train(lm_train_config(text_corpus, run, steps=STEPS, eval_every=5, checkpoint_every=4))
    return run


@pytest.fixture(scope="module")
def reference_curve(reference_run) -> dict[int, float]:
    return loss_curve(reference_run)


def _interrupt_then_resume(
    text_corpus, run, expected_step: int, reference_curve, monkeypatch
) -> None:
    with pytest.raises(KeyboardInterrupt):
        train(lm_train_config(text_corpus, run, steps=STEPS, eval_every=5, checkpoint_every=4))
    saved = ckpt.latest_valid(run)
    assert saved.step == expected_step  # the step whose update the weights hold
    assert json.loads((saved.path / ckpt.META_FILE).read_text())["step"] == expected_step
    monkeypatch.undo()  # the resumed run is not interrupted
    train(lm_train_config(text_corpus, run, steps=STEPS, eval_every=5, resume=True))
    assert loss_curve(run) == reference_curve


def test_ctrl_c_during_evaluation_saves_the_step_just_completed(
    text_corpus, tmp_path, monkeypatch, reference_curve
):
    def interrupted_eval(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_evaluate", interrupted_eval)
    _interrupt_then_resume(text_corpus, tmp_path / "run", 5, reference_curve, monkeypatch)


def test_ctrl_c_during_checkpoint_save_saves_that_step(
    text_corpus, tmp_path, monkeypatch, reference_curve
):
    real_save = ckpt.save_checkpoint
    calls = []

    def interrupted_save(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:  # the loop's save at step 4: Ctrl-C before it lands
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", interrupted_save)
    _interrupt_then_resume(text_corpus, tmp_path / "run", 4, reference_curve, monkeypatch)
    assert calls[:2] == [4, 4]


def _recording_saves(monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """Steps passed to ``save_checkpoint``; Ctrl-C before the first save of ``interrupt_at``."""
    real_save, calls = ckpt.save_checkpoint, []

    def save(*args, **kwargs):
        calls.append(args[1])
        if calls.count(interrupt_at) == 1 and args[1] == interrupt_at:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    return calls


def _same_final_outputs(run, reference_run) -> None:
    for name in ("eval.json", "model.safetensors"):
        assert (run / name).read_bytes() == (reference_run / name).read_bytes()


def test_ctrl_c_during_the_final_save_saves_the_last_step(
    text_corpus, tmp_path, monkeypatch, reference_run, reference_curve, capsys
):
    calls = _recording_saves(monkeypatch, interrupt_at=STEPS)
    _interrupt_then_resume(text_corpus, tmp_path / "run", STEPS, reference_curve, monkeypatch)
    assert calls == [4, 8, STEPS, STEPS]  # the interrupted final save, then the handler's
    assert f"checkpoint at step {STEPS} saved" in capsys.readouterr().err
    _same_final_outputs(tmp_path / "run", reference_run)


def test_ctrl_c_during_the_final_evaluation_keeps_the_saved_last_step(
    text_corpus, tmp_path, monkeypatch, reference_run, reference_curve, capsys
):
    def interrupted_final_eval(run, final):
        raise KeyboardInterrupt

    calls = _recording_saves(monkeypatch)
    monkeypatch.setattr(train_mod, "_final_evaluation", interrupted_final_eval)
    _interrupt_then_resume(text_corpus, tmp_path / "run", STEPS, reference_curve, monkeypatch)
    assert calls == [4, 8, STEPS]  # the final save had landed: not written twice
    assert f"checkpoint at step {STEPS} saved" in capsys.readouterr().err
    _same_final_outputs(tmp_path / "run", reference_run)


def test_torn_last_log_line_is_dropped_on_resume(text_corpus, tmp_path, reference_curve):
    run = tmp_path / "run"
    train(lm_train_config(text_corpus, run, steps=STEPS, eval_every=5, checkpoint_every=4))
    for later in ckpt.list_checkpoints(run)[1:]:  # as if killed at step 9, mid-write
        shutil.rmtree(later)
    log = run / "training.jsonl"
    kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= 8]
    log.write_text("\n".join(kept) + '\n{"step": 9, "loss": 3.1')
    with pytest.warns(UserWarning, match="unreadable line"):
        train(lm_train_config(text_corpus, run, steps=STEPS, eval_every=5, resume=True))
    lines = log.read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert loss_curve(run) == reference_curve
