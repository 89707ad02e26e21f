"""A klip shape in a TorchRL PPO loop, built as TorchRL's PPO tutorial builds it.

Environment with transforms, an actor made of an MLP, `NormalParamExtractor`,
`TensorDictModule` and a `ProbabilisticActor` with a `TanhNormal`, a `ValueOperator`
critic, TorchRL's `Collector`, a replay buffer sampling without replacement, `GAE`, and
`ClipPPOLoss` with Adam, a cosine learning-rate schedule and gradient clipping. Nothing of
klip's own networks or trainer. Using a shape changes the loss module's lines, marked
`# klip:` below:

    from klip.algos import KLipPPOLoss                                   # klip: import
    loss_module = ClipPPOLoss(actor_network=policy_module, critic_network=value_module,
                              clip_epsilon=clip_epsilon, ...)
    loss_module = KLipPPOLoss(actor_network=policy_module, critic_network=value_module,
                              clip_epsilon=clip_epsilon, shape=shape, ...)  # klip: this instead

Every other keyword stays. With `shape=None` (or `"step"`), `KLipPPOLoss` is PPO-Clip with
`ClipPPOLoss`'s band: the final parameters are bitwise those of the `ClipPPOLoss` run
(`tests/test_examples.py`), and the logged `clip_fraction`, `ESS`, `max_ratio`, `mean_ratio`
and `loss_critic` are equal; `loss_objective` values differ (its gradients do not).

Where it departs from the tutorial, to run in a second without MuJoCo: Pendulum-v1 instead
of InvertedDoublePendulum-v4, no `ObservationNorm` (whose statistics need a warm-up
rollout), TorchRL 0.14's `Collector` (the tutorial's `SyncDataCollector`), a small budget.

Run: `python examples/torchrl_ppo.py --shape sigmoid` (`--shape clip` for `ClipPPOLoss`).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data.replay_buffers import ReplayBuffer
from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement
from torchrl.data.replay_buffers.storages import LazyTensorStorage
from torchrl.envs import Compose, DoubleToFloat, StepCounter, TransformedEnv
from torchrl.envs.libs.gym import GymEnv
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from klip.algos import KLipPPOLoss  # klip: import
from klip.shapes import CoefficientShape


@dataclass
class Config:
    env_name: str = "Pendulum-v1"
    seed: int = 0
    num_cells: int = 64
    lr: float = 3e-3
    max_grad_norm: float = 1.0
    frames_per_batch: int = 200
    total_frames: int = 600
    sub_batch_size: int = 50
    num_epochs: int = 4
    clip_epsilon: float = 0.2
    gamma: float = 0.99
    lmbda: float = 0.95
    entropy_eps: float = 1e-4


def train(shape: CoefficientShape | str | None, config: Config | None = None, *, clip: bool = False):
    """PPO with `ClipPPOLoss` (`clip=True`) or `KLipPPOLoss(shape=shape)`.

    Returns the policy and value modules and the logged loss outputs (lists per key).
    """
    cfg = config or Config()
    torch.manual_seed(cfg.seed)
    env = TransformedEnv(GymEnv(cfg.env_name), Compose(DoubleToFloat(), StepCounter()))
    env.set_seed(cfg.seed)
    action_dim = env.action_spec.shape[-1]

    actor_net = nn.Sequential(
        nn.LazyLinear(cfg.num_cells), nn.Tanh(),
        nn.LazyLinear(cfg.num_cells), nn.Tanh(),
        nn.LazyLinear(2 * action_dim), NormalParamExtractor(),
    )
    policy_module = TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"])
    policy_module = ProbabilisticActor(
        module=policy_module,
        spec=env.action_spec,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": env.action_spec.space.low, "high": env.action_spec.space.high},
        return_log_prob=True,
    )
    value_net = nn.Sequential(
        nn.LazyLinear(cfg.num_cells), nn.Tanh(),
        nn.LazyLinear(cfg.num_cells), nn.Tanh(),
        nn.LazyLinear(1),
    )
    value_module = ValueOperator(module=value_net, in_keys=["observation"])
    policy_module(env.reset())  # initialise the lazy layers
    value_module(env.reset())

    collector = Collector(env, policy_module, frames_per_batch=cfg.frames_per_batch,
                          total_frames=cfg.total_frames, split_trajs=False,
                          auto_register_policy_transforms=False)  # a feed-forward policy needs none
    replay_buffer = ReplayBuffer(storage=LazyTensorStorage(max_size=cfg.frames_per_batch),
                                 sampler=SamplerWithoutReplacement())
    advantage_module = GAE(gamma=cfg.gamma, lmbda=cfg.lmbda, value_network=value_module,
                           average_gae=True)
    common = dict(actor_network=policy_module, critic_network=value_module,
                  clip_epsilon=cfg.clip_epsilon, entropy_bonus=bool(cfg.entropy_eps),
                  entropy_coeff=cfg.entropy_eps, critic_coeff=1.0, loss_critic_type="smooth_l1")
    if clip:  # noqa: SIM108 (the two lines side by side, as the docstring shows them)
        loss_module = ClipPPOLoss(**common)
    else:
        loss_module = KLipPPOLoss(**common, shape=shape)  # klip: this line instead
    optim = torch.optim.Adam(loss_module.parameters(), cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optim, cfg.total_frames // cfg.frames_per_batch,
                                                           0.0)

    logs: dict[str, list[float]] = defaultdict(list)
    for tensordict_data in collector:
        for _ in range(cfg.num_epochs):
            advantage_module(tensordict_data)
            data_view = tensordict_data.reshape(-1)
            replay_buffer.extend(data_view.cpu())
            for _ in range(cfg.frames_per_batch // cfg.sub_batch_size):
                subdata = replay_buffer.sample(cfg.sub_batch_size)
                loss_vals = loss_module(subdata)
                loss_value = (loss_vals["loss_objective"] + loss_vals["loss_critic"]
                              + loss_vals["loss_entropy"])
                loss_value.backward()
                torch.nn.utils.clip_grad_norm_(loss_module.parameters(), cfg.max_grad_norm)
                optim.step()
                optim.zero_grad()
                for key in ("loss_objective", "loss_critic", "clip_fraction", "ESS", "max_ratio",
                            "mean_ratio", "kl_approx"):
                    logs[key].append(float(loss_vals[key].detach()))
        logs["reward"].append(float(tensordict_data["next", "reward"].mean()))
        scheduler.step()
    collector.shutdown()
    env.close()
    return policy_module, value_module, dict(logs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="step", help="a registered shape, or 'clip' for ClipPPOLoss")
    parser.add_argument("--frames", type=int, default=10_000)
    options = parser.parse_args()
    config = Config(total_frames=options.frames)
    clip = options.shape == "clip"
    _, _, logs = train(None if clip else options.shape, config, clip=clip)
    print(f"{options.shape}: mean reward per step, first and last batch: "
          f"{logs['reward'][0]:.3f} -> {logs['reward'][-1]:.3f}")


if __name__ == "__main__":
    main()
