"""Write the figures that the results' prose quotes, from the committed data, not by hand.

    .venv/bin/python scripts/results_prose.py          # rewrite each figure in its prose
    .venv/bin/python scripts/results_prose.py --check  # exit 1 if the prose says otherwise
    .venv/bin/python scripts/results_prose.py --show   # print each figure and its source

Each figure is a function of the data (summary.json files, a study database) and a place in
the prose, found by a pattern around it. `results/paper-table/report.md` includes
`notes.md` (its "Investigation"), so a figure of the notes is written in both. A mean ± std is
the sample standard deviation (ddof 1) over seeds, as the reports write it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper-table"
NOTES = [PAPER / "notes.md", PAPER / "report.md"]
DISCOVERY = ROOT / "results" / "discovery" / "learned-3task"
SIGMOID = ROOT / "results" / "studies" / "sigmoid-2task"


def final_return(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["final_return_last10pct"]


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def walker2d_fixed_beta() -> str:
    returns = [final_return(PAPER / "runs" / "Walker2d-v4" / "kl_fixed" / f"s{seed}") for seed in range(5)]
    return f"Ours, seeds 0-4: {', '.join(f'{r:.1f}' for r in returns)} = **{mean_std(returns)}**"


def halfcheetah_flipped() -> str:
    """PPO-Clip's HalfCheetah seeds whose final gait runs on its back (halfcheetah_posture.py)."""
    posture = json.loads((PAPER / "halfcheetah_posture.json").read_text())
    flipped = [PAPER / row["run"] for row in posture
               if "/clip/" in row["run"] and row["fraction_on_back"] > 0.5]
    return f"flipped seeds alone: {mean_std([final_return(run) for run in flipped])};"


def ant_update_mean() -> str:
    runs = sorted((ROOT / "results" / "ablations" / "ant-kl-adaptive" / "runs" / "Ant-v4"
                   / "kl_adaptive_kl_measure=update_mean").glob("s*"))
    seeds = [int(run.name[1:]) for run in runs]
    figure = mean_std([final_return(run) for run in runs])
    return f"(`kl_measure=update_mean`) | {seeds[0]}-{seeds[-1]} | {figure} |"


def discovery_batches() -> str:
    """Mean (max) objective per batch of 12 trials: the random first batch, then CMA-ES generations."""
    database = DISCOVERY / "study.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT t.number, v.value FROM trials t JOIN trial_values v ON t.trial_id = v.trial_id "
            "WHERE t.state = 'COMPLETE' ORDER BY t.number").fetchall()
    batches: dict[int, list[float]] = {}
    for number, value in rows:
        batches.setdefault(number // 12, []).append(value)
    parts = [f"{'random batch' if batch == 0 else f'generation {batch - 1}'} "
             f"{statistics.mean(values):.2f} ({max(values):.2f})"
             for batch, values in sorted(batches.items())]
    return "Mean (max) objective: " + ", ".join(parts) + "."


def sigmoid_paired() -> str:
    """Seeds on which the study's best beats `step` in the confirmation grid, paired by seed."""
    confirm = SIGMOID / "confirm" / "runs"
    counts = []
    for task in ("Hopper-v4", "HalfCheetah-v4"):
        seeds = sorted(run.name for run in (confirm / task / "step").glob("s*"))
        ahead = sum(final_return(confirm / task / "study-sigmoid-2task" / seed)
                    > final_return(confirm / task / "step" / seed) for seed in seeds)
        counts.append(f"on {task.split('-')[0]} in {ahead} of {len(seeds)}")
    return f"The means favour the wider band (paired by seed, the best is ahead {' and '.join(counts)}),"


def cartpole_at_cap() -> str:
    runs = sorted((PAPER / "runs" / "CartPole-v1").glob("*/s*"))
    at_cap = sum(final_return(run) == 500.0 for run in runs)
    entries = len({run.parent.name for run in runs})
    return (f"{at_cap} of {len(runs)} CartPole-v1 runs ({entries} entries, five seeds) end at the task's "
            "cap of 500.")


def lunarlander_100k() -> str:
    runs = PAPER / "discrete-100k" / "runs" / "LunarLander-v3"
    figures = [mean_std([final_return(run) for run in sorted((runs / entry).glob("s*"))])
               for entry in ("clip", "kl_fixed", "kl_adaptive")]
    return (f"In the real 100k-step runs LunarLander-v3 ends at {figures[0]} (PPO-Clip), {figures[1]} "
            f"(fixed beta) and {figures[2]} (adaptive beta).")


@dataclass
class Figure:
    name: str
    files: list[Path]
    pattern: str  # matches the text that `render` writes, whatever its numbers
    render: Callable[[], str]


NUMBER = r"-?[\d.]+"
FIGURES = [
    Figure("Walker2d-v4 fixed beta, seeds 0-4", NOTES,
           rf"Ours, seeds 0-4: (?:{NUMBER}, ){{4}}{NUMBER} = \*\*{NUMBER} ± {NUMBER}\*\*"
           r"(?=\s+against the paper's 3995)",
           walker2d_fixed_beta),
    Figure("HalfCheetah-v4 PPO-Clip, flipped seeds", NOTES,
           rf"flipped seeds alone: {NUMBER} ± {NUMBER};", halfcheetah_flipped),
    Figure("Ant-v4 adaptive beta, kl_measure=update_mean", NOTES,
           rf"\(`kl_measure=update_mean`\) \| \d+-\d+ \| {NUMBER} ± {NUMBER} \|", ant_update_mean),
    Figure("CartPole-v1 runs at the cap", NOTES,
           r"\d+ of \d+ CartPole-v1 runs \(\d+ entries, five seeds\) end at the task's cap of 500\.",
           cartpole_at_cap),
    Figure("LunarLander-v3 at 100k steps", NOTES,
           rf"In the real 100k-step runs LunarLander-v3 ends at {NUMBER} ± {NUMBER} \(PPO-Clip\), "
           rf"{NUMBER} ± {NUMBER}\s+\(fixed beta\) and {NUMBER} ± {NUMBER} \(adaptive beta\)\.",
           lunarlander_100k),
    Figure("learned-3task, objective per batch", [DISCOVERY / "README.md"],
           r"Mean \(max\) objective: random batch \d\.\d\d \(\d\.\d\d\)"
           r"(?:,\s+generation \d+ \d\.\d\d\s+\(\d\.\d\d\))*\.", discovery_batches),
    Figure("sigmoid-2task confirmation, paired by seed", [SIGMOID / "README.md"],
           r"The (?:direction favours|means favour) the wider band \([^)]*\),", sigmoid_paired),
]


def main(argv: list[str]) -> int:
    stale = []
    for figure in FIGURES:
        text = figure.render()
        if "--show" in argv:
            print(f"{figure.name}: {text}")
        for path in figure.files:
            prose = path.read_text()
            found = re.findall(figure.pattern, prose)
            if len(found) != 1:
                stale.append(f"{path.relative_to(ROOT)}: {figure.name}: "
                             f"the pattern matches {len(found)} times")
                continue
            if " ".join(found[0].split()) == " ".join(text.split()):
                continue
            if "--check" in argv:
                stale.append(f"{path.relative_to(ROOT)}: {figure.name}: "
                             f"says {found[0]!r}, the data give {text!r}")
            elif "--show" not in argv:
                path.write_text(prose.replace(found[0], text))
                print(f"wrote {figure.name} into {path.relative_to(ROOT)}")
    for line in stale:
        print(line, file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
