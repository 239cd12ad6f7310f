"""The fits of a scaling sweep, pure numpy: power law, bootstraps, IsoFLOP parabolas.

Kept apart from the training so tests can check each fit on data with a known answer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgezoo.errors import ConfigError

ALPHA_GRID = np.concatenate([np.linspace(-1.0, -0.002, 500), np.linspace(0.002, 3.0, 1500)])


def _linear_fits(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``x``, least squares y ≈ a·x + c with c ≥ 0: arrays (a, c, squared error;
    infinite where the best a is not positive)."""
    x = np.atleast_2d(x)
    xm, ym = x.mean(axis=1), y.mean()
    dx = x - xm[:, None]
    var = np.einsum("ij,ij->i", dx, dx)
    a = np.divide(dx @ (y - ym), var, out=np.zeros_like(var), where=var > 0)
    c = ym - a * xm
    floor = c < 0  # a loss floor below zero means nothing: pin it at 0
    a = np.where(floor, (x @ y) / np.einsum("ij,ij->i", x, x), a)
    c = np.where(floor, 0.0, c)
    err = ((a[:, None] * x + c[:, None] - y) ** 2).sum(axis=1)
    # a < 0 flips the law's shape (a rising-then-saturating curve for α > 0): not a power law
    return a, c, np.where(a > 0, err, np.inf)


def fit_power_law(n: np.ndarray, loss: np.ndarray) -> dict[str, float]:
    """L(N) = a·N^(−α) + c by least squares in L, c ≥ 0; a, α, c, R².

    For a fixed α the model is linear in (a, c), so the fit profiles α: a grid, then a
    golden-section refinement around the best grid point. N is scaled by its geometric mean
    inside the fit (a is reported for N itself). α < 0 (loss rising with size) is allowed,
    so a failed sweep shows as one rather than as a flat fit."""
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    if len(n) < 3 or len(np.unique(n)) < 3:
        raise ConfigError(f"a 3-parameter power law needs ≥ 3 distinct sizes, got {len(set(n))}")
    ref = float(np.exp(np.mean(np.log(n))))
    x = n / ref

    def sse(alpha: float) -> float:
        return float(_linear_fits(x**-alpha, loss)[2][0])

    errors = _linear_fits(x[None, :] ** -ALPHA_GRID[:, None], loss)[2]
    i = int(np.argmin(errors))
    lo, hi = ALPHA_GRID[max(0, i - 1)], ALPHA_GRID[min(len(ALPHA_GRID) - 1, i + 1)]
    if lo * hi < 0:  # never refine across α = 0, where N^(−α) is constant and c absorbs a
        lo, hi = (lo, -1e-3) if ALPHA_GRID[i] < 0 else (1e-3, hi)
    alpha = _golden_min(sse, lo, hi)
    a, c, err = (float(v[0]) for v in _linear_fits(x**-alpha, loss))
    total = float(np.sum((loss - loss.mean()) ** 2))
    return {
        "a": float(a * ref**alpha),
        "alpha": float(alpha),
        "c": c,
        "r2": 1.0 - err / total if total > 0 else 1.0,
        "rmse": float(np.sqrt(err / len(n))),
    }


def predict(fit: dict[str, float], n: float) -> float:
    return fit["a"] * n ** (-fit["alpha"]) + fit["c"]


def _golden_min(f: Callable[[float], float], lo: float, hi: float, iters: int = 60) -> float:
    g = (np.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


# ---------------------------------------------------------------- bootstraps -----------


def window_means(loss_sums: np.ndarray, tokens: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-size mean loss over the windows ``idx`` (rows: sizes, columns: windows)."""
    return loss_sums[:, idx].sum(axis=1) / tokens[idx].sum()


def interval(samples: list[float] | np.ndarray, level: float = 0.95) -> list[float]:
    """The central ``level`` percentile interval of bootstrap samples."""
    q = (1 - level) / 2 * 100
    lo, hi = np.percentile(np.asarray(samples, float), [q, 100 - q])
    return [float(lo), float(hi)]


def bootstrap_windows(
    n: np.ndarray,
    loss_sums: np.ndarray,
    tokens: np.ndarray,
    n_check: float | None,
    check_sums: np.ndarray | None,
    draws: int,
    rng: np.random.Generator,
) -> dict[str, list[float]]:
    """Paired bootstrap over held-out windows: every size is re-scored on the same
    resampled windows, the law refitted, the check size predicted. Measures how much the
    finite evaluation set moves α, c and the prediction — not training-seed noise."""
    count = loss_sums.shape[1]
    out: dict[str, list[float]] = {"alpha": [], "c": [], "r2": []}
    if n_check is not None:
        out |= {"predicted": [], "error_pct": []}
    for _ in range(draws):
        idx = rng.integers(0, count, count)
        fit = fit_power_law(n, window_means(loss_sums, tokens, idx))
        for key in ("alpha", "c", "r2"):
            out[key].append(fit[key])
        if n_check is not None:
            pred = predict(fit, n_check)
            actual = float(check_sums[idx].sum() / tokens[idx].sum())
            out["predicted"].append(pred)
            out["error_pct"].append((pred / actual - 1) * 100)
    return {k: interval(v) for k, v in out.items()}


def bootstrap_sizes(
    n: np.ndarray,
    loss: np.ndarray,
    n_check: float | None,
    draws: int,
    rng: np.random.Generator,
    min_distinct: int = 4,
) -> dict[str, list[float]]:
    """Bootstrap over the fitted sizes (drawn with replacement; draws with fewer than
    ``min_distinct`` distinct sizes are redrawn): how much α, c and the prediction hang on
    which sizes were trained — the question a reader of a 5-point fit should ask."""
    if len(n) < min_distinct:
        raise ConfigError(f"a size bootstrap needs ≥ {min_distinct} sizes, got {len(n)}")
    out: dict[str, list[float]] = {"alpha": [], "c": []}
    if n_check is not None:
        out["predicted"] = []
    while len(out["alpha"]) < draws:
        idx = rng.integers(0, len(n), len(n))
        if len(np.unique(idx)) < min_distinct:
            continue
        fit = fit_power_law(n[idx], loss[idx])
        out["alpha"].append(fit["alpha"])
        out["c"].append(fit["c"])
        if n_check is not None:
            out["predicted"].append(predict(fit, n_check))
    return {k: interval(v) for k, v in out.items()}


# ---------------------------------------------------------------- IsoFLOP --------------


def parabola_minimum(n: np.ndarray, loss: np.ndarray) -> dict[str, float | bool]:
    """Loss ≈ p2·x² + p1·x + p0 in x = ln N; the vertex N* and whether it lies inside the
    sizes trained (outside, N* is an extrapolation and the report says so)."""
    x = np.log(np.asarray(n, float))
    if len(x) < 3:
        raise ConfigError("a parabola needs ≥ 3 sizes per budget")
    p2, p1, p0 = np.polyfit(x, np.asarray(loss, float), 2)
    if p2 <= 0:  # no minimum: loss is concave in log N over these sizes
        best = int(np.argmin(loss))
        return {
            "n_star": float(n[best]),
            "loss_star": float(loss[best]),
            "inside": False,
            "curvature": float(p2),
        }
    xs = -p1 / (2 * p2)
    return {
        "n_star": float(np.exp(xs)),
        "loss_star": float(p0 - p1 * p1 / (4 * p2)),
        "inside": bool(x.min() <= xs <= x.max()),
        "curvature": float(p2),
    }


def power_exponent(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """y ∝ C^a by least squares in log–log: (a, the prefactor)."""
    a, b = np.polyfit(np.log(np.asarray(c, float)), np.log(np.asarray(y, float)), 1)
    return float(a), float(np.exp(b))
