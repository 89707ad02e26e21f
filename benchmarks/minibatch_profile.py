"""Where one minibatch step of a population's update goes: torch's profiler, per operator.

    .venv/bin/python benchmarks/minibatch_profile.py --agents 8 --out FILE.txt
    cd OLD_CHECKOUT && .venv/bin/python /path/to/benchmarks/minibatch_profile.py ...   # before

Trains a population of N `step` agents (Hopper-v4, the paper's protocol, one torch thread)
for two PPO iterations under `torch.profiler` and prints the operators run inside the
update (the module's `update`, marked with `record_function`) by self CPU time, divided by
the number of minibatch steps (2 iterations x 10 epochs x 32 minibatches): one minibatch
step of every agent. Works with the one engine (`klip.algos.agents`, `PPOModule.update`)
and with the separate population engine before it (`klip.algos.population_run`,
`PopulationModule.update`), so the same file profiles both checkouts.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

try:
    from klip.algos.agents import PopulationSpec, train_population
    from klip.algos.ppo import PPOModule as Module
except ImportError:  # the population engine before the one engine
    from klip.algos.population import PopulationModule as Module  # type: ignore[no-redef]
    from klip.algos.population_run import PopulationSpec, train_population  # type: ignore[no-redef]
from klip.algos.config import TrainConfig

ITERATIONS = 2
SCOPE = "ppo_update"


def _marked(update: Any) -> Any:
    def marked(*args: Any, **kwargs: Any) -> Any:
        with record_function(SCOPE):
            return update(*args, **kwargs)
    return marked


def _inside_update(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == SCOPE:
            return True
        parent = parent.cpu_parent
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--task", default="Hopper-v4")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = TrainConfig(task=args.task, steps=ITERATIONS * 2048, eval_episodes=0)
    steps = ITERATIONS * base.epochs * (base.rollout_steps // base.minibatch_size)
    spec = PopulationSpec(base, list(range(args.agents)), {})
    Module.update = _marked(Module.update)  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as out, profile(activities=[ProfilerActivity.CPU]) as profiler:
        train_population(spec, Path(out) / "population", progress=False)
    calls: dict[str, int] = defaultdict(int)
    self_us: dict[str, float] = defaultdict(float)
    for event in profiler.events():
        if event.name != SCOPE and _inside_update(event):
            calls[event.name] += 1
            self_us[event.name] += event.self_cpu_time_total
    total = sum(self_us.values())
    update_us = sum(event.cpu_time_total for event in profiler.events() if event.name == SCOPE)
    lines = [f"{args.task}, N = {args.agents}, {ITERATIONS} iterations, {steps} minibatch steps. Per "
             f"minibatch step: the update {update_us / steps / 1000:.2f} ms wall, of which operators' "
             f"self CPU time {total / steps / 1000:.2f} ms (the rest: Python between them)", "",
             f"{'operator (inside the update)':<44} {'calls/step':>10} {'self us/step':>13}"]
    for name in sorted(self_us, key=self_us.__getitem__, reverse=True)[: args.rows]:
        lines.append(f"{name[:44]:<44} {calls[name] / steps:>10.1f} {self_us[name] / steps:>13.1f}")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
