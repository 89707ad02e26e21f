"""The shape conformance suite (`klip.shapes.testing`): every registered shape passes it, the
pytest base class runs it, and `klip shapes check` names each of three broken shapes' failure
in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from klip.cli import main
from klip.shapes import CoefficientShape, Param, available_shapes, make_shape
from klip.shapes.testing import (
    CHECKS,
    CheckResult,
    ShapeConformanceTests,
    assert_shape_conforms,
    check_shape,
    run_check,
)

ROOT = Path(__file__).resolve().parents[1]
BROKEN = Path(__file__).parent / "plugins" / "broken_gates.py"
EXAMPLE = ROOT / "examples" / "my_gates.py"


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("shape", available_shapes())
def test_every_registered_shape_passes_the_suite(shape, check):
    result = run_check(shape, check)
    assert result.passed, str(result)
    assert "\n" not in result.message


class TestStepThroughTheBaseClass(ShapeConformanceTests):
    """What a shape author writes: the base class gives one test per check."""

    shape = "step"


class TestALearnedInstanceThroughTheBaseClass(ShapeConformanceTests):
    """An instance (here a learned gate with its own vector) is checked as it is."""

    shape = make_shape("learned", eps=0.15)
    shape.set_vector(torch.linspace(0.0, 0.9, shape.vector_size))


class TestThePluginExampleThroughTheBaseClass(ShapeConformanceTests):
    """A plug-in's shape, the file named beside it."""

    shape = "soft_knee"
    plugin = EXAMPLE

    @pytest.fixture(autouse=True)
    def _forget_the_plugin_afterwards(self, clean_registry):
        yield


def test_the_base_class_has_one_test_per_check():
    assert {name for name in dir(ShapeConformanceTests) if name.startswith("test_")} == {
        f"test_{check}" for check in CHECKS}


def test_results_are_one_line_each_and_never_raise():
    results = check_shape("sigmoid")
    assert [result.check for result in results] == list(CHECKS)
    assert all(isinstance(result, CheckResult) and result.passed for result in results)
    assert str(results[0]).startswith("PASS  sigmoid  finite: ")


class Undeclared(CoefficientShape):
    """Not registered, and its constructor takes an undeclared `width`."""

    params = {"eps": Param(0.2, 0.0, 1.0, low_inclusive=False, search=(0.1, 0.3))}  # noqa: RUF012

    def __init__(self, width: float = 0.1, **values: float) -> None:
        super().__init__(**values)
        self.width = width

    def gate(self, ratio, advantage):
        return torch.zeros_like(ratio)


def test_assert_shape_conforms_lists_the_failed_checks():
    assert_shape_conforms("step")
    with pytest.raises(AssertionError) as error:
        assert_shape_conforms(Undeclared)
    lines = str(error.value).splitlines()
    assert [line.split()[2] for line in lines] == ["parameters:", "round_trip:"]
    assert "the constructor takes 'width'" in lines[0]
    assert "is the shape registered" in lines[1]


def check_lines(capsys, argv):
    code = main(argv)
    out = capsys.readouterr().out.splitlines()
    return code, out


def test_check_names_each_broken_shapes_failure_in_one_line(clean_registry, capsys):
    code, lines = check_lines(capsys, ["shapes", "check", str(BROKEN)])
    assert code == 1
    failures = [line.split(None, 3) for line in lines if line.startswith("FAIL")]
    assert [(shape, check) for _, shape, check, _ in failures] == [
        ("forgetful_brake", "round_trip"), ("loose_ramp", "parameters"), ("naive_sigmoid", "finite"),
        ("peak_watch", "population")]
    messages = {shape: message for _, shape, _, message in failures}
    assert "gate differs" in messages["forgetful_brake"] and "is not saved" in messages["forgetful_brake"]
    assert messages["loose_ramp"].startswith("the constructor takes 'width', which `params` does not declare")
    assert messages["naive_sigmoid"].startswith("gradient is nan (gate nan) at ratio 10,")
    assert messages["peak_watch"] == ("gate() changed the shape's state (largest_ratio); state may change "
                                      "only in update_after_rollout")
    assert sum(line.startswith("PASS") for line in lines) == 36
    assert lines[-1] == "4 shape(s), 40 checks: 36 passed, 4 failed"


def test_check_passes_the_example_plugin(clean_registry, capsys):
    code, lines = check_lines(capsys, ["shapes", "check", str(EXAMPLE)])
    assert code == 0, "\n".join(lines)
    assert len(lines) == len(CHECKS) + 1 and all(line.startswith("PASS  soft_knee") for line in lines[:-1])


def test_check_by_name(clean_registry, capsys):
    code, lines = check_lines(capsys, ["shapes", "check", "step", "none"])
    total = 2 * len(CHECKS)
    assert code == 0 and lines[-1] == f"2 shape(s), {total} checks: {total} passed, 0 failed"


def test_check_all_passes_every_registered_shape(clean_registry, capsys):
    code, lines = check_lines(capsys, ["shapes", "check", "--all"])
    names = available_shapes()
    total = len(names) * len(CHECKS)
    assert code == 0, "\n".join(line for line in lines if line.startswith("FAIL"))
    assert lines[-1] == f"{len(names)} shape(s), {total} checks: {total} passed, 0 failed"


@pytest.mark.parametrize(("argv", "message"), [
    (["shapes", "check"], "name a plug-in FILE.py or a shape, or pass --all"),
    (["shapes", "check", "no_such_shape"], "unknown shape 'no_such_shape'"),
    (["shapes", "check", "missing.py"], "shape plugin file not found"),
])
def test_check_bad_input_is_one_line_and_exit_2(clean_registry, capsys, argv, message):
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("klip: error: ") and message in error and error.count("\n") == 1


def test_a_plugin_file_reports_only_its_own_shapes_in_a_fresh_process():
    """Loading a plug-in first thing no longer counts the built-ins it pulls in as its own."""
    code = ("from klip.shapes import load_shapes_from_file; "
            f"print(load_shapes_from_file({str(EXAMPLE)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['soft_knee']"
