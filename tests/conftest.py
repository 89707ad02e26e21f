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
