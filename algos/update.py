"""The loss of one minibatch update, as the trainer's hot loop calls it.

Two implementations behind one small interface (`minibatches`, `__call__`, `metric_names`):

- `KLipTensorLoss` (in `klip.algos.loss`, beside the module it mirrors): what `klip train`
  runs for every shape, bitwise equal to `KLipPPOLoss` and cheaper per minibatch.
- `ModuleLoss`: any TorchRL loss module on TensorDict minibatches; what `--loss clip` and
  the scalar-KL baselines run, and the reference path of the bitwise tests.

`make_minibatch_loss` picks the first where it computes exactly what the module computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.objectives import LossModule

from klip.algos.loss import KLipTensorLoss, tensor_loss_unsupported


class MinibatchLoss(Protocol):
    """What `PPOModule` needs from a loss: minibatches of a shuffled batch, and their losses."""

    def minibatches(self, data: TensorDictBase, size: int) -> Iterator[Any]: ...

    def __call__(self, minibatch: Any) -> tuple[Tensor, Tensor]:
        """Total loss to differentiate, and a vector of detached metrics named by `metric_names`."""
        ...

    @property
    def metric_names(self) -> list[str]: ...


class ModuleLoss:
    """Any TorchRL loss module; the losses are the output entries named `loss_*`."""

    def __init__(self, loss_module: LossModule, *, compile: bool = False) -> None:
        self.loss_module = loss_module
        # Compiling the module compiles its backward too (AOTAutograd). Not bitwise eager.
        self._forward = torch.compile(loss_module, dynamic=False) if compile else loss_module
        self._loss_keys: list[str] = []
        self._metric_keys: list[str] | None = None

    def minibatches(self, data: TensorDictBase, size: int) -> Iterator[TensorDictBase]:
        for start in range(0, data.shape[0], size):
            yield data[start : start + size]

    def __call__(self, minibatch: TensorDictBase) -> tuple[Tensor, Tensor]:
        losses = self._forward(minibatch)
        if self._metric_keys is None:  # the output keys are fixed: find them once
            self._loss_keys = [key for key in losses.keys() if key.startswith("loss_")]  # noqa: SIM118 (a TensorDict iterates its batch)
            self._metric_keys = [key for key, value in losses.items() if value.numel() == 1]
        total = sum(losses[key] for key in self._loss_keys)
        return total, torch.stack([losses[key].detach().reshape(()) for key in self._metric_keys])

    @property
    def metric_names(self) -> list[str]:
        if self._metric_keys is None:
            raise RuntimeError("metric names are known after the first call")
        return self._metric_keys


def make_minibatch_loss(
    loss_module: LossModule, actor: Any, critic: Any, *, compile: bool = False
) -> MinibatchLoss:
    """`KLipTensorLoss` where it computes exactly what `loss_module` computes, else `ModuleLoss`."""
    if tensor_loss_unsupported(loss_module, actor, critic) is None:
        return KLipTensorLoss(loss_module, actor, critic, compile=compile)
    return ModuleLoss(loss_module, compile=compile)
