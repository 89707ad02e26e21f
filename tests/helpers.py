"""Shared test helpers: a tiny actor/critic, PPO batches with chosen log-ratios, per-sample gradients.

Test modules import from here (never from one another); `conftest.py` keeps only fixtures.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.modules import ProbabilisticActor
from torchrl.objectives import LossModule

from klip.algos import make_actor, make_critic
from klip.algos.networks import ValueHead

OBS_DIM, ACT_DIM = 5, 3
Case = Callable[[int, torch.dtype, int], tuple[Tensor, Tensor]]


def make_actor_critic(
    dtype: torch.dtype = torch.float32, seed: int = 0, log_std: float | None = None
) -> tuple[ProbabilisticActor, ValueHead]:
    """`make_actor`/`make_critic` on the test dimensions; `log_std` overrides the initial 0."""
    torch.manual_seed(seed)
    actor, critic = make_actor(OBS_DIM, ACT_DIM), make_critic(OBS_DIM)
    if log_std is not None:
        with torch.no_grad():
            actor.module[0].log_std.fill_(log_std)
    return actor.to(dtype), critic.to(dtype)


def make_batch(actor: ProbabilisticActor, log_ratio: Tensor, advantage: Tensor, seed: int = 1) -> TensorDict:
    """A batch whose stored log-probs make the current policy's ratio equal exp(log_ratio).

    The action is the actor's deterministic output (its mean), so the policy mean gets no
    gradient; `make_sampled_batch` is the batch for tests that must see every sample.
    """
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


def current_log_prob(actor: ProbabilisticActor, batch: TensorDictBase) -> Tensor:
    """The log-prob of the batch's actions under the actor, computed as `PPOLoss._log_weight` does."""
    with torch.no_grad():
        work = batch.select("observation").clone()
        dist = actor.get_dist(work)
        return dist.log_prob(batch["action"])


def make_sampled_batch(
    actor: ProbabilisticActor,
    log_ratio: Tensor,
    advantage: Tensor,
    seed: int = 1,
    *,
    tries: int = 8,
) -> tuple[TensorDict, Tensor]:
    """A batch with sampled actions (action != mean) whose log-ratios equal `log_ratio` **exactly**.

    Each sample's action is `mean + scale * z` with `z` in a random direction and of the
    length that puts its current log-prob `p` near `target * (1 + u)`, |u| <= 0.1. Then
    `stored = p - target` is exact (Sterbenz) and the loss's `p - stored` is exactly the
    target. Needs `p` at the mean above every target: `log_std = -1.2` on 3 dims gives
    about 0.84. Returns the batch and the mask of samples for which the loss's log-ratio
    is exactly the target (others, e.g. targets above that bound, are off by an ulp or so).
    """
    generator = torch.Generator().manual_seed(seed)
    size, dtype = log_ratio.shape[0], log_ratio.dtype
    observation = torch.randn(size, OBS_DIM, generator=generator, dtype=dtype)
    batch = TensorDict({"observation": observation}, [size])
    with torch.no_grad():
        actor(batch)
    loc, scale = batch["loc"], batch["scale"]
    batch["action"] = loc.clone()
    at_mean = current_log_prob(actor, batch)
    action = torch.empty_like(loc)
    stored = torch.empty(size, dtype=dtype)
    found = torch.zeros(size, dtype=torch.bool)
    for attempt in range(tries):
        direction = torch.randn(loc.shape, generator=generator, dtype=dtype)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        jitter = 0.2 * torch.rand(size, generator=generator, dtype=dtype) - 0.1
        # log p = log p(mean) - |z|^2 / 2 for a Gaussian in units of its scale.
        squared = (2 * (at_mean - log_ratio * (1 + jitter))).clamp_min(0.01)
        candidate = loc + scale * direction * squared.sqrt().unsqueeze(-1)
        batch["action"] = candidate
        current = current_log_prob(actor, batch)
        candidate_stored = current - log_ratio
        take = ~found & ((current - candidate_stored) == log_ratio)
        if attempt == 0:  # a fallback for samples that never hit exactly
            action.copy_(candidate)
            stored.copy_(candidate_stored)
        action[take] = candidate[take]
        stored[take] = candidate_stored[take]
        found |= take
        if found.all():
            break
    batch["action"] = action
    batch["action_log_prob"] = stored
    batch["advantage"] = advantage.reshape(size, 1)
    batch["value_target"] = torch.randn(size, 1, generator=generator, dtype=dtype)
    batch["state_value"] = torch.randn(size, 1, generator=generator, dtype=dtype)
    return batch, found


def achieved_log_ratio(actor: ProbabilisticActor, batch: TensorDictBase) -> Tensor:
    """The log-ratio a loss module computes from the batch (current minus stored log-prob)."""
    return current_log_prob(actor, batch) - batch["action_log_prob"]


def gradients(
    loss_module: LossModule, batch: TensorDictBase, parameters: Sequence[Tensor]
) -> tuple[list[Tensor], TensorDictBase]:
    """Gradients of the summed `loss_*` outputs with respect to `parameters`, and the outputs."""
    for parameter in parameters:
        parameter.grad = None
    out = loss_module(batch.clone())
    total = sum(value for key, value in out.items() if key.startswith("loss_"))
    total.backward()
    return [parameter.grad.clone() for parameter in parameters], out


def per_sample_gradients(
    loss_module: Callable[[TensorDictBase], TensorDictBase],
    batch: TensorDictBase,
    parameters: Sequence[Tensor],
) -> tuple[Tensor, list[Tensor]]:
    """The gradient with respect to each sample's observation, and the parameter gradients.

    The networks act on each sample separately, so row i of the observation gradient
    depends only on sample i's coefficient: one wrong gate shows up in its own row
    instead of being averaged into a parameter gradient.
    """
    for parameter in parameters:
        parameter.grad = None
    data = batch.clone()
    observation = data["observation"].detach().clone().requires_grad_()
    data["observation"] = observation
    out = loss_module(data)
    total = sum(value for key, value in out.items() if key.startswith("loss_"))
    total.backward()
    return observation.grad.clone(), [parameter.grad.clone() for parameter in parameters]


def random_case(size: int, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    log_ratio = 0.3 * torch.randn(size, generator=generator, dtype=dtype)
    advantage = torch.randn(size, generator=generator, dtype=dtype)
    return log_ratio, advantage


def band_edges(eps: float, dtype: torch.dtype) -> Tensor:
    """Both log-space band edges as ClipPPOLoss computes them, and one ulp either side of each."""
    eps_tensor = torch.tensor(eps, dtype=dtype)
    up, down = torch.tensor(9.0, dtype=dtype), torch.tensor(-9.0, dtype=dtype)
    edges = []
    for edge in (eps_tensor.log1p(), (-eps_tensor).log1p()):
        edges += [torch.nextafter(edge, down), edge, torch.nextafter(edge, up)]
    return torch.stack(edges)


def edge_case(size: int, dtype: torch.dtype, seed: int, eps: float = 0.2) -> tuple[Tensor, Tensor]:
    """Moderate log-ratios (|log w| < 0.5) with a quarter of the samples on, or one ulp either
    side of, a band edge; every advantage is nonzero and of either sign, none dominates."""
    generator = torch.Generator().manual_seed(seed)
    log_ratio = 0.25 * torch.randn(size, generator=generator, dtype=dtype).clamp(-2, 2)
    edges = band_edges(eps, dtype)
    on_edge = torch.arange(size) % 4 == 0
    picks = torch.arange(int(on_edge.sum())) % len(edges)
    log_ratio[on_edge] = edges[picks]
    magnitude = 0.5 + torch.rand(size, generator=generator, dtype=dtype)
    sign = torch.where(torch.rand(size, generator=generator) < 0.5, 1.0, -1.0).to(dtype)
    # Both signs on every edge: the edge samples cycle through the edges, then flip sign.
    sign[on_edge] = torch.where((torch.arange(len(picks)) // len(edges)) % 2 == 0, 1.0, -1.0).to(dtype)
    return log_ratio, sign * magnitude


def adversarial_case(size: int, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor]:
    """Ratios far outside the band, exactly on 1 +- eps, tiny and huge; zero advantages."""
    eps_value = 0.2
    generator = torch.Generator().manual_seed(seed)
    eps = torch.tensor(eps_value, dtype=dtype)
    specials = torch.tensor(
        [
            eps.log1p(), (-eps).log1p(),                       # exactly on the log bounds
            math.log(1 + eps_value), math.log(1 - eps_value),  # on 1 +- eps in ratio space
            torch.nextafter(eps.log1p(), torch.tensor(9.0, dtype=dtype)),
            torch.nextafter((-eps).log1p(), torch.tensor(-9.0, dtype=dtype)),
            math.log(1e-6), math.log(1e6), -30.0, 30.0,        # tiny and huge ratios
            -5.0, 5.0, 0.0,                                    # far outside, centre
        ],
        dtype=dtype,
    )
    picks = torch.randint(len(specials), (size,), generator=generator)
    log_ratio = specials[picks]
    advantage = torch.randn(size, generator=generator, dtype=dtype) * 10 ** torch.randint(
        -3, 4, (size,), generator=generator
    ).to(dtype)
    advantage[torch.rand(size, generator=generator) < 0.2] = 0.0
    return log_ratio, advantage


def ppo_clip_kill(log_ratio: Tensor, advantage: Tensor, eps: float) -> Tensor:
    """PPO-Clip's kill region in exact arithmetic, written from the paper (not from klip)."""
    ratio = log_ratio.double().exp()
    return ((ratio > 1 + eps) & (advantage > 0)) | ((ratio < 1 - eps) & (advantage < 0))


def single_run_state(checkpoint: dict) -> dict[str, Tensor]:
    """A single run's checkpoint `state_dict` keyed as its agent's modules (`actor.*`,
    `critic.*`, `loss_module.*`): the engine keeps agent i's under `agents.i.`."""
    prefix = "agents.0."
    state = checkpoint["state_dict"]
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


# What may differ between an agent and its single run: clocks, memory, the population's size.
VARYING_SUMMARY_KEYS = {"wall_seconds", "peak_rss_mib", "population_size"}


def metric_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(file)]


def assert_same_run(agent_dir: Path, single_dir: Path) -> None:
    """Every file an agent writes equals its single run's (timings aside)."""
    def files(directory: Path) -> set[str]:
        # The lock is the run directory's (a population's is its root's).
        return {path.name for path in directory.iterdir() if path.is_file() and path.name != ".klip.lock"}

    names = files(single_dir)
    assert names == files(agent_dir)
    for name in names:
        a, b = agent_dir / name, single_dir / name
        if name == "metrics.csv":
            assert metric_rows(a) == metric_rows(b)
        elif name == "summary.json":
            summary_a, summary_b = json.loads(a.read_text()), json.loads(b.read_text())
            summary_a["evaluation"].pop("seconds")
            summary_b["evaluation"].pop("seconds")
            assert {k: v for k, v in summary_a.items() if k not in VARYING_SUMMARY_KEYS} == {
                k: v for k, v in summary_b.items() if k not in VARYING_SUMMARY_KEYS}
        elif name == "eval.json":
            eval_a, eval_b = json.loads(a.read_text()), json.loads(b.read_text())
            assert {k: v for k, v in eval_a.items() if k != "seconds"} == {
                k: v for k, v in eval_b.items() if k != "seconds"}
        elif name == "parameters.pt":
            state_a = torch.load(a, weights_only=True)
            state_b = torch.load(b, weights_only=True)
            assert state_a["state_dict"].keys() == state_b["state_dict"].keys()
            for key, value in state_b["state_dict"].items():
                assert torch.equal(state_a["state_dict"][key], value), key
            assert state_a["normalization"].keys() == state_b["normalization"].keys()
            for key, value in state_b["normalization"].items():
                ours = torch.as_tensor(state_a["normalization"][key])
                assert torch.equal(ours, torch.as_tensor(value)), key
        elif name.endswith(".png"):
            continue
        else:
            assert a.read_bytes() == b.read_bytes(), name
