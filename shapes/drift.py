"""Shapes from drifts: a weight-space penalty `Phi(w, A)` becomes a gate by autograd.

The objective `w*A - Phi(w, A)` (a drift in the sense of Mirror Learning, Kuba et
al. 2022) has the per-sample gradient `(A - dPhi/dw) grad w = A(1-g) grad w`, so
its gate is `g = (dPhi/dw) / A`. `DriftShape` computes that derivative with
`torch.func.grad`, so a variant is written as its penalty alone:

    @drift_shape("quadratic", params={"eps": Param(0.2, 0.0, low_inclusive=False)})
    def quadratic(ratio, advantage, eps):
        return advantage.abs() * (ratio - 1) ** 2 / (2 * eps)
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from klip.shapes.base import CoefficientShape, Param

Drift = Callable[..., Tensor]


class DriftShape(CoefficientShape):
    """A shape defined by its drift `Phi(w, A)`: `g = (dPhi/dw) / A`, and 0 where `A == 0`.

    Subclass and implement `drift`, or decorate a function with `register_drift`.
    `drift` must be elementwise (sample i's penalty depends on `w_i` and `A_i`
    only): the gate differentiates the sum of the penalties, which gives every
    sample its own derivative only then. The derivative is taken on a detached
    copy of the ratios, so the gate is a stop-gradient quantity whatever it is
    called on, and `torch.func.grad` works under `no_grad`, `inference_mode` and
    `torch.compile` alike.
    """

    # The decorated function, for classes made by `register_drift`.
    phi: ClassVar[Drift | None] = None

    def drift(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        """The penalty `Phi(w, A)` per sample (same shape as `ratio`); objective `w*A - Phi`."""
        raise NotImplementedError

    def gate(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        advantage = advantage.detach()

        def total_drift(weights: Tensor) -> Tensor:
            return self.drift(weights, advantage).sum()

        slope = torch.func.grad(total_drift)(ratio.detach())
        zero = advantage == 0
        # The limit of dPhi/dw / A at A == 0 need not exist (for |A|-weighted drifts it
        # depends on the sign); the effective advantage A(1-g) is 0 there whatever g is,
        # so 0 is a safe value, and the safe denominator keeps 0/0 out of the graph.
        safe_advantage = torch.where(zero, torch.ones_like(advantage), advantage)
        return torch.where(zero, torch.zeros_like(slope), slope / safe_advantage)


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_\-]", name) if part) + "Drift"


def drift_shape(
    name: str,
    *,
    params: Mapping[str, Param | float] | None = None,
    gate_range: tuple[float, float] = (-math.inf, math.inf),
) -> Callable[[Drift], type[DriftShape]]:
    """Function decorator: the shape named `name` whose drift is `phi(ratio, advantage, **params)`
    (`klip.shapes.register_drift` also registers it).

    Every argument of `phi` after the first two is a shape parameter: declared
    in `params` (a `Param`, or a number as shorthand for an unbounded `Param`
    with that default and no search range), or else taken from the function's
    default value. The decorator returns the generated `DriftShape` subclass
    (the function stays reachable as its `phi` attribute); the registered
    name works everywhere a shape name does (`make_shape`, `--shape`, studies).
    """
    declared = dict(params or {})

    def decorator(phi: Drift) -> type[DriftShape]:
        if not callable(phi):
            raise TypeError(f"@drift_shape({name!r}) needs a function phi(ratio, advantage, ...)")
        arguments = list(inspect.signature(phi).parameters.values())
        if len(arguments) < 2:
            raise TypeError(
                f"drift {name!r}: {phi.__name__} must take (ratio, advantage, **params), "
                f"got {len(arguments)} argument(s)"
            )
        extra = {argument.name: argument for argument in arguments[2:]}
        unused = sorted(set(declared) - set(extra))
        if unused:
            raise ValueError(
                f"drift {name!r}: params {', '.join(unused)} are not arguments of {phi.__name__}"
            )
        specs: dict[str, Param] = {}
        for key, argument in extra.items():
            spec: Any = declared.get(key, argument.default)
            if spec is inspect.Parameter.empty:
                raise ValueError(
                    f"drift {name!r}: argument {key!r} of {phi.__name__} needs a default value "
                    f"or a Param in params="
                )
            specs[key] = spec if isinstance(spec, Param) else Param(float(spec))

        def drift(self: DriftShape, ratio: Tensor, advantage: Tensor) -> Tensor:
            return phi(ratio, advantage, **self.hparams)

        namespace: dict[str, Any] = {
            "__doc__": phi.__doc__,
            # The function's module and name: the decorator binds the class to that
            # name, so pickling finds the class by reference.
            "__module__": phi.__module__,
            "__qualname__": phi.__qualname__,
            "params": specs,
            "gate_range": gate_range,
            "phi": staticmethod(phi),
            "drift": drift,
        }
        cls: type[DriftShape] = type(_class_name(name), (DriftShape,), namespace)
        cls.name = name
        return cls

    return decorator
