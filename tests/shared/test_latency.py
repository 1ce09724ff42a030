"""Latency spread: coefficient of variation and order-statistic intervals on quantiles."""

from __future__ import annotations

import math
import random

import pytest

from shared.latency import (
    coefficient_of_variation,
    latency_spread,
    quantile_interval,
    quantile_ranks,
)


def test_median_ranks_match_the_textbook_binomial_interval() -> None:
    # n=10: [x_(2), x_(9)] covers the median with 97.9%; n=100: [x_(40), x_(61)].
    assert quantile_ranks(10, 0.5) == (1, 8)
    assert quantile_ranks(100, 0.5) == (39, 60)


def test_too_few_samples_give_no_interval_rather_than_a_false_one() -> None:
    assert quantile_ranks(5, 0.5) is None  # the widest interval covers only 93.75%
    assert quantile_interval([1.0] * 20, 0.9) is None
    assert latency_spread([1.0, 2.0])["p90_ci"] is None


def test_the_95_percent_interval_on_p90_covers_the_true_p90_at_least_95_percent_of_the_time() -> (
    None
):
    rng = random.Random(0)
    true_p90 = -math.log(0.1)  # of an exponential distribution with rate 1
    trials, hits = 1000, 0
    for _ in range(trials):
        interval = quantile_interval([rng.expovariate(1.0) for _ in range(60)], 0.9)
        assert interval is not None
        hits += interval[0] <= true_p90 <= interval[1]
    assert hits / trials >= 0.94  # 0.95 nominal, minus sampling noise of 1000 trials


def test_large_runs_use_the_normal_approximation_and_stay_centred() -> None:
    low, high = quantile_ranks(20_000, 0.5) or (0, 0)
    assert low < 10_000 < high and high - low == pytest.approx(2 * 1.96 * 70.7, abs=3)


def test_coefficient_of_variation_is_std_over_mean() -> None:
    assert coefficient_of_variation([2.0, 4.0]) == pytest.approx(1 / 3)
    assert coefficient_of_variation([3.0]) is None
