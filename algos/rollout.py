"""Rollout collection: TorchRL's `Collector`, and a lean loop that yields the same data.

Both return a TensorDict of shape `[num_envs, frames_per_env]` with the keys
TorchRL's collector writes (`observation`, `action`, `action_log_prob`, `loc`,
`scale`, and `next/{observation, reward, done, terminated, truncated}`), and
both can save and restore their place mid-episode, so a resumed run continues
bit for bit.
"""

from __future__ import annotations

from typing import Any, Protocol

from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, ExplorationType

from klip.envs import get_env_state, set_env_state


class Rollouts(Protocol):
    def collect(self) -> TensorDictBase: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TorchRLRollouts:
    """TorchRL's own `Collector`, one rollout per `collect()`."""

    def __init__(self, env: EnvBase, actor: Any, frames_per_env: int) -> None:
        self.env = env
        self.collector = Collector(
            env,
            actor,
            frames_per_batch=frames_per_env * env.batch_size.numel(),
            total_frames=-1,
            exploration_type=ExplorationType.RANDOM,
            track_traj_ids=False,
            auto_register_policy_transforms=False,
        )
        self._iterator = iter(self.collector)

    def collect(self) -> TensorDictBase:
        return next(self._iterator)

    def state_dict(self) -> dict[str, Any]:
        # The collector's carrier holds the current observation between rollouts;
        # TorchRL's own state_dict leaves it out, so it is saved here.
        return {"env": get_env_state(self.env), "carrier": self.collector._carrier.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_env_state(self.env, state["env"])
        self.collector._carrier.update(TensorDict(state["carrier"], self.env.batch_size))


def make_rollouts(kind: str, env: EnvBase, actor: Any, frames_per_env: int) -> Rollouts:
    if kind == "torchrl":
        return TorchRLRollouts(env, actor, frames_per_env)
    if kind == "fast":
        from klip.algos.fast_rollout import FastRollouts

        return FastRollouts(env, actor, frames_per_env)
    raise ValueError(f"unknown collector {kind!r}; choose 'torchrl' or 'fast'")
