"""klip study on a real PostgreSQL server: shared workers, a killed worker's trial retried."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from studies_support import STEPS, TASK, TRAIN_FLAGS, compute_references, klip_command, run_klip

from klip.studies.references import REFERENCE_FILE_ENV
from klip.studies.run import ATTR_WORKER

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; the Debian package's system user runs it then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    """A throw-away server on loopback in a temporary data directory; yields its base URL."""
    if PG_BIN is None or not (PG_BIN / "initdb").is_file():
        pytest.skip("PostgreSQL server binaries not installed (scripts/setup.sh installs them)")
    root = Path(tempfile.mkdtemp(prefix="klip-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    subprocess.run(_as_server_user([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                    "--no-sync"]), check=True, capture_output=True)
    subprocess.run(_as_server_user([
        str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "start",
        "-o", f"-h 127.0.0.1 -p {port} -k {root} -F",
    ]), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database(postgres_server, request) -> str:
    """A fresh, empty database per test."""
    import psycopg

    name = "klip_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, tmp_path_factory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "klip-references.json"
    compute_references(cache, 2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(REFERENCE_FILE_ENV, str(cache))
    return tmp_path


def study_args(database: str, name: str, trials: int, *extra: str) -> list[str]:
    return ["study", "run", "--shape", "sigmoid", "--tasks", TASK, "--steps-per-task", str(STEPS),
            "--seeds", "0-1", "--trials", str(trials), "--study-name", name, "--storage", database,
            "--pruner", "none", "--no-progress", *TRAIN_FLAGS, *extra]


@pytest.mark.slow
def test_two_worker_processes_share_one_study_without_duplicate_or_lost_trials(in_tmp, database):
    result = run_klip(study_args(database, "shared", 4, "--workers", "2"), in_tmp)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="shared", storage=database).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # none failed, none surplus
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # no trial evaluated twice
    # Both workers ran trials: their intervals overlap in time.
    first, second = sorted(trials, key=lambda t: t.datetime_start)[:2]
    assert second.datetime_start < first.datetime_complete


@pytest.mark.slow
def test_sigkilled_worker_trial_is_failed_and_retried_by_the_survivor(in_tmp, database):
    args = study_args(database, "faults", 4, "--heartbeat-interval", "1", "--grace-period", "3")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(klip_command(*args), cwd=in_tmp, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)

    def running_workers() -> dict[int, int]:
        """trial number -> pid of the worker running it."""
        try:
            study = optuna.load_study(study_name="faults", storage=database)
        except KeyError:
            return {}
        return {t.number: int(t.user_attrs[ATTR_WORKER].rsplit(":", 1)[1])
                for t in study.get_trials(states=(TrialState.RUNNING,)) if ATTR_WORKER in t.user_attrs}

    def wait_for(condition, what: str) -> None:
        deadline = time.monotonic() + 120
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.2)

    first = start()
    processes = [first]
    try:
        wait_for(lambda: running_workers(), "the first worker's first trial")
        # The study exists now, so the second worker never races to create it.
        processes.append(start())
        snapshot: dict[int, int] = {}

        def both_running() -> bool:
            snapshot.clear()
            snapshot.update(running_workers())
            return len(set(snapshot.values())) == 2

        wait_for(both_running, "both workers running a trial")
        killed_trial, killed_pid = next(iter(snapshot.items()))
        doomed = next(p for p in processes if p.pid == killed_pid)
        survivor = next(p for p in processes if p.pid != killed_pid)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        _, stderr = survivor.communicate(timeout=300)
        assert survivor.returncode == 0, stderr.decode()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    trials = optuna.load_study(study_name="faults", storage=database).get_trials()
    states = {t.number: t.state for t in trials}
    assert states[killed_trial] == TrialState.FAIL  # detected stale, marked failed ...
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE  # ... and retried
    assert retried[0].params == trials[killed_trial].params
    assert sum(state == TrialState.COMPLETE for state in states.values()) == 4


@pytest.mark.slow
def test_unreachable_database_is_a_clear_error_within_30_seconds(in_tmp, postgres_server):
    started = time.monotonic()
    # A port nobody listens on, on the server's own host.
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/nothing"
    result = run_klip(study_args(url, "unreachable", 1), in_tmp, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("klip: error: cannot open storage"), lines
    assert list(in_tmp.iterdir()) == []
