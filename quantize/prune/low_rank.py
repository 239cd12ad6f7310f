"""Low-rank factorisation: what truncated SVD of the block Linears would save and cost.

``low_rank_factorize(model, rank_ratio)`` replaces each block Linear by two thinner ones
(truncated SVD) and measures the reconstruction error and the parameters saved. For
in-memory experiments only: a factorised layer has no place in the Llama/BERT
config.json, so the result cannot be saved as a Hugging Face model dir
(``edgezoo prune --rank-ratio`` only reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgezoo.errors import ConfigError
from edgezoo.quantize.prune.blocks import block_linears, count_parameters, format_count

if TYPE_CHECKING:
    from torch import nn


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
            f"model params {format_count(self.params_before)} -> "
            f"{format_count(self.params_after)} ({change:+.1%}); "
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
