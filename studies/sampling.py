"""A study's sampler and pruner, built from its settings; refusals before anything is written."""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna

from klip.studies.settings import (
    WILCOXON_MIN_INSTANCES,
    StudyError,
    StudySettings,
)
from klip.studies.space import default_point, grid_points
from klip.studies.training import TrainConfig

# -- samplers and pruners ----------------------------------------------------------

class KnownSpaceCmaEsSampler(optuna.samplers.CmaEsSampler):
    """CMA-ES that knows the search space before any trial has finished.

    Optuna's CMA-ES infers its space from finished trials, so a trial asked before the first one
    finishes is sampled independently, i.e. at random over the box: with `--batch K` (or K
    workers) a whole first batch, far from `x0` (measured: a 12-trial first batch of `learned`
    was all random). A klip study's space is in its settings, so CMA-ES draws its first
    generation around `x0` from the first trial.
    """

    def __init__(self, space: dict[str, optuna.distributions.BaseDistribution], **kwargs: Any) -> None:
        super().__init__(n_startup_trials=0, **kwargs)
        self._known_space = space

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return dict(self._known_space)


def cmaes_population(dimensions: int, batch: int) -> int | None:
    """CMA-ES's population with `--batch K`: a whole number of batches, at least CMA-ES's own
    default 4 + floor(3 ln n). A batch's K trials are asked before any is told, so they all come
    from one generation; with a population that is not a multiple of K, the trials of a
    generation past its population are trained but never told to CMA-ES (Optuna tells it the
    first `popsize` of each generation). None (Optuna's default) without a batch."""
    if not batch:
        return None
    default = 4 + math.floor(3 * math.log(dimensions))
    return batch * math.ceil(default / batch)


def build_sampler(settings: StudySettings, worker: int = 0) -> optuna.samplers.BaseSampler:
    # Workers of one study get different seeds, or they would propose the same points.
    seed = None if settings.sampler_seed is None else settings.sampler_seed + worker
    dimensions = len(settings.space)
    if settings.sampler == "tpe":
        # Optuna 5's defaults, stated on purpose: multivariate TPE models the interaction of
        # a shape's parameters (eps and tau act together); the constant liar makes parallel
        # workers avoid proposing the point a running trial is already evaluating.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if settings.sampler == "cmaes":
        if dimensions < 2:
            raise StudyError(f"sampler cmaes needs at least 2 searched parameters; this space has "
                             f"{dimensions} (use tpe or gp)")
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise StudyError("sampler cmaes needs the cmaes package (pip install cmaes)") from None
        with warnings.catch_warnings():
            # `x0` (the search's starting mean) is deprecated since Optuna 4.9 with no
            # replacement yet (removal planned for 6.0). Without it CMA-ES starts at the centre
            # of the box: for `learned`, a flat 0.5 gate far from PPO-Clip. Starting at the
            # shape's defaults (the step gate) is worth the warning we silence here.
            warnings.simplefilter("ignore", FutureWarning)
            space = {name: optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
                     for name, dim in settings.space.items()}
            return KnownSpaceCmaEsSampler(space, x0=default_point(settings.shape, settings.space), seed=seed,
                                          popsize=cmaes_population(dimensions, settings.batch))
    if settings.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "grid":
        points = grid_size(settings)
        if points > 10_000:
            raise StudyError(f"sampler grid cannot handle this space: {settings.grid_points} points on "
                             f"{dimensions} parameters is {points} trials (use tpe or cmaes)")
        if settings.trials > points:
            raise StudyError(f"--trials {settings.trials} exceeds the grid's {points} points")
        return optuna.samplers.GridSampler(grid_points(settings.space, settings.grid_points), seed=seed)
    raise StudyError(f"unknown sampler {settings.sampler!r}")


def grid_size(settings: StudySettings) -> int:
    return settings.grid_points ** len(settings.space)


def iterations_per_instance(settings: StudySettings) -> int:
    options = TrainConfig.from_dict({**settings.train_options, "steps": settings.steps_per_task})
    return options.iterations


def build_pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    name = settings.resolved_pruner
    instances = len(settings.instances)
    iterations = iterations_per_instance(settings)
    if name == "wilcoxon":
        if instances < WILCOXON_MIN_INSTANCES:
            raise StudyError(f"pruner wilcoxon needs at least {WILCOXON_MIN_INSTANCES} (task, seed) "
                             f"instances; this study has {instances} (use median or none)")
        with warnings.catch_warnings():
            # Experimental since Optuna 3.6 and still so in 5; the warning tells users nothing
            # they can act on (tests/test_compat.py checks the interface we use).
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    if name == "median":
        # Warm-up: the first quarter of the first instance's learning curve is mostly noise.
        return optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials,
                                           n_warmup_steps=max(1, iterations // 4))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, iterations // 4),
                                              max_resource=instances * iterations)
    return optuna.pruners.NopPruner()


def check_batch(settings: StudySettings) -> None:
    """`--batch` trains populations: refuse what a population cannot do, before any writing."""
    from klip.studies.training import ConfigError, check_population_configs

    if settings.batch < 0:
        raise StudyError(f"--batch must be 0 (single runs) or at least 1, got {settings.batch}")
    if not settings.batch:
        return
    if settings.resolved_pruner in ("median", "hyperband"):
        raise StudyError(f"--batch trains whole populations, so it cannot prune on learning curves "
                         f"({settings.resolved_pruner}); use --pruner wilcoxon (>= 4 instances) or none")
    configs = [TrainConfig.from_dict({**settings.train_options, "steps": settings.steps_per_task,
                                      "loss": "klip", "shape": settings.shape, "task": settings.tasks[0],
                                      "seed": seed}) for seed in (0, 1)]
    try:
        check_population_configs(configs)
    except ConfigError as error:
        raise StudyError(f"--batch: {error}") from None


