"""Shared test helpers: a tiny actor/critic and PPO batches with chosen log-ratios."""

from __future__ import annotations

import os

import pytest
import torch
from tensordict import TensorDict

from klip.algos import make_actor, make_critic

torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")

OBS_DIM, ACT_DIM = 5, 3


def make_actor_critic(dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    actor, critic = make_actor(OBS_DIM, ACT_DIM), make_critic(OBS_DIM)
    return actor.to(dtype), critic.to(dtype)


def make_batch(
    actor,
    log_ratio: torch.Tensor,
    advantage: torch.Tensor,
    seed: int = 1,
) -> TensorDict:
    """A batch whose stored log-probs make the current policy's ratio equal exp(log_ratio)."""
    generator = torch.Generator().manual_seed(seed)
    size = log_ratio.shape[0]
    dtype = log_ratio.dtype
    observation = torch.randn(size, OBS_DIM, generator=generator, dtype=dtype)
    batch = TensorDict({"observation": observation}, [size])
    with torch.no_grad():
        actor(batch)
    # stored = current - target; the loss recomputes current - stored, which rounds
    # back to target up to one ulp, so adversarial cases also perturb around it.
    batch["action_log_prob"] = batch["action_log_prob"] - log_ratio
    batch["advantage"] = advantage.reshape(size, 1)
    batch["value_target"] = torch.randn(size, 1, generator=generator, dtype=dtype)
    batch["state_value"] = torch.randn(size, 1, generator=generator, dtype=dtype)
    return batch


def gradients(loss_module, batch: TensorDict, parameters: list[torch.Tensor]):
    for parameter in parameters:
        parameter.grad = None
    out = loss_module(batch.clone())
    total = sum(value for key, value in out.items() if key.startswith("loss_"))
    total.backward()
    return [parameter.grad.clone() for parameter in parameters], out


@pytest.fixture
def clean_registry():
    """Undo registrations a test makes, so tests stay independent."""
    from klip.shapes import registry

    saved = dict(registry._REGISTRY)
    saved_flag = registry._entry_points_loaded
    saved_files = dict(registry._LOADED_FILES)
    yield registry
    registry._LOADED_FILES.clear()
    registry._LOADED_FILES.update(saved_files)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    registry._entry_points_loaded = saved_flag
