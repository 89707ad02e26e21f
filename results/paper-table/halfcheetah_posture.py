"""How each HalfCheetah-v4 run of the grid moves: upright, or flipped onto its back.

    .venv/bin/python results/paper-table/halfcheetah_posture.py [RUN_DIR ...]

RUN_DIR is a klip run directory or an SB3 peer run (`sb3-peer/HalfCheetah-v4/sN`, from
`benchmarks/sb3_peer.py`); default: every HalfCheetah-v4 run of the grid and of the peer.

HalfCheetah's PPO returns are known to split between gaits; the best-known split is a cheetah
that flips over and runs on its back. This loads each run's policy (its checkpoint, or the
`parameters.pt` committed with it; runs without either are listed and skipped), plays one
deterministic episode (the seed of the run's end-of-run evaluation, normalisation frozen) and
reads the torso's pitch (`qpos[2]`, radians; 0 upright, +-pi on its back) at every step.
An SB3 peer run plays its episode through
its saved `VecNormalize` (statistics frozen) on the same seed. Printed per run: the return of that
episode, the mean forward speed (`qvel[0]`), the mean of
cos(pitch) (1 upright, -1 on its back) and the fraction of steps with |pitch| > pi/2. Written
to `halfcheetah_posture.json` next to this script when run with the default (rows of runs whose
policy was not kept, measured earlier from their checkpoints, stay in it).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def describe_path(run_dir: Path) -> str:
    return str(run_dir.relative_to(HERE)) if run_dir.is_relative_to(HERE) else str(run_dir)


def describe(run_dir: Path, final: float | None, episode_return: float, pitches: list[float],
             speeds: list[float]) -> dict[str, Any]:
    pitch = np.asarray(pitches)
    return {
        "run": describe_path(run_dir),
        "final_return_last10pct": final,
        "episode_return": episode_return,
        "mean_forward_speed": float(np.mean(speeds)),
        "mean_cos_pitch": float(np.mean(np.cos(pitch))),
        "fraction_on_back": float(np.mean(np.abs(pitch) > math.pi / 2)),
        "steps": len(pitch),
    }


def peer_posture(run_dir: Path) -> dict[str, Any]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    summary = json.loads((run_dir / "summary.json").read_text())
    env = VecNormalize.load(str(run_dir / "vecnormalize.pkl"),
                            make_vec_env(summary["task"], n_envs=1, seed=summary["seed"] + 10_000,
                                         vec_env_cls=DummyVecEnv))
    env.training, env.norm_reward = False, False
    model = PPO.load(run_dir / "model.zip", device="cpu")
    mujoco = env.venv.envs[0].unwrapped
    observation = env.reset()
    pitches, speeds, total, done = [], [], 0.0, False
    while not done:
        action, _ = model.predict(observation, deterministic=True)
        observation, reward, dones, _ = env.step(action)
        done = bool(dones[0])
        total += float(reward[0])
        if not done:  # at an episode's end the vector env has already reset the simulator
            pitches.append(float(mujoco.data.qpos[2]))
            speeds.append(float(mujoco.data.qvel[0]))
    return describe(run_dir, summary["final_return"], total, pitches, speeds)


def posture(run_dir: Path) -> dict[str, Any]:
    if (run_dir / "model.zip").is_file():
        return peer_posture(run_dir)
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from klip.algos.run import load_run
    from klip.envs import get_normalization_state, gym_vector_env, make_eval_env

    run = load_run(run_dir)
    module = run.load_module()
    env = make_eval_env(run.config.task, seed=run.config.seed + 10_000,
                        normalization_state=get_normalization_state(module.env))
    mujoco = gym_vector_env(env).unwrapped.envs[0].unwrapped
    pitches: list[float] = []
    speeds: list[float] = []

    def record(_: Any, __: Any) -> None:
        pitches.append(float(mujoco.data.qpos[2]))
        speeds.append(float(mujoco.data.qvel[0]))

    with set_exploration_type(ExplorationType.DETERMINISTIC):
        trajectory = env.rollout(100_000, module.actor, break_when_any_done=True, callback=record)
    env.close()
    module.env.close()
    return describe(run_dir, (run.summary or {}).get("final_return_last10pct"),
                    float(trajectory["next", "reward"].sum()), pitches, speeds)


def playable(run_dir: Path) -> bool:
    return any((run_dir / name).is_file() for name in ("model.zip", "parameters.pt", "checkpoints/last.ckpt"))


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    runs = [Path(path).resolve() for path in paths] or [
        *sorted(path.parent for path in (HERE / "runs" / "HalfCheetah-v4").glob("*/s*/cell.json")),
        *sorted(path.parent for path in (HERE / "sb3-peer" / "HalfCheetah-v4").glob("s*/model.zip"))]
    output = HERE / "halfcheetah_posture.json"
    # Runs measured before their policies were kept (parameters.pt) keep their earlier rows.
    earlier = json.loads(output.read_text()) if output.is_file() and not paths else []
    rows = {row["run"]: row for row in earlier}
    print(f"{'run':<32} {'final(10%)':>10} {'episode':>8} {'speed':>6} {'cos pitch':>9} {'on back':>7}")
    for run_dir in runs:
        if not playable(run_dir):
            print(f"{describe_path(run_dir):<32} no policy kept (no parameters.pt or checkpoint)")
            continue
        row = posture(run_dir)
        rows[row["run"]] = row
        print(f"{row['run']:<32} {row['final_return_last10pct']:>10.1f} {row['episode_return']:>8.1f} "
              f"{row['mean_forward_speed']:>6.2f} {row['mean_cos_pitch']:>9.2f} "
              f"{row['fraction_on_back']:>7.2f}")
    if not paths:
        output.write_text(json.dumps([rows[key] for key in sorted(rows)], indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
