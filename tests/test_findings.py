"""results/README.md, the findings page, is the reports' own readings (scripts/findings.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("findings", ROOT / "scripts" / "findings.py")
findings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(findings)


def test_the_committed_page_is_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "findings.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_page_quotes_each_reading_and_collects_the_negative_results(tmp_path: Path) -> None:
    zoo = tmp_path / "results" / "zoo"
    zoo.mkdir(parents=True)
    (zoo / "report.md").write_text(
        "# Comparison\n\n## Completeness\n\n75 of 375 cells done.\n\n## Reading\n\nPreamble.\n\n"
        "- Hopper-v4: above `step`: `spo` (120 [10, 230]).\n- Ant-v4: nothing beats `step`.\n"
        "- Humanoid-v4 (1 of 14 entries so far): nothing beats `step`.\n\n"
        "## Training diagnostics\n\n- not a reading\n")
    axis = tmp_path / "results" / "epochs" / "axis"
    axis.mkdir(parents=True)
    (axis / "report.md").write_text(
        "# Along epochs\n\n105 of 180 cells done (the cells along the axis: ...).\n\n## Reading\n\n"
        "- `step` against itself at epochs = 10: at 40: degrades, P = 0.20 [0.05, 0.40].\n")
    text = findings.page(tmp_path)
    assert "[The report](zoo/report.md): 75 of 375 cells done." in text
    assert "- Hopper-v4: above `step`: `spo` (120 [10, 230])." in text and "not a reading" not in text
    negatives = text.split("## Negative results")[1]
    assert "Ant-v4: nothing beats `step`." in negatives and "degrades, P = 0.20" in negatives
    # A grid still running says how far it is, an axis report as a comparison report does.
    assert "- By task (so far: 75 of 375 cells done): Ant-v4: nothing beats `step`." in negatives
    assert "[The report](epochs/axis/report.md): 105 of 180 cells done." in text
    assert "- By number of epochs (so far: 105 of 180 cells done): `step` against itself" in negatives
    assert "spo" not in negatives and "Humanoid-v4" not in negatives  # partial: quoted, not concluded
    assert "- Humanoid-v4 (1 of 14 entries so far): nothing beats `step`." in text
    held_out = text.split("## A discovered gate")[1].split("## ")[0]
    assert "the study has not started." in held_out and "Not run yet." in held_out


def test_a_section_whose_grids_are_under_way_says_how_far_each_is(tmp_path: Path) -> None:
    def epochs_section() -> str:
        return findings.page(tmp_path).split("## By number of epochs")[1].split("## ")[0]

    assert "Not run yet." in epochs_section()
    e20 = tmp_path / "results" / "epochs" / "e20"
    e20.mkdir(parents=True)
    (e20 / "report.md").write_text("# Comparison\n\n## Completeness\n\n15 of 60 cells done.\n")
    text = epochs_section()
    assert "Not run yet." not in text
    assert "- the 20-epoch grid: [its report](epochs/e20/report.md), 15 of 60 cells done." in text
    assert "- the 40-epoch grid: not started." in text


def test_the_page_shows_each_reports_figure_and_the_discovered_gate_where_they_exist(tmp_path: Path) -> None:
    zoo = tmp_path / "results" / "zoo"
    (zoo / "figures").mkdir(parents=True)
    (zoo / "report.md").write_text("## Reading\n\n- Ant-v4: nothing beats `step`.\n")
    axis = tmp_path / "results" / "epochs" / "axis"
    axis.mkdir(parents=True)
    (axis / "report.md").write_text("## Reading\n\n- none yet\n")
    text = findings.page(tmp_path)
    assert "](zoo/figures/aggregates.png)" not in text and "best_gate.png" not in text
    (zoo / "figures" / "aggregates.png").write_bytes(b"png")
    (axis / "axis.png").write_bytes(b"png")
    gate = tmp_path / findings.BEST_GATE
    gate.parent.mkdir(parents=True)
    gate.write_bytes(b"png")
    (tmp_path / findings.GENERATIONS).write_bytes(b"png")
    text = findings.page(tmp_path)
    assert "](zoo/figures/aggregates.png)" in text and "](epochs/axis/axis.png)" in text
    held_out = text.split("## A discovered gate")[1].split("## ")[0]
    assert "](discovery/increments-3task/report/best_gate.png)" in held_out
    assert "](discovery/increments-3task/report/generations.png)" in held_out


HELD_OUT_REPORT = """# Comparison

| entry | training options |
|---|---|
| `step` | `loss=klip`, `shape=step` |
| `study-increments-3task` | `loss=klip`, `shape_file=shapes/study-increments-3task.json` |

## Completeness

40 of 40 cells done.

## Across tasks

| entry | IQM [95% CI] | mean [95% CI] | P(entry > step) [95% CI] | runs |
|---|---|---|---|---|
| `step` | 0.99 [0.91, 1.09] | 1.00 [0.91, 1.09] | — | 2/2 tasks, 20 runs |
| `{label}` | {iqm} | 1.21 [1.07, 1.36] | 0.70 [0.54, 0.83] | 2/2 tasks, 20 runs |

## Reading

- Ant-v4: nothing beats `step`.
"""


def test_the_held_out_iqm_is_the_across_tasks_row_and_the_moonshot_is_said_plainly(tmp_path: Path) -> None:
    report = tmp_path / findings.HELD_OUT
    report.parent.mkdir(parents=True)
    # The entry as pick.py names the chosen trial, and as a plain study entry names the best.
    for iqm, met, label in (("1.08 [1.02, 1.24]", True, "study-increments-3task-t131"),
                            ("1.04 [0.97, 1.15]", False, "study-increments-3task")):
        report.write_text(HELD_OUT_REPORT.replace("{iqm}", iqm).replace("{label}", label))
        text = findings.page(tmp_path)
        held_out = text.split("## A discovered gate")[1].split("\n## ")[0]
        assert f"(`step` = 1): {iqm}; its 95% interval " in held_out
        assert ("the discovered gate beats `step`." in held_out) == met
        assert ("the discovered gate is not shown to beat `step`" in held_out) == (not met)
        negatives = text.split("## Negative results")[1]
        assert (f"IQM {iqm}" in negatives) == (not met)


def test_the_page_says_what_each_job_cost_as_its_report_states_it(tmp_path: Path) -> None:
    zoo = tmp_path / "results" / "zoo"
    zoo.mkdir(parents=True)
    (zoo / "report.md").write_text(
        "Training cost of the 75 finished cells trained here: 8.9 process-hours (wall-clock ...).\n")
    e20 = tmp_path / "results" / "epochs" / "e20"
    e20.mkdir(parents=True)
    (e20 / "report.md").write_text(
        "Training cost of the 45 finished cells trained here: 4.9 process-hours, plus 0.7 process-hours "
        "of 10 runs moved aside and trained again (wall-clock ...).\n")
    study = tmp_path / findings.DISCOVERY / "report"
    study.mkdir(parents=True)
    (study / "summary.json").write_text('{"training_cost": {"process_hours": 6.34, "runs": 208}}')
    text = findings.page(tmp_path)
    spent = text.split("## What it cost")[1].split("## ")[0]
    assert "- the zoo: 8.9 process-hours over 75 cells ([its report](zoo/report.md))" in spent
    assert ("- the epochs axis, 20 epochs: 4.9 process-hours over 45 cells, plus 0.7 over 10 runs moved "
            "aside and trained again ([its report](epochs/e20/report.md))") in spent
    assert "- the discovery study: 6.3 process-hours over 208 runs" in spent
    assert "40 epochs" not in spent  # no report, no line
    assert "## What it cost" not in findings.page(tmp_path / "empty")


def test_each_section_quotes_its_reports_table_with_the_intervals(tmp_path: Path) -> None:
    axis = tmp_path / "results" / "epochs" / "axis"
    axis.mkdir(parents=True)
    (axis / "report.md").write_text(
        "# Along epochs\n\n## Final return per task\n\n| entry | epochs = 10 |\n|---|---|\n| raw | 1 |\n\n"
        "## Across tasks\n\nNormalised ...\n\nIQM of normalised scores [95% CI]:\n\n"
        "| entry | epochs = 10 | epochs = 40 |\n|---|---|---|\n"
        "| `step` | 1.00 [0.9, 1.1] | 0.80 [0.7, 0.9] |\n\n"
        "P(entry > `step`) ...:\n\n| entry | epochs = 10 |\n|---|---|\n| `spo` | 0.4 [0.1, 0.7] |\n\n"
        "## Reading\n\n- At epochs = 40: nothing beats `step`.\n")
    text = findings.page(tmp_path)
    epochs = text.split("## By number of epochs")[1].split("\n## ")[0]
    assert "| `step` | 1.00 [0.9, 1.1] | 0.80 [0.7, 0.9] |" in epochs
    assert "| raw | 1 |" not in epochs and "| `spo` | 0.4" not in epochs  # that table only
    assert findings.quoted_table("## Across tasks\n\nno table\n", "Across tasks", None) == []


def test_the_discovery_status_gives_each_generations_mean_and_what_its_level_means(tmp_path: Path) -> None:
    import optuna

    database = tmp_path / findings.DISCOVERY / "study.db"
    database.parent.mkdir(parents=True)
    study = optuna.create_study(storage=f"sqlite:///{database}", direction="maximize")
    for generation, values in ((0, [1.0, 1.3]), (1, [1.4, 1.6])):
        for value in values:
            trial = study.ask()
            study._storage.set_trial_system_attr(trial._trial_id, "cma:generation", generation)
            study.tell(trial, value)
    status = findings.study_status(tmp_path)
    assert "4 of its 143 trials complete (CMA-ES generation 1 drawn)" in status
    assert "best so far: trial 3, objective 1.60" in status
    assert "Mean objective by generation: 0: 1.15, 1: 1.50." in status
    assert "Generation 0, drawn around `step`'s vector, already averages above 1" in status


def test_the_held_out_section_links_the_recheck_that_chose_the_gate(tmp_path: Path) -> None:
    recheck = tmp_path / findings.RECHECK
    recheck.parent.mkdir(parents=True)
    recheck.write_text("# Comparison\n\n## Completeness\n\n12 of 54 cells done.\n")
    held_out = findings.page(tmp_path).split("## A discovered gate")[1].split("\n## ")[0]
    assert "[the re-check](discovery/increments-3task/recheck/report.md), 12 of 54 cells done." in held_out
