"""Per trained preset: bytes, perplexity change and batch-1 decode latency of every variant.

Uses the models ``python -m benchmarks.sweep`` trained briefly on the built-in corpus (so quality means
something), exports each, makes fp16 / int8 / int8-static / int4 variants — and, for the
sizes in ``--prune``, a 25 %-head + 30 %-MLP pruned model with a short recovery
fine-tune — then tabulates what ``edgezoo quantize`` measured (one run per model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgezoo import atomic, manifest

RESULTS = Path(__file__).parent / "results"


def quantize_all(model_dir: Path) -> dict:
    from edgezoo.export.onnx_export import to_onnx
    from edgezoo.quantize.pipeline import QuantizeOptions, quantize_model

    if "gqa" not in manifest.read(model_dir)["variants"]:
        to_onnx(model_dir, greedy_steps=16, optimize=False)
    opts = QuantizeOptions(calibration_samples=16)
    for target in ("fp16", "int8-static", "int4"):
        quantize_model(model_dir, target, opts, measure_all=False)
    return quantize_model(model_dir, "int8", opts)  # the last call measures and gates every variant


def rows_for(size: str, variants: dict, pruned_of: str | None = None) -> list[dict]:
    base = variants["gqa"]
    out = []
    for name, e in variants.items():
        if "quality" not in e:
            continue
        out.append(
            {
                "size": size if not pruned_of else f"{pruned_of}-pruned",
                "variant": name,
                "precision": e["precision"],
                "graph": e["graph"],
                "mb": e["bytes"] / 1e6,
                "ppl": e["quality"]["perplexity"],
                "ppl_change_pct": (e["quality"]["perplexity"] / base["quality"]["perplexity"] - 1)
                * 100,
                "ms_per_token": e["latency"]["decode_ms_per_token_p50"],
                "speedup_vs_gqa_fp32": base["latency"]["decode_ms_per_token_p50"]
                / e["latency"]["decode_ms_per_token_p50"],
                "greedy_agreement": (e.get("greedy_agreement") or {}).get("matching"),
                "recommended": bool(e.get("recommended")),
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--work",
        default="runs/sweep",
        help="where `python -m benchmarks.sweep` left its trained models",
    )
    p.add_argument("--sizes", default="nano,micro,mini,small,medium")
    p.add_argument(
        "--prune", default="mini", help="sizes to also prune (25 %% heads, 30 %% MLP) and fine-tune"
    )
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--out", default=str(RESULTS / "quantize_sizes"))
    args = p.parse_args()
    rows = []
    for size in [s for s in args.sizes.split(",") if s]:
        model_dir = Path(args.work) / f"sweep-{size}"
        if not (model_dir / "model.safetensors").is_file():
            print(
                f"skip {size}: {model_dir} has no trained model (run python -m benchmarks.sweep first)"
            )
            continue
        rows += rows_for(size, quantize_all(model_dir))
        if size in args.prune.split(","):
            from edgezoo.quantize.prune import prune_dir

            pruned = Path(args.work) / f"sweep-{size}-pruned"
            prune_dir(
                model_dir,
                pruned,
                heads=0.25,
                mlp=0.3,
                finetune_steps=args.finetune_steps,
                force=True,
            )
            pruned_rows = rows_for(size, quantize_all(pruned), pruned_of=size)
            base_ms = next(
                r["ms_per_token"] for r in rows if r["size"] == size and r["variant"] == "gqa"
            )
            base_ppl = next(r["ppl"] for r in rows if r["size"] == size and r["variant"] == "gqa")
            for r in pruned_rows:
                r["vs_unpruned_fp32"] = {
                    "speedup": base_ms / r["ms_per_token"],
                    "ppl_change_pct": (r["ppl"] / base_ppl - 1) * 100,
                }
            rows += pruned_rows
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), {"rows": rows})
    lines = [
        "| model | variant | precision | MB | perplexity | Δ ppl vs fp32 | ms/token | × fp32 (gqa) speed | greedy = fp32 /64 | gate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['variant']} | {r['precision']} | {r['mb']:.1f} | {r['ppl']:.2f} | {r['ppl_change_pct']:+.2f}% | "
            f"{r['ms_per_token']:.3f} | {r['speedup_vs_gqa_fp32']:.2f} | {r['greedy_agreement'] if r['greedy_agreement'] is not None else 'ref'} | "
            f"{'recommended' if r['recommended'] else '–'} |"
        )
    pruned = [r for r in rows if "vs_unpruned_fp32" in r and r["variant"] == "gqa"]
    for r in pruned:
        v = r["vs_unpruned_fp32"]
        lines.append(
            f"\n{r['size']} (fp32 gqa) vs unpruned: {v['speedup']:.2f}× speed, {v['ppl_change_pct']:+.1f}% perplexity."
        )
    lines.append(
        "\nPerplexity on 4,096 held-out stdlib tokens in 128-token windows; latency batch 1, 2 threads, ort-cpu."
    )
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
