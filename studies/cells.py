"""`klip compare`'s cells on disk: checked, hashed, quarantined, and trained job by job.

Each cell's run directory holds a `klip train` run plus `cell.json`: the SHA-256 of its final
actor and critic parameters and of each metric column, so bitwise equality can be stated without
the checkpoints (`parameters.pt` is what those hashes are checked against where the checkpoints
are not kept). A cell found finished is not trained again; one found half-trained continues
from its checkpoint (bit for bit); one found corrupt is moved to `corrupt/`, logged in
`events.jsonl` and trained again from scratch.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from klip.studies.files import write_text_atomically, writing
from klip.studies.grid import RUNS_DIR, Cell, GridSpec, differences, job_key, log_event

CORRUPT_DIR = "corrupt"
KEPT_DIR = "kept"  # what a job found in its way and moved aside
CELL_FILE = "cell.json"
# Where a `--seeds-together` job's population trains, inside runs/TASK/ENTRY/.
POPULATION_DIR = "population"


class CellFailure(RuntimeError):
    """A cell whose training raised or ended without a valid result."""



def parameters_sha256(checkpoint: Path) -> str:
    """SHA-256 of the actor and critic parameters of a checkpoint (names, dtypes, shapes, bytes)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    # A single run's checkpoint keys its agent's modules under `agents.0.` (parameters.pt and
    # checkpoints of earlier klips do not): the hash is of the same names either way.
    state = {key.removeprefix("agents.0."): value for key, value in state.items()}
    digest = hashlib.sha256()
    keys = sorted(key for key in state if key.startswith(("actor.", "critic.")))
    if not keys:
        raise ValueError(f"{checkpoint} holds no actor or critic parameters")
    for key in keys:
        tensor = state[key].detach().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def metric_column_sha256(metrics: Path) -> dict[str, str]:
    """SHA-256 of every metric column's logged text, timings (`time/...`) left out."""
    with open(metrics, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise ValueError(f"{metrics} holds no rows")
    return {column: hashlib.sha256("\n".join(row[column] for row in rows).encode()).hexdigest()
            for column in rows[0] if not column.startswith("time/")}


def read_episodes(path: Path) -> list[tuple[int, float]]:
    from klip.studies.training import read_episode_returns

    return read_episode_returns(path)


@dataclass
class CellState:
    status: str  # missing | partial | done | corrupt
    reason: str = ""
    record: dict[str, Any] | None = None


def _expected_frames(config: Any) -> int:
    return config.iterations * config.rollout_steps


def _comparable_configs(directory: Path, held: Any, config: Any) -> tuple[dict, dict]:
    """The cell's recorded options and the ones it should have, both as `klip train` records
    them today (an older run's file upgraded); the shape sources are compared by the shape
    name and parameters they resolve to, since a run records its own copies of them."""
    from klip.studies.training import recorded_config_as_today, resolve_config

    if not isinstance(held, dict):
        return {}, {"config": "a mapping"}
    try:
        held = recorded_config_as_today(directory, held)
    except RuntimeError:  # RunError: unreadable as a klip run
        return {}, {"config": "readable"}
    expected = resolve_config(config)[0].to_dict()
    sources = ("shape_file", "shape_plugin")
    return ({k: v for k, v in held.items() if k not in sources},
            {k: v for k, v in expected.items() if k not in sources})


def check_cell(spec: GridSpec, out: Path, cell: Cell, *, write_record: bool = True) -> CellState:
    """What the cell's directory holds; a finished cell gets (or keeps) its `cell.json`."""
    import torch

    from klip.studies.training import DIVERGED, PARAMETERS_FILE, final_return

    directory = spec.cell_dir(out, cell)
    if not directory.is_dir() or not any(directory.iterdir()):
        return CellState("missing")
    config = spec.config(cell)
    try:
        held = yaml.safe_load((directory / "config.yaml").read_text())
    except FileNotFoundError:
        return CellState("corrupt", "no config.yaml")
    except (yaml.YAMLError, UnicodeDecodeError):
        return CellState("corrupt", "config.yaml is unreadable")
    held, expected = _comparable_configs(directory, held, config)
    if held != expected:
        changed = differences(held, expected)
        return CellState("corrupt", f"config.yaml is not this cell's (differs in: {', '.join(changed)})")
    checkpoint = directory / "checkpoints" / "last.ckpt"
    summary_path = directory / "summary.json"
    if not summary_path.is_file():
        if checkpoint.is_file():
            try:
                torch.load(checkpoint, map_location="cpu", weights_only=True)
            except Exception as error:  # torch.load raises many types on a damaged file
                return CellState("corrupt", f"checkpoint is unreadable ({type(error).__name__})")
        return CellState("partial", "no summary.json yet")
    try:
        summary = json.loads(summary_path.read_text())
        reported = summary["final_return_last10pct"]
        reported = math.nan if reported is None else float(reported)  # None: no episode ended
        frames = int(summary["frames"])
        history = read_episodes(directory / "episodes.csv")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return CellState("corrupt", f"unreadable result ({type(error).__name__}: {error})")
    # A diverged run is a result: it stopped where it diverged and is not trained again.
    diverged = summary.get("status") == DIVERGED
    if not diverged and frames < _expected_frames(config) and checkpoint.is_file():
        # A run stopped early on purpose (or by an older budget) continues from its checkpoint.
        return CellState("partial", f"stopped at {frames} of {_expected_frames(config)} frames")
    if frames > _expected_frames(config) or (frames < _expected_frames(config) and not diverged):
        return CellState("corrupt", f"summary.json says {frames} frames, expected {_expected_frames(config)}")
    recomputed = final_return(history, frames)
    # NaN on both sides: no episode ended (a budget shorter than one episode).
    agree = (math.isnan(reported) and math.isnan(recomputed)) or (
        math.isfinite(reported) and math.isclose(reported, recomputed, rel_tol=1e-12, abs_tol=1e-9))
    if not agree:
        return CellState("corrupt", f"summary.json's final return {reported} disagrees with "
                                    f"episodes.csv ({recomputed})")
    record_path = directory / CELL_FILE
    if write_record and checkpoint.is_file() and not (directory / PARAMETERS_FILE).is_file():
        _write_parameters_file(directory)
    if not checkpoint.is_file() or diverged:
        # A cell trained inside a population, or one whose ignored checkpoint is not in this
        # checkout, has its final parameters in PARAMETERS_FILE; so has a diverged run, whose
        # checkpoint is its last periodic one.
        checkpoint = directory / PARAMETERS_FILE
    record: dict[str, Any] | None = None
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            record = None
    same_return = record is not None and (record.get("final_return") == reported or (
        math.isnan(reported) and math.isnan(float(record.get("final_return", 0.0)))))
    if record is not None and same_return and record.get("key") == cell.key \
            and record.get("diverged") == (summary.get("error") if diverged else None):
        if checkpoint.is_file():
            try:
                if parameters_sha256(checkpoint) != record.get("parameters_sha256"):
                    return CellState("corrupt",
                                     f"{checkpoint.name}'s parameters differ from cell.json's SHA-256")
            except Exception as error:  # torch.load raises many types on a damaged file
                return CellState("corrupt", f"{checkpoint.name} is unreadable ({type(error).__name__})")
        return CellState("done", record=record)
    try:
        record = {
            "key": cell.key, "entry": cell.entry.label, "task": cell.task, "seed": cell.seed,
            "final_return": reported, "frames": frames,
            "diverged": summary.get("error") if diverged else None,
            "wall_seconds": summary.get("wall_seconds"),
            "population_size": int(summary.get("population_size", 1)),
            "parameters_sha256": parameters_sha256(checkpoint),
            "metrics_sha256": metric_column_sha256(directory / "metrics.csv"),
            "host": socket.gethostname(),
            "finished": datetime.fromtimestamp(summary_path.stat().st_mtime, timezone.utc).isoformat(),
        }
    except Exception as error:  # a damaged checkpoint or metrics file, in any way
        return CellState("corrupt", f"cannot hash the result ({type(error).__name__}: {error})")
    if write_record:
        write_text_atomically(record_path, json.dumps(record, indent=2) + "\n")
    return CellState("done", record=record)


def _write_parameters_file(directory: Path) -> None:
    """PARAMETERS_FILE from a finished run's checkpoint, for runs trained by a klip that did not
    write it: checkpoints are not committed, and this file is what a clone can evaluate."""
    from klip.studies.training import PARAMETERS_FILE, load_run, save_module_parameters

    module = load_run(directory).load_module()
    try:
        save_module_parameters(module, directory / PARAMETERS_FILE)
    finally:
        module.env.close()



def quarantine(spec: GridSpec, out: Path, cell: Cell, reason: str) -> Path:
    """Move a corrupt cell aside (kept for inspection) so it can be trained again."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = out / CORRUPT_DIR / f"{cell.key.replace('/', '__')}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(spec.cell_dir(out, cell)), target)
    log_event(out, {"event": "corrupt", "cell": cell.key, "reason": reason,
                    "moved_to": str(target.relative_to(out))})
    return target


# -- training a job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellRun:
    """One cell to train: its config, its run directory, and whether it continues a checkpoint."""

    cell: Cell
    config: Any
    out: Path
    resume: bool


CellTrainer = Callable[[Sequence[CellRun]], None]


def train_cells(runs: Sequence[CellRun]) -> None:
    """Default trainer: the cells one after another with `train` (the training seam).

    The one seam for another way to train a job (e.g. its seeds as one population).
    """
    from klip.studies.training import TrainingDiverged, can_resume, train

    for run in runs:
        resume = run.resume and can_resume(run.out, run.config)
        if run.resume and not resume and run.out.exists():
            # Stopped before its first checkpoint, or on a simulator that cannot be restored.
            keep_aside(run.out)
        with contextlib.suppress(TrainingDiverged):  # a result: its summary.json says so
            train(run.config, run.out, resume=resume, progress=False)


def train_cells_together(runs: Sequence[CellRun]) -> None:
    """`--seeds-together` trainer: each (entry, task)'s cells as one population.

    The population trains in `runs/TASK/ENTRY/population/` (its checkpoint there, so a killed
    job continues bit for bit); when it ends, each agent's run directory becomes its cell's
    directory and the population directory is removed. A single cell takes the exact path.
    """
    from klip.studies.training import (
        POPULATION_FILE,
        PopulationSpec,
        TrainingDiverged,
        can_resume,
        train_population,
        with_options_added_later,
    )

    groups: dict[tuple[str, str], list[CellRun]] = {}
    for run in runs:
        groups.setdefault((run.cell.task, run.cell.entry.label), []).append(run)
    for group in groups.values():
        if len(group) == 1:
            train_cells(group)
            continue
        root = group[0].out.parent / POPULATION_DIR
        spec = PopulationSpec(group[0].config, [run.cell.seed for run in group], {})
        resume = False
        if can_resume(root, spec.base):
            held = (yaml.safe_load((root / POPULATION_FILE).read_text()) or {}).get("spec") or {}
            held["base"] = with_options_added_later(held.get("base", {}))
            resume = held == yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        if root.exists() and not resume:
            keep_aside(root)  # another subset of seeds, or other settings: start again
        for run in group:
            if run.out.exists():
                keep_aside(run.out)  # a leftover of an earlier attempt; the population retrains it
        with contextlib.suppress(TrainingDiverged):  # the agents that diverged say so, as above
            train_population(spec, root, resume=resume, progress=False)
        for run in group:
            shutil.move(str(root / f"s{run.cell.seed}"), run.out)
        shutil.rmtree(root)


def keep_aside(path: Path) -> Path:
    """Move a directory a job would start over in to `kept/` of the grid (runs/TASK/ENTRY/NAME
    -> kept/TASK__ENTRY__NAME-STAMP): never delete what a run may have trained."""
    grid = path.parents[3]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = grid / KEPT_DIR / f"{'__'.join(path.relative_to(grid / RUNS_DIR).parts)}-{stamp}"
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), target)
    log_event(grid, {"event": "kept aside", "path": path.relative_to(grid).as_posix(),
                     "moved_to": target.relative_to(grid).as_posix()})
    return target


def run_job(spec: GridSpec, out: Path, job: Sequence[Cell], trainer: CellTrainer,
            log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train what the job's cells still need; return their records."""
    runs = []
    for cell in job:
        state = check_cell(spec, out, cell)
        if state.status == "done":
            continue
        if state.status == "corrupt":
            moved = quarantine(spec, out, cell, state.reason)
            log(f"{cell.key}: corrupt ({state.reason}); moved to {moved.relative_to(out)}, training again")
        resume = state.status == "partial"
        runs.append(CellRun(cell, spec.config(cell), spec.cell_dir(out, cell), resume))
    started = time.perf_counter()
    if runs:
        trainer(runs)
    records = []
    for cell in job:
        state = check_cell(spec, out, cell)
        if state.status != "done" or state.record is None:
            raise CellFailure(f"{cell.key} did not finish: {state.reason or state.status}")
        records.append(state.record)
    if runs:
        returns = ", ".join(f"{record['final_return']:.1f}" for record in records)
        log(f"{job_key(job)}: final return {returns} (trained in {time.perf_counter() - started:.0f} s"
            + (", resumed)" if any(run.resume for run in runs) else ")"))
    return records

