"""A grid's results as a report reads them: every cell checked, the final returns collected."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np

from klip.studies.cells import CellState, check_cell
from klip.studies.entries import Entry
from klip.studies.grid import GridSpec, load_grid

# Options that change what is measured; the others (evaluation, checkpoints, logging) do not.
NEUTRAL_OPTIONS = {"eval_episodes", "checkpoint_every", "diagnostics", "collector", "shape_plugin"}


@dataclass
class GridResults:
    spec: GridSpec
    out: Path
    states: dict[str, CellState]
    returns: dict[str, dict[str, dict[int, float]]]  # task -> entry label -> seed -> final return
    no_episode: list[str] = dataclasses.field(default_factory=list)  # done, but no episode ended
    # cell key -> why the run stopped early: a non-finite loss, gradient or parameter (its final
    # return is the one it had reached)
    diverged: dict[str, str] = dataclasses.field(default_factory=dict)

    def seeds_of(self, task: str, entry: Entry) -> dict[int, float]:
        return self.returns.get(task, {}).get(entry.label, {})

    def diverged_counts(self) -> dict[str, tuple[int, int]]:
        """Entry label -> (its runs that diverged, its runs done), for entries with any."""
        counts: dict[str, tuple[int, int]] = {}
        for entry in self.spec.entries:
            keys = [cell.key for cell in self.spec.cells() if cell.entry.label == entry.label
                    and self.states[cell.key].status == "done"]
            diverged = sum(key in self.diverged for key in keys)
            if diverged:
                counts[entry.label] = (diverged, len(keys))
        return counts


def collect(out: Path) -> GridResults:
    spec = load_grid(out)
    states: dict[str, CellState] = {}
    returns: dict[str, dict[str, dict[int, float]]] = {}
    no_episode = []
    diverged = {}
    for cell in spec.cells():
        state = check_cell(spec, out, cell, write_record=False)
        states[cell.key] = state
        if state.status == "done" and state.record is not None:
            if state.record.get("diverged"):
                diverged[cell.key] = state.record["diverged"]
            value = float(state.record["final_return"])
            if not math.isfinite(value):
                no_episode.append(cell.key)
                continue
            returns.setdefault(cell.task, {}).setdefault(cell.entry.label, {})[cell.seed] = value
    return GridResults(spec, out, states, returns, no_episode, diverged)


def _mean_std(values: Sequence[float], mean_format: str = ".1f", std_format: str = ".1f") -> str:
    if not values:
        return "—"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    mean = format(float(np.mean(values)), mean_format)
    return f"{mean} ± {std:{std_format}}" if math.isfinite(std) else mean


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


