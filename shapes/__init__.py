"""Coefficient shapes: the gate `g(w, A)` that defines a PPO variant.

    from klip.shapes import CoefficientShape, register_shape, make_shape, available_shapes
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from klip.shapes.base import (
        CONTEXT_VARIABLES,
        CoefficientShape,
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
    from klip.shapes.catalog import UnknownShapeError
    from klip.shapes.drift import DriftShape
    from klip.shapes.params import Param, parse_param_assignments
    from klip.shapes.published import ClipHigherShape, RollbackShape, TruncateShape, dpo, spo
    from klip.shapes.registry import (
        ENTRY_POINT_GROUP,
        ShapePluginError,
        available_shapes,
        get_shape_class,
        load_shape,
        load_shapes_from_file,
        make_shape,
        register_drift,
        register_shape,
        save_shape,
        shape_from_dict,
    )

# Imported on first use, so that `klip shapes list` and `klip --help` need no torch
# (nor `Param`, `parse_param_assignments` and `UnknownShapeError`: they are defined without it).
_LAZY = {
    **dict.fromkeys(["CONTEXT_VARIABLES", "CoefficientShape", "exact_kill_region",
                     "signed_distance_past_boundary"], "klip.shapes.base"),
    "Param": "klip.shapes.params",
    "parse_param_assignments": "klip.shapes.params",
    "UnknownShapeError": "klip.shapes.catalog",
    **dict.fromkeys(["AnnealedClipShape", "LearnedShape", "LinearRampShape", "NoGateShape",
                     "SigmoidShape", "StepShape"], "klip.shapes.builtin"),
    "DriftShape": "klip.shapes.drift",
    **dict.fromkeys(["ClipHigherShape", "RollbackShape", "TruncateShape", "dpo", "spo"],
                    "klip.shapes.published"),
}

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
    "ShapePluginError",
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


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = _LAZY.get(name, "klip.shapes.registry")
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'klip.shapes' has no attribute {name!r}")
