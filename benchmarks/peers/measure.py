"""Timing a loaded peer the same way for every runtime: one untimed warm-up decode, then
``repeats`` timed ones, so the numbers beside edgezoo's are comparable.
"""

from __future__ import annotations

import numpy as np

from .common import Decode


def measure(
    decode: Decode, prompt: list[int], n: int, repeats: int
) -> tuple[list[int], float, float | None, float | None, float | None, bool]:
    """(tokens of the last run, median TTFT ms, step p50, p95 and mean ms, runs agreed).

    TTFT is the median over runs; the decode statistics pool every step of every run (the
    mean is what a whole generation's time is made of, outliers included).
    """
    decode(prompt, n)  # warm-up: first-run allocations and lazy initialisation
    runs = [decode(prompt, n) for _ in range(repeats)]
    ttft_ms = float(np.median([r[1] for r in runs]) * 1e3)
    steps = [s for r in runs for s in r[2]]
    p50 = p95 = mean = None
    if steps:
        p50, p95 = (float(v) * 1e3 for v in np.percentile(steps, [50, 95]))
        mean = float(np.mean(steps)) * 1e3
    consistent = all(r[0] == runs[0][0] for r in runs)
    return runs[-1][0], ttft_ms, p50, p95, mean, consistent
