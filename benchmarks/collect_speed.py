"""Seconds per rollout of the collection path alone, and a checksum of what it collected.

    .venv/bin/python benchmarks/collect_speed.py [--task Hopper-v4] [--num-envs 1] [--rollouts 6]

For optimisations of the env stack or the rollout loop that claim to be exact:
the checksum (a SHA-256 of every tensor of every rollout, fixed seed, fixed
policy) must not change, while the time per rollout should drop.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch

from klip.algos.config import TrainConfig
from klip.algos.ppo import PPOModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Hopper-v4")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--rollouts", type=int, default=6)
    parser.add_argument("--collector", default="fast", choices=["fast", "torchrl"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = TrainConfig(task=args.task, num_envs=args.num_envs, collector=args.collector)
    module = PPOModule([config.to_dict()])
    generators = [module.agents[0].generator]
    digest = hashlib.sha256()
    seconds = []
    for _ in range(args.rollouts):
        started = time.perf_counter()
        (rollout,) = module.rollouts.collect(generators)
        seconds.append(time.perf_counter() - started)
        for key in sorted(rollout.keys(include_nested=True, leaves_only=True), key=str):
            digest.update(rollout.get(key).contiguous().numpy().tobytes())
    steady = sorted(seconds[1:])
    print(f"{args.task} x{args.num_envs} ({args.collector}): {steady[0]:.3f} s per "
          f"{rollout.numel()}-step rollout (best of {len(steady)}; median {steady[len(steady) // 2]:.3f})")
    print(f"checksum {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
