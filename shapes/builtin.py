"""Built-in gates: step (PPO-Clip), none, sigmoid, linear ramp, learned, annealed clip."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from klip.shapes.base import (
    CoefficientShape,
    Param,
    exact_kill_region,
    signed_distance_past_boundary,
)
from klip.shapes.registry import register_shape

if TYPE_CHECKING:
    import optuna

EPS = Param(0.2, 0.0, 1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4),
            help="trust-region radius: the band is [1-eps, 1+eps]")


@register_shape("step")
class StepShape(CoefficientShape):
    """`g = 1[kill]`: exactly PPO-Clip.

    The loss path decides in log space with the same bounds TorchRL's
    `ClipPPOLoss` clamps to (`log1p(+-eps)` of an `eps` buffer), so boundary
    decisions, and therefore gradients, match it bit for bit.
    """

    params: ClassVar[Mapping[str, Param]] = {"eps": EPS}
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    eps: float

    def __init__(self, **values: float) -> None:
        super().__init__(**values)
        # A buffer, not a float: `.double()` then converts it exactly as it converts
        # ClipPPOLoss's `clip_epsilon`, keeping the log bounds identical in float64.
        self.register_buffer("eps_tensor", torch.tensor(self.eps), persistent=False)

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        return (signed_distance_past_boundary(ratio, advantage, self.eps) > 0).to(ratio.dtype)

    def gate_from_log_ratio(self, log_ratio: Tensor, ratio: Tensor, advantage: Tensor) -> Tensor:
        eps = self.eps_tensor
        return exact_kill_region(log_ratio, ratio, advantage, eps, eps).to(log_ratio.dtype)


@register_shape("none")
class NoGateShape(CoefficientShape):
    """`g = 0`: the unconstrained importance-sampled surrogate."""

    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        return torch.zeros_like(ratio)


@register_shape("sigmoid")
class SigmoidShape(CoefficientShape):
    """`g = sigmoid(d / tau)` of the signed distance `d` past the kill boundary.

    Brakes samples already inside the band: at eps=0.2, tau=0.05 it removes
    about 12% of the gradient at w=1.1. Tends to `step` as tau -> 0.
    """

    params: ClassVar[Mapping[str, Param]] = {
        "eps": EPS,
        "tau": Param(0.05, 0.0, low_inclusive=False, search=(1e-3, 0.5), log=True,
                     help="temperature, in ratio units"),
    }
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    eps: float
    tau: float

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        return torch.sigmoid(signed_distance_past_boundary(ratio, advantage, self.eps) / self.tau)


@register_shape("linear_ramp")
class LinearRampShape(CoefficientShape):
    """`g = clamp(d / delta, 0, 1)`: starts at the kill boundary, full after `delta`.

    Leaves the band untouched; `step` as delta -> 0, `none` as delta -> inf.
    """

    params: ClassVar[Mapping[str, Param]] = {
        "eps": EPS,
        "delta": Param(0.1, 0.0, low_inclusive=False, search=(1e-3, 2.0), log=True,
                       help="ramp width, in ratio units"),
    }
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    eps: float
    delta: float

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        distance = signed_distance_past_boundary(ratio, advantage, self.eps)
        return (distance / self.delta).clamp(0.0, 1.0)


@register_shape("learned")
class LearnedShape(CoefficientShape):
    """A monotone piecewise-linear gate of the signed distance past the boundary.

    One curve for A >= 0 and one for A < 0, each given by its values at the
    fixed `KNOTS` (constant beyond the ends). The flat parameter vector
    (`get_vector`/`set_vector`, length `2 * len(KNOTS)`) is what black-box
    search tunes; it is a buffer, so it is saved in checkpoints and shape JSON.
    Monotonicity is imposed by a running maximum over knots, so every vector
    is a valid gate. Defaults equal `step` exactly wherever `d <= 0` or
    `d >= 1e-3`; on `0 < d < 1e-3` they ramp linearly from 0 to 1.
    """

    KNOTS: ClassVar[tuple[float, ...]] = (-0.2, -0.1, -0.05, 0.0, 1e-3, 0.05, 0.1, 0.2, 0.5)
    params: ClassVar[Mapping[str, Param]] = {"eps": EPS}
    eps: float

    def __init__(self, **values: float) -> None:
        super().__init__(**values)
        knots = torch.tensor(self.KNOTS)
        self.register_buffer("knots", knots, persistent=False)
        step_like = (knots > 0).to(knots.dtype)
        self.register_buffer("values", torch.stack([step_like, step_like.clone()]))

    def gate_bounds(self) -> tuple[float, float]:
        # The gate interpolates between running maxima of the knot values, so it stays
        # within their range: [0, 1] by default, whatever `set_vector` was given otherwise.
        return float(self.values.min()), float(self.values.max())

    @property
    def vector_size(self) -> int:
        return self.values.numel()

    def get_vector(self) -> Tensor:
        return self.values.detach().flatten().clone()

    def set_vector(self, vector: Tensor | list[float]) -> None:
        vector = torch.as_tensor(vector, dtype=self.values.dtype)
        if vector.numel() != self.vector_size:
            raise ValueError(
                f"learned shape: vector has {vector.numel()} entries, expected {self.vector_size}"
            )
        if not torch.isfinite(vector).all():
            raise ValueError("learned shape: vector entries must be finite")
        with torch.no_grad():
            self.values.copy_(vector.view_as(self.values))

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        distance = signed_distance_past_boundary(ratio, advantage, self.eps)
        curves = torch.cummax(self.values.to(ratio.dtype), dim=1).values
        knots = self.knots.to(ratio.dtype)
        clamped = distance.clamp(knots[0], knots[-1])
        right = torch.searchsorted(knots, clamped.contiguous()).clamp(1, len(knots) - 1)
        left = right - 1
        fraction = (clamped - knots[left]) / (knots[right] - knots[left])
        side = (advantage < 0).long()
        low_value = curves[side, left]
        high_value = curves[side, right]
        return low_value + fraction * (high_value - low_value)

    @classmethod
    def search_space(
        cls, trial: optuna.Trial, prefix: str = "", fixed: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        chosen = super().search_space(trial, prefix, fixed)
        for side in ("pos", "neg"):
            for index in range(len(cls.KNOTS)):
                key = f"{side}{index}"
                chosen[key] = trial.suggest_float(prefix + key, 0.0, 1.0)
        return chosen

    @classmethod
    def from_trial(
        cls, trial: optuna.Trial, prefix: str = "", fixed: Mapping[str, float] | None = None
    ) -> LearnedShape:
        chosen = cls.search_space(trial, prefix, fixed)
        shape = cls(**{key: chosen[key] for key in cls.params if key in chosen})
        vector = [chosen[f"{side}{i}"] for side in ("pos", "neg") for i in range(len(cls.KNOTS))]
        shape.set_vector(vector)
        return shape


@register_shape("annealed_clip")
class AnnealedClipShape(CoefficientShape):
    """PPO-Clip whose band narrows over training: `eps` goes linearly from `eps_start` to `eps_end`.

    A conditioned shape: it reads `progress` (fraction of training done, set by
    the trainer once per iteration), `eps(p) = eps_start + (eps_end - eps_start) * p`,
    and gates like `step` with that radius, decided in log space with the same
    operations, so at `eps_start == eps_end` it is bitwise the `step` gate. Not a
    published method; an example of conditioning (linear clip-range annealing
    is a common PPO option, e.g. Stable-Baselines3's schedulable `clip_range`).
    """

    params: ClassVar[Mapping[str, Param]] = {
        "eps_start": Param(0.2, 0.0, 1.0, low_inclusive=False, high_inclusive=False,
                           search=(0.05, 0.4), help="band radius at the start of training"),
        "eps_end": Param(0.1, 0.0, 1.0, low_inclusive=False, high_inclusive=False,
                         search=(0.01, 0.4), help="band radius at the end of training"),
    }
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    context: ClassVar[tuple[str, ...]] = ("progress",)
    eps_start: float
    eps_end: float
    progress: Tensor

    def __init__(self, **values: float) -> None:
        super().__init__(**values)
        # Buffers for the same reason as `step`'s: `.double()` converts them like the ratios.
        self.register_buffer("eps_start_tensor", torch.tensor(self.eps_start), persistent=False)
        self.register_buffer("eps_end_tensor", torch.tensor(self.eps_end), persistent=False)

    def current_eps(self) -> Tensor:
        """The band radius at the current `progress` (a 0-d tensor)."""
        start, end = self.eps_start_tensor, self.eps_end_tensor
        # `start + 0 * x` is exactly `start`: equal radii give step's bounds bit for bit.
        return start + (end - start) * self.progress.to(start.dtype)

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        distance = signed_distance_past_boundary(ratio, advantage, self.current_eps().to(ratio.dtype))
        return (distance > 0).to(ratio.dtype)

    def gate_from_log_ratio(self, log_ratio: Tensor, ratio: Tensor, advantage: Tensor) -> Tensor:
        eps = self.current_eps()
        return exact_kill_region(log_ratio, ratio, advantage, eps, eps).to(log_ratio.dtype)
