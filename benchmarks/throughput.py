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
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

SB3_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    task, steps, num_envs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    env = VecNormalize(make_vec_env(task, n_envs=num_envs, seed=seed, vec_env_cls=DummyVecEnv),
                       gamma=0.99)
    model = PPO("MlpPolicy", env, n_steps=2048 // num_envs, batch_size=64, n_epochs=10,
                learning_rate=3e-4, gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0,
                vf_coef=0.5, max_grad_norm=0.5, seed=seed, device="cpu", verbose=0,
                policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]),
                                   activation_fn=torch.nn.Tanh))
    started = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - started
    frames = model.num_timesteps
    print(json.dumps({"frames": frames, "seconds": seconds,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)

RAW_GYM_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import gymnasium as gym
    env = gym.make(sys.argv[1]); env.reset(seed=0); env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(20000)]
    for a in actions[:1000]:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc: env.reset()
    started = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc: env.reset()
    step_seconds = (time.perf_counter() - started) / len(actions)
    base = env.unwrapped
    started = time.perf_counter()
    import mujoco
    for _ in range(5000):
        mujoco.mj_step(base.model, base.data, nstep=base.frame_skip)
    sim_seconds = (time.perf_counter() - started) / 5000
    print(json.dumps({"env_step_s": step_seconds, "sim_step_s": sim_seconds}))
    """
)

LOSS_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from torchrl.objectives import ClipPPOLoss
    from klip.algos import KLipPPOLoss
    from klip.algos.config import TrainConfig
    from klip.algos.ppo import PPOModule
    from klip.compat import configure_inductor
    from klip.algos.loss import KLipTensorLoss
    from klip.algos.update import ModuleLoss
    configure_inductor()  # as `klip train --compile` does
    task = sys.argv[1]
    module = PPOModule(TrainConfig(task=task, collector="fast").to_dict())
    rollout = module.rollouts.collect()
    with torch.no_grad():
        module.advantage_module(rollout)
    data = rollout.select(*module._update_keys(rollout)).reshape(-1)
    actor, critic = module.actor, module.critic
    common = dict(entropy_coeff=0.0, entropy_bonus=False, critic_coeff=0.25,
                  loss_critic_type="l2", normalize_advantage=True, clip_value=0.2,
                  functional=False, log_explained_variance=False)

    def klip(**kwargs):
        return KLipPPOLoss(actor, critic, shape="step", **common, **kwargs)

    parameters = list(actor.parameters()) + list(critic.parameters())
    foreach = torch.optim.Adam(parameters, lr=3e-4, eps=1e-5, foreach=True)
    fused = torch.optim.Adam(parameters, lr=3e-4, eps=1e-5, fused=True)
    # name -> (minibatch loss, optimizer); the last two are what `klip train` runs.
    candidates = {
        "ClipPPOLoss": (ModuleLoss(ClipPPOLoss(actor, critic, clip_epsilon=0.2, **common)), foreach),
        "KLipPPOLoss(step)": (ModuleLoss(klip()), foreach),
        "KLipPPOLoss(step), deferred diagnostics": (ModuleLoss(klip(diagnostics="deferred")), foreach),
        "klip train: KLipTensorLoss(step)": (
            KLipTensorLoss(klip(diagnostics="deferred"), actor, critic), foreach),
        "klip train --compile --fused-adam": (
            KLipTensorLoss(klip(diagnostics="deferred"), actor, critic, compile=True), fused),
    }

    def iteration(loss, optimizer):
        started = time.perf_counter()
        for _ in range(10):
            shuffled = data[torch.randperm(2048)]
            for minibatch in loss.minibatches(shuffled, 64):
                total, _ = loss(minibatch)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 0.5)
                optimizer.step()
        pop = getattr(loss.loss_module, "pop_diagnostics", None)
        if pop is not None:
            pop()
        return time.perf_counter() - started

    times = {name: [] for name in candidates}
    for loss, optimizer in candidates.values():
        iteration(loss, optimizer)  # warm-up (and compilation)
    for _ in range(int(sys.argv[2])):  # interleaved, so drift hits all alike
        for name, (loss, optimizer) in candidates.items():
            times[name].append(iteration(loss, optimizer))
    print(json.dumps({name: min(values) / 320 for name, values in times.items()}))
    """
)


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


def main() -> None:
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
    args = parser.parse_args()

    results: dict = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "task": args.task, "steps": args.steps, "num_envs": args.num_envs,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"machine: {results['machine']}")
    raw = run_json([PYTHON, "-c", RAW_GYM_SCRIPT, args.task], 600)
    results["raw"] = raw
    print(f"gymnasium env.step, random actions: {1 / raw['env_step_s']:,.0f} steps/s "
          f"(bare mj_step x frame_skip: {1 / raw['sim_step_s']:,.0f} steps/s)")

    variants = dict(v.split("=", 1) for v in (args.variant or ["exact=", "fast=--compile --fused-adam"]))
    results["klip"] = {}
    for name, flags in variants.items():
        klip = run_klip(args.task, args.steps, args.num_envs, flags.split())
        klip["flags"] = flags
        klip["rate"] = klip["frames"] / klip["seconds"]
        results["klip"][name] = klip
        total = sum(klip["split_seconds"].values())
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in klip["split_seconds"].items())
        print(f"klip {name} ({flags or 'defaults'}): {klip['rate']:,.0f} env-steps/s over "
              f"{klip['frames']} steps (steady state without the first iteration: "
              f"{klip['steady_rate']:,.0f}); peak RSS {klip['peak_rss_mib']:.0f} MiB; "
              f"time: {shares}")
    klip_rate = max(k["rate"] for k in results["klip"].values())

    if not args.skip_sb3:
        sb3 = run_json([PYTHON, "-c", SB3_SCRIPT, args.task, str(args.steps), str(args.num_envs),
                        "0"], 7200)
        results["sb3"] = sb3
        sb3_rate = sb3["frames"] / sb3["seconds"]
        print(f"SB3 PPO: {sb3_rate:,.0f} env-steps/s over {sb3['frames']} steps; "
              f"peak RSS {sb3['peak_rss_mib']:.0f} MiB")
        results["ratio"] = {}
        for name, klip in results["klip"].items():
            results["ratio"][name] = klip["rate"] / sb3_rate
            print(f"ratio klip {name} / SB3: {klip['rate'] / sb3_rate:.2f}x "
                  f"(steady state {klip['steady_rate'] / sb3_rate:.2f}x)")

    per_update = run_json([PYTHON, "-c", LOSS_SCRIPT, args.task, str(args.loss_repeats)], 1800)
    results["per_update_s"] = per_update
    clip, step = per_update["ClipPPOLoss"], per_update["KLipPPOLoss(step)"]
    for name, seconds in per_update.items():
        print(f"  {name}: {seconds * 1e3:.3f} ms per minibatch update")
    print(f"KLipPPOLoss(step) / ClipPPOLoss per update: {step / clip:.3f}")
    trained = per_update["klip train: KLipTensorLoss(step)"]
    print("klip train's update (KLipTensorLoss(step), bitwise KLipPPOLoss) / ClipPPOLoss: "
          f"{trained / clip:.3f}")

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
