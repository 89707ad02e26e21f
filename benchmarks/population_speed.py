"""Population training speed: agent-steps/s at N agents, against SB3 PPO and the simulator.

    .venv/bin/python benchmarks/population_speed.py                       # the issue's table
    .venv/bin/python benchmarks/population_speed.py --tasks Hopper-v4 --agents 1,2,4 \\
        --steps 20480 --sb3-steps 20480                                   # a short smoke run
    .venv/bin/python benchmarks/population_speed.py --env-backend envpool  # on EnvPool's simulators

For each task and N: one `klip.algos.agents.train_population` of N agents (seeds
0..N-1, `step` shape, the paper's protocol, no evaluation, no periodic checkpoints), timed
around Lightning's `fit`, in its own process with one torch thread; agent-steps/s is
N x steps per agent / seconds. In the same invocation, one after the other (never
concurrently): SB3 PPO on one env (`throughput_children.py sb3`, the same protocol), and the
simulation-only rate: N raw gymnasium envs stepped round-robin with random actions, no policy,
no normalisation, no learning (the floor a population can approach); with `--env-backend
envpool`, one EnvPool pool of N envs stepped with random actions (a population's shared pool).
Peak RSS is each training process's own `ru_maxrss`.

Targets of issue 11, checked and printed for Hopper-v4: at N = 8, at least 4x SB3's
single-run steps/s and at least 70% of the simulation-only rate; two N = 8 processes started
together (2 cores) at least 1.8x one; at N = 16, peak RSS <= 2 GiB. Results go to --json as well.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
THIS = str(Path(__file__).resolve())
SB3_CHILD = str(Path(__file__).resolve().with_name("throughput_children.py"))
RSS_LIMIT_MIB = 2048


def run_json(arguments: list[str], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    result = subprocess.run(arguments, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[1:4])} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- children (each in a fresh interpreter) -------------------------------------------------
def child_population(task: str, steps: int, agents: int, backend: str) -> dict[str, Any]:
    import torch

    from klip.algos.agents import PopulationSpec, train_population
    from klip.algos.config import TrainConfig

    torch.set_num_threads(1)
    base = TrainConfig(task=task, shape="step", steps=steps, eval_episodes=0,
                       checkpoint_every=1_000_000, diagnostics=False, env_backend=backend)
    with tempfile.TemporaryDirectory() as folder:
        results = train_population(PopulationSpec(base, list(range(agents)), {}), Path(folder) / "run",
                                   progress=False)
        with open(results[0].out / "metrics.csv", newline="") as file:
            rows = list(csv.DictReader(file))
    # The population's wall time per phase (every agent's row holds the same shared times).
    split = {part: sum(float(row[f"time/{part}_s"]) for row in rows)
             for part in ("collect", "advantage", "update")}
    frames, seconds = results[0].frames, results[0].wall_seconds
    return {"agents": agents, "frames_per_agent": frames, "seconds": seconds,
            "agent_steps_per_s": agents * frames / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "split_seconds": split,
            "final_returns": [result.final_return for result in results]}


def child_simulation(task: str, agents: int, steps: int, backend: str) -> dict[str, Any]:
    """Random-action steps of `agents` raw simulators, round-robin, per second."""
    import gymnasium as gym
    import numpy as np

    if backend == "envpool":
        from klip.envs.envpool_backend import EnvPoolVectorEnv

        pool = EnvPoolVectorEnv(task, num_envs=agents, seed=0)
        pool.reset()
        low, high = pool.single_action_space.low, pool.single_action_space.high
    else:
        envs = [gym.make(task) for _ in range(agents)]
        for seed, env in enumerate(envs):
            env.reset(seed=seed)
        low, high = envs[0].action_space.low, envs[0].action_space.high
    rng = np.random.default_rng(0)
    actions = rng.uniform(low, high, size=(1024, *low.shape)).astype(np.float32)
    rounds = max(1, steps // agents)

    def play(count: int) -> None:
        for t in range(count):
            action = actions[t % len(actions)]
            if backend == "envpool":
                _, _, terminated, truncated, _ = pool.step(np.broadcast_to(action, (agents, *action.shape)))
                if (terminated | truncated).any():
                    pool.reset(options={"reset_mask": terminated | truncated})
                continue
            for env in envs:
                _, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    env.reset()

    play(min(200, rounds))  # warm-up
    started = time.perf_counter()
    play(rounds)
    seconds = time.perf_counter() - started
    return {"agents": agents, "agent_steps_per_s": agents * rounds / seconds}


def two_processes(task: str, agents: int, steps: int, timeout: float, backend: str) -> dict[str, Any]:
    """Two population processes of `agents` agents started together: their summed agent-steps/s."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    command = [PYTHON, THIS, "--child", "population", task, backend, str(steps), str(agents)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env, cwd=ROOT) for _ in range(2)]
    outputs = [child.communicate(timeout=timeout) for child in children]
    for child, (_, stderr) in zip(children, outputs, strict=True):
        if child.returncode != 0:
            raise RuntimeError(f"population child failed:\n{stderr[-3000:]}")
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    return {"agents_per_process": agents, "processes": results,
            "agent_steps_per_s": sum(result["agent_steps_per_s"] for result in results)}


# -- the table --------------------------------------------------------------------------------
def measure(task: str, agents_list: list[int], steps: int, sb3_steps: int, timeout: float,
            two_process_agents: int, backend: str) -> dict[str, Any]:
    sb3 = run_json([PYTHON, SB3_CHILD, "sb3", task, str(sb3_steps), "1", "0"], timeout)
    sb3_rate = sb3["frames"] / sb3["seconds"]
    print(f"{task}: SB3 PPO (1 env) {sb3_rate:.0f} steps/s, peak RSS {sb3['peak_rss_mib']:.0f} MiB",
          flush=True)
    rows = []
    for agents in agents_list:
        child = [PYTHON, THIS, "--child"]
        simulation = run_json([*child, "simulation", task, backend, str(agents), str(20_000)], timeout)
        population = run_json([*child, "population", task, backend, str(steps), str(agents)], timeout)
        row = {**population, "simulation_agent_steps_per_s": simulation["agent_steps_per_s"],
               "vs_sb3": population["agent_steps_per_s"] / sb3_rate,
               "of_simulation": population["agent_steps_per_s"] / simulation["agent_steps_per_s"]}
        rows.append(row)
        print(f"  N={agents:2d}: {row['agent_steps_per_s']:8.0f} agent-steps/s  "
              f"{row['vs_sb3']:5.2f}x SB3  {100 * row['of_simulation']:5.1f}% of simulation-only "
              f"({row['simulation_agent_steps_per_s']:.0f}/s)  peak RSS {row['peak_rss_mib']:.0f} MiB  "
              + " ".join(f"{part} {seconds:.1f}s" for part, seconds in row["split_seconds"].items()),
              flush=True)
    measured = {"task": task, "env_backend": backend, "sb3": {**sb3, "steps_per_s": sb3_rate}, "rows": rows}
    by_agents = {row["agents"]: row for row in rows}
    if two_process_agents in by_agents:
        pair = two_processes(task, two_process_agents, steps, timeout, backend)
        single = by_agents[two_process_agents]["agent_steps_per_s"]
        pair["vs_one_process"] = pair["agent_steps_per_s"] / single
        measured["two_processes"] = pair
        print(f"  two processes of N={two_process_agents} at once: {pair['agent_steps_per_s']:.0f} "
              f"agent-steps/s together, {pair['vs_one_process']:.2f}x one process", flush=True)
    return measured


def check_targets(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for result in results:
        if result["task"] != "Hopper-v4":
            continue
        backend = result.get("env_backend", "gymnasium")
        by_agents = {row["agents"]: row for row in result["rows"]}
        if 8 in by_agents:
            row = by_agents[8]
            lines.append(f"N=8 Hopper-v4 ({backend}): {row['vs_sb3']:.2f}x SB3 (target >= 4): "
                         f"{'met' if row['vs_sb3'] >= 4 else 'NOT met'}")
            lines.append(f"N=8 Hopper-v4 ({backend}): {100 * row['of_simulation']:.0f}% of simulation-only "
                         f"(target >= 70%): {'met' if row['of_simulation'] >= 0.7 else 'NOT met'}")
        if "two_processes" in result:
            ratio = result["two_processes"]["vs_one_process"]
            lines.append(f"two N={result['two_processes']['agents_per_process']} Hopper-v4 processes: "
                         f"{ratio:.2f}x one (target >= 1.8): {'met' if ratio >= 1.8 else 'NOT met'}")
        if 16 in by_agents:
            rss = by_agents[16]["peak_rss_mib"]
            lines.append(f"N=16 Hopper-v4: peak RSS {rss:.0f} MiB (target <= {RSS_LIMIT_MIB}): "
                         f"{'met' if rss <= RSS_LIMIT_MIB else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="Hopper-v4,Humanoid-v4")
    parser.add_argument("--agents", default="1,2,4,8,16", help="population sizes N")
    parser.add_argument("--steps", type=int, default=102_400, help="env steps per agent")
    parser.add_argument("--sb3-steps", type=int, default=102_400)
    parser.add_argument("--two-processes", type=int, default=8, metavar="N",
                        help="also time two N-agent processes at once (0: skip)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per child process")
    parser.add_argument("--env-backend", choices=("gymnasium", "envpool"), default="gymnasium",
                        help="simulators under the population and the simulation-only rate")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "population_speed.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, task, backend, *numbers = args.child
        values = [int(number) for number in numbers]
        if kind == "population":
            print(json.dumps(child_population(task, values[0], values[1], backend)))
        else:
            print(json.dumps(child_simulation(task, values[0], values[1], backend)))
        return
    agents_list = [int(text) for text in args.agents.split(",")]
    results = [measure(task, agents_list, args.steps, args.sb3_steps, args.timeout, args.two_processes,
                       args.env_backend)
               for task in args.tasks.split(",")]
    targets = check_targets(results)
    for line in targets:
        print(line)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average_at_end": os.getloadavg()},
              "steps_per_agent": args.steps, "sb3_steps": args.sb3_steps,
              "results": results, "targets": targets}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
