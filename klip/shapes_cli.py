"""`klip shapes check`: the conformance suite (`klip.shapes.testing`) from the command line.

    klip shapes check my_gates.py          # every shape the plug-in file registers
    klip shapes check step sigmoid         # registered shapes by name
    klip shapes check --all                # every registered shape

One line per check (`PASS`/`FAIL`, shape, check, why), then a summary; exit status 1 when a
check fails, 2 for bad input (a plug-in that does not import, an unknown name).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_check_command(shape_commands: Any) -> argparse.ArgumentParser:
    check = shape_commands.add_parser(
        "check", help="run the conformance suite (klip.shapes.testing) on shapes, one line per check")
    check.add_argument("targets", nargs="*", metavar="FILE.py|NAME",
                       help="a plug-in file (checks every shape it registers) or a registered shape name")
    check.add_argument("--all", action="store_true", help="every registered shape")
    check.add_argument("--plugin", dest="plugins_after", type=Path, action="append", default=[],
                       metavar="FILE.py", help="a .py file registering shapes (loaded, not checked)")
    return check


def shapes_to_check(args: argparse.Namespace) -> list[str]:
    from klip.shapes import available_shapes, get_shape_class, load_shapes_from_file

    for plugin in [*args.plugin, *args.plugins_after]:
        load_shapes_from_file(plugin)
    names: list[str] = []
    for target in args.targets:
        if target.endswith(".py"):
            added = load_shapes_from_file(target)
            if not added:
                raise ValueError(f"shapes check: {target} registers no new shape")
            names += added
        else:
            get_shape_class(target)  # an unknown name: one line listing the known ones
            names.append(target)
    if args.all:
        names += available_shapes()
    if not names:
        raise ValueError("shapes check: name a plug-in FILE.py or a shape, or pass --all")
    return list(dict.fromkeys(names))


def run_shapes_check(args: argparse.Namespace) -> int:
    from klip.shapes.testing import CHECKS, check_shape

    names = shapes_to_check(args)
    width = max(map(len, names))
    check_width = max(map(len, CHECKS))
    failed = total = 0
    for name in names:
        for result in check_shape(name):
            total += 1
            failed += not result.passed
            status = "PASS" if result.passed else "FAIL"
            print(f"{status}  {name:<{width}}  {result.check:<{check_width}}  {result.message}", flush=True)
    print(f"{len(names)} shape(s), {total} checks: {total - failed} passed, {failed} failed")
    return 1 if failed else 0
