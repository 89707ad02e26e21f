"""The lean rollout loop returns exactly what TorchRL's Collector returns; env snapshots."""

from __future__ import annotations

import io

import pytest
import torch

from klip.algos.config import TrainConfig
from klip.algos.ppo import PPOModule
from klip.envs import (
    KNOWN_TASKS,
    get_env_state,
    is_discrete,
    make_env,
    observation_and_action_dims,
    set_env_state,
)


def rollouts_of(collector: str, task: str, num_envs: int, count: int, steps: int):
    config = TrainConfig(task=task, num_envs=num_envs, rollout_steps=steps, collector=collector)
    module = PPOModule([config.to_dict()])
    with torch.no_grad():  # a policy away from its initialisation (log-std != 0)
        for parameter in module.actor.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7)))
    generator = torch.Generator().manual_seed(3)
    return [module.rollouts.collect([generator])[0] for _ in range(count)]


# 1 and 3 Hopper sub-envs draw their action noise in one serial draw per rollout, 6 (18 numbers
# per step) step by step: both ways must give the collector's numbers.
# CartPole and LunarLander: a categorical policy, whose actions FastRollouts draws per agent.
@pytest.mark.parametrize("task,num_envs", [("Hopper-v4", 1), ("Hopper-v4", 3), ("Hopper-v4", 6),
                                           ("Pendulum-v1", 2), ("CartPole-v1", 1), ("CartPole-v1", 3),
                                           ("LunarLander-v3", 2)])
def test_fast_collector_is_bitwise_equal_to_torchrl_collector(task, num_envs):
    # Hopper's and CartPole's random-policy episodes end within tens of steps: many partial resets.
    steps = {"Pendulum-v1": 448, "LunarLander-v3": 512}.get(task, 576)  # Pendulum truncates at 200
    reference = rollouts_of("torchrl", task, num_envs, 2, steps)
    fast = rollouts_of("fast", task, num_envs, 2, steps)
    for expected, actual in zip(reference, fast, strict=True):
        assert actual.batch_size == expected.batch_size == torch.Size([num_envs, steps // num_envs])
        assert set(expected.keys(True, True)) == set(actual.keys(True, True))
        assert expected["next", "done"].any()
        for key in expected.keys(True, True):
            assert torch.equal(expected.get(key), actual.get(key)), key


# Agent i's rows of the shared env start i * num_envs * 11 floats in: misaligned for a
# product unless copied (MKL rounds a misaligned operand's product differently).
@pytest.mark.parametrize("task,num_envs", [("Hopper-v4", 1), ("Hopper-v4", 2), ("Hopper-v4", 3),
                                           ("CartPole-v1", 1), ("CartPole-v1", 2)])
def test_every_agents_rollouts_are_its_single_runs(task, num_envs):
    def config(seed: int) -> dict:
        return TrainConfig(task=task, seed=seed, num_envs=num_envs, rollout_steps=128 * num_envs,
                           minibatch_size=64).to_dict()

    seeds = [0, 3, 5, 8, 11]
    population = PPOModule([config(seed) for seed in seeds])
    generators = [agent.generator for agent in population.agents]
    together = [population.rollouts.collect(generators) for _ in range(2)]
    for index, seed in enumerate(seeds):
        single = PPOModule([config(seed)])
        for rollouts in together:
            alone = single.rollouts.collect([single.agents[0].generator])[0]
            for key in alone.keys(True, True):
                assert torch.equal(rollouts[index].get(key), alone.get(key)), (seed, key)


@pytest.mark.parametrize("task", KNOWN_TASKS)
def test_env_snapshot_restores_mid_episode(task):
    """Observations, rewards and ends continue bit for bit, on every task (Ant's and Humanoid's
    rewards read quantities MuJoCo derives from the state: envs/state.py, DERIVED_FIELDS)."""
    env = make_env(task, num_envs=2, seed=0)
    generator = torch.Generator().manual_seed(0)
    if is_discrete(env):
        count = observation_and_action_dims(env)[1]
        actions = [torch.randint(count, (2,), generator=generator) for _ in range(250)]
    else:
        actions = [torch.randn(2, env.action_spec.shape[-1], generator=generator) for _ in range(250)]
    carrier = env.reset()
    for action in actions[:137]:
        carrier["action"] = action
        _, carrier = env.step_and_maybe_reset(carrier)
    snapshot, saved_carrier = get_env_state(env), carrier.clone()
    if task == "LunarLander-v3":  # a Box2D world has no state API: refused, not restored wrong
        with pytest.raises(ValueError, match="Box2D env's simulator"):
            set_env_state(make_env(task, num_envs=2, seed=99), snapshot)
        return

    def play(environment, state):
        transitions = []
        for action in actions[137:]:
            state["action"] = action
            step, state = environment.step_and_maybe_reset(state)
            transitions.append(step["next"].select("observation", "reward", "done").clone())
        return transitions

    expected = play(env, carrier)
    other = make_env(task, num_envs=2, seed=99)
    other.reset()
    set_env_state(other, snapshot)
    actual = play(other, saved_carrier)
    for a, b in zip(expected, actual, strict=True):
        for key in ("observation", "reward", "done"):
            assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="sub-envs"):
        set_env_state(make_env(task, num_envs=3, seed=0), snapshot)


@pytest.mark.parametrize("task", ["Hopper-v4", "CartPole-v1"])
@pytest.mark.parametrize("collector", ["fast", "torchrl"])
def test_rollout_state_round_trip_continues_bit_for_bit(collector, task):
    config = TrainConfig(task=task, num_envs=2, rollout_steps=64, collector=collector)
    module = PPOModule([config.to_dict()])
    generator = torch.Generator().manual_seed(5)
    module.rollouts.collect([generator])  # mid-episode now
    buffer = io.BytesIO()
    torch.save(module.rollouts.state_dict(), buffer)
    rng = generator.get_state()
    (expected,) = module.rollouts.collect([generator])

    other = PPOModule([TrainConfig(task=task, num_envs=2, rollout_steps=64, collector=collector,
                                   seed=9).to_dict()])
    other.actor.load_state_dict(module.actor.state_dict())
    buffer.seek(0)
    other.rollouts.load_state_dict(torch.load(buffer, weights_only=False))
    generator.set_state(rng)
    (actual,) = other.rollouts.collect([generator])
    for key in expected.keys(True, True):
        assert torch.equal(expected.get(key), actual.get(key)), key
    fresh = PPOModule([config.to_dict()]).rollouts.collect([torch.Generator().manual_seed(5)])[0]
    assert not torch.equal(expected["observation"][:, 0], fresh["observation"][:, 0])  # not a fresh start


def test_unknown_collector_is_named():
    from klip.algos.rollout import make_rollouts

    with pytest.raises(ValueError, match=r"^unknown collector 'gym'; choose 'fast' or 'torchrl'$"):
        make_rollouts("gym", [make_env("Pendulum-v1")], [None], 8)


@pytest.mark.parametrize("shape", [(1,), (3, 1), (5, 3), (4, 4), (2, 9)])
def test_rollout_noise_is_the_numbers_of_separate_draws(shape):
    from klip.algos.rollout import rollout_noise

    torch.manual_seed(11)
    noise = rollout_noise(7, shape)
    torch.manual_seed(11)
    expected = torch.stack([torch.empty(shape).normal_() for _ in range(7)])
    assert torch.equal(noise, expected)
