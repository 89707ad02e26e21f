"""Nothing lost on any path of a study: clashes, Ctrl-C, a full disk, the reference cache, input."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from studies_support import STEPS, TASK, TRAIN_FLAGS, compute_references, klip_command, run_klip

from klip.cli import main
from klip.studies import references
from klip.studies.references import REFERENCE_FILE_ENV

# The attribute names are spelled out (not imported) so that these tests also run, and fail for
# the defects they check, against a klip that predates them.
ATTR_CONTINUES, ATTR_INTERRUPTED, ATTR_KEPT = "klip_continues", "klip_interrupted", "klip_kept_aside"
STUDY_DIR_MARKER = "klip-study.json"

BASE = ["study", "run", "--shape", "sigmoid", "--tasks", TASK, "--steps-per-task", str(STEPS),
        "--no-progress", "--pruner", "none", *TRAIN_FLAGS]


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "klip-references-safety.json"
    compute_references(cache, 2)
    return cache


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, reference_cache) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(REFERENCE_FILE_ENV, str(reference_cache))
    return tmp_path


def one_error_line(capsys) -> str:
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("klip: error: "), error
    assert "Traceback" not in error[0]
    return error[0]


# -- a study never deletes another study's files --------------------------------------------------


def test_a_new_study_refuses_a_study_dir_that_holds_other_trials_and_deletes_nothing(tmp_path, monkeypatch,
                                                                                      capsys):
    """Before: the same name in another storage (or an emptied database) rmtree'd the old trials."""
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "runs" / "studies" / "shared" / "trial-00000" / f"{TASK}-s0"
    old.mkdir(parents=True)
    (old / "summary.json").write_text('{"status": "finished"}')
    argv = [*BASE, "--seeds", "0", "--trials", "1", "--study-name", "shared", "--storage", "new.db"]
    assert main(argv) == 2
    assert "holds 1 trial directories that study 'shared'" in one_error_line(capsys)
    assert (old / "summary.json").read_text() == '{"status": "finished"}'


def test_two_studies_sharing_a_study_dir_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "shared-dir"
    directory.mkdir()
    (directory / STUDY_DIR_MARKER).write_text(json.dumps({"study_name": "first", "storage": "a.db",
                                                          "uid": "0123"}))
    assert main([*BASE, "--seeds", "0", "--trials", "1", "--study-name", "second",
                 "--study-dir", str(directory)]) == 2
    assert "holds the trials of another study ('first' in a.db)" in one_error_line(capsys)


# The test asks its trial by hand (klip asks inside Study.optimize, or silences this as batches do).
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_directory_found_in_a_trials_place_is_kept_aside_not_deleted(in_tmp):
    from klip.studies.run import Objective, prepare_study
    from klip.studies.settings import StudySettings
    from klip.studies.space import resolve_space
    from klip.studies.storage import parse_storage

    space, fixed = resolve_space("sigmoid")
    settings = StudySettings(study_name="keep", shape="sigmoid", tasks=[TASK], steps_per_task=STEPS, seeds=1,
                             trials=1, space=space, fixed=fixed, storage=parse_storage("keep.db"),
                             progress=False)
    study = prepare_study(settings)
    stale = settings.directory / "trial-00000"
    stale.mkdir(parents=True)
    (stale / "precious.txt").write_text("a finished run of another study")
    trial = study.ask()
    trial_dir, _ = Objective(settings, {}).prepare(trial)
    assert trial_dir == stale and (trial_dir / "shape.json").is_file()
    kept = settings.directory / trial.user_attrs[ATTR_KEPT]
    assert (kept / "precious.txt").read_text() == "a finished run of another study"


# -- Ctrl-C ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_the_same_command_continues_the_interrupted_trial(in_tmp):
    budget = 4 * STEPS  # 32 iterations: the Ctrl-C lands inside the first run
    args = [*BASE, "--seeds", "0-1", "--trials", "2", "--study-name", "stop", "--sampler", "random",
            "--sampler-seed", "0"]
    args[args.index("--steps-per-task") + 1] = str(budget)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(klip_command(*args), cwd=in_tmp, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = in_tmp / "runs" / "studies" / "stop" / "trial-00000" / f"{TASK}-s0" / "metrics.csv"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 3):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("klip: interrupted; trial(s) 0 are queued to continue with their parameters; "
                           "continue with klip study run "), stderr
    trained_before = metrics.read_text().splitlines()[:3]  # with their wall-clock timings
    study = optuna.load_study(study_name="stop", storage="sqlite:///klip-studies.db")
    interrupted = study.trials[0]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs[ATTR_INTERRUPTED]
    # The same command: the interrupted trial is finished with its parameters, from its checkpoints.
    result = run_klip(args, in_tmp)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="stop", storage="sqlite:///klip-studies.db").trials
    continuation = trials[1]
    assert continuation.user_attrs[ATTR_CONTINUES] == 0
    assert continuation.state == TrialState.COMPLETE and continuation.params == interrupted.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    resumed = in_tmp / "runs" / "studies" / "stop" / "trial-00001" / f"{TASK}-s0"
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["frames"] == budget and summary["status"] == "finished"
    # Continued, not restarted: the run's first rows are the ones trained before the Ctrl-C.
    assert (resumed / "metrics.csv").read_text().splitlines()[:3] == trained_before
    assert not (in_tmp / "runs" / "studies" / "stop" / "trial-00000").exists()


@pytest.mark.slow
def test_ctrl_c_during_a_batch_queues_its_trials_again_with_their_parameters(in_tmp):
    """--batch 2 trains trials 0 and 1 as one population: both are queued again, not replaced."""
    args = [*BASE, "--seeds", "0-1", "--trials", "2", "--study-name", "stopb", "--sampler", "random",
            "--sampler-seed", "0", "--batch", "2"]
    args[args.index("--steps-per-task") + 1] = str(4 * STEPS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(klip_command(*args), cwd=in_tmp, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    directory = in_tmp / "runs" / "studies" / "stopb"
    deadline = time.monotonic() + 300
    while not any(len(path.read_text().splitlines()) > 3 for path in directory.glob("**/metrics.csv")):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("klip: interrupted; trial(s) 0, 1 are queued"), stderr
    population = directory / f"population-00000-{TASK}"
    trained_before = {name: (population / name / "metrics.csv").read_text().splitlines()[:3]
                      for name in ("trial0-s0", "trial1-s1")}  # with their wall-clock timings
    result = run_klip(args, in_tmp)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="stopb", storage="sqlite:///klip-studies.db").trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2
    for interrupted, continuation in zip(trials[:2], trials[2:], strict=True):
        assert continuation.user_attrs[ATTR_CONTINUES] == interrupted.number
        assert continuation.params == interrupted.params
    # The population continued from its checkpoint (before: it started again).
    for name, trial in (("trial0-s0", 2), ("trial1-s1", 3)):
        resumed = directory / f"trial-{trial:05d}" / f"{TASK}-s{name[-1]}"
        assert json.loads((resumed / "summary.json").read_text())["frames"] == 4 * STEPS
        assert (resumed / "metrics.csv").read_text().splitlines()[:3] == trained_before[name]
    assert not population.exists() and not (directory / "kept").exists()


@pytest.mark.slow
def test_ctrl_c_with_two_workers_is_one_line_and_each_interrupted_trial_continues(in_tmp):
    args = [*BASE, "--seeds", "0", "--trials", "2", "--study-name", "stopw", "--sampler", "random",
            "--sampler-seed", "0", "--workers", "2"]
    args[args.index("--steps-per-task") + 1] = str(8 * STEPS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(klip_command(*args), cwd=in_tmp, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    directory = in_tmp / "runs" / "studies" / "stopw"
    deadline = time.monotonic() + 300
    while len([path for path in directory.glob("trial-*/*/metrics.csv")
               if len(path.read_text().splitlines()) > 3]) < 2:
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("klip: interrupted; trial(s) 0, 1 are queued"), stderr
    result = run_klip(args, in_tmp)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="stopw", storage="sqlite:///klip-studies.db").trials
    interrupted = {t.number: t for t in trials if t.user_attrs.get(ATTR_INTERRUPTED)}
    continued = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(interrupted) == [0, 1] and len(continued) == 2
    for trial in continued:
        assert trial.params == interrupted[trial.user_attrs[ATTR_CONTINUES]].params


# -- what a trial records ------------------------------------------------------------------------


@pytest.mark.slow
def test_every_trial_attribute_fits_the_dashboard_and_names_no_path_of_the_machine(in_tmp):
    """Before: `klip_curves` held every curve (9-18 kB at 1M steps; here 64 iterations already
    pass 1,024 characters) and `klip_config.shape_file` an absolute path."""
    flags = ["--rollout-steps", "64", "--minibatch-size", "32", "--epochs", "1", "--lr", "1e-3",
             "--checkpoint-every", "1000"]
    args = ["study", "run", "--shape", "sigmoid", "--tasks", TASK, "--steps-per-task", "4096", "--seeds", "0",
            "--trials", "1", "--study-name", "long", "--pruner", "none", "--no-progress", *flags]
    assert main(args) == 0
    trial = optuna.load_study(study_name="long", storage="sqlite:///klip-studies.db").trials[0]
    too_long = {key: len(json.dumps(value)) for key, value in trial.user_attrs.items()
                if len(json.dumps(value)) > 1024}
    with_paths = [key for key, value in trial.user_attrs.items() if str(in_tmp) in json.dumps(value)]
    assert (too_long, with_paths) == ({}, [])
    curves = json.loads((in_tmp / "runs" / "studies" / "long" / trial.user_attrs["klip_curves"]).read_text())
    assert len(curves[f"{TASK}/s0"]) == 4096 // 64
    # Without a pruner the storage gets the curve at most once a second and at the last iteration.
    steps = sorted(trial.intermediate_values)
    assert steps[-1] == 4096 // 64 - 1 and set(steps) <= set(range(4096 // 64))


def test_a_studys_own_attributes_fit_the_dashboard_and_a_study_made_before_still_matches(in_tmp):
    """Before: a `learned` study's `klip_identity` (its 19-dimension search space) was 1,156 characters."""
    from klip.studies.run import prepare_study
    from klip.studies.settings import StudySettings
    from klip.studies.space import resolve_space
    from klip.studies.storage import parse_storage

    space, fixed = resolve_space("learned")
    settings = StudySettings(study_name="wide", shape="learned", tasks=["Hopper-v4", "Walker2d-v4", "Ant-v4"],
                             steps_per_task=300_000, seeds=[0, 1], trials=1, space=space, fixed=fixed,
                             train_options={"rollout_steps": 2048, "lr": 3e-4}, storage=parse_storage("w.db"),
                             study_dir=in_tmp / "artefacts", command="klip study run " + "x" * 200)
    study = prepare_study(settings)
    assert {key: len(json.dumps(value)) for key, value in study.user_attrs.items()
            if len(json.dumps(value)) > 1024} == {}
    assert prepare_study(settings).study_name == "wide"  # the same settings: the same study
    # A study made before kept its identity in one attribute; it is still the same study.
    legacy = optuna.create_study(study_name="old", storage="sqlite:///w.db", direction="maximize")
    legacy.set_user_attr("klip_identity", settings.identity())
    settings.study_name = "old"
    assert prepare_study(settings).user_attrs["klip_identity"] == settings.identity()


# -- a full disk --------------------------------------------------------------------------------


def test_a_full_disk_during_a_trial_is_one_line_naming_the_path_and_finished_trials_stay(in_tmp, monkeypatch,
                                                                                         capsys):
    import klip.algos.agents
    import klip.algos.train
    from klip.studies import training

    real_train = klip.algos.train.train
    calls = []

    def train_until_the_disk_fills(config, out, **kwargs):
        calls.append(out)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")  # as torch.save says it: no path
        return real_train(config, out, **kwargs)

    # Wherever the study reaches the engine's `train` from (the seam, or the engine's own loop).
    for module in (training, klip.algos.agents, klip.algos.train):
        monkeypatch.setattr(module, "train", train_until_the_disk_fills)
    argv = [*BASE, "--seeds", "0", "--trials", "2", "--study-name", "full"]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert line == "klip: error: cannot write runs/studies/full: no space left on the device"
    study = optuna.load_study(study_name="full", storage="sqlite:///klip-studies.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    finished = in_tmp / "runs" / "studies" / "full" / "trial-00000" / f"{TASK}-s0"
    assert json.loads((finished / "summary.json").read_text())["status"] == "finished"


def test_a_storage_that_cannot_be_written_is_one_line_naming_it():
    import sqlite3

    from klip.studies.run import told_in_one_line
    from klip.studies.settings import StudySettings
    from klip.studies.storage import StorageError, parse_storage

    settings = StudySettings(study_name="s", shape="sigmoid", tasks=[TASK], steps_per_task=STEPS, seeds=1,
                             trials=1, storage=parse_storage("studies.db"))
    with pytest.raises(StorageError, match=r"^cannot write to storage sqlite:///studies.db: "
                                           r"database or disk is full$"), told_in_one_line(settings):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as error:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") \
                    from error


def test_a_report_table_is_written_whole_or_not_at_all_and_a_failure_names_it(tmp_path, monkeypatch):
    """Before: a full disk left a 0-byte trials.csv behind and said `[Errno 28]` with no path."""
    from klip.studies.report import write_tables

    path = tmp_path / "trials.csv"
    path.write_text("the old table\n")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(RuntimeError, match=f"^cannot write {path}: no space left on the device$"):
        write_tables([{"number": 0, "value": 1.0}], tmp_path)
    monkeypatch.undo()
    assert path.read_text() == "the old table\n" and os.listdir(tmp_path) == ["trials.csv"]


# -- the reference cache ------------------------------------------------------------------------


def test_reference_scores_are_cached_in_the_users_cache_never_in_the_package(tmp_path, monkeypatch):
    packaged = Path(references.__file__).parent / "references.json"  # the package's own
    before = packaged.read_bytes() if packaged.is_file() else None
    monkeypatch.delenv(REFERENCE_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(references, "random_policy_score", lambda task, steps, seed: 10.0)
    monkeypatch.setattr(references, "step_shape_score", lambda options, task, steps, seed: 50.0)
    found = references.ensure_references([TASK], 1234, [0], {}, command="pytest")
    assert found[TASK].random_score == 10.0 and found[TASK].step_score == 50.0
    assert references.reference_file() == tmp_path / "cache" / "klip" / "references.json"
    cached = json.loads(references.reference_file().read_text())["references"]
    assert [entry["steps"] for entry in cached.values()] == [1234]
    assert (packaged.read_bytes() if packaged.is_file() else None) == before


# -- input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    (["--seeds", "3"], "--seeds 3 is ambiguous"),
    (["--fix", "tau=0.05", "--fix", "tau=0.05"], "--fix tau is given more than once"),
    (["--storage", "redis://x/0"], "unknown storage scheme 'redis'"),
    (["--trials", "0"], "--trials must be a positive integer"),
])
def test_input_errors_that_need_no_shape_come_before_torch_is_imported(tmp_path, extra, message):
    code = ("import sys\nfrom klip.cli import build_parser\nfrom klip.study_cli import run_study_command\n"
            "argv = sys.argv[1:]\ntry:\n    run_study_command(build_parser().parse_args(argv), argv)\n"
            "except (ValueError, RuntimeError) as error:\n    print(error)\nprint('torch' in sys.modules)\n")
    argv = [*BASE, "--trials", "2", "--study-name", "fast", *extra]
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    printed = result.stdout.strip().splitlines()
    assert message in printed[0] and printed[-1] == "False", result
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_first_trial_follows_ctrl_c_continuations_and_heartbeat_retries():
    """A batch names its population after the trial that started the runs, found through any
    chain of Ctrl-C continuations (`klip_continues`) and dead-worker retries (`failed_trial`)."""
    from klip.studies.attributes import ATTR_CONTINUES
    from klip.studies.objective import first_trial

    study = optuna.create_study()
    started = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(started, state=TrialState.FAIL)
    study.enqueue_trial(started.params, user_attrs={ATTR_CONTINUES: started.number})  # Ctrl-C
    continued = study.ask()
    # Its worker dies: the heartbeat's callback (klip's storages use it) enqueues a retry naming it.
    study.tell(continued, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[continued.number])
    retry = study.ask()
    assert retry.number == 2 and study.trials[2].system_attrs["failed_trial"] == 1
    assert first_trial(study, 2) == first_trial(study, 1) == first_trial(study, 0) == 0
    assert first_trial(study, 99) == 99  # not a trial of the study: itself
