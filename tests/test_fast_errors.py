"""Input errors about a shape or a task are told before torch is imported (within about a second).

Not a timing: each command runs in a fresh interpreter, which then reports whether `torch` was
imported. The messages and exit codes are those the full checks give (`resolve_config`,
`get_shape_class`, `CoefficientShape.__init__`), and the built-in shapes' declarations that the
quick checks read (`klip.shapes.declared`) are those of the registered classes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest

from klip.shapes import available_shapes, get_shape_class, make_shape
from klip.shapes.catalog import ShapeDeclaration, builtin_summaries, check_shape, shape_declaration
from klip.shapes.declared import BUILTIN_SHAPES

UNKNOWN_SHAPE = "unknown shape 'nosuch'; registered shapes: "
UNKNOWN_PARAM = "shape 'sigmoid': unknown parameter(s) nosuch; its parameters are: eps, tau"
UNKNOWN_TASK = "unknown task 'NoSuch-v4'; known tasks: HalfCheetah-v4"
STUDY = ["study", "run", "--study-name", "s", "--storage", "sqlite:///s.db", "--steps-per-task", "2048",
         "--trials", "1"]

COMMANDS = {
    "train unknown shape": (["train", "--shape", "nosuch"], f"klip: error: {UNKNOWN_SHAPE}"),
    "train unknown shape parameter": (["train", "--shape", "sigmoid", "--shape-param", "nosuch=1"],
                                      f"klip: error: {UNKNOWN_PARAM}"),
    "train shape parameter out of range": (
        ["train", "--shape", "sigmoid", "--shape-param", "eps=2"],
        "klip: error: shape 'sigmoid': parameter 'eps' = 2 is outside its allowed range (0, 1)"),
    "train discrete-only shape": (
        ["train", "--shape", "trgppo"],
        "klip: error: shape 'trgppo' is defined for discrete actions only; Hopper-v4 has continuous"),
    "train clip_eps of a shape without eps": (
        ["train", "--shape", "none", "--clip-eps", "0.1"],
        "klip: error: clip_eps sets a shape's eps, and shape 'none' has no eps; drop --clip-eps"),
    "train unknown task": (["train", "--task", "NoSuch-v4"], f"klip: error: {UNKNOWN_TASK}"),
    "study run unknown shape": ([*STUDY, "--shape", "nosuch", "--tasks", "Hopper-v4"],
                                f"klip: error: {UNKNOWN_SHAPE}"),
    "study run unknown task": ([*STUDY, "--shape", "sigmoid", "--tasks", "NoSuch-v4"],
                               f"klip: error: {UNKNOWN_TASK}"),
    "compare unknown shape entry": (
        ["compare", "--losses", "step,sigmoid:tau=0.03,nosuch", "--tasks", "Hopper-v4", "--out", "g"],
        "klip: error: unknown entry 'nosuch'; an entry is a loss (clip, kl_fixed, kl_adaptive), "
        "a shape (annealed_clip,"),
    "compare unknown shape parameter": (
        ["compare", "--losses", "sigmoid:nosuch=1", "--tasks", "Hopper-v4", "--out", "g"],
        f"klip: error: entry 'sigmoid:nosuch=1': {UNKNOWN_PARAM}"),
    "compare unknown task": (["compare", "--losses", "clip", "--tasks", "NoSuch-v4", "--out", "g"],
                             f"klip: error: entry 'clip' on NoSuch-v4: {UNKNOWN_TASK}"),
    "shapes show unknown shape": (["shapes", "show", "nosuch"], f"klip: error: {UNKNOWN_SHAPE}"),
}


def run_klip(argv: list[str], cwd: Path) -> tuple[int, str, bool]:
    """`klip ARGV` in a fresh interpreter: exit code, stderr, and whether torch was imported."""
    code = ("import json, sys\n"
            "from klip.cli import main\n"
            f"code = main({argv!r})\n"
            "print(json.dumps([code, 'torch' in sys.modules]))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    exit_code, torch_imported = json.loads(result.stdout.strip().splitlines()[-1])
    return exit_code, result.stderr, torch_imported


@pytest.mark.parametrize("case", list(COMMANDS))
def test_input_error_is_told_without_importing_torch(case: str, tmp_path: Path) -> None:
    argv, message = COMMANDS[case]
    exit_code, stderr, torch_imported = run_klip(argv, tmp_path)
    assert exit_code == 2
    assert stderr.startswith(message), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not torch_imported
    assert not (tmp_path / "runs").exists() and not (tmp_path / "g").exists()


def test_unknown_shape_lists_what_the_registry_lists(tmp_path: Path) -> None:
    _, stderr, _ = run_klip(["train", "--shape", "nosuch"], tmp_path)
    assert f"registered shapes: {', '.join(available_shapes())} (a shape" in stderr


def test_a_shape_from_a_plugin_file_is_still_checked_by_the_registry(tmp_path: Path) -> None:
    plugin = tmp_path / "mine.py"
    plugin.write_text("from klip.shapes import CoefficientShape, Param, register_shape\n\n"
                      "@register_shape('fast_errors_mine')\n"
                      "class Mine(CoefficientShape):\n"
                      "    params = {'k': Param(1.0, 0.0)}\n")
    exit_code, stderr, _ = run_klip(["train", "--shape-plugin", str(plugin), "--shape", "fast_errors_mine",
                                     "--shape-param", "nosuch=1"], tmp_path)
    assert exit_code == 2
    assert stderr.startswith("klip: error: shape 'fast_errors_mine': unknown parameter(s) nosuch; "
                             "its parameters are: k"), stderr


def test_declarations_are_those_of_the_registered_builtin_classes() -> None:
    assert set(BUILTIN_SHAPES) == set(builtin_summaries())
    for name, declared in BUILTIN_SHAPES.items():
        cls = get_shape_class(name)
        assert declared.action_spaces == tuple(cls.action_spaces), name
        assert dict(declared.params) == {key: dataclasses.replace(spec, help="")
                                         for key, spec in cls.params.items()}, name


def _outcome(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except (ValueError, KeyError, TypeError) as error:
        return f"{type(error).__name__}: {error}"
    return "built"


def test_check_shape_refuses_exactly_what_make_shape_refuses() -> None:
    for name in BUILTIN_SHAPES:
        cases: list[dict[str, float]] = [{}, {"nosuch": 1.0}]
        for key, spec in get_shape_class(name).params.items():
            edges = [spec.low, spec.high, spec.default, -1e9, 1e9, math.nan]
            cases += [{key: value} for value in edges if not math.isinf(value)]
        for values in cases:
            assert _outcome(lambda n=name, v=values: check_shape(n, v)) == \
                _outcome(lambda n=name, v=values: make_shape(n, **v)), (name, values)
    assert _outcome(lambda: check_shape("nosuch", {})) == _outcome(lambda: make_shape("nosuch"))


def test_the_registry_answers_once_it_is_imported(clean_registry: object) -> None:
    # This process imported the registry (make_shape above): a user's shapes count.
    from klip.shapes import CoefficientShape, Param, register_shape

    @register_shape("fast_errors_in_process", override=True)
    class InProcess(CoefficientShape):
        params: ClassVar[Mapping[str, Param]] = {"k": Param(1.0)}

    assert shape_declaration("fast_errors_in_process") is InProcess
    assert not isinstance(shape_declaration("step"), ShapeDeclaration)
