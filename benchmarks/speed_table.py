"""A markdown table of `population_speed.py` results: one or more JSON files side by side.

    .venv/bin/python benchmarks/speed_table.py before=benchmarks/results/one-engine/before.json \\
        after=benchmarks/results/one-engine/after.json

Each row is a population size N (of any file); each column group one labelled file:
agent-steps/s, its ratio to SB3 timed in the same invocation, the update's and the collection's
microseconds per agent-step, the fraction of the simulation-only rate and the peak RSS.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cells(row: dict | None) -> list[str]:
    if row is None:
        return ["—"] * 5
    agent_steps = row["agents"] * row["frames_per_agent"]
    return [f"{row['agent_steps_per_s']:,.0f} ({row['vs_sb3']:.2f}x)",
            f"{row['split_seconds']['update'] / agent_steps * 1e6:.1f}",
            f"{row['split_seconds']['collect'] / agent_steps * 1e6:.1f}",
            f"{row['of_simulation']:.0%}", f"{row['peak_rss_mib']:.0f}"]


def main(arguments: list[str]) -> None:
    labelled = [argument.split("=", 1) for argument in arguments]
    results = {label: json.loads(Path(path).read_text())["results"][0] for label, path in labelled}
    first = next(iter(results.values()))
    columns = ["agent-steps/s (x SB3)", "update us/agent-step", "collect us/agent-step", "of sim-only",
               "peak RSS MiB"]
    header = "| N | " + " | ".join(f"{label}: {column}" for label in results for column in columns) + " |"
    print(f"{first['task']} ({first.get('env_backend') or 'gymnasium'}), "
          f"{first['rows'][0]['frames_per_agent']} steps per agent; SB3 in each invocation: "
          + ", ".join(f"{label} {r['sb3']['steps_per_s']:.0f} steps/s" for label, r in results.items()))
    print()
    print(header)
    print("|---|" + "---|" * len(columns) * len(results))
    # Rows by population size: files with other sizes show a dash where they have none.
    sizes = sorted({row["agents"] for result in results.values() for row in result["rows"]})
    for size in sizes:
        cells = []
        for result in results.values():
            cells += _cells(next((row for row in result["rows"] if row["agents"] == size), None))
        print(f"| {size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
