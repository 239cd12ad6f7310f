"""Export time and peak memory per preset (random-init weights), each in a fresh process
so every peak RSS is its own. Also the CPU decode speed of the optimised graphs (ORT
transformer optimizer; GroupQueryAttention) relative to the portable graph, batch 1."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from edgezoo import atomic

RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, resource, statistics, sys, time, torch
from pathlib import Path
from edgezoo.export.onnx_export import to_onnx
from edgezoo.zoo.modeldir import build_model, save_model_dir
from edgezoo.zoo.presets import make_config
from edgezoo.zoo.tokenizer import save_tokenizer, train_tokenizer
size, out = sys.argv[1], Path(sys.argv[2])
torch.manual_seed(0)
cfg = make_config("lm", size)
save_model_dir(build_model(cfg).eval(), out)
save_tokenizer(train_tokenizer(["def f(x):\\n    return x\\n" * 200], cfg.vocab_size), out, cfg.max_position_embeddings)
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
result = to_onnx(out, greedy_steps=8)
export_s = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from edgezoo.runtime.timing import time_decode
from edgezoo.runtime.api import load_variant
speed = {}
for name in result.variants:
    steps, _, _ = time_decode(load_variant(out, name, threads=2), [[1] + list(range(10, 41))], 32, 3)
    speed[name] = statistics.median(steps) * 1000
print(json.dumps({"size": size, "export_s": export_s, "peak_rss_mb": peak_mb, "rss_before_export_mb": base_rss / 1024,
                  "variants": {n: {"graph": v["graph"], "bytes": v["bytes"], "fusions": v.get("fusions")} for n, v in result.variants.items()},
                  "decode_ms": speed, "notes": result.notes}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="nano,micro,mini,small,medium,base")
    p.add_argument("--out", default=str(RESULTS / "export_cost"))
    args = p.parse_args()
    rows = []
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, size, str(Path(tmp) / size)],
                capture_output=True,
                text=True,
            )
        if done.returncode:
            rows.append(
                {
                    "size": size,
                    "error": done.stderr.strip().splitlines()[-1]
                    if done.stderr.strip()
                    else str(done.returncode),
                }
            )
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), {"rows": rows})
    lines = [
        "| size | export s (all graphs + validation) | peak RSS MB | portable ms/token | ORT-optimized | GQA | GQA speed-up | fusions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        d = r["decode_ms"]
        fusions = r["variants"].get("opt", {}).get("fusions") or {}
        lines.append(
            f"| {r['size']} | {r['export_s']:.0f} | {r['peak_rss_mb']:.0f} | {d.get('fp32', float('nan')):.2f} | "
            f"{d.get('opt', float('nan')):.2f} | {d.get('gqa', float('nan')):.2f} | {d['fp32'] / d['gqa']:.2f}× | "
            f"{', '.join(f'{k} {v}' for k, v in fusions.items())} |"
        )
    lines.append(
        "\nBatch 1, 32-token prompt, 32 new tokens, 2 threads, ort-cpu; random-init weights."
    )
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
