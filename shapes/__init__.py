"""Coefficient shapes: the gate `g(w, A)` that defines a PPO variant.

    from klip.shapes import CoefficientShape, register_shape, make_shape, available_shapes
"""

from klip.shapes.base import CoefficientShape, Param, signed_distance_past_boundary
from klip.shapes.builtin import LearnedShape, LinearRampShape, NoGateShape, SigmoidShape, StepShape
from klip.shapes.registry import (
    ENTRY_POINT_GROUP,
    ShapePluginError,
    UnknownShapeError,
    available_shapes,
    get_shape_class,
    load_shape,
    load_shapes_from_file,
    make_shape,
    parse_param_assignments,
    register_shape,
    save_shape,
    shape_from_dict,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "CoefficientShape",
    "LearnedShape",
    "LinearRampShape",
    "NoGateShape",
    "Param",
    "ShapePluginError",
    "SigmoidShape",
    "StepShape",
    "UnknownShapeError",
    "available_shapes",
    "get_shape_class",
    "load_shape",
    "load_shapes_from_file",
    "make_shape",
    "parse_param_assignments",
    "register_shape",
    "save_shape",
    "shape_from_dict",
    "signed_distance_past_boundary",
]
