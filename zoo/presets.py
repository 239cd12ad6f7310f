"""Size presets: a ladder from ~1M to ~1B parameters for each family.

Widths and depths follow well-known small models (llama2.c's 15M/42M/110M, TinyLlama's
1.1B, the BERT-tiny…large ladder) so numbers can be compared. The default vocabulary
grows with the model: a 1M model cannot afford a 32k embedding table.

Below nano, the LM family has four sub-million rungs (zepto … pico, 7k–200k parameters
outside the embedding, each ~3× the last): small enough that a scaling sweep on two CPU
cores can train six sizes spanning 300× to near convergence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgezoo.errors import ConfigError
from edgezoo.zoo.config import BertConfig, LlamaConfig, ModelConfig, T5Config

# name: (hidden, layers, heads, kv_heads, intermediate, context, vocab)
LM_PRESETS: dict[str, tuple[int, ...]] = {
    "zepto": (16, 2, 1, 1, 48, 256, 2048),
    "atto": (32, 2, 2, 1, 96, 256, 2048),
    "femto": (48, 3, 3, 1, 128, 256, 2048),
    "pico": (64, 4, 4, 2, 192, 256, 2048),
    "nano": (128, 4, 4, 2, 256, 256, 4096),
    "micro": (192, 6, 6, 2, 512, 512, 8192),
    "mini": (288, 6, 6, 2, 768, 512, 8192),
    "small": (512, 8, 8, 4, 1376, 1024, 16384),
    "medium": (768, 12, 12, 4, 2048, 1024, 32000),
    "base": (1024, 20, 16, 4, 2816, 2048, 32000),
    "large": (1536, 24, 16, 4, 4096, 2048, 32000),
    "xl": (2048, 22, 32, 4, 5632, 2048, 32000),
}

# name: (hidden, layers, heads, intermediate, context, vocab)
CLS_PRESETS: dict[str, tuple[int, ...]] = {
    "nano": (96, 2, 2, 384, 256, 4096),
    "micro": (128, 2, 2, 512, 512, 8192),
    "mini": (256, 4, 4, 1024, 512, 8192),
    "small": (512, 4, 8, 2048, 512, 16384),
    "medium": (512, 8, 8, 2048, 512, 32000),
    "base": (768, 12, 12, 3072, 512, 32000),
    "large": (1024, 24, 16, 4096, 512, 32000),
    "xl": (1280, 36, 20, 5120, 512, 32000),
}

# name: (d_model, layers per stack, heads, d_ff, context, vocab); gated-GELU MLP as
# T5 v1.1, whose small/base/large shapes the upper rungs take.
S2S_PRESETS: dict[str, tuple[int, ...]] = {
    "nano": (128, 2, 4, 256, 256, 4096),
    "micro": (192, 3, 6, 512, 512, 8192),
    "mini": (256, 4, 4, 768, 512, 8192),
    "small": (512, 8, 8, 1024, 512, 16384),
    "medium": (768, 8, 12, 2048, 512, 32000),
    "base": (768, 12, 12, 2048, 512, 32000),
    "large": (1024, 24, 16, 2816, 512, 32000),
}

FAMILIES = ("lm", "cls", "s2s")
# Small LMs share the embedding with the LM head: untied, it would be most of the model.
_TIED_LM = ("zepto", "atto", "femto", "pico", "nano", "micro", "mini", "small")


def preset_names(family: str) -> list[str]:
    return list(_table(family))


def make_config(
    family: str, size: str, vocab_size: int | None = None, num_labels: int = 2, **overrides
) -> ModelConfig:
    """The config for ``family``/``size``; ``vocab_size`` overrides the preset's default."""
    table = _table(family)
    if size not in table:
        raise ConfigError(
            f"unknown size {size!r} for family {family!r}; valid sizes: {', '.join(table)}"
        )
    if family == "lm":
        d, n_layers, heads, kv, ff, ctx, vocab = table[size]
        cfg = LlamaConfig(
            vocab_size=vocab_size or vocab,
            hidden_size=d,
            intermediate_size=ff,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            max_position_embeddings=ctx,
            tie_word_embeddings=size in _TIED_LM,
            preset=size,
        )
    elif family == "s2s":
        d, n_layers, heads, ff, ctx, vocab = table[size]
        cfg = T5Config(
            vocab_size=vocab_size or vocab,
            hidden_size=d,
            intermediate_size=ff,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            max_position_embeddings=ctx,
            tie_word_embeddings=size in ("nano", "micro", "mini", "small"),
            preset=size,
        )
    else:
        d, n_layers, heads, ff, ctx, vocab = table[size]
        cfg = BertConfig(
            vocab_size=vocab_size or vocab,
            hidden_size=d,
            intermediate_size=ff,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            max_position_embeddings=ctx,
            num_labels=num_labels,
            preset=size,
        )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.__post_init__()
    return cfg


def resized(cfg: ModelConfig, layers: int | None, width: int | None) -> ModelConfig:
    """``cfg`` with another depth and/or width: the heads stay, the MLP keeps its width ratio.

    How ``edgezoo train --layers/--width`` (and ``edgezoo tune``'s depth search) trade
    depth for width around a preset. The result is no longer that preset."""
    if layers is None and width is None:
        return cfg
    heads = cfg.num_attention_heads
    step = 2 * heads if isinstance(cfg, LlamaConfig) else heads  # rotary needs an even head_dim
    width = width or cfg.hidden_size
    if width % step:
        raise ConfigError(
            f"--width {width} does not split into {heads} heads"
            f"{' of even size' if step > heads else ''}: use a multiple of {step}."
        )
    ratio = cfg.intermediate_size / cfg.hidden_size
    out = replace(
        cfg,
        hidden_size=width,
        num_hidden_layers=layers or cfg.num_hidden_layers,
        intermediate_size=max(8, round(width * ratio / 8) * 8),
        preset=None,
    )  # replace() runs __post_init__, which checks the new shape
    return out


def non_embedding_params(cfg: ModelConfig) -> int:
    """Parameters outside the token embedding and LM head: what depth and width trade."""
    return count_params(replace(cfg, vocab_size=0))


def _table(family: str) -> dict[str, tuple[int, ...]]:
    if family == "lm":
        return LM_PRESETS
    if family == "cls":
        return CLS_PRESETS
    if family == "s2s":
        return S2S_PRESETS
    raise ConfigError(f"unknown family {family!r}; valid families: {', '.join(FAMILIES)}")


@dataclass
class PresetSummary:
    family: str
    name: str
    params: int
    layers: int
    width: int
    heads: int
    kv_heads: int
    context: int
    vocab: int

    def weight_bytes(self, bits: int) -> int:
        return self.params * bits // 8


def count_params(cfg: ModelConfig) -> int:
    """Parameters without building the model (counts tied weights once)."""
    d, n, ff, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    if isinstance(cfg, LlamaConfig):
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        per_layer = 2 * d * q + 2 * d * kv + 3 * d * ff + 2 * d
        head = 0 if cfg.tie_word_embeddings else v * d
        return v * d + n * per_layer + d + head
    if isinstance(cfg, T5Config):
        return _t5_params(cfg)
    attn = sum(cfg.heads_in_layer(i) * cfg.head_dim for i in range(n))  # narrower when pruned
    per_layer = 2 * d * ff + ff + d + d + 4 * d  # MLP, attention output bias, 2 LayerNorms
    total_layers = n * per_layer + 4 * d * attn + 3 * attn
    emb = (v + cfg.max_position_embeddings + cfg.type_vocab_size) * d + 2 * d
    return emb + total_layers + d * d + d + d * cfg.num_labels + cfg.num_labels


def _t5_params(cfg: T5Config) -> int:
    d, v, inner = cfg.hidden_size, cfg.vocab_size, cfg.num_attention_heads * cfg.head_dim
    mlp = (3 if cfg.feed_forward_proj.startswith("gated") else 2) * d * cfg.intermediate_size
    attn = 4 * d * inner
    bias = cfg.relative_attention_num_buckets * cfg.num_attention_heads  # one table per stack
    encoder = cfg.num_hidden_layers * (attn + mlp + 2 * d) + bias + d
    decoder = cfg.decoder_layers * (2 * attn + mlp + 3 * d) + bias + d
    return v * d + encoder + decoder + (0 if cfg.tie_word_embeddings else v * d)


def summaries() -> list[PresetSummary]:
    out = []
    for family in FAMILIES:
        for name in preset_names(family):
            cfg = make_config(family, name)
            out.append(
                PresetSummary(
                    family,
                    name,
                    count_params(cfg),
                    cfg.num_hidden_layers,
                    cfg.hidden_size,
                    cfg.num_attention_heads,
                    getattr(cfg, "num_key_value_heads", cfg.num_attention_heads),
                    cfg.max_position_embeddings,
                    cfg.vocab_size,
                )
            )
    return out
