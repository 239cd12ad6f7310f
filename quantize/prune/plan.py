"""From the fractions a user asks to remove to what each layer keeps.

Checking ``--heads``/``--mlp``/``--sparsity``, rounding a fraction to a unit count, and
``LayerPlan``, the per-layer record of the kept units that both the pruned model and
``prune.json`` are built from. No torch here: the CLI and reports use it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgezoo.errors import ConfigError


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
