"""`klip compare`'s queue: one Optuna trial per job, popped by the workers of every machine.

The study is created once and one trial is enqueued per job (a job is one cell, or one (entry,
task) with all its seeds where a population trainer runs seeds together); workers pop WAITING
trials with `study.ask()` (inside `study.optimize`), which RDB storages do atomically (SQLite
through `BEGIN IMMEDIATE`, see `klip.studies.storage`), so no cell runs twice. Trials send
heartbeats; a dead worker's trial goes stale and its job is put back in the queue.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from klip.studies import choices
from klip.studies.cells import check_cell
from klip.studies.entries import CompareError
from klip.studies.grid import Cell, GridSpec, job_key
from klip.studies.storage import StorageError, StorageSpec, open_storage

STORAGE_FILE = "cells.sqlite3"
JOB_ATTR = "klip_job"
CELLS_ATTR = "klip_cells"


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / STORAGE_FILE).resolve()}"


def make_storage(url: str, *, heartbeat: bool = True) -> Any:
    """The grid's storage, opened as a study's is (`klip.studies.storage`: one heartbeat policy,
    SQLite serialised); a bad URL is a `CompareError` in one line."""
    if not re.match(r"^[a-z0-9+]+://", url):
        raise CompareError(f"--storage {url!r} is not a database URL (sqlite:///FILE, postgresql://...)")
    spec = StorageSpec(url, "rdb", choices.DEFAULT_HEARTBEAT_INTERVAL, choices.DEFAULT_GRACE_PERIOD)
    try:
        return open_storage(spec, heartbeat=heartbeat)
    except StorageError as error:
        raise CompareError(str(error)) from None


def _job_trials(study: Any) -> dict[str, list[Any]]:
    trials: dict[str, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get(JOB_ATTR)
        if key is not None:
            trials.setdefault(key, []).append(trial)
    return trials


def enqueue(study: Any, job: Sequence[Cell]) -> None:
    study.enqueue_trial({}, user_attrs={JOB_ATTR: job_key(job), CELLS_ATTR: [c.key for c in job]})


def open_study(spec: GridSpec, out: Path, url: str, *, local: bool) -> Any:
    """Create the grid's study (once) or join it; queue every job that is neither done nor queued.

    `local`: this process holds the grid's lock and the storage is the grid's own file, so no
    other worker can be alive and RUNNING trials are leftovers of a killed run.
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(url, heartbeat=False)
    try:
        study = optuna.create_study(study_name=spec.study_name, storage=storage, direction="maximize")
        study.set_user_attr("klip_grid", spec.to_dict())
        for job in spec.jobs():
            enqueue(study, job)
        study.set_user_attr("klip_enqueued", True)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
    if study.user_attrs.get("klip_grid") != spec.to_dict():
        raise CompareError(f"study {spec.study_name} in the storage holds a grid with other settings")
    # Another machine may be enqueueing right now; wait for it rather than doubling its queue.
    deadline = time.monotonic() + 120
    while not study.user_attrs.get("klip_enqueued") and time.monotonic() < deadline:
        time.sleep(2)
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
    study_id = storage.get_study_id_from_name(spec.study_name)
    if local:
        # Killed while finding the queue dry: nothing to redo.
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if JOB_ATTR not in trial.user_attrs:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
    trials = _job_trials(study)
    host = socket.gethostname()
    queued: list[tuple[Sequence[Cell], list[int]]] = []  # (job, its WAITING trials' ids)
    for job in spec.jobs():
        key = job_key(job)
        states = {trial.state for trial in trials.get(key, [])}
        if TrialState.RUNNING in states and not local:
            continue  # a worker (perhaps on another machine) holds it
        waiting: list[int] = []
        for trial in trials.get(key, []):
            if trial.state not in (TrialState.WAITING, TrialState.RUNNING):
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            if trial.state == TrialState.RUNNING:
                # Back to WAITING, keeping its place: the killed (half-trained) cells of
                # the early seeds continue first, so the partial grid stays seed-major.
                storage.set_trial_user_attr(trial_id, "klip_note", "its worker was killed; queued again")
                storage.set_trial_state_values(trial_id, TrialState.WAITING)
            waiting.append(trial_id)
        if waiting:
            queued.append((job, waiting))
            continue
        if TrialState.COMPLETE in states:
            completed = [t for t in trials[key] if t.state == TrialState.COMPLETE]
            here = any(t.user_attrs.get("host") == host for t in completed)
            # A job finished on this machine must still be whole here; others' are theirs.
            if not here or all(check_cell(spec, out, cell).status == "done" for cell in job):
                continue
        queued.append((job, []))
    _enqueue_in_grid_order(study, storage, queued, rebuild=local)
    return study


def _enqueue_in_grid_order(study: Any, storage: Any, queued: list[tuple[Sequence[Cell], list[int]]], *,
                           rebuild: bool) -> None:
    """Queue the jobs that have no WAITING trial, keeping the grid's seed-major order.

    Workers pop WAITING trials by trial number, so a job queued again (its cell was stopped by
    Ctrl-C or failed) would go behind every job already waiting. With `rebuild` (no other
    worker can be popping), the waiting jobs behind it are failed with a note and queued
    again after it, so the grid runs in its own order; without, it goes to the end.
    """
    from optuna.trial import TrialState

    first_new = next((i for i, (_, waiting) in enumerate(queued) if not waiting), len(queued))
    for position, (job, waiting) in enumerate(queued):
        if waiting and rebuild and position > first_new:
            for trial_id in waiting:
                storage.set_trial_user_attr(trial_id, "klip_note", "queued again in grid order")
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
            waiting.clear()
        if not waiting:
            enqueue(study, job)



def open_study_readonly(spec: GridSpec, url: str) -> Any:
    import optuna

    return optuna.load_study(study_name=spec.study_name, storage=make_storage(url, heartbeat=False))

