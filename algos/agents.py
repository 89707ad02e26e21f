"""Train several agents one after another: a study trial's (task, seed) runs.

Sequential single runs of `train`, so a pruner can stop a trial between runs (or inside one,
through its callbacks). Several trials at once, as one population, go through
`klip.algos.population_run.train_population_agents` instead (`klip study run --batch K`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl

from klip.algos.config import TrainConfig
from klip.algos.train import RunResult, train


@dataclass
class AgentResult:
    config: TrainConfig
    out: Path
    run: RunResult
    # True when a callback asked Lightning to stop early (e.g. a pruner).
    stopped_early: bool


# Per-agent callbacks are built lazily: a pruning callback needs to know which
# agent (task, seed) it watches, and Lightning callbacks hold per-run state.
CallbackFactory = Callable[[int, TrainConfig], Sequence[pl.Callback]]
# Called after each agent finishes; returning False skips the remaining agents.
AfterAgent = Callable[[int, AgentResult], bool]


def train_agents(
    configs: Sequence[TrainConfig],
    out_dirs: Sequence[str | Path],
    *,
    callbacks: CallbackFactory | None = None,
    after_each: AfterAgent | None = None,
    progress: bool = False,
) -> list[AgentResult]:
    """Train `configs[i]` into `out_dirs[i]`, in order; stop early when `after_each` says so."""
    if len(configs) != len(out_dirs):
        raise ValueError(f"{len(configs)} configs but {len(out_dirs)} output directories")
    results: list[AgentResult] = []
    for index, (config, out) in enumerate(zip(configs, out_dirs, strict=True)):
        extra = list(callbacks(index, config)) if callbacks else []
        run = train(config, out, progress=progress, callbacks=extra)
        stopped = run.frames < config.iterations * config.rollout_steps
        result = AgentResult(config=config, out=Path(out), run=run, stopped_early=stopped)
        results.append(result)
        if after_each is not None and not after_each(index, result):
            break
    return results


__all__ = ["AfterAgent", "AgentResult", "CallbackFactory", "train_agents"]
