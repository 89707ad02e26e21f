"""klip installs as one namespace: `klip.shapes`, `klip.algos`, `klip.envs`, `klip.studies`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_outside_repository(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_packages_import_under_klip(tmp_path: Path) -> None:
    result = run_outside_repository(
        "import klip.shapes, klip.algos, klip.envs, klip.studies; print(klip.shapes.__name__)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "klip.shapes"


@pytest.mark.slow
def test_no_generic_top_level_packages(tmp_path: Path) -> None:
    for name in ("shapes", "algos", "envs", "studies"):
        result = run_outside_repository(f"import {name}", tmp_path)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, name


@pytest.mark.slow
def test_preload_imports_every_module_a_long_job_may_need(tmp_path: Path) -> None:
    """A grid or study imports all of klip at its start (klip/preload.py), so that edits made
    while it runs cannot give one process two versions of the code."""
    root = Path(__file__).resolve().parents[1]
    on_disk = {f"klip.{path.stem}" for path in (root / "klip").glob("*.py")}
    for folder in ("algos", "envs", "shapes", "studies"):
        on_disk |= {f"klip.{folder}.{path.stem}" for path in (root / folder).glob("*.py")}
    on_disk = {name for name in on_disk if not name.endswith(("__init__", "__main__"))}
    result = run_outside_repository(
        "import sys; from klip.preload import preload; names = preload(); "
        "print(','.join(sorted(names))); "
        "print(all(name in sys.modules for name in names))", tmp_path)
    assert result.returncode == 0, result.stderr
    names, all_loaded = result.stdout.strip().splitlines()[-2:]
    assert set(names.split(",")) == on_disk
    assert all_loaded == "True"


@pytest.mark.parametrize(("argv", "trains"), [
    (["train", "--task", "Hopper-v4"], True),
    # `compare` and `study run` preload once their input has passed its checks
    # (klip/compare_cli.py, klip/study_cli.py).
    (["compare", "--losses", "step", "--tasks", "Hopper-v4"], False),
    (["compare", "--losses", "step", "--tasks", "Hopper-v4", "--plan"], False),
    (["compare", "report", "somewhere"], False),
    (["study", "run", "--shape", "sigmoid", "--tasks", "Hopper-v4", "--study-name", "s",
      "--steps-per-task", "2048", "--trials", "1"], False),
    (["shapes", "list"], False),
])
def test_commands_that_may_train_for_hours_preload_klip(argv: list[str], trains: bool) -> None:
    from klip.cli import _trains, build_parser

    assert _trains(build_parser().parse_args(argv)) is trains
