"""Tokenizer, data reading, the deterministic split, token cache and samplers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgezoo.errors import DataError
from edgezoo.zoo import data
from edgezoo.zoo.config import BOS_ID, EOS_ID, PAD_ID
from edgezoo.zoo.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tok(text_corpus):
    return train_tokenizer((t for _, t in data.iter_documents(str(text_corpus))), vocab_size=600)


def test_tokenizer_round_trips_and_opens_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    text = "def f(x):\n    return x  # héllo 🙂"
    enc = tok.encode(text)
    assert enc.ids[0] == BOS_ID
    assert tok.decode(enc.ids) == text
    assert tok.token_to_id("<pad>") == PAD_ID and tok.token_to_id("</s>") == EOS_ID
    save_tokenizer(tok, tmp_path, model_max_length=128)
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert fast.encode(text) == enc.ids
    assert fast.pad_token_id == PAD_ID and fast.eos_token_id == EOS_ID
    assert load_tokenizer(tmp_path).encode(text).ids == enc.ids


def test_documents_from_jsonl_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "beta"}) + "\n\n" + json.dumps({"text": "gamma"}) + "\n"
    )
    assert [t for _, t in data.iter_documents(str(tmp_path))] == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing", None, "does not exist"),
        ("empty.txt", "", "is empty"),
        ("bad.jsonl", '{"text": 1}\n', "no string field"),
        ("broken.jsonl", "{nope\n", "not valid JSON"),
    ],
)
def test_bad_text_data_gets_a_clear_error(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        list(data.iter_documents(str(tmp_path / name)))


def test_labelled_data_needs_a_label_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("text,category\nhello,a\n")
    with pytest.raises(DataError, match="no 'label' column"):
        data.read_labelled(str(path))
    assert data.read_labelled(str(path), label_field="category") == [("hello", "a")]
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(DataError, match="lacks"):
        data.read_labelled(str(jsonl))


def test_split_is_deterministic_and_order_independent():
    ids = [f"doc{i}" for i in range(2000)]
    val = {d for d in ids if data.is_validation(d, 0.1)}
    assert val == {d for d in reversed(ids) if data.is_validation(d, 0.1)}
    assert 150 < len(val) < 250


def test_split_survives_moving_the_corpus(text_corpus, tmp_path):
    moved = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(text_corpus, moved)

    def val_ids(source):
        return {d for d, _ in data.iter_documents(str(source)) if data.is_validation(d, 0.2)}

    assert val_ids(text_corpus) == val_ids(moved)
    assert val_ids(text_corpus)


def test_token_cache_is_built_once_and_memory_mapped(text_corpus, tok):
    first = data.token_cache(str(text_corpus), tok, val_frac=0.1)
    stamp = (first.path / "train.bin").stat().st_mtime_ns
    again = data.token_cache(str(text_corpus), tok, val_frac=0.1)
    assert again.path == first.path and (again.path / "train.bin").stat().st_mtime_ns == stamp
    assert isinstance(again.train, np.memmap) and len(again.val) > 0
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["train_tokens"] == len(first.train) and meta["val_docs"] > 0
    # every document ends with EOS; the two splits hold all of them
    assert (
        np.count_nonzero(first.train == EOS_ID) + np.count_nonzero(first.val == EOS_ID)
    ) == meta["train_docs"] + meta["val_docs"]


def test_single_document_corpus_still_gets_a_validation_split(tmp_path, tok):
    (tmp_path / "one.txt").write_text("word " * 3000)
    splits = data.token_cache(str(tmp_path / "one.txt"), tok, val_frac=0.1)
    assert len(splits.val) > 0 and len(splits.train) > len(splits.val)


def test_epoch_sampler_sees_every_item_once_per_epoch():
    s = data.EpochSampler(37, seed=3)
    epoch0 = s.items(0, 37)
    assert sorted(epoch0) == list(range(37))
    assert not np.array_equal(epoch0, s.items(37, 37))
    # any slice equals the same positions read in one go (stateless: resume needs no data state)
    assert np.array_equal(s.items(30, 20), np.concatenate([s.items(30, 7), s.items(37, 13)]))
