"""Per-update and per-sample gate context, and the shapes that read it: TR-PPO, TR-PPO-RB, TRGPPO,
and the learned gate by increments (also conditioned on the inner-loop position).

"Against its objective", as in `test_shape_zoo.py`: each published objective is written
here from its paper (and its authors' code), differentiated by autograd in float64, and
its per-sample gradient `dJ/dw` compared with the shape's effective advantage `A*(1-g)`.
"""

from __future__ import annotations

import copy
import math

import optuna
import pytest
import scipy.optimize
import torch
from helpers import adversarial_case

from klip.shapes import available_shapes, get_shape_class, load_shape, make_shape, save_shape
from klip.shapes.base import CONTEXT_VARIABLES, ContextNotSetError, signed_distance_past_boundary
from klip.shapes.builtin import LearnedIncrementsEpochShape, LearnedIncrementsShape
from klip.shapes.published import gaussian_delta_for_eps, trgppo_band, trgppo_gaussian_band

NEEDS_CONTEXT = [name for name in available_shapes()
                 if any(CONTEXT_VARIABLES[key].kind != "iteration"
                        for key in get_shape_class(name).context)]


def random_inputs(size: int = 4096, seed: int = 0):
    """Ratios around 1 (log-normal), advantages of every scale with exact zeros, KLs straddling
    the deltas, rollout probabilities over (0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    ratio = (0.3 * torch.randn(size, generator=generator, dtype=torch.float64)).exp()
    scale = torch.randn(size, generator=generator, dtype=torch.float64).exp()
    advantage = torch.randn(size, generator=generator, dtype=torch.float64) * scale
    advantage[::17] = 0.0
    kl = 0.08 * torch.rand(size, generator=generator, dtype=torch.float64)
    probability = torch.rand(size, generator=generator, dtype=torch.float64).clamp_min(1e-4)
    probability[::13] = 1.0
    return ratio, advantage, kl, probability.log()


def effective_advantage(objective, w, **inputs):
    """`dJ/dw` per sample, by autograd."""
    w = w.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(objective(w, **inputs).sum(), w)
    return gradient


# -- the contract ------------------------------------------------------------------------------


def test_context_variables_declare_kind_range_and_when():
    kinds = {name: spec.kind for name, spec in CONTEXT_VARIABLES.items()}
    assert kinds == {"progress": "iteration", "epoch_progress": "update", "kl": "sample",
                     "old_log_prob": "sample", "old_action_z": "sample"}
    assert CONTEXT_VARIABLES["epoch_progress"].describe_range() == "[0, 1)"
    assert CONTEXT_VARIABLES["kl"].contains(0.0) and CONTEXT_VARIABLES["kl"].contains(math.inf)
    assert not CONTEXT_VARIABLES["old_log_prob"].contains(-math.inf)
    assert all(spec.when and spec.help for spec in CONTEXT_VARIABLES.values())
    assert set(NEEDS_CONTEXT) == {"learned_increments_epoch", "tr_ppo", "tr_ppo_rb", "trgppo",
                                  "trgppo_gaussian"}


@pytest.mark.parametrize("name", NEEDS_CONTEXT)
def test_a_shape_used_without_its_context_fails_in_one_line(name):
    shape = make_shape(name)
    ratio, advantage = torch.tensor([1.5, 0.5]), torch.tensor([1.0, -1.0])
    for gate in (lambda: shape.gate(ratio, advantage),
                 lambda: shape.gate_from_log_ratio(ratio.log(), ratio, advantage)):
        with pytest.raises(ContextNotSetError) as error:
            gate()
        message = str(error.value)
        assert "\n" not in message and "is not set: call set_context(" in message
        assert any(f"context {key!r}" in message for key in shape.context)


def test_per_sample_context_is_forgotten_after_using_context_even_on_error():
    shape = make_shape("tr_ppo")
    ratio, advantage = torch.tensor([1.5, 1.5]), torch.tensor([1.0, 1.0])
    with shape.using_context(kl=torch.tensor([0.0, 1.0]), progress=0.5):
        assert shape.gate(ratio, advantage).tolist() == [0.0, 1.0]
    with pytest.raises(ContextNotSetError):
        shape.gate(ratio, advantage)
    with pytest.raises(KeyError), shape.using_context(kl=torch.tensor([1.0, 1.0])):
        raise KeyError("a failing minibatch")
    with pytest.raises(ContextNotSetError):
        shape.gate(ratio, advantage)
    shape.set_context(kl=torch.tensor([1.0, 1.0]))  # set_context keeps it until cleared
    assert shape.gate(ratio, advantage).tolist() == [1.0, 1.0]
    shape.clear_context()
    with pytest.raises(ContextNotSetError):
        shape.gate(ratio, advantage)


def test_a_stale_per_sample_value_of_another_minibatch_size_is_refused():
    shape = make_shape("tr_ppo")
    shape.set_context(kl=torch.zeros(64))
    with pytest.raises(ContextNotSetError, match=r"has shape \[64\], which does not broadcast to the "
                                                 r"ratios' \[32\] \(a stale or mis-sliced minibatch\?\)$"):
        shape.gate(torch.ones(32), torch.ones(32))
    shape.set_context(kl=torch.zeros(32, 1))  # [B, 1] into [B] ratios would broadcast to [B, B]
    with pytest.raises(ContextNotSetError, match="does not broadcast"):
        shape.gate(torch.ones(32), torch.ones(32))
    shape.set_context(kl=torch.tensor(1.0))  # one value for every sample broadcasts
    assert shape.gate(torch.full((3,), 2.0), torch.ones(3)).tolist() == [1.0, 1.0, 1.0]
    shape.set_context(kl=torch.zeros(2, 5))  # a population's [agents, B]
    assert shape.gate(torch.full((2, 5), 2.0), torch.ones(2, 5)).shape == (2, 5)


@pytest.mark.parametrize(
    "values,message",
    [
        ({"kl": torch.tensor([0.1, math.nan])}, r"context 'kl' has 1 value\(s\) outside its allowed range "
                                                r"\[-1e-06, inf\) \(first: nan\)$"),
        ({"kl": torch.tensor([-0.5, 0.1])}, r"'kl' has 1 value\(s\) outside .* \(first: -0.5\)$"),
        ({"old_log_prob": torch.tensor([-math.inf])}, r"'old_log_prob' has 1 value\(s\) outside "
                                                      r"its allowed range \(-inf, inf\)"),
        ({"kl": "high"}, r"context 'kl' must be a tensor of per-sample values, got 'high'$"),
        ({"kl": torch.tensor([1, 2])}, r"context 'kl' must be a floating-point tensor, got torch.int64$"),
        ({"epoch_progress": 1.0}, r"context 'epoch_progress' = 1 is outside its allowed range \[0, 1\)$"),
        ({"epoch_progress": torch.tensor([0.1, 0.2])}, "must be one number"),
    ],
)
def test_context_values_are_checked_in_one_line(values, message):
    shape = make_shape("learned_increments_epoch") if "epoch_progress" in values else make_shape(
        "trgppo" if "old_log_prob" in values else "tr_ppo_rb")
    with pytest.raises(ValueError, match=message):
        shape.set_context(**values)


def test_unchecked_per_sample_values_and_tiny_negative_kls():
    shape = make_shape("tr_ppo")
    shape.set_context(kl=torch.tensor([-1e-7, 0.5]))  # float32 rounding of an analytic KL
    shape.set_context(kl=torch.tensor([-0.5, 0.5]), check=False)  # no device sync, no check
    assert shape.gate(torch.tensor([2.0, 2.0]), torch.ones(2)).tolist() == [0.0, 1.0]


def test_context_is_not_saved_and_each_copy_has_its_own():
    shape = make_shape("learned_increments_epoch", late_pos_jump=2.0)
    shape.set_context(epoch_progress=0.5)
    assert list(shape.state_dict()) == [] and shape.to_dict()["state"] == {}
    restored = shape_from_json(shape)
    with pytest.raises(ContextNotSetError):  # a restored shape is told its epoch again
        restored.gate(torch.ones(1), torch.ones(1))
    twin = copy.deepcopy(shape)
    twin.set_context(epoch_progress=0.0)
    ratio, advantage = torch.tensor([1.3]), torch.tensor([1.0])
    assert shape.gate(ratio, advantage).item() == 1.5 and twin.gate(ratio, advantage).item() == 1.0
    progress = make_shape("annealed_clip")
    progress.set_context(progress=0.5, epoch_progress=0.5, kl=torch.zeros(3))  # others ignored
    progress.clear_context()
    assert progress.progress.item() == 0.5  # per-iteration context is persistent state


def test_a_shape_pickled_before_context_existed_still_takes_progress():
    import pickle

    shape = make_shape("annealed_clip")
    state = shape.__getstate__()
    del state["_context_set"], state["_sample_context"]  # as a pickle from before this change
    old = type(shape).__new__(type(shape))
    old.__setstate__(state)
    old.set_context(progress=0.5)
    assert old.progress.item() == 0.5
    restored = pickle.loads(pickle.dumps(make_shape("tr_ppo")))
    with pytest.raises(ContextNotSetError):
        restored.gate(torch.ones(1), torch.ones(1))


def shape_from_json(shape):
    from klip.shapes import shape_from_dict

    return shape_from_dict(shape.to_dict())


# -- TR-PPO and TR-PPO-RB (Wang, He, Tan 2019, arXiv 1903.07940) -------------------------------


def tr_ppo_objective(w, a, kl, delta):
    """TR-PPO: min(w A, F^TR A), F^TR = w_old = 1 where KL(pi_old || pi) >= delta, else w."""
    clipped = torch.where(kl >= delta, torch.ones_like(w), w)
    return torch.minimum(w * a, clipped * a)


def k3(w):
    """The per-sample estimate of KL(pi_old || pi) from an action drawn from pi_old."""
    return (w - 1) - torch.log(w)


def tr_ppo_rb_objective(w, a, kl, delta, alpha):
    """TR-PPO-RB (the authors' `trulyppo`): w A - alpha 1[KL >= delta and w A > A] KL, with the
    penalty's KL estimated per sample by k3 (the trigger keeps the per-state KL)."""
    triggered = (kl >= delta) & (w.detach() * a > a)
    return w * a - alpha * triggered.to(w.dtype) * k3(w)


@pytest.mark.parametrize("params", [{}, {"delta": 0.01}], ids=["published-defaults", "other-delta"])
def test_tr_ppo_gate_equals_the_autograd_gate_of_its_objective(params):
    shape = make_shape("tr_ppo", **params).double()
    ratio, advantage, kl, _ = random_inputs(seed=1)
    expected = effective_advantage(tr_ppo_objective, ratio, a=advantage, kl=kl, delta=shape.delta)
    with shape.using_context(kl=kl):
        for gate in (shape.gate(ratio, advantage), shape.gate_from_log_ratio(ratio.log(), ratio, advantage)):
            assert torch.equal(advantage * (1 - gate), expected)  # g is 0 or 1: exact
    killed = expected != advantage
    assert 200 < killed.sum() < len(ratio) - 200  # neither vacuous nor everything
    # The trigger is the KL, not the band: killed samples inside PPO's band, kept ones outside.
    outside = signed_distance_past_boundary(ratio, advantage, 0.2) > 0
    assert (killed & ~outside).any() and (~killed & outside & (advantage != 0)).any()


@pytest.mark.parametrize("params", [{}, {"delta": 0.01, "alpha": 0.3}],
                         ids=["published-defaults", "other-parameters"])
def test_tr_ppo_rb_gate_equals_the_autograd_gate_of_its_objective(params):
    shape = make_shape("tr_ppo_rb", **params).double()
    ratio, advantage, kl, _ = random_inputs(seed=2)
    expected = effective_advantage(tr_ppo_rb_objective, ratio, a=advantage, kl=kl, delta=shape.delta,
                                   alpha=shape.alpha)
    with shape.using_context(kl=kl):
        gate = shape.gate(ratio, advantage)
        assert torch.equal(shape.gate_from_log_ratio(ratio.log(), ratio, advantage), gate)
    actual = advantage * (1 - gate)
    # Both sides are A - alpha + alpha / w, rounded differently: within a few ulps of those terms.
    ulp = torch.finfo(torch.float64).eps
    terms = advantage.abs() + (advantage * gate).abs() + shape.alpha * (1 + 1 / ratio)
    assert ((actual - expected).abs() <= 4 * ulp * terms).all()
    triggered = gate != 0
    assert triggered.sum() > 200
    assert (gate[triggered] > 0).all() and (gate > 1).any()  # brakes everywhere, rolls back somewhere
    untouched = ~triggered
    assert torch.equal(actual[untouched], advantage[untouched])


def test_tr_ppo_rb_k3_gradient_averages_to_the_per_state_kl_gradient():
    """The docstring's claim: over actions drawn from pi_old, grad k3 averages to grad KL(pi_old || pi).

    A 1-D Gaussian, old N(0, 1), current N(mu, sigma): Monte Carlo mean of grad k3(w(a))
    against the closed form of grad KL, in (mu, log sigma).
    """
    generator = torch.Generator().manual_seed(0)
    actions = torch.randn(400_000, generator=generator, dtype=torch.float64)
    mu = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    log_sigma = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    new = torch.distributions.Normal(mu, log_sigma.exp())
    old = torch.distributions.Normal(0.0, 1.0)
    w = (new.log_prob(actions) - old.log_prob(actions)).exp()
    estimate = torch.autograd.grad(k3(w).mean(), (mu, log_sigma), retain_graph=True)
    exact = torch.autograd.grad(torch.distributions.kl_divergence(old, new), (mu, log_sigma))
    for mc, closed in zip(estimate, exact, strict=True):
        assert mc.item() == pytest.approx(closed.item(), rel=0.03)


def test_tr_ppo_defaults_are_the_authors_settings():
    assert make_shape("tr_ppo").hparams == {"delta": 0.035}
    assert make_shape("tr_ppo_rb").hparams == {"delta": 0.03, "alpha": 5.0}
    assert make_shape("trgppo").hparams == {"delta": 0.001}
    for name in ("tr_ppo", "tr_ppo_rb", "trgppo"):
        assert "arXiv" in (get_shape_class(name).__doc__ or "")


# -- TRGPPO (Wang, He, Tan, Gan 2019, arXiv 1901.10314) ----------------------------------------


def band_by_scipy(p: float, delta: float) -> tuple[float, float]:
    """The two roots of KL(r) = -p log r + (1-p) log((1-p)/(1-p r)) = delta, by Brent's method."""
    def excess(log_r):
        return -p * log_r - (1 - p) * math.log1p(-p * math.expm1(log_r) / (1 - p)) - delta

    end = -math.log(p) * (1 - 1e-15)  # for p near 1 the root is 1/p to float64 precision
    upper = scipy.optimize.brentq(excess, 0.0, end, xtol=1e-15) if excess(end) > 0 else end
    lower = scipy.optimize.brentq(excess, -800.0, 0.0, xtol=1e-15) if excess(-800.0) > 0 else -800.0
    return math.exp(lower), math.exp(upper)


@pytest.mark.parametrize("delta", [0.001, 0.03])
def test_trgppo_band_against_an_independent_solver(delta):
    probabilities = [1e-6, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99]
    lower, upper = trgppo_band(torch.tensor(probabilities, dtype=torch.float64).log(), delta)
    for index, p in enumerate(probabilities):
        low, high = band_by_scipy(p, delta)
        assert lower[index].item() == pytest.approx(low, rel=1e-9, abs=1e-300)
        assert upper[index].item() == pytest.approx(high, rel=1e-9)
    assert (lower.diff() > 0).all() and (upper.diff() < 0).all()  # wider for less likely actions
    certain_lower, certain_upper = trgppo_band(torch.zeros(1, dtype=torch.float64), delta)
    assert certain_upper.item() == pytest.approx(1.0, abs=1e-5)
    assert certain_lower.item() == pytest.approx(math.exp(-delta), rel=1e-4)


def test_trgppo_band_is_the_trust_region_extremum_of_a_categorical_policy():
    """No distribution within KL(pi_old || pi) <= delta moves action a's ratio past [l, u]; the
    proportional rescaling of the other actions reaches both ends with KL exactly delta."""
    generator = torch.Generator().manual_seed(3)
    delta = 0.03
    old = torch.softmax(torch.randn(6, generator=generator, dtype=torch.float64), 0)
    lower, upper = trgppo_band(old.log(), delta)
    for action in range(6):
        p = old[action]
        for r in (lower[action], upper[action]):
            moved = old * (1 - r * p) / (1 - p)
            moved[action] = r * p
            kl = torch.distributions.kl_divergence(torch.distributions.Categorical(old),
                                                   torch.distributions.Categorical(moved))
            assert kl.item() == pytest.approx(delta, rel=1e-9)
    candidates = torch.softmax(old.log() + 0.3 * torch.randn(200_000, 6, generator=generator,
                                                              dtype=torch.float64), -1)
    kl = (old * (old.log() - candidates.log())).sum(-1)
    inside = candidates[kl <= delta] / old
    assert len(inside) > 1000
    assert (inside <= upper * (1 + 1e-12)).all() and (inside >= lower * (1 - 1e-12)).all()
    assert (inside.max(0).values > 1 + 0.8 * (upper - 1)).all()  # and it gets close to the ends


def trgppo_objective(w, a, lower, upper):
    """TRGPPO: min(w A, clip(w, l_sa, u_sa) A), the band per sample."""
    return torch.minimum(w * a, torch.minimum(torch.maximum(w, lower), upper) * a)


@pytest.mark.parametrize("params", [{}, {"delta": 0.02}], ids=["published-defaults", "other-delta"])
def test_trgppo_gate_equals_the_autograd_gate_of_its_objective(params):
    shape = make_shape("trgppo", **params).double()
    ratio, advantage, _, old_log_prob = random_inputs(seed=4)
    bands = [band_by_scipy(p, shape.delta) for p in old_log_prob.exp().clamp_max(1 - 1e-12).tolist()]
    lower = torch.tensor([low for low, _ in bands], dtype=torch.float64)
    upper = torch.tensor([high for _, high in bands], dtype=torch.float64)
    expected = effective_advantage(trgppo_objective, ratio, a=advantage, lower=lower, upper=upper)
    with shape.using_context(old_log_prob=old_log_prob):
        for gate in (shape.gate(ratio, advantage), shape.gate_from_log_ratio(ratio.log(), ratio, advantage)):
            assert torch.equal(advantage * (1 - gate), expected)
    killed = expected != advantage
    assert 200 < killed.sum() < len(ratio) - 200
    # Per-action bands: the same ratio is killed for a likely action and kept for an unlikely one.
    outside_ppo = signed_distance_past_boundary(ratio, advantage, 0.2) > 0
    assert (killed & ~outside_ppo).any() and (~killed & outside_ppo & (advantage != 0)).any()


def test_only_trgppo_declares_a_restricted_action_space():
    restricted = {name: get_shape_class(name).action_spaces for name in available_shapes()
                  if set(get_shape_class(name).action_spaces) != {"continuous", "discrete"}}
    assert restricted == {"trgppo": ("discrete",), "trgppo_gaussian": ("continuous",)}


def test_trgppo_refuses_densities():
    shape = make_shape("trgppo")
    shape.set_context(old_log_prob=torch.tensor([-1.0, 0.5]))
    with pytest.raises(ValueError, match=r"old_log_prob > 0 is a density, not a probability; its band "
                                         r"is defined for discrete policies only$"):
        shape.gate(torch.ones(2), torch.ones(2))


# -- TRGPPO for a diagonal Gaussian policy ------------------------------------------------------


def one_dimensional_extremes_by_grid(x: float, radius: float) -> tuple[float, float]:
    """min and max of log N(x; mu, sigma) - log N(x; 0, 1) over a fine (mu, log sigma) grid
    restricted to KL(N(0, 1) || N(mu, sigma)) <= radius: an independent, brute-force answer."""
    mu = torch.linspace(-0.6, 0.6, 1501, dtype=torch.float64)[:, None]
    log_sigma = torch.linspace(-0.6, 0.6, 1501, dtype=torch.float64)[None, :]
    variance = (2 * log_sigma).exp()
    kl = log_sigma + (1 + mu ** 2) / (2 * variance) - 0.5
    rho = -(x - mu) ** 2 / (2 * variance) - log_sigma + x ** 2 / 2
    feasible = rho[kl <= radius]
    return feasible.min().item(), feasible.max().item()


@pytest.mark.parametrize("x", [0.0, 0.4, 1.0, 2.5])
@pytest.mark.parametrize("radius", [0.005, 0.03])
def test_gaussian_band_in_one_dimension_against_a_grid_search(x, radius):
    lower, upper = trgppo_gaussian_band(torch.tensor([[x]], dtype=torch.float64), radius)
    low, high = math.log(lower.item()), math.log(upper.item())
    grid_low, grid_high = one_dimensional_extremes_by_grid(x, radius)
    # Nothing feasible beats the band, and the grid gets within its resolution of both ends.
    assert grid_high <= high + 1e-12 and grid_low >= low - 1e-12
    assert grid_high == pytest.approx(high, abs=2e-3) and grid_low == pytest.approx(low, abs=2e-3)


def test_gaussian_band_is_attained_by_a_diagonal_policy_in_d_dimensions():
    """For z along (1, ..., 1), the 1-D optimum repeated in each dimension is a diagonal Gaussian
    with KL exactly delta whose ratio at the action is u (and l): the band is reached."""
    dim, delta, x = 3, 0.02, 0.7
    z = torch.full((1, dim), x, dtype=torch.float64)
    lower, upper = trgppo_gaussian_band(z, delta)
    radius = delta / dim
    for target, sign in ((upper, 1.0), (lower, -1.0)):
        def excess(t):
            v = (1 - t) * (1 + t * x * x)
            return 0.5 * math.log(v) + (1 + x * x * t * t) / (2 * v) - 0.5 - radius
        t = scipy.optimize.brentq(excess, 0.0, 1 - 1e-12) if sign > 0 else \
            scipy.optimize.brentq(excess, -1 / x ** 2 * (1 - 1e-12), 0.0)
        new = torch.distributions.Normal(torch.full((dim,), x * t, dtype=torch.float64),
                                         torch.full((dim,), math.sqrt((1 - t) * (1 + t * x * x)),
                                                    dtype=torch.float64))
        zeros = torch.zeros(dim, dtype=torch.float64)
        old = torch.distributions.Normal(zeros, zeros + 1)
        assert torch.distributions.kl_divergence(old, new).sum().item() == pytest.approx(delta, rel=1e-9)
        ratio = (new.log_prob(z[0]).sum() - old.log_prob(z[0]).sum()).exp()
        assert ratio.item() == pytest.approx(target.item(), rel=1e-9)


def test_gaussian_band_defaults_and_shape():
    for dim in (1, 3, 6, 17):
        delta = gaussian_delta_for_eps(0.2, dim)
        z = torch.zeros(4, dim, dtype=torch.float64)
        z[1, 0], z[2, :] = 1.0, 1.0
        z[3, 0] = 3.0
        lower, upper = trgppo_gaussian_band(z, delta)
        assert lower.shape == upper.shape == (4, 1)
        assert upper[0].item() == pytest.approx(1.2, rel=1e-12)  # the authors' base_clip_upper
        assert (upper[1:] > 1.2).all() and (lower[1:] < lower[0]).all()  # wider away from the mean
    shape = make_shape("trgppo_gaussian")
    shape.set_context(old_action_z=torch.zeros(4, 3))
    with pytest.raises(ContextNotSetError, match=r"has shape \[4, 3\], which is not the ratios' \[5, 1\]"):
        shape.gate(torch.ones(5, 1), torch.ones(5, 1))
    assert shape.gate(torch.ones(4, 1), torch.ones(4, 1)).shape == (4, 1)  # [B, 1] ratios, [B, d] z
    assert shape.gate(torch.ones(4), torch.ones(4)).shape == (4,)  # [B] ratios, [B, d] z


def test_trgppo_gaussian_gate_equals_the_autograd_gate_of_its_objective():
    shape = make_shape("trgppo_gaussian").double()
    ratio, advantage, _, _ = random_inputs(seed=12)
    generator = torch.Generator().manual_seed(13)
    z = torch.randn(len(ratio), 4, generator=generator, dtype=torch.float64)
    lower, upper = trgppo_gaussian_band(z, gaussian_delta_for_eps(0.2, 4))
    expected = effective_advantage(trgppo_objective, ratio, a=advantage, lower=lower.squeeze(-1),
                                   upper=upper.squeeze(-1))
    with shape.using_context(old_action_z=z):
        for gate in (shape.gate(ratio, advantage), shape.gate_from_log_ratio(ratio.log(), ratio, advantage)):
            assert torch.equal(advantage * (1 - gate), expected)
    killed = expected != advantage
    assert 200 < killed.sum() < len(ratio) - 200


# -- the learned gate by increments ------------------------------------------------------------


def bits(tensor):
    return tensor.view(torch.int64 if tensor.dtype == torch.float64 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.2, 0.1, 0.35])
def test_step_vector_is_step_bit_for_bit(dtype, eps):
    log_ratio, advantage = adversarial_case(4096, dtype, seed=5)
    eps_t = torch.tensor(eps, dtype=dtype)
    up, down = torch.tensor(9.0, dtype=dtype), torch.tensor(-9.0, dtype=dtype)
    edges = torch.stack([eps_t.log1p(), (-eps_t).log1p(), torch.nextafter(eps_t.log1p(), up),
                         torch.nextafter((-eps_t).log1p(), down), torch.nextafter(eps_t.log1p(), down),
                         torch.nextafter((-eps_t).log1p(), up), torch.log(1 + eps_t), torch.log(1 - eps_t)])
    log_ratio[: 2 * len(edges)] = edges.repeat(2)
    advantage[: len(edges)], advantage[len(edges): 2 * len(edges)] = 1.0, -1.0
    ratio = log_ratio.exp()
    step = make_shape("step", eps=eps).to(dtype)
    expected_log = step.gate_from_log_ratio(log_ratio, ratio, advantage)
    expected_ratio = step.gate(ratio, advantage)
    assert 0 < expected_log.sum() < len(expected_log)
    plain = LearnedIncrementsShape(eps=eps, **LearnedIncrementsShape.step_vector()).to(dtype)
    epoch = LearnedIncrementsEpochShape(eps=eps, **LearnedIncrementsEpochShape.step_vector()).to(dtype)
    for shape, epochs in ((plain, [None]), (epoch, [0.0, 0.3, 0.9])):
        for progress in epochs:
            if progress is not None:
                shape.set_context(epoch_progress=progress)
            gate = shape.gate_from_log_ratio(log_ratio, ratio, advantage)
            assert torch.equal(bits(gate), bits(expected_log))
            assert torch.equal(bits(shape.gate(ratio, advantage)), bits(expected_ratio))
    assert make_shape("learned_increments").hparams == {"eps": 0.2, **LearnedIncrementsShape.step_vector()}


def test_step_vector_names_every_coordinate():
    vector = LearnedIncrementsShape.step_vector()
    assert list(vector) == LearnedIncrementsShape.coordinate_names()
    assert len(vector) == 2 * (2 + len(LearnedIncrementsShape.BREAKPOINTS) - 1) == 20
    assert sorted(set(vector.values())) == [0.0, 1.0]
    assert len(LearnedIncrementsEpochShape.step_vector()) == 40
    shape = LearnedIncrementsShape.from_vector(list(vector.values()), eps=0.3)
    assert shape.hparams == {"eps": 0.3, **vector}
    assert torch.equal(shape.get_vector(), torch.tensor(list(vector.values()), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"vector has 3 entries, expected 20$"):
        LearnedIncrementsShape.from_vector([0.0, 1.0, 2.0])
    assert not hasattr(LearnedIncrementsShape, "KNOTS")  # studies search its coordinates as params


def extreme_vectors(cls):
    """Every coordinate at its allowed low or high limit, in patterns, and the allowed box's corners."""
    names = cls.coordinate_names()
    limits = [(cls.params[key].low, cls.params[key].high) for key in names]
    patterns = [lambda i: 0, lambda i: 1, lambda i: i % 2, lambda i: (i + 1) % 2, lambda i: (i // 3) % 2]
    return [{key: limit[pattern(i)] for i, (key, limit) in enumerate(zip(names, limits, strict=True))}
            for pattern in patterns]


def random_vectors(cls, count, seed):
    generator = torch.Generator().manual_seed(seed)
    vectors = []
    for _ in range(count):
        vector = {}
        for key in cls.coordinate_names():
            low, high = cls.params[key].search
            vector[key] = low + (high - low) * torch.rand(1, generator=generator, dtype=torch.float64).item()
        vectors.append(vector)
    return vectors


@pytest.mark.parametrize("cls", [LearnedIncrementsShape, LearnedIncrementsEpochShape])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_vector_gives_a_valid_finite_gate(cls, dtype):
    log_ratio, advantage = adversarial_case(2048, dtype, seed=6)
    log_ratio = torch.cat([log_ratio, torch.linspace(-3, 3, 2001, dtype=dtype).repeat(2)])
    advantage = torch.cat([advantage, torch.ones(2001, dtype=dtype), -torch.ones(2001, dtype=dtype)])
    ratio = log_ratio.exp()
    for vector in extreme_vectors(cls) + random_vectors(cls, 20, seed=7):
        shape = cls(**vector).to(dtype)
        low, high = shape.gate_bounds()
        assert math.isfinite(low) and math.isfinite(high)
        for progress in (0.0, 0.5, 0.99):
            shape.set_context(epoch_progress=progress)  # ignored by the unconditioned shape
            gates = (shape.gate(ratio, advantage), shape.gate_from_log_ratio(log_ratio, ratio, advantage))
            for gate in gates:
                assert gate.shape == ratio.shape and torch.isfinite(gate).all()
                slack = 1e-5 * max(1.0, abs(low), abs(high))
                assert (gate >= low - slack).all() and (gate <= high + slack).all()
            # Non-decreasing in the distance past the boundary, for each sign (on the grid).
            for sign in (1.0, -1.0):
                grid = advantage == sign
                distance = signed_distance_past_boundary(ratio[grid], advantage[grid], shape.eps)
                values = shape.gate(ratio[grid], advantage[grid])[distance.argsort()]
                assert (values.diff() >= -1e-5 * max(1.0, high - low)).all()


def test_the_range_includes_rollback_amplification_and_published_variants():
    # PPO-RB is a jump of 1 + alpha: bit for bit the rollback shape.
    log_ratio, advantage = adversarial_case(2048, torch.float32, seed=8)
    ratio = log_ratio.exp()
    rollback = make_shape("rollback", alpha=0.3).gate_from_log_ratio(log_ratio, ratio, advantage)
    jumpy = make_shape("learned_increments", pos_jump=1.3, neg_jump=1.3)
    assert torch.equal(jumpy.gate_from_log_ratio(log_ratio, ratio, advantage), rollback)
    # SPO at eps 0.2 is base -1, increments 0.5, no jump, on |d| <= 0.4.
    spo_like = {f"{side}_{key}": value for side in ("pos", "neg") for key, value in
                [("base", -1.0), ("jump", 0.0)] + [(f"inc{i}", 0.5) for i in range(8)]}
    ratio = torch.linspace(0.3, 1.9, 3001, dtype=torch.float64)
    for sign in (1.0, -1.0):
        a = torch.full_like(ratio, sign)
        near = signed_distance_past_boundary(ratio, a, 0.2).abs() <= 0.4
        learned = make_shape("learned_increments", **spo_like).double().gate(ratio, a)
        spo = make_shape("spo", eps=0.2).double().gate(ratio, a)
        torch.testing.assert_close(learned[near], spo[near], rtol=0, atol=1e-12)
        assert learned.min() == -1.0 and learned.max() > 2.9  # amplifies, and rolls back
    # Within the default search box the gate reaches below 0 and above 1.
    box = LearnedIncrementsShape.params
    assert box["pos_base"].search[0] < 0 and box["pos_jump"].search[1] > 1


def test_search_space_is_every_coordinate_and_starts_at_step():
    from klip.studies.space import build_shape_from_values, default_point, resolve_space

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    shape = LearnedIncrementsShape.from_trial(trial, prefix="g.")
    assert set(trial.params) == {f"g.{key}" for key in LearnedIncrementsShape.params}
    for key in LearnedIncrementsShape.coordinate_names():
        distribution = trial.distributions[f"g.{key}"]
        assert (distribution.low, distribution.high) == LearnedIncrementsShape.params[key].search
        assert shape.hparams[key] == trial.params[f"g.{key}"]
    space, pinned = resolve_space("learned_increments", fixed={"eps": 0.2})
    assert set(space) == set(LearnedIncrementsShape.coordinate_names()) and pinned == {"eps": 0.2}
    start = default_point("learned_increments", space)
    assert start == LearnedIncrementsShape.step_vector()  # CMA-ES starts from PPO-Clip
    values = {key.removeprefix("g."): value for key, value in trial.params.items()}
    rebuilt = build_shape_from_values("learned_increments", values)
    assert rebuilt.hparams == shape.hparams
    epoch_space, _ = resolve_space("learned_increments_epoch")
    assert len(epoch_space) == 41


def test_json_round_trip_of_a_random_vector(tmp_path):
    for cls in (LearnedIncrementsShape, LearnedIncrementsEpochShape):
        (vector,) = random_vectors(cls, 1, seed=9)
        shape = cls(eps=0.15, **vector)
        loaded = load_shape(save_shape(shape, tmp_path / f"{cls.name}.json"))
        assert type(loaded) is cls and loaded.hparams == shape.hparams
        ratio, advantage = torch.linspace(0.2, 2.0, 500), torch.linspace(-1, 1, 500)
        for gated in (shape, loaded):
            gated.set_context(epoch_progress=0.25)
        assert torch.equal(loaded.gate(ratio, advantage), shape.gate(ratio, advantage))


def test_the_conditioned_gate_reads_the_inner_loop_position():
    late = {"late_pos_base": -0.5, "late_pos_jump": 2.0, "late_pos_inc2": 0.3}
    shape = make_shape("learned_increments_epoch", **late)  # early: step; late: another gate
    ratio = torch.linspace(0.5, 1.8, 400)
    advantage = torch.ones_like(ratio)
    gates = {}
    for progress in (0.0, 0.5, 0.9):
        shape.set_context(epoch_progress=progress)
        gates[progress] = shape.gate(ratio, advantage)
    step = make_shape("step").gate(ratio, advantage)
    late_shape = make_shape("learned_increments", pos_base=-0.5, pos_jump=2.0, pos_inc2=0.3)
    late_gate = late_shape.gate(ratio, advantage)
    assert torch.equal(gates[0.0], step)
    torch.testing.assert_close(gates[0.5], (step + late_gate) / 2)
    torch.testing.assert_close(gates[0.9], step + 0.9 * (late_gate - step))
    assert not torch.equal(gates[0.0], gates[0.9])  # a gate ignoring its context fails here
    shape.clear_context()
    with pytest.raises(ContextNotSetError, match="'epoch_progress'"):
        shape.gate(ratio, advantage)


# -- through the loss, as the engine will call it ----------------------------------------------


@pytest.mark.parametrize("name", ["tr_ppo", "tr_ppo_rb", "trgppo_gaussian"])
def test_through_the_loss_the_gradient_is_the_published_objectives(name):
    """KLipPPOLoss computes the per-sample context from the data (the rollout policy's loc and
    scale, the stored log-probability) as the engine trains with it, and gives the network the
    gradient of the published objective, written here on the actor's own log-probs. (`trgppo`
    is defined for discrete policies: its band reads a probability, not a Gaussian density.)"""
    from helpers import make_actor_critic, make_sampled_batch, random_case
    from torchrl.modules import IndependentNormal

    from klip.algos import KLipPPOLoss

    size = 256
    actor, _ = make_actor_critic(torch.float64, log_std=-1.2)
    log_ratio, advantage = random_case(size, torch.float64, 10)
    batch, _ = make_sampled_batch(actor, log_ratio, advantage)
    # A rollout policy whose mean sits 0..0.5 standard deviations away: per-state KLs on both
    # sides of the shapes' thresholds.
    generator = torch.Generator().manual_seed(11)
    shift = 0.5 * torch.rand(size, 1, generator=generator, dtype=torch.float64)
    batch["loc"] = batch["loc"] + shift * batch["scale"]
    shape = make_shape(name).double()
    parameters = list(actor.parameters())
    loss = KLipPPOLoss(actor, shape=shape, entropy_coeff=0.0, critic_coeff=None,
                       normalize_advantage=False).double()
    loss(batch.clone())["loss_objective"].backward()
    actual = [parameter.grad.clone() for parameter in parameters]
    with pytest.raises(ContextNotSetError):  # the loss's per-sample context is forgotten after it
        shape.context_value(shape.context[0], like=torch.ones(size, 1, dtype=torch.float64))

    for parameter in parameters:
        parameter.grad = None
    with torch.no_grad():
        current = actor.get_dist(batch.select("observation").clone())
        rollout = IndependentNormal(batch["loc"], batch["scale"], tanh_loc=False)
        kl = torch.distributions.kl_divergence(rollout, current).reshape(size, 1)
    old_action_z = (batch["action"] - batch["loc"]) / batch["scale"]  # [B, d] for ratios [B, 1]
    log_prob = actor.get_dist(batch.select("observation").clone()).log_prob(batch["action"])
    w = (log_prob - batch["action_log_prob"]).exp().reshape(size, 1)
    a = batch["advantage"].reshape(size, 1)
    if name == "tr_ppo":
        objective = tr_ppo_objective(w, a, kl, shape.delta)
    elif name == "tr_ppo_rb":
        objective = tr_ppo_rb_objective(w, a, kl, shape.delta, shape.alpha)
    else:
        delta = gaussian_delta_for_eps(shape.eps, old_action_z.shape[-1])
        lower, upper = trgppo_gaussian_band(old_action_z, delta)
        objective = trgppo_objective(w, a, lower, upper)
    (-objective.mean()).backward()
    for got, want in zip(actual, [parameter.grad for parameter in parameters], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # Not vacuous: the unconstrained surrogate's gradient is another one.
    for parameter in parameters:
        parameter.grad = None
    KLipPPOLoss(actor, shape="none", entropy_coeff=0.0, critic_coeff=None,
                normalize_advantage=False).double()(batch.clone())["loss_objective"].backward()
    assert any((got - parameter.grad).abs().max() > 1e-6
               for got, parameter in zip(actual, parameters, strict=True))
