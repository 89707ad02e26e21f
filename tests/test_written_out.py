"""Written-out MLPs compute what autograd computes, bit for bit: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from klip.algos.flat import FlatParameters
from klip.algos.networks import mlp
from klip.algos.written_out import WrittenOutMLPs


def networks(count: int, observation: int, action: int, seed: int) -> tuple[list[nn.Module], list[nn.Module]]:
    torch.manual_seed(seed)
    return ([mlp(observation, action, 64, head_gain=0.01) for _ in range(count)],
            [mlp(observation, 1, 64, head_gain=1.0) for _ in range(count)])


@pytest.mark.parametrize(("count", "observation", "action", "batch"),
                         [(1, 11, 3, 64), (3, 11, 3, 128), (8, 17, 6, 64), (2, 376, 17, 64),
                          (2, 11, 3, 2048)])
@pytest.mark.parametrize("upstream", ["dense", "expanded"])
def test_outputs_and_gradients_are_autograds(count, observation, action, batch, upstream):
    policies, critics = networks(count, observation, action, seed=count + observation)
    reference_policies, reference_critics = networks(count, observation, action, seed=count + observation)
    flat = FlatParameters([[*policy.parameters(), *critic.parameters()]
                           for policy, critic in zip(policies, critics, strict=True)])
    written = WrittenOutMLPs(flat.tensor, [policies, critics])
    generator = torch.Generator().manual_seed(batch)
    inputs = [torch.randn(batch, observation, generator=generator) for _ in range(count)]
    weights = torch.randn(count, batch, action, generator=generator)

    def loss(loc: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        # "expanded" hands the networks a broadcast (stride-0) gradient, as a mean's backward does.
        if upstream == "expanded":
            return (loc.tanh() * weights).sum() + value.mean()
        return (loc.tanh() * weights).sum() + (value**2).sum()

    loc, value = written(inputs, inputs)
    flat.gradient.zero_()
    loss(loc, value).backward()
    expected_loc = torch.stack([net(x) for net, x in zip(reference_policies, inputs, strict=True)])
    expected_value = torch.stack([net(x) for net, x in zip(reference_critics, inputs, strict=True)])
    loss(expected_loc, expected_value).backward()
    assert torch.equal(loc, expected_loc)
    assert torch.equal(value, expected_value)
    for mine, theirs in zip([*policies, *critics], [*reference_policies, *reference_critics], strict=True):
        for parameter, reference in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(parameter.grad, reference.grad)


def test_only_linear_tanh_stacks_are_written_out():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    flat = FlatParameters([list(net.parameters())])
    with pytest.raises(TypeError, match="Linear, Tanh"):
        WrittenOutMLPs(flat.tensor, [[net]])
