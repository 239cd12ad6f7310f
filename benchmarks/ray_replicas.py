"""Tokens/s of `edgezoo serve` on Ray Serve with 1 vs 2 replicas, beside the plain server.

Three servers run at once, each its own process tree, each given the machine's cores:
the plain server (`edgezoo serve`, one uvicorn process, ``--threads`` = all cores), one Ray
replica holding all cores, and two Ray replicas holding half each (``--cpus-per-replica``,
so one ORT thread per core in every setup). The same load (``--clients`` threads sending
non-streamed completions back to back) hits each in turn, in interleaved rounds, and the
medians are compared: this machine's timing drifts by ±20 % over minutes.

What it means depends on the cores: on one machine, replicas split the same cores, and
Ray's proxy (an extra process that parses and forwards every request) takes its share of
them, so more replicas add capacity only where cores sit idle. On a cluster every node
adds its own cores. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edgezoo import atomic

RESULTS = Path(__file__).parent / "results"
READY_S = 240


@contextlib.contextmanager
def server(model_dir: str, flags: list[str], ready_line: str) -> Iterator[str]:
    """``edgezoo serve model_dir *flags`` on a free loopback port; yields its URL once the
    server printed ``ready_line``. Ctrl-C on the way out (Ray stops its processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "edgezoo.cli", "serve", model_dir, "--port", str(port)]
    cmd += ["--max-queue", "256", "--backend", "ort-cpu", "--log-level", "warning", *flags]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            seen.append(line)
            if ready_line in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(READY_S):
            raise RuntimeError(f"`{' '.join(cmd)}` not ready in {READY_S} s:\n{''.join(seen)}")
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_healthy(url: str, timeout_s: float = 60) -> None:
    """Until /health answers 200 (the plain server prints its last line before it binds)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/health did not answer 200 within {timeout_s} s")
        time.sleep(0.2)


def main() -> None:
    from edgezoo.runtime.load_test import hammer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", nargs="?", default="runs/demo")
    p.add_argument("--variant", default="auto")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument(
        "--note", default="", help="a line for the table's caption (how loaded the machine was)"
    )
    p.add_argument("--out", default=str(RESULTS / "ray_replicas"))
    p.add_argument(
        "--report-only", action="store_true", help="re-write OUT.md from OUT.json, measure nothing"
    )
    args = p.parse_args()
    if args.report_only:
        out = Path(args.out)
        write_markdown(json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md"))
        return
    cores = os.cpu_count() or 1
    half = max(cores / 2, 0.5)
    common = ["--variant", args.variant]
    setups = {
        "plain (no Ray)": (["--threads", str(cores)], "batching"),
        "Ray, 1 replica": (
            ["--ray", "--replicas", "1", "--cpus-per-replica", str(cores)],
            "1 replica on",
        ),
        "Ray, 2 replicas": (
            ["--ray", "--replicas", "2", "--cpus-per-replica", f"{half:g}"],
            "2 replicas on",
        ),
    }
    body = {"prompt": "def main():", "max_tokens": args.max_tokens, "temperature": 0}
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, (flags, ready_line) in setups.items():
            urls[name] = stack.enter_context(server(args.model_dir, common + flags, ready_line))
            print(f"{name}: up at {urls[name]}", flush=True)
        for url in urls.values():
            hammer(url, 4, 1.0, body)  # warm-up: sessions, routers, connections
        for round_ in range(args.rounds):
            for name, url in urls.items():
                summary = hammer(url, args.clients, args.seconds, body).summary()
                runs[name].append(summary)
                print({"round": round_, "setup": name, **summary}, flush=True)
    medians = {
        name: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
            "latency_p50_ms": statistics.median(r["latency_p50_ms"] or 0 for r in rows),
            "latency_p95_ms": statistics.median(r["latency_p95_ms"] or 0 for r in rows),
            "non_200": sum(n for r in rows for s, n in r["statuses"].items() if s != 200),
            "transport_errors": sum(r["transport_errors"] for r in rows),
        }
        for name, rows in runs.items()
    }
    one, two = medians["Ray, 1 replica"], medians["Ray, 2 replicas"]
    plain = medians["plain (no Ray)"]
    result = {
        "model_dir": args.model_dir,
        "variant": args.variant,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "cores": cores,
        "machine": platform.processor() or platform.machine(),
        "note": args.note,
        "setups": {name: flags for name, (flags, _) in setups.items()},
        "rounds_raw": runs,
        "medians": medians,
        "two_vs_one_replica": two["tokens_per_s"] / one["tokens_per_s"],
        "one_replica_vs_plain": one["tokens_per_s"] / plain["tokens_per_s"],
    }
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), result)
    write_markdown(result, out.with_suffix(".md"))


def write_markdown(result: dict, path: Path) -> None:
    """The table and what it means, from the JSON (``--report-only`` re-renders it)."""
    medians, cores = result["medians"], result["cores"]
    lines = [
        "| setup | flags | tokens/s | p50 ms | p95 ms | non-200 | transport errors |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | `{' '.join(result['setups'][name])}` | {m['tokens_per_s']:.0f} | "
        f"{m['latency_p50_ms']:.0f} | {m['latency_p95_ms']:.0f} | {m['non_200']} | "
        f"{m['transport_errors']} |"
        for name, m in medians.items()
    ]
    two_vs_plain = (
        medians["Ray, 2 replicas"]["tokens_per_s"] / medians["plain (no Ray)"]["tokens_per_s"]
    )
    lines.append(
        f"\nMedians of {result['rounds']} interleaved rounds of {result['seconds']:g} s, "
        f"{result['clients']} clients sending {result['max_tokens']}-token completions back to "
        f"back; model {result['model_dir']} (--variant {result['variant']}); {cores} cores "
        "shared by the three servers (all up at once, idle but for the one measured) and the "
        f"load generator. 2 replicas give {result['two_vs_one_replica']:.2f}× the tokens/s of "
        f"1 replica; 1 Ray replica gives {result['one_replica_vs_plain']:.2f}× the plain "
        f"server, 2 replicas {two_vs_plain:.2f}×.\n\n"
        f"On {cores} cores the replicas split the same cores (one ORT thread per core in every "
        "setup), and Ray's proxy, a separate process that parses and forwards each request, "
        "competes with them for the cores; the load generator does too. "
        + verdict(result["two_vs_one_replica"], result["one_replica_vs_plain"], two_vs_plain)
        + (f"\n\n{result['note']}" if result.get("note") else "")
    )
    atomic.write_text(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


def verdict(two_vs_one: float, ray_vs_plain: float, two_vs_plain: float) -> str:
    """What the ratios say, in words (within ±5 % counts as the same)."""
    if two_vs_one > 1.05:
        scale = (
            f"A second replica added {two_vs_one - 1:.0%}, most likely because two processes overlap one's Python "
            "work (HTTP, scheduling, sampling, each under its own GIL) with the other's model "
            "calls, which one replica does in turn."
        )
    elif two_vs_one < 0.95:
        scale = f"A second replica cost {1 - two_vs_one:.0%}: the cores were already busy."
    else:
        scale = "A second replica changed nothing: the cores were already busy."
    if ray_vs_plain < 0.95:
        proxy = f"Ray's proxy hop cost {1 - ray_vs_plain:.0%} at one replica"
    else:
        proxy = "Ray's proxy hop cost no measurable throughput at one replica"
    if two_vs_plain < 0.95:
        proxy += (
            f", and the plain server still beat 2 replicas by {1 / two_vs_plain - 1:.0%}: on "
            "one machine it is the faster choice."
        )
    else:
        proxy += f"; 2 replicas gave {two_vs_plain:.2f}× the plain server."
    return (
        f"{scale} {proxy} Replicas pay off where they bring their own cores (more nodes in a "
        "Ray cluster), and where one may die without taking the service down."
    )


if __name__ == "__main__":
    main()
