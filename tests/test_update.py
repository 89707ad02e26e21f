"""KLipTensorLoss (the trainer's fast path) against KLipPPOLoss (the TorchRL loss module): bit for bit."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    achieved_log_ratio,
    adversarial_case,
    band_edges,
    edge_case,
    make_actor_critic,
    make_batch,
    make_sampled_batch,
    random_case,
)
from torchrl.modules import PercentileValueNorm
from torchrl.objectives import ClipPPOLoss

from klip.algos import KLipPPOLoss
from klip.algos.loss import KLipTensorLoss, tensor_loss_unsupported
from klip.algos.update import ModuleLoss, make_minibatch_loss
from klip.shapes import available_shapes, get_shape_class

CONFIGS = {
    # What PPOModule builds for the paper's protocol.
    "paper": dict(entropy_bonus=False, critic_coeff=0.25, loss_critic_type="l2",
                  normalize_advantage=True, clip_value=0.2, functional=False,
                  log_explained_variance=False),
    "entropy-unnormalised-unclipped": dict(entropy_bonus=True, entropy_coeff=0.01, critic_coeff=0.5,
                                           loss_critic_type="l2", normalize_advantage=False,
                                           functional=False, log_explained_variance=False),
}
# Every registered shape, so a new built-in is covered without editing this file.
# Shapes for Gaussian policies (`trgppo`'s band is defined for discrete ones only).
SHAPES = [name for name in available_shapes() if "continuous" in get_shape_class(name).action_spaces]


def run_update(minibatch_loss, batch, parameters):
    for parameter in parameters:
        parameter.grad = None
    data = batch.clone()
    (minibatch,) = list(minibatch_loss.minibatches(data, data.shape[0]))
    total, metrics = minibatch_loss(minibatch)
    total.backward()
    return total.detach(), metrics, [parameter.grad.clone() for parameter in parameters]


def compare(shape: str, form: str, config: str, dtype: torch.dtype, case, seed: int, size: int = 64):
    actor, critic = make_actor_critic(dtype, seed)
    batch = make_batch(actor, *case(size, dtype, seed), seed)
    kwargs = dict(CONFIGS[config], shape=shape, form=form, diagnostics="deferred")
    module = KLipPPOLoss(actor, critic, **kwargs).to(dtype)
    tensor = KLipPPOLoss(actor, critic, **kwargs).to(dtype)
    for loss in (module, tensor):  # what the trainer sets before each epoch
        loss.set_context(epoch_progress=0.25)
    parameters = list(actor.parameters()) + list(critic.parameters())
    reference = ModuleLoss(module)
    expected = run_update(reference, batch, parameters)
    fast = KLipTensorLoss(tensor, actor, critic)
    actual = run_update(fast, batch, parameters)
    assert fast.metric_names == reference.metric_names
    return expected, actual, module.pop_diagnostics(), tensor.pop_diagnostics()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [random_case, adversarial_case])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("shape", SHAPES)
def test_tensor_loss_bitwise_equals_the_loss_module(shape, config, case, dtype):
    for seed in range(2):
        expected, actual, expected_diagnostics, actual_diagnostics = compare(
            shape, "effective", config, dtype, case, seed)
        (total, metrics, grads), (fast_total, fast_metrics, fast_grads) = expected, actual
        assert torch.equal(total, fast_total)
        assert torch.equal(metrics, fast_metrics), (metrics, fast_metrics)
        for grad, fast_grad in zip(grads, fast_grads, strict=True):
            assert torch.equal(grad, fast_grad), (grad - fast_grad).abs().max()
        assert expected_diagnostics == actual_diagnostics
        assert set(expected_diagnostics) >= {"fraction_kill", "gate_mean"}


@pytest.mark.parametrize("shape", ["step", "sigmoid"])
def test_tensor_loss_kl_form_bitwise(shape):
    expected, actual, _, _ = compare(shape, "kl", "paper", torch.float32, random_case, 0, size=256)
    for grad, fast_grad in zip(expected[2], actual[2], strict=True):
        assert torch.equal(grad, fast_grad)


def test_tensor_loss_reads_the_loss_modules_keys():
    actor, critic = make_actor_critic()
    batch = make_batch(actor, *random_case(64, torch.float32, 0))
    loss = KLipPPOLoss(actor, critic, diagnostics=False, **CONFIGS["paper"])
    loss.set_keys(advantage="my_advantage", value_target="my_target")
    tensor_loss = KLipTensorLoss(loss, actor, critic)
    renamed = batch.rename_key_("advantage", "my_advantage").rename_key_("value_target", "my_target")
    parameters = list(actor.parameters()) + list(critic.parameters())
    _, metrics, _ = run_update(tensor_loss, renamed, parameters)
    _, expected, _ = run_update(ModuleLoss(loss), renamed, parameters)
    assert torch.equal(metrics, expected)


def test_fallback_to_the_loss_module_with_a_reason():
    actor, critic = make_actor_critic()
    clip = ClipPPOLoss(actor, critic, functional=False)
    assert "ClipPPOLoss is not KLipPPOLoss" in tensor_loss_unsupported(clip, actor, critic)
    assert isinstance(make_minibatch_loss(clip, actor, critic), ModuleLoss)

    smooth = KLipPPOLoss(actor, critic, loss_critic_type="smooth_l1", functional=False)
    assert "a critic loss other than l2" in tensor_loss_unsupported(smooth, actor, critic)
    functional = KLipPPOLoss(actor, critic, log_explained_variance=False)  # functional: TorchRL's default
    assert "functional parameters" in tensor_loss_unsupported(functional, actor, critic)
    with pytest.raises(ValueError, match="cannot replace this loss module: the loss uses functional"):
        KLipTensorLoss(functional, actor, critic)

    paper = KLipPPOLoss(actor, critic, diagnostics="deferred", **CONFIGS["paper"])
    assert tensor_loss_unsupported(paper, actor, critic) is None
    assert isinstance(make_minibatch_loss(paper, actor, critic), KLipTensorLoss)
    reason = tensor_loss_unsupported(paper, actor, torch.nn.Linear(5, 1))
    assert "not a klip.algos.networks.ValueHead" in reason


@pytest.mark.slow
def test_compiled_tensor_loss_close_to_eager():
    """torch.compile fuses kernels: not bitwise, but the same numbers to float32 rounding."""
    actor, critic = make_actor_critic()
    batch = make_batch(actor, *random_case(64, torch.float32, 0))
    loss = KLipPPOLoss(actor, critic, diagnostics=False, **CONFIGS["paper"])
    parameters = list(actor.parameters()) + list(critic.parameters())
    total, metrics, grads = run_update(KLipTensorLoss(loss, actor, critic), batch, parameters)
    compiled = run_update(KLipTensorLoss(loss, actor, critic, compile=True), batch, parameters)
    torch.testing.assert_close(compiled[0], total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1], metrics, rtol=1e-5, atol=1e-6)
    for grad, compiled_grad in zip(grads, compiled[2], strict=True):
        torch.testing.assert_close(compiled_grad, grad, rtol=1e-4, atol=1e-6)


def per_sample_update(minibatch_loss, batch, parameters):
    """Observation gradient (one row per sample) and parameter gradients of one minibatch update."""
    for parameter in parameters:
        parameter.grad = None
    data = batch.clone()
    observation = data["observation"].detach().clone().requires_grad_()
    data["observation"] = observation
    (minibatch,) = list(minibatch_loss.minibatches(data, data.shape[0]))
    total, _ = minibatch_loss(minibatch)
    total.backward()
    return observation.grad.clone(), [parameter.grad.clone() for parameter in parameters]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_fast_step_loss_equals_clip_ppo_loss_per_sample_on_the_band_edges(config, dtype):
    """The trainer's minibatch loss for `step` against TorchRL's ClipPPOLoss, sample by sample."""
    actor, critic = make_actor_critic(dtype, 3, log_std=-1.2)
    log_ratio, advantage = edge_case(256, dtype, 3)
    batch, exact = make_sampled_batch(actor, log_ratio, advantage, 3)
    assert exact.all() and torch.equal(achieved_log_ratio(actor, batch), log_ratio)
    assert ((batch["action"] - batch["loc"]).abs() > 0).all()
    for edge in band_edges(0.2, dtype):
        assert (advantage[log_ratio == edge] > 0).any() and (advantage[log_ratio == edge] < 0).any()
    parameters = list(actor.parameters()) + list(critic.parameters())
    clip = ModuleLoss(ClipPPOLoss(actor, critic, clip_epsilon=0.2, **CONFIGS[config]).to(dtype))
    loss = KLipPPOLoss(actor, critic, shape="step", diagnostics=False, **CONFIGS[config]).to(dtype)
    fast = make_minibatch_loss(loss, actor, critic)
    assert isinstance(fast, KLipTensorLoss)
    expected_rows, expected = per_sample_update(clip, batch, parameters)
    actual_rows, actual = per_sample_update(fast, batch, parameters)
    for row in range(len(log_ratio)):
        assert torch.equal(expected_rows[row], actual_rows[row]), (row, log_ratio[row].item())
    for grad, fast_grad in zip(expected, actual, strict=True):
        assert torch.equal(grad, fast_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", ["step", "sigmoid"])
def test_near_constant_advantages_standardised_with_torchrls_std_floor(shape, dtype):
    """Advantages whose std is below the floor: the floor, not the std, scales them.

    TorchRL clamps the std at float32's resolution (1e-6); the fast loss must use the same
    floor or near-constant advantages come out up to 100x larger (a 1e-8 floor).
    """
    actor, critic = make_actor_critic(dtype, 4, log_std=-1.2)
    log_ratio, _ = random_case(128, dtype, 4)
    steps = torch.randint(-3, 4, (128,), generator=torch.Generator().manual_seed(4)).to(dtype)
    advantage = 1.0 + steps * torch.finfo(torch.float32).eps  # a few float32 ulps of 1
    floor = torch.finfo(torch.float32).resolution
    assert 10 * 1e-8 < advantage.std() < floor  # the floor decides, and a 1e-8 one would not
    batch, _ = make_sampled_batch(actor, log_ratio, advantage, 4)
    parameters = list(actor.parameters()) + list(critic.parameters())
    config = CONFIGS["paper"]
    assert config["normalize_advantage"]
    reference_module = (ClipPPOLoss(actor, critic, clip_epsilon=0.2, **config) if shape == "step"
                        else KLipPPOLoss(actor, critic, shape=shape, diagnostics=False, **config))
    reference = ModuleLoss(reference_module.to(dtype))
    loss = KLipPPOLoss(actor, critic, shape=shape, diagnostics=False, **config).to(dtype)
    fast = KLipTensorLoss(loss, actor, critic)
    expected_rows, expected = per_sample_update(reference, batch, parameters)
    actual_rows, actual = per_sample_update(fast, batch, parameters)
    assert torch.equal(expected_rows, actual_rows)
    for grad, fast_grad in zip(expected, actual, strict=True):
        assert torch.equal(grad, fast_grad)
    # By hand: the standardised advantages are (A - mean) / floor, of order 0.1, not 0 and not 10.
    standardised = (advantage - advantage.mean()) / floor
    assert 0.05 < standardised.abs().max() < 1.0


@pytest.mark.parametrize("size", [1, 2, 3])
def test_tiny_minibatches_standardise_like_torchrl(size):
    """TorchRL leaves a single advantage alone and standardises two or more."""
    actor, critic = make_actor_critic(torch.float64, 5, log_std=-1.2)
    log_ratio, advantage = random_case(size, torch.float64, 5)
    batch, _ = make_sampled_batch(actor, log_ratio, 3.0 + advantage, 5)
    parameters = list(actor.parameters()) + list(critic.parameters())
    config = CONFIGS["paper"]
    clip = ModuleLoss(ClipPPOLoss(actor, critic, clip_epsilon=0.2, **config).double())
    fast = KLipTensorLoss(KLipPPOLoss(actor, critic, diagnostics=False, **config).double(), actor, critic)
    expected_rows, expected = per_sample_update(clip, batch, parameters)
    actual_rows, actual = per_sample_update(fast, batch, parameters)
    assert torch.isfinite(actual_rows).all() and actual_rows.abs().sum() > 0
    assert torch.equal(expected_rows, actual_rows)
    assert all(torch.equal(a, b) for a, b in zip(expected, actual, strict=True))


@pytest.mark.parametrize("shape", ["sigmoid", "linear_ramp"])
def test_tensor_loss_kl_form_per_sample_and_metrics(shape):
    actor, critic = make_actor_critic(torch.float32, 6, log_std=-1.2)
    log_ratio, advantage = edge_case(128, torch.float32, 6)
    batch, _ = make_sampled_batch(actor, log_ratio, advantage, 6)
    kwargs = dict(CONFIGS["paper"], shape=shape, form="kl", diagnostics=False)
    parameters = list(actor.parameters()) + list(critic.parameters())
    module = ModuleLoss(KLipPPOLoss(actor, critic, **kwargs))
    fast = KLipTensorLoss(KLipPPOLoss(actor, critic, **kwargs), actor, critic)
    expected_rows, _ = per_sample_update(module, batch, parameters)
    actual_rows, _ = per_sample_update(fast, batch, parameters)
    assert torch.equal(expected_rows, actual_rows)
    (minibatch,) = list(fast.minibatches(batch, 128))
    _, fast_metrics = fast(minibatch)
    _, module_metrics = module(batch)
    assert torch.equal(fast_metrics, module_metrics)
    effective = KLipTensorLoss(KLipPPOLoss(actor, critic, **dict(kwargs, form="effective")), actor, critic)
    assert not torch.equal(effective(minibatch)[1][0], fast_metrics[0])  # the forms' objectives differ


def test_make_minibatch_loss_passes_the_module_and_the_compile_flag():
    actor, critic = make_actor_critic()
    klip = KLipPPOLoss(actor, critic, diagnostics=False, **CONFIGS["paper"])
    eager = make_minibatch_loss(klip, actor, critic)
    assert eager.loss_module is klip and eager._losses == eager.losses
    compiled = make_minibatch_loss(klip, actor, critic, compile=True)
    # torch.compile's wrapper of this very method (compiled on the first call)
    assert compiled._losses._torchdynamo_orig_callable == compiled.losses
    clip = ClipPPOLoss(actor, critic, functional=False)
    module = make_minibatch_loss(clip, actor, critic)
    assert isinstance(module, ModuleLoss) and module.loss_module is clip and module._forward is clip
    assert make_minibatch_loss(clip, actor, critic, compile=True)._forward is not clip


def test_every_reason_the_fast_loss_cannot_stand_in_is_named():
    actor, critic = make_actor_critic()
    base = dict(functional=False, log_explained_variance=False, diagnostics=False, loss_critic_type="l2")
    cases = [
        (dict(delay_actor=True, functional=True), "functional parameters, a delayed actor"),
        (dict(max_importance_ratio=5.0), "an importance-ratio cap"),
        (dict(normalize_advantage=True, normalize_advantage_exclude_dims=(-1,)),
         "advantage-normalisation excluded dims"),
        (dict(loss_critic_type="smooth_l1"), "a critic loss other than l2"),
        (dict(separate_losses=True), "separate losses"),
        (dict(reduction="sum"), "a reduction other than mean"),
        (dict(diagnostics=True), "per-call diagnostics"),
        (dict(log_explained_variance=True), "per-call explained variance"),
        (dict(functional=True, reduction="sum"), "functional parameters, a reduction other than mean"),
        (dict(advantage_norm=PercentileValueNorm()), "advantage scaling by return statistics"),
        (dict(entropy_coeff={"action": 0.01}), "per-head entropy coefficients"),
    ]
    for kwargs, reason in cases:
        loss = KLipPPOLoss(actor, critic, **{**base, **kwargs})
        assert tensor_loss_unsupported(loss, actor, critic) == f"the loss uses {reason}", kwargs
    no_critic = KLipPPOLoss(actor, None, critic_coeff=None, **base)
    assert tensor_loss_unsupported(no_critic, actor, critic) == "the loss uses no critic"
    plain = KLipPPOLoss(actor, critic, **base)
    assert tensor_loss_unsupported(plain, actor, torch.nn.Linear(5, 1)) == (
        "the critic is not a klip.algos.networks.ValueHead")
    assert tensor_loss_unsupported(plain, torch.nn.Linear(5, 3), critic) == (
        "this fast path needs an actor built by klip.algos.networks.make_actor")


def test_module_loss_compiles_the_module_itself():
    actor, critic = make_actor_critic()
    clip = ClipPPOLoss(actor, critic, functional=False)
    compiled = ModuleLoss(clip, compile=True)
    assert compiled._forward._orig_mod is clip  # torch.compile's wrapper of this very module
