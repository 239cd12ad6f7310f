"""Server throughput and p95 latency at 1/4/16/64 concurrent clients, and what dynamic
batching buys: the same load with ``max_batch=1`` (sequential) vs batched serving.

The server runs as its own process (``edgezoo serve``), as it would in deployment: in one
process, the load generator's client threads and the server would share one GIL and
measure each other. Both still share this machine's cores. Loopback only; each point runs
for a fixed time. Uses the demo model (``runs/demo``) or any exported LM dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from edgezoo import atomic

RESULTS = Path(__file__).parent / "results"


class Server(NamedTuple):
    url: str
    pid: int


@contextlib.contextmanager
def server_process(
    model_dir: str,
    max_batch: int,
    threads: int,
    max_queue: int = 256,
    extra: list[str] | None = None,
) -> Iterator[Server]:
    """``edgezoo serve`` (plus ``extra`` flags) on a free loopback port; yields its URL and
    pid once /health answers."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "edgezoo.cli", "serve", model_dir, "--port", str(port)]
    cmd += ["--max-batch", str(max_batch), "--max-queue", str(max_queue), "--threads", str(threads)]
    cmd += ["--backend", "ort-cpu", "--log-level", "warning", *(extra or [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.time() > deadline:
                raise RuntimeError("the server did not come up within 120 s")
            time.sleep(0.2)
        yield Server(url, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    from edgezoo.runtime.load_test import hammer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", nargs="?", default="runs/demo")
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--max-batch",
        default="16,8",
        help="batched settings to measure at every client count (default 16,8); "
        "max_batch=1 is measured at 16 clients as the sequential baseline",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds for the speed-up (default 3)"
    )
    p.add_argument("--out", default=str(RESULTS / "serve_load"))
    args = p.parse_args()
    body = {"prompt": "def main():", "max_tokens": args.max_tokens, "temperature": 0}
    batched = [int(b) for b in args.max_batch.split(",")]
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    rows, rounds = [], {b: [] for b in [*batched, 1]}
    stream_rounds: dict[int, list[float]] = {b: [] for b in rounds}
    with contextlib.ExitStack() as stack:
        # Every setting's server is up at once (idle ones cost nothing), so the speed-up can
        # be measured in interleaved rounds: this machine's timing drifts by ±20 % over minutes.
        urls = {
            b: stack.enter_context(server_process(args.model_dir, b, args.threads)).url
            for b in rounds
        }
        for url in urls.values():
            hammer(url, 4, 1.0, body)  # warm-up: sessions, thread pools, connections
        for max_batch in batched:
            for clients in [int(c) for c in args.clients.split(",")]:
                summary = hammer(urls[max_batch], clients, args.seconds, body).summary()
                rows.append({"max_batch": max_batch, **summary})
                print(rows[-1], flush=True)
        for _ in range(args.rounds):
            for max_batch, url in urls.items():
                for kind, payload, into in (
                    ("plain", body, rounds),
                    ("stream", stream_body, stream_rounds),
                ):
                    summary = hammer(url, 16, args.seconds, payload).summary()
                    into[max_batch].append(summary["tokens_per_s"])
                    print({"round": kind, "max_batch": max_batch, **summary}, flush=True)
    base = statistics.median(rounds[1])
    speedups = {b: statistics.median(rounds[b]) / base for b in batched}
    stream_base = statistics.median(stream_rounds[1])
    stream_speedups = {b: statistics.median(stream_rounds[b]) / stream_base for b in batched}
    result = {
        "model_dir": args.model_dir,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "server": "separate process (edgezoo serve), load generator in this process",
        "rows": rows,
        "tokens_per_s_16_clients_rounds": {str(b): v for b, v in rounds.items()},
        "batching_speedup_16_clients": {str(b): v for b, v in speedups.items()},
        "stream_tokens_per_s_16_clients_rounds": {str(b): v for b, v in stream_rounds.items()},
        "stream_batching_speedup_16_clients": {str(b): v for b, v in stream_speedups.items()},
    }
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), result)
    lines = [
        "| max_batch | clients | requests/s | tokens/s | p50 ms | p95 ms | statuses |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['max_batch']} | {r['clients']} | {r['requests_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
        f"{r['latency_p50_ms']:.0f} | {r['latency_p95_ms']:.0f} | {r['statuses']} |"
        for r in rows
    ]
    said = ", ".join(f"{s:.2f}× with max_batch={b}" for b, s in speedups.items())
    said_streams = ", ".join(f"{s:.2f}× with max_batch={b}" for b, s in stream_speedups.items())
    lines.append(
        f"\nDynamic batching at 16 clients: {said}, against sequential serving (max_batch=1), "
        f"in tokens/s (medians of {args.rounds} interleaved rounds of {args.seconds:g} s). Model {args.model_dir}, {args.max_tokens} tokens per request, "
        f"{args.threads} ORT threads; the server is its own process (`edgezoo serve`), the "
        f"{os.cpu_count()} cores are shared with the load generator.\n\n"
        f'Streaming requests (`"stream": true`, same load, same rounds): {said_streams}. '
        "Each token is its own server-sent event, so streams gain less than whole answers."
    )
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
