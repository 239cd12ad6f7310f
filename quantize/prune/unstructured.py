"""Global unstructured sparsity: zeroing the smallest block Linear weights.

``magnitude_prune(model, sparsity)`` is global L1 pruning of the Linear weights inside
the transformer blocks (``torch.nn.utils.prune.global_unstructured``, then
``prune.remove`` so the zeros are plain weights). Embeddings, the (tied) LM head, the
pooler and the classifier are left dense. Honest note: dense kernels (ONNX Runtime's
MatMul/Gemm on CPU and CUDA, TensorRT) do exactly the same work on zeros, so an
unstructured-sparse model is *not faster*; it only compresses better (zip, or as a
starting point for sparse formats). Use structured pruning for speed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgezoo.quantize.prune.blocks import block_linears
from edgezoo.quantize.prune.plan import check_fraction

if TYPE_CHECKING:
    from torch import nn


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
