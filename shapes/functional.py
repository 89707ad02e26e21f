"""A klip shape in anyone's PPO loop: the policy term as plain torch functions.

This module imports torch and `klip.shapes` only (no TorchRL, Lightning, gymnasium or
MuJoCo), so a CleanRL-style script can use a shape in place of its clipped loss::

    from klip.shapes import make_shape
    from klip.shapes.functional import policy_loss

    shape = make_shape("step", eps=args.clip_coef)   # `step` is PPO-Clip
    ...
    pg_loss = policy_loss(shape, logratio, mb_advantages, space="ratio")

With `step`, the gradient is PPO-Clip's: decided in log space (`space="log"`, the default)
it is bitwise TorchRL's `ClipPPOLoss`; decided in ratio space (`space="ratio"`) it is
bitwise the `torch.max(-A*w, -A*clamp(w, 1-eps, 1+eps))` of CleanRL, except at a rounding
tie outside the band (`A*w == A*clamp(w)` in floating point although `w != clamp(w)`),
where `torch.max` gives each term half the gradient (A/2 in all) and `step` gives 0 past
the bound A pushes towards (killed) or A past the other one (passed).
The loss *values* differ from a clipped loss's (`w*sg(A(1-g))` is 0 where PPO-Clip's
clipped term is `clip(w)*A`): compare gradients, not losses.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from klip.shapes.base import CoefficientShape

PolicyForm = Literal["effective", "kl"]
GateSpace = Literal["log", "ratio"]

__all__ = ["effective_advantage", "klip_objective", "policy_loss"]


def klip_objective(
    shape: CoefficientShape,
    log_ratio: Tensor,
    advantage: Tensor,
    *,
    form: PolicyForm = "effective",
    log_behaviour_weight: Tensor | None = None,
    space: GateSpace = "log",
) -> tuple[Tensor, Tensor]:
    """Per-sample KLip surrogate (to maximise) and the gate, from log-ratios and advantages.

    `"effective"`: `w * sg(A*(1-g))`; `"kl"`: `w*A + sg(beta) * log w` with
    `beta = -w*A*g`. Same gradient; the first is exact for gates of 0 or 1.
    The gate sees the (proximal) `log_ratio`; the surrogate is weighted by the
    behaviour ratio `exp(log_behaviour_weight)`, which defaults to the same.
    `space="log"` asks the shape's `gate_from_log_ratio` (TorchRL's decisions);
    `space="ratio"` its `gate(ratio, advantage)` (decisions on `w = exp(log_ratio)`,
    as scripts that clamp the ratio itself make them).
    """
    if space not in ("log", "ratio"):
        raise ValueError(f"space must be 'log' or 'ratio', got {space!r}")
    if log_behaviour_weight is None:
        log_behaviour_weight = log_ratio
    ratio = log_behaviour_weight.exp()
    with torch.no_grad():
        detached_log_ratio = log_ratio.detach()
        detached_ratio = (
            ratio.detach() if log_behaviour_weight is log_ratio else detached_log_ratio.exp()
        )
        if space == "log":
            gate = shape.gate_from_log_ratio(detached_log_ratio, detached_ratio, advantage)
        else:
            gate = shape.gate(detached_ratio, advantage)
        # Multiplicative on purpose: a gate of exactly 0 or 1 gives exactly A or 0.
        effective = advantage * (1 - gate)
        if not _bounded(shape) and not bool(torch.isfinite(effective).all()):
            # A ratio that underflowed (0 or subnormal) weighs its sample 0, but a gate that
            # divides by the ratio can make A(1-g) infinite there, and 0 * inf is NaN: such a
            # sample is killed (g = 1, no gradient). Nothing else changes: elsewhere a
            # non-finite value stays, for the divergence check to name. A gate with finite
            # bounds keeps A(1-g) finite, so it is spared the test, and a finite batch the rest.
            lost = ~torch.isfinite(effective) & (ratio.detach() < torch.finfo(ratio.dtype).tiny)
            gate = torch.where(lost, 1.0, gate)
            effective = torch.where(lost, 0.0, effective)
    if form == "effective":
        return ratio * effective, gate
    beta = -(detached_ratio * advantage * gate)
    return ratio * advantage + beta * log_ratio, gate


def _bounded(shape: Any) -> bool:
    """Whether the shape declares finite bounds for its gate values (`gate_bounds()`)."""
    bounds = getattr(shape, "gate_bounds", None)
    return bounds is not None and all(math.isfinite(bound) for bound in bounds())


@torch.no_grad()
def effective_advantage(
    shape: CoefficientShape, log_ratio: Tensor, advantage: Tensor, *, space: GateSpace = "log"
) -> Tensor:
    """`A * (1 - g)` per sample (detached): what each sample's gradient is scaled by."""
    _, gate = klip_objective(shape, log_ratio, advantage, space=space)
    return advantage * (1 - gate)


def policy_loss(
    shape: CoefficientShape,
    log_ratio: Tensor,
    advantage: Tensor,
    *,
    space: GateSpace = "log",
    form: PolicyForm = "effective",
) -> Tensor:
    """The policy loss to minimise, `mean(-w * sg(A (1 - g)))`: a clipped loss's replacement.

    `log_ratio = new_log_prob - old_log_prob` (with its graph), `advantage` detached and
    already normalised as the loop normalises it, of the same shape.
    """
    if log_ratio.shape != advantage.shape:
        raise ValueError(
            f"log_ratio {list(log_ratio.shape)} and advantage {list(advantage.shape)} must have "
            f"the same shape (a [batch] advantage against a [batch, 1] log-ratio would broadcast)"
        )
    objective, _ = klip_objective(shape, log_ratio, advantage.detach(), space=space, form=form)
    return (-objective).mean()
