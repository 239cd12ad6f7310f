"""Seq2seq training: a tiny model learns, resumes exactly, fine-tunes, and `edgezoo eval` agrees."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from edgezoo.errors import ConfigError
from edgezoo.zoo import checkpoint as ckpt
from edgezoo.zoo.evaluate import evaluate_dir
from edgezoo.zoo.s2s_data import read_pairs, split_pairs
from edgezoo.zoo.train import TrainConfig, train

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture
def digits_jsonl(tmp_path):
    """A tiny translation task: digits -> their English words, in order."""
    rng = random.Random(0)
    path = tmp_path / "digits.jsonl"
    rows = []
    for _ in range(600):
        digits = [rng.randrange(10) for _ in range(rng.randint(2, 5))]
        rows.append({"src": " ".join(map(str, digits)), "tgt": " ".join(WORDS[d] for d in digits)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def one_thread():
    """Tiny models train ~10x faster on one thread than on two busy cores (conftest restores it)."""
    torch.set_num_threads(1)


def _config(data, out, **kw) -> TrainConfig:
    settings = {
        "family": "s2s",
        "size": "nano",
        "data": str(data),
        "out": str(out),
        "steps": 150,
        "batch_size": 16,
        "lr": 1e-2,
        "warmup_steps": 10,
        "vocab_size": 300,
        "layers": 1,
        "width": 64,
        "context": 16,
        "eval_every": 1000,
        "eval_batches": 2,
        "checkpoint_every": 75,
        "log_every": 10,
        "device": "cpu",
        "progress": False,
        "source_field": "src",
        "target_field": "tgt",
        "val_frac": 0.1,
    }
    return TrainConfig(**{**settings, **kw})


def _losses(out) -> list[float]:
    lines = [json.loads(line) for line in (out / "training.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def test_a_tiny_s2s_model_learns_and_beats_the_copy_baseline(digits_jsonl, tmp_path, one_thread):
    out = tmp_path / "run"
    result = train(_config(digits_jsonl, out))
    losses = _losses(out)
    assert losses[-1] < 0.25 * losses[0]
    m = result.metrics
    assert m["val_chrf"] > m["val_baseline_chrf"] + 20
    assert m["val_examples"] == len(
        split_pairs(read_pairs(str(digits_jsonl), "src", "tgt"), 0.1)[1]
    )
    assert json.loads((out / "config.json").read_text())["model_type"] == "t5"
    assert (out / "eval.json").is_file() and (out / "generation_config.json").is_file()
    again = evaluate_dir(out, batch=16)  # `edgezoo eval`: the same split, source length, numbers
    assert again["examples"] == m["val_examples"]
    assert again["chrf"] == pytest.approx(m["val_chrf"]) and again["loss"] == pytest.approx(
        m["val_loss"], rel=1e-4
    )


def test_s2s_resume_replays_the_run_and_init_from_fine_tunes(digits_jsonl, tmp_path, one_thread):
    run = tmp_path / "run"
    train(_config(digits_jsonl, run, steps=20, checkpoint_every=10))
    curve, weights = _losses(run), (run / "model.safetensors").read_bytes()
    for c in ckpt.list_checkpoints(run)[1:]:  # as if it died after step 10
        shutil.rmtree(c)
    train(_config(digits_jsonl, run, steps=20, checkpoint_every=10, resume=True))
    assert _losses(run) == curve
    assert (run / "model.safetensors").read_bytes() == weights
    tuned = train(
        _config(
            digits_jsonl, tmp_path / "tuned", steps=5, init_from=str(run), layers=None, width=None
        )
    )
    assert tuned.metrics["val_loss"] < 4.0  # starts from the trained weights, not from scratch
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    shutil.copy(run / "tokenizer.json", bert_dir)
    (bert_dir / "config.json").write_text(json.dumps({"model_type": "bert", **_bert_keys()}))
    with pytest.raises(ConfigError, match="s2s model starts from a s2s model"):
        train(
            _config(
                digits_jsonl,
                tmp_path / "bad",
                steps=2,
                init_from=str(bert_dir),
                layers=None,
                width=None,
            )
        )


def _bert_keys() -> dict:
    return {
        "vocab_size": 300,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
    }
