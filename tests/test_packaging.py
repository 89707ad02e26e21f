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
