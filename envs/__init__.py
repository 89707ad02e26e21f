"""Task name -> TorchRL environment (CleanRL / SB3 PPO MuJoCo protocol)."""

from klip.envs.state import get_env_state, set_env_state
from klip.envs.tasks import (
    KNOWN_TASKS,
    drain_episode_stats,
    drain_episodes,
    get_normalization_state,
    gym_vector_env,
    is_envpool_env,
    make_env,
    make_eval_env,
    observation_and_action_dims,
    set_normalization_state,
)

__all__ = [
    "KNOWN_TASKS",
    "drain_episode_stats",
    "drain_episodes",
    "get_env_state",
    "get_normalization_state",
    "gym_vector_env",
    "is_envpool_env",
    "make_env",
    "make_eval_env",
    "observation_and_action_dims",
    "set_env_state",
    "set_normalization_state",
]
