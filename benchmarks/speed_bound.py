"""The fastest an exact population could be: the simulator alone plus the exact update's floor.

    .venv/bin/python benchmarks/speed_bound.py --floor-us 19.2 FILE.json [FILE.json ...]

For each `population_speed.py` result file: the best simulation-only rate it measured (any N),
as microseconds per agent-step, plus `--floor-us` (one agent's exact network kernels per
agent-step, `benchmarks/update_floor.py`), gives an upper bound on agent-steps/s with no
collection overhead, no loss arithmetic, no optimiser and no Python: as a multiple of SB3's
rate timed in the same invocation, the most any exact engine could reach on that stack.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--floor-us", type=float, required=True, help="exact update floor per agent-step")
    args = parser.parse_args()
    print("| result | best simulation-only (us/agent-step) | + update floor | bound (agent-steps/s) | "
          "bound x SB3 | best measured x SB3 |")
    print("|---|---|---|---|---|---|")
    for path in args.files:
        result = json.loads(path.read_text())["results"][0]
        simulation = 1e6 / max(row["simulation_agent_steps_per_s"] for row in result["rows"])
        bound = 1e6 / (simulation + args.floor_us)
        sb3 = result["sb3"]["steps_per_s"]
        best = max(row["vs_sb3"] for row in result["rows"])
        print(f"| {result['task']} ({result.get('env_backend') or 'gymnasium'}) | {simulation:.1f} | "
              f"{simulation + args.floor_us:.1f} | {bound:,.0f} | {bound / sb3:.1f}x | {best:.2f}x |")


if __name__ == "__main__":
    main()
