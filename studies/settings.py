"""What a study is (its identity, compared on every re-run) and how it is run (free to change)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klip.studies.choices import PRUNERS, SAMPLERS
from klip.studies.space import Dimension
from klip.studies.storage import StorageSpec, parse_storage

# Bump when the objective's definition changes: studies made with another one are refused.
OBJECTIVE = "normalised-last10pct-v1"
# Training options a study decides per trial, never fixed by the user.
PER_TRIAL_OPTIONS = ("task", "seed", "steps", "shape", "shape_params", "shape_file", "loss")
# WilcoxonPruner needs paired instances: with fewer than 4, no one-sided test can reach
# p < 0.1 (the smallest exact p-value with n pairs is 2**-n).
WILCOXON_MIN_INSTANCES = 4


class StudyError(ValueError):
    """Bad study input or a study that does not match; one line."""


@dataclass(frozen=True)
class Instance:
    """One (task, seed) evaluation of a trial; `index` is its stable id within the study."""

    index: int
    task: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}/s{self.seed}"


@dataclass
class StudySettings:
    study_name: str
    shape: str
    tasks: list[str]
    steps_per_task: int
    # The seeds of every task: a list (`--seeds 0-4`, `0,3,5`), or N for seeds 0..N-1.
    seeds: int | list[int]
    trials: int
    train_options: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Dimension] = field(default_factory=dict)
    fixed: dict[str, float] = field(default_factory=dict)
    sampler: str = "tpe"
    pruner: str = "auto"
    pruner_startup_trials: int = 5
    grid_points: int = 5
    sampler_seed: int | None = None
    storage: StorageSpec = field(default_factory=lambda: parse_storage(None))
    study_dir: Path | None = None
    workers: int = 1
    # 0: each (task, seed) a single exact run, one after another. K >= 1: a worker asks K
    # trials at once and trains, task by task, all their seeds as one population.
    batch: int = 0
    force: bool = False
    progress: bool = True
    command: str = ""

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def instances(self) -> list[Instance]:
        pairs = [(task, seed) for task in self.tasks for seed in self.seed_list]
        return [Instance(index, task, seed) for index, (task, seed) in enumerate(pairs)]

    @property
    def resolved_pruner(self) -> str:
        if self.pruner != "auto":
            return self.pruner
        if len(self.instances) >= WILCOXON_MIN_INSTANCES:
            return "wilcoxon"
        # A population trains its agents to the end: no learning-curve pruning in batches.
        return "none" if self.batch else "median"

    @property
    def directory(self) -> Path:
        return self.study_dir or Path("runs") / "studies" / self.study_name

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same study: everything that changes the objective function."""
        seeds = self.seed_list
        return {
            "shape": self.shape,
            "tasks": list(self.tasks),
            "steps_per_task": self.steps_per_task,
            # Seeds 0..N-1 are recorded as the count N, as studies made before named seeds were.
            "seeds": len(seeds) if seeds == list(range(len(seeds))) else seeds,
            "objective": OBJECTIVE,
            "train_options": dict(sorted(self.train_options.items())),
            "search_space": {name: dim.to_dict() for name, dim in sorted(self.space.items())},
            "fixed": dict(sorted(self.fixed.items())),
        }

    def run_options(self) -> dict[str, Any]:
        return {"trials": self.trials, "sampler": self.sampler, "pruner": self.resolved_pruner,
                "workers": self.workers, "batch": self.batch, "sampler_seed": self.sampler_seed,
                "storage": self.storage.describe(), "study_dir": portable_path(self.directory)}


def portable_path(path: Path) -> str:
    """`path` as recorded: relative to the working directory where it lies inside it, so that
    a study records no absolute path of the machine it ran on (reports read it from there)."""
    if path.is_absolute():
        with contextlib.suppress(ValueError):
            return path.relative_to(Path.cwd()).as_posix()
    return path.as_posix()


def describe_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> str:
    """`shape 'sigmoid' -> 'step'; tasks [...] -> [...]`: what a re-run changes."""
    parts = []
    for key in sorted(set(recorded) | set(wanted)):
        old, new = recorded.get(key), wanted.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            parts.append(f"{key} ({', '.join(changed)})")
        else:
            parts.append(f"{key} {old!r} -> {new!r}")
    return "; ".join(parts)


__all__ = [
    "OBJECTIVE",
    "PER_TRIAL_OPTIONS",
    "PRUNERS",
    "SAMPLERS",
    "WILCOXON_MIN_INSTANCES",
    "Instance",
    "StudyError",
    "StudySettings",
    "describe_differences",
]
