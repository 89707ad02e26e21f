"""Same learning on EnvPool: one population on `--env-backend envpool` against one on gymnasium.

    .venv/bin/python benchmarks/envpool_vs_gymnasium.py     # 8 seeds x 300k Hopper-v4, step shape

The gymnasium arm is the population that `benchmarks/population_vs_single.py` trained (same
seeds, budget and protocol; trained here if it is missing), the EnvPool arm is `klip train
--seeds 0-7 --shape step --env-backend envpool`. Final returns (mean raw return of the
episodes ending in the last 10% of training): mean +- std per arm and a percentile-bootstrap
95% CI of the difference of means (EnvPool - gymnasium), with both arms' learning curves in a
figure beside --json. EnvPool seeds its simulators with its own generator, so the arms share
seeds but not episodes: the question is whether they differ beyond seed noise.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from population_vs_single import (
    ROOT,
    arm_arguments,
    bootstrap_difference_ci,
    final_return,
    klip_train,
    plot_arms,
    step_training_arguments,
)


def population(common: list[str], out: Path, seeds: int, backend: str) -> tuple[list[Path], float]:
    """The population's agent directories, trained unless already there; and the seconds it took."""
    directories = [out / f"s{seed}" for seed in range(seeds)]
    if all((d / "summary.json").is_file() for d in directories):
        return directories, 0.0
    if out.exists():
        shutil.rmtree(out)  # interrupted: start again rather than mix two runs
    seconds = klip_train([*common, "--seeds", f"0-{seeds - 1}", "--env-backend", backend, "--out", str(out)])
    return directories, seconds


def main() -> None:
    parser = arm_arguments(__doc__, "envpool_vs_gymnasium")
    parser.add_argument("--gymnasium-out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "population_vs_single" / "population")
    args = parser.parse_args()
    common = step_training_arguments(args)
    arms = {}
    seconds = {}
    for backend, out in (("gymnasium", args.gymnasium_out), ("envpool", args.out / "envpool")):
        arms[backend], seconds[backend] = population(common, out, args.seeds, backend)
    returns = {backend: np.array([final_return(d) for d in directories])
               for backend, directories in arms.items()}
    low, high = bootstrap_difference_ci(returns["envpool"], returns["gymnasium"])
    report = {
        "task": args.task, "seeds": args.seeds, "steps": args.steps,
        "command": " ".join([".venv/bin/python", "benchmarks/envpool_vs_gymnasium.py", *sys.argv[1:]]),
        "seconds_note": "0 for an arm means it was already trained by an earlier invocation",
        **{backend: {"final_returns": values.tolist(), "mean": float(values.mean()),
                     "std": float(values.std(ddof=1)), "seconds": seconds[backend],
                     "runs": str(arms[backend][0].parent.relative_to(ROOT))}
           for backend, values in returns.items()},
        "difference_of_means": float(returns["envpool"].mean() - returns["gymnasium"].mean()),
        "bootstrap_95ci": [low, high],
        "ci_contains_zero": low <= 0 <= high,
    }
    for backend in arms:
        print(f"{backend:9s}: {report[backend]['mean']:.1f} +- {report[backend]['std']:.1f} "
              f"({seconds[backend]:.0f} s, one process)")
    print(f"difference of means {report['difference_of_means']:.1f}, bootstrap 95% CI "
          f"[{low:.1f}, {high:.1f}]: {'contains' if report['ci_contains_zero'] else 'EXCLUDES'} 0")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    figure = plot_arms(args.json.with_suffix(".png"), arms, args.steps,
                       f"{args.task}, step: a population on EnvPool vs on gymnasium")
    print(f"written to {args.json} and {figure}")


if __name__ == "__main__":
    main()
