"""What a training step optimises: the LM and classifier tasks ``zoo.train`` runs.

Apart from the loop so ``train.py`` reads as the schedule alone; a task owns its data
views, its sampler (examples depend only on seed and position, which exact resume relies
on), its loss and its validation metrics. Re-exported by ``zoo.train``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgezoo.zoo import data
from edgezoo.zoo.metrics import classification_report, perplexity


class LMTask:
    """Next-token prediction on windows of the token cache."""

    def __init__(self, splits: data.TokenSplits, context: int, seed: int) -> None:
        self.train = data.LMWindows(splits.train, context)
        self.val = data.LMWindows(splits.val, context) if len(splits.val) > 1 else self.train
        self.sampler = data.EpochSampler(self.train.n_windows, seed)
        self.tokens_per_example = self.train.context

    def loss(self, model: nn.Module, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        x, y = (torch.from_numpy(t).to(device, non_blocking=True) for t in self.train.batch(idx))
        logits, _ = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, device: torch.device, batch: int, max_batches: int
    ) -> dict[str, float]:
        n = min(self.val.n_windows, batch * max_batches)
        losses = []
        for start in range(0, n, batch):
            window_ids = np.arange(start, min(n, start + batch))
            x, y = (torch.from_numpy(t).to(device) for t in self.val.batch(window_ids))
            logits, _ = model(x)
            losses.append(
                F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
                ).item()
            )
        mean = sum(losses) / (n * self.val.context)
        return {"val_loss": mean, "val_ppl": perplexity(mean)}


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
        self, model: nn.Module, device: torch.device, batch: int, max_batches: int
    ) -> dict[str, float]:
        report = classification_report(
            self.val.labels, self.predict(model, self.val, device), self.n_labels
        )
        return {f"val_{k}": v for k, v in report.items()}
