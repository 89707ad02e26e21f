"""Run a training job: output directory, Lightning Trainer, resume, evaluation, plot."""

from __future__ import annotations

import json
import logging
import resource
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from klip.algos.callbacks import FinalEvaluation, MetricsCSVLogger, TrainingProgress, truncate_metrics
from klip.algos.config import ConfigError, TrainConfig
from klip.algos.plots import plot_learning_curve
from klip.algos.ppo import PPOModule, build_shape

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


class RunError(RuntimeError):
    """A problem with the run's inputs or output directory, told in one line."""


@dataclass
class RunResult:
    out: Path
    final_return: float
    wall_seconds: float
    frames: int
    eval: dict[str, Any] | None
    plot: Path


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # The budget may be extended on resume; everything else must match.
    return {key: value for key, value in config.items() if key != "steps"}


def prepare_output(out: Path, config: TrainConfig, resume: bool) -> Path | None:
    """Check the output directory; return the checkpoint to resume from, if any."""
    config_path = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise RunError(f"output path {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise RunError(f"cannot write to output directory {out}: {error.strerror}") from None
    if config_path.is_file():
        try:
            previous = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError:
            raise RunError(f"{config_path} is corrupt; choose another --out") from None
        if _comparable(previous) != _comparable(config.to_dict()):
            changed = sorted(
                key for key in set(previous) | set(config.to_dict())
                if key != "steps" and previous.get(key) != config.to_dict().get(key)
            )
            raise RunError(
                f"{out} already holds a different run (differs in: {', '.join(changed)}); "
                "choose another --out"
            )
        if not resume:
            raise RunError(f"{out} already holds this run; pass --resume to continue it")
    elif resume:
        raise RunError(f"nothing to resume in {out}: no {CONFIG_FILE}")
    elif any(out.iterdir()):
        raise RunError(f"output directory {out} is not empty and holds no klip run")
    checkpoint = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume and checkpoint.is_file():
        return checkpoint
    return None


def load_checkpoint_frames(path: Path) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state["klip"]["frames"])
    except Exception as error:  # torch.load raises many types on a damaged file
        raise RunError(f"checkpoint {path} is unreadable ({type(error).__name__}); "
                       "delete it to restart the run") from None


def train(
    config: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
    stop_after_iterations: int | None = None, callbacks: list[pl.Callback] | None = None,
) -> RunResult:
    """Train one run into `out`. `stop_after_iterations` simulates an interruption (tests).

    `callbacks` are extra Lightning callbacks (e.g. a study's pruning hook on the
    training-epoch end, i.e. after every PPO iteration).
    """
    config.validate()
    out = Path(out)
    build_shape(config)  # fail on a bad shape before touching the output directory
    checkpoint = prepare_output(out, config, resume)
    if resume:
        # Rows logged after the checkpoint (or all of them, if the run died before its
        # first checkpoint) are redone, so they are dropped rather than duplicated.
        frames = load_checkpoint_frames(checkpoint) if checkpoint is not None else 0
        truncate_metrics(out / "metrics.csv", frames)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    torch.set_num_threads(1)
    # Lightning's start-up banners and tips say nothing about this run.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # The paper's protocol uses the -v4 tasks on purpose.
    warnings.filterwarnings("ignore", message=".*is out of date. You should consider upgrading.*")
    # A resumed run writes into its own checkpoint directory on purpose.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    pl.seed_everything(config.seed, verbose=False)
    module = PPOModule(config.to_dict())
    max_epochs = config.iterations
    if stop_after_iterations is not None:
        max_epochs = min(max_epochs, stop_after_iterations)
    # No monitored metric: save_top_k=1 keeps the newest, written as last.ckpt every
    # `checkpoint_every` iterations, so a killed run loses at most that many.
    checkpoints = ModelCheckpoint(
        dirpath=out / CHECKPOINT_DIR, filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
        every_n_epochs=config.checkpoint_every, save_top_k=1, save_last=False,
        save_on_train_epoch_end=True, enable_version_counter=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=[MetricsCSVLogger(out), TensorBoardLogger(str(out), name="tensorboard", version="")],
        callbacks=[
            checkpoints,
            TrainingProgress(config.iterations * config.rollout_steps, enabled=progress),
            FinalEvaluation(out, config.eval_episodes if stop_after_iterations is None else 0,
                            seed=config.seed + 10_000),
            *(callbacks or []),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )
    started = time.perf_counter()
    trainer.fit(module, ckpt_path=str(checkpoint) if checkpoint else None, weights_only=True)
    wall = time.perf_counter() - started
    trainer.save_checkpoint(out / CHECKPOINT_DIR / LAST_CHECKPOINT)

    final = final_return(module.return_history, module.frames)
    plot = plot_learning_curve(module.return_history, out / "metrics.csv", out / "learning_curve.png",
                               title=f"{config.task}  loss={config.loss}  shape={config.shape}")
    eval_path = out / "eval.json"
    evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() else None
    summary = {"final_return_last10pct": final, "frames": module.frames, "wall_seconds": wall,
               "episodes": len(module.return_history),
               # ru_maxrss is in KiB on Linux.
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "episodes.csv").write_text(
        "frames,return\n" + "".join(f"{f},{r}\n" for f, r in module.return_history)
    )
    module.env.close()
    return RunResult(out, final, wall, module.frames, evaluation, plot)


def final_return(history: list[tuple[int, float]], frames: int) -> float:
    """Mean raw return of the episodes that ended in the last 10% of training."""
    if not history:
        return float("nan")
    cutoff = 0.9 * frames
    tail = [value for frame, value in history if frame > cutoff] or [history[-1][1]]
    return float(np.mean(tail))


__all__ = ["ConfigError", "RunError", "RunResult", "final_return", "prepare_output", "train"]
