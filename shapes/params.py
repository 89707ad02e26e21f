"""A shape's declared hyper-parameters and the checks of their values, without torch.

`Param` and `check_param_values` are what `CoefficientShape.__init__` uses, so the command line
can refuse a bad `--shape-param` in the same words before it imports torch (`klip.shapes.catalog`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """A declared hyper-parameter of a shape: default, valid range, Optuna search range."""

    default: float
    low: float = -math.inf
    high: float = math.inf
    low_inclusive: bool = True
    high_inclusive: bool = True
    search: tuple[float, float] | None = None
    log: bool = False
    help: str = ""

    def describe_range(self) -> str:
        left = "[" if self.low_inclusive and math.isfinite(self.low) else "("
        right = "]" if self.high_inclusive and math.isfinite(self.high) else ")"
        return f"{left}{self.low:g}, {self.high:g}{right}"

    def contains(self, value: float) -> bool:
        if math.isnan(value):
            return False
        above = value >= self.low if self.low_inclusive else value > self.low
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below


def check_param_values(shape_name: str, params: Mapping[str, Param],
                       values: Mapping[str, Any]) -> dict[str, float]:
    """Every declared parameter's value (given, else its default) as a float, in declaration
    order; a `ValueError` naming the shape for an unknown name, a non-number or a value outside
    its range (the first one, in that order)."""
    unknown = sorted(set(values) - set(params))
    if unknown:
        known = ", ".join(params) or "none"
        raise ValueError(
            f"shape {shape_name!r}: unknown parameter(s) {', '.join(unknown)}; "
            f"its parameters are: {known}"
        )
    checked: dict[str, float] = {}
    for key, spec in params.items():
        value = values.get(key, spec.default)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"shape {shape_name!r}: parameter {key!r} must be a number, got {value!r}"
            ) from None
        if not spec.contains(value):
            raise ValueError(
                f"shape {shape_name!r}: parameter {key!r} = {value:g} is outside "
                f"its allowed range {spec.describe_range()}"
            )
        checked[key] = value
    return checked


def finite_number(raw: str) -> float:
    """A number as every klip command line reads one (Python's `float`, finite); a ValueError
    saying "is not a number" or "is not finite" otherwise, for the caller to name the option."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not finite")
    return value


def parse_param_assignments(assignments: list[str]) -> dict[str, float]:
    """`["tau=0.05", "eps=0.2"]` -> `{"tau": 0.05, "eps": 0.2}` with a clear error otherwise."""
    params: dict[str, float] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"shape parameter {item!r} must look like NAME=VALUE")
        try:
            params[key.strip()] = finite_number(raw)
        except ValueError as reason:
            raise ValueError(f"shape parameter {key!r}: {raw!r} {reason}") from None
    return params


__all__ = ["Param", "check_param_values", "finite_number", "parse_param_assignments"]
