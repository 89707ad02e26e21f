"""Which of the search's leaders goes on to the held-out and fresh-seed grids.

The best value of 143 noisy trials is biased upwards (each trial's value rests on two seeds a
task), so the study's five best trials are trained again on three tuning seeds the search never
used (102-104, at the search's 300k steps; the `recheck` grid, beside `step` on the same seeds),
and the one with the highest IQM of normalised scores there is the discovered gate. This prints
its entry for `klip compare` (`study:increments-3task#N@...`), and why, on stderr.

    .venv/bin/python results/discovery/increments-3task/pick.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from klip.studies.compare_report import collect, normalised_scores
from klip.studies.entries import Entry
from klip.studies.references import random_scores
from klip.studies.statistics import iqm

HERE = Path(__file__).resolve().parent
RECHECK = HERE / "recheck"
STUDY = "increments-3task"


def pooled_iqm(by_task: dict[str, np.ndarray]) -> float:
    """IQM of all of an entry's normalised scores, every task's runs together (as the reports')."""
    return float(iqm(np.concatenate(list(by_task.values()))))


def choose(candidates: list[Entry], scores: dict[str, dict[str, np.ndarray]]) -> list[Entry]:
    """The candidates by IQM on the re-check seeds, best first (a tie keeps the search's order)."""
    return sorted(candidates, key=lambda entry: -pooled_iqm(scores[entry.label]))


def main(grid: Path = RECHECK) -> int:
    results = collect(grid)
    spec = results.spec
    missing = [key for key, state in results.states.items() if state.status != "done"]
    if missing:
        print(f"pick.py: the re-check grid is not finished ({len(missing)} of {len(results.states)} cells "
              "to go); run it first", file=sys.stderr)
        return 1
    tasks, left_out, scores = normalised_scores(results, random_scores(grid, spec.tasks, spec.steps))
    if left_out or not tasks:
        print(f"pick.py: `step` does not beat the random policy on {', '.join(left_out) or 'any task'} "
              "in the re-check grid: no normalised scores to choose by", file=sys.stderr)
        return 1
    ranked = choose([entry for entry in spec.entries if "trial" in entry.source], scores)
    for entry in ranked:
        print(f"trial {entry.source['trial']}: IQM {pooled_iqm(scores[entry.label]):.3f} on the re-check "
              f"seeds (its search value {entry.source['value']:.3f})", file=sys.stderr)
    chosen = ranked[0]
    print(f"study:{STUDY}#{chosen.source['trial']}@{chosen.source['storage']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
