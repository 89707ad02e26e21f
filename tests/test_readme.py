"""The README is the front door: short, in a newcomer's order, and its examples run as written.

Every code block of the README also runs in tests/test_docs.py (with tiny budgets); this file
checks what that cannot: the two commands, the order and length of the page, and that the
shape example records what it says in the run it trains.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The sections a newcomer reads, in this order (issue 30: the front door).
SECTIONS = ["The two commands", "What klip is", "Train", "Write a shape", "Check it", "A study",
            "A comparison", "From Python", "Where to go next"]


def python_block(title_line: str, text: str | None = None) -> str:
    """The fenced Python block of the README that starts with `title_line`."""
    blocks = re.findall(r"```python\n(.*?)```", text or README.read_text(), flags=re.S)
    matching = [block for block in blocks if block.startswith(title_line)]
    assert matching, f"no Python block starting with {title_line!r} in the README"
    return matching[0]


def test_readme_is_a_short_front_door_in_a_newcomers_order() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "the README is the front door; the guide lives in docs/"
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == SECTIONS, headings


def test_readme_gives_the_two_commands_and_they_exist() -> None:
    text = README.read_text()
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"\n{script} " in text, script
        assert os.access(ROOT / script, os.X_OK), script
    assert "exec scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in text


def tiny_run(tmp_path: Path) -> list[str]:
    """Flags that turn a README command into a two-iteration Pendulum run in `tmp_path/run`."""
    return ["--task", "Pendulum-v1", "--steps", "512", "--rollout-steps", "256", "--epochs", "1",
            "--eval-episodes", "0", "--no-progress", "--out", str(tmp_path / "run")]


@pytest.mark.slow
def test_readme_shape_example_registers_and_trains(tmp_path: Path) -> None:
    (tmp_path / "my_gates.py").write_text(python_block("# my_gates.py"))
    command = re.search(r"klip train --shape-plugin my_gates\.py (.*)", README.read_text())
    assert command is not None, "the README no longer shows how to train my_gates.py"
    options = re.sub(r"--out \S+", "", command.group(1)).split()
    result = subprocess.run(
        [sys.executable, "-m", "klip", "train", "--shape-plugin", "my_gates.py", *options,
         *tiny_run(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "soft_knee" in config and "width: 0.2" in config, config
