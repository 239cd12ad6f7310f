"""What a training step optimises: the LM, classifier and seq2seq tasks ``zoo.train`` runs.

Apart from the loop so ``train.py`` reads as the schedule alone; a task owns its data
views, its sampler (examples depend only on seed and position, which exact resume relies
on), its loss and its validation metrics. Re-exported by ``zoo.train``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from edgezoo import heldout
from edgezoo.zoo import data, s2s_data
from edgezoo.zoo.config import PAD_ID
from edgezoo.zoo.metrics import classification_report, generation_report, perplexity


class LMTask:
    """Next-token prediction on windows of the token cache, measured on ``heldout`` windows."""

    def __init__(self, splits: data.TokenSplits, context: int, seed: int) -> None:
        self.train = data.LMWindows(splits.train, context)
        self.val = heldout.lm_windows(data.heldout_stream(splits), context)
        self.sampler = data.EpochSampler(self.train.n_windows, seed)
        self.tokens_per_example = self.train.context

    def loss(self, model: nn.Module, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        x, y = (torch.from_numpy(t).to(device, non_blocking=True) for t in self.train.batch(idx))
        logits, _ = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    def evaluate(
        self, model: nn.Module, device: torch.device, batch: int, max_batches: int | None
    ) -> dict[str, float]:
        """Loss, perplexity and scored tokens on the held-out windows; mid-run evaluations
        take the first ``max_batches`` batches, the final one (None) all of them."""
        windows = self.val if max_batches is None else self.val[: batch * max_batches]
        report = score_windows(model, windows, device, batch).report()
        return {
            "val_loss": report["loss"],
            "val_ppl": report["perplexity"],
            "val_tokens": report["tokens"],
        }


@torch.no_grad()
def score_windows(
    model: nn.Module, windows: list[np.ndarray], device: torch.device, batch: int
) -> heldout.LossTally:
    """Summed next-token loss of an LM over ``heldout.lm_windows``: the PyTorch side of the
    number the ONNX side gets from ``LanguageModel.score_ids`` on the same windows."""
    tally = heldout.LossTally()
    for rows in _same_length_batches(windows, batch):
        tokens = torch.from_numpy(np.stack(rows)).to(device)
        logits, _ = model(tokens[:, :-1])
        targets = tokens[:, 1:]
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        )
        tally.add(loss.item(), targets.numel())
    return tally


def _same_length_batches(windows: list[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    """Consecutive windows in groups of ``batch`` that stack (only the last one is short)."""
    groups: list[list[np.ndarray]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch and len(groups[-1][0]) == len(w):
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


class ClassifyTask:
    """Sequence classification on a labelled set."""

    def __init__(
        self, train: data.LabelledSet, val: data.LabelledSet, n_labels: int, seed: int
    ) -> None:
        self.train, self.val, self.n_labels = train, val, n_labels
        self.sampler = data.EpochSampler(len(train.ids), seed)
        self.tokens_per_example = int(np.mean([len(s) for s in train.ids]))

    def loss(self, model: nn.Module, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        ids, mask, labels = (torch.from_numpy(t).to(device) for t in self.train.batch(idx))
        return F.cross_entropy(model(ids, mask).float(), labels)

    @torch.no_grad()
    def predict(
        self, model: nn.Module, dataset: data.LabelledSet, device: torch.device, batch: int = 64
    ) -> np.ndarray:
        preds = []
        for start in range(0, len(dataset.ids), batch):
            ids, mask, _ = (
                torch.from_numpy(t).to(device)
                for t in dataset.batch(np.arange(start, min(len(dataset.ids), start + batch)))
            )
            preds.append(model(ids, mask).argmax(-1).cpu().numpy())
        return np.concatenate(preds)

    def evaluate(
        self, model: nn.Module, device: torch.device, batch: int, max_batches: int | None
    ) -> dict[str, float]:
        report = classification_report(
            self.val.labels, self.predict(model, self.val, device), self.n_labels
        )
        return {f"val_{k}": v for k, v in report.items()}


class Seq2SeqTask:
    """Teacher forcing on source → target pairs: the decoder reads the target shifted right
    and is scored on every real target token (padding labels are -100, ignored). Validation
    adds greedy generations scored by chrF, BLEU and exact match, beside the copy-the-name
    baseline on the same examples."""

    def __init__(
        self,
        train: s2s_data.PairSet,
        val: s2s_data.PairSet,
        tok: Tokenizer,
        seed: int,
        start_id: int = PAD_ID,
    ) -> None:
        self.train, self.val, self.tok, self.start_id = train, val, tok, start_id
        self.sampler = data.EpochSampler(len(train), seed)
        self.tokens_per_example = int(
            np.mean([len(s) + len(t) for s, t in zip(train.sources, train.targets, strict=True)])
        )

    def loss(self, model: nn.Module, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        ids, mask, labels = (torch.from_numpy(t).to(device) for t in self.train.batch(idx))
        return seq2seq_loss(model, ids, mask, labels, self.start_id)

    def evaluate(
        self, model: nn.Module, device: torch.device, batch: int, max_batches: int | None
    ) -> dict[str, float]:
        """Mid-run: the first ``max_batches`` batches of the held-out pairs; final: all."""
        n = len(self.val) if max_batches is None else min(len(self.val), batch * max_batches)
        report = score_pairs(model, self.val, self.tok, device, batch, n, self.start_id)
        return {f"val_{k}": v for k, v in report.items()}


@torch.no_grad()
def score_pairs(
    model: nn.Module,
    pairs: s2s_data.PairSet,
    tok: Tokenizer,
    device: torch.device,
    batch: int,
    n: int | None = None,
    start_id: int = PAD_ID,
) -> dict[str, float]:
    """Teacher-forced loss and greedy-generation chrF/BLEU/exact match on the first ``n``
    pairs, with the copy-the-name baseline's chrF on the same pairs to compare."""
    n = len(pairs) if n is None else n
    loss_sum, tokens, hypotheses = 0.0, 0, []
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        ids, mask, labels = (torch.from_numpy(t).to(device) for t in pairs.batch(idx))
        loss_sum += seq2seq_loss(model, ids, mask, labels, start_id, "sum").item()
        tokens += int((labels != s2s_data.IGNORE).sum())
        hypotheses += tok.decode_batch(model.generate_greedy(ids, mask, s2s_data.TARGET_TOKENS))
    references = pairs.target_texts[:n]
    baseline = [s2s_data.copy_name_baseline(s) for s in pairs.source_texts[:n]]
    mean_loss = loss_sum / max(tokens, 1)
    return {
        "loss": mean_loss,
        "ppl": perplexity(mean_loss),
        **generation_report(references, hypotheses),
        "baseline_chrf": generation_report(references, baseline)["chrf"],
        "examples": n,
    }


def seq2seq_loss(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    start_id: int = PAD_ID,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of the decoder fed the labels shifted right (teacher forcing)."""
    from edgezoo.zoo.t5 import shift_right

    logits, _ = model(ids, mask, shift_right(labels, start_id, PAD_ID))
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=s2s_data.IGNORE,
        reduction=reduction,
    )
