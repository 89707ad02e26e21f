"""klip: PPO variants written as coefficient shapes.

The command line is `klip` (klip/cli.py); the Python API is `klip.train` and `klip.load_run`
(klip/algos/run.py). They are imported on first use, so `import klip` and `klip --help`
do not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from klip.algos.run import Run, load_run
    from klip.algos.run import train_run as train

__all__ = ["Run", "load_run", "train"]

_LAZY = {"train": "train_run", "load_run": "load_run", "Run": "Run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from klip.algos import run

        return getattr(run, _LAZY[name])
    raise AttributeError(f"module 'klip' has no attribute {name!r}")
