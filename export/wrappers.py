"""Flat-signature views of the zoo models, so the ONNX graph has named tensors only.

ONNX inputs and outputs are flat lists; the wrappers unpack
``past_key_values.{i}.key|value`` into the model's per-layer cache and pack
``present.{i}.key|value`` back, in the order Optimum and ONNX Runtime GenAI use.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgezoo.zoo.config import BertConfig, LlamaConfig


class DecoderForExport(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor
    ):
        cache = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        logits, present = self.model(input_ids, attention_mask, position_ids, cache)
        return (logits, *[t for kv in present for t in kv])


class EncoderForExport(nn.Module):
    """BERT: ``logits`` and ``last_hidden_state`` (the runtime's sentence embeddings pool it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor
    ) -> tuple[Tensor, Tensor]:
        hidden = self.model.hidden_states(input_ids, attention_mask, token_type_ids)
        return self.model.classifier(self.model.bert.pooler(hidden)), hidden


class DecoderClassifierForExport(nn.Module):
    """A decoder with a classification head: no token types."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids, attention_mask)


def classifier_wrapper(model: nn.Module) -> nn.Module:
    return (
        EncoderForExport(model)
        if isinstance(model.config, BertConfig)
        else DecoderClassifierForExport(model)
    )


def decoder_inputs(
    cfg: LlamaConfig,
    batch: int,
    seq: int,
    past: int,
    generator: torch.Generator | None = None,
    vocab: int | None = None,
) -> list[Tensor]:
    """Random but valid decoder inputs: ids in the vocabulary, positions after the past."""
    ids = torch.randint(4, vocab or cfg.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq)[None].expand(batch, seq).contiguous()
    shape = (batch, cfg.num_key_value_heads, past, cfg.head_dim)
    kv = [torch.randn(shape, generator=generator) for _ in range(2 * cfg.num_hidden_layers)]
    return [ids, mask, pos, *kv]


def encoder_inputs(
    cfg: BertConfig,
    batch: int,
    seq: int,
    generator: torch.Generator | None = None,
    vocab: int | None = None,
) -> list[Tensor]:
    ids = torch.randint(4, vocab or cfg.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1 and seq > 2:
        mask[-1, seq // 2 :] = 0  # one (right-)padded row
    return [ids, mask, torch.zeros_like(ids)] if isinstance(cfg, BertConfig) else [ids, mask]
