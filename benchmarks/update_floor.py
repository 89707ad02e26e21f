"""The exact update's floor: what one agent's network kernels cost per agent-step, nothing else.

    .venv/bin/python benchmarks/update_floor.py [--obs 11 --act 3 --minibatch 64 --epochs 10]

The exact engine runs each agent's actor-mean and critic MLPs with the single run's own
operations (a batched product would round differently): per minibatch, per network, forward
3 `addmm` + 2 `tanh`; backward 3 weight `mm` + 2 input `mm` + 3 bias `sum` + 2 `tanh_backward`.
This times exactly those calls on one agent's tensors in a tight loop (one torch thread), and
converts to microseconds per agent-step (an agent-step is updated `epochs` times, in minibatches
of `minibatch`), with the share of `tanh` alone. It is a lower bound of the exact update: the
loss arithmetic, the clip, Adam and every Python line come on top.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch


def network_kernels(observations: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]],
                    grad_output: torch.Tensor) -> None:
    saved, hidden = [], observations
    for index, (weight, bias) in enumerate(layers):
        saved.append(hidden)
        hidden = torch.addmm(bias, hidden, weight.t())
        if index < len(layers) - 1:
            hidden = torch.tanh(hidden)
    grad = grad_output
    for index in range(len(layers) - 1, -1, -1):
        weight, _ = layers[index]
        grad.t().mm(saved[index])
        grad.sum(0, keepdim=True)
        if index:
            grad = torch.ops.aten.tanh_backward(grad.mm(weight), saved[index])


def tanh_only(observations: torch.Tensor, hidden: int) -> None:
    for _ in range(2):  # two hidden layers per network
        torch.tanh(torch.empty(observations.shape[0], hidden))


def seconds_per_call(function, repeats: int) -> float:
    function()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            function()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs", type=int, default=11, help="observation size (Hopper-v4: 11)")
    parser.add_argument("--act", type=int, default=3, help="action size (Hopper-v4: 3)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)

    def mlp(out: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sizes = [args.obs, args.hidden, args.hidden, out]
        return [(torch.randn(b, a, generator=generator) / a**0.5, torch.zeros(b))
                for a, b in itertools.pairwise(sizes)]

    actor, critic = mlp(args.act), mlp(1)
    observations = torch.randn(args.minibatch, args.obs, generator=generator)
    grad_loc = torch.randn(args.minibatch, args.act, generator=generator)
    grad_value = torch.randn(args.minibatch, 1, generator=generator)

    def both() -> None:
        network_kernels(observations, actor, grad_loc)
        network_kernels(observations, critic, grad_value)

    def tanh_of_both() -> None:
        tanh_only(observations, args.hidden)
        tanh_only(observations, args.hidden)

    per_minibatch = seconds_per_call(both, args.repeats)
    tanh = seconds_per_call(tanh_of_both, args.repeats)
    # One agent-minibatch updates `minibatch` agent-steps once; each agent-step is updated `epochs` times.
    per_agent_step = per_minibatch * args.epochs / args.minibatch
    print(f"one agent's network kernels per minibatch of {args.minibatch}: {per_minibatch * 1e6:.1f} us "
          f"(tanh forward alone {tanh * 1e6:.1f} us)")
    print(f"per agent-step ({args.epochs} epochs): {per_agent_step * 1e6:.1f} us, of which tanh "
          f"{tanh * args.epochs / args.minibatch * 1e6:.1f} us")


if __name__ == "__main__":
    main()
