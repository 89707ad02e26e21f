"""`klip study run`: create or continue a study, then run its trials in one or more workers."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from klip.compat import heartbeat_thread
from klip.shapes import load_shapes_from_file
from klip.studies.attributes import (
    ATTR_COMMAND,
    ATTR_CONFIG,
    ATTR_CURVES,
    ATTR_ERROR,
    ATTR_IDENTITY,
    ATTR_IDENTITY_SPACE,
    ATTR_INSTANCES,
    ATTR_INSTANCES_SAVED,
    ATTR_INTERRUPTED,
    ATTR_PARTIAL,
    ATTR_PROGRESS,
    ATTR_REFERENCES,
    ATTR_RESULTS,
    ATTR_RUN_OPTIONS,
    ATTR_SHAPE,
    ATTR_UID,
    ATTR_VERSION,
    ATTR_WORKER,
    FINISHED,
    STUDY_DIR_MARKER,
    klip_version,
)
from klip.studies.batch import run_batch
from klip.studies.files import WriteError, describe_os_error, write_text_atomically, writing
from klip.studies.objective import (
    LearningCurvePruning,
    Objective,
    StudyInterrupted,
    SurplusTrial,
    UnscoredTrial,
    continuation_chain,
    count,
    live_states,
    queue_again,
)
from klip.studies.progress import Progress
from klip.studies.references import TaskReference, ensure_references
from klip.studies.sampling import build_pruner, build_sampler, check_batch
from klip.studies.settings import (
    OBJECTIVE,
    StudyError,
    StudySettings,
    describe_differences,
)
from klip.studies.storage import StorageError, open_storage, quiet_optuna, storage_write_error
from klip.studies.workers import run_workers, set_up_worker

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
        recorded = recorded_identity(existing)
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
    record_identity(study, wanted)
    study.set_user_attr(ATTR_COMMAND, settings.command)
    study.set_user_attr(ATTR_VERSION, klip_version())
    study.set_user_attr(ATTR_RUN_OPTIONS, settings.run_options())
    study.set_user_attr(ATTR_INSTANCES, [instance.name for instance in settings.instances])
    return study


def record_identity(study: optuna.Study, identity: dict[str, Any]) -> None:
    """The identity in two attributes, each short enough for optuna-dashboard to show whole: the
    search space (19 dimensions for `learned`) apart from the rest."""
    study.set_user_attr(ATTR_IDENTITY, {k: v for k, v in identity.items() if k != "search_space"})
    study.set_user_attr(ATTR_IDENTITY_SPACE, identity["search_space"])


def recorded_identity(study: optuna.Study) -> dict[str, Any] | None:
    """The identity a study recorded (in one attribute, by a klip before `record_identity`)."""
    recorded = study.user_attrs.get(ATTR_IDENTITY)
    if recorded is None or ATTR_IDENTITY_SPACE not in study.user_attrs:
        return recorded
    return {**recorded, "search_space": study.user_attrs[ATTR_IDENTITY_SPACE]}


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
    storage = open_storage(settings.storage)
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
            run_trial(objective, study, storage)
        if after_trial is not None:
            after_trial()


def run_trial(objective: Objective, study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Ask one trial, run it with a heartbeat, tell its end (what `study.optimize` does for one
    trial, without logging a failure's traceback, and with what klip must record first).

    Ctrl-C (after the running iteration, whose checkpoint is kept): a copy of the trial with its
    parameters is queued to finish its runs from their checkpoints, the trial is told FAIL and
    marked interrupted, and `StudyInterrupted` goes up. Any other failure is told FAIL, then
    raised (a failure to tell it, e.g. on a full disk, does not hide the first).
    """
    if objective.settings.storage.has_heartbeat:
        optuna.storages.fail_stale_trials(study)
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for `optimize`; this is its loop for one trial.
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        trial = study.ask()
    beating: Any = contextlib.nullcontext()
    if objective.settings.storage.has_heartbeat:
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        beating = heartbeat_thread(trial_id, storage)
    with beating:
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            return
        except SurplusTrial:
            study.tell(trial, state=TrialState.FAIL)
            return
        except UnscoredTrial as error:
            trial.set_user_attr(ATTR_ERROR, str(error))
            study.tell(trial, state=TrialState.FAIL)
            return
        except StudyInterrupted:
            queue_again(study, [trial])
            trial.set_user_attr(ATTR_INTERRUPTED, True)
            study.tell(trial, state=TrialState.FAIL)
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                study.tell(trial, state=TrialState.FAIL)
            raise
    study.tell(trial, value)


def _worker_process(settings: StudySettings, worker: int) -> None:
    set_up_worker()
    if settings.train_options.get("shape_plugin"):
        # A spawned process starts with the built-in shapes only.
        load_shapes_from_file(settings.train_options["shape_plugin"])
    quiet_optuna()
    study = prepare_study(settings, worker)
    # Ctrl-C: the interrupted trial is recorded (and its continuation queued) by `run_trial`;
    # the parent says so, once.
    with contextlib.suppress(StudyInterrupted, KeyboardInterrupt):
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


class StudyProgress(Progress):
    """tqdm bar: trials done / requested, best value so far, the current trial's task and step."""

    def __init__(self, settings: StudySettings, study: optuna.Study) -> None:
        self.settings, self.study = settings, study
        super().__init__(self._status, total=settings.trials, desc=settings.study_name, bar=True,
                         enabled=settings.progress, interval=2.0)
        self.refresh()

    def _status(self) -> tuple[int, str]:
        outcome = summarise(self.study)
        if self.settings.workers > 1:  # what each worker runs, as it recorded it
            running = [t.user_attrs.get(ATTR_PROGRESS, "") for t in self.study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,))]
            self.current = " | ".join(text for text in running if text)
        best = "-" if outcome.best_value is None else f"{outcome.best_value:.3f}"
        return outcome.finished, f"best {best}"

    def refresh_counts(self) -> None:
        self.refresh()


def check_study_dir(settings: StudySettings, study: optuna.Study | None) -> None:
    """Refuse a study directory that holds another study's trials, before anything is written.

    Its marker file names the study that owns it; a directory without one that holds trial
    directories belongs to a study made before the marker, and is taken only by a study that has
    trials (continuing it), never by a new one (the same name in another storage, an emptied
    database): that one would mix its trials with the old ones'.
    """
    directory = settings.directory
    marker = directory / STUDY_DIR_MARKER
    uid = None if study is None else study.user_attrs.get(ATTR_UID)
    if marker.is_file():
        try:
            held = json.loads(marker.read_text())
        except (OSError, ValueError):
            held = {}
        if held.get("uid") != uid or uid is None:
            raise StudyError(f"{directory} holds the trials of another study ({held.get('study_name')!r} "
                             f"in {held.get('storage')}); choose another --study-dir (its files are kept)")
        return
    trial_dirs = sorted(directory.glob("trial-*")) if directory.is_dir() else []
    if trial_dirs and (study is None or not study.get_trials(deepcopy=False)):
        raise StudyError(f"{directory} holds {len(trial_dirs)} trial directories that study "
                         f"{settings.study_name!r} in {settings.storage.describe()} did not make (another "
                         "storage, or an emptied database); choose another --study-dir or --storage "
                         "(nothing was deleted)")


def claim_study_dir(settings: StudySettings, study: optuna.Study) -> None:
    """Mark the study directory as this study's (see `check_study_dir`)."""
    uid = study.user_attrs.get(ATTR_UID)
    if uid is None:
        uid = uuid.uuid4().hex
        study.set_user_attr(ATTR_UID, uid)
    marker = settings.directory / STUDY_DIR_MARKER
    if not marker.is_file():
        write_text_atomically(marker, json.dumps({"study_name": settings.study_name,
                                                  "storage": settings.storage.describe(), "uid": uid},
                                                 indent=2) + "\n")


def _existing_study(settings: StudySettings) -> optuna.Study | None:
    quiet_optuna()
    try:
        return optuna.load_study(study_name=settings.study_name,
                                 storage=open_storage(settings.storage, heartbeat=False))
    except KeyError:
        return None
    except StorageError:
        raise
    except Exception:  # the driver's own errors: prepare_study says them in one line
        return None


@contextlib.contextmanager
def told_in_one_line(settings: StudySettings) -> Iterator[None]:
    """A full disk, a read-only directory or a storage that cannot be written: one line naming
    the path (every finished trial and checkpoint stays as it was)."""
    import sqlalchemy.exc

    try:
        yield
    except OSError as error:
        raise WriteError(describe_os_error(error, settings.directory)) from None
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as error:
        raise storage_write_error(error, settings.storage.describe()) from None


def interrupted_trials(study: optuna.Study) -> list[int]:
    """Trials stopped by Ctrl-C whose runs no finished trial has taken over yet, through any
    chain of copies (a copy may itself be stopped, or die and be retried, before one finishes)."""
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    taken_over = {source for trial in trials.values() if trial.state in FINISHED
                  for source in continuation_chain(trials, trial.number)[1:]}
    return [number for number, trial in trials.items()
            if trial.user_attrs.get(ATTR_INTERRUPTED) and number not in taken_over]


def run_study(settings: StudySettings, log: Callable[[str], None] = print) -> StudyOutcome:
    """Create (once, before any worker starts) or continue the study, then run it.

    Ctrl-C raises `StudyInterrupted` (naming the interrupted trials) once the running iteration
    has finished and the trials are recorded; the same command continues them.
    """
    check_batch(settings)
    with told_in_one_line(settings):
        check_study_dir(settings, _existing_study(settings))
        study = prepare_study(settings)
        try:
            references = ensure_references(settings.tasks, settings.steps_per_task, settings.seed_list,
                                           settings.train_options, command=settings.command, log=log)
        except KeyboardInterrupt:
            raise StudyInterrupted([]) from None
        record_references(study, references)
        study.set_user_attr(ATTR_RUN_OPTIONS, settings.run_options())
        with writing(settings.directory):
            settings.directory.mkdir(parents=True, exist_ok=True)
        claim_study_dir(settings, study)
        if settings.storage.has_heartbeat:
            optuna.storages.fail_stale_trials(study)
        progress = StudyProgress(settings, study)
        try:
            if settings.workers == 1:
                worker_loop(settings, study, references, show=progress.show,
                            after_trial=progress.refresh_counts)
            else:
                arguments = [(settings, worker) for worker in range(settings.workers)]
                codes = run_workers(_worker_process, arguments, while_running=progress.refresh_counts)
                if interrupted_trials(study):
                    raise StudyInterrupted(interrupted_trials(study))
                failed = [code for code in codes if code]
                if failed:
                    raise StudyError(f"{len(failed)} worker(s) failed (exit codes {failed}); "
                                     "re-run the same command to continue the study")
            progress.refresh_counts()
        except KeyboardInterrupt:
            raise StudyInterrupted(interrupted_trials(study)) from None
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
    "StudyInterrupted",
    "StudyOutcome",
    "build_pruner",
    "build_sampler",
    "check_study_dir",
    "claim_study_dir",
    "prepare_study",
    "references_from_study",
    "run_study",
    "summarise",
    "worker_loop",
]
