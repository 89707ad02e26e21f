"""Two sections of a grid's report: the policy diagnostics at the end of training (and as
curves), and the paper-protocol baselines against the published KLip-PPO paper's numbers."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from klip.studies.compare_reading import interval_side
from klip.studies.compare_results import NEUTRAL_OPTIONS, GridResults, _mean_std, _table
from klip.studies.entries import Entry
from klip.studies.figure_style import grid_styles, shared_legend
from klip.studies.grid import Cell
from klip.studies.statistics import Estimate
from klip.studies.training import read_metrics

CURVE_POINTS = 50
NOTES_FILE = "notes.md"
PAPER_SOURCE = "the published KLip-PPO paper (arXiv 2606.23932)"
PAPER_SEEDS = 5  # each published mean ± std is over 5 seeds
# The paper trains its MuJoCo tasks for 1M steps and states no budget for its two discrete
# "extra checks" (None).
PAPER_STEPS: dict[str, int | None] = {
    "Ant-v4": 1_000_000, "HalfCheetah-v4": 1_000_000, "Hopper-v4": 1_000_000,
    "Humanoid-v4": 1_000_000, "Walker2d-v4": 1_000_000, "CartPole-v1": None, "LunarLander-v3": None}
# Final return, mean +- std over seeds.
PAPER: dict[str, dict[str, tuple[float, float]]] = {
    "clip": {"Ant-v4": (2193, 361), "HalfCheetah-v4": (1955, 312), "Hopper-v4": (2598, 278),
             "Humanoid-v4": (660, 70), "Walker2d-v4": (3717, 425),
             "CartPole-v1": (478, 18), "LunarLander-v3": (107, 8)},
    "kl_fixed": {"Ant-v4": (16, 16), "HalfCheetah-v4": (2111, 1066), "Hopper-v4": (2616, 208),
                 "Humanoid-v4": (342, 31), "Walker2d-v4": (3995, 402),
                 "CartPole-v1": (484, 23), "LunarLander-v3": (121, 12)},
    "kl_adaptive": {"Ant-v4": (159, 86), "HalfCheetah-v4": (2207, 1117), "Hopper-v4": (2236, 365),
                    "Humanoid-v4": (553, 22), "Walker2d-v4": (3639, 374),
                    "CartPole-v1": (492, 9), "LunarLander-v3": (125, 20)},
}
PAPER_NAMES = {"clip": "PPO-Clip", "kl_fixed": "fixed beta (1.0)",
               "kl_adaptive": "adaptive beta (KL target 0.02)"}


# Policy diagnostics worth setting side by side across entries (`docs/metrics.md`); each is
# drawn for the entries whose runs log it.
DIAGNOSTICS: tuple[tuple[str, str], ...] = (
    ("train/entropy", "policy entropy"),
    ("train/kl_approx", "approx. KL"),
    ("train/clip_fraction", "fraction outside the band"),
    ("train/gate_mean", "mean gate"),
    ("train/beta", "beta (scalar KL)"),
    ("train/explained_variance", "explained variance"),
)
# Non-negative amounts whose ratio to `step`'s says how much more or less the policy moves.
RATIO_DIAGNOSTICS = frozenset({"train/kl_approx", "train/clip_fraction"})
FINAL_FRACTION = 0.1  # "end of training" means the last 10% of iterations, as the final return


def diagnostic_runs(results: GridResults, task: str, entry: Entry, column: str
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frames, values) of `column` for each finished seed of (task, entry) that logs it."""
    runs = []
    for seed in sorted(results.seeds_of(task, entry)):
        metrics_csv = results.spec.cell_dir(results.out, Cell(entry, task, seed)) / "metrics.csv"
        if not metrics_csv.is_file():
            continue
        metrics = _cached_metrics(metrics_csv)
        if column not in metrics or "frames" not in metrics:
            continue
        keep = np.isfinite(metrics[column])
        if keep.any():
            runs.append((metrics["frames"][keep], metrics[column][keep]))
    return runs


@functools.lru_cache(maxsize=256)
def _cached_metrics(path: Path) -> dict[str, np.ndarray]:
    """`read_metrics`, once per file: every diagnostic column reads the same runs."""
    return read_metrics(path)


def end_of_training(frames: np.ndarray, values: np.ndarray, steps: int) -> float:
    """Mean of the values logged in the last `FINAL_FRACTION` of the run's steps."""
    last = values[frames > (1 - FINAL_FRACTION) * steps]
    return float(last.mean()) if last.size else float(values[-1])


def plot_diagnostics(results: GridResults, columns: Sequence[tuple[str, str]], path: Path) -> Path:
    """A row per task, a column per diagnostic: mean ± std over seeds against steps, per entry."""
    spec = results.spec
    grid = np.linspace(spec.steps / CURVE_POINTS, spec.steps, CURVE_POINTS)
    figure, axes = plt.subplots(len(spec.tasks), len(columns), squeeze=False, layout="constrained",
                                figsize=(3.6 * len(columns), 2.6 * len(spec.tasks) + 0.2 * len(spec.entries)))
    styles = grid_styles(spec.entries)
    for row, task in enumerate(spec.tasks):
        for col, (column, label) in enumerate(columns):
            axis = axes[row, col]
            for entry in spec.entries:
                runs = diagnostic_runs(results, task, entry, column)
                if not runs:
                    continue
                stacked = np.array([np.interp(grid, frames, values) for frames, values in runs])
                mean, std = stacked.mean(axis=0), stacked.std(axis=0)
                style = styles[entry.label]
                axis.plot(grid, mean, label=entry.label, **style)
                axis.fill_between(grid, mean - std, mean + std, color=style["color"], alpha=0.12)
            if column == "train/beta" and axis.lines:
                axis.set_yscale("log")
            axis.set_title(f"{task}: {label}", fontsize=8)
            axis.tick_params(labelsize=7)
            if row == len(spec.tasks) - 1:
                axis.set_xlabel("environment steps", fontsize=8)
    shared_legend(figure, list(axes.flat), axes.size)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _diagnostics(results: GridResults, figures: Path | None = None,
                 differences: Mapping[str, Mapping[str, Estimate]] | None = None,
                 step_label: str | None = None) -> list[str]:
    """End-of-training diagnostics per task and entry, and their curves: what an investigation
    of a surprising final return reads first (is the policy still broad? does it move?).
    With `differences` (each entry's return minus `step`'s, per task), every entry whose
    interval excludes 0 gets its diagnostics set beside `step`'s, one line per task."""
    spec = results.spec
    _cached_metrics.cache_clear()  # runs may have grown since an earlier report in this process
    table: dict[tuple[str, str], dict[str, list[float]]] = {}
    present: list[tuple[str, str]] = []
    for column, label in DIAGNOSTICS:
        for task in spec.tasks:
            for entry in spec.entries:
                for frames, values in diagnostic_runs(results, task, entry, column):
                    table.setdefault((task, entry.label), {}).setdefault(column, []).append(
                        end_of_training(frames, values, spec.steps))
                    if (column, label) not in present:
                        present.append((column, label))
    if not present:
        return []
    rows = [[task, f"`{entry.label}`",
             *[_mean_std(table.get((task, entry.label), {}).get(column, []), ".3g", ".2g")
               for column, _ in present]]
            for task in spec.tasks for entry in spec.entries if (task, entry.label) in table]
    lines = ["## Training diagnostics", "",
             f"Mean over the last {FINAL_FRACTION:.0%} of each run's iterations, then mean ± std over "
             "seeds (— where an entry does not log the column; column meanings in klip's "
             "`docs/metrics.md`):", ""]
    lines += _table(["task", "entry", *[f"{label} (`{column}`)" for column, label in present]], rows)
    lines += _beside_step(table, present, differences or {}, step_label)
    if figures is not None:
        plot_diagnostics(results, present, figures / "diagnostics.png")
        lines += ["![training diagnostics per task](figures/diagnostics.png)", ""]
    return lines


def _beside_step(table: Mapping[tuple[str, str], Mapping[str, list[float]]], present: list[tuple[str, str]],
                 differences: Mapping[str, Mapping[str, Estimate]], step_label: str | None) -> list[str]:
    """One line per (task, entry) whose return differs from `step`'s: its diagnostics and step's."""
    lines = []
    for task, by_label in differences.items():
        reference = table.get((task, step_label or ""), {})
        for label, estimate in by_label.items():
            side = interval_side(estimate, 0.0)
            mine = table.get((task, label), {})
            if side not in ("above", "below") or not mine or not reference:
                continue
            pairs = [_pair(name, float(np.mean(mine[column])), float(np.mean(reference[column])),
                           column in RATIO_DIAGNOSTICS)
                     for column, name in present if mine.get(column) and reference.get(column)]
            lines.append(f"- {task}, `{label}` ({side} `{step_label}`): " + "; ".join(pairs) + ".")
    if not lines:
        return []
    return ["Where an entry's return differs from `step`'s (its interval above excludes 0), its "
            "diagnostics beside `step`'s (means over seeds):", "", *lines, ""]


def _pair(name: str, mine: float, reference: float, as_ratio: bool) -> str:
    """`name mine against reference`, with the factor where the column is a non-negative
    amount that a factor describes (how much further the policy moves than `step`'s)."""
    text = f"{name} {mine:.3g} against {reference:.3g}"
    if as_ratio and mine >= 0 and reference > 0:
        text += f" ({mine / reference:.2g}x)"
    return text


def _paper_entry(entry: Entry) -> str | None:
    for name in PAPER:
        if entry.options == {"loss": name}:
            return name
    return None


def _welch_p(values: Sequence[float], paper_mean: float, paper_std: float) -> str:
    if len(values) < 2:
        return "—"
    result = stats.ttest_ind_from_stats(float(np.mean(values)), float(np.std(values, ddof=1)), len(values),
                                        paper_mean, paper_std, PAPER_SEEDS, equal_var=False)
    return f"{float(result.pvalue):.3f}"


def plot_against_paper(results: GridResults, pairs: Sequence[tuple[Entry, str]], tasks: Sequence[str],
                       path: Path) -> Path:
    """Per task: each method's published mean ± std beside ours (every seed, and mean ± std)."""
    columns = min(len(tasks), 4)
    rows = -(-len(tasks) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat[len(tasks):]:
        axis.set_visible(False)
    for axis, task in zip(axes.flat, tasks, strict=False):
        for position, (entry, name) in enumerate(pairs):
            paper_mean, paper_std = PAPER[name][task]
            axis.errorbar(position - 0.15, paper_mean, yerr=paper_std, fmt="s", color="0.45",
                          capsize=4, label="paper" if position == 0 else None)
            values = list(results.seeds_of(task, entry).values())
            if values:
                axis.plot([position + 0.15] * len(values), values, ".", color="C0", alpha=0.6,
                          label="ours, each seed" if position == 0 else None)
                axis.errorbar(position + 0.15, float(np.mean(values)),
                              yerr=float(np.std(values, ddof=1)) if len(values) > 1 else None,
                              fmt="o", color="C0", capsize=4,
                              label="ours, mean ± std" if position == 0 else None)
        axis.set_xticks(range(len(pairs)), [PAPER_NAMES[name].split(" (")[0] for _, name in pairs],
                        rotation=20, fontsize=8)
        axis.set_title(task, fontsize=10)
        axis.set_ylabel("final return")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _paper(results: GridResults, figures: Path | None = None) -> list[str]:
    spec = results.spec
    pairs = [(entry, name) for entry in spec.entries if (name := _paper_entry(entry)) is not None]
    tasks = [task for task in spec.tasks if task in PAPER["clip"]]
    if not pairs or not tasks:
        return []
    lines = [f"## Against {PAPER_SOURCE}", ""]
    differences = sorted(set(spec.base) - NEUTRAL_OPTIONS)
    other_budget = [task for task in tasks if PAPER_STEPS[task] not in (None, spec.steps)]
    if other_budget or differences:
        lines += [f"**This grid does not follow the paper's protocol** (steps {spec.steps:,}"
                  + (f" on {', '.join(other_budget)}, trained for "
                     f"{PAPER_STEPS[other_budget[0]]:,} in the paper" if other_budget else "")
                  + (f"; options {', '.join(differences)}" if differences else "")
                  + "): the comparison below is not meaningful.", ""]
    unstated = [task for task in tasks if PAPER_STEPS[task] is None]
    if unstated:
        lines += [f"The paper states no step budget for {', '.join(unstated)} (its \"extra "
                  f"checks\"); this grid trained them for {spec.steps:,} steps, so their rows "
                  "compare returns at that budget with returns at one the paper does not give.", ""]
    rows, outside = [], []
    for entry, name in pairs:
        for task in tasks:
            paper_mean, paper_std = PAPER[name][task]
            values = list(results.seeds_of(task, entry).values())
            if not values:
                rows.append([PAPER_NAMES[name], task, f"{paper_mean:.0f} ± {paper_std:.0f}", *["—"] * 4])
                continue
            ours = float(np.mean(values))
            distance = (ours - paper_mean) / paper_std
            within = abs(distance) <= 1
            rows.append([PAPER_NAMES[name], task, f"{paper_mean:.0f} ± {paper_std:.0f}",
                         _mean_std(values) + (f" ({len(values)}/{len(spec.seeds)})"
                                              if len(values) < len(spec.seeds) else ""),
                         f"{distance:+.2f}", "yes" if within else "**no**",
                         _welch_p(values, paper_mean, paper_std)])
            if not within:
                outside.append((entry, name, task, values, distance))
    lines += _table(["method", "task", "paper", "ours", "(ours − paper) / paper std",
                     "within 1 paper std", "Welch p"], rows)
    lines += [f"Welch p: two-sided Welch t-test of our seeds against the published mean ± std over "
              f"{PAPER_SEEDS} seeds (`scipy.stats.ttest_ind_from_stats`); with 5 seeds a side, a "
              "large p says little, a small one says the difference is more than seed noise.", ""]
    if figures is not None and results.returns:
        plot_against_paper(results, pairs, tasks, figures / "against_paper.png")
        lines += ["![ours against the paper, per task](figures/against_paper.png)", ""]
    if outside:
        lines += ["Outside one paper standard deviation (per-seed final returns):", ""]
        for entry, _name, task, _values, distance in outside:
            seeds = results.seeds_of(task, entry)
            lines.append(f"- {task}, `{entry.label}`: {distance:+.2f} paper stds; seeds "
                         + ", ".join(f"{seed}: {value:.0f}" for seed, value in sorted(seeds.items())))
        lines.append("")
    notes = results.out / NOTES_FILE
    lines += ["### Investigation", ""]
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
    elif outside:
        lines += [f"Not investigated yet: the explanation goes in `{NOTES_FILE}` in the grid "
                  "directory, which this report includes here.", ""]
    else:
        lines += ["Every finished cell is within one paper standard deviation.", ""]
    return lines


