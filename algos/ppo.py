"""The one training engine: PPO for N agents, one Lightning training step per PPO iteration.

A single run is a population of one; `klip train --seeds/--sweep`, a study's `--batch` and a
grid's `--seeds-together` are populations of many. `training_step` reads top to bottom:
collect one rollout of every agent (one vector env steps all their sub-envs), GAE (each
agent's values, one recursion for all), then K epochs of shuffled minibatches (`update`):
every agent's minibatch loss, one backward pass over their sum (each agent's networks written
out in one autograd node), a gradient clip per agent, one Adam step; then one metrics row per
agent.

**Every agent is bitwise its own single run.** Each agent owns the modules its single run
builds (same seed order, same init), its own random stream (action noise, shuffles) and its
own loss module, and its networks run on its own tensors: a batched matrix product does not
round each agent's product as the agent's own does (`benchmarks/batched_exactness.py`). What
is shared is exact by construction, and tested (`tests/test_population.py`): the loss
arithmetic on `[agents, samples]` tensors (`batched.BatchedKLipLoss`), the sum of independent
losses (each agent gets the gradient of its own), one Adam on a flat buffer of every agent's
parameters (Adam is elementwise), the clip as `clip_grad_norm_` computes it.

Discrete tasks (a categorical policy, `networks.make_actor(discrete=True)`) take the same paths:
`BatchedKLipLoss` writes out the categorical's log-probability, entropy and KL as well.

The losses: shapes run through `batched.BatchedKLipLoss` (every agent's `KLipTensorLoss` in
one pass; `KLipTensorLoss` is bitwise `KLipPPOLoss`); `--loss clip` through TorchRL's own
`ClipPPOLoss` and the scalar-KL baselines through `loss.ScalarKLPPOLoss`, agent by agent
(`update.ModuleLoss`). The `step` shape's gradients are bitwise `ClipPPOLoss`'s, so
`--shape step` and `--loss clip` runs end with equal parameters.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import ClipPPOLoss, LossModule
from torchrl.objectives.value import GAE

from klip import compat
from klip.algos.advantage import estimate_advantages, make_gae
from klip.algos.batched import BatchedKLipLoss, batchable
from klip.algos.config import ConfigError, TrainConfig
from klip.algos.divergence import TrainingDiverged, first_non_finite
from klip.algos.flat import FlatAdam, FlatParameters
from klip.algos.loss import KLipPPOLoss, ScalarKLPPOLoss
from klip.algos.networks import categorical_entropy, make_actor, make_critic
from klip.algos.resolve import resolve_config
from klip.algos.rollout import make_rollouts
from klip.algos.update import MinibatchLoss, make_minibatch_loss
from klip.envs import is_discrete, make_env, observation_and_action_dims
from klip.shapes import CoefficientShape

# Keys the update reads; selecting them once per rollout keeps minibatch slicing cheap.
# `loc`/`scale` are a Gaussian rollout policy's parameters, `logits` a categorical's.
UPDATE_KEYS = ("observation", "action", "action_log_prob", "advantage", "value_target",
               "state_value", "loc", "scale", "logits")
# Options that may differ between the agents of one population; everything else is shared.
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
    identities = [(c.seed, repr(sorted(c.shape_params.items())), c.shape_file) for c in configs]
    if len(set(identities)) != len(identities):
        raise ConfigError("duplicate agents: two agents have the same seed and shape parameters")
    if len(configs) > 1 and configs[0].compile:
        raise ConfigError("--compile trains one agent at a time; drop --seeds/--sweep or --compile")
    if len(configs) > 1 and configs[0].collector != "fast":
        raise ConfigError("--collector torchrl is the single run's reference; populations collect "
                          "with --collector fast")


def build_loss(config: TrainConfig, actor: Any, critic: Any, shape: CoefficientShape) -> LossModule:
    """The agent's TorchRL loss module: `ClipPPOLoss`, `ScalarKLPPOLoss` or `KLipPPOLoss`."""
    common = dict(
        # With a zero coefficient the entropy term only costs time (its gradient is
        # exactly zero); the trainer logs the policy entropy once per iteration instead.
        entropy_bonus=config.entropy_coeff > 0,
        entropy_coeff=config.entropy_coeff,
        # Explained variance is logged once per iteration over the whole batch (as CleanRL does).
        log_explained_variance=False,
        critic_coeff=config.critic_coeff,
        loss_critic_type="l2",
        normalize_advantage=config.normalize_advantage,
        clip_value=config.value_clip,
        # functional=False: no parameter swapping per call; same numbers, less overhead.
        functional=False,
    )
    if config.loss == "clip":
        return ClipPPOLoss(actor, critic, clip_epsilon=config.clip_eps, **common)
    if config.loss in ("kl_fixed", "kl_adaptive"):
        # kl_fixed records no kl_target or kl_measure (it has neither); the loss keeps its defaults.
        chosen = {key: value for key in ("kl_target", "kl_measure", "kl_direction")
                  if (value := getattr(config, key)) is not None}
        return ScalarKLPPOLoss(actor, critic, beta=config.kl_beta,
                               adaptive=config.loss == "kl_adaptive", **chosen, **common)
    return KLipPPOLoss(actor, critic, shape=shape,
                       diagnostics="deferred" if config.diagnostics else False, **common)


def build_shape(config: TrainConfig) -> CoefficientShape | None:
    return resolve_config(config)[1]


def iteration_row(
    summary: dict[str, float],
    *,
    iteration: int,
    frames: int,
    lr: float,
    episodes: list[tuple[float, int]],
    recent_returns: Any,
    rollout: TensorDictBase,
    phase_times: tuple[float, float, float, float],
) -> dict[str, float]:
    """One metrics.csv row of an agent's PPO iteration (see docs/metrics.md for the columns).

    `episodes` are the (return, length) of the episodes that ended in the iteration;
    `phase_times` the clock at its start, after collection, after GAE and after the update.
    """
    started, collected, advantaged, updated = phase_times
    row: dict[str, float] = {f"train/{key}": value for key, value in summary.items()}
    row.update({
        "iteration": float(iteration),
        "frames": float(frames),
        "lr": lr,
        "episodes": float(len(episodes)),
        "time/collect_s": collected - started,
        "time/advantage_s": advantaged - collected,
        "time/update_s": updated - advantaged,
        "time/steps_per_s": rollout.numel() / (updated - started),
        "rollout/reward_mean": float(rollout["next", "reward"].mean()),
    })
    if episodes:
        row["episode/return_mean"] = float(np.mean([r for r, _ in episodes]))
        row["episode/length_mean"] = float(np.mean([n for _, n in episodes]))
    if recent_returns:
        row["episode/return_recent"] = float(np.mean(recent_returns))
    return row


class Agent(nn.Module):
    """One agent: the modules, loss, random stream and records its single run has.

    Built in the single run's order (seed, env, actor, critic), so agent i of any population
    starts from the parameters, environment and random stream of its single run.
    """

    def __init__(self, config: TrainConfig, shape: CoefficientShape | None) -> None:
        super().__init__()
        self.config = config
        torch.manual_seed(config.seed)
        # Not a submodule: the env's state is checkpointed by the rollouts (`klip.envs.state`).
        self.__dict__["env"] = make_env(config.task, num_envs=config.num_envs, seed=config.seed,
                                        gamma=config.gamma, backend=config.env_backend)
        observation_dim, action_dim = observation_and_action_dims(self.env)
        self.actor = make_actor(observation_dim, action_dim, config.hidden, discrete=is_discrete(self.env))
        self.critic = make_critic(observation_dim, config.hidden)
        self.loss_module = build_loss(config, self.actor, self.critic, shape)
        # Not submodules: the loss module holds the actor and critic already.
        self.__dict__["advantage_module"] = make_gae(config.gamma, config.gae_lambda, self.critic)
        self.__dict__["minibatch_loss"] = make_minibatch_loss(self.loss_module, self.actor, self.critic,
                                                              compile=config.compile)
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.return_history: list[tuple[int, float]] = []
        self.failure: TrainingDiverged | None = None
        self.last_row: dict[str, float] = {}
        # The agent's own stream (action noise, shuffles) starts where its single run's global
        # stream stands once everything is built.
        self.generator = torch.Generator()
        self.generator.set_state(torch.get_rng_state())

    advantage_module: GAE
    minibatch_loss: MinibatchLoss
    env: Any

    @property
    def active(self) -> bool:
        return self.failure is None

    def trained_parameters(self) -> list[Tensor]:
        """The actor's and critic's parameters: what the optimiser updates."""
        return [*self.actor.parameters(), *self.critic.parameters()]

    def state(self) -> dict[str, Any]:
        return {"recent_returns": list(self.recent_returns), "return_history": list(self.return_history),
                "generator": self.generator.get_state(),
                "failure": None if self.failure is None else [self.failure.iteration, self.failure.quantity]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.recent_returns.clear()
        self.recent_returns.extend(state["recent_returns"])
        self.return_history = [tuple(item) for item in state["return_history"]]
        self.generator.set_state(state["generator"])
        if state.get("failure") is not None:
            self.failure = TrainingDiverged(*state["failure"])


@dataclass
class _EvaluationTarget:
    config: TrainConfig
    env: Any
    actor: Any
    frames: int


def _minibatches(batched: BatchedKLipLoss | None, agents: Sequence[Agent], shuffled: Sequence[TensorDictBase],
                 size: int) -> Iterator[list[Any]]:
    """Minibatch k of every agent, in the form its loss takes."""
    if batched is not None:
        yield from batched.minibatches(shuffled, size)
        return
    per_agent = [agent.minibatch_loss.minibatches(rows, size)
                 for agent, rows in zip(agents, shuffled, strict=True)]
    for minibatches in zip(*per_agent, strict=True):
        yield list(minibatches)


def _losses(batched: BatchedKLipLoss | None, agents: Sequence[Agent], minibatches: list[Any]
            ) -> tuple[Tensor, Tensor]:
    """The sum of every agent's minibatch loss, and each agent's metrics `[agents, metric]`."""
    if batched is not None:
        totals, metrics = batched(minibatches)
        return totals.sum(), metrics
    outputs = [agent.minibatch_loss(minibatch) for agent, minibatch in zip(agents, minibatches, strict=True)]
    total = outputs[0][0] if len(outputs) == 1 else torch.stack([total for total, _ in outputs]).sum()
    return total, torch.stack([values for _, values in outputs])


class PPOModule(pl.LightningModule):
    """PPO for N agents (N >= 1) sharing a task and options; `current_epoch` counts PPO iterations.

    `configs` are the agents' `TrainConfig` dicts; they may differ only in seed and shape
    parameters. `shapes[i]`, when given, is agent i's ready shape object (instead of its
    config's `--shape`).
    """

    def __init__(self, configs: list[dict[str, Any]], shapes: Sequence[CoefficientShape | None] | None = None
                 ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["shapes"])
        given = list(shapes) if shapes is not None else [None] * len(configs)
        resolved = [resolve_config(TrainConfig.from_dict(dict(config)), shape)
                    for config, shape in zip(configs, given, strict=True)]
        check_population_configs([config for config, _ in resolved])
        self.agents = nn.ModuleList([Agent(config, shape) for config, shape in resolved])
        self.config = cfg = self.agents[0].config
        self.automatic_optimization = False
        # Not a submodule (checkpoints hold no state of it): the agents' shared GAE recursion.
        self.__dict__["recursion"] = make_gae(cfg.gamma, cfg.gae_lambda, None)
        self.rollouts = make_rollouts(cfg.collector, [agent.env for agent in self.agents],
                                      [agent.actor for agent in self.agents], cfg.frames_per_env)
        self.frames = 0
        self.iteration_lr = cfg.lr  # the rate the running iteration uses (its `lr` column)
        self.metric_names: list[str] = []  # the update's metric columns, set by `update`
        # Linear annealing (start iteration, factor there, iteration where it reaches 0);
        # a resume that changes --steps re-plans from the current rate (see `plan_lr_to`).
        self.lr_plan: tuple[int, float, int] = (0, 1.0, cfg.iterations)
        # Held by the optimiser, not registered: the agents' modules carry these values in
        # checkpoints (their parameters are views of it).
        self.__dict__["flat"] = FlatParameters([agent.trained_parameters() for agent in self.agents])
        if cfg.compile:
            compat.configure_inductor()

    # -- the agents ----------------------------------------------------------------------
    @property
    def num_agents(self) -> int:
        return len(self.agents)

    @property
    def configs(self) -> list[TrainConfig]:
        return [agent.config for agent in self.agents]

    def _only(self) -> Agent:
        if len(self.agents) != 1:
            raise AttributeError("a population has no single actor, critic or env; use module.agents[i]")
        return self.agents[0]

    @property
    def actor(self) -> Any:
        return self._only().actor

    @property
    def critic(self) -> Any:
        return self._only().critic

    @property
    def env(self) -> Any:
        return self._only().env

    @property
    def loss_module(self) -> LossModule:
        return self._only().loss_module

    @property
    def return_history(self) -> list[tuple[int, float]]:
        return self._only().return_history

    @property
    def recent_returns(self) -> deque[float]:
        return self._only().recent_returns

    @property
    def last_row(self) -> dict[str, float]:
        return self._only().last_row

    # -- optimisation set-up ---------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.config
        # FlatAdam is `foreach` Adam, which gives bitwise the default (single-tensor) Adam's
        # results, tensor by tensor; fused is faster still but rounds differently, so it is
        # opt-in like `compile`.
        if cfg.fused_adam:
            optimizer = torch.optim.Adam([self.flat.tensor], lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        else:
            optimizer = FlatAdam(self.flat.tensor, lr=cfg.lr, eps=cfg.adam_eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return [optimizer], [scheduler]

    def lr_factor(self, iteration: int) -> float:
        """Factor of the base learning rate at `iteration`."""
        if not self.config.anneal_lr:
            return 1.0
        start, factor, end = self.lr_plan
        # With the plan (0, 1.0, n) this is bitwise the plain schedule `1 - k/n`.
        return factor * (1.0 - (iteration - start) / (end - start))

    def plan_lr_to(self, iterations: int) -> None:
        """After a resume that changed --steps: anneal from the current factor to 0 at `iterations`."""
        if iterations == self.lr_plan[2]:
            return
        done = self.frames // self.config.rollout_steps
        self.lr_plan = (done, self.lr_factor(done), iterations)

    def train_dataloader(self) -> Any:
        # One dummy item per Lightning epoch: the data comes from the environment.
        return torch.utils.data.DataLoader([0], batch_size=None)

    # -- one PPO iteration of every agent ---------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        cfg = self.config
        # Lightning's optimiser wrapper: its step() counts global_step (one per minibatch),
        # which periodic checkpointing relies on.
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        started = time.perf_counter()
        frames_before = self.frames
        self.iteration_lr = float(optimizer.optimizer.param_groups[0]["lr"])
        indices = [index for index, agent in enumerate(self.agents) if agent.active]
        for index in indices:
            # Conditioned shapes read the fraction of training done, on the LR annealing's clock.
            set_context = getattr(self.agents[index].loss_module, "set_context", None)
            if set_context is not None:
                set_context(progress=self.current_epoch / cfg.iterations)

        rollouts = self.rollouts.collect([agent.generator for agent in self.agents])
        collected = time.perf_counter()

        # GAE: each agent's values from its own module, one recursion over every active agent.
        if indices:
            estimated = estimate_advantages([self.agents[i].advantage_module for i in indices],
                                            [rollouts[i] for i in indices], self.recursion)
            for position, index in enumerate(indices):
                rollouts[index] = estimated[position]
        data = {index: rollouts[index].select(*self._update_keys(rollouts[index])).reshape(-1)
                for index in indices}
        advantaged = time.perf_counter()

        # Every agent's parameters before the update (one copy): a diverging agent keeps these.
        last_good = self.flat.tensor.detach().clone()
        metrics = self.update(data, optimizer)
        scheduler.step()
        updated = time.perf_counter()

        self.frames += cfg.rollout_steps
        for index, agent in enumerate(self.agents):
            if index not in data:
                continue
            summary = self._summarise(agent, metrics[index])
            problem = first_non_finite(metrics[index].t(), self.metric_names,
                                       agent.loss_module.named_parameters())
            if problem is not None:
                # Stopped and marked failed, holding its last good parameters; the others go on.
                agent.failure = TrainingDiverged(self.current_epoch + 1, problem)
                mine = self.flat.agent_slice(index)
                with torch.no_grad():
                    self.flat.tensor[mine] = last_good[mine]
                # No more steps: with no momentum and no gradient, Adam leaves its slice as it is.
                for moment in optimizer.optimizer.state[self.flat.tensor].values():
                    if moment.shape == self.flat.tensor.shape:
                        moment[mine].zero_()
                continue
            summary.update(self._batch_statistics(agent, data[index]))
            if getattr(agent.loss_module, "needs_rollout_kl", False):
                # kl_adaptive's d (PPO's rule): the updated policy's KL over the whole rollout.
                summary["kl_final"] = float(agent.loss_module.rollout_kl(data[index]))
            # TorchRL's own losses have no per-rollout hook; ours (and their shapes) may.
            update_after_rollout = getattr(agent.loss_module, "update_after_rollout", None)
            if update_after_rollout is not None:
                update_after_rollout(summary)
            self._log_iteration(index, summary, rollouts[index], frames_before,
                                (started, collected, advantaged, updated))
        if not any(agent.active for agent in self.agents):
            self.trainer.should_stop = True

    def update(self, data: dict[int, TensorDictBase], optimizer: Any) -> dict[int, Tensor]:
        """K epochs of shuffled minibatch steps; every agent steps on its own minibatch each time.

        Shapes' losses run as one `BatchedKLipLoss` over every agent where it is exact
        (`batched.batchable`); `--loss clip`, the scalar-KL baselines and other minibatch
        sizes run each agent's own minibatch loss in turn (TorchRL's loss modules).
        """
        cfg = self.config
        indices = list(data)
        agents = [self.agents[index] for index in indices]
        self.flat.attach_gradients()
        gradients = self.flat.gradient
        modules = ([a.loss_module for a in agents], [a.actor for a in agents], [a.critic for a in agents])
        batched = None
        if not cfg.compile and batchable(*modules, cfg.minibatch_size, cfg.rollout_steps):
            batched = BatchedKLipLoss(*modules, self.flat.tensor)
        # The clip runs over every agent (one with no gradient keeps none); report the active ones.
        active = None if len(indices) == self.num_agents else torch.tensor(indices)
        steps: list[Tensor] = []
        for epoch in range(cfg.epochs):
            shuffled = []
            for agent, index in zip(agents, indices, strict=True):
                # Shapes conditioned on the inner loop read how far into it this epoch is.
                set_context = getattr(agent.loss_module, "set_context", None)
                if set_context is not None:
                    set_context(epoch_progress=epoch / cfg.epochs)
                # Each agent shuffles its own samples with its own stream.
                rows = data[index]
                shuffled.append(rows[torch.randperm(rows.shape[0], generator=agent.generator)])
            for minibatches in _minibatches(batched, agents, shuffled, cfg.minibatch_size):
                total, step_metrics = _losses(batched, agents, minibatches)
                gradients.zero_()
                # d(sum_i L_i)/d theta_i = dL_i/d theta_i: each agent gets its own loss's gradient.
                total.backward()
                grad_norms = self.flat.clip_per_agent(cfg.max_grad_norm)
                if active is not None:
                    grad_norms = grad_norms[active]
                steps.append(torch.cat([step_metrics, grad_norms.unsqueeze(1)], 1))
                optimizer.step()
        # The names of the metrics' columns, from the loss that computed them.
        self.metric_names = [*(batched or agents[0].minibatch_loss).metric_names, "grad_norm"]
        # [agents, metric, step]: each agent's metrics, each as one contiguous row (`_summarise`).
        metrics = torch.stack(steps, 2).float()
        return {index: metrics[position] for position, index in enumerate(indices)}

    def _update_keys(self, rollout: TensorDictBase) -> list[str]:
        return [key for key in UPDATE_KEYS if key in rollout]

    def _summarise(self, agent: Agent, metrics: Tensor) -> dict[str, float]:
        # `metrics` is [metric, step]: one mean per iteration, no per-minibatch .item(). Each
        # metric is reduced as its own contiguous row: a mean over strided columns rounds
        # differently with the number of columns, and `--loss clip` logs more than `step`.
        means = metrics.mean(1).tolist()
        return dict(zip(self.metric_names, means, strict=True))

    @torch.no_grad()
    def _batch_statistics(self, agent: Agent, data: TensorDictBase) -> dict[str, float]:
        """Per-iteration statistics computed once over the whole rollout, not per minibatch."""
        target, value = data["value_target"], data["state_value"]
        if "logits" in data.keys():  # noqa: SIM118 (a TensorDict iterates its batch)
            # Categorical: the rollout policy's mean entropy over the rollout's states.
            entropy = float(categorical_entropy(data["logits"]).mean())
        else:
            # Diagonal Gaussian with a state-independent std: the entropy is the same everywhere.
            entropy = float(torch.log(data["scale"][0]).sum() + 0.5 * data["scale"].shape[-1]
                            * (1 + math.log(2 * math.pi)))
        statistics = {
            "explained_variance": float(1 - (target - value).var() / target.var().clamp_min(1e-8)),
            "entropy": entropy,
        }
        pop_diagnostics = getattr(agent.loss_module, "pop_diagnostics", None)
        if pop_diagnostics is not None:
            statistics.update(pop_diagnostics())
        return statistics

    # -- logging ----------------------------------------------------------------------------
    def _log_iteration(self, index: int, summary: dict[str, float], rollout: TensorDictBase,
                       frames_before: int, phase_times: tuple[float, float, float, float]) -> None:
        agent = self.agents[index]
        episodes = self.rollouts.drain_episodes(index)
        for episode_return, _, end_frame in episodes:
            agent.recent_returns.append(episode_return)
            agent.return_history.append((frames_before + end_frame, episode_return))
        # The phase times are the population's, shared by its agents.
        agent.last_row = iteration_row(
            summary, iteration=self.current_epoch + 1, frames=self.frames, lr=self.iteration_lr,
            episodes=[(r, n) for r, n, _ in episodes], recent_returns=agent.recent_returns,
            rollout=rollout, phase_times=phase_times,
        )

    def progress_row(self) -> dict[str, float]:
        """What the progress bar shows: the population's steps/s and mean recent return."""
        rows = [row for row in self.rows if row]
        if not rows:
            return {}
        progress = {"time/steps_per_s": sum(row["time/steps_per_s"] for row in rows)}
        recent = [row["episode/return_recent"] for row in rows if "episode/return_recent" in row]
        if recent:
            progress["episode/return_recent"] = float(np.mean(recent))
        return progress

    def evaluation_target(self, index: int) -> Any:
        """Agent `index`'s options, env (statistics up to date), actor and frames; None if it failed."""
        agent = self.agents[index]
        if not agent.active:
            return None
        return _EvaluationTarget(agent.config, self.rollouts.agent_env(index), agent.actor, self.frames)

    @property
    def rows(self) -> list[dict[str, float]]:
        """Each agent's metrics row of the last iteration (empty for an agent that failed in it)."""
        return [agent.last_row for agent in self.agents]

    # -- checkpoints: everything needed to continue bit for bit ------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["klip"] = {
            "frames": self.frames,
            "agents": [agent.state() for agent in self.agents],
            "rollouts": self.rollouts.state_dict(),
            "lr_plan": self.lr_plan,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["klip"]
        self.frames = state["frames"]
        for agent, agent_state in zip(self.agents, state["agents"], strict=True):
            agent.load_state(agent_state)
        self.rollouts.load_state_dict(state["rollouts"])
        self.lr_plan = tuple(state["lr_plan"])
        self.plan_lr_to(self.config.iterations)

    def close(self) -> None:
        for agent in self.agents:
            agent.env.close()


__all__ = ["Agent", "PPOModule", "build_loss", "build_shape", "check_population_configs",
           "iteration_row"]
