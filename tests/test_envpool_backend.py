"""`--env-backend envpool`: EnvPool's simulators under klip's wrappers, checked against gymnasium.

Agreement is checked transition by transition: gymnasium's env is put in EnvPool's state (read
back from EnvPool's observation: every task here observes all of qpos but the x (and y)
position, which these flat-floor tasks are invariant to, and all of qvel), both take the same
action, and the next observation, reward and termination are compared.

Tolerances, measured with EnvPool 1.2.5 (which bundles MuJoCo 3.6.0) against gymnasium 1.4
with MuJoCo 4.0.0, worst over 300 random steps per task:
- Hopper, Walker2d, HalfCheetah: observations within 1e-7 relative, rewards within 6e-8
  (EnvPool computes rewards in float32). Tolerance 1e-6 / 1e-5.
- Humanoid: positions, velocities, inertias, com velocities and actuator forces within 7e-5
  relative (1e-3 here); with gymnasium on MuJoCo 3.6.0 instead, 4e-10: the gap is MuJoCo's
  version. The last 84 entries (`cfrc_ext`) are not compared: Humanoid-v4 reads them without
  `mj_rnePostConstraint`, so they are stale or zero on both sides, differently. Rewards within
  3e-3 per step (2e-2 here).
- Ant: states within 1.1e-2 relative (5e-2 here), 6e-15 with gymnasium on MuJoCo 3.6.0:
  contacts resolve differently between MuJoCo 3.6 and 4.0. Rewards within 4e-2 per step
  (1e-1 here) on both MuJoCo versions: the forward-velocity term differs after the state is
  copied in (which refreshes gymnasium's body positions, but not EnvPool's), not in a run.
Whether learning is the same is a separate measurement (benchmarks/README.md, "EnvPool").
"""

from __future__ import annotations

import envpool  # scripts/setup.sh installs klip[envpool]; a missing install fails here
import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from klip.algos.config import ConfigError, TrainConfig
from klip.cli import main
from klip.envs import get_env_state, make_env, set_env_state
from klip.envs.envpool_backend import EnvPoolVectorEnv

# task -> (qpos entries not observed, compared observation entries, obs rtol, reward atol)
AGREEMENT = {
    "Hopper-v4": (1, None, 1e-6, 1e-5),
    "Walker2d-v4": (1, None, 1e-6, 1e-5),
    "HalfCheetah-v4": (1, None, 1e-6, 1e-5),
    "Humanoid-v4": (2, 376 - 84, 1e-3, 2e-2),
    "Ant-v4": (2, None, 5e-2, 1e-1),
}


@pytest.mark.parametrize("task", list(AGREEMENT))
def test_envpool_transitions_agree_with_gymnasiums_from_the_same_state(task):
    unobserved, compared, rtol, reward_atol = AGREEMENT[task]
    pool = EnvPoolVectorEnv(task, num_envs=1, seed=0)
    reference = gym.make(task, disable_env_checker=True).unwrapped
    reference.reset(seed=0)
    nq, nv = reference.model.nq, reference.model.nv
    observation, _ = pool.reset()
    rng = np.random.default_rng(0)
    checked = terminations = 0
    for _ in range(300):
        state = observation[0]
        qvel = state[nq - unobserved: nq - unobserved + nv]
        # Hopper and Walker2d observe qvel clipped to +-10: such a state cannot be copied.
        copyable = task not in ("Hopper-v4", "Walker2d-v4") or bool((np.abs(qvel) < 10).all())
        reference.set_state(np.concatenate([np.zeros(unobserved), state[: nq - unobserved]]), qvel)
        action = rng.uniform(-1, 1, size=pool.single_action_space.shape)
        observation, reward, terminated, truncated, _ = pool.step(action[None])
        expected, expected_reward, expected_terminated, _, _ = reference.step(action)
        if copyable:
            np.testing.assert_allclose(observation[0][:compared], expected[:compared], rtol=rtol, atol=rtol)
            assert abs(reward[0] - expected_reward) <= reward_atol
            assert bool(terminated[0]) == bool(expected_terminated)
            checked += 1
        terminations += int(terminated[0])
        if terminated[0] or truncated[0]:
            observation, _ = pool.reset(options={"reset_mask": terminated | truncated})
    assert checked >= 50
    if task != "HalfCheetah-v4":  # HalfCheetah never terminates
        assert terminations > 0


def rollout_of(env, steps: int = 200) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    data = env.rollout(steps, break_when_any_done=False)
    return {key: data[key].clone() for key in (("next", "observation"), ("next", "reward"), ("next", "done"))}


def test_envpool_stack_is_seeded_reproducible_and_normalised_like_gymnasiums():
    first = rollout_of(make_env("Hopper-v4", num_envs=2, seed=3, backend="envpool"))
    again = rollout_of(make_env("Hopper-v4", num_envs=2, seed=3, backend="envpool"))
    other = rollout_of(make_env("Hopper-v4", num_envs=2, seed=4, backend="envpool"))
    for key, value in first.items():
        assert torch.equal(value, again[key]), key
    assert not torch.equal(first["next", "observation"], other["next", "observation"])
    assert first["next", "done"].sum() > 2  # episodes ended and their sub-envs were reset
    observation = first["next", "observation"]
    assert observation.dtype == torch.float32 and observation.abs().max() <= 10.0
    # Sub-env i of seed s starts as EnvPool's own pool of seed s + i does.
    pool = envpool.make("Hopper-v4", env_type="gymnasium", num_envs=1, seed=4, num_threads=1)
    mine = EnvPoolVectorEnv("Hopper-v4", num_envs=2, seed=0)
    np.testing.assert_array_equal(mine.reset(seed=3)[0][1], pool.reset()[0][0])


def test_a_finished_sub_env_must_be_reset_before_the_next_step():
    pool = EnvPoolVectorEnv("Hopper-v4", num_envs=2, seed=0)
    pool.reset()
    for _ in range(1000):
        _, _, terminated, truncated, _ = pool.step(np.ones((2, 3)))
        if (terminated | truncated).any():
            break
    with pytest.raises(RuntimeError, match="finished and were not reset"):
        pool.step(np.zeros((2, 3)))


def test_an_envpool_env_state_cannot_be_restored():
    env = make_env("Hopper-v4", seed=0, backend="envpool")
    env.reset()
    state = get_env_state(env)
    assert state["sub_envs"] is None
    with pytest.raises(ValueError, match="cannot be saved or restored"):
        set_env_state(env, state)


def test_envpool_run_trains_and_refuses_resume_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--task", "Hopper-v4", "--env-backend", "envpool", "--rollout-steps", "256",
             "--minibatch-size", "64", "--epochs", "1", "--eval-episodes", "1", "--checkpoint-every", "1",
             "--out", str(out), "--no-progress"]
    assert main(["train", *flags, "--steps", "512"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["env_backend"] == "envpool"
    before = sorted(path.relative_to(out) for path in out.rglob("*"))
    capsys.readouterr()
    assert main(["train", *flags, "--steps", "1024", "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "envpool" in error and "cannot resume" in error
    assert sorted(path.relative_to(out) for path in out.rglob("*")) == before


def test_backend_errors_are_config_errors(monkeypatch):
    from klip.envs import envpool_backend

    with pytest.raises(ConfigError, match="unknown env_backend 'jax'"):
        TrainConfig(task="Hopper-v4", env_backend="jax").validate()
    monkeypatch.setattr(envpool_backend, "_envpool_tasks", lambda: None)
    with pytest.raises(ConfigError, match=r"pip install 'klip\[envpool\]'"):
        TrainConfig(task="Hopper-v4", env_backend="envpool").validate()
    monkeypatch.setattr(envpool_backend, "_envpool_tasks", lambda: frozenset({"Ant-v4"}))
    with pytest.raises(ConfigError, match="envpool has no task 'Hopper-v4'"):
        TrainConfig(task="Hopper-v4", env_backend="envpool").validate()


def test_a_run_recorded_before_the_option_existed_still_resumes(tmp_path):
    out = tmp_path / "run"
    flags = ["--task", "Pendulum-v1", "--rollout-steps", "256", "--minibatch-size", "64", "--epochs", "1",
             "--eval-episodes", "0", "--checkpoint-every", "1", "--no-anneal-lr", "--out", str(out),
             "--no-progress"]
    assert main(["train", *flags, "--steps", "256"]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    del recorded["env_backend"]  # as klip wrote it before --env-backend
    (out / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    assert main(["train", *flags, "--steps", "512", "--resume"]) == 0
    assert yaml.safe_load((out / "summary.json").read_text())["frames"] == 512
