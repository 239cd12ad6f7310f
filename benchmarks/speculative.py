"""Speculative decoding on trained models: tokens/s of the target alone vs with a draft
model and with prompt lookup, acceptance rates, and a check that greedy text is unchanged.

    python -m benchmarks.speculative --target runs/spec-mini --draft runs/demo

Prompts are held-out stdlib documents (the corpus' own validation split), cut before a
``def``; every prompt decodes ``--max-new-tokens`` greedy tokens (EOS ignored, so every
method does the same work). Methods run interleaved per prompt, rounds repeat the lot;
medians are reported (this machine's timing drifts ±20 % over minutes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from edgezoo import atomic, runtime
from edgezoo.runtime.sampling import SamplingParams
from edgezoo.runtime.speculative import SpeculativeLM
from edgezoo.zoo.data import is_validation, iter_documents

RESULTS = Path(__file__).parent / "results"


def heldout_prompts(n: int, chars: int = 400) -> list[str]:
    """The ``chars`` characters before a ``def`` in ``n`` validation-split stdlib files."""
    prompts = []
    for doc_id, text in iter_documents("builtin:stdlib"):
        if not is_validation(doc_id, 0.05):
            continue
        cut = text.find("\ndef ", len(text) // 3)
        if cut > chars:
            prompts.append(text[cut - chars : cut + 5])
        if len(prompts) == n:
            break
    return prompts


def time_method(model, prompt_ids: list[int], params: SamplingParams) -> tuple[float, list, dict]:
    start = time.perf_counter()
    result = model.generate_ids([prompt_ids], params)[0]
    elapsed = time.perf_counter() - start
    stats = getattr(model, "last_stats", None)
    extra = {"proposed": stats.proposed, "accepted": stats.accepted} if stats else {}
    return elapsed, result.token_ids, extra


def run_variant(args: argparse.Namespace, variant: str, prompts: list[str]) -> dict:
    target = runtime.load(args.target, backend="ort-cpu", variant=variant, threads=args.threads)
    methods = {"target alone": target, "prompt lookup": SpeculativeLM(target, None, k=args.k)}
    draft = None
    if args.draft:
        draft = runtime.load(args.draft, backend="ort-cpu", variant=variant, threads=args.threads)
        methods["draft model"] = SpeculativeLM(target, draft, k=args.k)
    params = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens, ignore_eos=True)
    encoded = [target.encode([p])[0] for p in prompts]
    rates: dict[str, list[float]] = {m: [] for m in methods}
    totals = {m: {"proposed": 0, "accepted": 0} for m in methods}
    identical = True
    for _ in range(args.rounds):
        seconds = dict.fromkeys(methods, 0.0)
        for ids in encoded:
            reference = None
            for name, model in methods.items():
                elapsed, tokens, extra = time_method(model, ids, params)
                seconds[name] += elapsed
                reference = reference or tokens
                identical &= tokens == reference
                for key, value in extra.items():
                    totals[name][key] += value
        for name in methods:
            rates[name].append(len(encoded) * args.max_new_tokens / seconds[name])
    alone = statistics.median(rates["target alone"])
    return {
        "variant": variant,
        "target_variant": target.variant,
        "draft_variant": draft.variant if draft is not None else None,
        "identical_greedy_text": identical,
        "tokens_per_s": {m: statistics.median(r) for m, r in rates.items()},
        "rounds_tokens_per_s": rates,
        "speedup": {m: statistics.median(r) / alone for m, r in rates.items()},
        "acceptance": {
            m: t["accepted"] / t["proposed"] for m, t in totals.items() if t["proposed"]
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="runs/spec-mini")
    p.add_argument("--draft", default="runs/demo", help="draft model dir ('' for none)")
    p.add_argument("--variants", default="gqa,gqa-int8,gqa-int4")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--k", type=int, default=4, help="guesses checked per target call")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "speculative"))
    args = p.parse_args()
    prompts = heldout_prompts(args.prompts)
    rows = [run_variant(args, v, prompts) for v in args.variants.split(",")]
    for row in rows:
        print(row, flush=True)
    result = {
        "target": args.target,
        "draft": args.draft,
        "k": args.k,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "threads": args.threads,
        "rows": rows,
    }
    atomic.write_json(Path(args.out).with_suffix(".json"), result)
    atomic.write_text(Path(args.out).with_suffix(".md"), table(result))
    print(table(result))


def table(result: dict) -> str:
    lines = [
        "| variant | target alone tok/s | prompt lookup tok/s (×) | acceptance | "
        "draft model tok/s (×) | acceptance | greedy text identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        t, s, a = r["tokens_per_s"], r["speedup"], r["acceptance"]
        draft = "-"
        if "draft model" in t:
            draft = (
                f"{t['draft model']:.0f} ({s['draft model']:.2f}×) | {a.get('draft model', 0):.0%}"
            )
        lines.append(
            f"| {r['variant']} | {t['target alone']:.0f} | {t['prompt lookup']:.0f} "
            f"({s['prompt lookup']:.2f}×) | {a.get('prompt lookup', 0):.0%} | "
            f"{draft if draft != '-' else '- | -'} | {r['identical_greedy_text']} |"
        )
    lines.append(
        f"\nTarget {result['target']}, draft {result['draft'] or 'none'} (same tokenizer), "
        f"{result['k']} guesses per target call, {result['prompts']} held-out stdlib "
        f"prompts × {result['max_new_tokens']} greedy tokens, batch 1, "
        f"{result['threads']} threads; medians of {result['rounds']} interleaved rounds."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
