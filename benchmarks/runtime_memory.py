"""Where the runtime's resident memory goes: peak RSS of loading a graph and decoding with
it, per size × precision, with ONNX Runtime's weight prepacking on (default) and off, each
in a fresh process; next to the graph's file size.

    python -m benchmarks.runtime_memory --sizes nano,small

Prepacking keeps a second, kernel-friendly copy of MatMul weights. The table shows what it
costs in memory and buys in speed for each precision (the decision to keep it is made from
these numbers, not assumed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from edgezoo import atomic, manifest

from . import page_cache
from .bench import prepare

RESULTS = Path(__file__).parent / "results"

CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
path, variant, prepack = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if not prepack:
    class Options(ort.SessionOptions):
        def __init__(self):
            super().__init__()
            self.add_session_config_entry("session.disable_prepacking", "1")
    ort.SessionOptions = Options
def rss_mb(field="VmRSS"):  # VmHWM: this process's peak (ru_maxrss keeps the parent's)
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
from edgezoo import runtime
from edgezoo.runtime.sampling import SamplingParams
before = rss_mb()
lm = runtime.load(path, backend="ort-cpu", variant=variant, threads=2)
loaded = rss_mb()
g = lm.generate("def main(args):", SamplingParams(max_new_tokens=64, ignore_eos=True))
peak = rss_mb("VmHWM")
print(json.dumps({"before_mb": before, "loaded_mb": loaded, "peak_mb": peak,
                  "ms_per_token": 1000 * float(np.median(g.step_s[8:]))}))
"""


def measure(model_dir: Path, variant: str, prepack: bool) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(model_dir), variant, "1" if prepack else "0"]
    page_cache.evict(model_dir)  # cold files: the peak does not depend on the last write
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def file_mb(model_dir: Path, variant: str) -> float:
    entry = manifest.read(model_dir)["variants"][variant]
    return entry["bytes"] / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="nano,small")
    p.add_argument("--variants", default="gqa,gqa-int8,gqa-int4")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default="runs/bench")
    p.add_argument("--out", default=str(RESULTS / "runtime_memory"))
    args = p.parse_args()
    rows = []
    for size in args.sizes.split(","):
        model_dir = prepare(size, Path(args.work))
        for variant in args.variants.split(","):
            runs = {True: [], False: []}
            for _ in range(args.rounds):  # interleaved: the machine drifts
                for prepack in (True, False):
                    runs[prepack].append(measure(model_dir, variant, prepack))
            for prepack, results in runs.items():
                row = {"size": size, "variant": variant, "prepack": prepack}
                row["file_mb"] = file_mb(model_dir, variant)
                for key in ("before_mb", "loaded_mb", "peak_mb", "ms_per_token"):
                    row[key] = statistics.median(r[key] for r in results)
                row["peak_over_file"] = (row["peak_mb"] - row["before_mb"]) / row["file_mb"]
                rows.append(row)
                print(row, flush=True)
    atomic.write_json(Path(args.out).with_suffix(".json"), {"rows": rows, "rounds": args.rounds})
    atomic.write_text(Path(args.out).with_suffix(".md"), table(rows, args.rounds))
    print(table(rows, args.rounds))


def table(rows: list[dict], rounds: int) -> str:
    lines = [
        "| size | variant | prepack | file MB | RSS after load MB | peak RSS MB | "
        "(peak − baseline) / file | ms/token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['variant']} | {'on' if r['prepack'] else 'off'} | "
            f"{r['file_mb']:.0f} | {r['loaded_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['peak_over_file']:.2f}× | {r['ms_per_token']:.2f} |"
        )
    base = statistics.median(r["before_mb"] for r in rows)
    lines.append(
        f"\nFresh process per measurement (load, then 64 greedy tokens; batch 1, 2 threads), "
        f"medians of {rounds} interleaved rounds; baseline = RSS after imports, before loading "
        f"(~{base:.0f} MB: Python, numpy, onnxruntime, tokenizers). Random-init weights "
        f"(`benchmarks.bench.prepare`). Weights are memory-mapped from `<name>.data`, so RSS "
        "after load counts only the pages read so far; each file's cached pages are dropped "
        "before its process starts. fp32 with prepacking: the tied embedding table is held "
        "twice after load (the Gather's table and the LM head's packed copy) and three times "
        "during it (ONNX Runtime folds the head's transpose before packing it) — the peak "
        "above the after-load RSS."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
