"""Training throughput with 1 vs 2 processes (DDP, gloo, CPU): scaling efficiency.

On this 2-core machine both processes share the same cores, so the number says what DDP
costs in communication here, not what it gains across GPUs (NCCL over NVLink/InfiniBand
could not be measured without GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgezoo import atomic

RESULTS = Path(__file__).parent / "results"


def run(nproc: int, out: Path, steps: int, size: str, data: str) -> float:
    args = [
        "--size",
        size,
        "--data",
        data,
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        "16",
        "--context",
        "128",
        "--log-every",
        "1",
        "--eval-every",
        "100000",
        "--checkpoint-every",
        "100000",
        "--no-progress",
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "edgezoo.zoo.train", *args]
    else:
        from edgezoo.zoo.launch import torchrun_command

        cmd = torchrun_command(nproc, args)
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ})
    rows = [json.loads(line) for line in (out / "training.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][steps // 4 :]  # skip warm-up
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="micro")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--data", default="builtin:stdlib")
    p.add_argument("--out", default=str(RESULTS / "ddp_scaling"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, Path(tmp) / "one", args.steps, args.size, args.data)
        two = run(2, Path(tmp) / "two", args.steps, args.size, args.data)
    result = {
        "size": args.size,
        "tokens_per_s_1proc": one,
        "tokens_per_s_2proc": two,
        "speedup": two / one,
        "scaling_efficiency": two / (2 * one),
        "cores": os.cpu_count(),
        "backend": "gloo (CPU)",
        "note": "both processes share 2 CPU cores; multi-GPU scaling was not measurable here",
    }
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), result)
    md = (
        f"| size | 1 process tok/s | 2 processes tok/s | speed-up | efficiency |\n|---|---|---|---|---|\n"
        f"| {args.size} | {one:,.0f} | {two:,.0f} | {two / one:.2f}× | {two / (2 * one):.0%} |\n\n{result['note']}.\n"
    )
    atomic.write_text(out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
