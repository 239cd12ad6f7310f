"""Encoder classifier, BERT architecture, parameter names as transformers'.

Post-norm encoder blocks (attention → add & LayerNorm → GELU MLP → add & LayerNorm), a
tanh pooler over the first token, and a linear classifier: exactly
``BertForSequenceClassification`` in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgezoo.zoo.config import BertConfig


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id
        )
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x + self.position_embeddings(positions))


class SelfAttention(nn.Module):
    """``n_heads`` heads of width ``cfg.head_dim`` (fewer than configured after head pruning)."""

    def __init__(self, cfg: BertConfig, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, cfg.head_dim
        width = n_heads * cfg.head_dim
        self.query = nn.Linear(cfg.hidden_size, width)
        self.key = nn.Linear(cfg.hidden_size, width)
        self.value = nn.Linear(cfg.hidden_size, width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, s, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), attn_mask=mask
        )
        return y.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)


class DenseNorm(nn.Module):
    """Projection, residual add, LayerNorm (BERT's ``*.output`` blocks)."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class AttentionBlock(nn.Module):
    def __init__(self, cfg: BertConfig, n_heads: int) -> None:
        super().__init__()
        self.self = SelfAttention(cfg, n_heads)
        self.output = DenseNorm(n_heads * cfg.head_dim, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BertConfig, index: int) -> None:
        super().__init__()
        self.attention = AttentionBlock(cfg, cfg.heads_in_layer(index))
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))


class Pooler(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class BertBackbone(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.pooler = Pooler(cfg)


class BertForSequenceClassification(nn.Module):
    """``logits = model(input_ids, attention_mask, token_type_ids)`` → [batch, num_labels]."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.bert = BertBackbone(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        return self.classifier(
            self.bert.pooler(self.hidden_states(input_ids, attention_mask, token_type_ids))
        )

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """The last layer's states ``[batch, seq, hidden]``: what the pooler and the
        exported graph's ``last_hidden_state`` (sentence embeddings) read."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask[:, None, None, :].bool()  # [B, 1, 1, S]: padded keys hidden
        x = self.bert.embeddings(input_ids, token_type_ids)
        for layer in self.bert.encoder.layer:
            x = layer(x, mask)
        return x
