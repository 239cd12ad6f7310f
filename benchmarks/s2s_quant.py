"""Quantized encoder–decoder variants: chrF of fp32, int8, int4 and fp16 on held-out pairs.

Trains an s2s nano on ``builtin:stdlib-doc`` (unless ``--model-dir`` holds one already),
exports it, runs ``edgezoo quantize --to int8,int4,fp16`` and tabulates what the quantize
gate measured: size, greedy chrF / BLEU / exact match on every held-out pair (the same
pairs and decoding as training's ``eval.json``), how many targets equal fp32's, batch-1
decode speed in interleaved rounds, and the copy-the-function-name baseline.

    python -m benchmarks.s2s_quant             # writes benchmarks/results/s2s_quant.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from edgezoo import atomic, manifest

RESULTS = Path(__file__).parent / "results"
TRAIN = [
    "--family", "s2s", "--size", "nano", "--context", "128", "--batch-size", "32",
    "--vocab-size", "2048", "--warmup-steps", "10", "--eval-every", "100000", "--no-progress",
]  # fmt: skip


def prepare(model_dir: Path, steps: int) -> None:
    """Train (``edgezoo train``) and export (``edgezoo export``) where not done yet."""
    edgezoo = [sys.executable, "-m", "edgezoo.cli"]
    if not (model_dir / "model.safetensors").is_file():
        cmd = [*edgezoo, "train", *TRAIN, "--out", str(model_dir), "--steps", str(steps)]
        subprocess.run(cmd, check=True)
    if "fp32" not in manifest.read(model_dir)["variants"]:
        subprocess.run([*edgezoo, "export", str(model_dir)], check=True)


def quantize(model_dir: Path, rounds: int) -> dict[str, dict]:
    """int8, int4 then fp16; the last call measures and gates all of them in one run."""
    from edgezoo.quantize.pipeline import QuantizeOptions, quantize_model

    opts = QuantizeOptions(speed_rounds=rounds)
    quantize_model(model_dir, "int8", opts, measure_all=False)
    quantize_model(model_dir, "int4", opts, measure_all=False)
    return quantize_model(model_dir, "fp16", opts)


def rows_for(variants: dict[str, dict]) -> list[dict]:
    fp32 = variants["fp32"]
    rows = []
    for name in ("fp32", "int8", "int4", "fp16"):
        e = variants[name]
        q, agree = e["quality"], e.get("greedy_agreement")
        gate = e.get("gate", {}).get("ort-cpu", {})
        rows.append(
            {
                "variant": name,
                "method": e.get("method", "export"),
                "mb": e["bytes"] / 1e6,
                "chrf": q["chrf"],
                "chrf_change": q["chrf"] - fp32["quality"]["chrf"],
                "bleu": q["bleu"],
                "exact_match": q["exact_match"],
                "same_target_as_fp32": agree["identical"] if agree else None,
                "same_prefix_tokens": agree["prefix_tokens"] if agree else None,
                "of_tokens": agree["of_tokens"] if agree else None,
                "pairs": q["examples"],
                "max_abs_logit_diff": e.get("max_abs_diff_vs_fp32", 0.0),
                "decode_ms_per_token": e["latency"]["decode_ms_per_token_p50"],
                "first_token_ms": e["latency"]["first_token_ms"],
                "rounds_fp32_ms": gate.get("speed", {}).get("baseline_median_ms"),
                "rounds_variant_ms": gate.get("speed", {}).get("variant_median_ms"),
                "speedup_rounds": gate.get("speedup"),
                "speed_verdict": gate.get("speed_verdict"),
                "within_budget": gate.get("within_budget"),
                "recommended": bool(e.get("recommended")),
            }
        )
    return rows


def table(rows: list[dict], meta: dict) -> str:
    lines = [
        "| variant | method | MB | chrF | Δ chrF | BLEU | exact match | target = fp32 | "
        "ms/token: fp32 → variant | × fp32 speed | gate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["variant"] == "fp32":
            same, ms, speed, gate = "ref", "ref", "ref", "baseline"
        else:
            same = f"{r['same_target_as_fp32']}/{r['pairs']}"
            ms = f"{r['rounds_fp32_ms']:.3f} → {r['rounds_variant_ms']:.3f}"
            speed = f"{r['speedup_rounds']:.2f} ({r['speed_verdict']})"
            budget = "within" if r["within_budget"] else "over"
            gate = "recommended" if r["recommended"] else f"not recommended ({budget} budget)"
        lines.append(
            f"| {r['variant']} | {r['method']} | {r['mb']:.2f} | {r['chrf']:.2f} | "
            f"{r['chrf_change']:+.2f} | {r['bleu']:.2f} | {r['exact_match']:.3f} | {same} | "
            f"{ms} | {speed} | {gate} |"
        )
    return "\n".join(
        [
            "# Quantized s2s variants: held-out chrF",
            "",
            f"Model: `{meta['model_dir']}` (s2s nano, {meta['train_steps']} steps on "
            f"`builtin:stdlib-doc`; PyTorch held-out chrF {meta['pytorch_chrf']:.2f}). "
            f"Quality: greedy targets for all {rows[0]['pairs']} held-out pairs; copy-the-name "
            f"baseline chrF {meta['baseline_chrf']:.2f}. Speed: decode ms/token at batch 1 "
            f"(64 decoder steps, 2 threads), medians of {meta['rounds']} rounds interleaved "
            f"with fp32, on {meta['machine']['cores']} cores ({meta['machine']['cpu']}) shared "
            f"with other jobs (load average {meta['load_average']:.1f}): speed is noisy here. "
            "Gate: recommended if faster by 5 % and chrF within 1 point of fp32.",
            "",
            *lines,
            "",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="runs/s2s-nano-quant")
    p.add_argument("--steps", type=int, default=160, help="training steps if it must train")
    p.add_argument("--rounds", type=int, default=7, help="interleaved speed rounds")
    p.add_argument("--out", default=str(RESULTS / "s2s_quant"))
    args = p.parse_args()
    model_dir = Path(args.model_dir)
    prepare(model_dir, args.steps)
    variants = quantize(model_dir, args.rounds)
    from benchmarks.bench import machine

    evaluated = json.loads((model_dir / "eval.json").read_text())
    run = json.loads((model_dir / "run.json").read_text())
    rows = rows_for(variants)
    meta = {
        "model_dir": str(model_dir),
        "train_steps": run.get("steps"),
        "pytorch_chrf": evaluated.get("val_chrf", evaluated.get("chrf")),
        "baseline_chrf": variants["fp32"]["quality"]["baseline_chrf"],
        "rounds": args.rounds,
        "machine": machine(),
        "load_average": os.getloadavg()[0],
    }
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows})
    atomic.write_text(out.with_suffix(".md"), table(rows, meta))
    print(table(rows, meta))


if __name__ == "__main__":
    main()
