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

from envs import get_env_state, gym_vector_env, set_env_state


def _policy_head(actor: Any) -> torch.nn.Module:
    """The `GaussianPolicyHead` inside our `ProbabilisticActor` (observation -> loc, scale)."""
    head = actor.module[0]
    if not hasattr(head, "mean") or not hasattr(head, "log_std"):
        raise TypeError("the fast collector needs an actor built by algos.networks.make_actor")
    return head


class FastRollouts:
    """Same interface and data as `TorchRLRollouts`, without per-step TensorDicts."""

    def __init__(self, env: EnvBase, actor: Any, frames_per_env: int) -> None:
        self.env = env
        self.vector_env = gym_vector_env(env)
        self.head = _policy_head(actor)
        self.frames_per_env = frames_per_env
        # The collector starts from a full TorchRL reset; so do we.
        self.observation = env.reset()["observation"].clone()

    @torch.no_grad()
    def collect(self) -> TensorDictBase:
        num_envs, steps = self.observation.shape[0], self.frames_per_env
        observation_dim = self.observation.shape[-1]
        observations = torch.empty(num_envs, steps, observation_dim)
        next_observations = torch.empty_like(observations)
        log_probs = torch.empty(num_envs, steps)
        rewards = torch.empty(num_envs, steps, 1)
        terminated = torch.zeros(num_envs, steps, 1, dtype=torch.bool)
        truncated = torch.zeros_like(terminated)

        # The scale does not depend on the state, so the distribution's scale terms
        # are computed once; each is the same tensor op the distribution would run.
        layers = [(m.weight, m.bias) for m in self.head.mean if isinstance(m, torch.nn.Linear)]
        loc_shape = (num_envs, layers[-1][0].shape[0])
        scale = self.head.log_std.exp().expand(loc_shape)
        variance_twice = 2 * scale**2
        log_scale_and_const = scale.log() + math.log(math.sqrt(2 * math.pi))
        actions = torch.empty(num_envs, steps, loc_shape[1])
        locs = torch.empty_like(actions)

        observation = self.observation
        for t in range(steps):
            hidden = observation
            for index, (weight, bias) in enumerate(layers):
                hidden = torch.nn.functional.linear(hidden, weight, bias)
                if index < len(layers) - 1:
                    hidden = torch.tanh(hidden)
            loc = hidden
            # = IndependentNormal(loc, scale).rsample() and .log_prob(), op for op.
            noise = torch.empty(loc_shape).normal_()
            action = loc + noise * scale
            log_prob = (-((action - loc) ** 2) / variance_twice - log_scale_and_const).sum(-1)
            observations[:, t] = observation
            actions[:, t], locs[:, t], log_probs[:, t] = action, loc, log_prob

            next_obs, reward, term, trunc, _ = self.vector_env.step(action.numpy())
            next_observation = torch.from_numpy(next_obs)
            next_observations[:, t] = next_observation
            rewards[:, t, 0] = torch.from_numpy(reward.astype(np.float32))
            terminated[:, t, 0] = torch.from_numpy(term)
            truncated[:, t, 0] = torch.from_numpy(trunc)
            done = term | trunc
            if done.any():
                reset_obs, _ = self.vector_env.reset(options={"reset_mask": done})
                mask = torch.from_numpy(done).unsqueeze(-1)
                next_observation = torch.where(mask, torch.from_numpy(reset_obs), next_observation)
            observation = next_observation.clone()
        self.observation = observation
        scales = scale.unsqueeze(1).expand(num_envs, steps, loc_shape[1]).clone()

        done = terminated | truncated
        not_done = torch.zeros_like(done)
        return TensorDict(
            {
                "observation": observations,
                "action": actions,
                "action_log_prob": log_probs,
                "loc": locs,
                "scale": scales,
                "done": not_done,
                "terminated": not_done.clone(),
                "truncated": not_done.clone(),
                "next": {
                    "observation": next_observations,
                    "reward": rewards,
                    "done": done,
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
