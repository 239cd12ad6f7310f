"""What a target call of several tokens costs against a one-token step, per variant: the
price of checking speculative guesses, and why more guesses per call pay less on int8 / int4.

Each variant is loaded with ``takes_turns`` (as speculative decoding loads a target), a
prompt prefilled, then calls of each length run at the same position (rolling back is a
length change), interleaved across lengths and variants, a few warm-up steps before each
variant's turn; medians of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from edgezoo import atomic, runtime
from edgezoo.runtime.slot_cache import SlotCache

HERE = Path(__file__).parent
RESULTS = HERE / "results"
PROMPT_TOKENS = 64
REPEATS = 5  # calls per timing


def time_lengths(models: dict, lengths: list[int], rounds: int) -> dict[str, dict[int, float]]:
    """variant -> tokens per call -> median seconds of one call."""
    rng = np.random.default_rng(0)
    caches = {}
    for name, lm in models.items():
        cache = SlotCache(lm.session, 1, lm.context, lm.decode_rows)
        cache.prefill(0, rng.integers(5, lm.vocab_size, PROMPT_TOKENS), 0)
        caches[name] = cache
    seconds: dict[str, dict[int, list[float]]] = {n: {m: [] for m in lengths} for n in models}
    for _ in range(rounds):
        for name, cache in caches.items():
            vocab = models[name].vocab_size
            for _ in range(REPEATS):  # warm-up: this model's weights back in the caches
                cache.extend(0, rng.integers(5, vocab, 1), PROMPT_TOKENS)
            for m in lengths:
                chunk = rng.integers(5, vocab, m)
                start = time.perf_counter()
                for _ in range(REPEATS):
                    cache.extend(0, chunk, PROMPT_TOKENS)
                seconds[name][m].append((time.perf_counter() - start) / REPEATS)
    return {n: {m: statistics.median(s) for m, s in by.items()} for n, by in seconds.items()}


def table(result: dict) -> str:
    lengths = result["lengths"]
    lines = [
        "| variant | 1-token call ms | " + " | ".join(f"{m} tokens" for m in lengths[1:]) + " |",
        "|---|---|" + "---|" * (len(lengths) - 1),
    ]
    for name, by in result["seconds"].items():
        one = by[str(lengths[0])]
        ratios = " | ".join(f"{by[str(m)] / one:.2f}×" for m in lengths[1:])
        lines.append(f"| {name} | {one * 1e3:.2f} | {ratios} |")
    lines.append(
        f"\nTarget {result['model']}: a call of n tokens after a {PROMPT_TOKENS}-token prompt, "
        f"against a one-token call of the same session (× > 1: dearer); {result['threads']} "
        f"threads, each model loaded with `takes_turns`; medians of {result['rounds']} "
        f"interleaved rounds of {REPEATS} calls. A speculative check of k guesses is a call "
        "of k + 1 tokens. What a call costs depends on shapes, not on the weights' values "
        "(a random-init model serves)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/bench/lm-small", help="an exported, quantized LM dir")
    p.add_argument("--variants", default="gqa,gqa-int8,gqa-int8-dynamic,gqa-int4")
    p.add_argument("--lengths", default="1,2,3,5,9,13", help="tokens per call, 1 first")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "call_cost"))
    args = p.parse_args(argv)
    lengths = [int(m) for m in args.lengths.split(",")]
    if lengths[0] != 1:
        p.error("--lengths starts with 1: the other lengths are compared with it")
    models = {
        v: runtime.load(
            args.model, backend="ort-cpu", variant=v, threads=args.threads, takes_turns=True
        )
        for v in args.variants.split(",")
    }
    seconds = time_lengths(models, lengths, args.rounds)
    result = {
        "model": args.model,
        "lengths": lengths,
        "rounds": args.rounds,
        "threads": args.threads,
        "seconds": {n: {str(m): s for m, s in by.items()} for n, by in seconds.items()},
    }
    atomic.write_json(Path(args.out).with_suffix(".json"), result)
    atomic.write_text(Path(args.out).with_suffix(".md"), table(result))
    print(table(result))


if __name__ == "__main__":
    main()
