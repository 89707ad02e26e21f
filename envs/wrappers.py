"""Gymnasium-level (numpy) wrappers used under the TorchRL environment.

Hand-written rather than gymnasium's stateful vector wrappers because, with
``AutoresetMode.DISABLED`` and partial resets (``options["reset_mask"]``, which is how TorchRL
resets finished sub-envs), gymnasium 1.4 ``NormalizeObservation`` refuses the mode outright,
``NormalizeReward`` and ``RecordEpisodeStatistics`` wipe the state of *every* sub-env on a
partial reset (``SyncVectorEnv.reset`` pops ``reset_mask`` from the shared options dict, so
wrappers that look for it after delegating never see it). The per-sub-env (CleanRL-style)
wrappers would work but update N separate statistics per step; one shared, batched update
(as in SB3's ``VecNormalize``) is both cheaper and gives a single state to checkpoint.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.wrappers.utils import RunningMeanStd

__all__ = ["DropInfo", "EpisodeRecorder", "ObservationNormalizer", "ReturnScaler"]

ResetReturn = tuple[np.ndarray, dict[str, Any]]
StepReturn = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


class _RunningMeanStd(RunningMeanStd):
    """gymnasium's ``RunningMeanStd`` with the batch moments computed by raw ufunc reductions.

    Same arithmetic as ``np.mean``/``np.var``, minus their ~10 us of Python dispatch per call,
    which would otherwise cost more per step than the rest of the normalisation.
    """

    def update(self, x: np.ndarray) -> None:
        """Fold a batch ``x`` (leading axis = samples) into the statistics."""
        n = x.shape[0]
        batch_mean = np.add.reduce(x, axis=0) / n
        delta = x - batch_mean
        batch_var = np.add.reduce(delta * delta, axis=0) / n
        self.update_from_moments(batch_mean, batch_var, n)


def _reset_mask(options: dict[str, Any] | None) -> np.ndarray | None:
    """Read the partial-reset mask before ``SyncVectorEnv.reset`` pops it from ``options``."""
    if options is None:
        return None
    return options.get("reset_mask")


class DropInfo(gym.Wrapper):
    """Per-sub-env wrapper returning empty info dicts.

    TorchRL reads no info in ``DISABLED`` autoreset mode, yet ``SyncVectorEnv`` batches every
    info key of every sub-env each step (several small array allocations per key).
    """

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step the sub-env and discard its info."""
        obs, reward, terminated, truncated, _ = self.env.step(action)
        return obs, reward, terminated, truncated, {}


class EpisodeRecorder(VectorWrapper):
    """Record the raw return and length of every finished episode of every sub-env."""

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self.episode_returns = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> ResetReturn:
        """Reset (all or the masked sub-envs) and drop their unfinished episodes."""
        mask = _reset_mask(options)
        out = self.env.reset(seed=seed, options=options)
        if mask is None:
            self.episode_returns[:] = 0.0
            self.episode_lengths[:] = 0
        else:
            self.episode_returns[mask] = 0.0
            self.episode_lengths[mask] = 0
        return out

    def step(self, actions: np.ndarray) -> StepReturn:
        """Step and append ``(return, length)`` for each sub-env whose episode ended."""
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.episode_returns += reward
        self.episode_lengths += 1
        done = terminated | truncated
        if done.any():
            for i in np.flatnonzero(done):
                self.finished.append((float(self.episode_returns[i]), int(self.episode_lengths[i])))
            self.episode_returns[done] = 0.0
            self.episode_lengths[done] = 0
        return obs, reward, terminated, truncated, info

    def drain(self) -> list[tuple[float, int]]:
        """Return and forget the episodes finished since the last call."""
        finished, self.finished = self.finished, []
        return finished


class ObservationNormalizer(VectorWrapper):
    """Normalise observations by a running mean/var shared by all sub-envs (float32 output).

    Statistics are updated with every step's observations and with the reset observations of
    the sub-envs actually being reset, unless ``update_running_mean`` is False (frozen, e.g.
    for evaluation).
    """

    def __init__(self, env: VectorEnv, *, epsilon: float = 1e-8, update: bool = True) -> None:
        super().__init__(env)
        shape = env.single_observation_space.shape
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, shape, np.float32)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, self.num_envs
        )
        self.obs_rms = _RunningMeanStd(shape=shape, dtype=np.float64)
        self.epsilon = epsilon
        self.update_running_mean = update

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        return ((obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon)).astype(
            np.float32
        )

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> ResetReturn:
        """Reset and fold the fresh observations of the reset sub-envs into the statistics."""
        mask = _reset_mask(options)
        obs, info = self.env.reset(seed=seed, options=options)
        if self.update_running_mean:
            self.obs_rms.update(obs if mask is None else obs[mask])
        return self._normalize(obs), info

    def step(self, actions: np.ndarray) -> StepReturn:
        """Step, update the statistics with the new observations, and normalise them."""
        obs, reward, terminated, truncated, info = self.env.step(actions)
        if self.update_running_mean:
            self.obs_rms.update(obs)
        return self._normalize(obs), reward, terminated, truncated, info


class ReturnScaler(VectorWrapper):
    """Divide rewards by the running std of the per-sub-env discounted return.

    The accumulator restarts at zero with each new episode (SB3 ``VecNormalize`` semantics);
    CleanRL's gym-0.2x wrapper instead multiplies by ``1 - terminated``, which keeps the last
    reward of an episode in the next one's accumulator and never restarts after a truncation.
    """

    def __init__(
        self, env: VectorEnv, *, gamma: float, epsilon: float = 1e-8, update: bool = True
    ) -> None:
        super().__init__(env)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.return_rms = _RunningMeanStd(shape=(), dtype=np.float64)
        self.returns = np.zeros(self.num_envs, dtype=np.float64)
        self.gamma = gamma
        self.epsilon = epsilon
        self.update_running_mean = update

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> ResetReturn:
        """Reset and restart the discounted-return accumulator of the reset sub-envs."""
        mask = _reset_mask(options)
        out = self.env.reset(seed=seed, options=options)
        if mask is None:
            self.returns[:] = 0.0
        else:
            self.returns[mask] = 0.0
        return out

    def step(self, actions: np.ndarray) -> StepReturn:
        """Step, update the return statistics and scale the reward."""
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.returns = self.returns * self.gamma + reward
        if self.update_running_mean:
            self.return_rms.update(self.returns)
        scaled = reward / np.sqrt(self.return_rms.var + self.epsilon)
        return obs, scaled, terminated, truncated, info
