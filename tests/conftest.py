"""Fixtures and process-wide test settings; the shared helpers live in `helpers.py`."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def clean_registry():
    """Undo registrations a test makes, so tests stay independent."""
    from klip.shapes import registry

    saved = dict(registry._REGISTRY)
    saved_flag = registry._entry_points_loaded
    saved_files = dict(registry._LOADED_FILES)
    yield registry
    registry._LOADED_FILES.clear()
    registry._LOADED_FILES.update(saved_files)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    registry._entry_points_loaded = saved_flag


# Slow tests of tests/test_training.py, marked here so that file (edited by the training
# work) stays as it is; elsewhere tests carry @pytest.mark.slow themselves.
SLOW_TRAINING_TESTS = {
    "test_killed_process_resumes_from_its_last_checkpoint",
    "test_debug_flag_shows_the_traceback",
    "test_resumed_run_ends_like_the_uninterrupted_run",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name == "test_training.py" and item.originalname in SLOW_TRAINING_TESTS:
            item.add_marker(pytest.mark.slow)
