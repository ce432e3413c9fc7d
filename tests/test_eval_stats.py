"""Bootstrap CIs and the length-controlled win rate against cases whose answer is known analytically."""

from __future__ import annotations

import math

import numpy as np
import pytest

from idea_mcts.evaluation.stats import bootstrap_mean_ci, length_controlled_win_rate, paired_bootstrap_diff_ci


def test_constant_data_gives_a_zero_width_interval() -> None:
    ci = bootstrap_mean_ci([7.0] * 25, seed=3)
    assert (ci.estimate, ci.low, ci.high, ci.n) == (7.0, 7.0, 7.0, 25)


def test_large_normal_sample_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(123)
    x = rng.normal(5.0, 2.0, size=4000)
    ci = bootstrap_mean_ci(x, seed=0, n_resamples=4000)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)  # 0.062
    assert ci.estimate == pytest.approx(x.mean())
    assert ci.low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bernoulli_win_rate_interval_matches_the_binomial_one() -> None:
    x = [1.0] * 300 + [0.0] * 700  # p = 0.3, sd = sqrt(p(1-p))
    ci = bootstrap_mean_ci(x, seed=1, n_resamples=4000)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 1000)
    assert ci.estimate == pytest.approx(0.3)
    assert (ci.low, ci.high) == pytest.approx((0.3 - half, 0.3 + half), abs=0.1 * half)


def test_seeded_and_confidence_orders_intervals() -> None:
    x = np.random.default_rng(0).normal(size=200)
    assert bootstrap_mean_ci(x, seed=5) == bootstrap_mean_ci(x, seed=5)
    wide, narrow = bootstrap_mean_ci(x, confidence=0.99), bootstrap_mean_ci(x, confidence=0.8)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_paired_difference_cancels_what_the_pair_shares() -> None:
    """b = a + 0.5 exactly: the paired CI is the point 0.5, although a and b each vary a lot."""
    a = np.random.default_rng(7).normal(0.0, 10.0, size=300)
    ci = paired_bootstrap_diff_ci(a + 0.5, a, seed=2)
    assert ci.estimate == pytest.approx(0.5)
    assert (ci.low, ci.high) == pytest.approx((0.5, 0.5))
    unpaired_half = 1.96 * math.sqrt(2 * 100 / 300)  # what ignoring the pairing would give: about 1.6
    assert ci.high - ci.low < unpaired_half / 100


def test_paired_difference_interval_is_that_of_the_differences() -> None:
    """a - b ~ N(1, 0.2^2) per item, a shared item effect of sd 10: CI = 1 +- 1.96 * 0.2 / sqrt(n)."""
    rng = np.random.default_rng(11)
    item = rng.normal(0.0, 10.0, size=2000)
    d = rng.normal(1.0, 0.2, size=2000)
    ci = paired_bootstrap_diff_ci(item + d, item, seed=0, n_resamples=4000)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert ci.estimate == pytest.approx(d.mean())
    assert (ci.low, ci.high) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.1 * half)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [[1.0, 2.0]]])
def test_bad_samples_are_refused(bad: list) -> None:
    with pytest.raises(ValueError):
        bootstrap_mean_ci(bad)


def test_paired_needs_equal_lengths() -> None:
    with pytest.raises(ValueError, match="pairs"):
        paired_bootstrap_diff_ci([1.0, 2.0], [1.0])


def test_length_control_removes_a_pure_length_preference() -> None:
    """Preference depends on length alone (theta = 0) and the model is mostly longer: the raw win rate is far
    above 0.5, the length-controlled one is 0.5."""
    rng = np.random.default_rng(0)
    n = 20000
    delta = rng.normal(300.0, 400.0, size=n)  # model outputs longer on average
    p = 1 / (1 + np.exp(-2.0 * np.tanh(delta / delta.std())))
    y = (rng.random(n) < p).astype(float)
    assert y.mean() > 0.65
    lc = length_controlled_win_rate(y, 1000.0 + delta, np.full(n, 1000.0))
    assert lc == pytest.approx(0.5, abs=0.02)


def test_length_control_keeps_a_real_advantage() -> None:
    """Preference sigmoid(1) whatever the lengths: the controlled win rate is sigmoid(1) = 0.731."""
    rng = np.random.default_rng(1)
    n = 20000
    delta = rng.normal(0.0, 200.0, size=n)
    y = (rng.random(n) < 1 / (1 + math.exp(-1.0))).astype(float)
    lc = length_controlled_win_rate(y, 500.0 + delta, np.full(n, 500.0))
    assert lc == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.02)


def test_length_control_without_length_differences_is_the_win_rate() -> None:
    y = [1.0, 1.0, 0.5, 0.0]  # win rate 0.625
    assert length_controlled_win_rate(y, [10, 20, 30, 40], [10, 20, 30, 40]) == pytest.approx(0.625, abs=1e-3)
