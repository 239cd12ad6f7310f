"""Pruning and low-rank factorisation of model dirs: really smaller matrices, or sparser ones.

A package because the tools share only the block layout and nothing else: scoring
(``importance``), removing heads / KV groups and MLP channels (``structured``), global
sparsity (``unstructured``), a truncated-SVD report (``low_rank``), the model-dir
pipeline and its report (``model_dir``) and the ``edgezoo prune`` subcommand (``cli``).
Each module says why it exists; ``blocks`` and ``plan`` hold what they share.

Importing it does not import torch (every module imports torch inside its functions):
``edgezoo --help`` builds the ``prune`` parser from here on runtime-only installs.
"""

from edgezoo.quantize.prune.blocks import block_linears, count_parameters
from edgezoo.quantize.prune.cli import add_prune_parser
from edgezoo.quantize.prune.importance import activation_importance
from edgezoo.quantize.prune.low_rank import low_rank_factorize
from edgezoo.quantize.prune.model_dir import prune_dir
from edgezoo.quantize.prune.plan import kept_count
from edgezoo.quantize.prune.structured import structured_prune
from edgezoo.quantize.prune.unstructured import linear_sparsity, magnitude_prune

__all__ = [
    "activation_importance",
    "add_prune_parser",
    "block_linears",
    "count_parameters",
    "kept_count",
    "linear_sparsity",
    "low_rank_factorize",
    "magnitude_prune",
    "prune_dir",
    "structured_prune",
]
