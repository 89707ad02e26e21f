"""The KL-penalty ablations in one figure per task: return, policy entropy and episode length.

    .venv/bin/python results/ablations/plot_kl_ablations.py            # every figure
    .venv/bin/python results/ablations/plot_kl_ablations.py Ant-v4     # ant_kl.png only

Each figure reads the finished cells of the replication grid (`results/paper-table/`) and of
the ablation grids beside this file, and draws the mean ± std over the seeds each arm has:
`hopper_kl.png` (fixed beta: which KL it measures, and beta 1/3) and `ant_kl.png` (adaptive
beta: which KL it measures, and the old adaptation rule).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from klip.algos.plots import read_metrics
from klip.studies.compare import read_episodes
from klip.studies.compare_report import binned_curve

HERE = Path(__file__).resolve().parent
GRID = HERE.parent / "paper-table" / "runs"
STEPS = 1_000_000
POINTS = 50

# task -> (figure file, title, {arm label: the entry directories holding its seeds})
FIGURES: dict[str, tuple[str, str, dict[str, list[Path]]]] = {
    "Hopper-v4": ("hopper_kl.png", "Hopper-v4: which KL the fixed-beta penalty measures", {
        "PPO-Clip (clip)": [GRID / "Hopper-v4/clip"],
        "fixed beta 1, KL(old || new): PPO's": [GRID / "Hopper-v4/kl_fixed"],
        "fixed beta 1, KL(new || old)": [
            HERE / "hopper-kl-fixed/runs/Hopper-v4/kl_fixed_kl_direction=new_old",
            HERE / "hopper-kl-fixed-new-old-s2-4/runs/Hopper-v4/kl_fixed_kl_direction=new_old"],
        "fixed beta 1/3, KL(old || new)": [HERE / "hopper-kl-fixed/runs/Hopper-v4/kl_fixed_kl_beta=0.333333"],
    }),
    "Ant-v4": ("ant_kl.png", "Ant-v4: which KL the adaptive-beta penalty measures", {
        "PPO-Clip (clip)": [GRID / "Ant-v4/clip"],
        "adaptive beta, KL(old || new): PPO's": [GRID / "Ant-v4/kl_adaptive"],
        "adaptive beta, KL(new || old)": [
            HERE / "ant-kl-adaptive/runs/Ant-v4/kl_adaptive_kl_direction=new_old",
            HERE / "ant-kl-adaptive-new-old-s2-4/runs/Ant-v4/kl_adaptive_kl_direction=new_old"],
        "adaptive beta, old rule (mean of the update's KLs)": [
            HERE / "ant-kl-adaptive/runs/Ant-v4/kl_adaptive_kl_measure=update_mean"],
        "fixed beta 1, KL(old || new): PPO's": [GRID / "Ant-v4/kl_fixed"],
    }),
}


def finished_runs(roots: list[Path]) -> list[Path]:
    return sorted(run for root in roots for run in root.glob("s*") if (run / "cell.json").is_file())


def plot(task: str) -> Path:
    filename, title, arms = FIGURES[task]
    grid = np.linspace(STEPS / POINTS, STEPS, POINTS)
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.4))
    returns, entropy, length = axes
    for index, (label, roots) in enumerate(arms.items()):
        runs = finished_runs(roots)
        if not runs:
            continue
        curves = np.array([binned_curve(read_episodes(run / "episodes.csv"), grid) for run in runs])
        metrics = [read_metrics(run / "metrics.csv") for run in runs]
        entropies = np.array([np.interp(grid, m["frames"], m["train/entropy"]) for m in metrics])
        lengths = np.array([np.interp(grid, m["frames"], m["episode/length_mean"]) for m in metrics])
        for axis, values in ((returns, curves), (entropy, entropies), (length, lengths)):
            mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
            axis.plot(grid, mean, color=f"C{index}", label=f"{label} (n={len(runs)})")
            axis.fill_between(grid, mean - std, mean + std, color=f"C{index}", alpha=0.15)
    returns.set_ylabel("episode return")
    entropy.set_ylabel("policy entropy (nats)")
    length.set_ylabel("episode length (steps)")
    for axis in axes:
        axis.set_xlabel("environment steps")
        axis.grid(alpha=0.3)
    returns.legend(fontsize=8)
    figure.suptitle(f"{title} (mean ± std over seeds)")
    figure.tight_layout()
    path = HERE / filename
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(tasks: list[str]) -> list[Path]:
    unknown = [task for task in tasks if task not in FIGURES]
    if unknown:
        raise SystemExit(f"no ablation figure for {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    return [plot(task) for task in tasks or list(FIGURES)]


if __name__ == "__main__":
    for written in main(sys.argv[1:]):
        print(f"wrote {written}")
