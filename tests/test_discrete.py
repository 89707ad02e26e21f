"""Discrete actions: the categorical policy, its losses, rollouts, runs and refusals (CartPole)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_same_run, band_edges, edge_case, per_sample_gradients
from tensordict import TensorDict
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import kl_divergence
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import ClipPPOLoss

from klip.algos import KLipPPOLoss
from klip.algos.agents import PopulationSpec, train_population
from klip.algos.config import TrainConfig
from klip.algos.networks import (
    categorical_entropy,
    categorical_kl,
    categorical_log_prob,
    categorical_sample,
    make_actor,
    make_critic,
)
from klip.algos.train import train
from klip.cli import main
from klip.envs import make_env, names
from klip.envs.tasks import find_wrapper
from klip.envs.wrappers import ObservationNormalizer, ReturnScaler

OBS_DIM, NUM_ACTIONS = 4, 3
TINY = dict(task="CartPole-v1", rollout_steps=256, minibatch_size=64, epochs=2, eval_episodes=1,
            eval_every=2, checkpoint_every=1)


def categorical_actor_critic(dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    actor, critic = make_actor(OBS_DIM, NUM_ACTIONS, discrete=True), make_critic(OBS_DIM)
    with torch.no_grad():  # away from the near-uniform initial policy (head gain 0.01)
        for parameter in actor.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape))
    return actor.to(dtype), critic.to(dtype)


def test_head_log_prob_entropy_and_kl_are_torchs_categorical():
    actor, _ = categorical_actor_critic()
    data = actor(TensorDict({"observation": torch.randn(50, OBS_DIM)}, [50]))
    logits = data["logits"]
    reference = TorchCategorical(logits=logits)
    assert data["action"].dtype == torch.int64 and data["action"].shape == (50,)
    assert torch.equal(data["action_log_prob"], reference.log_prob(data["action"]))
    assert torch.equal(categorical_log_prob(data["action"], logits), reference.log_prob(data["action"]))
    assert torch.equal(categorical_entropy(logits), reference.entropy())
    assert torch.equal(actor.get_dist(data.clone()).entropy(), reference.entropy())
    other = logits + torch.randn_like(logits)
    expected_kl = kl_divergence(reference, TorchCategorical(logits=other))
    assert torch.equal(categorical_kl(logits, other), expected_kl)
    torch.manual_seed(3)
    drawn = reference.sample()
    assert torch.equal(categorical_sample(logits, torch.Generator().manual_seed(3)), drawn)


def test_deterministic_action_is_the_argmax():
    actor, _ = categorical_actor_critic()
    data = TensorDict({"observation": torch.randn(40, OBS_DIM)}, [40])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        actor(data)
    assert torch.equal(data["action"], data["logits"].argmax(-1))


def sampled_batch(actor, log_ratio: torch.Tensor, advantage: torch.Tensor, seed: int = 1) -> TensorDict:
    """Sampled actions, stored log-probs set so that the loss's `current - stored` is `log_ratio`
    exactly where a float allows (stored nudged by an ulp until it is)."""
    generator = torch.Generator().manual_seed(seed)
    size, dtype = log_ratio.shape[0], log_ratio.dtype
    batch = TensorDict({"observation": torch.randn(size, OBS_DIM, generator=generator, dtype=dtype)}, [size])
    with torch.no_grad():
        actor(batch)
        current = actor.get_dist(batch.select("observation").clone()).log_prob(batch["action"])
    stored = current - log_ratio
    for _ in range(4):
        off = (current - stored) != log_ratio
        if not off.any():
            break
        toward = torch.where((current - stored) > log_ratio, torch.inf, -torch.inf).to(dtype)
        stored = torch.where(off, torch.nextafter(stored, toward), stored)
    batch["action_log_prob"] = stored
    batch["advantage"] = advantage.reshape(size, 1)
    batch["value_target"] = torch.randn(size, 1, generator=generator, dtype=dtype)
    batch["state_value"] = torch.randn(size, 1, generator=generator, dtype=dtype)
    return batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", [
    dict(entropy_coeff=0.0, critic_coeff=0.25, normalize_advantage=True, clip_value=0.2),
    dict(entropy_coeff=0.01, normalize_advantage=False),
])
def test_step_per_sample_gradients_equal_clip_with_a_categorical_actor(dtype, config):
    actor, critic = categorical_actor_critic(dtype, seed=2)
    log_ratio, advantage = edge_case(256, dtype, 4)
    batch = sampled_batch(actor, log_ratio, advantage)
    with torch.no_grad():
        achieved = actor.get_dist(batch.select("observation").clone()).log_prob(batch["action"]) - batch[
            "action_log_prob"]
    on_edges = torch.isin(achieved, band_edges(0.2, dtype))
    assert on_edges.sum() >= 32 and (advantage[on_edges] > 0).any() and (advantage[on_edges] < 0).any()
    assert (achieved.abs() > 0.2).any()  # samples outside the band, clipped
    parameters = [*actor.parameters(), *critic.parameters()]
    reference = ClipPPOLoss(actor, critic, clip_epsilon=0.2, loss_critic_type="l2", **config).to(dtype)
    klip = KLipPPOLoss(actor, critic, shape="step", loss_critic_type="l2", **config).to(dtype)
    expected_rows, expected = per_sample_gradients(reference, batch, parameters)
    actual_rows, actual = per_sample_gradients(klip, batch, parameters)
    assert torch.equal(expected_rows, actual_rows)
    for a, b in zip(expected, actual, strict=True):
        assert torch.equal(a, b)


def test_kl_context_is_the_categorical_closed_form(monkeypatch):
    import klip.algos.loss as loss_module

    actor, critic = categorical_actor_critic(torch.float64)
    log_ratio, advantage = edge_case(128, torch.float64, 1)
    batch = sampled_batch(actor, log_ratio, advantage)
    old_logits = batch["logits"] + 0.3 * torch.randn_like(batch["logits"])
    batch["logits"] = old_logits
    seen = {}

    def spy(*args, **kwargs):
        seen.update(original(*args, **kwargs))
        return seen

    original = loss_module.sample_context
    monkeypatch.setattr(loss_module, "sample_context", spy)
    with torch.no_grad():
        KLipPPOLoss(actor, critic, shape="tr_ppo").double()(batch.clone())
        current = actor(batch.select("observation").clone())["logits"]
    # The loss hands over the current distribution's (normalised) logits: equal up to rounding.
    expected = kl_divergence(TorchCategorical(logits=old_logits), TorchCategorical(logits=current))
    assert seen["kl"].shape == (128, 1) and (expected > 0).all()
    torch.testing.assert_close(seen["kl"].squeeze(-1), expected, rtol=1e-9, atol=1e-14)


def run(tmp_path: Path, name: str, **options) -> Path:
    config = TrainConfig(**TINY, steps=2 * 256, **options)
    result = train(config, tmp_path / name, progress=False)
    return result.out


@pytest.mark.parametrize("options", [dict(loss="clip"), dict(shape="step"), dict(shape="sigmoid"),
                                     dict(loss="kl_fixed"), dict(loss="kl_adaptive"), dict(shape="tr_ppo"),
                                     dict(shape="trgppo")],
                         ids=lambda options: "-".join(map(str, options.values())))
def test_every_loss_trains_on_cartpole(tmp_path, options):
    out = run(tmp_path, "run", **options)
    state = torch.load(out / "parameters.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(value).all() for value in state.values())
    assert "actor.module.0.logits.4.weight" in state
    assert (out / "metrics.csv").read_text().count("\n") == 3  # header and two iterations


def test_step_shape_and_clip_loss_end_with_equal_parameters(tmp_path):
    step = torch.load(run(tmp_path, "step", shape="step") / "parameters.pt", weights_only=True)["state_dict"]
    clip = torch.load(run(tmp_path, "clip", loss="clip") / "parameters.pt", weights_only=True)["state_dict"]
    assert step.keys() == clip.keys()
    for key, value in clip.items():
        assert torch.equal(step[key], value), key


@pytest.mark.parametrize("options", [dict(shape="sigmoid"), dict(loss="kl_adaptive")],
                         ids=["sigmoid", "kl_adaptive"])
def test_every_cartpole_agent_is_bitwise_its_own_single_run(tmp_path, options):
    spec = PopulationSpec(TrainConfig(**TINY, steps=2 * 256, **options), [0, 3, 5], {})
    results = train_population(spec, tmp_path / "population", progress=False)
    assert len(results) == 3
    for result in results:
        assert result.config is not None
        single = train(result.config, tmp_path / f"single-{result.name}", progress=False)
        assert_same_run(result.out, single.out)


def test_a_discrete_task_normalises_as_the_papers_shared_configuration_says():
    env = make_env("CartPole-v1", seed=0)
    assert find_wrapper(env, ObservationNormalizer) is not None
    assert find_wrapper(env, ReturnScaler) is not None
    rollout = env.rollout(5)
    assert not (rollout["next", "reward"] == 1).all()  # CartPole's reward of 1, scaled


def refusal(capsys, arguments: list[str]) -> str:
    code = main(["train", *arguments, "--steps", "256", "--rollout-steps", "256", "--no-progress"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_a_continuous_only_shape_is_refused_on_cartpole(tmp_path, capsys):
    line = refusal(capsys, ["--task", "CartPole-v1", "--shape", "trgppo_gaussian",
                            "--out", str(tmp_path / "r")])
    assert line == ("klip: error: shape 'trgppo_gaussian' is defined for continuous actions only; "
                    "CartPole-v1 has discrete actions")
    assert not (tmp_path / "r").exists()


def test_lunar_lander_without_box2d_is_refused_naming_the_extra(tmp_path, capsys, monkeypatch):
    # As if the box2d extra were not installed: its module cannot be found.
    monkeypatch.setitem(names.TASK_EXTRAS, "LunarLander-v3", ("box2d", "klip_no_such_box2d_module"))
    line = refusal(capsys, ["--task", "LunarLander-v3", "--out", str(tmp_path / "r")])
    assert line == ("klip: error: task LunarLander-v3 needs gymnasium's box2d extra, which is not "
                    "installed: pip install 'klip[box2d]'")
    assert not (tmp_path / "r").exists()


def test_a_discrete_task_is_refused_on_envpool(tmp_path, capsys):
    line = refusal(capsys, ["--task", "CartPole-v1", "--env-backend", "envpool",
                            "--out", str(tmp_path / "r")])
    assert line == ("klip: error: env_backend envpool runs continuous tasks only; "
                    "CartPole-v1 has discrete actions")
