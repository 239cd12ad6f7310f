"""Per trained size: bytes, perplexity change and batch-1 decode latency of every variant.

Uses the models the equal-tokens sweep (``python -m benchmarks.sweep --mode tokens``)
trained on the built-in corpus — every size on the same tokens with its own learning
rate, so quality rises with size and means something — exports each, makes fp16 / int8 /
int8-static / int4 variants and, for the sizes in ``--prune``, a 25 %-head + 30 %-MLP
pruned model with a short recovery fine-tune, then tabulates what ``edgezoo quantize``
measured (one run per model) and draws quality against decode latency over sizes ×
precisions with its Pareto front.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from edgezoo import atomic, manifest
from edgezoo.errors import ConfigError

RESULTS = Path(__file__).parent / "results"


def sweep_models(sweep_json: Path, sizes: list[str] | None) -> dict[str, Path]:
    """size → trained model dir, from a tokens sweep's results (smallest size first)."""
    if not sweep_json.is_file():
        raise ConfigError(
            f"{sweep_json} is missing: run `python -m benchmarks.sweep --mode tokens` first."
        )
    runs = sorted(
        json.loads(sweep_json.read_text())["runs"], key=lambda r: r["non_embedding_params"]
    )
    found = {r["size"]: Path(r["model_dir"]) for r in runs}
    unknown = [s for s in sizes or [] if s not in found]
    if unknown:
        raise ConfigError(f"{sweep_json} has no run for {unknown}; it has {', '.join(found)}")
    return {s: d for s, d in found.items() if sizes is None or s in sizes}


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


def front_points(rows: list[dict]) -> list[dict]:
    """Every (size, variant) as a point: decode ms/token and held-out loss (ln perplexity)."""
    return [
        {
            "size": r["size"],
            "variant": r["variant"],
            "precision": r["precision"],
            "ms": r["ms_per_token"],
            "loss": math.log(r["ppl"]),
        }
        for r in rows
    ]


def plot(points: list[dict], front: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = list(dict.fromkeys(p["size"] for p in points))
    markers = {"fp32": "o", "fp16": "s", "int8": "^", "int4": "v"}
    for i, size in enumerate(sizes):
        for prec, m in markers.items():
            mine = [p for p in points if p["size"] == size and p["precision"] == prec]
            if mine:
                ax.scatter(
                    [p["ms"] for p in mine],
                    [p["loss"] for p in mine],
                    marker=m,
                    color=f"C{i % 10}",
                    s=28,
                    label=size
                    if prec == "fp32"
                    or not any(q["precision"] == "fp32" for q in points if q["size"] == size)
                    else None,
                )
    ax.plot([p["ms"] for p in front], [p["loss"] for p in front], "k--", lw=1, label="Pareto front")
    for p in front:
        ax.annotate(f"{p['size']} {p['variant']}", (p["ms"], p["loss"]), fontsize=6)
    ax.set(
        xscale="log",
        xlabel="decode ms / token (batch 1, ort-cpu)",
        ylabel="held-out loss (ln perplexity)",
        title="quality vs latency: sizes × precisions (o fp32, s fp16, ^ int8, v int4)",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sweep",
        default=str(RESULTS / "sweep_tokens.json"),
        help="the tokens sweep's results: which model dir holds each size",
    )
    p.add_argument("--sizes", help="sizes to measure (default: every size of the sweep)")
    p.add_argument(
        "--prune",
        default="micro",
        help="sizes to also prune (25 %% heads, 30 %% MLP) and fine-tune",
    )
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--out", default=str(RESULTS / "quantize_sizes"))
    args = p.parse_args()
    sweep_shown = os.path.relpath(args.sweep)  # results name a repository path, not this machine's
    rows = []
    wanted = [s for s in args.sizes.split(",") if s] if args.sizes else None
    for size, model_dir in sweep_models(Path(args.sweep), wanted).items():
        if not (model_dir / "model.safetensors").is_file():
            raise ConfigError(
                f"{model_dir} has no trained model: rerun `python -m benchmarks.sweep --mode tokens`"
            )
        rows += rows_for(size, quantize_all(model_dir))
        if size in args.prune.split(","):
            from edgezoo.quantize.prune import prune_dir

            pruned = model_dir.parent / f"{model_dir.name}-pruned"
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
    from benchmarks.sweep import pareto_front

    points = front_points(rows)
    front = pareto_front(points)
    out = Path(args.out)
    atomic.write_json(
        out.with_suffix(".json"), {"sweep": sweep_shown, "rows": rows, "pareto": front}
    )
    plot(points, front, out.with_suffix(".png"))
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
        "\nPareto front (no other size × variant both faster and better): "
        + " → ".join(
            f"{q['size']} {q['variant']} ({q['ms']:.3f} ms, loss {q['loss']:.3f})" for q in front
        )
        + "."
    )
    lines.append(
        f"\nModels: the equal-tokens sweep's ({sweep_shown}). Perplexity from `edgezoo quantize` on "
        "the model's held-out stdlib tokens in its training-context windows; latency batch 1, "
        "2 threads, ort-cpu, on a shared 2-core machine (ratios within a row are what hold)."
    )
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
