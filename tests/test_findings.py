"""results/README.md, the findings page, is the reports' own readings (scripts/findings.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("findings", ROOT / "scripts" / "findings.py")
findings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(findings)


def test_the_committed_page_is_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "findings.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_page_quotes_each_reading_and_collects_the_negative_results(tmp_path: Path) -> None:
    zoo = tmp_path / "results" / "zoo"
    zoo.mkdir(parents=True)
    (zoo / "report.md").write_text(
        "# Comparison\n\n## Completeness\n\n75 of 375 cells done.\n\n## Reading\n\nPreamble.\n\n"
        "- Hopper-v4: above `step`: `spo` (120 [10, 230]).\n- Ant-v4: nothing beats `step`.\n\n"
        "## Training diagnostics\n\n- not a reading\n")
    axis = tmp_path / "results" / "epochs" / "axis"
    axis.mkdir(parents=True)
    (axis / "report.md").write_text(
        "# Along epochs\n\n## Reading\n\n"
        "- `step` against itself at epochs = 10: at 40: degrades, P = 0.20 [0.05, 0.40].\n")
    text = findings.page(tmp_path)
    assert "[The report](zoo/report.md): 75 of 375 cells done." in text
    assert "- Hopper-v4: above `step`: `spo` (120 [10, 230])." in text and "not a reading" not in text
    negatives = text.split("## Negative results")[1]
    assert "Ant-v4: nothing beats `step`." in negatives and "degrades, P = 0.20" in negatives
    assert "spo" not in negatives
    held_out = text.split("## A discovered gate")[1].split("## ")[0]
    assert "the study has not started." in held_out and "Not run yet." in held_out


def test_the_page_shows_each_reports_figure_and_the_discovered_gate_where_they_exist(tmp_path: Path) -> None:
    zoo = tmp_path / "results" / "zoo"
    (zoo / "figures").mkdir(parents=True)
    (zoo / "report.md").write_text("## Reading\n\n- Ant-v4: nothing beats `step`.\n")
    axis = tmp_path / "results" / "epochs" / "axis"
    axis.mkdir(parents=True)
    (axis / "report.md").write_text("## Reading\n\n- none yet\n")
    text = findings.page(tmp_path)
    assert "](zoo/figures/aggregates.png)" not in text and "best_gate.png" not in text
    (zoo / "figures" / "aggregates.png").write_bytes(b"png")
    (axis / "axis.png").write_bytes(b"png")
    gate = tmp_path / findings.BEST_GATE
    gate.parent.mkdir(parents=True)
    gate.write_bytes(b"png")
    text = findings.page(tmp_path)
    assert "](zoo/figures/aggregates.png)" in text and "](epochs/axis/axis.png)" in text
    held_out = text.split("## A discovered gate")[1].split("## ")[0]
    assert "](discovery/increments-3task/report/best_gate.png)" in held_out
