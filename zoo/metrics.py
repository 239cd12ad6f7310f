"""Evaluation metrics, in numpy so they can be checked by hand (text overlap: sacrebleu)."""

from __future__ import annotations

import math

import numpy as np


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 50.0))


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int
) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1 (classes absent from both count 0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    precision, recall, f1 = [], [], []
    for c in range(n_classes):
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        fp = float(np.sum((y_pred == c) & (y_true != c)))
        fn = float(np.sum((y_pred != c) & (y_true == c)))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "precision": float(np.mean(precision)),
        "recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
    }


def majority_baseline(y_train: np.ndarray, y_eval: np.ndarray) -> float:
    """Accuracy of always predicting the most common training label."""
    majority = np.bincount(y_train).argmax()
    return float(np.mean(np.asarray(y_eval) == majority))


def unigram_loss(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of a add-one-smoothed unigram model: the bar to beat."""
    counts = (
        np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size).astype(
            np.float64
        )
        + 1.0
    )
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(eval_tokens, dtype=np.int64)].mean())


def generation_report(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """chrF and BLEU (sacrebleu's defaults, 0-100) and exact match (0-1) of generated text.

    chrF (character n-grams) is the headline: it credits near misses that BLEU's word
    4-grams score zero on short targets such as one-line summaries."""
    import sacrebleu

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return {"chrf": 0.0, "bleu": 0.0, "exact_match": 0.0}
    exact = sum(r.strip() == h.strip() for r, h in zip(references, hypotheses, strict=True))
    return {
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
        "exact_match": exact / len(references),
    }
