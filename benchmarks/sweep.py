"""``python -m benchmarks.sweep``: does quality keep improving with size, and at what latency?

Trains several presets on the same corpus with the *same compute* (FLOPs ≈ 6·N·tokens, so
bigger models see fewer tokens), all with one vocabulary so their losses are comparable,
then fits L(N) = a·N^(−α) + c over non-embedding parameters N and reports α, R² and the
extrapolated loss of the next preset (``--check-next`` trains it to compare). With a bench
results file it also draws the latency-vs-quality Pareto front over sizes × precisions.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from edgezoo import atomic

RESULTS = Path(__file__).parent / "results"


def non_embedding_params(size: str, vocab: int) -> int:
    from edgezoo.zoo.presets import count_params, make_config

    cfg = make_config("lm", size, vocab_size=vocab)
    head = 0 if cfg.tie_word_embeddings else vocab * cfg.hidden_size
    return count_params(cfg) - vocab * cfg.hidden_size - head


def fit_power_law(n: np.ndarray, loss: np.ndarray) -> dict[str, float]:
    """Least squares of log(L − c) on log N over a grid of c; keeps the best R² in L."""
    best = None
    for c in np.linspace(0.0, loss.min() * 0.99, 200):
        slope, intercept = np.polyfit(np.log(n), np.log(loss - c), 1)
        pred = np.exp(intercept) * n**slope + c
        r2 = 1 - np.sum((loss - pred) ** 2) / np.sum((loss - loss.mean()) ** 2)
        if best is None or r2 > best["r2"]:
            best = {
                "a": float(np.exp(intercept)),
                "alpha": float(-slope),
                "c": float(c),
                "r2": float(r2),
            }
    return best


def predict(fit: dict[str, float], n: float) -> float:
    return fit["a"] * n ** (-fit["alpha"]) + fit["c"]


def train_size(
    size: str, flops: float, vocab: int, context: int, batch: int, work: Path, data: str | None
) -> dict:
    from edgezoo.zoo.train import TrainConfig, train

    n = non_embedding_params(size, vocab)
    tokens = flops / (6 * n)
    steps = max(10, math.ceil(tokens / (batch * context)))
    out = work / f"sweep-{size}"
    cfg = TrainConfig(
        family="lm",
        size=size,
        data=data,
        out=str(out),
        steps=steps,
        batch_size=batch,
        context=context,
        vocab_size=vocab,
        warmup_steps=max(2, steps // 20),
        eval_every=10**9,
        checkpoint_every=max(10, steps // 2),
        log_every=max(1, steps // 20),
        lr=3e-3 if n < 20e6 else 1e-3,
        resume=(out / "run.json").exists(),
    )
    result = train(cfg)
    return {
        "size": size,
        "non_embedding_params": n,
        "tokens": steps * batch * context,
        "steps": steps,
        "val_loss": result.metrics["val_loss"],
        "train_tokens_per_s": result.tokens_per_s,
    }


def pareto(bench: dict, losses: dict[str, float]) -> list[dict]:
    """Points (size, precision, ms/token, val loss) not beaten on both axes by another."""
    points = [
        {
            "size": r["size"],
            "precision": r["precision"],
            "ms": r["decode_ms_p50"],
            "loss": losses[r["size"]],
        }
        for r in bench["runs"]
        if r["batch"] == 1 and r["size"] in losses
    ]
    return [
        p
        for p in points
        if not any(q["ms"] <= p["ms"] and q["loss"] <= p["loss"] and q != p for q in points)
    ]


def plot(runs: list[dict], fit: dict, path: Path, front: list[dict] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if front else 1, figsize=(11 if front else 6, 4))
    a = axes[0] if front else axes
    n = np.array([r["non_embedding_params"] for r in runs])
    a.plot(n, [r["val_loss"] for r in runs], "o", label="trained (compute-matched)")
    grid = np.geomspace(n.min(), n.max() * 4, 50)
    a.plot(
        grid,
        [predict(fit, x) for x in grid],
        "-",
        label=f"fit: α={fit['alpha']:.2f}, c={fit['c']:.2f}, R²={fit['r2']:.3f}",
    )
    a.set(
        xscale="log",
        xlabel="non-embedding parameters",
        ylabel="validation loss (nats/token)",
        title="loss vs size",
    )
    a.legend(fontsize=8)
    if front:
        b = axes[1]
        b.plot([p["ms"] for p in front], [p["loss"] for p in front], "o-")
        for p in front:
            b.annotate(f"{p['size']} {p['precision']}", (p["ms"], p["loss"]), fontsize=7)
        b.set(
            xscale="log",
            xlabel="ms / token (batch 1)",
            ylabel="validation loss",
            title="latency vs quality Pareto front",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes", default="nano,micro,mini,small,medium", help="≥ 5 presets for a meaningful fit"
    )
    p.add_argument(
        "--flops",
        type=float,
        default=1.3e13,
        help="training compute per size (default ≈ 3 min each on 2 CPU cores)",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="one vocabulary for all sizes, so losses compare",
    )
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data", help="corpus (default: the built-in stdlib corpus)")
    p.add_argument(
        "--check-next", help="also train this preset and compare with the fit's prediction"
    )
    p.add_argument("--bench", help="a bench results .json for the latency-vs-quality Pareto front")
    p.add_argument("--work", default="runs/sweep")
    p.add_argument("--out", default=str(RESULTS / "sweep"))


def main(args: argparse.Namespace) -> int:
    sizes = [s for s in args.sizes.split(",") if s]
    work = Path(args.work)
    runs = [
        train_size(s, args.flops, args.vocab_size, args.context, args.batch_size, work, args.data)
        for s in sizes
    ]
    fit = fit_power_law(
        np.array([r["non_embedding_params"] for r in runs], float),
        np.array([r["val_loss"] for r in runs]),
    )
    report = {"flops_per_size": args.flops, "vocab_size": args.vocab_size, "runs": runs, "fit": fit}
    if args.check_next:
        nxt = train_size(
            args.check_next,
            args.flops,
            args.vocab_size,
            args.context,
            args.batch_size,
            work,
            args.data,
        )
        nxt["predicted_loss"] = predict(fit, nxt["non_embedding_params"])
        report["check"] = nxt
    front = None
    if args.bench:
        front = pareto(
            json.loads(Path(args.bench).read_text()), {r["size"]: r["val_loss"] for r in runs}
        )
        report["pareto"] = front
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), report)
    plot(runs, fit, out.with_suffix(".png"), front)
    lines = ["| size | non-emb params | tokens | val loss |", "|---|---|---|---|"]
    lines += [
        f"| {r['size']} | {r['non_embedding_params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.2f}M | {r['val_loss']:.3f} |"
        for r in runs
    ]
    lines.append(
        f"\nL(N) = {fit['a']:.3g}·N^({-fit['alpha']:+.3f}) + {fit['c']:.3f}, R² = {fit['r2']:.3f}"
    )
    if fit["alpha"] <= 0:
        lines.append(
            "At this compute the loss does not fall with size: the larger models see too few tokens per "
            "parameter (compute-optimal training wants ~20 tokens per parameter). Raise --flops to see "
            "the larger models overtake the smaller ones."
        )
    if "check" in report:
        c = report["check"]
        lines.append(
            f"{c['size']}: predicted {c['predicted_loss']:.3f}, trained {c['val_loss']:.3f}"
        )
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
