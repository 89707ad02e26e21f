"""Catching divergence: the first non-finite loss term, gradient norm or parameter of an iteration."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


class TrainingDiverged(FloatingPointError):
    """A non-finite quantity appeared; the message names the iteration and the quantity."""

    def __init__(self, iteration: int, quantity: str) -> None:
        super().__init__(f"training diverged at iteration {iteration}: {quantity} is not finite")
        self.iteration = iteration
        self.quantity = quantity


class AgentsDiverged(TrainingDiverged):
    """Some agents of a population diverged (each was stopped and marked failed); the others
    trained to the end. `results` holds every agent's outcome."""

    def __init__(self, failures: Sequence[tuple[str, TrainingDiverged]], results: Sequence[object]) -> None:
        FloatingPointError.__init__(self, f"{len(failures)} of {len(results)} agents diverged: " + "; ".join(
            f"{name}: {failure.quantity} at iteration {failure.iteration}" for name, failure in failures))
        self.iteration = failures[0][1].iteration
        self.quantity = failures[0][1].quantity
        self.failures = list(failures)
        self.results = list(results)


def first_non_finite(
    minibatch_metrics: Tensor, names: Sequence[str], parameters: Iterable[tuple[str, Tensor]]
) -> str | None:
    """Name of the first non-finite quantity, in the order they were computed, or None.

    `minibatch_metrics` is `[minibatch, metric]` (loss terms, then the gradient norm, named by
    `names`); a non-finite gradient shows as a non-finite norm before it spreads.
    """
    finite = torch.isfinite(minibatch_metrics)
    if not bool(finite.all()):
        minibatch, column = (~finite).nonzero()[0].tolist()
        return f"{names[column]} (minibatch {minibatch + 1} of the iteration)"
    for name, parameter in parameters:
        if not bool(torch.isfinite(parameter).all()):
            return f"parameter {name}"
    return None


__all__ = ["AgentsDiverged", "TrainingDiverged", "first_non_finite"]
