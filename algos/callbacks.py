"""Lightning callbacks and logger of a training run: progress, metrics CSV, evaluation."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
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
        row = getattr(module, "last_row", {})
        self.bar.update(module.frames - self.bar.n)
        postfix = {"steps/s": f"{row.get('time/steps_per_s', 0):.0f}"}
        if "episode/return_recent" in row:
            postfix["return"] = f"{row['episode/return_recent']:.1f}"
        self.bar.set_postfix(postfix, refresh=False)

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def evaluate(module: Any, episodes: int, seed: int) -> dict[str, Any]:
    """Deterministic (mean action) returns over `episodes`, normalisation frozen."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    cfg = module.config
    env = make_eval_env(cfg.task, seed=seed, normalization_state=get_normalization_state(module.env))
    returns, lengths = [], []
    started = time.perf_counter()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(episodes):
            trajectory = env.rollout(100_000, module.actor, break_when_any_done=True)
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
        "frames": module.frames,
        "seconds": time.perf_counter() - started,
    }


class FinalEvaluation(pl.Callback):
    """Writes `eval.json` when training ends (not when `skip()` says it was cut short)."""

    def __init__(self, out: Path, episodes: int, seed: int,
                 skip: Callable[[], bool] = lambda: False) -> None:
        self.out, self.episodes, self.seed, self.skip = out, episodes, seed, skip

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        if self.episodes == 0 or self.skip():
            return
        result = evaluate(module, self.episodes, self.seed)
        (self.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")


EVALUATIONS_FILE = "evaluations.csv"
EVALUATION_EPISODES = 5


class PeriodicEvaluation(pl.Callback):
    """Every `every` iterations: deterministic returns (frozen normalisation, the same seed
    each time, so evaluations compare) into `evaluations.csv` and TensorBoard."""

    def __init__(self, out: Path, every: int, seed: int, episodes: int = EVALUATION_EPISODES) -> None:
        self.path, self.every, self.seed, self.episodes = out / EVALUATIONS_FILE, every, seed, episodes

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        iteration = module.current_epoch + 1
        if self.every == 0 or iteration % self.every:
            return
        result = evaluate(module, self.episodes, self.seed)
        new_file = not self.path.is_file()
        with open(self.path, "a", newline="") as file:
            writer = csv.writer(file)
            if new_file:
                writer.writerow(["iteration", "frames", "return_mean", "return_std", "episodes"])
            writer.writerow([iteration, module.frames, result["return_mean"], result["return_std"],
                             self.episodes])
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics({"eval/return_mean": result["return_mean"]}, step=module.frames)
