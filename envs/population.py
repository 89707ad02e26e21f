"""Every agent's sub-environments in one gymnasium vector env, each agent with its own statistics.

A population of N agents built as N `make_env` stacks pays each wrapper's Python layers N
times per step (episode recorder, action clip, observation and reward normalisers); on
Hopper-v4 the stack costs about half as much again as the simulation. `SharedPopulationEnv`
steps all N x E sub-envs through one `LeanSyncVectorEnv` and one layer of each wrapper, whose
statistics are arrays with a leading agent axis: agent a's sub-envs are rows a*E .. a*E+E-1.

Exactness: the grouped wrappers repeat the per-agent wrappers' arithmetic elementwise (the
single-sample update of `_RunningMeanStd._update_one`, gymnasium's moment update, the same
normalisation and clips), so each agent sees bitwise the transitions its own `make_env`
stack gives (`tests/test_population.py`). It is built *from* the agents' `make_env` stacks:
their seeded, reset sub-envs are adopted as they are, their statistics copied in, and
`sync_to_agent_envs` / `sync_from_agent_envs` copy the statistics back and forth, so
checkpoints, evaluation and resume keep using the single-run code (`klip.envs.state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.wrappers.vector import TransformObservation
from torchrl.envs import EnvBase

from klip.envs.envpool_backend import EnvPoolVectorEnv
from klip.envs.tasks import find_wrapper, gym_vector_env
from klip.envs.wrappers import (
    ClipAction,
    DiscountedReturns,
    EpisodeRecorder,
    LeanSyncVectorEnv,
    ObservationNormalizer,
    ResetReturn,
    ReturnScaler,
    StepReturn,
    _reset_mask,
    _RunningMeanStd,
)

__all__ = ["GroupedRunningMeanStd", "SharedPopulationEnv"]


class GroupedRunningMeanStd:
    """`groups` independent `_RunningMeanStd`s as arrays: mean/var `[groups, *shape]`, count `[groups]`."""

    def __init__(self, groups: int, shape: tuple[int, ...]) -> None:
        reference = _RunningMeanStd(shape=shape, dtype=np.float64)
        self.mean = np.repeat(reference.mean[None], groups, axis=0)
        self.var = np.repeat(reference.var[None], groups, axis=0)
        self.count = np.full(groups, float(reference.count), dtype=np.float64)
        self.shape = shape

    def _counts(self, count: np.ndarray) -> np.ndarray:
        return count.reshape(-1, *([1] * len(self.shape)))

    def update_all(self, x: np.ndarray) -> None:
        """Fold `x` `[groups, samples, *shape]` into each group's statistics, vectorised."""
        samples = x.shape[1]
        count = self._counts(self.count)
        if samples == 1:
            # `_RunningMeanStd._update_one`, elementwise over groups.
            delta = x[:, 0] - self.mean
            total = count + 1
            self.mean = self.mean + delta / total
            self.var = (self.var * count + np.square(delta) * count / total) / total
            self.count = total.reshape(-1)
            return
        # `_RunningMeanStd.update` and gymnasium's `update_mean_var_count_from_moments`.
        batch_mean = np.add.reduce(x, axis=1) / samples
        centred = x - batch_mean[:, None]
        batch_var = np.add.reduce(centred * centred, axis=1) / samples
        delta = batch_mean - self.mean
        total = count + samples
        new_mean = self.mean + delta * samples / total
        m_a = self.var * count
        m_b = batch_var * samples
        m2 = m_a + m_b + np.square(delta) * count * samples / total
        self.mean, self.var, self.count = new_mean, m2 / total, total.reshape(-1)

    def update_group(self, group: int, x: np.ndarray) -> None:
        """Fold `x` `[samples, *shape]` into one group, with the single-agent code itself."""
        single = self.get(group)
        single.update(x)
        self.set(group, single)

    def get(self, group: int) -> _RunningMeanStd:
        single = _RunningMeanStd(shape=self.shape, dtype=np.float64)
        single.mean, single.var = self.mean[group].copy(), self.var[group].copy()
        single.count = float(self.count[group])
        return single

    def set(self, group: int, single: Any) -> None:
        self.mean[group] = single.mean
        self.var[group] = single.var
        self.count[group] = single.count


def _groups_of(mask: np.ndarray, groups: int) -> list[tuple[int, np.ndarray]]:
    per_group = mask.reshape(groups, -1)
    return [(group, per_group[group]) for group in np.flatnonzero(per_group.any(1))]


class GroupedEpisodeRecorder(EpisodeRecorder):
    """`EpisodeRecorder` whose finished episodes are kept per agent."""

    def __init__(self, env: VectorEnv, groups: int) -> None:
        super().__init__(env)
        self.groups = groups
        self.per_group = env.num_envs // groups
        self.finished_by_group: list[list[tuple[float, int, int]]] = [[] for _ in range(groups)]

    def _record(self, env_index: int, episode_return: float, length: int) -> None:
        # The end frame counts the agent's own frames, as its single run's recorder does.
        end_frame = self.steps_since_drain * self.per_group
        self.finished_by_group[env_index // self.per_group].append((episode_return, length, end_frame))

    def drain_group(self, group: int) -> list[tuple[float, int, int]]:
        """`(return, length, end_frame)` of the group's episodes (frames since `steps_since_drain` was 0)."""
        finished, self.finished_by_group[group] = self.finished_by_group[group], []
        return finished


class GroupedObservationNormalizer(VectorWrapper):
    """`ObservationNormalizer` with one set of statistics per agent (group of sub-envs)."""

    def __init__(self, env: VectorEnv, groups: int, *, clip: float, epsilon: float) -> None:
        super().__init__(env)
        self.groups = groups
        self.per_group = env.num_envs // groups
        self.clip = clip
        self.epsilon = epsilon
        self.obs_rms = GroupedRunningMeanStd(groups, env.single_observation_space.shape)

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        grouped = obs.reshape(self.groups, self.per_group, -1)
        scale = np.sqrt(self.obs_rms.var + self.epsilon)[:, None]
        normalized = ((grouped - self.obs_rms.mean[:, None]) / scale).astype(np.float32)
        normalized = normalized.reshape(obs.shape)
        return np.minimum(np.maximum(normalized, -self.clip, out=normalized), self.clip, out=normalized)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> ResetReturn:
        mask = _reset_mask(options)
        obs, info = self.env.reset(seed=seed, options=options)
        mask = np.ones(self.num_envs, dtype=bool) if mask is None else mask
        grouped = obs.reshape(self.groups, self.per_group, -1)
        for group, group_mask in _groups_of(mask, self.groups):
            self.obs_rms.update_group(group, grouped[group][group_mask])
        return self._normalize(obs), info

    def step(self, actions: np.ndarray) -> StepReturn:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.obs_rms.update_all(obs.reshape(self.groups, self.per_group, -1))
        return self._normalize(obs), reward, terminated, truncated, info


class GroupedReturnScaler(DiscountedReturns):
    """`ReturnScaler` with one return statistic per agent (group of sub-envs)."""

    def __init__(self, env: VectorEnv, groups: int, *, gamma: float, clip: float, epsilon: float) -> None:
        super().__init__(env, gamma=gamma, clip=clip, epsilon=epsilon)
        self.groups = groups
        self.per_group = env.num_envs // groups
        self.return_rms = GroupedRunningMeanStd(groups, ())

    def step(self, actions: np.ndarray) -> StepReturn:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.returns = self.returns * self.gamma + reward
        self.return_rms.update_all(self.returns.reshape(self.groups, self.per_group))
        std = np.sqrt(self.return_rms.var + self.epsilon)
        scaled = (reward.reshape(self.groups, self.per_group) / std[:, None]).reshape(reward.shape)
        np.minimum(np.maximum(scaled, -self.clip, out=scaled), self.clip, out=scaled)
        return obs, scaled, terminated, truncated, info


class SharedPopulationEnv:
    """One vector env over every agent's sub-envs, adopted from the agents' `make_env` stacks."""

    def __init__(self, agent_envs: Sequence[EnvBase]) -> None:
        self.agent_envs = list(agent_envs)
        self.groups = len(self.agent_envs)
        bases = [gym_vector_env(env).unwrapped for env in self.agent_envs]
        self.per_group = bases[0].num_envs
        observation_normalizers = [find_wrapper(env, ObservationNormalizer) for env in self.agent_envs]
        return_scalers = [find_wrapper(env, ReturnScaler) for env in self.agent_envs]
        # Normalised (continuous tasks) or raw (discrete tasks), the same for every agent.
        wrapped = [w is not None for w in observation_normalizers + return_scalers]
        if any(wrapped) and not all(wrapped):
            raise ValueError("SharedPopulationEnv needs training envs from make_env that all "
                             "normalise, or none")
        self.normalizes = all(wrapped)
        first_obs, first_ret = observation_normalizers[0], return_scalers[0]
        venv: VectorEnv
        # EnvPool: one new pool for every agent's sub-envs (one call per step is where its speed
        # is), seeded with the first agent's seed, so agent i's sub-env j starts from seed
        # seeds[0] + i * num_envs + j: its own run's seeding when the seeds step by num_envs.
        # It needs `reset_pool` before the first step. gymnasium: the agents' sub-envs as they
        # are (seeded and reset by their own stacks), no reset here.
        self.pool: EnvPoolVectorEnv | None = None
        if isinstance(bases[0], EnvPoolVectorEnv):
            self.pool = EnvPoolVectorEnv(bases[0].task, self.groups * self.per_group, seed=bases[0].seed)
            venv = self.pool
        else:
            sub_envs = [sub_env for base in bases for sub_env in base.envs]
            venv = LeanSyncVectorEnv([(lambda sub_env=sub_env: sub_env) for sub_env in sub_envs])
        self.recorder = venv = GroupedEpisodeRecorder(venv, self.groups)
        if find_wrapper(self.agent_envs[0], ClipAction) is not None:  # Box actions
            venv = ClipAction(venv)
        if self.normalizes:
            self.observation_normalizer = venv = GroupedObservationNormalizer(
                venv, self.groups, clip=first_obs.clip, epsilon=first_obs.epsilon)
            self.return_scaler = venv = GroupedReturnScaler(
                venv, self.groups, gamma=first_ret.gamma, clip=first_ret.clip, epsilon=first_ret.epsilon)
        else:
            # The agents' own stacks only cast to float32 (`make_env(normalize=False)`).
            venv = TransformObservation(venv, lambda o: o.astype(np.float32),
                                        single_observation_space=gym_vector_env(
                                            self.agent_envs[0]).single_observation_space)
        self.vector_env = venv
        self.sync_from_agent_envs()

    def step(self, actions: np.ndarray) -> StepReturn:
        return self.vector_env.step(actions)

    def reset_pool(self) -> np.ndarray:
        """Reset the EnvPool pool as the agents' own pools were: a run's env is reset once when
        seeded (`make_env`; those observations are already in the agents' statistics) and once
        by its collector, whose observations go through the wrappers. Returns those."""
        assert self.pool is not None
        self.pool.reset()
        obs, _ = self.vector_env.reset()
        return obs

    def reset_done(self, done: np.ndarray) -> np.ndarray:
        obs, _ = self.vector_env.reset(options={"reset_mask": done})
        return obs

    def drain_episodes(self, agent: int) -> list[tuple[float, int, int]]:
        """`(return, length, end_frame)` of agent `agent`'s episodes since the last rollout."""
        return self.recorder.drain_group(agent)

    def start_rollout(self) -> None:
        """End frames count from here (each rollout's episodes are drained after it)."""
        self.recorder.steps_since_drain = 0

    # -- statistics <-> the agents' own wrappers (checkpoints, evaluation) ----------------
    def _agent_wrappers(self, agent: int
                        ) -> tuple[EpisodeRecorder, ObservationNormalizer | None, ReturnScaler | None]:
        env = self.agent_envs[agent]
        return (find_wrapper(env, EpisodeRecorder), find_wrapper(env, ObservationNormalizer),
                find_wrapper(env, ReturnScaler))

    def sync_to_agent_envs(self) -> None:
        """Write the shared env's per-agent state into each agent's own wrappers."""
        for agent in range(self.groups):
            rows = slice(agent * self.per_group, (agent + 1) * self.per_group)
            recorder, observation_normalizer, return_scaler = self._agent_wrappers(agent)
            recorder.episode_returns = self.recorder.episode_returns[rows].copy()
            recorder.episode_lengths = self.recorder.episode_lengths[rows].copy()
            recorder.finished = list(self.recorder.finished_by_group[agent])
            if observation_normalizer is None or return_scaler is None:
                continue
            observation_normalizer.obs_rms = self.observation_normalizer.obs_rms.get(agent)
            return_scaler.return_rms = self.return_scaler.return_rms.get(agent)
            return_scaler.returns = self.return_scaler.returns[rows].copy()

    def sync_from_agent_envs(self) -> None:
        """Read each agent's own wrappers' state into the shared env (after they were restored)."""
        for agent in range(self.groups):
            rows = slice(agent * self.per_group, (agent + 1) * self.per_group)
            recorder, observation_normalizer, return_scaler = self._agent_wrappers(agent)
            self.recorder.episode_returns[rows] = recorder.episode_returns
            self.recorder.episode_lengths[rows] = recorder.episode_lengths
            self.recorder.finished_by_group[agent] = list(recorder.finished)
            if observation_normalizer is None or return_scaler is None:
                continue
            self.observation_normalizer.obs_rms.set(agent, observation_normalizer.obs_rms)
            self.return_scaler.return_rms.set(agent, return_scaler.return_rms)
            self.return_scaler.returns[rows] = return_scaler.returns
