"""Source → target pairs for the encoder–decoder family: reading, splitting, batching.

Pairs come from JSONL or CSV (``--source-field`` / ``--target-field``) or the built-in
``builtin:stdlib-doc`` corpus (see ``zoo.corpus``). Each pair has an id the split hashes
(``data.is_validation``), so which side a pair lands on never depends on order. Targets
end in ``</s>``; padding in the labels is -100, which the loss ignores.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from edgezoo.errors import DataError
from edgezoo.zoo import corpus, data
from edgezoo.zoo.config import EOS_ID, PAD_ID

TARGET_TOKENS = 64  # longest target trained on, </s> included
IGNORE = -100  # label value the cross-entropy skips

Pair = tuple[str, str, str]  # (id, source, target)


def read_pairs(
    source: str, source_field: str = "source", target_field: str = "target"
) -> list[Pair]:
    """(id, source, target) triples from the built-in corpus, JSONL or CSV."""
    if source == corpus.S2S_CORPUS:
        return corpus.stdlib_docstring_pairs()
    path = data._existing(source)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            missing = [
                c for c in (source_field, target_field) if c not in (reader.fieldnames or [])
            ]
            if missing:
                raise DataError(
                    f"{path} has no {missing[0]!r} column (columns: {reader.fieldnames}); pass "
                    "--source-field/--target-field to name the source and target columns."
                )
            rows = list(reader)
    elif suffix == ".jsonl":
        rows = list(data._jsonl_rows(path))
    else:
        raise DataError(
            f"seq2seq data must be .jsonl or .csv with source and target fields, got {path.name}; "
            f"or use {corpus.S2S_CORPUS}."
        )
    pairs = []
    for i, row in enumerate(rows):
        src, tgt = row.get(source_field), row.get(target_field)
        if not isinstance(src, str) or not isinstance(tgt, str):
            raise DataError(
                f"{path} row {i + 1} lacks a string {source_field!r} or {target_field!r}; pass "
                "--source-field/--target-field to name them."
            )
        pairs.append((f"{path.name}:{i}", src, tgt))
    if not pairs:
        raise DataError(f"{path} has no rows; a seq2seq model needs source/target pairs.")
    return pairs


def split_pairs(pairs: list[Pair], val_frac: float) -> tuple[list[Pair], list[Pair]]:
    """Hash-of-id split; a set too small to give both sides falls back to a tail cut."""
    train = [p for p in pairs if not data.is_validation(p[0], val_frac)]
    val = [p for p in pairs if data.is_validation(p[0], val_frac)]
    if not train or not val:
        cut = max(1, int(len(pairs) * (1 - val_frac)))
        train, val = pairs[:cut], pairs[cut:] or pairs[-1:]
    return train, val


@dataclass
class PairSet:
    """Token ids of sources and targets, and the texts metrics and baselines read."""

    sources: list[list[int]]
    targets: list[list[int]]
    source_texts: list[str]
    target_texts: list[str]

    def __len__(self) -> int:
        return len(self.sources)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, labels), int64, right-padded; labels padded with -100."""
        src = [self.sources[i] for i in idx]
        tgt = [self.targets[i] for i in idx]
        input_ids = np.full((len(src), max(map(len, src))), PAD_ID, dtype=np.int64)
        mask = np.zeros_like(input_ids)
        labels = np.full((len(tgt), max(map(len, tgt))), IGNORE, dtype=np.int64)
        for r, (s, t) in enumerate(zip(src, tgt, strict=True)):
            input_ids[r, : len(s)], mask[r, : len(s)] = s, 1
            labels[r, : len(t)] = t
        return input_ids, mask, labels


def encode_pairs(pairs: list[Pair], tok: Tokenizer, max_source: int) -> PairSet:
    """Sources as the tokenizer encodes them (cut to ``max_source``); targets plain + </s>."""
    sources = [e.ids[:max_source] for e in tok.encode_batch([p[1] for p in pairs])]
    targets = [
        [*e.ids[: TARGET_TOKENS - 1], EOS_ID]
        for e in tok.encode_batch([p[2] for p in pairs], add_special_tokens=False)
    ]
    return PairSet(sources, targets, [p[1] for p in pairs], [p[2] for p in pairs])


def copy_name_baseline(source: str) -> str:
    """The bar to beat: the function's name, words split (``get_value`` -> ``get value``);
    a source with no ``def`` gives its first line."""
    found = re.search(r"def\s+(\w+)", source)
    if not found:
        return source.strip().splitlines()[0] if source.strip() else ""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", found.group(1))
    return " ".join(w for w in name.split("_") if w).lower()


def training_texts(pairs: list[Pair]) -> list[str]:
    """What the tokenizer learns from: both sides, so targets need no rare merges."""
    return [text for _, src, tgt in pairs for text in (src, tgt)]
