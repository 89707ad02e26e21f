"""Names and one-line summaries of the available shapes, without importing torch.

`klip shapes list` answers from here: the built-in shapes are read from the source of
`builtin.py` and `published.py` (their registered names and docstrings), entry-point shapes are named
without being imported. A test checks this against the registry.
"""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "klip.shapes"


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


__all__ = ["builtin_summaries", "entry_point_summaries", "shape_summaries"]
