"""`klip compare axis GRID...`: grids that differ in one training option, read as one axis.

Each grid is a `klip compare` grid; they must agree on everything but one option (say
`epochs`: a grid with `--set epochs=20`, one with `--set epochs=40`, and one left at the
default of 10). The report sets the entries and tasks they share side by side along that
option: raw returns per task, and normalised scores (random policy = 0, `step` at the first
setting = 1, per task) with stratified bootstrap 95% CIs:

- the IQM of each entry at each setting (does an entry degrade along the axis?);
- P(entry > step) at each setting (does a gate beat `step` where `step` suffers?);
- P(entry at this setting > the same entry at the first) (the degradation, with its interval).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from klip.studies.compare_reading import formatted, interval_side, named_estimate
from klip.studies.compare_results import NEUTRAL_OPTIONS, GridResults, _mean_std, _table, collect
from klip.studies.entries import CompareError
from klip.studies.files import write_text_atomically
from klip.studies.references import random_scores
from klip.studies.statistics import Estimate, aggregate, normalise, probability_of_improvement


@dataclass
class Axis:
    """The grids along one option, in increasing order of its value."""

    option: str
    values: list[Any]
    grids: list[GridResults]
    entries: list[str]  # labels every grid has, in the first grid's order
    tasks: list[str]  # tasks every grid has, in the first grid's order


def _option_default(option: str) -> Any:
    from klip.studies.training import TrainConfig

    return getattr(TrainConfig(), option)


def read_axis(directories: Sequence[Path]) -> Axis:
    """Load the grids and find the one option they differ in; refuse anything else in one line."""
    if len(directories) < 2:
        raise CompareError("give at least two grid directories")
    grids = [collect(Path(directory)) for directory in directories]
    steps = {grid.spec.steps for grid in grids}
    if len(steps) > 1:
        raise CompareError(f"the grids train different budgets ({', '.join(map(str, sorted(steps)))} "
                           "steps): an axis varies one option only")
    options = sorted({key for grid in grids for key in grid.spec.base} - NEUTRAL_OPTIONS)
    settings = [{key: grid.spec.base.get(key, _option_default(key)) for key in options} for grid in grids]
    varying = [key for key in options if len({repr(s[key]) for s in settings}) > 1]
    if len(varying) != 1:
        what = ", ".join(varying) if varying else "nothing"
        raise CompareError(f"the grids must differ in exactly one option; they differ in {what}")
    option = varying[0]
    values = [s[option] for s in settings]
    if len(set(map(repr, values))) != len(values):
        raise CompareError(f"two grids have the same {option}; give each setting once")
    order = sorted(range(len(grids)), key=lambda index: values[index])
    grids, values = [grids[i] for i in order], [values[i] for i in order]
    entries = [e.label for e in grids[0].spec.entries
               if all(any(other.label == e.label for other in g.spec.entries) for g in grids[1:])]
    tasks = [task for task in grids[0].spec.tasks if all(task in g.spec.tasks for g in grids[1:])]
    if not entries or not tasks:
        raise CompareError("the grids share no entry or no task")
    return Axis(option, values, grids, entries, tasks)


def _returns(grid: GridResults, task: str, label: str) -> list[float]:
    return list(grid.returns.get(task, {}).get(label, {}).values())


def _normalised(axis: Axis, randoms: dict[str, dict[str, Any]]
                ) -> tuple[dict[tuple[str, int], dict[str, np.ndarray]], list[str]]:
    """(entry, setting index) -> task -> normalised scores; and the tasks normalised by."""
    first = axis.grids[0]
    references = {task: float(np.mean(_returns(first, task, "step"))) for task in axis.tasks
                  if _returns(first, task, "step")}
    tasks = [task for task in axis.tasks
             if task in references and references[task] > randoms[task]["return_mean"]]
    scores: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for label in axis.entries:
        for index, grid in enumerate(axis.grids):
            by_task = {task: np.asarray(normalise(np.asarray(_returns(grid, task, label)),
                                                  randoms[task]["return_mean"], references[task]))
                       for task in tasks if _returns(grid, task, label)}
            if len(by_task) == len(tasks) and by_task:
                scores[(label, index)] = by_task
    return scores, tasks


def _plot(axis: Axis, iqms: dict[str, list[Estimate | None]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from klip.studies.figure_style import entry_styles

    figure, plot = plt.subplots(figsize=(6, 4))
    positions = np.arange(len(axis.values))
    width = 0.8 / max(len(iqms), 1)
    styles = entry_styles(list(iqms), "step")
    for offset, (label, estimates) in enumerate(iqms.items()):
        shown = [(i, e) for i, e in enumerate(estimates) if e is not None]
        if not shown:
            continue
        x = np.array([i for i, _ in shown]) + (offset - (len(iqms) - 1) / 2) * width
        points = np.array([e.point for _, e in shown])
        low = np.array([e.low for _, e in shown])
        high = np.array([e.high for _, e in shown])
        plot.errorbar(x, points, yerr=[points - low, high - points], marker="o", capsize=3, label=label,
                      **styles[label])
    plot.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    plot.set_xticks(positions, [str(value) for value in axis.values])
    plot.set_xlabel(axis.option)
    plot.set_ylabel("IQM normalised score (step at the first setting = 1)")
    plot.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def axis_reading(axis: Axis, vs_step: dict[str, list[Estimate | None]],
                 vs_first: dict[str, list[Estimate | None]]) -> list[str]:
    """Bullet points generated from the intervals: each entry along the axis, then against `step`."""
    first = f"{axis.option} = {axis.values[0]}"
    lines = ["## Reading", "", "Generated from the intervals above: a change or a difference is named only "
             "where its 95% interval excludes 0.5.", ""]
    words = {"below": "degrades", "above": "improves", "within": "no change detected",
             "undetermined": "no interval yet"}
    for label in axis.entries:
        changes = [f"at {value}: {words[interval_side(estimate, 0.5)]}, P = {formatted(estimate)}"
                   for value, estimate in zip(axis.values[1:], vs_first[label][1:], strict=True)
                   if estimate is not None]
        if changes:
            lines.append(f"- `{label}` against itself at {first}: " + "; ".join(changes) + ".")
    for index, value in enumerate(axis.values):
        estimates = {label: estimate for label in axis.entries
                     if (estimate := vs_step[label][index]) is not None}
        if not estimates:
            continue
        sides = {label: interval_side(estimate, 0.5) for label, estimate in estimates.items()}
        above = [named_estimate(label, estimates[label]) for label, side in sides.items() if side == "above"]
        below = [f"`{label}`" for label, side in sides.items() if side == "below"]
        text = f"- At {axis.option} = {value}: " + (f"above `step`: {', '.join(above)}" if above
                                                    else "nothing beats `step`")
        lines.append(text + (f"; below: {', '.join(below)}." if below else "."))
    return [*lines, ""]


def write_axis_report(directories: Sequence[Path], out: Path, *, n_resamples: int = 2000) -> Path:
    """Write `out/report.md` and `out/axis.png`; return the report's path."""
    axis = read_axis(directories)
    out.mkdir(parents=True, exist_ok=True)
    randoms = random_scores(axis.grids[0].out, axis.tasks, axis.grids[0].spec.steps)
    heading = [f"{axis.option} = {value}" for value in axis.values]
    lines = [f"# Along {axis.option}: {', '.join(map(str, axis.values))}", "",
             "Made by `klip compare axis " + " ".join(shlex.quote(str(d)) for d in directories)
             + f" --out {shlex.quote(str(out))}`; {axis.grids[0].spec.steps:,} steps per run. Grids: "
             + "; ".join(f"{axis.option} = {value}: `{grid.out}`" for value, grid in
                         zip(axis.values, axis.grids, strict=True)) + ".", ""]
    # Only the cells along the axis count: a grid's other entries and tasks are not read here.
    done, total, missing = 0, 0, []
    for grid in axis.grids:
        statuses = [grid.states[cell.key].status for cell in grid.spec.cells()
                    if cell.entry.label in axis.entries and cell.task in axis.tasks]
        finished = sum(status == "done" for status in statuses)
        done, total = done + finished, total + len(statuses)
        if finished < len(statuses):
            missing.append(f"`{grid.out}` ({len(statuses) - finished} of its {len(statuses)} cells "
                           "on this axis not done)")
    lines += [f"{done} of {total} cells done (the cells along the axis: its entries and tasks in "
              "every grid).", ""]
    if missing:
        lines += ["**Partial**: " + "; ".join(missing) + ". Each figure uses the finished runs.", ""]
    lines += ["## Final return per task", "", "Mean ± std over seeds (n runs).", ""]
    for task in axis.tasks:
        rows = []
        for label in axis.entries:
            cells = []
            for grid in axis.grids:
                values = _returns(grid, task, label)
                cells.append(f"{_mean_std(values)} ({len(values)})" if values else "—")
            rows.append([f"`{label}`", *cells])
        lines += [f"### {task}", "", *_table(["entry", *heading], rows)]
    if "step" not in axis.entries:
        path = out / "report.md"
        write_text_atomically(path, "\n".join([*lines, "`step` is not an entry of every grid: "
                                               "no normalised scores."]) + "\n")
        return path
    scores, tasks = _normalised(axis, randoms)
    lines += ["## Across tasks", "",
              f"Normalised score per run: (return − random) / (mean `step` return at {axis.option} = "
              f"{axis.values[0]} − random), per task ({', '.join(tasks)}); a task where that `step` "
              "does not beat the random policy is left out. Stratified bootstrap 95% CIs "
              f"({n_resamples} resamples); an entry needs finished runs on every task.", ""]
    iqms: dict[str, list[Estimate | None]] = {}
    vs_step: dict[str, list[Estimate | None]] = {}
    vs_first: dict[str, list[Estimate | None]] = {}
    for label in axis.entries:
        iqms[label], vs_step[label], vs_first[label] = [], [], []
        for index in range(len(axis.values)):
            own, step, first = scores.get((label, index)), scores.get(("step", index)), scores.get((label, 0))
            iqms[label].append(None if own is None else aggregate(own, "iqm", n_resamples=n_resamples))
            vs_step[label].append(None if own is None or step is None or label == "step" else
                                  probability_of_improvement(own, step, n_resamples=n_resamples))
            vs_first[label].append(None if own is None or first is None or index == 0 else
                                   probability_of_improvement(own, first, n_resamples=n_resamples))

    def row(label: str, estimates: list[Estimate | None]) -> list[str]:
        return [f"`{label}`", *(estimate.format() if estimate else "—" for estimate in estimates)]

    lines += ["IQM of normalised scores [95% CI]:", "",
              *_table(["entry", *heading], [row(label, iqms[label]) for label in axis.entries])]
    lines += [f"![IQM along {axis.option}](axis.png)", ""]
    _plot(axis, iqms, out / "axis.png")
    if len(axis.entries) > 1:
        lines += ["P(entry > `step` at the same setting) [95% CI] (0.5: no difference):", "",
                  *_table(["entry", *heading], [row(label, vs_step[label]) for label in axis.entries
                                                if label != "step"])]
    lines += [f"P(entry at this setting > the same entry at {axis.option} = {axis.values[0]}) [95% CI] "
              "(below 0.5: it degrades):", "",
              *_table(["entry", *heading[1:]], [row(label, vs_first[label][1:]) for label in axis.entries])]
    lines += axis_reading(axis, vs_step, vs_first)
    path = out / "report.md"
    write_text_atomically(path, "\n".join(lines).rstrip() + "\n")
    return path


__all__ = ["Axis", "axis_reading", "read_axis", "write_axis_report"]
