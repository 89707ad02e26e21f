"""A shape plug-in, the README's `soft_knee`: check it with `klip shapes check examples/my_gates.py`,
train with it with `klip train --shape-plugin examples/my_gates.py --shape soft_knee`."""

from collections.abc import Mapping
from typing import ClassVar

from klip.shapes import CoefficientShape, Param, register_shape, signed_distance_past_boundary


@register_shape("soft_knee")
class SoftKnee(CoefficientShape):
    """Quadratic onset past the boundary, full brake after `width`."""

    params: ClassVar[Mapping[str, Param]] = {
        "eps": Param(0.2, 0.0, 1.0, low_inclusive=False, search=(0.05, 0.4)),
        "width": Param(0.1, 0.0, low_inclusive=False, search=(1e-3, 1.0), log=True),
    }
    gate_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def gate(self, ratio, advantage):
        d = signed_distance_past_boundary(ratio, advantage, self.eps)
        return (d / self.width).clamp(0, 1) ** 2
