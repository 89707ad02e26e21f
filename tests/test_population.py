"""One engine: every agent of a population is bitwise its own single run, file by file.

A single run is a population of one (`klip.algos.train.train`), so each test trains the
population once and each of its agents alone, and compares every file the two write.
"""

from __future__ import annotations

import csv
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
from helpers import assert_same_run, metric_rows

from klip.algos.agents import PopulationError, PopulationSpec, train_population
from klip.algos.config import TrainConfig
from klip.algos.divergence import AgentsDiverged
from klip.algos.run_lock import RunLock, RunLocked
from klip.algos.rundir import RunError
from klip.algos.train import train, train_agents
from klip.cli import main
from klip.train_cli import parse_sweep

TINY = dict(task="Pendulum-v1", rollout_steps=256, minibatch_size=64, epochs=2, eval_episodes=1,
            eval_every=2, checkpoint_every=1)
PLUGIN = '''
import torch
from klip.shapes import CoefficientShape, Param, register_shape

@register_shape("soft_knee_test")
class SoftKnee(CoefficientShape):
    """A user's gate: a soft knee past the band."""
    params = {"eps": Param(0.2, 0.0, 1.0), "width": Param(0.1, 0.0, 1.0, low_inclusive=False)}

    def gate(self, ratio, advantage):
        past = torch.where(advantage >= 0, ratio - (1 + self.eps), (1 - self.eps) - ratio)
        return torch.sigmoid(past / self.width)
'''


CASES = {
    "sigmoid seeds and a tau sweep": (dict(shape="sigmoid"), [0, 1, 2], {"tau": [0.02, 0.2]}),
    "step": (dict(shape="step"), [0, 3], {}),
    "loss clip (TorchRL's ClipPPOLoss)": (dict(loss="clip"), [0, 3], {}),
    "kl_adaptive": (dict(loss="kl_adaptive"), [1, 2], {}),
    "kl_fixed, reverse KL": (dict(loss="kl_fixed", kl_direction="new_old"), [1, 2], {}),
    "two envs per agent": (dict(shape="linear_ramp", num_envs=2), [0, 5], {"delta": [0.05, 0.5]}),
    "a user plug-in shape": (dict(shape="soft_knee_test"), [0, 1], {"width": [0.05, 0.3]}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_every_agent_is_bitwise_its_own_single_run(tmp_path, case, clean_registry):
    options, seeds, sweep = CASES[case]
    if options.get("shape") == "soft_knee_test":
        plugin = tmp_path / "my_gates.py"
        plugin.write_text(PLUGIN)
        options = {**options, "shape_plugin": str(plugin)}
    base = TrainConfig(**TINY, steps=4 * 256, **options)
    spec = PopulationSpec(base, seeds, sweep)
    results = train_population(spec, tmp_path / "population", progress=False)
    assert len(results) == len(seeds) * max(1, len(next(iter(sweep.values()), [0])))
    # Two agents of the population against their single runs (the first and the last).
    for result in (results[0], results[-1]):
        assert result.config is not None
        single = train(result.config, tmp_path / f"single-{result.name}", progress=False)
        assert single.final_return == result.final_return
        assert_same_run(result.out, single.out)
        assert (result.out / "evaluations.csv").is_file() and (result.out / "eval.json").is_file()


def test_a_population_of_one_is_the_single_run_directory(tmp_path):
    """Same files and summary keys for every N: a single run is the engine's population of one."""
    config = TrainConfig(**TINY, steps=2 * 256, shape="sigmoid")
    (single,) = train_agents([config], tmp_path / "single", progress=False)
    (named,) = train_agents([config], tmp_path / "population", names=["s0"], progress=False)
    assert {p.name for p in single.out.iterdir()} - {"checkpoints", ".klip.lock"} == {
        p.name for p in named.out.iterdir()}
    assert single.summary.keys() == named.summary.keys()
    assert (tmp_path / "population" / "population_summary.csv").is_file()


def final_checkpoint(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_population(a: Path, b: Path, agents: list[str]) -> None:
    state_a, state_b = final_checkpoint(a), final_checkpoint(b)
    assert set(state_a) == set(state_b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for agent in agents:
        assert metric_rows(a / agent / "metrics.csv") == metric_rows(b / agent / "metrics.csv")
        assert (a / agent / "episodes.csv").read_text() == (b / agent / "episodes.csv").read_text()


@pytest.mark.slow
def test_resumed_population_ends_bitwise_like_the_uninterrupted_one(tmp_path):
    spec = PopulationSpec(TrainConfig(**{**TINY, "eval_every": 0}, steps=5 * 256, shape="sigmoid"),
                          [0, 1], {"tau": [0.02, 0.2]})
    train_population(spec, tmp_path / "split", progress=False, stop_after_iterations=3)
    summary = json.loads((tmp_path / "split" / "s0-tau0.02" / "summary.json").read_text())
    assert summary["frames"] == 3 * 256
    train_population(spec, tmp_path / "split", resume=True, progress=False)
    train_population(spec, tmp_path / "whole", progress=False)
    assert_same_population(tmp_path / "split", tmp_path / "whole",
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


def test_a_second_writer_on_a_populations_out_is_refused(tmp_path):
    spec = PopulationSpec(TrainConfig(**TINY, steps=256, shape="sigmoid"), [0, 1], {})
    out = tmp_path / "population"
    out.mkdir()
    with RunLock(out), pytest.raises(RunLocked):
        train_population(spec, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".klip.lock"]


NAN_PLUGIN = '''
import torch
from klip.shapes import CoefficientShape, Param, register_shape

@register_shape("nan_after")
class NanAfter(CoefficientShape):
    """PPO-Clip's gate, until its `calls`-th call (with `limit` > 0), then NaN."""
    params = {"limit": Param(0.0, 0.0, 1000.0)}

    def __init__(self, **values):
        super().__init__(**values)
        self.calls = 0

    def gate(self, ratio, advantage):
        self.calls += 1
        if self.limit and self.calls > self.limit:
            return torch.full_like(ratio, float("nan"))
        past = torch.where(advantage >= 0, ratio > 1.2, ratio < 0.8)
        return past.to(ratio.dtype)
'''


@pytest.mark.slow
def test_a_diverging_agent_is_stopped_and_marked_failed_while_the_others_train_on(tmp_path, capsys,
                                                                                   clean_registry):
    plugin = tmp_path / "nan.py"
    plugin.write_text(NAN_PLUGIN)
    out = tmp_path / "population"
    flags = ["train", "--task", "Pendulum-v1", "--steps", str(4 * 256), "--rollout-steps", "256",
             "--epochs", "2", "--eval-episodes", "1", "--no-progress", "--shape-plugin", str(plugin),
             "--shape", "nan_after"]
    # 8 minibatch updates per iteration: limit 12 goes NaN in iteration 2.
    code = main([*flags, "--seeds", "0-1", "--sweep", "limit=0,12", "--out", str(out)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 3
    assert len(lines) == 1 and "2 of 4 agents diverged" in lines[0], lines
    failed = json.loads((out / "s0-limit12" / "summary.json").read_text())
    assert failed["status"] == "diverged"
    assert "iteration 2" in failed["error"] and "loss_objective" in failed["error"], failed["error"]
    # Its run directory says what its single run says: it stopped in iteration 2, whatever the
    # agents beside it went on to do.
    # (Agent 0 only: `nan_after` counts its calls, and the agents' identical shapes are called
    # once for both until their counts differ, as the conformance suite warns.)
    alone_out = tmp_path / "alone-nan"
    assert main([*flags, "--seed", "0", "--shape-param", "limit=12", "--out", str(alone_out)]) == 3
    shared = ("wall_seconds", "population_size", "peak_rss_mib")
    alone = json.loads((alone_out / "summary.json").read_text())
    assert ({k: v for k, v in failed.items() if k not in shared}
            == {k: v for k, v in alone.items() if k not in shared})
    assert failed["frames"] == 2 * 256
    kept = torch.load(out / "s0-limit12" / "parameters.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(value).all() for value in kept.values())
    assert len(metric_rows(out / "s0-limit12" / "metrics.csv")) == 1  # its last good iteration
    # The others trained to the end, bitwise as without the failing agents beside them.
    assert main([*flags, "--seed", "1", "--out", str(tmp_path / "alone")]) == 0
    assert json.loads((out / "s1-limit0" / "summary.json").read_text())["status"] == "finished"
    assert_same_run(out / "s1-limit0", tmp_path / "alone")
    with open(out / "population_summary.csv", newline="") as file:
        statuses = {row["agent"]: row["status"] for row in csv.DictReader(file)}
    assert statuses == {"s0-limit0": "finished", "s1-limit0": "finished", "s0-limit12": "diverged",
                        "s1-limit12": "diverged"}


def test_agents_diverged_carries_every_outcome(tmp_path, clean_registry):
    plugin = tmp_path / "nan.py"
    plugin.write_text(NAN_PLUGIN)
    base = TrainConfig(**{**TINY, "eval_episodes": 0}, steps=2 * 256, shape="nan_after",
                       shape_plugin=str(plugin))
    with pytest.raises(AgentsDiverged) as raised:
        train_population(PopulationSpec(base, [0], {"limit": [0, 3]}), tmp_path / "p", progress=False)
    assert [result.status for result in raised.value.results] == ["finished", "diverged"]


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
                     "learning_curve.png", "parameters.pt"):
            assert (directory / name).is_file(), (agent, name)
        config = yaml.safe_load((directory / "config.yaml").read_text())
        assert config["seed"] == int(agent[1]) and config["shape"] == "linear_ramp"
        # Recorded as a single run records it: resolved, every shape parameter named.
        assert config["shape_params"] == {"eps": 0.2, "delta": float(agent.split("delta")[1])}
        assert len(metric_rows(directory / "metrics.csv")) == 2
        # An agent's parameters are a slice of the population's stacked ones; its file holds
        # that slice alone, not the whole population's storage.
        state = torch.load(directory / "parameters.pt", weights_only=True)["state_dict"]
        for name, value in state.items():
            assert value.untyped_storage().nbytes() == value.numel() * value.element_size(), name
    with open(out / "population_summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["agent"] for row in rows] == agents
    summary = json.loads((out / "population_summary.json").read_text())
    assert set(summary["groups"]) == {"delta=0.05", "delta=0.5"}
    assert (out / "population_curves.png").stat().st_size > 0
    assert rows[0]["final_return"] != rows[1]["final_return"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["--seeds", ""], "--seeds is empty"),
    (["--seeds", "0-"], "is not a seed or a range"),
    (["--seeds", "a,b"], "is not a seed or a range"),
    (["--seeds", "3-1"], "is empty"),
    (["--seeds", "5"], "--seeds 5 is ambiguous"),
    (["--seeds", "0-2,1"], "more than once"),
    (["--seeds", "0,0"], "more than once"),
    (["--seeds", "0,4294967296"], "32-bit"),
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
    (["--seeds", "0-1", "--compile"], "--compile trains one agent at a time"),
    (["--seeds", "0-1", "--collector", "torchrl"], "populations collect with --collector fast"),
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


def test_refused_resumes_change_nothing(tmp_path, capsys):
    out = tmp_path / "population"
    flags = [*BASE, "--eval-episodes", "0", "--shape", "sigmoid", "--no-anneal-lr", "--out", str(out)]
    assert main([*flags, "--seeds", "0-1", "--sweep", "tau=0.1,0.2"]) == 0
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    for extra, message in [(["--seeds", "0-2"], "population of other agents"),
                           (["--seeds", "0-1", "--sweep", "tau=0.1,0.3"], "population of other agents"),
                           (["--seeds", "0-1", "--sweep", "tau=0.1,0.2", "--lr", "1e-3"], "lr"),
                           (["--seeds", "0-1", "--sweep", "tau=0.1,0.2", "--steps", "256"],
                            "below the 512 steps")]:
        assert main([*flags, "--resume", *extra]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], lines
    after = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert after == before
    # Longer is allowed: the population continues with its stored seeds and sweep.
    assert main([*flags, "--resume", "--steps", "768"]) == 0
    assert len(metric_rows(out / "s0-tau0.1" / "metrics.csv")) == 3


def test_a_population_and_a_single_run_do_not_share_a_directory(tmp_path):
    config = TrainConfig(**TINY, steps=256, shape="sigmoid")
    train(config, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="holds a single run"):
        train_population(PopulationSpec(config, [0, 1], {}), tmp_path / "run", progress=False)


def test_parsers():
    assert parse_sweep(["tau=0.01,0.03", "eps=0.1"]) == {"tau": [0.01, 0.03], "eps": [0.1]}
    with pytest.raises(PopulationError, match="twice"):
        parse_sweep(["tau=0.1", "tau=0.2"])


@pytest.mark.slow
def test_envpool_agents_match_their_own_pools_runs_when_seeds_step_by_num_envs(tmp_path):
    """One pool for the population, seeded with the first agent's seed: agent i's sub-envs get
    seeds seed_0 + i * num_envs + j, its own run's when the seeds step by num_envs (0, 2). The
    first agent is bitwise its single run; EnvPool steps a sub-env of a larger pool to within
    float32 rounding of its rewards (not bitwise), so the others match to that rounding."""
    base = TrainConfig(**{**TINY, "eval_episodes": 0, "eval_every": 0, "task": "Hopper-v4"}, steps=2 * 256,
                       num_envs=2, env_backend="envpool", shape="sigmoid")
    results = train_population(PopulationSpec(base, [0, 2], {}), tmp_path / "population", progress=False)
    for index, result in enumerate(results):
        assert result.config is not None
        single = train(result.config, tmp_path / f"single-{result.name}", progress=False)
        ours, theirs = metric_rows(result.out / "metrics.csv"), metric_rows(single.out / "metrics.csv")
        if index == 0:
            assert ours == theirs
            continue
        for row_a, row_b in zip(ours, theirs, strict=True):
            assert row_a.keys() == row_b.keys()
            for key in row_a:
                expected = pytest.approx(float(row_b[key] or 0), rel=1e-5, abs=1e-7)
                assert float(row_a[key] or 0) == expected, key


# -- the shared update, operation by operation ------------------------------------------------
# An agent's tensors on Hopper: log-std, policy MLP, value MLP.
SHAPES = [(3,), (64, 11), (64,), (64, 64), (64,), (3, 64), (3,), (64, 11), (64,), (64, 64), (64,), (1, 64),
          (1,)]


def test_one_adam_on_the_flat_buffer_is_bitwise_foreach_adam_on_each_agents_tensors():
    generator = torch.Generator().manual_seed(0)
    agents = [[torch.randn(shape, generator=generator) for shape in SHAPES] for _ in range(8)]
    separate = [[tensor.clone().requires_grad_() for tensor in agent] for agent in agents]
    reference = torch.optim.Adam([t for agent in separate for t in agent], lr=3e-4, eps=1e-5, foreach=True)
    flat = torch.cat([tensor.reshape(-1) for agent in agents for tensor in agent]).requires_grad_()
    engine = torch.optim.Adam([flat], lr=3e-4, eps=1e-5, foreach=True)
    for step in range(40):
        grads = [[torch.randn(shape, generator=generator) * 10.0 ** (step % 9 - 6) for shape in SHAPES]
                 for _ in range(8)]
        for agent, agent_grads in zip(separate, grads, strict=True):
            for tensor, grad in zip(agent, agent_grads, strict=True):
                tensor.grad = grad.clone()
        flat.grad = torch.cat([grad.reshape(-1) for agent in grads for grad in agent])
        reference.step()
        engine.step()
        for optimizer in (reference, engine):
            optimizer.param_groups[0]["lr"] = 3e-4 * (1 - step / 50)
    trained = torch.cat([tensor.detach().reshape(-1) for agent in separate for tensor in agent])
    assert torch.equal(trained, flat.detach())
