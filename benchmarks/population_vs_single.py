"""Same learning: N seeds as one population against the same N seeds as single runs.

    .venv/bin/python benchmarks/population_vs_single.py                 # issue 11: 8 x 300k Hopper-v4
    .venv/bin/python benchmarks/population_vs_single.py --seeds 2 --steps 4096 --eval-episodes 0
                                                                        # a smoke run of the script

Trains `klip train --seeds 0-(N-1) --shape step` once (one process) and `klip train --seed i
--shape step` for each seed (one process each, one after the other), then compares the final
returns (mean raw return of the episodes ending in the last 10% of training): mean +- std of
each arm, and a percentile-bootstrap 95% CI of the difference of means (population - single),
which must contain 0 (`scipy.stats.bootstrap`, the two arms resampled independently). Written to
--json, with a figure of both arms' learning curves (mean +- std over seeds) beside it; the run
directories stay under --out. A run whose summary.json exists is not trained again, so an
interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def klip_train(arguments: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "klip", "train", "--no-progress", *arguments], check=True,
                   env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def final_return(run_directory: Path) -> float:
    return json.loads((run_directory / "summary.json").read_text())["final_return_last10pct"]


def bootstrap_difference_ci(a: np.ndarray, b: np.ndarray, resamples: int = 100_000,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of mean(a) - mean(b), each arm resampled on its own."""
    from scipy import stats

    interval = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
                               n_resamples=resamples, method="percentile", paired=False,
                               rng=np.random.default_rng(seed)).confidence_interval
    return float(interval.low), float(interval.high)


def plot_arms(path: Path, arms: dict[str, list[Path]], steps: int, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from klip.algos.run import read_episode_returns
    from klip.studies.compare_report import binned_curve

    grid = np.linspace(steps / 100, steps, 100)
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for label, directories in arms.items():
        curves = np.array([binned_curve(read_episode_returns(d / "episodes.csv"), grid) for d in directories])
        mean, std = curves.mean(0), curves.std(0)
        axis.plot(grid, mean, label=f"{label} (n={len(directories)})")
        axis.fill_between(grid, mean - std, mean + std, alpha=0.2)
    axis.set_title(title)
    axis.set_xlabel("environment steps per agent")
    axis.set_ylabel("episode return (mean +- std over seeds)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def train_once(arguments: list[str], out: Path) -> float:
    """Train into `out` unless a finished run is already there; the seconds it took (0 if skipped)."""
    if (out / "summary.json").is_file():
        return 0.0
    if out.exists():
        shutil.rmtree(out)  # an interrupted run: start it again rather than mix two runs
    return klip_train([*arguments, "--out", str(out)])


def arm_arguments(description: str | None, name: str) -> argparse.ArgumentParser:
    """The options both same-learning scripts take; results go to benchmarks/results/NAME[.json]."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="Hopper-v4")
    parser.add_argument("--seeds", type=int, default=8, help="agents: seeds 0..N-1")
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / name)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / f"{name}.json")
    return parser


def step_training_arguments(args: argparse.Namespace) -> list[str]:
    """`klip train` options of a `step` run of the task, budget and evaluation asked for."""
    return ["--task", args.task, "--shape", "step", "--steps", str(args.steps),
            "--eval-episodes", str(args.eval_episodes)]


def main() -> None:
    args = arm_arguments(__doc__, "population_vs_single").parse_args()
    common = step_training_arguments(args)
    population_dirs = [args.out / "population" / f"s{seed}" for seed in range(args.seeds)]
    population_seconds = 0.0
    if not all((d / "summary.json").is_file() for d in population_dirs):
        if (args.out / "population").exists():
            shutil.rmtree(args.out / "population")
        population_seconds = klip_train([*common, "--seeds", f"0-{args.seeds - 1}",
                                         "--out", str(args.out / "population")])
    population = np.array([final_return(d) for d in population_dirs])
    single_dirs = [args.out / f"single-s{seed}" for seed in range(args.seeds)]
    single_seconds = sum(train_once([*common, "--seed", str(seed)], out)
                         for seed, out in zip(range(args.seeds), single_dirs, strict=True))
    single = np.array([final_return(d) for d in single_dirs])
    low, high = bootstrap_difference_ci(population, single)
    report = {
        "task": args.task, "seeds": args.seeds, "steps": args.steps,
        "command": " ".join([".venv/bin/python", "benchmarks/population_vs_single.py", *sys.argv[1:]]),
        "seconds_note": "0 for an arm means it was already trained by an earlier invocation",
        "population": {"final_returns": population.tolist(), "mean": float(population.mean()),
                       "std": float(population.std(ddof=1)), "seconds": population_seconds},
        "single": {"final_returns": single.tolist(), "mean": float(single.mean()),
                   "std": float(single.std(ddof=1)), "seconds": single_seconds},
        "difference_of_means": float(population.mean() - single.mean()),
        "bootstrap_95ci": [low, high],
        "ci_contains_zero": low <= 0 <= high,
    }
    print(f"population: {report['population']['mean']:.1f} +- {report['population']['std']:.1f} "
          f"({population_seconds:.0f} s, one process)")
    print(f"single:     {report['single']['mean']:.1f} +- {report['single']['std']:.1f} "
          f"({single_seconds:.0f} s, {args.seeds} processes in turn)")
    print(f"difference of means {report['difference_of_means']:.1f}, bootstrap 95% CI "
          f"[{low:.1f}, {high:.1f}]: {'contains' if report['ci_contains_zero'] else 'EXCLUDES'} 0")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    figure = plot_arms(args.json.with_suffix(".png"), {"population": population_dirs, "single": single_dirs},
                       args.steps, f"{args.task}, step shape: one population against single runs")
    print(f"written to {args.json} and {figure}")


if __name__ == "__main__":
    main()
