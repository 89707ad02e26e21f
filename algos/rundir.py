"""A run directory's life: take it (lock, checks), record the run, resume it, or forget it.

One writer for every number of agents. A single run is one directory. A population's root
holds `population.yaml` (its agents, and how the command line made them), one checkpoint of
every agent and the population's summary, and one run directory per agent, with the files a
single run has. Every check runs before anything is written, so a refused start or resume
changes nothing; a start that fails after recording removes what it created.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from klip.algos.callbacks import EVALUATIONS_FILE, truncate_metrics
from klip.algos.config import RESUMABLE_OPTIONS, TrainConfig
from klip.algos.resolve import resolve_config, upgrade_recorded_options, with_options_added_later
from klip.algos.run_lock import LOCK_FILE, RunLock, RunLocked
from klip.envs.names import resumable
from klip.shapes import CoefficientShape

CONFIG_FILE = "config.yaml"
POPULATION_FILE = "population.yaml"
SHAPE_COPY = "shape.json"
PLUGIN_COPY = "shape_plugin.py"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
WRITE_TEST_PREFIX = ".write-test-"


class RunError(RuntimeError):
    """A problem with the run's inputs or output directory, told in one line."""


@dataclass
class AgentPlan:
    """One agent of a run: its name, its own run directory, options and ready shape."""

    name: str
    out: Path
    config: TrainConfig
    shape: CoefficientShape | None


@dataclass
class RunStart:
    """What taking the run directory found: where to resume from, what is already trained."""

    checkpoint: Path | None = None
    frames_done: int = 0
    created_directory: Path | None = None
    created_agent_dirs: tuple[Path, ...] = ()


def plan_agents(root: Path, configs: Sequence[TrainConfig], shapes: Sequence[CoefficientShape | None],
                names: Sequence[str] | None) -> list[AgentPlan]:
    """A single run writes into `root`; agent i of a population into `root / names[i]`."""
    if len(configs) == 1 and names is None:
        return [AgentPlan("", root, configs[0], shapes[0])]
    if names is None or len(names) != len(configs):
        raise ValueError("a population needs one name per agent")
    if len(set(names)) != len(names) or not all(names):
        raise RunError(f"agent names must be distinct and non-empty, got {list(names)}")
    return [AgentPlan(name, root / name, config, shape)
            for name, config, shape in zip(names, configs, shapes, strict=True)]


def is_population(agents: Sequence[AgentPlan]) -> bool:
    return bool(agents[0].name)


@contextmanager
def take_run_directory(root: Path, agents: list[AgentPlan], resume: bool,
                       record: dict[str, Any] | None = None) -> Iterator[RunStart]:
    """Lock `root` for the run; check it; record the run. A refused start leaves nothing.

    `record` is what `population.yaml` keeps beside the agents' names (how the command line
    made the population), for a population only.
    """
    marker = root / (POPULATION_FILE if is_population(agents) else CONFIG_FILE)
    if root.exists() and not root.is_dir():
        raise RunError(f"output path {root} exists and is not a directory")
    if resume and not marker.is_file():
        raise RunError(f"nothing to resume in {root}: no {marker.name}")
    if root.is_dir() and not _being_recorded(root, marker):
        # Refuse what can be refused without touching anything; checked again under the lock.
        check_run_directory(root, agents, resume)
    created = _make_directory(root)
    lock = RunLock(root)
    try:
        lock.acquire()
    except PermissionError as error:
        raise RunError(f"cannot write to output directory {root}: {error.strerror}") from None
    except RunLocked:
        # Another process took the directory, even one this process just created: it is
        # that process's now, so nothing here is removed.
        raise
    try:
        start = check_run_directory(root, agents, resume)
        start.created_directory = created
        record_run(root, agents, start, resume, record)
    except BaseException:
        lock.release(remove=lock.created)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    try:
        yield start
    finally:
        lock.release()


def _being_recorded(root: Path, marker: Path) -> bool:
    """A lock file and no record yet: another process may be recording its run right now.

    Its shape copy lands before its record, so checking here could refuse with "holds no
    klip run"; the lock gives the true answer (in use, or the check again under it).
    """
    return (root / LOCK_FILE).is_file() and not marker.is_file()


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


def _holds_nothing(root: Path) -> bool:
    # A starting process's lock and write test are not a run.
    return all(path.name == LOCK_FILE or path.name.startswith(WRITE_TEST_PREFIX) for path in root.iterdir())


def check_run_directory(root: Path, agents: list[AgentPlan], resume: bool) -> RunStart:
    """Read-only checks, under the lock: the same run (to resume) or a clear refusal."""
    population = is_population(agents)
    marker = root / (POPULATION_FILE if population else CONFIG_FILE)
    if not marker.is_file():
        if resume:
            raise RunError(f"nothing to resume in {root}: no {marker.name}")
        if root.is_dir() and not _holds_nothing(root):
            other = CONFIG_FILE if population else POPULATION_FILE
            what = "a single run" if population else "a population"
            if (root / other).is_file():
                raise RunError(f"{root} holds {what}; choose another --out")
            raise RunError(f"output directory {root} is not empty and holds no klip run")
        return RunStart()
    if population:
        recorded_names = _read_yaml(marker).get("agents")
        names = [agent.name for agent in agents]
        if recorded_names != names:
            raise RunError(f"{root} holds a population of other agents ({_listed(recorded_names)}); "
                           f"this one has {_listed(names)}: choose another --out")
    for agent in agents:
        _check_same_run(agent)
    if not resume:
        what = "population" if population else "run"
        raise RunError(f"{root} already holds this {what}; pass --resume to continue it")
    checkpoint = root / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not checkpoint.is_file():
        raise RunError(f"nothing to resume in {root}: it has no checkpoint (the run stopped before "
                       "its first); start it again in another --out")
    refuse_envpool_resume(agents[0].config, root)
    state = read_checkpoint_state(checkpoint)
    frames = int(state["frames"])
    _check_budget(agents[0].config, frames, state.get("lr_plan"))
    return RunStart(checkpoint=checkpoint, frames_done=frames)


def _listed(names: Any) -> str:
    if not isinstance(names, list):
        return "unreadable"
    return ", ".join(map(str, names[:6])) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise RunError(f"{path} is corrupt; choose another --out") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is corrupt; choose another --out")
    return data


def _check_same_run(agent: AgentPlan) -> None:
    config_path = agent.out / CONFIG_FILE
    if not config_path.is_file():
        raise RunError(f"{agent.out} has no {CONFIG_FILE}: the run directory is damaged; "
                       "choose another --out")
    previous = recorded_config_as_today(agent.out, _read_yaml(config_path))
    current = agent.config.to_dict()
    changed = sorted(key for key in set(_comparable(previous)) | set(_comparable(current))
                     if previous.get(key) != current.get(key))
    changed += _changed_shape_sources(agent.out, agent.config, agent.shape)
    if changed:
        raise RunError(f"{agent.out} already holds a different run (differs in: {', '.join(changed)}); "
                       "choose another --out")


def can_resume(out: Path, config: TrainConfig) -> bool:
    """Whether `out` holds a run or population that `config` can continue bit for bit: its record,
    a checkpoint, and simulators whose state can be restored (not Box2D's, not EnvPool's)."""
    recorded = (out / CONFIG_FILE).is_file() or (out / POPULATION_FILE).is_file()
    return (recorded and (out / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
            and resumable(config.task, config.env_backend))


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


def config_with_run_paths(out: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded options with its shape copies addressed from any working directory."""
    options = upgrade_recorded_options(recorded)
    for key in ("shape_file", "shape_plugin"):
        # A relative path names the run's copy; runs from before the copies recorded the
        # path the user gave, relative to where the run was started.
        if options.get(key) and (out / options[key]).is_file():
            options[key] = str(out / options[key])
    return options


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
        raise RunError(f"checkpoint {path} is unreadable ({type(error).__name__}); it cannot be "
                       "resumed: start the run again in another --out") from None


def record_run(root: Path, agents: list[AgentPlan], start: RunStart, resume: bool,
               record: dict[str, Any] | None) -> None:
    """Write each agent's config.yaml and shape copies (and population.yaml); on resume, drop
    the rows logged after the checkpoint (they are redone)."""
    created = []
    for agent in agents:
        if not agent.out.is_dir():
            agent.out.mkdir()
            created.append(agent.out)
        if resume:
            truncate_metrics(agent.out / "metrics.csv", start.frames_done)
            truncate_metrics(agent.out / EVALUATIONS_FILE, start.frames_done)
        write_run_config(agent.out, agent.config, agent.shape)
    start.created_agent_dirs = tuple(created)
    if is_population(agents):
        population = {"agents": [agent.name for agent in agents], **(record or {})}
        write_atomically(root / POPULATION_FILE, yaml.safe_dump(population, sort_keys=False).encode())


def write_run_config(out: Path, config: TrainConfig, shape: CoefficientShape | None) -> None:
    """config.yaml (the resolved options) and copies of the shape sources it names."""
    recorded = config.to_dict()
    if shape is not None:
        (out / SHAPE_COPY).write_text(json.dumps(shape.to_dict(), indent=2) + "\n")
        if config.shape_file:
            recorded["shape_file"] = SHAPE_COPY  # relative to the run directory
    if config.shape_plugin:
        (out / PLUGIN_COPY).write_bytes(Path(config.shape_plugin).read_bytes())
        recorded["shape_plugin"] = PLUGIN_COPY
    # Whole or absent, never half-written, for a process checking the directory without the lock.
    write_atomically(out / CONFIG_FILE, yaml.safe_dump(recorded, sort_keys=False).encode())


def forget_run(root: Path, agents: list[AgentPlan], start: RunStart) -> None:
    """Undo `record_run` of a fresh run that failed before its first iteration."""
    if start.created_directory is not None:
        shutil.rmtree(start.created_directory, ignore_errors=True)
        return
    for directory in start.created_agent_dirs:
        shutil.rmtree(directory, ignore_errors=True)
    # The lock file too: still held, so no other process can be relying on it.
    for name in (CONFIG_FILE, SHAPE_COPY, PLUGIN_COPY, POPULATION_FILE, LOCK_FILE):
        (root / name).unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `path` through a temporary file beside it, flushed, then renamed over it: a crash or
    a full disk leaves the old file whole. Out of space names the file and what was kept."""
    partial = path.with_name(f"{WRITE_TEST_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(partial, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        raise RunError(f"cannot write {path}: {error.strerror or error}; {kept}") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic (`write_atomically`): the last good
    checkpoint survives a crash or a full disk during the next one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        import io

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, buffer.getvalue())


__all__ = [
    "CHECKPOINT_DIR", "CONFIG_FILE", "LAST_CHECKPOINT", "PLUGIN_COPY", "POPULATION_FILE", "SHAPE_COPY",
    "AgentPlan", "AtomicCheckpointIO", "RunError", "RunLocked", "RunStart", "can_resume",
    "check_run_directory", "config_with_run_paths", "forget_run", "plan_agents", "read_checkpoint_state",
    "recorded_config_as_today", "take_run_directory", "write_atomically", "write_run_config",
]
