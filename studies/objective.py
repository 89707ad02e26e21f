"""One trial of a study: its parameters, its (task, seed) runs, its pruning and its value."""

from __future__ import annotations

import math
import os
import random
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
from optuna.trial import TrialState

from klip.shapes import save_shape
from klip.studies.attributes import (
    ATTR_CONFIG,
    ATTR_CURVES,
    ATTR_INSTANCES_SAVED,
    ATTR_PARTIAL,
    ATTR_PROGRESS,
    ATTR_RESULTS,
    ATTR_SHAPE,
    ATTR_SURPLUS,
    ATTR_WORKER,
    FINISHED,
    PROGRESS_WRITE_INTERVAL,
)
from klip.studies.references import TaskReference
from klip.studies.sampling import iterations_per_instance
from klip.studies.settings import (
    Instance,
    StudyError,
    StudySettings,
)
from klip.studies.space import build_shape_from_values
from klip.studies.training import AgentResult, TrainConfig, train_agents

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


