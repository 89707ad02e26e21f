"""Rollout collection: what `klip train` runs, and the reference it is tested against.

- `FastRollouts` (`--collector fast`, **the default**) collects for every agent of a
  population at once: per environment step TorchRL's collector spends more time on
  TensorDict bookkeeping than MuJoCo spends simulating, so this loop calls each agent's
  policy network on plain tensors and one gymnasium vector env (every agent's sub-envs) on
  numpy arrays, and builds one TensorDict per agent and rollout. It draws random numbers
  with the same distribution, in the same order, as `ProbabilisticActor` inside the
  collector, and resets finished sub-envs the way TorchRL does.
- `CollectorRollouts` (`--collector torchrl`, one agent) is TorchRL's own `Collector`: the
  reference. It stays because it is the oracle of the bitwise test (`tests/test_rollouts.py`):
  for the same seed both return the same rollouts, bit for bit.

Each agent's rollout is a TensorDict of shape `[num_envs, frames_per_env]` with the keys TorchRL's
collector writes (`observation`, `action`, `action_log_prob`, `loc` and `scale` of a Gaussian
policy or `logits` of a categorical one, and
`next/{observation, reward, done, terminated, truncated}`), and both save and restore
their place mid-episode, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, ExplorationType

from klip import compat
from klip.algos.networks import (
    categorical_head,
    categorical_log_prob,
    categorical_sample,
    gaussian_log_prob,
    has_categorical_policy,
    policy_head,
)
from klip.envs import drain_episodes, get_env_state, gym_vector_env, is_envpool_env, set_env_state
from klip.envs.population import SharedPopulationEnv


class Rollouts(Protocol):
    def collect(self, generators: Sequence[torch.Generator]) -> list[TensorDictBase]:
        """One rollout of every agent, drawing agent i's random numbers from `generators[i]`."""
        ...

    def drain_episodes(self, agent: int) -> list[tuple[float, int, int]]:
        """Raw `(return, length, end_frame)` of agent `agent`'s episodes of the last rollout."""
        ...

    def agent_env(self, agent: int) -> EnvBase:
        """Agent `agent`'s own `make_env` env, its statistics up to date (evaluation, parameters)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_rollouts(kind: str, envs: Sequence[EnvBase], actors: Sequence[Any], frames_per_env: int) -> Rollouts:
    """`FastRollouts` for `"fast"` (the default), TorchRL's `Collector` for `"torchrl"` (one agent)."""
    if kind == "fast":
        return FastRollouts(envs, actors, frames_per_env)
    if kind == "torchrl":
        if len(envs) != 1:
            raise ValueError("the TorchRL collector collects for one agent")
        return CollectorRollouts(envs[0], actors[0], frames_per_env)
    raise ValueError(f"unknown collector {kind!r}; choose 'fast' or 'torchrl'")


# PyTorch's CPU `normal_` fills a tensor of fewer than 16 float32 elements (or any
# non-contiguous one) one number at a time, in order; larger contiguous ones use a
# vectorised filler whose numbers depend on the tensor's size.
SERIAL_NORMAL_MAX_ELEMENTS = 15


def rollout_noise(steps: int, shape: tuple[int, ...], generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """`steps` standard-normal draws of `shape`, the numbers `steps` separate
    `torch.empty(shape).normal_(generator=generator)` calls give (the rollout draws nothing
    else meanwhile). Small per-step shapes come from one draw into a strided view, which
    PyTorch fills serially: the same numbers in the same order, at a fraction of the calls.
    """
    per_step = math.prod(shape)
    if per_step <= SERIAL_NORMAL_MAX_ELEMENTS:
        strided = torch.empty(steps * per_step, 2)[:, 0]
        return strided.normal_(generator=generator).reshape(steps, *shape)
    return torch.stack([torch.empty(shape).normal_(generator=generator) for _ in range(steps)])


def agent_rows(observations: np.ndarray, agents: int) -> list[torch.Tensor]:
    """Each agent's rows of the shared env's observations, as the tensor its policy reads.

    A row block that does not start on a 64-byte boundary is copied to one that does, as a
    single run's fresh observations do: MKL rounds a product of a misaligned operand
    differently (`benchmarks/batched_exactness.py`), so a view would change the agent's actions.
    """
    rows = torch.from_numpy(observations).view(agents, -1, observations.shape[-1]).unbind(0)
    return [row if row.data_ptr() % 64 == 0 else row.clone() for row in rows]


# (step, each agent's policy output, all agents' outputs stacked) -> the shared env's actions.
ActionChooser = Callable[[int, list[torch.Tensor], torch.Tensor], np.ndarray]


def policy_output(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], observations: torch.Tensor
                  ) -> torch.Tensor:
    """A Linear-Tanh-...-Linear MLP given as (bias, weight.t()) pairs, on one agent's rows."""
    hidden = observations
    *hidden_layers, (out_bias, out_weight_t) = layers
    for bias, weight_t in hidden_layers:
        hidden = torch.addmm(bias, hidden, weight_t).tanh_()
    return torch.addmm(out_bias, hidden, out_weight_t)


class StepRecords:
    """What a rollout keeps per step, stacked into TorchRL's rollout layout at the end."""

    def __init__(self) -> None:
        self.observations: list[torch.Tensor] = []
        self.locs: list[torch.Tensor] = []
        self.actions: list[np.ndarray] = []
        self.next_observations: list[np.ndarray] = []
        self.rewards: list[np.ndarray] = []
        self.terminations: list[np.ndarray] = []
        self.truncations: list[np.ndarray] = []

    def append(
        self,
        observation: torch.Tensor,
        loc: torch.Tensor,
        action: np.ndarray,
        next_observation: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        self.observations.append(observation)
        self.locs.append(loc)
        self.actions.append(action)
        self.next_observations.append(next_observation)
        self.rewards.append(reward)
        self.terminations.append(terminated)
        self.truncations.append(truncated)

    def to_tensordict(self, scale: torch.Tensor | None) -> TensorDictBase:
        """The `[num_envs, steps]` TensorDict the `Collector` returns; log-probs in one call.

        `scale` is a Gaussian policy's; None for a categorical policy, whose `locs` are logits.
        """
        loc = torch.stack(self.locs, 1)
        action = torch.from_numpy(np.stack(self.actions, 1))
        if scale is None:
            policy = {"action_log_prob": categorical_log_prob(action, loc), "logits": loc}
        else:
            scales = scale.unsqueeze(1).expand_as(loc)
            policy = {"action_log_prob": gaussian_log_prob(action, loc, scales), "loc": loc,
                      "scale": scales.clone()}
        terminated = torch.from_numpy(np.stack(self.terminations, 1)).unsqueeze(-1)
        truncated = torch.from_numpy(np.stack(self.truncations, 1)).unsqueeze(-1)
        reward = np.stack(self.rewards, 1).astype(np.float32)
        not_done = torch.zeros_like(terminated)
        return TensorDict(
            {
                "observation": torch.stack(self.observations, 1),
                "action": action,
                **policy,
                "done": not_done,
                "terminated": not_done.clone(),
                "truncated": not_done.clone(),
                "next": {
                    "observation": torch.from_numpy(np.stack(self.next_observations, 1)),
                    "reward": torch.from_numpy(reward).unsqueeze(-1),
                    "done": terminated | truncated,
                    "terminated": terminated,
                    "truncated": truncated,
                },
            },
            batch_size=list(loc.shape[:2]),
        )


class FastRollouts:
    """Every agent's rollout through one vector env, without per-step TensorDicts (the default).

    Per step, each agent's policy mean is its own MLP on its own observations (the operations
    `ProbabilisticActor` runs, on plain tensors), then one `SharedPopulationEnv.step` moves
    every agent's sub-envs. Each agent's data are bitwise what its single run collects.
    """

    def __init__(self, envs: Sequence[EnvBase], actors: Sequence[Any], frames_per_env: int) -> None:
        self.envs = list(envs)
        # A categorical policy's actions are drawn per agent, as its `Categorical.sample()` does.
        self.categorical = has_categorical_policy(actors[0])
        self.heads: list[Any] = [categorical_head(actor) if self.categorical else policy_head(actor)
                                 for actor in actors]
        self.frames_per_env = frames_per_env
        self.num_envs = gym_vector_env(self.envs[0]).num_envs
        if is_envpool_env(self.envs[0]):
            # The shared env has a pool of its own, and the first reset is that pool's.
            self.shared = SharedPopulationEnv(self.envs)
            first = torch.from_numpy(self.shared.reset_pool())
            self.observations = list(first.view(len(self.envs), self.num_envs, -1).unbind(0))
        else:
            # Each agent's first reset is a full TorchRL reset, as its collector's would be; the
            # shared env then adopts the reset sub-envs and their statistics as they are.
            self.observations = [env.reset()["observation"].clone() for env in self.envs]
            self.shared = SharedPopulationEnv(self.envs)

    @torch.no_grad()
    def collect(self, generators: Sequence[torch.Generator]) -> list[TensorDictBase]:
        agents, steps = len(self.envs), self.frames_per_env
        # `F.linear` on a matrix is `addmm(bias, input, weight.t())`: called directly, and
        # `tanh` in place on its fresh result, the same numbers for less dispatch.
        layers = [[(m.bias.detach(), m.weight.detach().t()) for m in self._mlp(head)
                   if isinstance(m, torch.nn.Linear)] for head in self.heads]
        choose, scale = (self._categorical_actions(generators) if self.categorical
                         else self._gaussian_actions(generators))
        records = StepRecords()
        observations = self.observations
        observation = torch.cat(observations)
        self.shared.start_rollout()
        for t in range(steps):
            # Each agent's policy output from its own MLP on its own rows (its single run's operations).
            outputs = [policy_output(mine, rows) for mine, rows in zip(layers, observations, strict=True)]
            output = outputs[0] if agents == 1 else torch.cat(outputs)
            action = choose(t, outputs, output)
            next_obs, reward, terminated, truncated, _ = self.shared.step(action)
            records.append(observation, output, action, next_obs, reward, terminated, truncated)
            done = terminated | truncated
            if done.any():
                next_obs = np.where(done[:, None], self.shared.reset_done(done), next_obs)
            observation = torch.from_numpy(next_obs)
            observations = agent_rows(next_obs, agents)
        self.observations = observations
        rollout = records.to_tensordict(scale).reshape(agents, self.num_envs, steps)
        # Each agent's rollout in tensors of its own (aligned, as its single run's are).
        return [agent_rollout.clone() for agent_rollout in rollout.unbind(0)]

    def _mlp(self, head: Any) -> torch.nn.Sequential:
        return head.logits if self.categorical else head.mean

    def _gaussian_actions(self, generators: Sequence[torch.Generator]) -> tuple[ActionChooser, torch.Tensor]:
        """`IndependentNormal(loc, scale).rsample()`: loc + noise * scale, the same float32 multiply
        and add elementwise, in numpy (cheaper per call than torch on a few numbers), with every
        step's noise drawn ahead from each agent's stream as the collector would draw it."""
        scales, noises = [], []
        for head, generator in zip(self.heads, generators, strict=True):
            scale = head.log_std.exp().expand(self.num_envs, head.log_std.shape[0])
            scales.append(scale)
            noises.append(rollout_noise(self.frames_per_env, tuple(scale.shape), generator).numpy())
        # The shared env's rows are agent-major: agent i's sub-envs are rows i*E .. i*E+E-1.
        noise = np.concatenate(noises, axis=1)
        flat_scales = torch.cat(scales)
        scale_array = flat_scales.numpy()

        def choose(t: int, outputs: list[torch.Tensor], loc: torch.Tensor) -> np.ndarray:
            return loc.numpy() + noise[t] * scale_array

        return choose, flat_scales

    def _categorical_actions(self, generators: Sequence[torch.Generator]) -> tuple[ActionChooser, None]:
        """`Categorical.sample()`'s operations per agent and step, from the agent's own stream:
        `multinomial` draws a number of uniforms that depends on the probabilities, so unlike
        the Gaussian noise they cannot be drawn ahead for the whole rollout."""
        def choose(t: int, outputs: list[torch.Tensor], logits: torch.Tensor) -> np.ndarray:
            actions = [categorical_sample(agent_logits, generator)
                       for agent_logits, generator in zip(outputs, generators, strict=True)]
            return (actions[0] if len(actions) == 1 else torch.cat(actions)).numpy()

        return choose, None

    def drain_episodes(self, agent: int) -> list[tuple[float, int, int]]:
        return self.shared.drain_episodes(agent)

    def agent_env(self, agent: int) -> EnvBase:
        self.shared.sync_to_agent_envs()
        return self.envs[agent]

    def state_dict(self) -> dict[str, Any]:
        self.shared.sync_to_agent_envs()
        return {"envs": [get_env_state(env) for env in self.envs],
                "observations": [obs.clone() for obs in self.observations]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for env, env_state in zip(self.envs, state["envs"], strict=True):
            set_env_state(env, env_state)
        self.shared.sync_from_agent_envs()
        self.observations = [obs.clone() for obs in state["observations"]]


class CollectorRollouts:
    """TorchRL's own `Collector`, one rollout per `collect()`: the reference of `FastRollouts`."""

    def __init__(self, env: EnvBase, actor: Any, frames_per_env: int) -> None:
        self.env = env
        self.collector = Collector(
            env,
            actor,
            frames_per_batch=frames_per_env * env.batch_size.numel(),
            total_frames=-1,
            exploration_type=ExplorationType.RANDOM,
            track_traj_ids=False,
            auto_register_policy_transforms=False,
        )
        self._iterator = iter(self.collector)

    def collect(self, generators: Sequence[torch.Generator]) -> list[TensorDictBase]:
        # The collector's actor draws from the global stream: lend it the agent's.
        (generator,) = generators
        torch.set_rng_state(generator.get_state())
        rollout = next(self._iterator)
        generator.set_state(torch.get_rng_state())
        return [rollout]

    def drain_episodes(self, agent: int) -> list[tuple[float, int, int]]:
        return drain_episodes(self.env)

    def agent_env(self, agent: int) -> EnvBase:
        return self.env

    def state_dict(self) -> dict[str, Any]:
        # The collector's carrier holds the current observation between rollouts;
        # TorchRL's own state_dict leaves it out, so it is saved here.
        return {"env": get_env_state(self.env), "carrier": compat.collector_carrier(self.collector).to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_env_state(self.env, state["env"])
        compat.collector_carrier(self.collector).update(TensorDict(state["carrier"], self.env.batch_size))
