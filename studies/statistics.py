"""Aggregate statistics of a comparison, the way Agarwal et al. (2021) ask for them.

"Deep RL at the Edge of the Statistical Precipice": interquartile mean (IQM), mean and
optimality gap of normalised scores with stratified bootstrap confidence intervals, the
probability of improvement of one entry over another, and performance profiles; and, per
task, the difference of two entries' mean returns with its bootstrap interval.

Every estimate and interval comes from SciPy: `scipy.stats.trim_mean` (IQM),
`scipy.stats.mannwhitneyu` (probability of improvement: U / (n m)) and
`scipy.stats.bootstrap` (the intervals). Passing each task's runs to `bootstrap` as its own
sample makes SciPy resample runs within each task independently: the stratified bootstrap.
Percentile intervals, as in the paper's `rliable`, because BCa is undefined on the
degenerate resamples a task with identical runs gives.

Scores are given per task: `{task: array of one score per run}`; tasks may hold different
numbers of runs (a partial grid).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with the bounds of its confidence interval (NaN when undefined)."""

    point: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def format(self, digits: int = 2) -> str:
        if math.isnan(self.low):
            return f"{self.point:.{digits}f} (no CI)"
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _samples(scores: Mapping[str, Sequence[float] | np.ndarray]) -> list[np.ndarray]:
    samples = [np.asarray(values, dtype=float).ravel() for values in scores.values()]
    if not samples or any(sample.size == 0 for sample in samples):
        raise ValueError("every task needs at least one score")
    if any(not np.all(np.isfinite(sample)) for sample in samples):
        raise ValueError("scores must be finite")
    return samples


def iqm(values: Sequence[float] | np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end)."""
    return stats.trim_mean(np.asarray(values, dtype=float), 0.25, axis=axis)


def _pooled(statistic: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """A statistic of all runs of all tasks together, vectorised over resamples."""

    def pooled(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(np.concatenate(samples, axis=axis), axis=axis)

    return pooled


def _bootstrap(
    samples: list[np.ndarray], statistic: Callable[..., np.ndarray], point: float | np.ndarray,
    confidence: float, n_resamples: int, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified percentile bootstrap bounds; NaN where a stratum has fewer than 2 runs."""
    shape = np.shape(point)
    if any(sample.size < 2 for sample in samples):
        return np.full(shape, np.nan), np.full(shape, np.nan)
    with warnings.catch_warnings():
        # Identical runs in every task: the interval is the point itself, which is right.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            tuple(samples), statistic, n_resamples=n_resamples, vectorized=True, paired=False,
            axis=-1, confidence_level=confidence, method="percentile",
            rng=np.random.default_rng(seed),
        )
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def aggregate(
    scores: Mapping[str, Sequence[float] | np.ndarray], statistic: str = "iqm", *,
    confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> Estimate:
    """IQM, mean or optimality gap of all runs of all tasks, with a stratified bootstrap CI.

    The optimality gap is the mean shortfall below a normalised score of 1 (`step`'s level in
    a comparison): mean(max(0, 1 - score)); lower is better, 0 when every run reaches 1.
    """
    functions = {"iqm": lambda x, axis=-1: iqm(x, axis=axis), "mean": np.mean,
                 "optimality_gap": lambda x, axis=-1: np.mean(np.maximum(1.0 - x, 0.0), axis=axis)}
    if statistic not in functions:
        raise ValueError(f"unknown statistic {statistic!r}; choose {', '.join(functions)}")
    samples = _samples(scores)
    function = _pooled(functions[statistic])
    point = float(function(*samples))
    low, high = _bootstrap(samples, function, point, confidence, n_resamples, seed)
    return Estimate(point, float(low), float(high))


def _improvement(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over tasks of P(X > Y) + P(X = Y) / 2; samples alternate x1, y1, x2, y2, ..."""
    per_task = []
    for x, y in zip(samples[::2], samples[1::2], strict=True):
        u = stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic
        per_task.append(np.asarray(u) / (x.shape[axis] * y.shape[axis]))
    return np.mean(per_task, axis=0)


def probability_of_improvement(
    x: Mapping[str, Sequence[float] | np.ndarray], y: Mapping[str, Sequence[float] | np.ndarray], *,
    confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> Estimate:
    """P(X > Y): the chance a run of X on a task beats a run of Y, averaged over tasks.

    Ties count a half (the Mann-Whitney U statistic over n m). The CI resamples X's and Y's
    runs independently within each task (the paper's stratified bootstrap).
    """
    tasks = [task for task in x if task in y]
    if not tasks:
        raise ValueError("X and Y share no task")
    samples = []
    for task in tasks:
        samples.extend(_samples({task: x[task]}) + _samples({task: y[task]}))
    point = float(_improvement(*samples))
    low, high = _bootstrap(samples, _improvement, point, confidence, n_resamples, seed)
    return Estimate(point, float(low), float(high))


def difference_of_means(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
    confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> Estimate:
    """mean(x) - mean(y) of two sets of runs on one task, with a percentile bootstrap CI that
    resamples each set independently (no CI with fewer than two runs in either)."""
    samples = _samples({"x": x, "y": y})

    def difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(a, axis=axis) - np.mean(b, axis=axis)

    point = float(difference(*samples))
    low, high = _bootstrap(samples, difference, point, confidence, n_resamples, seed)
    return Estimate(point, float(low), float(high))


@dataclass(frozen=True)
class Profile:
    """Fraction of runs whose score exceeds each threshold, with CI bands."""

    thresholds: np.ndarray
    fraction: np.ndarray
    low: np.ndarray
    high: np.ndarray


def performance_profile(
    scores: Mapping[str, Sequence[float] | np.ndarray], thresholds: Sequence[float] | np.ndarray, *,
    confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> Profile:
    """Score distribution: for each threshold tau, the fraction of runs with score > tau.

    Each task weighs the same (the per-task fractions are averaged), so a task with more
    finished runs does not dominate a partial grid.
    """
    samples = _samples(scores)
    taus = np.asarray(thresholds, dtype=float)

    def fraction(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        per_task = [np.mean(np.moveaxis(s, axis, -1)[..., None] > taus, axis=-2) for s in resampled]
        # Thresholds last in, first out: bootstrap wants the statistic's outputs on axis 0.
        return np.moveaxis(np.mean(per_task, axis=0), -1, 0)

    point = fraction(*samples)
    low, high = _bootstrap(samples, fraction, point, confidence, n_resamples, seed)
    return Profile(taus, point, low, high)


def normalise(score: float | np.ndarray, random: float, reference: float) -> float | np.ndarray:
    """Normalised score: `random` maps to 0 and `reference` to 1."""
    if not math.isfinite(random) or not math.isfinite(reference) or reference == random:
        raise ValueError(f"cannot normalise with random={random} and reference={reference}")
    return (np.asarray(score, dtype=float) - random) / (reference - random)


__all__ = [
    "CONFIDENCE",
    "N_RESAMPLES",
    "Estimate",
    "Profile",
    "aggregate",
    "difference_of_means",
    "iqm",
    "normalise",
    "performance_profile",
    "probability_of_improvement",
]
