"""Training: learning, exact resume (also after SIGKILL), checkpoints, fine-tuning, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cls_train_config, lm_train_config, loss_curve
from safetensors.torch import load_file

from edgezoo.errors import CheckpointError, ConfigError, DataError, ResourceError
from edgezoo.zoo import checkpoint as ckpt
from edgezoo.zoo import train as train_mod
from edgezoo.zoo.data import token_cache
from edgezoo.zoo.metrics import majority_baseline, unigram_loss
from edgezoo.zoo.tokenizer import load_tokenizer
from edgezoo.zoo.train import TrainConfig, train


def test_lm_learns_below_unigram_and_transformers_opens_it(text_corpus, tmp_path):
    # 300 steps: over seeds the margins below were >= 0.48 nats (200 steps left one at 0.01).
    result = train(
        lm_train_config(text_corpus, tmp_path / "run", steps=300, eval_every=150, lr=5e-3)
    )
    tok = load_tokenizer(tmp_path / "run")
    splits = token_cache(str(text_corpus), tok, 0.05)
    baseline = unigram_loss(splits.train, splits.val, tok.get_vocab_size())
    assert result.metrics["val_loss"] < baseline - 0.3, (result.metrics, baseline)
    curve = loss_curve(tmp_path / "run")
    assert (
        np.mean([curve[s] for s in range(291, 301)])
        < np.mean([curve[s] for s in range(1, 6)]) - 1.0
    )
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "run")
    ids = fast("def main():", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], tok.get_vocab_size())


def test_resume_replays_the_uninterrupted_run_exactly(text_corpus, tmp_path):
    run = tmp_path / "run"
    train(lm_train_config(text_corpus, run))
    full_curve = loss_curve(run)
    final_weights = (run / "model.safetensors").read_bytes()
    # Pretend the run died after step 8: only that checkpoint survives.
    for c in ckpt.list_checkpoints(run)[1:]:
        shutil.rmtree(c)
    train(lm_train_config(text_corpus, run, resume=True))
    assert loss_curve(run) == full_curve
    assert (run / "model.safetensors").read_bytes() == final_weights


def test_sigkill_mid_run_then_resume_gives_the_same_curve(text_corpus, tmp_path):
    reference = tmp_path / "reference"
    train(lm_train_config(text_corpus, reference, steps=60, checkpoint_every=5))
    run = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "edgezoo.zoo.train",
        "--data",
        str(text_corpus),
        "--out",
        str(run),
        "--steps",
        "60",
        "--batch-size",
        "8",
        "--context",
        "64",
        "--vocab-size",
        "600",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "4",
        "--eval-every",
        "1000",
        "--checkpoint-every",
        "5",
        "--keep-checkpoints",
        "3",
        "--log-every",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        args, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step-00000010").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.safetensors").exists()  # it really died mid-run
    killed_at = max(loss_curve(run))
    assert killed_at < 60
    done = subprocess.run(
        [*args, "--resume"], env=os.environ.copy(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert loss_curve(run) == loss_curve(reference)
    assert not [
        p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")
    ]  # no half checkpoints


def test_corrupt_checkpoint_falls_back_to_the_previous_good_one(text_corpus, tmp_path):
    run = tmp_path / "run"
    train(lm_train_config(text_corpus, run, steps=16))
    newest = ckpt.list_checkpoints(run)[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.warns(UserWarning, match="checksum"):
        found = ckpt.latest_valid(run)
    assert found.step == 8
    with pytest.warns(UserWarning):
        train(lm_train_config(text_corpus, run, steps=16, resume=True))
    assert max(loss_curve(run)) == 16


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_used_dirs(text_corpus, tmp_path):
    run = tmp_path / "run"
    train(lm_train_config(text_corpus, run, steps=8))
    with pytest.raises(ConfigError, match="batch_size"):
        train(lm_train_config(text_corpus, run, steps=8, batch_size=16, resume=True))
    with pytest.raises(ConfigError, match="--resume"):
        train(lm_train_config(text_corpus, run, steps=8))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(lm_train_config(text_corpus, tmp_path / "fresh", resume=True))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"family": "gpt"}, "valid families: lm, cls"),
        ({"size": "huge"}, "valid sizes: zepto, .*nano, micro"),
        ({"data": "/nonexistent/corpus"}, "does not exist"),
    ],
)
def test_bad_settings_get_clear_errors(text_corpus, tmp_path, kw, match):
    with pytest.raises((ConfigError, DataError), match=match):
        train(lm_train_config(text_corpus, tmp_path / "run", **kw))


def test_not_enough_disk_fails_before_writing_and_keeps_the_last_checkpoint(
    text_corpus, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    train(lm_train_config(text_corpus, run, steps=8))
    before = {p.name for p in ckpt.list_checkpoints(run)}
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ResourceError, match="not enough disk"):
        train(lm_train_config(text_corpus, run, steps=16, resume=True))
    assert {p.name for p in ckpt.list_checkpoints(run)} == before
    assert ckpt.verify(ckpt.list_checkpoints(run)[-1]).step == 8


def test_out_of_memory_says_what_to_change(text_corpus, tmp_path, monkeypatch):
    def boom(*_args, **_kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod.LMTask, "loss", boom)
    with pytest.raises(ResourceError, match="--grad-accum"):
        train(lm_train_config(text_corpus, tmp_path / "run"))


def test_grad_accumulation_matches_one_big_batch(text_corpus, tmp_path):
    a = train(lm_train_config(text_corpus, tmp_path / "a", steps=6))
    b = train(lm_train_config(text_corpus, tmp_path / "b", steps=6, grad_accum=4))
    la, lb = loss_curve(tmp_path / "a"), loss_curve(tmp_path / "b")
    assert all(abs(la[s] - lb[s]) < 1e-4 for s in la)
    assert abs(a.metrics["val_loss"] - b.metrics["val_loss"]) < 1e-4


def test_classifier_beats_the_majority_class_and_fine_tunes(labelled_csv, tmp_path):
    cfg = cls_train_config(
        labelled_csv,
        tmp_path / "cls",
        steps=150,  # over 6 seeds: accuracy 0.86-0.90 (at 80 steps / lr 2e-3 some seeds stalled at 0.56)
        vocab_size=600,
        warmup_steps=10,
    )
    result = train(cfg)
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert (
        config["architectures"] == ["BertForSequenceClassification"] and config["num_labels"] == 3
    )
    from edgezoo.zoo import data as zdata

    train_rows, val_rows = zdata.split_labelled(zdata.read_labelled(str(labelled_csv)), 0.2)
    names = sorted({label for _, label in train_rows})
    majority = majority_baseline(
        np.array([names.index(x) for _, x in train_rows]),
        np.array([names.index(x) for _, x in val_rows]),
    )
    assert result.metrics["val_accuracy"] > majority + 0.25, (result.metrics, majority)
    assert 0 < result.metrics["val_macro_f1"] <= 1
    # Fine-tune from the trained classifier: starts where it left off, not from scratch.
    tuned = TrainConfig(
        **{
            **cfg.__dict__,
            "out": str(tmp_path / "tuned"),
            "init_from": str(tmp_path / "cls"),
            "steps": 5,
            "warmup_steps": 1,
            "lr": 2e-4,
            "log_every": 1,
        }
    )
    tuned_result = train(tuned)
    assert max(loss_curve(tmp_path / "tuned").values()) < 0.8  # chance level is ln 3 ≈ 1.10
    assert tuned_result.metrics["val_accuracy"] > majority + 0.25
    assert (tmp_path / "tuned" / "tokenizer.json").read_bytes() == (
        tmp_path / "cls" / "tokenizer.json"
    ).read_bytes()


def test_classifier_from_a_pretrained_lm(text_corpus, labelled_csv, tmp_path):
    """Pre-train an LM, then start a classifier from its weights (a head on the last token)."""
    train(lm_train_config(text_corpus, tmp_path / "lm", steps=30))
    cfg = cls_train_config(
        labelled_csv,
        tmp_path / "cls",
        init_from=str(tmp_path / "lm"),
        steps=120,  # over 5 seeds: accuracy 0.69-0.86 (at 60 steps one seed gave 0.48)
        warmup_steps=5,
        context=96,
    )
    result = train(cfg)
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert (
        config["architectures"] == ["LlamaForSequenceClassification"] and config["num_labels"] == 3
    )
    assert result.metrics["val_accuracy"] > 0.5  # 3 balanced classes: chance is 1/3
    lm_weights = load_file(str(tmp_path / "lm" / "model.safetensors"))
    cls_weights = load_file(str(tmp_path / "cls" / "model.safetensors"))
    assert set(cls_weights) == (set(lm_weights) - {"lm_head.weight"}) | {"score.weight"}

    from edgezoo import runtime
    from edgezoo.export.onnx_export import to_onnx

    to_onnx(tmp_path / "cls")
    clf = runtime.load(tmp_path / "cls", backend="ort-cpu")
    assert clf.labels == [config["id2label"][str(i)] for i in range(3)]
    text = "def handler(self, record):\n    self.emit(record)\n"
    from edgezoo.zoo.modeldir import load_model

    model = load_model(tmp_path / "cls")
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor([clf.tokenizer.encode(text).ids])), -1)[
            0
        ].numpy()
    assert np.abs(clf.predict_proba(text)[0] - expected).max() < 1e-5


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--steps", "0"),
        ("--steps", "-5"),
        ("--grad-accum", "0"),
        ("--log-every", "0"),
        ("--eval-every", "0"),
        ("--checkpoint-every", "0"),
        ("--lr", "-1"),
        ("--lr", "nan"),
    ],
)
def test_nonsense_training_flags_are_refused_at_parse_time(capsys, flag, value):
    from edgezoo.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--out", "runs/never-written", flag, value])
    assert stop.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    assert not Path("runs/never-written").exists()


def test_zero_steps_through_the_api_is_refused(text_corpus, tmp_path):
    with pytest.raises(ConfigError, match="steps=0 would train nothing"):
        train(lm_train_config(text_corpus, tmp_path / "run", steps=0))


def test_precision_picks_the_autocast():
    from edgezoo.zoo.train_optim import autocast_for

    cpu, x = torch.device("cpu"), torch.randn(4, 4)
    with autocast_for(cpu, "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    for precision in ("auto", "fp32"):  # CPU stays exact unless bf16 is asked for
        with autocast_for(cpu, precision):
            assert (x @ x).dtype == torch.float32
    with pytest.raises(ConfigError, match="use one of auto, fp32, bf16"):
        autocast_for(cpu, "fp16")


def test_bf16_training_on_cpu_tracks_fp32(text_corpus, tmp_path):
    """--precision bf16 on CPU really runs in bf16 (the curve is not fp32's bit for bit) and
    learns the same (every step's loss within bf16 rounding of fp32's); a bad value is
    refused before the run folder exists."""
    curves = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        train_mod.train(lm_train_config(text_corpus, out, steps=6, precision=precision))
        curves[precision] = loss_curve(out)
        assert json.loads((out / "run.json").read_text())["precision"] == precision
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert fp32.keys() == bf16.keys() and fp32 != bf16
    assert all(abs(fp32[k] - bf16[k]) < 0.05 for k in fp32), (fp32, bf16)
    assert bf16[6] < bf16[1] - 0.1  # it learns
    with pytest.raises(ConfigError, match="--precision"):
        train_mod.train(lm_train_config(text_corpus, tmp_path / "bad", precision="fp8"))
    assert not (tmp_path / "bad").exists()
