"""The two int8 GQA graphs side by side, and ONNX Runtime GenAI's int8 on the same weights:
decode per token, time to first token, peak memory, and what a multi-token call costs.

    python -m benchmarks.int8_forms --sizes nano,micro,mini,small,medium

* ``gqa-int8``: weight-only ``MatMulNBits`` (bits 8, int8 activations per block inside the
  kernel) — the op GenAI's builder writes for int8, with each matrix's block as wide as
  its input dimension allows (up to 256) where the builder's default is 32.
* ``gqa-int8-dynamic``: ``quantize_dynamic`` (``MatMulInteger``, the tied LM head untied and
  quantized too; activations quantized with one scale per token, and two-row decode steps
  — ``quantize.graphs.per_row_activations``): integer GEMMs that run on AMX / VNNI units
  where the CPU has them, so a call over several tokens — a prompt, a speculative check,
  a batch — costs little more than one token.

Every decode row is a fresh process per runtime (``benchmarks.peers``: model files evicted
from the page cache first, peak RSS = the process's high-water mark); runtimes run
interleaved, rounds repeat the lot, medians are reported. The multi-token column times
one session's 8-token call against its own 1-token call at the same position (one model
loaded at a time, interleaved calls, medians).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from edgezoo import atomic
from edgezoo.runtime.timing import time_calls

from .bench import machine, prepare
from .peers import run_peer

RESULTS = Path(__file__).parent / "results"
# (label, peer, precision as the peer runner takes it)
RUNTIMES = (
    ("ort-genai int8", "ort-genai", "int8"),
    ("edgezoo gqa-int8", "edgezoo", "int8"),
    ("edgezoo gqa-int8-dynamic", "edgezoo", "int8-dynamic"),
)
VARIANT_OF = {"int8": "gqa-int8", "int8-dynamic": "gqa-int8-dynamic"}


def multi_token_cost(model_dir: Path, variant: str, threads: int, tokens: int = 8) -> float:
    """A ``tokens``-token call's time ÷ a 1-token call's, at the same cache position."""
    from edgezoo.runtime.api import load_variant

    lm = load_variant(model_dir, variant, "ort-cpu", threads)
    prompt = np.random.default_rng(0).integers(4, lm.tokenizer.get_vocab_size(), 200).tolist()
    seconds = time_calls(lm, prompt, (1, tokens), rounds=15)
    return seconds[tokens] / seconds[1]


def int8_units() -> str:
    """The CPU's integer matrix features that dynamic int8 can use (Linux)."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return ", ".join(found) or "none of avx2 / vnni / amx"


def run(sizes, prompts, new_tokens, threads, rounds, work: Path) -> dict:
    results = {"machine": machine() | {"int8_units": int8_units()}, "threads": threads, "rows": []}
    models = {size: prepare(size, work) for size in sizes}
    samples: dict[tuple, list] = {}
    for r in range(rounds):
        order = RUNTIMES if r % 2 == 0 else RUNTIMES[::-1]  # drifts hit every runtime alike
        for size in sizes:
            for prompt_len in prompts:
                rng = np.random.default_rng(prompt_len)
                prompt = [1, *rng.integers(4, 4000, prompt_len - 1).tolist()]
                for label, peer, precision in order:
                    result = run_peer(
                        peer,
                        models[size],
                        prompt,
                        new_tokens,
                        threads,
                        precision,
                        repeats=2,
                        work_dir=work / "peers" / size,
                    )
                    samples.setdefault((size, prompt_len, label), []).append(result)
    for size in sizes:
        costs = {
            label: multi_token_cost(models[size], VARIANT_OF[precision], threads)
            for label, peer, precision in RUNTIMES
            if peer == "edgezoo"
        }
        for prompt_len in prompts:
            ref = samples[(size, prompt_len, RUNTIMES[0][0])]
            for label, _, _ in RUNTIMES:
                runs = samples[(size, prompt_len, label)]
                ok = [x for x in runs if x.available]
                row = {"size": size, "prompt": prompt_len, "runtime": label, "rounds": len(ok)}
                if not ok:
                    row["note"] = runs[-1].note
                    results["rows"].append(row)
                    continue
                row.update(
                    decode_ms=statistics.median(x.decode_ms_per_token_p50 for x in ok),
                    ttft_ms=statistics.median(x.ttft_ms for x in ok),
                    peak_rss_mb=statistics.median(x.peak_rss_mb or 0 for x in ok),
                    multi_token_cost=costs.get(label),
                    greedy_equal_genai=sum(
                        a == b for a, b in zip(ok[-1].tokens, ref[-1].tokens, strict=False)
                    ),
                )
                results["rows"].append(row)
    return results


def to_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('int8_units')}); "
        f"onnxruntime {m.get('onnxruntime')}; "
        f"{results['threads']} threads; {m.get('date', '')}. Random-init weights (speed only: "
        "quality is the quantize gate's). Medians of interleaved fresh-process rounds.",
        "",
        "| size | prompt | runtime | decode ms/token | ÷ GenAI | TTFT ms | ÷ GenAI | peak RSS MB "
        "| 8-token call ÷ 1-token call | greedy tokens = GenAI's |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    genai = {
        (r["size"], r["prompt"]): r for r in results["rows"] if r["runtime"].startswith("ort-genai")
    }
    for r in results["rows"]:
        if "decode_ms" not in r:
            lines.append(
                f"| {r['size']} | {r['prompt']} | {r['runtime']} | {r.get('note', '')} |||||||"
            )
            continue
        g = genai.get((r["size"], r["prompt"]), {})
        cost = f"{r['multi_token_cost']:.2f}×" if r.get("multi_token_cost") else "-"
        lines.append(
            f"| {r['size']} | {r['prompt']} | {r['runtime']} | {r['decode_ms']:.3f} | "
            f"{r['decode_ms'] / g['decode_ms']:.2f} | {r['ttft_ms']:.1f} | "
            f"{r['ttft_ms'] / g['ttft_ms']:.2f} | {r['peak_rss_mb']:.0f} | {cost} | "
            f"{r['greedy_equal_genai']} |"
            if "decode_ms" in g
            else f"| {r['size']} | {r['prompt']} | {r['runtime']} | {r['decode_ms']:.3f} | - | "
            f"{r['ttft_ms']:.1f} | - | {r['peak_rss_mb']:.0f} | {cost} | - |"
        )
    lines += [
        "",
        "÷ GenAI below 1: edgezoo is faster. 8-token call: what checking 7 speculative guesses "
        "(or 8 tokens of a prompt or batch) costs against one decode step of the same session.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="nano,micro,mini,small,medium")
    p.add_argument("--prompts", default="32,512", help="prompt lengths in tokens")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default="runs/bench")
    p.add_argument("--out", default=str(RESULTS / "int8_forms"))
    args = p.parse_args(argv)
    results = run(
        args.sizes.split(","),
        [int(x) for x in args.prompts.split(",")],
        args.new_tokens,
        args.threads,
        args.rounds,
        Path(args.work),
    )
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), results)
    atomic.write_text(out.with_suffix(".md"), to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
