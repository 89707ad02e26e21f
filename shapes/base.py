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


class CoefficientShape(nn.Module):
    """Base class of every gate. Subclass, declare `params`, implement `gate`.

    Subclasses get: validated hyper-parameters as float attributes, an Optuna
    search space (`from_trial`), JSON round trips (`to_dict`/`shape_from_dict`)
    and `nn.Module` machinery (buffers, state_dict, `.to()`) for learned gates.
    """

    name: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = {}

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


def signed_distance_past_boundary(ratio: Tensor, advantage: Tensor, eps: float) -> Tensor:
    """How far a ratio is past the side of the trust region its advantage pushes it to.

    Positive exactly on PPO-Clip's kill region: `w - (1+eps)` for A > 0 and
    `(1-eps) - w` for A < 0. For A == 0 the effective advantage is 0 anyway.
    """
    upper = ratio - (1.0 + eps)
    lower = (1.0 - eps) - ratio
    return torch.where(advantage >= 0, upper, lower)
