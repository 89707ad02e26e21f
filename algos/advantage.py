"""Every agent's GAE in one recursion: TorchRL's `GAE`, with an agent dimension.

TorchRL's `GAE` module does two things per rollout: it evaluates the value network on the
observations and next observations, then runs `generalized_advantage_estimate`, a Python
loop over the rollout's time steps. The loop costs the same for one agent or many, so the
agents share it: each agent's values come from its own `GAE` module's value call (the
operations its single run performs), and one value-less `GAE` with the same options then
runs the recursion on the agents' stacked rollouts. Every operation of the recursion is
elementwise across the batch, so each agent's advantages and value targets are bitwise what
its own module computes (`tests/test_advantage.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.objectives.value import GAE

from klip import compat


def make_gae(gamma: float, lmbda: float, value_network: Any | None) -> GAE:
    """An agent's `GAE` module (with its critic), or the shared recursion (`value_network=None`:
    it reads the values already in the data); one constructor, so both have the same options."""
    return GAE(gamma=gamma, lmbda=lmbda, value_network=value_network, average_gae=False)


@torch.no_grad()
def estimate_advantages(modules: Sequence[GAE], rollouts: Sequence[TensorDictBase],
                        recursion: GAE) -> TensorDictBase:
    """Every agent's rollout, stacked `[agents, ...]`, with its values, advantages and value
    targets: what `modules[i](rollouts[i])` writes, agent by agent."""
    for module, rollout in zip(modules, rollouts, strict=True):
        compat.gae_write_values(module, rollout)
    return recursion(torch.stack(list(rollouts)))


__all__ = ["estimate_advantages", "make_gae"]
