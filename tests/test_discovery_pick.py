"""results/discovery/increments-3task/pick.py: the search's leader that the held-out grids test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from klip.studies.compare import GridSpec, parse_entries, prepare_grid
from klip.studies.entries import Entry

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pick", ROOT / "results/discovery/increments-3task/pick.py")
pick = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pick)


def _trial(number: int, value: float) -> Entry:
    return Entry(f"study-increments-3task-t{number}", "", {}, {"trial": number, "value": value})


def test_the_leader_is_the_best_iqm_on_the_recheck_seeds_not_the_best_search_value() -> None:
    first, second, third = _trial(131, 1.60), _trial(143, 1.49), _trial(90, 1.32)
    lucky = {"Hopper-v4": np.array([1.0, 1.0, 1.0]), "Walker2d-v4": np.array([1.0, 1.0, 9.0])}
    steady = {"Hopper-v4": np.array([1.2, 1.2, 1.2]), "Walker2d-v4": np.array([1.2, 1.2, 1.2])}
    scores = {first.label: lucky, second.label: steady, third.label: dict(steady)}
    # The IQM, not the mean: one lucky run (9.0) does not choose; a tie keeps the search's order.
    assert pick.pooled_iqm(lucky) == 1.0 and np.mean(np.concatenate(list(lucky.values()))) > 1.2
    assert pick.choose([first, second, third], scores) == [second, third, first]


def test_an_unfinished_recheck_grid_chooses_nothing(tmp_path: Path, capsys) -> None:
    grid = tmp_path / "recheck"
    spec = GridSpec(parse_entries(["step", "sigmoid"], grid), ["Pendulum-v1"], [102], 512,
                    {"rollout_steps": 256}).validate()
    prepare_grid(grid, spec)
    assert pick.main(grid) == 1
    assert "the re-check grid is not finished (2 of 2 cells to go)" in capsys.readouterr().err
