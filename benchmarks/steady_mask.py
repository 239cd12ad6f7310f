"""What binding one full-length attention mask once (instead of a new, longer one every
token) saves a plain decode step on the CPU (``runtime.kv_cache.SharedBufferCache``).

    python -m benchmarks.steady_mask --sizes nano,micro,small

Random-init graphs from ``runs/bench`` (speed only; the logits are equal bit for bit, as
``tests/test_runtime.py`` checks). Batch 1, greedy, a 32-token prompt, ``--tokens`` tokens;
each round loads one model at a time (steady, then growing, alternating the order), and
the medians of ``--rounds`` rounds' median step times are reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.bench import prepare
from edgezoo import atomic, runtime
from edgezoo.runtime import kv_cache
from edgezoo.runtime.timing import time_decode

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("gqa", "gqa-int8", "gqa-int4")


def step_ms(model_dir: Path, variant: str, steady: bool, tokens: int) -> float:
    """Median decode step (ms) of one fresh load, with the steady mask on or off."""
    original = kv_cache.SharedBufferCache.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "steady_mask": steady})

    kv_cache.SharedBufferCache.__init__ = init
    try:
        lm = runtime.load(model_dir, backend="ort-cpu", variant=variant, threads=2)
        prompt = [int(t) for t in np.random.default_rng(0).integers(5, 500, 32)]
        timing = time_decode(lm, [prompt], tokens, 1)
        return statistics.median(timing.step_s) * 1000
    finally:
        kv_cache.SharedBufferCache.__init__ = original
        gc.collect()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="nano,micro,small")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--work", default="runs/bench")
    args = p.parse_args(argv)
    dirs = {s: prepare(s, Path(args.work)) for s in args.sizes.split(",")}
    samples: dict[tuple[str, str, bool], list[float]] = {}
    for rnd in range(args.rounds):
        for size, model_dir in dirs.items():
            for variant in VARIANTS:
                for steady in (True, False) if rnd % 2 else (False, True):
                    ms = step_ms(model_dir, variant, steady, args.tokens)
                    samples.setdefault((size, variant, steady), []).append(ms)
    rows = []
    for size in dirs:
        for variant in VARIANTS:
            growing = statistics.median(samples[(size, variant, False)])
            steady = statistics.median(samples[(size, variant, True)])
            rows.append(
                {"size": size, "variant": variant, "growing_ms": round(growing, 4),
                 "steady_ms": round(steady, 4), "ratio": round(steady / growing, 3)}
            )  # fmt: skip
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    meta = {"machine": platform.processor() or platform.machine(), "date": when, **vars(args)}
    atomic.write_text(
        RESULTS / "steady_mask.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "| size | variant | growing mask ms/step | steady mask ms/step | steady ÷ growing |",
        "|---|---|---|---|---|",
        *(
            f"| {r['size']} | {r['variant']} | {r['growing_ms']:.3f} | {r['steady_ms']:.3f} "
            f"| {r['ratio']:.2f} |"
            for r in rows
        ),
        "",
        f"Batch 1, greedy, 32-token prompt, {args.tokens} tokens, 2 threads, random-init "
        f"weights; medians of {args.rounds} rounds, one model loaded at a time, order "
        f"alternating; {when}. Growing: a new mask one column longer bound every token (the "
        "loop before); steady: one full-length mask bound once, each row's length written "
        "into it (same logits bit for bit).",
    ]
    atomic.write_text(RESULTS / "steady_mask.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
