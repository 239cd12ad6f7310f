"""Where a decode step's time goes: the ONNX Runtime call vs everything around it.

    python -m benchmarks.step_overhead --sizes nano,micro,mini,small

For each size × variant (random-init graphs from ``runs/bench``; speed only) it decodes
``--tokens`` greedy tokens at batch 1 and times, per step, the whole loop step (what a user
gets: ``Generation.decode_s`` / steps) and the bare ``run_with_iobinding`` call inside it.
The difference is the per-step Python overhead — binding inputs, sampling, stop checks,
bookkeeping — that a C++ generation loop (ONNX Runtime GenAI) does not pay in Python.
Medians of ``--rounds`` rounds, variants interleaved within a round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.bench import prepare
from edgezoo import atomic, runtime
from edgezoo.runtime.sampling import SamplingParams

RESULTS = Path(__file__).parent / "results"
PROMPT = "def read_config(path):\n    "


class TimedSession:
    """Wraps ``run_with_iobinding`` of a loaded model's session to record each call's time."""

    def __init__(self, model) -> None:
        self.durations: list[float] = []
        session = model.session
        inner = session.run_with_iobinding

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.durations.append(time.perf_counter() - start)

        session.run_with_iobinding = timed


def one_round(model, timer: TimedSession, tokens: int) -> tuple[float, float]:
    """(loop ms per step, ORT ms per step) over one generation's decode steps."""
    params = SamplingParams(temperature=0, max_new_tokens=tokens, ignore_eos=True)
    timer.durations.clear()
    g = model.generate(PROMPT, params)
    _prefill, *steps = timer.durations  # call 1 is the prompt; each later call one token
    return g.decode_s / len(steps) * 1e3, sum(steps) / len(steps) * 1e3


def measure(size: str, variants: list[str], work: Path, tokens: int, rounds: int) -> list[dict]:
    model_dir = prepare(size, work)
    models = {v: runtime.load(model_dir, backend="ort-cpu", variant=v, threads=2) for v in variants}
    timers = {v: TimedSession(m) for v, m in models.items()}
    for v, m in models.items():  # warm-up
        one_round(m, timers[v], 8)
    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v, m in models.items():
            samples[v].append(one_round(m, timers[v], tokens))
    rows = []
    for v in variants:
        loop = statistics.median(s[0] for s in samples[v])
        ort_ms = statistics.median(s[1] for s in samples[v])
        rows.append(
            {
                "size": size,
                "variant": v,
                "loop_ms": loop,
                "ort_ms": ort_ms,
                "overhead_us": (loop - ort_ms) * 1e3,
                "overhead_share": (loop - ort_ms) / loop,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="nano,micro,mini,small")
    p.add_argument("--variants", default="gqa,gqa-int8,gqa-int4")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--work", default="runs/bench")
    p.add_argument("--out", default=str(RESULTS / "step_overhead"))
    args = p.parse_args()
    rows = []
    for size in args.sizes.split(","):
        rows += measure(size, args.variants.split(","), Path(args.work), args.tokens, args.rounds)
    result = {"rows": rows, "tokens": args.tokens, "rounds": args.rounds, "threads": 2}
    atomic.write_json(Path(args.out).with_suffix(".json"), result)
    atomic.write_text(Path(args.out).with_suffix(".md"), table(result))
    print(table(result))


def table(result: dict) -> str:
    lines = [
        "| size | variant | loop ms/step | ORT call ms/step | outside ORT µs/step | share |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']} | {r['variant']} | {r['loop_ms']:.3f} | {r['ort_ms']:.3f} | "
            f"{r['overhead_us']:.0f} | {r['overhead_share']:.0%} |"
        )
    lines.append(
        f"\nBatch 1, greedy, {result['tokens']} tokens, {result['threads']} threads, random-init "
        f"weights; medians of {result['rounds']} rounds, variants interleaved. The ORT call is "
        "`run_with_iobinding` alone; the rest of a step is the runtime's Python loop. The "
        "variants' sessions share one process, so another's idle threads may still be spinning "
        "when one starts: every number is higher than in a fresh process with one model "
        '(compare `peers_genai.md`\'s "edgezoo fresh" column).'
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
