"""How much each run still gains late in training, and how far each update moves its policy there.

    .venv/bin/python results/paper-table/late_training.py Walker2d-v4 Hopper-v4

Per finished grid cell of the given tasks (`clip`, `kl_fixed`, `kl_adaptive`; `step` is bitwise
`clip`): the mean return of the episodes ending in 0.5-0.6M steps, in 0.7-0.8M steps and in the
last 10%; the penalty coefficient beta (`train/beta`) averaged over 0.2-0.8M steps and over the
last 10%; the approximate KL of each update (`train/kl_approx`, the mean of
`log pi_old - log pi_new` over the update's samples) and the entropy over the last 10%. Then per
entry the mean gain from each window to the last 10%, and Welch t-tests of `kl_fixed`'s gains
against `kl_adaptive`'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import stats

from klip.algos.plots import read_metrics
from klip.algos.run import read_episode_returns

RUNS = Path(__file__).resolve().parent / "runs"
ENTRIES = ("clip", "kl_fixed", "kl_adaptive")
WINDOWS = (0.5e6, 0.7e6)  # window starts, 0.1M steps wide


def window_mean(frames: np.ndarray, values: np.ndarray, low: float, high: float) -> float:
    selected = values[(frames > low) & (frames <= high)]
    selected = selected[np.isfinite(selected)]
    return float(selected.mean()) if len(selected) else float("nan")


def number(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.2f}"  # clip logs no beta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="+")
    args = parser.parse_args(argv)
    for task in args.tasks:
        print(f"\n{task}\n")
        print("| entry | seed | return 0.5-0.6M | 0.7-0.8M | last 10% | beta 0.2-0.8M | beta last 10% "
              "| update KL last 10% | entropy last 10% |")
        print("|---|---|---|---|---|---|---|---|---|")
        gains: dict[str, dict[str, list[float]]] = {}
        for entry in ENTRIES:
            for run in sorted((RUNS / task / entry).glob("s*")):
                if not (run / "cell.json").is_file():
                    continue
                frames, returns = np.array(read_episode_returns(run / "episodes.csv"), dtype=float).T
                metrics = read_metrics(run / "metrics.csv")
                steps, end = metrics["frames"], float(metrics["frames"][-1])
                windows = {start: window_mean(frames, returns, start, start + 0.1e6) for start in WINDOWS}
                last = window_mean(frames, returns, 0.9 * end, end)
                for start, value in windows.items():
                    gains.setdefault(entry, {}).setdefault(f"{start / 1e6:.1f}M", []).append(last - value)
                beta = metrics.get("train/beta", np.full_like(steps, np.nan))
                print(f"| {entry} | {run.name[1:]} | "
                      + " | ".join(f"{value:.0f}" for value in windows.values())
                      + f" | {last:.0f} | {number(window_mean(steps, beta, 0.2e6, 0.8e6))} "
                      f"| {number(window_mean(steps, beta, 0.9 * end, end))} "
                      f"| {window_mean(steps, metrics['train/kl_approx'], 0.9 * end, end):.4f} "
                      f"| {window_mean(steps, metrics['train/entropy'], 0.9 * end, end):.2f} |")
        print()
        for entry, by_window in gains.items():
            print(f"{entry}: mean gain to the last 10% "
                  + ", ".join(f"from {window} {np.mean(values):+.0f}" for window, values in by_window.items())
                  + f" ({len(next(iter(by_window.values())))} seeds)")
        fixed, adaptive = gains.get("kl_fixed", {}), gains.get("kl_adaptive", {})
        for window in fixed:
            if len(fixed[window]) > 1 and len(adaptive.get(window, [])) > 1:
                test = stats.ttest_ind(fixed[window], adaptive[window], equal_var=False)
                print(f"gain from {window}, kl_fixed against kl_adaptive: Welch t {test.statistic:.2f}, "
                      f"p {test.pvalue:.3f}")


if __name__ == "__main__":
    main()
