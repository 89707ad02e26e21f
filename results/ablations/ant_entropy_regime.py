"""Ant-v4: when each run's policy gets narrow enough that staying alive pays.

    .venv/bin/python results/ablations/ant_entropy_regime.py

Ant-v4 pays 1.0 per step alive and 0.5 * sum(action^2) of control cost. The exploration noise
of a Gaussian policy alone costs, for mean-zero actions clipped to [-1, 1] and the same std in
all 8 dimensions, more than the alive bonus while the policy's entropy is above ~6.2 nats
(printed first, by Monte Carlo). Then, per finished run of the replication grid and of the
ablations beside this file: the first step at which the logged entropy falls under 6 and 4
nats, the mean reward per step (episode return / length) while the entropy is above 6, between
3 and 6, and under 3 nats, and the final return (mean over the episodes of the last 10%).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from klip.algos.plots import read_metrics

HERE = Path(__file__).resolve().parent
ROOTS = {
    "grid": HERE.parent / "paper-table" / "runs" / "Ant-v4",
    "ablation": HERE / "ant-kl-adaptive" / "runs" / "Ant-v4",
    "ablation s2-4": HERE / "ant-kl-adaptive-new-old-s2-4" / "runs" / "Ant-v4",
}
ACTION_DIMS, ALIVE_BONUS, CTRL_WEIGHT = 8, 1.0, 0.5


def noise_control_cost(std: float, samples: int = 1_000_000) -> float:
    noise = np.random.default_rng(0).standard_normal(samples)
    return CTRL_WEIGHT * ACTION_DIMS * float(np.mean(np.clip(std * noise, -1.0, 1.0) ** 2))


def gaussian_entropy(std: float) -> float:
    return ACTION_DIMS * (0.5 * math.log(2 * math.pi * math.e) + math.log(std))


def break_even_std() -> float:
    """The std at which the noise's control cost equals the alive bonus (bisection)."""
    low, high = 0.1, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if noise_control_cost(middle) < ALIVE_BONUS else (low, middle)
    return (low + high) / 2


def first_step(frames: np.ndarray, mask: np.ndarray) -> str:
    hits = np.flatnonzero(mask)
    return f"{frames[hits[0]] / 1e6:.2f}M" if len(hits) else "never"


def reward_per_step(returns: np.ndarray, lengths: np.ndarray, mask: np.ndarray) -> str:
    values = (returns / lengths)[mask]
    values = values[np.isfinite(values)]
    return f"{values.mean():+.2f}" if len(values) else "—"


def main() -> None:
    std = break_even_std()
    print(f"noise control cost = alive bonus at std {std:.3f}, entropy {gaussian_entropy(std):.2f} nats\n")
    print("| source | entry | seed | entropy < 6 at | entropy < 4 at | reward/step, entropy > 6 "
          "| 3-6 | < 3 | final return |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source, root in ROOTS.items():
        for run in sorted(root.glob("*/s*")):
            if not (run / "cell.json").is_file():
                continue
            metrics = read_metrics(run / "metrics.csv")
            frames, entropy = metrics["frames"], metrics["train/entropy"]
            returns, lengths = metrics["episode/return_mean"], metrics["episode/length_mean"]
            final = json.loads((run / "summary.json").read_text())["final_return_last10pct"]
            print(f"| {source} | {run.parent.name} | {run.name[1:]} | {first_step(frames, entropy < 6)} "
                  f"| {first_step(frames, entropy < 4)} "
                  f"| {reward_per_step(returns, lengths, entropy > 6)} "
                  f"| {reward_per_step(returns, lengths, (entropy <= 6) & (entropy >= 3))} "
                  f"| {reward_per_step(returns, lengths, entropy < 3)} | {final:.1f} |")


if __name__ == "__main__":
    main()
