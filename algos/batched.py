"""The engine's one batched tensor loss: every agent's `KLipTensorLoss`, in one pass.

A minibatch step of N agents costs about as many kernel launches as one agent's when the loss
arithmetic runs on `[agents, samples, ...]` tensors. What may batch, and what may not, is
decided by exactness (each agent bitwise its own single run):

- **Networks: per agent.** A batched matrix product does not round each agent's product as
  the agent's own does on a CPU BLAS (`benchmarks/batched_exactness.py`: `64 -> 1` value
  heads, `64 -> 3` policy heads on one env, first layers at small batches), so each agent's
  actor and critic run on the agent's own minibatch tensors, its single run's operations.
- **Everything else: batched.** Elementwise arithmetic is the same per element wherever it
  runs; elementwise functions (`exp`, `log`, `tanh`, `sigmoid`) and row reductions are the
  same per agent when each agent's slice is a whole number of the widest vector loop's steps,
  which `batchable` guarantees (minibatches of a multiple of 64 samples). Every mean is over
  one agent's samples only, and the per-agent totals are summed before `backward`, which
  hands each agent exactly the gradient of its own loss.
- **Gates: per group of identical shapes** (`GroupedGate`), each shape's own code on its
  group's slice, per-sample context sliced the same way.

`tests/test_population.py` holds the proof: every agent's files equal its single run's, and
`--shape step` (this loss) ends bitwise where `--loss clip` (TorchRL's `ClipPPOLoss`) ends.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from klip.algos.loss import (
    ADVANTAGE_STD_MIN,
    KLipPPOLoss,
    sample_context,
    sample_context_names,
    tensor_loss_unsupported,
)
from klip.algos.networks import (
    categorical_entropy,
    categorical_head,
    categorical_log_prob,
    gaussian_entropy,
    gaussian_log_prob,
    has_categorical_policy,
    policy_head,
)
from klip.algos.written_out import WrittenOutMLPs
from klip.shapes import CoefficientShape
from klip.shapes.functional import klip_objective

# Each agent's slice of a batched elementwise function or reduction is a whole number of the
# widest CPU vector loop's steps (AVX-512: 2 x 16 float32) when minibatches hold a multiple of
# this many samples.
SAMPLE_MULTIPLE = 64


def batchable(loss_modules: Sequence[Any], actors: Sequence[Any], critics: Sequence[Any],
              minibatch_size: int, rollout_steps: int) -> bool:
    """Whether `BatchedKLipLoss` computes exactly what each agent's `KLipTensorLoss` computes."""
    if minibatch_size % SAMPLE_MULTIPLE or rollout_steps % minibatch_size:
        return False
    if any(tensor_loss_unsupported(loss, actor, critic, categorical=True) is not None
           for loss, actor, critic in zip(loss_modules, actors, critics, strict=True)):
        return False
    first = loss_modules[0]
    # One set of loss options for every agent (a population shares them; checked anyway).
    options = [(bool(loss.normalize_advantage), bool(loss.entropy_bonus), float(loss.entropy_coeff),
                float(loss.critic_coeff), bool(loss.clip_value), float(loss.clip_value or 0.0), loss.form,
                loss.diagnostics) for loss in loss_modules]
    return all(option == options[0] for option in options) and first.form in ("effective", "kl")


def shape_identity(shape: CoefficientShape) -> str:
    """Two shapes with the same identity compute the same gate (class, parameters, state)."""
    scalars = {key: value for key, value in vars(shape).items()
               if isinstance(value, int | float) and not key.startswith("_")}
    return json.dumps([type(shape).__module__, type(shape).__qualname__, shape.to_dict(), scalars],
                      sort_keys=True, default=str)


class GroupedGate:
    """`gate_from_log_ratio` over `[agents, ...]` tensors: each group of agents with an identical
    shape is evaluated by that shape on its own slice; the shapes' code runs unchanged."""

    def __init__(self, shapes: Sequence[CoefficientShape]) -> None:
        self.shapes = list(shapes)
        self.regroup()

    def regroup(self) -> None:
        """Recompute the groups (adaptive shapes change their state between iterations)."""
        groups: dict[str, list[int]] = {}
        for agent, shape in enumerate(self.shapes):
            groups.setdefault(shape_identity(shape), []).append(agent)
        self.groups: list[tuple[CoefficientShape, slice | Tensor]] = []
        for agents in groups.values():
            contiguous = agents == list(range(agents[0], agents[-1] + 1))
            index = slice(agents[0], agents[-1] + 1) if contiguous else torch.tensor(agents)
            self.groups.append((self.shapes[agents[0]], index))
        self.context = sample_context_names(self.shapes[0]) if len(self.groups) == 1 else tuple(
            sorted({name for shape, _ in self.groups for name in sample_context_names(shape)}))
        # Every group's gate within these (klip_objective skips its underflow test when finite).
        bounds = [shape.gate_bounds() for shape, _ in self.groups]
        self.bounds = (min(low for low, _ in bounds), max(high for _, high in bounds))

    def gate_with_context(self, log_ratio: Tensor, ratio: Tensor, advantage: Tensor,
                          context: dict[str, Tensor]) -> Tensor:
        if len(self.groups) == 1:
            shape = self.groups[0][0]
            with shape.using_context(check=False, **context) if context else contextlib.nullcontext():
                return shape.gate_from_log_ratio(log_ratio, ratio, advantage)
        gate = torch.empty_like(log_ratio)
        for shape, index in self.groups:
            mine = {name: value[index] for name, value in context.items() if name in shape.context}
            with shape.using_context(check=False, **mine) if mine else contextlib.nullcontext():
                gate[index] = shape.gate_from_log_ratio(log_ratio[index], ratio[index], advantage[index])
        return gate


class _BoundGate:
    """A `GroupedGate` with this minibatch's context, as `klip_objective` calls a shape."""

    def __init__(self, gate: GroupedGate, context: dict[str, Tensor]) -> None:
        self.gate, self.context = gate, context

    def gate_from_log_ratio(self, log_ratio: Tensor, ratio: Tensor, advantage: Tensor) -> Tensor:
        return self.gate.gate_with_context(log_ratio, ratio, advantage, self.context)

    def gate_bounds(self) -> tuple[float, float]:
        return self.gate.bounds


class BatchedKLipLoss:
    """Every agent's `KLipTensorLoss` on one minibatch of each agent: totals `[agents]`, metrics
    `[agents, k]`. Use where `batchable` says so."""

    def __init__(self, loss_modules: Sequence[KLipPPOLoss], actors: Sequence[Any],
                 critics: Sequence[Any], flat_parameters: Tensor) -> None:
        self.loss_modules = list(loss_modules)
        # A Gaussian policy's MLP gives the mean (its scale is a free log-std), a categorical's the logits.
        self.categorical = has_categorical_policy(actors[0])
        self.heads: list[Any] = [categorical_head(actor) if self.categorical else policy_head(actor)
                                 for actor in actors]
        policies = [head.logits if self.categorical else head.mean for head in self.heads]
        # Each agent's policy and critic MLPs, on its own minibatch: the single run's operations.
        self.networks = WrittenOutMLPs(flat_parameters, [policies, [critic.net for critic in critics]])
        first = self.loss_modules[0]
        self.normalize_advantage = bool(first.normalize_advantage)
        self.entropy_bonus = bool(first.entropy_bonus)
        self.clips_value = bool(first.clip_value)
        self.form = first.form
        self.gate = GroupedGate([loss.shape for loss in self.loss_modules])
        names = ["loss_objective", "kl_approx"]
        if self.entropy_bonus:
            names += ["entropy", "loss_entropy"]
        names.append("loss_critic")
        if self.clips_value:
            names.append("value_clip_fraction")
        self.metric_names = names
        keys = first.tensor_keys
        rollout_policy = ["logits"] if self.categorical else ["loc", "scale"]
        self.in_keys = [self.heads[0].in_keys[0], keys.action, keys.sample_log_prob, keys.advantage,
                        keys.value_target, keys.value, *rollout_policy]

    def minibatches(self, data: Sequence[Any], size: int) -> Iterator[list[tuple[Tensor, ...]]]:
        """Minibatch k of every agent's shuffled data: per agent, its columns' slices."""
        keys = [key for key in self.in_keys if key in data[0].keys()]  # noqa: SIM118 (a TensorDict iterates its batch)
        columns = [[rows.get(key) for key in keys] for rows in data]
        for start in range(0, len(data[0]), size):
            yield [tuple(column[start : start + size] for column in agent) for agent in columns]

    def __call__(self, minibatches: list[tuple[Tensor, ...]]) -> tuple[Tensor, Tensor]:
        first = self.loss_modules[0]
        observations = [minibatch[0] for minibatch in minibatches]
        action, old_log_prob, advantage, value_target, old_value = (
            torch.stack([minibatch[index] for minibatch in minibatches]) for index in range(1, 6))
        if self.normalize_advantage and advantage[0].numel() > 1:
            # Per agent: each agent's minibatch standardised by its own mean and std.
            advantage = (advantage - advantage.mean((1, 2), keepdim=True)) / advantage.std(
                (1, 2), keepdim=True).clamp_min(ADVANTAGE_STD_MIN)
        # The networks: each agent's own, on its own minibatch (see the module docstring).
        output, value = self.networks(observations, observations)
        if self.categorical:
            log_prob = categorical_log_prob(action, output)
        else:
            scale = torch.stack([head.log_std.exp() for head in self.heads]).unsqueeze(1).expand_as(output)
            log_prob = gaussian_log_prob(action, output, scale)
        log_weight = (log_prob - old_log_prob).unsqueeze(-1)
        kl_approx = (old_log_prob - log_prob).unsqueeze(-1)
        context: dict[str, Tensor] = {}
        if self.gate.context:
            # The rollout policy's parameters: a categorical's logits, a Gaussian's loc and scale.
            old = [torch.stack([minibatch[index] for minibatch in minibatches])
                   for index in range(6, len(minibatches[0]))]
            policy = ({"old_logits": old[0], "logits": output} if self.categorical
                      else {"old_loc": old[0], "old_scale": old[1], "loc": output, "scale": scale})
            context = sample_context(self.gate.context, action=action, old_log_prob=old_log_prob, **policy)
        objective, gate = klip_objective(_BoundGate(self.gate, context), log_weight, advantage,
                                         form=self.form)
        terms = [per_agent_mean(-objective)]
        metrics = [terms[0].detach(), per_agent_mean(kl_approx.detach())]
        if self.entropy_bonus:
            entropy = categorical_entropy(output) if self.categorical else gaussian_entropy(scale)
            entropy = entropy.unsqueeze(-1)
            terms.append(per_agent_mean(-first.entropy_coeff * entropy))
            metrics += [per_agent_mean(entropy.detach()), terms[-1].detach()]

        value_loss = torch.nn.functional.mse_loss(value_target, value, reduction="none")
        clip_fraction = None
        if self.clips_value:
            change = value - old_value
            clipped = change.clamp(-first.clip_value, first.clip_value)
            with torch.no_grad():
                clip_fraction = per_agent_mean((change != clipped).to(value.dtype))
            clipped_loss = torch.nn.functional.mse_loss(value_target, old_value + clipped, reduction="none")
            value_loss = torch.maximum(value_loss, clipped_loss)
        terms.append(per_agent_mean(first.critic_coeff * value_loss))
        metrics.append(terms[-1].detach())
        if clip_fraction is not None:
            metrics.append(clip_fraction)
        if first.diagnostics == "deferred":
            for agent, loss in enumerate(self.loss_modules):
                loss.record_diagnostics(log_weight[agent], advantage[agent], gate[agent])
        # Summed from 0 in KLipTensorLoss's order: agent i's total is its single run's.
        return sum(terms), torch.stack(metrics, 1)


def per_agent_mean(value: Tensor) -> Tensor:
    """The mean of each agent's samples: `[agents, ...] -> [agents]`."""
    return value.mean(tuple(range(1, value.dim())))


__all__ = ["BatchedKLipLoss", "GroupedGate", "batchable", "shape_identity"]
