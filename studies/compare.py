"""`klip compare`: a grid of entries x tasks x seeds, trained cell by cell, resumable.

An *entry* is what is compared: a loss (`clip`, `kl_fixed`, `kl_adaptive:kl_target=0.01`),
a registered shape with parameters (`step`, `sigmoid:tau=0.03`), a shape JSON file, or a
study's best trial (`study:NAME@STORAGE_URL`). A *cell* is one run: (entry, task, seed).

The grid directory holds `grid.json` (its settings; a second `klip compare` into the same
directory must ask for the same grid), `runs/<task>/<entry>/s<seed>/` (each a `klip train`
run directory plus `cell.json`: the SHA-256 of its final actor and critic parameters and of
each metric column, so bitwise equality can be stated without the checkpoints; its
`parameters.pt` is what those hashes are checked against where the checkpoints are not kept) and
`random_scores.json` (the random-policy return per task, for normalised scores).

Cells are handed out through an Optuna study in an RDB storage (default: a SQLite file in
the grid directory; `--storage postgresql://...` spreads one grid over machines). The study
is created once and one trial is enqueued per job (a job is one cell, or one (entry, task)
with all its seeds where a population trainer runs seeds together); workers pop WAITING
trials with `study.ask()` (inside `study.optimize`), which RDB storages do atomically, so no
cell runs twice. A trial that pops no job (the queue ran dry) is told FAIL with the user
attribute `klip_compare` and its worker stops. Trials send heartbeats; a dead worker's
trial goes stale and `RetryHeartbeatStaleTrialCallback` puts its job back in the queue.

A cell found finished (valid `summary.json`) is not trained again; one found half-trained
continues from its checkpoint (`train(..., resume=True)`, bit for bit); one found corrupt is
moved to `corrupt/`, logged in `events.jsonl` and trained again from scratch.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import re
import shlex
import shutil
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import yaml

from klip.preload import preload

GRID_FILE = "grid.json"
GRID_FORMAT = 1
STORAGE_FILE = "cells.sqlite3"
LOCK_FILE = ".compare.lock"
RUNS_DIR = "runs"
CORRUPT_DIR = "corrupt"
EVENTS_FILE = "events.jsonl"
CELL_FILE = "cell.json"
# Where a `--seeds-together` job's population trains, inside runs/TASK/ENTRY/.
POPULATION_DIR = "population"
RANDOM_FILE = "random_scores.json"
RANDOM_EPISODES = 20

# Options the grid sets per cell; a base option may not override them.
GRID_OPTIONS = ("task", "loss", "shape", "shape_params", "shape_file", "seed", "steps")
JOB_ATTR = "klip_job"
CELLS_ATTR = "klip_cells"
DRY_ATTR = "klip_compare"
HEARTBEAT_INTERVAL = 60
GRACE_PERIOD = 300
MAX_RETRY = 3
POLL_SECONDS = 15.0


class CompareError(ValueError):
    """Bad input to a comparison (entries, settings, directory), told in one line."""


class CellFailure(RuntimeError):
    """A cell whose training raised or ended without a valid result."""


# -- entries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One compared method: a label and the training options that make it."""

    label: str
    spec: str
    options: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=+-]+", "_", self.label)

    @property
    def is_step(self) -> bool:
        """PPO-Clip written as the `step` shape, with nothing else changed."""
        return self.options == {"loss": "klip", "shape": "step", "shape_params": {}}

    @property
    def is_clip(self) -> bool:
        """TorchRL's ClipPPOLoss with nothing else changed."""
        return self.options == {"loss": "clip"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(**data)


def _format_params(params: dict[str, Any]) -> str:
    return ",".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in params.items())


def _loss_overrides(name: str, assignments: list[str]) -> dict[str, Any]:
    from klip.studies.training import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    overrides: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields or key in GRID_OPTIONS:
            raise CompareError(f"entry {name!r}: {item!r} is not OPTION=VALUE of a training option")
        value = yaml.safe_load(raw)
        # Text only for the options that take text (kl_direction=new_old); numbers otherwise.
        textual = isinstance(value, str) and "str" in str(fields[key].type)
        if isinstance(value, bool) or not (isinstance(value, int | float | None) or textual):
            raise CompareError(f"entry {name!r}: {key}={raw!r} is not a number")
        overrides[key] = value
    return overrides


def _shape_entry(spec: str, label: str, shape: Any, grid_dir: Path, source: dict[str, Any]) -> Entry:
    """An entry for a shape object: by name and parameters, or (with state) by a copied file."""
    data = shape.to_dict()
    if not data.get("state"):
        params = dict(data.get("params", {}))
        return Entry(label, spec, {"loss": "klip", "shape": data["name"], "shape_params": params},
                     source)
    # A shape with learned state needs its file; the grid keeps its own copy.
    copy = grid_dir / "shapes" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', label)}.json"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(json.dumps(data, indent=2) + "\n")
    return Entry(label, spec, {"loss": "klip", "shape_file": str(copy.resolve())}, source)


def _yaml_scalar(value: Any) -> str:
    """`value` written so that `--set OPTION=VALUE` reads it back (YAML; 1e-05 as `1.0e-05`)."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


def _hide_password(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def _study_entry(spec: str, grid_dir: Path) -> Entry:
    """`study:NAME@URL`: the best trial's shape: a `klip study` trial's shape JSON (with its
    state, e.g. a learned vector), else the params `shape` and the shape's parameters."""
    import optuna

    from klip.shapes import make_shape, shape_from_dict
    from klip.studies.run import ATTR_SHAPE

    name, sep, url = spec.removeprefix("study:").partition("@")
    shown = _hide_password(spec)  # grid.json and messages: never a storage password
    if not sep or not name or not url:
        raise CompareError(f"entry {shown!r}: a study entry looks like study:NAME@STORAGE_URL")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=url)
        best = study.best_trial
    except (KeyError, ValueError, RuntimeError) as error:
        raise CompareError(f"entry {shown!r}: {error}") from None
    source = {"study": name, "storage": _hide_password(url), "trial": best.number,
              "value": best.value}
    try:
        if isinstance(best.user_attrs.get(ATTR_SHAPE), dict):
            shape = shape_from_dict(best.user_attrs[ATTR_SHAPE])
        else:
            params = dict(best.params)
            shape = make_shape(str(params.pop("shape")), **params)
    except (KeyError, ValueError, TypeError) as error:
        raise CompareError(f"entry {shown!r}: best trial {best.number} holds no shape ({error})") from None
    return _shape_entry(shown, f"study-{name}", shape, grid_dir, source)


def parse_entry(spec: str, grid_dir: Path) -> Entry:
    """One entry from its command-line form."""
    from klip.shapes import available_shapes, load_shape, make_shape, parse_param_assignments
    from klip.studies.training import LOSSES

    spec = spec.strip()
    if spec.startswith("study:"):
        return _study_entry(spec, grid_dir)
    if spec.endswith(".json"):
        try:
            shape = load_shape(spec)
        except (OSError, ValueError, KeyError) as error:
            raise CompareError(f"entry {spec!r}: {error}") from None
        return _shape_entry(spec, Path(spec).stem, shape, grid_dir, {"file": spec})
    name, _, rest = spec.partition(":")
    assignments = [item for item in rest.split(",") if item.strip()]
    if name in LOSSES and name != "klip":
        overrides = _loss_overrides(name, assignments)
        label = f"{name}:{_format_params(overrides)}" if overrides else name
        return Entry(label, spec, {"loss": name, **overrides})
    shape_name = "step" if name == "klip" else name
    if shape_name in available_shapes():
        try:
            params = parse_param_assignments(assignments)
            make_shape(shape_name, **params)
        except (ValueError, TypeError, KeyError) as error:
            raise CompareError(f"entry {spec!r}: {error}") from None
        label = f"{shape_name}:{_format_params(params)}" if params else shape_name
        return Entry(label, spec, {"loss": "klip", "shape": shape_name, "shape_params": params})
    raise CompareError(
        f"unknown entry {spec!r}; an entry is a loss ({', '.join(x for x in LOSSES if x != 'klip')}), "
        f"a shape ({', '.join(available_shapes())}) with optional :NAME=VALUE,..., "
        "a shape .json file, or study:NAME@STORAGE_URL"
    )


def parse_entries(specs: Sequence[str], grid_dir: Path) -> list[Entry]:
    entries = [parse_entry(spec, grid_dir) for spec in specs if spec.strip()]
    if not entries:
        raise CompareError("no entries given (--losses)")
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.dirname in seen:
            raise CompareError(f"entries {seen[entry.dirname]!r} and {entry.spec!r} are the same entry")
        seen[entry.dirname] = entry.spec
    return entries


# -- the grid -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    entry: Entry
    task: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.entry.dirname}/s{self.seed}"


@dataclass
class GridSpec:
    """Everything that defines a grid; `grid.json` holds it."""

    entries: list[Entry]
    tasks: list[str]
    seeds: list[int]
    steps: int
    base: dict[str, Any] = field(default_factory=dict)
    seeds_together: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"format": GRID_FORMAT, "entries": [entry.to_dict() for entry in self.entries],
                "tasks": list(self.tasks), "seeds": list(self.seeds), "steps": self.steps,
                "base": dict(self.base), "seeds_together": self.seeds_together}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridSpec:
        if data.get("format") != GRID_FORMAT:
            raise CompareError(f"unsupported grid format {data.get('format')!r}")
        seeds = data["seeds"]
        # A grid.json written when --seeds could be a count N (seeds 0..N-1) still loads.
        seeds = list(range(seeds)) if isinstance(seeds, int) else [int(seed) for seed in seeds]
        return cls([Entry.from_dict(entry) for entry in data["entries"]], list(data["tasks"]),
                   seeds, int(data["steps"]), dict(data["base"]),
                   bool(data.get("seeds_together", False)))

    @property
    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def study_name(self) -> str:
        return f"klip-compare-{self.digest}"

    def config(self, cell: Cell) -> Any:
        from klip.studies.training import TrainConfig

        options = {**self.base, **cell.entry.options, "task": cell.task, "seed": cell.seed,
                   "steps": self.steps}
        return TrainConfig.from_dict(options)

    def ordered_entries(self) -> list[Entry]:
        """The given order, except that `step` follows `clip` (their runs are compared bitwise)."""
        entries = list(self.entries)
        clip = next((e for e in entries if e.is_clip), None)
        step = next((e for e in entries if e.is_step), None)
        if clip is not None and step is not None:
            entries.remove(step)
            entries.insert(entries.index(clip) + 1, step)
        return entries

    def cells(self) -> list[Cell]:
        """Seed-major: every entry on every task for seed 0, then seed 1, ... so that a partial
        grid already compares all entries on equal footing."""
        return [Cell(entry, task, seed) for seed in self.seeds for task in self.tasks
                for entry in self.ordered_entries()]

    def jobs(self) -> list[tuple[Cell, ...]]:
        """Units handed to a worker: one cell, or all seeds of an (entry, task) together."""
        if not self.seeds_together:
            return [(cell,) for cell in self.cells()]
        return [tuple(Cell(entry, task, seed) for seed in self.seeds)
                for task in self.tasks for entry in self.ordered_entries()]

    def cell_dir(self, out: Path, cell: Cell) -> Path:
        return out / RUNS_DIR / cell.task / cell.entry.dirname / f"s{cell.seed}"

    def command(self, out: Path) -> str:
        """The `klip compare` command line that makes this grid (passwords hidden)."""
        from klip.seeds import format_seeds

        seeds = format_seeds(self.seeds)
        args = ["--losses", ",".join(entry.spec for entry in self.entries), "--tasks",
                ",".join(self.tasks), "--seeds", seeds, "--steps", str(self.steps)]
        for key, value in sorted(self.base.items()):
            args += ["--set", f"{key}={_yaml_scalar(value)}"]
        if self.seeds_together:
            args.append("--seeds-together")
        args += ["--out", str(out)]
        return _hide_password("klip compare " + " ".join(shlex.quote(arg) for arg in args))

    def validate(self) -> GridSpec:
        from klip.studies.training import ConfigError

        if not self.tasks:
            raise CompareError("no tasks given (--tasks)")
        if not self.seeds:
            raise CompareError("--seeds must be at least 1")
        for name, values in (("task", self.tasks), ("seed", self.seeds)):
            if len(set(values)) != len(values):
                raise CompareError(f"a {name} is given twice")
        bad = sorted(set(self.base) & set(GRID_OPTIONS))
        if bad:
            raise CompareError(f"the grid sets {', '.join(bad)} itself; remove it from the base options")
        for entry in self.entries:
            for task in self.tasks:
                try:
                    self.config(Cell(entry, task, self.seeds[0])).validate()
                except ConfigError as error:
                    raise CompareError(f"entry {entry.spec!r} on {task}: {error}") from None
        if self.seeds_together and len(self.seeds) > 1:
            from klip.studies.training import check_population_configs

            for entry in self.entries:
                try:
                    check_population_configs([self.config(Cell(entry, self.tasks[0], seed))
                                              for seed in self.seeds])
                except ConfigError as error:
                    raise CompareError(f"--seeds-together, entry {entry.spec!r}: {error}") from None
        return self


def job_key(job: Sequence[Cell]) -> str:
    if len(job) == 1:
        return job[0].key
    return f"{job[0].task}/{job[0].entry.dirname}/s{','.join(str(c.seed) for c in job)}"


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def load_grid(out: Path) -> GridSpec:
    path = out / GRID_FILE
    if not path.is_file():
        raise CompareError(f"{out} holds no klip compare grid (no {GRID_FILE})")
    try:
        return GridSpec.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CompareError(f"{path} is corrupt ({type(error).__name__}: {error})") from None


# What `--extend` may grow; every other setting changes what a finished cell means.
GROWABLE = ("entries", "tasks", "seeds")


def extension_problems(old: GridSpec, new: GridSpec) -> list[str]:
    """Why `new` is not `old` grown by entries, tasks or seeds (empty when it is)."""
    problems = [f"{name} differs" for name in ("steps", "base", "seeds_together")
                if getattr(old, name) != getattr(new, name)]
    new_entries = {entry.label: entry.to_dict() for entry in new.entries}
    for entry in old.entries:
        if entry.label not in new_entries:
            problems.append(f"entry {entry.label!r} is left out")
        elif new_entries[entry.label] != entry.to_dict():
            problems.append(f"entry {entry.label!r} means something else now")
    problems += [f"task {task} is left out" for task in old.tasks if task not in new.tasks]
    problems += [f"seed {seed} is left out" for seed in old.seeds if seed not in new.seeds]
    return problems


def prepare_grid(out: Path, spec: GridSpec, *, extend: bool = False) -> None:
    """Write `grid.json`, or check that the directory holds this very grid.

    `extend`: the directory's grid may be grown to `spec` by entries, tasks and seeds (its
    finished cells stay and count); `grid.json` then holds `spec`, and `events.jsonl` says so.
    """
    if out.exists() and not out.is_dir():
        raise CompareError(f"{out} exists and is not a directory")
    if (out / GRID_FILE).is_file():
        held = load_grid(out)
        changed = _differences(held.to_dict(), spec.to_dict())
        if not changed:
            return
        if not extend:
            hint = ("; or add --extend to grow it by these entries, tasks and seeds"
                    if set(changed) <= set(GROWABLE) else "")
            raise CompareError(f"{out} holds a grid with other settings (differs in: "
                               f"{', '.join(changed)}); choose another --out{hint}")
        problems = extension_problems(held, spec)
        if problems:
            raise CompareError(f"--extend only adds entries, tasks and seeds to {out}'s grid: "
                               + "; ".join(problems))
        with grid_lock(out):  # not while another local `klip compare` drives the old grid
            (out / GRID_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
            old_labels = {entry.label for entry in held.entries}
            log_event(out, {"event": "extended",
                            "entries_added": [e.label for e in spec.entries if e.label not in old_labels],
                            "tasks_added": [t for t in spec.tasks if t not in held.tasks],
                            "seeds_added": [s for s in spec.seeds if s not in held.seeds]})
        return
    if out.is_dir() and any(p.name != "shapes" for p in out.iterdir()):
        raise CompareError(f"{out} is not empty and holds no klip compare grid")
    out.mkdir(parents=True, exist_ok=True)
    (out / GRID_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


# -- cells on disk --------------------------------------------------------------------------------


def parameters_sha256(checkpoint: Path) -> str:
    """SHA-256 of the actor and critic parameters of a checkpoint (names, dtypes, shapes, bytes)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
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

    from klip.studies.training import PARAMETERS_FILE, final_return

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
        changed = _differences(held, expected)
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
        reported = float(summary["final_return_last10pct"])
        frames = int(summary["frames"])
        history = read_episodes(directory / "episodes.csv")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return CellState("corrupt", f"unreadable result ({type(error).__name__}: {error})")
    if frames < _expected_frames(config) and checkpoint.is_file():
        # A run stopped early on purpose (or by an older budget) continues from its checkpoint.
        return CellState("partial", f"stopped at {frames} of {_expected_frames(config)} frames")
    if frames != _expected_frames(config):
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
    if not checkpoint.is_file():
        # A cell trained inside a population, or one whose ignored checkpoint is not in this
        # checkout, has its final parameters in PARAMETERS_FILE.
        checkpoint = directory / PARAMETERS_FILE
    record: dict[str, Any] | None = None
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            record = None
    same_return = record is not None and (record.get("final_return") == reported or (
        math.isnan(reported) and math.isnan(float(record.get("final_return", 0.0)))))
    if record is not None and same_return and record.get("key") == cell.key:
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
        record_path.write_text(json.dumps(record, indent=2) + "\n")
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


def log_event(out: Path, event: dict[str, Any]) -> None:
    event = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}
    with open(out / EVENTS_FILE, "a") as file:
        file.write(json.dumps(event) + "\n")


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
    from klip.studies.training import train

    for run in runs:
        train(run.config, run.out, resume=run.resume, progress=False)


def train_cells_together(runs: Sequence[CellRun]) -> None:
    """`--seeds-together` trainer: each (entry, task)'s cells as one population.

    The population trains in `runs/TASK/ENTRY/population/` (its checkpoint there, so a killed
    job continues bit for bit); when it ends, each agent's run directory becomes its cell's
    directory and the population directory is removed. A single cell takes the exact path.
    """
    from klip.studies.training import (
        POPULATION_FILE,
        PopulationSpec,
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
        if (root / POPULATION_FILE).is_file():
            held = yaml.safe_load((root / POPULATION_FILE).read_text()) or {}
            held["base"] = with_options_added_later(held.get("base", {}))
            resume = held == yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        if root.exists() and not resume:
            shutil.rmtree(root)  # another subset of seeds, or other settings: start again
        for run in group:
            if run.out.exists():
                shutil.rmtree(run.out)  # a leftover of an earlier attempt; the population retrains it
        train_population(spec, root, resume=resume, progress=False)
        for run in group:
            shutil.move(str(root / f"s{run.cell.seed}"), run.out)
        shutil.rmtree(root)


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


# -- storage and study ---------------------------------------------------------------------------


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / STORAGE_FILE).resolve()}"


def make_storage(url: str, *, heartbeat: bool = True) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if not re.match(r"^[a-z0-9+]+://", url):
        raise CompareError(f"--storage {url!r} is not a database URL (sqlite:///FILE, postgresql://...)")
    kwargs: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat:
            kwargs = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD,
                      "heartbeat_stale_trial_callback":
                          RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)}
        try:
            storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                 if url.startswith("sqlite") else None, **kwargs)
        except Exception as error:  # sqlalchemy raises many types for a bad URL or server
            raise CompareError(f"cannot open --storage {_hide_password(url)}: {error}") from None
    if url.startswith("sqlite"):
        _serialise_sqlite(storage.engine)
    return storage


def _serialise_sqlite(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins (BEGIN IMMEDIATE).

    Optuna pops a WAITING trial by reading its state and then writing RUNNING; PostgreSQL and
    MySQL lock the row (SELECT ... FOR UPDATE), but SQLite ignores that and Python's sqlite3
    starts the transaction only at the write, so two local workers can pop the same trial.
    This is SQLAlchemy's documented pysqlite recipe for real transactions.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(connection: Any, record: Any) -> None:
        connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed


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
            trial.set_user_attr("klip_error", "interrupted")
            _log(f"{key}: interrupted; it continues from its checkpoint on the next run")
            raise KeyboardInterrupt from None
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            trial.set_user_attr("klip_error", message[:2000])
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


def _die_with_parent() -> None:
    """Linux: a worker whose `klip compare` is killed dies too, rather than train on unseen."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _worker_process(out: str, url: str, trainer: CellTrainer) -> None:
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = "1"
    preload()  # this worker runs the code as it was when it started, however long it runs
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


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass
class GridProgress:
    total: int
    done: int
    running: int
    failed: int
    frames: int
    total_frames: int


def grid_progress(spec: GridSpec, out: Path, study: Any) -> GridProgress:
    """Cells done / total from the storage; steps done from finished and half-trained cells."""
    from optuna.trial import TrialState

    states: dict[str, set[Any]] = {}
    for key, trials in _job_trials(study).items():
        states[key] = {trial.state for trial in trials}
    per_cell = spec.config(spec.cells()[0]).iterations * spec.config(spec.cells()[0]).rollout_steps
    done = running = failed = frames = 0
    for job in spec.jobs():
        job_states = states.get(job_key(job), set())
        # A storage made afresh (a lost SQLite file, another --storage) has not met the cells
        # finished before it; their records say they are done until a worker checks them again.
        if TrialState.COMPLETE in job_states or all(_recorded(spec, out, cell) for cell in job):
            done += len(job)
            frames += per_cell * len(job)
            continue
        if TrialState.RUNNING in job_states:
            running += len(job)
        elif job_states and job_states <= {TrialState.FAIL}:
            failed += len(job)
        for cell in job:
            frames += min(per_cell, _cell_frames(spec, out, cell))
    cells = len(spec.cells())
    return GridProgress(cells, done, running, failed, frames, per_cell * cells)


class ProgressReporter:
    """Prints cells done / total and an estimate of the time left, from the steps done."""

    def __init__(self, spec: GridSpec, out: Path, url: str, stream: TextIO | None = None,
                 interval: float = 30.0) -> None:
        import optuna

        self.spec, self.out, self.interval = spec, out, interval
        self.stream = stream or sys.stderr
        self.study = optuna.load_study(study_name=spec.study_name, storage=make_storage(url, heartbeat=False))
        self.started = time.monotonic()
        self.start_frames: int | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.last_line = ""

    def line(self) -> str:
        progress = grid_progress(self.spec, self.out, self.study)
        if self.start_frames is None:
            self.start_frames = progress.frames
        elapsed = time.monotonic() - self.started
        gained = progress.frames - self.start_frames
        left = progress.total_frames - progress.frames
        eta = left * elapsed / gained if gained > 0 else math.inf
        if left == 0:
            eta = 0.0
        return (f"klip compare: {progress.done}/{progress.total} cells done, {progress.running} running, "
                f"{progress.failed} failed; {progress.frames:,}/{progress.total_frames:,} steps; "
                f"time left {format_duration(eta)}")

    def report(self, force: bool = False) -> None:
        try:
            text = self.line()
        except Exception as error:  # a busy SQLite file must not stop the grid
            text = f"klip compare: progress unavailable ({type(error).__name__})"
        if force or text != self.last_line:
            print(text, file=self.stream, flush=True)
            self.last_line = text

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.report()

    def __enter__(self) -> ProgressReporter:
        self.report(force=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()
        self.report(force=True)


# -- the whole grid -----------------------------------------------------------------------------


@contextlib.contextmanager
def grid_lock(out: Path) -> Iterator[None]:
    """Only one `klip compare` at a time drives a grid through its own SQLite file."""
    with open(out / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompareError(f"another klip compare is running on {out}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class GridOutcome:
    total: int
    done: int
    failed: list[str]
    report: Path | None


def measure_random_score(task: str, episodes: int = RANDOM_EPISODES, seed: int = 0) -> dict[str, Any]:
    """Raw return of uniformly random actions: the same metric (mean raw episode return)."""
    import gymnasium as gym
    import numpy as np

    with warnings.catch_warnings():
        # The paper's protocol uses the -v4 tasks on purpose.
        warnings.filterwarnings("ignore", message=".*is out of date.*")
        env = gym.make(task)
    env.action_space.seed(seed)
    returns = []
    env.reset(seed=seed)
    for _ in range(episodes):
        total, finished = 0.0, False
        while not finished:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            finished = terminated or truncated
        returns.append(total)
        env.reset()
    env.close()
    return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
            "episodes": episodes, "seed": seed, "policy": "uniform random actions"}


def random_scores(out: Path, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The random-policy score of each task, measured once and cached in the grid directory."""
    path = out / RANDOM_FILE
    cached: dict[str, dict[str, Any]] = {}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            cached = json.loads(path.read_text())
    missing = [task for task in tasks if task not in cached]
    for task in missing:
        cached[task] = measure_random_score(task)
    if missing:
        path.write_text(json.dumps(cached, indent=2) + "\n")
    return cached


def run_grid(
    spec: GridSpec, out: Path, *, storage: str | None = None, workers: int = 1,
    trainer: CellTrainer | None = None, write_report: bool = True,
    progress_interval: float = 30.0, stream: TextIO | None = None, extend: bool = False,
) -> GridOutcome:
    """Run (or continue, or join, or with `extend` grow) a grid; write its report when this
    machine runs dry.

    `trainer` defaults to single runs one after another, or to one population per (entry,
    task) for a grid made with `seeds_together`.
    """
    from optuna.trial import TrialState

    if trainer is None:
        trainer = train_cells_together if spec.seeds_together else train_cells

    if workers < 1:
        raise CompareError(f"--workers must be at least 1, got {workers}")
    spec.validate()
    out = Path(out)
    if storage is not None:
        make_storage(storage, heartbeat=False)  # a bad URL fails before the directory is touched
    prepare_grid(out, spec, extend=extend)
    local = storage is None
    url = storage or default_storage(out)
    lock = grid_lock(out) if local else contextlib.nullcontext()
    with lock:
        open_study(spec, out, url, local=local)
        random_scores(out, spec.tasks)
        with ProgressReporter(spec, out, url, stream, interval=progress_interval):
            if workers == 1:
                run_worker(out, url, trainer=trainer)
            else:
                context = multiprocessing.get_context("spawn")
                processes = [context.Process(target=_worker_process, args=(str(out), url, trainer))
                             for _ in range(workers)]
                for process in processes:
                    process.start()
                for process in processes:
                    process.join()
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


def open_study_readonly(spec: GridSpec, url: str) -> Any:
    import optuna

    return optuna.load_study(study_name=spec.study_name, storage=make_storage(url, heartbeat=False))


__all__ = [
    "Cell",
    "CellFailure",
    "CellRun",
    "CellState",
    "CellTrainer",
    "CompareError",
    "Entry",
    "GridOutcome",
    "GridSpec",
    "check_cell",
    "load_grid",
    "metric_column_sha256",
    "parameters_sha256",
    "parse_entries",
    "parse_entry",
    "random_scores",
    "run_grid",
    "run_worker",
    "train_cells",
]
