"""The figures that the results' prose quotes are the data's (scripts/results_prose.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_prose_quotes_the_data() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_prose.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
