"""Byte-level BPE tokenizer trained with Hugging Face ``tokenizers``.

Saved as ``tokenizer.json`` (all the runtime needs) plus ``tokenizer_config.json`` and
``special_tokens_map.json`` so transformers opens it as a ``PreTrainedTokenizerFast``.
Every encoding starts with ``<s>``: the LM's document start and the classifier's [CLS].
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from edgezoo import atomic
from edgezoo.errors import CheckpointError, DataError
from edgezoo.progress import stage
from edgezoo.zoo.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3, see zoo.config
TOKENIZER_FILE = "tokenizer.json"
assert [PAD_ID, BOS_ID, EOS_ID, UNK_ID] == [0, 1, 2, 3]


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, max_chars: int = 20_000_000
) -> Tokenizer:
    """Train byte-level BPE on ``texts`` (at most ``max_chars`` of them: enough for merges)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise DataError(
            f"vocab_size {vocab_size} is too small for byte-level BPE; use at least 512."
        )
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen = [0]
    with stage(f"training a {vocab_size}-token BPE tokenizer"):
        tok.train_from_iterator(_capped(texts, max_chars, seen), trainer=trainer)
    if seen[0] == 0:
        raise DataError("cannot train a tokenizer on an empty corpus; check the --data path.")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B:1", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)]
    )
    return tok


def _capped(texts: Iterable[str], max_chars: int, seen: list[int]) -> Iterator[str]:
    for text in texts:
        if seen[0] >= max_chars:
            return
        seen[0] += len(text)
        yield text


def save_tokenizer(
    tok: Tokenizer, folder: str | Path, model_max_length: int, *, chat_template: str | None = None
) -> None:
    """Write the tokenizer files; ``chat_template`` (language models) goes into the config,
    where transformers' ``apply_chat_template`` and ``edgezoo serve`` read it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_text(folder / TOKENIZER_FILE, tok.to_str())
    specials = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    atomic.write_json(folder / "special_tokens_map.json", specials)
    atomic.write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model_max_length,
            "add_bos_token": True,
            "clean_up_tokenization_spaces": False,
            # No token_type_ids: a Llama's forward has no such input (BERT's defaults to 0s),
            # so `model(**tok(text, return_tensors="pt"))` works for every family.
            "model_input_names": ["input_ids", "attention_mask"],
            **specials,
            **({"chat_template": chat_template} if chat_template else {}),
        },
    )


def load_tokenizer(folder: str | Path) -> Tokenizer:
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing; a model dir needs its tokenizer (re-run training or copy it in)."
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise CheckpointError(f"{path} is not a valid tokenizer file ({e}).") from e


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    import hashlib

    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    """Copy tokenizer files from one model dir to another (fine-tuning keeps its vocabulary)."""
    for name in (TOKENIZER_FILE, "special_tokens_map.json", "tokenizer_config.json"):
        p = Path(src) / name
        if p.is_file():
            atomic.write_bytes(Path(dst) / name, p.read_bytes())
