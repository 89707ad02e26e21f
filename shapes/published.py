"""Published PPO variants as shapes, each with its reference and its published defaults.

Each docstring gives the published objective and the gate it implies; the
tests (`tests/test_shape_zoo.py`) compare every gate with the autograd
gradient of that objective on random inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from klip.shapes.base import (
    CoefficientShape,
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
