"""Each entry against `step`, task by task, and the report's reading of it in words.

The words are generated from the intervals, never typed: an entry is "above" or "below"
`step` only where its 95% interval excludes no difference (0 for a difference of mean returns,
0.5 for a probability of improvement); everything else is "within seed noise".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from klip.studies.compare_results import GridResults, _table
from klip.studies.entries import Entry
from klip.studies.statistics import Estimate, difference_of_means


def task_differences(results: GridResults, step: Entry, n_resamples: int) -> dict[str, dict[str, Estimate]]:
    """task -> entry label -> mean return of the entry minus `step`'s, with its bootstrap CI."""
    differences: dict[str, dict[str, Estimate]] = {}
    for task in results.spec.tasks:
        reference = list(results.seeds_of(task, step).values())
        if not reference:
            continue
        for entry in results.spec.entries:
            values = list(results.seeds_of(task, entry).values())
            if entry.label != step.label and values:
                differences.setdefault(task, {})[entry.label] = difference_of_means(
                    values, reference, n_resamples=n_resamples)
    return differences


def interval_side(estimate: Estimate, null: float) -> str:
    """"above", "below", "within" or "undetermined" (no interval): the interval against `null`."""
    if math.isnan(estimate.low):
        return "undetermined"
    if estimate.low > null:
        return "above"
    if estimate.high < null:
        return "below"
    return "within"


def difference_table(results: GridResults, differences: Mapping[str, Mapping[str, Estimate]]) -> list[str]:
    if not differences:
        return []
    tasks = [task for task in results.spec.tasks if task in differences]
    labels = [entry.label for entry in results.spec.entries
              if any(entry.label in differences[task] for task in tasks)]
    rows = []
    for label in labels:
        row = [f"`{label}`"]
        for task in tasks:
            estimate = differences[task].get(label)
            if estimate is None:
                row.append("—")
                continue
            text = estimate.format(1)
            row.append(f"**{text}**" if interval_side(estimate, 0.0) in ("above", "below") else text)
        rows.append(row)
    return ["## Against `step`, task by task", "",
            "Mean final return minus `step`'s on the same task, with a percentile bootstrap 95% CI "
            "(each entry's and `step`'s runs resampled independently); **bold**: the interval "
            "excludes 0.", "", *_table(["entry", *tasks], rows)]


def _listed(items: list[str]) -> str:
    return ", ".join(items)


def formatted(estimate: Estimate, digits: int = 2) -> str:
    """`0.62 [0.41, 0.80]`, or `0.62, no CI` without an interval."""
    return estimate.format(digits).replace(" (no CI)", ", no CI")


def named_estimate(label: str, estimate: Estimate, digits: int = 2) -> str:
    return f"`{label}` ({formatted(estimate, digits)})"


def reading(differences: Mapping[str, Mapping[str, Estimate]], improvements: Mapping[str, Estimate],
            iqms: Mapping[str, Estimate], step_label: str,
            diverged: Mapping[str, tuple[int, int]] | None = None,
            entries_besides_step: int | None = None,
            tasks_so_far: tuple[int, int] | None = None) -> list[str]:
    """Bullet points: across tasks (probability of improvement, IQM), task by task, and the
    entries some of whose runs diverged (`diverged`: label -> (diverged, done)).

    `entries_besides_step`: how many entries the grid sets against `step`; a task (or the IQM
    line) that has runs of fewer says how many, so "nothing beats `step`" over a half-run grid
    is not read as the final answer. `tasks_so_far`: (tasks with `step` runs, the grid's tasks);
    the across-tasks lines say so while the first is smaller."""
    lines = ["## Reading", "",
             "Generated from the intervals above: \"above\" or \"below\" `step` only where the 95% "
             "interval excludes no difference. The intervals are per comparison, not corrected "
             f"for the {sum(len(by_label) for by_label in differences.values())} made here: a few "
             "differences in that many are expected from seed noise alone.", ""]
    across, every = "Across tasks", "every task"
    if tasks_so_far is not None and tasks_so_far[0] < tasks_so_far[1]:
        done, total = tasks_so_far
        across = f"Across the {done} of {total} tasks with runs so far"
        every = f"every task so far ({done} of {total})"
    if improvements:
        sides: dict[str, list[str]] = {"above": [], "below": [], "within": [], "undetermined": []}
        for label, estimate in improvements.items():
            sides[interval_side(estimate, 0.5)].append(named_estimate(label, estimate))
        if sides["above"]:
            lines.append(f"- {across} (each entry over the tasks it has runs on), P(entry > `step`) is "
                         f"above 0.5 for {_listed(sides['above'])}.")
        elif sides["below"] or sides["within"]:
            lines.append(f"- {across} (each entry over the tasks it has runs on), no entry beats "
                         "`step`: no P(entry > `step`) interval lies above 0.5.")
        if sides["below"]:
            lines.append(f"- Below 0.5 (worse than `step`): {_listed(sides['below'])}.")
        if sides["within"]:
            lines.append(f"- Not distinguishable from `step`: {_listed(sides['within'])}.")
        if sides["undetermined"]:
            lines.append(f"- No interval yet (a task with a single run): {_listed(sides['undetermined'])}.")
    if iqms:
        # Ties go to `step` (a bitwise twin such as `clip` is not "higher").
        best = max(iqms, key=lambda label: (iqms[label].point, label == step_label))
        step_iqm = iqms.get(step_label)
        against = ""
        if step_iqm is not None and best != step_label:
            against = f", against {named_estimate(step_label, step_iqm)}"
        if len(iqms) == 1 and best == step_label and (entries_besides_step or 0) > 0:
            lines.append("- Highest IQM of normalised scores: no entry besides `step` has runs on "
                         "every task yet.")
        else:
            lines.append(f"- Highest IQM of normalised scores (among entries with runs on "
                         f"{every}): {named_estimate(best, iqms[best])}{against}.")
    for task, by_label in differences.items():
        above = [named_estimate(label, estimate, 0) for label, estimate in by_label.items()
                 if interval_side(estimate, 0.0) == "above"]
        below = [f"`{label}`" for label, estimate in by_label.items()
                 if interval_side(estimate, 0.0) == "below"]
        if all(interval_side(estimate, 0.0) == "undetermined" for estimate in by_label.values()):
            lines.append(f"- {task}: no intervals yet (a single run of `step` or of every entry).")
            continue
        so_far = ""
        if entries_besides_step is not None and len(by_label) < entries_besides_step:
            so_far = f" ({len(by_label)} of {entries_besides_step} entries so far)"
        verdict = f"above `step`: {_listed(above)}" if above else "nothing beats `step`"
        text = f"- {task}{so_far}: {verdict}"
        if below:
            text += f"; below: {_listed(below)}"
        lines.append(text + ".")
    if diverged:
        lines.append("- Diverged (stopped by a non-finite loss, gradient or parameter; scored by the "
                     "return reached): " + _listed([f"`{label}` in {count} of {done} runs"
                                                   for label, (count, done) in diverged.items()]) + ".")
    return [*lines, ""]


__all__ = ["difference_table", "formatted", "interval_side", "named_estimate", "reading", "task_differences"]
