"""Actor and critic of the paper's protocol (CleanRL / SB3 MuJoCo defaults).

64-64 tanh MLPs, orthogonal init (gain sqrt(2) hidden, 0.01 policy head,
1.0 value head), zero biases. Continuous actions: a diagonal Gaussian with a
state-independent log-std initialised at 0. Discrete actions: a categorical
distribution over the head's logits (CleanRL's `ppo.py`), actions as integer
indices. Wrapped as TorchRL modules so that the collector and the losses read
and write the usual keys.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.modules import IndependentNormal, ProbabilisticActor

OBSERVATION_KEY = "observation"


def _layer(in_features: int, out_features: int, gain: float) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp(in_features: int, out_features: int, hidden: int, head_gain: float) -> nn.Sequential:
    return nn.Sequential(
        _layer(in_features, hidden, math.sqrt(2)),
        nn.Tanh(),
        _layer(hidden, hidden, math.sqrt(2)),
        nn.Tanh(),
        _layer(hidden, out_features, head_gain),
    )


class GaussianPolicyHead(TensorDictModuleBase):
    """Mean from an MLP, scale from a free log-std vector (not a function of the state).

    Reads and writes the TensorDict itself instead of being wrapped in a
    `TensorDictModule`, whose output path probes for pandas on every call in
    tensordict 0.14 (`TensorDict.from_any`); same numbers, less time per update.
    """

    in_keys = [OBSERVATION_KEY]  # noqa: RUF012 (tensordict reads these class lists)
    out_keys = ["loc", "scale"]  # noqa: RUF012

    def __init__(self, observation_dim: int, action_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.mean = mlp(observation_dim, action_dim, hidden, head_gain=0.01)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        loc = self.mean(tensordict.get(OBSERVATION_KEY))
        tensordict.set("loc", loc)
        tensordict.set("scale", self.log_std.exp().expand_as(loc))
        return tensordict


class CategoricalPolicyHead(TensorDictModuleBase):
    """Logits from an MLP (the Gaussian mean's trunk and init), written as `logits`."""

    in_keys = [OBSERVATION_KEY]  # noqa: RUF012 (tensordict reads these class lists)
    out_keys = ["logits"]  # noqa: RUF012

    def __init__(self, observation_dim: int, num_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.logits = mlp(observation_dim, num_actions, hidden, head_gain=0.01)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set("logits", self.logits(tensordict.get(OBSERVATION_KEY)))
        return tensordict


class Categorical(torch.distributions.Categorical):
    """torch's `Categorical` (integer actions) whose deterministic action is the mode (argmax).

    Without `deterministic_sample`, tensordict falls back to the mode too, warning at every step.
    """

    @property
    def deterministic_sample(self) -> torch.Tensor:
        return self.mode


class ValueHead(TensorDictModuleBase):
    """State value from an MLP, written as `state_value` (see `GaussianPolicyHead` for why)."""

    in_keys = [OBSERVATION_KEY]  # noqa: RUF012 (tensordict reads these class lists)
    out_keys = ["state_value"]  # noqa: RUF012

    def __init__(self, observation_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = mlp(observation_dim, 1, hidden, head_gain=1.0)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set("state_value", self.net(tensordict.get(OBSERVATION_KEY)))
        return tensordict


def gaussian_log_prob(action: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`IndependentNormal(loc, scale).log_prob(action)` op for op (bitwise the same, gradients too),
    without building a distribution object: the fast paths call it once per step or minibatch."""
    return (
        -((action - loc) ** 2) / (2 * scale**2) - scale.log() - math.log(math.sqrt(2 * math.pi))
    ).sum(-1)


def gaussian_entropy(scale: torch.Tensor) -> torch.Tensor:
    """`IndependentNormal(loc, scale).entropy()` op for op."""
    return (0.5 + 0.5 * math.log(2 * math.pi) + torch.log(scale)).sum(-1)


def diagonal_gaussian_kl(p_loc: torch.Tensor, p_scale: torch.Tensor, q_loc: torch.Tensor,
                         q_scale: torch.Tensor) -> torch.Tensor:
    """`kl_divergence(IndependentNormal(p), IndependentNormal(q))` per sample, torch's Normal formula."""
    variance_ratio = (p_scale / q_scale).pow(2)
    mean_term = ((p_loc - q_loc) / q_scale).pow(2)
    return (0.5 * (variance_ratio + mean_term - 1 - variance_ratio.log())).sum(-1)


def categorical_log_prob(action: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """`Categorical(logits=logits).log_prob(action)` op for op, without a distribution object."""
    normalized = logits - logits.logsumexp(dim=-1, keepdim=True)
    index, normalized = torch.broadcast_tensors(action.long().unsqueeze(-1), normalized)
    return normalized.gather(-1, index[..., :1]).squeeze(-1)


def categorical_sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """`Categorical(logits=logits).sample()` op for op, drawing from `generator` (the global
    stream when None): the numbers TorchRL's `ProbabilisticActor` draws with that stream."""
    normalized = logits - logits.logsumexp(dim=-1, keepdim=True)
    probs = torch.softmax(normalized, dim=-1)
    draws = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, True, generator=generator).T
    return draws.reshape(logits.shape[:-1])


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """`Categorical(logits=logits).entropy()` per sample."""
    return Categorical(logits=logits, validate_args=False).entropy()


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """`kl_divergence(Categorical(p), Categorical(q))` per sample: torch's closed form,
    `sum_a p(a) (log p(a) - log q(a))`."""
    p = Categorical(logits=p_logits, validate_args=False)
    q = Categorical(logits=q_logits, validate_args=False)
    return torch.distributions.kl_divergence(p, q)


def has_categorical_policy(actor: Any) -> bool:
    """Whether `actor` (a TorchRL probabilistic actor) draws from a categorical over `logits`."""
    modules = getattr(actor, "module", None)
    last = modules[-1] if isinstance(modules, nn.ModuleList | nn.Sequential) and len(modules) else None
    distribution = getattr(last, "distribution_class", None)
    return isinstance(distribution, type) and issubclass(distribution, torch.distributions.Categorical)


def categorical_head(actor: ProbabilisticActor) -> CategoricalPolicyHead:
    """The `CategoricalPolicyHead` inside an actor from `make_actor(..., discrete=True)`."""
    head = actor.module[0] if isinstance(actor, ProbabilisticActor) else None
    if not isinstance(head, CategoricalPolicyHead):
        raise TypeError("this fast path needs an actor built by klip.algos.networks.make_actor")
    return head


def policy_head(actor: ProbabilisticActor) -> GaussianPolicyHead:
    """The `GaussianPolicyHead` inside an actor from `make_actor` (observation -> loc, scale)."""
    head = actor.module[0] if isinstance(actor, ProbabilisticActor) else None
    if not isinstance(head, GaussianPolicyHead):
        raise TypeError("this fast path needs an actor built by klip.algos.networks.make_actor")
    return head


def make_actor(observation_dim: int, action_dim: int, hidden: int = 64, *, discrete: bool = False
               ) -> ProbabilisticActor:
    """The policy: Gaussian over `action_dim` dims, or with `discrete` categorical over
    `action_dim` actions (integer actions, as `GymWrapper(categorical_action_encoding=True)`)."""
    if discrete:
        return ProbabilisticActor(
            CategoricalPolicyHead(observation_dim, action_dim, hidden),
            in_keys=["logits"],
            distribution_class=Categorical,
            return_log_prob=True,
        )
    return ProbabilisticActor(
        GaussianPolicyHead(observation_dim, action_dim, hidden),
        in_keys=["loc", "scale"],
        distribution_class=IndependentNormal,
        # The raw loc: TorchRL's default squashes it through tanh(loc/5)*5.
        distribution_kwargs={"tanh_loc": False},
        return_log_prob=True,
    )


def make_critic(observation_dim: int, hidden: int = 64) -> ValueHead:
    return ValueHead(observation_dim, hidden)
