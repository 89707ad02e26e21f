"""Lightning callbacks and loggers of a training run: progress, metrics per agent, evaluation."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from tqdm.auto import tqdm

from klip import compat
from klip.envs import get_normalization_state, make_eval_env


class MetricsCSVLogger(CSVLogger):
    """`CSVLogger` writing `<out>/metrics.csv`, one row per PPO iteration, kept across resumes."""

    def __init__(self, out: str | Path) -> None:
        super().__init__(save_dir=str(out), name="", version="", flush_logs_every_n_steps=1)

    @property
    def experiment(self) -> compat.ExperimentWriter:
        # Lightning's writer deletes an existing metrics.csv; a resumed run appends to it.
        return compat.appending_csv_experiment(self)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is written as config.yaml by the run itself."""


def truncate_metrics(path: Path, frames: int) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they will be redone)."""
    if not path.is_file():
        return
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
        fieldnames = list(rows[0].keys()) if rows else None
    if fieldnames is None:
        return
    kept = [row for row in rows if row.get("frames") and float(row["frames"]) <= frames]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(kept)


class TrainingProgress(pl.Callback):
    """A tqdm bar in env steps, with steps/s and the recent raw episode return."""

    def __init__(self, total_frames: int, enabled: bool = True) -> None:
        self.total_frames = total_frames
        self.enabled = enabled
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
        self.bar = tqdm(total=self.total_frames, initial=module.frames, unit="step",
                        disable=not self.enabled, dynamic_ncols=True, smoothing=0.1)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        if self.bar is None:
            return
        row = module.progress_row()
        self.bar.update(module.frames - self.bar.n)
        postfix = {"steps/s": f"{row.get('time/steps_per_s', 0):.0f}"}
        if "episode/return_recent" in row:
            postfix["return"] = f"{row['episode/return_recent']:.1f}"
        self.bar.set_postfix(postfix, refresh=False)

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        if self.bar is not None:
            self.bar.close()


class AgentLoggers(pl.Callback):
    """Each agent's metrics row of every iteration to its own loggers (metrics.csv, TensorBoard)."""

    def __init__(self, loggers: list[list[Logger]]) -> None:
        self.loggers = loggers

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        for loggers, row in zip(self.loggers, module.rows, strict=True):
            if row.get("frames") != module.frames:
                continue  # an agent that failed logs no more rows
            for logger in loggers:
                logger.log_metrics(row, step=module.frames)

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        for loggers in self.loggers:
            for logger in loggers:
                logger.finalize("success")


class EvaluationTarget(Protocol):
    """What `evaluate` needs: an agent's options, env (for its statistics), actor and frames."""

    config: Any
    env: Any
    actor: Any
    frames: int


@torch.no_grad()
def evaluate(target: EvaluationTarget, episodes: int, seed: int) -> dict[str, Any]:
    """Deterministic returns over `episodes` (a Gaussian's mean action, a categorical's mode:
    the actor's `deterministic_sample`), normalisation frozen."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    cfg = target.config
    env = make_eval_env(cfg.task, seed=seed, normalization_state=get_normalization_state(target.env))
    returns, lengths = [], []
    started = time.perf_counter()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(episodes):
            trajectory = env.rollout(100_000, target.actor, break_when_any_done=True)
            returns.append(float(trajectory["next", "reward"].sum()))
            lengths.append(int(trajectory.shape[-1]))
    env.close()
    return {
        "episodes": episodes,
        "deterministic": True,
        "seed": seed,
        "return_mean": float(np.mean(returns)) if returns else math.nan,
        "return_std": float(np.std(returns)) if returns else math.nan,
        "returns": returns,
        "lengths": lengths,
        "frames": target.frames,
        "seconds": time.perf_counter() - started,
    }


EVALUATIONS_FILE = "evaluations.csv"
EVALUATION_EPISODES = 5


class PeriodicEvaluation(pl.Callback):
    """Every `every` iterations, each agent's deterministic returns (frozen normalisation, the
    same seed each time, so evaluations compare) into its `evaluations.csv` and TensorBoard."""

    def __init__(self, outs: list[Path], every: int, loggers: list[list[Logger]],
                 episodes: int = EVALUATION_EPISODES) -> None:
        self.outs, self.every, self.loggers, self.episodes = outs, every, loggers, episodes

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        iteration = module.current_epoch + 1
        if self.every == 0 or iteration % self.every:
            return
        for index, (out, loggers) in enumerate(zip(self.outs, self.loggers, strict=True)):
            target = module.evaluation_target(index)
            if target is None:
                continue  # a failed agent
            result = evaluate(target, self.episodes, target.config.seed + 20_000)
            path = out / EVALUATIONS_FILE
            new_file = not path.is_file()
            with open(path, "a", newline="") as file:
                writer = csv.writer(file)
                if new_file:
                    writer.writerow(["iteration", "frames", "return_mean", "return_std", "episodes"])
                writer.writerow([iteration, module.frames, result["return_mean"], result["return_std"],
                                 self.episodes])
            for logger in loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.log_metrics({"eval/return_mean": result["return_mean"]}, step=module.frames)
