"""A peer on this machine: Stable-Baselines3 PPO with the paper protocol, as far as SB3 allows.

    .venv/bin/python benchmarks/sb3_peer.py --tasks Walker2d-v4 --seeds 0-4 --steps 1000000 \\
        --out results/paper-table/sb3-peer --grid results/paper-table
    .venv/bin/python benchmarks/sb3_peer.py --tasks Hopper-v4 --seeds 0 --steps 4096 --out /tmp/peer
                                                                       # a smoke run of the script

Where a replication lands outside a published number, the first question is whether klip or the
setting (gymnasium 1.4, MuJoCo 4.0, this machine) is the cause. A well-kept PPO trained on the
same tasks here answers it: if SB3 lands where klip does, the gap is the setting's.

Each run writes OUT/TASK/sSEED/episodes.csv (`end_frame,return,length`, raw returns from SB3's
`Monitor`) and summary.json (`final_return`: mean raw return of the episodes that ended in the
last 10% of training, klip's definition, computed by klip's own function), and the trained
model (`model.zip`, `vecnormalize.pkl`). A run whose
summary.json exists is skipped, so an interrupted peer continues with the next run (a run cut
short starts again). At the end OUT/peer.json holds per task the mean +- std over seeds, next to
the grid's entries when --grid names a `klip compare` directory, and the command that gave them;
tasks peered earlier into the same OUT stay in it.

The protocol (CleanRL's defaults, klip's defaults): 64-64 tanh actor and critic, orthogonal
init, state-independent log-std starting at 0, GAE 0.99/0.95, Adam 3e-4 (eps 1e-5) annealed
linearly to 0, 2048-step rollouts of 1 env, 10 epochs of minibatches of 64, advantages
normalised per minibatch, clip 0.2, value clipping 0.2, gradient norm 0.5, no entropy bonus,
observations and rewards normalised and clipped at 10. What SB3 cannot express: its value loss
is the squared error of the clipped prediction, where CleanRL takes the larger of the clipped and
unclipped errors (its coefficient here, 0.25, matches CleanRL's 0.5 * 0.5 on the squared error).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FINAL_FRACTION_NOTE = "mean raw return of the episodes that ended in the last 10% of training"


def train_one(task: str, seed: int, steps: int, out: Path) -> dict[str, Any]:
    """One SB3 run; its episodes and summary go to `out`."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from klip.algos.train import final_return

    torch.set_num_threads(1)

    class EpisodeLog(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[tuple[int, float, int]] = []

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                episode = info.get("episode")
                if episode is not None:
                    self.rows.append((self.num_timesteps, float(episode["r"]), int(episode["l"])))
            return True

    env = VecNormalize(make_vec_env(task, n_envs=1, seed=seed, vec_env_cls=DummyVecEnv),
                       gamma=0.99, clip_obs=10.0, clip_reward=10.0)
    model = PPO("MlpPolicy", env, n_steps=2048, batch_size=64, n_epochs=10,
                learning_rate=lambda remaining: 3e-4 * remaining, gamma=0.99, gae_lambda=0.95,
                clip_range=0.2, clip_range_vf=0.2, normalize_advantage=True, ent_coef=0.0,
                vf_coef=0.25, max_grad_norm=0.5, seed=seed, device="cpu", verbose=0,
                policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]},
                               "activation_fn": torch.nn.Tanh, "ortho_init": True,
                               "log_std_init": 0.0, "optimizer_kwargs": {"eps": 1e-5}})
    log = EpisodeLog()
    started = time.perf_counter()
    model.learn(total_timesteps=steps, callback=log)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    # The trained policy and its normalisation, to look at how it moves afterwards.
    model.save(out / "model.zip")
    env.save(str(out / "vecnormalize.pkl"))
    with open(out / "episodes.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["end_frame", "return", "length"])
        writer.writerows(log.rows)
    summary = {"task": task, "seed": seed, "steps": model.num_timesteps,
               "final_return": final_return([(frame, value) for frame, value, _ in log.rows],
                                            model.num_timesteps),
               "episodes": len(log.rows), "wall_seconds": seconds,
               "stable_baselines3": __import__("stable_baselines3").__version__}
    # Written last: its presence marks a finished run.
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def grid_returns(grid: Path, task: str) -> dict[str, list[float]]:
    """Final returns of a `klip compare` grid's finished cells on `task`, per entry."""
    returns: dict[str, list[float]] = {}
    for cell in sorted((grid / "runs" / task).glob("*/s*/cell.json")):
        record = json.loads(cell.read_text())
        returns.setdefault(record["entry"], []).append(float(record["final_return"]))
    return returns


def describe(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=float)
    return {"n": len(values), "mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if len(values) > 1 else None, "values": values}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", required=True, help="comma-separated gymnasium ids")
    parser.add_argument("--seeds", default="0-4", help="a list (0,3,5) or a range (0-4)")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grid", type=Path, help="a klip compare directory to set beside the peer")
    args = parser.parse_args(argv)
    tasks = [task for task in args.tasks.split(",") if task]
    from klip.seeds import parse_seeds

    seeds = parse_seeds(args.seeds)
    command = " ".join(["benchmarks/sb3_peer.py", *(argv or sys.argv[1:])])
    # Tasks peered by earlier invocations into the same --out stay in peer.json.
    peer_file = args.out / "peer.json"
    earlier = json.loads(peer_file.read_text())["tasks"] if peer_file.is_file() else {}
    results: dict[str, Any] = {"definition": FINAL_FRACTION_NOTE, "steps": args.steps,
                               "tasks": {**earlier}}
    for task in tasks:
        finals = []
        for seed in seeds:
            out = args.out / task / f"s{seed}"
            if (out / "summary.json").is_file():
                summary = json.loads((out / "summary.json").read_text())
                if summary["steps"] < args.steps:
                    raise SystemExit(f"{out} holds a run of {summary['steps']} steps; choose another --out")
            else:
                print(f"SB3 PPO {task} seed {seed}: training {args.steps:,} steps", flush=True)
                summary = train_one(task, seed, args.steps, out)
            print(f"SB3 PPO {task} seed {seed}: final return {summary['final_return']:.1f} "
                  f"({summary['wall_seconds']:.0f} s)", flush=True)
            finals.append(summary["final_return"])
        entry: dict[str, Any] = {"command": command, "sb3": describe(finals)}
        if args.grid is not None:
            entry.update({name: describe(values) for name, values in grid_returns(args.grid, task).items()})
        results["tasks"][task] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    peer_file.write_text(json.dumps(results, indent=2) + "\n")
    for task in tasks:
        line = ", ".join(f"{name} {d['mean']:.1f}" + (f" +- {d['std']:.1f}" if d["std"] is not None else "")
                         + f" (n={d['n']})" for name, d in results["tasks"][task].items()
                         if name != "command")
        print(f"{task}: {line}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
