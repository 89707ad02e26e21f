"""Microseconds per call of `klip_objective` on one minibatch of a population, per shape.

    .venv/bin/python benchmarks/objective_cost.py                       # step, sigmoid, truncate, dpo
    .venv/bin/python benchmarks/objective_cost.py --shapes step --agents 1

The per-sample surrogate every loss path of the engine calls once per minibatch; what a change
to it costs is read here (the minimum of several repeats, one torch thread), not asserted in a
test.
"""

from __future__ import annotations

import argparse
import time

import torch

from klip.shapes import make_shape
from klip.shapes.functional import klip_objective


def cost(name: str, agents: int, samples: int, calls: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    log_ratio = (0.1 * torch.randn(agents, samples, 1, generator=generator)).requires_grad_()
    advantage = torch.randn(agents, samples, 1, generator=generator)
    shape = make_shape(name)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            klip_objective(shape, log_ratio, advantage)
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="step,sigmoid,truncate,dpo")
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--samples", type=int, default=64, help="minibatch size per agent")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.shapes.split(","):
        micros = cost(name, args.agents, args.samples, args.calls, args.repeats)
        print(f"{name:10s} [{args.agents}, {args.samples}, 1]: {micros:6.1f} us per call "
              f"(min of {args.repeats} x {args.calls})")


if __name__ == "__main__":
    main()
