"""What the available shapes are called and declare, without importing torch.

`klip shapes list` answers from here: the built-in shapes are read from the source of
`builtin.py` and `published.py` (their registered names and docstrings), entry-point shapes are named
without being imported. A test checks this against the registry.

The command line also checks a shape name and its parameter values here before it imports torch,
so that a typo is refused within a second: the built-in shapes' declarations (their `Param`s and
action spaces) are copied into `declared.py`, which `scripts/generate_docs.py` writes from the
registry (and `--check`s). Only the built-ins are known here: with a pip-installed shape plug-in,
or once the registry is imported (a user's `register_shape`, a `--shape-plugin` file), the
registry answers instead.
"""

from __future__ import annotations

import ast
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from klip.shapes.params import Param, check_param_values

ENTRY_POINT_GROUP = "klip.shapes"


class UnknownShapeError(KeyError, ValueError):
    """Raised for a shape name nobody registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def unknown_shape_error(name: str, known: list[str]) -> UnknownShapeError:
    return UnknownShapeError(
        f"unknown shape {name!r}; registered shapes: {', '.join(known)} "
        f"(a shape from your own file needs --shape-plugin FILE.py)"
    )


class Declared(Protocol):
    """What a shape declares: a registered class, or a built-in's `ShapeDeclaration`."""

    @property
    def params(self) -> Mapping[str, Param]: ...

    @property
    def action_spaces(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ShapeDeclaration:
    """A built-in shape's declarations, as its class makes them (`declared.py`)."""

    params: Mapping[str, Param]
    action_spaces: tuple[str, ...]


def _builtins_alone() -> bool:
    """Whether the registry holds the built-in shapes and nothing else (it is not imported yet,
    and no installed package declares a shape)."""
    return "klip.shapes.registry" not in sys.modules and not entry_points(group=ENTRY_POINT_GROUP)


def shape_declaration(name: str) -> Declared:
    """What shape `name` declares; raises `UnknownShapeError` as `get_shape_class` does.

    A built-in shape's comes from `declared.py` (no torch) while the registry holds the
    built-ins alone; otherwise the registry answers with the class."""
    if _builtins_alone():
        from klip.shapes.declared import BUILTIN_SHAPES

        if name not in BUILTIN_SHAPES:
            raise unknown_shape_error(name, sorted(BUILTIN_SHAPES))
        return BUILTIN_SHAPES[name]
    from klip.shapes.registry import get_shape_class

    return get_shape_class(name)


def known_shapes() -> list[str]:
    """`available_shapes()`, without torch while the registry holds the built-ins alone."""
    if _builtins_alone():
        from klip.shapes.declared import BUILTIN_SHAPES

        return sorted(BUILTIN_SHAPES)
    from klip.shapes.registry import available_shapes

    return available_shapes()


def check_shape(name: str, values: Mapping[str, Any]) -> None:
    """Raise what `make_shape(name, **values)` raises for an unknown name or a bad parameter
    value (the same error, in the same words); without torch for a built-in shape, whose
    constructor checks nothing but its declared `Param`s. Other shapes are built."""
    declared = shape_declaration(name)
    if isinstance(declared, ShapeDeclaration):
        check_param_values(name, declared.params, values)
    else:
        from klip.shapes.registry import make_shape

        make_shape(name, **values)


def _python(value: Any) -> str:
    """`value` as Python source that evaluates to it (`math.inf` for infinities)."""
    if isinstance(value, float) and math.isinf(value):
        return "math.inf" if value > 0 else "-math.inf"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_python, value)) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def declarations_source() -> str:
    """The text of `declared.py`: every built-in shape's `Param`s and action spaces, read from the
    registry (imports torch; `scripts/generate_docs.py` writes and checks the file)."""
    from klip.shapes import builtin, published
    from klip.shapes.registry import get_shape_class

    body = []
    defaults = Param(0.0)
    for name in sorted(builtin_summaries()):
        cls = get_shape_class(name)
        assert cls.__module__ in (builtin.__name__, published.__name__), name
        body += [f"    {name!r}: ShapeDeclaration(", "        params={"]
        for key, spec in cls.params.items():
            assert type(spec) is Param, (name, key)
            arguments = [_python(spec.default)] + [
                f"{field.name}={_python(getattr(spec, field.name))}" for field in fields(Param)
                if field.name not in ("default", "help")
                and getattr(spec, field.name) != getattr(defaults, field.name)]
            body.append(f"            {key!r}: Param({', '.join(arguments)}),")
        body += ["        },", f"        action_spaces={_python(tuple(cls.action_spaces))},", "    ),"]
    lines = [
        "# ruff: noqa: E501",
        '"""The built-in shapes\' declarations, for checks without torch (`klip.shapes.catalog`).',
        "",
        "Generated from the registry by `scripts/generate_docs.py`; do not edit. The parameters\'",
        "help texts are left out (`klip shapes show NAME` prints them).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        *(["import math", ""] if any("math.inf" in line for line in body) else []),
        "from klip.shapes.catalog import ShapeDeclaration",
        "from klip.shapes.params import Param",
        "",
        "BUILTIN_SHAPES: dict[str, ShapeDeclaration] = {",
        *body,
        "}",
        "",
    ]
    return "\n".join(lines)


BUILTIN_MODULES = ("builtin.py", "published.py")
# The decorators that name a built-in shape (`klip.shapes.base.named`, `klip.shapes.drift.drift_shape`).
REGISTERING_DECORATORS = ("named", "drift_shape")


def builtin_summaries() -> dict[str, str]:
    """Built-in shape name -> first line of its docstring (classes and registered drifts)."""
    summaries: dict[str, str] = {}
    for module in BUILTIN_MODULES:
        tree = ast.parse((Path(__file__).parent / module).read_text())
        for node in tree.body:
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                continue
            for decorator in node.decorator_list:
                if (isinstance(decorator, ast.Call)
                        and getattr(decorator.func, "id", "") in REGISTERING_DECORATORS
                        and decorator.args and isinstance(decorator.args[0], ast.Constant)):
                    docstring = ast.get_docstring(node) or ""
                    summaries[str(decorator.args[0].value)] = (
                        docstring.splitlines()[0] if docstring else "")
    return summaries


def entry_point_summaries() -> dict[str, str]:
    """Shapes pip-installed packages declare, named by where they live (not imported)."""
    return {entry.name: f"(from {entry.value})" for entry in entry_points(group=ENTRY_POINT_GROUP)}


def shape_summaries() -> dict[str, str]:
    return dict(sorted({**entry_point_summaries(), **builtin_summaries()}.items()))


__all__ = [
    "ShapeDeclaration",
    "UnknownShapeError",
    "builtin_summaries",
    "check_shape",
    "declarations_source",
    "entry_point_summaries",
    "known_shapes",
    "shape_declaration",
    "shape_summaries",
    "unknown_shape_error",
]
