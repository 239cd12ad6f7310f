"""Decoder-only language model, Llama architecture, parameter names as transformers'.

Reads top to bottom like the paper: RMSNorm → attention with rotary embeddings and
grouped-query heads → RMSNorm → SwiGLU MLP, repeated, then a final norm and the LM head.
The forward takes and returns an explicit KV cache so one traced graph serves both
prefill (past length 0) and decode (one new token), the layout Optimum uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgezoo.zoo.config import LlamaConfig

KVCache = list[tuple[Tensor, Tensor]]  # per layer (key, value): [batch, kv_heads, length, head_dim]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the given positions (non-interleaved halves, as transformers)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        )
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # [B, S, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, S, D]
        return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return (x * cos.to(x.dtype)) + (rotate_half(x) * sin.to(x.dtype))


def repeat_kv(x: Tensor, rep: int) -> Tensor:
    """[B, kv, T, D] -> [B, kv * rep, T, D], each kv head repeated ``rep`` times in place."""
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, rep, t, d).reshape(b, kv * rep, t, d)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        past: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        present = (k, v)
        if self.n_kv != self.n_heads:  # grouped-query: each kv head serves n_heads/n_kv queries
            k, v = repeat_kv(k, self.n_heads // self.n_kv), repeat_kv(v, self.n_heads // self.n_kv)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)
        return self.o_proj(y), present


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        d, h = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.down_proj = nn.Linear(h, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, past):
        h, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class LlamaBackbone(nn.Module):
    """Embeddings → decoder layers → final norm; returns hidden states and the new cache."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
    ) -> tuple[Tensor, KVCache]:
        b, s = input_ids.shape
        past_len = 0 if not past_key_values else past_key_values[0][0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + s, device=input_ids.device)[
                None
            ].expand(b, s)
        cos, sin = self.rotary_emb(position_ids)
        mask = None
        if attention_mask is not None or past_key_values:
            mask = causal_mask(attention_mask, b, s, past_len, input_ids.device)
        x = self.embed_tokens(input_ids)
        presents: KVCache = []
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values else None
            x, present = layer(x, cos, sin, mask, past)
            presents.append(present)
        return self.norm(x), presents


class LlamaForCausalLM(nn.Module):
    """``logits, present = model(input_ids, attention_mask, position_ids, past_key_values)``."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaBackbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def reset_parameters(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):  # residual projections
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.num_hidden_layers))
            else:
                nn.init.normal_(p, std=std)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
    ) -> tuple[Tensor, KVCache]:
        hidden, presents = self.model(input_ids, attention_mask, position_ids, past_key_values)
        return self.lm_head(hidden), presents


class LlamaForSequenceClassification(nn.Module):
    """The decoder with a classification head on the last real token (transformers'
    ``LlamaForSequenceClassification``): how a pre-trained LM becomes a classifier."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaBackbone(cfg)
        self.score = nn.Linear(cfg.hidden_size, cfg.num_labels, bias=False)
        LlamaForCausalLM.reset_parameters(self)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        hidden, _ = self.model(input_ids, attention_mask)
        if attention_mask is None:
            last = torch.full(
                (input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device
            )
        else:  # right padding: the last real token is at (number of real tokens - 1)
            last = attention_mask.sum(-1) - 1
        pooled = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]
        return self.score(pooled)


def causal_mask(
    attention_mask: Tensor | None, batch: int, seq: int, past_len: int, device: torch.device
) -> Tensor:
    """Boolean [B, 1, S, P+S] mask: causal, minus padded keys.

    A query row with no visible key (a left-pad position) would give NaN in softmax; it
    is allowed to see everything instead. Its output is never used.
    """
    total = past_len + seq
    q_pos = torch.arange(seq, device=device)[:, None] + past_len
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None]  # [1, 1, S, T]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool()
    else:
        allowed = allowed.expand(batch, 1, seq, total)
    return allowed | ~allowed.any(dim=-1, keepdim=True)
