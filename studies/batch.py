"""`--batch K`: several trials of a study, all their seeds, trained at once as populations."""

from __future__ import annotations

import contextlib
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from klip.compat import heartbeat_thread
from klip.studies import training
from klip.studies.attributes import (
    ATTR_CURVES,
    ATTR_ERROR,
    ATTR_INSTANCES_SAVED,
    ATTR_INTERRUPTED,
    ATTR_PARTIAL,
    ATTR_PROGRESS,
    ATTR_RESULT,
    write_curves,
)
from klip.studies.objective import (
    Objective,
    RunOutcome,
    StudyInterrupted,
    SurplusTrial,
    UnscoredTrial,
    finished_run,
    first_trial,
    keep_aside,
    learning_curve,
    queue_again,
    trial_value,
    wilcoxon_prunes,
)
from klip.studies.settings import StudyError
from klip.studies.storage import open_storage
from klip.studies.training import TrainConfig

# -- populations: several trials, all their seeds, trained at once -------------------------

@dataclass
class BatchTrial:
    """One trial of a batch and what its finished instances gave so far."""

    trial: optuna.Trial
    directory: Path
    base: dict[str, Any]
    # The trial that started the runs this one holds (itself, unless it continues another):
    # the population and its agents are named after it, so a continued batch finds them.
    origin: int
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
                batch.append(BatchTrial(trial, *objective.prepare(trial),
                                        origin=first_trial(study, trial.number)))
            if batch:
                _train_batch(objective, study, batch, told)
        except (KeyboardInterrupt, training.RunInterrupted, StudyInterrupted, SystemExit) as error:
            # Lightning turns a Ctrl-C inside a population's fit into SystemExit(1); any other
            # SystemExit goes up as it came, its trials told FAIL.
            if isinstance(error, SystemExit) and not isinstance(error.__context__, KeyboardInterrupt):
                for trial in trials:
                    if trial.number not in told:
                        with contextlib.suppress(Exception):
                            study.tell(trial, state=TrialState.FAIL)
                raise
            # Ctrl-C: each trial not told yet is queued again with its parameters (a population
            # starts its task again), marked interrupted, and the study says so in one line.
            interrupted = [trial for trial in trials if trial.number not in told]
            queue_again(study, interrupted)
            for trial in interrupted:
                trial.set_user_attr(ATTR_INTERRUPTED, True)
                study.tell(trial, state=TrialState.FAIL)
            raise StudyInterrupted([trial.number for trial in interrupted]) from None
        except BaseException:
            for trial in trials:
                if trial.number not in told:
                    with contextlib.suppress(Exception):  # a failing tell must not hide the error
                        study.tell(trial, state=TrialState.FAIL)
            raise


def _train_batch(objective: Objective, study: optuna.Study, batch: list[BatchTrial],
                 told: set[int]) -> None:

    settings = objective.settings
    tasks = list(settings.tasks)
    if objective.pruner == "wilcoxon":
        # Shuffled per batch (reproducibly), so no task is always evaluated first.
        random.Random(batch[0].origin).shuffle(tasks)
    alive = list(batch)
    for position, task in enumerate(tasks):
        instances = [instance for instance in settings.instances if instance.task == task]
        agents = [(member, instance) for member in alive for instance in instances]
        configs = [TrainConfig.from_dict({**member.base, "task": task, "seed": instance.seed}).validate()
                   for member, instance in agents]
        targets = [member.directory / f"{task}-s{instance.seed}" for member, instance in agents]
        total = configs[0].iterations * configs[0].rollout_steps
        finished = [finished_run(target, total) for target in targets]
        if all(done is not None for done in finished):
            # A batch that continues an interrupted one: this task's population had finished.
            outcomes = [done for done in finished if done is not None]
        else:
            outcomes = _train_population(objective, alive, task, agents, configs, targets)
        for (member, instance), target, outcome in zip(agents, targets, outcomes, strict=True):
            normalised = objective.references[task].normalise(outcome.score)
            member.results[instance.name] = {
                "task": task, "seed": instance.seed, "index": instance.index, "score": outcome.score,
                "normalised": normalised, "frames": outcome.frames, "complete": True,
                "diverged": outcome.diverged}
            member.curves[instance.name] = learning_curve(target / "metrics.csv")
            member.normalised.append(normalised)
        last = position == len(tasks) - 1
        for member in list(alive):
            for instance in instances:
                member.trial.set_user_attr(ATTR_RESULT + instance.name, member.results[instance.name])
            member.trial.set_user_attr(ATTR_CURVES, write_curves(settings.directory, member.directory,
                                                                 member.curves))
            if objective.pruner != "wilcoxon":
                continue
            scores = {result["index"]: result["normalised"] for result in member.results.values()}
            if not last and wilcoxon_prunes(study, scores):
                member.trial.set_user_attr(ATTR_PARTIAL, True)
                member.trial.set_user_attr(ATTR_INSTANCES_SAVED,
                                           len(settings.instances) - len(member.normalised))
                _finish(study, member, told)
                alive.remove(member)
    for member in alive:
        _finish(study, member, told)


def _train_population(objective: Objective, alive: list[BatchTrial], task: str,
                      agents: list[tuple[BatchTrial, Any]], configs: list[TrainConfig],
                      targets: list[Path]) -> list[RunOutcome]:
    """Train one task's (trial, seed) agents as one population; move each run to its trial.

    The population and its agents are named after the trials that started these runs (a
    batch that continues an interrupted one has new trial numbers), so a batch stopped by
    Ctrl-C or a dead worker continues the population from its checkpoint, bit for bit.
    """
    from klip.studies.training import RunError, TrainingDiverged, can_resume, train_agents

    settings = objective.settings
    names = [f"trial{member.origin}-s{instance.seed}" for member, instance in agents]
    staging = settings.directory / f"population-{alive[0].origin:05d}-{task}"
    text = (f"trials {', '.join(str(m.trial.number) for m in alive)}: {task}, "
            f"{len(agents)} agents as one population")
    resume = can_resume(staging, configs[0])
    if resume:
        text += " (continued from its checkpoint)"
    elif staging.exists():  # left by a worker that died before its first checkpoint
        keep_aside(staging, settings.directory)
    if objective.show is not None:
        objective.show(text)
    for member in alive:
        member.trial.set_user_attr(ATTR_PROGRESS, text)

    def train(resume: bool) -> None:
        with contextlib.suppress(TrainingDiverged):  # a result: each agent's summary says so
            train_agents(configs, staging, names=names, progress=False, resume=resume)

    try:
        train(resume)
    except RunError:
        if not resume:
            raise
        keep_aside(staging, settings.directory)  # a population of other agents or settings
        train(False)
    total = configs[0].iterations * configs[0].rollout_steps
    outcomes = []
    for name, target in zip(names, targets, strict=True):
        if target.exists():  # a run of the trial this one continues: a population starts afresh
            keep_aside(target, settings.directory)
        shutil.move(str(staging / name), target)
        outcome = finished_run(target, total)
        if outcome is None:
            raise StudyError(f"{target}: the population ended without this agent's result")
        outcomes.append(outcome)
    shutil.rmtree(staging)
    return outcomes


def _finish(study: optuna.Study, member: BatchTrial, told: set[int]) -> None:
    member.trial.set_user_attr(ATTR_PROGRESS, "done")
    try:
        value = trial_value(member.trial, member.normalised)
    except UnscoredTrial as error:
        member.trial.set_user_attr(ATTR_ERROR, str(error))
        study.tell(member.trial, state=TrialState.FAIL)
    else:
        study.tell(member.trial, value)
    told.add(member.trial.number)
