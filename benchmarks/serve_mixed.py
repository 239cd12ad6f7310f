"""Serving under a realistic mix: continuous vs static batching vs sequential, one run.

Clients stream completions with sampling settings, prompt lengths and answer lengths drawn
from distributions, each waiting an exponential think time between requests (Poisson
arrivals). Reported per server and client count: tokens/s, time to first token (TTFT)
p50/p95 and inter-token latency (ITL, the gap between streamed chunks) p50/p95. The
16-client comparison is measured in interleaved rounds (this machine drifts ±20 %).

    python -m benchmarks.serve_mixed runs/demo --clients 1,4,16,64 --seconds 20

Aims (issue #12): at 16 clients, continuous tokens/s >= 4x sequential and its TTFT p95 <=
3x the single-client TTFT; no request waits for another's whole answer.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import statistics
import threading
import time
from pathlib import Path

from edgezoo import atomic

from .serve_load import RESULTS, server_process

SERVERS = {  # name -> extra `edgezoo serve` flags
    "continuous": ["--batching", "continuous", "--parallel", "16"],
    "static": ["--batching", "static"],
    "sequential": ["--batching", "static"],  # with --max-batch 1
}
SNIPPET = (
    "def parse(path):\n    with open(path) as f:\n        for line in f:\n"
    "            key, _, value = line.partition('=')\n            yield key.strip(), value\n"
)


def draw_request(rng: random.Random) -> dict:
    """A completion request as a mixed workload has them: short and long prompts, short
    and long answers, greedy and sampled, some with stop strings or seeds."""
    prompt_chars = int(min(900, rng.lognormvariate(4.5, 0.8)))  # median ~90 chars
    prompt = (SNIPPET * (prompt_chars // len(SNIPPET) + 1))[:prompt_chars] or "def"
    body = {
        "prompt": prompt,
        "max_tokens": int(min(128, max(8, rng.lognormvariate(3.5, 0.6)))),  # median ~33
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    kind = rng.random()
    if kind < 0.3:
        body["temperature"] = 0
    elif kind < 0.6:
        body.update(temperature=0.7, top_p=0.9)
    elif kind < 0.8:
        body.update(temperature=1.0, top_k=40, seed=rng.randrange(1000))
    else:
        body.update(temperature=0.8, stop=["\n\n"], frequency_penalty=0.3)
    return body


def one_request(http, body: dict) -> dict:
    """Stream one completion; return its TTFT, inter-token gaps and tokens (or its status
    when it was refused)."""
    start = time.perf_counter()
    stamps, tokens = [], 0
    with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            return {"status": r.status_code}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any(c.get("text") for c in chunk.get("choices", [])):
                stamps.append(time.perf_counter())
    if not stamps:  # an answer that ended at once (EOS or a stop string): no text
        return {"ttft": None, "gaps": [], "tokens": tokens}
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"ttft": stamps[0] - start, "gaps": gaps, "tokens": tokens}


def load(url: str, clients: int, seconds: float, think_s: float, seed: int) -> dict:
    import httpx

    results: list[dict] = []
    failed = [0]
    lock = threading.Lock()
    stop = time.time() + seconds

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        with httpx.Client(base_url=url, timeout=300) as http:
            while time.time() < stop:
                time.sleep(rng.expovariate(1 / think_s) if think_s else 0)
                out = one_request(http, draw_request(rng))
                with lock:
                    if "status" in out:
                        failed[0] += 1
                    else:
                        results.append(out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarise(results, clients, seconds, failed[0])


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[int(q * (len(values) - 1))] * 1000


def summarise(results: list[dict], clients: int, seconds: float, failed: int) -> dict:
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    return {
        "clients": clients,
        "requests": len(results),
        "failed": failed,  # not 200 (an empty answer is a success without a TTFT)
        "tokens_per_s": sum(r["tokens"] for r in results) / seconds,
        "ttft_p50_ms": _pct(ttft, 0.5),
        "ttft_p95_ms": _pct(ttft, 0.95),
        "itl_p50_ms": _pct(gaps, 0.5),
        "itl_p95_ms": _pct(gaps, 0.95),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", nargs="?", default="runs/demo")
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--think", type=float, default=0.2, help="mean seconds between requests")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "serve_mixed"))
    args = p.parse_args()
    rows, rounds = [], {name: [] for name in SERVERS}
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                server_process(
                    args.model_dir,
                    max_batch=1 if name == "sequential" else 16,
                    threads=args.threads,
                    extra=flags,
                )
            ).url
            for name, flags in SERVERS.items()
        }
        for url in urls.values():
            load(url, 2, 2.0, 0.0, seed=99)  # warm-up
        for clients in [int(c) for c in args.clients.split(",")]:
            for name, url in urls.items():
                row = {"server": name, **load(url, clients, args.seconds, args.think, seed=1)}
                rows.append(row)
                print(row, flush=True)
        for r in range(args.rounds):
            for name, url in urls.items():
                rounds[name].append(load(url, 16, args.seconds, args.think, seed=10 + r))
                print({"round": r, "server": name, **rounds[name][-1]}, flush=True)
    result = verdict(args, rows, rounds)
    atomic.write_json(Path(args.out).with_suffix(".json"), result)
    atomic.write_text(Path(args.out).with_suffix(".md"), table(result))
    print(table(result))


def verdict(args: argparse.Namespace, rows: list[dict], rounds: dict[str, list[dict]]) -> dict:
    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "clients"}
        for n, rs in rounds.items()
    }
    single = next(r for r in rows if r["server"] == "continuous" and r["clients"] == 1)
    return {
        "model_dir": args.model_dir,
        "seconds": args.seconds,
        "think_s": args.think,
        "rows": rows,
        "rounds_16_clients": rounds,
        "medians_16_clients": med,
        "continuous_vs_sequential_tokens": med["continuous"]["tokens_per_s"]
        / med["sequential"]["tokens_per_s"],
        "continuous_vs_static_tokens": med["continuous"]["tokens_per_s"]
        / med["static"]["tokens_per_s"],
        "ttft_p95_vs_single_client": med["continuous"]["ttft_p95_ms"] / single["ttft_p50_ms"],
    }


def table(result: dict) -> str:
    lines = [
        "| server | clients | requests | tokens/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.0f} | "
            f"{r['ttft_p50_ms'] or 0:.0f} | {r['ttft_p95_ms'] or 0:.0f} | "
            f"{r['itl_p50_ms'] or 0:.1f} | {r['itl_p95_ms'] or 0:.1f} |"
        )
    m = result["medians_16_clients"]
    lines.append(
        f"\nAt 16 clients (medians of {len(result['rounds_16_clients']['continuous'])} "
        f"interleaved rounds of {result['seconds']:g} s): continuous batching "
        f"**{result['continuous_vs_sequential_tokens']:.1f}×** sequential serving's tokens/s "
        f"(aim ≥ 4×) and {result['continuous_vs_static_tokens']:.2f}× static batching's; its "
        f"TTFT p95 {m['continuous']['ttft_p95_ms']:.0f} ms is "
        f"**{result['ttft_p95_vs_single_client']:.1f}×** the single-client TTFT (aim ≤ 3×); "
        f"static TTFT p95 {m['static']['ttft_p95_ms']:.0f} ms, sequential "
        f"{m['sequential']['ttft_p95_ms']:.0f} ms. Mixed load: prompts ~90 characters "
        f"(lognormal, up to 900), answers ~33 tokens (8–128), 30 % greedy, 70 % sampled "
        f"(top-p, top-k + seed, stop strings + frequency penalty), streamed, exponential "
        f"think time {result['think_s']:g} s per client; model {result['model_dir']}."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
