"""klip study on SQLite: runs, resume after a kill, pruning, report, export and bad input."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from studies_support import (
    STEPS,
    TASK,
    TRAIN_FLAGS,
    TRAIN_OPTIONS,
    compute_references,
    klip_command,
    run_klip,
    write_fuse_plugin,
    write_sabotage_plugin,
)

from klip.cli import main
from klip.studies.attributes import trial_curves, trial_results
from klip.studies.references import REFERENCE_FILE_ENV, TaskReference, load_cache, protocol_hash
from klip.studies.run import (
    ATTR_CONFIG,
    ATTR_IDENTITY,
    ATTR_INSTANCES_SAVED,
    ATTR_PARTIAL,
    prepare_study,
    run_study,
)
from klip.studies.settings import StudySettings
from klip.studies.space import Dimension, resolve_space
from klip.studies.storage import parse_storage

SEEDS_FOR_WILCOXON = 5


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "klip-references.json"
    compute_references(cache, SEEDS_FOR_WILCOXON)
    return cache


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, reference_cache) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(REFERENCE_FILE_ENV, str(reference_cache))
    return tmp_path


def sabotage_settings(tmp_path: Path, *, seeds: int, trials: int, pruner: str, name: str) -> StudySettings:
    from klip.shapes import load_shapes_from_file

    # One file for the whole session: a shape name registers once per process.
    plugin = tmp_path.parent / "sabotage_shape.py"
    if not plugin.is_file():
        write_sabotage_plugin(tmp_path.parent)
    load_shapes_from_file(plugin)
    space, fixed = resolve_space("sabotage", fixed={"eps": 0.2})
    options = {"rollout_steps": 512, "minibatch_size": 64, "epochs": 4, "lr": 1e-3,
               "checkpoint_every": 100, "eval_episodes": 0, "shape_plugin": str(plugin)}
    return StudySettings(
        study_name=name, shape="sabotage", tasks=[TASK], steps_per_task=STEPS, seeds=seeds, trials=trials,
        train_options=options, space=space, fixed=fixed, sampler="random", sampler_seed=0, pruner=pruner,
        pruner_startup_trials=2, storage=parse_storage(str(tmp_path / "study.db")),
        study_dir=tmp_path / "artefacts", progress=False,
    )


@pytest.mark.slow
def test_references_are_real_runs_cached_with_their_command(reference_cache):
    entries = load_cache(reference_cache)
    key_protocol = protocol_hash({"rollout_steps": 512, "minibatch_size": 64, "epochs": 4, "lr": 1e-3})
    seeds = sorted(e["seed"] for e in entries.values() if e["protocol_hash"] == key_protocol)
    assert seeds == list(range(SEEDS_FOR_WILCOXON))
    for entry in entries.values():
        assert entry["command"].startswith("pytest")
        assert entry["step_score"] > entry["random_score"]  # else the objective would be refused
    reference = TaskReference(TASK, random_score=20.0, step_score=60.0)
    assert reference.normalise(20.0) == 0.0 and reference.normalise(60.0) == 1.0


@pytest.mark.slow
def test_cli_study_runs_records_settings_and_continues_on_rerun(in_tmp, capsys):
    args = ["study", "run", "--shape", "sigmoid", "--tasks", TASK, "--steps-per-task", str(STEPS),
            "--seeds", "0", "--trials", "2", "--study-name", "tiny", "--no-progress", *TRAIN_FLAGS]
    assert main(args) == 0
    study = optuna.load_study(study_name="tiny", storage="sqlite:///klip-studies.db")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    assert study.user_attrs[ATTR_IDENTITY]["shape"] == "sigmoid"
    assert study.user_attrs["klip_command"].startswith("klip study run")
    assert set(complete[0].params) == {"eps", "tau"}
    result = trial_results(complete[0])[f"{TASK}/s0"]
    assert math.isfinite(result["normalised"]) and result["frames"] == STEPS
    assert complete[0].value == pytest.approx(result["normalised"])
    for trial in complete:
        # optuna-dashboard shows every attribute whole, and none names a path of this machine.
        for key, value in trial.user_attrs.items():
            text = json.dumps(value)
            assert len(text) <= 1024, key
            assert str(in_tmp) not in text, key
        # The curve is in a file the trial names (relative to the study directory) ...
        curves = trial_curves(trial, in_tmp / "runs" / "studies" / "tiny")
        assert len(curves[f"{TASK}/s0"]) == STEPS // 512
        # ... and is the trial's intermediate values too: one per PPO iteration.
        assert sorted(trial.intermediate_values) == list(range(STEPS // 512))
    capsys.readouterr()
    # A re-run with a larger --trials continues the same study (with its progress bar on).
    rerun = [*args[:args.index("--trials") + 1], "3", *args[args.index("--trials") + 2:]]
    rerun.remove("--no-progress")
    assert main(rerun) == 0
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    captured = capsys.readouterr()
    assert "3 finished trials" in captured.out
    # trials done / requested, best value so far, the current trial's task and step
    assert "3/3" in captured.err
    assert re.search(r"best -?\d+\.\d{3} \|", captured.err)
    assert f"trial 2 {TASK}/s0 step 512/{STEPS}" in captured.err


@pytest.mark.slow
def test_wilcoxon_prunes_the_bad_region_as_a_marked_partial_trial(in_tmp):
    settings = sabotage_settings(in_tmp, seeds=SEEDS_FOR_WILCOXON, trials=3, pruner="auto", name="wil")
    assert settings.resolved_pruner == "wilcoxon"
    study = prepare_study(settings)
    for sabotage in (0.0, 0.05, 1.0):  # two good trials first, so a best trial exists
        study.enqueue_trial({"sabotage": sabotage})
    outcome = run_study(settings, log=lambda text: None)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    bad = trials[2]
    assert bad.user_attrs[ATTR_PARTIAL] is True
    assert bad.user_attrs[ATTR_INSTANCES_SAVED] == 1  # pruned after 4 of 5 instances (p = 1/16)
    assert len(trial_results(bad)) == 4
    assert bad.value < min(t.value for t in trials[:2])
    assert outcome.partial >= 1 and outcome.instances_saved >= 1
    # Each (task, seed) is recorded under its stable id, whatever the shuffled order ...
    assert {r["index"] for r in trial_results(bad).values()} < set(range(SEEDS_FOR_WILCOXON))
    assert {r["index"] for r in trial_results(trials[0]).values()} == set(range(SEEDS_FOR_WILCOXON))
    # ... and the intermediate values are the learning curve over training (iteration steps,
    # 8 per instance), not the per-instance scores the pruner decided on.
    assert max(trials[0].intermediate_values) == SEEDS_FOR_WILCOXON * 8 - 1


@pytest.mark.slow
def test_median_prunes_the_bad_region_within_one_iteration(in_tmp):
    settings = sabotage_settings(in_tmp, seeds=1, trials=3, pruner="median", name="med")
    study = prepare_study(settings)
    for sabotage in (0.0, 0.05, 1.0):
        study.enqueue_trial({"sabotage": sabotage})
    outcome = run_study(settings, log=lambda text: None)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    bad = trials[2]
    last_step = max(bad.intermediate_values)
    frames = trial_results(bad)[f"{TASK}/s0"]["frames"]
    # The decision came after iteration last_step (0-based); training stopped right there.
    assert frames == (last_step + 1) * 512 < STEPS
    assert outcome.pruned == 1 and bad.user_attrs[ATTR_INSTANCES_SAVED] > 0


@pytest.mark.slow
@pytest.mark.parametrize("batch", [0, 2], ids=["single-runs", "batch-of-2"])
def test_killed_study_resumes_and_its_dead_trial_is_retried(in_tmp, batch):
    # With --batch 2 trials 0 and 1 train as one population, then trial 2 alone is killed.
    args = ["study", "run", "--shape", "sigmoid", "--tasks", TASK, "--steps-per-task", str(STEPS),
            "--seeds", "0-1", "--trials", "3", "--study-name", "killed", "--no-progress",
            "--heartbeat-interval", "1", "--grace-period", "3", "--pruner", "none",
            "--batch", str(batch), *TRAIN_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(klip_command(*args), cwd=in_tmp, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    storage = "sqlite:///klip-studies.db"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:  # kill it while its second trial is running
            try:
                trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
            except (KeyError, Exception):
                trials = []
            # A RUNNING trial with its parameters drawn: killed before that, its retry would
            # have nothing to copy and draw new ones (correct, but not what this test checks).
            # With a batch, only once the whole first batch is told: between the tells of its
            # trials, the last one "running" may finish before the kill lands.
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            if complete >= max(batch, 1) and \
                    any(t.state == TrialState.RUNNING and t.params for t in trials):
                break
            time.sleep(0.3)
        else:
            pytest.fail("the study never reached its second trial")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    result = run_klip(args, in_tmp)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == 3
    assert len(failed) == 1  # the killed trial: marked failed, never silently lost ...
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].params == failed[0].params  # ... and retried


@pytest.mark.slow
def test_report_and_export_of_a_finished_study(in_tmp, capsys):
    settings = sabotage_settings(in_tmp, seeds=2, trials=3, pruner="none", name="rep")
    settings.space = {"sabotage": Dimension(0.0, 0.2), "eps": Dimension(0.1, 0.3)}
    settings.fixed = {}
    run_study(settings, log=lambda text: None)
    storage = str(in_tmp / "study.db")
    assert main(["study", "report", "--study-name", "rep", "--storage", storage,
                 "--out", str(in_tmp / "report")]) == 0
    printed = capsys.readouterr().out
    assert "best trial" in printed and "PED-ANOVA" in printed and f"{TASK}: normalised" in printed
    report = in_tmp / "report"
    for name in ("trials.csv", "trials.md", "importances.json", "history.png", "slice.png", "contour.png",
                 "learning_curves.png", "best_shape.json", "best_gate.png", "summary.json"):
        assert (report / name).is_file(), name
    summary = json.loads((report / "summary.json").read_text())
    study = optuna.load_study(study_name="rep", storage=f"sqlite:///{storage}")
    assert summary["best_value"] == pytest.approx(study.best_value)
    assert len((report / "trials.csv").read_text().splitlines()) == 1 + 3
    # What the study cost, from its runs' own timings: 3 trials x 2 seeds.
    assert summary["training_cost"]["runs"] == 6 and summary["training_cost"]["process_hours"] > 0
    assert "training cost: " in printed and "over 6 runs" in printed

    assert main(["study", "export", "--study-name", "rep", "--storage", storage,
                 "--out", str(in_tmp / "export")]) == 0
    config_path = in_tmp / "export" / f"trial-{study.best_trial.number}-config.yaml"
    config = yaml.safe_load(config_path.read_text())
    shape = json.loads(Path(config["shape_file"]).read_text())
    assert shape["params"]["sabotage"] == pytest.approx(study.best_params["sabotage"])
    assert config["rollout_steps"] == 512 and config["task"] == TASK
    assert config == {**study.best_trial.user_attrs[ATTR_CONFIG], "shape_file": config["shape_file"],
                      "task": TASK, "seed": 0}
    # klip train takes it and reproduces the trial's own run of (task, seed 0) exactly.
    assert main(["train", "--config", str(config_path), "--out", str(in_tmp / "retrain"),
                 "--no-progress"]) == 0
    retrained = json.loads((in_tmp / "retrain" / "summary.json").read_text())["final_return_last10pct"]
    original = trial_results(study.best_trial)[f"{TASK}/s0"]["score"]
    assert retrained == pytest.approx(original)
    # The same from the storage alone, for another seed of the trial.
    assert main(["study", "rerun", "--study-name", "rep", "--storage", storage, "--seed", "1",
                 "--out", str(in_tmp / "rerun"), "--no-progress"]) == 0
    rerun = json.loads((in_tmp / "rerun" / "summary.json").read_text())["final_return_last10pct"]
    assert rerun == pytest.approx(trial_results(study.best_trial)[f"{TASK}/s1"]["score"])


BASE = ["study", "run", "--tasks", TASK, "--steps-per-task", str(STEPS), "--trials", "2",
        "--study-name", "bad", "--no-progress", *TRAIN_FLAGS]


@pytest.mark.parametrize(("extra", "message"), [
    (["--shape", "sigmoid", "--storage", "redis://localhost/0"], "unknown storage scheme 'redis'"),
    (["--shape", "sigmoid", "--storage", "postgresql://postgres@127.0.0.1:1/none"], "cannot open storage"),
    (["--shape", "sigmoid", "--storage", "sqlite:///no/such/dir/study.db"],
     "cannot open storage sqlite:///no/such/dir/study.db: directory no/such/dir does not exist"),
    (["--shape", "nope"], "unknown shape 'nope'"),
    (["--shape", "sigmoid", "--tasks", "Nope-v0"], "unknown task 'Nope-v0'"),
    (["--shape", "sigmoid", "--fix", "nope=1"], "has no parameter 'nope'"),
    (["--shape", "sigmoid", "--fix", "tau=-1"], "--fix tau=-1 is outside its allowed range"),
    (["--shape", "sigmoid", "--fix", "eps=0.2", "--sampler", "cmaes"], "cmaes needs at least 2"),
    (["--shape", "learned", "--sampler", "grid"], "sampler grid cannot handle this space"),
    (["--shape", "sigmoid", "--search-space", "space.yaml"], "needs finite low < high"),
    (["--shape", "sigmoid", "--search-space", "missing.yaml"], "search-space file not found"),
    (["--shape", "sigmoid", "--batch", "2", "--pruner", "median"], "cannot prune on learning curves"),
    (["--shape", "sigmoid", "--batch", "2", "--compile"], "--batch: --compile trains one agent at a time"),
    (["--shape", "sigmoid", "--batch", "-1"], "--batch must be 0"),
    (["--shape", "sigmoid", "--seeds", "2"], "--seeds 2 is ambiguous: write --seeds 0-1"),
    (["--shape", "sigmoid", "--search-space", "narrow.yaml", "--fix", "tau=0.5"],
     "--fix tau=0.5 contradicts --search-space narrow.yaml, which searches tau in [0.01, 0.1]"),
    (["--shape", "sigmoid", "--fix", "tau=0.05", "--fix", "tau=0.06"], "--fix tau is given more than once"),
    (["--shape", "sigmoid", "--fix", "tau=0.05", "--fix", "tau=0.050"], "--fix tau is given more than once"),
])
def test_bad_input_is_one_error_line_exit_2_and_writes_nothing(in_tmp, capsys, extra, message):
    (in_tmp / "space.yaml").write_text("tau: {low: 0.5, high: 0.1}\n")
    (in_tmp / "narrow.yaml").write_text("tau: [0.01, 0.1]\n")
    before = sorted(in_tmp.iterdir())
    started = time.monotonic()
    # --tasks given twice: argparse keeps the last.
    assert main([*BASE, *extra]) == 2
    assert time.monotonic() - started < 30
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("klip: error: "), error
    assert message in error[0]
    assert sorted(in_tmp.iterdir()) == before


@pytest.mark.parametrize("storage", [None, "elsewhere.db", "sqlite:///other/studies.db", "journal.log"])
def test_dashboard_without_a_database_refuses_in_one_line_and_creates_nothing(tmp_path, monkeypatch,
                                                                              capsys, storage):
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/local/bin/{name}")  # installed or not
    monkeypatch.setattr("subprocess.call", lambda *args, **kwargs: calls.append(args) or 0)
    assert main(["study", "dashboard", *(["--storage", storage] if storage else [])]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("klip: error: no study database at "), error
    assert list(tmp_path.iterdir()) == [] and calls == []


def test_study_name_reused_with_other_settings_is_refused_naming_the_difference(in_tmp, capsys):
    from klip.cli import build_parser
    from klip.study_cli import _settings

    # Create the study (no trials) exactly as `klip study run` would.
    prepare_study(_settings(build_parser().parse_args([*BASE, "--shape", "sigmoid"])))
    before = sorted(in_tmp.iterdir())
    assert main([*BASE, "--shape", "linear_ramp"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "differs in:" in error[0] and "shape 'sigmoid' -> 'linear_ramp'" in error[0]
    assert main([*BASE, "--shape", "sigmoid", "--steps-per-task", str(2 * STEPS)]) == 2
    assert "steps_per_task 4096 -> 8192" in capsys.readouterr().err
    assert sorted(in_tmp.iterdir()) == before
    study = optuna.load_study(study_name="bad", storage="sqlite:///klip-studies.db")
    assert study.get_trials() == []


@pytest.mark.slow
def test_a_tiny_cmaes_discovery_of_the_learned_shape_exports_a_loadable_shape(in_tmp, capsys):
    """The discovery path end to end at a toy budget: CMA-ES over the learned vector, the best
    vector exported as a shape JSON that loads and trains as a `learned` shape."""
    from klip.shapes import load_shape
    from klip.studies.space import vector_parameters

    assert main(["study", "run", "--shape", "learned", "--sampler", "cmaes", "--sampler-seed", "0",
                 "--tasks", TASK, "--steps-per-task", str(STEPS), "--trials", "3", "--study-name", "disc",
                 "--storage", str(in_tmp / "disc.db"), "--pruner", "none", "--no-progress",
                 *TRAIN_FLAGS]) == 0
    study = optuna.load_study(study_name="disc", storage=f"sqlite:///{in_tmp / 'disc.db'}")
    done = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    assert len(done) == 3
    # CMA-ES knows the space from the start: its first generation drew them all.
    assert [trial.system_attrs.get("cma:generation") for trial in done] == [0, 0, 0]
    assert main(["study", "export", "--study-name", "disc", "--storage", str(in_tmp / "disc.db"),
                 "--out", str(in_tmp / "export")]) == 0
    config = yaml.safe_load((in_tmp / "export" / f"trial-{study.best_trial.number}-config.yaml").read_text())
    shape = load_shape(config["shape_file"])
    assert type(shape).__name__ == "LearnedShape"
    knots = vector_parameters(type(shape))
    assert len(knots) == shape.vector_size and set(knots) < set(study.best_params)
    assert shape.get_vector().tolist() == pytest.approx([study.best_params[name] for name in knots])
    assert main(["train", "--config", str(in_tmp / "export" / f"trial-{study.best_trial.number}-config.yaml"),
                 "--steps", "512", "--out", str(in_tmp / "one-iteration"), "--no-progress"]) == 0
    assert (in_tmp / "one-iteration" / "summary.json").is_file()


@pytest.mark.slow
def test_batch_trains_several_trials_as_one_population_each_with_its_own_parameters(in_tmp):
    settings = sabotage_settings(in_tmp, seeds=2, trials=4, pruner="none", name="batch")
    settings.batch = 3
    study = prepare_study(settings)
    for sabotage in (0.0, 1.0, 0.02):  # the first batch: a good, a reversed and a good trial
        study.enqueue_trial({"sabotage": sabotage})
    outcome = run_study(settings, log=lambda text: None)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4 and outcome.finished == 4
    for trial in trials:
        results = trial_results(trial)
        assert sorted(results) == [f"{TASK}/s0", f"{TASK}/s1"]
        assert all(r["frames"] == STEPS and r["complete"] for r in results.values())
        assert trial.value == pytest.approx(sum(r["normalised"] for r in results.values()) / 2)
        assert trial_curves(trial, settings.directory)[f"{TASK}/s0"][-1][0] == STEPS
        for seed in (0, 1):
            run = settings.directory / f"trial-{trial.number:05d}" / f"{TASK}-s{seed}"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["seed"] == seed and config["shape_params"]["sabotage"] == trial.params["sabotage"]
    # Each agent trained with its own trial's shape: the reversed gate learns to fall.
    assert trials[1].value < min(trials[0].value, trials[2].value)
    # sabotage = 0 is PPO-Clip's gate: its agent of the population is bitwise the single `step`
    # run that made the reference of its seed, so it scores what that run scored, exactly.
    protocol = protocol_hash(settings.train_options)
    references = {entry["seed"]: entry["step_score"] for entry in load_cache().values()
                  if entry["protocol_hash"] == protocol and entry["steps"] == STEPS}
    scores = {result["seed"]: result["score"] for result in trial_results(trials[0]).values()}
    assert scores == {0: references[0], 1: references[1]}
    assert not list(settings.directory.glob("population-*"))  # staging directories are gone


@pytest.mark.slow
@pytest.mark.parametrize("batch", [0, 2], ids=["single-runs", "batch-of-2"])
def test_a_diverged_run_is_its_trials_result_and_the_study_goes_on(in_tmp, batch, clean_registry):
    from klip.shapes import load_shapes_from_file

    plugin = write_fuse_plugin(in_tmp.parent)
    load_shapes_from_file(plugin)
    space, fixed = resolve_space("fuse")
    settings = StudySettings(
        study_name=f"fuse{batch}", shape="fuse", tasks=[TASK], steps_per_task=STEPS, seeds=1, trials=2,
        train_options={**TRAIN_OPTIONS, "shape_plugin": str(plugin)}, space=space, fixed=fixed,
        sampler="random", sampler_seed=0, pruner="none", storage=parse_storage(str(in_tmp / "study.db")),
        study_dir=in_tmp / "artefacts", progress=False, batch=batch)
    study = prepare_study(settings)
    # Diverges in iteration 1 (no episode logged yet), in iteration 5 of 8, never; with --batch 2
    # the first two train as one population.
    for at in (0.0, 0.5, 1.0):
        study.enqueue_trial({"at": at})
    outcome = run_study(settings, log=lambda text: None)
    by_at = {trial.params["at"]: trial for trial in study.get_trials() if trial.params}
    unscored, diverged, whole = by_at[0.0], by_at[0.5], by_at[1.0]
    assert outcome.finished == 2  # the study went on past the trial it could not score
    assert unscored.state == TrialState.FAIL
    assert "diverged before an episode ended" in unscored.user_attrs["klip_error"]
    assert diverged.state == whole.state == TrialState.COMPLETE
    result = trial_results(diverged)[f"{TASK}/s0"]
    assert result["diverged"] and result["complete"] and result["frames"] == 5 * 512
    summary = json.loads((settings.directory / f"trial-{diverged.number:05d}" / f"{TASK}-s0" /
                          "summary.json").read_text())
    assert summary["status"] == "diverged" and result["score"] == summary["final_return_last10pct"]
    assert diverged.value == pytest.approx(result["normalised"])
    assert not trial_results(whole)[f"{TASK}/s0"]["diverged"]
