"""Rollout collection: what `klip train` runs, and the reference it is tested against.

- `FastRollouts` (`--collector fast`, **the default**) is a lean loop: per environment
  step TorchRL's collector spends more time on TensorDict bookkeeping than MuJoCo spends
  simulating, so this loop calls the policy network on plain tensors and the gymnasium
  vector env on numpy arrays, and builds one TensorDict per rollout. It draws random
  numbers with the same distribution, in the same order, as `ProbabilisticActor` inside
  the collector, and resets finished sub-envs the way TorchRL does.
- `CollectorRollouts` (`--collector torchrl`) is TorchRL's own `Collector`: the reference.
  It stays because it is the oracle of the bitwise test (`tests/test_rollouts.py`): for the
  same seed both return the same rollouts, bit for bit.

Both return a TensorDict of shape `[num_envs, frames_per_env]` with the keys TorchRL's
collector writes (`observation`, `action`, `action_log_prob`, `loc`, `scale`, and
`next/{observation, reward, done, terminated, truncated}`), and both save and restore
their place mid-episode, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, ExplorationType

from klip import compat
from klip.algos.networks import gaussian_log_prob, policy_head
from klip.envs import get_env_state, gym_vector_env, set_env_state


class Rollouts(Protocol):
    def collect(self) -> TensorDictBase: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_rollouts(kind: str, env: EnvBase, actor: Any, frames_per_env: int) -> Rollouts:
    """`FastRollouts` for `"fast"` (the default), TorchRL's `Collector` for `"torchrl"`."""
    if kind == "fast":
        return FastRollouts(env, actor, frames_per_env)
    if kind == "torchrl":
        return CollectorRollouts(env, actor, frames_per_env)
    raise ValueError(f"unknown collector {kind!r}; choose 'fast' or 'torchrl'")


# PyTorch's CPU `normal_` fills a tensor of fewer than 16 float32 elements (or any
# non-contiguous one) one number at a time, in order; larger contiguous ones use a
# vectorised filler whose numbers depend on the tensor's size.
SERIAL_NORMAL_MAX_ELEMENTS = 15


def rollout_noise(steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    """`steps` standard-normal draws of `shape`, the numbers `steps` separate
    `torch.empty(shape).normal_()` calls give (the rollout draws nothing else meanwhile).

    Small per-step shapes come from one draw into a strided view, which PyTorch fills
    serially: the same numbers in the same order, at a fraction of the calls.
    """
    per_step = math.prod(shape)
    if per_step <= SERIAL_NORMAL_MAX_ELEMENTS:
        strided = torch.empty(steps * per_step, 2)[:, 0]
        return strided.normal_().reshape(steps, *shape)
    return torch.stack([torch.empty(shape).normal_() for _ in range(steps)])


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

    def to_tensordict(self, scale: torch.Tensor) -> TensorDictBase:
        """The `[num_envs, steps]` TensorDict the `Collector` returns; log-probs in one call."""
        loc = torch.stack(self.locs, 1)
        action = torch.from_numpy(np.stack(self.actions, 1))
        scales = scale.unsqueeze(1).expand_as(loc)
        terminated = torch.from_numpy(np.stack(self.terminations, 1)).unsqueeze(-1)
        truncated = torch.from_numpy(np.stack(self.truncations, 1)).unsqueeze(-1)
        reward = np.stack(self.rewards, 1).astype(np.float32)
        not_done = torch.zeros_like(terminated)
        return TensorDict(
            {
                "observation": torch.stack(self.observations, 1),
                "action": action,
                "action_log_prob": gaussian_log_prob(action, loc, scales),
                "loc": loc,
                "scale": scales.clone(),
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
    """Same interface and data as `CollectorRollouts`, without per-step TensorDicts (the default)."""

    def __init__(self, env: EnvBase, actor: Any, frames_per_env: int) -> None:
        self.env = env
        self.vector_env = gym_vector_env(env)
        self.head = policy_head(actor)
        self.frames_per_env = frames_per_env
        # The collector starts from a full TorchRL reset; so do we.
        self.observation = env.reset()["observation"].clone()

    @torch.no_grad()
    def collect(self) -> TensorDictBase:
        num_envs, steps = self.observation.shape[0], self.frames_per_env
        layers = [(m.weight, m.bias) for m in self.head.mean if isinstance(m, torch.nn.Linear)]
        hidden_layers, (out_weight, out_bias) = layers[:-1], layers[-1]
        scale = self.head.log_std.exp().expand(num_envs, out_weight.shape[0])
        scale_array = scale.numpy()
        noise = rollout_noise(steps, tuple(scale.shape)).numpy()
        linear, tanh = torch.nn.functional.linear, torch.tanh

        # Per step only what acting needs; everything else is batched after the loop.
        steps_taken = StepRecords()
        observation = self.observation
        for t in range(steps):
            hidden = observation
            for weight, bias in hidden_layers:
                hidden = tanh(linear(hidden, weight, bias))
            loc = linear(hidden, out_weight, out_bias)
            # IndependentNormal(loc, scale).rsample(): loc + noise * scale, the same float32
            # multiply and add, in numpy (cheaper per call than torch on 3 numbers).
            action = loc.numpy() + noise[t] * scale_array
            next_obs, reward, terminated, truncated, _ = self.vector_env.step(action)
            steps_taken.append(observation, loc, action, next_obs, reward, terminated, truncated)
            done = terminated | truncated
            if done.any():
                reset_obs, _ = self.vector_env.reset(options={"reset_mask": done})
                next_obs = np.where(done[:, None], reset_obs, next_obs)
            observation = torch.from_numpy(next_obs)
        self.observation = observation
        return steps_taken.to_tensordict(scale)

    def state_dict(self) -> dict[str, Any]:
        return {"env": get_env_state(self.env), "observation": self.observation.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_env_state(self.env, state["env"])
        self.observation = state["observation"].clone()


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

    def collect(self) -> TensorDictBase:
        return next(self._iterator)

    def state_dict(self) -> dict[str, Any]:
        # The collector's carrier holds the current observation between rollouts;
        # TorchRL's own state_dict leaves it out, so it is saved here.
        return {"env": get_env_state(self.env), "carrier": compat.collector_carrier(self.collector).to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_env_state(self.env, state["env"])
        compat.collector_carrier(self.collector).update(TensorDict(state["carrier"], self.env.batch_size))
