"""What the discrete checks' 1M-step runs had reached at shorter budgets, beside the paper.

    .venv/bin/python results/paper-table/discrete_budget.py > results/paper-table/discrete_budget.md

The paper states no step budget for CartPole-v1 and LunarLander-v3. Per entry (`clip`, `kl_fixed`,
`kl_adaptive`; `step` is bitwise `clip`) and budget B: the mean return of the episodes that ended
in (0.9 B, B] of this grid's 1M-step runs (the final-return rule applied at B), mean ± std over
seeds, and its distance to the published mean in paper standard deviations. A proxy, not a run
of B steps: the learning rate anneals over 1M steps here, over B steps in a run of B
(`discrete-100k/` holds real 100k-step runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from klip.algos.run import read_episode_returns
from klip.studies.compare_sections import PAPER, PAPER_NAMES

RUNS = Path(__file__).resolve().parent / "runs"
TASKS = ("CartPole-v1", "LunarLander-v3")
BUDGETS = (25_000, 50_000, 100_000, 200_000, 300_000, 500_000, 1_000_000)


def window_return(run: Path, budget: int) -> float:
    frames, returns = np.array(read_episode_returns(run / "episodes.csv"), dtype=float).T
    selected = returns[(frames > 0.9 * budget) & (frames <= budget)]
    return float(selected.mean()) if len(selected) else float("nan")


def main() -> None:
    print("Output of `.venv/bin/python results/paper-table/discrete_budget.py` (what it computes: its "
          "docstring). A proxy, not runs of each budget: the learning rate anneals over 1M steps here.")
    budgets = " | ".join(f"{budget // 1000}k" for budget in BUDGETS)
    for task in TASKS:
        print(f"\n{task}: mean ± std over seeds (distance to the paper in paper stds)\n")
        print(f"| entry | paper | {budgets} |")
        print("|---|---|" + "---|" * len(BUDGETS))
        for entry, published in PAPER.items():
            runs = [run for run in sorted((RUNS / task / entry).glob("s*")) if (run / "cell.json").is_file()]
            if not runs:
                continue
            paper_mean, paper_std = published[task]
            cells = []
            for budget in BUDGETS:
                values = np.array([window_return(run, budget) for run in runs])
                mean, std = float(np.nanmean(values)), float(np.nanstd(values, ddof=1))
                cells.append(f"{mean:.0f} ± {std:.0f} ({(mean - paper_mean) / paper_std:+.1f})")
            published_text = f"{paper_mean:.0f} ± {paper_std:.0f}"
            print(f"| {PAPER_NAMES[entry]} | {published_text} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
