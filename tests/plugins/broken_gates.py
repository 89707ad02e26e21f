"""Four deliberately broken shapes: `klip shapes check` must name each one's failure in one line.

- `naive_sigmoid`: `exp(x) / (1 + exp(x))` overflows to inf / inf = NaN far past the band.
- `loose_ramp`: its width is a constructor argument that `params` does not declare, so it is
  neither validated, searched nor saved.
- `forgetful_brake`: adapts after each rollout but keeps that state in a plain attribute,
  which `to_dict` does not save.
- `peak_watch`: notes the largest ratio it has gated in an attribute, changing itself in `gate`;
  a population evaluates the agents whose shapes are identical in one call, so what one agent's
  shape notes is not its own.
"""

from collections.abc import Mapping
from typing import ClassVar

from klip.shapes import CoefficientShape, Param, register_shape, signed_distance_past_boundary

EPS = Param(0.2, 0.0, 1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4))


@register_shape("naive_sigmoid")
class NaiveSigmoid(CoefficientShape):
    """sigmoid(d / tau) written as exp(x) / (1 + exp(x)): NaN once exp overflows."""

    params: ClassVar[Mapping[str, Param]] = {
        "eps": EPS, "tau": Param(0.05, 0.0, low_inclusive=False, search=(1e-3, 0.5), log=True)}
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def gate(self, ratio, advantage):
        x = signed_distance_past_boundary(ratio, advantage, self.eps) / self.tau
        return x.exp() / (1 + x.exp())


@register_shape("loose_ramp")
class LooseRamp(CoefficientShape):
    """linear_ramp whose width is an undeclared constructor argument."""

    params: ClassVar[Mapping[str, Param]] = {"eps": EPS}
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __init__(self, width: float = 0.1, **values: float) -> None:
        super().__init__(**values)
        self.width = width

    def gate(self, ratio, advantage):
        return (signed_distance_past_boundary(ratio, advantage, self.eps) / self.width).clamp(0, 1)


@register_shape("forgetful_brake")
class ForgetfulBrake(CoefficientShape):
    """step whose brake adapts to the clip fraction, kept in a plain attribute (not saved)."""

    params: ClassVar[Mapping[str, Param]] = {"eps": EPS}
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __init__(self, **values: float) -> None:
        super().__init__(**values)
        self.strength = 1.0

    def update_after_rollout(self, stats: Mapping[str, float]) -> None:
        self.strength = 0.5 if stats["clip_fraction"] > 0.05 else 1.0

    def gate(self, ratio, advantage):
        kill = signed_distance_past_boundary(ratio, advantage, self.eps) > 0
        return kill.to(ratio.dtype) * self.strength



@register_shape("peak_watch")
class PeakWatch(CoefficientShape):
    """step that notes the largest ratio it has gated (to log it), in a plain attribute."""

    params: ClassVar[Mapping[str, Param]] = {"eps": EPS}
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __init__(self, **values: float) -> None:
        super().__init__(**values)
        self.largest_ratio = 0.0

    def gate(self, ratio, advantage):
        self.largest_ratio = max(self.largest_ratio, float(ratio.max()))
        return (signed_distance_past_boundary(ratio, advantage, self.eps) > 0).to(ratio.dtype)
