"""PPO in TorchRL and Lightning, with the policy term from a coefficient shape."""

from klip.algos.loss import KLIP_DIAGNOSTICS, KLipPPOLoss, ScalarKLPPOLoss, klip_objective
from klip.algos.networks import make_actor, make_critic

__all__ = [
    "KLIP_DIAGNOSTICS",
    "KLipPPOLoss",
    "ScalarKLPPOLoss",
    "klip_objective",
    "make_actor",
    "make_critic",
]
