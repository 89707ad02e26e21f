"""`klip compare`'s grid: its cells (entry, task, seed), `grid.json`, and growing it.

The grid directory holds `grid.json` (its settings; a second `klip compare` into the same
directory must ask for the same grid, or `--extend` it), `runs/<task>/<entry>/s<seed>/` (one
run directory per cell) and `events.jsonl` (what happened to it: extensions, quarantined cells).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from klip.studies.entries import GRID_OPTIONS, SHAPES_DIR, CompareError, Entry, yaml_scalar
from klip.studies.files import write_text_atomically, writing
from klip.studies.storage import hide_passwords

GRID_FILE = "grid.json"
GRID_FORMAT = 1
LOCK_FILE = ".compare.lock"
RUNS_DIR = "runs"
EVENTS_FILE = "events.jsonl"


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
    # The grid directory, against which its own shape copies (`shapes/...`) are found; not recorded.
    root: Path | None = field(default=None, compare=False, repr=False)

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
        shape_file = options.get("shape_file")
        if shape_file and self.root is not None and not Path(shape_file).is_absolute():
            options["shape_file"] = str(self.root / shape_file)
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
            args += ["--set", f"{key}={yaml_scalar(value)}"]
        if self.seeds_together:
            args.append("--seeds-together")
        args += ["--out", str(out)]
        return hide_passwords("klip compare " + " ".join(shlex.quote(arg) for arg in args))

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


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def load_grid(out: Path) -> GridSpec:
    path = out / GRID_FILE
    if not path.is_file():
        raise CompareError(f"{out} holds no klip compare grid (no {GRID_FILE})")
    try:
        spec = GridSpec.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CompareError(f"{path} is corrupt ({type(error).__name__}: {error})") from None
    spec.root = out
    return spec


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


def _spelled_alike(data: dict[str, Any]) -> dict[str, Any]:
    """A grid's settings without how its entries were spelled (`klip` and `step` are one entry)."""
    return {**data, "entries": [{k: v for k, v in entry.items() if k != "spec"}
                                for entry in data["entries"]]}


def prepare_grid(out: Path, spec: GridSpec, *, extend: bool = False) -> GridSpec:
    """Write `grid.json`, or check that the directory holds this very grid; return the grid in
    effect (the one held, where it differs from `spec` only in how entries were spelled).

    `extend`: the directory's grid may be grown to `spec` by entries, tasks and seeds (its
    finished cells stay and count); `grid.json` then holds `spec`, and `events.jsonl` says so.
    """
    spec.root = out
    if out.exists() and not out.is_dir():
        raise CompareError(f"{out} exists and is not a directory")
    if (out / GRID_FILE).is_file():
        held = load_grid(out)
        changed = differences(_spelled_alike(held.to_dict()), _spelled_alike(spec.to_dict()))
        if not changed:
            return held
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
            write_text_atomically(out / GRID_FILE, json.dumps(spec.to_dict(), indent=2) + "\n")
            old_labels = {entry.label for entry in held.entries}
            log_event(out, {"event": "extended",
                            "entries_added": [e.label for e in spec.entries if e.label not in old_labels],
                            "tasks_added": [t for t in spec.tasks if t not in held.tasks],
                            "seeds_added": [s for s in spec.seeds if s not in held.seeds]})
        return spec
    if out.is_dir() and any(p.name != SHAPES_DIR for p in out.iterdir()):
        raise CompareError(f"{out} is not empty and holds no klip compare grid")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / GRID_FILE, json.dumps(spec.to_dict(), indent=2) + "\n")
    return spec



def log_event(out: Path, event: dict[str, Any]) -> None:
    event = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}
    with writing(out / EVENTS_FILE), open(out / EVENTS_FILE, "a") as file:
        file.write(json.dumps(event) + "\n")



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

