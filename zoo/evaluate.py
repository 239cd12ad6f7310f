"""Evaluate a saved model dir on data: perplexity for LMs, accuracy/F1 for classifiers,
chrF/BLEU of greedy generations for seq2seq models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgezoo import heldout
from edgezoo.progress import stage
from edgezoo.zoo import data, eval_split, s2s_data
from edgezoo.zoo.config import LlamaConfig, T5Config
from edgezoo.zoo.metrics import classification_report
from edgezoo.zoo.modeldir import load_model
from edgezoo.zoo.tokenizer import load_tokenizer
from edgezoo.zoo.train_tasks import score_pairs, score_windows


@torch.no_grad()
def evaluate_dir(
    model_dir: str | Path,
    source: str | None = None,
    split: str = "val",
    max_tokens: int = heldout.EVAL_TOKENS,
    batch: int = 8,
) -> dict[str, float]:
    """Metrics of ``model_dir`` on ``split`` ("val", "train" or "all") of ``source``.

    Without ``source``, the data the model was trained on (``run.json``), split as it was:
    the held-out number is then the one in ``eval.json`` and the quantize table."""
    with stage(f"evaluating {Path(model_dir).name} on the {split} split"):
        return _evaluate(model_dir, source, split, max_tokens, batch)


def _evaluate(
    model_dir: str | Path, source: str | None, split: str, max_tokens: int, batch: int
) -> dict[str, float]:
    model = load_model(model_dir)
    cfg = model.config
    if isinstance(cfg, LlamaConfig):
        windows, _ = eval_split.lm_windows(model_dir, source, split, max_tokens)
        return score_windows(model, windows, torch.device("cpu"), batch).report()
    tok = load_tokenizer(model_dir)
    if isinstance(cfg, T5Config):
        return _evaluate_s2s(model, tok, model_dir, source, split, batch)
    settings = eval_split.eval_split(model_dir, "cls", source)
    rows = data.read_labelled(settings.source, settings.text_field, settings.label_field)
    if split != "all":
        rows = data.split_labelled(rows, settings.val_frac)[0 if split == "train" else 1]
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


def _evaluate_s2s(model, tok, model_dir, source: str | None, split: str, batch: int) -> dict:
    """The run's pairs, split and source length as training had them (``eval.json``'s numbers)."""
    settings = eval_split.eval_split(model_dir, "s2s", source)
    pairs = s2s_data.read_pairs(settings.source, settings.source_field, settings.target_field)
    if split != "all":
        pairs = s2s_data.split_pairs(pairs, settings.val_frac)[0 if split == "train" else 1]
    context = settings.context or model.config.max_position_embeddings
    encoded = s2s_data.encode_pairs(pairs, tok, context)
    return score_pairs(model, encoded, tok, torch.device("cpu"), batch)
