"""The conformance suite every coefficient shape should pass: run it on your own shape.

As `optuna.testing` does for samplers, this is the suite klip's built-in shapes pass
(`tests/test_shape_conformance.py`); `klip shapes check my_gates.py` runs it on every shape
a plug-in file registers, one line per check. From Python::

    from klip.shapes.testing import check_shape
    for result in check_shape("soft_knee"):      # a name, a class or an instance
        print(result)                            # PASS/FAIL, the check, one line why

From pytest, subclass `ShapeConformanceTests` (one test per check)::

    from klip.shapes.testing import ShapeConformanceTests

    class TestSoftKnee(ShapeConformanceTests):
        shape = "soft_knee"
        plugin = "my_gates.py"   # the file that registers it (or import it yourself)

or parametrise over `CHECKS` with `run_check(shape, check)`.

The checks (each at the defaults and at the ends of every declared search range):

- `finite`: loss, gate and gradient finite for ratios 1e-6..1e6 and |A| up to 1e6, both
  signs and A = 0, float32 and float64, both gate paths (`gate_from_log_ratio`, `gate`)
  and both objective forms.
- `bounds`: every gate value within the declared `gate_bounds()`.
- `centre`: at ratio 1 (the first minibatch of every iteration) g < 1 for both signs of A:
  no sample starts killed, rolled back or reversed.
- `both_signs`: A > 0 and A < 0 each evaluated alone equal a mixed batch (no batch
  statistics), and A = 0 gives an effective advantage of 0.
- `paths_agree`: `gate_from_log_ratio` and `gate` agree (1e-6) on random float64 ratios.
- `parameters`: every declared parameter is a float attribute; values outside its range,
  NaN and non-numbers raise a ValueError naming it; undeclared keywords are refused; the
  constructor takes no parameter that `params` does not declare.
- `search_space`: search ranges lie inside the valid ranges; 16 real Optuna trials build
  valid shapes (`from_trial`).
- `round_trip`: JSON through `to_dict`/`shape_from_dict`, after `update_after_rollout` and
  `set_context` changed its state: same class, parameters, state and gates, bit for bit.
- `population`: agents with different parameters, each evaluated on an
  `[agents, samples, 1]` batch as klip's populations evaluate them, equal each alone; and
  `gate` leaves the shape as it was (populations evaluate identical shapes in one call).
- `plot`: `klip.algos.plots.plot_shapes` renders the gate to a PNG.

A shape that reads per-update or per-sample context (`CoefficientShape.context`) gets, for
every evaluation, values made from that evaluation's ratios (`kl` as the k3 estimate
`(w-1) - log w`, `old_log_prob` as log 0.3, `old_action_z` as a 2-d function of log w), so
that a slice of the samples sees the slice of its context, as in a population.

This module imports torch and `klip.shapes` only; `search_space` imports Optuna and `plot`
matplotlib when they run.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from klip.shapes.base import CONTEXT_VARIABLES, CoefficientShape
from klip.shapes.functional import klip_objective

__all__ = [
    "CHECKS",
    "CheckResult",
    "ShapeConformanceTests",
    "assert_shape_conforms",
    "check_shape",
    "run_check",
]

ShapeLike = str | type[CoefficientShape] | CoefficientShape

RATIOS = sorted({*(10.0 ** (i / 2) for i in range(-12, 13)),
                 0.5, 0.79, 0.8, 0.81, 0.9, 0.95, 1.0, 1.05, 1.1, 1.19, 1.2, 1.21, 1.5, 2.0})
ADVANTAGES = [-1e6, -1e3, -1.0, -1e-3, -1e-6, 0.0, 1e-6, 1e-3, 1.0, 1e3, 1e6]
# Log-ratios whose ratio underflows to 0 (float32 at both, float64 at the second): a policy
# that moved far from an action's rollout probability; the ratio is 0, the log-ratio is not.
UNDERFLOW_LOG_RATIOS = (-120.0, -1000.0)


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: its name, whether it passed, and one line saying why."""

    shape: str
    check: str
    passed: bool
    message: str

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.shape}  {self.check}: {self.message}"


class CheckFailed(AssertionError):
    """Raised inside a check; its message is the check's one line."""


def _fail(message: str) -> CheckFailed:
    return CheckFailed(message)


# -- shapes to check -----------------------------------------------------------------------
def _resolve(shape: ShapeLike) -> tuple[type[CoefficientShape], CoefficientShape | None]:
    if isinstance(shape, str):
        from klip.shapes.registry import get_shape_class

        return get_shape_class(shape), None
    if isinstance(shape, CoefficientShape):
        return type(shape), shape
    if inspect.isclass(shape) and issubclass(shape, CoefficientShape):
        return shape, None
    raise TypeError(f"expected a shape name, CoefficientShape class or instance, got {shape!r}")


def _base(cls: type[CoefficientShape], instance: CoefficientShape | None) -> CoefficientShape:
    return copy.deepcopy(instance) if instance is not None else cls()


def _variants(cls: type[CoefficientShape], instance: CoefficientShape | None) -> list[CoefficientShape]:
    """The shape at its defaults (or as given), and at each end of every search range."""
    base = _base(cls, instance)
    shapes = [base]
    for key, spec in cls.params.items():
        if spec.search is None:
            continue
        for value in spec.search:
            if value == base.hparams[key]:
                continue
            variant = cls(**{**base.hparams, key: value})
            variant.load_state_dict(base.state_dict())
            shapes.append(variant)
    return shapes


def _describe(shape: CoefficientShape) -> str:
    return ", ".join(f"{key}={value:g}" for key, value in shape.hparams.items()) or "defaults"


def _grid(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    ratio = torch.tensor(RATIOS, dtype=torch.float64)
    advantage = torch.tensor(ADVANTAGES, dtype=torch.float64)
    ratio, advantage = torch.meshgrid(ratio, advantage, indexing="ij")
    return ratio.flatten().to(dtype), advantage.flatten().to(dtype)


def _kind(name: str) -> str:
    """A context variable's kind: "iteration", "update" or "sample" (older klip: iteration)."""
    return str(getattr(CONTEXT_VARIABLES.get(name), "kind", "iteration"))


def _sample_value(name: str, ratio: Tensor) -> Tensor:
    """A plausible per-sample context value for these ratios, an elementwise function of them
    (so that a slice of the samples gets the slice of the values, as populations slice it)."""
    # The log of a ratio that underflowed to 0 is -inf; the engine's log-ratio never is.
    log_ratio = ratio.clamp_min(torch.finfo(ratio.dtype).tiny).log()
    if name == "kl":  # the k3 estimate of KL(old || new): >= 0, consistent with the ratio
        return ((ratio - 1) - log_ratio).clamp_min(0)
    if name == "old_log_prob":  # a discrete action's probability: 0.3
        return torch.full_like(ratio, math.log(0.3))
    if name == "old_action_z":  # a 2-d standardised action; replaces a last dimension of 1
        base = log_ratio[..., 0] if ratio.dim() >= 2 and ratio.shape[-1] == 1 else log_ratio
        return torch.stack([base, -0.5 * base], -1)
    spec = CONTEXT_VARIABLES[name]
    value = spec.default if spec.contains(spec.default) else (spec.low + spec.high) / 2
    return torch.full_like(ratio, value)


@contextlib.contextmanager
def _context_for(shape: CoefficientShape, ratio: Tensor) -> Iterator[None]:
    """Give a shape the per-update and per-sample context its gate reads, for these ratios;
    per-iteration context (`progress`) keeps the value it has."""
    values: dict[str, Any] = {}
    for name in shape.context:
        kind = _kind(name)
        if kind == "sample":
            values[name] = _sample_value(name, ratio)
        elif kind == "update":
            values[name] = 0.5
    if not values:
        yield
        return
    using = getattr(shape, "using_context", None)
    if using is None:
        shape.set_context(**values)
        yield
    else:
        with using(**values):
            yield


def _gate(shape: CoefficientShape, ratio: Tensor, advantage: Tensor, space: str) -> Tensor:
    with torch.no_grad(), _context_for(shape, ratio):
        if space == "log":
            return shape.gate_from_log_ratio(ratio.log(), ratio, advantage)
        return shape.gate(ratio, advantage)


def _where(ratio: Tensor, advantage: Tensor, bad: Tensor) -> str:
    index = int(bad.nonzero()[0, 0])
    return f"ratio {float(ratio[index]):.3g}, A = {float(advantage[index]):+.3g}"


# -- the checks ------------------------------------------------------------------------------
def check_finite(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    count = 0
    for shape in _variants(cls, instance):
        for dtype in (torch.float32, torch.float64):
            cast = copy.deepcopy(shape).to(dtype)
            ratio, advantage = _grid(dtype)
            underflow = torch.tensor(UNDERFLOW_LOG_RATIOS, dtype=dtype)
            logs = torch.cat([ratio.log(), underflow.repeat_interleave(len(ADVANTAGES))])
            advantage = torch.cat([advantage, torch.tensor(ADVANTAGES, dtype=dtype).repeat(len(underflow))])
            ratio = logs.exp()
            for space in ("log", "ratio"):
                for form in ("effective", "kl"):
                    log_ratio = logs.clone().requires_grad_()
                    with _context_for(cast, ratio):
                        objective, gate = klip_objective(cast, log_ratio, advantage, form=form, space=space)
                    objective.backward(torch.ones_like(objective))
                    assert log_ratio.grad is not None
                    where = f"({_describe(shape)}; {str(dtype)[6:]}, {space} path, {form} form)"
                    for what, values in (("gradient", log_ratio.grad), ("loss", objective),
                                         ("gate", gate)):
                        bad = ~torch.isfinite(values)
                        if bad.any():
                            if (bad & (advantage != 0)).any():  # the telling case first
                                bad = bad & (advantage != 0)
                            index = int(bad.nonzero()[0, 0])
                            raise _fail(f"{what} is {float(values[index])} (gate {float(gate[index]):g}) "
                                        f"at {_where(ratio, advantage, bad)} {where}")
                    count += ratio.numel()
    return (f"loss, gate and gradient finite on {count} evaluations: ratios 1e-6..1e6 and ratios that "
            "underflow to 0, |A| <= 1e6, both signs and 0, float32/float64, both gate paths and forms")


def check_bounds(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    for shape in _variants(cls, instance):
        low, high = shape.gate_bounds()
        ratio, advantage = _grid(torch.float64)
        for space in ("log", "ratio"):
            gate = _gate(shape.to(torch.float64), ratio, advantage, space)
            bad = (gate < low) | (gate > high)
            if bad.any():
                value = float(gate[bad.nonzero()[0, 0]])
                raise _fail(f"gate {value:g} outside the declared bounds [{low:g}, {high:g}] at "
                            f"{_where(ratio, advantage, bad)} ({_describe(shape)}, {space} path)")
    base = _base(cls, instance)
    low, high = base.gate_bounds()
    return f"every gate value within the declared bounds [{low:g}, {high:g}]"


def check_centre(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    values = {}
    for shape in _variants(cls, instance):
        ratio = torch.ones(2, dtype=torch.float64)
        advantage = torch.tensor([1.0, -1.0], dtype=torch.float64)
        for space in ("log", "ratio"):
            gate = _gate(shape.to(torch.float64), ratio, advantage, space)
            if not (torch.isfinite(gate).all() and (gate < 1).all()):
                raise _fail(f"at ratio 1 the gate is {gate[0].item():g} (A > 0), {gate[1].item():g} "
                            f"(A < 0): it must be finite and < 1, or samples start killed or reversed "
                            f"({_describe(shape)}, {space} path)")
        if not values:
            values = {"A > 0": gate[0].item(), "A < 0": gate[1].item()}
    shown = ", ".join(f"g(1, {sign}) = {value:.3g}" for sign, value in values.items())
    return f"at ratio 1 {shown}: every sample starts with an effective advantage of A's sign"


def check_both_signs(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    generator = torch.Generator().manual_seed(0)
    for shape in _variants(cls, instance):
        shape = shape.to(torch.float64)
        ratio = (0.6 * torch.randn(256, generator=generator, dtype=torch.float64)).exp()
        advantage = torch.randn(256, generator=generator, dtype=torch.float64)
        advantage[::17] = 0.0
        for space in ("log", "ratio"):
            mixed = _gate(shape, ratio, advantage, space)
            for name, mask in (("A > 0", advantage > 0), ("A < 0", advantage < 0)):
                alone = _gate(shape, ratio[mask], advantage[mask], space)
                if not torch.allclose(alone, mixed[mask], rtol=1e-9, atol=1e-12, equal_nan=True):
                    difference = float((alone - mixed[mask]).abs().max())
                    raise _fail(f"the gates of the samples with {name} change by up to {difference:.3g} "
                                f"when samples of the other sign share the batch: a gate must be "
                                f"elementwise ({_describe(shape)}, {space} path)")
            effective = advantage * (1 - mixed)
            if not (effective[(advantage == 0) & mixed.isfinite()] == 0).all():
                raise _fail(f"A = 0 gives a nonzero effective advantage ({_describe(shape)}, {space} path)")
    return "A > 0 and A < 0 alone equal the mixed batch; A = 0 has effective advantage 0"


def check_paths_agree(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    generator = torch.Generator().manual_seed(1)
    for shape in _variants(cls, instance):
        shape = shape.to(torch.float64)
        log_ratio = 4 * torch.rand(2048, generator=generator, dtype=torch.float64) - 2
        ratio = log_ratio.exp()
        advantage = torch.randn(2048, generator=generator, dtype=torch.float64)
        from_log = _gate(shape, ratio, advantage, "log")
        from_ratio = _gate(shape, ratio, advantage, "ratio")
        # NaN is `finite`'s failure, not this check's.
        if not torch.allclose(from_log, from_ratio, rtol=1e-6, atol=1e-6, equal_nan=True):
            bad = ~torch.isclose(from_log, from_ratio, rtol=1e-6, atol=1e-6, equal_nan=True)
            raise _fail(f"gate_from_log_ratio and gate disagree at {int(bad.sum())} of 2048 random ratios, "
                        f"first at {_where(ratio, advantage, bad)} ({_describe(shape)})")
    return "gate_from_log_ratio and gate agree (1e-6) on 2048 random float64 ratios in [e^-2, e^2]"


def check_parameters(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    name = cls.display_name()
    signature = inspect.signature(cls.__init__)
    undeclared = [p.name for p in list(signature.parameters.values())[1:]
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in cls.params]
    if undeclared:
        raise _fail(f"the constructor takes {', '.join(map(repr, undeclared))}, which `params` does not "
                    f"declare: such a parameter is neither validated, searched nor saved")
    for refused in ({"not_a_parameter": 1.0},):
        try:
            cls(**refused)
        except (ValueError, TypeError):
            pass
        else:
            raise _fail("an undeclared parameter (not_a_parameter=1.0) was accepted")
    for key, spec in cls.params.items():
        good = [spec.default, *(spec.search or ())]
        for value in good:
            shape = cls(**{key: value})
            if getattr(shape, key, None) != float(value) or shape.hparams.get(key) != float(value):
                raise _fail(f"parameter {key!r} = {value:g} is not kept as the float attribute "
                            f"`shape.{key}` and in `hparams`")
        bad: list[Any] = [math.nan, "not a number"]
        if math.isfinite(spec.low):
            bad.append(spec.low - max(1.0, abs(spec.low)) if spec.low_inclusive else spec.low)
        if math.isfinite(spec.high):
            bad.append(spec.high + max(1.0, abs(spec.high)) if spec.high_inclusive else spec.high)
        for value in bad:
            try:
                cls(**{key: value})
            except ValueError as error:
                if repr(key) not in str(error) and key not in str(error):
                    raise _fail(f"{key}={value!r} raised a ValueError that does not name {key!r}: "
                                f"{error}") from None
            except Exception as error:
                raise _fail(f"{key}={value!r} raised {type(error).__name__}, not ValueError: "
                            f"{error}") from None
            else:
                raise _fail(f"parameter {key!r} accepted {value!r}, outside its declared range "
                            f"{spec.describe_range()}")
    declared = ", ".join(f"{key} {spec.describe_range()}" for key, spec in cls.params.items())
    return (f"{name}: {declared or 'no parameters'}; out-of-range, NaN and non-numeric values and "
            f"undeclared keywords refused")


def check_search_space(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    import optuna

    searched = []
    for key, spec in cls.params.items():
        if spec.search is None:
            continue
        low, high = spec.search
        if not low < high:
            raise _fail(f"parameter {key!r}: search range ({low:g}, {high:g}) is empty")
        if spec.log and low <= 0:
            raise _fail(f"parameter {key!r}: a log search range must be positive, got ({low:g}, {high:g})")
        for end in (low, high):
            if not spec.contains(end):
                raise _fail(f"parameter {key!r}: search range ({low:g}, {high:g}) leaves its valid range "
                            f"{spec.describe_range()} at {end:g}")
        searched.append(f"{key} [{low:g}, {high:g}]{' log' if spec.log else ''}")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        ratio = torch.tensor([0.5, 1.0, 1.5])
        advantage = torch.tensor([1.0, -1.0, 1.0])
        for _ in range(16):
            trial = study.ask()
            shape = cls.from_trial(trial)
            if not isinstance(shape, cls):
                raise _fail(f"from_trial built a {type(shape).__name__}, not a {cls.__name__}")
            if _gate(shape, ratio, advantage, "log").shape != ratio.shape:
                raise _fail(f"a shape sampled by Optuna ({trial.params}) gives gates of another shape")
            study.tell(trial, 0.0)
    finally:
        optuna.logging.set_verbosity(verbosity)
    names = len(study.trials[0].params)
    return (f"16 Optuna trials ({names} value(s) each) built valid shapes; searched: "
            f"{', '.join(searched) or 'no declared parameter'}")


class _AnyStatistic(defaultdict):  # type: ignore[type-arg]
    """The per-iteration statistics `update_after_rollout` gets, 0.1 for any name asked."""

    def __init__(self) -> None:
        super().__init__(lambda: 0.1)


def check_round_trip(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    from klip.shapes.registry import UnknownShapeError, shape_from_dict

    base = _base(cls, instance)
    if instance is None:  # off the defaults, so that a parameter left out of to_dict shows
        middle = {key: (spec.search[0] * spec.search[1]) ** 0.5 if spec.log else sum(spec.search) / 2
                  for key, spec in cls.params.items() if spec.search is not None}
        base = cls(**middle)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for key, buffer in base.state_dict().items():
            if buffer.is_floating_point() and key not in CONTEXT_VARIABLES:
                buffer.add_(0.05 * torch.rand(buffer.shape, generator=generator, dtype=buffer.dtype))
    base.update_after_rollout(_AnyStatistic())
    base.set_context(**{key: 0.37 for key in CONTEXT_VARIABLES
                        if _kind(key) == "iteration" and CONTEXT_VARIABLES[key].contains(0.37)})
    text = json.dumps(base.to_dict())
    try:
        rebuilt = shape_from_dict(json.loads(text))
    except UnknownShapeError:
        raise _fail(f"shape_from_dict cannot find {base.display_name()!r}: is the shape registered "
                    f"(@register_shape)? A shape file names its shape") from None
    if type(rebuilt) is not cls:
        raise _fail(f"shape_from_dict built a {type(rebuilt).__name__}, not a {cls.__name__} "
                    f"(is the shape registered under {base.display_name()!r}?)")
    if rebuilt.hparams != base.hparams:
        raise _fail(f"parameters changed in the round trip: {base.hparams} -> {rebuilt.hparams}")
    state, state_back = base.state_dict(), rebuilt.state_dict()
    if state.keys() != state_back.keys() or not all(torch.equal(state[k], state_back[k]) for k in state):
        raise _fail("the state_dict changed in the round trip")
    ratio, advantage = _grid(torch.float32)
    for space in ("log", "ratio"):
        before, after = _gate(base, ratio, advantage, space), _gate(rebuilt, ratio, advantage, space)
        differ = ~((before == after) | (before.isnan() & after.isnan()))
        if differ.any():
            raise _fail(f"after update_after_rollout and set_context the rebuilt shape's gate differs at "
                        f"{int(differ.sum())} of {differ.numel()} samples, first at "
                        f"{_where(ratio, advantage, differ)}: state outside the parameters and persistent "
                        f"buffers is not saved")
    return (f"{len(text)} bytes of JSON rebuild the same class, parameters ({_describe(base)}), "
            f"{len(state)} state tensor(s) and gates, bit for bit")


def _state(shape: CoefficientShape) -> dict[str, Any]:
    """What a gate call must leave as it was: the shape's numbers, tensors and buffers."""
    numbers = {key: value for key, value in vars(shape).items()
               if isinstance(value, int | float) and not key.startswith("_")}
    tensors = {key: value.detach().clone() for key, value in shape.state_dict(keep_vars=True).items()}
    return {**numbers, **tensors}


def _same(first: Any, second: Any) -> bool:
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return first.shape == second.shape and bool(torch.equal(first, second) or (
            first.isnan().any() and torch.equal(first.nan_to_num(), second.nan_to_num())))
    return first == second


def check_population(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    agents = _variants(cls, instance)[:4]
    if len(agents) == 1:
        agents = [agents[0], copy.deepcopy(agents[0])]
    generator = torch.Generator().manual_seed(3)
    size = (len(agents), 256, 1)
    log_ratio = 0.5 * torch.randn(size, generator=generator)
    log_ratio[:, ::16] *= 20  # some far ratios
    ratio = log_ratio.exp()
    advantage = torch.randn(size, generator=generator)
    for index, shape in enumerate(agents):
        before = _state(shape)
        alone = _gate(shape, ratio[index, :, 0], advantage[index, :, 0], "log")
        batched = _gate(shape, ratio, advantage, "log")
        row = _gate(shape, ratio[index : index + 1], advantage[index : index + 1], "log")
        for what, gate in (("[agents, samples, 1]", batched[index]), ("[1, samples, 1]", row[0])):
            if gate.shape != (256, 1):
                raise _fail(f"on a {what} batch the gate has shape {list(gate.shape)}, not the input's")
            if not torch.allclose(gate[:, 0], alone, rtol=1e-5, atol=1e-6, equal_nan=True):
                difference = float((gate[:, 0] - alone).abs().max())
                raise _fail(f"agent {index} ({_describe(shape)}): its gate on a {what} batch differs from "
                            f"its gate alone by up to {difference:.3g}")
        changed = sorted(key for key in before.keys() | _state(shape).keys()
                         if not _same(before.get(key), _state(shape).get(key)))
        if changed:
            # A population evaluates the agents whose shapes are identical in one call.
            raise _fail(f"gate() changed the shape's state ({', '.join(changed)}); state may change "
                        "only in update_after_rollout")
    described = " / ".join(_describe(shape) for shape in agents)
    return (f"{len(agents)} agents ({described}) x 256 samples: each agent's gate on "
            f"[agents, samples, 1] equals its gate alone")


def check_plot(cls: type[CoefficientShape], instance: CoefficientShape | None) -> str:
    from klip.algos.plots import plot_shapes

    shape = _base(cls, instance)
    # plot_shapes' own ratio grid, for shapes that read per-sample context
    grid = torch.linspace(1e-3, 2.0, 2001, dtype=torch.float64)
    with tempfile.TemporaryDirectory() as folder, _context_for(shape, grid):
        path = plot_shapes([shape], Path(folder) / "gate.png")
        size = path.stat().st_size if path.is_file() else 0
        if size == 0:
            raise _fail("plot_shapes wrote no image")
    return f"plot_shapes rendered the gate ({size} bytes of PNG)"


CHECKS: Mapping[str, Callable[[type[CoefficientShape], CoefficientShape | None], str]] = {
    "finite": check_finite,
    "bounds": check_bounds,
    "centre": check_centre,
    "both_signs": check_both_signs,
    "paths_agree": check_paths_agree,
    "parameters": check_parameters,
    "search_space": check_search_space,
    "round_trip": check_round_trip,
    "population": check_population,
    "plot": check_plot,
}


def run_check(shape: ShapeLike, check: str) -> CheckResult:
    """Run one check of `CHECKS` on a shape (name, class or instance)."""
    cls, instance = _resolve(shape)
    name = instance.display_name() if instance is not None else cls.display_name()
    try:
        message = CHECKS[check](cls, instance)
        passed = True
    except CheckFailed as failure:
        message, passed = str(failure), False
    except Exception as error:  # the shape's own code may fail in any way
        message, passed = f"raised {type(error).__name__}: {error}", False
    return CheckResult(name, check, passed, " ".join(message.split()))


def check_shape(shape: ShapeLike, checks: Iterable[str] | None = None) -> list[CheckResult]:
    """Every check (or those named) on a shape; never raises for a failing shape."""
    return [run_check(shape, check) for check in (checks if checks is not None else CHECKS)]


def assert_shape_conforms(shape: ShapeLike) -> None:
    """Raise AssertionError listing the failed checks (for scripts and doctests)."""
    failures = [str(result) for result in check_shape(shape) if not result.passed]
    if failures:
        raise AssertionError("\n".join(failures))


class ShapeConformanceTests:
    """Subclass in a pytest module and set `shape`: one test per check of `CHECKS`.

    `plugin` (optional) is a `.py` file that registers the shape, loaded first. The class
    name does not start with `Test`, so pytest collects only your subclass.
    """

    shape: ClassVar[ShapeLike | None] = None
    plugin: ClassVar[str | Path | None] = None

    def _run(self, check: str) -> None:
        if self.shape is None:
            raise TypeError(f"{type(self).__name__}: set `shape` to a shape name, class or instance")
        if self.plugin is not None:
            from klip.shapes.registry import load_shapes_from_file

            load_shapes_from_file(self.plugin)
        result = run_check(self.shape, check)
        assert result.passed, str(result)


def _make_test(check: str) -> Callable[[ShapeConformanceTests], None]:
    def test(self: ShapeConformanceTests) -> None:
        self._run(check)

    test.__name__ = f"test_{check}"
    test.__doc__ = (CHECKS[check].__doc__ or f"The `{check}` conformance check.")
    return test


for _check in CHECKS:
    setattr(ShapeConformanceTests, f"test_{_check}", _make_test(_check))
