"""What abusive clients cost well-formed ones: the server under a clean load, then under the
same load with a share of hostile requests (huge prompts, hundreds of prompts per request,
thousands of stop strings, malformed fields), in interleaved rounds.

    python -m benchmarks.serve_abuse runs/demo --clients 64 --seconds 60

Aim: well-formed requests keep >= 80 % of their clean throughput, their p95 latency stays
<= 2x the clean p95, nothing answers 5xx and the server's memory stays bounded. The server
is its own process (``edgezoo serve`` with default limits), as deployed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from edgezoo import atomic
from edgezoo.runtime.load_test import hammer

from .serve_load import RESULTS, server_process

WELL_FORMED = {"prompt": "def main():", "max_tokens": 32, "temperature": 0}


def abusive_requests() -> list[dict]:
    """httpx arguments for each kind of hostile request, built once (a client encoding a
    megabyte per request would measure itself)."""

    def raw(text: str, content_type: str = "application/json") -> dict:
        return {"content": text.encode(), "headers": {"content-type": content_type}}

    return [
        raw(json.dumps({"prompt": "x" * 900_000, "max_tokens": 16})),  # huge prompt
        {"json": {"prompt": ["def f():"] * 400, "max_tokens": 16}},  # hundreds of prompts
        {"json": {"prompt": "def f():", "stop": [f"s{i}" for i in range(5000)]}},  # stops
        {"json": {"prompt": "def f():", "temperature": "hot"}},  # malformed fields
        {"json": {"prompt": "def f():", "max_tokens": -1}},
        {"json": {"prompt": "def f():", "max_tokens": 10**9}},
        raw('{"prompt": "a", "max_tokens": 1' + "0" * 400 + "}"),  # beyond float range
        raw("[" * 100_000 + "]" * 100_000),  # deep nesting
        raw('{"prompt": "\\ud800"}'),  # a lone surrogate
        raw("prompt=hi", "application/x-www-form-urlencoded"),  # a cross-site form post
        {"json": {"prompt": "", "max_tokens": 16}},  # empty prompt
    ]


def memory_mb(pid: int) -> dict[str, float]:
    """The server's resident memory now and at its peak (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": fields.get("VmRSS", 0.0), "peak_rss_mb": fields.get("VmHWM", 0.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", nargs="?", default="runs/demo")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60, help="per phase and round (default 60)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved clean/abuse rounds")
    p.add_argument("--abuse-share", type=float, default=0.1, help="share of hostile requests")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "serve_abuse"))
    args = p.parse_args()
    hostile = abusive_requests()
    phases: dict[str, list[dict]] = {"clean": [], "abuse": []}
    # The defaults of `edgezoo serve` (max batch 8, queue 64): what a user runs.
    with server_process(args.model_dir, max_batch=8, threads=args.threads, max_queue=64) as server:
        hammer(server.url, 4, 2.0, WELL_FORMED)  # warm-up
        for _ in range(args.rounds):
            for phase, share in (("clean", 0.0), ("abuse", args.abuse_share)):
                result = hammer(
                    server.url,
                    args.clients,
                    args.seconds,
                    WELL_FORMED,
                    abusive=hostile,
                    abuse_share=share,
                )
                row = {"phase": phase, **result.summary(), **memory_mb(server.pid)}
                phases[phase].append(row)
                print(row, flush=True)
    atomic.write_json(Path(args.out).with_suffix(".json"), summarise(args, phases))
    atomic.write_text(Path(args.out).with_suffix(".md"), table(args, phases))
    print(table(args, phases))


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def summarise(args: argparse.Namespace, phases: dict[str, list[dict]]) -> dict:
    clean, abuse = phases["clean"], phases["abuse"]
    server_errors = sum(
        n
        for row in clean + abuse
        for statuses in (row["statuses"], row["abusive_statuses"])
        for status, n in statuses.items()
        if int(status) >= 500 and int(status) != 503  # 503 + Retry-After is back-pressure
    )
    return {
        "model_dir": args.model_dir,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "abuse_share": args.abuse_share,
        "well_formed": WELL_FORMED,
        "phases": phases,
        "throughput_kept": _median(abuse, "requests_per_s") / _median(clean, "requests_per_s"),
        "p95_ratio": _median(abuse, "latency_p95_ms") / _median(clean, "latency_p95_ms"),
        "server_errors": server_errors,
        "transport_errors": sum(r["transport_errors"] for r in clean + abuse),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in clean + abuse),
    }


def table(args: argparse.Namespace, phases: dict[str, list[dict]]) -> str:
    s = summarise(args, phases)
    lines = [
        "| phase | well-formed req/s | p50 ms | p95 ms | well-formed statuses | hostile statuses | server RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for rows in zip(phases["clean"], phases["abuse"], strict=True):
        for r in rows:
            lines.append(
                f"| {r['phase']} | {r['requests_per_s']:.1f} | {r['latency_p50_ms']:.0f} | "
                f"{r['latency_p95_ms']:.0f} | {r['statuses']} | {r['abusive_statuses'] or '-'} | "
                f"{r['rss_mb']:.0f} |"
            )
    lines.append(
        f"\nUnder {args.abuse_share:.0%} hostile requests, well-formed requests kept "
        f"**{s['throughput_kept']:.0%}** of their clean throughput (aim ≥ 80 %) and their p95 "
        f"was **{s['p95_ratio']:.2f}×** the clean p95 (aim ≤ 2×); medians of {args.rounds} "
        f"interleaved rounds of {args.seconds:g} s, {args.clients} clients, model "
        f"{args.model_dir}. 5xx other than 503 back-pressure: {s['server_errors']}; transport "
        f"errors: {s['transport_errors']}; server peak RSS {s['peak_rss_mb']:.0f} MB."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
