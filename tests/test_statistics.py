"""The comparison statistics on synthetic data whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from klip.studies.statistics import (
    aggregate,
    difference_of_means,
    iqm,
    normalise,
    performance_profile,
    probability_of_improvement,
)


def test_iqm_of_a_known_sample_is_the_mean_of_its_middle_half():
    # 1..8: the middle half is 3, 4, 5, 6.
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)
    # Outliers in the outer quarters do not move it.
    assert iqm([-1000, 3, 4, 5, 6, 1000, 2, 7]) == pytest.approx(4.5)
    assert iqm([5.0] * 4) == 5.0


def test_aggregate_pools_all_tasks_runs():
    scores = {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8]}
    assert aggregate(scores, "iqm").point == pytest.approx(4.5)
    assert aggregate(scores, "mean").point == pytest.approx(4.5)


def test_optimality_gap_is_the_mean_shortfall_below_one():
    # Shortfalls 0.5, 0, 0 and 1.0, 0.25, 0 (scores above 1 count 0): mean 1.75 / 6.
    scores = {"a": [0.5, 1.0, 3.0], "b": [0.0, 0.75, 1.5]}
    assert aggregate(scores, "optimality_gap").point == pytest.approx(1.75 / 6)
    assert aggregate({"a": [1.0, 2.0], "b": [1.5, 1.0]}, "optimality_gap").point == 0.0


def test_difference_of_means_and_its_interval():
    rng = np.random.default_rng(0)
    x, y = rng.normal(10.0, 1.0, 20), rng.normal(0.0, 1.0, 20)
    estimate = difference_of_means(x, y, n_resamples=1000)
    assert estimate.point == pytest.approx(x.mean() - y.mean())
    assert 8.0 < estimate.low < estimate.point < estimate.high < 12.0
    # Same distribution: the interval covers 0; one run on either side: no interval.
    same = difference_of_means(rng.normal(0, 1, 20), rng.normal(0, 1, 20), n_resamples=1000)
    assert same.contains(0.0)
    assert math.isnan(difference_of_means([1.0], [1.0, 2.0]).low)


def test_bootstrap_is_stratified_by_task():
    # Resampling runs within each task keeps each task's mean; the pooled mean cannot move.
    # An unstratified bootstrap would mix the tasks and give a wide interval.
    estimate = aggregate({"a": [0.0] * 5, "b": [1.0] * 5}, "mean")
    assert (estimate.point, estimate.low, estimate.high) == (0.5, 0.5, 0.5)


def test_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    true_means = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    trials, covered = 300, 0
    for trial in range(trials):
        scores = {f"t{k}": rng.normal(mean, 1.0, 10) for k, mean in enumerate(true_means)}
        estimate = aggregate(scores, "mean", n_resamples=1000, seed=trial)
        covered += estimate.contains(true_means.mean())
    # Binomial standard error at 95% over 300 trials is 1.3%; percentile intervals on 10
    # runs per task run a little narrow.
    assert 0.90 <= covered / trials <= 0.99


def test_ci_is_undefined_with_a_single_run_in_a_task():
    estimate = aggregate({"a": [1.0, 2.0], "b": [3.0]}, "mean")
    assert estimate.point == pytest.approx(2.0)
    assert math.isnan(estimate.low) and math.isnan(estimate.high)


def test_probability_of_improvement_of_identical_distributions_is_near_one_half():
    rng = np.random.default_rng(2)
    x = {f"t{k}": rng.normal(k, 1.0, 200) for k in range(5)}
    y = {f"t{k}": rng.normal(k, 1.0, 200) for k in range(5)}
    estimate = probability_of_improvement(x, y)
    assert estimate.point == pytest.approx(0.5, abs=0.03)
    assert estimate.contains(0.5)


def test_probability_of_improvement_matches_its_closed_form():
    # X ~ N(1, 1), Y ~ N(0, 1): P(X > Y) = Phi(1 / sqrt(2)).
    rng = np.random.default_rng(3)
    x = {f"t{k}": rng.normal(1.0, 1.0, 300) for k in range(4)}
    y = {f"t{k}": rng.normal(0.0, 1.0, 300) for k in range(4)}
    estimate = probability_of_improvement(x, y)
    expected = stats.norm.cdf(1 / math.sqrt(2))
    assert estimate.point == pytest.approx(expected, abs=0.02)
    assert estimate.contains(expected)


def test_probability_of_improvement_counts_ties_as_half_and_averages_tasks():
    # Task a: pairs (2,1) win, (2,2) tie, (3,1) win, (3,2) win -> 3.5 / 4.  Task b: always loses.
    estimate = probability_of_improvement({"a": [2, 3], "b": [0, 0]}, {"a": [1, 2], "b": [1, 1]})
    assert estimate.point == pytest.approx((0.875 + 0.0) / 2)


def test_performance_profile_is_the_fraction_of_runs_above_each_threshold():
    profile = performance_profile({"a": [0.0, 1.0, 2.0, 3.0]}, [-1.0, 1.5, 3.0])
    np.testing.assert_allclose(profile.fraction, [1.0, 0.5, 0.0])
    assert np.all(profile.low <= profile.fraction) and np.all(profile.fraction <= profile.high)
    # Tasks weigh the same whatever their number of runs.
    profile = performance_profile({"a": [1.0, 1.0, 1.0, 1.0], "b": [0.0, 0.0]}, [0.5])
    np.testing.assert_allclose(profile.fraction, [0.5])


def test_normalise_maps_random_to_zero_and_reference_to_one():
    np.testing.assert_allclose(normalise([10.0, 110.0, 60.0], random=10.0, reference=110.0), [0, 1, 0.5])
    with pytest.raises(ValueError, match="cannot normalise"):
        normalise(1.0, random=5.0, reference=5.0)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="finite"):
        aggregate({"a": [1.0, float("nan")]})
    with pytest.raises(ValueError, match="at least one"):
        aggregate({"a": []})
    with pytest.raises(ValueError, match="unknown statistic"):
        aggregate({"a": [1.0, 2.0]}, "median")


def test_tasks_where_step_did_not_beat_random_are_left_out_of_normalisation():
    from klip.studies.compare_report import tasks_step_learned

    kept, left_out = tasks_step_learned(
        {"Hopper-v4": [676.0, 500.0, 900.0], "Ant-v4": [-53.0, -40.0, -66.0], "Walker2d-v4": [30.0],
         "Humanoid-v4": [100.0, 140.0]},
        {"Hopper-v4": 22.4, "Ant-v4": -52.8, "Walker2d-v4": 2.9, "Humanoid-v4": 106.7})
    # Humanoid: mean 120 is 13.3 above random, less than its standard error (20): left out too.
    assert kept == ["Hopper-v4", "Walker2d-v4"] and left_out == ["Ant-v4", "Humanoid-v4"]
