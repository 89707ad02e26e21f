"""EnvPool as the simulator under klip's wrappers (`--env-backend envpool`).

EnvPool (a C++ batched environment engine with its own build of MuJoCo) steps all of a
pool's sub-envs in one call, skipping gymnasium's per-sub-env Python. klip uses it only as
the bottom of the same wrapper stack (episode recorder, action clip, observation and reward
normalisers), so everything above the simulator is unchanged. gymnasium stays the default and
the reference: evaluation always runs on gymnasium, and `tests/test_envpool_backend.py`
checks that, from the same state and action, EnvPool's observations, rewards and
terminations agree with gymnasium's (the tolerance and its reasons are stated there).

EnvPool is fast when one call steps many sub-envs; a pool of one env is slower than gymnasium
(`benchmarks/README.md`, "EnvPool"). A population therefore steps all its agents' sub-envs in
one pool (`klip.envs.population.SharedPopulationEnv`), seeded as EnvPool seeds: sub-env k of
a pool of seed s starts from seed s + k, as klip seeds gymnasium's sub-envs.

What EnvPool cannot do: restore a simulator's state, so an EnvPool run cannot resume from a
checkpoint (klip refuses `--resume` for it); and its own random generator draws the initial
states, so the same seed gives other episodes than on gymnasium.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

__all__ = ["ENV_BACKENDS", "EnvPoolVectorEnv", "check_env_backend"]

ENV_BACKENDS: tuple[str, ...] = ("gymnasium", "envpool")
ResetReturn = tuple[np.ndarray, dict[str, Any]]
StepReturn = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


@functools.cache
def _envpool_tasks() -> frozenset[str] | None:
    try:
        import envpool
    except ImportError:
        return None
    return frozenset(envpool.list_all_envs())


def check_env_backend(backend: str, task: str) -> None:
    """Raise `ValueError` with one clear line if `task` cannot run on `backend`."""
    if backend not in ENV_BACKENDS:
        raise ValueError(f"unknown env_backend {backend!r}; choose one of {', '.join(ENV_BACKENDS)}")
    if backend == "gymnasium":
        return
    from klip.envs.names import action_space_of

    if action_space_of(task) == "discrete":
        # Untested under klip's stack (and the bitwise collector tests): gymnasium only, for now.
        raise ValueError(f"env_backend envpool runs continuous tasks only; {task} has discrete actions")
    tasks = _envpool_tasks()
    if tasks is None:
        raise ValueError("env_backend envpool needs the envpool package: pip install 'klip[envpool]'")
    if task not in tasks:
        raise ValueError(f"env_backend envpool has no task {task!r}")


class EnvPoolVectorEnv(VectorEnv):
    """An EnvPool pool with gymnasium's vector API as klip's stack uses it.

    Like `LeanSyncVectorEnv` (`AutoresetMode.DISABLED`): a finished sub-env must be reset
    (`reset(options={"reset_mask": done})`) before the next step; EnvPool's own reset on the
    step after an episode's end is never reached. `reset(seed=s)` rebuilds the pool seeded `s`
    (EnvPool seeds only at construction). One EnvPool thread: klip runs one thread per process.
    """

    autoreset_mode = AutoresetMode.DISABLED

    def __init__(self, task: str, num_envs: int, seed: int = 0) -> None:
        check_env_backend("envpool", task)
        self.task = task
        self.num_envs = num_envs
        self.seed = seed  # of the pool as last built: sub-env i is seeded seed + i
        self._pool = self._make_pool(seed)
        self.single_observation_space = self._pool.single_observation_space
        self.single_action_space = self._pool.single_action_space
        self.observation_space = self._pool.observation_space
        self.action_space = self._pool.action_space
        self.metadata = {"autoreset_mode": AutoresetMode.DISABLED}
        self._observations = np.zeros((num_envs, *self.single_observation_space.shape), np.float64)
        self._finished = np.zeros(num_envs, dtype=bool)

    def _make_pool(self, seed: int) -> Any:
        import envpool

        return envpool.make(self.task, env_type="gymnasium", num_envs=self.num_envs, seed=seed,
                            num_threads=1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetReturn:
        """Reset every sub-env (rebuilding the pool when seeded) or those in `reset_mask`."""
        mask = None if options is None else options.get("reset_mask")
        if seed is not None:  # a new pool: all of it needs its first reset
            self._pool.close()
            self.seed = int(seed)
            self._pool = self._make_pool(self.seed)
            mask = None
        if mask is None:
            observations, _ = self._pool.reset()
            self._observations[:] = observations
            self._finished[:] = False
        else:
            ids = np.flatnonzero(mask)
            if len(ids):
                observations, _ = self._pool.reset(ids.astype(np.int32))
                self._observations[ids] = observations
                self._finished[ids] = False
        return self._observations.copy(), {}

    def step(self, actions: np.ndarray) -> StepReturn:
        """Step every sub-env once; rewards as float64 (EnvPool computes them in float32)."""
        if self._finished.any():
            raise RuntimeError(f"sub-envs {np.flatnonzero(self._finished)} finished and were not reset")
        observations, rewards, terminated, truncated, _ = self._pool.step(np.asarray(actions, np.float64))
        self._observations[:] = observations
        np.logical_or(terminated, truncated, out=self._finished)
        return (observations.copy(), rewards.astype(np.float64), terminated.astype(bool),
                truncated.astype(bool), {})

    def close_extras(self, **kwargs: Any) -> None:
        self._pool.close()
