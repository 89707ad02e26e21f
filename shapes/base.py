"""The `CoefficientShape` contract, and the context a gate may read.

A shape is the gate `g(w, A)` of the KLip surrogate `w*A + sg(beta)*log pi` with
`beta = -w*A*g`, so a sample's effective advantage is `A*(1 - g)`:
0 leaves its gradient alone, 1 kills it, >1 rolls it back, <0 amplifies it.
This module imports only torch, so shapes can be used without the rest of klip.

Context: what a gate may read besides `(w, A)`
----------------------------------------------

A shape names the `CONTEXT_VARIABLES` it reads in its `context` class attribute;
the engine supplies them with `shape.set_context(name=value, ...)` (or
`KLipPPOLoss.set_context`, which forwards). Names a shape does not declare are
ignored, so the engine may pass every variable it has to every shape. The
variables, their kinds and exactly what the engine must pass:

=================  =========  ===============================================  ==================
name               kind       value                                            range
=================  =========  ===============================================  ==================
`progress`         iteration  `iteration / iterations` (the LR-annealing       [0, 1]
                              clock), one number, set once per PPO iteration
                              before its update
`epoch_progress`   update     `epoch / epochs` of the inner loop (epoch        [0, 1)
                              0-based), one number, set before each epoch's
                              first minibatch (the last epoch sees
                              `(epochs-1)/epochs`, never 1)
`kl`               sample     `KL(pi_old(.|s) || pi_new(.|s))` per sample:     [0, inf) (down to
                              the per-state KL from the rollout (behaviour)    -1e-6 accepted for
                              policy to the current policy, TR-PPO's           rounding)
                              direction (Wang et al. 2019), computed
                              analytically (Gaussian: closed form; categorical:
                              sum over actions) with the current parameters
                              and *detached*; a tensor of the shape of the
                              ratios the gate is called with (KLipPPOLoss's
                              are `[B, 1]` for a minibatch of B samples: a
                              `[B]` tensor is refused; for a population
                              `[agents, ...]` like its ratios), or one that
                              broadcasts to it without enlarging it
`old_log_prob`     sample     `log pi_old(a|s)` of the sample's action under   finite
                              the rollout policy (the stored `action_log_prob`
                              / `sample_log_prob`), same shape rules as `kl`
`old_action_z`     sample     the action standardised by the rollout policy,   finite
                              `(a - loc_old) / scale_old` for a diagonal
                              Gaussian; shaped like the ratios with the
                              action dimension d added, or replacing a last
                              dimension of 1 (`[B, d]` for KLipPPOLoss's
                              `[B, 1]`); read by `trgppo_gaussian`
=================  =========  ===============================================  ==================

Kinds: *iteration* variables are persistent buffers (saved in checkpoints and
shape files) whose declared default is the value of the first iteration, so an
unset `progress` reads 0, as it always has. *update* and *sample* variables are
never defaulted and never saved: a gate that reads one which was not set since
the shape was built (or since `clear_context`) raises `ContextNotSetError`, one
line naming the variable and when to set it. Per-sample values must be set for
every minibatch, right before its loss is computed: the safe pattern is

    with shape.using_context(kl=kl_per_sample, old_log_prob=old_log_prob):
        loss = loss_module(minibatch)  # the gate reads them here
        loss.backward()

which clears them on exit, so a later minibatch cannot silently read a stale
tensor; a per-sample value whose shape does not broadcast to the ratios raises
too. `set_context` checks ranges (for tensors: one device sync per variable);
`set_context(..., check=False)` skips the tensor checks in a hot loop. Code that
calls a shape on a slice of the samples (a population's grouped gate calls one
shape per group of agents on `ratio[group]`) must set that shape's per-sample
values to the same slice (`kl[group]`). Per-update values live in a buffer
filled in place (a compiled loss reads the new value without recompiling);
per-sample values are plain tensors read when the gate runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from klip.shapes.params import Param, check_param_values

if TYPE_CHECKING:
    import optuna

SHAPE_FILE_FORMAT = 1


CONTEXT_KINDS = ("iteration", "update", "sample")


@dataclass(frozen=True)
class ContextVariable(Param):
    """A declared context variable: its range (a `Param`), and its `kind`.

    `kind` is "iteration" (one number per PPO iteration, persistent, defaulted),
    "update" (one number per inner-loop epoch) or "sample" (a tensor per minibatch).
    """

    kind: str = "iteration"
    when: str = ""

    def __post_init__(self) -> None:
        if self.kind not in CONTEXT_KINDS:
            raise ValueError(f"context kind must be one of {', '.join(CONTEXT_KINDS)}, got {self.kind!r}")

    @property
    def per_sample(self) -> bool:
        return self.kind == "sample"


# What a shape may condition on (`CoefficientShape.context`); see the module docstring.
CONTEXT_VARIABLES: Mapping[str, ContextVariable] = {
    "progress": ContextVariable(
        0.0, 0.0, 1.0, kind="iteration", when="once per PPO iteration, before its update",
        help="fraction of training done when the iteration starts "
             "(iteration / iterations: the clock of the linear LR annealing)"),
    "epoch_progress": ContextVariable(
        0.0, 0.0, 1.0, high_inclusive=False, kind="update",
        when="before each inner-loop epoch's first minibatch",
        help="position in the inner loop: epoch / epochs (0-based epoch), in [0, 1)"),
    "kl": ContextVariable(
        0.0, -1e-6, math.inf, kind="sample", when="for every minibatch, before its loss",
        help="per-state KL(pi_old || pi_new) from the rollout policy to the current one, "
             "detached, broadcastable to the ratios"),
    "old_action_z": ContextVariable(
        0.0, -math.inf, math.inf, low_inclusive=False, high_inclusive=False, kind="sample",
        when="for every minibatch, before its loss",
        help="(a - loc_old) / scale_old of a diagonal Gaussian rollout policy, shaped like the "
             "ratios with the trailing dimension replaced by the action dimension"),
    "old_log_prob": ContextVariable(
        0.0, -math.inf, math.inf, low_inclusive=False, high_inclusive=False, kind="sample",
        when="for every minibatch, before its loss",
        help="log pi_old(a|s) of the sample's action under the rollout policy, "
             "broadcastable to the ratios"),
}


def named(name: str) -> Any:
    """Class decorator of the built-in shapes: their registered name. The registry imports the
    built-in modules and registers what they name (they do not import the registry)."""

    def decorator(cls: Any) -> Any:
        cls.name = name
        return cls

    return decorator


class ContextNotSetError(RuntimeError):
    """A gate read a per-update or per-sample context variable that was not set."""


class CoefficientShape(nn.Module):
    """Base class of every gate. Subclass, declare `params`, implement `gate`.

    Subclasses get: validated hyper-parameters as float attributes, an Optuna
    search space (`from_trial`), JSON round trips (`to_dict`/`shape_from_dict`)
    and `nn.Module` machinery (buffers, state_dict, `.to()`) for learned gates.

    `gate_range` declares bounds every gate value stays within (for all ratios
    and advantages); the default promises nothing. `context` names the
    `CONTEXT_VARIABLES` a conditioned shape reads (module docstring: kinds, and
    what the engine passes when). A per-iteration variable becomes a scalar
    buffer of that name, saved in checkpoints and shape files; a per-update one
    a scalar buffer that is not saved; a per-sample one a tensor kept until
    `clear_context`. Gates read the latter two through `context_value`, which
    raises `ContextNotSetError` when they were not set. Shapes without context
    are untouched by all of this. `action_spaces` names the policies a shape is
    defined for ("continuous", "discrete"); the engine refuses the others.
    """

    name: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = {}
    gate_range: ClassVar[tuple[float, float]] = (-math.inf, math.inf)
    context: ClassVar[tuple[str, ...]] = ()
    action_spaces: ClassVar[tuple[str, ...]] = ("continuous", "discrete")

    def __init__(self, **values: float) -> None:
        super().__init__()
        self.hparams: dict[str, float] = check_param_values(self.display_name(), self.params, values)
        for key, value in self.hparams.items():
            setattr(self, key, value)
        # Names of the per-update and per-sample variables set since the last clear.
        self._context_set: set[str] = set()
        self._sample_context: dict[str, Tensor] = {}
        for key in self.context:
            spec = CONTEXT_VARIABLES.get(key)
            if spec is None:
                raise ValueError(
                    f"shape {self.display_name()!r}: unknown context {key!r}; "
                    f"known context: {', '.join(CONTEXT_VARIABLES)}"
                )
            if spec.kind == "iteration":
                # A buffer, not a float: the gate then reads the value the trainer last set
                # (also inside a compiled loss, without recompiling), and checkpoints keep it.
                self.register_buffer(key, torch.tensor(spec.default))
            elif spec.kind == "update":
                # Filled in place like `progress`, but not saved: a restored shape must be
                # told its epoch again before it gates.
                self.register_buffer(key, torch.tensor(spec.default), persistent=False)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Shapes pickled before per-update and per-sample context existed have neither field.
        super().__setstate__(state)
        self.__dict__.setdefault("_context_set", set())
        self.__dict__.setdefault("_sample_context", {})

    @classmethod
    def display_name(cls) -> str:
        return cls.name or cls.__name__

    # -- the gate -----------------------------------------------------------------
    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        """Gate value per sample; same shape as `ratio` and `advantage`."""
        raise NotImplementedError

    def gate_from_log_ratio(self, log_ratio: Tensor, ratio: Tensor, advantage: Tensor) -> Tensor:
        """What the loss calls. Override to decide in log space, as TorchRL's clipping does."""
        return self.gate(ratio, advantage)

    def forward(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        return self.gate(ratio, advantage)

    def gate_bounds(self) -> tuple[float, float]:
        """Bounds of this instance's gate values; override where they depend on parameters."""
        return self.gate_range

    def set_context(self, *, check: bool = True, **values: float | Tensor) -> None:
        """Set context, e.g. `set_context(progress=0.25)` or `set_context(kl=kl, epoch_progress=0.5)`.

        Names must be known `CONTEXT_VARIABLES`; those this shape does not declare
        in `context` are ignored, so a trainer can call this on every shape.
        Per-iteration and per-update values are one number; per-sample values a
        tensor (or a number) that broadcasts to the ratios the gate will see.
        `check=False` skips the range check of per-sample tensors (a device sync).
        """
        for key, value in values.items():
            spec = CONTEXT_VARIABLES.get(key)
            if spec is None:
                raise ValueError(
                    f"unknown context {key!r}; known context: {', '.join(CONTEXT_VARIABLES)}"
                )
            if key not in self.context:
                continue
            if spec.per_sample:
                self._set_sample_context(key, spec, value, check)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(
                    f"shape {self.display_name()!r}: context {key!r} must be one number, got {value!r}"
                ) from None
            if not spec.contains(number):
                raise ValueError(
                    f"shape {self.display_name()!r}: context {key!r} = {number:g} is outside "
                    f"its allowed range {spec.describe_range()}"
                )
            buffer: Tensor = getattr(self, key)
            buffer.fill_(number)  # in place: the same tensor the loss (or its graph) reads
            self._context_set.add(key)

    def _set_sample_context(self, key: str, spec: ContextVariable, value: float | Tensor,
                            check: bool) -> None:
        if isinstance(value, Tensor):
            tensor = value.detach()
        else:
            try:
                tensor = torch.as_tensor(value, dtype=torch.get_default_dtype())
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(
                    f"shape {self.display_name()!r}: context {key!r} must be a tensor of "
                    f"per-sample values, got {value!r}"
                ) from None
        if not tensor.is_floating_point():
            raise ValueError(
                f"shape {self.display_name()!r}: context {key!r} must be a floating-point tensor, "
                f"got {tensor.dtype}"
            )
        if check:
            low = tensor >= spec.low if spec.low_inclusive else tensor > spec.low
            high = tensor <= spec.high if spec.high_inclusive else tensor < spec.high
            outside = ~(low & high)  # NaN fails both comparisons
            if bool(outside.any()):
                first = float(tensor[outside].flatten()[0])
                raise ValueError(
                    f"shape {self.display_name()!r}: context {key!r} has {int(outside.sum())} "
                    f"value(s) outside its allowed range {spec.describe_range()} (first: {first:g})"
                )
        self._sample_context[key] = tensor
        self._context_set.add(key)

    def clear_context(self, *names: str) -> None:
        """Forget per-update and per-sample context (all of it, or the named variables).

        Per-iteration context (`progress`) is persistent state and is kept.
        """
        for key in names or tuple(self._context_set):
            if key not in CONTEXT_VARIABLES:
                raise ValueError(
                    f"unknown context {key!r}; known context: {', '.join(CONTEXT_VARIABLES)}"
                )
            self._context_set.discard(key)
            self._sample_context.pop(key, None)

    @contextlib.contextmanager
    def using_context(self, *, check: bool = True, **values: float | Tensor) -> Iterator[None]:
        """`set_context(**values)` for the block, then forget those values (even on error)."""
        declared = [key for key in values if key in self.context]
        self.set_context(check=check, **values)
        try:
            yield
        finally:
            kinds = {key: CONTEXT_VARIABLES[key].kind for key in declared}
            passed = [key for key, kind in kinds.items() if kind != "iteration"]
            if passed:  # clear_context() without names would forget every variable
                self.clear_context(*passed)

    def context_value(self, key: str, like: Tensor | None = None) -> Tensor:
        """The value of a declared per-update or per-sample context variable, for a gate.

        Raises `ContextNotSetError` (one line) if it was not set. With `like` (the
        ratios), a per-sample value is checked to broadcast to its shape and
        converted to its dtype; a per-update value is converted to its dtype.
        """
        spec = CONTEXT_VARIABLES[key]
        if key not in self.context:
            raise ValueError(f"shape {self.display_name()!r} does not declare context {key!r}")
        if spec.kind == "iteration":
            value: Tensor = getattr(self, key)
        elif key not in self._context_set:
            raise ContextNotSetError(
                f"shape {self.display_name()!r} reads the {spec.kind} context {key!r}, which is "
                f"not set: call set_context({key}=...) {spec.when} (see klip.shapes.base)"
            )
        elif spec.per_sample:
            value = self._sample_context[key]
            if like is not None:
                try:
                    shape = torch.broadcast_shapes(value.shape, like.shape)
                except RuntimeError:
                    shape = None
                if shape != like.shape:
                    raise ContextNotSetError(
                        f"shape {self.display_name()!r}: context {key!r} has shape "
                        f"{list(value.shape)}, which does not broadcast to the ratios' "
                        f"{list(like.shape)} (a stale or mis-sliced minibatch?)"
                    )
        else:
            value = getattr(self, key)
        return value if like is None else value.to(like.dtype)

    def update_after_rollout(self, stats: Mapping[str, float]) -> None:
        """Hook called once per PPO iteration with that iteration's loss metrics.

        Stateless shapes ignore it; adaptive shapes update their buffers here.
        """

    # -- search -------------------------------------------------------------------
    @classmethod
    def search_space(
        cls, trial: optuna.Trial, prefix: str = "", fixed: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """Suggest every searchable parameter on `trial` (names prefixed by `prefix`)."""
        fixed = dict(fixed or {})
        chosen: dict[str, float] = {}
        for key, spec in cls.params.items():
            if key in fixed:
                chosen[key] = float(fixed[key])
            elif spec.search is not None:
                low, high = spec.search
                chosen[key] = trial.suggest_float(prefix + key, low, high, log=spec.log)
        return chosen

    @classmethod
    def from_trial(
        cls, trial: optuna.Trial, prefix: str = "", fixed: Mapping[str, float] | None = None
    ) -> CoefficientShape:
        return cls(**cls.search_space(trial, prefix, fixed))

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: name, parameters, and persistent tensors (learned weights)."""
        state = {key: value.detach().cpu().tolist() for key, value in self.state_dict().items()}
        return {
            "klip_shape_format": SHAPE_FILE_FORMAT,
            "name": self.display_name(),
            "params": dict(self.hparams),
            "state": state,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value:g}" for key, value in self.hparams.items())


def signed_distance_past_boundary(
    ratio: Tensor, advantage: Tensor, eps: float | Tensor, eps_high: float | Tensor | None = None
) -> Tensor:
    """How far a ratio is past the side of the trust region its advantage pushes it to.

    Positive exactly on PPO-Clip's kill region: `w - (1+eps)` for A > 0 and
    `(1-eps) - w` for A < 0. For A == 0 the effective advantage is 0 anyway.
    With `eps_high` the band is asymmetric: `[1-eps, 1+eps_high]`.
    """
    upper = ratio - (1.0 + (eps if eps_high is None else eps_high))
    lower = (1.0 - eps) - ratio
    return torch.where(advantage >= 0, upper, lower)


def exact_kill_region(
    log_ratio: Tensor, ratio: Tensor, advantage: Tensor, eps_low: Tensor, eps_high: Tensor
) -> Tensor:
    """PPO-Clip's kill region for the band `[1-eps_low, 1+eps_high]`, decided as TorchRL decides it.

    In exact arithmetic this is `log w > log1p(eps_high)` with A > 0, or
    `log w < log1p(-eps_low)` with A < 0. In floating point PPO-Clip's `min`
    keeps the gradient of a sample just past the bound whose clipped and
    unclipped terms round to the same value (exp(log1p(eps) + 1ulp) ==
    exp(log1p(eps)) in float32), so this repeats those exact operations. The
    bounds are tensors (buffers) so that `.double()` converts them exactly as
    it converts `ClipPPOLoss`'s `clip_epsilon`.
    """
    clipped = log_ratio.clamp((-eps_low).log1p(), eps_high.log1p())
    return (clipped != log_ratio) & (clipped.exp() * advantage < ratio * advantage)
