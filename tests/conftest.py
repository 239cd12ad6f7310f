"""Shared fixtures: tiny corpora and tiny models made in the test run (nothing downloaded)."""

from __future__ import annotations

import csv
import os
import random
import sys
from pathlib import Path

import pytest

from edgezoo.zoo import corpus


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Token caches go to a per-run temp folder, never the user's ~/.cache."""
    os.environ["EDGEZOO_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that changes torch's thread count must not change later tests' numerics."""
    torch = sys.modules.get("torch")  # only if a test imported it: the runtime tests need not
    before = torch.get_num_threads() if torch else None
    yield
    if torch and before is not None:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """~250 KB of real text: small stdlib modules copied into a folder."""
    folder = tmp_path_factory.mktemp("corpus")
    total = 0
    for path in corpus.stdlib_files():
        size = path.stat().st_size
        if 2_000 < size < 15_000:
            (folder / path.name).write_bytes(path.read_bytes())
            total += size
        if total > 250_000:
            break
    return folder


@pytest.fixture(scope="session")
def labelled_csv(tmp_path_factory) -> Path:
    """A small, learnable labelled set: functions from three stdlib packages."""
    rows = [r for r in corpus.stdlib_functions(n_classes=3, per_class=120)]
    random.Random(0).shuffle(rows)
    path = tmp_path_factory.mktemp("cls") / "functions.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tokenizer(text_corpus):
    """A 600-token byte-level BPE trained on the test corpus, shared by every test module."""
    from edgezoo.zoo.data import iter_documents
    from edgezoo.zoo.tokenizer import train_tokenizer

    return train_tokenizer((t for _, t in iter_documents(str(text_corpus))), vocab_size=600)


def tiny_llama(**overrides):
    """A 2-layer Llama (head_dim 16, grouped-query 4:2) that exports and runs in seconds."""
    from edgezoo.zoo.config import LlamaConfig

    return LlamaConfig(
        **{
            "vocab_size": 600,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            **overrides,
        }
    )


def tiny_bert(**overrides):
    from edgezoo.zoo.config import BertConfig

    return BertConfig(
        **{
            "vocab_size": 600,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 128,
            "num_labels": 3,
            **overrides,
        }
    )


def make_model_dir(path, cfg, tokenizer, seed: int = 0):
    """Random-init model dir (weights, config, tokenizer) with a fixed seed; returns the model."""
    import torch

    from edgezoo.zoo.modeldir import build_model, save_model_dir
    from edgezoo.zoo.tokenizer import save_tokenizer

    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    save_model_dir(model, path)
    save_tokenizer(tokenizer, path, cfg.max_position_embeddings)
    return model


def lively_model_dir(path, tokenizer, seed: int, greedy_steps: int = 4, **overrides):
    """A random model whose greedy text is not one token repeated: weights scaled up, so
    its logits are far from flat (a drafted guess can then be right or wrong, and a decode
    step that missed its cache or its new token shows)."""
    import torch

    from edgezoo.export.onnx_export import to_onnx
    from edgezoo.zoo.modeldir import build_model, save_model_dir
    from edgezoo.zoo.tokenizer import save_tokenizer

    cfg = tiny_llama(max_position_embeddings=96, **overrides)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    save_model_dir(model, path)
    save_tokenizer(tokenizer, path, cfg.max_position_embeddings)
    to_onnx(path, greedy_steps=greedy_steps)
    return path


def lm_train_config(corpus, out, **overrides):
    """The tiny LM run the training tests share (nano preset, 600-token vocab, fast steps)."""
    from edgezoo.zoo.train import TrainConfig

    base = dict(
        family="lm",
        size="nano",
        data=str(corpus),
        out=str(out),
        steps=24,
        batch_size=8,
        context=64,
        vocab_size=600,
        lr=3e-3,
        warmup_steps=4,
        eval_every=1000,
        checkpoint_every=8,
        keep_checkpoints=3,
        log_every=1,
        progress=False,
    )
    return TrainConfig(**{**base, **overrides})


def cls_train_config(labelled, out, **overrides):
    """The tiny 3-class classifier run the training tests share (nano preset, 20 % validation)."""
    from edgezoo.zoo.train import TrainConfig

    base = dict(
        family="cls",
        size="nano",
        data=str(labelled),
        out=str(out),
        batch_size=16,
        lr=1e-3,
        val_frac=0.2,
        eval_every=1000,
        checkpoint_every=1000,
        log_every=5,
        progress=False,
    )
    return TrainConfig(**{**base, **overrides})


def loss_curve(run) -> dict[int, float]:
    """step → training loss, from a run's training.jsonl."""
    import json

    rows = [json.loads(line) for line in (Path(run) / "training.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


S2S_SOURCES = ["def add(a, b):\n    return a + b", "def name(self):\n    return self._name"]


@pytest.fixture(scope="session")
def s2s_exported(tmp_path_factory):
    """A tiny untied ReLU T5 (its random greedy output is varied, not all one token),
    exported once per run: (dir, ExportResult). The export is the slow part (~40 s), so
    every s2s test module shares this one."""
    import torch

    from edgezoo.export.onnx_export import to_onnx
    from edgezoo.zoo.config import T5Config
    from edgezoo.zoo.modeldir import build_model, save_model_dir
    from edgezoo.zoo.tokenizer import save_tokenizer, train_tokenizer

    folder = tmp_path_factory.mktemp("s2s")
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        feed_forward_proj="relu",
        tie_word_embeddings=False,
        max_position_embeddings=64,
    )
    save_model_dir(build_model(cfg).eval(), folder)
    save_tokenizer(train_tokenizer(S2S_SOURCES * 40, 320), folder, 64)
    return folder, to_onnx(folder)
