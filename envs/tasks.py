"""Task name -> TorchRL environment, following the CleanRL / SB3 PPO MuJoCo protocol."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.wrappers.vector import TransformObservation
from torchrl.envs import EnvBase, TransformedEnv

from klip import compat
from klip.envs.envpool_backend import EnvPoolVectorEnv, check_env_backend
from klip.envs.names import KNOWN_TASKS, check_task_installed
from klip.envs.torchrl_env import VecGymWrapper
from klip.envs.wrappers import (
    ClipAction,
    EpisodeRecorder,
    LeanSyncVectorEnv,
    ObservationNormalizer,
    ReturnScaler,
)

__all__ = [
    "KNOWN_TASKS",
    "drain_episode_stats",
    "get_normalization_state",
    "gym_env",
    "gym_vector_env",
    "is_discrete",
    "is_envpool_env",
    "make_env",
    "make_eval_env",
    "normalizes_by_default",
    "observation_and_action_dims",
    "set_normalization_state",
]

OBS_CLIP = 10.0
REWARD_CLIP = 10.0


def _check_task(task: str) -> None:
    if task not in KNOWN_TASKS:
        raise ValueError(f"Unknown task {task!r}; known tasks: {', '.join(KNOWN_TASKS)}")
    check_task_installed(task)


def normalizes_by_default(task: str) -> bool:
    """Whether `make_env` normalises `task`'s observations and scales its rewards by default.

    Every task: the paper's protocol states observation and reward normalisation as part of the
    configuration shared by all its tasks, CartPole-v1 and LunarLander-v3 included (CleanRL's
    discrete `ppo.py` and rl-zoo's settings for those two use neither; docs/training.md).
    """
    return True


def gym_env(task: str) -> gym.Env:
    """One gymnasium env of `task`, unwrapped by klip: the one place klip makes them."""
    # The paper's protocol uses the -v4 tasks on purpose.
    warnings.filterwarnings("ignore", message=".*is out of date. You should consider upgrading.*")
    _route_mujoco_warnings()
    # The passive env checker only validates gymnasium's own envs, at one wrapper per step.
    return gym.make(task, disable_env_checker=True)


# Written by the -v4 models on every load; it says nothing about a run.
_V4_MODEL_WARNING = "compiler attribute 'settotalmass' is deprecated"


def _route_mujoco_warnings() -> None:
    # MuJoCo's own handler appends to MUJOCO_LOG.TXT in the working directory, outside
    # every run's folder; a handler the user installed is left alone.
    try:
        import mujoco
    except ImportError:
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


def _mujoco_warning(message: str) -> None:
    # Called from MuJoCo's C code, so it must not raise: logging, not `warnings` (which a
    # filter can turn into an exception).
    if _V4_MODEL_WARNING not in message:
        logging.getLogger(__name__).warning("MuJoCo: %s", message)


def _sub_env_fn(task: str) -> Callable[[], gym.Env]:
    return lambda: gym_env(task)


def _build_vector_env(
    task: str,
    num_envs: int,
    *,
    obs_norm: bool,
    obs_update: bool,
    reward_norm: bool,
    gamma: float,
    backend: str = "gymnasium",
) -> tuple[VectorEnv, np.ndarray | None, np.ndarray | None]:
    """Build the gymnasium stack; returns it with the single-env action bounds (None: discrete)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    check_env_backend(backend, task)
    venv: VectorEnv
    if backend == "envpool":
        venv = EnvPoolVectorEnv(task, num_envs)
    else:
        venv = LeanSyncVectorEnv([_sub_env_fn(task) for _ in range(num_envs)])
    # Raw episode statistics are recorded before any reward/observation processing.
    venv = EpisodeRecorder(venv)
    space = venv.single_action_space
    low = high = None
    if isinstance(space, gym.spaces.Box):
        # Clip at the env; the advertised space is unbounded so that TorchRL never projects
        # the policy's action, whose log-prob is what PPO stores.
        venv = clip_action = ClipAction(venv)
        low, high = clip_action.low, clip_action.high
    elif not isinstance(space, gym.spaces.Discrete) or space.start != 0:
        raise TypeError(f"{task}: only Box and Discrete (from 0) action spaces are supported, got {space}")
    obs_shape = venv.single_observation_space.shape
    if obs_norm:
        venv = ObservationNormalizer(venv, clip=OBS_CLIP, update=obs_update)
    else:
        # One dtype convention for policies (MuJoCo emits float64).
        venv = TransformObservation(
            venv,
            lambda o: o.astype(np.float32),
            single_observation_space=gym.spaces.Box(-np.inf, np.inf, obs_shape, np.float32),
        )
    if reward_norm:
        venv = ReturnScaler(venv, gamma=gamma, clip=REWARD_CLIP)
    return venv, low, high


def make_env(
    task: str, *, num_envs: int = 1, seed: int = 0, gamma: float = 0.99, normalize: bool | None = None,
    backend: str = "gymnasium",
) -> EnvBase:
    """Training env with ``batch_size == [num_envs]``; sub-env ``i`` is seeded ``seed + i``.

    ``backend`` is the simulator under the stack: gymnasium's MuJoCo envs, or an EnvPool pool
    (`klip.envs.envpool_backend`); evaluation envs are always gymnasium's.

    With ``normalize``: actions clipped at the env, observations normalised by shared running
    statistics and clipped to +-10, rewards scaled by the running std of the discounted return
    (``gamma``) and clipped to +-10. Actions are always clipped; observations are float32.
    ``normalize=None`` is the task's protocol (`normalizes_by_default`).
    A discrete task's actions are integer indices (TorchRL's ``Categorical`` spec).
    """
    _check_task(task)
    if normalize is None:
        normalize = normalizes_by_default(task)
    venv, low, high = _build_vector_env(
        task, num_envs, obs_norm=normalize, obs_update=True, reward_norm=normalize, gamma=gamma,
        backend=backend,
    )
    env = VecGymWrapper(venv, action_low=low, action_high=high)
    env.set_seed(seed)
    return env


def make_eval_env(task: str, *, seed: int, normalization_state: dict[str, Any] | None) -> EnvBase:
    """Single-sub-env (batch ``[1]``) evaluation env with raw rewards and clipped actions.

    Observations are normalised with ``normalization_state``'s statistics, frozen; with ``None``
    (or an empty state, i.e. a policy trained without normalisation) they are left raw.
    """
    _check_task(task)
    obs_norm = bool(normalization_state)
    venv, low, high = _build_vector_env(
        task, 1, obs_norm=obs_norm, obs_update=False, reward_norm=False, gamma=1.0
    )
    env = VecGymWrapper(venv, action_low=low, action_high=high)
    if obs_norm:
        _set_obs_state(find_wrapper(env, ObservationNormalizer), normalization_state)
    env.set_seed(seed)
    return env


def gym_vector_env(env: EnvBase) -> VectorEnv:
    """The gymnasium vector stack under a (possibly transformed) env from this module."""
    base = env.base_env if isinstance(env, TransformedEnv) else env
    if not isinstance(base, VecGymWrapper):
        raise TypeError(f"expected an env built by klip.envs.make_env/make_eval_env, got {type(env)}")
    return compat.gym_wrapper_env(base)


def is_envpool_env(env: EnvBase) -> bool:
    """Whether `make_env` built `env` on EnvPool (`backend="envpool"`)."""
    return isinstance(gym_vector_env(env).unwrapped, EnvPoolVectorEnv)


def find_wrapper(env: EnvBase, cls: type) -> Any:
    """Innermost-first search of the gymnasium wrapper chain for a ``cls`` instance (or None)."""
    venv = gym_vector_env(env)
    while isinstance(venv, VectorWrapper):
        if isinstance(venv, cls):
            return venv
        venv = venv.env
    return None


def drain_episode_stats(env: EnvBase) -> list[tuple[float, int]]:
    """Raw ``(return, length)`` of the episodes finished since the last call, then forget them."""
    return find_wrapper(env, EpisodeRecorder).drain()


def drain_episodes(env: EnvBase) -> list[tuple[float, int, int]]:
    """Raw ``(return, length, end_frame)`` of the episodes finished since the last call, where
    ``end_frame`` counts the frames (all sub-envs) since that call up to the episode's last step."""
    return find_wrapper(env, EpisodeRecorder).drain_with_end_frames()


def observation_and_action_dims(env: EnvBase) -> tuple[int, int]:
    """Flat observation size, and the action size (a discrete task's: its number of actions)."""
    obs_shape = env.observation_spec["observation"].shape
    if is_discrete(env):
        return int(obs_shape[-1]), int(env.action_spec.space.n)
    return int(obs_shape[-1]), int(env.action_spec.shape[-1])


def is_discrete(env: EnvBase) -> bool:
    """Whether the env's actions are integer indices (a `Discrete` space)."""
    return isinstance(gym_vector_env(env).single_action_space, gym.spaces.Discrete)


def get_normalization_state(env: EnvBase) -> dict[str, Any]:
    """Snapshot of the normalisation statistics ({} when the env does not normalise).

    Arrays are returned as float64 tensors and scalars as floats so the dict loads with
    ``torch.load(weights_only=True)`` (numpy arrays do not).
    """
    state: dict[str, Any] = {}
    obs_norm: ObservationNormalizer | None = find_wrapper(env, ObservationNormalizer)
    if obs_norm is not None:
        rms = obs_norm.obs_rms
        state["obs_mean"] = torch.tensor(rms.mean, dtype=torch.float64)
        state["obs_var"] = torch.tensor(rms.var, dtype=torch.float64)
        state["obs_count"] = float(rms.count)
    ret_scale: ReturnScaler | None = find_wrapper(env, ReturnScaler)
    if ret_scale is not None:
        rms = ret_scale.return_rms
        state["return_mean"] = float(rms.mean)
        state["return_var"] = float(rms.var)
        state["return_count"] = float(rms.count)
        state["discounted_returns"] = torch.tensor(ret_scale.returns, dtype=torch.float64)
    return state


def _set_obs_state(obs_norm: ObservationNormalizer, state: dict[str, Any]) -> None:
    rms = obs_norm.obs_rms
    mean = np.asarray(state["obs_mean"], dtype=np.float64)
    if mean.shape != rms.mean.shape:
        raise ValueError(f"obs_mean shape {mean.shape} != observation shape {rms.mean.shape}")
    rms.mean = mean.copy()
    rms.var = np.asarray(state["obs_var"], dtype=np.float64).copy()
    rms.count = float(state["obs_count"])


def set_normalization_state(env: EnvBase, state: dict[str, Any]) -> None:
    """Restore a :func:`get_normalization_state` snapshot exactly.

    An env without reward normalisation (the eval env) takes only the observation part.
    """
    obs_norm: ObservationNormalizer | None = find_wrapper(env, ObservationNormalizer)
    ret_scale: ReturnScaler | None = find_wrapper(env, ReturnScaler)
    if (obs_norm is not None) != ("obs_mean" in state):
        raise ValueError("normalisation state and env disagree on observation normalisation")
    if obs_norm is not None:
        _set_obs_state(obs_norm, state)
    if ret_scale is not None:
        if "return_var" not in state:
            raise ValueError("env normalises rewards but the state has no return statistics")
        returns = np.asarray(state["discounted_returns"], dtype=np.float64)
        if returns.shape != ret_scale.returns.shape:
            raise ValueError(
                f"state has {returns.shape[0]} discounted returns, env has {ret_scale.num_envs}"
            )
        rms = ret_scale.return_rms
        rms.mean = np.float64(state["return_mean"])
        rms.var = np.float64(state["return_var"])
        rms.count = float(state["return_count"])
        ret_scale.returns = returns.copy()
