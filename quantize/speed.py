"""Is a variant faster than fp32? Timed in interleaved rounds, judged with a margin.

One timing of each graph says little on a shared CPU: a neighbour's burst, a frequency
step or a cold cache can make either side look 10 % faster. So the gate times the fp32
baseline and the variant in alternating rounds (A B B A A B ...: slow drifts hit both
sides alike), takes the median of each side, and calls the variant *faster* only when
the baseline's median is at least ``margin`` times the variant's; within the margin the
two are the *same speed*, and the variant is not recommended for speed it does not have.
The per-round values and their spread go into the manifest, so a reader can see how
noisy the machine was. Each round loads one model at a time (``one_loaded_at_a_time``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

from edgezoo.memory import release_freed

T = TypeVar("T")

SPEED_ROUNDS = 5
SPEED_MARGIN = 1.05  # ≥ 5 % faster by median to count as faster
CLASSIFY_CALLS_PER_ROUND = 10


def speed_verdict(
    baseline_ms: list[float], variant_ms: list[float], margin: float = SPEED_MARGIN
) -> dict[str, Any]:
    """faster | same speed | slower, from the medians of per-round timings (lower is faster)."""
    if not baseline_ms or not variant_ms:
        raise ValueError("speed_verdict needs at least one timing of each side")
    if margin < 1.0:
        raise ValueError(f"margin {margin} must be at least 1.0 (1.05 = 5 % faster)")
    base, var = statistics.median(baseline_ms), statistics.median(variant_ms)
    speedup = base / var if var > 0 else float("inf")
    if speedup >= margin:
        verdict = "faster"
    elif speedup <= 1 / margin:
        verdict = "slower"
    else:
        verdict = "same speed"
    paired = list(zip(baseline_ms, variant_ms, strict=False))
    return {
        "speedup": speedup,
        "verdict": verdict,
        "margin": margin,
        "rounds": min(len(baseline_ms), len(variant_ms)),
        "baseline_median_ms": base,
        "variant_median_ms": var,
        "baseline_ms": [round(t, 4) for t in baseline_ms],
        "variant_ms": [round(t, 4) for t in variant_ms],
        "spread_pct": {"baseline": _spread(baseline_ms), "variant": _spread(variant_ms)},
        "variant_won_rounds": sum(v < b for b, v in paired),
    }


def _spread(timings: list[float]) -> float:
    """(max - min) / median, in percent: how much one side's rounds disagreed."""
    mid = statistics.median(timings)
    return round((max(timings) - min(timings)) / mid * 100, 2) if mid > 0 else 0.0


def one_loaded_at_a_time(
    names: list[str], measure: Callable[[str], T], rounds: int = SPEED_ROUNDS
) -> dict[str, list[T]]:
    """``measure(name)`` for each name per round, in an order that alternates (A B, B A,
    ...); ``measure`` loads its own model and lets it go before it returns. Two sessions
    in one process disturb each other's timing: measured here, in-process timing favoured
    whichever model ran second (gqa-int8 118.7 vs 131.8 ms for the dynamic form, against
    81–88 vs 92–95 ms in separate processes)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    samples: dict[str, list[T]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(measure(name))
            release_freed()
    return samples


def round_timer(model: Any, prompt: str, text: str | None) -> Callable[[], float]:
    """One round's timing of a loaded model: decode ms/token (LM, s2s) or ms per classify
    call. An encoder–decoder decodes past its </s> (the same 64 steps for every variant:
    ``prompt`` is then a held-out source)."""
    if hasattr(model, "generate"):
        past_eos = getattr(model, "family", "") == "s2s"

        def lm_round() -> float:
            g = model.generate(
                prompt, max_new_tokens=64, **({"ignore_eos": True} if past_eos else {})
            )
            return g.decode_s / max(1, len(g.token_ids) - 1) * 1000

        return lm_round

    def classify_round() -> float:
        t0 = time.perf_counter()
        for _ in range(CLASSIFY_CALLS_PER_ROUND):
            model.predict_proba(text)
        return (time.perf_counter() - t0) / CLASSIFY_CALLS_PER_ROUND * 1000

    return classify_round
