"""The Python API over run directories: `train_run` (exposed as `klip.train`) and `load_run`.

    import klip
    run = klip.train(task="Pendulum-v1", steps=20_000, out="runs/demo")
    run.summary["final_return_last10pct"], run.metrics["lr"], run.episodes["return"]
    again = klip.load_run("runs/demo")

Arrays are numpy (no DataFrame dependency): one array per column, NaN where an
iteration has no value (e.g. `episode/return_mean` of an iteration without episodes).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from klip.algos.config import ConfigError, TrainConfig
from klip.algos.resolve import upgrade_recorded_options, with_options_added_later
from klip.shapes import CoefficientShape


@dataclass
class Run:
    """A run directory read back: options, metrics, episodes, summary, and its files."""

    path: Path
    config: TrainConfig
    summary: dict[str, Any] | None
    metrics: dict[str, np.ndarray]
    episodes: dict[str, np.ndarray]
    evaluations: dict[str, np.ndarray]

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.ckpt"

    @property
    def files(self) -> dict[str, Path]:
        """The run's files that exist, by name (config.yaml, metrics.csv, summary.json, ...)."""
        return {path.name: path for path in sorted(self.path.iterdir()) if path.is_file()}

    def load_module(self) -> Any:
        """The trained PPOModule (actor, critic, environment normalisation), from the checkpoint
        or, where it is not kept (a run committed as data), from `parameters.pt`; the latter
        holds no optimiser, rollout or reward-scaling state, so it serves evaluation, not resuming."""
        import torch

        from klip.algos.outputs import PARAMETERS_FILE
        from klip.algos.ppo import PPOModule
        from klip.algos.rundir import RunError, config_with_run_paths
        from klip.envs import set_normalization_state

        parameters = self.path / PARAMETERS_FILE
        if not self.checkpoint.is_file() and not parameters.is_file():
            raise FileNotFoundError(
                f"{self.path} has no checkpoint ({self.checkpoint}) and no {PARAMETERS_FILE}")
        recorded = yaml.safe_load((self.path / "config.yaml").read_text())
        module = PPOModule([config_with_run_paths(self.path, recorded)])
        module.loaded_from = self.checkpoint
        if self.checkpoint.is_file():
            try:
                state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
                module.load_state_dict(state["state_dict"])
                module.on_load_checkpoint(state)
                return module
            except Exception as error:  # torch.load raises many types on a damaged file
                if not parameters.is_file():
                    module.close()
                    raise RunError(f"checkpoint {self.checkpoint} is unreadable ({type(error).__name__}) "
                                   f"and {self.path} has no {PARAMETERS_FILE} to fall back to") from None
                module.loaded_from = parameters
                module.unreadable_checkpoint = f"{self.checkpoint} ({type(error).__name__})"
        else:
            module.loaded_from = parameters
        saved = torch.load(parameters, map_location="cpu", weights_only=True)
        if "normalization" not in saved:
            raise ValueError(f"{parameters} predates the observation statistics it now keeps; "
                             "it cannot be evaluated")
        for name in ("actor", "critic"):
            prefix = f"{name}."
            getattr(module, name).load_state_dict({key[len(prefix):]: value for key, value
                                                   in saved["state_dict"].items() if key.startswith(prefix)})
        set_normalization_state(module.env, saved["normalization"])
        module.frames = int((self.summary or {}).get("frames", 0))
        return module

    def policy(self) -> Any:
        """The trained actor (a TensorDictModule); it expects normalised observations, as
        `load_module().env` and `klip.algos.callbacks.evaluate` provide."""
        return self.load_module().actor


def load_run(path: str | Path) -> Run:
    """Read any run directory back (finished, interrupted or failed)."""
    path = Path(path)
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a klip run directory (no config.yaml)")
    recorded = yaml.safe_load(config_path.read_text()) or {}
    summary_path = path / "summary.json"
    return Run(
        path=path,
        config=TrainConfig.from_dict(upgrade_recorded_options(with_options_added_later(recorded))),
        summary=json.loads(summary_path.read_text()) if summary_path.is_file() else None,
        metrics=read_columns(path / "metrics.csv"),
        episodes=read_columns(path / "episodes.csv"),
        evaluations=read_columns(path / "evaluations.csv"),
    )


def read_episode_returns(path: Path) -> list[tuple[int, float]]:
    """`(end frame, raw return)` of each episode in a run's episodes.csv.

    Runs written before the `end_frame` column named it `frames` (the frame count at the end
    of the iteration the episode ended in); both are read.
    """
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        frame_column = next((c for c in ("end_frame", "frames") if c in (reader.fieldnames or [])), None)
        if frame_column is None or "return" not in (reader.fieldnames or []):
            raise ValueError(f"{path} does not have the columns end_frame,return")
        return [(int(row[frame_column]), float(row["return"])) for row in reader]


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """A CSV of numbers as {column: float64 array}; empty cells are NaN; a missing file is {}."""
    if not path.is_file():
        return {}
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        return {}
    return {column: np.array([float(row[column]) if row.get(column) else np.nan for row in rows])
            for column in rows[0]}


def train_run(
    config: TrainConfig | dict[str, Any] | None = None, /, *, out: str | Path,
    shape: CoefficientShape | str | None = None, resume: bool = False, progress: bool = False,
    **options: Any,
) -> Run:
    """Train one run into `out` and read it back.

    `config` is a TrainConfig or a dict of options; keyword options override it. `shape` is a
    shape name with parameters (`"sigmoid:tau=0.05"`, as `--shape` and `--shape-param`) or a
    ready CoefficientShape (it replaces `shape`/`shape_file`). Raises ConfigError, RunError,
    UserCodeError, TrainingDiverged or RunInterrupted, as `klip train` reports them.
    Process-wide effects: torch uses one thread, the global RNGs are seeded from the run's
    seed, Lightning's logger is set to WARNING, and Ctrl-C is handled during training only.
    """
    from klip.algos.train import train
    from klip.shapes import CoefficientShape, parse_param_assignments

    if isinstance(shape, str):  # "sigmoid" or "sigmoid:tau=0.05,eps=0.2", as --shape and --shape-param
        name, _, assignments = shape.partition(":")
        options["shape"] = name.strip()
        if assignments.strip():
            options["shape_params"] = parse_param_assignments(assignments.split(","))
        shape = None
    elif shape is not None and not isinstance(shape, CoefficientShape):
        raise ConfigError(f"shape must be a shape name (e.g. 'sigmoid:tau=0.05') or a CoefficientShape, "
                          f"got {type(shape).__name__}")
    if isinstance(config, TrainConfig):
        merged = {**config.to_dict(), **options}
    elif isinstance(config, dict) or config is None:
        merged = {**(config or {}), **options}
    else:
        raise ConfigError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    train(TrainConfig.from_dict(merged), out, shape=shape, resume=resume, progress=progress)
    return load_run(out)




class RenderError(RuntimeError):
    """Off-screen rendering or video writing is not available here; the message says why."""


def evaluate_run(path: str | Path, episodes: int = 10, video: str | Path | None = None) -> dict[str, Any]:
    """Deterministic evaluation of a run's last checkpoint (frozen normalisation, the seeds of
    the end-of-run evaluation); with `video`, the first episode is also rendered to that file."""
    from klip.algos.callbacks import evaluate

    run = load_run(path)
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    video_writer = _open_video(Path(video)) if video is not None else None
    module = run.load_module()
    seed = run.config.seed + 10_000
    unreadable = getattr(module, "unreadable_checkpoint", None)
    try:
        result = evaluate(module, episodes, seed)
        if unreadable is not None:
            result["unreadable_checkpoint"] = unreadable
            result["loaded_from"] = str(module.loaded_from)
        if video_writer is not None:
            result["video"] = str(video)
            result["video_frames"] = _record_episode(module, seed, video_writer)
    finally:
        if video_writer is not None:
            video_writer.close()
        module.close()
    return result


def _open_video(path: Path) -> Any:
    import imageio.v2 as imageio

    if path.suffix not in (".mp4", ".gif"):
        raise ConfigError(f"--video must end in .mp4 or .gif, got {path}")
    try:
        return imageio.get_writer(path, fps=30) if path.suffix == ".mp4" else imageio.get_writer(path)
    except Exception as error:  # imageio raises several types for a missing backend
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise RenderError(f"cannot write {path} ({type(error).__name__}: {first_line}); an .mp4 needs "
                          "the imageio-ffmpeg package (pip install 'klip[video]'), a .gif does not"
                          ) from None


def _record_episode(module: Any, seed: int, writer: Any) -> int:
    """Render one deterministic episode through MuJoCo's off-screen renderer (MUJOCO_GL)."""
    import os

    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from klip.envs import get_normalization_state, gym_vector_env, make_eval_env

    env = make_eval_env(module.config.task, seed=seed,
                        normalization_state=get_normalization_state(module.env))
    # The evaluation env is built without a render mode; MuJoCo envs render on request.
    sub_env = gym_vector_env(env).unwrapped.envs[0].unwrapped
    sub_env.render_mode = "rgb_array"
    frames = 0

    def render(_: Any, __: Any) -> None:
        nonlocal frames
        try:
            writer.append_data(sub_env.render())
        except Exception as error:  # GL back ends fail in many ways
            if isinstance(error, ImportError) or type(error).__name__ == "DependencyNotInstalled":
                raise RenderError(f"rendering {module.config.task} needs a package that is not installed "
                                  f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                                  "for the classic-control tasks: pip install 'gymnasium[classic-control]'"
                                  ) from None
            backend = os.environ.get("MUJOCO_GL", "default")
            reason = str(error).splitlines()[0] if str(error) else ""
            raise RenderError(f"cannot render off-screen with MUJOCO_GL={backend} "
                              f"({type(error).__name__}: {reason}); this machine needs EGL or OSMesa "
                              "(set MUJOCO_GL=egl or osmesa)") from None
        frames += 1

    try:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            env.rollout(100_000, module.actor, break_when_any_done=True, callback=render)
    finally:
        env.close()
    return frames


__all__ = ["RenderError", "Run", "evaluate_run", "load_run", "read_columns", "train_run"]
