"""Which runs a scaling sweep trains: sizes, tokens, learning rate — pure logic, no torch.

Three plans share one run description (``PlannedRun``) so a run that two plans ask for
(same size, tokens and learning rate) is trained once:

* ``tokens``: every size sees the same tokens, so the loss isolates what size buys.
* ``isoflop``: per compute budget C, several sizes each get D = C / (6·N) tokens.
* ``compute``: the old equal-compute ladder (one budget, bigger models see fewer tokens).

N is always the non-embedding parameter count (Kaplan et al. 2020): the embedding of a
2k vocabulary is most of a sub-million model, and it buys lookups, not computation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgezoo.errors import ConfigError

# The learning rate the repository tuned for nano (width 128) at its default batch of 16
# sequences: `edgezoo train`'s default.
BASE_LR = 3e-3
BASE_WIDTH = 128
BASE_BATCH = 16
MAX_LR = 1e-2  # zepto's grid gained little above it (4.06 at 1e-2, 4.01 at 2e-2)


def lr_for_width(
    width: int,
    batch: int = BASE_BATCH,
    base_lr: float = BASE_LR,
    base_width: int = BASE_WIDTH,
) -> float:
    """lr = base · (base width / width) · √(batch / base batch), capped at MAX_LR.

    Width: μP's Adam rule for hidden matrices — Adam's step per weight does not shrink with
    fan-in, so a width-d layer's output moves ∝ d·lr and a constant move needs lr ∝ 1/d.
    Batch: Adam's square-root scaling rule (Malladi et al. 2022), so nano's lr tuned at
    batch 16 carries to the sweep's batch of 4 as half. Measured (sweep_lr.md): with the
    width factor alone, atto and femto trained at ½× that lr ended 0.34 and 0.23 nats lower."""
    if width < 1 or batch < 1:
        raise ConfigError(f"width {width} and batch {batch} must be positive")
    return min(MAX_LR, base_lr * base_width / width * (batch / BASE_BATCH) ** 0.5)


@dataclass(frozen=True)
class Shape:
    """What a sweep needs to know about a size: its width and non-embedding parameters."""

    size: str
    width: int
    non_embedding_params: int


@dataclass(frozen=True)
class PlannedRun:
    """One training run; ``key`` names its directory so equal runs are shared between plans."""

    size: str
    non_embedding_params: int
    tokens: int  # actually trained: whole steps of batch × context
    steps: int
    lr: float

    @property
    def key(self) -> str:
        return f"{self.size}-t{self.tokens}-lr{self.lr:.3g}"

    @property
    def flops(self) -> float:
        """Training compute by the 6·N·D rule, N non-embedding."""
        return 6.0 * self.non_embedding_params * self.tokens


def shape(size: str, vocab: int) -> Shape:
    from edgezoo.zoo.presets import make_config, non_embedding_params

    cfg = make_config("lm", size, vocab_size=vocab)
    return Shape(size, cfg.hidden_size, non_embedding_params(cfg))


def planned(s: Shape, tokens: float, batch: int, context: int, min_steps: int = 10) -> PlannedRun:
    """A run of about ``tokens`` tokens in whole steps of ``batch`` × ``context`` (at least
    ``min_steps``), at the rule's lr for its width and batch."""
    per_step = batch * context
    steps = max(min_steps, round(tokens / per_step))
    lr = lr_for_width(s.width, batch)
    return PlannedRun(s.size, s.non_embedding_params, steps * per_step, steps, lr)


def tokens_plan(shapes: list[Shape], tokens: int, batch: int, context: int) -> list[PlannedRun]:
    """Every size, the same tokens; smallest first (the fit's points before the check)."""
    _check_span(shapes, min_sizes=6, min_span=30.0)
    return tokens_plan_unchecked(shapes, tokens, batch, context)


def tokens_plan_unchecked(
    shapes: list[Shape], tokens: int, batch: int, context: int
) -> list[PlannedRun]:
    """``tokens_plan`` for any number of sizes (the lr check trains two)."""
    ordered = sorted(shapes, key=lambda s: s.non_embedding_params)
    return [planned(s, tokens, batch, context) for s in ordered]


def isoflop_plan(
    shapes: list[Shape],
    centres: list[str],
    tokens: int,
    per_budget: int,
    batch: int,
    context: int,
    below: int = 2,
) -> dict[float, list[PlannedRun]]:
    """Per centre size, the budget C = 6·N·``tokens`` and ``per_budget`` consecutive sizes
    from ``below`` sizes under the centre up, each with D = C / (6·N) tokens.

    A centre's run is the one a tokens sweep of ``tokens`` trains, so the two share it. Why
    two sizes below: at these budgets the smaller sizes, with more tokens each, won (with
    one below, every budget's best size was its smallest); the costly point is the
    smallest size, ~13× the centre's tokens. Where the fitted parabola's minimum still falls
    outside the sizes, the report says so."""
    if per_budget < 4:
        raise ConfigError("an IsoFLOP parabola wants at least 4 sizes per budget; use 4 or more")
    if len(centres) < 3:
        raise ConfigError("fitting N*(C) ∝ C^a with an interval needs at least 3 budgets")
    ordered = sorted(shapes, key=lambda s: s.non_embedding_params)
    if len(ordered) < per_budget:
        raise ConfigError(f"{per_budget} sizes per budget but only {len(ordered)} sizes given")
    names = [s.size for s in ordered]
    plan: dict[float, list[PlannedRun]] = {}
    for centre in centres:
        if centre not in names:
            raise ConfigError(f"IsoFLOP centre {centre!r} is not among the sizes {names}")
        i = names.index(centre)
        start = min(max(0, i - below), len(ordered) - per_budget)
        c = 6.0 * ordered[i].non_embedding_params * tokens
        chosen = ordered[start : start + per_budget]
        plan[c] = [planned(s, c / (6.0 * s.non_embedding_params), batch, context) for s in chosen]
    return dict(sorted(plan.items()))


def compute_plan(
    shapes: list[Shape], flops: float, batch: int, context: int, fixed_lr: bool = False
) -> list[PlannedRun]:
    """The equal-compute ladder: D = C / (6·N) for every size.

    ``fixed_lr`` keeps the original sweep's rule (3e-3 below 20M parameters, else 1e-3), so
    its committed table can be reproduced; otherwise lr ∝ 1/width as the other modes."""
    runs = [planned(s, flops / (6.0 * s.non_embedding_params), batch, context) for s in shapes]
    if fixed_lr:
        runs = [replace(r, lr=3e-3 if r.non_embedding_params < 20e6 else 1e-3) for r in runs]
    return runs


def _check_span(shapes: list[Shape], min_sizes: int, min_span: float) -> None:
    n = sorted(s.non_embedding_params for s in shapes)
    if len(n) < min_sizes or n[-1] / n[0] < min_span:
        raise ConfigError(
            f"a tokens sweep needs ≥ {min_sizes} sizes spanning ≥ {min_span:.0f}× in non-embedding "
            f"parameters; got {len(n)} spanning {n[-1] / max(n[0], 1):.1f}×. Add sizes to --sizes "
            "(`edgezoo models` lists them)."
        )
