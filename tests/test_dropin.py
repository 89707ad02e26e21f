"""`KLipPPOLoss` as an honest drop-in for TorchRL's `ClipPPOLoss`, with an actor built the
TorchRL way (its PPO tutorial's: MLP -> NormalParamExtractor -> ProbabilisticActor with a
TanhNormal), not klip's networks.

- `clip_epsilon` (a float, or an asymmetric pair) sets the band exactly as `ClipPPOLoss` does:
  gradients bitwise equal; or it is refused in one line.
- Every keyword `ClipPPOLoss` takes is known; any other raises TypeError (PPOLoss swallows it).
- `clip_epsilon` annealed in place as TorchRL's `sota-implementations/ppo` does it.
- `clip_fraction`, `ESS`, `max_ratio`, `mean_ratio` equal ClipPPOLoss's; `loss_objective` differs.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import OBS_DIM, edge_case, gradients, make_batch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss, PPOLoss

from klip.algos import KLipPPOLoss
from klip.algos.loss import CLIP_PPO_KEYWORDS
from klip.shapes import make_shape

ACT_DIM = 2
PAPER = dict(entropy_coeff=0.0, critic_coeff=0.25, loss_critic_type="l2", normalize_advantage=True,
             clip_value=0.2)


def torchrl_actor_critic(seed: int = 0, dtype: torch.dtype = torch.float32):
    """The actor and critic as TorchRL's PPO tutorial builds them."""
    torch.manual_seed(seed)
    actor_net = nn.Sequential(nn.Linear(OBS_DIM, 32), nn.Tanh(), nn.Linear(32, 2 * ACT_DIM),
                              NormalParamExtractor())
    policy = TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"])
    actor = ProbabilisticActor(policy, in_keys=["loc", "scale"], distribution_class=TanhNormal,
                               distribution_kwargs={"low": -1.0, "high": 1.0}, return_log_prob=True)
    critic = ValueOperator(nn.Sequential(nn.Linear(OBS_DIM, 32), nn.Tanh(), nn.Linear(32, 1)),
                           in_keys=["observation"])
    return actor.to(dtype), critic.to(dtype)


def batch_for(actor, eps: float, dtype: torch.dtype, seed: int, size: int = 256):
    """Log-ratios on and one ulp either side of this band's edges, both signs of A."""
    log_ratio, advantage = edge_case(size, dtype, seed, eps=eps)
    return make_batch(actor, log_ratio, advantage, seed)


def compare(reference, klip, batch, actor, critic):
    parameters = list(actor.parameters()) + list(critic.parameters())
    expected, expected_out = gradients(reference, batch, parameters)
    actual, actual_out = gradients(klip, batch, parameters)
    return expected, actual, expected_out, actual_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip_epsilon", [0.1, 0.3, (0.2, 0.28), (0.1, 0.3)])
def test_clip_epsilon_sets_the_band_as_clip_ppo_loss_does(clip_epsilon, dtype):
    edge = clip_epsilon if isinstance(clip_epsilon, float) else clip_epsilon[1]
    for seed in range(3):
        actor, critic = torchrl_actor_critic(seed, dtype)
        batch = batch_for(actor, edge, dtype, seed)
        reference = ClipPPOLoss(actor, critic, clip_epsilon=clip_epsilon, **PAPER).to(dtype)
        klip = KLipPPOLoss(actor, critic, clip_epsilon=clip_epsilon, **PAPER).to(dtype)
        expected, actual, expected_out, actual_out = compare(reference, klip, batch, actor, critic)
        for reference_grad, klip_grad in zip(expected, actual, strict=True):
            assert torch.equal(reference_grad, klip_grad), (reference_grad - klip_grad).abs().max()
        # The statistics TorchRL's scripts log are ClipPPOLoss's own ...
        for key in ("clip_fraction", "ESS", "max_ratio", "mean_ratio", "kl_approx", "loss_critic"):
            assert torch.equal(expected_out[key], actual_out[key]), key
        assert 0 < float(actual_out["clip_fraction"]) < 1
        # ... while the policy loss value is not (the gradients are).
        assert not torch.equal(expected_out["loss_objective"], actual_out["loss_objective"])


def test_clip_epsilon_picks_the_shape_and_names_the_buffers_as_torchrl():
    actor, critic = torchrl_actor_critic()
    symmetric = KLipPPOLoss(actor, critic, clip_epsilon=0.1)
    assert symmetric.shape.display_name() == "step" and symmetric.shape.eps == 0.1
    assert torch.equal(symmetric.clip_epsilon, ClipPPOLoss(actor, critic, clip_epsilon=0.1).clip_epsilon)
    pair = KLipPPOLoss(actor, critic, clip_epsilon=(0.2, 0.28))
    assert pair.shape.display_name() == "clip_higher"
    assert (pair.shape.eps_low, pair.shape.eps_high) == (0.2, 0.28)
    reference = ClipPPOLoss(actor, critic, clip_epsilon=(0.2, 0.28))
    assert torch.equal(pair.clip_epsilon_low, reference.clip_epsilon_low)
    assert torch.equal(pair.clip_epsilon_high, reference.clip_epsilon_high)
    assert KLipPPOLoss(actor, critic, shape="sigmoid", clip_epsilon=0.1).shape.eps == 0.1
    truncate = KLipPPOLoss(actor, critic, shape="truncate", clip_epsilon=0.3).shape
    assert (truncate.eps_low, truncate.eps_high) == (0.3, 0.3)
    # A shape instance whose band agrees is kept as it is.
    shape = make_shape("step", eps=0.1)
    assert KLipPPOLoss(actor, critic, shape=shape, clip_epsilon=0.1).shape is shape
    # Without clip_epsilon the shape's own band is the buffer.
    assert float(KLipPPOLoss(actor, critic, shape=make_shape("rollback", eps=0.3)).clip_epsilon) == \
        pytest.approx(0.3)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(shape="none", clip_epsilon=0.1), "shape 'none' has no band"),
    (dict(shape="dpo", clip_epsilon=0.1), "shape 'dpo' has no band"),
    (dict(shape="step", clip_epsilon=(0.2, 0.28)), "use shape='clip_higher'"),
    (dict(shape="sigmoid", clip_epsilon=(0.2, 0.2)), "asymmetric"),
    (dict(clip_epsilon=1.5), "parameter 'eps' = 1.5 is outside its allowed range"),
    (dict(clip_epsilon=0.0), "parameter 'eps' = 0 is outside its allowed range"),
    (dict(clip_epsilon=(0.2, 0.1, 0.3)), "length 2"),
    (dict(shape=make_shape("step", eps=0.2), clip_epsilon=0.1), "disagrees with the shape's eps=0.2"),
    (dict(clip_epsilon=(0.2, 0.28), clip_value=True), "asymmetric band"),
])
def test_clip_epsilon_the_shape_cannot_take_is_refused_in_one_line(kwargs, message):
    actor, critic = torchrl_actor_critic()
    with pytest.raises(ValueError, match=message) as error:
        KLipPPOLoss(actor, critic, **kwargs)
    assert "\n" not in str(error.value)


def test_a_misspelt_keyword_raises_where_torchrl_swallows_it():
    actor, critic = torchrl_actor_critic()
    ClipPPOLoss(actor, critic, clip_epsilonn=0.1)  # TorchRL accepts it and trains with 0.2
    with pytest.raises(TypeError, match="'clip_epsilonn'"):
        KLipPPOLoss(actor, critic, clip_epsilonn=0.1)
    with pytest.raises(TypeError, match="'entropy_coef'"):
        KLipPPOLoss(actor, critic, entropy_coef=0.01)


def test_every_keyword_of_clip_ppo_loss_is_known():
    for function in (ClipPPOLoss.__init__, PPOLoss.__init__):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.kind is parameter.KEYWORD_ONLY:
                assert name in CLIP_PPO_KEYWORDS, name


# Keywords of ClipPPOLoss beyond the paper's configuration, each honoured: bitwise gradients.
KEYWORD_CASES = {
    "reduction-sum": dict(reduction="sum"),
    "separate-losses": dict(separate_losses=True),
    "smooth-l1-critic": dict(loss_critic_type="smooth_l1", critic_coeff=0.5),
    "entropy": dict(entropy_coeff=0.01, samples_mc_entropy=4),
    "no-entropy": dict(entropy_bonus=False),
    "clip-value-true": dict(clip_value=True, clip_epsilon=0.1),
    "not-functional": dict(functional=False),
    "importance-cap": dict(max_importance_ratio=2.0),
    "no-explained-variance": dict(log_explained_variance=False),
    "device": dict(device="cpu", clip_epsilon=0.15),
    "critic-coeff": dict(critic_coeff=2.0, loss_critic_type="l1"),
}


@pytest.mark.parametrize("case", list(KEYWORD_CASES))
def test_clip_ppo_keywords_are_honoured(case):
    kwargs = dict(dict(normalize_advantage=True), **KEYWORD_CASES[case])
    actor, critic = torchrl_actor_critic(3)
    batch = batch_for(actor, kwargs.get("clip_epsilon", 0.2), torch.float32, 3)
    torch.manual_seed(0)
    reference = ClipPPOLoss(actor, critic, **kwargs)
    torch.manual_seed(0)
    klip = KLipPPOLoss(actor, critic, **kwargs)
    torch.manual_seed(0)  # Monte-Carlo entropy samples draw from the global generator
    parameters = list(actor.parameters()) + list(critic.parameters())
    expected, expected_out = gradients(reference, batch, parameters)
    torch.manual_seed(0)
    actual, actual_out = gradients(klip, batch, parameters)
    for reference_grad, klip_grad in zip(expected, actual, strict=True):
        assert torch.equal(reference_grad, klip_grad), (reference_grad - klip_grad).abs().max()
    shared = set(expected_out.keys()) & set(actual_out.keys()) - {"loss_objective"}
    assert {"ESS", "max_ratio", "mean_ratio", "clip_fraction"} <= shared
    for key in shared:
        assert torch.equal(expected_out[key], actual_out[key]), key


def test_annealed_clip_epsilon_follows_clip_ppo_loss_bitwise():
    """`loss_module.clip_epsilon.copy_(clip_epsilon * alpha)` before each minibatch, as
    TorchRL's sota-implementations/ppo/ppo_mujoco.py anneals it."""
    actor, critic = torchrl_actor_critic(5)
    klip_actor, klip_critic = torchrl_actor_critic(5)
    reference = ClipPPOLoss(actor, critic, clip_epsilon=0.2, **PAPER)
    klip = KLipPPOLoss(klip_actor, klip_critic, clip_epsilon=0.2, **PAPER)
    optimiser = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=3e-3)
    klip_optimiser = torch.optim.Adam([*klip_actor.parameters(), *klip_critic.parameters()], lr=3e-3)
    batch = batch_for(actor, 0.2, torch.float32, 5, size=512)
    updates = 12
    for update in range(updates):
        alpha = 1 - update / updates
        reference.clip_epsilon.copy_(0.2 * alpha)
        klip.clip_epsilon.copy_(0.2 * alpha)
        for loss, opt, data in ((reference, optimiser, batch), (klip, klip_optimiser, batch)):
            out = loss(data.clone())
            opt.zero_grad()
            sum(value for key, value in out.items() if key.startswith("loss_")).backward()
            opt.step()
        assert klip.shape.eps == pytest.approx(0.2 * alpha)
    for expected, actual in zip([*actor.parameters(), *critic.parameters()],
                                [*klip_actor.parameters(), *klip_critic.parameters()], strict=True):
        assert torch.equal(expected, actual)
    assert not torch.equal(next(actor.parameters()), next(torchrl_actor_critic(5)[0].parameters()))
    with pytest.raises(TypeError):  # a float is no buffer: the same refusal as ClipPPOLoss's
        klip.clip_epsilon = 0.1
    pair = KLipPPOLoss(klip_actor, klip_critic, clip_epsilon=(0.2, 0.28))
    with pytest.raises(AttributeError, match="schedule 'clip_epsilon_low' / 'clip_epsilon_high'"):
        pair.clip_epsilon = 0.1
    with pytest.raises(AttributeError, match="has no band"):
        KLipPPOLoss(klip_actor, klip_critic, shape="none").clip_epsilon = 0.1


def test_annealing_to_a_value_the_shape_refuses_fails_naming_it():
    actor, critic = torchrl_actor_critic()
    klip = KLipPPOLoss(actor, critic, clip_epsilon=0.2, **PAPER)
    klip.clip_epsilon.copy_(0.0)
    with pytest.raises(ValueError, match="parameter 'eps' = 0 is outside"):
        klip(batch_for(actor, 0.2, torch.float32, 0))


def test_clip_value_true_clips_the_value_at_clip_epsilon_as_clip_ppo_loss_does():
    actor, critic = torchrl_actor_critic()
    for kwargs in (dict(clip_epsilon=0.1), dict(shape="truncate", clip_epsilon=0.1),
                   dict(shape=make_shape("sigmoid", eps=0.1))):
        loss = KLipPPOLoss(actor, critic, clip_value=True, **kwargs)
        assert float(loss.clip_value) == pytest.approx(0.1), kwargs
    with pytest.raises(ValueError, match="asymmetric band"):
        KLipPPOLoss(actor, critic, shape="clip_higher", clip_value=True)


def test_annealing_keeps_a_learned_shapes_state():
    actor, critic = torchrl_actor_critic()
    shape = make_shape("learned")
    shape.set_vector(torch.linspace(0, 1, shape.vector_size))
    klip = KLipPPOLoss(actor, critic, shape=shape, **PAPER)
    klip.clip_epsilon.copy_(0.15)
    klip(batch_for(actor, 0.2, torch.float32, 0))
    assert klip.shape is not shape and klip.shape.eps == pytest.approx(0.15)
    assert torch.equal(klip.shape.get_vector(), shape.get_vector())


def test_docstring_says_values_differ_and_gradients_are_equal():
    doc = " ".join((KLipPPOLoss.__doc__ or "").split())
    assert "its **gradients** equal `ClipPPOLoss`'s bit for bit" in doc
    assert "its `loss_objective` **values** differ" in doc


def test_annealing_keeps_per_update_and_per_sample_context():
    """Context that is not state (set per epoch or per minibatch) survives the rebuilt shape.
    Runs where `klip.shapes.base` declares context kinds (the engine's per-sample context)."""
    from klip.shapes.base import CONTEXT_VARIABLES

    if getattr(CONTEXT_VARIABLES["progress"], "kind", None) is None:
        pytest.skip("this klip.shapes.base has per-iteration context only")
    from klip.shapes import CoefficientShape, Param

    class EpochStep(CoefficientShape):
        params = {"eps": Param(0.2, 0.0, 1.0, low_inclusive=False, high_inclusive=False)}  # noqa: RUF012
        context = ("epoch_progress", "kl")

        def gate(self, ratio, advantage):
            return torch.zeros_like(ratio)

    actor, critic = torchrl_actor_critic()
    loss = KLipPPOLoss(actor, critic, shape=EpochStep(), **PAPER)
    kl = torch.rand(8, 1)
    loss.shape.set_context(epoch_progress=0.5, kl=kl)
    loss.clip_epsilon.copy_(0.1)
    loss._follow_band()
    assert loss.shape.eps == pytest.approx(0.1)
    assert float(loss.shape.epoch_progress) == 0.5
    assert torch.equal(loss.shape._sample_context["kl"], kl)


def test_torchrls_actor_and_critic_keyword_aliases():
    actor, critic = torchrl_actor_critic(4)
    batch = batch_for(actor, 0.1, torch.float32, 4)
    reference = ClipPPOLoss(actor=actor, critic=critic, clip_epsilon=0.1, **PAPER)
    klip = KLipPPOLoss(actor=actor, critic=critic, clip_epsilon=0.1, **PAPER)
    expected, actual, _, _ = compare(reference, klip, batch, actor, critic)
    assert all(torch.equal(a, b) for a, b in zip(expected, actual, strict=True))
