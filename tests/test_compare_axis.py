"""`klip compare axis`: grids that differ in one option, read side by side."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from klip.cli import main
from klip.studies.compare import GridSpec, parse_entries, run_grid
from klip.studies.compare_axis import read_axis, write_axis_report
from klip.studies.compare_results import collect
from klip.studies.entries import CompareError
from klip.studies.statistics import normalise, probability_of_improvement

BASE = {"rollout_steps": 256, "minibatch_size": 64, "eval_episodes": 0, "checkpoint_every": 1}
RANDOM = -5000.0  # far below any Pendulum return, so every task is normalised


def grid(out, epochs: int | None, steps: int = 512):
    base = dict(BASE) if epochs is None else {**BASE, "epochs": epochs}
    spec = GridSpec(parse_entries(["step", "sigmoid"], out), ["Pendulum-v1"], [0, 1], steps, base).validate()
    run_grid(spec, out, stream=io.StringIO(), write_report=False)
    (out / "random_scores.json").write_text(json.dumps({"Pendulum-v1": {"return_mean": RANDOM}}))
    return out


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    root = tmp_path_factory.mktemp("axis")
    return grid(root / "e2", 2), grid(root / "default", None)


def test_the_axis_is_the_one_option_the_grids_differ_in_sorted_by_value(grids):
    two, default = grids
    axis = read_axis([two, default])
    assert axis.option == "epochs" and axis.values == [2, 10]  # 10: TrainConfig's default
    assert [g.out for g in axis.grids] == [two, default]
    assert axis.entries == ["step", "sigmoid"] and axis.tasks == ["Pendulum-v1"]


def test_report_numbers_are_the_statistics_of_the_runs(grids, tmp_path):
    two, default = grids
    report = write_axis_report([default, two], tmp_path / "out", n_resamples=200).read_text()
    assert report.startswith("# Along epochs: 2, 10")
    returns = {(g, label): np.array(list(collect(g).returns["Pendulum-v1"][label].values()))
               for g in (two, default) for label in ("step", "sigmoid")}
    reference = returns[(two, "step")].mean()
    scores = {key: {"Pendulum-v1": normalise(value, RANDOM, reference)} for key, value in returns.items()}
    # step at the first setting is the reference: its IQM (the mean of two runs) is 1.
    assert "| `step` | 1.00 [" in report
    degradation = probability_of_improvement(scores[(default, "step")], scores[(two, "step")],
                                             n_resamples=200)
    assert f"| `step` | {degradation.format()} |" in report
    against_step = probability_of_improvement(scores[(default, "sigmoid")], scores[(default, "step")],
                                              n_resamples=200)
    assert against_step.format() in report
    assert (tmp_path / "out" / "axis.png").stat().st_size > 0


def test_completeness_counts_only_the_cells_along_the_axis(grids, tmp_path):
    two, default = grids
    report = write_axis_report([two, default], tmp_path / "done", n_resamples=50).read_text()
    assert "8 of 8 cells done (the cells along the axis" in report and "**Partial**" not in report
    # A grid with an entry the other grid lacks (not on the axis, never trained) and a seed of
    # an axis entry whose run was removed: only the latter counts.
    wider = tmp_path / "wider"
    shutil.copytree(default, wider)
    spec = json.loads((wider / "grid.json").read_text())
    spec["entries"].append({**spec["entries"][0], "label": "linear_ramp", "spec": "linear_ramp",
                            "options": {"loss": "klip", "shape": "linear_ramp", "shape_params": {}}})
    (wider / "grid.json").write_text(json.dumps(spec))
    grid_spec = collect(wider).spec
    removed = next(cell for cell in grid_spec.cells() if cell.entry.label == "sigmoid")
    shutil.rmtree(grid_spec.cell_dir(wider, removed))
    report = write_axis_report([two, wider], tmp_path / "partial", n_resamples=50).read_text()
    assert "7 of 8 cells done" in report
    assert f"**Partial**: `{wider}` (1 of its 4 cells on this axis not done)." in report


def test_grids_that_differ_in_more_or_less_than_one_option_are_refused(grids, tmp_path):
    two, _ = grids
    with pytest.raises(CompareError, match="at least two grid directories"):
        read_axis([two])
    with pytest.raises(CompareError, match="differ in exactly one option; they differ in nothing"):
        read_axis([two, two])
    budget = grid(tmp_path / "short", 2, steps=256)
    with pytest.raises(CompareError, match="different budgets"):
        read_axis([two, budget])


def test_cli_writes_the_report_and_refuses_in_one_line(grids, tmp_path, capsys):
    two, default = grids
    assert main(["compare", "axis", str(two), str(default), "--out", str(tmp_path / "r"),
                 "--resamples", "100"]) == 0
    assert (tmp_path / "r" / "report.md").is_file()
    assert main(["compare", "axis", str(two), "--out", str(tmp_path / "r2")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["klip: error: give at least two grid directories"]


def test_the_reading_names_a_change_only_where_its_interval_excludes_one_half():
    from klip.studies.compare_axis import Axis, axis_reading
    from klip.studies.statistics import Estimate

    axis = Axis("epochs", [10, 40], [], ["step", "sig"], ["Hopper-v4"])
    vs_first = {"step": [None, Estimate(0.2, 0.05, 0.4)], "sig": [None, Estimate(0.45, 0.2, 0.7)]}
    vs_step = {"step": [None, None], "sig": [Estimate(0.5, 0.3, 0.7), Estimate(0.8, 0.6, 0.95)]}
    text = "\n".join(axis_reading(axis, vs_step, vs_first))
    assert "- `step` against itself at epochs = 10: at 40: degrades, P = 0.20 [0.05, 0.40]." in text
    assert "- `sig` against itself at epochs = 10: at 40: no change detected, P = 0.45 [0.20, 0.70]." in text
    assert "- At epochs = 10: nothing beats `step`." in text
    assert "- At epochs = 40: above `step`: `sig` (0.80 [0.60, 0.95])." in text
