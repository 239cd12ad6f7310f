"""Peer ``edgezoo``: our own runtime, run exactly like the peers — in a fresh process through
``run_peer`` — so that its whole-process peak memory compares with theirs (the in-process
rows of ``benchmarks.bench`` share a process with torch and the benchmark itself).
"""

from __future__ import annotations

import time
from pathlib import Path

from .common import Loaded

# "int8-dynamic": the other int8 form (MatMulInteger), for benchmarks.int8_forms; edgezoo only.
VARIANTS = {
    "fp32": "gqa",
    "int8": "gqa-int8",
    "int8-dynamic": "gqa-int8-dynamic",
    "int4": "gqa-int4",
}


def load(model_dir: Path, precision: str, threads: int, work: Path) -> Loaded:
    from edgezoo import runtime
    from edgezoo.runtime.sampling import SamplingParams

    start = time.perf_counter()
    lm = runtime.load(model_dir, backend="ort-cpu", variant=VARIANTS[precision], threads=threads)
    load_s = time.perf_counter() - start

    def decode(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        params = SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)
        g = lm.generate_ids([prompt], params)[0]
        return g.token_ids, g.time_to_first_token_s, list(g.step_s)

    note = f"edgezoo runtime, {lm.variant} graph on ort-cpu, {threads} threads, own Python loop"
    return Loaded(decode, load_s, note)
