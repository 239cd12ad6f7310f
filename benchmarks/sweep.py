"""``python -m benchmarks.sweep``: does quality keep improving with size, and where is the optimum?

Three modes, one tokenizer and one set of held-out windows for every run in a mode:

* ``--mode tokens`` (default): every size sees the same tokens, at the width/batch rule's
  learning rate and at twice it (the better counts: a two-point lr grid per size); fits L(N) = a·N^(−α) + c on all sizes but the largest, predicts the
  largest, and bootstraps α, c and the prediction over held-out windows and over sizes.
* ``--mode isoflop``: per compute budget C, 4+ sizes with D = C/(6N) tokens; a parabola
  of loss in log N per budget gives N*(C); N* ∝ C^a over the budgets.
* ``--mode compute``: the original equal-compute ladder (bigger models see fewer tokens).
* ``--mode lr``: the check on the lr rule — the four smallest sizes at ½×, 1× and 2× its
  lr on the tokens sweep's tokens (the 1× runs are the sweep's own).

N is the non-embedding parameter count. Runs live in ``--work`` and are reused when asked
for again with the same settings (``isoflop`` reuses the tokens sweep's runs).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks import sweep_plan
from benchmarks.sweep_fit import fit_power_law, predict  # noqa: F401  (the fit's public home)

RESULTS = Path(__file__).parent / "results"

DEFAULTS = {
    "tokens": {"sizes": "zepto,atto,femto,pico,nano,micro", "out": "sweep_tokens"},
    "isoflop": {"sizes": "zepto,atto,femto,pico,nano,micro", "out": "sweep_isoflop"},
    "compute": {"sizes": "nano,micro,mini,small,medium", "out": "sweep"},
    "lr": {"sizes": "zepto,atto,femto,pico", "out": "sweep_lr"},
}
LR_FACTORS = (0.5, 1.0, 2.0)  # --mode lr: around the rule
LR_GRID = (1.0, 2.0)  # --mode tokens: every size at the rule's lr and twice it; the better counts
TOKENS = 786_432  # 1536 steps of 4 × 128: ~120 tokens per non-embedding parameter for zepto
ISOFLOP_TOKENS = 393_216  # the centre sizes' tokens: budgets C = 6·N·this


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
    return pareto_front(points)


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both ``ms`` and ``loss``, fastest first."""
    front = [
        p
        for p in points
        if not any(q["ms"] <= p["ms"] and q["loss"] <= p["loss"] and q != p for q in points)
    ]
    return sorted(front, key=lambda p: p["ms"])


def chosen_lrs(tokens_json: Path) -> dict[str, float]:
    """size → the lr the tokens sweep's grid chose; empty (the rule for all) without one."""
    if not tokens_json.is_file():
        return {}
    return {r["size"]: r["lr"] for r in json.loads(tokens_json.read_text())["runs"]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=tuple(DEFAULTS), default="tokens")
    p.add_argument("--sizes", help="presets (`edgezoo models`); default per mode")
    p.add_argument(
        "--tokens",
        type=int,
        help=f"tokens mode: tokens per size (default {TOKENS:,}); isoflop: the centres' tokens, "
        f"budget C = 6·N·tokens (default {ISOFLOP_TOKENS:,}); lr: as tokens mode",
    )
    p.add_argument(
        "--centres",
        default="femto,pico,nano",
        help="isoflop: one budget per centre size, C = 6·N·tokens (≥ 3)",
    )
    p.add_argument("--per-budget", type=int, default=4, help="isoflop: sizes per budget")
    p.add_argument(
        "--below",
        type=int,
        default=2,
        help="isoflop: how many of a budget's sizes are smaller than its centre",
    )
    p.add_argument(
        "--lr-from",
        default=str(RESULTS / "sweep_tokens.json"),
        help="isoflop: take each size's lr from this tokens sweep's grid (else the rule's)",
    )
    p.add_argument("--flops", type=float, default=4e12, help="compute mode: FLOPs per size")
    p.add_argument(
        "--vocab-size",
        type=int,
        help="one vocabulary for all sizes (default 2048; compute mode 4096)",
    )
    p.add_argument("--context", type=int, help="default 128 (compute mode 256)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="sequences per step (default 4: at equal tokens, femto reached 5.46 at batch 4 "
        "vs 5.86 at 16 — tiny models need steps more than big batches; compute mode 16)",
    )
    p.add_argument("--data", help="corpus (default: the built-in stdlib corpus)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--bench", help="compute mode: bench .json for a latency-vs-quality front")
    p.add_argument("--work", help="where runs live (default runs/sweep-tokens; compute runs/sweep)")
    p.add_argument("--out", help="results path without suffix (default benchmarks/results/...)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (1: on a shared 2-core machine, 2 threads ran 4× slower)",
    )
    p.add_argument("--train-only", action="store_true", help="train the runs, write no report")


def main(args: argparse.Namespace) -> int:
    import torch

    from benchmarks import sweep_report, sweep_train
    from edgezoo.zoo import corpus
    from edgezoo.zoo.tokenizer import tokenizer_fingerprint

    torch.set_num_threads(args.threads)
    mode = args.mode
    compute = mode == "compute"
    vocab = args.vocab_size or (4096 if compute else 2048)
    context = args.context or (256 if compute else 128)
    work = Path(args.work or ("runs/sweep" if compute else "runs/sweep-tokens"))
    out = Path(args.out or RESULTS / DEFAULTS[mode]["out"])
    source = args.data or corpus.LM_CORPUS
    sizes = [s for s in (args.sizes or DEFAULTS[mode]["sizes"]).split(",") if s]
    shapes = [sweep_plan.shape(s, vocab) for s in sizes]
    batch = args.batch_size or (16 if compute else 4)
    tokens = args.tokens or (ISOFLOP_TOKENS if mode == "isoflop" else TOKENS)

    tok = sweep_train.shared_tokenizer(work, source, vocab)
    windows = sweep_train.eval_windows(source, tok, context)

    def train(plan: sweep_plan.PlannedRun) -> dict:
        return sweep_train.run(
            plan,
            work,
            source=source,
            vocab=vocab,
            context=context,
            batch=batch,
            windows=windows,
            tokenizer=tok,
        )

    setup = {
        "mode": mode,
        "data": source,
        "vocab_size": vocab,
        "context": context,
        "batch_size": batch,
        "threads": args.threads,
        "eval_windows": len(windows),
        "eval_tokens": sum(len(w) - 1 for w in windows),
        "tokenizer": tokenizer_fingerprint(tok),
        "lr_rule": f"lr = min({sweep_plan.MAX_LR:g}, {sweep_plan.BASE_LR:g} × "
        f"{sweep_plan.BASE_WIDTH} / width × √(batch / {sweep_plan.BASE_BATCH}))",
    }
    rng = np.random.default_rng(0)
    if mode == "tokens":
        grid = [
            [train(replace(p, lr=p.lr * f)) for f in LR_GRID]
            for p in sweep_plan.tokens_plan(shapes, tokens, batch, context)
        ]
        if not args.train_only:
            sweep_report.tokens_report(grid, setup, out, args.bootstrap, rng)
    elif mode == "isoflop":
        centres = [c for c in args.centres.split(",") if c]
        plan = sweep_plan.isoflop_plan(
            shapes, centres, tokens, args.per_budget, batch, context, args.below
        )
        chosen = chosen_lrs(Path(args.lr_from))
        shown = os.path.relpath(args.lr_from)
        setup["lr_rule"] = f"each size at the lr its tokens-sweep grid chose ({shown})"
        setup["centre_tokens"] = tokens
        setup["sizes_below_centre"] = args.below
        budgets = {
            c: [train(replace(p, lr=chosen.get(p.size, p.lr))) for p in runs]
            for c, runs in plan.items()
        }
        if not args.train_only:
            sweep_report.isoflop_report(budgets, setup, out, args.bootstrap, rng)
    elif mode == "lr":
        base = sweep_plan.tokens_plan_unchecked(shapes, tokens, batch, context)
        runs = [train(replace(p, lr=p.lr * f)) for p in base for f in LR_FACTORS]
        if not args.train_only:
            sweep_report.lr_report(runs, setup, out)
    else:
        runs = [
            train(p)
            for p in sweep_plan.compute_plan(shapes, args.flops, batch, context, fixed_lr=True)
        ]
        if not args.train_only:
            bench = json.loads(Path(args.bench).read_text()) if args.bench else None
            sweep_report.compute_report(runs, setup, args.flops, out, bench)
    return 0


if __name__ == "__main__":
    from edgezoo.errors import run_guarded

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    raise SystemExit(run_guarded(lambda: main(parser.parse_args())))
