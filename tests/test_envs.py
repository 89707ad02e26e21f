"""Tests of the task -> TorchRL environment layer (`envs`)."""

from __future__ import annotations

import io
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from klip.envs import (
    KNOWN_TASKS,
    drain_episode_stats,
    get_normalization_state,
    gym_vector_env,
    is_discrete,
    make_env,
    make_eval_env,
    observation_and_action_dims,
    set_normalization_state,
)

torch.set_num_threads(1)

PENDULUM = "Pendulum-v1"
PENDULUM_LIMIT = 200  # TimeLimit of Pendulum-v1


class Replay:
    """Policy that plays a fixed action sequence, one ``[num_envs, act_dim]`` slice per step."""

    def __init__(self, actions: torch.Tensor) -> None:
        self.actions = actions
        self.t = 0

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        td.set("action", self.actions[self.t].clone())
        self.t += 1
        return td


def random_actions(steps: int, num_envs: int, dim: int, seed: int, scale: float = 2.5):
    generator = torch.Generator().manual_seed(seed)
    return scale * (2 * torch.rand(steps, num_envs, dim, generator=generator) - 1)


def play(env: EnvBase, actions: torch.Tensor) -> TensorDictBase:
    """``env.rollout`` of the given actions without stopping at episode ends: ``[num_envs, T]``."""
    return env.rollout(actions.shape[0], Replay(actions), break_when_any_done=False)


def test_unknown_task_lists_known_tasks() -> None:
    with pytest.raises(ValueError) as info:
        make_env("MountainCar-v0")
    for task in KNOWN_TASKS:
        assert task in str(info.value)
    assert len(KNOWN_TASKS) == 13
    assert {"Hopper-v4", "Hopper-v5", "Humanoid-v5", PENDULUM, "CartPole-v1", "LunarLander-v3"} <= set(
        KNOWN_TASKS)


@pytest.mark.parametrize("task,dims", [("CartPole-v1", (4, 2)), ("LunarLander-v3", (8, 4))])
def test_discrete_tasks_take_integer_actions(task, dims) -> None:
    env = make_env(task, num_envs=2, seed=0)
    assert is_discrete(env) and observation_and_action_dims(env) == dims
    assert env.action_spec.dtype == torch.int64 and env.action_spec.shape == torch.Size([2])
    assert env.rand_action()["action"].shape == (2,)
    assert not is_discrete(make_env(PENDULUM))


@pytest.mark.parametrize("num_envs", [1, 3])
def test_batch_size_and_specs(num_envs: int) -> None:
    env = make_env(PENDULUM, num_envs=num_envs, seed=0)
    assert env.batch_size == torch.Size([num_envs])
    assert observation_and_action_dims(env) == (3, 1)
    space = gym_vector_env(env).unwrapped.single_action_space
    assert space.low.tolist() == [-2.0] and space.high.tolist() == [2.0]
    td = env.rollout(5, break_when_any_done=False)
    assert td.batch_size == torch.Size([num_envs, 5])
    assert td["next", "observation"].dtype == torch.float32
    assert td["next", "reward"].shape == (num_envs, 5, 1)
    for key in ("done", "terminated", "truncated"):
        assert td["next", key].shape == (num_envs, 5, 1)
        assert td["next", key].dtype == torch.bool
    assert td["next", "observation"].abs().max() <= 10.0


def test_truncation_final_observation_and_reset_match_gymnasium() -> None:
    """Pendulum truncates at step 200: true final obs, then a fresh episode, as in gymnasium."""
    steps = PENDULUM_LIMIT + 5
    actions = random_actions(steps, 1, 1, seed=1)
    td = play(make_env(PENDULUM, num_envs=1, seed=4, normalize=False), actions)[0]

    end = PENDULUM_LIMIT - 1
    assert td["next", "truncated"][end].item() and not td["next", "terminated"][end].item()
    assert td["next", "done"][end].item()
    done = td["next", "done"].squeeze(-1)
    assert done.sum().item() == 1 and not td["next", "terminated"].any()

    # make_env's seeding reset plus rollout's own reset: the first episode is the second draw.
    ref = gym.make(PENDULUM)
    ref.reset(seed=4)
    obs, _ = ref.reset()
    for t in range(steps):
        if t == PENDULUM_LIMIT:
            obs, _ = ref.reset()
        np.testing.assert_array_equal(td["observation"][t].numpy(), obs)
        obs, reward, terminated, truncated, _ = ref.step(actions[t, 0].numpy())
        np.testing.assert_array_equal(td["next", "observation"][t].numpy(), obs)
        assert td["next", "reward"][t].item() == pytest.approx(reward, rel=1e-6)
        assert td["next", "truncated"][t].item() == truncated
        assert td["next", "terminated"][t].item() == terminated
    # The final observation is the episode's last state, not the next episode's first one.
    assert not torch.equal(td["next", "observation"][end], td["observation"][end + 1])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("use_collector", [False, True])
def test_no_junk_transitions_after_episode_end(use_collector: bool) -> None:
    """Hopper with random actions terminates often; every post-reset step must be real."""
    num_envs, steps = 2, 300
    env = make_env("Hopper-v4", num_envs=num_envs, seed=0, normalize=False)
    if use_collector:
        collector = Collector(env, env.rand_action, frames_per_batch=num_envs * steps)
        td = next(iter(collector))
        collector.shutdown()
    else:
        td = env.rollout(steps, break_when_any_done=False)
    assert td.batch_size == torch.Size([num_envs, steps])
    done = td["next", "done"].squeeze(-1)
    ends = [(i, t) for i, t in done.nonzero().tolist() if t + 1 < steps]
    assert len(ends) >= 4, "random Hopper should fall several times in 300 steps"
    assert torch.equal(td["next", "terminated"], td["next", "done"])  # falls, no time-outs
    for i, t in ends:
        final, fresh = td["next", "observation"][i, t], td["observation"][i, t + 1]
        assert final.abs().sum() > 0 and not torch.equal(final, fresh)
        assert abs(fresh[0].item() - 1.25) < 0.01  # torso height of Hopper's reset pose
        reward = td["next", "reward"][i, t + 1].item()
        assert 0.0 < reward < 3.0  # healthy bonus 1 +- forward/control terms
        assert td["next", "observation"][i, t + 1].abs().sum() > 0
    # Between episode ends the trajectory is continuous.
    cont = ~done[:, :-1]
    assert torch.equal(td["next", "observation"][:, :-1][cont], td["observation"][:, 1:][cont])


def test_actions_are_clipped_in_env_but_stored_unclipped() -> None:
    big = torch.full((20, 1, 1), 7.5)
    env_big = make_env(PENDULUM, seed=3, normalize=False)
    env_max = make_env(PENDULUM, seed=3, normalize=False)
    td_big, td_max = play(env_big, big), play(env_max, torch.full_like(big, 2.0))
    assert torch.equal(td_big["action"], big.transpose(0, 1))
    assert torch.equal(td_big["next", "observation"], td_max["next", "observation"])
    assert torch.equal(td_big["next", "reward"], td_max["next", "reward"])


def test_seeding_is_deterministic_and_per_sub_env() -> None:
    actions = random_actions(60, 2, 1, seed=5)
    a = play(make_env(PENDULUM, num_envs=2, seed=11), actions)
    b = play(make_env(PENDULUM, num_envs=2, seed=11), actions)
    assert (a == b).all()
    c = play(make_env(PENDULUM, num_envs=2, seed=12), actions)
    assert not torch.equal(a["next", "observation"], c["next", "observation"])
    # Sub-env i is seeded seed + i.
    raw = play(make_env(PENDULUM, num_envs=2, seed=11, normalize=False), actions)
    single = play(make_env(PENDULUM, num_envs=1, seed=12, normalize=False), actions[:, 1:])
    assert torch.equal(raw[1]["next", "observation"], single[0]["next", "observation"])


def test_normalization_state_round_trip() -> None:
    actions = random_actions(80, 2, 1, seed=2)
    trained = make_env(PENDULUM, num_envs=2, seed=0)
    play(trained, actions)
    state = get_normalization_state(trained)
    assert state["obs_mean"].shape == (3,) and state["discounted_returns"].shape == (2,)

    # Checkpoint-friendly: survives torch.save / torch.load(weights_only=True).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    restored = make_env(PENDULUM, num_envs=2, seed=0)
    set_normalization_state(restored, loaded)
    again = get_normalization_state(restored)
    assert again.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(torch.as_tensor(again[key]), torch.as_tensor(value)), key

    # Continuing the trained env and the restored one from the same reset gives the same data.
    more = random_actions(50, 2, 1, seed=3)
    trained.set_seed(7)
    restored.set_seed(7)
    out_trained, out_restored = play(trained, more), play(restored, more)
    assert (out_trained == out_restored).all()
    fresh = make_env(PENDULUM, num_envs=2, seed=0)
    fresh.set_seed(7)
    assert not torch.equal(play(fresh, more)["observation"], out_trained["observation"])

    with pytest.raises(ValueError):
        set_normalization_state(make_env(PENDULUM, num_envs=3, seed=0), state)


def test_eval_env_is_frozen_with_raw_rewards() -> None:
    trained = make_env(PENDULUM, num_envs=2, seed=0)
    play(trained, random_actions(100, 2, 1, seed=6))
    state = get_normalization_state(trained)

    steps = PENDULUM_LIMIT + 30  # crosses an episode end, i.e. a reset
    actions = random_actions(steps, 1, 1, seed=8)
    eval_env = make_eval_env(PENDULUM, seed=9, normalization_state=state)
    assert eval_env.batch_size == torch.Size([1])
    td = play(eval_env, actions)
    after = get_normalization_state(eval_env)
    assert set(after) == {"obs_mean", "obs_var", "obs_count"}
    for key in after:
        assert torch.equal(torch.as_tensor(after[key]), torch.as_tensor(state[key])), key

    raw = play(make_env(PENDULUM, num_envs=1, seed=9, normalize=False), actions)
    assert torch.equal(td["next", "reward"], raw["next", "reward"])
    expected = (raw["next", "observation"].double() - state["obs_mean"]) / torch.sqrt(
        state["obs_var"] + 1e-8
    )
    torch.testing.assert_close(td["next", "observation"], expected.clamp(-10, 10).float())
    assert drain_episode_stats(eval_env)[0][1] == PENDULUM_LIMIT

    unnormalised = make_eval_env(PENDULUM, seed=9, normalization_state=None)
    raw_obs = play(unnormalised, actions)["next", "observation"]
    assert torch.equal(raw_obs, raw["next", "observation"])


def test_episode_stats_are_raw_returns() -> None:
    steps = 2 * PENDULUM_LIMIT + 10
    actions = random_actions(steps, 2, 1, seed=4)
    env = make_env(PENDULUM, num_envs=2, seed=21)
    normalised = play(env, actions)
    raw = play(make_env(PENDULUM, num_envs=2, seed=21, normalize=False), actions)
    assert not torch.allclose(normalised["next", "reward"], raw["next", "reward"])
    assert normalised["next", "reward"].abs().max() <= 10.0

    episodes = drain_episode_stats(env)
    assert len(episodes) == 4 and all(length == PENDULUM_LIMIT for _, length in episodes)
    rewards = raw["next", "reward"].squeeze(-1).double()
    expected = []
    for k in range(2):  # episodes end for both sub-envs at the same steps
        segment = rewards[:, k * PENDULUM_LIMIT : (k + 1) * PENDULUM_LIMIT].sum(-1)
        expected += segment.tolist()
    assert [ret for ret, _ in episodes] == pytest.approx(expected, rel=1e-5)
    assert drain_episode_stats(env) == []


def test_lean_stack_equals_gymnasiums_wrappers() -> None:
    """LeanSyncVectorEnv + ClipAction + clipping normalisers == SyncVectorEnv + gymnasium's Transform*."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv
    from gymnasium.wrappers.vector import TransformAction, TransformObservation, TransformReward

    from klip.envs.wrappers import ClipAction, LeanSyncVectorEnv, ObservationNormalizer, ReturnScaler

    def sub_envs() -> list:
        return [lambda: gym.make("Hopper-v4", disable_env_checker=True) for _ in range(3)]

    lean = ReturnScaler(
        ObservationNormalizer(ClipAction(LeanSyncVectorEnv(sub_envs())), clip=1.0), gamma=0.99, clip=0.5)
    reference = SyncVectorEnv(sub_envs(), autoreset_mode=AutoresetMode.DISABLED)
    low, high = reference.single_action_space.low, reference.single_action_space.high
    reference = TransformAction(reference, lambda a: np.clip(a, low, high))
    reference = TransformObservation(ObservationNormalizer(reference), lambda o: np.clip(o, -1.0, 1.0))
    reference = TransformReward(ReturnScaler(reference, gamma=0.99), lambda r: np.clip(r, -0.5, 0.5))

    rng = np.random.default_rng(0)
    observations = [env.reset(seed=7)[0] for env in (lean, reference)]
    np.testing.assert_array_equal(*observations)
    resets = 0
    for _ in range(300):
        action = rng.uniform(-3, 3, size=(3, 3)).astype(np.float32)  # beyond the bounds
        out_lean, out_reference = lean.step(action), reference.step(action)
        for lean_part, reference_part in zip(out_lean[:4], out_reference[:4], strict=True):
            np.testing.assert_array_equal(lean_part, reference_part)
            assert lean_part.dtype == reference_part.dtype
        assert out_lean[4] == {}
        done = out_lean[2] | out_lean[3]
        if done.any():
            resets += 1
            reset_lean = lean.reset(options={"reset_mask": done})[0]
            reset_reference = reference.reset(options={"reset_mask": done})[0]
            np.testing.assert_array_equal(reset_lean, reset_reference)
    assert resets > 3
    assert np.abs(out_lean[0]).max() <= 1.0 and np.abs(out_lean[1]).max() <= 0.5

    # Stepping a finished sub-env without resetting it is refused, as gymnasium asserts.
    while not (done := (out_lean := lean.step(np.zeros((3, 3), np.float32)))[2] | out_lean[3]).any():
        pass
    with pytest.raises(RuntimeError, match="finished and were not reset"):
        lean.step(np.zeros((3, 3), np.float32))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("shape", [(), (11,)])
def test_running_mean_std_bitwise_equals_gymnasiums(batch: int, shape: tuple[int, ...]) -> None:
    from gymnasium.wrappers.utils import RunningMeanStd

    from klip.envs.wrappers import _RunningMeanStd

    ours, reference = _RunningMeanStd(shape=shape), RunningMeanStd(shape=shape)
    rng = np.random.default_rng(batch)
    for step in range(500):
        # Scales from 1e-3 to 1e3, and exact repeats (zero deviations).
        x = rng.normal(size=(batch, *shape)) * 10.0 ** rng.integers(-3, 4)
        if step % 50 == 0:
            x = np.zeros((batch, *shape)) + ours.mean
        ours.update(x)
        reference.update(x)
        assert np.array_equal(ours.mean, reference.mean) and np.array_equal(ours.var, reference.var)
        assert ours.count == reference.count


# -- normalisers against gymnasium's own wrappers and against statistics computed by hand -----
def _hopper() -> gym.Env:
    return gym.make("Hopper-v4", disable_env_checker=True)


def test_observation_normalizer_equals_gymnasiums_normalize_observation() -> None:
    """One sub-env: the same statistics, updated before normalising, as gymnasium's wrapper."""
    from gymnasium.wrappers import NormalizeObservation
    from gymnasium.wrappers.utils import RunningMeanStd

    from klip.envs.wrappers import LeanSyncVectorEnv, ObservationNormalizer

    ours = ObservationNormalizer(LeanSyncVectorEnv([_hopper]))
    reference = NormalizeObservation(_hopper())
    # gymnasium allocates the statistics in the wrapped float32 observation dtype, so its first
    # update rounds `var * count` to float32; the same statistics in float64, as klip keeps them.
    reference.obs_rms = RunningMeanStd(shape=reference.observation_space.shape, dtype=np.float64)
    np.testing.assert_array_equal(ours.reset(seed=3)[0][0], reference.reset(seed=3)[0])
    rng = np.random.default_rng(3)
    resets = 0
    for _ in range(400):
        action = rng.uniform(-1, 1, size=(1, 3)).astype(np.float32)
        obs, _, terminated, truncated, _ = ours.step(action)
        expected, _, ref_terminated, ref_truncated, _ = reference.step(action[0])
        np.testing.assert_array_equal(obs[0], expected)
        assert obs.dtype == expected.dtype == np.float32
        assert (terminated[0], truncated[0]) == (ref_terminated, ref_truncated)
        if terminated[0] or truncated[0]:
            resets += 1
            obs, _ = ours.reset(options={"reset_mask": terminated | truncated})
            np.testing.assert_array_equal(obs[0], reference.reset()[0])
    assert resets >= 3
    np.testing.assert_array_equal(ours.obs_rms.mean, reference.obs_rms.mean)
    np.testing.assert_array_equal(ours.obs_rms.var, reference.obs_rms.var)


def test_return_scaler_equals_gymnasiums_normalize_reward_within_an_episode() -> None:
    """One sub-env, one Pendulum episode (gymnasium keeps the accumulator across episodes)."""
    from gymnasium.wrappers import NormalizeReward

    from klip.envs.wrappers import LeanSyncVectorEnv, ReturnScaler

    ours = ReturnScaler(LeanSyncVectorEnv([lambda: gym.make(PENDULUM)]), gamma=0.9)
    reference = NormalizeReward(gym.make(PENDULUM), gamma=0.9)
    ours.reset(seed=5)
    reference.reset(seed=5)
    rng = np.random.default_rng(5)
    for _ in range(PENDULUM_LIMIT):
        action = rng.uniform(-2, 2, size=(1, 1)).astype(np.float32)
        _, reward, _, _, _ = ours.step(action)
        _, expected, _, _, _ = reference.step(action[0])
        np.testing.assert_allclose(reward[0], expected, rtol=1e-12, atol=0)
    assert ours.return_rms.var == pytest.approx(float(reference.return_rms.var), rel=1e-12)
    assert ours.return_rms.mean == pytest.approx(float(reference.return_rms.mean), rel=1e-12)
    assert ours.returns[0] == pytest.approx(float(reference.discounted_reward[0]), rel=1e-12)


class RawRecorder(gym.vector.VectorWrapper):
    """Keeps every raw observation and reward its wrapped env hands up (test-only)."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.observations: list[np.ndarray] = []
        self.rewards: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        mask = None if options is None else options.get("reset_mask")
        obs, info = self.env.reset(seed=seed, options=options)
        self.observations.append(obs if mask is None else obs[mask])
        return obs, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.observations.append(obs)
        self.rewards.append(reward)
        return obs, reward, terminated, truncated, info


def pooled_moments(samples: np.ndarray, prior_count: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the samples pooled with the running statistics' prior (mean 0,
    variance 1, weight `prior_count`), in closed form rather than incrementally."""
    total = samples.shape[0] + prior_count
    mean = samples.sum(0) / total
    second = prior_count * (1.0 + mean**2) + ((samples - mean) ** 2).sum(0)
    return mean, second / total


def test_normalisers_with_several_sub_envs_match_statistics_computed_by_hand() -> None:
    from klip.envs.wrappers import LeanSyncVectorEnv, ObservationNormalizer, ReturnScaler

    gamma, num_envs = 0.95, 3
    raw = RawRecorder(LeanSyncVectorEnv([_hopper] * num_envs))
    env = ReturnScaler(ObservationNormalizer(raw, clip=5.0), gamma=gamma, clip=4.0)
    obs, _ = env.reset(seed=11)
    returns = np.zeros(num_envs)
    all_returns: list[np.ndarray] = []
    rng = np.random.default_rng(11)
    resets = 0

    def check_observation(obs: np.ndarray) -> None:
        mean, var = pooled_moments(np.concatenate(raw.observations))
        expected = np.clip((raw.observations[-1] - mean) / np.sqrt(var + 1e-8), -5.0, 5.0)
        np.testing.assert_allclose(obs, expected.astype(np.float32), rtol=1e-5, atol=1e-5)

    check_observation(obs)
    for _ in range(200):
        obs, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, (num_envs, 3)).astype(np.float32))
        check_observation(obs)
        returns = returns * gamma + raw.rewards[-1]
        all_returns.append(returns.copy())
        _, var = pooled_moments(np.concatenate(all_returns))
        expected = np.clip(raw.rewards[-1] / np.sqrt(var + 1e-8), -4.0, 4.0)
        np.testing.assert_allclose(reward, expected, rtol=1e-9)
        done = terminated | truncated
        if done.any():
            resets += 1
            returns[done] = 0.0  # a new episode restarts its discounted return
            obs, _ = env.reset(options={"reset_mask": done})
            assert raw.observations[-1].shape[0] == done.sum()  # only the reset sub-envs count
            check_observation(obs[done])
    assert resets >= 3
    assert np.abs(np.concatenate(raw.rewards)).max() > 0.5  # rewards the scaling does change


def test_episode_recorder_keeps_running_episodes_through_a_partial_reset() -> None:
    from klip.envs.wrappers import EpisodeRecorder, LeanSyncVectorEnv

    raw = RawRecorder(LeanSyncVectorEnv([_hopper, _hopper]))
    env = EpisodeRecorder(raw)
    env.reset(seed=2)
    rng = np.random.default_rng(2)
    started = [0, 0]  # index into raw.rewards where each sub-env's episode started
    expected: list[tuple[float, int]] = []
    for _ in range(300):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, (2, 3)).astype(np.float32))
        done = terminated | truncated
        for i in np.flatnonzero(done):
            rewards = [step[i] for step in raw.rewards[started[i]:]]
            expected.append((float(np.sum(rewards)), len(rewards)))
            started[i] = len(raw.rewards)
        if done.any():
            env.reset(options={"reset_mask": done})
            assert raw.observations[-1].shape[0] == done.sum()  # the mask reached the sub-envs
    finished = env.drain()
    assert len(finished) >= 4 and env.drain() == []
    assert [length for _, length in finished] == [length for _, length in expected]
    assert [ret for ret, _ in finished] == pytest.approx([ret for ret, _ in expected], rel=1e-12)
    # the two sub-envs' episodes ended at different steps (partial resets happened)
    assert len({length for _, length in finished}) > 1


def test_normalised_spaces_and_gamma_range() -> None:
    from klip.envs.wrappers import LeanSyncVectorEnv, ObservationNormalizer, ReturnScaler

    env = ObservationNormalizer(LeanSyncVectorEnv([_hopper, _hopper]), clip=5.0)
    assert env.single_observation_space == gym.spaces.Box(-5.0, 5.0, (11,), np.float32)
    assert env.observation_space.shape == (2, 11) and env.observation_space.dtype == np.float32
    assert env.observation_space.low.min() == -5.0 and env.observation_space.high.max() == 5.0
    for gamma in (0.0, 1.0):
        assert ReturnScaler(env, gamma=gamma).gamma == gamma
    for gamma in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"^gamma must be in \[0, 1\], got {gamma}$"):
            ReturnScaler(env, gamma=gamma)


def test_clip_action_advertises_an_unbounded_space_and_unfinished_steps_are_refused() -> None:
    from klip.envs.wrappers import ClipAction, LeanSyncVectorEnv

    env = ClipAction(LeanSyncVectorEnv([_hopper, _hopper]))
    assert env.single_action_space == gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    assert env.action_space.shape == (2, 3) and env.action_space.dtype == np.float32
    assert np.isneginf(env.action_space.low).all() and np.isposinf(env.action_space.high).all()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    while not (done := np.logical_or(*env.step(rng.uniform(-1, 1, (2, 3)).astype(np.float32))[2:4])).any():
        pass
    finished = np.flatnonzero(done)
    message = rf"^sub-envs {re.escape(str(finished))} finished and were not reset$"
    with pytest.raises(RuntimeError, match=message):
        env.step(np.zeros((2, 3), np.float32))


def test_mujoco_warnings_write_nothing_in_the_working_directory(tmp_path, monkeypatch, caplog) -> None:
    # The -v4 models warn on every load; MuJoCo's own handler would append that to
    # MUJOCO_LOG.TXT wherever the user happens to run klip.
    import logging

    from klip.envs import gym_env
    from klip.envs.tasks import _mujoco_warning

    monkeypatch.chdir(tmp_path)
    env = gym_env("HalfCheetah-v4")
    env.reset(seed=0)
    env.close()
    assert list(tmp_path.iterdir()) == []
    with caplog.at_level(logging.WARNING):
        _mujoco_warning("Nan, Inf or huge value in QACC at DOF 0")
    assert "MuJoCo: Nan, Inf or huge value in QACC at DOF 0" in caplog.text
