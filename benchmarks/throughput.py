"""klip against Stable-Baselines3 PPO, side by side, on one machine, in one invocation.

    .venv/bin/python benchmarks/throughput.py                 # 1 env, paper protocol, 100k steps
    .venv/bin/python benchmarks/throughput.py --num-envs 8    # 8 sub-envs x 256 steps

Each trainer runs in its own process with one torch thread, one after the
other (never concurrently), for the same number of env steps. Printed:
env-steps/s of each and their ratio, gymnasium's raw random-action rate, the
share of klip's time in collection / advantage / update, KLipPPOLoss(step)
against ClipPPOLoss per minibatch update, peak RSS of each training process,
and klip's rate as a fraction of the one-core compute floor (raw simulation
of one rollout plus the fastest measured 320 minibatch updates). Results are
also written as JSON to --json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

CHILDREN = str(Path(__file__).resolve().with_name("throughput_children.py"))


def run_json(arguments: list[str], timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    result = subprocess.run(arguments, capture_output=True, text=True, timeout=timeout, env=env,
                            cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[:4])} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_klip(task: str, steps: int, num_envs: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [PYTHON, "-m", "klip", "train", "--task", task, "--shape", "step", "--steps", str(steps),
             "--num-envs", str(num_envs), "--seed", "0", "--eval-episodes", "0", "--no-progress",
             "--checkpoint-every", "1000000", "--out", str(out), *extra],
            capture_output=True, text=True, env=env, cwd=ROOT,
        )
        process_seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"klip train failed:\n{result.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        with open(out / "metrics.csv", newline="") as file:
            rows = list(csv.DictReader(file))
    split = {part: sum(float(row[f"time/{part}_s"]) for row in rows)
             for part in ("collect", "advantage", "update")}
    # Without the first iteration, which pays for torch.compile when it is on.
    steady_rows = rows[1:] or rows
    steady_seconds = sum(float(row[f"time/{part}_s"]) for row in steady_rows
                         for part in ("collect", "advantage", "update"))
    steady_frames = float(steady_rows[-1]["frames"]) - (float(rows[0]["frames"]) if rows[1:] else 0)
    return {
        "steady_rate": steady_frames / steady_seconds,
        "frames": summary["frames"],
        # Lightning's fit() around the iterations, the way SB3's learn() is timed.
        "seconds": summary["wall_seconds"],
        "process_seconds": process_seconds,
        "split_seconds": split,
        "peak_rss_mib": summary["peak_rss_mib"],
        "final_return": summary["final_return_last10pct"],
    }


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="Hopper-v4")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--variant", action="append", metavar="NAME=FLAGS",
                        help="a klip configuration to time (repeatable); default: "
                             "'exact=' (bitwise-reproducible defaults) and "
                             "'fast=--compile --fused-adam'")
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--loss-repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write results here")
    return parser.parse_args()


def measure_raw_env(task: str) -> dict[str, float]:
    raw = run_json([PYTHON, CHILDREN, "raw-gym", task], 600)
    print(f"gymnasium env.step, random actions: {1 / raw['env_step_s']:,.0f} steps/s "
          f"(bare mj_step x frame_skip: {1 / raw['sim_step_s']:,.0f} steps/s)")
    return raw


def measure_klip(args: argparse.Namespace) -> dict[str, dict]:
    variants = dict(v.split("=", 1) for v in (args.variant or ["exact=", "fast=--compile --fused-adam"]))
    measured = {}
    for name, flags in variants.items():
        klip = run_klip(args.task, args.steps, args.num_envs, flags.split())
        klip["flags"] = flags
        klip["rate"] = klip["frames"] / klip["seconds"]
        measured[name] = klip
        total = sum(klip["split_seconds"].values())
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in klip["split_seconds"].items())
        print(f"klip {name} ({flags or 'defaults'}): {klip['rate']:,.0f} env-steps/s over "
              f"{klip['frames']} steps (steady state without the first iteration: "
              f"{klip['steady_rate']:,.0f}); peak RSS {klip['peak_rss_mib']:.0f} MiB; "
              f"time: {shares}")
    return measured


def measure_sb3(args: argparse.Namespace, klip: dict[str, dict]) -> tuple[dict, dict[str, float]]:
    sb3 = run_json([PYTHON, CHILDREN, "sb3", args.task, str(args.steps), str(args.num_envs), "0"],
                   7200)
    sb3_rate = sb3["frames"] / sb3["seconds"]
    print(f"SB3 PPO: {sb3_rate:,.0f} env-steps/s over {sb3['frames']} steps; "
          f"peak RSS {sb3['peak_rss_mib']:.0f} MiB")
    ratios = {}
    for name, run in klip.items():
        ratios[name] = run["rate"] / sb3_rate
        print(f"ratio klip {name} / SB3: {run['rate'] / sb3_rate:.2f}x "
              f"(steady state {run['steady_rate'] / sb3_rate:.2f}x)")
    return sb3, ratios


def measure_updates(task: str, repeats: int) -> dict[str, float]:
    per_update = run_json([PYTHON, CHILDREN, "per-update", task, str(repeats)], 1800)
    clip, step = per_update["ClipPPOLoss"], per_update["KLipPPOLoss(step)"]
    for name, seconds in per_update.items():
        print(f"  {name}: {seconds * 1e3:.3f} ms per minibatch update")
    print(f"KLipPPOLoss(step) / ClipPPOLoss per update: {step / clip:.3f}")
    trained = per_update["klip train: KLipTensorLoss(step)"]
    print("klip train's update (KLipTensorLoss(step), bitwise KLipPPOLoss) / ClipPPOLoss: "
          f"{trained / clip:.3f}")
    return per_update


def main() -> None:
    args = parse_arguments()
    results: dict = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "task": args.task, "steps": args.steps, "num_envs": args.num_envs,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"machine: {results['machine']}")
    raw = results["raw"] = measure_raw_env(args.task)
    results["klip"] = measure_klip(args)
    klip_rate = max(k["rate"] for k in results["klip"].values())
    if not args.skip_sb3:
        results["sb3"], results["ratio"] = measure_sb3(args, results["klip"])
    per_update = results["per_update_s"] = measure_updates(args.task, args.loss_repeats)

    # The floor: bare simulation of one rollout plus the fastest 320 updates.
    floor_seconds = 2048 * raw["sim_step_s"] + 320 * min(per_update.values())
    floor_rate = 2048 / floor_seconds
    results["floor_rate"] = floor_rate
    print(f"one-core floor (2048 bare MuJoCo steps + fastest 320 updates measured above): "
          f"{floor_rate:,.0f} steps/s; klip reaches {klip_rate / floor_rate:.0%} of it")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
