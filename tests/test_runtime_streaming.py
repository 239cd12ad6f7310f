"""runtime.streaming: deltas never split a character and add up to the full decode."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from edgezoo.runtime.streaming import TextStreamer

WORDS = [
    "héllo", "wörld", "日本語", "emoji", "🙂", "naïve", "café", "Ελληνικά", "русский",
    "the", "a", "of", "ß", "€5", "👩‍💻", "中文", "テキスト", "hello", "world",
]  # fmt: skip
TEXTS = [
    "héllo wörld 日本語 emoji 🙂",
    "naïve café, Ελληνικά! русский текст… 👩‍💻 writes 中文 and テキスト.",
    "unseen: ŝtranĝe ĉaroj 🦀🐍 ∑∫ ok",  # characters the merges never saw
]


@pytest.fixture(scope="module")
def byte_bpe() -> Tokenizer:
    """Byte-level BPE like zoo.tokenizer, with a vocab small enough to split most characters."""
    rng = random.Random(0)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(3, 10))) for _ in range(300)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return tok


def _stream(streamer: TextStreamer, ids: list[int]) -> list[str]:
    return [streamer.push(i) for i in ids] + [streamer.flush()]


def test_multibyte_characters_really_span_tokens(byte_bpe):
    ids = byte_bpe.encode(TEXTS[0]).ids
    assert any("\ufffd" in byte_bpe.decode([i]) for i in ids), "test needs split characters"


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_are_whole_characters_and_join_to_full_decode(byte_bpe, text):
    ids = byte_bpe.encode(text).ids  # starts with the special <s>
    assert ids[0] == 1
    deltas = _stream(TextStreamer(byte_bpe), ids)
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == byte_bpe.decode(ids, skip_special_tokens=True) == text
    assert sum(1 for d in deltas if d) > 3  # it did stream, not emit everything at the end


def test_holds_back_an_incomplete_character(byte_bpe):
    ids = byte_bpe.encode("🙂", add_special_tokens=False).ids
    assert len(ids) > 1
    streamer = TextStreamer(byte_bpe)
    assert [streamer.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert streamer.push(ids[-1]) == "🙂"
    assert streamer.flush() == ""


def test_special_tokens_are_skipped_mid_stream(byte_bpe):
    a = byte_bpe.encode("日本語 café", add_special_tokens=False).ids
    b = byte_bpe.encode(" wörld 🙂", add_special_tokens=False).ids
    ids = [1, *a, 2, *b, 2]
    deltas = _stream(TextStreamer(byte_bpe), ids)
    assert "".join(deltas) == "日本語 café wörld 🙂"
    assert not any("<" in d or "\ufffd" in d for d in deltas)


def test_keeping_special_tokens(byte_bpe):
    ids = byte_bpe.encode("é", add_special_tokens=True).ids
    joined = "".join(_stream(TextStreamer(byte_bpe, skip_special_tokens=False), ids))
    assert joined == byte_bpe.decode(ids, skip_special_tokens=False) == "<s>é"


def test_flush_emits_a_trailing_incomplete_character(byte_bpe):
    ok = byte_bpe.encode("ok ", add_special_tokens=False).ids
    ids = ok + byte_bpe.encode("∑", add_special_tokens=False).ids[:-1]  # cut inside the ∑
    streamer = TextStreamer(byte_bpe)
    joined = "".join(streamer.push(i) for i in ids)
    assert joined == "ok "
    tail = streamer.flush()
    assert tail.startswith("\ufffd")
    assert joined + tail == byte_bpe.decode(ids)


def test_random_ids_join_to_full_decode(byte_bpe):
    """Whatever a model emits (even invalid byte sequences), the stream equals the decode."""
    rng = random.Random(1)
    vocab = byte_bpe.get_vocab_size()
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 30))]
        deltas = _stream(TextStreamer(byte_bpe), ids)
        assert "".join(deltas) == byte_bpe.decode(ids, skip_special_tokens=True), ids
        assert not any(d.endswith("\ufffd") for d in deltas[:-1] if d), ids


def test_window_stays_small(byte_bpe):
    ids = byte_bpe.encode(" ".join(TEXTS) * 5, add_special_tokens=False).ids
    streamer = TextStreamer(byte_bpe)
    longest = 0
    for i in ids:
        streamer.push(i)
        longest = max(longest, len(streamer.ids))
    assert longest < 16 < len(ids)


@pytest.fixture(scope="module")
def sentencepiece_like() -> Tokenizer:
    """Llama-style: "▁" for spaces, byte-fallback tokens, and a decoder that strips the first space."""
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    merges = []
    for word in ["▁hello", "▁world", "▁日本"]:
        for ch in word:
            vocab.setdefault(ch, len(vocab))
        for i in range(2, len(word) + 1):
            if word[:i] not in vocab:
                vocab[word[:i]] = len(vocab)
                merges.append((word[: i - 1], word[i - 1]))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return tok


def test_prompt_context_keeps_leading_space(sentencepiece_like):
    tok = sentencepiece_like
    prompt = tok.encode("hello").ids
    generated = tok.encode(" world 🙂 日本", add_special_tokens=False).ids
    assert len(generated) == 7  # ▁world ▁ <0xF0> <0x9F> <0x99> <0x82> ▁日本
    with_context = _stream(TextStreamer(tok, prompt_ids=prompt), generated)
    assert "".join(with_context) == tok.decode(prompt + generated)[len(tok.decode(prompt)) :]
    assert "".join(with_context) == " world 🙂 日本"
    assert not any("\ufffd" in d for d in with_context)
    # without a prompt the stream still equals decoding the generated ids alone
    alone = _stream(TextStreamer(tok), generated)
    assert "".join(alone) == tok.decode(generated) == "world 🙂 日本"


def test_push_all_is_the_stream_joined(byte_bpe, sentencepiece_like):
    """The final text in one go is exactly what streaming gives, for real text and for
    random ids after random prompts (invalid byte runs included): in two decodes for a
    byte-level tokenizer, token by token for the others."""
    for text in TEXTS:
        ids = byte_bpe.encode(text).ids
        assert TextStreamer(byte_bpe).push_all(ids) == text
    assert TextStreamer(byte_bpe).byte_level and not TextStreamer(sentencepiece_like).byte_level
    rng = random.Random(2)
    for tok in (byte_bpe, sentencepiece_like):
        vocab = tok.get_vocab_size()
        for _ in range(300):
            prompt = [rng.randrange(vocab) for _ in range(rng.randint(0, 8))]
            ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
            streamed = "".join(_stream(TextStreamer(tok, prompt_ids=prompt), ids))
            assert TextStreamer(tok, prompt_ids=prompt).push_all(ids) == streamed, (prompt, ids)
