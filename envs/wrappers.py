"""Gymnasium-level (numpy) wrappers used under the TorchRL environment.

Hand-written rather than gymnasium's stateful vector wrappers because, with
``AutoresetMode.DISABLED`` and partial resets (``options["reset_mask"]``, which is how TorchRL
resets finished sub-envs), gymnasium 1.4 ``NormalizeObservation`` refuses the mode outright,
``NormalizeReward`` and ``RecordEpisodeStatistics`` wipe the state of *every* sub-env on a
partial reset (``SyncVectorEnv.reset`` pops ``reset_mask`` from the shared options dict, so
wrappers that look for it after delegating never see it). The per-sub-env (CleanRL-style)
wrappers would work but update N separate statistics per step; one shared, batched update
(as in SB3's ``VecNormalize``) is both cheaper and gives a single state to checkpoint.
``LeanSyncVectorEnv`` and ``ClipAction`` (and the clips folded into the normalisers) replace
gymnasium's ``SyncVectorEnv.step`` and ``Transform*`` layers on the per-step path, where their
generality cost a measurable share of a Hopper step; tests pin them to gymnasium's values.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper
from gymnasium.wrappers.utils import RunningMeanStd

__all__ = ["ClipAction", "EpisodeRecorder", "LeanSyncVectorEnv", "ObservationNormalizer", "ReturnScaler"]

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
        if n == 1:
            self._update_one(x[0])
            return
        batch_mean = np.add.reduce(x, axis=0) / n
        delta = x - batch_mean
        batch_var = np.add.reduce(delta * delta, axis=0) / n
        self.update_from_moments(batch_mean, batch_var, n)

    def _update_one(self, x: np.ndarray) -> None:
        """``update`` for a single sample (the 1-env protocol, every step), 7 ufunc calls, not 16.

        gymnasium's formulas with batch mean ``x``, batch variance 0 and count 1 (a product by
        1 and a sum with 0 are exact, so the bits are the same for finite samples).
        """
        delta = x - self.mean
        total = self.count + 1
        self.mean = self.mean + delta / total
        self.var = (self.var * self.count + np.square(delta) * self.count / total) / total
        self.count = total


def _reset_mask(options: dict[str, Any] | None) -> np.ndarray | None:
    """Read the partial-reset mask before ``SyncVectorEnv.reset`` pops it from ``options``."""
    if options is None:
        return None
    return options.get("reset_mask")


class LeanSyncVectorEnv(SyncVectorEnv):
    """``SyncVectorEnv`` whose ``step`` does only what ``AutoresetMode.DISABLED`` needs.

    Gymnasium's step, per sub-env and step, goes through the action space's
    ``iterate``, batches every info key (TorchRL reads none in this mode), and
    deep-copies the observations; that is about a third of the cost of a
    Hopper step outside MuJoCo. Here: the sub-env steps, one ``np.stack``, and
    plain copies. Same values, same checks (stepping a finished sub-env before
    resetting it is refused); reset is gymnasium's.
    """

    def __init__(self, env_fns: Any) -> None:
        super().__init__(env_fns, autoreset_mode=AutoresetMode.DISABLED)

    def step(self, actions: np.ndarray) -> StepReturn:
        """Step every sub-env once; the info dict is always empty."""
        if self._autoreset_envs.any():
            raise RuntimeError(f"sub-envs {np.flatnonzero(self._autoreset_envs)} finished and were not reset")
        for i, env in enumerate(self.envs):
            (self._env_obs[i], self._rewards[i], self._terminations[i], self._truncations[i], _) = (
                env.step(actions[i])
            )
        self._observations = np.stack(self._env_obs, out=self._observations)
        np.logical_or(self._terminations, self._truncations, out=self._autoreset_envs)
        return (self._observations.copy(), self._rewards.copy(), self._terminations.copy(),
                self._truncations.copy(), {})


class ClipAction(VectorWrapper):
    """Clip actions to the sub-env's bounds while advertising an unbounded action space.

    The policy's unclipped action is what PPO stores with its log-prob; only the
    env sees the clipped one (as gymnasium's ``ClipAction``, which is not a vector wrapper).
    """

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        space = env.single_action_space
        self.low, self.high = space.low.astype(np.float32), space.high.astype(np.float32)
        self.single_action_space = gym.spaces.Box(-np.inf, np.inf, space.shape, np.float32)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)

    def step(self, actions: np.ndarray) -> StepReturn:
        """Step with the actions clipped (``np.clip``'s values, fewer Python layers)."""
        return self.env.step(np.minimum(np.maximum(actions, self.low), self.high))


class EpisodeRecorder(VectorWrapper):
    """Record the raw return and length of every finished episode of every sub-env."""

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self.episode_returns = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []
        # Vector steps since the last drain at which each finished episode ended.
        self.finished_at_step: list[int] = []
        self.steps_since_drain = 0

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
        self.steps_since_drain += 1
        done = terminated | truncated
        if done.any():
            for i in np.flatnonzero(done):
                self._record(int(i), float(self.episode_returns[i]), int(self.episode_lengths[i]))
            self.episode_returns[done] = 0.0
            self.episode_lengths[done] = 0
        return obs, reward, terminated, truncated, info

    def _record(self, env_index: int, episode_return: float, length: int) -> None:
        self.finished.append((episode_return, length))
        self.finished_at_step.append(self.steps_since_drain)

    def drain(self) -> list[tuple[float, int]]:
        """Return and forget the episodes finished since the last call."""
        finished, self.finished = self.finished, []
        self.finished_at_step, self.steps_since_drain = [], 0
        return finished

    def drain_with_end_frames(self) -> list[tuple[float, int, int]]:
        """`(return, length, end_frame)`: end_frame counts frames of all sub-envs since the last
        drain, up to and including the step that ended the episode."""
        end_frames = [step * self.num_envs for step in self.finished_at_step]
        return [(r, n, f) for (r, n), f in zip(self.drain(), end_frames, strict=True)]


class ObservationNormalizer(VectorWrapper):
    """Normalise observations by a running mean/var shared by all sub-envs, then clip (float32).

    Statistics are updated with every step's observations and with the reset observations of
    the sub-envs actually being reset, unless ``update_running_mean`` is False (frozen, e.g.
    for evaluation).
    """

    def __init__(
        self, env: VectorEnv, *, clip: float = np.inf, epsilon: float = 1e-8, update: bool = True
    ) -> None:
        super().__init__(env)
        shape = env.single_observation_space.shape
        self.clip = clip
        self.single_observation_space = gym.spaces.Box(-clip, clip, shape, np.float32)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, self.num_envs
        )
        self.obs_rms = _RunningMeanStd(shape=shape, dtype=np.float64)
        self.epsilon = epsilon
        self.update_running_mean = update

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        normalized = ((obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon)).astype(
            np.float32
        )
        # In place, as np.clip's values: one array, two ufunc calls.
        return np.minimum(np.maximum(normalized, -self.clip, out=normalized), self.clip, out=normalized)

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


class DiscountedReturns(VectorWrapper):
    """The per-sub-env discounted return that reward scaling divides by, restarted at zero with
    each new episode (SB3 ``VecNormalize`` semantics); CleanRL's gym-0.2x wrapper instead
    multiplies by ``1 - terminated``, which keeps the last reward of an episode in the next
    one's accumulator and never restarts after a truncation."""

    def __init__(self, env: VectorEnv, *, gamma: float, clip: float, epsilon: float) -> None:
        super().__init__(env)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.returns = np.zeros(self.num_envs, dtype=np.float64)
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> ResetReturn:
        """Reset and restart the discounted-return accumulator of the reset sub-envs."""
        mask = _reset_mask(options)
        out = self.env.reset(seed=seed, options=options)
        if mask is None:
            self.returns[:] = 0.0
        else:
            self.returns[mask] = 0.0
        return out


class ReturnScaler(DiscountedReturns):
    """Divide rewards by the running std of the per-sub-env discounted return, then clip."""

    def __init__(
        self,
        env: VectorEnv,
        *,
        gamma: float,
        clip: float = np.inf,
        epsilon: float = 1e-8,
        update: bool = True,
    ) -> None:
        super().__init__(env, gamma=gamma, clip=clip, epsilon=epsilon)
        self.return_rms = _RunningMeanStd(shape=(), dtype=np.float64)
        self.update_running_mean = update

    def step(self, actions: np.ndarray) -> StepReturn:
        """Step, update the return statistics and scale the reward."""
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.returns = self.returns * self.gamma + reward
        if self.update_running_mean:
            self.return_rms.update(self.returns)
        scaled = reward / np.sqrt(self.return_rms.var + self.epsilon)
        np.minimum(np.maximum(scaled, -self.clip, out=scaled), self.clip, out=scaled)
        return obs, scaled, terminated, truncated, info
