"""Bootstrap confidence intervals and a length-controlled win rate, on numpy alone, seeded.

- `bootstrap_mean_ci`: percentile bootstrap CI of a mean (per-item scores, ratings, win/tie/loss as 1/0.5/0).
- `paired_bootstrap_diff_ci`: CI of mean(a - b) when a[i] and b[i] belong to the same item (two models on the
  same prompts, two arms on the same seeds): items are resampled jointly, so what the pair shares cancels.
- `length_controlled_win_rate`: AlpacaEval 2's length control, simplified (no instruction-difficulty term).

Every function takes a `seed`; the same inputs and seed give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 10_000
"""Bootstrap resamples (enough for stable 95% percentile bounds at the sizes evaluated here)."""
_CHUNK = 1_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    estimate: float
    """The statistic on the data itself (the mean, or the mean difference)."""
    low: float
    """Lower bound of the interval."""
    high: float
    """Upper bound of the interval."""
    n: int
    """Items the statistic is computed over."""
    confidence: float = 0.95
    """Coverage of the interval."""

    def as_dict(self, digits: int = 4) -> dict[str, Any]:
        return {"estimate": round(self.estimate, digits), "ci_low": round(self.low, digits),
                "ci_high": round(self.high, digits), "n": self.n, "confidence": self.confidence}


def _as_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a flat sequence of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what}: no values to bootstrap")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: values must be finite (drop failed items before computing a CI)")
    return arr


def _check(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def _resampled_means(x: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` resamples of `x` with replacement (drawn in chunks to bound memory)."""
    rng = np.random.default_rng(seed)
    n = x.size
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        k = min(_CHUNK, n_resamples - start)
        out[start : start + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return out


def _interval(estimate: float, means: np.ndarray, n: int, confidence: float) -> Interval:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # A constant sample resamples to the same mean up to float rounding: report exactly zero width then.
    low, high = min(float(low), estimate), max(float(high), estimate)
    return Interval(estimate=estimate, low=low, high=high, n=n, confidence=confidence)


def bootstrap_mean_ci(values: Sequence[float] | np.ndarray, *, confidence: float = 0.95,
                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean of `values`."""
    _check(confidence, n_resamples)
    x = _as_array(values, "bootstrap_mean_ci")
    return _interval(float(x.mean()), _resampled_means(x, n_resamples, seed), x.size, confidence)


def paired_bootstrap_diff_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                             confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                             seed: int = 0) -> Interval:
    """Paired bootstrap CI of mean(a) - mean(b): a[i] and b[i] are two measurements of item i, and the items
    are resampled together (which is the bootstrap of the per-item differences)."""
    _check(confidence, n_resamples)
    xa, xb = _as_array(a, "paired_bootstrap_diff_ci a"), _as_array(b, "paired_bootstrap_diff_ci b")
    if xa.size != xb.size:
        raise ValueError(f"paired_bootstrap_diff_ci: a has {xa.size} items, b has {xb.size}; pairs need both")
    d = xa - xb
    return _interval(float(d.mean()), _resampled_means(d, n_resamples, seed), d.size, confidence)


def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def length_controlled_win_rate(scores: Sequence[float], model_lengths: Sequence[float],
                               reference_lengths: Sequence[float], *, l2: float = 1e-3,
                               max_iter: int = 100) -> float:
    """The win rate the model would have if its outputs were as long as the reference's.

    AlpacaEval 2's length-controlled win rate fits a logistic model of the preference with a length term
    `tanh((len_model - len_ref) / std)` and predicts with that term set to zero. This is the same fit without
    AlpacaEval's instruction-difficulty term (which needs many models' outputs):
    `P(model preferred) = sigmoid(theta + phi * tanh(delta / std(delta)))`, fitted by penalised maximum
    likelihood on soft labels (win 1, tie 0.5, loss 0; a small L2 penalty keeps the fit finite when one length
    sign always wins), and the controlled win rate is `sigmoid(theta)`. When the lengths do not vary, the length
    term is dropped and the result is the (slightly shrunk) raw win rate.
    """
    y = _as_array(scores, "length_controlled_win_rate scores")
    lm = _as_array(model_lengths, "length_controlled_win_rate model_lengths")
    lr = _as_array(reference_lengths, "length_controlled_win_rate reference_lengths")
    if not (y.size == lm.size == lr.size):
        raise ValueError("length_controlled_win_rate: scores and both length lists need one entry per item")
    if ((y < 0) | (y > 1)).any():
        raise ValueError("length_controlled_win_rate: scores must lie in [0, 1]")
    delta = lm - lr
    sd = float(delta.std())
    feature = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    x = np.stack([np.ones_like(feature), feature], axis=1)
    if sd == 0:
        x = x[:, :1]
    w = np.zeros(x.shape[1])
    n = y.size
    for _ in range(max_iter):  # Newton's method on mean log-loss + l2/2 * |w|^2 (strictly convex)
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) / n + l2 * w
        hess = (x.T * (p * (1 - p))) @ x / n + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return float(_sigmoid(w[0]))

