"""One trial of a study: its parameters, its (task, seed) runs, its pruning and its value."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytorch_lightning as pl
from optuna.trial import TrialState

from klip.shapes import save_shape
from klip.studies import training
from klip.studies.attributes import (
    ATTR_CONFIG,
    ATTR_CONTINUES,
    ATTR_CURVES,
    ATTR_INSTANCES_SAVED,
    ATTR_KEPT,
    ATTR_PARTIAL,
    ATTR_PROGRESS,
    ATTR_RESULT,
    ATTR_SHAPE,
    ATTR_SURPLUS,
    ATTR_WORKER,
    FINISHED,
    PROGRESS_WRITE_INTERVAL,
    trial_results,
    write_curves,
)
from klip.studies.files import writing
from klip.studies.references import TaskReference
from klip.studies.sampling import iterations_per_instance
from klip.studies.settings import (
    Instance,
    StudyError,
    StudySettings,
)
from klip.studies.space import build_shape_from_values
from klip.studies.training import TrainConfig

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


# Without a pruner, the curve goes to the study storage at most once a second (and at each run's
# last iteration): a report is a storage transaction, 8-19 ms on SQLite here, which at one per
# short iteration costs a small trial several percent. Every iteration is in the curve file.
UNPRUNED_REPORT_INTERVAL_S = 1.0


class LearningCurvePruning(pl.Callback):
    """Reports the normalised learning curve after every PPO iteration (without a pruner, at most
    once a second and at the last one); stops a pruned run.

    optuna-integration's PyTorchLightningPruningCallback hooks validation, which the
    klip trainer never runs; this one hooks the training-epoch end (= one PPO
    iteration), so a pruned trial stops within one iteration of the decision.
    The value at step `position * iterations + iteration` is the mean of the
    finished instances' normalised scores and the current instance's normalised
    recent return, so it is comparable across trials (same instance order). It is reported
    whatever the pruner (optuna-dashboard draws it as the trial's curve); only the median and
    hyperband pruners decide on it.
    """

    def __init__(self, trial: optuna.Trial, reference: TaskReference, state: PruningState,
                 iterations: int, prune: bool) -> None:
        self.trial, self.reference, self.state = trial, reference, state
        self.iterations, self.prune = iterations, prune
        self.last_report = -math.inf

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        recent = getattr(module, "recent_returns", None)
        if not recent:
            return
        now = time.monotonic()
        last = trainer.current_epoch + 1 >= self.iterations
        if not (self.prune or last or now - self.last_report >= UNPRUNED_REPORT_INTERVAL_S):
            return
        self.last_report = now
        normalised = self.reference.normalise(sum(recent) / len(recent))
        values = [*self.state.finished_normalised, normalised]
        step = self.state.position * self.iterations + trainer.current_epoch
        self.trial.report(sum(values) / len(values), step)
        if self.prune and self.trial.should_prune():
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


class StudyInterrupted(Exception):
    """Ctrl-C stopped a trial after a finished iteration; its runs keep their checkpoints."""

    def __init__(self, trials: list[int]) -> None:
        self.trials = trials
        super().__init__(f"trial(s) {', '.join(map(str, trials))} interrupted")


def keep_aside(path: Path, study_dir: Path) -> Path:
    """Move `path` (found where a trial's run goes) to `kept/` in the study directory, never
    deleting it; return where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = study_dir / "kept" / f"{path.name}-{stamp}-{os.getpid()}"
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)
    return target


class Objective:
    def __init__(self, settings: StudySettings, references: dict[str, TaskReference],
                 show: Callable[[str], None] | None = None) -> None:
        self.settings, self.references, self.show = settings, references, show
        self.pruner = settings.resolved_pruner
        self.iterations = iterations_per_instance(settings)

    def tell(self, text: str) -> None:
        if self.show is not None:
            self.show(text)

    def check_not_surplus(self, trial: optuna.Trial) -> None:
        earlier = trial.study.get_trials(deepcopy=False, states=live_states(self.settings))
        if sum(1 for other in earlier if other.number < trial.number) >= self.settings.trials:
            trial.set_user_attr(ATTR_SURPLUS, True)
            raise SurplusTrial(f"trial {trial.number} not needed: {self.settings.trials} already started")

    def continues(self, trial: optuna.Trial) -> int | None:
        """The trial whose runs this one finishes: one Ctrl-C stopped, or one whose worker died
        (the heartbeat's retry names it in the system attribute `failed_trial`)."""
        frozen = next((t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number), None)
        return None if frozen is None else continued_trial(frozen)

    def prepare(self, trial: optuna.Trial) -> tuple[Path, dict[str, Any]]:
        """Suggest the trial's parameters; write its shape; return its directory and base config.

        A trial that continues another takes over that trial's directory, so its runs go on from
        their checkpoints. Whatever else is found in the trial's place (a study of the same name
        made before, in another storage) is moved to `kept/`, never deleted.
        """
        trial.set_user_attr(ATTR_WORKER, f"{socket.gethostname()}:{os.getpid()}")
        settings = self.settings
        values = {name: trial.suggest_float(name, dim.low, dim.high, log=dim.log)
                  for name, dim in settings.space.items()}
        shape = build_shape_from_values(settings.shape, {**settings.fixed, **values})
        trial_dir = settings.directory / f"trial-{trial.number:05d}"
        if trial_dir.exists():
            kept = keep_aside(trial_dir, settings.directory)
            trial.set_user_attr(ATTR_KEPT, kept.relative_to(settings.directory).as_posix())
            self.tell(f"trial {trial.number}: {trial_dir} held another study's files; kept in {kept}")
        source = self.continues(trial)
        if source is not None:
            previous = settings.directory / f"trial-{source:05d}"
            if previous.is_dir():
                with writing(trial_dir):
                    os.rename(previous, trial_dir)
                self.tell(f"trial {trial.number} continues trial {source} from its checkpoints")
        with writing(trial_dir):
            trial_dir.mkdir(parents=True, exist_ok=True)
            shape_path = save_shape(shape, trial_dir / "shape.json")
        trial.set_user_attr(ATTR_SHAPE, shape.to_dict())
        base = {**settings.train_options, "steps": settings.steps_per_task, "loss": "klip",
                "shape": settings.shape, "shape_params": {}, "shape_file": str(shape_path)}
        # Recorded with the shape file relative to the study directory: no path of this machine.
        trial.set_user_attr(ATTR_CONFIG, {**base, "shape_file": shape_path.relative_to(
            settings.directory).as_posix()})
        return trial_dir, base

    def __call__(self, trial: optuna.Trial) -> float:
        self.check_not_surplus(trial)
        settings = self.settings
        trial_dir, base = self.prepare(trial)
        instances = settings.instances
        if self.pruner == "wilcoxon":
            # Shuffled per trial (reproducibly), so no instance is always evaluated first.
            random.Random(trial.number).shuffle(instances)
        state = PruningState()
        curves: dict[str, list[list[float]]] = {}
        normalised_scores: list[float] = []
        scores_by_index: dict[int, float] = {}
        for position, instance in enumerate(instances):
            config = TrainConfig.from_dict({**base, "task": instance.task, "seed": instance.seed}).validate()
            out = trial_dir / f"{instance.task}-s{instance.seed}"
            state.position = position
            total = config.iterations * config.rollout_steps
            curve = LearningCurvePruning(trial, self.references[instance.task], state, self.iterations,
                                         prune=self.pruner in ("median", "hyperband"))
            outcome = finished_run(out, total)
            if outcome is None:
                # A run continues from its checkpoint; one that stopped before its first, or on a
                # simulator that cannot be restored, starts again (kept aside, not deleted).
                resume = training.can_resume(out, config)
                if out.exists() and not resume:
                    keep_aside(out, settings.directory)
                callbacks = [curve, ProgressReporter(trial, instance, total, self.show)]
                try:
                    run = training.train(config, out, resume=resume, progress=False, callbacks=callbacks)
                    outcome = RunOutcome(run.final_return, run.frames, diverged=False)
                except training.TrainingDiverged:
                    outcome = finished_run(out, total)  # a result: what it had reached
                    if outcome is None:
                        raise
                except (KeyboardInterrupt, training.RunInterrupted):
                    raise StudyInterrupted([trial.number]) from None
            score, frames = outcome.score, outcome.frames
            normalised = self.references[instance.task].normalise(score)
            trial.set_user_attr(ATTR_RESULT + instance.name, {
                "task": instance.task, "seed": instance.seed, "index": instance.index, "score": score,
                "normalised": normalised, "frames": frames,
                "complete": outcome.diverged or frames >= total, "diverged": outcome.diverged})
            curves[instance.name] = learning_curve(out / "metrics.csv")
            trial.set_user_attr(ATTR_CURVES, write_curves(settings.directory, trial_dir, curves))
            if state.pruned:
                break
            normalised_scores.append(normalised)
            state.finished_normalised.append(normalised)
            scores_by_index[instance.index] = normalised
            if self.pruner == "wilcoxon" and len(normalised_scores) < len(instances) \
                    and wilcoxon_prunes(trial.study, scores_by_index):
                # Optuna's recommended use: record the partial mean as COMPLETE (TPE
                # learns from it), and mark it so reports can tell it apart.
                trial.set_user_attr(ATTR_PARTIAL, True)
                trial.set_user_attr(ATTR_INSTANCES_SAVED, len(instances) - len(normalised_scores))
                break
        trial.set_user_attr(ATTR_PROGRESS, "done")
        if state.pruned:
            saved = len(instances) - state.position - state.pruned_fraction_done
            trial.set_user_attr(ATTR_INSTANCES_SAVED, round(saved, 3))
            raise optuna.TrialPruned(f"learning curve below the {self.pruner} pruner's threshold")
        return trial_value(trial, normalised_scores)


class UnscoredTrial(Exception):
    """A trial with a run that diverged before any of its episodes ended: it has no value, so
    it fails, and the study goes on."""


def trial_value(trial: optuna.Trial, normalised: list[float]) -> float:
    """The trial's objective, the mean normalised score of its runs."""
    value = sum(normalised) / len(normalised)
    if math.isfinite(value):
        return value
    diverged = [name.removeprefix(ATTR_RESULT) for name, result in trial.user_attrs.items()
                if name.startswith(ATTR_RESULT) and result.get("diverged")]
    if diverged:
        raise UnscoredTrial(f"trial {trial.number}: {', '.join(diverged)} diverged before an episode "
                            "ended, so the trial has no value")
    raise StudyError(f"trial {trial.number}: objective is {value}")


def continued_trial(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial whose runs `trial` finishes (see `Objective.continues`), or None.

    A copy of a copy can name two: Optuna's retry of a dead trial copies its user attributes
    (with the `klip_continues` of the trial *that* one continued) and klip's `queue_again`
    copies system attributes (with an older retry's `failed_trial`). A copy is always made after
    its source, so the trial it finishes, whose directory holds the runs, is the later one."""
    sources = [trial.user_attrs.get(ATTR_CONTINUES), trial.system_attrs.get("failed_trial")]
    numbers = [int(source) for source in sources if source is not None]
    return max(numbers) if numbers else None


def queue_again(study: optuna.Study, trials: list[optuna.Trial]) -> None:
    """Queue a copy of each (interrupted) trial that finishes its runs: its parameters, and what
    the sampler recorded about it. CMA-ES counts a trial towards its generation, and finds its
    own saved state, only through the trial's system attributes (`cma:generation`,
    `cma:optimizer:*`): a copy without them would finish unseen by the search, as Optuna's own
    retry of a dead trial knows (it copies them too)."""
    recorded = {trial.number: trial.system_attrs for trial in study.get_trials(deepcopy=False)}
    for trial in trials:
        system_attrs = {**recorded[trial.number], "fixed_params": dict(trial.params)}
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=system_attrs,
                                                  user_attrs={ATTR_CONTINUES: trial.number}))


def continuation_chain(trials: dict[int, optuna.trial.FrozenTrial], number: int) -> list[int]:
    """`number`, the trial it continues, the one that one continues, ... back to the trial that
    started the runs."""
    chain = [number]
    while chain[-1] in trials and (source := continued_trial(trials[chain[-1]])) is not None \
            and source not in chain:
        chain.append(source)
    return chain


def first_trial(study: optuna.Study, number: int) -> int:
    """The trial that started the runs trial `number` holds: the end of its chain of continuations."""
    return continuation_chain({trial.number: trial for trial in study.get_trials(deepcopy=False)}, number)[-1]


@dataclass(frozen=True)
class RunOutcome:
    """What one (task, seed) run of a trial gave: its final return (NaN: no episode ended)."""

    score: float
    frames: int
    # Stopped by a non-finite loss, gradient or parameter: the return it had reached is its
    # result, as in comparisons (training again would diverge again, bit for bit).
    diverged: bool


def finished_run(out: Path, total_frames: int) -> RunOutcome | None:
    """The outcome a run directory already holds: a finished run, or one that diverged."""
    try:
        summary = json.loads((out / "summary.json").read_text())
        frames = int(summary["frames"])
        diverged = summary.get("status") == training.DIVERGED
        if not diverged and (summary.get("status") != "finished" or frames < total_frames):
            return None
        score = summary["final_return_last10pct"]
        return RunOutcome(math.nan if score is None else float(score), frames, diverged)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def learning_curve(metrics: Path) -> list[list[float]]:
    """(frames, recent mean return) per PPO iteration of a run, from its metrics.csv."""
    try:
        columns = training.read_columns(metrics)
    except (OSError, ValueError):
        return []
    frames, recent = columns.get("frames"), columns.get("episode/return_recent")
    if frames is None or recent is None:
        return []
    return [[float(f), float(r)] for f, r in zip(frames, recent, strict=True) if math.isfinite(r)]


def wilcoxon_prunes(study: optuna.Study, scores: dict[int, float]) -> bool:
    """Optuna's WilcoxonPruner on the trial's per-instance scores against the best trial's, read
    from the results both record: the scores are not reported as intermediate values, which
    optuna-dashboard would draw as a learning curve (the learning curve is reported instead)."""
    pruner = study.pruner
    if not isinstance(pruner, optuna.pruners.WilcoxonPruner):
        return False
    try:
        best = study.best_trial
    except ValueError:
        return False
    best_scores = {int(r["index"]): float(r["normalised"]) for r in trial_results(best).values()
                   if r.get("complete", True) and "index" in r}
    if not best_scores:  # a study made before: the scores are the best trial's intermediate values
        best_scores = dict(best.intermediate_values)
    view = SimpleNamespace(best_trial=SimpleNamespace(number=best.number, intermediate_values=best_scores),
                           direction=study.direction)
    current = SimpleNamespace(number=-1, intermediate_values=dict(scores))
    return bool(pruner.prune(view, current))  # type: ignore[arg-type]


# -- workers -----------------------------------------------------------------------

def count(trials: list[optuna.trial.FrozenTrial], states: tuple[TrialState, ...]) -> int:
    return sum(1 for trial in trials if trial.state in states)


