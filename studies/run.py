"""`klip study run`: create or continue a study, then run its trials in one or more workers."""

from __future__ import annotations

import multiprocessing
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from klip.preload import preload
from klip.shapes import load_shapes_from_file
from klip.studies.attributes import (
    ATTR_COMMAND,
    ATTR_CONFIG,
    ATTR_CURVES,
    ATTR_IDENTITY,
    ATTR_INSTANCES,
    ATTR_INSTANCES_SAVED,
    ATTR_PARTIAL,
    ATTR_PROGRESS,
    ATTR_REFERENCES,
    ATTR_RESULTS,
    ATTR_RUN_OPTIONS,
    ATTR_SHAPE,
    ATTR_VERSION,
    ATTR_WORKER,
    FINISHED,
    klip_version,
)
from klip.studies.batch import run_batch
from klip.studies.objective import (
    LearningCurvePruning,
    Objective,
    SurplusTrial,
    count,
    live_states,
)
from klip.studies.references import TaskReference, ensure_references
from klip.studies.sampling import build_pruner, build_sampler, check_batch
from klip.studies.settings import (
    OBJECTIVE,
    StudyError,
    StudySettings,
    describe_differences,
)
from klip.studies.storage import StorageError, open_storage, quiet_optuna

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


# -- workers -----------------------------------------------------------------------


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
