"""The names of graph inputs, outputs and dynamic dimensions, in one torch-free place.

They follow Optimum and ONNX Runtime GenAI (``past_key_values.{i}.key`` in,
``present.{i}.key`` out), so a graph we export is one their tools recognise and theirs is
one our runtime runs. Export writes these names, quantize and the runtime read them.
"""

from __future__ import annotations

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
TOKEN_TYPE_IDS = "token_type_ids"
LOGITS = "logits"
LAST_HIDDEN_STATE = "last_hidden_state"  # an encoder's last layer, [batch, seq, hidden]
# The GQA decoder's first position to compute logits for (a 1-element int64 input with a
# default of 0: every position). A prompt needs only its last token's: -1.
LOGITS_FROM = "logits_from"
PAST_PREFIX = "past_key_values"
PRESENT_PREFIX = "present"
KV_KINDS = ("key", "value")

# Dynamic dimension symbols (Optimum's spelling).
BATCH = "batch_size"
SEQUENCE = "sequence_length"
PAST_SEQUENCE = "past_sequence_length"
TOTAL_SEQUENCE = "total_sequence_length"


def past_names(num_layers: int) -> list[str]:
    """``past_key_values.{i}.key|value`` for every layer, keys before values."""
    return [f"{PAST_PREFIX}.{i}.{kind}" for i in range(num_layers) for kind in KV_KINDS]


def present_names(num_layers: int) -> list[str]:
    return [present_of(name) for name in past_names(num_layers)]


def is_past(name: str) -> bool:
    return name.startswith(PAST_PREFIX + ".")


def present_of(past_name: str) -> str:
    """The output that holds the updated cache of a ``past_key_values.*`` input."""
    return PRESENT_PREFIX + past_name[len(PAST_PREFIX) :]


def decoder_io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of a decoder graph with a KV cache."""
    inputs = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *past_names(num_layers)]
    return inputs, [LOGITS, *present_names(num_layers)]


def encoder_io_names(
    with_token_types: bool = True, with_hidden: bool = False
) -> tuple[list[str], list[str]]:
    """BERT takes token_type_ids and also returns its last hidden states (for sentence
    embeddings); a decoder used as a classifier does neither. ``logits`` always come first."""
    inputs = [INPUT_IDS, ATTENTION_MASK, *([TOKEN_TYPE_IDS] if with_token_types else [])]
    return inputs, [LOGITS, *([LAST_HIDDEN_STATE] if with_hidden else [])]


# Encoder–decoder graphs, in the file layout and names of Optimum's ORTModelForSeq2SeqLM.
ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"  # first step: computes the cross-attention K/V once
DECODER_WITH_PAST_FILE = "decoder_with_past_model.onnx"  # every later step
ENCODER_HIDDEN_STATES = "encoder_hidden_states"
ENCODER_ATTENTION_MASK = "encoder_attention_mask"
ENCODER_SEQUENCE = "encoder_sequence_length"
DECODER_SEQUENCE = "decoder_sequence_length"
PAST_DECODER_SEQUENCE = "past_decoder_sequence_length"


def seq2seq_past_names(num_layers: int) -> list[str]:
    """Per layer: the decoder's self-attention key/value, then the cross-attention's."""
    return [
        f"{PAST_PREFIX}.{i}.{part}.{kind}"
        for i in range(num_layers)
        for part in ("decoder", "encoder")
        for kind in KV_KINDS
    ]


def seq2seq_io_names(num_layers: int) -> dict[str, tuple[list[str], list[str]]]:
    """(inputs, outputs) of the encoder, the first-step decoder and the cached decoder."""
    past = seq2seq_past_names(num_layers)
    self_past = [n for n in past if ".decoder." in n]
    return {
        "encoder": ([INPUT_IDS, ATTENTION_MASK], [LAST_HIDDEN_STATE]),
        "decoder": (
            [ENCODER_ATTENTION_MASK, INPUT_IDS, ENCODER_HIDDEN_STATES],
            [LOGITS, *(present_of(n) for n in past)],
        ),
        "decoder_with_past": (
            [ENCODER_ATTENTION_MASK, INPUT_IDS, *past],
            [LOGITS, *(present_of(n) for n in self_past)],
        ),
    }
