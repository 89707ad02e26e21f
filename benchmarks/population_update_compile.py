"""Does `torch.compile` make a population's update cheap enough? Eager against compiled.

    .venv/bin/python benchmarks/population_update_compile.py --agents 8 --repeats 3 \\
        --json benchmarks/results/population_update_compile.json

One real Hopper-v4 rollout of N agents (`step`), then every minibatch step of one epoch
(forward, backward, per-agent gradient clipping, Adam) timed, first with the population's loss
as it is and then with the loss compiled by `torch.compile` (Inductor's C++ code for its forward
and, through AOTAutograd, its backward; the shape diagnostics are off in both, as their records
are a side effect a compiled graph cannot hold). Each measurement runs in a fresh process,
eager and compiled alternating, `--repeats` times; the median is reported, with each phase's
share. Populations do not offer `--compile`: this is the measurement that decides whether
they should. `--profile ROWS` instead prints torch.profiler's table of the eager update's
operators (where the eager time goes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _update_setup(agents: int, compiled: bool, task: str) -> tuple[Any, Any, Any, list, list]:
    """One real rollout of N agents; the loss, optimiser, parameters and minibatches of its update."""
    import torch

    from klip.algos.config import TrainConfig
    from klip.algos.population import PopulationModule
    from klip.compat import configure_inductor

    torch.set_num_threads(1)
    configs = [TrainConfig(task=task, seed=seed, shape="step").to_dict() for seed in range(agents)]
    module = PopulationModule(configs)
    data = module.advantages(module.rollouts.collect(module.generators))
    parameters = list(module.networks.parameters())
    optimizer = torch.optim.Adam(parameters, lr=3e-4, eps=1e-5, foreach=True)
    module.loss_module.diagnostics = False
    loss = module.loss_module
    if compiled:
        configure_inductor()
        loss = torch.compile(module.loss_module, dynamic=False)
    batches = list(module.loss_module.minibatches(data, module.config.minibatch_size))
    return module, loss, optimizer, parameters, batches


def profile_ops(agents: int, task: str, rows: int) -> str:
    """torch.profiler's table of the eager update's operators over one epoch (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    module, _, optimizer, parameters, batches = _update_setup(agents, False, task)

    def epoch() -> None:
        for batch in batches:  # the population's own minibatch step, as training runs it
            module._update_minibatch(batch, optimizer, parameters)

    epoch()
    started = time.perf_counter()
    epoch()
    step_ms = (time.perf_counter() - started) / len(batches) * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        epoch()
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"eager, unprofiled: {step_ms:.3f} ms per {agents}-agent minibatch step\n{table}"


def measure(agents: int, compiled: bool, task: str) -> dict[str, float]:
    """Milliseconds per minibatch step and per phase (run in the child process)."""
    from klip.algos.population import clip_grad_norm_per_agent

    module, loss, optimizer, parameters, batches = _update_setup(agents, compiled, task)
    phases: Counter[str] = Counter()
    for repeat in range(2):  # the first pass compiles and warms up
        for batch in batches:
            started = time.perf_counter()
            totals, _ = loss(*batch)
            forward = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            totals.sum().backward()
            backward = time.perf_counter()
            clip_grad_norm_per_agent(parameters, 0.5)
            clipped = time.perf_counter()
            optimizer.step()
            stepped = time.perf_counter()
            if repeat:
                phases.update({"forward": forward - started, "backward": backward - forward,
                               "clip": clipped - backward, "adam": stepped - clipped})
    result = {name: seconds / len(batches) * 1e3 for name, seconds in phases.items()}
    result["step"] = sum(result.values())
    # An agent-step costs `epochs` passes over its sample: per-agent update microseconds.
    result["update_us_per_agent_step"] = result["step"] * 1e3 * module.config.epochs / (
        module.config.minibatch_size * agents)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--task", default="Hopper-v4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=int, metavar="ROWS",
                        help="instead: profile the eager update in this process and print its "
                             "ROWS most expensive operators")
    parser.add_argument("--child", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        print(profile_ops(args.agents, args.task, args.profile))
        return
    if args.child:
        print(json.dumps(measure(args.agents, args.child == "compiled", args.task)))
        return
    runs: dict[str, list[dict[str, float]]] = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        for mode in runs:
            output = subprocess.run([sys.executable, __file__, "--child", mode, "--agents", str(args.agents),
                                     "--task", args.task], check=True, capture_output=True, text=True,
                                    cwd=ROOT).stdout
            runs[mode].append(json.loads(output.strip().splitlines()[-1]))
            print(f"{mode}: {runs[mode][-1]['step']:.3f} ms per minibatch step", flush=True)
    summary = {mode: {key: statistics.median(run[key] for run in results) for key in results[0]}
               for mode, results in runs.items()}
    for mode, medians in summary.items():
        phases = ", ".join(f"{name} {medians[name]:.3f}" for name in ("forward", "backward", "clip", "adam"))
        print(f"{mode} (median of {args.repeats}): {medians['step']:.3f} ms per {args.agents}-agent "
              f"minibatch step ({phases} ms); update {medians['update_us_per_agent_step']:.1f} us "
              "per agent-step")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "agents": args.agents,
                                         "task": args.task, "median": summary, "runs": runs},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
