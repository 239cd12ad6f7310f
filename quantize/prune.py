"""Pruning and low-rank factorisation of model dirs: really smaller matrices, or sparser ones.

Three tools, one idea each:

``structured_prune(model, heads=, mlp=)``
    Removes whole attention heads and whole MLP channels, so every matrix they touch
    shrinks and the result is an ordinary, smaller architecture: a model dir that
    transformers, ``edgezoo export``, quantize and the runtime open like any other.
    Both configs hold one head count and one ``intermediate_size`` for all layers, so
    every layer keeps the *same number* of heads / channels; *which* ones each layer keeps
    is decided by that layer's own importance scores.

    * Llama (grouped-query attention): the unit of attention pruning is a KV group, one
      key/value head together with the ``n_heads / n_kv`` query heads that read it, so
      ``num_attention_heads`` and ``num_key_value_heads`` shrink together. Each head keeps
      its width, so config.json records ``head_dim`` explicitly (transformers reads it;
      the zoo needs ``LlamaConfig.explicit_head_dim``, see ``quantize/head_dim.patch``).
      MLP: rows of ``gate_proj``/``up_proj`` and columns of ``down_proj``.
    * BERT: heads are removed per layer and recorded in transformers' own
      ``pruned_heads`` config key (original head numbers; needs
      ``BertConfig.pruned_heads`` from the same patch). MLP: rows of
      ``intermediate.dense``, columns of ``output.dense``.

    Importance, lowest removed first:

    * ``weight`` (default, no data): a head/KV group scores ``‖W_V‖·‖W_O‖`` over its rows
      of the value projection and its columns of the output projection (the OV circuit
      bounds what the head can add to the residual stream; query/key weights only decide
      where it looks). An MLP channel scores the product of the norms of its input rows
      and its output column: a channel with any of them zero contributes nothing.
    * ``activation``: the mean over calibration tokens of the norm of what the head adds
      to the residual stream (its slice of the output projection's input times that
      slice of the projection), and for a channel ``mean |h_j| · ‖W_out[:, j]‖``.

``magnitude_prune(model, sparsity)``
    Global unstructured L1 pruning of the Linear weights inside the transformer blocks
    (``torch.nn.utils.prune.global_unstructured``, then ``prune.remove`` so the zeros are
    plain weights). Embeddings, the (tied) LM head, the pooler and the classifier are
    left dense. Honest note: dense kernels (ONNX Runtime's MatMul/Gemm on CPU and CUDA,
    TensorRT) do exactly the same work on zeros, so an unstructured-sparse model is *not
    faster*; it only compresses better (zip, or as a starting point for sparse formats).
    Use structured pruning for speed.

``low_rank_factorize(model, rank_ratio)``
    Replaces each block Linear by two thinner ones (truncated SVD) and measures the
    reconstruction error and the parameters saved. For in-memory experiments only: a
    factorised layer has no place in the Llama/BERT config.json, so the result cannot be
    saved as a Hugging Face model dir.

``prune_dir`` ties them to model dirs (structured → optional recovery fine-tune through
``zoo.train`` → unstructured, so the fine-tune cannot refill the zeros), writes the new dir
atomically with ``prune.json`` saying what was removed, and ``edgezoo prune`` is its CLI.

torch is imported inside the functions: ``edgezoo --help`` builds this parser, and must
stay fast and work on runtime-only installs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgezoo.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from zoo.config import ModelConfig

IMPORTANCE = ("weight", "activation")
REPORT_FILE = "prune.json"


# ---------------------------------------------------------------- plans and reports ----


@dataclass
class LayerPlan:
    """What one layer keeps. Indices are positions in the layer *before* this pruning."""

    index: int
    units_total: int  # removable attention units: KV groups (Llama) or heads (BERT)
    units_kept: list[int]
    heads_per_unit: int  # query heads per unit: n_heads / n_kv (Llama), 1 (BERT)
    channels_total: int
    channels_kept: list[int]

    @property
    def heads_total(self) -> int:
        return self.units_total * self.heads_per_unit

    @property
    def heads_kept(self) -> int:
        return len(self.units_kept) * self.heads_per_unit


@dataclass
class PruneReport:
    source: str
    out: str | None
    family: str
    importance: str
    heads: float  # fractions asked for
    mlp: float
    sparsity_target: float
    params_before: int
    params_after: int
    layers: list[LayerPlan]
    sparsity: float = 0.0  # achieved, over the block Linear weights
    sparsity_before: float = 0.0
    finetune_steps: int = 0
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """The human summary ``edgezoo prune`` prints."""
        lines = [
            f"{self.source} -> {self.out}   (family {self.family}, importance {self.importance})"
        ]
        rows = [("params", _count(self.params_before), _count(self.params_after))]
        if self.layers:
            first = self.layers[0]
            kv = self.family == "lm"
            before = f"{first.heads_total}" + (f" ({first.units_total} kv)" if kv else "")
            after = f"{first.heads_kept}" + (f" ({len(first.units_kept)} kv)" if kv else "")
            rows.append(("heads / layer", before, after))
            rows.append(("mlp channels", str(first.channels_total), str(len(first.channels_kept))))
        rows.append(("sparsity", f"{self.sparsity_before:.1%}", f"{self.sparsity:.1%}"))
        for key in ("perplexity", "loss", "accuracy", "macro_f1"):
            if key in self.metrics_before or key in self.metrics_after:
                rows.append(
                    (key, _metric(self.metrics_before, key), _metric(self.metrics_after, key))
                )
        change = self.params_after / max(self.params_before, 1) - 1
        lines.append(f"{'':<16} {'before':>12} {'after':>12}")
        for name, b, a in rows:
            suffix = f"   ({change:+.1%})" if name == "params" else ""
            lines.append(f"{name:<16} {b:>12} {a:>12}{suffix}")
        if self.finetune_steps:
            lines.append(f"recovery fine-tune: {self.finetune_steps} steps")
        if self.layers:
            lines.append("")
            lines.append(f"{'layer':<6} {'heads kept':<26} {'mlp kept':>12}")
            for p in self.layers:
                units = ",".join(map(str, p.units_kept))
                label = "kv groups" if self.family == "lm" else "heads"
                heads = f"{p.heads_kept}/{p.heads_total} ({label} {units})"
                lines.append(
                    f"{p.index:<6} {heads:<26} {len(p.channels_kept):>5}/{p.channels_total:<6}"
                )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _metric(metrics: dict[str, float], key: str) -> str:
    return f"{metrics[key]:.4g}" if key in metrics else "-"


# ---------------------------------------------------------------- checks ----------------


def check_fraction(name: str, value: float) -> float:
    """A fraction to remove must lie in [0, 1): removing everything leaves no model."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--{name} {value!r} is not a number; give a fraction like 0.25."
        ) from None
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ConfigError(
            f"--{name} {value} is out of range: it is the fraction to remove and must be in "
            f"[0, 1), e.g. 0.25."
        )
    return value


def kept_count(total: int, fraction: float) -> int:
    """How many of ``total`` units stay when ``fraction`` is removed (nearest, ties keep more; ≥ 1)."""
    remove = math.ceil(fraction * total - 0.5 - 1e-9)
    return max(1, total - max(0, remove))


def supports_head_pruning(cfg: ModelConfig) -> bool:
    """Whether the zoo config can describe fewer heads (``quantize/head_dim.patch`` applied)."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    return "explicit_head_dim" in fields if cfg.family == "lm" else "pruned_heads" in fields


def _is_lm(model: nn.Module) -> bool:
    return model.config.family == "lm"


def block_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: ``model.model.layers`` (Llama) or ``bert.encoder.layer``."""
    return list(model.model.layers) if _is_lm(model) else list(model.bert.encoder.layer)


def block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear inside the blocks, with its parameter-path name."""
    from torch import nn

    prefix = "model.layers" if _is_lm(model) else "bert.encoder.layer"
    return [
        (f"{prefix}.{i}.{name}", m)
        for i, layer in enumerate(block_layers(model))
        for name, m in layer.named_modules()
        if isinstance(m, nn.Linear)
    ]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are one Parameter


# ---------------------------------------------------------------- unstructured -----------


def linear_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over the block Linear weights."""
    zeros = total = 0
    for _, m in block_linears(model):
        zeros += int((m.weight == 0).sum())
        total += m.weight.numel()
    return zeros / max(total, 1)


def magnitude_prune(model: nn.Module, sparsity: float) -> float:
    """Zero the smallest-|w| ``sparsity`` of all block Linear weights (one global threshold).

    Permanent (``prune.remove``): the zeros are plain weights, the state dict keeps its
    names. Returns the sparsity reached. Not faster on dense kernels, see the module doc.
    """
    from torch.nn.utils import prune

    check_fraction("sparsity", sparsity)
    if sparsity > 0:
        params = [(m, "weight") for _, m in block_linears(model)]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
        for m, name in params:
            prune.remove(m, name)
    return linear_sparsity(model)


# ---------------------------------------------------------------- importance -------------


@dataclass
class Importance:
    """Per layer: one score per attention unit and one per MLP channel (higher = keep)."""

    units: list[Tensor]
    channels: list[Tensor]


def _attention_parts(model: nn.Module, layer: nn.Module):
    """(value Linear, output Linear, units, unit width in value rows, unit width in o cols)."""
    cfg = model.config
    if _is_lm(model):
        attn = layer.self_attn
        rep = attn.n_heads // attn.n_kv
        return attn.v_proj, attn.o_proj, attn.n_kv, attn.head_dim, rep * attn.head_dim
    attn = layer.attention
    return attn.self.value, attn.output.dense, attn.self.n_heads, cfg.head_dim, cfg.head_dim


def _mlp_parts(model: nn.Module, layer: nn.Module) -> tuple[list[nn.Linear], nn.Linear]:
    """(Linears whose rows are the channels, Linear whose columns are the channels)."""
    if _is_lm(model):
        return [layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj
    return [layer.intermediate.dense], layer.output.dense


def _rows_norm(linear: nn.Linear, groups: int) -> Tensor:
    """Frobenius norm of each of ``groups`` equal row blocks, bias included."""
    import torch

    w = linear.weight.detach()
    if linear.bias is not None:
        w = torch.cat([w, linear.bias.detach()[:, None]], dim=1)
    return w.reshape(groups, -1).norm(dim=1)


def _cols_norm(linear: nn.Linear, groups: int) -> Tensor:
    w = linear.weight.detach()
    return w.reshape(w.shape[0], groups, -1).transpose(0, 1).reshape(groups, -1).norm(dim=1)


def weight_importance(model: nn.Module) -> Importance:
    """Scores from the weights alone (no data): see the module docstring."""
    units, channels = [], []
    for layer in block_layers(model):
        value, out, n_units, _, _ = _attention_parts(model, layer)
        units.append(_rows_norm(value, n_units) * _cols_norm(out, n_units))
        rows, cols = _mlp_parts(model, layer)
        n = cols.weight.shape[1]
        score = _cols_norm(cols, n)
        for r in rows:
            score = score * _rows_norm(r, n)
        channels.append(score)
    return Importance(units, channels)


def activation_importance(model: nn.Module, batches: Iterable[Sequence[Tensor]]) -> Importance:
    """Scores from activations on calibration ``batches`` (each: positional model inputs).

    A unit scores the mean norm of what it adds to the residual stream; a channel
    ``mean |h_j| · ‖W_out[:, j]‖``. Padded tokens (mask 0) are left out.
    """
    import torch

    layers = block_layers(model)
    sums_u = [None] * len(layers)
    sums_c = [None] * len(layers)
    weight = {"mask": None}
    tokens = [0.0]

    def token_weights(x: Tensor) -> Tensor:
        mask = weight["mask"]
        w = torch.ones(x.shape[:-1]) if mask is None else mask.to(x.dtype)
        return w.reshape(-1)

    def unit_hook(i: int, out: nn.Linear, n_units: int):
        def hook(_module, args):
            y = args[0].detach()
            w = token_weights(y)
            y = y.reshape(-1, n_units, y.shape[-1] // n_units)  # [tokens, units, width]
            o = out.weight.detach().reshape(out.weight.shape[0], n_units, -1)  # [d, units, width]
            contrib = torch.einsum("tuw,duw->tud", y, o).norm(dim=-1)  # [tokens, units]
            s = (contrib * w[:, None]).sum(0)
            sums_u[i] = s if sums_u[i] is None else sums_u[i] + s

        return hook

    def channel_hook(i: int, cols: nn.Linear):
        def hook(_module, args):
            h = args[0].detach()
            w = token_weights(h)
            s = (h.reshape(-1, h.shape[-1]).abs() * w[:, None]).sum(0)
            s = s * cols.weight.detach().norm(dim=0)
            sums_c[i] = s if sums_c[i] is None else sums_c[i] + s

        return hook

    handles = []
    for i, layer in enumerate(layers):
        _, out, n_units, _, _ = _attention_parts(model, layer)
        handles.append(out.register_forward_pre_hook(unit_hook(i, out, n_units)))
        _, cols = _mlp_parts(model, layer)
        handles.append(cols.register_forward_pre_hook(channel_hook(i, cols)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                batch = tuple(batch) if isinstance(batch, list | tuple) else (batch,)
                weight["mask"] = batch[1] if len(batch) > 1 else None
                tokens[0] += float(token_weights(batch[0][..., None]).sum())
                model(*batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if sums_u[0] is None:
        raise ConfigError("activation importance needs at least one calibration batch.")
    return Importance([s / tokens[0] for s in sums_u], [s / tokens[0] for s in sums_c])


def calibration_batches(
    model_dir: str | Path,
    cfg: ModelConfig,
    source: str | None = None,
    n_batches: int = 8,
    batch_size: int = 4,
    context: int = 128,
) -> list[tuple[Tensor, ...]]:
    """A few batches of real text for ``activation_importance`` (evenly spread over it)."""
    import numpy as np

    from zoo import corpus, data
    from zoo.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    n = n_batches * batch_size
    if cfg.family == "lm":
        splits = data.token_cache(source or corpus.LM_CORPUS, tok)
        windows = data.LMWindows(splits.train, min(context, cfg.max_position_embeddings))
        idx = np.unique(np.linspace(0, windows.n_windows - 1, n).astype(np.int64))
        return [
            (windows.batch(chunk)[0],) for chunk in np.array_split(idx, n_batches) if len(chunk)
        ]
    rows = data.read_labelled(source or corpus.CLS_CORPUS)
    picked = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, n).astype(np.int64))]
    ids = [e.ids[: cfg.max_position_embeddings] for e in tok.encode_batch([t for t, _ in picked])]
    texts = data.LabelledSet(ids, np.zeros(len(ids), dtype=np.int64))
    return [
        texts.batch(chunk)[:2]
        for chunk in np.array_split(np.arange(len(ids)), n_batches)
        if len(chunk)
    ]


# ---------------------------------------------------------------- structured -------------


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
    from zoo.config import replace
    from zoo.modeldir import build_model

    check_fraction("heads", heads)
    check_fraction("mlp", mlp)
    cfg = model.config
    if heads > 0 and not supports_head_pruning(cfg):
        raise ConfigError(
            "head pruning needs the zoo configs to describe fewer heads (explicit head_dim "
            "for Llama, pruned_heads for BERT): apply quantize/head_dim.patch, or prune "
            "only MLP channels (--heads 0)."
        )
    importance = importance or weight_importance(model)
    lm = _is_lm(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = block_layers(model)
    n_units = _attention_parts(model, layers[0])[2] if lm else None
    keep_units = kept_count(n_units, heads) if lm else None
    n_channels = cfg.intermediate_size
    keep_channels = kept_count(n_channels, mlp)
    plans, pruned_heads = [], {}
    for i, layer in enumerate(layers):
        _, _, units, v_width, o_width = _attention_parts(model, layer)
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
        if not lm and supports_head_pruning(cfg):
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
    elif not lm and supports_head_pruning(cfg) and pruned_heads != cfg.pruned_heads:
        changes["pruned_heads"] = pruned_heads
    if changes["intermediate_size"] != n_channels or len(changes) > 1:
        changes["preset"] = None  # no longer the size its preset names
    pruned = build_model(replace(cfg, **changes))
    pruned.load_state_dict(state)
    return pruned.eval(), plans


# ---------------------------------------------------------------- low rank ---------------


@dataclass
class LowRankLayer:
    name: str
    shape: tuple[int, int]  # (out, in)
    rank: int
    rel_error: float  # ‖W − BA‖_F / ‖W‖_F
    params_before: int
    params_after: int


@dataclass
class LowRankReport:
    rank_ratio: float
    layers: list[LowRankLayer]
    skipped: list[str]  # layers where the factorisation would not save parameters
    params_before: int  # whole model
    params_after: int

    def table(self) -> str:
        lines = [f"{'layer':<40} {'shape':>11} {'rank':>5} {'rel err':>8} {'params':>15}"]
        for r in self.layers:
            lines.append(
                f"{r.name:<40} {r.shape[0]:>5}x{r.shape[1]:<5} {r.rank:>5} {r.rel_error:>8.3f} "
                f"{r.params_before:>7}->{r.params_after:<7}"
            )
        change = self.params_after / max(self.params_before, 1) - 1
        lines.append(
            f"model params {_count(self.params_before)} -> {_count(self.params_after)} ({change:+.1%}); "
            f"{len(self.skipped)} layers left dense (rank too high to save anything)"
        )
        lines.append(
            "in memory only: a factorised layer cannot be saved as a Hugging Face model dir"
        )
        return "\n".join(lines)


def low_rank_factorize(model: nn.Module, rank_ratio: float) -> LowRankReport:
    """Replace block Linears by ``Sequential(Linear(in, r), Linear(r, out))`` in place.

    ``r = round(rank_ratio · min(out, in))``, from the truncated SVD ``W ≈ (U√S)(√S Vᵀ)``;
    layers where ``r·(in + out) ≥ in·out`` stay dense (no saving). The model still runs in
    PyTorch (for perplexity / accuracy experiments) but its state dict has new names and
    shapes that neither config.json nor transformers can describe: not saveable as a
    model dir. Use structured pruning for an artifact.
    """
    import torch
    from torch import nn

    if not 0.0 < float(rank_ratio) <= 1.0:
        raise ConfigError(f"--rank-ratio {rank_ratio} must be in (0, 1], e.g. 0.5.")
    before = count_parameters(model)
    layers, skipped = [], []
    for name, linear in block_linears(model):
        out_f, in_f = linear.weight.shape
        rank = max(1, round(rank_ratio * min(out_f, in_f)))
        dense = linear.weight.numel() + (out_f if linear.bias is not None else 0)
        if rank * (in_f + out_f) >= in_f * out_f:
            skipped.append(name)
            continue
        with torch.no_grad():
            w = linear.weight.detach().float()
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            root = s[:rank].sqrt()
            first = nn.Linear(in_f, rank, bias=False)
            second = nn.Linear(rank, out_f, bias=linear.bias is not None)
            first.weight.copy_(vh[:rank] * root[:, None])
            second.weight.copy_(u[:, :rank] * root[None, :])
            if linear.bias is not None:
                second.bias.copy_(linear.bias)
            error = float(s[rank:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt().clamp(min=1e-30))
        factored = nn.Sequential(first, second).to(linear.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, factored)
        after = sum(p.numel() for p in factored.parameters())
        layers.append(LowRankLayer(name, (out_f, in_f), rank, error, dense, after))
    return LowRankReport(float(rank_ratio), layers, skipped, before, count_parameters(model))


# ---------------------------------------------------------------- model dirs -------------


def prune_dir(
    model_dir: str | Path,
    out: str | Path,
    heads: float = 0.0,
    mlp: float = 0.0,
    sparsity: float = 0.0,
    importance: str = "weight",
    calib_data: str | None = None,
    calib_batches: int = 8,
    finetune_steps: int = 0,
    data: str | None = None,
    finetune_lr: float = 1e-3,
    finetune_batch_size: int = 16,
    evaluate: bool = False,
    force: bool = False,
    progress: bool = False,
) -> PruneReport:
    """Prune ``model_dir`` into a new model dir ``out`` and report what changed.

    Structured pruning first, then the optional recovery fine-tune (``zoo.train`` with
    ``init_from`` the pruned weights: the pruned architecture is kept), then unstructured
    sparsity (after the fine-tune, which would otherwise refill the zeros). ``out`` is
    built beside its final place and renamed in only when complete. With ``evaluate``,
    perplexity (LM) or accuracy (classifier) on ``data`` (default: the built-in corpus)
    before and after.
    """
    from edgezoo import atomic
    from zoo.modeldir import load_model, save_model_dir
    from zoo.tokenizer import copy_tokenizer

    heads, mlp = check_fraction("heads", heads), check_fraction("mlp", mlp)
    sparsity = check_fraction("sparsity", sparsity)
    if importance not in IMPORTANCE:
        raise ConfigError(f"--importance {importance!r}: choose one of {', '.join(IMPORTANCE)}.")
    if finetune_steps < 0:
        raise ConfigError(f"--finetune-steps {finetune_steps} must be 0 (none) or more.")
    src, out = Path(model_dir), Path(out)
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the model being pruned; write to a new dir.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(
            f"{out} already exists and is not empty; pick another --out or pass --force."
        )
    model = load_model(src)
    cfg = model.config
    act = None
    if importance == "activation" and (heads or mlp):
        act = activation_importance(
            model, calibration_batches(src, cfg, calib_data or data, calib_batches)
        )
    pruned, plans = structured_prune(model, heads, mlp, act)
    report = PruneReport(
        source=str(src),
        out=str(out),
        family=cfg.family,
        importance=importance,
        heads=heads,
        mlp=mlp,
        sparsity_target=sparsity,
        params_before=count_parameters(model),
        params_after=count_parameters(pruned),
        layers=plans,
        finetune_steps=finetune_steps,
        sparsity_before=linear_sparsity(model),
    )
    asked = [p for p in plans if heads and p.units_total > 1]
    if asked and len(asked[0].units_kept) == asked[0].units_total:
        unit = (
            f"one KV group ({asked[0].heads_per_unit} query heads) of {asked[0].units_total}"
            if cfg.family == "lm"
            else f"one head of {asked[0].units_total}"
        )
        report.notes.append(f"--heads {heads} removed nothing: the smallest step is {unit}.")
    if evaluate:
        report.metrics_before = _evaluate(src, data)
    with atomic.atomic_dir(out) as tmp:
        if finetune_steps:
            _finetune(
                pruned, src, tmp, finetune_steps, data, finetune_lr, finetune_batch_size, progress
            )
            pruned = load_model(tmp)
        else:
            save_model_dir(pruned, tmp)
            copy_tokenizer(src, tmp)
        if sparsity:
            magnitude_prune(pruned, sparsity)
            save_model_dir(pruned, tmp)
        report.sparsity = linear_sparsity(pruned)
        if evaluate:
            report.metrics_after = _evaluate(tmp, data)
        atomic.write_json(tmp / REPORT_FILE, report.to_dict())
    return report


def _evaluate(model_dir: Path, data: str | None) -> dict[str, float]:
    from zoo.evaluate import evaluate_dir

    return evaluate_dir(model_dir, data, "val")


def _finetune(
    model: nn.Module,
    src: Path,
    out: Path,
    steps: int,
    data: str | None,
    lr: float,
    batch_size: int,
    progress: bool,
) -> None:
    """Recovery fine-tune of the pruned ``model`` into ``out`` through ``zoo.train``."""
    from zoo.checkpoint import checkpoint_dir
    from zoo.modeldir import save_model_dir
    from zoo.presets import preset_names
    from zoo.tokenizer import copy_tokenizer
    from zoo.train import RUN_FILE, train
    from zoo.train_config import TrainConfig

    cfg = model.config
    context = None
    run_file = src / RUN_FILE
    if run_file.is_file():  # the source run's context, when it was trained here
        context = json.loads(run_file.read_text()).get("context")
    if cfg.family == "lm":
        context = min(context or cfg.max_position_embeddings, cfg.max_position_embeddings)
    with tempfile.TemporaryDirectory(prefix=".prune-stage-", dir=out.parent) as stage:
        save_model_dir(model, stage)
        copy_tokenizer(src, stage)
        train(
            TrainConfig(
                family=cfg.family,
                size=cfg.preset if cfg.preset in preset_names(cfg.family) else "nano",
                data=data,
                out=str(out),
                steps=steps,
                init_from=stage,
                context=context,
                lr=lr,
                batch_size=batch_size,
                warmup_steps=max(1, min(20, steps // 10)),
                eval_every=steps,
                checkpoint_every=steps,
                keep_checkpoints=1,
                progress=progress,
            )
        )
    # The fine-tune's checkpoints and run.json point at temporary paths and cannot be
    # resumed; its settings are in prune.json and its loss curve in training.jsonl.
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
    (out / RUN_FILE).unlink(missing_ok=True)


# ---------------------------------------------------------------- CLI -------------------


def add_prune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``edgezoo prune`` to the CLI's subparsers."""
    s = subparsers.add_parser(
        "prune",
        help="remove attention heads / MLP channels (smaller matrices) or sparsify weights, into a new model dir",
        description=(
            "Structured pruning really shrinks the matrices (faster and smaller everywhere); "
            "--sparsity zeroes weights, which only compresses: dense ONNX Runtime / TensorRT "
            "kernels do not get faster. The output is an ordinary model dir: train, export "
            "and quantize it like any other."
        ),
    )
    s.add_argument("model_dir", help="zoo model dir to prune (it is not modified)")
    s.add_argument("--out", help="model dir to write (default: MODEL_DIR-pruned)")
    s.add_argument(
        "--heads",
        type=float,
        default=0.0,
        help="fraction of attention heads to remove per layer (Llama: whole KV groups)",
    )
    s.add_argument(
        "--mlp", type=float, default=0.0, help="fraction of MLP channels to remove per layer"
    )
    s.add_argument(
        "--sparsity",
        type=float,
        default=0.0,
        help="global unstructured sparsity of the block Linear weights (compression only)",
    )
    s.add_argument(
        "--importance",
        choices=IMPORTANCE,
        default="weight",
        help="rank heads/channels by weight norms or by activations on calibration text",
    )
    s.add_argument("--calib-data", help="text for --importance activation (default: --data)")
    s.add_argument("--calib-batches", type=int, default=8, help="calibration batches of 4")
    s.add_argument(
        "--finetune-steps", type=int, default=0, help="recovery fine-tune steps after pruning"
    )
    s.add_argument("--finetune-lr", type=float, default=1e-3)
    s.add_argument("--batch-size", type=int, default=16, help="fine-tune batch (sequences)")
    s.add_argument(
        "--data",
        help="fine-tune / evaluation data (default: the built-in corpus for the family)",
    )
    s.add_argument(
        "--no-eval",
        dest="evaluate",
        action="store_false",
        help="skip perplexity / accuracy before and after (slow on the built-in corpus)",
    )
    s.add_argument("--force", action="store_true", help="replace a non-empty --out")
    s.add_argument(
        "--rank-ratio",
        type=float,
        help="instead: report what truncated-SVD factorisation at this rank ratio would save "
        "and cost (in memory only; writes nothing)",
    )
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--no-progress", dest="progress", action="store_false")
    s.set_defaults(fn=cmd_prune)
    return s


def cmd_prune(args: argparse.Namespace) -> int:
    if args.rank_ratio is not None:
        from zoo.modeldir import load_model

        report = low_rank_factorize(load_model(args.model_dir), args.rank_ratio)
        print(json.dumps(dataclasses.asdict(report), indent=2) if args.json else report.table())
        return 0
    src = Path(args.model_dir).resolve()
    out = args.out or str(src.with_name(src.name + "-pruned"))
    report = prune_dir(
        args.model_dir,
        out,
        heads=args.heads,
        mlp=args.mlp,
        sparsity=args.sparsity,
        importance=args.importance,
        calib_data=args.calib_data,
        calib_batches=args.calib_batches,
        finetune_steps=args.finetune_steps,
        data=args.data,
        finetune_lr=args.finetune_lr,
        finetune_batch_size=args.batch_size,
        evaluate=args.evaluate,
        force=args.force,
        progress=args.progress,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0
