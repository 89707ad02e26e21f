"""Coefficient shapes: the gate `g(w, A)` that defines a PPO variant.

    from klip.shapes import CoefficientShape, register_shape, make_shape, available_shapes
"""

from klip.shapes.base import (
    CONTEXT_VARIABLES,
    CoefficientShape,
    Param,
    exact_kill_region,
    signed_distance_past_boundary,
)
from klip.shapes.builtin import (
    AnnealedClipShape,
    LearnedShape,
    LinearRampShape,
    NoGateShape,
    SigmoidShape,
    StepShape,
)
from klip.shapes.drift import DriftShape, register_drift
from klip.shapes.published import ClipHigherShape, RollbackShape, TruncateShape, dpo, spo
from klip.shapes.registry import (
    ENTRY_POINT_GROUP,
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
    "CONTEXT_VARIABLES",
    "ENTRY_POINT_GROUP",
    "AnnealedClipShape",
    "ClipHigherShape",
    "CoefficientShape",
    "DriftShape",
    "LearnedShape",
    "LinearRampShape",
    "NoGateShape",
    "Param",
    "RollbackShape",
    "SigmoidShape",
    "StepShape",
    "TruncateShape",
    "UnknownShapeError",
    "available_shapes",
    "dpo",
    "exact_kill_region",
    "get_shape_class",
    "load_shape",
    "load_shapes_from_file",
    "make_shape",
    "parse_param_assignments",
    "register_drift",
    "register_shape",
    "save_shape",
    "shape_from_dict",
    "signed_distance_past_boundary",
    "spo",
]
