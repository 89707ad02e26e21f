"""Does a batched matrix product give each agent bitwise what its own product gives?

    .venv/bin/python benchmarks/batched_exactness.py

For the layer shapes of klip's networks (observation -> 64, 64 -> 64, 64 -> action or value)
and batch sizes of a rollout step (1-3 envs), a minibatch (64) and a whole rollout (2048), it
compares, per agent, `torch.baddbmm` over N stacked agents with (a) `F.linear` on the agent
alone (what a single run computes) and (b) `torch.baddbmm` over a population of another size,
forward and backward. Any "no" in the table is why the engine evaluates each agent's networks
with the single run's own operations instead of batched products (`klip.algos.ppo`).

The last column asks the question a different engine would rest on: is agent i of a batch of
8 bitwise agent i computed alone as a batch of one (`torch.baddbmm` with a batch of 1)? Where it
is, single runs that computed their layers that way could be batched exactly.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
F = torch.nn.functional
SHAPES = [(11, 64), (376, 64), (64, 64), (64, 3), (64, 17), (64, 1)]
BATCHES = [1, 2, 3, 64, 2048]


def batched(weight: torch.Tensor, bias: torch.Tensor, inputs: torch.Tensor, grad: torch.Tensor):
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    out = torch.baddbmm(bias.unsqueeze(1), inputs, weight.transpose(1, 2))
    out.backward(grad)
    return out.detach(), weight.grad, bias.grad


def alone(weight: torch.Tensor, bias: torch.Tensor, inputs: torch.Tensor, grad: torch.Tensor):
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    out = F.linear(inputs, weight, bias)
    out.backward(grad)
    return out.detach(), weight.grad, bias.grad


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    print(f"{'in -> out':>10s} {'batch':>6s}  8 agents bitwise F.linear alone?   8 agents bitwise 3 agents?"
          "   8 agents bitwise a batch of one?")
    for fan_in, fan_out in SHAPES:
        for batch in BATCHES:
            weight = torch.randn(8, fan_out, fan_in, generator=generator)
            bias = torch.randn(8, fan_out, generator=generator)
            inputs = torch.randn(8, batch, fan_in, generator=generator)
            grad = torch.randn(8, batch, fan_out, generator=generator)
            eight = batched(weight, bias, inputs, grad)
            three = batched(weight[:3], bias[:3], inputs[:3], grad[:3])
            singles = [alone(weight[agent], bias[agent], inputs[agent], grad[agent]) for agent in range(8)]
            vs_alone = all(torch.equal(e[agent], s) for agent in range(8)
                           for e, s in zip(eight, singles[agent], strict=True))
            vs_three = all(torch.equal(e[agent], t[agent]) for agent in range(3)
                           for e, t in zip(eight, three, strict=True))
            ones = [batched(weight[a : a + 1], bias[a : a + 1], inputs[a : a + 1], grad[a : a + 1])
                    for a in range(8)]
            vs_one = all(torch.equal(e[agent], o[0]) for agent in range(8)
                         for e, o in zip(eight, ones[agent], strict=True))
            print(f"{fan_in:>4d} -> {fan_out:<3d} {batch:>6d}  {'yes' if vs_alone else 'no':>30s}   "
                  f"{'yes' if vs_three else 'no':>24s}   {'yes' if vs_one else 'no':>30s}")


if __name__ == "__main__":
    main()
