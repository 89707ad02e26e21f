"""`klip compare`: entries, cell order, resumable grid through an Optuna study, report, bad input."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from klip.algos.train import train
from klip.cli import main
from klip.studies import compare, compare_report
from klip.studies.attributes import ERROR_INTERRUPTED
from klip.studies.compare import (
    Cell,
    CellState,
    CompareError,
    GridSpec,
    check_cell,
    default_storage,
    make_storage,
    open_study,
    parameters_sha256,
    parse_entries,
    parse_entry,
    prepare_grid,
    run_grid,
    run_worker,
)
from klip.studies.compare_report import GridResults, _paper, collect, write_report

BASE = {"rollout_steps": 256, "minibatch_size": 64, "epochs": 1, "eval_episodes": 0,
        "checkpoint_every": 1}
PAPER_TASKS = "Hopper-v4,HalfCheetah-v4,Walker2d-v4,Ant-v4,Humanoid-v4"


def tiny_spec(tmp: Path, entries: str = "clip,step", seeds: int = 1, steps: int = 512) -> GridSpec:
    return GridSpec(parse_entries(entries.split(","), tmp), ["Pendulum-v1"], list(range(seeds)),
                    steps, dict(BASE)).validate()


class Spy:
    """A trainer that records what it was asked to train, then trains it."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.runs: list[compare.CellRun] = []
        self.fail = fail or set()

    def __call__(self, runs):
        self.runs.extend(runs)
        for run in runs:
            if run.cell.key in self.fail:
                raise RuntimeError("simulated crash")
        compare.train_cells(runs)


def trials_by_job(out: Path, spec: GridSpec) -> dict[str, list[optuna.trial.FrozenTrial]]:
    study = optuna.load_study(study_name=spec.study_name, storage=default_storage(out))
    return compare._job_trials(study)


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "g"
    spec = tiny_spec(out, seeds=2)
    spy, stream = Spy(), io.StringIO()
    outcome = run_grid(spec, out, trainer=spy, stream=stream, progress_interval=0.2)
    return out, spec, spy, outcome, stream.getvalue()


# -- entries and order ----------------------------------------------------------------------------


def test_entries_are_losses_shapes_with_parameters_files_and_loss_options(tmp_path):
    clip, step, sigmoid, kl, reverse = parse_entries(
        ["clip", "step", "sigmoid:tau=0.03", "kl_adaptive:kl_target=0.01",
         "kl_fixed:kl_direction=new_old"], tmp_path)
    assert clip.options == {"loss": "clip"} and clip.is_clip and not clip.is_step
    assert step.options == {"loss": "klip", "shape": "step", "shape_params": {}} and step.is_step
    assert sigmoid.options == {"loss": "klip", "shape": "sigmoid", "shape_params": {"tau": 0.03}}
    assert sigmoid.label == "sigmoid:tau=0.03" and sigmoid.dirname == "sigmoid_tau=0.03"
    assert kl.options == {"loss": "kl_adaptive", "kl_target": 0.01}
    assert reverse.options == {"loss": "kl_fixed", "kl_direction": "new_old"}
    assert reverse.label == "kl_fixed:kl_direction=new_old"
    shape_file = tmp_path / "mine.json"
    shape_file.write_text(json.dumps({"name": "sigmoid", "params": {"tau": 0.07}}))
    entry = parse_entry(str(shape_file), tmp_path)
    assert entry.label == "mine"
    # A shape file without state becomes its name and all its parameters.
    assert entry.options == {"loss": "klip", "shape": "sigmoid", "shape_params": {"eps": 0.2, "tau": 0.07}}


def test_study_entry_takes_the_best_trials_shape(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="search", storage=url, direction="maximize")
    for tau, value in ((0.02, 1.0), (0.09, 5.0)):
        study.add_trial(optuna.create_trial(
            params={"shape": "sigmoid", "tau": tau}, value=value,
            distributions={"shape": optuna.distributions.CategoricalDistribution(["sigmoid"]),
                           "tau": optuna.distributions.FloatDistribution(0.01, 0.1)}))
    entry = parse_entry(f"study:search@{url}", tmp_path)
    assert entry.label == "study-search"
    assert entry.options == {"loss": "klip", "shape": "sigmoid", "shape_params": {"eps": 0.2, "tau": 0.09}}
    assert entry.source["trial"] == 1


def _sigmoid_study(url: str, values: list[float], partial: tuple[int, ...] = ()) -> None:
    study = optuna.create_study(study_name="search", storage=url, direction="maximize")
    for index, value in enumerate(values):
        study.add_trial(optuna.create_trial(
            params={"shape": "sigmoid", "tau": 0.01 * (index + 1)}, value=value,
            user_attrs={"klip_pruned_partial": True} if index in partial else {},
            distributions={"shape": optuna.distributions.CategoricalDistribution(["sigmoid"]),
                           "tau": optuna.distributions.FloatDistribution(0.01, 0.1)}))
    failed = study.ask()  # a failed trial is never an entry
    study.tell(failed, state=optuna.trial.TrialState.FAIL)


def test_study_entry_takes_a_named_trial_or_the_k_best_one_entry_each(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    _sigmoid_study(url, [1.0, 5.0, 3.0, 4.0])
    entry = parse_entry(f"study:search#2@{url}", tmp_path)
    assert entry.label == "study-search-t2" and entry.source["trial"] == 2
    assert entry.options["shape_params"] == {"eps": 0.2, "tau": 0.03}
    entries = parse_entries(["step", f"study:search#top3@{url}"], tmp_path)
    assert [e.label for e in entries] == ["step", "study-search-t1", "study-search-t3", "study-search-t2"]
    assert [e.source["value"] for e in entries[1:]] == [5.0, 4.0, 3.0]
    # The best of the K best is the plain entry's trial, under its own label.
    assert parse_entry(f"study:search@{url}", tmp_path).options == entries[1].options


def test_a_study_entry_is_the_best_trial_klip_study_report_names(tmp_path):
    """A Wilcoxon-pruned trial's partial mean is no fair best: `klip study report` passes over
    it, and so does a study entry (Optuna's own best_trial would take it)."""
    from klip.studies.report import best_trial

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    _sigmoid_study(url, [1.0, 5.0, 3.0], partial=(1,))
    study = optuna.load_study(study_name="search", storage=url)
    assert study.best_trial.number == 1 and best_trial(study).number == 2
    assert parse_entry(f"study:search@{url}", tmp_path).source["trial"] == 2
    top = parse_entries([f"study:search#top3@{url}"], tmp_path)
    assert [entry.source["trial"] for entry in top] == [2, 0, 1]


@pytest.mark.parametrize("selector, message", [
    ("#9", "trial 9 is not a complete trial of study 'search'"),
    ("#4", "trial 4 is not a complete trial"),  # the failed one
    ("#best", "study:NAME#N@STORAGE_URL"),
    ("#top5", "has 4 complete trials, fewer than 5"),
    ("#top0", "#top needs at least 1 trial"),
])
def test_bad_study_selectors_are_refused_in_one_line(tmp_path, selector, message):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    _sigmoid_study(url, [1.0, 5.0, 3.0, 4.0])
    with pytest.raises(CompareError, match=re.escape(message)):
        parse_entries([f"study:search{selector}@{url}"], tmp_path)


def test_study_entry_takes_a_klip_study_trials_shape_with_its_state(tmp_path):
    """`klip study run` keeps each trial's shape JSON in a user attribute (its params are the
    search space's names, e.g. a learned vector's knots): the entry trains exactly that shape."""
    from klip.shapes import load_shape, make_shape
    from klip.studies.run import ATTR_SHAPE

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="learned", storage=url, direction="maximize")
    shape = make_shape("learned", eps=0.25)
    vector = torch.linspace(0.0, 1.0, shape.vector_size)
    shape.set_vector(vector)
    study.add_trial(optuna.create_trial(
        params={"eps": 0.25}, value=1.0, user_attrs={ATTR_SHAPE: shape.to_dict()},
        distributions={"eps": optuna.distributions.FloatDistribution(0.05, 0.4)}))
    entry = parse_entry(f"study:learned@{url}", tmp_path)
    # The grid's own copy, named relative to the grid directory: no absolute path is recorded.
    assert entry.options["shape_file"] == "shapes/study-learned.json"
    trained = load_shape(tmp_path / entry.options["shape_file"])
    assert type(trained).__name__ == "LearnedShape" and trained.eps == 0.25
    assert torch.equal(trained.get_vector(), vector)


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "unknown entry 'nonsense'"),
    ("sigmoid:tau=abc", "not a number"),
    ("clip:steps=5", "not OPTION=VALUE"),
    ("kl_fixed:kl_beta=big", "not a number"),  # text only where the option takes text
    ("missing.json", "shape file not found"),
    ("study:nothing", "study:NAME@STORAGE_URL"),
])
def test_bad_entries_are_refused(tmp_path, spec, message):
    with pytest.raises(CompareError, match=message):
        parse_entry(spec, tmp_path)
    with pytest.raises(CompareError, match="same entry"):
        parse_entries(["step", "klip"], tmp_path)


def test_set_reads_numbers_as_klip_train_does(tmp_path, capsys):
    from klip.cli import build_parser
    from klip.compare_cli import _spec

    argv = ["compare", "--losses", "step,kl_adaptive:kl_target=1e-3", "--tasks", "Hopper-v4",
            "--seeds", "0", "--set", "lr=1e-3", "--set", "value_clip=none", "--set", "anneal_lr=false",
            "--out", str(tmp_path / "grid"), "--plan"]
    assert main(argv) == 0
    spec = _spec(build_parser().parse_args(argv))
    assert spec.base == {"lr": 0.001, "value_clip": None, "anneal_lr": False}
    assert spec.entries[1].options == {"loss": "kl_adaptive", "kl_target": 0.001}
    capsys.readouterr()
    assert main([*argv, "--set", "lr=3e-4"]) == 2
    assert "--set lr is given twice" in capsys.readouterr().err
    assert main([*argv, "--set", "lr_typo=3"]) == 2
    assert "'lr_typo' is not a training option" in capsys.readouterr().err


def test_equal_values_spelled_differently_are_one_entry(tmp_path):
    short, long = (GridSpec(parse_entries([spec], tmp_path), ["Hopper-v4"], [0], 4096)
                   for spec in ("sigmoid:tau=0.05", "sigmoid:tau=0.050"))
    assert short.to_dict() == long.to_dict() and short.digest == long.digest
    assert long.entries[0].spec == long.entries[0].label == "sigmoid:tau=0.05"
    with pytest.raises(CompareError, match="same entry"):
        parse_entries(["sigmoid:tau=0.050", "sigmoid:tau=5e-2"], tmp_path)
    # Labels keep every digit a value has: two close values are two entries.
    close = parse_entries(["sigmoid:tau=0.1234567", "sigmoid:tau=0.1234568"], tmp_path)
    assert [e.label for e in close] == ["sigmoid:tau=0.1234567", "sigmoid:tau=0.1234568"]


def test_an_entry_may_have_several_parameters(tmp_path, capsys):
    from klip.studies.entries import split_entries

    specs = split_entries("step,sigmoid:eps=0.25,tau=0.05,kl_fixed:kl_beta=0.5,kl_direction=new_old")
    assert specs == ["step", "sigmoid:eps=0.25,tau=0.05", "kl_fixed:kl_beta=0.5,kl_direction=new_old"]
    _, sigmoid, kl = parse_entries(specs, tmp_path)
    assert sigmoid.options == {"loss": "klip", "shape": "sigmoid", "shape_params": {"eps": 0.25, "tau": 0.05}}
    assert kl.options == {"loss": "kl_fixed", "kl_beta": 0.5, "kl_direction": "new_old"}
    with pytest.raises(CompareError, match="tau given twice"):
        parse_entry("sigmoid:tau=0.05,tau=0.06", tmp_path)
    assert main(["compare", "--losses", "step,sigmoid:eps=0.25,tau=0.05", "--tasks", "Hopper-v4",
                 "--seeds", "0", "--out", str(tmp_path / "g"), "--plan"]) == 0
    assert "Hopper-v4/sigmoid_eps=0.25_tau=0.05/s0" in capsys.readouterr().out


def test_cells_are_seed_major_with_step_right_after_clip(tmp_path):
    spec = GridSpec(parse_entries(["kl_fixed", "step", "clip"], tmp_path), ["Hopper-v4", "Ant-v4"],
                    [0, 1], 1_000_000)
    keys = [cell.key for cell in spec.cells()]
    assert keys[:6] == ["Hopper-v4/kl_fixed/s0", "Hopper-v4/clip/s0", "Hopper-v4/step/s0",
                        "Ant-v4/kl_fixed/s0", "Ant-v4/clip/s0", "Ant-v4/step/s0"]
    assert all(key.endswith("s1") for key in keys[6:]) and len(keys) == 12


def test_paper_command_plans_one_hundred_cells(tmp_path, capsys):
    out = tmp_path / "paper-table"
    code = main(["compare", "--losses", "clip,step,kl_fixed,kl_adaptive", "--tasks", PAPER_TASKS,
                 "--seeds", "0-4", "--steps", "1000000", "--out", str(out), "--plan"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0] == "100 cells in 100 jobs, in this order:"
    assert [line.strip() for line in lines[1:3]] == ["Hopper-v4/clip/s0", "Hopper-v4/step/s0"]
    assert lines[-1].strip() == "Humanoid-v4/kl_adaptive/s4"
    assert not out.exists()


@pytest.mark.parametrize("seeds_together", [False, True])
def test_the_reports_command_makes_the_same_grid_again(tmp_path, seeds_together):
    import shlex

    from klip.cli import build_parser
    from klip.compare_cli import _spec

    out = tmp_path / "my grid"
    spec = GridSpec(parse_entries(["step", "sigmoid:tau=0.03", "kl_fixed:kl_direction=new_old"], out),
                    ["Pendulum-v1", "Hopper-v4"], [2, 3], 4096,
                    {**BASE, "lr": 1e-05, "kl_direction": "new_old"}, seeds_together).validate()
    command = spec.command(out)
    assert command.startswith("klip compare --losses ")
    again = _spec(build_parser().parse_args(shlex.split(command)[1:]))
    assert again.to_dict() == spec.to_dict() and again.digest == spec.digest
    # Seeds are written as a range where they are consecutive (never a bare count).
    assert "--seeds 0-4 " in GridSpec(spec.entries, spec.tasks, list(range(5)), 4096).command(out)
    assert "--seeds 3-3 " in GridSpec(spec.entries, spec.tasks, [3], 4096).command(out)


def test_a_study_entry_keeps_no_storage_password_in_the_grid_or_its_command(tmp_path, monkeypatch):
    local = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="s", storage=local, direction="maximize")
    study.add_trial(optuna.create_trial(
        params={"shape": "step"}, value=1.0,
        distributions={"shape": optuna.distributions.CategoricalDistribution(["step"])}))
    opened = []
    # The study stands in for one on a password-protected PostgreSQL server.
    monkeypatch.setattr(optuna, "load_study", lambda study_name, storage: opened.append(storage)
                        or optuna.study.Study(study_name, local))
    entry = parse_entry("study:s@postgresql://me:secret@db.lab/klip", tmp_path)
    assert opened == ["postgresql://me:secret@db.lab/klip"]
    spec = GridSpec([entry], ["Hopper-v4"], [0], 1000)
    assert "secret" not in json.dumps(spec.to_dict())
    command = spec.command(tmp_path)
    assert "me:***@db.lab" in command and "secret" not in command


@pytest.mark.parametrize(("seeds", "planned"), [("0-1", ["s0", "s1"]), ("2-4", ["s2", "s3", "s4"]),
                                                ("7,3", ["s7", "s3"]), ("0", ["s0"])])
def test_seeds_are_a_range_or_a_list(tmp_path, capsys, seeds, planned):
    assert main(["compare", "--losses", "step", "--tasks", "Hopper-v4", "--seeds", seeds,
                 "--out", str(tmp_path / "grid"), "--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.strip().rsplit("/", 1)[1] for line in lines] == planned


@pytest.mark.parametrize(("seeds", "message"), [("2", "--seeds 2 is ambiguous: write --seeds 0-1"),
                                                ("3-1", "range '3-1' is empty"),
                                                ("1,x", "'x' is not a seed")])
def test_bad_seeds_are_one_line_errors(tmp_path, capsys, seeds, message):
    assert main(["compare", "--losses", "step", "--tasks", "Hopper-v4", "--seeds", seeds,
                 "--out", str(tmp_path / "grid"), "--plan"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.count("\n") == 0


def test_a_grid_written_with_a_count_of_seeds_still_loads(tmp_path):
    from klip.studies.compare import load_grid

    spec = GridSpec(parse_entries(["step"], tmp_path), ["Hopper-v4"], [0, 1, 2], 4096)
    data = spec.to_dict()
    data["seeds"] = 3  # as an older klip compare wrote `--seeds 3`
    (tmp_path / "grid.json").write_text(json.dumps(data))
    assert load_grid(tmp_path).seeds == [0, 1, 2]


# -- running the grid ----------------------------------------------------------------------------


@pytest.mark.slow
def test_grid_trains_every_cell_once_and_states_clip_step_equality(finished_grid):
    out, spec, spy, outcome, progress = finished_grid
    assert (outcome.done, outcome.total, outcome.failed) == (4, 4, [])
    assert [run.cell.key for run in spy.runs] == [cell.key for cell in spec.cells()]
    assert not any(run.resume for run in spy.runs)
    records = {key: state.record for key, state in collect(out).states.items()}
    for seed in (0, 1):
        clip, step = records[f"Pendulum-v1/clip/s{seed}"], records[f"Pendulum-v1/step/s{seed}"]
        assert clip["parameters_sha256"] == step["parameters_sha256"]
        shared = (set(clip["metrics_sha256"]) & set(step["metrics_sha256"])) - {"train/loss_objective"}
        assert all(clip["metrics_sha256"][k] == step["metrics_sha256"][k] for k in shared)
    assert records["Pendulum-v1/clip/s0"]["parameters_sha256"] != records["Pendulum-v1/clip/s1"][
        "parameters_sha256"]
    # Each job went through the study exactly once.
    for trials in trials_by_job(out, spec).values():
        assert [trial.state for trial in trials] == [TrialState.COMPLETE]
    report = (out / "report.md").read_text()
    assert "| Pendulum-v1 | 0 | yes | yes |" in report and "| Pendulum-v1 | 1 | yes | yes |" in report
    assert "4 of 4 cells done." in report and "| Pendulum-v1 | `step` | 1 | done |" in report
    for figure in ("learning_curves", "aggregates", "probability_of_improvement", "performance_profiles",
                   "diagnostics"):
        assert (out / "figures" / f"{figure}.png").is_file()
    assert "4/4 cells done" in progress and "time left" in progress
    # The random policy is scored as a study scores it: over the grid's budget, >= 10 episodes.
    random_score = json.loads((out / "random_scores.json").read_text())["Pendulum-v1"]
    assert random_score["episodes"] == 10 and random_score["frames"] == spec.steps


def test_finished_grid_is_not_trained_again(finished_grid, tmp_path):
    out, spec, *_ = finished_grid
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    spy = Spy()
    outcome = run_grid(spec, copy, trainer=spy, stream=io.StringIO(), write_report=False)
    assert spy.runs == [] and outcome.done == 4


def test_progress_counts_recorded_cells_when_the_storage_is_made_afresh(finished_grid, tmp_path):
    out, spec, *_ = finished_grid
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / compare.STORAGE_FILE).unlink()  # e.g. a fresh checkout: the SQLite file is not in git
    (copy / spec.cell_dir(copy, spec.cells()[1]).relative_to(copy) / compare.CELL_FILE).unlink()
    study = compare.open_study(spec, copy, default_storage(copy), local=True)
    progress = compare.grid_progress(spec, copy, study)
    assert (progress.done, progress.total) == (3, 4)


def test_cells_committed_without_checkpoints_are_checked_by_their_parameters_file(finished_grid, tmp_path):
    import torch

    out, spec, *_ = finished_grid
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first = spec.cell_dir(copy, spec.cells()[0])
    (first / "parameters.pt").unlink()  # a cell trained before klip wrote this file
    assert compare.check_cell(spec, copy, spec.cells()[0]).status == "done"
    assert (first / "parameters.pt").is_file()
    for cell in spec.cells():  # as git keeps them: no checkpoints
        shutil.rmtree(spec.cell_dir(copy, cell) / "checkpoints")
    records = {key: state.record for key, state in collect(out).states.items()}
    for cell in spec.cells():
        state = compare.check_cell(spec, copy, cell)
        assert (state.status, state.record) == ("done", records[cell.key])
    cell = spec.cells()[0]
    parameters = spec.cell_dir(copy, cell) / "parameters.pt"
    saved = torch.load(parameters, weights_only=True)
    saved["state_dict"]["critic.net.4.bias"] += 1e-6
    torch.save(saved, parameters)
    state = compare.check_cell(spec, copy, cell)
    assert state.status == "corrupt" and "parameters.pt's parameters differ" in state.reason


def test_the_report_names_the_machines_and_the_runs_continued_on_another(finished_grid, tmp_path):
    out, spec, *_ = finished_grid
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    report = write_report(copy, n_resamples=50).read_text()
    here = json.loads((spec.cell_dir(copy, spec.cells()[0]) / "summary.json").read_text())["machine"]
    label = f"{here['cpu']}, {here['cpu_capability']}, torch {here['packages']['torch']}"
    assert f"counts under each): {label}: {len(spec.cells())}." in report
    assert "Runs continued on another machine" not in report
    continued = spec.cell_dir(copy, spec.cells()[1]) / "summary.json"
    summary = json.loads(continued.read_text())
    summary["machines"] = [{"from_frame": 0, "machine": None}, {"from_frame": 256, "machine": here}]
    continued.write_text(json.dumps(summary))
    report = write_report(copy, n_resamples=50).read_text()
    assert (f"{label}: {len(spec.cells())}; not recorded (trained before klip recorded it): 1.") in report
    assert f"bitwise no single run): `{spec.cells()[1].key}`." in report


def test_grid_continues_from_its_directory_alone(finished_grid, capsys):
    out, spec, *_ = finished_grid
    assert main(["compare", "--out", str(out), "--plan"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"  {cell.key}" for cell in spec.cells()]


def test_seeds_together_hand_a_trainer_all_seeds_of_a_cell_at_once(tmp_path):
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="step", seeds=2)
    spec.seeds_together = True
    calls: list[list[str]] = []

    def population(runs):
        calls.append([run.cell.key for run in runs])
        compare.train_cells(runs)

    outcome = run_grid(spec, out, trainer=population, stream=io.StringIO(), write_report=False)
    assert calls == [["Pendulum-v1/step/s0", "Pendulum-v1/step/s1"]] and outcome.done == 2
    assert list(trials_by_job(out, spec)) == ["Pendulum-v1/step/s0,1"]


@pytest.mark.slow
def test_killed_cell_continues_from_its_checkpoint_first(tmp_path):
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="step", seeds=2, steps=3 * 256)
    cell, other = spec.cells()
    prepare_grid(out, spec)
    study = open_study(spec, out, default_storage(out), local=True)
    assert study.ask().user_attrs[compare.JOB_ATTR] == cell.key
    # Its worker was killed after one of the cell's three iterations.
    train(spec.config(cell), spec.cell_dir(out, cell), progress=False, stop_after_iterations=1)
    assert check_cell(spec, out, cell).status == "partial"
    spy = Spy()
    run_grid(spec, out, trainer=spy, stream=io.StringIO(), write_report=False)
    assert [(run.cell.key, run.resume) for run in spy.runs] == [(cell.key, True), (other.key, False)]
    (trial,) = trials_by_job(out, spec)[cell.key]
    assert trial.state == TrialState.COMPLETE and "killed" in trial.user_attrs["klip_note"]
    whole = tmp_path / "whole"
    train(spec.config(cell), whole, progress=False)
    assert check_cell(spec, out, cell).record["parameters_sha256"] == parameters_sha256(
        whole / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("local", [True, False])
def test_interrupted_cell_keeps_its_place_in_the_grids_own_queue(tmp_path, local):
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="clip,step", seeds=2)
    prepare_grid(out, spec)
    study = open_study(spec, out, default_storage(out), local=True)
    first = study.ask()
    assert first.user_attrs[compare.JOB_ATTR] == spec.cells()[0].key
    # Ctrl-C stopped its cell: the worker marks the trial and Optuna fails it.
    first.set_user_attr("klip_error", ERROR_INTERRUPTED)
    study.tell(first, state=TrialState.FAIL)
    study = open_study(spec, out, default_storage(out), local=local)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna warns that enqueued trials have no parameters
        popped = [study.ask().user_attrs[compare.JOB_ATTR] for _ in spec.cells()]
    keys = [cell.key for cell in spec.cells()]
    if local:  # the grid's own file: nobody else pops, so the queue is rebuilt in grid order
        assert popped == keys
        notes = [t.user_attrs.get("klip_note") for t in study.get_trials(states=(TrialState.FAIL,))]
        assert notes.count("queued again in grid order") == len(keys) - 1
    else:  # a shared storage's queue is never reordered under other machines' workers
        assert popped == keys[1:] + keys[:1]


def test_progress_tells_stopped_cells_from_failed_ones(tmp_path):
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="clip,step", seeds=2)
    prepare_grid(out, spec)
    study = open_study(spec, out, default_storage(out), local=True)
    stopped, died, failed = study.ask(), study.ask(), study.ask()
    stopped.set_user_attr("klip_error", ERROR_INTERRUPTED)  # Ctrl-C or `grids.sh --stop`
    failed.set_user_attr("klip_error", "ValueError: boom")
    for trial in (stopped, died, failed):  # `died`: its worker was killed; Optuna failed it
        study.tell(trial, state=TrialState.FAIL)
    progress = compare.grid_progress(spec, out, study)
    assert (progress.done, progress.running, progress.stopped, progress.failed) == (0, 0, 2, 1)
    reporter = compare.ProgressReporter(spec, out, default_storage(out), stream=io.StringIO())
    assert "2 stopped (they continue on the next run), 1 failed" in reporter._status()[1]


def test_corrupt_cell_is_reported_left_out_and_trained_again(finished_grid, tmp_path):
    out, spec, *_ = finished_grid
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cell = Cell(spec.entries[1], "Pendulum-v1", 0)
    summary_path = spec.cell_dir(copy, cell) / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["final_return_last10pct"] = 123.0
    summary_path.write_text(json.dumps(summary))
    state = collect(copy).states[cell.key]
    assert state.status == "corrupt" and "disagrees with episodes.csv" in state.reason
    report = write_report(copy, n_resamples=200).read_text()
    assert f"`{cell.key}`: summary.json's final return 123.0 disagrees" in report
    assert "(1/2)" in report  # step on Pendulum: only its valid seed is averaged
    spy = Spy()
    outcome = run_grid(spec, copy, trainer=spy, stream=io.StringIO(), write_report=True)
    assert [(run.cell.key, run.resume) for run in spy.runs] == [(cell.key, False)]
    assert outcome.done == 4 and check_cell(spec, copy, cell).status == "done"
    events = [json.loads(line) for line in (copy / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "corrupt" and events[0]["cell"] == cell.key
    assert (copy / events[0]["moved_to"] / "summary.json").is_file()
    assert "trained again" in (copy / "report.md").read_text()


def test_failed_cell_leaves_a_partial_grid_whose_report_marks_it(tmp_path):
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="clip,sigmoid:tau=0.05")
    spy = Spy(fail={"Pendulum-v1/clip/s0"})
    outcome = run_grid(spec, out, trainer=spy, stream=io.StringIO())
    assert outcome.failed == ["Pendulum-v1/clip/s0"] and outcome.done == 1
    (trial,) = trials_by_job(out, spec)["Pendulum-v1/clip/s0"]
    assert trial.state == TrialState.FAIL and "simulated crash" in trial.user_attrs["klip_error"]
    report = (out / "report.md").read_text()
    assert "Missing cells (1" in report and "`Pendulum-v1/clip/s0`" in report
    assert "`step` is not an entry of this grid" in report


@pytest.mark.slow
def test_queue_dry_trial_fails_with_a_note_and_workers_share_cells(tmp_path):
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="clip,step", seeds=2)
    outcome = run_grid(spec, out, workers=2, stream=io.StringIO(), write_report=False)
    assert outcome.done == 4
    study = optuna.load_study(study_name=spec.study_name, storage=default_storage(out))
    cells = [t for t in study.trials if compare.JOB_ATTR in t.user_attrs]
    assert sorted(t.user_attrs[compare.JOB_ATTR] for t in cells) == sorted(c.key for c in spec.cells())
    assert all(t.state == TrialState.COMPLETE for t in cells)
    dry = [t for t in study.trials if compare.JOB_ATTR not in t.user_attrs]
    assert dry and all(t.state == TrialState.FAIL and compare.DRY_ATTR in t.user_attrs for t in dry)
    assert len({t.user_attrs["pid"] for t in cells}) == 2


POP = """
import json, sys, warnings
import optuna
from klip.studies.compare import make_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.simplefilter("ignore")
study = optuna.load_study(study_name="queue", storage=make_storage(sys.argv[1], heartbeat=False))
print(json.dumps([study.ask().user_attrs.get("i") for _ in range(40)]))
"""


@pytest.mark.slow
def test_two_processes_never_pop_the_same_trial_from_sqlite(tmp_path):
    # Plain Optuna on SQLite pops some trials twice under this load (SQLite ignores FOR UPDATE).
    url = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    study = optuna.create_study(study_name="queue", storage=url)
    for i in range(60):
        study.enqueue_trial({}, user_attrs={"i": i})
    workers = [subprocess.Popen([sys.executable, "-c", POP, url], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    popped = [i for worker in workers for i in json.loads(worker.communicate()[0]) if i is not None]
    assert sorted(popped) == list(range(60))


@pytest.mark.slow
def test_dead_workers_cell_goes_back_to_the_queue(tmp_path, monkeypatch):
    from klip.studies import choices

    # One heartbeat policy for studies and comparisons (klip.studies.choices), shortened here.
    monkeypatch.setattr(choices, "DEFAULT_HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(choices, "DEFAULT_GRACE_PERIOD", 2)
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="step")
    prepare_grid(out, spec)
    url = default_storage(out)
    open_study(spec, out, url, local=False)
    storage = make_storage(url)
    study = optuna.load_study(study_name=spec.study_name, storage=storage)
    with pytest.warns(UserWarning):
        popped = study.ask()  # A worker takes the cell ...
    study_id = storage.get_study_id_from_name(spec.study_name)
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, popped.number))
    # ... beats once, and dies.
    time.sleep(3)
    spy = Spy()
    assert run_worker(out, url, trainer=spy, poll_seconds=0.2) == 1
    assert [run.cell.key for run in spy.runs] == [spec.cells()[0].key]
    (dead, retried) = trials_by_job(out, spec)[spec.cells()[0].key]
    assert dead.state == TrialState.FAIL and retried.state == TrialState.COMPLETE
    assert retried.system_attrs["failed_trial"] == dead.number


# -- bad input -------------------------------------------------------------------------------------


def test_directory_holding_another_grid_is_refused(finished_grid, tmp_path, capsys):
    out, *_ = finished_grid
    with pytest.raises(CompareError, match=r"other settings \(differs in: steps\)"):
        prepare_grid(out, tiny_spec(out, seeds=2, steps=768))
    settings = [arg for k, v in BASE.items() for arg in ("--set", f"{k}={v}")]
    code = main(["compare", "--losses", "clip,step", "--tasks", "Pendulum-v1", "--seeds", "0-2",
                 "--steps", "512", "--out", str(out), *settings])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error == [f"klip: error: {out} holds a grid with other settings "
                                   "(differs in: seeds); choose another --out; or add --extend to "
                                   "grow it by these entries, tasks and seeds"]


def test_extend_grows_a_grid_by_seeds_and_entries_and_trains_only_the_new_cells(finished_grid, tmp_path):
    out, spec, *_ = finished_grid
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    grown = tiny_spec(copy, entries="clip,step,kl_fixed", seeds=3)
    with pytest.raises(CompareError, match="add --extend"):
        prepare_grid(copy, grown)
    spy = Spy()
    outcome = run_grid(grown, copy, trainer=spy, stream=io.StringIO(), extend=True)
    old = {cell.key for cell in spec.cells()}
    assert [run.cell.key for run in spy.runs] == [c.key for c in grown.cells() if c.key not in old]
    assert (outcome.done, outcome.total, outcome.failed) == (9, 9, [])
    assert "9 of 9 cells done." in (copy / "report.md").read_text()
    event = [json.loads(line) for line in (copy / "events.jsonl").read_text().splitlines()][-1]
    assert (event["event"], event["entries_added"], event["seeds_added"]) == ("extended", ["kl_fixed"], [2])
    # The grown grid is now the directory's grid: the same arguments continue it.
    assert run_grid(grown, copy, trainer=Spy(), stream=io.StringIO(), write_report=False).done == 9


def test_reuse_links_another_grids_finished_cells_and_trains_only_the_rest(finished_grid, tmp_path):
    source, spec, *_ = finished_grid
    before = {path: path.stat().st_mtime_ns for path in source.rglob("*") if path.is_file()}
    out = tmp_path / "zoo"
    zoo = tiny_spec(out, entries="step,sigmoid", seeds=2)
    spy = Spy()
    outcome = run_grid(zoo, out, trainer=spy, stream=io.StringIO(), reuse=[source])
    assert [run.cell.key for run in spy.runs] == [c.key for c in zoo.cells() if c.entry.label == "sigmoid"]
    assert (outcome.done, outcome.total, outcome.failed) == (4, 4, [])
    for cell in zoo.cells():
        linked = zoo.cell_dir(out, cell)
        assert linked.is_symlink() == (cell.entry.label == "step")
    step = next(cell for cell in zoo.cells() if cell.entry.label == "step")
    assert (zoo.cell_dir(out, step) / "summary.json").read_bytes() == (
        spec.cell_dir(source, step) / "summary.json").read_bytes()
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert sum(event["event"] == "reused" for event in events) == 2
    report = (out / "report.md").read_text()
    assert f"--reuse {source}" in report and f"2 from `{source}`" in report
    # Nothing of the other grid was written.
    assert {path: path.stat().st_mtime_ns for path in source.rglob("*") if path.is_file()} == before


def test_reuse_refuses_a_grid_of_other_settings(finished_grid, tmp_path):
    source, *_ = finished_grid
    with pytest.raises(CompareError, match="differs in: steps"):
        run_grid(tiny_spec(tmp_path / "g", entries="step", steps=768), tmp_path / "g", trainer=Spy(),
                 stream=io.StringIO(), reuse=[source])


@pytest.mark.parametrize("change, message", [
    (dict(steps=768), "steps differs"),
    (dict(seeds=1), "seed 1 is left out"),
    (dict(entries="clip"), "entry 'step' is left out"),
])
def test_extend_refuses_what_would_change_or_drop_finished_cells(finished_grid, change, message):
    out, *_ = finished_grid
    before = (out / "grid.json").read_text()
    options = {"seeds": 2, **change}
    with pytest.raises(CompareError, match=message):
        prepare_grid(out, tiny_spec(out, **options), extend=True)
    assert (out / "grid.json").read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["--losses", "clip,bogus", "--tasks", "Pendulum-v1"], "unknown entry 'bogus'"),
    (["--losses", "clip", "--tasks", "Nope-v0"], "unknown task 'Nope-v0'"),
    (["--losses", "clip", "--tasks", "Pendulum-v1", "--set", "seed=3"], "the grid sets seed itself"),
    (["--losses", "clip", "--tasks", "Pendulum-v1", "--set", "colour=3"],
     "'colour' is not a training option"),
    (["--losses", "clip"], "--losses and --tasks are both required"),
])
def test_bad_command_lines_are_one_line_errors_with_exit_code_2(tmp_path, capsys, argv, message):
    code = main(["compare", *argv, "--out", str(tmp_path / "g"), "--plan"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("klip: error: ") and message in error[0]


def test_a_full_disk_is_one_line_naming_the_cell_and_the_worker_stops(tmp_path, monkeypatch, capsys):
    import errno

    def full(runs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as torch.save says it: no path

    monkeypatch.setattr(compare, "train_cells", full)
    out = tmp_path / "g"
    code = main(["compare", "--losses", "step", "--tasks", "Pendulum-v1", "--seeds", "0-1", "--steps", "512",
                 "--set", "rollout_steps=256", "--out", str(out), "--no-report", "--progress-every", "600"])
    error = [line for line in capsys.readouterr().err.strip().splitlines()
             if not line.startswith("klip compare: ")]
    cell = out / "runs" / "Pendulum-v1" / "step" / "s0"
    assert code == 2 and error == [f"klip: error: cannot write {cell}: no space left on the device"]


def test_a_storage_that_cannot_be_written_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    import sqlite3

    def full(*args, **kwargs):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as error:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") \
                from error

    monkeypatch.setattr(compare, "run_worker", full)
    out = tmp_path / "g"
    code = main(["compare", "--losses", "step", "--tasks", "Pendulum-v1", "--seeds", "0", "--steps", "512",
                 "--set", "rollout_steps=256", "--out", str(out), "--no-report", "--progress-every", "600"])
    error = [line for line in capsys.readouterr().err.strip().splitlines()
             if not line.startswith("klip compare: ")]
    assert code == 2 and error == [f"klip: error: cannot write to storage {out}/cells.sqlite3: "
                                   "database or disk is full"]


def test_bad_storage_url_is_refused_before_the_directory_is_made(tmp_path, capsys):
    out = tmp_path / "g"
    code = main(["compare", "--losses", "step", "--tasks", "Pendulum-v1", "--out", str(out),
                 "--storage", "not-a-url"])
    assert code == 2 and "is not a database URL" in capsys.readouterr().err and not out.exists()


def test_report_of_a_directory_without_a_grid_is_refused(tmp_path, capsys):
    assert main(["compare", "report", str(tmp_path)]) == 2
    assert "holds no klip compare grid" in capsys.readouterr().err


# -- the paper table ------------------------------------------------------------------------------


def test_paper_table_flags_cells_outside_one_paper_std(tmp_path):
    entries = parse_entries(["clip", "kl_fixed"], tmp_path)
    spec = GridSpec(entries, ["Hopper-v4", "Ant-v4"], [0, 1], 1_000_000)
    returns = {"Hopper-v4": {"clip": {0: 2500.0, 1: 2700.0}, "kl_fixed": {0: 100.0, 1: 200.0}},
               "Ant-v4": {"clip": {0: 2200.0}}}
    states = {cell.key: CellState("missing") for cell in spec.cells()}
    text = "\n".join(_paper(GridResults(spec, tmp_path, states, returns)))
    assert "the published KLip-PPO paper (arXiv 2606.23932)" in text
    assert "| PPO-Clip | Hopper-v4 | 2598 ± 278 | 2600.0 ± 141.4 | +0.01 | yes | 0.991 |" in text
    assert "| fixed beta (1.0) | Hopper-v4 | 2616 ± 208 | 150.0 ± 70.7 | -11.86 | **no** | 0.000 |" in text
    assert "| PPO-Clip | Ant-v4 | 2193 ± 361 | 2200.0 (1/2) | +0.02 | yes | — |" in text
    assert "| fixed beta (1.0) | Ant-v4 | 16 ± 16 | — |" in text
    assert "Hopper-v4, `kl_fixed`: -11.86 paper stds; seeds 0: 100, 1: 200" in text
    assert "Not investigated yet" in text
    assert "against_paper.png" not in text  # no figure unless asked for one
    figures = tmp_path / "figures"
    figures.mkdir()
    text = "\n".join(_paper(GridResults(spec, tmp_path, states, returns), figures))
    assert "![ours against the paper, per task](figures/against_paper.png)" in text
    assert (figures / "against_paper.png").stat().st_size > 10_000
    (tmp_path / "notes.md").write_text("Fixed beta collapses on Hopper because ...")
    assert "collapses on Hopper" in "\n".join(_paper(GridResults(spec, tmp_path, states, returns)))


def test_paper_table_compares_the_discrete_checks_and_says_the_paper_gives_no_budget(tmp_path):
    entries = parse_entries(["clip"], tmp_path)
    returns = {"CartPole-v1": {"clip": {0: 500.0, 1: 500.0}}, "Hopper-v4": {"clip": {0: 2600.0}}}
    spec = GridSpec(entries, ["Hopper-v4", "CartPole-v1"], [0, 1], 1_000_000)
    states = {cell.key: CellState("missing") for cell in spec.cells()}
    text = "\n".join(_paper(GridResults(spec, tmp_path, states, returns)))
    assert "| PPO-Clip | CartPole-v1 | 478 ± 18 | 500.0 ± 0.0 | +1.22 | **no** |" in text
    assert "The paper states no step budget for CartPole-v1" in text and "1,000,000 steps" in text
    assert "does not follow the paper's protocol" not in text
    # A shorter grid is off the protocol on the MuJoCo task only.
    spec = GridSpec(entries, ["Hopper-v4", "CartPole-v1"], [0, 1], 100_000)
    text = "\n".join(_paper(GridResults(spec, tmp_path, states, returns)))
    assert "does not follow the paper's protocol** (steps 100,000 on Hopper-v4, trained for 1,000,000" in text
    spec = GridSpec(entries, ["CartPole-v1"], [0, 1], 100_000)
    text = "\n".join(_paper(GridResults(spec, tmp_path, {}, returns)))
    assert "does not follow" not in text and "trained them for 100,000 steps" in text


@pytest.mark.slow
def test_ctrl_c_stops_the_grid_and_the_interrupted_cell_continues(tmp_path):
    import os
    import signal

    out = tmp_path / "g"
    command = [sys.executable, "-m", "klip", "compare", "--losses", "step", "--tasks", "Pendulum-v1",
               "--seeds", "0-1", "--steps", str(256 * 400), "--set", "rollout_steps=256",
               "--set", "epochs=1", "--out", str(out), "--workers", "1", "--no-report"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    metrics = out / "runs" / "Pendulum-v1" / "step" / "s0" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 3):
        assert time.monotonic() < deadline and process.poll() is None, "the first cell never started"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "run the same command again" in output
    # The worker stopped instead of starting the next cell.
    assert not (out / "runs" / "Pendulum-v1" / "step" / "s1").exists(), output
    summary = metrics.parent / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] != "finished"


def _population_returns(spec: GridSpec, root: Path, task: str, entry_spec: str, *,
                        kill_after_iterations: int | None = None) -> dict[int, float] | None:
    """Train an (entry, task)'s seeds with `train_population` itself, as a reference (stopped
    after `kill_after_iterations`, with its checkpoint there, when given: None then)."""
    from klip.algos.agents import PopulationSpec, train_population

    entry = next(e for e in spec.entries if e.spec == entry_spec)
    config = spec.config(Cell(entry, task, spec.seeds[0]))
    results = train_population(PopulationSpec(config, list(spec.seeds), {}), root, progress=False,
                               stop_after_iterations=kill_after_iterations)
    if kill_after_iterations is not None:
        return None
    return {int(result.name[1:]): result.final_return for result in results}


def test_seeds_together_trains_each_entry_and_task_as_one_population(tmp_path):
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="clip,step", seeds=2)
    spec.seeds_together = True
    outcome = run_grid(spec, out, stream=io.StringIO(), write_report=False)
    assert outcome.done == 4
    reference = _population_returns(spec, tmp_path / "reference", "Pendulum-v1", "step")
    for entry in spec.entries:
        assert not (out / "runs" / "Pendulum-v1" / entry.dirname / compare.POPULATION_DIR).exists()
    for seed in spec.seeds:
        clip, step = (check_cell(spec, out, Cell(entry, "Pendulum-v1", seed)).record
                      for entry in spec.entries)
        assert clip["population_size"] == step["population_size"] == 2
        # The cell directories are the population's agents, bit for bit.
        assert step["final_return"] == reference[seed]
        assert clip["parameters_sha256"] == step["parameters_sha256"]
    assert clip["parameters_sha256"] != check_cell(spec, out, Cell(spec.entries[1], "Pendulum-v1", 0)).record[
        "parameters_sha256"]
    report = write_report(out, n_resamples=200).read_text()
    assert "trained as populations" in report
    # Its cost: each cell's share of its population's wall time.
    records = [check_cell(spec, out, cell).record for cell in spec.cells()]
    hours = sum(record["wall_seconds"] / record["population_size"] for record in records) / 3600
    assert f"Training cost of the 4 finished cells trained here: {hours:,.1f} process-hours (" in report
    # A population moved aside (an interrupted one whose checkpoint was lost) is time spent too.
    aside = out / "kept" / "Pendulum-v1__step__population-20261207T000000"
    for agent in ("s0", "s1"):
        (aside / agent).mkdir(parents=True)
        summary = {"wall_seconds": 3600.0, "population_size": 2}
        (aside / agent / "summary.json").write_text(json.dumps(summary))
    report = write_report(out, n_resamples=200).read_text()
    assert (f"Training cost of the 4 finished cells trained here: {hours:,.1f} process-hours, plus 1.0 "
            "process-hours of 2 runs moved aside and trained again (") in report


def test_a_population_job_keeps_aside_what_it_finds_in_its_way_instead_of_deleting_it(tmp_path):
    """Before: a leftover cell directory (a half-trained single run, say) was rmtree'd."""
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="step", seeds=2)
    spec.seeds_together = True
    prepare_grid(out, spec)
    leftover = spec.cell_dir(out, spec.cells()[0])
    leftover.mkdir(parents=True)
    (leftover / "notes.txt").write_text("trained for a week")
    runs = [compare.CellRun(cell, spec.config(cell), spec.cell_dir(out, cell), False)
            for cell in spec.cells()]
    compare.train_cells_together(runs)
    kept = list((out / "kept").glob("Pendulum-v1__step__s0-*"))
    assert len(kept) == 1 and (kept[0] / "notes.txt").read_text() == "trained for a week"
    assert (leftover / "summary.json").is_file()  # the population's agent took the cell's place
    assert "kept aside" in (out / "events.jsonl").read_text()


def test_a_killed_population_job_continues_from_its_checkpoint(tmp_path):
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="step", seeds=2, steps=1024)
    spec.seeds_together = True
    prepare_grid(out, spec)
    root = out / "runs" / "Pendulum-v1" / "step" / compare.POPULATION_DIR
    assert _population_returns(spec, root, "Pendulum-v1", "step", kill_after_iterations=2) is None
    assert (root / "checkpoints" / "last.ckpt").is_file()
    # The progress line counts the half-trained population's steps (2 iterations of 2 agents).
    study = open_study(spec, out, default_storage(out), local=True)
    iteration = spec.config(spec.cells()[0]).rollout_steps
    assert compare.grid_progress(spec, out, study).frames == 2 * 2 * iteration
    outcome = run_grid(spec, out, stream=io.StringIO(), write_report=False)
    assert outcome.done == 2
    uninterrupted = _population_returns(spec, tmp_path / "reference", "Pendulum-v1", "step")
    for seed in spec.seeds:
        assert check_cell(spec, out, Cell(spec.entries[0], "Pendulum-v1", seed)).record["final_return"] == (
            uninterrupted[seed])


def test_seeds_together_refuses_options_a_population_cannot_share(tmp_path):
    spec = GridSpec(parse_entries(["step"], tmp_path), ["Pendulum-v1"], [0, 1], 512,
                    {**BASE, "compile": True}, seeds_together=True)
    with pytest.raises(CompareError,
                       match="--seeds-together, entry 'step': --compile trains one agent at a time"):
        spec.validate()


def test_diagnostics_table_reads_the_last_tenth_of_each_run_and_marks_unlogged_columns(tmp_path):
    entries = parse_entries(["clip", "kl_fixed"], tmp_path)
    spec = GridSpec(entries, ["Hopper-v4"], [0, 1], 1000)
    frames = list(range(100, 1001, 100))  # ten iterations; the last tenth of 1000 steps is frame 1000
    columns = {("clip", 0): {"train/entropy": [5.0] * 9 + [1.0], "train/clip_fraction": [0.1] * 10},
               ("clip", 1): {"train/entropy": [5.0] * 9 + [3.0], "train/clip_fraction": [0.3] * 10},
               ("kl_fixed", 0): {"train/entropy": [7.0] * 10, "train/beta": [1.0] * 10}}
    for (label, seed), logged in columns.items():
        directory = spec.cell_dir(tmp_path, Cell(parse_entry(label, tmp_path), "Hopper-v4", seed))
        directory.mkdir(parents=True)
        names = ["frames", *logged]
        rows = [",".join(names)] + [",".join(str(v) for v in [f, *(logged[n][i] for n in logged)])
                                     for i, f in enumerate(frames)]
        (directory / "metrics.csv").write_text("\n".join(rows) + "\n")
    returns = {"Hopper-v4": {"clip": {0: 1.0, 1: 2.0}, "kl_fixed": {0: 3.0}}}
    states = {cell.key: CellState("missing") for cell in spec.cells()}
    figures = tmp_path / "figures"
    figures.mkdir()
    text = "\n".join(compare_report._diagnostics(GridResults(spec, tmp_path, states, returns), figures))
    # clip: entropy 1 and 3 at the end -> 2 ± 1.4; kl_fixed logs no clip fraction, clip no beta.
    assert "| Hopper-v4 | `clip` | 2 ± 1.4 | 0.2 ± 0.14 | — |" in text
    assert "| Hopper-v4 | `kl_fixed` | 7 | — | 1 |" in text
    assert "explained variance" not in text  # no run logs it: no column
    assert (figures / "diagnostics.png").stat().st_size > 10_000


def test_reused_grids_reads_events_logged_before_they_named_the_grid(tmp_path):
    from klip.studies.reuse import reused_grids

    out = tmp_path / "zoo"
    out.mkdir()
    event = {"event": "reused", "cell": "Hopper-v4/step/s0",
             "from": "../../../../paper/runs/Hopper-v4/step/s0"}
    (out / "events.jsonl").write_text(json.dumps(event) + "\n")
    assert reused_grids(out) == {"../paper": 1}


@pytest.mark.slow
def test_a_partial_cell_on_a_simulator_that_cannot_be_restored_trains_again(tmp_path, monkeypatch):
    """Before: a grid's interrupted LunarLander-v3 cell failed at every restart (Box2D's world
    cannot be restored), so the grid never finished. Now it is kept aside and trained again."""
    import klip.algos.rundir as rundir
    from klip.envs.names import resumable

    assert not resumable("LunarLander-v3") and not resumable("Hopper-v4", "envpool")
    assert resumable("Hopper-v4") and resumable("CartPole-v1")
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="step", seeds=1, steps=3 * 256)
    (cell,) = spec.cells()
    prepare_grid(out, spec)
    train(spec.config(cell), spec.cell_dir(out, cell), progress=False, stop_after_iterations=1)
    assert check_cell(spec, out, cell).status == "partial"
    monkeypatch.setattr(rundir, "resumable", lambda task, backend="gymnasium": task != "Pendulum-v1")
    compare.train_cells([compare.CellRun(cell, spec.config(cell), spec.cell_dir(out, cell), True)])
    assert check_cell(spec, out, cell).status == "done"
    assert len(list((out / "kept").glob("Pendulum-v1__step__s0-*"))) == 1
    # The report says so, with where the run went.
    completeness = "\n".join(compare_report._completeness(collect(out)))
    assert "Runs moved aside and trained again" in completeness
    assert "- `runs/Pendulum-v1/step/s0` (" in completeness
    assert "-> `kept/Pendulum-v1__step__s0-" in completeness
    whole = tmp_path / "whole"
    train(spec.config(cell), whole, progress=False)
    assert check_cell(spec, out, cell).record["parameters_sha256"] == parameters_sha256(
        whole / "checkpoints" / "last.ckpt")


def test_a_long_list_of_missing_cells_is_counted_per_task(tmp_path):
    out = tmp_path / "g"
    spec = tiny_spec(out, entries="step", seeds=compare_report.MISSING_LISTED + 1)
    prepare_grid(out, spec)
    text = "\n".join(compare_report._completeness(collect(out)))
    assert "Missing cells (21; marked — or counted n/21 below), per task: Pendulum-v1 21." in text
    assert "`Pendulum-v1/step/s0`" not in text
    few = tiny_spec(tmp_path / "few", entries="step", seeds=2)
    prepare_grid(tmp_path / "few", few)
    assert "`Pendulum-v1/step/s0`, `Pendulum-v1/step/s1`" in "\n".join(
        compare_report._completeness(collect(tmp_path / "few")))


@pytest.mark.slow
@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "seeds-together"])
def test_a_diverged_run_is_a_done_cell_reported_and_never_trained_again(tmp_path, together, clean_registry):
    from studies_support import write_fuse_plugin

    out = tmp_path / "grid"
    # `fuse` goes NaN in iteration 3 of 4 (progress 0.5), after Pendulum's first episodes ended.
    args = ["compare", "--losses", "step,fuse:at=0.5", "--tasks", "Pendulum-v1", "--seeds", "0-1",
            "--steps", "1024", "--set", "rollout_steps=256", "--set", "epochs=1", "--set", "eval_episodes=0",
            "--set", f"shape_plugin={write_fuse_plugin(tmp_path)}", "--out", str(out),
            *(["--seeds-together"] if together else [])]
    assert main(args) == 0
    cells = sorted((out / "runs" / "Pendulum-v1").glob("fuse*/s*"))
    assert len(cells) == 2
    for cell in cells:
        summary = json.loads((cell / "summary.json").read_text())
        record = json.loads((cell / "cell.json").read_text())
        assert summary["status"] == "diverged" and summary["frames"] == 3 * 256
        assert record["diverged"] == summary["error"] and "iteration 3" in record["diverged"]
        assert record["final_return"] == summary["final_return_last10pct"]
    report = (out / "report.md").read_text()
    assert "4 of 4 cells done." in report and "Runs that diverged (2)" in report
    assert "in 2 of 2 runs." in report.split("## Reading")[1]
    stamps = [(cell / "summary.json").stat().st_mtime_ns for cell in cells]
    assert main(args) == 0  # nothing left to train: the diverged cells are results
    assert [(cell / "summary.json").stat().st_mtime_ns for cell in cells] == stamps
    assert not (out / "kept").exists()


def test_diagnostics_are_set_beside_steps_where_an_entry_differs_from_it(tmp_path):
    from klip.studies.statistics import Estimate

    entries = parse_entries(["step", "sigmoid", "spo"], tmp_path)
    spec = GridSpec(entries, ["Hopper-v4"], [0], 1000)
    for label, entropy in (("step", 0.5), ("sigmoid", 2.0), ("spo", 9.0)):
        directory = spec.cell_dir(tmp_path, Cell(parse_entry(label, tmp_path), "Hopper-v4", 0))
        directory.mkdir(parents=True)
        (directory / "metrics.csv").write_text(
            f"frames,train/entropy,train/kl_approx\n1000,{entropy},{entropy / 100}\n")
    returns = {"Hopper-v4": {"step": {0: 3.0}, "sigmoid": {0: 1.0}, "spo": {0: 2.0}}}
    states = {cell.key: CellState("missing") for cell in spec.cells()}
    differences = {"Hopper-v4": {"sigmoid": Estimate(-2.0, -3.0, -1.0), "spo": Estimate(-1.0, -2.0, 0.5)}}
    text = "\n".join(compare_report._diagnostics(GridResults(spec, tmp_path, states, returns), None,
                                                 differences, "step"))
    assert ("- Hopper-v4, `sigmoid` (below `step`): policy entropy 2 against 0.5; "
            "approx. KL 0.02 against 0.005 (4x).") in text  # a factor for the KL only
    assert "`spo` (" not in text  # its interval includes 0: nothing to explain
