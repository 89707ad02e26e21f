"""The Hopper-v4 fixed-beta ablation in one figure: return and policy entropy against steps.

    .venv/bin/python results/ablations/plot_hopper_kl.py   # writes results/ablations/hopper_kl.png

Reads the finished cells of the replication grid (`clip`, `kl_fixed`) and of the two ablation
grids beside this file (`kl_fixed` with `kl_direction=new_old`, and with `kl_beta=1/3`); mean
± std over the seeds each has.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from klip.algos.plots import read_metrics
from klip.studies.compare import read_episodes
from klip.studies.compare_report import binned_curve

HERE = Path(__file__).resolve().parent
GRID = HERE.parent / "paper-table" / "runs" / "Hopper-v4"
ARMS = {
    "PPO-Clip (clip)": [GRID / "clip"],
    "fixed beta 1, KL(old || new): PPO's": [GRID / "kl_fixed"],
    "fixed beta 1, KL(new || old)": [HERE / "hopper-kl-fixed/runs/Hopper-v4/kl_fixed_kl_direction=new_old",
                                     HERE / "hopper-kl-fixed-new-old-s2-4/runs/Hopper-v4/"
                                            "kl_fixed_kl_direction=new_old"],
    "fixed beta 1/3, KL(old || new)": [HERE / "hopper-kl-fixed/runs/Hopper-v4/kl_fixed_kl_beta=0.333333"],
}
STEPS = 1_000_000
POINTS = 50


def finished_runs(roots: list[Path]) -> list[Path]:
    return sorted(run for root in roots for run in root.glob("s*") if (run / "cell.json").is_file())


def main() -> Path:
    grid = np.linspace(STEPS / POINTS, STEPS, POINTS)
    figure, (returns, entropy) = plt.subplots(1, 2, figsize=(12, 4.2))
    for index, (label, roots) in enumerate(ARMS.items()):
        runs = finished_runs(roots)
        if not runs:
            continue
        curves = np.array([binned_curve(read_episodes(run / "episodes.csv"), grid) for run in runs])
        metrics = [read_metrics(run / "metrics.csv") for run in runs]
        entropies = np.array([np.interp(grid, m["frames"], m["train/entropy"]) for m in metrics])
        for axis, values in ((returns, curves), (entropy, entropies)):
            mean, std = values.mean(axis=0), values.std(axis=0)
            axis.plot(grid, mean, color=f"C{index}", label=f"{label} (n={len(runs)})")
            axis.fill_between(grid, mean - std, mean + std, color=f"C{index}", alpha=0.15)
    returns.set_ylabel("episode return")
    entropy.set_ylabel("policy entropy (nats)")
    for axis in (returns, entropy):
        axis.set_xlabel("environment steps")
        axis.grid(alpha=0.3)
    returns.legend(fontsize=8)
    figure.suptitle("Hopper-v4: which KL the fixed-beta penalty measures (mean ± std over seeds)")
    figure.tight_layout()
    path = HERE / "hopper_kl.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


if __name__ == "__main__":
    print(f"wrote {main()}")
