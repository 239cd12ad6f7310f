"""Which held-out data a model dir is measured on: its own run's split, from ``run.json``.

``edgezoo eval`` and the quantize stage read the settings training recorded (data, its
text field, the validation fraction) so they tokenize the same documents into the same
cached stream training evaluated on; ``edgezoo.heldout`` then cuts it into windows.
Torch-free: the quantize stage imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgezoo import heldout
from edgezoo.jsonfile import read_object
from edgezoo.zoo import corpus, data
from edgezoo.zoo.tokenizer import load_tokenizer

RUN_FILE = "run.json"


@dataclass(frozen=True)
class EvalSplit:
    """Where a model's evaluation data comes from and how it is split."""

    source: str
    val_frac: float = 0.05
    text_field: str = "text"
    label_field: str = "label"
    source_field: str = "source"
    target_field: str = "target"
    context: int | None = None  # the longest input training used (s2s: source tokens)


def eval_split(model_dir: str | Path, family: str, source: str | None = None) -> EvalSplit:
    """The run's own data and split (``source`` overrides the data, not the split)."""
    run = Path(model_dir) / RUN_FILE
    fix = "restore it, or delete it and pass --data to choose the evaluation data."
    settings = read_object(run, fix) if run.is_file() else {}
    default = {"lm": corpus.LM_CORPUS, "s2s": corpus.S2S_CORPUS}.get(family, corpus.CLS_CORPUS)
    return EvalSplit(
        source=source or settings.get("data") or default,
        val_frac=settings.get("val_frac", EvalSplit.val_frac),
        text_field=settings.get("text_field", EvalSplit.text_field),
        label_field=settings.get("label_field", EvalSplit.label_field),
        source_field=settings.get("source_field", EvalSplit.source_field),
        target_field=settings.get("target_field", EvalSplit.target_field),
        context=settings.get("context"),
    )


def lm_stream(model_dir: str | Path, split: EvalSplit, part: str = "val") -> np.ndarray:
    """The token stream of ``part`` ("val", "train" or "all") as training cached it."""
    splits = data.token_cache(
        split.source, load_tokenizer(model_dir), split.val_frac, split.text_field
    )
    if part == "val":
        return data.heldout_stream(splits)
    if part == "train":
        return splits.train
    return np.concatenate([splits.train, splits.val])


def lm_windows(
    model_dir: str | Path,
    source: str | None = None,
    part: str = "val",
    max_tokens: int = heldout.EVAL_TOKENS,
) -> tuple[list[np.ndarray], EvalSplit]:
    """The windows every stage scores ``model_dir`` on, and the split they came from."""
    split = eval_split(model_dir, "lm", source)
    stream = lm_stream(model_dir, split, part)
    return heldout.lm_windows(stream, heldout.eval_context(model_dir), max_tokens), split
