"""The `CoefficientShape` contract.

A shape is the gate `g(w, A)` of the KLip surrogate `w*A + sg(beta)*log pi` with
`beta = -w*A*g`, so a sample's effective advantage is `A*(1 - g)`:
0 leaves its gradient alone, 1 kills it, >1 rolls it back, <0 amplifies it.
This module imports only torch, so shapes can be used without the rest of klip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import optuna

SHAPE_FILE_FORMAT = 1


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


# Per-iteration quantities a shape may condition on (`CoefficientShape.context`). The
# trainer sets them with `set_context` before each update; ranges are checked there.
CONTEXT_VARIABLES: Mapping[str, Param] = {
    "progress": Param(0.0, 0.0, 1.0, help="fraction of training done when the iteration starts "
                      "(iteration / iterations: the clock of the linear LR annealing)"),
}


class CoefficientShape(nn.Module):
    """Base class of every gate. Subclass, declare `params`, implement `gate`.

    Subclasses get: validated hyper-parameters as float attributes, an Optuna
    search space (`from_trial`), JSON round trips (`to_dict`/`shape_from_dict`)
    and `nn.Module` machinery (buffers, state_dict, `.to()`) for learned gates.

    `gate_range` declares bounds every gate value stays within (for all ratios
    and advantages); the default promises nothing. `context` names the
    `CONTEXT_VARIABLES` a conditioned shape reads: each becomes a scalar buffer
    of that name (broadcast over the samples by the gate), set by
    `set_context(progress=...)` once per iteration and saved in checkpoints and
    shape files. Shapes without context are untouched by all of this.
    """

    name: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = {}
    gate_range: ClassVar[tuple[float, float]] = (-math.inf, math.inf)
    context: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **values: float) -> None:
        super().__init__()
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise ValueError(
                f"shape {self.display_name()!r}: unknown parameter(s) {', '.join(unknown)}; "
                f"its parameters are: {known}"
            )
        self.hparams: dict[str, float] = {}
        for key, spec in self.params.items():
            value = values.get(key, spec.default)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"shape {self.display_name()!r}: parameter {key!r} must be a number, "
                    f"got {value!r}"
                ) from None
            if not spec.contains(value):
                raise ValueError(
                    f"shape {self.display_name()!r}: parameter {key!r} = {value:g} is outside "
                    f"its allowed range {spec.describe_range()}"
                )
            self.hparams[key] = value
            setattr(self, key, value)
        for key in self.context:
            spec = CONTEXT_VARIABLES.get(key)
            if spec is None:
                raise ValueError(
                    f"shape {self.display_name()!r}: unknown context {key!r}; "
                    f"known context: {', '.join(CONTEXT_VARIABLES)}"
                )
            # A buffer, not a float: the gate then reads the value the trainer last set
            # (also inside a compiled loss, without recompiling), and checkpoints keep it.
            self.register_buffer(key, torch.tensor(spec.default))

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

    def set_context(self, **values: float | Tensor) -> None:
        """Set per-iteration context, e.g. `set_context(progress=0.25)`.

        Names must be known `CONTEXT_VARIABLES`; those this shape does not declare
        in `context` are ignored, so a trainer can call this on every shape.
        """
        for key, value in values.items():
            spec = CONTEXT_VARIABLES.get(key)
            if spec is None:
                raise ValueError(
                    f"unknown context {key!r}; known context: {', '.join(CONTEXT_VARIABLES)}"
                )
            if key not in self.context:
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
