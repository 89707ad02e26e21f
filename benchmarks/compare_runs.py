"""Compare groups of finished `klip train` runs: final returns and binned learning curves.

    .venv/bin/python benchmarks/compare_runs.py exact=runs/exact-s* fused=runs/fused-s* \\
        --out benchmarks/results/seed_noise.png

Each group is NAME=RUN_DIR [RUN_DIR ...] (shell globs expand). Prints, per group, the
final return (mean raw episode return over the last 10% of training) as
mean +- std over runs, and draws each group's mean curve with a band of +- one std
across runs, on a common grid of env steps.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt
import numpy as np

from klip.algos.run import read_episode_returns


def episodes(run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = read_episode_returns(run / "episodes.csv")
    return np.array([float(f) for f, _ in rows]), np.array([r for _, r in rows])


def binned(frames: np.ndarray, returns: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Mean return of the episodes ending in each grid cell (carried forward when empty)."""
    values, last = [], np.nan
    for low, high in itertools.pairwise(grid):
        inside = returns[(frames > low) & (frames <= high)]
        last = float(inside.mean()) if inside.size else last
        values.append(last)
    return np.array(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="+", help="NAME=RUN_DIR[,RUN_DIR...] or NAME=GLOB")
    parser.add_argument("--out", type=Path, default=Path("compare.png"))
    parser.add_argument("--bins", type=int, default=40)
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args()

    groups: dict[str, list[Path]] = {}
    for spec in args.groups:
        name, _, pattern = spec.partition("=")
        runs = sorted(Path(p) for part in pattern.split(",") for p in glob.glob(part))
        if not runs:
            raise SystemExit(f"no runs match {pattern!r}")
        groups[name] = runs

    table = {}
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, runs in groups.items():
        finals = [json.loads((run / "summary.json").read_text())["final_return_last10pct"]
                  for run in runs]
        table[name] = {"runs": [str(r) for r in runs], "final_returns": finals,
                       "mean": float(np.mean(finals)), "std": float(np.std(finals))}
        print(f"{name:12s} final return {np.mean(finals):8.1f} +- {np.std(finals):6.1f} "
              f"over {len(runs)} runs: {', '.join(f'{f:.0f}' for f in finals)}")
        total = max(episodes(run)[0].max() for run in runs)
        grid = np.linspace(0, total, args.bins + 1)
        curves = np.array([binned(*episodes(run), grid) for run in runs])
        mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
        centres = (grid[:-1] + grid[1:]) / 2
        axis.plot(centres, mean, label=f"{name} ({len(runs)} seeds)")
        axis.fill_between(centres, mean - std, mean + std, alpha=0.2)
    axis.set_xlabel("environment steps")
    axis.set_ylabel("raw episode return")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(f"plot written to {args.out}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
