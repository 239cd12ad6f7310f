"""Corpus lookup: the index finds the continuation most occurrences agree on (checked against
a scan of the corpus), is built once per corpus and tokenizer, and errors say what to give."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from edgezoo import atomic
from edgezoo.errors import ConfigError
from edgezoo.runtime import corpus_lookup
from edgezoo.runtime.corpus_lookup import MIN_NGRAM, CorpusIndex, CorpusLookup, load_index
from edgezoo.runtime.sampling import SamplingParams


def scanned(pieces: list[list[int]], seq: list[int], k: int, depth: int) -> list[int]:
    """``CorpusIndex.continuation`` by brute force: every occurrence of the longest n-gram
    votes, token by token; ties go to the smaller id (as ``np.unique`` orders them)."""
    for n in range(min(depth, len(seq)), MIN_NGRAM - 1, -1):
        tail = seq[-n:]
        starts = [
            (p, i + n)
            for p, piece in enumerate(pieces)
            for i in range(len(piece) - n + 1)
            if piece[i : i + n] == tail
        ]
        if not starts:
            continue
        found: list[int] = []
        for j in range(k):
            following = [pieces[p][s + j] for p, s in starts if s + j < len(pieces[p])]
            if not following:
                break
            counts = Counter(following)
            best = min(counts, key=lambda t: (-counts[t], t))
            if j and counts[best] < 2:
                break
            found.append(best)
            starts = [
                (p, s) for p, s in starts if s + j < len(pieces[p]) and pieces[p][s + j] == best
            ]
        return found
    return []


def test_the_continuation_is_what_most_occurrences_agree_on():
    pieces = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [9, 1, 2, 3, 4, 5, 7], [2, 3, 8]]
    index = CorpusIndex.build(pieces, vocab_size=50)
    assert index.continuation([0, 1, 2, 3], 5) == [4, 5]  # 3-gram 1 2 3: 4 (3×), then 5 (2×)
    assert index.continuation([2, 3], 5) == [4, 5]  # 2 3 → 4 three times of four
    assert index.continuation([5, 7], 3) == []  # 7 ends its piece: nothing follows
    assert index.continuation([11, 12], 3) == []  # never seen
    assert index.continuation([3], 3) == []  # one token is too little to go on


@pytest.mark.parametrize("vocab", [7, 300, 70_000])
def test_the_index_agrees_with_a_scan_of_the_corpus(vocab):
    """Random corpora (small alphabets: many repeats) and queries, 2-, 3- and 4-byte ids."""
    rng = np.random.default_rng(vocab)
    alphabet = rng.choice(vocab, size=6, replace=False).tolist()
    pieces = [rng.choice(alphabet, size=rng.integers(1, 40)).tolist() for _ in range(30)]
    index = CorpusIndex.build(pieces, vocab_size=vocab)
    for _ in range(300):
        seq = rng.choice(alphabet, size=rng.integers(1, 7)).tolist()
        k = int(rng.integers(1, 6))
        assert index.continuation(seq, k) == scanned(pieces, seq, k, index.depth), seq


class RefusesToTokenize:
    """The tokenizer, except that tokenizing fails: the index must come from the cache."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def get_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode_batch(self, *args, **kwargs):
        raise AssertionError("the cached index should have been used")


def test_the_index_is_built_once_per_corpus_and_tokenizer(tmp_path, tokenizer, monkeypatch):
    folder = tmp_path / "code"
    (folder / "pkg").mkdir(parents=True)
    (folder / "a.py").write_text("def add(a, b):\n    return a + b\n" * 50)
    (folder / "pkg" / "b.py").write_text("import os\nprint(os.getcwd())\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[core]\n")  # hidden: not part of the corpus
    (folder / "blob.zip").write_bytes(b"PK\x03\x04\x00\x00 x" * 10)  # NUL bytes: binary, skipped
    (folder / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))  # not UTF-8: skipped
    cache = tmp_path / "cache"
    index = load_index(folder, tokenizer, cache)
    texts = [(folder / "a.py").read_text(), (folder / "pkg" / "b.py").read_text()]
    expected = sum(len(tokenizer.encode(t, add_special_tokens=False).ids) + 1 for t in texts)
    assert len(index.tokens) == expected  # each text and its separator, nothing else
    ids = tokenizer.encode("def add(a, b):\n    return", add_special_tokens=False).ids
    assert index.continuation(ids, 3)  # copied from a.py

    refusing = RefusesToTokenize(tokenizer)
    again = load_index(folder, refusing, cache)
    assert len(again.tokens) == expected and isinstance(again.keys, np.memmap)
    (folder / "pkg" / "b.py").write_text("import sys\n")  # a change: indexed anew
    with pytest.raises(AssertionError, match="cached index"):
        load_index(folder, refusing, cache)
    with pytest.raises(ConfigError, match="does not exist"):
        load_index(tmp_path / "missing", tokenizer, cache)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic, "atomic_dir", read_only)
    with pytest.raises(ConfigError, match="EDGEZOO_CACHE"):
        load_index(folder, tokenizer, tmp_path / "elsewhere")
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no text"):
        load_index(tmp_path / "empty", tokenizer, cache)


def test_corpus_guesses_come_only_when_the_text_has_nothing_to_copy():
    index = CorpusIndex.build([[10, 11, 12, 13, 14]] * 3, vocab_size=50)
    lookup = CorpusLookup(index)
    params = SamplingParams(temperature=0)
    # 5 was seen before in the text: prompt lookup copies what followed it (and on, as a loop).
    assert lookup.propose([5, 6, 5], 4, params, None) == ([6, 5, 6, 5], [None] * 4)
    # nothing earlier to copy: at most CORPUS_GUESSES tokens from the corpus
    found, dists = lookup.propose([1, 10, 11], 8, params, None)
    assert found == [12, 13, 14][: corpus_lookup.CORPUS_GUESSES] and dists == [None] * len(found)
    assert lookup.propose([1, 2], 4, params, None) == ([], [])
