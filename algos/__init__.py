"""PPO in TorchRL and Lightning, with the policy term from a coefficient shape.

The names below are imported on first use, so that `klip --help` (which reads
`klip.algos.config`) does not import torch and TorchRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from klip.algos.loss import KLIP_DIAGNOSTICS, KLipPPOLoss, ScalarKLPPOLoss
    from klip.algos.networks import make_actor, make_critic
    from klip.shapes.functional import klip_objective

_LAZY = {
    "KLIP_DIAGNOSTICS": "klip.algos.loss",
    "KLipPPOLoss": "klip.algos.loss",
    "ScalarKLPPOLoss": "klip.algos.loss",
    "klip_objective": "klip.shapes.functional",  # torch alone: no TorchRL import for the objective
    "make_actor": "klip.algos.networks",
    "make_critic": "klip.algos.networks",
}

__all__ = [
    "KLIP_DIAGNOSTICS",
    "KLipPPOLoss",
    "ScalarKLPPOLoss",
    "klip_objective",
    "make_actor",
    "make_critic",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'klip.algos' has no attribute {name!r}")
