"""Encoder–decoder transformer, T5 architecture, parameter names as transformers'.

The source goes through the encoder once (bidirectional self-attention); the decoder
predicts the target token by token with causal self-attention and cross-attention over
the encoder's output. T5's choices: no absolute positions but a learned bias per head
for bucketed relative distances (computed in the first block, shared by the rest),
RMS layer norm without bias, unscaled dot-product attention, a (gated) GELU/ReLU MLP.

The decoder takes and returns an explicit cache: per layer the self-attention K/V (grown
by one step each call) and the cross-attention K/V (computed once from the encoder
output), the layout Optimum's seq2seq decoder graphs use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgezoo.zoo.config import T5_FEED_FORWARD, T5Config

# per decoder layer: (self key, self value, cross key, cross value), [batch, heads, len, head_dim]
Seq2SeqCache = list[tuple[Tensor, Tensor, Tensor, Tensor]]


class T5LayerNorm(nn.Module):
    """RMS norm: scale only, no mean subtraction and no bias; statistics in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon)).to(x.dtype)


def relative_position_bucket(
    relative: Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """T5's buckets: exact for small distances, log-spaced up to ``max_distance``; the
    encoder tells left from right (half the buckets each), the decoder only looks back."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = (
        max_exact
        + (
            torch.log(relative.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


class T5Attention(nn.Module):
    """Multi-head attention without scaling (T5 folds it into the initialisation)."""

    def __init__(self, cfg: T5Config, has_bias: bool, is_decoder: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        inner = self.n_heads * self.head_dim
        self.q = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.k = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.v = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.o = nn.Linear(inner, cfg.hidden_size, bias=False)
        self.is_decoder = is_decoder
        self.buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        if has_bias:
            self.relative_attention_bias = nn.Embedding(self.buckets, self.n_heads)

    def position_bias(self, q_start: Tensor | int, q_len: int, k_len: int) -> Tensor:
        """[1, heads, q_len, k_len] bias for queries at ``q_start…`` over keys at ``0…``."""
        device = self.relative_attention_bias.weight.device
        context = torch.arange(q_len, device=device)[:, None] + q_start
        memory = torch.arange(k_len, device=device)[None, :]
        bucket = relative_position_bucket(
            memory - context, not self.is_decoder, self.buckets, self.max_distance
        )
        return self.relative_attention_bias(bucket).permute(2, 0, 1)[None]

    def split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1, self.n_heads, self.head_dim).transpose(1, 2)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        # Written out rather than SDPA: the exporter's SDPA decomposition gives strides its
        # own shape checks then reject (torch 2.13), and this is T5's reference arithmetic.
        scores = torch.matmul(self.split(self.q(x)), k.transpose(2, 3)) + bias
        y = torch.matmul(F.softmax(scores.float(), dim=-1).type_as(scores), v)
        b, s = x.shape[:2]
        return self.o(y.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))


class T5MLP(nn.Module):
    """``wo(act(wi(x)))``, or gated ``wo(act(wi_0(x)) * wi_1(x))`` (T5 v1.1)."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        act, self.gated = T5_FEED_FORWARD[cfg.feed_forward_proj]
        d, ff = cfg.hidden_size, cfg.intermediate_size
        if self.gated:
            self.wi_0 = nn.Linear(d, ff, bias=False)
            self.wi_1 = nn.Linear(d, ff, bias=False)
        else:
            self.wi = nn.Linear(d, ff, bias=False)
        self.wo = nn.Linear(ff, d, bias=False)
        self.act = {
            "relu": F.relu,
            "silu": F.silu,
            "gelu_new": lambda t: F.gelu(t, approximate="tanh"),
        }[act]

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))
        return self.wo(self.act(self.wi(x)))


class _SelfAttentionSublayer(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool, is_decoder: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(cfg, has_bias, is_decoder)
        self.layer_norm = T5LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon)


class _CrossAttentionSublayer(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(cfg, False, True)
        self.layer_norm = T5LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon)


class _FeedForwardSublayer(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.DenseReluDense = T5MLP(cfg)
        self.layer_norm = T5LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_SelfAttentionSublayer(cfg, has_bias, False)])
        self.layer.append(_FeedForwardSublayer(cfg))

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        sub = self.layer[0]
        h = sub.layer_norm(x)
        att = sub.SelfAttention
        x = x + att.attend(h, att.split(att.k(h)), att.split(att.v(h)), bias)
        return self.layer[1](x)


class DecoderBlock(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_SelfAttentionSublayer(cfg, has_bias, True)])
        self.layer.append(_CrossAttentionSublayer(cfg))
        self.layer.append(_FeedForwardSublayer(cfg))

    def forward(
        self,
        x: Tensor,
        self_bias: Tensor,
        cross_bias: Tensor,
        encoder_hidden: Tensor | None,
        past: tuple[Tensor, ...] | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
        """``past`` holds (self K, self V, cross K, cross V); without it the cross K/V are
        projected from ``encoder_hidden``, once per source."""
        sa, ca = self.layer[0].SelfAttention, self.layer[1].EncDecAttention
        h = self.layer[0].layer_norm(x)
        k, v = sa.split(sa.k(h)), sa.split(sa.v(h))
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
            ck, cv = past[2], past[3]
        else:
            ck, cv = ca.split(ca.k(encoder_hidden)), ca.split(ca.v(encoder_hidden))
        x = x + sa.attend(h, k, v, self_bias)
        x = x + ca.attend(self.layer[1].layer_norm(x), ck, cv, cross_bias)
        return self.layer[2](x), (k, v, ck, cv)


class T5Stack(nn.Module):
    """Blocks and a final norm; the embedding table lives in the parent (``shared``)."""

    def __init__(self, cfg: T5Config, n_layers: int, is_decoder: bool) -> None:
        super().__init__()
        block = DecoderBlock if is_decoder else EncoderBlock
        self.block = nn.ModuleList(block(cfg, i == 0) for i in range(n_layers))
        self.final_layer_norm = T5LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon)

    def bias_module(self) -> T5Attention:
        return self.block[0].layer[0].SelfAttention


def padding_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, 1, 1, K] additive mask: 0 for real keys, the dtype's minimum for padding."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class T5ForConditionalGeneration(nn.Module):
    """``logits, cache = model(input_ids, attention_mask, decoder_input_ids)``; generation
    calls ``encode`` once and ``decode`` per step with the returned cache."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.encoder = T5Stack(cfg, cfg.num_hidden_layers, is_decoder=False)
        self.decoder = T5Stack(cfg, cfg.decoder_layers, is_decoder=True)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight

    def reset_parameters(self) -> None:
        """T5's initialisation (factor 1): with unscaled attention, queries get 1/sqrt(d·d_kv)."""
        cfg = self.config
        d, inner = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(".q.weight"):
                nn.init.normal_(p, std=(d * cfg.head_dim) ** -0.5)
            elif name.endswith((".k.weight", ".v.weight")):
                nn.init.normal_(p, std=d**-0.5)
            elif name.endswith(".o.weight"):
                nn.init.normal_(p, std=inner**-0.5)
            elif name.endswith(".wo.weight"):
                nn.init.normal_(p, std=cfg.intermediate_size**-0.5)
            elif name.endswith(("wi.weight", "wi_0.weight", "wi_1.weight")) or name.endswith(
                "relative_attention_bias.weight"
            ):
                nn.init.normal_(p, std=d**-0.5)
            else:  # shared embedding and an untied head
                nn.init.normal_(p, std=1.0)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The encoder's output for a (right- or left-padded) source batch."""
        x = self.shared(input_ids)
        s = input_ids.shape[1]
        bias = self.encoder.bias_module().position_bias(0, s, s)
        if attention_mask is not None:
            bias = bias + padding_bias(attention_mask, x.dtype)
        for block in self.encoder.block:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_hidden: Tensor | None,
        attention_mask: Tensor | None = None,
        past: Seq2SeqCache | None = None,
    ) -> tuple[Tensor, Seq2SeqCache]:
        """Logits for ``decoder_input_ids`` after ``past``'s steps, and the grown cache.

        ``attention_mask`` is the *source* mask (cross-attention); the decoder's own inputs
        are causal, so right padding in a target never reaches a real position."""
        x = self.shared(decoder_input_ids)
        t = decoder_input_ids.shape[1]
        past_len = past[0][0].shape[2] if past else 0
        src_len = past[0][2].shape[2] if past else encoder_hidden.shape[1]
        bias = self.decoder.bias_module().position_bias(past_len, t, past_len + t)
        q_pos = torch.arange(t, device=x.device)[:, None] + past_len
        future = torch.arange(past_len + t, device=x.device)[None, :] > q_pos
        self_bias = bias.masked_fill(future, torch.finfo(x.dtype).min)
        cross_bias = torch.zeros(1, 1, t, src_len, dtype=x.dtype, device=x.device)
        if attention_mask is not None:
            cross_bias = cross_bias + padding_bias(attention_mask, x.dtype)
        presents: Seq2SeqCache = []
        for i, block in enumerate(self.decoder.block):
            x, present = block(x, self_bias, cross_bias, encoder_hidden, past[i] if past else None)
            presents.append(present)
        x = self.decoder.final_layer_norm(x)
        if self.config.tie_word_embeddings:  # T5 rescales before a tied head
            x = x * self.config.hidden_size**-0.5
        return self.lm_head(x), presents

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
    ) -> tuple[Tensor, Seq2SeqCache]:
        """Teacher forcing: every target position's logits in one pass."""
        return self.decode(
            decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask
        )

    @torch.no_grad()
    def generate_greedy(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 32
    ) -> list[list[int]]:
        """Greedy decoding with the cache; each row stops at its EOS (not included)."""
        cfg = self.config
        hidden = self.encode(input_ids, attention_mask)
        b = input_ids.shape[0]
        step = torch.full((b, 1), cfg.decoder_start_token_id, device=input_ids.device)
        past, out = None, [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits, past = self.decode(step, hidden, attention_mask, past)
            step = logits[:, -1].argmax(-1, keepdim=True)
            done |= step[:, 0] == cfg.eos_token_id
            for r in (~done).nonzero()[:, 0].tolist():
                out[r].append(int(step[r, 0]))
            if bool(done.all()):
                break
        return out


def shift_right(labels: Tensor, start_id: int, pad_id: int) -> Tensor:
    """Teacher forcing's decoder inputs: ``start`` then the labels, -100 read as padding."""
    shifted = torch.full_like(labels, pad_id)
    shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad_id)
    shifted[:, 0] = start_id
    return shifted
