"""Export and quantize cost per preset: time and peak memory against the weights.

Each step runs in a fresh process so every peak RSS is its own: build the random-init
model dir; ``to_onnx`` (portable, ORT-optimised and GQA graphs, each validated); quantize
to int8 and int4 (build and validate only: quality needs a trained model). Also the CPU
decode speed of the three fp32 graphs, batch 1. Writes JSON, a markdown table and a plot
of peak RSS against parameters (the line the export and quantize promise: 3× the fp32
weights plus a fixed overhead).

    python -m benchmarks.export_cost --sizes nano,micro,mini,small,medium,base,large,xl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from edgezoo import atomic

RESULTS = Path(__file__).parent / "results"

BUILD = """
import sys, torch
from pathlib import Path
from edgezoo.zoo.modeldir import build_model, save_model_dir
from edgezoo.zoo.presets import make_config
from edgezoo.zoo.tokenizer import save_tokenizer, train_tokenizer
size, out = sys.argv[1], Path(sys.argv[2])
torch.manual_seed(0)
cfg = make_config("lm", size)
save_model_dir(build_model(cfg).eval(), out)
text = ["def f(x):\\n    return x\\n" * 200]
save_tokenizer(train_tokenizer(text, cfg.vocab_size), out, cfg.max_position_embeddings)
"""

EXPORT = """
import json, resource, sys, time
from pathlib import Path
from edgezoo.export.onnx_export import to_onnx
from edgezoo.zoo.modeldir import fp32_weight_bytes
out = Path(sys.argv[1])
t0 = time.perf_counter()
result = to_onnx(out, greedy_steps=8)
print(json.dumps({"export_s": time.perf_counter() - t0,
                  "export_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "weight_bytes": fp32_weight_bytes(out),
                  "variants": {n: {"bytes": v["bytes"], "fusions": v.get("fusions")}
                               for n, v in result.variants.items()},
                  "notes": result.notes}))
"""

QUANTIZE = """
import json, resource, sys, time
from pathlib import Path
from edgezoo.quantize.pipeline import quantize_model
out = Path(sys.argv[1])
t0 = time.perf_counter()
for to in ("int8", "int4"):
    variants = quantize_model(out, to, measure_all=False)
print(json.dumps({"quantize_s": time.perf_counter() - t0,
                  "quantize_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch_loaded": "torch" in sys.modules,
                  "quantized_bytes": {n: v["bytes"] for n, v in variants.items()
                                      if v["precision"] in ("int8", "int4")}}))
"""

DECODE = """
import json, statistics, sys
from pathlib import Path
from edgezoo import manifest
from edgezoo.runtime.api import load_variant
from edgezoo.runtime.timing import time_decode
out = Path(sys.argv[1])
speed = {}
for name in ("fp32", "opt", "gqa"):
    if name in manifest.read(out)["variants"]:
        lm = load_variant(out, name, threads=2)
        steps = time_decode(lm, [[1] + list(range(10, 41))], 32, 2).step_s
        speed[name] = statistics.median(steps) * 1000
        del lm
print(json.dumps({"decode_ms": speed}))
"""


def _child(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}


def measure(size: str, work: Path, decode: bool) -> dict:
    from edgezoo.zoo.presets import count_params, make_config

    model_dir = work / size
    row: dict = {"size": size, "params": count_params(make_config("lm", size))}
    try:
        _child(BUILD, size, str(model_dir))
        row.update(_child(EXPORT, str(model_dir)))
        row.update(_child(QUANTIZE, str(model_dir)))
        if decode:
            row.update(_child(DECODE, str(model_dir)))
    except RuntimeError as e:
        row["error"] = str(e)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| size | params | fp32 weights GB | export s | export peak GB | × weights | quantize int8+int4 s | quantize peak GB | × weights | portable ms/token | ORT-optimised | GQA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r and "export_s" not in r:
            lines.append(
                f"| {r['size']} | {r['params'] / 1e6:.0f}M | failed: {r['error'][:80]} |" + " |" * 9
            )
            continue
        w = r["weight_bytes"] / 1e9
        d = r.get("decode_ms", {})
        q_s = f"{r['quantize_s']:.0f}" if "quantize_s" in r else "failed"
        q_gb = r.get("quantize_peak_mb", float("nan")) / 1e3
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.0f}M | {w:.2f} | {r['export_s']:.0f} | "
            f"{r['export_peak_mb'] / 1e3:.2f} | {r['export_peak_mb'] / 1e3 / w:.1f} | {q_s} | "
            f"{q_gb:.2f} | {q_gb / w:.1f} | {d.get('fp32', float('nan')):.2f} | "
            f"{d.get('opt', float('nan')):.2f} | {d.get('gqa', float('nan')):.2f} |"
        )
    lines.append(
        "\nRandom-init weights; every step in its own process (peak RSS of that process). Export "
        "= portable + ORT-optimised + GQA graphs, each validated (8 greedy steps); quantize = "
        "int8 (dynamic + weight-only) and int4, built and validated, no quality run. Decode: "
        'batch 1, 32-token prompt, 32 new tokens, 2 threads, ort-cpu. "× weights" is peak RSS '
        "over the fp32 weights, fixed overhead included (about 0.45 GB for export: torch, the "
        "exporter and ORT; 0.1 GB for quantize), which is why it is large below `small`; the "
        "plot shows the memory line the export and quantize check before they start "
        "(3 × fp32 weights + 1 GB)."
    )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "export_peak_mb" in r]
    params = [r["params"] / 1e6 for r in ok]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(params, [r["export_peak_mb"] / 1e3 for r in ok], "o-", label="export peak RSS")
    q = [r for r in ok if "quantize_peak_mb" in r]
    ax.plot(
        [r["params"] / 1e6 for r in q],
        [r["quantize_peak_mb"] / 1e3 for r in q],
        "s-",
        label="quantize int8+int4 peak RSS",
    )
    ax.plot(
        params,
        [3 * r["weight_bytes"] / 1e9 + 1 for r in ok],
        "k--",
        label="3 × fp32 weights + 1 GB",
    )
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("GB")
    ax.set_title("Export and quantize memory per preset")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.export_cost", description=__doc__.splitlines()[0]
    )
    p.add_argument("--sizes", default="nano,micro,mini,small,medium,base,large,xl")
    p.add_argument(
        "--no-decode", dest="decode", action="store_false", help="skip the decode timing"
    )
    p.add_argument("--out", default=str(RESULTS / "export_cost"))
    args = p.parse_args()
    rows = []
    out = Path(args.out)
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(size, Path(tmp), args.decode))
        print(json.dumps(rows[-1]), flush=True)
        atomic.write_json(out.with_suffix(".json"), {"rows": rows})  # partial results survive
    atomic.write_text(out.with_suffix(".md"), markdown(rows))
    plot(rows, out.with_suffix(".png"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
