"""Where shapes are found: decorator, entry points, user files, JSON shape files."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import torch

from klip.shapes import builtin, published
from klip.shapes.base import SHAPE_FILE_FORMAT, CoefficientShape, Param
from klip.shapes.catalog import ENTRY_POINT_GROUP, unknown_shape_error
from klip.shapes.catalog import UnknownShapeError as UnknownShapeError  # defined without torch
from klip.shapes.drift import Drift, DriftShape, drift_shape
from klip.shapes.params import parse_param_assignments as parse_param_assignments  # as UnknownShapeError

_REGISTRY: dict[str, type[CoefficientShape]] = {}
_entry_points_loaded = False
_LOADED_FILES: dict[Path, list[str]] = {}
# Source text -> the names it registered, so an identical copy is not imported twice.
_LOADED_SOURCES: dict[bytes, list[str]] = {}

ShapeClass = TypeVar("ShapeClass", bound=type[CoefficientShape])


class ShapePluginError(ValueError):
    """A user's shape plugin failed to import; the message names the file and the exception."""


def register_shape(name: str, *, override: bool = False) -> Callable[[ShapeClass], ShapeClass]:
    """Class decorator: `@register_shape("my_gate")` makes `make_shape("my_gate")` work.

    Re-registering an existing name is refused unless `override=True`, so a
    plugin cannot silently replace `step` (and with it, PPO-Clip).
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"shape name {name!r} must be non-empty letters, digits, '_' or '-'")

    def decorator(cls: ShapeClass) -> ShapeClass:
        _ensure_builtins()  # so that a plugin cannot take a built-in name unnoticed
        if not (inspect.isclass(cls) and issubclass(cls, CoefficientShape)):
            raise TypeError(f"@register_shape({name!r}) needs a CoefficientShape subclass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and not override:
            raise ValueError(
                f"shape {name!r} is already registered (by {existing.__module__}."
                f"{existing.__qualname__}); pass override=True to replace it"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def register_drift(
    name: str,
    *,
    params: Mapping[str, Param | float] | None = None,
    gate_range: tuple[float, float] = (-math.inf, math.inf),
    override: bool = False,
) -> Callable[[Drift], type[DriftShape]]:
    """Function decorator: register the drift `phi(ratio, advantage, **params)` as a shape.

    Every argument of `phi` after the first two is a shape parameter: declared in `params` (a
    `Param`, or a number as shorthand for an unbounded `Param` with that default and no search
    range), or else taken from the function's default value. Returns the generated
    `DriftShape` subclass (the function stays reachable as its `phi` attribute); the name
    works everywhere a shape name does (`make_shape`, `--shape`, studies).
    """

    def decorator(phi: Drift) -> type[DriftShape]:
        return register_shape(name, override=override)(drift_shape(name, params=params,
                                                                    gate_range=gate_range)(phi))

    return decorator


def _ensure_builtins() -> None:
    """Register the built-in shapes (klip.shapes imports lazily), without replacing a shape a
    user registered with override=True; also after a test emptied the registry."""
    for module in (builtin, published):
        for value in list(vars(module).values()):
            if inspect.isclass(value) and issubclass(value, CoefficientShape) and value.name:
                _REGISTRY.setdefault(value.name, value)


def _load_entry_points() -> None:
    """Import shapes that pip-installed packages declare in the `klip.shapes` group.

    A broken plugin warns instead of breaking every command.
    """
    global _entry_points_loaded
    _ensure_builtins()
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as error:  # a third-party import can fail in any way
            warnings.warn(f"klip: could not load shape plugin {entry.value!r}: {error}", stacklevel=2)
            continue
        is_shape = inspect.isclass(loaded) and issubclass(loaded, CoefficientShape)
        if is_shape and loaded not in _REGISTRY.values():
            register_shape(entry.name)(loaded)


def available_shapes() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_shape_class(name: str) -> type[CoefficientShape]:
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_shape_error(name, sorted(_REGISTRY)) from None


def make_shape(name: str, **params: float) -> CoefficientShape:
    return get_shape_class(name)(**params)


def load_shapes_from_file(path: str | Path) -> list[str]:
    """Import a user's `.py` file; the shapes it registers become available by name.

    Returns the names the file added. This runs the user's own code, on purpose;
    shape JSON files, by contrast, never execute anything.
    """
    _load_entry_points()  # else the built-ins a plugin's import registers count as the file's
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shape plugin file not found: {path}")
    if path.suffix != ".py":
        raise ValueError(f"shape plugin must be a .py file, got {path}")
    resolved = path.resolve()
    if resolved in _LOADED_FILES:  # importing twice would re-register new class objects
        return _LOADED_FILES[resolved]
    # A copy of a loaded file (a run directory keeps one) is the same code: reuse its shapes.
    source = path.read_bytes()
    names = _LOADED_SOURCES.get(source)
    if names and all(name in _REGISTRY for name in names):
        _LOADED_FILES[resolved] = names
        return names
    module_name = f"klip_user_shapes_{abs(hash(resolved))}"
    before = set(_REGISTRY)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # user code may fail in any way, even sys.exit()
        # Forget the half-imported module and whatever it registered before failing.
        del sys.modules[module_name]
        for name in set(_REGISTRY) - before:
            del _REGISTRY[name]
        raise ShapePluginError(
            f"shape plugin {path} failed to import: {type(error).__name__}: {error}"
        ) from error
    _LOADED_FILES[resolved] = sorted(set(_REGISTRY) - before)
    _LOADED_SOURCES[source] = _LOADED_FILES[resolved]
    return _LOADED_FILES[resolved]


def shape_from_dict(data: dict[str, Any]) -> CoefficientShape:
    """Rebuild a shape from `CoefficientShape.to_dict()` output (plain data only)."""
    if not isinstance(data, dict) or "name" not in data:
        raise ValueError("not a klip shape description: expected an object with a 'name' field")
    version = data.get("klip_shape_format", SHAPE_FILE_FORMAT)
    if version != SHAPE_FILE_FORMAT:
        raise ValueError(f"unsupported shape file format {version!r} (expected {SHAPE_FILE_FORMAT})")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ValueError("shape 'params' must be an object of name -> number")
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"shape parameter {key!r} is not finite: {value}")
    shape = make_shape(str(data["name"]), **params)
    state = data.get("state", {})
    if not isinstance(state, dict):
        raise ValueError("shape 'state' must be an object of name -> list of numbers")
    if state:
        current = shape.state_dict()
        missing = sorted(set(current) - set(state))
        unexpected = sorted(set(state) - set(current))
        if missing or unexpected:
            raise ValueError(
                f"shape {shape.display_name()!r} state mismatch: missing {missing}, "
                f"unexpected {unexpected}"
            )
        tensors = {}
        for key, value in state.items():
            try:
                tensor = torch.tensor(value, dtype=current[key].dtype)
            except (TypeError, ValueError) as error:
                raise ValueError(f"shape state {key!r} is not numeric: {error}") from None
            if not torch.isfinite(tensor).all():
                raise ValueError(f"shape state {key!r} holds non-finite values")
            if tensor.shape != current[key].shape:
                raise ValueError(
                    f"shape state {key!r} has shape {list(tensor.shape)}, "
                    f"expected {list(current[key].shape)}"
                )
            tensors[key] = tensor
        shape.load_state_dict(tensors)
    return shape


def save_shape(shape: CoefficientShape, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(shape.to_dict(), indent=2) + "\n")
    return path


def load_shape(path: str | Path) -> CoefficientShape:
    """Load a shape JSON file. Only `json.loads` touches the content: no code runs."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"shape file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"shape file {path} is not valid JSON: {error}") from None
    try:
        return shape_from_dict(data)
    except ValueError as error:
        raise ValueError(f"shape file {path}: {error}") from None
