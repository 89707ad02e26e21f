"""scripts/grids.sh carries the populations still training from one clone to the next.

Checkpoints are not committed, so `--stop` packs every unfinished population (checkpoints
included) into results/unfinished.tar and a start on a fresh clone unpacks it. The script runs
here in a copy of the repository's layout with no lanes (KLIP_GRID_LANES=0) and a stand-in klip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNFINISHED = {  # population directory -> its checkpoint's bytes
    "results/zoo/runs/Hopper-v4/sigmoid/population": b"zoo checkpoint",
    "results/discovery/study/population-00182-Walker2d-v4": b"batch checkpoint",
}
FINISHED_RUN = "results/zoo/runs/Hopper-v4/step/s0"  # keeps its checkpoint, ignored by git


def grids(repository: Path, logs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "KLIP_GRID_LOGS": str(logs), "KLIP_GRID_LANES": "0"}
    return subprocess.run(["bash", str(repository / "scripts" / "grids.sh"), *args], cwd=repository,
                          env=environment, capture_output=True, text=True, timeout=60, check=False)


def make_repository(path: Path) -> Path:
    (path / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "grids.sh", path / "scripts" / "grids.sh")
    klip = path / ".venv" / "bin" / "klip"
    klip.parent.mkdir(parents=True)
    klip.write_text("#!/bin/sh\nexit 0\n")
    klip.chmod(0o755)
    for directory, checkpoint in UNFINISHED.items():
        (path / directory / "checkpoints").mkdir(parents=True)
        (path / directory / "checkpoints" / "last.ckpt").write_bytes(checkpoint)
        (path / directory / "s0").mkdir()
        (path / directory / "s0" / "metrics.csv").write_text("frames\n2048\n")
        (path / directory / "s0" / "tensorboard").mkdir()
        (path / directory / "s0" / "tensorboard" / "events.out.tfevents.1").write_bytes(b"log")
    (path / FINISHED_RUN / "checkpoints").mkdir(parents=True)
    (path / FINISHED_RUN / "checkpoints" / "last.ckpt").write_bytes(b"finished")
    return path


def test_stop_packs_the_unfinished_populations_and_a_fresh_clone_continues_them(tmp_path):
    repository = make_repository(tmp_path / "machine-1")
    stopped = grids(repository, tmp_path / "logs-1", "--stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "holds 2 unfinished populations" in stopped.stdout
    with tarfile.open(repository / "results" / "unfinished.tar") as archive:
        names = archive.getnames()
    for directory in UNFINISHED:
        assert f"{directory}/checkpoints/last.ckpt" in names and f"{directory}/s0/metrics.csv" in names
    assert not any(name.startswith(FINISHED_RUN) for name in names)
    assert not any("tensorboard" in name for name in names)  # git ignores them; not needed to resume

    # What a clone of the commit holds: the archive and the committed files, no checkpoint.
    clone = tmp_path / "machine-2"
    shutil.copytree(repository, clone)
    for checkpoints in clone.glob("results/**/checkpoints"):
        shutil.rmtree(checkpoints)
    started = grids(clone, tmp_path / "logs-2")
    assert started.returncode == 0, started.stderr
    assert "continuing from results/unfinished.tar: 2 unfinished populations" in started.stdout
    for directory, checkpoint in UNFINISHED.items():
        assert (clone / directory / "checkpoints" / "last.ckpt").read_bytes() == checkpoint


def test_the_archive_is_not_unpacked_where_it_was_written_or_unpacked_before(tmp_path):
    repository = make_repository(tmp_path / "machine")
    logs = tmp_path / "logs"
    assert grids(repository, logs, "--stop").returncode == 0
    # Since the stop, the populations finished and were dissolved into their cells.
    for directory in UNFINISHED:
        shutil.rmtree(repository / directory)
    started = grids(repository, logs)
    assert started.returncode == 0, started.stderr
    assert "continuing from" not in started.stdout
    assert not any((repository / directory).exists() for directory in UNFINISHED)


def test_a_stop_with_nothing_unfinished_removes_the_archive(tmp_path):
    repository = make_repository(tmp_path / "machine")
    assert grids(repository, tmp_path / "logs", "--stop").returncode == 0
    for directory in UNFINISHED:
        shutil.rmtree(repository / directory)
    stopped = grids(repository, tmp_path / "logs", "--stop")
    assert stopped.returncode == 0 and "no unfinished population" in stopped.stdout
    assert not (repository / "results" / "unfinished.tar").exists()
