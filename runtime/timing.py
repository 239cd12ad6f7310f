"""Decode timing of a loaded ``LanguageModel``: what the demo and the benchmarks report.

Kept in the runtime (torch-free) so that a device with only the edge install can measure
itself the same way the committed tables were measured.
"""

from __future__ import annotations

from statistics import median
from time import perf_counter
from typing import NamedTuple

import numpy as np

from edgezoo.runtime.language_model import LanguageModel
from edgezoo.runtime.sampling import SamplingParams


class DecodeTiming(NamedTuple):
    step_s: list[float]  # seconds of every decode step of every timed run, pooled
    ttft_s: list[float]  # seconds to the first token, one per timed run
    token_ids: list[int]  # the first row's tokens of the last run


def time_decode(
    lm: LanguageModel, prompts: list[list[int]], new_tokens: int, repeats: int
) -> DecodeTiming:
    """Greedy-decode ``new_tokens`` after each token-id prompt, ``repeats`` times.

    Token ids rather than text, so a prompt has exactly the length asked for (random ids
    decoded to text would re-encode differently); EOS is ignored so every run has the same
    length; one untimed warm-up run first (allocations, thread pools)."""
    lm.generate_ids(prompts, SamplingParams(max_new_tokens=4, ignore_eos=True))
    timed = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    steps: list[float] = []
    ttft: list[float] = []
    tokens: list[int] = []
    for _ in range(repeats):
        first = lm.generate_ids(prompts, timed)[0]
        tokens = first.token_ids
        steps.extend(first.step_s)
        ttft.append(first.time_to_first_token_s)
    return DecodeTiming(steps, ttft, tokens)


def time_calls(
    lm: LanguageModel, prompt_ids: list[int], sizes: tuple[int, ...], rounds: int
) -> dict[int, float]:
    """Median seconds of one call over ``n`` tokens, for each ``n`` in ``sizes``, at the same
    cache position after ``prompt_ids`` (cut to leave room): what a speculative check or a
    prompt chunk costs against one decode step. Sizes alternate within each round, after one
    untimed call each. Needs the gqa graph on the CPU (``SlotCache``)."""
    from edgezoo.runtime.slot_cache import SlotCache

    cache = SlotCache(lm.session, 1, lm.context, lm.decode_rows)
    past = np.asarray(prompt_ids)[: lm.context - max(sizes)]
    tokens = np.resize(past, max(sizes))
    cache.prefill(0, past, 0)
    seconds: dict[int, list[float]] = {n: [] for n in sizes}
    for timed in [False] + [True] * rounds:
        for n in sizes:
            start = perf_counter()
            cache.extend(0, tokens[:n], len(past))
            if timed:
                seconds[n].append(perf_counter() - start)
    return {n: median(s) for n, s in seconds.items()}
