"""Write results/README.md, klip's findings about the shape of the coefficient, from the reports.

    .venv/bin/python scripts/findings.py            # (re)write results/README.md
    .venv/bin/python scripts/findings.py --check    # exit 1 if results/README.md is not current

Nothing in the page is typed by hand: each section quotes the "Reading" its report generated
from the intervals (`klip compare report`, `klip compare axis`), names the report's
completeness, and gives the command that reproduces it; a job not run yet says so. The
discovered gate's held-out number is the report's own IQM row. Negative results are collected
from the readings ("nothing beats `step`", "degrades").
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = "results/README.md"
DISCOVERY = "results/discovery/increments-3task"
STUDY_ENTRY = "study-increments-3task"  # + "-tN": the trial pick.py chose from the re-check
RECHECK = f"{DISCOVERY}/recheck/report.md"
STUDY_TRIALS = 143
HELD_OUT = f"{DISCOVERY}/heldout/report.md"
NEGATIVE = ("nothing beats `step`", "no entry beats `step`", "degrades")

BEST_GATE = f"{DISCOVERY}/report/best_gate.png"  # `klip study report`'s drawing of the best trial's gate
GENERATIONS = f"{DISCOVERY}/report/generations.png"  # its trials' values by CMA-ES generation
AGGREGATES = "figures/aggregates.png"  # a comparison report's IQM and mean figure, beside its report

# The table each section quotes with its intervals: the report's section and the line that
# introduces the table there (None: the section's first table).
ACROSS_TASKS = ("Across tasks", None)
AXIS_IQMS = ("Across tasks", "IQM of normalised scores")

# (heading, report, how it is made, the report's figure shown here, the table quoted)
SECTIONS = [
    ("By task: every published shape against `step` (the zoo)", "results/zoo/report.md",
     "results/zoo/README.md", AGGREGATES, ACROSS_TASKS),
    ("By number of epochs: 10, 20 and 40 inner epochs", "results/epochs/axis/report.md",
     "results/epochs/README.md", "axis.png", AXIS_IQMS),
    ("A discovered gate on held-out tasks (Ant-v4, Humanoid-v4, 10 seeds)", HELD_OUT,
     f"{DISCOVERY}/README.md", AGGREGATES, ACROSS_TASKS),
    ("The discovered gate on the discovery tasks, fresh seeds", f"{DISCOVERY}/fresh/report.md",
     f"{DISCOVERY}/README.md", AGGREGATES, ACROSS_TASKS),
]

# The grids a section's report is made from, while that report is not written yet.
PARTS = {
    "results/epochs/axis/report.md": [("the 20-epoch grid", "results/epochs/e20/report.md"),
                                      ("the 40-epoch grid", "results/epochs/e40/report.md")],
}

# The jobs behind the page and where each states its training cost.
COSTS = [
    ("the paper's table (its `step` runs are the zoo's and the held-out grid's too)",
     "results/paper-table/report.md"),
    ("the zoo", "results/zoo/report.md"),
    ("the epochs axis, 20 epochs", "results/epochs/e20/report.md"),
    ("the epochs axis, 40 epochs", "results/epochs/e40/report.md"),
    ("the discovery study", f"{DISCOVERY}/report/summary.json"),
    ("the re-check of the study's five best trials", RECHECK),
    ("the held-out grid", HELD_OUT),
    ("the fresh-seed grid", f"{DISCOVERY}/fresh/report.md"),
]
COST_LINE = re.compile(r"Training cost of the (\d+) finished cells trained here: ([\d,.]+) process-hours"
                       r"(?:, plus ([\d,.]+) process-hours of (\d+) runs moved aside)?")


def costs(root: Path) -> list[str]:
    """One line per job that states its cost: the comparison reports' own "Training cost" line,
    the study report's `training_cost`."""
    lines = []
    for name, source in COSTS:
        path = root / source
        if not path.is_file():
            continue
        if path.suffix == ".json":
            cost = json.loads(path.read_text()).get("training_cost")
            if cost:
                lines.append(f"- {name}: {cost['process_hours']:,.1f} process-hours over {cost['runs']} "
                             f"runs ([its report]({Path(source).parent.relative_to('results')}/))")
            continue
        match = COST_LINE.search(path.read_text())
        if match:
            aside = (f", plus {match.group(3)} over {match.group(4)} runs moved aside and trained again"
                     if match.group(3) else "")
            lines.append(f"- {name}: {match.group(2)} process-hours over {match.group(1)} cells{aside} "
                         f"([its report]({Path(source).relative_to('results')}))")
    return lines


def section(text: str, heading: str) -> list[str]:
    """The lines of `## heading` up to the next `## ` heading (empty when absent)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return match.group(1).strip().splitlines() if match else []


def quoted_table(text: str, heading: str, after: str | None) -> list[str]:
    """The first Markdown table of the report's `## heading` section (below the line starting
    with `after`, when given), as it is written there."""
    lines = section(text, heading)
    if after is not None:
        starts = [index for index, line in enumerate(lines) if line.startswith(after)]
        lines = lines[starts[0]:] if starts else []
    table: list[str] = []
    for line in lines:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return table


def completeness(text: str) -> str:
    # A comparison report says "N of M cells done."; an axis report adds which cells it counts.
    match = re.search(r"^(\d+ of \d+ cells done)\b", text, flags=re.M)
    return f"{match.group(1)}." if match else "completeness not stated"


def study_status(root: Path) -> str:
    database = root / DISCOVERY / "study.db"
    if not database.is_file():
        return "the study has not started."
    with sqlite3.connect(database) as connection:
        states = dict(connection.execute("select state, count(*) from trials group by state").fetchall())
        generation = connection.execute(
            "select max(cast(value_json as integer)) from trial_system_attributes "
            "where key = 'cma:generation'").fetchone()[0]
        best = connection.execute(
            "select t.number, v.value from trials t join trial_values v on v.trial_id = t.trial_id "
            "where t.state = 'COMPLETE' order by v.value desc limit 1").fetchone()
        means = connection.execute(
            "select cast(a.value_json as integer) as generation, avg(v.value) from trials t "
            "join trial_values v on v.trial_id = t.trial_id join trial_system_attributes a "
            "on a.trial_id = t.trial_id and a.key = 'cma:generation' where t.state = 'COMPLETE' "
            "group by generation order by generation").fetchall()
    done = states.get("COMPLETE", 0)
    text = f"{done} of its {STUDY_TRIALS} trials complete"
    if states.get("RUNNING"):
        text += f", {states['RUNNING']} running"
    if generation is not None:
        text += f" (CMA-ES generation {generation} drawn)"
    if best is not None:
        text += (f"; best so far: trial {best[0]}, objective {best[1]:.2f} (normalised, `step` = 1 at "
                 "300k steps on the tuning seeds; the best of many noisy trials is biased upwards)")
    text += "."
    if means:
        text += " Mean objective by generation: " + ", ".join(f"{g}: {m:.2f}" for g, m in means) + "."
        if means[0][0] == 0 and means[0][1] > 1:
            # Generation 0 is drawn around `step`'s own vector, which scores exactly 1 here.
            text += (" Generation 0, drawn around `step`'s vector, already averages above 1: either gates "
                     "near `step` do better at 300k steps, or the tuning seeds' `step` runs sit low. The "
                     "objective ranks gates against each other; the grids below compare the gate the "
                     "re-check chooses with `step` on seeds it was not tuned on.")
    return text


def under_way(root: Path, report: str) -> list[str]:
    """What a section whose report is not written yet has so far: its grids' completeness."""
    parts = []
    for name, part in PARTS.get(report, []):
        path = root / part
        if path.is_file():
            link = Path(part).relative_to("results")
            parts.append(f"- {name}: [its report]({link}), {completeness(path.read_text())}")
        else:
            parts.append(f"- {name}: not started.")
    if not any(root.joinpath(part).is_file() for _, part in PARTS.get(report, [])):
        return ["Not run yet."]
    return ["Not written yet; under way:", "", *parts]


def heldout_iqm(text: str) -> str | None:
    """The discovered gate's IQM [95% CI] in the held-out report's "Across tasks" table, as
    written there (the settings table above it has a row of that entry too)."""
    rows = "\n".join(section(text, "Across tasks"))
    match = re.search(rf"^\| `{re.escape(STUDY_ENTRY)}(?:-t\d+)?` \| ([^|]+) \|", rows, flags=re.M)
    return match.group(1).strip() if match else None


def moonshot(iqm: str) -> str:
    """Whether the IQM's 95% interval lies above 1 (`step`), said plainly."""
    low = float(re.search(r"\[\s*(-?[\d.]+)\s*,", iqm).group(1))
    if low > 1:
        return "its 95% interval lies above 1: on the held-out tasks the discovered gate beats `step`."
    return ("its 95% interval does not lie above 1: the discovered gate is not shown to beat `step` "
            "on the held-out tasks.")


def page(root: Path) -> str:
    lines = ["# What klip has found about the shape of the coefficient", "",
             "Written by `scripts/findings.py` from the reports it links (nothing here is typed by hand): "
             "each section quotes its report's table of 95% intervals and the reading the report "
             "generated from them, and says how complete the report's grid is. A claim is made only "
             "where an interval supports it; the intervals are per comparison, not corrected for the "
             "many comparisons made.", ""]
    negatives: list[str] = []
    for heading, report, readme, figure, (table_section, table_after) in SECTIONS:
        held_out = report == HELD_OUT
        how = f"How it is made: [`{readme}`]({Path(readme).relative_to('results')})."
        lines += [f"## {heading}", "", how, ""]
        path = root / report
        if held_out:
            lines += [f"Discovery: {study_status(root)}", ""]
            if (root / RECHECK).is_file():
                link = Path(RECHECK).relative_to("results")
                lines += [f"The five best trials trained again on tuning seeds 102-104 (the leader there "
                          f"is the gate tested below): [the re-check]({link}), "
                          f"{completeness((root / RECHECK).read_text())}", ""]
            for figure_path, caption in ((GENERATIONS, "the search, generation by generation"),
                                         (BEST_GATE, "the discovered gate beside PPO-Clip's")):
                if (root / figure_path).is_file():
                    lines += [f"![{caption}]({Path(figure_path).relative_to('results')})", ""]
        if not path.is_file():
            lines += [*under_way(root, report), ""]
            continue
        text = path.read_text()
        link = Path(report).relative_to("results")
        lines += [f"[The report]({link}): {completeness(text)}", ""]
        table = quoted_table(text, table_section, table_after)
        if table:
            lines += [f"From the report's \"{table_section}\" (normalised scores, `step` = 1, "
                      "95% CIs):", "", *table, ""]
        if held_out:
            iqm = heldout_iqm(text)
            if iqm is not None:
                verdict = moonshot(iqm)
                lines += [f"IQM of the discovered gate's normalised scores over the held-out tasks only "
                          f"(`step` = 1): {iqm}; {verdict}", ""]
                if "not shown" in verdict:
                    negatives.append(f"{heading}: IQM {iqm}; {verdict}")
        reading = [line for line in section(text, "Reading") if line.startswith("- ")]
        lines += reading or ["(The report has no reading yet.)"]
        lines.append("")
        if (path.parent / figure).is_file():
            lines += [f"![{heading}]({(link.parent / figure).as_posix()})", ""]
        # A task compared with only some of the grid's entries so far is no result yet; the rest of
        # a grid still running is listed with how far it is.
        where = heading.split(":")[0]
        counts = re.match(r"(\d+) of (\d+) cells done", completeness(text))
        if counts and counts.group(1) != counts.group(2):
            where += f" (so far: {counts.group(0)})"
        negatives += [f"{where}: {line[2:]}" for line in reading
                      if any(words in line for words in NEGATIVE) and "entries so far)" not in line]
    spent = costs(root)
    if spent:
        lines += ["## What it cost", "",
                  "Process-hours: wall-clock time of one-thread training processes, a population's "
                  "split among its agents, as each report states it (so far, for jobs still running; "
                  "above the CPU time while the machine ran more processes than its cores).", "",
                  *spent, ""]
    lines += ["## Negative results", ""]
    lines += [f"- {line}" for line in negatives] or ["None stated yet."]
    return "\n".join(lines).rstrip() + "\n"


def main(arguments: list[str]) -> int:
    target = ROOT / PAGE
    text = page(ROOT)
    if "--check" in arguments:
        current = target.read_text() if target.is_file() else ""
        if current != text:
            print(f"{PAGE} is not current: run .venv/bin/python scripts/findings.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"written {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
