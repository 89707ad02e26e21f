"""ScalarKLPPOLoss, the PPO-KL baseline: its objective and the adaptive beta of the PPO paper."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_actor_critic, make_sampled_batch, random_case

from klip import compat
from klip.algos.loss import ScalarKLPPOLoss


def published_rule(beta: float, kl: float, target: float) -> float:
    """Schulman et al. (2017), section 4: halve beta if d < d_targ / 1.5, double it if d > d_targ * 1.5."""
    if kl < target / 1.5:
        return beta / 2
    if kl > target * 1.5:
        return beta * 2
    return beta


KLS = [0.05, 0.001, 0.02, 0.0301, 0.0299, 0.0134, 0.0133, 0.0132, 0.5, 0.5, 0.0, 0.02]


@pytest.mark.parametrize("measure", ["final", "update_mean"])
@pytest.mark.parametrize("target", [0.02, 0.01])
def test_adaptive_beta_follows_the_published_rule(target, measure):
    loss = ScalarKLPPOLoss(*make_actor_critic(), beta=0.7, adaptive=True, kl_target=target,
                           kl_measure=measure)
    beta = 0.7
    changed = 0
    other = {"final": "kl", "update_mean": "kl_final"}[measure]
    key = {"final": "kl_final", "update_mean": "kl"}[measure]
    # On the thresholds themselves the rule keeps beta (strict inequalities).
    for kl in [k * target / 0.02 for k in KLS] + [target * 1.5, target / 1.5]:
        # The other statistic is far off the target: only the chosen one may move beta.
        loss.update_after_rollout({key: kl, other: 100 * target, "loss_objective": 1.0})
        expected = published_rule(beta, kl, target)
        changed += expected != beta
        beta = expected
        assert loss.beta.item() == pytest.approx(beta, rel=1e-6)
    assert changed >= 5  # doubled and halved several times: the sequence exercises both branches


def test_fixed_beta_never_moves():
    loss = ScalarKLPPOLoss(*make_actor_critic(), beta=0.7, adaptive=False)
    for kl in KLS:
        loss.update_after_rollout({"kl": kl})
        assert loss.beta.item() == pytest.approx(0.7)


@pytest.mark.parametrize("beta,target", [(0.0, 0.02), (-1.0, 0.02), (1.0, 0.0), (1.0, -0.1)])
def test_beta_and_target_must_be_positive(beta, target):
    with pytest.raises(ValueError, match="must be > 0"):
        ScalarKLPPOLoss(*make_actor_critic(), beta=beta, kl_target=target)


def test_only_adaptive_beta_on_the_final_kl_asks_for_the_rollout_kl():
    actor, critic = make_actor_critic()
    assert ScalarKLPPOLoss(actor, critic, adaptive=True).needs_rollout_kl  # PPO's rule is the default
    assert not ScalarKLPPOLoss(actor, critic, adaptive=True, kl_measure="update_mean").needs_rollout_kl
    assert not ScalarKLPPOLoss(actor, critic, adaptive=False).needs_rollout_kl
    with pytest.raises(ValueError, match="kl_measure must be"):
        ScalarKLPPOLoss(actor, critic, kl_measure="last")


def current_policy(actor, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The current actor's (loc, scale) on the batch's observations."""
    with torch.no_grad():
        current = batch.select("observation").clone()
        actor(current)
    return current["loc"], current["scale"]


def test_objective_is_ratio_times_advantage_minus_beta_times_gaussian_kl():
    actor, critic = make_actor_critic(torch.float64, 0, log_std=-1.2)
    log_ratio, advantage = random_case(64, torch.float64, 0)
    batch, _ = make_sampled_batch(actor, log_ratio, advantage, 0)
    # The rollout policy: a shifted mean and a wider scale than the current one.
    old_loc = batch["loc"] + 0.1 * torch.randn(batch["loc"].shape, dtype=torch.float64,
                                               generator=torch.Generator().manual_seed(1))
    old_scale = batch["scale"] * 1.3
    batch["loc"], batch["scale"] = old_loc, old_scale
    loss = ScalarKLPPOLoss(actor, critic, beta=0.25, entropy_bonus=False, normalize_advantage=False,
                           critic_coeff=None).double()
    out = loss(batch.clone())
    new_loc, new_scale = current_policy(actor, batch)
    # KL(old || new) of diagonal Gaussians, by hand.
    kl = (torch.log(new_scale / old_scale)
          + (old_scale**2 + (old_loc - new_loc) ** 2) / (2 * new_scale**2) - 0.5).sum(-1)
    w = torch.exp(log_ratio)
    expected = -(w * advantage - 0.25 * kl).mean()
    assert out["loss_objective"].item() == pytest.approx(expected.item(), rel=1e-9)
    assert out["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-9)
    assert out["beta"].item() == 0.25  # exact in float32, the buffer's first dtype
    assert kl.mean() > 1e-3 and not math.isclose(expected.item(), -(w * advantage).mean().item())
    # PPO's d: the same KL over the whole batch, of the current policy, and the data untouched.
    assert loss.rollout_kl(batch).item() == pytest.approx(kl.mean().item(), rel=1e-9)
    assert torch.equal(batch["loc"], old_loc) and torch.equal(batch["scale"], old_scale)


def test_new_old_direction_penalises_the_reverse_kl_and_adapts_to_it():
    actor, critic, batch, log_ratio = scalar_kl_batch((64,))
    old_loc, old_scale, advantage = batch["loc"], batch["scale"], batch["advantage"]
    options = dict(beta=0.25, entropy_bonus=False, normalize_advantage=False, critic_coeff=None)
    reverse = ScalarKLPPOLoss(actor, critic, kl_direction="new_old", **options).double()
    out = reverse(batch.clone())
    new_loc, new_scale = current_policy(actor, batch)
    # KL(new || old) of diagonal Gaussians, by hand: the mean shift is measured in old scales.
    kl = (torch.log(old_scale / new_scale)
          + (new_scale**2 + (old_loc - new_loc) ** 2) / (2 * old_scale**2) - 0.5).sum(-1)
    expected = -(torch.exp(log_ratio) * advantage - 0.25 * kl.unsqueeze(-1)).mean()
    assert out["loss_objective"].item() == pytest.approx(expected.item(), rel=1e-9)
    assert out["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-9)
    assert reverse.rollout_kl(batch).item() == pytest.approx(kl.mean().item(), rel=1e-9)
    forward = ScalarKLPPOLoss(actor, critic, **options).double()(batch.clone())
    assert abs(forward["kl"].item() - kl.mean().item()) > 1e-3  # the two directions differ here
    with pytest.raises(ValueError, match="kl_direction must be"):
        ScalarKLPPOLoss(actor, critic, kl_direction="forward")


def test_old_new_kl_pays_a_moved_mean_with_a_wider_policy_and_new_old_does_not():
    """The property the two directions differ in: d KL / d log sigma_new once the mean moved."""
    old = torch.distributions.Normal(torch.tensor(0.0), torch.tensor(1.0))
    log_scale = torch.zeros((), requires_grad=True)  # the new scale starts at the old one

    def new() -> torch.distributions.Normal:
        return torch.distributions.Normal(torch.tensor(0.5), log_scale.exp())

    (old_new,) = torch.autograd.grad(torch.distributions.kl_divergence(old, new()), log_scale)
    (new_old,) = torch.autograd.grad(torch.distributions.kl_divergence(new(), old), log_scale)
    assert old_new.item() == pytest.approx(-0.25)  # -(mean shift / sigma)^2: widening lowers it
    assert new_old.item() == pytest.approx(0.0, abs=1e-7)


def test_defaults_and_options_reach_torchrls_ppo_loss():
    actor, critic = make_actor_critic()
    loss = ScalarKLPPOLoss(actor, critic)
    assert (loss.beta.item(), loss.adaptive, loss.kl_target, loss.kl_direction) == (
        1.0, False, 0.02, "old_new")
    assert compat.ppo_has_critic(loss) and loss.clip_value is None
    assert ScalarKLPPOLoss(actor, critic, clip_value=True).clip_value.item() == pytest.approx(0.2)
    assert ScalarKLPPOLoss(actor, critic, clip_value=0.1).clip_value.item() == pytest.approx(0.1)
    assert ScalarKLPPOLoss(actor, critic, entropy_coeff=0.123).entropy_coeff.item() == pytest.approx(0.123)
    assert "loss_critic" in ScalarKLPPOLoss(actor, critic).out_keys


def scalar_kl_batch(shape: tuple[int, ...]):
    """A batch of the given batch shape with a rollout policy (loc, scale) unlike the current one."""
    actor, critic = make_actor_critic(torch.float64, 0, log_std=-1.2)
    size = math.prod(shape)
    log_ratio, advantage = random_case(size, torch.float64, 0)
    batch, _ = make_sampled_batch(actor, log_ratio, advantage, 0)
    generator = torch.Generator().manual_seed(1)
    shift = torch.randn(batch["loc"].shape, dtype=torch.float64, generator=generator)
    batch["loc"] = batch["loc"] + 0.1 * shift
    batch["scale"] = batch["scale"] * 1.3
    return actor, critic, batch.reshape(*shape), log_ratio.reshape(*shape, 1)


def gaussian_kl(batch, actor):
    """KL(rollout policy || current policy) per sample, by hand, shape [..., 1]."""
    with torch.no_grad():
        current = batch.select("observation").clone()
        actor(current)
    old_loc, old_scale, new_loc, new_scale = batch["loc"], batch["scale"], current["loc"], current["scale"]
    kl = (torch.log(new_scale / old_scale)
          + (old_scale**2 + (old_loc - new_loc) ** 2) / (2 * new_scale**2) - 0.5).sum(-1)
    return kl.unsqueeze(-1), current


@pytest.mark.parametrize("shape", [(64,), (4, 16)])
def test_per_sample_objective_entropy_and_keys(shape):
    actor, critic, batch, log_ratio = scalar_kl_batch(shape)
    loss = ScalarKLPPOLoss(actor, critic, beta=0.25, entropy_bonus=True, entropy_coeff=0.5,
                           normalize_advantage=False, reduction="none").double()
    out = loss(batch.clone())
    kl, current = gaussian_kl(batch, actor)
    expected = -(log_ratio.exp() * batch["advantage"] - 0.25 * kl)
    torch.testing.assert_close(out["loss_objective"], expected.squeeze(-1), rtol=1e-9, atol=1e-12)
    assert out["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-9)
    assert out["kl_approx"].item() == pytest.approx(-log_ratio.mean().item(), rel=1e-6)
    entropy = (0.5 + 0.5 * math.log(2 * math.pi) + current["scale"].log()).sum(-1)
    torch.testing.assert_close(out["loss_entropy"], -0.5 * entropy, rtol=1e-12, atol=0)
    assert set(loss.out_keys) <= set(out.keys())
    assert loss.out_keys[:4] == ["loss_objective", "kl", "beta", "kl_approx"]


# TorchRL warns that the delayed actor's copy has no target updater: the test sets it by hand.
@pytest.mark.filterwarnings("ignore:No target network updater")
def test_delayed_actor_weights_the_surrogate_by_the_behaviour_ratio():
    """With delay_actor the proximal policy is a frozen copy; the surrogate still uses pi/pi_behaviour."""
    actor, critic, batch, log_ratio = scalar_kl_batch((64,))
    loss = ScalarKLPPOLoss(actor, critic, beta=0.25, delay_actor=True, entropy_bonus=False,
                           normalize_advantage=False, reduction="none").double()
    out = loss(batch.clone())
    kl, _ = gaussian_kl(batch, actor)
    expected = -(log_ratio.exp() * batch["advantage"] - 0.25 * kl)
    torch.testing.assert_close(out["loss_objective"], expected.squeeze(-1), rtol=1e-9, atol=1e-12)


def test_missing_rollout_distribution_is_a_clear_error():
    actor, critic, batch, _ = scalar_kl_batch((8,))
    with pytest.raises(KeyError) as error:
        ScalarKLPPOLoss(actor, critic).double()(batch.exclude("loc", "scale"))
    assert error.value.args[0] == ("ScalarKLPPOLoss needs the rollout policy's distribution parameters "
                                   "(e.g. 'loc' and 'scale') in the data")
