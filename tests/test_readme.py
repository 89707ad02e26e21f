"""The README's examples run as written (a user copies them first)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(title_line: str) -> str:
    """The fenced Python block of the README that starts with `title_line`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    matching = [block for block in blocks if block.startswith(title_line)]
    assert matching, f"no Python block starting with {title_line!r} in the README"
    return matching[0]


def tiny_run(tmp_path: Path) -> list[str]:
    """Flags that turn a README command into a two-iteration Pendulum run in `tmp_path/run`."""
    return ["--task", "Pendulum-v1", "--steps", "512", "--rollout-steps", "256", "--epochs", "1",
            "--eval-episodes", "0", "--no-progress", "--out", str(tmp_path / "run")]


# (plugin file the README writes, what the trained run's config.yaml must then record)
EXAMPLES = [("my_gates.py", ["soft_knee", "width: 0.2"]), ("my_drifts.py", ["quadratic_band"])]


@pytest.mark.slow
@pytest.mark.parametrize("plugin, recorded", EXAMPLES)
def test_readme_shape_example_registers_and_trains(tmp_path: Path, plugin: str, recorded: list[str]) -> None:
    (tmp_path / plugin).write_text(python_block(f"# {plugin}"))
    command = re.search(rf"klip train --shape-plugin {re.escape(plugin)} (.*)", README.read_text())
    assert command is not None, f"the README no longer shows how to train {plugin}"
    result = subprocess.run(
        [sys.executable, "-m", "klip", "train", "--shape-plugin", plugin,
         *command.group(1).split(), *tiny_run(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert all(text in config for text in recorded), config
