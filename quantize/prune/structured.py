"""Structured pruning: removing whole attention heads / KV groups and MLP channels.

Every matrix they touch shrinks and the result is an ordinary, smaller architecture: a
model dir that transformers, ``edgezoo export``, quantize and the runtime open like any
other. Both configs hold one head count and one ``intermediate_size`` for all layers, so
every layer keeps the *same number* of heads / channels; *which* ones each layer keeps is
decided by that layer's own importance scores (``importance.py``).

* Llama (grouped-query attention): the unit of attention pruning is a KV group, one
  key/value head together with the ``n_heads / n_kv`` query heads that read it, so
  ``num_attention_heads`` and ``num_key_value_heads`` shrink together. Each head keeps its
  width, so config.json records ``head_dim`` explicitly (transformers reads it; the zoo
  config holds it as ``LlamaConfig.explicit_head_dim``). MLP: rows of
  ``gate_proj``/``up_proj`` and columns of ``down_proj``.
* BERT: heads are removed per layer and recorded in transformers' own ``pruned_heads``
  config key (original head numbers; ``BertConfig.pruned_heads``). MLP: rows of
  ``intermediate.dense``, columns of ``output.dense``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgezoo.quantize.prune.blocks import attention_parts, block_layers, is_lm
from edgezoo.quantize.prune.importance import Importance, weight_importance
from edgezoo.quantize.prune.plan import LayerPlan, check_fraction, kept_count

if TYPE_CHECKING:
    from torch import Tensor, nn


def _top(scores: Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, in their original order."""
    import torch

    if keep >= len(scores):
        return list(range(len(scores)))
    order = torch.argsort(scores.float(), descending=True, stable=True)
    return sorted(order[:keep].tolist())


def _span(units: Sequence[int], width: int) -> Tensor:
    import torch

    return torch.cat([torch.arange(u * width, (u + 1) * width) for u in units])


def _slice_llama_layer(state, p: str, units, channels, q_width: int, kv_width: int) -> None:
    """Keep KV groups ``units`` (q/o: ``q_width`` per group, k/v: ``kv_width``) and ``channels``."""
    q_rows, kv_rows, ch = _span(units, q_width), _span(units, kv_width), _span(channels, 1)
    for name, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
        key = f"{p}.self_attn.{name}_proj.weight"
        state[key] = state[key][rows]
    state[f"{p}.self_attn.o_proj.weight"] = state[f"{p}.self_attn.o_proj.weight"][:, q_rows]
    for name in ("gate_proj", "up_proj"):
        state[f"{p}.mlp.{name}.weight"] = state[f"{p}.mlp.{name}.weight"][ch]
    state[f"{p}.mlp.down_proj.weight"] = state[f"{p}.mlp.down_proj.weight"][:, ch]


def _slice_bert_layer(state, p: str, heads, channels, head_dim: int) -> None:
    """Keep ``heads`` (q/k/v rows and biases, attention-output columns) and ``channels``."""
    rows, ch = _span(heads, head_dim), _span(channels, 1)
    for name in ("query", "key", "value"):
        for t in ("weight", "bias"):
            state[f"{p}.attention.self.{name}.{t}"] = state[f"{p}.attention.self.{name}.{t}"][rows]
    key = f"{p}.attention.output.dense.weight"
    state[key] = state[key][:, rows]
    for t in ("weight", "bias"):
        state[f"{p}.intermediate.dense.{t}"] = state[f"{p}.intermediate.dense.{t}"][ch]
    state[f"{p}.output.dense.weight"] = state[f"{p}.output.dense.weight"][:, ch]


def structured_prune(
    model: nn.Module,
    heads: float = 0.0,
    mlp: float = 0.0,
    importance: Importance | None = None,
) -> tuple[nn.Module, list[LayerPlan]]:
    """A new, smaller model without the least important heads and MLP channels.

    ``heads``/``mlp`` are the fractions to remove from every layer (see ``kept_count``
    for rounding). The input model is not modified. Returns the model (eval mode, built
    from its new config, so exactly what ``load_model`` will build from the saved dir)
    and one ``LayerPlan`` per layer.
    """
    from edgezoo.zoo.config import replace
    from edgezoo.zoo.modeldir import build_model

    check_fraction("heads", heads)
    check_fraction("mlp", mlp)
    cfg = model.config
    importance = importance or weight_importance(model)
    lm = is_lm(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = block_layers(model)
    n_units = attention_parts(model, layers[0])[2] if lm else None
    keep_units = kept_count(n_units, heads) if lm else None
    n_channels = cfg.intermediate_size
    keep_channels = kept_count(n_channels, mlp)
    plans, pruned_heads = [], {}
    for i, layer in enumerate(layers):
        _, _, units, v_width, o_width = attention_parts(model, layer)
        keep = keep_units if lm else kept_count(units, heads)
        kept_u = _top(importance.units[i], keep)
        kept_c = _top(importance.channels[i], keep_channels)
        plans.append(
            LayerPlan(i, units, kept_u, o_width // v_width if lm else 1, n_channels, kept_c)
        )
        if lm:
            _slice_llama_layer(state, f"model.layers.{i}", kept_u, kept_c, o_width, v_width)
        else:
            _slice_bert_layer(state, f"bert.encoder.layer.{i}", kept_u, kept_c, v_width)
            already = set(cfg.pruned_heads.get(i, ()))
            original = [h for h in range(cfg.num_attention_heads) if h not in already]
            removed = already | {original[u] for u in range(units) if u not in kept_u}
            if removed:
                pruned_heads[i] = sorted(removed)
    changes: dict[str, Any] = {"intermediate_size": keep_channels}
    if lm and keep_units != n_units:
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        changes.update(
            num_attention_heads=keep_units * rep,
            num_key_value_heads=keep_units,
            explicit_head_dim=cfg.head_dim,
        )
    elif not lm and pruned_heads != cfg.pruned_heads:
        changes["pruned_heads"] = pruned_heads
    if changes["intermediate_size"] != n_channels or len(changes) > 1:
        changes["preset"] = None  # no longer the size its preset names
    pruned = build_model(replace(cfg, **changes))
    pruned.load_state_dict(state)
    return pruned.eval(), plans
