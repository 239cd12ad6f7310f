"""Guesses for speculative decoding from a corpus of text the model was trained on or will
write like — a codebase, a documentation folder (retrieval-based drafting, as in REST,
He et al. 2023): when the text being written has no earlier n-gram to copy from, propose
what most often followed its last tokens in the corpus.

The corpus is tokenized once with the model's tokenizer and indexed as a sorted array of
packed n-gram keys (one per position, the next ``depth`` tokens): the positions where an
n-gram occurs are one ``searchsorted`` range, for any n up to ``depth``. The index is kept
under the cache folder and memory-mapped, so a process pays only for the pages a lookup
touches (a binary search: ~20 of them), not for the corpus.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edgezoo.errors import ConfigError
from edgezoo.runtime.sampling import SamplingParams

CORPUS_GUESSES = 3  # tokens proposed from the corpus per call (longer ones rarely all hold)
MIN_NGRAM = 2  # a single shared token says too little to copy what followed it
CANDIDATES = 256  # occurrences of an n-gram that vote on its continuation (a sample of more)
CHUNK_CHARS = 8192  # files are tokenized in pieces of about this many characters, cut at lines
ENCODE_BATCH = 64  # pieces per tokenizer call (its Encodings hold ~100 bytes a token)
INDEX_VERSION = 1


class CorpusIndex:
    """``tokens``: the corpus as one stream, pieces separated by ``sep`` (an id past the
    vocabulary); ``keys[i]``: the ``depth`` tokens from ``order[i]`` packed ``bits`` apart,
    sorted."""

    def __init__(self, tokens: np.ndarray, keys: np.ndarray, order: np.ndarray, sep: int) -> None:
        self.tokens, self.keys, self.order, self.sep = tokens, keys, order, sep
        self.bits = sep.bit_length()
        self.depth = depth_for(sep)

    @classmethod
    def build(cls, pieces: list, vocab_size: int) -> CorpusIndex:
        """``pieces``: token-id sequences (lists or arrays), each indexed on its own."""
        sep = vocab_size  # not a token: n-grams and continuations stop at it
        dtype = np.uint16 if sep < 2**16 else np.uint32
        stream = [np.asarray(p, dtype) for p in pieces if len(p)]
        if not stream:
            raise ConfigError("the lookup corpus has no text the tokenizer turns into tokens.")
        separators = [np.array([sep], dtype)] * len(stream)
        tokens = np.concatenate([x for pair in zip(stream, separators, strict=True) for x in pair])
        depth, bits = depth_for(sep), sep.bit_length()
        padded = np.concatenate([tokens, np.full(depth, sep, dtype)]).astype(np.uint64)
        keys = np.zeros(len(tokens), np.uint64)
        for j in range(depth):
            keys = (keys << np.uint64(bits)) | padded[j : j + len(tokens)]
        order = np.argsort(keys, kind="stable").astype(np.int64 if len(keys) >= 2**31 else np.int32)
        return cls(tokens, keys[order], order, sep)

    def continuation(self, seq: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that most often followed the longest of ``seq``'s last n-grams
        (``depth`` down to ``MIN_NGRAM``) found in the corpus, each agreed on by at least two
        occurrences after the first; [] when none is found."""
        for n in range(min(self.depth, len(seq)), MIN_NGRAM - 1, -1):
            if any(t >= self.sep for t in seq[-n:]):
                continue
            prefix = 0
            for t in seq[-n:]:
                prefix = (prefix << self.bits) | int(t)
            shift = self.bits * (self.depth - n)
            lo = np.searchsorted(self.keys, np.uint64(prefix << shift), side="left")
            hi = np.searchsorted(self.keys, np.uint64(((prefix + 1) << shift) - 1), side="right")
            if hi > lo:  # evenly spaced over the range: each continuation keeps its share
                picks = np.unique(np.linspace(lo, hi - 1, min(hi - lo, CANDIDATES)).astype(int))
                return self._vote(np.asarray(self.order[picks]).astype(np.int64) + n, k)
        return []

    def _vote(self, starts: np.ndarray, k: int) -> list[int]:
        found: list[int] = []
        for j in range(k):
            starts = starts[starts + j < len(self.tokens)]
            if not len(starts):
                break
            following = np.asarray(self.tokens[starts + j])
            values, counts = np.unique(following[following != self.sep], return_counts=True)
            if not len(values) or (j and counts.max() < 2):
                break
            best = int(values[np.argmax(counts)])
            found.append(best)
            starts = starts[following == best]
        return found

    def save(self, folder: Path) -> None:
        for name in ("tokens", "keys", "order"):
            np.save(folder / f"{name}.npy", getattr(self, name))

    @classmethod
    def open(cls, folder: Path) -> CorpusIndex:
        """The saved index, memory-mapped (pages load as lookups touch them)."""
        meta = json.loads((folder / "meta.json").read_text())
        arrays = [np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("tokens", "keys", "order")]
        return cls(*arrays, sep=meta["sep"])


def depth_for(sep: int) -> int:
    """How many tokens fit in one 64-bit key (ids up to ``sep`` inclusive)."""
    return min(4, 64 // sep.bit_length())


def corpus_files(path: Path) -> list[Path]:
    """A file, or every file under a folder (hidden ones skipped), in a stable order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(
            f"lookup corpus {path} does not exist: give a text file or a folder of text files."
        )
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def _pieces(text: str) -> list[str]:
    """``text`` cut at line ends into pieces of about ``CHUNK_CHARS`` (tokenized in parallel)."""
    pieces, start = [], 0
    while start < len(text):
        cut = text.find("\n", start + CHUNK_CHARS)
        cut = len(text) if cut < 0 else cut + 1
        pieces.append(text[start:cut])
        start = cut
    return pieces


def _texts(files: list[Path]) -> list[str]:
    """The UTF-8 text files' pieces; a file with a NUL byte in its first 8 KB is binary and
    skipped unread (a codebase holds images and archives too)."""
    texts = []
    for file in files:
        try:
            with open(file, "rb") as f:
                if b"\0" in f.read(8192):
                    continue
            texts.extend(_pieces(file.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):  # not UTF-8, or unreadable: not in the corpus
            continue
    return texts


def load_index(path: str | Path, tokenizer, cache: Path) -> CorpusIndex:
    """The index of ``path`` under ``tokenizer``: built once (and whenever a file or the
    tokenizer changes), then opened from ``cache``."""
    from edgezoo import atomic

    path = Path(path)
    files = corpus_files(path)
    key = hashlib.sha256(f"v{INDEX_VERSION}".encode())
    key.update(tokenizer.to_str().encode())
    for f in files:
        stat = f.stat()
        key.update(f"{f.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    folder = cache / "lookup" / key.hexdigest()[:20]
    if not (folder / "meta.json").is_file():
        texts, pieces = _texts(files), []
        for start in range(0, len(texts), ENCODE_BATCH):  # Encodings are heavy: keep the ids
            batch = tokenizer.encode_batch(
                texts[start : start + ENCODE_BATCH], add_special_tokens=False
            )
            pieces.extend(np.asarray(e.ids, np.uint32) for e in batch)
        index = CorpusIndex.build(pieces, tokenizer.get_vocab_size())
        try:
            with atomic.atomic_dir(folder) as tmp:
                index.save(tmp)
                meta = {"source": str(path), "files": len(files), "tokens": len(index.tokens)}
                (tmp / "meta.json").write_text(json.dumps({**meta, "sep": index.sep}))
        except OSError as e:
            raise ConfigError(
                f"cannot write the lookup corpus' index under {cache} ({e.strerror or e}): "
                "point EDGEZOO_CACHE at a writable folder."
            ) from e
        del index
    return CorpusIndex.open(folder)


class CorpusLookup:
    """Prompt lookup first (the text's own earlier n-grams); when it finds nothing, up to
    ``CORPUS_GUESSES`` tokens from the corpus."""

    def __init__(self, index: CorpusIndex) -> None:
        from edgezoo.runtime.speculative import PromptLookup

        self.index = index
        self.prompt = PromptLookup()

    def propose(self, seq: list[int], k, params: SamplingParams, rng) -> tuple[list, list]:
        """``k``: an int or the request's ``GuessCounts`` ("copy", then "corpus")."""
        from edgezoo.runtime.speculative import GuessCounts

        counts = GuessCounts.of(k)
        found, dists = self.prompt.propose(seq, counts, params, rng)
        if found:
            return found, dists
        found = self.index.continuation(seq, min(counts.k("corpus"), CORPUS_GUESSES))
        return found, [None] * len(found)

    def accept(self, seq_len: int) -> None:
        """Neither index follows the target's cache: nothing to roll back."""
