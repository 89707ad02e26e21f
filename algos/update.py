"""The loss of one minibatch update, as the trainer's hot loop calls it.

Two implementations behind one small interface (`minibatches`, `__call__`,
`metric_names`):

- `ModuleLoss` calls any TorchRL loss module on TensorDict minibatches. It is
  the reference path, and the one `--loss clip` and the scalar-KL baselines use.
- `TensorLoss` computes `KLipPPOLoss`'s losses from the same networks on plain
  tensors. On a 64-sample minibatch the loss module's forward spends about a
  third of the update in TensorDict and `torch.distributions` bookkeeping
  (`benchmarks/throughput.py` measures both). `TensorLoss` repeats TorchRL's
  operations in TorchRL's order: advantage standardisation, the Gaussian
  log-prob, the policy term through the same `klip_objective`, the clipped l2
  critic loss, the entropy bonus and the mean reductions. Its losses and
  gradients are therefore bitwise equal to the module's
  (`tests/test_update.py`), and it is small enough for `torch.compile`.
  It covers the configurations `PPOModule` builds; `make_minibatch_loss` falls
  back to `ModuleLoss` for anything else and says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.objectives import LossModule

from klip.algos.loss import KLipPPOLoss, klip_objective
from klip.algos.networks import ValueHead, gaussian_entropy, gaussian_log_prob, policy_head

# TorchRL's `_standardize` clamps the advantage std at float32's resolution.
ADVANTAGE_STD_MIN = torch.finfo(torch.float).resolution


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


def tensor_loss_unsupported(loss_module: LossModule, actor: Any, critic: Any) -> str | None:
    """Why `TensorLoss` cannot stand in for `loss_module` (None when it can)."""
    if type(loss_module) is not KLipPPOLoss:
        return f"{type(loss_module).__name__} is not KLipPPOLoss"
    try:
        policy_head(actor)
    except TypeError as error:
        return str(error)
    if not isinstance(critic, ValueHead):
        return "the critic is not a klip.algos.networks.ValueHead"
    checks = {
        "functional parameters": loss_module.functional,
        "a delayed actor": loss_module.delay_actor,
        "an importance-ratio cap": loss_module.max_importance_ratio is not None,
        "advantage scaling by return statistics": loss_module.advantage_norm is not None,
        "advantage-normalisation excluded dims": bool(loss_module.normalize_advantage_exclude_dims),
        "a critic loss other than l2": loss_module.loss_critic_type != "l2",
        "no critic": not loss_module._has_critic,
        "separate losses": loss_module.separate_losses,
        "a reduction other than mean": loss_module.reduction != "mean",
        "per-head entropy coefficients": loss_module._entropy_coeff_map is not None,
        "per-call diagnostics": loss_module.diagnostics is True,
        "per-call explained variance": loss_module.log_explained_variance,
    }
    found = [name for name, present in checks.items() if present]
    return f"the loss uses {', '.join(found)}" if found else None


class TensorLoss:
    """`KLipPPOLoss`'s losses and gradients, bit for bit, on plain tensors (see the module doc)."""

    def __init__(
        self, loss_module: KLipPPOLoss, actor: Any, critic: ValueHead, *, compile: bool = False
    ) -> None:
        reason = tensor_loss_unsupported(loss_module, actor, critic)
        if reason is not None:
            raise ValueError(f"TensorLoss cannot replace this loss module: {reason}")
        self.loss_module = loss_module
        self.head = policy_head(actor)
        self.critic = critic
        keys = loss_module.tensor_keys
        # The loss module's keys, so `set_keys` is honoured here too.
        self.in_keys = [self.head.in_keys[0], keys.action, keys.sample_log_prob, keys.advantage,
                        keys.value_target, keys.value]
        names = ["loss_objective", "kl_approx"]
        if loss_module.entropy_bonus:
            names += ["entropy", "loss_entropy"]
        names.append("loss_critic")
        # Read once: `clip_value` is a tensor buffer, and branching on it inside a
        # compiled function would break the graph.
        self._clips_value = bool(loss_module.clip_value)
        if self._clips_value:
            names.append("value_clip_fraction")
        self._metric_names = names
        self._losses = torch.compile(self.losses, dynamic=False) if compile else self.losses

    @property
    def metric_names(self) -> list[str]:
        return self._metric_names

    def minibatches(self, data: TensorDictBase, size: int) -> Iterator[tuple[Tensor, ...]]:
        columns = [data.get(key) for key in self.in_keys]
        for start in range(0, data.shape[0], size):
            yield tuple(column[start : start + size] for column in columns)

    def __call__(self, minibatch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        total, metrics, log_weight, advantage, gate = self._losses(*minibatch)
        if self.loss_module.diagnostics == "deferred":
            self.loss_module.record_diagnostics(log_weight, advantage, gate)
        return total, metrics

    def losses(
        self,
        observation: Tensor,
        action: Tensor,
        old_log_prob: Tensor,
        advantage: Tensor,
        value_target: Tensor,
        old_value: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Total loss, metrics, and the per-sample inputs of the diagnostics."""
        loss = self.loss_module
        if loss.normalize_advantage and advantage.numel() > 1:
            advantage = (advantage - advantage.mean()) / advantage.std().clamp_min(ADVANTAGE_STD_MIN)
        loc = self.head.mean(observation)
        scale = self.head.log_std.exp().expand_as(loc)
        log_prob = gaussian_log_prob(action, loc, scale)
        log_weight = (log_prob - old_log_prob).unsqueeze(-1)
        kl_approx = (old_log_prob - log_prob).unsqueeze(-1)
        objective, gate = klip_objective(loss.shape, log_weight, advantage, form=loss.form)
        terms = [(-objective).mean()]
        metrics = [terms[0].detach(), kl_approx.detach().mean()]
        if loss.entropy_bonus:
            entropy = gaussian_entropy(scale).unsqueeze(-1)
            terms.append((-loss.entropy_coeff * entropy).mean())
            metrics += [entropy.detach().mean(), terms[-1].detach()]

        value = self.critic.net(observation)
        value_loss = torch.nn.functional.mse_loss(value_target, value, reduction="none")
        clip_fraction = None
        if self._clips_value:
            change = value - old_value
            clipped = change.clamp(-loss.clip_value, loss.clip_value)
            with torch.no_grad():
                clip_fraction = (change != clipped).to(value.dtype).mean()
            clipped_loss = torch.nn.functional.mse_loss(value_target, old_value + clipped, reduction="none")
            value_loss = torch.maximum(value_loss, clipped_loss)
        terms.append((loss.critic_coeff * value_loss).mean())
        metrics.append(terms[-1].detach())
        if clip_fraction is not None:
            metrics.append(clip_fraction)
        # Summed from 0 in the module's output order, as `ModuleLoss` sums TorchRL's outputs;
        # one stacked metrics output keeps a compiled graph's outputs few.
        return sum(terms), torch.stack(metrics), log_weight.detach(), advantage.detach(), gate


def make_minibatch_loss(
    loss_module: LossModule, actor: Any, critic: Any, *, compile: bool = False
) -> MinibatchLoss:
    """`TensorLoss` where it computes exactly what `loss_module` computes, else `ModuleLoss`."""
    if tensor_loss_unsupported(loss_module, actor, critic) is None:
        return TensorLoss(loss_module, actor, critic, compile=compile)
    return ModuleLoss(loss_module, compile=compile)
