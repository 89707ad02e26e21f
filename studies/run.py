"""`klip study run`: create or continue a study, then run its trials in one or more workers."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import random
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
from optuna.trial import TrialState
from tqdm.auto import tqdm

from klip.compat import heartbeat_thread
from klip.preload import preload
from klip.shapes import load_shapes_from_file, save_shape
from klip.studies.references import TaskReference, ensure_references
from klip.studies.settings import (
    OBJECTIVE,
    WILCOXON_MIN_INSTANCES,
    Instance,
    StudyError,
    StudySettings,
    describe_differences,
)
from klip.studies.space import build_shape_from_values, default_point, grid_points
from klip.studies.storage import StorageError, open_storage, quiet_optuna
from klip.studies.training import AgentResult, TrainConfig, read_columns, train_agents

# Study user attributes.
ATTR_IDENTITY = "klip_identity"
ATTR_COMMAND = "klip_command"
ATTR_VERSION = "klip_version"
ATTR_RUN_OPTIONS = "klip_run_options"
ATTR_INSTANCES = "klip_instances"
ATTR_REFERENCES = "klip_references"
# Trial user attributes.
ATTR_RESULTS = "klip_results"  # instance name -> {task, seed, score, normalised, frames}
ATTR_CURVES = "klip_curves"  # instance name -> [[frames, recent raw return], ...] per iteration
ATTR_CONFIG = "klip_config"  # resolved TrainConfig options (task and seed vary per instance)
ATTR_SHAPE = "klip_shape"  # the trial's shape as shape JSON
ATTR_PARTIAL = "klip_pruned_partial"  # Wilcoxon-pruned but recorded COMPLETE with a partial mean
ATTR_INSTANCES_SAVED = "klip_instances_saved"
ATTR_PROGRESS = "klip_progress"
ATTR_SURPLUS = "klip_surplus"
ATTR_WORKER = "klip_worker"  # host:pid of the process that ran the trial
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Seconds between progress writes to the storage (each is a database write).
PROGRESS_WRITE_INTERVAL = 5.0


def klip_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("klip")
    except PackageNotFoundError:
        return "unknown"


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
            return KnownSpaceCmaEsSampler(space, x0=default_point(settings.shape, settings.space), seed=seed)
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


# -- study creation ----------------------------------------------------------------

def prepare_study(settings: StudySettings, worker: int = 0) -> optuna.Study:
    """Create the study, or load it after checking it was made with the same settings."""
    quiet_optuna()
    storage = open_storage(settings.storage)
    sampler, pruner = build_sampler(settings, worker), build_pruner(settings)
    wanted = settings.identity()
    try:
        existing = optuna.load_study(study_name=settings.study_name, storage=storage,
                                     sampler=sampler, pruner=pruner)
    except KeyError:
        existing = None
    except Exception as error:  # the database driver's own errors
        raise StorageError(f"cannot read storage {settings.storage.describe()}: "
                           f"{str(error).strip().splitlines()[0]}") from None
    if existing is not None:
        recorded = existing.user_attrs.get(ATTR_IDENTITY)
        if recorded is None and not settings.force:
            raise StudyError(f"study {settings.study_name!r} exists but was not made by klip study run; "
                             "choose another --study-name (or --force)")
        if recorded is not None and recorded != wanted and not settings.force:
            raise StudyError(
                f"study {settings.study_name!r} was made with other settings (differs in: "
                f"{describe_differences(recorded, wanted)}); use another --study-name or --force"
            )
        return existing
    study = optuna.create_study(study_name=settings.study_name, storage=storage, sampler=sampler,
                                pruner=pruner, direction="maximize", load_if_exists=True)
    study.set_user_attr(ATTR_IDENTITY, wanted)
    study.set_user_attr(ATTR_COMMAND, settings.command)
    study.set_user_attr(ATTR_VERSION, klip_version())
    study.set_user_attr(ATTR_RUN_OPTIONS, settings.run_options())
    study.set_user_attr(ATTR_INSTANCES, [instance.name for instance in settings.instances])
    return study


def record_references(study: optuna.Study, references: dict[str, TaskReference]) -> None:
    study.set_user_attr(ATTR_REFERENCES, {
        task: {"random_score": ref.random_score, "step_score": ref.step_score}
        for task, ref in references.items()
    })


def references_from_study(study: optuna.Study) -> dict[str, TaskReference]:
    recorded = study.user_attrs.get(ATTR_REFERENCES, {})
    return {task: TaskReference(task, values["random_score"], values["step_score"])
            for task, values in recorded.items()}


# -- the objective -----------------------------------------------------------------

class SurplusTrial(Exception):
    """Another worker already started the last requested trial; this one is not needed."""


def live_states(settings: StudySettings) -> tuple[TrialState, ...]:
    # Journal storage has no heartbeat: a RUNNING trial may belong to a dead worker
    # forever, so only trials that finished or wait count towards --trials there.
    if settings.storage.has_heartbeat:
        return (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
    return (*FINISHED, TrialState.WAITING)


@dataclass
class PruningState:
    """What the learning-curve callback shares with the objective of one trial."""

    finished_normalised: list[float] = field(default_factory=list)
    position: int = 0
    pruned: bool = False
    pruned_fraction_done: float = 0.0


class LearningCurvePruning(pl.Callback):
    """Reports a normalised learning-curve value after every PPO iteration; stops a pruned run.

    optuna-integration's PyTorchLightningPruningCallback hooks validation, which the
    klip trainer never runs; this one hooks the training-epoch end (= one PPO
    iteration), so a pruned trial stops within one iteration of the decision.
    The value at global step `position * iterations + iteration` is the mean of the
    finished instances' normalised scores and the current instance's normalised
    recent return, so it is comparable across trials (same instance order).
    """

    def __init__(self, trial: optuna.Trial, reference: TaskReference, state: PruningState,
                 iterations: int, prune: bool) -> None:
        self.trial, self.reference, self.state = trial, reference, state
        self.iterations, self.prune = iterations, prune
        self.curve: list[list[float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        recent = getattr(module, "recent_returns", None)
        if not recent:
            return
        current = sum(recent) / len(recent)
        self.curve.append([float(module.frames), float(current)])
        if not self.prune:
            return
        normalised = self.reference.normalise(current)
        values = [*self.state.finished_normalised, normalised]
        step = self.state.position * self.iterations + trainer.current_epoch
        self.trial.report(sum(values) / len(values), step)
        if self.trial.should_prune():
            self.state.pruned = True
            self.state.pruned_fraction_done = (trainer.current_epoch + 1) / self.iterations
            trainer.should_stop = True


class ProgressReporter(pl.Callback):
    """Shows and records (throttled) the current trial's task and step."""

    def __init__(self, trial: optuna.Trial, instance: Instance, total_frames: int,
                 show: Callable[[str], None] | None) -> None:
        self.trial, self.instance, self.total_frames, self.show = trial, instance, total_frames, show
        self.last_write = 0.0

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        text = f"trial {self.trial.number} {self.instance.name} step {module.frames}/{self.total_frames}"
        if self.show is not None:
            self.show(text)
        now = time.monotonic()
        if now - self.last_write >= PROGRESS_WRITE_INTERVAL:
            self.last_write = now
            self.trial.set_user_attr(ATTR_PROGRESS, text)


class Objective:
    def __init__(self, settings: StudySettings, references: dict[str, TaskReference],
                 show: Callable[[str], None] | None = None) -> None:
        self.settings, self.references, self.show = settings, references, show
        self.pruner = settings.resolved_pruner
        self.iterations = iterations_per_instance(settings)

    def check_not_surplus(self, trial: optuna.Trial) -> None:
        earlier = trial.study.get_trials(deepcopy=False, states=live_states(self.settings))
        if sum(1 for other in earlier if other.number < trial.number) >= self.settings.trials:
            trial.set_user_attr(ATTR_SURPLUS, True)
            raise SurplusTrial(f"trial {trial.number} not needed: {self.settings.trials} already started")

    def prepare(self, trial: optuna.Trial) -> tuple[Path, dict[str, Any]]:
        """Suggest the trial's parameters; write its shape; return its directory and base config."""
        trial.set_user_attr(ATTR_WORKER, f"{socket.gethostname()}:{os.getpid()}")
        settings = self.settings
        values = {name: trial.suggest_float(name, dim.low, dim.high, log=dim.log)
                  for name, dim in settings.space.items()}
        shape = build_shape_from_values(settings.shape, {**settings.fixed, **values})
        trial_dir = settings.directory / f"trial-{trial.number:05d}"
        if trial_dir.exists():  # left by a deleted study of the same name
            shutil.rmtree(trial_dir)
        trial_dir.mkdir(parents=True)
        shape_path = save_shape(shape, trial_dir / "shape.json")
        trial.set_user_attr(ATTR_SHAPE, shape.to_dict())
        base = {**settings.train_options, "steps": settings.steps_per_task, "loss": "klip",
                "shape": settings.shape, "shape_params": {}, "shape_file": str(shape_path.resolve())}
        trial.set_user_attr(ATTR_CONFIG, base)
        return trial_dir, base

    def __call__(self, trial: optuna.Trial) -> float:
        self.check_not_surplus(trial)
        settings = self.settings
        trial_dir, base = self.prepare(trial)
        instances = settings.instances
        if self.pruner == "wilcoxon":
            # Shuffled per trial (reproducibly), so no instance is always evaluated first.
            random.Random(trial.number).shuffle(instances)
        configs = [TrainConfig.from_dict({**base, "task": i.task, "seed": i.seed}).validate()
                   for i in instances]
        out_dirs = [trial_dir / f"{i.task}-s{i.seed}" for i in instances]
        state = PruningState()
        results: dict[str, dict[str, Any]] = {}
        curves: dict[str, list[list[float]]] = {}
        curve_callbacks: dict[int, LearningCurvePruning] = {}
        normalised_scores: list[float] = []

        def callbacks(index: int, config: TrainConfig) -> list[pl.Callback]:
            instance = instances[index]
            state.position = index
            curve = LearningCurvePruning(trial, self.references[instance.task], state, self.iterations,
                                         prune=self.pruner in ("median", "hyperband"))
            curve_callbacks[index] = curve
            return [curve, ProgressReporter(trial, instance, config.iterations * config.rollout_steps,
                                            self.show)]

        def after_each(index: int, result: AgentResult) -> bool:
            instance = instances[index]
            normalised = self.references[instance.task].normalise(result.run.final_return)
            results[instance.name] = {"task": instance.task, "seed": instance.seed, "index": instance.index,
                                      "score": result.run.final_return, "normalised": normalised,
                                      "frames": result.run.frames, "complete": not result.stopped_early}
            curves[instance.name] = curve_callbacks[index].curve
            trial.set_user_attr(ATTR_RESULTS, results)
            trial.set_user_attr(ATTR_CURVES, curves)
            if state.pruned:
                return False
            normalised_scores.append(normalised)
            state.finished_normalised.append(normalised)
            if self.pruner == "wilcoxon":
                trial.report(normalised, instance.index)
                if len(normalised_scores) < len(instances) and trial.should_prune():
                    # Optuna's recommended use: record the partial mean as COMPLETE (TPE
                    # learns from it), and mark it so reports can tell it apart.
                    trial.set_user_attr(ATTR_PARTIAL, True)
                    trial.set_user_attr(ATTR_INSTANCES_SAVED, len(instances) - len(normalised_scores))
                    return False
            return True

        train_agents(configs, out_dirs, callbacks=callbacks, after_each=after_each)
        trial.set_user_attr(ATTR_PROGRESS, "done")
        if state.pruned:
            saved = len(instances) - state.position - state.pruned_fraction_done
            trial.set_user_attr(ATTR_INSTANCES_SAVED, round(saved, 3))
            raise optuna.TrialPruned(f"learning curve below the {self.pruner} pruner's threshold")
        value = sum(normalised_scores) / len(normalised_scores)
        if not math.isfinite(value):
            raise StudyError(f"trial {trial.number}: objective is {value}")
        return value


# -- workers -----------------------------------------------------------------------

def count(trials: list[optuna.trial.FrozenTrial], states: tuple[TrialState, ...]) -> int:
    return sum(1 for trial in trials if trial.state in states)


def worker_loop(settings: StudySettings, study: optuna.Study, references: dict[str, TaskReference],
                show: Callable[[str], None] | None = None,
                after_trial: Callable[[], None] | None = None) -> None:
    """Run trials until the study holds `settings.trials` finished ones.

    A trial another worker is running counts as started; when all requested trials
    are started, this worker waits, so that it can retry a trial whose worker died
    (the heartbeat marks it failed and enqueues a copy) instead of leaving it lost.
    """
    objective = Objective(settings, references, show)
    # An idle worker re-checks often: the other workers may finish (or die) at any time.
    poll = min(2.0, settings.storage.heartbeat_interval / 2)
    while True:
        trials = study.get_trials(deepcopy=False)
        if count(trials, FINISHED) >= settings.trials:
            return
        waiting = count(trials, (TrialState.WAITING,))
        free = waiting + max(0, settings.trials - count(trials, live_states(settings)))
        if not free:
            time.sleep(poll)
            optuna.storages.fail_stale_trials(study)
            continue
        if settings.batch:
            run_batch(objective, study, min(settings.batch, free))
        else:
            study.optimize(objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=False)
        if after_trial is not None:
            after_trial()


# -- populations: several trials, all their seeds, trained at once -------------------------

@dataclass
class BatchTrial:
    """One trial of a batch and what its finished instances gave so far."""

    trial: optuna.Trial
    directory: Path
    base: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    normalised: list[float] = field(default_factory=list)


def run_batch(objective: Objective, study: optuna.Study, size: int) -> None:
    """Ask `size` trials and train them task by task, each task's (trial, seed) agents as one
    population.

    Each trial's heartbeat starts as soon as it is asked (as `study.optimize` does for one
    trial): a RUNNING trial that never sent one would never be found stale, so a worker dying
    here would leave it open forever. A dead worker's trials are failed and retried trial by
    trial; a failure inside the batch fails all its trials that were not told yet.
    """
    settings = objective.settings
    storage = open_storage(settings.storage)
    study_id = storage.get_study_id_from_name(settings.study_name)
    trials: list[optuna.Trial] = []
    told: set[int] = set()
    with contextlib.ExitStack() as heartbeats:
        try:
            for _ in range(size):
                with warnings.catch_warnings():
                    # Optuna warns that heartbeats are meant for `optimize`; here each asked
                    # trial gets its own heartbeat thread just below, as `optimize` would start.
                    warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                    trial = study.ask()
                trials.append(trial)
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                heartbeats.enter_context(heartbeat_thread(trial_id, storage))
            batch: list[BatchTrial] = []
            for trial in trials:
                try:
                    objective.check_not_surplus(trial)
                except SurplusTrial:
                    study.tell(trial, state=TrialState.FAIL)
                    told.add(trial.number)
                    continue
                batch.append(BatchTrial(trial, *objective.prepare(trial)))
            if batch:
                _train_batch(objective, study, batch, told)
        except BaseException:
            for trial in trials:
                if trial.number not in told:
                    study.tell(trial, state=TrialState.FAIL)
            raise


def _train_batch(objective: Objective, study: optuna.Study, batch: list[BatchTrial],
                 told: set[int]) -> None:
    from klip.studies.training import train_population_agents

    settings = objective.settings
    tasks = list(settings.tasks)
    if objective.pruner == "wilcoxon":
        # Shuffled per batch (reproducibly), so no task is always evaluated first.
        random.Random(batch[0].trial.number).shuffle(tasks)
    alive = list(batch)
    for position, task in enumerate(tasks):
        instances = [instance for instance in settings.instances if instance.task == task]
        agents = [(member, instance) for member in alive for instance in instances]
        configs = [TrainConfig.from_dict({**member.base, "task": task, "seed": instance.seed}).validate()
                   for member, instance in agents]
        names = [f"trial{member.trial.number}-s{instance.seed}" for member, instance in agents]
        staging = settings.directory / f"population-{alive[0].trial.number:05d}-{task}"
        if staging.exists():  # left by a worker that died here; its trials were failed and retried
            shutil.rmtree(staging)
        text = (f"trials {', '.join(str(m.trial.number) for m in alive)}: {task}, "
                f"{len(agents)} agents as one population")
        if objective.show is not None:
            objective.show(text)
        for member in alive:
            member.trial.set_user_attr(ATTR_PROGRESS, text)
        results = train_population_agents(configs, staging, names=names)
        for (member, instance), result in zip(agents, results, strict=True):
            target = member.directory / f"{task}-s{instance.seed}"
            shutil.move(str(result.out), target)
            normalised = objective.references[task].normalise(result.final_return)
            frames = int(json.loads((target / "summary.json").read_text())["frames"])
            member.results[instance.name] = {
                "task": task, "seed": instance.seed, "index": instance.index, "score": result.final_return,
                "normalised": normalised, "frames": frames, "complete": True}
            member.curves[instance.name] = learning_curve(target / "metrics.csv")
            member.normalised.append(normalised)
        shutil.rmtree(staging)
        last = position == len(tasks) - 1
        for member in list(alive):
            member.trial.set_user_attr(ATTR_RESULTS, member.results)
            member.trial.set_user_attr(ATTR_CURVES, member.curves)
            if objective.pruner != "wilcoxon":
                continue
            for instance in instances:
                member.trial.report(member.results[instance.name]["normalised"], instance.index)
            if not last and member.trial.should_prune():
                member.trial.set_user_attr(ATTR_PARTIAL, True)
                member.trial.set_user_attr(ATTR_INSTANCES_SAVED,
                                           len(settings.instances) - len(member.normalised))
                _finish(study, member, told)
                alive.remove(member)
    for member in alive:
        _finish(study, member, told)


def _finish(study: optuna.Study, member: BatchTrial, told: set[int]) -> None:
    value = sum(member.normalised) / len(member.normalised)
    if not math.isfinite(value):
        raise StudyError(f"trial {member.trial.number}: objective is {value}")
    member.trial.set_user_attr(ATTR_PROGRESS, "done")
    study.tell(member.trial, value)
    told.add(member.trial.number)


def learning_curve(metrics: Path) -> list[list[float]]:
    """(frames, recent mean return) per PPO iteration, as the single-run path records it."""
    columns = read_columns(metrics)
    frames, recent = columns.get("frames"), columns.get("episode/return_recent")
    if frames is None or recent is None:
        return []
    return [[float(f), float(r)] for f, r in zip(frames, recent, strict=True) if math.isfinite(r)]


def _worker_process(settings: StudySettings, worker: int) -> None:
    import torch

    preload()  # this worker runs the code as it was when it started, however long it runs
    torch.set_num_threads(1)
    # The paper's protocol uses the -v4 tasks on purpose (as klip train says too).
    warnings.filterwarnings("ignore", message=".*is out of date. You should consider upgrading.*")
    if settings.train_options.get("shape_plugin"):
        # A spawned process starts with the built-in shapes only.
        load_shapes_from_file(settings.train_options["shape_plugin"])
    quiet_optuna()
    study = prepare_study(settings, worker)
    worker_loop(settings, study, references_from_study(study))


@dataclass
class StudyOutcome:
    study: optuna.Study
    finished: int
    pruned: int
    partial: int
    instances_saved: float
    best_value: float | None
    best_params: dict[str, Any]


def summarise(study: optuna.Study) -> StudyOutcome:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # A Wilcoxon-pruned trial's partial mean is not a fair best; it counts only if nothing else does.
    full = [t for t in complete if not t.user_attrs.get(ATTR_PARTIAL)] or complete
    best = max(full, key=lambda t: t.value, default=None)  # type: ignore[arg-type, return-value]
    return StudyOutcome(
        study=study,
        finished=count(trials, FINISHED),
        pruned=count(trials, (TrialState.PRUNED,)),
        partial=sum(1 for t in complete if t.user_attrs.get(ATTR_PARTIAL)),
        instances_saved=sum(float(t.user_attrs.get(ATTR_INSTANCES_SAVED, 0)) for t in trials
                            if t.state in FINISHED),
        best_value=None if best is None else best.value,
        best_params={} if best is None else dict(best.params),
    )


class StudyProgress:
    """tqdm bar: trials done / requested, best value so far, the current trial's task and step."""

    def __init__(self, settings: StudySettings, study: optuna.Study) -> None:
        self.settings, self.study = settings, study
        self.bar = tqdm(total=settings.trials, unit="trial", disable=not settings.progress,
                        dynamic_ncols=True, desc=settings.study_name)
        self.current = ""
        self.refresh_counts()

    def refresh_counts(self) -> None:
        outcome = summarise(self.study)
        self.bar.n = min(outcome.finished, self.settings.trials)
        self.best = outcome.best_value
        running = [t.user_attrs.get(ATTR_PROGRESS, "") for t in self.study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING,))]
        if self.settings.workers > 1:
            self.current = " | ".join(text for text in running if text)
        self.render()

    def show(self, text: str) -> None:
        self.current = text
        self.render()

    def render(self) -> None:
        best = "-" if self.best is None else f"{self.best:.3f}"
        self.bar.set_postfix_str(f"best {best} | {self.current}", refresh=True)

    def close(self) -> None:
        self.bar.close()


def run_study(settings: StudySettings, log: Callable[[str], None] = print) -> StudyOutcome:
    """Create (once, before any worker starts) or continue the study, then run it."""
    check_batch(settings)
    study = prepare_study(settings)
    references = ensure_references(settings.tasks, settings.steps_per_task, settings.seed_list,
                                   settings.train_options, command=settings.command, log=log)
    record_references(study, references)
    study.set_user_attr(ATTR_RUN_OPTIONS, settings.run_options())
    settings.directory.mkdir(parents=True, exist_ok=True)
    optuna.storages.fail_stale_trials(study)
    progress = StudyProgress(settings, study)
    try:
        if settings.workers == 1:
            worker_loop(settings, study, references, show=progress.show, after_trial=progress.refresh_counts)
        else:
            context = multiprocessing.get_context("spawn")
            processes = [context.Process(target=_worker_process, args=(settings, worker), daemon=False)
                         for worker in range(settings.workers)]
            for process in processes:
                process.start()
            while any(process.is_alive() for process in processes):
                progress.refresh_counts()
                time.sleep(2)
            failed = [p.exitcode for p in processes if p.exitcode]
            if failed:
                raise StudyError(f"{len(failed)} worker(s) failed (exit codes {failed}); "
                                 "re-run the same command to continue the study")
        progress.refresh_counts()
    finally:
        progress.close()
    return summarise(study)


__all__ = [
    "ATTR_CONFIG",
    "ATTR_CURVES",
    "ATTR_RESULTS",
    "ATTR_SHAPE",
    "ATTR_WORKER",
    "OBJECTIVE",
    "LearningCurvePruning",
    "Objective",
    "StudyOutcome",
    "build_pruner",
    "build_sampler",
    "prepare_study",
    "references_from_study",
    "run_study",
    "summarise",
    "worker_loop",
]
