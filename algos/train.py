"""Run a training job: output directory, Lightning Trainer, resume, evaluation, plot.

`train` reads top to bottom: resolve the options, take the run directory (lock, checks,
records), build the Trainer, fit, and write the outcome. Nothing is written before every
check has passed, and a refused start removes whatever it created.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import resource
import shutil
import signal
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from klip.algos.callbacks import (
    EVALUATIONS_FILE,
    FinalEvaluation,
    MetricsCSVLogger,
    PeriodicEvaluation,
    TrainingProgress,
    truncate_metrics,
)
from klip.algos.config import RESUMABLE_OPTIONS, ConfigError, TrainConfig
from klip.algos.divergence import TrainingDiverged
from klip.algos.plots import plot_learning_curve
from klip.algos.ppo import PPOModule
from klip.algos.resolve import resolve_config, upgrade_recorded_options, with_options_added_later
from klip.algos.run_lock import LOCK_FILE, RunLock, RunLocked
from klip.envs import get_normalization_state
from klip.shapes import CoefficientShape, ShapePluginError

CONFIG_FILE = "config.yaml"
SHAPE_COPY = "shape.json"
PLUGIN_COPY = "shape_plugin.py"
SUMMARY_FILE = "summary.json"
# The final actor and critic (keyed as in a checkpoint) with the observation statistics they
# expect: small enough to keep with a run's committed data, where checkpoints are not kept.
PARAMETERS_FILE = "parameters.pt"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
WRITE_TEST_PREFIX = ".write-test-"
KLIP_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class RunError(RuntimeError):
    """A problem with the run's inputs or output directory, told in one line."""


class UserCodeError(ValueError):
    """A user's shape (plugin or object) raised; the message names the shape and the exception."""


class RunInterrupted(Exception):
    """Ctrl-C: the run stopped; `iteration` is the last one its checkpoint holds."""

    def __init__(self, out: Path, iteration: int, during: int | None = None) -> None:
        where = f"at iteration {iteration}" if during is None else (
            f"during iteration {during} (the checkpoint holds iteration {iteration})")
        super().__init__(f"interrupted {where}; continue with klip train --out {out} --resume")
        self.out, self.iteration = out, iteration


class _StopNow(Exception):
    """A second Ctrl-C: leave the running iteration (Lightning would turn a KeyboardInterrupt
    into exit code 1)."""


@dataclass
class RunResult:
    out: Path
    final_return: float
    wall_seconds: float
    frames: int
    eval: dict[str, Any] | None
    plot: Path
    summary: dict[str, Any] = field(default_factory=dict)
    config: TrainConfig | None = None


@dataclass
class RunStart:
    """What taking the run directory found: where to resume from, what is already trained."""

    checkpoint: Path | None = None
    frames_done: int = 0
    created_directory: Path | None = None


def train(
    config: TrainConfig, out: str | Path, *, shape: CoefficientShape | None = None,
    resume: bool = False, progress: bool = True, stop_after_iterations: int | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> RunResult:
    """Train one run into `out`; `shape` is a ready shape object (instead of --shape).

    `callbacks` are extra Lightning callbacks (e.g. a study's pruning hook on the
    training-epoch end, i.e. after every PPO iteration).

    `stop_after_iterations` simulates an interruption (tests). Process-wide effects: torch
    uses one thread, the global RNGs are seeded, Lightning's logger is set to WARNING.
    """
    given = UserCode.of(config, shape)
    config, shape = call_naming_user_errors(lambda: resolve_config(config, shape), given)
    out = Path(out)
    with take_run_directory(out, config, shape, resume) as start:
        try:
            module, trainer, segment = build_trainer(config, shape, out, start, progress,
                                                     stop_after_iterations, callbacks)
        except BaseException:
            if not resume:  # a failed start must not block the next attempt
                forget_run(out, start)
            raise
        interrupted = fit(trainer, module, start, shape, out, segment)
        result = finish(config, out, module, trainer, segment)
        module.env.close()
        if interrupted:
            raise RunInterrupted(out, module.current_epoch)
        return result


# -- the run directory ------------------------------------------------------------------
@contextmanager
def take_run_directory(
    out: Path, config: TrainConfig, shape: CoefficientShape | None, resume: bool
) -> Iterator[RunStart]:
    """Lock `out` for the run; check it; record the run. A refused start leaves nothing."""
    if out.exists() and not out.is_dir():
        raise RunError(f"output path {out} exists and is not a directory")
    if resume and not (out / CONFIG_FILE).is_file():
        raise RunError(f"nothing to resume in {out}: no {CONFIG_FILE}")
    if out.is_dir() and not _being_recorded(out):
        # Refuse what can be refused without touching anything; checked again under the lock.
        check_run_directory(out, config, shape, resume)
    created = _make_directory(out)
    lock = RunLock(out)
    try:
        lock.acquire()
    except PermissionError as error:
        raise RunError(f"cannot write to output directory {out}: {error.strerror}") from None
    except RunLocked:
        # Another process took the directory, even one this process just created: it is
        # that process's now, so nothing here is removed.
        raise
    try:
        start = check_run_directory(out, config, shape, resume)
        start.created_directory = created
        record_run(out, config, shape, start, resume)
    except BaseException:
        lock.release(remove=lock.created)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    try:
        yield start
    finally:
        lock.release()


def _being_recorded(out: Path) -> bool:
    """A lock file and no config.yaml: another process may be recording its run right now.

    Its shape copy lands before its config.yaml, so checking here could refuse with "holds
    no klip run"; the lock gives the true answer (in use, or the check again under it).
    """
    return (out / LOCK_FILE).is_file() and not (out / CONFIG_FILE).is_file()


def _make_directory(out: Path) -> Path | None:
    """Create `out`; return the topmost directory this created (to remove on a refusal)."""
    missing = [parent for parent in [out, *out.parents] if not parent.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        if missing:  # an existing directory is proven writable by opening its lock file
            with tempfile.NamedTemporaryFile(dir=out, prefix=WRITE_TEST_PREFIX):
                pass
    except OSError as error:
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)
        raise RunError(f"cannot write to output directory {out}: {error.strerror}") from None
    return missing[-1] if missing else None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # Paths of shape files are compared by content (record_run keeps copies), and the
    # options in RESUMABLE_OPTIONS do not change the trajectory.
    ignored = {*RESUMABLE_OPTIONS, "shape_file", "shape_plugin"}
    return {key: value for key, value in config.items() if key not in ignored}


def check_run_directory(
    out: Path, config: TrainConfig, shape: CoefficientShape | None, resume: bool
) -> RunStart:
    """Read-only checks, under the lock: same run or a clear refusal."""
    config_path = out / CONFIG_FILE
    if not config_path.is_file():
        if resume:
            raise RunError(f"nothing to resume in {out}: no {CONFIG_FILE}")
        # A starting process's lock and write test are not a run.
        if any(path.name != LOCK_FILE and not path.name.startswith(WRITE_TEST_PREFIX)
               for path in out.iterdir()):
            raise RunError(f"output directory {out} is not empty and holds no klip run")
        return RunStart()
    try:
        previous = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError:
        raise RunError(f"{config_path} is corrupt; choose another --out") from None
    previous = recorded_config_as_today(out, previous)
    current = config.to_dict()
    changed = sorted(key for key in set(_comparable(previous)) | set(_comparable(current))
                     if previous.get(key) != current.get(key))
    changed += _changed_shape_sources(out, config, shape)
    if changed:
        raise RunError(f"{out} already holds a different run (differs in: {', '.join(changed)}); "
                       "choose another --out")
    if not resume:
        raise RunError(f"{out} already holds this run; pass --resume to continue it")
    checkpoint = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not checkpoint.is_file():
        return RunStart()
    refuse_envpool_resume(config, out)
    state = read_checkpoint_state(checkpoint)
    frames = int(state["frames"])
    _check_budget(config, frames, state.get("lr_plan"))
    return RunStart(checkpoint=checkpoint, frames_done=frames)


def refuse_envpool_resume(config: TrainConfig, out: Path) -> None:
    """EnvPool cannot restore its simulators, so a checkpoint of an EnvPool run cannot continue."""
    if config.env_backend == "envpool":
        raise RunError(f"{out} was trained on --env-backend envpool, whose simulator state cannot "
                       "be restored, so it cannot resume; start it again in another --out")


def recorded_config_as_today(out: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml from before the current format, resolved as it would be today."""
    recorded = with_options_added_later(recorded)
    if "eval_every" in recorded:
        return recorded
    try:
        options = config_with_run_paths(out, upgrade_recorded_options(recorded))
        resolved = resolve_config(TrainConfig.from_dict(options))[0].to_dict()
    except (ValueError, OSError) as error:
        raise RunError(f"{out} was written by an older klip and cannot be read back ({error}); "
                       "choose another --out") from None
    return {**resolved, "shape_file": recorded.get("shape_file"),
            "shape_plugin": recorded.get("shape_plugin")}


def _changed_shape_sources(out: Path, config: TrainConfig, shape: CoefficientShape | None) -> list[str]:
    changed = []
    shape_copy = out / SHAPE_COPY
    if (shape is not None and shape_copy.is_file()
            and json.loads(shape_copy.read_text()) != json.loads(json.dumps(shape.to_dict()))):
        changed.append("shape_file (its content)")
    plugin_copy = out / PLUGIN_COPY
    if (config.shape_plugin and plugin_copy.is_file()
            and Path(config.shape_plugin).read_bytes() != plugin_copy.read_bytes()):
        changed.append("shape_plugin (its source)")
    return changed


def _check_budget(config: TrainConfig, frames: int, lr_plan: Any) -> None:
    planned = config.iterations * config.rollout_steps
    if planned < frames:
        raise RunError(f"--steps {config.steps} is below the {frames} steps this run has already "
                       f"trained; give --steps {frames} or more")
    if lr_plan is not None and config.anneal_lr:
        _, _, end = lr_plan
        done = frames // config.rollout_steps
        if done >= end and config.iterations > end:
            raise RunError(f"this run annealed its learning rate to 0 at iteration {end}; training "
                           "it longer would run at lr 0: start a new run with the larger --steps")


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return dict(state["klip"])
    except Exception as error:  # torch.load raises many types on a damaged file
        raise RunError(f"checkpoint {path} is unreadable ({type(error).__name__}); "
                       "delete it to restart the run") from None


def record_run(
    out: Path, config: TrainConfig, shape: CoefficientShape | None, start: RunStart, resume: bool
) -> None:
    """Write config.yaml and the copies of the shape sources; drop rows that will be redone."""
    if resume:
        # Rows logged after the checkpoint (or all of them, if the run died before its
        # first checkpoint) are redone, so they are dropped rather than duplicated.
        truncate_metrics(out / "metrics.csv", start.frames_done)
        truncate_metrics(out / EVALUATIONS_FILE, start.frames_done)
    write_run_config(out, config, shape)


def write_run_config(out: Path, config: TrainConfig, shape: CoefficientShape | None) -> None:
    """config.yaml (the resolved options) and copies of the shape sources it names."""
    recorded = config.to_dict()
    if shape is not None:
        shape_json = json.dumps(shape.to_dict(), indent=2) + "\n"
        (out / SHAPE_COPY).write_text(shape_json)
        if config.shape_file:
            recorded["shape_file"] = SHAPE_COPY  # relative to the run directory
    if config.shape_plugin:
        source = Path(config.shape_plugin).read_bytes()
        (out / PLUGIN_COPY).write_bytes(source)
        recorded["shape_plugin"] = PLUGIN_COPY
    # Whole or absent, never half-written, for a process checking the directory without the lock.
    partial = out / f"{WRITE_TEST_PREFIX}{CONFIG_FILE}"
    partial.write_text(yaml.safe_dump(recorded, sort_keys=False))
    partial.replace(out / CONFIG_FILE)


def forget_run(out: Path, start: RunStart) -> None:
    """Undo `record_run` of a fresh run that failed before its first iteration."""
    if start.created_directory is not None:
        shutil.rmtree(start.created_directory, ignore_errors=True)
        return
    # The lock file too: still held, so no other process can be relying on it.
    for name in (CONFIG_FILE, SHAPE_COPY, PLUGIN_COPY, LOCK_FILE):
        (out / name).unlink(missing_ok=True)


# -- the trainer --------------------------------------------------------------------------
@dataclass
class Segment:
    """One process's share of a run: its wall time, and whether Ctrl-C asked it to stop."""

    seconds_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    stop_requested: bool = False
    failure: str | None = None

    @property
    def wall_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started


class SegmentClock(pl.Callback):
    """Carries the wall time of earlier segments in checkpoints; stops after Ctrl-C."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment

    def state_dict(self) -> dict[str, Any]:
        return {"wall_seconds": self.segment.wall_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.segment.seconds_before = float(state["wall_seconds"])
        self.segment.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        if self.segment.stop_requested:
            trainer.should_stop = True


def build_trainer(
    config: TrainConfig, shape: CoefficientShape | None, out: Path, start: RunStart, progress: bool,
    stop_after_iterations: int | None, callbacks: Sequence[pl.Callback] = (),
) -> tuple[PPOModule, pl.Trainer, Segment]:
    torch.set_num_threads(1)
    quiet_lightning()
    pl.seed_everything(config.seed, verbose=False)
    module = call_naming_user_errors(lambda: PPOModule(config.to_dict(), shape=shape),
                               UserCode.of(config, shape))
    max_epochs = config.iterations
    if stop_after_iterations is not None:
        max_epochs = min(max_epochs, stop_after_iterations)
    segment = Segment()
    # No monitored metric: save_top_k=1 keeps the newest, written as last.ckpt every
    # `checkpoint_every` iterations, so a killed run loses at most that many.
    checkpoints = ModelCheckpoint(
        dirpath=out / CHECKPOINT_DIR, filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
        every_n_epochs=config.checkpoint_every, save_top_k=1, save_last=False,
        save_on_train_epoch_end=True, enable_version_counter=False,
    )
    # purge_step hides the steps an earlier segment logged after the checkpoint this one
    # starts from (all of them when there is none).
    earlier = (out / "tensorboard").is_dir()
    tensorboard = TensorBoardLogger(str(out), name="tensorboard", version="", default_hp_metric=False,
                                    purge_step=start.frames_done + 1 if earlier else None)
    final_episodes = config.eval_episodes if stop_after_iterations is None else 0
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=[MetricsCSVLogger(out), tensorboard],
        callbacks=[
            SegmentClock(segment),
            checkpoints,
            TrainingProgress(config.iterations * config.rollout_steps, enabled=progress),
            PeriodicEvaluation(out, config.eval_every, seed=config.seed + 20_000),
            FinalEvaluation(out, final_episodes, seed=config.seed + 10_000,
                            skip=lambda: segment.stop_requested),
            *callbacks,
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )
    return module, trainer, segment


def quiet_lightning() -> None:
    # Lightning's start-up banners and tips say nothing about this run.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # The paper's protocol uses the -v4 tasks on purpose.
    warnings.filterwarnings("ignore", message=".*is out of date. You should consider upgrading.*")
    # A resumed run writes into its own checkpoint directory on purpose.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def fit(
    trainer: pl.Trainer, module: PPOModule, start: RunStart, shape: CoefficientShape | None,
    out: Path, segment: Segment,
) -> bool:
    """Run the iterations; True if Ctrl-C stopped them (after a finished iteration)."""
    with stop_on_interrupt(segment):
        try:
            call_naming_user_errors(
                lambda: trainer.fit(module, ckpt_path=str(start.checkpoint) if start.checkpoint else None,
                                    weights_only=True),
                UserCode.of(module.config, shape), iteration=lambda: module.current_epoch + 1,
            )
        except (TrainingDiverged, UserCodeError) as error:
            segment.failure = str(error)
            write_summary(out, module, segment, status="failed")
            module.env.close()
            raise
        except _StopNow:
            module.env.close()
            checkpoint = out / CHECKPOINT_DIR / LAST_CHECKPOINT
            frames = int(read_checkpoint_state(checkpoint)["frames"]) if checkpoint.is_file() else 0
            raise RunInterrupted(out, frames // module.config.rollout_steps,
                                 during=module.current_epoch + 1) from None
    return segment.stop_requested


@contextmanager
def stop_on_interrupt(segment: Segment) -> Iterator[None]:
    """Ctrl-C finishes the running iteration and stops (Lightning would swallow the interrupt);
    a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        if segment.stop_requested:
            raise _StopNow
        segment.stop_requested = True

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class UserCode:
    """Where a run's user code lives: the plugin file and the shape's class file, if not klip's."""

    shape_name: str
    files: set[Path] = field(default_factory=set)

    @classmethod
    def of(cls, config: TrainConfig, shape: CoefficientShape | None) -> UserCode:
        files = {Path(config.shape_plugin).resolve()} if config.shape_plugin else set()
        if shape is not None:
            with contextlib.suppress(TypeError):  # a class without a source file
                source = inspect.getsourcefile(type(shape))
                files |= {Path(source).resolve()} if source else set()
        name = shape.display_name() if shape is not None else (config.shape or "?")
        return cls(name, {path for path in files if not path.is_relative_to(KLIP_PACKAGE_ROOT)})


def call_naming_user_errors(call: Any, user_code: UserCode, iteration: Any = None) -> Any:
    """Run `call`; an exception raised inside user code becomes one UserCodeError line."""
    try:
        return call()
    except (Exception, SystemExit) as error:
        if isinstance(error, (UserCodeError, RunError, ConfigError, TrainingDiverged, ShapePluginError)):
            raise  # already told in one line
        frames = {Path(frame.filename).resolve() for frame in traceback.extract_tb(error.__traceback__)}
        raised_in = sorted(user_code.files & frames)
        if not raised_in:
            raise  # klip's own code: a bug, shown with its traceback
        when = f" during iteration {iteration()}" if iteration is not None else ""
        raise UserCodeError(f"shape {user_code.shape_name!r} ({raised_in[0]}) raised "
                            f"{type(error).__name__}: {error}{when}") from error


# -- the outcome ---------------------------------------------------------------------------
def finish(config: TrainConfig, out: Path, module: PPOModule, trainer: pl.Trainer,
           segment: Segment) -> RunResult:
    trainer.save_checkpoint(out / CHECKPOINT_DIR / LAST_CHECKPOINT)
    save_module_parameters(module, out / PARAMETERS_FILE)
    (out / "episodes.csv").write_text(
        "end_frame,return\n" + "".join(f"{f},{r}\n" for f, r in module.return_history)
    )
    plot = plot_learning_curve(module.return_history, out / "metrics.csv", out / "learning_curve.png",
                               title=f"{config.task}  loss={config.loss}  shape={config.shape}")
    status = "interrupted" if segment.stop_requested else "finished"
    summary = write_summary(out, module, segment, status=status)
    return RunResult(out, summary["final_return_last10pct"] or math.nan, summary["wall_seconds"],
                     module.frames, summary["evaluation"], plot, summary, module.config)


def save_parameters(path: Path, actor: torch.nn.Module, critic: torch.nn.Module,
                    normalization: dict[str, Any]) -> None:
    """Write PARAMETERS_FILE; `klip.load_run(...).load_module()` reads it where no checkpoint is."""
    state = {**{f"actor.{key}": value for key, value in actor.state_dict().items()},
             **{f"critic.{key}": value for key, value in critic.state_dict().items()}}
    torch.save({"state_dict": state, "normalization": normalization}, path)


def save_module_parameters(module: PPOModule, path: Path) -> None:
    """PARAMETERS_FILE of a single run's module: its actor, critic and observation statistics."""
    save_parameters(path, module.actor, module.critic, get_normalization_state(module.env))


def write_summary(out: Path, module: PPOModule, segment: Segment, status: str) -> dict[str, Any]:
    """summary.json: what ran, how it ended and what it scored; strict JSON (no NaN)."""
    config = module.config
    eval_path = out / "eval.json"
    evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() and status == "finished" else None
    summary = {
        "status": status,
        "error": segment.failure,
        "task": config.task,
        "loss": config.loss,
        "shape": config.shape,
        "shape_params": config.shape_params,
        "seed": config.seed,
        "frames": module.frames,
        "iterations": module.frames // config.rollout_steps,
        "episodes": len(module.return_history),
        "final_return_last10pct": final_return(module.return_history, module.frames),
        "evaluation": evaluation,
        "wall_seconds": segment.wall_seconds,
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    summary = _finite_or_none(summary)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


def final_return(history: list[tuple[int, float]], frames: int) -> float:
    """Mean raw return of the episodes that ended in the last 10% of training."""
    if not history:
        return float("nan")
    cutoff = 0.9 * frames
    tail = [value for frame, value in history if frame > cutoff] or [history[-1][1]]
    return float(np.mean(tail))


def config_with_run_paths(out: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded options with its shape copies addressed from any working directory."""
    options = upgrade_recorded_options(recorded)
    for key in ("shape_file", "shape_plugin"):
        # A relative path names the run's copy; runs from before the copies recorded the
        # path the user gave, relative to where the run was started.
        if options.get(key) and (out / options[key]).is_file():
            options[key] = str(out / options[key])
    return options


__all__ = ["ConfigError", "RunError", "RunInterrupted", "RunLocked", "RunResult", "UserCodeError",
           "config_with_run_paths", "final_return", "save_module_parameters", "save_parameters",
           "train"]
