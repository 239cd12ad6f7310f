"""The scaling sweep's logic: fits on data with a known answer, plans, the lr rule.

No training here except one few-step run on a tiny corpus (the reuse and scoring path).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import sweep_fit, sweep_plan, sweep_report
from edgezoo.errors import ConfigError, EdgeZooError
from edgezoo.zoo.presets import make_config, non_embedding_params, preset_names

SIZES = ["zepto", "atto", "femto", "pico", "nano", "micro"]


def _law(n, a=40.0, alpha=0.3, c=1.5):
    return a * np.asarray(n, float) ** -alpha + c


# ---------------------------------------------------------------- power law ------------


def test_power_law_fit_recovers_alpha_c_and_predicts():
    n = np.geomspace(6e3, 6e5, 5)
    fit = sweep_fit.fit_power_law(n, _law(n))
    assert fit["alpha"] == pytest.approx(0.3, abs=1e-6)
    assert fit["c"] == pytest.approx(1.5, abs=1e-6)
    assert fit["a"] == pytest.approx(40.0, rel=1e-5) and fit["r2"] > 0.999999
    assert sweep_fit.predict(fit, 2.4e6) == pytest.approx(_law(2.4e6), abs=1e-6)


def test_power_law_fit_with_noise_stays_close_and_reports_rising_loss():
    rng = np.random.default_rng(1)
    n = np.geomspace(1e4, 1e6, 6)
    fit = sweep_fit.fit_power_law(n, _law(n, 20, 0.25, 2.0) + rng.normal(0, 0.003, 6))
    assert fit["alpha"] == pytest.approx(0.25, abs=0.03) and fit["r2"] > 0.999
    rising = sweep_fit.fit_power_law(n, 5 * n**0.05)
    assert rising["alpha"] < 0  # a sweep whose loss grows with size says so


def test_power_law_fit_refuses_too_few_sizes():
    with pytest.raises(ConfigError, match="3 distinct sizes"):
        sweep_fit.fit_power_law(np.array([1e4, 1e4, 2e4]), np.array([3.0, 3.0, 2.9]))


def _windows(n, rng, windows=400, noise=0.8, alpha=0.3):
    """Per-window loss sums around the law: each window has its own difficulty (shared by
    every size, as real text is) plus per-size noise."""
    tokens = np.full(windows, 127.0)
    difficulty = rng.normal(0, 0.5, windows)
    per_token = _law(n, alpha=alpha)[:, None] + difficulty[None, :]
    per_token += rng.normal(0, noise, (len(n), windows)) / np.sqrt(127)
    return per_token * tokens, tokens


def test_window_bootstrap_interval_covers_the_truth_and_excludes_a_wrong_exponent():
    rng = np.random.default_rng(7)
    n = np.geomspace(6e3, 2.4e6, 6)
    sums, tokens = _windows(n, rng)
    ci = sweep_fit.bootstrap_windows(n[:-1], sums[:-1], tokens, n[-1], sums[-1], 200, rng)
    assert ci["alpha"][0] <= 0.3 <= ci["alpha"][1]
    assert ci["alpha"][1] - ci["alpha"][0] < 0.15  # informative, not everything
    assert not ci["alpha"][0] <= 0.45 <= ci["alpha"][1]
    assert ci["predicted"][0] <= _law(n[-1]) + 0.05 and ci["predicted"][1] >= _law(n[-1]) - 0.05
    assert ci["error_pct"][0] < 2 and ci["error_pct"][1] > -2


def test_size_bootstrap_interval_covers_the_truth():
    rng = np.random.default_rng(3)
    n = np.geomspace(6e3, 6e5, 5)
    loss = _law(n) + rng.normal(0, 0.004, 5)
    ci = sweep_fit.bootstrap_sizes(n, loss, 2.4e6, 150, rng)
    assert ci["alpha"][0] <= 0.3 <= ci["alpha"][1] and ci["c"][0] <= 1.5 <= ci["c"][1]
    assert ci["predicted"][0] - 0.05 <= _law(2.4e6) <= ci["predicted"][1] + 0.05
    with pytest.raises(ConfigError):
        sweep_fit.bootstrap_sizes(n[:3], loss[:3], None, 10, rng)


# ---------------------------------------------------------------- IsoFLOP --------------


def _chinchilla(n, d, e=1.7, a=400.0, alpha=0.34, b=410.0, beta=0.28):
    return e + a * n**-alpha + b * d**-beta


def test_isoflop_parabolas_recover_the_known_exponent():
    """L = E + A/N^α + B/D^β puts the compute-optimal N* ∝ C^(β/(α+β))."""
    alpha, beta = 0.34, 0.28
    budgets = np.geomspace(1e11, 1e13, 4)
    g = (alpha * 400.0 / (beta * 410.0)) ** (1 / (alpha + beta))
    stars = []
    for c in budgets:
        truth = g * (c / 6) ** (beta / (alpha + beta))
        n = truth * np.geomspace(0.25, 4, 7)  # sizes on both sides of the optimum
        m = sweep_fit.parabola_minimum(n, _chinchilla(n, c / (6 * n)))
        assert m["inside"] and m["n_star"] == pytest.approx(truth, rel=0.15)
        stars.append(m["n_star"])
    a, _ = sweep_fit.power_exponent(budgets, np.array(stars))
    assert a == pytest.approx(beta / (alpha + beta), abs=0.02)


def test_parabola_minimum_says_when_the_optimum_is_outside_the_sizes():
    n = np.geomspace(1e4, 1e5, 4)
    falling = sweep_fit.parabola_minimum(n, _law(n) + 0.01 * np.log(n) ** 2 / 100)
    assert not falling["inside"] and falling["n_star"] > n.max()
    concave = sweep_fit.parabola_minimum(n, np.array([3.0, 3.2, 3.3, 3.2]))
    assert not concave["inside"] and concave["n_star"] == n[0]


def _run(key, size, n, tokens, sums, window_tokens, lr=1e-3):
    return {
        "key": key,
        "size": size,
        "non_embedding_params": int(n),
        "tokens": int(tokens),
        "steps": 10,
        "lr": lr,
        "flops": 6 * n * tokens,
        "val_loss": float(sums.sum() / window_tokens.sum()),
        "window_loss_sums": sums.tolist(),
        "window_tokens": window_tokens.astype(int).tolist(),
        "wall_s": 1.0,
        "model_dir": "/nonexistent",
    }


def test_isoflop_analysis_on_synthetic_runs_finds_the_exponent_with_an_interval():
    rng = np.random.default_rng(5)
    alpha, beta = 0.34, 0.28
    g = (alpha * 400.0 / (beta * 410.0)) ** (1 / (alpha + beta))
    tokens = np.full(300, 127.0)
    difficulty = rng.normal(0, 0.3, 300)
    budgets = {}
    for c in np.geomspace(1e11, 1e13, 3):
        truth = g * (c / 6) ** (beta / (alpha + beta))
        runs = []
        for i, n in enumerate(truth * np.geomspace(0.3, 3.3, 5)):
            per_token = _chinchilla(n, c / (6 * n)) + difficulty + rng.normal(0, 0.002, 300)
            runs.append(_run(f"{c:.3g}-{i}", f"s{i}", n, c / (6 * n), per_token * tokens, tokens))
        budgets[c] = runs
    result = sweep_report.isoflop_analysis(budgets, 100, rng)
    assert result["all_inside"]
    assert result["a"] == pytest.approx(beta / (alpha + beta), abs=0.03)
    lo, hi = result["a_interval_windows"]
    assert lo <= result["a"] <= hi and hi - lo < 0.2
    text = sweep_report.isoflop_markdown(
        {
            **result,
            "runs": {f"{c:.4g}": runs for c, runs in budgets.items()},
            "eval_windows": 300,
            "batch_size": 16,
            "context": 128,
            "lr_rule": "lr = rule",
            "vocab_size": 2048,
            "eval_tokens": 38100,
            "bootstrap_draws": 100,
        }
    )
    assert f"a = {result['a']:.3f}" in text and "**no**" not in text


def test_tokens_analysis_fits_the_smaller_sizes_and_predicts_the_largest():
    rng = np.random.default_rng(11)
    n = np.array([6736, 24736, 74064, 197184, 590976, 2361792], float)
    sums, tokens = _windows(n, rng, windows=300, noise=0.3)
    runs = [
        _run(f"{s}-k", s, ni, 393216, sums[i], tokens)
        for i, (s, ni) in enumerate(zip(SIZES, n, strict=True))
    ]
    result = sweep_report.tokens_analysis(runs[::-1], 100, rng)  # order does not matter
    assert result["monotonic"] and result["check"]["size"] == "micro"
    assert result["fit"]["alpha"] == pytest.approx(0.3, abs=0.05)
    assert abs(result["check"]["error_pct"]) < 2 and all(result["aims"].values())
    report = {
        **result,
        "runs": runs,
        "eval_windows": 300,
        "eval_tokens": 38100,
        "data": "synthetic",
        "batch_size": 16,
        "context": 128,
        "vocab_size": 2048,
        "tokenizer": "x",
        "lr_rule": "lr = rule",
        "threads": 1,
        "bootstrap_draws": 100,
        "lr_grid": {"zepto": {"0.001": 4.2, "0.002": 4.1}, "atto": {"0.0005": 4.0, "0.001": 3.9}},
    }
    text = sweep_report.tokens_markdown(report)
    assert "(predicted)" in text and "monotonic met" in text and "**not met**" not in text
    assert "| 0.001: **4.200**, 0.002: 4.100 |" in text  # the run's own lr is the bold one
    assert "larger lr won for atto:" in text  # its best lr is the grid's edge; zepto's is not


# ---------------------------------------------------------------- plans, lr, presets ---


def test_lr_rule_scales_with_width_and_batch_from_nano_and_caps_tiny_models():
    assert sweep_plan.lr_for_width(128) == pytest.approx(3e-3)  # nano at batch 16: the default
    assert sweep_plan.lr_for_width(256) == pytest.approx(1.5e-3)
    assert sweep_plan.lr_for_width(128, batch=4) == pytest.approx(1.5e-3)  # √(4/16) = ½
    assert sweep_plan.lr_for_width(192, 4) * 192 == pytest.approx(
        sweep_plan.lr_for_width(64, 4) * 64
    )
    assert sweep_plan.lr_for_width(16) == sweep_plan.MAX_LR == sweep_plan.lr_for_width(32)
    assert sweep_plan.lr_for_width(16, 4) == sweep_plan.MAX_LR > sweep_plan.lr_for_width(32, 4)
    widths = [make_config("lm", s).hidden_size for s in SIZES]
    lrs = [sweep_plan.lr_for_width(w, 4) for w in widths]
    assert lrs == sorted(lrs, reverse=True)
    with pytest.raises(ConfigError):
        sweep_plan.lr_for_width(0)
    with pytest.raises(ConfigError):
        sweep_plan.lr_for_width(64, batch=0)


def test_tokens_plan_spans_30x_with_equal_tokens_and_a_per_size_lr():
    shapes = [sweep_plan.shape(s, 2048) for s in SIZES]
    plan = sweep_plan.tokens_plan(shapes[::-1], 393216, 16, 128)
    assert [r.size for r in plan] == SIZES  # smallest first: the largest is the check
    assert len({r.tokens for r in plan}) == 1 and plan[0].tokens == 393216
    assert plan[-1].non_embedding_params / plan[0].non_embedding_params >= 30
    assert plan[-2].non_embedding_params / plan[0].non_embedding_params >= 30  # the fit alone
    assert [r.lr for r in plan] == [sweep_plan.lr_for_width(s.width, 16) for s in shapes]
    with pytest.raises(ConfigError, match="≥ 6 sizes spanning ≥ 30×"):
        sweep_plan.tokens_plan(shapes[:5], 393216, 16, 128)
    with pytest.raises(EdgeZooError, match="unknown size"):
        sweep_plan.shape("yocto", 2048)


def test_isoflop_plan_budgets_sizes_and_reuse_of_tokens_runs():
    shapes = [sweep_plan.shape(s, 2048) for s in SIZES]
    tokens_runs = {r.key for r in sweep_plan.tokens_plan(shapes, 393216, 16, 128)}
    plan = sweep_plan.isoflop_plan(shapes, ["femto", "pico", "nano"], 393216, 4, 16, 128)
    assert len(plan) == 3 and list(plan) == sorted(plan)
    for c, runs in plan.items():
        assert len(runs) == 4
        sizes = [r.non_embedding_params for r in runs]
        assert sizes == sorted(sizes)
        for r in runs:  # each run's compute is the budget, up to one step's rounding
            assert abs(r.flops - c) <= 6 * r.non_embedding_params * 2048 / 2 + 1
        assert sum(r.key in tokens_runs for r in runs) == 1  # the centre is reused
    with pytest.raises(ConfigError, match="at least 3 budgets"):
        sweep_plan.isoflop_plan(shapes, ["atto", "femto"], 393216, 4, 16, 128)
    with pytest.raises(ConfigError, match="at least 4 sizes"):
        sweep_plan.isoflop_plan(shapes, ["atto", "femto", "pico"], 393216, 3, 16, 128)


def test_sub_nano_presets_are_a_tied_ladder_below_nano():
    names = preset_names("lm")
    assert names[:5] == ["zepto", "atto", "femto", "pico", "nano"]
    counts = [non_embedding_params(make_config("lm", s, vocab_size=2048)) for s in SIZES]
    assert counts == sorted(counts) and counts[0] == 6736 and counts[-1] / counts[0] > 300
    for s in SIZES[:4]:
        cfg = make_config("lm", s)
        assert cfg.tie_word_embeddings and cfg.head_dim == 16


def test_pareto_front_is_sorted_and_drops_dominated_points():
    from benchmarks.sweep import pareto_front

    points = [
        {"size": "a", "precision": "fp32", "ms": 1.0, "loss": 3.0},
        {"size": "a", "precision": "int4", "ms": 0.5, "loss": 3.1},
        {"size": "b", "precision": "fp32", "ms": 2.0, "loss": 2.5},
        {"size": "b", "precision": "int8", "ms": 2.5, "loss": 2.6},  # slower and worse than b fp32
    ]
    front = pareto_front(points)
    assert [(p["size"], p["precision"]) for p in front] == [
        ("a", "int4"),
        ("a", "fp32"),
        ("b", "fp32"),
    ]


def test_a_few_step_run_shares_the_tokenizer_scores_windows_and_is_reused(
    tmp_path, text_corpus, monkeypatch
):
    import torch

    from benchmarks import sweep_train
    from edgezoo.zoo import train as train_module
    from edgezoo.zoo import train_setup
    from edgezoo.zoo.modeldir import load_model
    from edgezoo.zoo.tokenizer import load_tokenizer, tokenizer_fingerprint
    from edgezoo.zoo.train_tasks import score_windows

    source = str(text_corpus)
    tok = sweep_train.shared_tokenizer(tmp_path, source, 600)

    def no_second_tokenizer(texts, vocab_size, max_chars=0):
        raise AssertionError("a run trained its own tokenizer instead of the sweep's")

    monkeypatch.setattr(train_setup, "train_tokenizer", no_second_tokenizer)
    windows = sweep_train.eval_windows(source, tok, 32)
    plan = sweep_plan.planned(sweep_plan.shape("zepto", 600), 3 * 4 * 32, 4, 32, min_steps=1)
    kwargs = dict(source=source, vocab=600, context=32, batch=4, windows=windows, tokenizer=tok)
    record = sweep_train.run(plan, tmp_path, **kwargs)
    assert record["steps"] == 3 and record["lr"] == pytest.approx(sweep_plan.lr_for_width(16, 4))
    assert json.loads((tmp_path / plan.key / "run.json").read_text())["tokenizer"] == str(
        tmp_path / "tokenizer.json"
    )
    model_dir = tmp_path / plan.key
    assert tokenizer_fingerprint(load_tokenizer(model_dir)) == tokenizer_fingerprint(tok)
    expected = score_windows(load_model(model_dir).eval(), windows, torch.device("cpu"), 8)
    assert record["val_loss"] == pytest.approx(expected.loss, abs=1e-5)
    assert len(record["window_loss_sums"]) == len(windows) > 10

    def no_training(cfg):
        raise AssertionError("a finished run with the same settings is trained again")

    monkeypatch.setattr(train_module, "train", no_training)
    assert sweep_train.run(plan, tmp_path, **kwargs) == record
