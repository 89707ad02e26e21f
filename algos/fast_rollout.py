"""A lean rollout loop that produces exactly what TorchRL's `Collector` produces.

Why it exists: per environment step, TorchRL's collector and `EnvBase.step`
spend several hundred microseconds on TensorDict bookkeeping, more than the
MuJoCo step itself. This loop calls the policy network on plain tensors and
the gymnasium vector env (the one under our TorchRL env) on numpy arrays,
writes into preallocated tensors and builds one TensorDict per rollout.

It draws random numbers with the same distribution class, in the same order,
as `ProbabilisticActor` inside the collector, and resets finished sub-envs
the way TorchRL does, so for the same seed the rollouts are bitwise equal to
`TorchRLRollouts` (tested). The Collector stays the reference path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from klip.algos.networks import gaussian_log_prob, policy_head
from klip.envs import get_env_state, gym_vector_env, set_env_state

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


class FastRollouts:
    """Same interface and data as `TorchRLRollouts`, without per-step TensorDicts."""

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
        loc_shape = (num_envs, out_weight.shape[0])
        scale = self.head.log_std.exp().expand(loc_shape)
        scale_array = scale.numpy()
        noise = rollout_noise(steps, loc_shape).numpy()
        linear, tanh = torch.nn.functional.linear, torch.tanh

        # Per step only what acting needs; everything else is batched after the loop.
        observations, locs, actions = [], [], []
        next_observations, rewards, terminations, truncations = [], [], [], []
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
            observations.append(observation)
            locs.append(loc)
            actions.append(action)
            next_observations.append(next_obs)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated | truncated
            if done.any():
                reset_obs, _ = self.vector_env.reset(options={"reset_mask": done})
                next_obs = np.where(done[:, None], reset_obs, next_obs)
            observation = torch.from_numpy(next_obs)
        self.observation = observation

        loc = torch.stack(locs, 1)
        action = torch.from_numpy(np.stack(actions, 1))
        scales = scale.unsqueeze(1).expand_as(loc)
        log_prob = gaussian_log_prob(action, loc, scales)
        terminated = torch.from_numpy(np.stack(terminations, 1)).unsqueeze(-1)
        truncated = torch.from_numpy(np.stack(truncations, 1)).unsqueeze(-1)
        not_done = torch.zeros_like(terminated)
        return TensorDict(
            {
                "observation": torch.stack(observations, 1),
                "action": action,
                "action_log_prob": log_prob,
                "loc": loc,
                "scale": scales.clone(),
                "done": not_done,
                "terminated": not_done.clone(),
                "truncated": not_done.clone(),
                "next": {
                    "observation": torch.from_numpy(np.stack(next_observations, 1)),
                    "reward": torch.from_numpy(np.stack(rewards, 1).astype(np.float32)).unsqueeze(-1),
                    "done": terminated | truncated,
                    "terminated": terminated,
                    "truncated": truncated,
                },
            },
            batch_size=[num_envs, steps],
        )

    def state_dict(self) -> dict[str, Any]:
        return {"env": get_env_state(self.env), "observation": self.observation.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_env_state(self.env, state["env"])
        self.observation = state["observation"].clone()
