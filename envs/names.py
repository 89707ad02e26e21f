"""The tasks klip trains, by name: importable without gymnasium, TorchRL or torch, so that an
unknown `--task` is refused within a second (`klip.algos.config`)."""

from __future__ import annotations

KNOWN_TASKS: tuple[str, ...] = (
    *(
        f"{name}-{version}"
        for name in ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid")
        for version in ("v4", "v5")
    ),
    "Pendulum-v1",
)

__all__ = ["KNOWN_TASKS"]
