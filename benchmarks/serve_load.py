"""Server throughput and p95 latency at 1/4/16/64 concurrent clients, and what dynamic
batching buys: the same load with ``max_batch=1`` (sequential) vs the default.

Loopback only; each point runs for a fixed time. Uses the demo model (``runs/demo``) or
any exported LM dir.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgezoo import atomic

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    import runtime
    from runtime.load_test import hammer, running_server
    from runtime.server import create_app

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", nargs="?", default="runs/demo")
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "serve_load"))
    args = p.parse_args()
    lm = runtime.load(args.model_dir, backend="ort-cpu", threads=args.threads)
    body = {"prompt": "def main():", "max_tokens": args.max_tokens, "temperature": 0}
    rows = []
    for max_batch in (8, 1):
        app = create_app(lm, model_name="m", max_queue=256, max_batch=max_batch)
        with running_server(app) as url:
            for clients in [int(c) for c in args.clients.split(",")]:
                if max_batch == 1 and clients != 16:
                    continue  # the sequential baseline is only needed at 16 clients
                rows.append(
                    {"max_batch": max_batch, **hammer(url, clients, args.seconds, body).summary()}
                )
                print(rows[-1])
    base = next(r for r in rows if r["max_batch"] == 1)
    batched = next(r for r in rows if r["max_batch"] == 8 and r["clients"] == 16)
    result = {
        "model_dir": args.model_dir,
        "variant": lm.variant,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "rows": rows,
        "batching_speedup_16_clients": batched["tokens_per_s"] / base["tokens_per_s"],
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
    lines.append(
        f"\nDynamic batching at 16 clients: {result['batching_speedup_16_clients']:.2f}× the tokens/s of "
        f"sequential serving (max_batch=1). Model {args.model_dir} ({lm.variant}), {args.max_tokens} tokens per request."
    )
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
