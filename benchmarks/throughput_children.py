"""The child processes of `benchmarks/throughput.py`, each timed in a fresh interpreter.

    python benchmarks/throughput_children.py sb3 TASK STEPS NUM_ENVS SEED
    python benchmarks/throughput_children.py raw-gym TASK
    python benchmarks/throughput_children.py per-update TASK REPEATS

Each prints one JSON line. They live in their own processes so that one measurement's
imports, threads and allocations cannot slow another.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import torch


def sb3_learning_rate(task: str, steps: int, num_envs: int, seed: int) -> dict[str, Any]:
    """Stable-Baselines3 PPO on the same protocol, timed around `learn()`."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    env = VecNormalize(make_vec_env(task, n_envs=num_envs, seed=seed, vec_env_cls=DummyVecEnv),
                       gamma=0.99)
    model = PPO("MlpPolicy", env, n_steps=2048 // num_envs, batch_size=64, n_epochs=10,
                learning_rate=3e-4, gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0,
                vf_coef=0.5, max_grad_norm=0.5, seed=seed, device="cpu", verbose=0,
                policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]},
                               "activation_fn": torch.nn.Tanh})
    started = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - started
    return {"frames": model.num_timesteps, "seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def raw_gym_rates(task: str) -> dict[str, float]:
    """Seconds per gymnasium `env.step` with random actions, and per bare `mj_step` x frame_skip."""
    import gymnasium as gym
    import mujoco

    env = gym.make(task)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(20000)]

    def play(chosen: list[Any]) -> None:
        for action in chosen:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()

    play(actions[:1000])  # warm-up
    started = time.perf_counter()
    play(actions)
    step_seconds = (time.perf_counter() - started) / len(actions)
    base = env.unwrapped
    started = time.perf_counter()
    for _ in range(5000):
        mujoco.mj_step(base.model, base.data, nstep=base.frame_skip)
    return {"env_step_s": step_seconds, "sim_step_s": (time.perf_counter() - started) / 5000}


def update_candidates(task: str) -> tuple[dict[str, tuple[Any, torch.optim.Optimizer]], Any, list]:
    """Each loss path on one real Hopper rollout: name -> (minibatch loss, optimizer)."""
    from torchrl.objectives import ClipPPOLoss

    from klip.algos import KLipPPOLoss
    from klip.algos.config import TrainConfig
    from klip.algos.loss import KLipTensorLoss
    from klip.algos.ppo import PPOModule
    from klip.algos.update import ModuleLoss
    from klip.compat import configure_inductor

    configure_inductor()  # as `klip train --compile` does
    module = PPOModule([TrainConfig(task=task, collector="fast").to_dict()])
    (rollout,) = module.rollouts.collect([module.agents[0].generator])
    with torch.no_grad():
        module.agents[0].advantage_module(rollout)
    data = rollout.select(*module._update_keys(rollout)).reshape(-1)
    actor, critic = module.actor, module.critic
    common = {"entropy_coeff": 0.0, "entropy_bonus": False, "critic_coeff": 0.25,
              "loss_critic_type": "l2", "normalize_advantage": True, "clip_value": 0.2,
              "functional": False, "log_explained_variance": False}

    def klip(**kwargs: Any) -> KLipPPOLoss:
        return KLipPPOLoss(actor, critic, shape="step", **common, **kwargs)

    parameters = list(actor.parameters()) + list(critic.parameters())
    foreach = torch.optim.Adam(parameters, lr=3e-4, eps=1e-5, foreach=True)
    fused = torch.optim.Adam(parameters, lr=3e-4, eps=1e-5, fused=True)
    # The last two are what `klip train` runs.
    candidates = {
        "ClipPPOLoss": (ModuleLoss(ClipPPOLoss(actor, critic, clip_epsilon=0.2, **common)), foreach),
        "KLipPPOLoss(step)": (ModuleLoss(klip()), foreach),
        "KLipPPOLoss(step), deferred diagnostics": (ModuleLoss(klip(diagnostics="deferred")), foreach),
        "klip train: KLipTensorLoss(step)": (
            KLipTensorLoss(klip(diagnostics="deferred"), actor, critic), foreach),
        "klip train --compile --fused-adam": (
            KLipTensorLoss(klip(diagnostics="deferred"), actor, critic, compile=True), fused),
    }
    return candidates, data, parameters


def per_update_seconds(task: str, repeats: int) -> dict[str, float]:
    """Seconds per minibatch update of each loss path, best of `repeats` interleaved rounds."""
    candidates, data, parameters = update_candidates(task)

    def iteration(loss: Any, optimizer: torch.optim.Optimizer) -> float:
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

    times: dict[str, list[float]] = {name: [] for name in candidates}
    for loss, optimizer in candidates.values():
        iteration(loss, optimizer)  # warm-up (and compilation)
    for _ in range(repeats):  # interleaved, so drift hits all alike
        for name, (loss, optimizer) in candidates.items():
            times[name].append(iteration(loss, optimizer))
    return {name: min(values) / 320 for name, values in times.items()}


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    command, task, *rest = argv
    if command == "sb3":
        steps, num_envs, seed = (int(value) for value in rest)
        result: dict[str, Any] = sb3_learning_rate(task, steps, num_envs, seed)
    elif command == "raw-gym":
        result = raw_gym_rates(task)
    elif command == "per-update":
        result = per_update_seconds(task, int(rest[0]))
    else:
        raise SystemExit(f"unknown child command {command!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
