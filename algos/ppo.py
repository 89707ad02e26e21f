"""One PPO iteration per Lightning training step.

Read top to bottom: `training_step` collects a rollout, computes GAE, then
runs K epochs of shuffled minibatches through the loss with manual
optimisation (grad-norm clip, linear LR annealing), and logs one row of
metrics per iteration.

What runs by default, and why the other paths remain:

- rollouts: `rollout.FastRollouts` (`--collector fast`); reference
  `rollout.CollectorRollouts`, TorchRL's `Collector` (`--collector torchrl`);
- advantages: TorchRL's `GAE`;
- minibatch loss of a shape: `loss.KLipTensorLoss` on plain tensors; reference
  `loss.KLipPPOLoss`, the TorchRL `LossModule` it mirrors;
- minibatch loss of `--loss clip` / `kl_fixed` / `kl_adaptive`: `update.ModuleLoss`
  over TorchRL's `ClipPPOLoss` / `loss.ScalarKLPPOLoss`.

The fast paths exist because TorchRL's per-step and per-minibatch TensorDict
bookkeeping costs more than the simulation and the arithmetic on these small
networks. The references stay because they are the oracle of the bitwise tests
(`tests/test_rollouts.py`, `tests/test_update.py`): each fast path returns
exactly what its reference returns, so the `step` shape stays PPO-Clip bit for bit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.objectives import ClipPPOLoss, LossModule
from torchrl.objectives.value import GAE

from klip import compat
from klip.algos.config import TrainConfig
from klip.algos.divergence import TrainingDiverged, first_non_finite
from klip.algos.loss import KLipPPOLoss, ScalarKLPPOLoss
from klip.algos.networks import make_actor, make_critic
from klip.algos.resolve import resolve_config
from klip.algos.rollout import make_rollouts
from klip.algos.update import make_minibatch_loss
from klip.envs import drain_episodes, make_env, observation_and_action_dims
from klip.shapes import CoefficientShape

# Keys the update reads; selecting them once per rollout keeps minibatch slicing cheap.
UPDATE_KEYS = ("observation", "action", "action_log_prob", "advantage", "value_target",
               "state_value", "loc", "scale")


def build_shape(config: TrainConfig) -> CoefficientShape | None:
    return resolve_config(config)[1]


def build_loss(config: TrainConfig, actor: Any, critic: Any,
               shape: CoefficientShape | None = None) -> LossModule:
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
    return KLipPPOLoss(actor, critic, shape=shape if shape is not None else build_shape(config),
                       diagnostics="deferred" if config.diagnostics else False, **common)


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


class PPOModule(pl.LightningModule):
    """PPO on one task with a chosen loss; `current_epoch` counts PPO iterations."""

    def __init__(self, config: dict[str, Any], shape: CoefficientShape | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["shape"])
        self.config, shape = resolve_config(TrainConfig.from_dict(config), shape)
        self.automatic_optimization = False
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.env = make_env(cfg.task, num_envs=cfg.num_envs, seed=cfg.seed, gamma=cfg.gamma,
                            backend=cfg.env_backend)
        observation_dim, action_dim = observation_and_action_dims(self.env)
        self.actor = make_actor(observation_dim, action_dim, cfg.hidden)
        self.critic = make_critic(observation_dim, cfg.hidden)
        self.loss_module = build_loss(cfg, self.actor, self.critic, shape)
        self.advantage_module = GAE(gamma=cfg.gamma, lmbda=cfg.gae_lambda,
                                    value_network=self.critic, average_gae=False)
        self.rollouts = make_rollouts(cfg.collector, self.env, self.actor, cfg.frames_per_env)
        self.frames = 0
        self.iteration_lr = cfg.lr  # the rate the running iteration uses (its `lr` column)
        # Linear annealing (start iteration, factor there, iteration where it reaches 0);
        # a resume that changes --steps re-plans from the current rate (see `plan_lr_to`).
        self.lr_plan: tuple[int, float, int] = (0, 1.0, cfg.iterations)
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.return_history: list[tuple[int, float]] = []
        # The iteration draws from its own RNG stream (actions, shuffles), saved in
        # checkpoints, so whatever Lightning draws between iterations cannot shift it.
        self._rng_state = torch.get_rng_state()
        if cfg.compile:
            compat.configure_inductor()
        # KLip shapes run through `TensorLoss` (bitwise the loss module, less overhead);
        # `--loss clip` and the scalar-KL baselines through TorchRL's loss modules.
        self.minibatch_loss = make_minibatch_loss(self.loss_module, self.actor, self.critic,
                                                  compile=cfg.compile)

    # -- optimisation set-up ----------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.config
        # foreach gives bitwise the default (single-tensor) Adam's results, a little faster;
        # fused is faster still but rounds differently, so it is opt-in like `compile`.
        implementation = {"fused": True} if cfg.fused_adam else {"foreach": True}
        optimizer = torch.optim.Adam(self.loss_module.parameters(), lr=cfg.lr, eps=cfg.adam_eps,
                                     **implementation)
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

    # -- one PPO iteration --------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        cfg = self.config
        # Lightning's optimiser wrapper: its step() counts global_step (one per minibatch),
        # which periodic checkpointing relies on.
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        started = time.perf_counter()
        torch.set_rng_state(self._rng_state)
        frames_before = self.frames
        self.iteration_lr = float(optimizer.optimizer.param_groups[0]["lr"])
        # Conditioned shapes read the fraction of training done, on the LR annealing's clock.
        set_context = getattr(self.loss_module, "set_context", None)
        if set_context is not None:
            set_context(progress=self.current_epoch / cfg.iterations)

        rollout = self.rollouts.collect()
        collected = time.perf_counter()

        with torch.no_grad():
            self.advantage_module(rollout)
        data = rollout.select(*self._update_keys(rollout)).reshape(-1)
        advantaged = time.perf_counter()

        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        metrics: list[Tensor] = []
        for _ in range(cfg.epochs):
            shuffled = data[torch.randperm(data.shape[0])]
            for minibatch in self.minibatch_loss.minibatches(shuffled, cfg.minibatch_size):
                metrics.append(self._update_minibatch(minibatch, optimizer, parameters))
        scheduler.step()
        self._rng_state = torch.get_rng_state()
        updated = time.perf_counter()

        self.frames += data.shape[0]
        summary = self._summarise(metrics)
        problem = first_non_finite(metrics, [*self.minibatch_loss.metric_names, "grad_norm"],
                                   self.loss_module.named_parameters())
        if problem is not None:
            raise TrainingDiverged(self.current_epoch + 1, problem)
        summary.update(self._batch_statistics(data))
        if getattr(self.loss_module, "needs_rollout_kl", False):
            # kl_adaptive's d (PPO's rule): the updated policy's KL over the whole rollout.
            summary["kl_final"] = float(self.loss_module.rollout_kl(data))
        # TorchRL's own losses have no per-rollout hook; ours (and their shapes) may.
        update_after_rollout = getattr(self.loss_module, "update_after_rollout", None)
        if update_after_rollout is not None:
            update_after_rollout(summary)
        self._log_iteration(summary, rollout, frames_before, started, collected, advantaged, updated)

    def _update_minibatch(self, minibatch: Any, optimizer: Any, parameters: list[Tensor]) -> Tensor:
        total, metrics = self.minibatch_loss(minibatch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
        optimizer.step()
        return torch.cat([metrics, grad_norm.reshape(1)])

    def _update_keys(self, rollout: TensorDictBase) -> list[str]:
        return [key for key in UPDATE_KEYS if key in rollout]

    def _summarise(self, metrics: list[Tensor]) -> dict[str, float]:
        # One stack and one mean per iteration: no per-minibatch .item(). Each metric is
        # reduced as its own contiguous row: a mean over strided columns rounds differently
        # with the number of columns, and `--loss clip` logs more columns than `step`.
        means = torch.stack(metrics, 1).float().mean(1).tolist()
        return dict(zip([*self.minibatch_loss.metric_names, "grad_norm"], means, strict=True))

    @torch.no_grad()
    def _batch_statistics(self, data: TensorDictBase) -> dict[str, float]:
        """Per-iteration statistics computed once over the whole rollout, not per minibatch."""
        target, value = data["value_target"], data["state_value"]
        statistics = {
            "explained_variance": float(1 - (target - value).var() / target.var().clamp_min(1e-8)),
            # Diagonal Gaussian with a state-independent std: the entropy is the same everywhere.
            "entropy": float(torch.log(data["scale"][0]).sum() + 0.5 * data["scale"].shape[-1]
                             * (1 + math.log(2 * math.pi))),
        }
        pop_diagnostics = getattr(self.loss_module, "pop_diagnostics", None)
        if pop_diagnostics is not None:
            statistics.update(pop_diagnostics())
        return statistics

    # -- logging ----------------------------------------------------------------
    def _log_iteration(
        self,
        summary: dict[str, float],
        rollout: TensorDictBase,
        frames_before: int,
        started: float,
        collected: float,
        advantaged: float,
        updated: float,
    ) -> None:
        episodes = drain_episodes(self.env)
        for episode_return, _, end_frame in episodes:
            self.recent_returns.append(episode_return)
            self.return_history.append((frames_before + end_frame, episode_return))
        row = iteration_row(
            summary, iteration=self.current_epoch + 1, frames=self.frames, lr=self.iteration_lr,
            episodes=[(r, n) for r, n, _ in episodes], recent_returns=self.recent_returns,
            rollout=rollout, phase_times=(started, collected, advantaged, updated),
        )
        if self.logger is not None:
            for logger in self.loggers:
                logger.log_metrics(row, step=self.frames)
        self.last_row = row

    # -- checkpoints: everything needed to continue bit for bit -----------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["klip"] = {
            "frames": self.frames,
            "recent_returns": list(self.recent_returns),
            "return_history": list(self.return_history),
            "rollouts": self.rollouts.state_dict(),
            "torch_rng": self._rng_state,
            "lr_plan": self.lr_plan,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["klip"]
        self.frames = state["frames"]
        self.recent_returns.extend(state["recent_returns"])
        self.return_history = list(state["return_history"])
        self.rollouts.load_state_dict(state["rollouts"])
        self._rng_state = state["torch_rng"]
        if "lr_plan" in state:
            self.lr_plan = tuple(state["lr_plan"])
        self.plan_lr_to(self.config.iterations)
