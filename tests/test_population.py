"""Populations: independence of agents, the single-agent maths per agent, resume, the CLI."""

from __future__ import annotations

import copy
import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ACT_DIM, OBS_DIM, make_batch
from tensordict import TensorDict

from klip.algos.config import TrainConfig
from klip.algos.loss import ScalarKLPPOLoss
from klip.algos.networks import make_actor, make_critic, policy_head
from klip.algos.population import (
    UPDATE_COLUMNS,
    PopulationLoss,
    PopulationModule,
    StackedActorCritic,
    clip_grad_norm_per_agent,
)
from klip.algos.population_run import (
    PopulationSpec,
    parse_seeds,
    parse_sweep,
    train_population,
    train_population_agents,
)
from klip.algos.ppo import PPOModule, build_loss
from klip.algos.resolve import resolve_config
from klip.algos.update import make_minibatch_loss
from klip.cli import main
from klip.shapes import available_shapes, make_shape

TINY = dict(task="Pendulum-v1", rollout_steps=256, minibatch_size=64, epochs=2, eval_episodes=0)
MINIBATCH = 64


# -- helpers ------------------------------------------------------------------------------
def agent_networks(seeds: list[int]) -> tuple[list, list]:
    actors, critics = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        actors.append(make_actor(OBS_DIM, ACT_DIM))
        critics.append(make_critic(OBS_DIM))
    return actors, critics


def agent_minibatch(actor, seed: int):
    """A minibatch whose log-ratios spread over both sides of every gate's band."""
    generator = torch.Generator().manual_seed(100 + seed)
    log_ratio = (torch.rand(MINIBATCH, generator=generator) - 0.5) * 0.8
    advantage = torch.randn(MINIBATCH, generator=generator)
    batch = make_batch(actor, log_ratio, advantage, seed=seed)
    # A rollout policy unlike the current one, so the scalar-KL losses' KL and its gradient
    # are not zero (both vanish where the two policies coincide); the shapes do not read it.
    batch["loc"] = batch["loc"] + 0.2 * torch.randn(batch["loc"].shape, generator=generator)
    batch["scale"] = batch["scale"] * 1.3
    return batch


def population_gradients(loss: PopulationLoss, batches) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    columns = [torch.stack([batch[key] for batch in batches]) for key in UPDATE_COLUMNS]
    for parameter in loss.networks.parameters():
        parameter.grad = None
    totals, metrics = loss(*columns)
    totals.sum().backward()
    grads = {name: p.grad.clone() for name, p in loss.networks.named_parameters()}
    return grads, metrics


def single_gradients(
    config: TrainConfig, actor, critic, batch
) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """The gradients `klip train` computes for one agent: the same loss objects PPOModule builds."""
    resolved, shape = resolve_config(config)  # as `klip train` resolves it
    loss_module = build_loss(resolved, actor, critic, shape)
    minibatch_loss = make_minibatch_loss(loss_module, actor, critic)
    for parameter in [*actor.parameters(), *critic.parameters()]:
        parameter.grad = None
    (minibatch,) = list(minibatch_loss.minibatches(batch.clone(), MINIBATCH))
    total, metrics = minibatch_loss(minibatch)
    total.backward()
    head = policy_head(actor)
    grads = [p.grad.clone() for p in head.mean.parameters()]
    grads.append(head.log_std.grad.clone())
    grads += [p.grad.clone() for p in critic.net.parameters()]
    return grads, metrics, minibatch_loss.metric_names


def stacked_agent_grads(grads: dict[str, torch.Tensor], agent: int) -> list[torch.Tensor]:
    """Population gradients of one agent, in `single_gradients`' order."""
    mean = [g[agent] for name, g in grads.items() if name.startswith("policy_mean.")]
    value = [g[agent] for name, g in grads.items() if name.startswith("value.")]
    return [*mean, grads["log_std"][agent], *value]


def assert_relatively_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol: float = 1e-5):
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        scale = e.norm().clamp_min(1e-12)
        assert float((a - e).norm() / scale) <= rtol, f"parameter {index}: {float((a - e).norm() / scale)}"


def check_same_maths(configs: list[TrainConfig], shapes_from_configs: bool = True):
    seeds = [config.seed for config in configs]
    actors, critics = agent_networks(seeds)
    batches = [agent_minibatch(actor, seed) for actor, seed in zip(actors, seeds, strict=True)]
    from klip.algos.ppo import build_shape

    shapes = [build_shape(c) for c in configs] if configs[0].loss == "klip" else None
    if configs[0].loss == "clip":
        shapes = [make_shape("step", eps=resolve_config(c)[0].clip_eps) for c in configs]
    networks = StackedActorCritic(actors, critics)
    loss = PopulationLoss(configs[0], shapes, networks)
    grads, metrics = population_gradients(loss, batches)
    for agent, config in enumerate(configs):
        expected, expected_metrics, names = single_gradients(config, actors[agent], critics[agent],
                                                             batches[agent])
        assert_relatively_close(stacked_agent_grads(grads, agent), expected)
        if config.loss != "clip":  # ClipPPOLoss's surrogate value differs from step's (same gradient)
            assert names == loss.metric_names
            torch.testing.assert_close(metrics[agent], expected_metrics, rtol=1e-5, atol=1e-6)
    return grads, actors, critics, batches


# -- same maths ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", available_shapes())
def test_each_agent_gets_the_single_agent_gradient_for_every_shape(shape):
    configs = [TrainConfig(shape=shape, seed=seed) for seed in (0, 1, 2)]
    check_same_maths(configs)


@pytest.mark.parametrize("loss,kl_direction", [("kl_fixed", None), ("kl_adaptive", None), ("clip", None),
                                               ("kl_fixed", "new_old"), ("kl_adaptive", "new_old")])
def test_each_agent_gets_the_single_agent_gradient_for_the_baselines(loss, kl_direction):
    kl_beta = 0.7 if loss.startswith("kl_") else None
    check_same_maths([TrainConfig(loss=loss, seed=seed, kl_beta=kl_beta, kl_direction=kl_direction)
                      for seed in (0, 1, 2)])


def test_entropy_bonus_and_no_value_clip_keep_the_same_maths():
    check_same_maths([TrainConfig(shape="sigmoid", seed=s, entropy_coeff=0.01, value_clip=None,
                                  normalize_advantage=False) for s in (0, 1)])


def test_agents_with_different_shape_parameters_get_their_own_gradients():
    taus = (0.01, 0.1, 0.5)
    configs = [TrainConfig(shape="sigmoid", seed=0, shape_params={"tau": tau, "eps": 0.1 + i * 0.05})
               for i, tau in enumerate(taus)]
    grads, actors, critics, batches = check_same_maths(configs)
    # Not vacuous: with another agent's parameters, agent 0 would get another gradient.
    wrong, _, _ = single_gradients(configs[2], actors[0], critics[0], batches[0])
    with pytest.raises(AssertionError):
        assert_relatively_close(stacked_agent_grads(grads, 0), wrong)


def test_a_user_shape_written_as_in_the_readme_works_unchanged(clean_registry):
    from klip.shapes import CoefficientShape, Param, register_shape, signed_distance_past_boundary

    @register_shape("soft_knee")
    class SoftKnee(CoefficientShape):
        """Quadratic onset past the boundary, full brake after `width`."""
        params = {  # noqa: RUF012 (as the README writes it)
            "eps": Param(0.2, 0.0, 1.0, low_inclusive=False, search=(0.05, 0.4)),
            "width": Param(0.1, 0.0, low_inclusive=False, search=(1e-3, 1.0), log=True),
        }

        def gate(self, ratio, advantage):
            d = signed_distance_past_boundary(ratio, advantage, self.eps)
            return (d / self.width).clamp(0, 1) ** 2

    configs = [TrainConfig(shape="soft_knee", seed=seed, shape_params={"width": width})
               for seed in (0, 1) for width in (0.02, 0.3)]
    check_same_maths(configs)


# -- independence -------------------------------------------------------------------------
def one_update(module: PopulationModule, rollouts, state) -> dict[str, torch.Tensor]:
    module.load_state_dict(state["module"])
    for generator, saved in zip(module.generators, state["generators"], strict=True):
        generator.set_state(saved)
    optimizer = module.configure_optimizers()[0][0]
    # A copy: Adam's load_state_dict keeps the given moment tensors and updates them in place.
    optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    module.update(module.advantages(rollouts), optimizer)
    return {name: p.detach().clone() for name, p in module.networks.named_parameters()}


@pytest.mark.parametrize("shape", ["step", "sigmoid"])
def test_perturbing_one_agents_rollout_leaves_the_others_bitwise_unchanged(shape):
    configs = [TrainConfig(**TINY, shape=shape, seed=seed).to_dict() for seed in (0, 1, 2)]
    module = PopulationModule(configs)
    optimizer = module.configure_optimizers()[0][0]
    # A first update, so Adam's moments are not zero when the compared update runs.
    module.update(module.advantages(module.rollouts.collect(module.generators)), optimizer)
    rollouts = module.rollouts.collect(module.generators)
    state = {"module": copy.deepcopy(module.state_dict()),
             "optimizer": copy.deepcopy(optimizer.state_dict()),
             "generators": [g.get_state() for g in module.generators]}
    reference = one_update(module, rollouts, state)
    perturbed = [rollout.clone() for rollout in rollouts]
    perturbed[1]["observation"] += 0.5 * torch.randn_like(perturbed[1]["observation"])
    perturbed[1]["next", "reward"] *= -3.0
    changed = one_update(module, perturbed, state)
    for name in reference:
        for agent in (0, 2):
            assert torch.equal(reference[name][agent], changed[name][agent]), (name, agent)
        assert not torch.equal(reference[name][1], changed[name][1]), name


def test_per_agent_gradient_clipping_equals_clipping_each_agent_alone():
    torch.manual_seed(0)
    stacked = [torch.randn(3, 4, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)]
    for tensor, scale in zip(stacked, (1.0, 0.05), strict=True):
        tensor.grad = torch.randn_like(tensor) * scale
    # Agent 1 below the threshold (not clipped), agents 0 and 2 above it.
    for tensor in stacked:
        tensor.grad[1] *= 0.01
    alone = []
    for agent in range(3):
        parts = [tensor.grad[agent].clone().requires_grad_() for tensor in stacked]
        for part in parts:
            part.grad = part.detach().clone()
        norm = torch.nn.utils.clip_grad_norm_(parts, 0.5)
        alone.append((norm, [part.grad for part in parts]))
    norms = clip_grad_norm_per_agent(stacked, 0.5)
    for agent, (norm, grads) in enumerate(alone):
        torch.testing.assert_close(norms[agent], norm, rtol=1e-6, atol=0)
        for tensor, grad in zip(stacked, grads, strict=True):
            torch.testing.assert_close(tensor.grad[agent], grad, rtol=1e-6, atol=1e-9)
    assert float(norms[1]) < 0.5 < float(norms[0])


def test_one_adam_on_stacked_parameters_is_bitwise_per_agent_adams():
    torch.manual_seed(0)
    stacked = torch.nn.Parameter(torch.randn(3, 7))
    alone = [torch.nn.Parameter(stacked[agent].detach().clone()) for agent in range(3)]
    together = torch.optim.Adam([stacked], lr=3e-4, eps=1e-5, foreach=True)
    separate = [torch.optim.Adam([p], lr=3e-4, eps=1e-5, foreach=True) for p in alone]
    for _ in range(5):
        grad = torch.randn(3, 7)
        stacked.grad = grad.clone()
        together.step()
        for agent, (parameter, optimizer) in enumerate(zip(alone, separate, strict=True)):
            parameter.grad = grad[agent].clone()
            optimizer.step()
    for agent in range(3):
        assert torch.equal(stacked[agent], alone[agent])


# -- agents start as their single runs -----------------------------------------------------
def test_each_agent_starts_with_its_single_runs_parameters_and_actions():
    module = PopulationModule([TrainConfig(**TINY, steps=256, seed=seed).to_dict() for seed in (4, 7)])
    single = PPOModule(TrainConfig(**TINY, steps=256, seed=7).to_dict())
    actor, critic = module.agent_modules(1)
    for ours, theirs in ((actor, single.actor), (critic, single.critic)):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    # Same env seed and same random stream: the first rollouts agree up to matmul rounding
    # (a batched product rounds differently from a single one).
    torch.set_rng_state(single._rng_state)
    expected = single.rollouts.collect()
    actual = module.rollouts.collect(module.generators)[1]
    torch.testing.assert_close(actual["action"], expected["action"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual["next", "reward"], expected["next", "reward"], rtol=1e-4, atol=1e-5)


# -- resume -------------------------------------------------------------------------------
def final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def metric_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(file)]


def assert_same_population(a: Path, b: Path, agents: list[str]) -> None:
    state_a, state_b = final_state(a), final_state(b)
    assert set(state_a) == set(state_b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for agent in agents:
        assert metric_rows(a / agent / "metrics.csv") == metric_rows(b / agent / "metrics.csv")
        assert (a / agent / "episodes.csv").read_text() == (b / agent / "episodes.csv").read_text()


@pytest.mark.slow
def test_resumed_population_ends_bitwise_like_the_uninterrupted_one(tmp_path):
    spec = PopulationSpec(TrainConfig(**TINY, steps=5 * 256, shape="sigmoid", checkpoint_every=2),
                          [0, 1], {"tau": [0.02, 0.2]})
    assert train_population(spec, tmp_path / "killed", progress=False, kill_after_iterations=3) is None
    assert not (tmp_path / "killed" / "s0-tau0.02" / "summary.json").exists()
    train_population(spec, tmp_path / "killed", resume=True, progress=False)
    train_population(spec, tmp_path / "whole", progress=False)
    assert_same_population(tmp_path / "killed", tmp_path / "whole",
                           ["s0-tau0.02", "s1-tau0.02", "s0-tau0.2", "s1-tau0.2"])


@pytest.mark.slow
def test_killed_population_process_resumes_bitwise(tmp_path):
    flags = ["--task", "Pendulum-v1", "--steps", str(256 * 30), "--rollout-steps", "256",
             "--epochs", "2", "--checkpoint-every", "3", "--eval-episodes", "0", "--no-progress",
             "--seeds", "0-1", "--loss", "kl_adaptive"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "klip", "train", *flags, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # past the checkpoint, so rows after it must be dropped
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists()
    assert not (killed / "population_summary.csv").exists(), "finished before it could be killed"
    assert main(["train", "--out", str(killed), "--resume", "--no-progress"]) == 0
    assert main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0
    assert_same_population(killed, tmp_path / "whole", ["s0", "s1"])


# -- command line -------------------------------------------------------------------------
BASE = ["train", "--task", "Pendulum-v1", "--steps", "512", "--rollout-steps", "256", "--epochs", "1",
        "--no-progress"]


def test_seeds_and_sweep_write_one_run_directory_per_agent_and_a_summary(tmp_path, capsys):
    out = tmp_path / "population"
    code = main([*BASE, "--eval-episodes", "1", "--shape", "linear_ramp", "--seeds", "0,3",
                 "--sweep", "delta=0.05,0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    agents = ["s0-delta0.05", "s3-delta0.05", "s0-delta0.5", "s3-delta0.5"]
    for agent in agents:
        directory = out / agent
        for name in ("config.yaml", "metrics.csv", "episodes.csv", "summary.json", "eval.json",
                     "learning_curve.png"):
            assert (directory / name).is_file(), (agent, name)
        config = yaml.safe_load((directory / "config.yaml").read_text())
        assert config["seed"] == int(agent[1]) and config["shape"] == "linear_ramp"
        # Recorded as a single run records it: resolved, every shape parameter named.
        assert config["shape_params"] == {"eps": 0.2, "delta": float(agent.split("delta")[1])}
        assert len(metric_rows(directory / "metrics.csv")) == 2
    with open(out / "population_summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["agent"] for row in rows] == agents
    summary = json.loads((out / "population_summary.json").read_text())
    assert set(summary["groups"]) == {"delta=0.05", "delta=0.5"}
    assert (out / "population_curves.png").stat().st_size > 0
    # Different seeds and parameters learn differently; the same seed starts the same.
    assert rows[0]["final_return"] != rows[1]["final_return"]


def test_train_population_agents_seam_returns_one_result_per_configuration(tmp_path):
    configs = [TrainConfig(**TINY, steps=256, seed=seed) for seed in (5, 6)]
    results = train_population_agents(configs, tmp_path / "agents")
    assert [r.config.seed for r in results] == [5, 6]
    assert all((r.out / "summary.json").is_file() for r in results)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--seeds", ""], "--seeds is empty"),
    (["--seeds", "0-"], "is not a seed or a range"),
    (["--seeds", "a,b"], "is not a seed or a range"),
    (["--seeds", "3-1"], "is empty"),
    (["--seeds", "0-2,1"], "duplicate agents"),
    (["--seeds", "0,0"], "duplicate agents"),
    (["--seeds", "0-1", "--seed", "3"], "not both"),
    (["--sweep", "tau"], "must look like NAME=V1,V2"),
    (["--sweep", "tau="], "must look like NAME=V1,V2"),
    (["--sweep", "tau=0.1,x"], "is not a number"),
    (["--sweep", "tau=0.1,0.1"], "duplicate agents"),
    (["--sweep", "tau=0.1", "--sweep", "tau=0.2"], "twice"),
    (["--sweep", "width=0.1"], "has no parameter 'width'"),
    (["--sweep", "tau=0.1,-1"], "outside the allowed range"),
    (["--sweep", "eps=0.2,1.5"], "outside the allowed range"),
    (["--sweep", "tau=0.1", "--shape-param", "tau=0.2"], "both set tau"),
    (["--sweep", "eps=0.1", "--loss", "clip"], "has no shape"),
    (["--seeds", "0-1", "--compile"], "not supported for populations"),
    (["--seeds", "0-1", "--collector", "torchrl"], "--collector fast only"),
])
def test_bad_population_input_gives_one_line_exit_2_and_writes_nothing(tmp_path, capsys, arguments, message):
    out = tmp_path / "population"
    code = main([*BASE, "--shape", "sigmoid", *arguments, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("klip: error: ") and message in lines[0], lines[0]
    assert not out.exists()


def test_resume_with_other_seeds_or_values_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "population"
    flags = [*BASE, "--eval-episodes", "0", "--shape", "sigmoid", "--out", str(out)]
    assert main([*flags, "--seeds", "0-1", "--sweep", "tau=0.1,0.2"]) == 0
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    for extra, message in [(["--seeds", "0-2"], "seeds [0, 1]"),
                           (["--seeds", "0-1", "--sweep", "tau=0.1,0.3"], "sweep"),
                           (["--seeds", "0-1", "--sweep", "tau=0.1,0.2", "--lr", "1e-3"], "lr")]:
        assert main([*flags, "--resume", *extra]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], lines
    after = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert after == before


def test_parsers():
    assert parse_seeds("0-7") == list(range(8))
    assert parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds(" 0-2 , 9") == [0, 1, 2, 9]
    assert parse_sweep(["tau=0.01,0.03", "eps=0.1"]) == {"tau": [0.01, 0.03], "eps": [0.1]}


def test_an_agent_learns_the_same_alone_or_in_a_population():
    """Agent 7 trained beside agent 4 ends where agent 7 trained alone ends: its own env,
    random stream, shuffles and update, whoever else is in the population. Not bitwise: a
    reduction over `[1, samples]` and one over a row of `[2, samples]` may sum in another order."""
    import pytorch_lightning as pl

    def trained(seeds: list[int]) -> PopulationModule:
        module = PopulationModule([TrainConfig(**TINY, steps=2 * 256, seed=seed).to_dict() for seed in seeds])
        trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module)
        return module

    alone, together = trained([7]), trained([4, 7])
    for (name, a), b in zip(alone.networks.named_parameters(), together.networks.parameters(), strict=True):
        torch.testing.assert_close(a[0], b[1], rtol=1e-4, atol=1e-6, msg=name)
    assert len(alone.return_history[0]) == len(together.return_history[1])
    for (frames_a, return_a), (frames_b, return_b) in zip(alone.return_history[0],
                                                          together.return_history[1], strict=True):
        assert frames_a == frames_b and return_a == pytest.approx(return_b, rel=1e-4)


# -- one shared vector env ------------------------------------------------------------------
@pytest.mark.parametrize(("num_envs", "backend"), [(1, "gymnasium"), (2, "gymnasium"), (2, "envpool")])
def test_the_shared_env_gives_each_agent_bitwise_its_own_stacks_transitions(num_envs, backend):
    """On EnvPool the shared env is one pool seeded with the first agent's seed, so agent i's
    sub-envs start from its own run's seeds when the seeds step by num_envs (0, 2, 4 here)."""
    from klip.envs import get_normalization_state

    configs = [TrainConfig(task="Hopper-v4", rollout_steps=256, num_envs=num_envs, seed=seed,
                           env_backend=backend).to_dict()
               for seed in ((0, 2, 4) if backend == "envpool" else (0, 5, 9))]
    shared, separate = PopulationModule(configs, shared_env=True), PopulationModule(configs, shared_env=False)
    episodes = 0
    for _ in range(3):
        ours = shared.rollouts.collect(shared.generators)
        theirs = separate.rollouts.collect(separate.generators)
        for agent in range(3):
            for key in theirs[agent].keys(include_nested=True, leaves_only=True):
                assert torch.equal(ours[agent][key], theirs[agent][key]), (agent, key)
            ours_done = shared.rollouts.drain_episodes(agent)
            assert ours_done == separate.rollouts.drain_episodes(agent)
            episodes += len(ours_done)
    assert episodes > 3  # Hopper's falls: resets and their statistics updates are covered
    for agent in range(3):
        ours_state = get_normalization_state(shared.rollouts.agent_env(agent))
        theirs_state = get_normalization_state(separate.rollouts.agent_env(agent))
        assert ours_state.keys() == theirs_state.keys()
        for key, value in theirs_state.items():
            assert torch.equal(torch.as_tensor(ours_state[key]), torch.as_tensor(value)), (agent, key)


def test_stacked_networks_equal_vmap_and_each_agents_own_module():
    from klip.algos.population import StackedMLP

    actors, critics = agent_networks([0, 1, 2])
    stacked = StackedActorCritic(actors, critics)
    inputs = torch.randn(3, 16, OBS_DIM)
    batched, vmapped = stacked.value(inputs), stacked.value.forward_vmap(inputs)
    torch.testing.assert_close(batched, vmapped, rtol=1e-6, atol=1e-7)
    for agent, critic in enumerate(critics):
        torch.testing.assert_close(batched[agent], critic.net(inputs[agent]), rtol=1e-6, atol=1e-7)
    # A module that is not Linear + activations goes through vmap, with the same values.
    modules = [torch.nn.Sequential(torch.nn.Linear(OBS_DIM, 4), torch.nn.LayerNorm(4)) for _ in range(2)]
    generic = StackedMLP(modules)
    assert generic._layers is None
    for agent, module in enumerate(modules):
        torch.testing.assert_close(generic(inputs[:2])[agent], module(inputs[agent]), rtol=1e-6, atol=1e-6)
    # Checkpoints hold each parameter once.
    module = PopulationModule([TrainConfig(**TINY, steps=256, seed=seed).to_dict() for seed in (0, 1)])
    assert not [key for key in module.state_dict() if key.startswith("loss_module.networks")]


def test_adaptive_beta_of_each_agent_follows_its_own_final_kl(tmp_path):
    """PPO's rule per agent: beta moves with the agent's updated-policy KL over its rollout."""
    out = tmp_path / "population"
    assert main(["train", "--task", "Pendulum-v1", "--loss", "kl_adaptive", "--kl-target", "0.005",
                 "--seeds", "0-1", "--steps", str(4 * 256), "--rollout-steps", "256", "--epochs", "2",
                 "--eval-episodes", "0", "--no-progress", "--out", str(out)]) == 0
    moved = 0
    for agent in ("s0", "s1"):
        rows = metric_rows(out / agent / "metrics.csv")
        for row, following in itertools.pairwise(rows):
            beta, kl = float(row["train/beta"]), float(row["train/kl_final"])
            assert kl > float(row["train/kl"])  # further than the update's average
            expected = beta * 2 if kl > 0.0075 else beta / 2 if kl < 0.005 / 1.5 else beta
            assert float(following["train/beta"]) == pytest.approx(expected, rel=1e-6)
            moved += expected != beta
    assert moved >= 1


def test_population_rollout_kl_is_the_single_agents():
    configs = [TrainConfig(task="Pendulum-v1", loss="kl_adaptive", seed=seed, rollout_steps=256)
               for seed in (0, 1)]
    module = PopulationModule([c.to_dict() for c in configs])
    data = module.advantages(module.rollouts.collect(module.generators))
    with torch.no_grad():  # move the policy away from the rollout policy
        for parameter in module.networks.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    population_kl = module.loss_module.rollout_kl(data)
    for agent in range(len(configs)):
        actor, critic = module.agent_modules(agent)
        batch = TensorDict({key: data[key][agent] for key in ("observation", "loc", "scale")},
                           batch_size=[256])
        expected = ScalarKLPPOLoss(actor, critic, adaptive=True).rollout_kl(batch)
        assert expected > 1e-4
        torch.testing.assert_close(population_kl[agent], expected, rtol=1e-5, atol=0)
