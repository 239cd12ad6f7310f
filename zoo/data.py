"""Training data: reading corpora, a deterministic split, token caches and samplers.

* Text sources: a file, a folder (recursively, sorted), JSONL with a text field, or a
  ``builtin:`` corpus (see ``zoo.corpus``). Labelled sources: CSV or JSONL with text and
  label columns.
* The train/validation split hashes each document's id, so it never depends on order,
  on the machine, or on how many documents came before.
* LM tokens are written once to a flat memory-mapped file keyed by (corpus, tokenizer)
  hashes, so a corpus larger than RAM trains and a second run skips tokenization.
* Which examples a step sees is a pure function of (seed, step): resuming needs no data
  state and ranks of a distributed run take disjoint slices of the same global batch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgezoo import atomic
from edgezoo.errors import DataError
from edgezoo.progress import stage
from edgezoo.zoo import corpus
from edgezoo.zoo.config import EOS_ID, PAD_ID
from edgezoo.zoo.tokenizer import tokenizer_fingerprint

TEXT_SUFFIXES = {
    ".txt",
    ".md",
    ".rst",
    ".py",
    ".jsonl",
    ".text",
    ".csv",
    ".json",
    ".c",
    ".h",
    ".html",
}


def cache_root() -> Path:
    return Path(os.environ.get("EDGEZOO_CACHE", Path.home() / ".cache" / "edgezoo"))


# ---------------------------------------------------------------- reading ---------------


def iter_documents(source: str, text_field: str = "text") -> Iterator[tuple[str, str]]:
    """(doc_id, text) pairs from a file, folder, JSONL or built-in corpus."""
    if source == corpus.LM_CORPUS:
        yield from corpus.stdlib_documents()
        return
    if source == corpus.CLS_CORPUS:
        for i, (text, _) in enumerate(corpus.stdlib_functions()):
            yield f"fn{i}", text
        return
    path = _existing(source)
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if path.is_dir()
        else [path]
    )
    if not files:
        raise DataError(
            f"{source} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))}); point --data at your corpus."
        )
    for f in files:
        # Ids are relative to the corpus, so the split survives moving or copying it.
        doc_id = f.relative_to(path).as_posix() if path.is_dir() else f.name
        if f.suffix.lower() == ".jsonl":
            for i, row in enumerate(_jsonl_rows(f)):
                text = row.get(text_field)
                if not isinstance(text, str):
                    raise DataError(
                        f"{f}:{i + 1} has no string field {text_field!r}; pass --text-field to name it."
                    )
                yield f"{doc_id}:{i}", text
        else:
            yield doc_id, f.read_text(encoding="utf-8", errors="replace")


def read_labelled(
    source: str, text_field: str = "text", label_field: str = "label"
) -> list[tuple[str, str]]:
    """(text, label) pairs from CSV/JSONL, or the built-in classification corpus."""
    if source in (corpus.CLS_CORPUS, corpus.LM_CORPUS):
        return corpus.stdlib_functions()
    path = _existing(source)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for need in (text_field, label_field):
                if need not in columns:
                    raise DataError(
                        f"{path} has no {need!r} column (columns: {columns}); a classification set "
                        f"needs text and label columns — pass --text-field/--label-field to name them."
                    )
            rows = [(r[text_field], r[label_field]) for r in reader]
    elif path.suffix.lower() == ".jsonl":
        rows = []
        for i, r in enumerate(_jsonl_rows(path)):
            if text_field not in r or label_field not in r:
                raise DataError(
                    f"{path}:{i + 1} lacks {text_field!r} or {label_field!r}; a classification set "
                    f"needs both — pass --text-field/--label-field to name them."
                )
            rows.append((str(r[text_field]), str(r[label_field])))
    else:
        raise DataError(
            f"classification data must be .csv or .jsonl with text and label fields, got {path.name}."
        )
    if not rows:
        raise DataError(f"{path} has no rows; a classifier needs labelled examples.")
    return rows


def _existing(source: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"data path {source} does not exist. Pass a file, a folder, a .jsonl/.csv, or "
            f"'{corpus.LM_CORPUS}' / '{corpus.CLS_CORPUS}' for the built-in corpora."
        )
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"data file {source} is empty; nothing to train on.")
    return path


def _jsonl_rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{i + 1} is not valid JSON ({e.msg}); fix or remove that line."
                ) from e
            if not isinstance(row, dict):
                raise DataError(f"{path}:{i + 1} is not a JSON object.")
            yield row


def is_validation(doc_id: str, val_frac: float) -> bool:
    """Stable split: a document is in validation iff its id hashes below ``val_frac``."""
    h = int.from_bytes(hashlib.sha1(doc_id.encode("utf-8", "replace")).digest()[:8], "big")
    return h / 2**64 < val_frac


# ---------------------------------------------------------------- LM token cache -------


@dataclass
class TokenSplits:
    train: np.ndarray  # memory-mapped flat token stream
    val: np.ndarray
    path: Path


def corpus_fingerprint(source: str, text_field: str = "text") -> str:
    h = hashlib.sha256()
    for doc_id, text in iter_documents(source, text_field):
        h.update(
            doc_id.encode("utf-8", "replace") + b"\0" + text.encode("utf-8", "replace") + b"\0"
        )
    return h.hexdigest()[:16]


def token_cache(
    source: str, tok: Tokenizer, val_frac: float = 0.05, text_field: str = "text"
) -> TokenSplits:
    """Tokenize ``source`` once into ``train.bin``/``val.bin`` (memmaps) and reuse them."""
    key = f"{corpus_fingerprint(source, text_field)}-{tokenizer_fingerprint(tok)}-{val_frac}"
    folder = cache_root() / "tokens" / hashlib.sha256(key.encode()).hexdigest()[:20]
    dtype = np.uint16 if tok.get_vocab_size() <= 65535 else np.uint32
    if not (folder / "meta.json").is_file():
        with stage(f"tokenizing {source}"), atomic.atomic_dir(folder) as tmp:
            counts = _tokenize_to_files(source, tok, val_frac, text_field, tmp, dtype)
            (tmp / "meta.json").write_text(
                json.dumps({"source": source, "key": key, "dtype": np.dtype(dtype).name, **counts})
            )
    meta = json.loads((folder / "meta.json").read_text())
    splits = TokenSplits(
        *(np.memmap(folder / f"{s}.bin", dtype=meta["dtype"], mode="r") for s in ("train", "val")),
        folder,
    )
    if len(splits.train) < 2:
        raise DataError(f"{source} gives only {len(splits.train)} training tokens; add more text.")
    return splits


def _tokenize_to_files(source, tok, val_frac, text_field, folder: Path, dtype) -> dict:
    counts = {"train_tokens": 0, "val_tokens": 0, "train_docs": 0, "val_docs": 0}
    files = {s: open(folder / f"{s}.bin", "wb") for s in ("train", "val")}
    try:
        batch: list[tuple[str, str]] = []
        for doc in iter_documents(source, text_field):
            batch.append(doc)
            if len(batch) == 256:
                _write_batch(batch, tok, val_frac, files, counts, dtype)
                batch = []
        _write_batch(batch, tok, val_frac, files, counts, dtype)
        if counts["train_docs"] + counts["val_docs"] == 0:
            raise DataError(f"{source} has no text; nothing to train on.")
        if counts["val_tokens"] == 0 or counts["train_tokens"] == 0:
            # Too few documents for a document-level split: split the token stream instead.
            for f in files.values():
                f.close()
            stream = np.concatenate(
                [np.fromfile(folder / f"{s}.bin", dtype=dtype) for s in ("train", "val")]
            )
            cut = max(1, int(len(stream) * (1 - val_frac)))
            stream[:cut].tofile(folder / "train.bin")
            stream[cut:].tofile(folder / "val.bin")
            counts["train_tokens"], counts["val_tokens"] = cut, len(stream) - cut
    finally:
        for f in files.values():
            f.close()
    return counts


def _write_batch(batch, tok, val_frac, files, counts, dtype) -> None:
    if not batch:
        return
    encodings = tok.encode_batch([text for _, text in batch])
    for (doc_id, _), enc in zip(batch, encodings, strict=True):
        split = "val" if is_validation(doc_id, val_frac) else "train"
        ids = np.asarray([*enc.ids, EOS_ID], dtype=dtype)
        ids.tofile(files[split])
        counts[f"{split}_tokens"] += len(ids)
        counts[f"{split}_docs"] += 1


def heldout_stream(splits: TokenSplits) -> np.ndarray:
    """The tokens evaluation scores: validation, or training when a corpus too small to
    split left validation under two tokens (one token has no next token to predict)."""
    return splits.val if len(splits.val) > 1 else splits.train


# ---------------------------------------------------------------- sampling -------------


class EpochSampler:
    """Maps global sample positions to item ids: a fresh seeded permutation per epoch.

    Position ``p`` is item ``perm(epoch = p // n)[p % n]``, so every item is seen once per
    epoch, and any step's batch can be computed without replaying earlier ones.
    """

    def __init__(self, n_items: int, seed: int) -> None:
        if n_items <= 0:
            raise DataError(
                "not enough data for even one training example; add data or shorten the context."
            )
        self.n, self.seed = n_items, seed
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def items(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            p = start + i
            out[i] = self._permutation(p // self.n)[p % self.n]
        return out

    def epoch_of(self, position: int) -> float:
        return position / self.n


class LMWindows:
    """Non-overlapping windows of ``context + 1`` tokens from a flat token stream."""

    def __init__(self, tokens: np.ndarray, context: int) -> None:
        self.tokens, self.context = tokens, context
        self.n_windows = (len(tokens) - 1) // context
        if self.n_windows == 0:  # a corpus shorter than one context: use what there is
            self.context = len(tokens) - 1
            self.n_windows = 1

    def batch(self, window_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, next-token targets), int64; numpy so that reading data needs no torch."""
        c = self.context
        rows = np.stack(
            [np.asarray(self.tokens[i * c : i * c + c + 1], dtype=np.int64) for i in window_ids]
        )
        return rows[:, :-1], rows[:, 1:]


@dataclass
class LabelledSet:
    ids: list[list[int]]
    labels: np.ndarray

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, labels), int64, right-padded to the longest row."""
        seqs = [self.ids[i] for i in idx]
        width = max(len(s) for s in seqs)
        input_ids = np.full((len(seqs), width), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for r, s in enumerate(seqs):
            input_ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        return input_ids, mask, self.labels[idx].astype(np.int64)


def encode_labelled(
    rows: list[tuple[str, str]], tok: Tokenizer, max_len: int, label_names: list[str]
) -> LabelledSet:
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({label for _, label in rows if label not in index})
    if unknown:
        raise DataError(f"labels {unknown[:5]} are not among the model's labels {label_names}.")
    encodings = tok.encode_batch([text for text, _ in rows])
    ids = [enc.ids[:max_len] for enc in encodings]
    return LabelledSet(ids, np.asarray([index[label] for _, label in rows], dtype=np.int64))


def split_labelled(rows: list[tuple[str, str]], val_frac: float) -> tuple[list, list]:
    train, val = [], []
    for text, label in rows:
        (val if is_validation(text, val_frac) else train).append((text, label))
    if not val or not train:
        cut = max(1, int(len(rows) * (1 - val_frac)))
        train, val = rows[:cut], rows[cut:] or rows[-1:]
    return train, val
