"""The training pipeline: exactness against ClipPPOLoss, resume, determinism, the CLI."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import single_run_state

from klip.algos.config import TrainConfig
from klip.algos.train import train
from klip.cli import main

TINY = dict(task="Hopper-v4", rollout_steps=256, minibatch_size=64, epochs=2, eval_episodes=0,
            checkpoint_every=1)


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "steps": 3 * 256, **overrides})


def final_parameters(out: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return single_run_state(checkpoint)


def metric_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    # Timings differ from run to run; everything else must not.
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def assert_same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    actor_critic = [key for key in a if key.startswith(("actor.", "critic."))]
    assert actor_critic
    for key in actor_critic:
        assert torch.equal(a[key], b[key]), key


def test_clip_and_step_training_end_with_bitwise_identical_parameters(tmp_path):
    train(tiny(loss="clip"), tmp_path / "clip", progress=False)
    train(tiny(loss="klip", shape="step"), tmp_path / "step", progress=False)
    clip, step = final_parameters(tmp_path / "clip"), final_parameters(tmp_path / "step")
    assert_same_parameters(clip, step)
    # Every column both log is identical, except the surrogate's value: the two surrogates
    # have equal gradients, not equal values (on killed samples PPO-Clip's is clip(w)*A).
    clip_rows, step_rows = metric_rows(tmp_path / "clip"), metric_rows(tmp_path / "step")
    shared = (set(clip_rows[0]) & set(step_rows[0])) - {"train/loss_objective"}
    assert {"train/loss_critic", "train/kl_approx", "train/grad_norm"} <= shared
    for clip_row, step_row in zip(clip_rows, step_rows, strict=True):
        assert {k: clip_row[k] for k in shared} == {k: step_row[k] for k in shared}
    # And training did move the parameters (the test would be vacuous otherwise).
    fresh = TrainConfig(**TINY, steps=256)
    from klip.algos.ppo import PPOModule

    initial = PPOModule([fresh.to_dict()]).actor.state_dict()
    assert not torch.equal(initial["module.0.mean.0.weight"],
                           step["actor.module.0.mean.0.weight"])


@pytest.mark.parametrize("collector", ["fast", "torchrl"])
def test_resumed_run_ends_like_the_uninterrupted_run(tmp_path, collector):
    config = tiny(steps=4 * 256, shape="sigmoid", shape_params={"tau": 0.05}, collector=collector)
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after_iterations=2)
    assert len(metric_rows(tmp_path / "split")) == 2
    train(config, tmp_path / "split", resume=True, progress=False)
    assert_same_parameters(final_parameters(tmp_path / "whole"), final_parameters(tmp_path / "split"))
    assert metric_rows(tmp_path / "whole") == metric_rows(tmp_path / "split")


def test_same_seed_gives_identical_metrics_and_other_seed_differs(tmp_path):
    config = tiny(steps=2 * 256)
    train(config, tmp_path / "a", progress=False)
    train(config, tmp_path / "b", progress=False)
    train(tiny(steps=2 * 256, seed=1), tmp_path / "c", progress=False)
    assert metric_rows(tmp_path / "a") == metric_rows(tmp_path / "b")
    assert metric_rows(tmp_path / "a") != metric_rows(tmp_path / "c")


@pytest.mark.parametrize("loss", ["kl_fixed", "kl_adaptive"])
def test_scalar_beta_baselines_train(tmp_path, loss):
    train(tiny(loss=loss, steps=2 * 256), tmp_path / loss, progress=False)
    rows = metric_rows(tmp_path / loss)
    assert len(rows) == 2
    assert float(rows[-1]["train/kl"]) >= 0
    betas = [float(row["train/beta"]) for row in rows]
    if loss == "kl_fixed":
        assert betas == [1.0, 1.0]
        assert "train/kl_final" not in rows[0]


@pytest.mark.parametrize("measure", ["final", "update_mean"])
def test_adaptive_beta_moves_with_the_chosen_kl_of_each_iteration(tmp_path, measure):
    """PPO's rule by default: beta follows the updated policy's KL over the rollout."""
    out = tmp_path / measure
    train(tiny(loss="kl_adaptive", steps=6 * 256, kl_target=0.005, kl_measure=measure), out,
          progress=False)
    rows = metric_rows(out)
    column = {"final": "train/kl_final", "update_mean": "train/kl"}[measure]
    assert ("train/kl_final" in rows[0]) == (measure == "final")
    moved = 0
    for row, following in itertools.pairwise(rows):
        beta, kl = float(row["train/beta"]), float(row[column])
        expected = beta * 2 if kl > 0.005 * 1.5 else beta / 2 if kl < 0.005 / 1.5 else beta
        assert float(following["train/beta"]) == pytest.approx(expected, rel=1e-6)
        moved += expected != beta
    assert moved >= 1
    if measure == "final":
        # The updated policy is further from the rollout policy than the update's average.
        assert float(rows[0]["train/kl_final"]) > float(rows[0]["train/kl"])


def test_train_command_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--task", "Pendulum-v1", "--shape", "linear_ramp", "--shape-param",
                 "delta=0.1", "--steps", "512", "--rollout-steps", "256", "--epochs", "2",
                 "--eval-episodes", "2", "--no-progress", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "learning curve" in printed and str(out) in printed
    for name in ("config.yaml", "metrics.csv", "eval.json", "learning_curve.png", "summary.json",
                 "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["episodes"] == 2 and len(evaluation["returns"]) == 2
    header = (out / "metrics.csv").read_text().splitlines()[0]
    for column in ("train/fraction_kill", "train/gate_mean", "train/kl_k3", "time/steps_per_s",
                   "train/loss_objective", "frames"):
        assert column in header
    # The run records every parameter of the shape that ran, defaults included.
    assert yaml.safe_load((out / "config.yaml").read_text())["shape_params"] == {"eps": 0.2, "delta": 0.1}


def test_config_file_with_command_line_override(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("task: Pendulum-v1\nsteps: 512\nrollout_steps: 256\nepochs: 1\n"
                           "eval_episodes: 0\nshape: sigmoid\nshape_params: {tau: 0.1}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--epochs", "2", "--no-progress",
                 "--out", str(out)]) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["epochs"] == 2 and resolved["shape"] == "sigmoid"
    assert resolved["shape_params"] == {"eps": 0.2, "tau": 0.1}


def test_shape_file_and_plugin_train(tmp_path, clean_registry):
    plugin = tmp_path / "gates.py"
    plugin.write_text(
        "import torch\nfrom klip.shapes import CoefficientShape, register_shape\n"
        "@register_shape('half')\nclass Half(CoefficientShape):\n"
        "    def gate(self, ratio, advantage):\n        return torch.full_like(ratio, 0.5)\n"
    )
    shape_file = tmp_path / "sig.json"
    shape_file.write_text('{"name": "sigmoid", "params": {"eps": 0.1, "tau": 0.02}}')
    common = ["--task", "Pendulum-v1", "--steps", "256", "--rollout-steps", "256", "--epochs", "1",
              "--eval-episodes", "0", "--no-progress"]
    assert main(["train", *common, "--shape-file", str(shape_file), "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *common, "--shape-plugin", str(plugin), "--shape", "half",
                 "--out", str(tmp_path / "b")]) == 0
    rows = metric_rows(tmp_path / "b")
    assert float(rows[0]["train/gate_mean"]) == 0.5


def test_shapes_commands(tmp_path, capsys):
    assert main(["shapes", "list"]) == 0
    listed = capsys.readouterr().out
    for name in ("step", "sigmoid", "linear_ramp", "none", "learned"):
        assert name in listed
    # One column of names, as wide as the longest (learned_increments_epoch), then the summaries.
    starts = {len(line) - len(line.split(maxsplit=1)[1]) for line in listed.splitlines()}
    assert starts == {len("learned_increments_epoch") + 2}
    assert main(["shapes", "show", "sigmoid"]) == 0
    assert "tau" in capsys.readouterr().out
    png = tmp_path / "gates.png"
    assert main(["shapes", "plot", "step", "sigmoid:tau=0.05", "linear_ramp:delta=0.1",
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000


# The bad-input catalogue of `klip train` is tests/test_train_bad_inputs.py.


def test_bad_output_directories_and_files(tmp_path, capsys):
    base = ["train", "--task", "Pendulum-v1", "--steps", "256", "--rollout-steps", "256",
            "--epochs", "1", "--eval-episodes", "0", "--no-progress"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*base, "--out", str(blocker / "run")]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main([*base, "--out", str(run)]) == 0
    capsys.readouterr()
    metrics_before = (run / "metrics.csv").read_bytes()
    assert main([*base, "--seed", "3", "--out", str(run)]) == 2
    assert "already holds a different run (differs in: seed)" in capsys.readouterr().err
    assert main([*base, "--out", str(run)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    assert main([*base, "--steps", "512", "--out", str(run), "--resume"]) == 2
    error = capsys.readouterr().err
    assert "checkpoint" in error and "unreadable" in error
    assert (run / "metrics.csv").read_bytes() == metrics_before
    bad_shape = tmp_path / "bad.json"
    bad_shape.write_text("{oops")
    assert main([*base, "--shape-file", str(bad_shape), "--out", str(tmp_path / "other")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_debug_flag_shows_the_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "klip", "train", "--task", "Nope-v0", "--debug"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "klip: error: unknown task" in result.stderr


def test_killed_process_resumes_from_its_last_checkpoint(tmp_path):
    import os
    import signal
    import time

    flags = ["--task", "Pendulum-v1", "--steps", str(256 * 40), "--rollout-steps", "256",
             "--epochs", "2", "--checkpoint-every", "3", "--eval-episodes", "0", "--no-progress"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "klip", "train", *flags, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "last.ckpt"

    def rows_past_a_checkpoint() -> bool:
        """A checkpoint exists and metrics.csv (one row per iteration, checkpoints every 3)
        has rows after the latest one, which the resumed run must drop and redo."""
        try:
            with open(killed / "metrics.csv") as file:
                rows = sum(1 for _ in file) - 1
        except FileNotFoundError:
            return False
        return checkpoint.exists() and rows > 3 and rows % 3 != 0

    deadline = time.monotonic() + 120
    while not rows_past_a_checkpoint() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the files, not waiting a fixed time
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    assert main(["train", "--out", str(killed), "--resume", "--no-progress"]) == 0  # options from the run
    assert main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0
    assert_same_parameters(final_parameters(killed), final_parameters(tmp_path / "whole"))
    assert metric_rows(killed) == metric_rows(tmp_path / "whole")


def test_every_option_has_help_and_is_settable_from_the_command_line():
    import dataclasses

    from klip.cli import build_parser

    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for field in dataclasses.fields(TrainConfig):
        assert field.metadata.get("help"), field.name
        if field.name != "shape_params":
            assert "--" + field.name.replace("_", "-") in train_help, field.name


def test_resume_without_a_checkpoint_is_refused_and_deletes_nothing(tmp_path):
    import shutil

    from klip.algos.rundir import RunError

    config = tiny(task="Pendulum-v1", steps=2 * 256, checkpoint_every=10)
    train(config, tmp_path / "run", progress=False)
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # as if it died before its first checkpoint
    before = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()}
    with pytest.raises(RunError, match=r"nothing to resume in .*: it has no checkpoint"):
        train(config, tmp_path / "run", resume=True, progress=False)
    after = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()}
    assert after == before


def test_runs_recorded_before_kl_direction_resume_on_the_kl_they_penalised(tmp_path, capsys):
    """Every scalar-KL run before the option penalised KL(old || new); resuming keeps it."""
    out = tmp_path / "run"
    flags = ["--task", "Pendulum-v1", "--loss", "kl_fixed", "--rollout-steps", "256", "--epochs", "1",
             "--eval-episodes", "0", "--checkpoint-every", "1", "--no-anneal-lr", "--no-progress",
             "--out", str(out)]
    assert main(["train", *flags, "--steps", "256"]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["kl_direction"] == "old_new"
    del recorded["kl_direction"]  # as klip wrote it before the option
    (out / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    capsys.readouterr()
    assert main(["train", *flags, "--steps", "512", "--resume", "--kl-direction", "new_old"]) == 2
    assert "differs in: kl_direction" in capsys.readouterr().err
    assert main(["train", *flags, "--steps", "512", "--resume"]) == 0
    assert len(metric_rows(out)) == 2


@pytest.mark.parametrize("loss", ["kl_adaptive", "kl_fixed"])
def test_runs_recorded_before_kl_measure_resume_with_the_rule_they_ran(tmp_path, capsys, loss):
    """Older kl_adaptive runs adapted beta to the update's mean KL; they continue only on it."""
    out = tmp_path / "run"
    flags = ["--task", "Pendulum-v1", "--loss", loss, "--rollout-steps", "256", "--epochs", "1",
             "--eval-episodes", "0", "--checkpoint-every", "1", "--no-anneal-lr", "--no-progress",
             "--out", str(out)]
    assert main(["train", *flags, "--steps", "256"]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["kl_measure"] == ("final" if loss == "kl_adaptive" else None)
    del recorded["kl_measure"]  # as klip wrote it before the option
    (out / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    capsys.readouterr()
    if loss == "kl_adaptive":
        assert main(["train", *flags, "--steps", "512", "--resume"]) == 2
        assert "differs in: kl_measure" in capsys.readouterr().err
        flags += ["--kl-measure", "update_mean"]
    assert main(["train", *flags, "--steps", "512", "--resume"]) == 0
    rows = metric_rows(out)
    assert len(rows) == 2 and not rows[1].get("train/kl_final")  # the resumed part ran the old rule
