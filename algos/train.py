"""Train one agent or many into a run directory: the Trainer, Ctrl-C, and the outcome.

`train_agents` reads top to bottom: resolve every agent's options, take the run directory
(lock, checks, records: `klip.algos.rundir`), build the engine and the Lightning Trainer,
fit, and write each agent's outcome (`klip.algos.outputs`). `train` is the single run, a
population of one. Nothing is written before every check has passed, and a refused start
removes whatever it created.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import Logger, TensorBoardLogger

from klip.algos.callbacks import AgentLoggers, MetricsCSVLogger, PeriodicEvaluation, TrainingProgress
from klip.algos.config import ConfigError, TrainConfig
from klip.algos.divergence import AgentsDiverged, TrainingDiverged
from klip.algos.outputs import (
    PARAMETERS_FILE,
    POPULATION_FIGURE,
    RunResult,
    final_return,
    finish_agent,
    machine,
    plot_population,
    save_module_parameters,
    save_parameters,
    write_population_summary,
    write_summary,
)
from klip.algos.ppo import PPOModule
from klip.algos.resolve import resolve_config
from klip.algos.run_lock import RunLocked
from klip.algos.rundir import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    AgentPlan,
    AtomicCheckpointIO,
    RunError,
    RunStart,
    config_with_run_paths,
    forget_run,
    is_population,
    plan_agents,
    read_checkpoint_state,
    recorded_config_as_today,
    take_run_directory,
)
from klip.shapes import CoefficientShape, ShapePluginError

KLIP_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class UserCodeError(ValueError):
    """A user's shape (plugin or object) raised; the message names the shape and the exception."""


class RunInterrupted(Exception):
    """Ctrl-C: the run stopped; `iteration` is the last one its checkpoint holds."""

    def __init__(self, out: Path, iteration: int, during: int | None = None) -> None:
        where = f"at iteration {iteration}" if during is None else (
            f"during iteration {during} (the checkpoint holds iteration {iteration})")
        super().__init__(f"interrupted {where}; continue with klip train --out {out} --resume")
        self.out = out
        self.iteration = iteration


class _StopNow(Exception):
    """A second Ctrl-C: leave the running iteration (Lightning would turn a KeyboardInterrupt
    into exit code 1)."""


def train(
    config: TrainConfig, out: str | Path, *, shape: CoefficientShape | None = None,
    resume: bool = False, progress: bool = True, stop_after_iterations: int | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> RunResult:
    """Train one run into `out`; `shape` is a ready shape object (instead of --shape).

    A population of one (`train_agents`). `callbacks` are extra Lightning callbacks (e.g. a
    study's pruning hook on the training-epoch end, i.e. after every PPO iteration).
    `stop_after_iterations` simulates an interruption (tests). Process-wide effects: torch
    uses one thread, the global RNGs are seeded, Lightning's logger is set to WARNING.
    """
    return train_agents([config], out, shapes=[shape], resume=resume, progress=progress,
                        stop_after_iterations=stop_after_iterations, callbacks=callbacks)[0]


def train_agents(
    configs: Sequence[TrainConfig], out: str | Path, *,
    shapes: Sequence[CoefficientShape | None] | None = None, names: Sequence[str] | None = None,
    record: dict[str, Any] | None = None, sweep_keys: Sequence[str] = (), resume: bool = False,
    progress: bool = True, stop_after_iterations: int | None = None, callbacks: Sequence[pl.Callback] = (),
) -> list[RunResult]:
    """Train `configs` (the same options but seed and shape parameters) as one population in
    one process: agent i into `out / names[i]`, each bitwise its own single run. One config
    without names is a single run in `out`.

    Returns every agent's outcome, in order. Raises `TrainingDiverged` when the single run
    diverged, `AgentsDiverged` (with every agent's outcome) when agents of a population did
    (after the others trained to the end), `RunInterrupted` after Ctrl-C (once the running
    iteration is checkpointed).
    """
    shapes = list(shapes) if shapes is not None else [None] * len(configs)
    user_code = [UserCode.of(config, shape) for config, shape in zip(configs, shapes, strict=True)]
    resolved = [call_naming_user_errors(lambda c=config, s=shape: resolve_config(c, s), code)
                for config, shape, code in zip(configs, shapes, user_code, strict=True)]
    root = Path(out)
    agents = plan_agents(root, [config for config, _ in resolved], [shape for _, shape in resolved], names)
    with take_run_directory(root, agents, resume, record) as start:
        try:
            module, trainer, segment = build_trainer(root, agents, start, progress, stop_after_iterations,
                                                     callbacks)
        except BaseException:
            if not resume:  # a failed start must not block the next attempt
                forget_run(root, agents, start)
            raise
        interrupted = fit(trainer, module, start, agents, root, segment, user_code[0])
        final_episodes = 0 if stop_after_iterations is not None else agents[0].config.eval_episodes
        results = finish(root, agents, module, trainer, segment, sweep_keys, eval_episodes=final_episodes)
        module.close()
        if interrupted:
            raise RunInterrupted(root, module.current_epoch)
    failures = [(agent.name or str(agent.out), member.failure)
                for agent, member in zip(agents, module.agents, strict=True) if member.failure is not None]
    if failures and not is_population(agents):
        raise failures[0][1]
    if failures:
        raise AgentsDiverged(failures, results)
    return results


# -- the trainer --------------------------------------------------------------------------
@dataclass
class Segment:
    """One process's share of a run: its wall time, the machines earlier segments ran on, and
    whether Ctrl-C asked it to stop."""

    from_frame: int = 0
    seconds_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    earlier_machines: list[dict[str, Any]] = field(default_factory=list)
    stop_requested: bool = False
    failure: str | None = None

    @property
    def wall_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    @property
    def machines(self) -> list[dict[str, Any]]:
        """Each machine the run trained on and the frame it took over from: a run continued on
        another kind of machine is bitwise no single run."""
        here = machine()
        if self.earlier_machines and self.earlier_machines[-1]["machine"] == here:
            return self.earlier_machines
        return [*self.earlier_machines, {"from_frame": self.from_frame, "machine": here}]


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's checkpoint every `every_n_epochs` iterations, except after the iteration in
    which the last training agent diverged: the checkpoint before it is the last good state."""

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        if any(agent.active for agent in module.agents):
            super().on_train_epoch_end(trainer, module)


class SegmentClock(pl.Callback):
    """Carries the wall time of earlier segments in checkpoints; stops after Ctrl-C."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment

    def state_dict(self) -> dict[str, Any]:
        return {"wall_seconds": self.segment.wall_seconds, "machines": self.segment.machines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.segment.seconds_before = float(state["wall_seconds"])
        self.segment.started = time.perf_counter()
        # A checkpoint from before klip recorded machines: the earlier one is unknown (None).
        self.segment.earlier_machines = state.get("machines") or [{"from_frame": 0, "machine": None}]

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        if self.segment.stop_requested:
            trainer.should_stop = True


def agent_loggers(agent: AgentPlan, start: RunStart) -> list[Logger]:
    """metrics.csv and TensorBoard in the agent's run directory."""
    # purge_step hides the steps an earlier segment logged after the checkpoint this one
    # starts from (all of them when there is none).
    earlier = (agent.out / "tensorboard").is_dir()
    tensorboard = TensorBoardLogger(str(agent.out), name="tensorboard", version="", default_hp_metric=False,
                                    purge_step=start.frames_done + 1 if earlier else None)
    return [MetricsCSVLogger(agent.out), tensorboard]


def build_trainer(
    root: Path, agents: list[AgentPlan], start: RunStart, progress: bool,
    stop_after_iterations: int | None, callbacks: Sequence[pl.Callback] = (),
) -> tuple[PPOModule, pl.Trainer, Segment]:
    torch.set_num_threads(1)
    quiet_lightning()
    config = agents[0].config
    pl.seed_everything(config.seed, verbose=False)
    module = call_naming_user_errors(
        lambda: PPOModule([agent.config.to_dict() for agent in agents], shapes=[a.shape for a in agents]),
        UserCode.of(config, agents[0].shape))
    max_epochs = config.iterations
    if stop_after_iterations is not None:
        max_epochs = min(max_epochs, stop_after_iterations)
    segment = Segment(from_frame=start.frames_done)
    # No monitored metric: save_top_k=1 keeps the newest, written as last.ckpt every
    # `checkpoint_every` iterations, so a killed run loses at most that many.
    checkpoints = PeriodicCheckpoint(
        dirpath=root / CHECKPOINT_DIR, filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
        every_n_epochs=config.checkpoint_every, save_top_k=1, save_last=False,
        save_on_train_epoch_end=True, enable_version_counter=False,
    )
    loggers = [agent_loggers(agent, start) for agent in agents]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            SegmentClock(segment),
            AgentLoggers(loggers),
            checkpoints,
            TrainingProgress(config.iterations * config.rollout_steps, enabled=progress),
            PeriodicEvaluation([agent.out for agent in agents], config.eval_every, loggers),
            *callbacks,
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    return module, trainer, segment


def quiet_lightning() -> None:
    # Lightning's start-up banners and tips say nothing about this run.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # A resumed run writes into its own checkpoint directory on purpose.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # No logger is given to the Trainer: each agent has its own (AgentLoggers).
    warnings.filterwarnings("ignore", message=".*no logger configured.*")


def fit(trainer: pl.Trainer, module: PPOModule, start: RunStart, agents: list[AgentPlan], root: Path,
        segment: Segment, user_code: UserCode) -> bool:
    """Run the iterations; True if Ctrl-C stopped them (after a finished iteration)."""
    with stop_on_interrupt(segment):
        try:
            call_naming_user_errors(
                lambda: trainer.fit(module, ckpt_path=str(start.checkpoint) if start.checkpoint else None,
                                    weights_only=True),
                user_code, iteration=lambda: module.current_epoch + 1,
            )
        except UserCodeError as error:
            segment.failure = str(error)
            for index, agent in enumerate(agents):
                write_summary(agent.out, module, index, status="failed", error=segment.failure,
                              evaluation=None, wall_seconds=segment.wall_seconds,
                              machines=segment.machines)
            module.close()
            raise
        except _StopNow:
            module.close()
            checkpoint = root / CHECKPOINT_DIR / LAST_CHECKPOINT
            frames = int(read_checkpoint_state(checkpoint)["frames"]) if checkpoint.is_file() else 0
            raise RunInterrupted(root, frames // module.config.rollout_steps,
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
        name = shape.display_name() if isinstance(shape, CoefficientShape) else (config.shape or "?")
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
def finish(root: Path, agents: list[AgentPlan], module: PPOModule, trainer: pl.Trainer, segment: Segment,
           sweep_keys: Sequence[str], *, eval_episodes: int) -> list[RunResult]:
    if any(agent.active for agent in module.agents):
        trainer.save_checkpoint(root / CHECKPOINT_DIR / LAST_CHECKPOINT)
    # else every agent diverged: the last periodic checkpoint is the last good state, kept.
    status = "interrupted" if segment.stop_requested else "finished"
    results = [finish_agent(module, index, agent, status=status, error=None,
                            wall_seconds=segment.wall_seconds, machines=segment.machines,
                            eval_episodes=eval_episodes)
               for index, agent in enumerate(agents)]
    if is_population(agents):
        write_population_summary(root, results, list(sweep_keys))
        plot_population(root / POPULATION_FIGURE, results, list(sweep_keys))
    return results


__all__ = [
    "PARAMETERS_FILE",
    "AgentsDiverged",
    "ConfigError",
    "RunError",
    "RunInterrupted",
    "RunLocked",
    "RunResult",
    "UserCodeError",
    "config_with_run_paths",
    "final_return",
    "recorded_config_as_today",
    "save_module_parameters",
    "save_parameters",
    "train",
    "train_agents",
]
