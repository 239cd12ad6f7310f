"""``python -m benchmarks.tune_compare``: does TPE find good settings sooner than random search?

The same search (lr, warmup, weight decay, min-lr ratio of a short nano run on a small
stdlib corpus; every trial trains the same data with the same seed, so a setting always
scores the same) is run by ``edgezoo tune``'s TPE and random samplers at an equal number
of trials, for a few sampler seeds. Reported: best held-out loss after each trial per
sampler, and how many trials TPE needed to reach random search's final best (the issue's
aim: at most half of them). No pruning, so every trial is a full run and counts alike.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from edgezoo import atomic

RESULTS = Path(__file__).parent / "results"
SPACE = ["lr=1e-4:3e-2:log", "warmup_steps=0:10", "weight_decay=0:0.3", "min_lr_ratio=0:0.5"]


def small_corpus(folder: Path, chars: int = 120_000) -> Path:
    """Small stdlib modules copied into ``folder``: real text, quick to tokenize per trial."""
    from edgezoo.zoo import corpus

    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in corpus.stdlib_files():
        size = path.stat().st_size
        if 2_000 < size < 15_000:
            shutil.copy(path, folder / path.name)
            total += size
        if total > chars:
            break
    return folder


def best_so_far(values: list[float | None]) -> list[float]:
    out, best = [], float("inf")
    for v in values:
        best = min(best, v if v is not None else float("inf"))
        out.append(best)
    return out


def run_one(sampler: str, seed: int, args: argparse.Namespace, work: Path, data: Path) -> dict:
    """One study; the loss of each trial in the order they ran."""
    from edgezoo.zoo.tune import TuneConfig, run_tune

    tc = TuneConfig(
        out=str(work / f"{sampler}-{seed}"),
        data=str(data),
        steps=args.steps,
        context=args.context,
        vocab_size=600,
        batch_size=args.batch,
        eval_every=args.steps,
        eval_batches=4,
        trials=args.trials,
        sampler=sampler,
        pruner="none",
        seed=seed,
        search=[],
        ranges=SPACE,
    )
    t0 = time.perf_counter()
    result = run_tune(tc)
    trials = sorted(result.study.get_trials(deepcopy=False), key=lambda t: t.number)
    values = [t.value for t in trials]
    return {"values": values, "best": best_so_far(values), "seconds": time.perf_counter() - t0}


def trials_to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v <= target), None)


def summarise(runs: dict[str, list[dict]], trials: int) -> dict:
    """Per seed: trials TPE needed to reach random's best; and the same on the mean curves."""
    per_seed = []
    for tpe, rnd in zip(runs["tpe"], runs["random"], strict=True):
        need = trials_to_reach(tpe["best"], rnd["best"][-1])
        per_seed.append({"random_best": rnd["best"][-1], "tpe_best": tpe["best"][-1],
                         "tpe_trials_to_reach": need})  # fmt: skip
    mean = {
        s: [sum(r["best"][i] for r in rs) / len(rs) for i in range(trials)]
        for s, rs in runs.items()
    }
    need = trials_to_reach(mean["tpe"], mean["random"][-1])
    met = sum(1 for p in per_seed if p["tpe_trials_to_reach"] and p["tpe_trials_to_reach"] <= trials / 2)  # fmt: skip
    return {
        "per_seed": per_seed,
        "mean_best": mean,
        "tpe_trials_to_reach_random_best_mean": need,
        "aim_met_mean": need is not None and need <= trials / 2,
        "aim_met_seeds": f"{met}/{len(per_seed)}",
    }


def write_markdown(result: dict, path: Path) -> None:
    s, trials = result["summary"], result["trials"]
    lines = [
        f"`edgezoo tune` on `nano` ({result['steps']} steps, batch {result['batch']}, context "
        f"{result['context']}, {trials} trials per study, no pruning), searching "
        f"{', '.join(SPACE)}; seeds {result['seeds']}; {result['seconds']:.0f} s in all. "
        "Best held-out loss after N trials, mean over seeds:",
        "",
        "| trial | " + " | ".join(str(i + 1) for i in range(trials)) + " |",
        "|---|" + "---:|" * trials,
    ]
    for sampler, curve in s["mean_best"].items():
        lines.append(f"| {sampler} | " + " | ".join(f"{v:.3f}" for v in curve) + " |")
    lines += ["", "| seed | random best | TPE best | trials TPE needs to reach random's best |",
              "|---:|---:|---:|---:|"]  # fmt: skip
    for seed, p in zip(result["seeds"], s["per_seed"], strict=True):
        need = p["tpe_trials_to_reach"] or f"not within {trials}"
        lines.append(f"| {seed} | {p['random_best']:.4f} | {p['tpe_best']:.4f} | {need} |")
    verdict = "met" if s["aim_met_mean"] else "not met"
    lines += [
        "",
        f"Aim (TPE reaches random search's best in ≤ half the trials, {trials // 2}): **{verdict}** "
        f"on the mean curves (TPE needs {s['tpe_trials_to_reach_random_best_mean'] or 'more than ' + str(trials)} "
        f"trials); per seed met in {s['aim_met_seeds']}. Few trials and seeds on one small "
        "task: a measurement of this setup, not a general ranking of the samplers.",
        "",
        "Regenerate: `python -m benchmarks.tune_compare`.",
    ]
    atomic.write_text(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    import optuna

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=32)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tune-compare-") as tmp:
        work = Path(tmp)
        data = small_corpus(work / "corpus")
        runs = {s: [run_one(s, seed, args, work, data) for seed in args.seeds] for s in ("tpe", "random")}  # fmt: skip
    result = {
        "trials": args.trials, "seeds": args.seeds, "steps": args.steps, "batch": args.batch,
        "context": args.context, "space": SPACE, "runs": runs,
        "summary": summarise(runs, args.trials), "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    out = Path(args.out)
    atomic.write_json(out / "tune_compare.json", result)
    write_markdown(result, out / "tune_compare.md")
    print((out / "tune_compare.md").read_text())


if __name__ == "__main__":
    main()
