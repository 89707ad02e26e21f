"""The flat parameter buffer: its clip is `clip_grad_norm_` of each agent, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from klip.algos.flat import ALIGNMENT, FlatAdam, FlatParameters

# An agent's tensors on Hopper (log-std, policy MLP, value MLP) and on Humanoid (wider inputs).
HOPPER = [(3,), (64, 11), (64,), (64, 64), (64,), (3, 64), (3,), (64, 11), (64,), (64, 64), (64,), (1, 64),
          (1,)]
HUMANOID = [(17,), (64, 376), (64,), (64, 64), (64,), (17, 64), (17,), (64, 376), (64,), (64, 64), (64,),
            (1, 64), (1,)]


def agents(shapes: list[tuple[int, ...]], count: int, generator: torch.Generator) -> list[list[nn.Parameter]]:
    return [[nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes] for _ in range(count)]


@pytest.mark.parametrize("shapes", [HOPPER, HUMANOID], ids=["hopper", "humanoid"])
@pytest.mark.parametrize("count", [1, 3, 8])
def test_clip_per_agent_is_clip_grad_norm_of_each_agent(shapes, count):
    generator = torch.Generator().manual_seed(count)
    for scale in (1e-6, 1e-2, 1.0, 1e3):
        parameters = agents(shapes, count, generator)
        flat = FlatParameters(parameters)
        grads = [[scale * torch.randn(p.shape, generator=generator) for p in group] for group in parameters]
        for group, group_grads in zip(parameters, grads, strict=True):
            for parameter, grad in zip(group, group_grads, strict=True):
                parameter.grad.copy_(grad)
        totals = flat.clip_per_agent(0.5)
        for agent, group_grads in enumerate(grads):
            reference = [nn.Parameter(torch.zeros(g.shape)) for g in group_grads]
            for tensor, grad in zip(reference, group_grads, strict=True):
                tensor.grad = grad.clone()
            expected = nn.utils.clip_grad_norm_(reference, 0.5)
            assert torch.equal(totals[agent], expected)
            for parameter, tensor in zip(parameters[agent], reference, strict=True):
                assert torch.equal(parameter.grad, tensor.grad)


def test_the_buffer_holds_every_agents_parameters_aligned_and_equally_spaced():
    generator = torch.Generator().manual_seed(0)
    parameters = agents(HOPPER, 3, generator)
    values = [[p.detach().clone() for p in group] for group in parameters]
    flat = FlatParameters(parameters)
    base = flat.tensor.data_ptr()
    for agent, group in enumerate(parameters):
        for parameter, value, place in zip(group, values[agent], flat.parameter_places, strict=True):
            assert torch.equal(parameter, value)
            offset = (parameter.data_ptr() - base) // 4
            assert offset == agent * flat.agent_size + place
            assert (parameter.data_ptr() - base) % (4 * ALIGNMENT) == 0
            assert parameter.grad.data_ptr() - flat.gradient.data_ptr() == parameter.data_ptr() - base
    with torch.no_grad():
        flat.tensor.add_(1.0)
    assert torch.equal(parameters[2][1], values[2][1] + 1.0)


def test_agents_of_different_sizes_are_refused():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="same sizes"):
        FlatParameters([agents(HOPPER, 1, generator)[0], agents(HUMANOID, 1, generator)[0]])


def test_flat_adam_is_torchs_foreach_adam_bit_for_bit_across_a_schedule_and_a_reload():
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(1000, generator=generator)
    ours_tensor, theirs_tensor = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    ours = FlatAdam(ours_tensor, lr=3e-4, eps=1e-5)
    theirs = torch.optim.Adam([theirs_tensor], lr=3e-4, eps=1e-5, foreach=True)
    for step in range(60):
        grad = torch.randn(1000, generator=generator) * 10.0 ** (step % 11 - 7)
        grad[::97] = 0.0
        ours_tensor.grad, theirs_tensor.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        for optimizer in (ours, theirs):
            optimizer.param_groups[0]["lr"] = 3e-4 * (1 - step / 80)
        if step == 30:  # a checkpoint's round trip changes nothing
            ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
        assert torch.equal(ours_tensor, theirs_tensor)
    assert ours.state_dict()["state"][0].keys() == theirs.state_dict()["state"][0].keys()
