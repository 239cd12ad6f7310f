"""Which heads / KV groups and MLP channels matter least: the scores structured pruning ranks.

Importance, lowest removed first:

* ``weight`` (default, no data): a head/KV group scores ``‖W_V‖·‖W_O‖`` over its rows
  of the value projection and its columns of the output projection (the OV circuit
  bounds what the head can add to the residual stream; query/key weights only decide
  where it looks). An MLP channel scores the product of the norms of its input rows
  and its output column: a channel with any of them zero contributes nothing.
* ``activation``: the mean over calibration tokens of the norm of what the head adds
  to the residual stream (its slice of the output projection's input times that
  slice of the projection), and for a channel ``mean |h_j| · ‖W_out[:, j]‖``.
  ``calibration_batches`` reads the few batches of real text this needs.

torch is imported inside the functions (``IMPORTANCE`` is read by the torch-free CLI).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgezoo.errors import ConfigError
from edgezoo.quantize.prune.blocks import attention_parts, block_layers, mlp_parts

if TYPE_CHECKING:
    from torch import Tensor, nn

    from edgezoo.zoo.config import ModelConfig

IMPORTANCE = ("weight", "activation")


@dataclass
class Importance:
    """Per layer: one score per attention unit and one per MLP channel (higher = keep)."""

    units: list[Tensor]
    channels: list[Tensor]


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
        value, out, n_units, _, _ = attention_parts(model, layer)
        units.append(_rows_norm(value, n_units) * _cols_norm(out, n_units))
        rows, cols = mlp_parts(model, layer)
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
        _, out, n_units, _, _ = attention_parts(model, layer)
        handles.append(out.register_forward_pre_hook(unit_hook(i, out, n_units)))
        _, cols = mlp_parts(model, layer)
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
    import torch

    from edgezoo.zoo import corpus, data
    from edgezoo.zoo.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    n = n_batches * batch_size
    if cfg.family == "lm":
        splits = data.token_cache(source or corpus.LM_CORPUS, tok)
        windows = data.LMWindows(splits.train, min(context, cfg.max_position_embeddings))
        idx = np.unique(np.linspace(0, windows.n_windows - 1, n).astype(np.int64))
        return [
            (torch.from_numpy(windows.batch(chunk)[0]),)
            for chunk in np.array_split(idx, n_batches)
            if len(chunk)
        ]
    rows = data.read_labelled(source or corpus.CLS_CORPUS)
    picked = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, n).astype(np.int64))]
    ids = [e.ids[: cfg.max_position_embeddings] for e in tok.encode_batch([t for t, _ in picked])]
    texts = data.LabelledSet(ids, np.zeros(len(ids), dtype=np.int64))
    return [
        tuple(map(torch.from_numpy, texts.batch(chunk)[:2]))
        for chunk in np.array_split(np.arange(len(ids)), n_batches)
        if len(chunk)
    ]
