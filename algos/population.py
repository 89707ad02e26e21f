"""Populations: N PPO agents (seeds x shape-parameter values) trained together in one process.

Why: on a small CPU, each agent's 320 minibatch updates per 2048 steps are latency bound
(a 64-64 MLP is a few microseconds of arithmetic and tens of microseconds of dispatch).
Stacking the agents' parameters along a leading agent dimension makes one update of N agents
cost about as many kernel launches as one agent's.

What is batched, and how:

- **Networks** (`StackedActorCritic`): each agent's actor and critic are built exactly as a
  single run with that seed builds them (same init), then stacked with
  `torch.func.stack_module_state`. torch.func rather than `TensorDict.from_modules`: the
  stacked state is a plain list of tensors (no TensorDict bookkeeping per call, the cost the
  single-agent fast paths remove) that one Adam takes as it is. The klip MLPs are evaluated
  with one `baddbmm` per layer (vmap's rule for `linear`, written out, because
  `torch.vmap(functional_call)` costs ~0.6 ms of dispatch per call here, ten times the batched
  arithmetic); any other architecture falls back to `torch.vmap(functional_call)`.
- **Loss** (`PopulationLoss`): `KLipTensorLoss`'s operations on `[agents, samples, ...]`
  tensors with every reduction over the sample dims only, so agent i's loss reads only agent
  i's data; the policy term is the same `klip_objective`. The per-agent losses are summed
  before `backward`, which hands each agent exactly the gradient of its own loss.
- **Gate**: `GroupedGate` groups agents by identical shape (class, parameters, state) and
  evaluates each group's own `CoefficientShape` on that group's slice. Any shape, built-in or
  a user's plain module with float attributes, runs unchanged; with seeds only there is one
  group and one call per minibatch, with a sweep of k values, k calls.
- **Update** (`PopulationModule._update_minibatch`): per-agent advantage normalisation (in
  the loss), per-agent gradient-norm clipping (norms over every non-agent dim), one Adam over
  the stacked tensors (Adam is elementwise, so this is N independent Adams).
- **Randomness**: one `torch.Generator` per agent (action noise, minibatch shuffles), saved
  in checkpoints; no agent draws from another's stream or from the global one.
- **Environments**: each agent's `klip.envs.make_env` stack is built with the agent's seed,
  as its single run builds it; then `klip.envs.population.SharedPopulationEnv` adopts every
  agent's sub-envs into one vector env whose wrappers keep per-agent normalisation statistics
  and episode records (bitwise the per-agent stacks' transitions, and one wrapper layer per
  step instead of N). `PopulationModule(..., shared_env=False)` steps the N stacks in turn
  (the reference).

One Lightning epoch is one PPO iteration of every agent; checkpoints hold everything an
exact resume needs. `klip.algos.population_run` builds run directories and the CLI on top.
"""

from __future__ import annotations

import copy
import json
import math
import time
import types
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from tensordict import TensorDictBase
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state
from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

from klip.algos.config import ConfigError, TrainConfig
from klip.algos.loss import ADVANTAGE_STD_MIN, KLipPPOLoss, klip_objective
from klip.algos.networks import (
    gaussian_entropy,
    gaussian_log_prob,
    make_actor,
    make_critic,
    policy_head,
)
from klip.algos.ppo import build_shape, iteration_row
from klip.algos.resolve import resolve_config
from klip.algos.rollout import SERIAL_NORMAL_MAX_ELEMENTS, StepRecords
from klip.envs import (
    drain_episode_stats,
    get_env_state,
    gym_vector_env,
    is_envpool_env,
    make_env,
    observation_and_action_dims,
    set_env_state,
)
from klip.envs.population import SharedPopulationEnv
from klip.shapes import CoefficientShape, make_shape

# Options that may differ between the agents of one population; everything else is shared.
# A shape file per agent (a study's trials) is allowed: each agent's shape is built from it.
PER_AGENT_OPTIONS = ("seed", "shape_params", "shape_file")


def check_population_configs(configs: Sequence[TrainConfig]) -> None:
    """Raise `ConfigError` unless the configs differ only in seed and shape parameters."""
    if not configs:
        raise ConfigError("a population needs at least one agent")
    # Under --loss klip a resolved config's clip_eps only records its shape's eps (per agent).
    per_agent = (*PER_AGENT_OPTIONS, "clip_eps") if configs[0].loss == "klip" else PER_AGENT_OPTIONS
    shared = [{k: v for k, v in c.to_dict().items() if k not in per_agent} for c in configs]
    for index, options in enumerate(shared[1:], start=1):
        if options != shared[0]:
            differing = sorted(k for k in options if options[k] != shared[0][k])
            raise ConfigError(f"agent {index} differs from agent 0 in {', '.join(differing)}; "
                              "a population's agents may differ only in seed and shape parameters "
                              "(or shape file)")
    identities = [(c.seed, json.dumps(c.shape_params, sort_keys=True), c.shape_file) for c in configs]
    if len(set(identities)) != len(identities):
        raise ConfigError("duplicate agents: two agents have the same seed and shape parameters")
    if configs[0].compile:
        raise ConfigError("--compile is not supported for populations")
    if configs[0].collector != "fast":
        raise ConfigError("populations collect with --collector fast only")


# -- batched networks ------------------------------------------------------------------
# Modules `StackedMLP` evaluates with batched matrix products; anything else goes through vmap.
ELEMENTWISE_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.ELU, nn.SiLU, nn.Identity)


class StackedMLP(nn.Module):
    """N copies of one `nn.Module` with stacked parameters: `[agents, batch, in] -> [agents, batch, out]`.

    Parameters are stacked with `torch.func.stack_module_state`. An `nn.Sequential` of `Linear`
    layers and elementwise activations (the klip networks) is evaluated with one `baddbmm` per
    layer; any other module with `torch.vmap(torch.func.functional_call)`. The batched product
    is the vmap rule for `linear` written out: same values, but vmap's per-call batching costs
    ~0.6 ms on this CPU, about ten times the whole batched forward (measured, see the report).
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        stacked, _ = stack_module_state(list(modules))
        self.names = list(stacked)
        # A parameter-free template: `functional_call` substitutes one agent's tensors.
        self._template = [copy.deepcopy(modules[0]).to("meta")]
        self.stacked = nn.ParameterList([nn.Parameter(stacked[name].detach().clone())
                                         for name in self.names])
        self._layers = self._batched_layers(modules[0])
        self._vmapped = torch.vmap(self._call_one)

    def _batched_layers(self, module: nn.Module) -> list[tuple[str, Any]] | None:
        """`[("linear", (weight index, bias index)) | ("activation", fn)]`, or None for vmap."""
        if not isinstance(module, nn.Sequential):
            return None
        layers: list[tuple[str, Any]] = []
        for position, layer in enumerate(module):
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                layers.append(("linear", (self.names.index(f"{position}.weight"),
                                          self.names.index(f"{position}.bias"))))
            elif isinstance(layer, ELEMENTWISE_ACTIVATIONS):
                layers.append(("activation", layer))
            else:
                return None
        return layers

    def _call_one(self, parameters: dict[str, Tensor], inputs: Tensor) -> Tensor:
        return functional_call(self._template[0], parameters, (inputs,))

    def forward(self, inputs: Tensor) -> Tensor:
        """Agent i's output uses only agent i's parameters and inputs."""
        if self._layers is None:
            return self._vmapped(dict(zip(self.names, self.stacked, strict=True)), inputs)
        hidden = inputs
        for kind, layer in self._layers:
            if kind == "linear":
                weight, bias = self.stacked[layer[0]], self.stacked[layer[1]]
                hidden = torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
            else:
                hidden = layer(hidden)
        return hidden

    def forward_vmap(self, inputs: Tensor) -> Tensor:
        """The same function through `torch.vmap(functional_call)` (the reference of tests)."""
        return self._vmapped(dict(zip(self.names, self.stacked, strict=True)), inputs)

    def agent_state(self, agent: int) -> dict[str, Tensor]:
        """Agent `agent`'s parameters, in the state_dict layout of the original module."""
        return {name: tensor[agent].detach().clone()
                for name, tensor in zip(self.names, self.stacked, strict=True)}


class StackedActorCritic(nn.Module):
    """The actors' mean MLPs and log-stds and the critics' MLPs of N agents, stacked."""

    def __init__(self, actors: Sequence[Any], critics: Sequence[Any]) -> None:
        super().__init__()
        heads = [policy_head(actor) for actor in actors]
        self.policy_mean = StackedMLP([head.mean for head in heads])
        self.log_std = nn.Parameter(torch.stack([head.log_std.detach() for head in heads]))
        self.value = StackedMLP([critic.net for critic in critics])

    @property
    def num_agents(self) -> int:
        return self.log_std.shape[0]

    def load_into(self, agent: int, actor: Any, critic: Any | None = None) -> None:
        """Copy agent `agent`'s parameters into single-agent modules (evaluation, tests)."""
        head = policy_head(actor)
        head.mean.load_state_dict(self.policy_mean.agent_state(agent))
        with torch.no_grad():
            head.log_std.copy_(self.log_std[agent])
        if critic is not None:
            critic.net.load_state_dict(self.value.agent_state(agent))


# -- gate of a population -----------------------------------------------------------------
def shape_identity(shape: CoefficientShape) -> str:
    """Two shapes with the same identity compute the same gate (class, parameters, state)."""
    scalars = {key: value for key, value in vars(shape).items()
               if isinstance(value, int | float) and not key.startswith("_")}
    return json.dumps([type(shape).__module__, type(shape).__qualname__, shape.to_dict(), scalars],
                      sort_keys=True, default=str)


class GroupedGate:
    """`gate_from_log_ratio` over `[agents, ...]` tensors: each group of agents with an identical
    shape is evaluated by that shape, on its own slice; the shapes' code runs unchanged."""

    def __init__(self, shapes: Sequence[CoefficientShape]) -> None:
        self.shapes = list(shapes)
        self.regroup()

    def regroup(self) -> None:
        """Recompute the groups (after adaptive shapes changed their state)."""
        groups: dict[str, list[int]] = {}
        for agent, shape in enumerate(self.shapes):
            groups.setdefault(shape_identity(shape), []).append(agent)
        self.groups: list[tuple[CoefficientShape, Tensor | slice]] = []
        for agents in groups.values():
            contiguous = agents == list(range(agents[0], agents[-1] + 1))
            index = slice(agents[0], agents[-1] + 1) if contiguous else torch.tensor(agents)
            self.groups.append((self.shapes[agents[0]], index))

    def gate_from_log_ratio(self, log_ratio: Tensor, ratio: Tensor, advantage: Tensor) -> Tensor:
        if len(self.groups) == 1:
            return self.groups[0][0].gate_from_log_ratio(log_ratio, ratio, advantage)
        gate = torch.empty_like(log_ratio)
        for shape, index in self.groups:
            gate[index] = shape.gate_from_log_ratio(log_ratio[index], ratio[index], advantage[index])
        return gate


def diagonal_gaussian_kl(p_loc: Tensor, p_scale: Tensor, q_loc: Tensor, q_scale: Tensor) -> Tensor:
    """`kl_divergence(IndependentNormal(p), IndependentNormal(q))`, torch's Normal formula."""
    variance_ratio = (p_scale / q_scale).pow(2)
    mean_term = ((p_loc - q_loc) / q_scale).pow(2)
    return (0.5 * (variance_ratio + mean_term - 1 - variance_ratio.log())).sum(-1)


def penalised_kl(config: TrainConfig, old_loc: Tensor, old_scale: Tensor, loc: Tensor,
                 scale: Tensor) -> Tensor:
    """The scalar-KL losses' KL between rollout (old) and current policy, `kl_direction`'s way."""
    if config.kl_direction == "new_old":
        return diagonal_gaussian_kl(loc, scale, old_loc, old_scale)
    return diagonal_gaussian_kl(old_loc, old_scale, loc, scale)


# -- batched loss ------------------------------------------------------------------------
UPDATE_COLUMNS = ("observation", "action", "action_log_prob", "advantage", "value_target",
                  "state_value", "loc", "scale")


class PopulationLoss(nn.Module):
    """Per-agent PPO losses of N agents on `[agents, samples, ...]` minibatches.

    Agent i's loss is `KLipTensorLoss`'s (shapes; `--loss clip` is the `step` shape with radius
    `clip_eps`) or `ScalarKLPPOLoss`'s (`kl_fixed`, `kl_adaptive`), with every mean taken over
    that agent's samples only. Returns the per-agent totals `[agents]` and metrics `[agents, k]`.
    """

    def __init__(self, config: TrainConfig, shapes: Sequence[CoefficientShape] | None,
                 networks: StackedActorCritic, kl_betas: Sequence[float] | None = None) -> None:
        super().__init__()
        self.config = config
        # Not a submodule: the networks belong to the LightningModule, and registering them
        # here too would store every parameter twice in checkpoints.
        self._networks = [networks]
        self.scalar_kl = config.loss in ("kl_fixed", "kl_adaptive")
        if self.scalar_kl:
            betas = kl_betas if kl_betas is not None else [config.kl_beta] * networks.num_agents
            self.register_buffer("beta", torch.tensor([float(b) for b in betas]))
            self.shapes = nn.ModuleList()
            names = ["loss_objective", "kl", "beta", "kl_approx"]
        else:
            assert shapes is not None and len(shapes) == networks.num_agents
            self.shapes = nn.ModuleList(shapes)
            self.gate = GroupedGate(shapes)
            names = ["loss_objective", "kl_approx"]
        self.entropy_bonus = config.entropy_coeff > 0
        if self.entropy_bonus:
            names += ["entropy", "loss_entropy"]
        names.append("loss_critic")
        if config.value_clip is not None:
            names.append("value_clip_fraction")
        self.metric_names = names
        self.diagnostics = config.diagnostics and not self.scalar_kl
        self._records: list[tuple[Tensor, Tensor, Tensor]] = []

    @property
    def networks(self) -> StackedActorCritic:
        return self._networks[0]

    def minibatches(self, data: dict[str, Tensor], size: int) -> Iterator[tuple[Tensor, ...]]:
        columns = [data[key] for key in UPDATE_COLUMNS]
        for start in range(0, columns[0].shape[1], size):
            yield tuple(column[:, start : start + size] for column in columns)

    def forward(self, observation: Tensor, action: Tensor, old_log_prob: Tensor, advantage: Tensor,
                value_target: Tensor, old_value: Tensor, old_loc: Tensor, old_scale: Tensor,
                ) -> tuple[Tensor, Tensor]:
        cfg = self.config
        sample_dims = tuple(range(1, advantage.dim()))
        if cfg.normalize_advantage and advantage[0].numel() > 1:
            # Per agent: each agent's minibatch is standardised by its own mean and std.
            mean = advantage.mean(sample_dims, keepdim=True)
            std = advantage.std(sample_dims, keepdim=True).clamp_min(ADVANTAGE_STD_MIN)
            advantage = (advantage - mean) / std
        loc = self.networks.policy_mean(observation)
        scale = self.networks.log_std.exp().unsqueeze(1).expand_as(loc)
        log_prob = gaussian_log_prob(action, loc, scale)
        log_weight = (log_prob - old_log_prob).unsqueeze(-1)
        kl_approx = (old_log_prob - log_prob).unsqueeze(-1)

        def per_agent_mean(value: Tensor) -> Tensor:
            return value.mean(tuple(range(1, value.dim())))

        if self.scalar_kl:
            kl = penalised_kl(self.config, old_loc, old_scale, loc, scale).unsqueeze(-1)
            beta = self.beta.view(-1, 1, 1)
            objective = log_weight.exp() * advantage - beta * kl
            terms = [per_agent_mean(-objective)]
            metrics = [terms[0].detach(), per_agent_mean(kl.detach()), self.beta.clone(),
                       per_agent_mean(kl_approx.detach())]
        else:
            objective, gate = klip_objective(self.gate, log_weight, advantage, form="effective")
            terms = [per_agent_mean(-objective)]
            metrics = [terms[0].detach(), per_agent_mean(kl_approx.detach())]
            if self.diagnostics:
                self._records.append((log_weight.detach(), advantage.detach(), gate))
        if self.entropy_bonus:
            entropy = gaussian_entropy(scale).unsqueeze(-1)
            terms.append(per_agent_mean(-cfg.entropy_coeff * entropy))
            metrics += [per_agent_mean(entropy.detach()), terms[-1].detach()]

        value = self.networks.value(observation)
        value_loss = torch.nn.functional.mse_loss(value_target, value, reduction="none")
        clip_fraction = None
        if cfg.value_clip is not None:
            change = value - old_value
            clipped = change.clamp(-cfg.value_clip, cfg.value_clip)
            with torch.no_grad():
                clip_fraction = per_agent_mean((change != clipped).to(value.dtype))
            clipped_loss = torch.nn.functional.mse_loss(value_target, old_value + clipped,
                                                        reduction="none")
            value_loss = torch.maximum(value_loss, clipped_loss)
        terms.append(per_agent_mean(cfg.critic_coeff * value_loss))
        metrics.append(terms[-1].detach())
        if clip_fraction is not None:
            metrics.append(clip_fraction)
        return sum(terms), torch.stack(metrics, 1)

    @property
    def needs_rollout_kl(self) -> bool:
        """`kl_adaptive` on PPO's rule: beta adapts to `rollout_kl` after the update."""
        return self.config.loss == "kl_adaptive" and self.config.kl_measure == "final"

    @torch.no_grad()
    def rollout_kl(self, data: dict[str, Tensor]) -> Tensor:
        """Per agent, the mean penalised KL of the current policy over its samples: `[agents]`."""
        loc = self.networks.policy_mean(data["observation"])
        scale = self.networks.log_std.exp().unsqueeze(1).expand_as(loc)
        return penalised_kl(self.config, data["loc"], data["scale"], loc, scale).mean(1)

    def pop_diagnostics(self) -> list[dict[str, float]]:
        """Per agent, the shape diagnostics over every sample since the last call."""
        if not self._records:
            return [{} for _ in range(self.networks.num_agents)]
        log_ratio, advantage, gate = (torch.cat(parts, 1) for parts in zip(*self._records, strict=True))
        self._records.clear()
        out = []
        for agent, shape in enumerate(self.shapes):
            # The single-agent loss's own statistics, fed one agent's samples.
            region = types.SimpleNamespace(region_eps=torch.tensor(float(getattr(shape, "eps", 0.2))))
            values = KLipPPOLoss.diagnostics_of(region, log_ratio[agent], advantage[agent], gate[agent])
            out.append({key: float(value) for key, value in values.items()})
        return out

    def update_after_rollout(self, per_agent_stats: Sequence[dict[str, float]]) -> None:
        """Each agent's shape (or scalar beta) sees its own iteration statistics."""
        if self.scalar_kl:
            if self.config.loss != "kl_adaptive":
                return
            target = self.config.kl_target
            key = "kl_final" if self.needs_rollout_kl else "kl"
            for agent, stats in enumerate(per_agent_stats):
                kl = float(stats[key])
                if kl > 1.5 * target:
                    self.beta[agent] *= 2.0
                elif kl < target / 1.5:
                    self.beta[agent] /= 2.0
            return
        for shape, stats in zip(self.shapes, per_agent_stats, strict=True):
            shape.update_after_rollout(stats)


def clip_grad_norm_per_agent(parameters: Sequence[Tensor], max_norm: float) -> Tensor:
    """`torch.nn.utils.clip_grad_norm_` applied to each agent's slice of stacked parameters.

    Norms are taken over every non-agent dim of every parameter and combined per agent;
    each agent's gradients are scaled by its own coefficient. Returns the norms `[agents]`.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    per_tensor = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    norms = torch.linalg.vector_norm(per_tensor, dim=0)
    coefficient = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(coefficient.view(-1, *([1] * (grad.dim() - 1))))
    return norms


# -- rollouts -----------------------------------------------------------------------------
def rollout_noise_from(generator: torch.Generator, steps: int, shape: tuple[int, ...]) -> Tensor:
    """`klip.algos.rollout.rollout_noise`, drawn from one agent's generator."""
    per_step = math.prod(shape)
    if per_step <= SERIAL_NORMAL_MAX_ELEMENTS:
        strided = torch.empty(steps * per_step, 2)[:, 0]
        return strided.normal_(generator=generator).reshape(steps, *shape)
    return torch.stack([torch.empty(shape).normal_(generator=generator) for _ in range(steps)])


class PopulationRollouts:
    """`FastRollouts` for N agents: one batched policy call per step, then the environments.

    `shared_env=True` (the default) steps every agent's sub-envs through one
    `klip.envs.population.SharedPopulationEnv`; `False` steps each agent's own `make_env`
    stack in turn: the reference, bitwise the same transitions (`tests/test_population.py`).
    """

    def __init__(self, envs: Sequence[Any], networks: StackedActorCritic, frames_per_env: int,
                 *, shared_env: bool = True) -> None:
        self.envs = list(envs)
        self.vector_envs = [gym_vector_env(env) for env in self.envs]
        self.networks = networks
        self.frames_per_env = frames_per_env
        # Each agent's first reset, as its single run's collector does; the shared env then
        # adopts the sub-envs and statistics as they are. On EnvPool the shared env has a pool
        # of its own, and the first reset is that pool's (the agents' own pools stay unused).
        self.shared: SharedPopulationEnv | None = None
        if shared_env and is_envpool_env(self.envs[0]):
            self.shared = SharedPopulationEnv(self.envs)
            first = torch.from_numpy(self.shared.reset_pool())
            self.observations = list(first.view(len(self.envs), -1, first.shape[-1]).unbind(0))
            return
        self.observations = [env.reset()["observation"].clone() for env in self.envs]
        self.shared = SharedPopulationEnv(self.envs) if shared_env else None

    def _noise_and_scales(self, generators: Sequence[torch.Generator]) -> tuple[list[np.ndarray], Tensor]:
        agents, steps = len(self.envs), self.frames_per_env
        num_envs = self.observations[0].shape[0]
        action_dim = self.networks.log_std.shape[1]
        scales = self.networks.log_std.exp().unsqueeze(1).expand(agents, num_envs, action_dim)
        noises = [rollout_noise_from(generators[agent], steps, (num_envs, action_dim)).numpy()
                  for agent in range(agents)]
        return noises, scales

    @torch.no_grad()
    def collect(self, generators: Sequence[torch.Generator]) -> list[TensorDictBase]:
        if self.shared is not None:
            return self._collect_shared(generators)
        agents, steps = len(self.envs), self.frames_per_env
        noises, scales = self._noise_and_scales(generators)
        scale_arrays = [scales[agent].numpy() for agent in range(agents)]
        records = [StepRecords() for _ in range(agents)]
        observations = self.observations
        for t in range(steps):
            locs = self.networks.policy_mean(torch.stack(observations))
            next_observations = []
            for agent in range(agents):
                loc = locs[agent]
                action = loc.numpy() + noises[agent][t] * scale_arrays[agent]
                vector_env = self.vector_envs[agent]
                next_obs, reward, terminated, truncated, _ = vector_env.step(action)
                records[agent].append(observations[agent], loc, action, next_obs, reward,
                                      terminated, truncated)
                done = terminated | truncated
                if done.any():
                    reset_obs, _ = vector_env.reset(options={"reset_mask": done})
                    next_obs = np.where(done[:, None], reset_obs, next_obs)
                next_observations.append(torch.from_numpy(next_obs))
            observations = next_observations
        self.observations = observations
        return [records[agent].to_tensordict(scales[agent]) for agent in range(agents)]

    def _collect_shared(self, generators: Sequence[torch.Generator]) -> list[TensorDictBase]:
        assert self.shared is not None
        agents, steps = len(self.envs), self.frames_per_env
        num_envs = self.observations[0].shape[0]
        noises, scales = self._noise_and_scales(generators)
        # Agent-major rows, as the shared env orders its sub-envs.
        noise = np.concatenate(noises, axis=1)
        flat_scales = scales.reshape(agents * num_envs, -1)
        scale_array = flat_scales.numpy()
        records = StepRecords()
        observation = torch.cat(self.observations)
        for t in range(steps):
            loc = self.networks.policy_mean(observation.view(agents, num_envs, -1))
            loc = loc.reshape(agents * num_envs, -1)
            action = loc.numpy() + noise[t] * scale_array
            next_obs, reward, terminated, truncated, _ = self.shared.step(action)
            records.append(observation, loc, action, next_obs, reward, terminated, truncated)
            done = terminated | truncated
            if done.any():
                next_obs = np.where(done[:, None], self.shared.reset_done(done), next_obs)
            observation = torch.from_numpy(next_obs)
        self.observations = list(observation.reshape(agents, num_envs, -1).unbind(0))
        rollout = records.to_tensordict(flat_scales).reshape(agents, num_envs, steps)
        return list(rollout.unbind(0))

    def drain_episodes(self, agent: int) -> list[tuple[float, int]]:
        """Raw (return, length) of agent `agent`'s episodes finished since the last call."""
        if self.shared is not None:
            return self.shared.drain_episodes(agent)
        return drain_episode_stats(self.envs[agent])

    def agent_env(self, agent: int) -> Any:
        """Agent `agent`'s own `make_env` env, its statistics up to date (evaluation)."""
        if self.shared is not None:
            self.shared.sync_to_agent_envs()
        return self.envs[agent]

    def state_dict(self) -> dict[str, Any]:
        if self.shared is not None:
            self.shared.sync_to_agent_envs()
        return {"envs": [get_env_state(env) for env in self.envs],
                "observations": [obs.clone() for obs in self.observations]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for env, env_state in zip(self.envs, state["envs"], strict=True):
            set_env_state(env, env_state)
        if self.shared is not None:
            self.shared.sync_from_agent_envs()
        self.observations = [obs.clone() for obs in state["observations"]]


# -- the Lightning module -----------------------------------------------------------------
class PopulationModule(pl.LightningModule):
    """N agents in one LightningModule; one Lightning epoch is one PPO iteration of every agent.

    `configs` are the agents' `TrainConfig` dicts; they may differ only in seed and shape
    parameters. Agent i starts with the parameters, env and random stream its single run
    (`PPOModule` with that config) starts with.
    """

    def __init__(self, configs: list[dict[str, Any]], shared_env: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Resolved as a single run resolves them (loss-specific defaults filled in).
        self.configs = [resolve_config(TrainConfig.from_dict(dict(c)))[0] for c in configs]
        check_population_configs(self.configs)
        self.config = cfg = self.configs[0]
        self.automatic_optimization = False
        envs, actors, critics, shapes, generators = [], [], [], [], []
        for agent_config in self.configs:
            # The single run's order: seed, env, actor, critic; its RNG stream then starts here.
            torch.manual_seed(agent_config.seed)
            env = make_env(cfg.task, num_envs=cfg.num_envs, seed=agent_config.seed, gamma=cfg.gamma,
                           backend=cfg.env_backend)
            observation_dim, action_dim = observation_and_action_dims(env)
            actors.append(make_actor(observation_dim, action_dim, cfg.hidden))
            critics.append(make_critic(observation_dim, cfg.hidden))
            envs.append(env)
            if cfg.loss == "clip":
                # `--loss clip` and `--shape step` have bitwise equal gradients (tests/test_training.py).
                shapes.append(make_shape("step", eps=cfg.clip_eps))
            elif cfg.loss == "klip":
                shapes.append(build_shape(agent_config))
            generator = torch.Generator()
            generator.set_state(torch.get_rng_state())
            generators.append(generator)
        self.envs = envs
        self.generators = generators
        self.networks = StackedActorCritic(actors, critics)
        self.loss_module = PopulationLoss(cfg, shapes or None, self.networks)
        self.rollouts = PopulationRollouts(envs, self.networks, cfg.frames_per_env,
                                           shared_env=shared_env)
        self.frames = 0
        self.recent_returns: list[deque[float]] = [deque(maxlen=20) for _ in self.configs]
        self.return_history: list[list[tuple[int, float]]] = [[] for _ in self.configs]
        self.rows: list[dict[str, float]] = []
        self.last_row: dict[str, float] = {}

    @property
    def num_agents(self) -> int:
        return len(self.configs)

    def configure_optimizers(self) -> Any:
        cfg = self.config
        implementation = {"fused": True} if cfg.fused_adam else {"foreach": True}
        optimizer = torch.optim.Adam(self.networks.parameters(), lr=cfg.lr, eps=cfg.adam_eps,
                                     **implementation)
        iterations = cfg.iterations

        def linear(iteration: int) -> float:
            return 1.0 - iteration / iterations if cfg.anneal_lr else 1.0

        return [optimizer], [torch.optim.lr_scheduler.LambdaLR(optimizer, linear)]

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader([0], batch_size=None)

    # -- one PPO iteration of every agent --------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        started = time.perf_counter()
        if not self.loss_module.scalar_kl:
            # Adaptive shapes (or a checkpoint's shape buffers) may have changed which agents
            # share a gate since the last iteration.
            self.loss_module.gate.regroup()
        rollouts = self.rollouts.collect(self.generators)
        collected = time.perf_counter()
        data = self.advantages(rollouts)
        advantaged = time.perf_counter()

        metrics = self.update(data, optimizer)
        scheduler.step()
        updated = time.perf_counter()

        self.frames += data["observation"].shape[1]
        summaries = self._summarise(metrics, data)
        if self.loss_module.needs_rollout_kl:
            for summary, kl in zip(summaries, self.loss_module.rollout_kl(data).tolist(), strict=True):
                summary["kl_final"] = kl
        self.loss_module.update_after_rollout(summaries)
        self._log_iteration(summaries, rollouts, started, collected, advantaged, updated)

    def update(self, data: dict[str, Tensor], optimizer: Any) -> list[Tensor]:
        """K epochs of shuffled minibatch steps of every agent on its own `data[key][agent]`."""
        cfg = self.config
        parameters = list(self.networks.parameters())
        samples = data["observation"].shape[1]
        agent_index = torch.arange(self.num_agents).unsqueeze(1)
        metrics: list[Tensor] = []
        for _ in range(cfg.epochs):
            # Each agent shuffles its own samples with its own stream.
            order = torch.stack([torch.randperm(samples, generator=g) for g in self.generators])
            shuffled = {key: value[agent_index, order] for key, value in data.items()}
            for minibatch in self.loss_module.minibatches(shuffled, cfg.minibatch_size):
                metrics.append(self._update_minibatch(minibatch, optimizer, parameters))
        return metrics

    def _update_minibatch(self, minibatch: tuple[Tensor, ...], optimizer: Any,
                          parameters: list[Tensor]) -> Tensor:
        totals, metrics = self.loss_module(*minibatch)
        optimizer.zero_grad(set_to_none=True)
        # d(sum_i L_i)/d theta_i = dL_i/d theta_i: each agent gets its own loss's gradient.
        totals.sum().backward()
        grad_norms = clip_grad_norm_per_agent(parameters, self.config.max_grad_norm)
        optimizer.step()
        return torch.cat([metrics, grad_norms.unsqueeze(1)], 1)

    @torch.no_grad()
    def advantages(self, rollouts: Sequence[TensorDictBase]) -> dict[str, Tensor]:
        """GAE for every agent at once: `[agents, samples, ...]` columns of the update."""
        cfg = self.config
        stacked = torch.stack(list(rollouts))  # [agents, envs, steps]
        agents, envs, steps = stacked.shape
        observation = stacked["observation"]
        next_observation = stacked["next", "observation"]
        flat = (agents, envs * steps, -1)
        value = self.networks.value(observation.reshape(flat)).reshape(agents * envs, steps, 1)
        next_value = self.networks.value(next_observation.reshape(flat)).reshape(agents * envs, steps, 1)
        advantage, value_target = vec_generalized_advantage_estimate(
            cfg.gamma, cfg.gae_lambda, value, next_value,
            stacked["next", "reward"].reshape(agents * envs, steps, 1),
            done=stacked["next", "done"].reshape(agents * envs, steps, 1),
            terminated=stacked["next", "terminated"].reshape(agents * envs, steps, 1),
        )
        flat_steps = (agents, envs * steps)
        columns = {key: stacked[key].reshape(*flat_steps, *stacked[key].shape[3:])
                    for key in ("observation", "action", "action_log_prob", "loc", "scale")}
        columns["advantage"] = advantage.reshape(*flat_steps, 1)
        columns["value_target"] = value_target.reshape(*flat_steps, 1)
        columns["state_value"] = value.reshape(*flat_steps, 1)
        return columns

    def _summarise(self, metrics: list[Tensor], data: dict[str, Tensor]) -> list[dict[str, float]]:
        names = [*self.loss_module.metric_names, "grad_norm"]
        # [minibatches, agents, k] -> per agent, each metric's mean over the iteration.
        means = torch.stack(metrics).float().mean(0).tolist()
        diagnostics = self.loss_module.pop_diagnostics() if self.loss_module.diagnostics else [
            {} for _ in self.configs]
        summaries = []
        for agent in range(self.num_agents):
            summary = dict(zip(names, means[agent], strict=True))
            target, value = data["value_target"][agent], data["state_value"][agent]
            scale = data["scale"][agent]
            summary["explained_variance"] = float(
                1 - (target - value).var() / target.var().clamp_min(1e-8))
            summary["entropy"] = float(torch.log(scale[0]).sum() + 0.5 * scale.shape[-1]
                                       * (1 + math.log(2 * math.pi)))
            summary.update(diagnostics[agent])
            summaries.append(summary)
        return summaries

    def _log_iteration(self, summaries: list[dict[str, float]], rollouts: Sequence[TensorDictBase],
                       started: float, collected: float, advantaged: float, updated: float) -> None:
        lr = float(self.optimizers().optimizer.param_groups[0]["lr"])
        elapsed = updated - started
        rows = []
        for agent, (summary, rollout) in enumerate(zip(summaries, rollouts, strict=True)):
            episodes = self.rollouts.drain_episodes(agent)
            for episode_return, _ in episodes:
                self.recent_returns[agent].append(episode_return)
                self.return_history[agent].append((self.frames, episode_return))
            # The phase times are the population's, shared by the agents.
            rows.append(iteration_row(
                summary, iteration=self.current_epoch + 1, frames=self.frames, lr=lr,
                episodes=episodes, recent_returns=self.recent_returns[agent], rollout=rollout,
                phase_times=(started, collected, advantaged, updated),
            ))
        self.rows = rows
        recent = [row["episode/return_recent"] for row in rows if "episode/return_recent" in row]
        # What the progress bar shows: population totals and means.
        self.last_row = {"time/steps_per_s": self.num_agents * rollouts[0].numel() / elapsed}
        if recent:
            self.last_row["episode/return_recent"] = float(np.mean(recent))

    # -- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["klip_population"] = {
            "frames": self.frames,
            "recent_returns": [list(d) for d in self.recent_returns],
            "return_history": [list(h) for h in self.return_history],
            "rollouts": self.rollouts.state_dict(),
            "generators": [g.get_state() for g in self.generators],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["klip_population"]
        self.frames = state["frames"]
        for recent, saved in zip(self.recent_returns, state["recent_returns"], strict=True):
            recent.clear()
            recent.extend(saved)
        self.return_history = [[tuple(item) for item in h] for h in state["return_history"]]
        self.rollouts.load_state_dict(state["rollouts"])
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)

    def agent_modules(self, agent: int) -> tuple[Any, Any]:
        """Single-agent actor and critic holding agent `agent`'s current parameters."""
        observation_dim, action_dim = observation_and_action_dims(self.envs[agent])
        actor = make_actor(observation_dim, action_dim, self.config.hidden)
        critic = make_critic(observation_dim, self.config.hidden)
        self.networks.load_into(agent, actor, critic)
        return actor, critic


__all__ = [
    "GroupedGate",
    "PopulationLoss",
    "PopulationModule",
    "PopulationRollouts",
    "StackedActorCritic",
    "StackedMLP",
    "check_population_configs",
    "clip_grad_norm_per_agent",
    "diagonal_gaussian_kl",
    "rollout_noise_from",
]
