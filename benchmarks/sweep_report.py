"""What a scaling sweep writes: ``.json`` (every number), ``.md`` (the table) and ``.png``.

One function per mode. Each takes the runs ``sweep_train.run`` returned (with their
per-window held-out losses) and does the fits of ``sweep_fit`` on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import sweep_fit as fit_
from edgezoo import atomic

AIMS = {"r2": 0.95, "error_pct": 5.0}


def _matrix(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(loss sums: sizes × windows, scored tokens per window) — the same windows for all."""
    tokens = np.array(runs[0]["window_tokens"], float)
    for r in runs:
        if r["window_tokens"] != runs[0]["window_tokens"]:
            raise ValueError(f"{_key(r)} was scored on other windows than {_key(runs[0])}")
    return np.array([r["window_loss_sums"] for r in runs], float), tokens


def _key(run: dict) -> str:
    """A run's key: its folder's name (records written before the key was stored lack it)."""
    return run.get("key") or Path(run["model_dir"]).name


def _lean(run: dict) -> dict:
    """A run without its per-window losses (they stay in the work folder)."""
    return {
        k: v for k, v in run.items() if k not in ("window_loss_sums", "window_tokens", "settings")
    }


def _edge_note(grid: dict[str, dict[str, float]], runs: list[dict]) -> list[str]:
    """Sizes whose best lr was the grid's largest: their optimum may lie above it."""
    top = [
        r["size"]
        for r in runs
        if len(grid.get(r["size"], {})) > 1 and f"{r['lr']:.3g}" == max(grid[r["size"]], key=float)
    ]
    if not top:
        return []
    return [
        f"- The grid's larger lr won for {', '.join(top)}: their best lr may lie above it, so "
        "their losses are upper bounds of what tuning would give."
    ]


def _grid_cell(tried: dict[str, float], chosen: float) -> str:
    """ "0.003: **3.63**, 0.006: 3.90" — the chosen lr's loss in bold."""
    if not tried:
        return f"{chosen:.3g}"
    return ", ".join(
        f"{lr}: **{loss:.3f}**" if lr == f"{chosen:.3g}" else f"{lr}: {loss:.3f}"
        for lr, loss in tried.items()
    )


def _width(size: str) -> int | str:
    from edgezoo.zoo.presets import LM_PRESETS

    return LM_PRESETS[size][0] if size in LM_PRESETS else "?"


def _fmt_n(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _ci(v: list[float], digits: int = 3) -> str:
    return f"[{v[0]:.{digits}f}, {v[1]:.{digits}f}]"


def _curve(run: dict) -> tuple[list[float], list[float]]:
    """(tokens seen, training loss) from the run's training.jsonl."""
    path = Path(run["model_dir"]) / "training.jsonl"
    if not path.is_file():
        return [], []
    per_step = run["tokens"] / run["steps"]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "event" not in r]
    return [r["step"] * per_step for r in rows], [r["loss"] for r in rows]


# ---------------------------------------------------------------- tokens ---------------


def tokens_analysis(runs: list[dict], draws: int, rng: np.random.Generator) -> dict:
    """Fit on all sizes but the largest, predict it, bootstrap; the numbers of the report."""
    runs = sorted(runs, key=lambda r: r["non_embedding_params"])
    n = np.array([r["non_embedding_params"] for r in runs], float)
    loss = np.array([r["val_loss"] for r in runs])
    sums, tokens = _matrix(runs)
    fit = fit_.fit_power_law(n[:-1], loss[:-1])
    predicted = fit_.predict(fit, n[-1])
    error = (predicted / loss[-1] - 1) * 100
    by_windows = fit_.bootstrap_windows(n[:-1], sums[:-1], tokens, n[-1], sums[-1], draws, rng)
    by_sizes = fit_.bootstrap_sizes(n[:-1], loss[:-1], n[-1], draws, rng)
    monotonic = bool(np.all(np.diff(loss) < 0))
    return {
        "fit": fit,
        "fit_all_sizes": fit_.fit_power_law(n, loss),
        "check": {
            "size": runs[-1]["size"],
            "non_embedding_params": int(n[-1]),
            "predicted_loss": float(predicted),
            "val_loss": float(loss[-1]),
            "error_pct": float(error),
        },
        "bootstrap_windows": by_windows,
        "bootstrap_sizes": by_sizes,
        "monotonic": monotonic,
        "aims": {
            "monotonic": monotonic,
            "r2_at_least_0.95": bool(fit["r2"] >= AIMS["r2"]),
            "largest_within_5pct": bool(abs(error) <= AIMS["error_pct"]),
        },
    }


def tokens_report(
    grid: list[list[dict]], setup: dict, out: Path, draws: int, rng: np.random.Generator
) -> dict:
    """``grid``: per size, its runs at each learning rate tried; the lowest loss counts."""
    runs = sorted(
        (min(tried, key=lambda r: r["val_loss"]) for tried in grid),
        key=lambda r: r["non_embedding_params"],
    )
    result = tokens_analysis(runs, draws, rng)
    report = {
        **setup,
        "bootstrap_draws": draws,
        **result,
        "runs": [_lean(r) for r in runs],
        "lr_grid": {
            tried[0]["size"]: {f"{r['lr']:.3g}": r["val_loss"] for r in tried} for tried in grid
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), report)
    _plot_tokens(runs, result, out.with_suffix(".png"))
    text = tokens_markdown(report)
    atomic.write_text(out.with_suffix(".md"), text)
    print(text)
    return report


def tokens_markdown(report: dict) -> str:
    runs, fit, check = report["runs"], report["fit"], report["check"]
    bw, bs, aims = report["bootstrap_windows"], report["bootstrap_sizes"], report["aims"]
    lines = [
        "| size | width | non-emb params | lr grid → loss | tokens | tokens / param | val loss | fit | train wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    grid = report.get("lr_grid", {})
    for r in runs:
        fitted = (
            f"{fit_.predict(fit, r['non_embedding_params']):.3f}"
            if r["size"] != check["size"]
            else f"**{check['predicted_loss']:.3f}** (predicted)"
        )
        lines.append(
            f"| {r['size']} | {_width(r['size'])} | {_fmt_n(r['non_embedding_params'])} | "
            f"{_grid_cell(grid.get(r['size'], {}), r['lr'])} | {r['tokens'] / 1e6:.3f}M | "
            f"{r['tokens'] / r['non_embedding_params']:.1f} | {r['val_loss']:.3f} | {fitted} | "
            f"{r['wall_s']:.0f} s |"
        )
    yes = {True: "met", False: "**not met**"}
    lines += [
        "",
        f"Fit on the {len(runs) - 1} smaller sizes: L(N) = {fit['a']:.3g}·N^(−{fit['alpha']:.3f}) + "
        f"{fit['c']:.3f}, R² = {fit['r2']:.4f}.",
        f"- α = {fit['alpha']:.3f}: 95 % interval {_ci(bw['alpha'])} resampling the "
        f"{report['eval_windows']} held-out windows (paired across sizes), {_ci(bs['alpha'])} "
        "resampling the fitted sizes.",
        f"- c = {fit['c']:.3f}: {_ci(bw['c'])} (windows), {_ci(bs['c'])} (sizes).",
        f"- {check['size']} ({_fmt_n(check['non_embedding_params'])}, {check['non_embedding_params'] / runs[-2]['non_embedding_params']:.1f}× "
        f"the largest fitted size): predicted {check['predicted_loss']:.3f}, trained "
        f"{check['val_loss']:.3f}, error {check['error_pct']:+.2f} % "
        f"(windows {_ci(bw['error_pct'], 2)} %; prediction by sizes {_ci(bs['predicted'])}).",
        *(
            [
                "- c sits at its bound 0: the fitted sizes read as a pure power law with no "
                "floor in sight, so the window interval on α is that of a 2-parameter fit; "
                "with the floor free to move, α and c trade off — the size interval is the "
                "honest spread."
            ]
            if fit["c"] <= 1e-9
            else []
        ),
        *_edge_note(report.get("lr_grid", {}), runs),
        f"- Loss falls with every size: {'yes' if report['monotonic'] else 'no'}.",
        f"- Aims: monotonic {yes[aims['monotonic']]}; R² ≥ 0.95 {yes[aims['r2_at_least_0.95']]}; "
        f"largest within 5 % {yes[aims['largest_within_5pct']]}.",
        "",
        f"All {len(runs)} sizes: α = {report['fit_all_sizes']['alpha']:.3f}, c = "
        f"{report['fit_all_sizes']['c']:.3f}, R² = {report['fit_all_sizes']['r2']:.4f}.",
        "",
        f"Setup: every size trained on the same {runs[0]['tokens']:,} tokens of {report['data']} "
        f"(batch {report['batch_size']} × context {report['context']}, AdamW, 5 % warmup, cosine "
        f"to zero), one {report['vocab_size']}-token BPE vocabulary trained once (fingerprint "
        f"{report['tokenizer']}), each size at the better of {report['lr_rule']} and twice it "
        f"(the grid above; μP's width rule with Adam's √batch rule, anchored at nano's default), "
        f"{report['threads']} torch thread per run on a shared 2-core CPU. N counts parameters "
        f"outside the embedding. Validation loss: mean next-token loss over "
        f"{report['eval_tokens']:,} held-out tokens in {report['eval_windows']} windows; "
        f"bootstraps: {report['bootstrap_draws']} draws, percentile intervals. The window "
        "bootstrap measures evaluation noise only (one training seed per size).",
    ]
    return "\n".join(lines) + "\n"


def _plot_tokens(runs: list[dict], result: dict, path: Path) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    n = np.array([r["non_embedding_params"] for r in runs], float)
    loss = [r["val_loss"] for r in runs]
    fit, check = result["fit"], result["check"]
    a.plot(n[:-1], loss[:-1], "o", label="trained, fitted")
    a.plot(n[-1:], loss[-1:], "s", color="C3", label=f"trained {check['size']} (held out of fit)")
    lo, hi = result["bootstrap_sizes"]["predicted"]
    a.errorbar(
        n[-1] * 1.08,
        check["predicted_loss"],
        yerr=[[check["predicted_loss"] - lo], [hi - check["predicted_loss"]]],
        fmt="x",
        color="C2",
        label="predicted (95 % interval over sizes)",
    )
    grid = np.geomspace(n.min() * 0.8, n.max() * 1.5, 60)
    a.plot(
        grid,
        [fit_.predict(fit, x) for x in grid],
        "-",
        color="C1",
        label=f"L = {fit['a']:.3g}·N^(−{fit['alpha']:.3f}) + {fit['c']:.2f}, R² {fit['r2']:.3f}",
    )
    a.set(xscale="log", xlabel="non-embedding parameters N", ylabel="held-out loss (nats/token)")
    a.set_title("equal tokens per size", fontsize=10)
    a.legend(fontsize=7)
    for i, r in enumerate(runs):
        x, y = _curve(r)
        b.plot(x, y, color=f"C{i}", label=f"{r['size']} (lr {r['lr']:.2g})", lw=1)
    b.set(xlabel="training tokens", ylabel="training loss", ylim=(None, 7))
    b.set_title("training loss at logged steps (one batch; the same batches for all)", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- IsoFLOP --------------


def _isoflop_fit(budgets: dict[float, list[dict]], losses: dict[str, float]) -> dict:
    """Per budget the parabola's N*; then N* ∝ C^a. ``losses`` maps run key → loss."""
    rows = []
    for c, runs in sorted(budgets.items()):
        n = np.array([r["non_embedding_params"] for r in runs], float)
        mins = fit_.parabola_minimum(n, np.array([losses[_key(r)] for r in runs]))
        d_star = c / (6 * mins["n_star"])
        rows.append(
            {"flops": c, **mins, "d_star": d_star, "tokens_per_param": d_star / mins["n_star"]}
        )
    c = np.array([r["flops"] for r in rows])
    a, k = fit_.power_exponent(c, np.array([r["n_star"] for r in rows]))
    return {"budgets": rows, "a": a, "prefactor": k}


def isoflop_analysis(
    budgets: dict[float, list[dict]], draws: int, rng: np.random.Generator
) -> dict:
    every = {_key(r): r for runs in budgets.values() for r in runs}
    keys = sorted(every)
    sums, tokens = _matrix([every[k] for k in keys])
    point = _isoflop_fit(budgets, {k: every[k]["val_loss"] for k in keys})
    a_draws, tpp = [], {c: [] for c in budgets}
    for _ in range(draws):
        idx = rng.integers(0, len(tokens), len(tokens))
        means = fit_.window_means(sums, tokens, idx)
        f = _isoflop_fit(budgets, dict(zip(keys, means, strict=True)))
        a_draws.append(f["a"])
        for row in f["budgets"]:
            tpp[row["flops"]].append(row["tokens_per_param"])
    point["a_interval_windows"] = fit_.interval(a_draws)
    for row in point["budgets"]:
        row["tokens_per_param_interval_windows"] = fit_.interval(tpp[row["flops"]])
    point["all_inside"] = all(r["inside"] for r in point["budgets"])
    return point


def isoflop_report(
    budgets: dict[float, list[dict]], setup: dict, out: Path, draws: int, rng: np.random.Generator
) -> dict:
    result = isoflop_analysis(budgets, draws, rng)
    report = {
        **setup,
        "bootstrap_draws": draws,
        **result,
        "runs": {f"{c:.4g}": [_lean(r) for r in runs] for c, runs in sorted(budgets.items())},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), report)
    _plot_isoflop(budgets, result, out.with_suffix(".png"))
    text = isoflop_markdown(report)
    atomic.write_text(out.with_suffix(".md"), text)
    print(text)
    return report


def isoflop_markdown(report: dict) -> str:
    lines = [
        "| budget C (6·N·D) | size | non-emb params | tokens | tokens / param | val loss |",
        "|---|---|---|---|---|---|",
    ]
    for c, runs in report["runs"].items():
        for r in runs:
            lines.append(
                f"| {float(c):.3g} | {r['size']} | {_fmt_n(r['non_embedding_params'])} | "
                f"{r['tokens'] / 1e6:.3f}M | {r['tokens'] / r['non_embedding_params']:.1f} | "
                f"{r['val_loss']:.3f} |"
            )
    lines += [
        "",
        "| budget C | N* (parabola in log N) | inside the sizes | loss at N* | D* = C/(6N*) | tokens / param at N* |",
        "|---|---|---|---|---|---|",
    ]
    for b in report["budgets"]:
        lo, hi = b["tokens_per_param_interval_windows"]
        lines.append(
            f"| {b['flops']:.3g} | {_fmt_n(b['n_star'])} | {'yes' if b['inside'] else '**no**'} | "
            f"{b['loss_star']:.3f} | {b['d_star'] / 1e6:.3f}M | {b['tokens_per_param']:.1f} "
            f"[{lo:.1f}, {hi:.1f}] |"
        )
    lo, hi = report["a_interval_windows"]
    lines += [
        "",
        f"N*(C) ∝ C^a with a = {report['a']:.3f} (95 % interval [{lo:.3f}, {hi:.3f}] resampling "
        f"the {report['eval_windows']} held-out windows, paired across every run); so D*(C) ∝ "
        f"C^{1 - report['a']:.3f}. Chinchilla found a ≈ 0.5 (tokens and parameters grow alike).",
        *(
            []
            if report["all_inside"]
            else [
                "Some optimum falls outside the sizes trained at its budget: that N* is an "
                "extrapolation of the parabola, and a leans on it."
            ]
        ),
        "",
        f"Setup: per budget C, each size trained on D = C/(6N) tokens (N non-embedding); a "
        f"budget is C = 6·N·{report.get('centre_tokens', 0):,} for a centre size, its sizes "
        f"starting {report.get('sizes_below_centre', 2)} below the centre (fewer where the "
        f"ladder ends); batch {report['batch_size']} × context "
        f"{report['context']}, {report['lr_rule']}, one {report['vocab_size']}-token vocabulary, "
        f"loss over {report['eval_tokens']:,} held-out tokens; {report['bootstrap_draws']} "
        "bootstrap draws. The interval reflects evaluation noise only (one seed per run), and "
        "three budgets leave one degree of freedom in a.",
    ]
    return "\n".join(lines) + "\n"


def _plot_isoflop(budgets: dict[float, list[dict]], result: dict, path: Path) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, ((c, runs), row) in enumerate(
        zip(sorted(budgets.items()), result["budgets"], strict=True)
    ):
        n = np.array([r["non_embedding_params"] for r in runs], float)
        loss = np.array([r["val_loss"] for r in runs])
        a.plot(n, loss, "o", color=f"C{i}", label=f"C = {c:.2g}")
        x = np.log(n)
        p = np.polyfit(x, loss, 2)
        grid = np.linspace(x.min(), x.max(), 50)
        a.plot(np.exp(grid), np.polyval(p, grid), "-", color=f"C{i}", lw=1)
        a.plot([row["n_star"]], [row["loss_star"]], "*", color=f"C{i}", ms=11)
    a.set(xscale="log", xlabel="non-embedding parameters N", ylabel="held-out loss")
    a.set_title("IsoFLOP profiles (★ = parabola minimum)", fontsize=10)
    a.legend(fontsize=7)
    c = np.array([r["flops"] for r in result["budgets"]])
    ns = np.array([r["n_star"] for r in result["budgets"]])
    b.plot(c, ns, "*", ms=11)
    grid = np.geomspace(c.min() / 2, c.max() * 2, 20)
    b.plot(grid, result["prefactor"] * grid ** result["a"], "-", label=f"N* ∝ C^{result['a']:.2f}")
    b.set(xscale="log", yscale="log", xlabel="training FLOPs C = 6·N·D", ylabel="optimal N*")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- lr check -------------


def lr_report(runs: list[dict], setup: dict, out: Path) -> dict:
    """Loss per size × learning rate: is the rule's lr (the middle one) the best of three?"""
    sizes = sorted({(r["non_embedding_params"], r["size"]) for r in runs})
    rows = []
    for _, size in sizes:
        mine = sorted((r for r in runs if r["size"] == size), key=lambda r: r["lr"])
        best = min(mine, key=lambda r: r["val_loss"])
        rule = mine[len(mine) // 2]["lr"]  # the factors are ½, 1, 2 around the rule
        rows.append(
            {
                "size": size,
                "tokens": mine[0]["tokens"],
                "losses": {f"{r['lr']:.3g}": r["val_loss"] for r in mine},
                "rule_lr": rule,
                "best_lr": best["lr"],
                "rule_is_best": abs(best["lr"] - rule) <= 1e-12,
                "rule_minus_best": next(r["val_loss"] for r in mine if abs(r["lr"] - rule) <= 1e-12)
                - best["val_loss"],
            }
        )
    report = {**setup, "rows": rows, "runs": [_lean(r) for r in runs]}
    lines = ["| size | tokens | lr → held-out loss | rule's lr | best |", "|---|---|---|---|---|"]
    for row in rows:
        cells = ", ".join(f"{lr}: {loss:.3f}" for lr, loss in row["losses"].items())
        verdict = (
            "rule"
            if row["rule_is_best"]
            else f"{row['best_lr']:.3g} (rule +{row['rule_minus_best']:.3f})"
        )
        lines.append(
            f"| {row['size']} | {row['tokens']:,} | {cells} | {row['rule_lr']:.3g} | {verdict} |"
        )
    lines += [
        "",
        f"Each size trained at ½×, 1× and 2× the rule's learning rate ({setup['lr_rule']}) on "
        f"the tokens sweep's tokens (its 1× runs are the sweep's own), batch {setup['batch_size']} × context "
        f"{setup['context']}; loss over {setup['eval_tokens']:,} held-out tokens.",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), report)
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


# ---------------------------------------------------------------- compute --------------


COMPUTE_NOTE = (
    "What this shows: with the same training compute for every size, a bigger model sees "
    "fewer tokens (D = C / 6N). At this small budget the larger presets stop long before "
    "they have learned what they could, so the loss rises with size — this table measures "
    "undertraining, not what size buys. For that, see the equal-tokens sweep "
    "(`--mode tokens`) and the compute-optimal trade-off (`--mode isoflop`)."
)


def compute_report(
    runs: list[dict], setup: dict, flops: float, out: Path, bench: dict | None
) -> dict:
    from benchmarks.sweep import pareto

    n = np.array([r["non_embedding_params"] for r in runs], float)
    fit = fit_.fit_power_law(n, np.array([r["val_loss"] for r in runs]))
    report = {**setup, "flops_per_size": flops, "runs": [_lean(r) for r in runs], "fit": fit}
    if bench:
        report["pareto"] = pareto(bench, {r["size"]: r["val_loss"] for r in runs})
    lines = ["| size | non-emb params | tokens | val loss |", "|---|---|---|---|"]
    lines += [
        f"| {r['size']} | {_fmt_n(r['non_embedding_params'])} | {r['tokens'] / 1e6:.2f}M | {r['val_loss']:.3f} |"
        for r in runs
    ]
    lines += [
        "",
        f"L(N) = {fit['a']:.3g}·N^({-fit['alpha']:+.3f}) + {fit['c']:.3f}, R² = {fit['r2']:.3f}",
        "",
        COMPUTE_NOTE,
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), report)
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
