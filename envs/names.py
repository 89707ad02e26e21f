"""The tasks klip trains, by name: importable without gymnasium, TorchRL or torch, so that an
unknown `--task`, or one whose optional dependency is missing, is refused within a second
(`klip.algos.config`)."""

from __future__ import annotations

import importlib.util

# Tasks with a `Discrete` action space: a categorical policy (`klip.algos.networks`).
DISCRETE_TASKS: tuple[str, ...] = ("CartPole-v1", "LunarLander-v3")

KNOWN_TASKS: tuple[str, ...] = (
    *(
        f"{name}-{version}"
        for name in ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid")
        for version in ("v4", "v5")
    ),
    "Pendulum-v1",
    *DISCRETE_TASKS,
)

# Task -> (klip's pip extra, the module that extra installs): gymnasium's Box2D tasks need
# the `box2d` package, which the base install leaves out.
TASK_EXTRAS: dict[str, tuple[str, str]] = {"LunarLander-v3": ("box2d", "Box2D")}


# Tasks whose simulator cannot be saved and restored mid-episode (Box2D's world is not
# picklable): their runs do not resume from a checkpoint; an interrupted one starts again.
UNRESUMABLE_TASKS: tuple[str, ...] = tuple(
    task for task, (extra, _) in TASK_EXTRAS.items() if extra == "box2d")


def resumable(task: str, env_backend: str = "gymnasium") -> bool:
    """Whether a run of `task` on `env_backend` can continue from its checkpoint bit for bit."""
    return env_backend != "envpool" and task not in UNRESUMABLE_TASKS


def action_space_of(task: str) -> str:
    """`"discrete"` or `"continuous"`: the policy a task's actions need."""
    return "discrete" if task in DISCRETE_TASKS else "continuous"


def missing_extra(task: str) -> str | None:
    """The pip extra `task` needs and this environment lacks (None when nothing is missing)."""
    extra = TASK_EXTRAS.get(task)
    if extra is None or importlib.util.find_spec(extra[1]) is not None:
        return None
    return extra[0]


def check_task_installed(task: str) -> None:
    """Raise `ValueError` in one line if `task`'s optional dependency is not installed."""
    extra = missing_extra(task)
    if extra is not None:
        raise ValueError(f"task {task} needs gymnasium's {extra} extra, which is not installed: "
                         f"pip install 'klip[{extra}]'")


__all__ = ["DISCRETE_TASKS", "KNOWN_TASKS", "TASK_EXTRAS", "UNRESUMABLE_TASKS", "action_space_of",
           "check_task_installed", "missing_extra", "resumable"]
