"""Every agent's GAE in one recursion is bitwise each agent's own `GAE` module."""

from __future__ import annotations

import pytest
import torch

from klip.algos.advantage import estimate_advantages
from klip.algos.config import TrainConfig
from klip.algos.ppo import PPOModule


@pytest.mark.parametrize("num_envs", [1, 2])
def test_one_recursion_gives_each_agent_what_its_own_module_gives(num_envs):
    configs = [TrainConfig(task="Hopper-v4", seed=seed, steps=4096, rollout_steps=512, minibatch_size=64,
                           num_envs=num_envs).to_dict() for seed in (0, 7, 9)]
    module = PPOModule(configs)
    rollouts = module.rollouts.collect([agent.generator for agent in module.agents])
    assert any(bool(rollout["next", "done"].any()) for rollout in rollouts)  # episodes end inside
    expected = [agent.advantage_module(rollout.clone()) for agent, rollout in zip(module.agents, rollouts,
                                                                                   strict=True)]
    stacked = estimate_advantages([agent.advantage_module for agent in module.agents], rollouts,
                                  module.recursion)
    assert stacked.batch_size[0] == 3
    for agent, reference in enumerate(expected):
        for key in ("advantage", "value_target", "state_value", ("next", "state_value")):
            assert torch.equal(stacked[agent][key], reference[key]), key
    module.close()
