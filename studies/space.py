"""Search spaces: from the shapes' own `Param(search=..., log=...)`, overridden by a file, pinned by --fix."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from klip.shapes.params import finite_number

if TYPE_CHECKING:  # klip.shapes imports torch: a search-space file or --fix is checked without it
    from klip.shapes import CoefficientShape, Param


class SearchSpaceError(ValueError):
    """A bad search-space file, --fix or parameter; the message names the parameter."""


@dataclass(frozen=True)
class Dimension:
    low: float
    high: float
    log: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The learned shape's vector is a buffer, not a `Param`; its entries are searched as
# pos0..posK, neg0..negK in [0, 1] (the gate's useful range; monotonicity is imposed
# by the shape itself, so every vector is valid).
VECTOR_SIDES = ("pos", "neg")


def vector_parameters(shape_class: type[CoefficientShape]) -> list[str]:
    knots = getattr(shape_class, "KNOTS", None)
    if knots is None or not hasattr(shape_class, "set_vector"):
        return []
    return [f"{side}{index}" for side in VECTOR_SIDES for index in range(len(knots))]


def declared_parameters(shape_class: type[CoefficientShape]) -> dict[str, Param]:
    """Every parameter a study may search or fix, with its valid range."""
    from klip.shapes import Param

    declared = dict(shape_class.params)
    for name in vector_parameters(shape_class):
        declared[name] = Param(0.0, search=(0.0, 1.0), help="learned gate value at a knot")
    return declared


def default_space(shape_class: type[CoefficientShape]) -> dict[str, Dimension]:
    return {
        name: Dimension(spec.search[0], spec.search[1], spec.log)
        for name, spec in declared_parameters(shape_class).items() if spec.search is not None
    }


def load_space_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SearchSpaceError(f"search-space file not found: {path}") from None
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise SearchSpaceError(f"search-space file {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise SearchSpaceError(
            f"search-space file {path} must map parameter names to {{low, high, log}} or [low, high]"
        )
    return data


def _parse_dimension(name: str, raw: Any, where: str) -> Dimension:
    if isinstance(raw, list | tuple) and len(raw) == 2:
        raw = {"low": raw[0], "high": raw[1]}
    if not isinstance(raw, dict) or not {"low", "high"} <= set(raw) or set(raw) - {"low", "high", "log"}:
        raise SearchSpaceError(f"{where}: parameter {name!r} needs low and high (and optionally log)")
    try:
        low, high = float(raw["low"]), float(raw["high"])
    except (TypeError, ValueError):
        raise SearchSpaceError(f"{where}: parameter {name!r} low and high must be numbers") from None
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{where}: parameter {name!r} log must be true or false")
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SearchSpaceError(f"{where}: parameter {name!r} needs finite low < high, got {low:g}, {high:g}")
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: parameter {name!r} is log-scaled, so low must be > 0")
    return Dimension(low, high, log)


def resolve_space(
    shape_name: str,
    overrides: Mapping[str, Any] | None = None,
    fixed: Mapping[str, float] | None = None,
    overrides_source: str = "search space",
) -> tuple[dict[str, Dimension], dict[str, float]]:
    """The searched dimensions and the pinned values of a study, validated against the shape."""
    from klip.shapes import get_shape_class

    shape_class = get_shape_class(shape_name)
    declared = declared_parameters(shape_class)
    space = default_space(shape_class)
    for name, raw in (overrides or {}).items():
        if name not in declared:
            raise SearchSpaceError(
                f"{overrides_source}: shape {shape_name!r} has no parameter {name!r} "
                f"(its parameters: {', '.join(declared) or 'none'})"
            )
        dimension = _parse_dimension(name, raw, overrides_source)
        spec = declared[name]
        if not (spec.contains(dimension.low) and spec.contains(dimension.high)):
            raise SearchSpaceError(
                f"{overrides_source}: range [{dimension.low:g}, {dimension.high:g}] of {name!r} "
                f"leaves its allowed range {spec.describe_range()}"
            )
        space[name] = dimension
    pinned: dict[str, float] = {}
    for name, value in (fixed or {}).items():
        if name in (overrides or {}):
            dimension = space[name]
            raise SearchSpaceError(
                f"--fix {name}={value:g} contradicts {overrides_source}, which searches {name} in "
                f"[{dimension.low:g}, {dimension.high:g}]; give {name} in one of them only"
            )
        if name not in declared:
            raise SearchSpaceError(
                f"--fix: shape {shape_name!r} has no parameter {name!r} "
                f"(its parameters: {', '.join(declared) or 'none'})"
            )
        if not declared[name].contains(value):
            raise SearchSpaceError(
                f"--fix {name}={value:g} is outside its allowed range {declared[name].describe_range()}"
            )
        pinned[name] = float(value)
        space.pop(name, None)
    if not space:
        raise SearchSpaceError(f"shape {shape_name!r} has nothing left to search (all parameters fixed)")
    return space, pinned


def parse_fix(assignments: list[str]) -> dict[str, float]:
    """`--fix NAME=VALUE` items -> values (numbers as `klip train --shape-param` reads them:
    Python's float, finite); a parameter fixed twice is refused, even to the same value."""
    values: dict[str, float] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SearchSpaceError(f"--fix {item!r} must look like NAME=VALUE")
        if name in values:
            raise SearchSpaceError(f"--fix {name} is given more than once")
        try:
            values[name] = finite_number(raw)
        except ValueError as reason:
            raise SearchSpaceError(f"--fix {name}={raw!r} {reason}") from None
    return values


def build_shape_from_values(shape_name: str, values: Mapping[str, float]) -> CoefficientShape:
    """The shape of one trial: declared params by name, the learned vector from its entries."""
    from klip.shapes import get_shape_class

    shape_class = get_shape_class(shape_name)
    shape = shape_class(**{key: value for key, value in values.items() if key in shape_class.params})
    vector_names = vector_parameters(shape_class)
    if vector_names:
        default_vector = shape.get_vector().tolist()  # type: ignore[operator]
        vector = [float(values.get(name, default)) for name, default in zip(vector_names, default_vector,
                                                                           strict=True)]
        shape.set_vector(vector)  # type: ignore[operator]
    return shape


def default_point(shape_name: str, space: Mapping[str, Dimension]) -> dict[str, float]:
    """The shape's default values of the searched dimensions, clipped into their ranges.

    CMA-ES starts its search distribution here, so a discovery starts from the shape's
    defaults (for `learned`: PPO-Clip's step gate) instead of the middle of the box.
    """
    from klip.shapes import get_shape_class

    shape = get_shape_class(shape_name)()
    defaults: dict[str, float] = {name: float(getattr(shape, name)) for name in type(shape).params}
    vector_names = vector_parameters(type(shape))
    if vector_names:
        defaults.update(zip(vector_names, shape.get_vector().tolist(), strict=True))  # type: ignore[operator]
    return {name: min(max(defaults[name], dimension.low), dimension.high)
            for name, dimension in space.items()}


def grid_points(space: Mapping[str, Dimension], points_per_dimension: int) -> dict[str, list[float]]:
    """Evenly spaced values per dimension (geometrically for log dimensions)."""
    import numpy as np

    grid: dict[str, list[float]] = {}
    for name, dimension in space.items():
        if dimension.log:
            values = np.geomspace(dimension.low, dimension.high, points_per_dimension)
        else:
            values = np.linspace(dimension.low, dimension.high, points_per_dimension)
        grid[name] = [float(value) for value in values]
    return grid


__all__ = [
    "Dimension",
    "SearchSpaceError",
    "build_shape_from_values",
    "declared_parameters",
    "default_space",
    "grid_points",
    "load_space_file",
    "parse_fix",
    "resolve_space",
    "vector_parameters",
]
