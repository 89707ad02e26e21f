"""A markdown table of `population_speed.py` results: one or more JSON files side by side.

    .venv/bin/python benchmarks/speed_table.py before=benchmarks/results/one-engine/before.json \\
        after=benchmarks/results/one-engine/after.json

Each row is a population size N of the first task; each column group one labelled file:
agent-steps/s, its ratio to SB3 timed in the same invocation, the update's and the collection's
microseconds per agent-step, the fraction of the simulation-only rate and the peak RSS.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(arguments: list[str]) -> None:
    labelled = [argument.split("=", 1) for argument in arguments]
    results = {label: json.loads(Path(path).read_text())["results"][0] for label, path in labelled}
    first = next(iter(results.values()))
    columns = ["agent-steps/s (x SB3)", "update us/agent-step", "collect us/agent-step", "of sim-only",
               "peak RSS MiB"]
    header = "| N | " + " | ".join(f"{label}: {column}" for label in results for column in columns) + " |"
    print(f"Hopper-v4 ({first['env_backend']}), {first['rows'][0]['frames_per_agent']} steps per agent; "
          "SB3 in each invocation: " + ", ".join(f"{label} {r['sb3']['steps_per_s']:.0f} steps/s"
                                                  for label, r in results.items()))
    print()
    print(header)
    print("|---|" + "---|" * len(columns) * len(results))
    for index, row in enumerate(first["rows"]):
        cells = []
        for result in results.values():
            other = result["rows"][index]
            agent_steps = other["agents"] * other["frames_per_agent"]
            cells += [f"{other['agent_steps_per_s']:,.0f} ({other['vs_sb3']:.2f}x)",
                      f"{other['split_seconds']['update'] / agent_steps * 1e6:.1f}",
                      f"{other['split_seconds']['collect'] / agent_steps * 1e6:.1f}",
                      f"{other['of_simulation']:.0%}", f"{other['peak_rss_mib']:.0f}"]
        print(f"| {row['agents']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
