"""Built-in gates: step (PPO-Clip), none, sigmoid, linear ramp, learned (two forms), annealed clip."""

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


SIDES = ("pos", "neg")


def _increment_params(prefix: str = "") -> dict[str, Param]:
    """The coordinates of one increments gate: per side a base, a jump and one rise per segment."""
    when = f" ({prefix.rstrip('_')} of the inner loop)" if prefix else ""
    coordinates: dict[str, Param] = {}
    for side in SIDES:
        sign = "A >= 0" if side == "pos" else "A < 0"
        coordinates[f"{prefix}{side}_base"] = Param(
            0.0, -10.0, 10.0, search=(-1.0, 0.0),
            help=f"{sign}: gate at and below the first breakpoint (< 0 amplifies){when}")
        coordinates[f"{prefix}{side}_jump"] = Param(
            1.0, 0.0, 10.0, search=(0.0, 1.5),
            help=f"{sign}: jump where PPO-Clip kills (1: step; > 1 rolls back){when}")
        for index in range(len(LearnedIncrementsShape.BREAKPOINTS) - 1):
            coordinates[f"{prefix}{side}_inc{index}"] = Param(
                0.0, 0.0, 10.0, search=(0.0, 0.5),
                help=f"{sign}: rise of the gate over segment {index}{when}")
    return coordinates


@register_shape("learned_increments")
class LearnedIncrementsShape(CoefficientShape):
    """A learned gate of non-negative increments plus PPO-Clip's jump: can roll back and amplify.

    Per sign of A, a function of the signed distance `d` past the kill boundary
    (`signed_distance_past_boundary`, band `[1-eps, 1+eps]`):
    `g(d) = base + sum_i inc_i * clamp((d - b_i) / (b_{i+1} - b_i), 0, 1) + jump * 1[kill]`
    over the evenly spaced `BREAKPOINTS` b_0 < ... < b_8 (-0.4 to 0.4 by 0.1: four
    segments inside the band, four past it), constant beyond them. Each `inc_i`
    moves one segment's slope (everything after it shifts by it), so a random
    point is a ramp whose steepness varies along the curve, not "a floor plus a
    step"; `base` (< 0: amplifies) sets the level, `jump` (> 1: rolls back) is
    added exactly on PPO-Clip's kill region, decided as `step` decides it. Every
    coordinate vector gives a finite gate, non-decreasing in `d` (up to the
    ulp-wide disagreement of the ratio-space ramp and the log-space kill test),
    within `gate_bounds()`. Coordinates are ordinary parameters (`pos_base`,
    `pos_jump`, `pos_inc0`.. and `neg_...`), so studies search them like any
    other; `step_vector()` (the defaults) is `step` bit for bit. PPO-RB is
    `jump = 1 + alpha`; SPO at eps = 0.2 is `base = -1`, `inc_i = 0.5`, `jump = 0`
    on `|d| <= 0.4` (constant beyond).
    """

    BREAKPOINTS: ClassVar[tuple[float, ...]] = (-0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4)
    PREFIXES: ClassVar[tuple[str, ...]] = ("",)
    params: ClassVar[Mapping[str, Param]] = {}  # set below, once BREAKPOINTS exists
    eps: float

    def __init__(self, **values: float) -> None:
        super().__init__(**values)
        self.register_buffer("eps_tensor", torch.tensor(self.eps), persistent=False)  # as step's
        self.register_buffer("breakpoints", torch.tensor(self.BREAKPOINTS, dtype=torch.float64),
                             persistent=False)
        curves, jumps = [], []
        for prefix in self.PREFIXES:
            curves.append([self.knot_values(prefix, side) for side in SIDES])
            jumps.append([self.hparams[f"{prefix}{side}_jump"] for side in SIDES])
        # [prefixes, sides, breakpoints] and [prefixes, sides]: derived from the parameters.
        self.register_buffer("curves", torch.tensor(curves, dtype=torch.float64), persistent=False)
        self.register_buffer("jumps", torch.tensor(jumps, dtype=torch.float64), persistent=False)

    def knot_values(self, prefix: str, side: str) -> list[float]:
        """The gate (without the jump) at each breakpoint: base plus the running sum of increments."""
        values = [self.hparams[f"{prefix}{side}_base"]]
        for index in range(len(self.BREAKPOINTS) - 1):
            values.append(values[-1] + self.hparams[f"{prefix}{side}_inc{index}"])
        return values

    @classmethod
    def coordinate_names(cls) -> list[str]:
        """The searched coordinates (every parameter but `eps`), in vector order."""
        return [key for key in cls.params if key != "eps"]

    @classmethod
    def step_vector(cls) -> dict[str, float]:
        """The coordinates that make this gate `step` exactly: base 0, increments 0, jump 1."""
        return {key: (1.0 if key.endswith("_jump") else 0.0) for key in cls.coordinate_names()}

    def get_vector(self) -> Tensor:
        return torch.tensor([self.hparams[key] for key in self.coordinate_names()], dtype=torch.float64)

    @classmethod
    def from_vector(cls, vector: Tensor | list[float], **params: float) -> LearnedIncrementsShape:
        values = torch.as_tensor(vector, dtype=torch.float64).flatten().tolist()
        names = cls.coordinate_names()
        if len(values) != len(names):
            raise ValueError(
                f"shape {cls.display_name()!r}: vector has {len(values)} entries, expected {len(names)}"
            )
        return cls(**dict(zip(names, values, strict=True)), **params)

    def gate_bounds(self) -> tuple[float, float]:
        # Non-decreasing in d: the least value is the base, the largest the last knot plus the jump.
        low = float(self.curves[..., 0].min())
        high = float((self.curves[..., -1] + self.jumps).max())
        return low, high

    def _curve(self, index: int, distance: Tensor, kill: Tensor, advantage: Tensor) -> Tensor:
        dtype = distance.dtype
        knots = self.breakpoints.to(dtype)
        values = self.curves[index].to(dtype)
        clamped = distance.clamp(knots[0], knots[-1])
        right = torch.searchsorted(knots, clamped.contiguous()).clamp(1, len(knots) - 1)
        left = right - 1
        fraction = (clamped - knots[left]) / (knots[right] - knots[left])
        side = (advantage < 0).long()
        low_value = values[side, left]
        ramp = low_value + fraction * (values[side, right] - low_value)
        # With base 0, increments 0 and jump 1 this is 0 + 1 * kill: step's gate, bit for bit.
        return ramp + self.jumps[index].to(dtype)[side] * kill.to(dtype)

    def _combine(self, distance: Tensor, kill: Tensor, advantage: Tensor) -> Tensor:
        return self._curve(0, distance, kill, advantage)

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        distance = signed_distance_past_boundary(ratio, advantage, self.eps)
        return self._combine(distance, distance > 0, advantage)

    def gate_from_log_ratio(self, log_ratio: Tensor, ratio: Tensor, advantage: Tensor) -> Tensor:
        eps = self.eps_tensor
        kill = exact_kill_region(log_ratio, ratio, advantage, eps, eps)
        distance = signed_distance_past_boundary(ratio, advantage, self.eps)
        return self._combine(distance.to(log_ratio.dtype), kill, advantage)


LearnedIncrementsShape.params = {"eps": EPS, **_increment_params()}


@register_shape("learned_increments_epoch")
class LearnedIncrementsEpochShape(LearnedIncrementsShape):
    """Two `learned_increments` gates, one for the start of the inner loop and one for its end.

    A conditioned shape: it reads `epoch_progress` (e = epoch / epochs, set by the
    engine before each epoch) and gates with `g_early + e * (g_late - g_early)`, so
    the first epoch uses the `early_...` coordinates and the gate moves linearly
    towards the `late_...` ones (reached as e -> 1; the last of E epochs has
    e = (E-1)/E). Equal early and late coordinates give exactly that one gate
    (the difference is exactly 0), so `step_vector()` is `step` bit for bit at
    every epoch. The natural way for a gate to depend on the number of epochs.
    """

    PREFIXES: ClassVar[tuple[str, ...]] = ("early_", "late_")
    context: ClassVar[tuple[str, ...]] = ("epoch_progress",)
    epoch_progress: Tensor

    def _combine(self, distance: Tensor, kill: Tensor, advantage: Tensor) -> Tensor:
        epoch = self.context_value("epoch_progress", like=distance)
        early = self._curve(0, distance, kill, advantage)
        late = self._curve(1, distance, kill, advantage)
        return early + epoch * (late - early)


LearnedIncrementsEpochShape.params = {
    "eps": EPS, **_increment_params("early_"), **_increment_params("late_")}
