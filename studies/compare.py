"""`klip compare`: a grid of entries x tasks x seeds, trained cell by cell, resumable.

A *cell* is one run: (entry, task, seed). The jobs are split by what they do:
`klip.studies.entries` (what is compared), `grid` (the cells and `grid.json`), `cells` (a cell's
directory: checked, hashed, quarantined, trained), `cell_queue` (the Optuna study that hands the
jobs out) and, here, the workers that pop jobs, the progress lines and `run_grid`, which drives a
whole grid. The grid directory also holds `random_scores.json` (the random-policy return per
task, `klip.studies.references`).

A trial that pops no job (the queue ran dry) is told FAIL with the user attribute
`klip_compare` and its worker stops.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from klip.studies.attributes import ATTR_ERROR, ERROR_INTERRUPTED
from klip.studies.cell_queue import (
    CELLS_ATTR,
    JOB_ATTR,
    STORAGE_FILE,
    _job_trials,
    default_storage,
    enqueue,
    make_storage,
    open_study,
    open_study_readonly,
)
from klip.studies.cells import (
    CELL_FILE,
    CORRUPT_DIR,
    POPULATION_DIR,
    CellFailure,
    CellRun,
    CellState,
    CellTrainer,
    check_cell,
    metric_column_sha256,
    parameters_sha256,
    quarantine,
    read_episodes,
    run_job,
    train_cells,
    train_cells_together,
)
from klip.studies.entries import (
    CompareError,
    Entry,
    parse_entries,
    parse_entry,
    split_entries,
)
from klip.studies.files import WriteError, describe_os_error
from klip.studies.grid import (
    EVENTS_FILE,
    GRID_FILE,
    RUNS_DIR,
    Cell,
    GridSpec,
    grid_lock,
    job_key,
    load_grid,
    log_event,
    prepare_grid,
)
from klip.studies.progress import Progress, format_duration
from klip.studies.references import (
    RANDOM_FILE,
    random_scores,
)
from klip.studies.reuse import link_reused_cells
from klip.studies.workers import run_workers, set_up_worker

DRY_ATTR = "klip_compare"
POLL_SECONDS = 15.0


# -- workers ------------------------------------------------------------------------------------


class _QueueDry(Exception):
    """The trial popped no job: the queue is empty."""


class _Duplicate(Exception):
    """The trial's job is already running elsewhere."""


def _running_jobs(study: Any, exclude: int) -> int:
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.number != exclude and t.user_attrs.get(JOB_ATTR) is not None)


def _waiting_jobs(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _log(message: str) -> None:
    print(f"klip compare: {message}", file=sys.stderr, flush=True)


def run_worker(out: Path, url: str, *, trainer: CellTrainer = train_cells,
               poll_seconds: float = POLL_SECONDS) -> int:
    """Pop jobs until the queue is dry and no other job can come back; return jobs trained."""
    import optuna
    import torch
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from klip.studies.training import RunInterrupted

    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "egl")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = load_grid(out)
    jobs = {job_key(job): job for job in spec.jobs()}
    study = optuna.load_study(study_name=spec.study_name, storage=make_storage(url))
    done = 0

    def objective(trial: Any) -> float:
        nonlocal done
        key = trial.user_attrs.get(JOB_ATTR)
        if key is None:
            trial.set_user_attr(DRY_ATTR, "not a cell: the queue ran dry")
            # Wait while other jobs run: a dead worker's job comes back to the queue.
            while _running_jobs(study, trial.number) and not _waiting_jobs(study):
                time.sleep(poll_seconds)
                fail_stale_trials(study)
            if not _waiting_jobs(study):
                study.stop()
            raise _QueueDry
        for other in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if other.number != trial.number and other.user_attrs.get(JOB_ATTR) == key:
                trial.set_user_attr(DRY_ATTR, f"duplicate: trial {other.number} runs this job")
                raise _Duplicate
        if key not in jobs:
            trial.set_user_attr(DRY_ATTR, "not a cell of this grid")
            raise _Duplicate
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        try:
            records = run_job(spec, out, jobs[key], trainer, _log)
        except RunInterrupted:
            # Ctrl-C reached the worker: the cell keeps its checkpoint and continues on the
            # next run; the worker stops rather than start the next cell.
            trial.set_user_attr(ATTR_ERROR, ERROR_INTERRUPTED)
            _log(f"{key}: interrupted; it continues from its checkpoint on the next run")
            raise KeyboardInterrupt from None
        except OSError as error:  # a full disk or a read-only directory: every next cell would fail too
            message = describe_os_error(error, spec.cell_dir(out, jobs[key][0]))
            trial.set_user_attr(ATTR_ERROR, message[:1000])
            _log(f"{key}: FAILED ({message})")
            raise WriteError(message) from None
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            trial.set_user_attr(ATTR_ERROR, message[:1000])  # optuna-dashboard shows 1,024
            _log(f"{key}: FAILED ({message})")
            raise CellFailure(message) from error
        trial.set_user_attr("records", [
            {k: r[k] for k in ("key", "final_return", "parameters_sha256")} for r in records])
        done += 1
        finite = [r["final_return"] for r in records if math.isfinite(r["final_return"])]
        # Optuna refuses NaN; -inf marks a job none of whose runs finished an episode.
        return float(sum(finite) / len(finite)) if finite else -math.inf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective, catch=(_QueueDry, _Duplicate, CellFailure))
    return done


def _worker_process(out: str, url: str, trainer: CellTrainer) -> None:
    set_up_worker()
    with contextlib.suppress(KeyboardInterrupt):
        run_worker(Path(out), url, trainer=trainer)


# -- progress -----------------------------------------------------------------------------------


def _last_frames(metrics: Path) -> int:
    try:
        with open(metrics, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 4096))
            lines = file.read().decode(errors="replace").strip().splitlines()
        with open(metrics) as file:
            header = file.readline().strip().split(",")
        return int(float(lines[-1].split(",")[header.index("frames")]))
    except (OSError, ValueError, IndexError):
        return 0


def _recorded(spec: GridSpec, out: Path, cell: Cell) -> bool:
    """Whether the cell's directory holds its finished-cell record (read, not verified)."""
    try:
        return json.loads((spec.cell_dir(out, cell) / CELL_FILE).read_text()).get("key") == cell.key
    except (OSError, ValueError, AttributeError):
        return False


def _cell_frames(spec: GridSpec, out: Path, cell: Cell) -> int:
    """Steps a half-trained cell has logged: in its own directory, or, while its seeds train
    together, in its agent's directory inside the population's."""
    directory = spec.cell_dir(out, cell)
    return max(_last_frames(directory / "metrics.csv"),
               _last_frames(directory.parent / POPULATION_DIR / directory.name / "metrics.csv"))


@dataclass
class GridProgress:
    total: int
    done: int
    running: int
    stopped: int  # interrupted (Ctrl-C, --stop) or their worker died: they continue on the next run
    failed: int
    frames: int
    total_frames: int


def grid_progress(spec: GridSpec, out: Path, study: Any) -> GridProgress:
    """Cells done / total from the storage; steps done from finished and half-trained cells."""
    from optuna.trial import TrialState

    states: dict[str, set[Any]] = {}
    last_error: dict[str, str | None] = {}
    for key, trials in _job_trials(study).items():
        states[key] = {trial.state for trial in trials}
        last_error[key] = max(trials, key=lambda trial: trial.number).user_attrs.get(ATTR_ERROR)
    per_cell = spec.config(spec.cells()[0]).iterations * spec.config(spec.cells()[0]).rollout_steps
    done = running = stopped = failed = frames = 0
    for job in spec.jobs():
        key = job_key(job)
        job_states = states.get(key, set())
        # A storage made afresh (a lost SQLite file, another --storage) has not met the cells
        # finished before it; their records say they are done until a worker checks them again.
        if TrialState.COMPLETE in job_states or all(_recorded(spec, out, cell) for cell in job):
            done += len(job)
            frames += per_cell * len(job)
            continue
        if TrialState.RUNNING in job_states:
            running += len(job)
        elif job_states and job_states <= {TrialState.FAIL}:
            if last_error[key] in (None, ERROR_INTERRUPTED):
                stopped += len(job)
            else:
                failed += len(job)
        for cell in job:
            frames += min(per_cell, _cell_frames(spec, out, cell))
    cells = len(spec.cells())
    return GridProgress(cells, done, running, stopped, failed, frames, per_cell * cells)


class ProgressReporter(Progress):
    """Prints cells done / total and an estimate of the time left, from the steps done."""

    def __init__(self, spec: GridSpec, out: Path, url: str, stream: TextIO | None = None,
                 interval: float = 30.0) -> None:
        import optuna

        self.spec, self.out = spec, out
        self.study = optuna.load_study(study_name=spec.study_name, storage=make_storage(url, heartbeat=False))
        self.started = time.monotonic()
        self.start_frames: int | None = None
        super().__init__(self._status, total=len(spec.cells()), stream=stream, interval=interval)

    def _status(self) -> tuple[int, str]:
        progress = grid_progress(self.spec, self.out, self.study)
        if self.start_frames is None:
            self.start_frames = progress.frames
        elapsed = time.monotonic() - self.started
        gained = progress.frames - self.start_frames
        left = progress.total_frames - progress.frames
        eta = left * elapsed / gained if gained > 0 else math.inf
        if left == 0:
            eta = 0.0
        return progress.done, (
            f"klip compare: {progress.done}/{progress.total} cells done, {progress.running} running, "
            f"{progress.stopped} stopped (they continue on the next run), {progress.failed} failed; "
            f"{progress.frames:,}/{progress.total_frames:,} steps; "
            f"time left {format_duration(eta)}")


# -- the whole grid -----------------------------------------------------------------------------

@dataclass
class GridOutcome:
    total: int
    done: int
    failed: list[str]
    report: Path | None


def run_grid(
    spec: GridSpec, out: Path, *, storage: str | None = None, workers: int = 1,
    trainer: CellTrainer | None = None, write_report: bool = True,
    progress_interval: float = 30.0, stream: TextIO | None = None, extend: bool = False,
    reuse: Sequence[Path] = (),
) -> GridOutcome:
    """Run (or continue, or join, or with `extend` grow) a grid; write its report when this
    machine runs dry.

    `trainer` defaults to single runs one after another, or to one population per (entry,
    task) for a grid made with `seeds_together`. `reuse`: other grids whose finished cells of
    the same settings are linked instead of trained (`klip.studies.reuse`).
    """
    from optuna.trial import TrialState

    if trainer is None:
        trainer = train_cells_together if spec.seeds_together else train_cells

    if workers < 1:
        raise CompareError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    spec.root = out
    spec.validate()
    if storage is not None:
        make_storage(storage, heartbeat=False)  # a bad URL fails before the directory is touched
    spec = prepare_grid(out, spec, extend=extend)
    local = storage is None
    url = storage or default_storage(out)
    lock = grid_lock(out) if local else contextlib.nullcontext()
    with lock:
        if reuse:
            linked = link_reused_cells(spec, out, [Path(source) for source in reuse])
            if linked:
                _log(f"{linked} cells linked from {', '.join(str(source) for source in reuse)}")
        open_study(spec, out, url, local=local)
        random_scores(out, spec.tasks, spec.steps)
        with ProgressReporter(spec, out, url, stream, interval=progress_interval):
            if workers == 1:
                run_worker(out, url, trainer=trainer)
            else:
                run_workers(_worker_process, [(str(out), url, trainer)] * workers)
        study = open_study_readonly(spec, url)
        trials = _job_trials(study)
        failed = [key for key in (job_key(job) for job in spec.jobs())
                  if TrialState.COMPLETE not in {t.state for t in trials.get(key, [])}]
    report = None
    if write_report:
        from klip.studies.compare_report import write_report as write

        report = write(out)
    jobs = {job_key(job): job for job in spec.jobs()}
    total = len(spec.cells())
    return GridOutcome(total, total - sum(len(jobs[key]) for key in failed), failed, report)



__all__ = [
    "CELLS_ATTR",
    "CELL_FILE",
    "CORRUPT_DIR",
    "DRY_ATTR",
    "EVENTS_FILE",
    "GRID_FILE",
    "JOB_ATTR",
    "POPULATION_DIR",
    "RANDOM_FILE",
    "RUNS_DIR",
    "STORAGE_FILE",
    "Cell",
    "CellFailure",
    "CellRun",
    "CellState",
    "CellTrainer",
    "CompareError",
    "Entry",
    "GridOutcome",
    "GridProgress",
    "GridSpec",
    "ProgressReporter",
    "check_cell",
    "default_storage",
    "enqueue",
    "format_duration",
    "grid_lock",
    "grid_progress",
    "job_key",
    "load_grid",
    "log_event",
    "make_storage",
    "metric_column_sha256",
    "open_study",
    "open_study_readonly",
    "parameters_sha256",
    "parse_entries",
    "parse_entry",
    "prepare_grid",
    "quarantine",
    "random_scores",
    "read_episodes",
    "run_grid",
    "run_job",
    "run_worker",
    "split_entries",
    "train_cells",
    "train_cells_together",
]
