"""Where the prunable parts live in the zoo's Llama and BERT models, and how many parameters.

The one place that knows the two module layouts (``model.model.layers`` with
``self_attn``/``mlp`` vs ``bert.encoder.layer`` with ``attention``/``intermediate``), so
importance scoring, structured and unstructured pruning and low-rank factorisation all
walk the same blocks. torch is imported inside functions: the CLI imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def is_lm(model: nn.Module) -> bool:
    return model.config.family == "lm"


def block_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: ``model.model.layers`` (Llama) or ``bert.encoder.layer``."""
    return list(model.model.layers) if is_lm(model) else list(model.bert.encoder.layer)


def block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear inside the blocks, with its parameter-path name."""
    from torch import nn

    prefix = "model.layers" if is_lm(model) else "bert.encoder.layer"
    return [
        (f"{prefix}.{i}.{name}", m)
        for i, layer in enumerate(block_layers(model))
        for name, m in layer.named_modules()
        if isinstance(m, nn.Linear)
    ]


def attention_parts(model: nn.Module, layer: nn.Module):
    """(value Linear, output Linear, units, unit width in value rows, unit width in o cols)."""
    cfg = model.config
    if is_lm(model):
        attn = layer.self_attn
        rep = attn.n_heads // attn.n_kv
        return attn.v_proj, attn.o_proj, attn.n_kv, attn.head_dim, rep * attn.head_dim
    attn = layer.attention
    return attn.self.value, attn.output.dense, attn.self.n_heads, cfg.head_dim, cfg.head_dim


def mlp_parts(model: nn.Module, layer: nn.Module) -> tuple[list[nn.Linear], nn.Linear]:
    """(Linears whose rows are the channels, Linear whose columns are the channels)."""
    if is_lm(model):
        return [layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj
    return [layer.intermediate.dense], layer.output.dense


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are one Parameter


def format_count(n: int) -> str:
    """A parameter count as the report tables print it: ``1.23M`` or ``45.6K``."""
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"
