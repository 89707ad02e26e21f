"""Reference scores: a random policy (0) and the `step` shape, PPO-Clip (1).

Both are measured by the project's own runs with the same metric (mean raw return of the
episodes that end in the last 10% of the budget; for a random policy, which does not learn, of
all its episodes over the budget). A study's references are cached in the user's cache directory
(`$XDG_CACHE_HOME/klip/references.json`, `~/.cache/klip/...`; `KLIP_REFERENCE_CACHE` names
another file) with the command that made them, never in the installed package: the package's
`references.json` (the committed studies' references) is only read. A comparison scores the
random policy the same way and keeps the scores beside its grid (`random_scores.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from klip.studies.files import write_text_atomically
from klip.studies.training import TrainConfig

REFERENCE_FILE_ENV = "KLIP_REFERENCE_CACHE"
# Read only: the references of the committed studies, shipped with the package.
PACKAGED_REFERENCE_FILE = Path(__file__).resolve().parent / "references.json"
CACHE_FILE_NAME = "references.json"
RANDOM_FILE = "random_scores.json"
REFERENCE_SHAPE = "step"
# Options that do not change what a run learns, so they do not split the cache.
NON_PROTOCOL_OPTIONS = ("task", "seed", "steps", "shape", "shape_params", "shape_file", "shape_plugin",
                        "loss", "eval_episodes", "checkpoint_every", "diagnostics", "compile",
                        "collector")


class ReferenceError(RuntimeError):
    """Reference scores that cannot normalise (equal random and step scores)."""


def reference_file() -> Path:
    """Where reference scores are written: `KLIP_REFERENCE_CACHE`, else the user's cache directory."""
    if os.environ.get(REFERENCE_FILE_ENV):
        return Path(os.environ[REFERENCE_FILE_ENV])
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "klip" / CACHE_FILE_NAME


def protocol_hash(options: Mapping[str, Any]) -> str:
    """Hash of the training options that shape a run's learning (not its task, seed or budget)."""
    base = TrainConfig(**{key: value for key, value in options.items() if key in TrainConfig().to_dict()})
    relevant = {key: value for key, value in base.to_dict().items() if key not in NON_PROTOCOL_OPTIONS}
    text = json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def reference_key(task: str, steps: int, seed: int, protocol: str) -> str:
    return f"{task}|{steps}|s{seed}|{protocol}"


@dataclass(frozen=True)
class TaskReference:
    task: str
    random_score: float
    step_score: float

    def normalise(self, score: float) -> float:
        return (score - self.random_score) / (self.step_score - self.random_score)


def load_cache(path: Path | None = None) -> dict[str, Any]:
    """The cached entries of `path` (default: the user's cache, over the packaged references)."""
    if path is None:
        return {**_read_cache(PACKAGED_REFERENCE_FILE), **_read_cache(reference_file())}
    return _read_cache(path)


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReferenceError(f"reference cache {path} is not valid JSON: {error}") from None
    return data.get("references", {})


def _save_entry(key: str, entry: dict[str, Any], path: Path) -> None:
    """Add one entry; re-read first so concurrent workers do not drop each other's entries."""
    references = _read_cache(path)
    references[key] = entry
    payload = {"format": 1, "note": "klip study reference scores: real runs; see the README",
               "references": dict(sorted(references.items()))}
    write_text_atomically(path, json.dumps(payload, indent=2) + "\n")


def random_policy_score(task: str, steps: int, seed: int, min_episodes: int = 10) -> float:
    """Expected episode return of uniformly random actions, over `steps` frames (>= `min_episodes`)."""
    return float(np.mean(random_policy_returns(task, steps, seed, min_episodes)))


def random_policy_returns(task: str, steps: int, seed: int, min_episodes: int = 10) -> list[float]:
    """The returns of uniformly random actions' episodes over `steps` frames (>= `min_episodes`):
    the one way klip scores a random policy, for studies and comparisons alike.

    A random policy does not learn, so the mean over the last 10% of its budget and the
    mean over all of its episodes estimate the same number; the latter has less noise.
    """
    from klip.envs import gym_env

    env = gym_env(task)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    returns: list[float] = []
    episode_return, frame = 0.0, 0
    while frame < steps or len(returns) < min_episodes:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        frame += 1
        episode_return += float(reward)
        if terminated or truncated:
            returns.append(episode_return)
            episode_return = 0.0
            env.reset()
    env.close()
    return returns


def random_scores(out: Path, tasks: Sequence[str], steps: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """A comparison's random-policy score per task (`random_policy_returns` over the grid's budget),
    measured once and kept beside the grid in `random_scores.json`; scores already there stay."""
    path = out / RANDOM_FILE
    cached: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except json.JSONDecodeError:
            cached = {}
    missing = [task for task in tasks if task not in cached]
    for task in missing:
        returns = random_policy_returns(task, steps, seed)
        cached[task] = {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
                        "episodes": len(returns), "frames": steps, "seed": seed,
                        "policy": "uniform random actions"}
    if missing:
        write_text_atomically(path, json.dumps(cached, indent=2) + "\n")
    return cached


def step_shape_score(options: Mapping[str, Any], task: str, steps: int, seed: int) -> float:
    from klip.studies.training import train

    config = TrainConfig.from_dict({
        **options, "task": task, "steps": steps, "seed": seed, "loss": "klip",
        "shape": REFERENCE_SHAPE, "shape_params": {}, "shape_file": None, "shape_plugin": None,
        "eval_episodes": 0,
    }).validate()
    with tempfile.TemporaryDirectory(prefix="klip-reference-") as out:
        return train(config, Path(out) / "run", progress=False).final_return


def ensure_references(
    tasks: Sequence[str],
    steps: int,
    seeds: Sequence[int],
    options: Mapping[str, Any],
    *,
    command: str | None = None,
    path: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, TaskReference]:
    """Per-task references (means over `seeds`), computing and caching any that are missing.

    Read from `path` (default: the user's cache over the packaged references); written to `path`
    (default: the user's cache), never to the package."""
    write_path = path or reference_file()
    protocol = protocol_hash(options)
    command = command or " ".join(["klip", *sys.argv[1:]])
    references: dict[str, TaskReference] = {}
    for task in tasks:
        random_scores, step_scores = [], []
        for seed in seeds:
            key = reference_key(task, steps, seed, protocol)
            entry = load_cache(path).get(key)
            if entry is None:
                if log:
                    log(f"computing reference scores: {task}, {steps} steps, seed {seed} "
                        f"(cache {write_path})")
                started = time.perf_counter()
                entry = {
                    "task": task, "steps": steps, "seed": seed, "protocol_hash": protocol,
                    "random_score": random_policy_score(task, steps, seed),
                    "step_score": step_shape_score(options, task, steps, seed),
                    "command": command,
                    "seconds": round(time.perf_counter() - started, 1),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                _save_entry(key, entry, write_path)
            random_scores.append(float(entry["random_score"]))
            step_scores.append(float(entry["step_score"]))
        reference = TaskReference(task, float(np.mean(random_scores)), float(np.mean(step_scores)))
        if not reference.step_score > reference.random_score:
            # Below (or at) the random policy, the scale's sign flips or divides by zero.
            raise ReferenceError(
                f"{task}: the step shape ({reference.step_score:.1f}) does not beat a random policy "
                f"({reference.random_score:.1f}) at {steps} steps, so the normalised objective is "
                "undefined; use a larger budget"
            )
        references[task] = reference
    return references


__all__ = [
    "PACKAGED_REFERENCE_FILE",
    "RANDOM_FILE",
    "REFERENCE_FILE_ENV",
    "ReferenceError",
    "TaskReference",
    "ensure_references",
    "load_cache",
    "protocol_hash",
    "random_policy_returns",
    "random_policy_score",
    "random_scores",
    "reference_file",
    "reference_key",
    "step_shape_score",
]
