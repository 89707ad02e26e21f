"""Published PPO variants as shapes, each with its reference and its published defaults.

Each docstring gives the published objective and the gate it implies; the
tests (`tests/test_shape_zoo.py`) compare every gate with the autograd
gradient of that objective on random inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from klip.shapes.base import (
    CoefficientShape,
    ContextNotSetError,
    Param,
    exact_kill_region,
    signed_distance_past_boundary,
)
from klip.shapes.builtin import EPS
from klip.shapes.drift import register_drift
from klip.shapes.registry import register_shape


@register_shape("rollback")
class RollbackShape(CoefficientShape):
    """PPO-RB: `g = (1 + alpha) 1[kill]`, a negative slope past the bound (rolls back).

    Wang, He and Tan, "Truly Proximal Policy Optimization", UAI 2019,
    arXiv 1903.07940 (PPO-RB objective): `min(w A, F(w) A)` with
    `F(w) = -alpha w + (1+alpha)(1+eps)` above `1+eps`, `-alpha w + (1+alpha)(1-eps)`
    below `1-eps`, and `w` in between. On the kill region the gradient is
    `-alpha A`, i.e. `A(1-g)` with `g = 1 + alpha`; elsewhere `A`. Published
    default `alpha = 0.3` (eps 0.2). The kill region is decided as `step` decides
    it, so `alpha = 0` is bitwise the `step` gate.
    """

    params: ClassVar[Mapping[str, Param]] = {
        "eps": EPS,
        "alpha": Param(0.3, 0.0, search=(0.0, 1.0), help="rollback slope past the bound"),
    }
    eps: float
    alpha: float

    def __init__(self, **values: float) -> None:
        super().__init__(**values)
        self.register_buffer("eps_tensor", torch.tensor(self.eps), persistent=False)

    def gate_bounds(self) -> tuple[float, float]:
        return 0.0, 1.0 + self.alpha

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        kill = signed_distance_past_boundary(ratio, advantage, self.eps) > 0
        return kill.to(ratio.dtype) * (1.0 + self.alpha)

    def gate_from_log_ratio(self, log_ratio: Tensor, ratio: Tensor, advantage: Tensor) -> Tensor:
        eps = self.eps_tensor
        kill = exact_kill_region(log_ratio, ratio, advantage, eps, eps)
        return kill.to(log_ratio.dtype) * (1.0 + self.alpha)


@register_shape("clip_higher")
class ClipHigherShape(CoefficientShape):
    """DAPO's clip-higher: `g = 1[kill]` for the asymmetric band `[1-eps_low, 1+eps_high]`.

    Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at
    Scale", arXiv 2503.14476 (clip-higher): `min(w A, clip(w, 1-eps_low, 1+eps_high) A)`.
    Published defaults `eps_low = 0.2`, `eps_high = 0.28`. Decided in log space with
    `step`'s operations, so `eps_low == eps_high == eps` is bitwise `step(eps)`.
    """

    params: ClassVar[Mapping[str, Param]] = {
        "eps_low": Param(0.2, 0.0, 1.0, low_inclusive=False, high_inclusive=False,
                         search=(0.05, 0.4), help="band below 1: [1-eps_low, ...]"),
        "eps_high": Param(0.28, 0.0, low_inclusive=False, search=(0.05, 0.6),
                          help="band above 1: [..., 1+eps_high]"),
    }
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    eps_low: float
    eps_high: float

    def __init__(self, **values: float) -> None:
        super().__init__(**values)
        self.register_buffer("eps_low_tensor", torch.tensor(self.eps_low), persistent=False)
        self.register_buffer("eps_high_tensor", torch.tensor(self.eps_high), persistent=False)

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        distance = signed_distance_past_boundary(ratio, advantage, self.eps_low, self.eps_high)
        return (distance > 0).to(ratio.dtype)

    def gate_from_log_ratio(self, log_ratio: Tensor, ratio: Tensor, advantage: Tensor) -> Tensor:
        kill = exact_kill_region(log_ratio, ratio, advantage, self.eps_low_tensor, self.eps_high_tensor)
        return kill.to(log_ratio.dtype)


@register_shape("truncate")
class TruncateShape(CoefficientShape):
    """CISPO's truncated importance weight: `g = 1 - clip(w, 1-eps_low, 1+eps_high) / w`, any sign of A.

    MiniMax, "MiniMax-M1", arXiv 2506.13585 (the CISPO objective): maximise
    `sg(clip(w, 1-eps_low, 1+eps_high)) A log pi`. Its gradient is
    `clip(w) A grad log pi = (clip(w)/w) A grad w`, so `A(1-g) = A clip(w)/w`:
    every sample keeps a gradient, with its weight capped at `1+eps_high`
    (g in (0, 1) above the band) and, with a lower bound, raised to `1-eps_low`
    below it (g < 0, amplified). The paper sets no lower bound (a large eps_low)
    and tunes eps_high only; we found no value of it stated, so the defaults
    here, `eps_low = 1` (lower bound 0: none) and `eps_high = 0.2`, are ours.
    """

    params: ClassVar[Mapping[str, Param]] = {
        "eps_low": Param(1.0, 0.0, 1.0, search=(0.05, 1.0),
                         help="weights below 1-eps_low are raised to it (1: no lower bound)"),
        "eps_high": Param(0.2, 0.0, low_inclusive=False, search=(0.05, 2.0), log=True,
                          help="weights above 1+eps_high are capped at it"),
    }
    # clip(w)/w > 0, so g < 1; below a positive lower bound g -> -inf as w -> 0.
    gate_range: ClassVar[tuple[float, float]] = (float("-inf"), 1.0)
    eps_low: float
    eps_high: float

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        # Inside the band clamp(w) is w and w / w is exactly 1: the gate is exactly 0.
        return 1.0 - ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high) / ratio


@register_drift(
    "spo",
    params={"eps": Param(0.2, 0.0, 1.0, low_inclusive=False, high_inclusive=False,
                         search=(0.05, 0.4), help="scale of the quadratic penalty")},
)
def spo(ratio: Tensor, advantage: Tensor, eps: float) -> Tensor:
    """SPO: drift `|A| (w-1)^2 / (2 eps)`, gate `sign(A)(w-1)/eps` (brakes, rolls back, amplifies).

    Xie et al., "Simple Policy Optimization", arXiv 2401.16025: maximise
    `w A - |A| / (2 eps) (w-1)^2`. Its gradient is `A - |A|(w-1)/eps`, so
    `g = sign(A)(w-1)/eps`: 0 at w = 1, 1 on the PPO-Clip boundary, > 1 past it,
    < 0 on the other side (amplified). Published default `eps = 0.2`.
    """
    return advantage.abs() * (ratio - 1) ** 2 / (2 * eps)


@register_drift(
    "dpo",
    params={
        "alpha": Param(2.0, 0.0, low_inclusive=False, search=(0.1, 10.0), log=True,
                       help="drift scale for A >= 0"),
        "beta": Param(0.6, 0.0, low_inclusive=False, search=(0.05, 5.0), log=True,
                      help="drift scale for A < 0"),
    },
)
def dpo(ratio: Tensor, advantage: Tensor, alpha: float, beta: float) -> Tensor:
    """DPO (discovered by meta-learning): a cubic-onset, then linear, drift on each side.

    Lu et al., "Discovered Policy Optimisation", NeurIPS 2022, arXiv 2210.05639:
    maximise `w A - Phi` with `Phi = relu((w-1)A - alpha tanh((w-1)A/alpha))` for
    `A >= 0` and `Phi = relu(log(w)A - beta tanh(log(w)A/beta))` for `A < 0`.
    `x - c tanh(x/c)` is >= 0 exactly when x >= 0, so the drift is >= 0 and acts
    only where the ratio moved the way A pushes it. Gates: `tanh^2((w-1)A/alpha)`
    for A >= 0, `tanh^2(log(w)A/beta) / w` for A < 0 (0 on the other side).
    Published defaults `alpha = 2`, `beta = 0.6`.
    """
    positive = (ratio - 1) * advantage
    negative = ratio.log() * advantage
    drift_positive = torch.relu(positive - alpha * torch.tanh(positive / alpha))
    drift_negative = torch.relu(negative - beta * torch.tanh(negative / beta))
    return torch.where(advantage >= 0, drift_positive, drift_negative)


# -- variants that read per-sample context (the per-state KL, the rollout log-probability) ------

KL_TRIGGER_HELP = "per-state KL(pi_old || pi_new) at which a sample's gradient is cut"


def _kl_triggered(shape: CoefficientShape, ratio: Tensor, advantage: Tensor, delta: float) -> Tensor:
    """TR-PPO's trigger: `KL_s >= delta` and `w A > w_old A` (w_old = 1), as the authors' code writes it.

    True exactly where TR-PPO's `min(w A, F^TR A)` takes its constant branch: the
    state's policy moved more than `delta` (in KL) and the sample's ratio moved the
    way its advantage pushes it.
    """
    kl = shape.context_value("kl", like=ratio)
    return (kl >= delta) & (ratio * advantage > advantage)


@register_shape("tr_ppo")
class TRPPOShape(CoefficientShape):
    """TR-PPO: `g = 1[KL_s >= delta and w A > A]`, PPO-Clip with a per-state KL trigger.

    Wang, He and Tan, "Truly Proximal Policy Optimization", UAI 2019, arXiv
    1903.07940 (TR-PPO): maximise `min(w A, F^TR A)` with `F^TR = w_old = 1` where
    `KL(pi_old(.|s) || pi(.|s)) >= delta` and `F^TR = w` otherwise. Where the KL is
    past delta and `w A > A` the min takes the constant: gradient 0, `g = 1`;
    elsewhere it is `w A`, `g = 0`. The band in ratio space is gone: a sample whose
    state has not moved by delta keeps its gradient however far its ratio went.
    Reads the per-sample context `kl` (the engine's per-state KL, old -> new).
    Default `delta = 0.035`: the authors' MuJoCo setting for TR-PPO in their code
    (github.com/wangyuhuix/TrulyPPO, run.py, cliptype `kl`).
    """

    params: ClassVar[Mapping[str, Param]] = {
        "delta": Param(0.035, 0.0, low_inclusive=False, search=(0.005, 0.2), log=True,
                       help=KL_TRIGGER_HELP),
    }
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    context: ClassVar[tuple[str, ...]] = ("kl",)
    delta: float

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        return _kl_triggered(self, ratio, advantage, self.delta).to(ratio.dtype)


@register_shape("tr_ppo_rb")
class TRPPORollbackShape(CoefficientShape):
    """TR-PPO-RB (Truly PPO): TR-PPO's trigger with a KL rollback, `g = alpha (1 - 1/w) / A` there.

    Wang, He and Tan, "Truly Proximal Policy Optimization", UAI 2019, arXiv
    1903.07940 (TR-PPO-RB): maximise `w A - alpha 1[KL_s >= delta and w A > A] KL_s`
    (the authors' code, cliptype `kl_klrollback_constant_withratio`, `--alg trulyppo`).
    Its rollback gradient `-alpha grad KL_s` is not along `grad log pi(a|s)`, so no
    gate of any per-sample quantity reproduces it exactly. This shape replaces
    `KL_s` in the penalty (not in the trigger) by its per-sample estimate
    `k3 = (w - 1) - log w`, whose gradient `(1 - 1/w) grad w` averages to
    `grad KL_s` over actions drawn from pi_old: per sample, `dJ/dw = A - alpha (1 - 1/w)`
    on the trigger, i.e. `g = alpha (1 - 1/w) / A` (> 0: it brakes, and rolls back
    once `alpha (1 - 1/w) > A`), and `g = 0` elsewhere. Inside the trigger the
    estimate is conditioned on the sample's own ratio, so it is not an unbiased
    estimate of the published rollback there; it always pulls the ratio back to 1.
    The gate is capped at the dtype's largest finite number (reached only for
    subnormal |A|). Reads the per-sample context `kl`. Defaults `delta = 0.03`,
    `alpha = 5`: the authors' MuJoCo setting for it in their code (run.py).
    """

    params: ClassVar[Mapping[str, Param]] = {
        "delta": Param(0.03, 0.0, low_inclusive=False, search=(0.005, 0.2), log=True,
                       help=KL_TRIGGER_HELP),
        "alpha": Param(5.0, 0.0, search=(0.1, 20.0), log=True,
                       help="rollback strength: weight of the KL penalty past the trigger"),
    }
    gate_range: ClassVar[tuple[float, float]] = (0.0, math.inf)
    context: ClassVar[tuple[str, ...]] = ("kl",)
    delta: float
    alpha: float

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        triggered = _kl_triggered(self, ratio, advantage, self.delta)
        # On the trigger (w - 1) A > 0, so A != 0 there; elsewhere the safe 1 keeps 0/0 out.
        safe_advantage = torch.where(triggered, advantage, torch.ones_like(advantage))
        rollback = (self.alpha * (1.0 - 1.0 / ratio) / safe_advantage).clamp(
            max=torch.finfo(ratio.dtype).max)
        return torch.where(triggered, rollback, torch.zeros_like(ratio))


def trgppo_band(old_log_prob: Tensor, delta: float, iterations: int = 64) -> tuple[Tensor, Tensor]:
    """TRGPPO's per-action clipping band `[l, u]` of a discrete policy, from `log pi_old(a|s)`.

    `l` and `u` are the smallest and largest `pi(a|s) / pi_old(a|s)` over all
    distributions `pi(.|s)` with `KL(pi_old(.|s) || pi(.|s)) <= delta`. Moving
    probability to or from action `a` (probability `p`) costs least in KL when the
    other actions are rescaled proportionally, so with `r` the ratio of `a`:
    `KL(r) = -p log r + (1 - p) log((1 - p) / (1 - p r))`, zero at r = 1 and
    increasing away from it; `l < 1 < u` are its two roots of `KL(r) = delta`
    (`u < 1/p`). Solved by bisection on `log r` in float64 (64 halvings reach
    float64 precision); returned in `old_log_prob`'s dtype. Smaller `p`, wider band.
    """
    p = old_log_prob.detach().double().exp()
    tiny = torch.finfo(torch.float64).tiny
    # p == 1 (a certain action) is the limit of p -> 1: u -> 1, l -> exp(-delta).
    p = p.clamp(tiny, 1.0 - 1e-12)
    rest = 1.0 - p

    def kl(log_r: Tensor) -> Tensor:
        # -p t - (1-p) log((1 - p e^t) / (1 - p)), written to stay accurate near t = 0.
        return -p * log_r - rest * torch.log1p(-p * torch.expm1(log_r) / rest)

    # Upper root in (0, -log p): KL is 0 at 0 and +inf at -log p.
    low, high = torch.zeros_like(p), -p.log()
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        above = kl(middle) > delta
        high = torch.where(above, middle, high)
        low = torch.where(above, low, middle)
    upper = low.exp()
    # Lower root: KL(t) >= -p t + (1-p) log(1-p) for t < 0, which bounds it from below;
    # below -800, exp(t) is 0 in float64 anyway, so the search starts no lower.
    low = (-(delta - rest * rest.log()) / p - 1.0).clamp(min=-800.0)
    high = torch.zeros_like(p)
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        above = kl(middle) > delta
        low = torch.where(above, middle, low)
        high = torch.where(above, high, middle)
    lower = high.exp()
    dtype = old_log_prob.dtype
    return lower.to(dtype), upper.to(dtype)


@register_shape("trgppo")
class TRGPPOShape(CoefficientShape):
    """TRGPPO: PPO-Clip with a per-action band `[l(p), u(p)]` from the rollout probability `p`.

    Wang, He, Tan and Gan, "Trust Region-Guided Proximal Policy Optimization",
    NeurIPS 2019, arXiv 1901.10314: maximise `min(w A, clip(w, l_sa, u_sa) A)`
    where `l_sa`, `u_sa` are the smallest and largest ratios of action `a` that a
    policy within `KL(pi_old(.|s) || pi(.|s)) <= delta` can reach: wider for
    less likely actions, so they can be corrected faster. `g = 1` where
    `w > u` with A >= 0 or `w < l` with A < 0, else 0. The band is computed from
    the per-sample context `old_log_prob` by `trgppo_band`, which is exact for a
    discrete (categorical) policy, where it depends on `p = pi_old(a|s)` only.
    For a Gaussian policy the paper's band depends on the action's standardised
    distance from the old mean and on the action dimension (the authors reduce it
    to a one-dimensional problem and tabulate it), which `old_log_prob` does not
    determine: this shape is not TRGPPO for continuous actions (`trgppo_gaussian`
    is, from the standardised action). It declares
    `action_spaces = ("discrete",)` so the engine can refuse it for a Gaussian
    policy, and refuses `old_log_prob > 0` itself (a density, not a probability),
    but a density below 1 it cannot tell from a probability. Default
    `delta = 0.001`: the authors' discrete (Atari) setting in their code
    (github.com/wangyuhuix/TRGPPO, run.py, `kl2clip`).
    """

    params: ClassVar[Mapping[str, Param]] = {
        "delta": Param(0.001, 0.0, low_inclusive=False, search=(5e-4, 0.05), log=True,
                       help="KL radius of the trust region that sets each action's band"),
    }
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    context: ClassVar[tuple[str, ...]] = ("old_log_prob",)
    action_spaces: ClassVar[tuple[str, ...]] = ("discrete",)
    delta: float

    def band(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """`(l, u)` per sample, in `like`'s dtype."""
        old_log_prob = self.context_value("old_log_prob", like=like)
        if bool((old_log_prob > 0).any()):
            raise ValueError(
                f"shape {self.display_name()!r}: old_log_prob > 0 is a density, not a probability; "
                "its band is defined for discrete policies only"
            )
        return trgppo_band(old_log_prob, self.delta)

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        lower, upper = self.band(ratio)
        past = torch.where(advantage >= 0, ratio > upper, ratio < lower)
        return past.to(ratio.dtype)


def _bisect(excess, low: Tensor, high: Tensor, iterations: int) -> Tensor:
    """The root of an `excess` that is <= 0 at `low` and > 0 at `high`, elementwise."""
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        above = excess(middle) > 0
        high = torch.where(above, middle, high)
        low = torch.where(above, low, middle)
    return 0.5 * (low + high)


def gaussian_delta_for_eps(eps: float, dim: int) -> float:
    """The KL radius at which an action at the old mean gets the upper bound `1 + eps` (dimension d).

    At `z = 0` the largest ratio shrinks the variance only: `u = v^(-d/2)` with the
    variance ratio `v`, at KL `d/2 (log v + 1/v - 1)`; so `v = (1+eps)^(-2/d)`. The
    TRGPPO authors set delta this way from PPO's clip range (their `base_clip_upper`).
    """
    v = (1.0 + eps) ** (-2.0 / dim)
    return dim / 2.0 * (math.log(v) + 1.0 / v - 1.0)


def trgppo_gaussian_band(z: Tensor, delta: float, iterations: int = 100) -> tuple[Tensor, Tensor]:
    """TRGPPO's band `[l, u]` for a diagonal Gaussian policy, from the standardised action `z` ([..., d]).

    As the authors compute it (github.com/wangyuhuix/TRGPPO, KL2Clip_reduce.py): the
    d-dimensional problem is reduced to one dimension at `x = |z| / sqrt(d)` with KL
    radius `delta / d`, and `l, u` are the 1-D extremes raised to the power d. The
    1-D problem, old policy N(0, 1): extremes of `rho = log N(x; mu, sigma) - log N(x; 0, 1)`
    over `KL(N(0,1) || N(mu, sigma)) <= delta / d`. Its Lagrange conditions give a
    one-parameter curve, `mu = x t`, `sigma^2 = (1 - t)(1 + t x^2)`: t in (0, 1) for
    the largest ratio, t in (-1/x^2, 0) for the smallest; the KL grows away from t = 0
    along both, so each extreme is the root of `KL(t) = delta / d`, found by bisection
    in float64. Returns `[..., 1]` tensors (the ratios' shape) in `z`'s dtype.
    """
    dim = z.shape[-1]
    x2 = z.detach().double().pow(2).sum(-1, keepdim=True) / dim
    radius = delta / dim

    def variance(t: Tensor) -> Tensor:
        return (1.0 - t) * (1.0 + t * x2)

    def kl(t: Tensor) -> Tensor:
        v = variance(t)
        return 0.5 * v.log() + (1.0 + x2 * t * t) / (2.0 * v) - 0.5

    def log_ratio(t: Tensor) -> Tensor:
        v = variance(t)
        return -x2 * (1.0 - t) ** 2 / (2.0 * v) - 0.5 * v.log() + x2 / 2.0

    zero = torch.zeros_like(x2)
    largest = _bisect(lambda t: kl(t) - radius, zero, torch.ones_like(x2), iterations)
    # Smallest ratio: t from 0 down to -1/x^2 (where sigma -> 0 away from x); KL rises to +inf
    # there, and for x -> 0 long before -1e6, which bounds the search.
    edge = -torch.minimum(1.0 / x2.clamp_min(1e-300), torch.full_like(x2, 1e6))
    smallest = _bisect(lambda t: radius - kl(t), edge, zero, iterations)
    dtype = z.dtype
    lower = (dim * log_ratio(smallest)).exp()
    upper = (dim * log_ratio(largest)).exp()
    return lower.to(dtype), upper.to(dtype)


@register_shape("trgppo_gaussian")
class TRGPPOGaussianShape(CoefficientShape):
    """TRGPPO for a diagonal Gaussian policy: PPO-Clip with a per-action band from the standardised action.

    Wang, He, Tan and Gan, "Trust Region-Guided Proximal Policy Optimization",
    NeurIPS 2019, arXiv 1901.10314: maximise `min(w A, clip(w, l_sa, u_sa) A)`,
    `[l_sa, u_sa]` the extreme ratios of action `a` over policies within
    `KL(pi_old(.|s) || pi(.|s)) <= delta`. For a Gaussian policy they depend on the
    action's standardised offset `z = (a - loc_old) / scale_old` (per-sample context
    `old_action_z`: the ratios' shape with the action dimension d added, or
    replacing a last dimension of 1), through `|z|^2 / d` and d; computed by
    `trgppo_gaussian_band` with the authors' reduction to one dimension. The band
    is narrowest for an action at the old mean and wider for less likely actions.
    `delta` follows the authors' MuJoCo default: set from `eps` and d so that an
    action at the old mean gets `u = 1 + eps` (`gaussian_delta_for_eps`, their
    `base_clip_upper` with clip range 0.2). `g = 1` where `w > u` with A >= 0 or
    `w < l` with A < 0, else 0. In one dimension the band is the exact extreme;
    for d > 1 it is the authors' reduction: a diagonal Gaussian within the KL
    radius reaches it, but that no d-dimensional Gaussian goes further is their
    assumption, not checked here.
    """

    params: ClassVar[Mapping[str, Param]] = {
        "eps": Param(0.2, 0.0, low_inclusive=False, search=(0.05, 0.4),
                     help="upper bound 1 + eps for an action at the old mean; sets delta"),
    }
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    context: ClassVar[tuple[str, ...]] = ("old_action_z",)
    action_spaces: ClassVar[tuple[str, ...]] = ("continuous",)
    eps: float

    def band(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """`(l, u)` per sample, shaped like the ratios `like`, in its dtype."""
        z = self.context_value("old_action_z")
        if z.dim() > 0 and (*z.shape[:-1], 1) == tuple(like.shape):
            squeeze = False  # ratios [..., 1], z [..., d]
        elif z.dim() > 0 and tuple(z.shape[:-1]) == tuple(like.shape):
            squeeze = True  # ratios [...], z [..., d]
        else:
            raise ContextNotSetError(
                f"shape {self.display_name()!r}: context 'old_action_z' has shape {list(z.shape)}, "
                f"which is not the ratios' {list(like.shape)} with an action dimension added "
                f"(or replacing a last dimension of 1)"
            )
        delta = gaussian_delta_for_eps(self.eps, z.shape[-1])
        lower, upper = trgppo_gaussian_band(z, delta)
        if squeeze:
            lower, upper = lower.squeeze(-1), upper.squeeze(-1)
        return lower.to(like.dtype), upper.to(like.dtype)

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        lower, upper = self.band(ratio)
        past = torch.where(advantage >= 0, ratio > upper, ratio < lower)
        return past.to(ratio.dtype)
