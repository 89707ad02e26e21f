"""The generated docs are up to date, and they cover every option and every metrics column."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from klip.algos.columns import METRICS_COLUMNS
from klip.algos.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_committed_docs_match_their_sources():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_docs.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_options_doc_lists_every_option_with_its_help():
    text = (ROOT / "docs" / "options.md").read_text()
    for field in dataclasses.fields(TrainConfig):
        assert f"| `{field.name}` |" in text
        assert field.metadata["help"].replace("|", "\\|") in text


def test_metrics_doc_lists_every_documented_column():
    text = (ROOT / "docs" / "metrics.md").read_text()
    for column in METRICS_COLUMNS:
        assert f"| `{column}` |" in text
