"""Task name -> TorchRL environment (CleanRL / SB3 PPO MuJoCo protocol).

The names below are imported on first use, so that checking a task name
(`klip.envs.names`, read by `klip.algos.config`) does not import torch and TorchRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from klip.envs.names import KNOWN_TASKS
    from klip.envs.state import get_env_state, set_env_state
    from klip.envs.tasks import (
        drain_episode_stats,
        drain_episodes,
        get_normalization_state,
        gym_env,
        gym_vector_env,
        is_discrete,
        is_envpool_env,
        make_env,
        make_eval_env,
        normalizes_by_default,
        observation_and_action_dims,
        set_normalization_state,
    )

__all__ = [
    "KNOWN_TASKS",
    "drain_episode_stats",
    "drain_episodes",
    "get_env_state",
    "get_normalization_state",
    "gym_env",
    "gym_vector_env",
    "is_discrete",
    "is_envpool_env",
    "make_env",
    "make_eval_env",
    "normalizes_by_default",
    "observation_and_action_dims",
    "set_env_state",
    "set_normalization_state",
]

_LAZY = {"KNOWN_TASKS": "klip.envs.names", "get_env_state": "klip.envs.state",
         "set_env_state": "klip.envs.state"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(_LAZY.get(name, "klip.envs.tasks")), name)
    raise AttributeError(f"module 'klip.envs' has no attribute {name!r}")
