"""Shared pieces of the study tests: a tiny protocol, a test-only shape, a cached reference file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from klip.studies.references import REFERENCE_FILE_ENV, ensure_references

TASK = "Hopper-v4"
STEPS = 4096
# 8 PPO iterations of 512 frames: ~1.6 s per run on one core; at this budget PPO-Clip
# (~65) clearly beats a random policy (~18), so the normalised objective is defined.
TRAIN_FLAGS = ["--rollout-steps", "512", "--minibatch-size", "64", "--epochs", "4", "--lr", "1e-3",
               "--checkpoint-every", "100"]
TRAIN_OPTIONS = {"rollout_steps": 512, "minibatch_size": 64, "epochs": 4, "lr": 1e-3,
                 "checkpoint_every": 100, "eval_episodes": 0}

# At sabotage=0 this is PPO-Clip's step gate; at sabotage=1 the gate is 3 everywhere, so
# every sample's effective advantage is -2A: the policy learns to fall. A deliberately
# bad parameter region for the pruning tests.
SABOTAGE_SHAPE = '''
from collections.abc import Mapping
from typing import ClassVar

from klip.shapes import CoefficientShape, Param, register_shape, signed_distance_past_boundary


@register_shape("sabotage")
class SabotageShape(CoefficientShape):
    """Step gate at sabotage=0; every gradient reversed at sabotage=1."""

    params: ClassVar[Mapping[str, Param]] = {
        "sabotage": Param(0.0, 0.0, 1.0, search=(0.0, 1.0)),
        "eps": Param(0.2, 0.0, 1.0, low_inclusive=False, high_inclusive=False, search=(0.1, 0.3)),
    }

    def gate(self, ratio, advantage):
        step = (signed_distance_past_boundary(ratio, advantage, self.eps) > 0).to(ratio.dtype)
        return step * (1 - self.sabotage) + 3.0 * self.sabotage
'''


# PPO-Clip's gate until a fraction `at` of training is done, then NaN: a run that diverges on
# cue, in the iteration where progress reaches `at` (at = 1: never).
FUSE_SHAPE = '''
from collections.abc import Mapping
from typing import ClassVar

import torch
from klip.shapes import CoefficientShape, Param, register_shape, signed_distance_past_boundary


@register_shape("fuse")
class FuseShape(CoefficientShape):
    """Step gate, NaN once `progress` >= `at`."""

    params: ClassVar[Mapping[str, Param]] = {"at": Param(1.0, 0.0, 1.0, search=(0.0, 1.0))}
    context: ClassVar[tuple[str, ...]] = ("progress",)

    def gate(self, ratio, advantage):
        step = (signed_distance_past_boundary(ratio, advantage, 0.2) > 0).to(ratio.dtype)
        blown = torch.as_tensor(self.progress >= self.at)
        return step + torch.where(blown, float("nan"), 0.0).to(ratio.dtype)
'''


def write_fuse_plugin(directory: Path) -> Path:
    path = directory / "fuse_shape.py"
    if not path.is_file():
        path.write_text(FUSE_SHAPE)
    return path


def write_sabotage_plugin(directory: Path) -> Path:
    path = directory / "sabotage_shape.py"
    path.write_text(SABOTAGE_SHAPE)
    return path


def compute_references(cache: Path, seeds: int) -> None:
    """Real reference runs for the tiny protocol, into a temporary cache (never the repository's)."""
    os.environ[REFERENCE_FILE_ENV] = str(cache)
    ensure_references([TASK], STEPS, range(seeds), TRAIN_OPTIONS, command="pytest tests/test_studies*.py")


def klip_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "klip", *args]


def run_klip(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(klip_command(*args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
