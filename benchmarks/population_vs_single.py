"""Same learning: N seeds as one population against the same N seeds as single runs.

    .venv/bin/python benchmarks/population_vs_single.py                 # issue 11: 8 x 300k Hopper-v4
    .venv/bin/python benchmarks/population_vs_single.py --seeds 2 --steps 4096 --eval-episodes 0
                                                                        # a smoke run of the script

Trains `klip train --seeds 0-(N-1) --shape step` once (one process) and `klip train --seed i
--shape step` for each seed (one process each, one after the other), then compares the final
returns (mean raw return of the episodes ending in the last 10% of training): mean +- std of
each arm, and a percentile-bootstrap 95% CI of the difference of means (population - single),
which must contain 0. Written to --json; the run directories stay under --out.
"""

from __future__ import annotations

import argparse
import json
import os
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
    rng = np.random.default_rng(seed)
    means_a = rng.choice(a, size=(resamples, len(a))).mean(1)
    means_b = rng.choice(b, size=(resamples, len(b))).mean(1)
    low, high = np.percentile(means_a - means_b, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="Hopper-v4")
    parser.add_argument("--seeds", type=int, default=8, help="agents: seeds 0..N-1")
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "population_vs_single")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "population_vs_single.json")
    args = parser.parse_args()
    common = ["--task", args.task, "--shape", "step", "--steps", str(args.steps),
              "--eval-episodes", str(args.eval_episodes)]
    population_seconds = klip_train([*common, "--seeds", f"0-{args.seeds - 1}",
                                     "--out", str(args.out / "population")])
    population = np.array([final_return(args.out / "population" / f"s{seed}")
                           for seed in range(args.seeds)])
    single_seconds = 0.0
    singles = []
    for seed in range(args.seeds):
        out = args.out / f"single-s{seed}"
        single_seconds += klip_train([*common, "--seed", str(seed), "--out", str(out)])
        singles.append(final_return(out))
    single = np.array(singles)
    low, high = bootstrap_difference_ci(population, single)
    report = {
        "task": args.task, "seeds": args.seeds, "steps": args.steps,
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


if __name__ == "__main__":
    main()
