"""`klip compare report DIR`: the grid's Markdown report with its PNG figures.

Per task: final return (mean raw return of the episodes that ended in the last 10% of
training) as mean +- std over seeds per entry, and learning curves with mean +- std bands.
Across tasks, when `step` is an entry: normalised scores (random policy = 0, the grid's own
`step` runs = 1 per task) aggregated as IQM, mean and optimality gap with stratified
bootstrap 95% CIs, the probability of improvement of each entry over `step`, and performance
profiles (`klip.studies.statistics`, SciPy underneath); each entry's difference from `step`
task by task, and a reading of all of it generated from the intervals
(`klip.studies.compare_reading`). Also: `clip` against `step` run by run
(bitwise equal parameters, identical metric columns), the paper-protocol baselines
against the published KLip-PPO paper's numbers, and the policy diagnostics (entropy, KL, clip
fraction, beta, explained variance) at the end of training and as curves, for investigating a
surprising return.

Works on partial grids: missing cells are marked, corrupt cells are listed and left out.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from klip.studies.cells import read_episodes
from klip.studies.compare_reading import difference_table, reading, task_differences
from klip.studies.compare_results import GridResults, _mean_std, _table, collect
from klip.studies.compare_sections import (
    CURVE_POINTS,
    PAPER,
    PAPER_SOURCE,
    _diagnostics,
    _paper,
)
from klip.studies.figure_style import grid_styles, shared_legend
from klip.studies.files import write_text_atomically
from klip.studies.grid import EVENTS_FILE, Cell
from klip.studies.references import random_scores
from klip.studies.reuse import reused_grids
from klip.studies.statistics import (
    Estimate,
    aggregate,
    normalise,
    performance_profile,
    probability_of_improvement,
)
from klip.studies.training import process_seconds, process_seconds_of_files

REPORT_FILE = "report.md"
MISSING_LISTED = 20  # more missing cells than this are counted per task, not listed


def _settings(results: GridResults, randoms: dict[str, dict[str, Any]]) -> list[str]:
    reused = {os.path.normpath(results.out / grid): count
              for grid, count in reused_grids(results.out).items()}
    spec = results.spec
    lines = ["## Settings", "",
             f"- steps per run: {spec.steps:,}; seeds: {', '.join(map(str, spec.seeds))}; "
             f"tasks: {', '.join(spec.tasks)}",
             "- base options: " + (", ".join(f"`{k}={v}`" for k, v in sorted(spec.base.items()))
                                   or "none (the paper protocol's defaults)"),
             "- final return: mean raw return of the episodes that ended in the last 10% of training;"
             " ± is the standard deviation over seeds (ddof = 1)", "",
             f"The command that makes this grid (`klip compare --out {results.out}` alone continues it; "
             "`--workers N` or `--storage URL` spread it):", "",
             "```bash", spec.command(results.out)
             + "".join(f" --reuse {shlex.quote(grid)}" for grid in reused), "```", ""]
    if reused:
        lines += ["Cells linked from other grids, not trained here (`--reuse`; `events.jsonl` names each): "
                  + ", ".join(f"{count} from `{grid}`" for grid, count in reused.items()) + ".", ""]
    lines += _cost(results)
    lines += _table(["entry", "training options"],
                    [[f"`{e.label}`", ", ".join(f"`{k}={v}`" for k, v in e.options.items())
                      + (f" (from {e.source})" if e.source else "")] for e in spec.entries])
    lines += ["Random-policy score (uniformly random actions, mean raw episode return):", ""]
    lines += _table(["task", "random return", "episodes"],
                    [[task, f"{randoms[task]['return_mean']:.1f}", str(randoms[task]["episodes"])]
                     for task in spec.tasks])
    return lines


def _cost(results: GridResults) -> list[str]:
    """What the finished cells trained here cost: process-hours (one torch thread each)."""
    seconds, cells = 0.0, 0
    for cell in results.spec.cells():
        state = results.states[cell.key]
        if state.record is None or results.spec.cell_dir(results.out, cell).is_symlink():
            continue  # not done, or reused from another grid (its cost is that grid's)
        share = process_seconds(state.record)
        if share is not None:
            seconds += share
            cells += 1
    if not cells:
        return []
    # Runs moved aside (a leftover in a cell's way, a partial run that could not continue) cost
    # time too, though no cell shows it.
    aside, aside_runs = process_seconds_of_files(sorted((results.out / "kept").rglob("summary.json")))
    extra = (f", plus {aside / 3600:,.1f} process-hours of {aside_runs} runs moved aside and trained again"
             if aside_runs else "")
    return [f"Training cost of the {cells} finished cells trained here: {seconds / 3600:,.1f} process-hours"
            f"{extra} (wall-clock time of one-thread training processes, a population's split among its "
            "agents; above the CPU time when the machine ran more processes than cores).", ""]


def _machine_label(machine: dict[str, Any] | None) -> str:
    if machine is None:
        return "not recorded (trained before klip recorded it)"
    torch_version = (machine.get("packages") or {}).get("torch")
    return f"{machine.get('cpu')}, {machine.get('cpu_capability')}, torch {torch_version}"


def _machines(results: GridResults) -> list[str]:
    """Which machines trained the finished cells (runs are bitwise reproducible on one kind of
    machine only), and which runs went on on another machine than they started on."""
    spec = results.spec
    runs: dict[str, int] = {}
    continued = []
    for cell in spec.cells():
        if results.states[cell.key].status != "done":
            continue
        try:
            summary = json.loads((spec.cell_dir(results.out, cell) / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        segments = summary.get("machines") or [{"machine": summary.get("machine")}]
        for label in dict.fromkeys(_machine_label(segment["machine"]) for segment in segments):
            runs[label] = runs.get(label, 0) + 1
        if len(segments) > 1:
            continued.append(cell.key)
    if not runs:
        return []
    lines = ["", "Machines that trained the finished cells (runs each; a run continued on another machine "
             "counts under each): " + "; ".join(f"{label}: {count}" for label, count in runs.items()) + "."]
    if continued:
        listed = (", ".join(f"`{key}`" for key in continued) if len(continued) <= MISSING_LISTED
                  else f"{len(continued)} runs")
        lines += ["", f"Runs continued on another machine than they started on, or from a checkpoint that "
                  f"did not say which ({len(continued)}; valid runs, but bitwise no single run): {listed}."]
    return lines


def _completeness(results: GridResults) -> list[str]:
    spec, states = results.spec, results.states
    cells = spec.cells()
    done = sum(1 for cell in cells if states[cell.key].status == "done")
    lines = ["## Completeness", "", f"{done} of {len(cells)} cells done."]
    missing = [cell for cell in cells if states[cell.key].status in ("missing", "partial")]
    if len(missing) > MISSING_LISTED:
        # A long list says less than the counts: per task, then the entries not yet started.
        by_task = {task: sum(cell.task == task for cell in missing) for task in spec.tasks}
        lines += ["", f"Missing cells ({len(missing)}; marked — or counted n/{len(spec.seeds)} below), per "
                  "task: " + ", ".join(f"{task} {count}" for task, count in by_task.items() if count) + "."]
    elif missing:
        lines += ["", f"Missing cells ({len(missing)}; marked — or counted n/{len(spec.seeds)} below): "
                  + ", ".join(f"`{cell.key}`" for cell in missing)]
    if results.diverged:
        lines += ["", f"Runs that diverged ({len(results.diverged)}): a non-finite loss, gradient or "
                  "parameter stopped them; each counts with the return it had reached (the episodes "
                  "of the last 10% of the frames it trained), as `klip compare` scores every run:", ""]
        lines += [f"- `{key}`: {reason}" for key, reason in results.diverged.items()]
    lines += _machines(results)
    if results.no_episode:
        lines += ["", f"Cells done but with no episode ended in training ({len(results.no_episode)}; "
                  "final return undefined, left out): "
                  + ", ".join(f"`{key}`" for key in results.no_episode)]
    corrupt = [(cell.key, states[cell.key].reason) for cell in cells if states[cell.key].status == "corrupt"]
    if corrupt:
        lines += ["", f"**Corrupt cells ({len(corrupt)}), left out of every number below**; "
                  "`klip compare` with the same arguments moves them to `corrupt/` and trains them again:",
                  ""]
        lines += [f"- `{key}`: {reason}" for key, reason in corrupt]
    events_path = results.out / EVENTS_FILE
    if events_path.is_file():
        events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
        reruns = [event for event in events if event.get("event") == "corrupt"]
        if reruns:
            lines += ["", "Cells found corrupt earlier and trained again:", ""]
            lines += [f"- `{e['cell']}` ({e['time']}): {e['reason']}; kept in `{e['moved_to']}`"
                      for e in reruns]
        kept = [event for event in events if event.get("event") == "kept aside"]
        if kept:
            lines += ["", "Runs moved aside and trained again from the start (an interrupted run that "
                      "cannot continue, a leftover of other settings, or as the reason says):", ""]
            lines += [f"- `{e['path']}` ({e['time']}) -> `{e['moved_to']}`"
                      + (f": {e['reason']}" if e.get("reason") else "") for e in kept]
    return [*lines, ""]


def _per_task(results: GridResults) -> list[str]:
    spec = results.spec
    n = len(spec.seeds)
    rows = []
    for entry in spec.entries:
        row = [f"`{entry.label}`"]
        for task in spec.tasks:
            values = list(results.seeds_of(task, entry).values())
            text = _mean_std(values)
            if values and len(values) < n:
                text += f" ({len(values)}/{n})"
            row.append(text)
        rows.append(row)
    return ["## Final return per task", "", *_table(["entry", *spec.tasks], rows)]


def binned_curve(history: list[tuple[int, float]], grid: np.ndarray) -> np.ndarray:
    """Mean return of the episodes ending in each bin of the frame grid, gaps filled."""
    frames = np.array([f for f, _ in history], dtype=float)
    values = np.array([r for _, r in history], dtype=float)
    edges = np.concatenate([[0.0], grid])
    index = np.clip(np.searchsorted(edges, frames, side="left") - 1, 0, len(grid) - 1)
    sums = np.bincount(index, values, minlength=len(grid))
    counts = np.bincount(index, minlength=len(grid))
    centres = grid[counts > 0]
    if centres.size == 0:
        return np.full(len(grid), np.nan)
    return np.interp(grid, centres, sums[counts > 0] / counts[counts > 0])


def plot_learning_curves(results: GridResults, path: Path) -> Path:
    spec = results.spec
    grid = np.linspace(spec.steps / CURVE_POINTS, spec.steps, CURVE_POINTS)
    columns = min(3, len(spec.tasks))
    rows = math.ceil(len(spec.tasks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False,
                                layout="constrained")
    styles = grid_styles(spec.entries)
    for axis, task in zip(axes.flat, spec.tasks, strict=False):
        counts = []
        for entry in spec.entries:
            curves = []
            for seed in results.seeds_of(task, entry):
                directory = spec.cell_dir(results.out, Cell(entry, task, seed))
                history = read_episodes(directory / "episodes.csv")
                if history:
                    curves.append(binned_curve(history, grid))
            if not curves:
                continue
            counts.append(len(curves))
            stacked = np.array(curves)
            mean, std = stacked.mean(axis=0), stacked.std(axis=0)
            axis.plot(grid, mean, label=entry.label, **styles[entry.label])
            axis.fill_between(grid, mean - std, mean + std, color=styles[entry.label]["color"], alpha=0.12)
        runs = "" if not counts else (f" (n = {counts[0]} runs each)" if min(counts) == max(counts)
                                      else f" (n = {min(counts)}-{max(counts)} runs each)")
        axis.set_title(task + runs)
        axis.set_xlabel("environment steps")
        axis.set_ylabel("episode return")
        if not axis.lines:
            axis.text(0.5, 0.5, "no run with a finished episode yet", ha="center", va="center",
                      transform=axis.transAxes)
    for axis in list(axes.flat)[len(spec.tasks):]:
        axis.set_visible(False)
    shared_legend(figure, list(axes.flat), len(spec.tasks))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _bitwise(results: GridResults) -> list[str]:
    spec = results.spec
    clip = next((e for e in spec.entries if e.is_clip), None)
    step = next((e for e in spec.entries if e.is_step), None)
    if clip is None or step is None:
        return []
    lines = ["## `clip` against `step`, run by run", "",
             "PPO-Clip (TorchRL's `ClipPPOLoss`) and the `step` shape from the same seed must end "
             "with bitwise equal actor and critic parameters (SHA-256 of every tensor's bytes) and "
             "identical metric columns (every column both log, but timings and `train/loss_objective`, "
             "whose value differs by definition).", ""]
    rows: list[list[str]] = []
    only: set[str] = set()
    for task in spec.tasks:
        for seed in spec.seeds:
            a = results.states[Cell(clip, task, seed).key]
            b = results.states[Cell(step, task, seed).key]
            if a.record is None or b.record is None:
                rows.append([task, str(seed), "—", "—", "not both finished"])
                continue
            same_params = a.record["parameters_sha256"] == b.record["parameters_sha256"]
            ma, mb = a.record["metrics_sha256"], b.record["metrics_sha256"]
            only.update(set(ma) ^ set(mb))
            compared = (set(ma) & set(mb)) - {"train/loss_objective"}
            differing = sorted(c for c in compared if ma[c] != mb[c])
            rows.append([task, str(seed), "yes" if same_params else "**no**",
                         "yes" if not differing else "**no**: " + ", ".join(differing),
                         f"`{a.record['parameters_sha256'][:16]}` / `{b.record['parameters_sha256'][:16]}`"])
    lines += _table(["task", "seed", "parameters bitwise equal", "metric columns identical",
                     "SHA-256 clip / step (first 16 hex)"], rows)
    together = [state for state in results.states.values()
                if state.record is not None and state.record.get("population_size", 1) > 1]
    if together:
        lines += [f"{len(together)} runs of this grid were trained as populations (`--seeds-together`); "
                  "every agent of a population is bitwise its own single run, and `clip` runs TorchRL's "
                  "`ClipPPOLoss` there too, so the check above holds for them as for single runs.", ""]
    if only:
        lines += ["Compared: every column both runs log. Logged by only one of the two (the ratio "
                  "statistics of TorchRL's loss, the shape's diagnostics): "
                  + ", ".join(f"`{column}`" for column in sorted(only)) + ".", ""]
    return lines


def _interval_plot(estimates: dict[str, dict[str, Estimate]], path: Path, reference: float | None,
                   xlabel: str, styles: dict[str, dict[str, Any]]) -> Path:
    names = list(next(iter(estimates.values())))
    figure, axes = plt.subplots(1, len(estimates), figsize=(4.5 * len(estimates), 0.6 * len(names) + 1.5),
                                squeeze=False)
    for axis, (title, by_entry) in zip(axes.flat, estimates.items(), strict=True):
        for row, name in enumerate(names):
            estimate = by_entry[name]
            axis.plot([estimate.low, estimate.high], [row, row], linewidth=6, alpha=0.5,
                      color=styles[name]["color"])
            axis.plot([estimate.point], [row], "k|", markersize=14)
        if reference is not None:
            axis.axvline(reference, color="grey", linestyle="--", linewidth=1)
        axis.set_yticks(range(len(names)), names)
        axis.set_title(title)
        axis.set_xlabel(xlabel)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def tasks_step_learned(step_returns: dict[str, list[float]], random_returns: dict[str, float]
                       ) -> tuple[list[str], list[str]]:
    """Tasks whose `step` runs beat the random policy clearly enough to normalise by: the mean
    above the random score by more than its standard error (std over seeds, ddof 1, / sqrt(n);
    0 for one seed).

    Normalising by (mean `step` - random) near 0 or below blows the scores up or flips their
    sign (seen: Ant-v4 at 100k steps, `step` -53.3 against random -52.8). Returns (kept, left out).
    """
    kept, left_out = [], []
    for task, returns in step_returns.items():
        spread = float(np.std(returns, ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else 0.0
        (kept if float(np.mean(returns)) - random_returns[task] > spread else left_out).append(task)
    return kept, left_out


def normalised_scores(results: GridResults, randoms: dict[str, dict[str, Any]]
                      ) -> tuple[list[str], list[str], dict[str, dict[str, np.ndarray]]]:
    """Each entry's runs as normalised scores, per task: (return - random) / (mean `step` return -
    random). Returns (tasks normalised, tasks left out by `tasks_step_learned`, label -> task ->
    scores); nothing without a `step` entry."""
    spec = results.spec
    step = next((e for e in spec.entries if e.is_step), None)
    if step is None:
        return [], [], {}
    step_returns = {task: list(results.seeds_of(task, step).values())
                    for task in spec.tasks if results.seeds_of(task, step)}
    references = {task: float(np.mean(returns)) for task, returns in step_returns.items()}
    tasks, left_out = tasks_step_learned(step_returns, {t: randoms[t]["return_mean"] for t in step_returns})
    normalised: dict[str, dict[str, np.ndarray]] = {}
    for entry in spec.entries:
        scores = {task: np.asarray(normalise(list(results.seeds_of(task, entry).values()),
                                             randoms[task]["return_mean"], references[task]))
                  for task in tasks if results.seeds_of(task, entry)}
        if scores:
            normalised[entry.label] = scores
    return tasks, left_out, normalised


def _aggregates(results: GridResults, randoms: dict[str, dict[str, Any]], n_resamples: int,
                differences: dict[str, dict[str, Estimate]]) -> list[str]:
    spec = results.spec
    lines = ["## Across tasks", ""]
    step = next((e for e in spec.entries if e.is_step), None)
    if step is None:
        return [*lines, "`step` is not an entry of this grid, so there are no normalised scores "
                "(random = 0, `step` = 1 per task); raw returns only (above).", ""]
    tasks, left_out, normalised = normalised_scores(results, randoms)
    if left_out:
        lines += [f"Left out of the normalised scores: {', '.join(left_out)}, where `step`'s mean "
                  "return is not above the random policy's by more than its standard error "
                  "(normalising by a difference near 0 or below would blow scores up or flip "
                  "their sign); see their raw returns above.", ""]
    if not tasks:
        return [*lines, "No task has finished `step` runs that beat the random policy: no "
                "normalised scores.", "",
                *reading(differences, {}, {}, step.label, results.diverged_counts(),
                         len(spec.entries) - 1)]
    lines += [f"Normalised score per run: (return − random) / (mean `step` return − random), per task "
              f"({', '.join(tasks)}). Point estimates with stratified bootstrap 95% CIs "
              f"({n_resamples} resamples; `scipy.stats.bootstrap`, each task its own sample). "
              "IQM: mean of the middle 50% of all runs. Optimality gap: mean shortfall below "
              "`step`'s level, mean(max(0, 1 − score)); lower is better.", ""]
    rows = []
    estimates: dict[str, dict[str, Estimate]] = {"IQM": {}, "mean": {}}
    improvements: dict[str, dict[str, Estimate]] = {"P(entry > step)": {}}
    for label, scores in normalised.items():
        iqm_estimate = aggregate(scores, "iqm", n_resamples=n_resamples)
        mean_estimate = aggregate(scores, "mean", n_resamples=n_resamples)
        gap_estimate = aggregate(scores, "optimality_gap", n_resamples=n_resamples)
        estimates["IQM"][label], estimates["mean"][label] = iqm_estimate, mean_estimate
        coverage = f"{len(scores)}/{len(tasks)} tasks, {sum(s.size for s in scores.values())} runs"
        if label == step.label:
            improvement = "—"
        else:
            poi = probability_of_improvement(scores, normalised[step.label], n_resamples=n_resamples)
            improvements["P(entry > step)"][label] = poi
            improvement = poi.format()
        rows.append([f"`{label}`", iqm_estimate.format(), mean_estimate.format(), gap_estimate.format(),
                     improvement, coverage])
    lines += _table(["entry", "IQM [95% CI]", "mean [95% CI]", "optimality gap [95% CI]",
                     "P(entry > step) [95% CI]", "runs"], rows)
    figures = results.out / "figures"
    styles = grid_styles(spec.entries)  # as in every figure of the report
    _interval_plot(estimates, figures / "aggregates.png", 1.0, "normalised score", styles)
    lines += ["![IQM and mean of normalised scores](figures/aggregates.png)", ""]
    if improvements["P(entry > step)"]:
        _interval_plot(improvements, figures / "probability_of_improvement.png", 0.5, "probability", styles)
        lines += ["![probability of improvement over step](figures/probability_of_improvement.png)", ""]
    thresholds = np.linspace(0.0, max(2.0, max(float(s.max()) for scores in normalised.values()
                                               for s in scores.values())), 81)
    figure, axis = plt.subplots(figsize=(6 + 2 * (len(normalised) > 5), 4), layout="constrained")
    for label, scores in normalised.items():
        profile = performance_profile(scores, thresholds, n_resamples=n_resamples)
        axis.plot(thresholds, profile.fraction, label=label, **styles[label])
        axis.fill_between(thresholds, profile.low, profile.high, color=styles[label]["color"], alpha=0.12)
    axis.set_xlabel("normalised score τ")
    axis.set_ylabel("fraction of runs with score > τ")
    figure.legend(loc="outside right upper", fontsize=8)
    figure.savefig(figures / "performance_profiles.png", dpi=110)
    plt.close(figure)
    lines += ["Performance profiles (fraction of runs above each normalised score; each task weighs "
              "the same; 95% CI bands):", "",
              "![performance profiles](figures/performance_profiles.png)", ""]
    # The highest IQM is named among entries with runs on every normalised task only: an IQM over
    # fewer tasks is another quantity.
    complete = {label: estimate for label, estimate in estimates["IQM"].items()
                if len(normalised[label]) == len(tasks)}
    return [*lines, *reading(differences, improvements["P(entry > step)"], complete, step.label,
                             results.diverged_counts(), len(spec.entries) - 1,
                             (len(tasks) + len(left_out), len(spec.tasks)))]


def _runs(results: GridResults) -> list[str]:
    rows = []
    for cell in results.spec.cells():
        state = results.states[cell.key]
        if state.record is None:
            rows.append([cell.task, f"`{cell.entry.label}`", str(cell.seed), state.status, "", ""])
            continue
        rows.append([cell.task, f"`{cell.entry.label}`", str(cell.seed), state.status,
                     f"{state.record['final_return']:.1f}", f"`{state.record['parameters_sha256'][:16]}`"])
    return ["## Every run", "", *_table(["task", "entry", "seed", "status", "final return",
                                         "parameters SHA-256 (first 16 hex)"], rows)]


def write_report(out: str | Path, *, n_resamples: int = 2000) -> Path:
    """Write `report.md` and `figures/*.png` into the grid directory; return the report's path."""
    out = Path(out)
    results = collect(out)
    spec = results.spec
    randoms = random_scores(out, spec.tasks, spec.steps)
    (out / "figures").mkdir(exist_ok=True)
    lines = [f"# Comparison: {', '.join(e.label for e in spec.entries)}", ""]
    lines += _settings(results, randoms)
    lines += _completeness(results)
    lines += _per_task(results)
    step = next((e for e in spec.entries if e.is_step), None)
    differences = task_differences(results, step, n_resamples) if step is not None else {}
    lines += difference_table(results, differences)
    if results.returns:
        plot_learning_curves(results, out / "figures" / "learning_curves.png")
        lines += ["Learning curves (episode return against steps; mean ± std over seeds):", "",
                  "![learning curves](figures/learning_curves.png)", ""]
    lines += _bitwise(results)
    lines += _aggregates(results, randoms, n_resamples, differences)
    lines += _paper(results, out / "figures")
    lines += _diagnostics(results, out / "figures", differences, step.label if step is not None else None)
    lines += _runs(results)
    path = out / "report.md"
    write_text_atomically(path, "\n".join(lines).rstrip() + "\n")
    return path


__all__ = ["PAPER", "PAPER_SOURCE", "GridResults", "collect", "normalised_scores", "plot_learning_curves",
           "write_report"]
