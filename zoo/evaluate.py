"""Evaluate a saved model dir on data: perplexity for LMs, accuracy/F1 for classifiers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgezoo.progress import stage
from edgezoo.zoo import corpus, data
from edgezoo.zoo.config import LlamaConfig
from edgezoo.zoo.metrics import classification_report, perplexity
from edgezoo.zoo.modeldir import load_model
from edgezoo.zoo.tokenizer import load_tokenizer


@torch.no_grad()
def evaluate_dir(
    model_dir: str | Path,
    source: str | None = None,
    split: str = "val",
    max_tokens: int = 200_000,
    batch: int = 8,
) -> dict[str, float]:
    """Metrics of ``model_dir`` on ``split`` ("val", "train" or "all") of ``source``."""
    with stage(f"evaluating {Path(model_dir).name} on the {split} split"):
        return _evaluate(model_dir, source, split, max_tokens, batch)


def _evaluate(
    model_dir: str | Path, source: str | None, split: str, max_tokens: int, batch: int
) -> dict[str, float]:
    model = load_model(model_dir)
    tok = load_tokenizer(model_dir)
    cfg = model.config
    if isinstance(cfg, LlamaConfig):
        splits = data.token_cache(source or corpus.LM_CORPUS, tok)
        tokens = {"val": splits.val, "train": splits.train}.get(split)
        if tokens is None:
            tokens = np.concatenate([splits.train, splits.val])
        windows = data.LMWindows(
            np.asarray(tokens[: max_tokens + 1]), min(cfg.max_position_embeddings, 256)
        )
        total, count = 0.0, 0
        for start in range(0, windows.n_windows, batch):
            x, y = map(
                torch.from_numpy,
                windows.batch(np.arange(start, min(windows.n_windows, start + batch))),
            )
            logits, _ = model(x)
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
            ).item()
            count += y.numel()
        return {"loss": total / count, "perplexity": perplexity(total / count), "tokens": count}
    rows = data.read_labelled(source or corpus.CLS_CORPUS)
    if split != "all":
        rows = data.split_labelled(rows, 0.05)[0 if split == "train" else 1]
    labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
    dataset = data.encode_labelled(rows, tok, cfg.max_position_embeddings, labels)
    preds = []
    for start in range(0, len(dataset.ids), 64):
        ids, mask, _ = map(
            torch.from_numpy, dataset.batch(np.arange(start, min(len(dataset.ids), start + 64)))
        )
        preds.append(model(ids, mask).argmax(-1).numpy())
    report = classification_report(dataset.labels, np.concatenate(preds), cfg.num_labels)
    return {**report, "examples": len(rows)}
