"""Seq2seq data and metrics: pairs from files and from the stdlib, batches, chrF/BLEU."""

from __future__ import annotations

import numpy as np
import pytest

from edgezoo.errors import DataError
from edgezoo.zoo import corpus
from edgezoo.zoo.metrics import generation_report
from edgezoo.zoo.s2s_data import (
    IGNORE,
    copy_name_baseline,
    encode_pairs,
    read_pairs,
    split_pairs,
)
from edgezoo.zoo.tokenizer import train_tokenizer


def test_pairs_from_jsonl_and_csv_with_named_fields(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"code": "def f(): pass", "doc": "Do nothing."}\n')
    assert read_pairs(str(jsonl), "code", "doc") == [("p.jsonl:0", "def f(): pass", "Do nothing.")]
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("a,b\nhello,bonjour\n")
    assert read_pairs(str(csv_path), "a", "b")[0][1:] == ("hello", "bonjour")
    with pytest.raises(DataError, match="--source-field"):
        read_pairs(str(csv_path), "source", "b")
    with pytest.raises(DataError, match="--source-field"):
        read_pairs(str(jsonl), "source", "doc")


def test_batches_pad_labels_with_ignore_and_end_targets_with_eos():
    pairs = [("a", "def add(a, b): return a + b", "Add two numbers."), ("b", "x", "Y")]
    tok = train_tokenizer([p[1] + p[2] for p in pairs] * 20, 300)
    ids, mask, labels = encode_pairs(pairs, tok, max_source=8).batch(np.array([0, 1]))
    assert ids.shape[1] <= 8 and mask[1].sum() < mask[0].sum()
    assert labels[1, -1] == IGNORE and 2 in labels[0] and labels[0, 0] != 1  # </s>, no <s>
    assert tok.decode([t for t in labels[0] if t not in (IGNORE, 2)]) == "Add two numbers."


def test_builtin_doc_corpus_is_code_without_docstring_to_its_first_line():
    pairs = corpus.stdlib_docstring_pairs()
    assert len(pairs) > 1000
    ids = [p[0] for p in pairs]
    assert len(set(ids)) == len(ids)
    for _, source, target in pairs[:200]:
        assert source.startswith(("def ", "async def ")) and target not in source
        assert 8 <= len(target) <= 120 and "\n" not in target
    _, val_pairs = split_pairs(pairs, 0.05)
    assert 0.02 < len(val_pairs) / len(pairs) < 0.09
    assert split_pairs(list(reversed(pairs)), 0.05)[1] == list(reversed(val_pairs))


def test_copy_name_baseline_and_generation_metrics():
    assert copy_name_baseline("def get_valueOf(x):\n    return x") == "get value of"
    assert copy_name_baseline("hello world\nmore") == "hello world"
    report = generation_report(["Return the value.", "Add."], ["Return the value.", "Sub."])
    assert report["exact_match"] == 0.5 and 0 < report["chrf"] < 100 and report["bleu"] > 0
    with pytest.raises(ValueError):
        generation_report(["a"], [])
