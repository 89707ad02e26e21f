"""Mid-episode snapshots of an env from `make_env`, so a resumed run continues bit for bit.

Neither gymnasium nor TorchRL can do this: pickling a gymnasium env rebuilds it
from its constructor arguments (`EzPickle`), losing the simulator state. A
snapshot here holds, per sub-env, the full MuJoCo integration state
(`mj_getState`), the episode step counter of `TimeLimit`, the RNG, and plain
array attributes of non-MuJoCo envs; plus the wrappers' episode accumulators
and normalisation statistics.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import SyncVectorEnv
from gymnasium.wrappers import TimeLimit
from torchrl.envs import EnvBase

from klip import compat
from klip.envs.tasks import find_wrapper, get_normalization_state, gym_vector_env, set_normalization_state
from klip.envs.wrappers import EpisodeRecorder

_PLAIN = (np.ndarray, float, int, bool, np.floating, np.integer, type(None))
# What MuJoCo derives from the state and gymnasium's tasks read between two steps: Ant's and
# Humanoid's rewards take the torso (`xpos`) or the centre of mass (`xipos`) before stepping.
# After `mj_step` these belong to the start of the last sub-step, not to the state it ended in,
# so recomputing them from the restored state (`mj_forward`) would change the next reward
# (Ant-v4 by 5e-5 at once, then the whole run): they are saved and put back as they were.
DERIVED_FIELDS = ("xpos", "xquat", "xmat", "xipos", "ximat", "xanchor", "xaxis", "geom_xpos",
                  "geom_xmat", "site_xpos", "site_xmat", "subtree_com", "subtree_linvel",
                  "subtree_angmom", "cinert", "cvel", "cacc", "cfrc_int", "cfrc_ext", "qacc",
                  "qfrc_actuator", "actuator_force", "actuator_length", "actuator_velocity",
                  "ten_length", "ten_velocity", "sensordata", "energy")


def _to_checkpoint(value: Any) -> Any:
    """numpy -> torch/python, so snapshots load with `torch.load(weights_only=True)`."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _to_checkpoint(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_checkpoint(item) for item in value)
    return value


def _from_checkpoint(value: Any) -> Any:
    return value.numpy().copy() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def _sub_envs(env: EnvBase) -> list[gym.Env] | None:
    """The gymnasium sub-envs, or None for an EnvPool pool (its simulators cannot be saved)."""
    base = gym_vector_env(env).unwrapped
    return list(base.envs) if isinstance(base, SyncVectorEnv) else None


def _time_limit(sub_env: gym.Env) -> TimeLimit | None:
    while isinstance(sub_env, gym.Wrapper):
        if isinstance(sub_env, TimeLimit):
            return sub_env
        sub_env = sub_env.env
    return None


def _simulator_state(base: gym.Env) -> dict[str, Any]:
    try:
        import mujoco
        from gymnasium.envs.mujoco import MujocoEnv
    except ImportError:  # mujoco is optional for classic-control tasks
        MujocoEnv = ()
    if _is_box2d(base):
        # A Box2D world's bodies and contacts are C++ objects with no state API; the snapshot
        # says so, and `set_env_state` refuses it rather than restore a different episode.
        return {"box2d": True}
    if isinstance(base, MujocoEnv):
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(base.model, spec), dtype=np.float64)
        mujoco.mj_getState(base.model, base.data, state, spec)
        derived = {name: getattr(base.data, name).copy() for name in DERIVED_FIELDS
                   if hasattr(base.data, name)}
        return {"mujoco": state, "mujoco_derived": derived}
    return {"attributes": {key: copy.deepcopy(value) for key, value in vars(base).items()
                           if isinstance(value, _PLAIN)}}


def _is_box2d(base: gym.Env) -> bool:
    return type(base).__module__.startswith("gymnasium.envs.box2d")


def _restore_simulator(base: gym.Env, state: dict[str, Any]) -> None:
    if "mujoco" in state:
        import mujoco

        integration = _from_checkpoint(state["mujoco"])
        mujoco.mj_setState(base.model, base.data, integration, mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(base.model, base.data)  # everything else consistent with the state
        # Snapshots from before `mujoco_derived` keep the recomputed values (not bitwise for
        # tasks that read them, see DERIVED_FIELDS).
        for name, value in state.get("mujoco_derived", {}).items():
            np.copyto(getattr(base.data, name), _from_checkpoint(value))
    else:
        for key, value in state["attributes"].items():
            setattr(base, key, _from_checkpoint(value))


def _sub_env_state(sub_env: gym.Env) -> dict[str, Any]:
    base = sub_env.unwrapped
    time_limit = _time_limit(sub_env)
    return {
        "simulator": _simulator_state(base),
        "rng": copy.deepcopy(base.np_random.bit_generator.state),
        "elapsed_steps": None if time_limit is None else compat.time_limit_elapsed_steps(time_limit),
    }


def get_env_state(env: EnvBase) -> dict[str, Any]:
    """Picklable snapshot of everything that decides the env's next transitions.

    An EnvPool env's snapshot has no simulators (`sub_envs` is None): it cannot be restored.
    """
    sub_envs = _sub_envs(env)
    sub_states = None if sub_envs is None else [_sub_env_state(sub_env) for sub_env in sub_envs]
    recorder: EpisodeRecorder = find_wrapper(env, EpisodeRecorder)
    return _to_checkpoint({
        "sub_envs": sub_states,
        "episode_returns": recorder.episode_returns.copy(),
        "episode_lengths": recorder.episode_lengths.copy(),
        "finished": list(recorder.finished),
        "normalization": get_normalization_state(env),
    })


def set_env_state(env: EnvBase, state: dict[str, Any]) -> None:
    """Restore a `get_env_state` snapshot into an env built with the same task and size."""
    sub_envs = _sub_envs(env)
    if sub_envs is None or state["sub_envs"] is None:
        raise ValueError("an EnvPool env's simulators cannot be saved or restored; "
                         "runs on --env-backend envpool do not resume")
    if any("box2d" in sub_state["simulator"] for sub_state in state["sub_envs"]):
        raise ValueError("a Box2D env's simulator (LunarLander) cannot be saved or restored; "
                         "runs on Box2D tasks do not resume")
    if len(sub_envs) != len(state["sub_envs"]):
        raise ValueError(
            f"env state holds {len(state['sub_envs'])} sub-envs, env has {len(sub_envs)}"
        )
    for sub_env, sub_state in zip(sub_envs, state["sub_envs"], strict=True):
        base = sub_env.unwrapped
        _restore_simulator(base, sub_state["simulator"])
        base.np_random.bit_generator.state = copy.deepcopy(sub_state["rng"])
        time_limit = _time_limit(sub_env)
        if time_limit is not None:
            compat.set_time_limit_elapsed_steps(time_limit, sub_state["elapsed_steps"])
    recorder: EpisodeRecorder = find_wrapper(env, EpisodeRecorder)
    recorder.episode_returns = _from_checkpoint(state["episode_returns"]).astype(np.float64)
    recorder.episode_lengths = _from_checkpoint(state["episode_lengths"]).astype(np.int64)
    recorder.finished = list(state["finished"])
    set_normalization_state(env, state["normalization"])
