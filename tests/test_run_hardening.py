"""Unattended runs: one writer per directory, honest resumes, clean failures (issue 10).

Every run here is tiny (Pendulum, 256-step rollouts); the bad-input catalogue lives in
test_train_bad_inputs.py.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import single_run_state

from klip.algos.columns import METRICS_COLUMNS
from klip.algos.config import TrainConfig
from klip.algos.run_lock import LOCK_FILE, RunLock, RunLocked
from klip.algos.train import train
from klip.cli import main

ROLLOUT = 256
FLAGS = ["--task", "Pendulum-v1", "--rollout-steps", str(ROLLOUT), "--epochs", "1",
         "--eval-episodes", "0", "--no-progress"]


def tiny(**overrides) -> TrainConfig:
    options = dict(task="Pendulum-v1", rollout_steps=ROLLOUT, epochs=1, eval_episodes=0,
                   checkpoint_every=1, steps=2 * ROLLOUT)
    return TrainConfig(**{**options, **overrides})


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def without_timings(table: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in table]


def parameters(out: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {k: v for k, v in single_run_state(state).items() if k.startswith(("actor.", "critic."))}


def assert_same_parameters(a: Path, b: Path) -> None:
    first, second = parameters(a), parameters(b)
    assert first.keys() == second.keys() and first
    for key in first:
        assert torch.equal(first[key], second[key]), key


def klip(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "klip", *arguments], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- 1. one writer per run directory ---------------------------------------------------------
@pytest.mark.slow
def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "klip", "train", *FLAGS, "--steps",
                              str(400 * ROLLOUT), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / "metrics.csv").is_file(), first)
        second = klip("train", *FLAGS, "--steps", str(400 * ROLLOUT), "--out", str(out), "--resume")
        assert first.poll() is None, "the first run ended before the second one started"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    lines = error_lines(second.stderr)
    assert len(lines) == 1, second.stderr
    assert f"pid {first.pid} on host {socket.gethostname()}" in lines[0]
    assert "in use by another klip run" in lines[0]


@pytest.mark.slow
def test_two_processes_started_together_on_a_new_directory_give_one_run(tmp_path):
    out = tmp_path / "fresh" / "run"
    command = [sys.executable, "-m", "klip", "train", *FLAGS, "--steps", str(12 * ROLLOUT),
               "--out", str(out)]
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = [(process.wait(timeout=300), process.stderr.read()) for process in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(stderr for code, stderr in results if code == 2)
    assert "in use by another klip run" in refused or "already holds this run" in refused, refused
    iterations = [float(row["iteration"]) for row in rows(out / "metrics.csv")]
    assert iterations == list(range(1, 13))


def test_a_directory_caught_while_another_process_records_its_run_is_refused_by_the_lock(tmp_path):
    # The moment the race above can hit: the holder has written its shape copy, not yet its
    # config.yaml. The answer is the lock's, not "holds no klip run".
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        (out / "shape.json").write_text("{}\n")
        with pytest.raises(RunLocked, match="in use by another klip run"):
            train(tiny(), out, progress=False)
        assert sorted(path.name for path in out.iterdir()) == [LOCK_FILE, "shape.json"]


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("pid 999999 on host elsewhere\n")  # its holder is gone
    train(tiny(steps=ROLLOUT), out, progress=False)
    assert (out / "summary.json").is_file()
    assert f"pid {os.getpid()} " in (out / LOCK_FILE).read_text()


# -- 5. nothing left behind by a refused or failed start ------------------------------------------
def test_a_start_that_fails_before_the_first_iteration_leaves_nothing(tmp_path, monkeypatch):
    import klip.algos.train as training

    def broken_environment(*args, **kwargs):
        raise RuntimeError("MuJoCo could not start")

    monkeypatch.setattr(training, "PPOModule", broken_environment)
    with pytest.raises(RuntimeError, match="MuJoCo could not start"):
        train(tiny(), tmp_path / "new" / "run", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="MuJoCo could not start"):
        train(tiny(), tmp_path / "empty", progress=False)
    assert list((tmp_path / "empty").iterdir()) == []


# -- 2. resume is the same run or a clear refusal ------------------------------------------------
@pytest.mark.slow
def test_a_run_from_a_shape_file_resumes_from_its_own_copy(tmp_path):
    shape_file = tmp_path / "gate.json"
    shape_file.write_text('{"name": "sigmoid", "params": {"eps": 0.1, "tau": 0.02}}')
    config = tiny(steps=3 * ROLLOUT, shape_file=str(shape_file))
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after_iterations=1)
    recorded = yaml.safe_load((tmp_path / "split" / "config.yaml").read_text())
    assert recorded["shape_file"] == "shape.json" and recorded["shape"] == "sigmoid"
    assert recorded["shape_params"] == {"eps": 0.1, "tau": 0.02} and recorded["clip_eps"] == 0.1
    shape_file.write_text('{"name": "step"}')  # editing the original changes nothing
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = klip("train", "--out", str(tmp_path / "split"), "--resume", "--no-progress", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert_same_parameters(tmp_path / "whole", tmp_path / "split")


@pytest.mark.slow
def test_a_run_from_a_plugin_resumes_from_its_own_copy(tmp_path):
    plugin = tmp_path / "gates.py"
    plugin.write_text(
        "import torch\nfrom klip.shapes import CoefficientShape, register_shape\n"
        "@register_shape('half_gate')\nclass Half(CoefficientShape):\n"
        "    def gate(self, ratio, advantage):\n        return torch.full_like(ratio, 0.5)\n"
    )
    out = tmp_path / "run"
    flags = [*FLAGS, "--steps", str(2 * ROLLOUT), "--shape-plugin", str(plugin), "--shape", "half_gate"]
    first = klip("train", *flags, "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert (out / "shape_plugin.py").read_text() == plugin.read_text()
    plugin.unlink()  # moving the original away changes nothing
    resumed = klip("train", "--out", str(out), "--resume", "--steps", str(3 * ROLLOUT), "--no-anneal-lr",
                   cwd=tmp_path)
    assert resumed.returncode == 2 and "differs in: anneal_lr" in resumed.stderr
    again = klip("train", "--out", str(out), "--resume", "--eval-episodes", "1", "--checkpoint-every",
                 "5", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # options that do not change the trajectory may change
    assert yaml.safe_load((out / "config.yaml").read_text())["eval_episodes"] == 1


def test_a_run_recorded_by_an_older_klip_resumes_exactly(tmp_path):
    config = tiny(steps=3 * ROLLOUT, loss="clip")
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "old", progress=False, stop_after_iterations=1)
    recorded = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    del recorded["eval_every"]  # as written before this format: ignored options recorded too
    recorded.update(shape="step", shape_params={}, kl_beta=1.0, kl_target=0.02)
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(recorded))
    from klip.algos.run import load_run

    assert load_run(tmp_path / "old").config.shape is None
    assert main(["train", "--out", str(tmp_path / "old"), "--resume", "--no-progress"]) == 0
    assert_same_parameters(tmp_path / "whole", tmp_path / "old")
    assert "eval_every" in yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())


def test_learning_rate_stays_continuous_when_steps_grow(tmp_path):
    base_lr = 3e-4
    config = tiny(steps=4 * ROLLOUT, lr=base_lr)
    train(config, tmp_path / "run", progress=False, stop_after_iterations=2)
    train(tiny(steps=8 * ROLLOUT, lr=base_lr), tmp_path / "run", resume=True, progress=False)
    rates = [float(row["lr"]) for row in rows(tmp_path / "run" / "metrics.csv")]
    assert len(rates) == 8
    # The lr column is the rate each iteration used: the first is the base rate.
    assert rates[0] == pytest.approx(base_lr)
    assert rates[1] == pytest.approx(base_lr * 3 / 4)
    # Iteration 3 uses what the original plan gave it, then the rate falls to 0 at iteration 8.
    assert rates[2] == pytest.approx(base_lr / 2)
    steps = [a - b for a, b in itertools.pairwise(rates[2:])]
    assert all(step == pytest.approx(base_lr / 2 / 6) for step in steps)
    assert rates[-1] > 0


def test_wall_time_adds_up_all_segments(tmp_path):
    out = tmp_path / "run"
    train(tiny(steps=4 * ROLLOUT), out, progress=False, stop_after_iterations=3)
    # The checkpoint carries the earlier segments' time; a value no segment could take here
    # tells carried time from time measured anew, whatever the machine's load.
    checkpoint_path = out / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    checkpoint["callbacks"]["SegmentClock"]["wall_seconds"] = 1000.0
    torch.save(checkpoint, checkpoint_path)
    started = time.perf_counter()
    train(tiny(steps=4 * ROLLOUT), out, resume=True, progress=False)
    second_segment_bound = time.perf_counter() - started
    total = json.loads((out / "summary.json").read_text())
    assert 1000.0 < total["wall_seconds"] <= 1000.0 + second_segment_bound
    assert total["frames"] == 4 * ROLLOUT


def test_a_run_continued_on_another_machine_lists_both(tmp_path, monkeypatch):
    import klip.algos.train as train_module

    out = tmp_path / "run"
    train(tiny(steps=3 * ROLLOUT), out, progress=False, stop_after_iterations=1)
    here = json.loads((out / "summary.json").read_text())["machine"]
    assert here["cpu_capability"] and "machines" not in json.loads((out / "summary.json").read_text())
    train(tiny(steps=3 * ROLLOUT), out, resume=True, progress=False, stop_after_iterations=2)
    assert "machines" not in json.loads((out / "summary.json").read_text())  # the same machine
    other = {**here, "cpu": "another CPU", "cpu_capability": "AVX512"}
    monkeypatch.setattr(train_module, "machine", lambda: other)
    train(tiny(steps=3 * ROLLOUT), out, resume=True, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["machine"] == other
    assert summary["machines"] == [{"from_frame": 0, "machine": here},
                                   {"from_frame": 2 * ROLLOUT, "machine": other}]


def test_a_checkpoint_without_machines_says_the_earlier_machine_is_unknown(tmp_path):
    out = tmp_path / "run"
    train(tiny(steps=2 * ROLLOUT), out, progress=False, stop_after_iterations=1)
    checkpoint_path = out / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    del checkpoint["callbacks"]["SegmentClock"]["machines"]  # as written before klip recorded them
    torch.save(checkpoint, checkpoint_path)
    train(tiny(steps=2 * ROLLOUT), out, resume=True, progress=False)
    machines = json.loads((out / "summary.json").read_text())["machines"]
    assert machines[0] == {"from_frame": 0, "machine": None} and machines[1]["from_frame"] == ROLLOUT


@pytest.mark.slow
def test_tensorboard_has_no_duplicated_steps_after_a_resume(tmp_path):
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny(steps=4 * ROLLOUT), out, progress=False, stop_after_iterations=2)
    shutil.copy(out / "checkpoints" / "last.ckpt", tmp_path / "at-2.ckpt")
    train(tiny(steps=4 * ROLLOUT), out, resume=True, progress=False, stop_after_iterations=3)
    # As if the process died after logging iteration 3 and before checkpointing it.
    shutil.copy(tmp_path / "at-2.ckpt", out / "checkpoints" / "last.ckpt")
    time.sleep(1.1)  # event files are named by the second they were opened in
    train(tiny(steps=4 * ROLLOUT), out, resume=True, progress=False)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("lr")]
    assert steps == [ROLLOUT * k for k in range(1, 5)]
    assert "hp_metric" not in events.Tags()["scalars"]


# -- 3. every recorded option is honoured -----------------------------------------------------
def test_clip_eps_sets_the_shape_eps_and_the_run_is_named_by_its_shape(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shape_file = tmp_path / "gate.json"
    shape_file.write_text('{"name": "linear_ramp", "params": {"eps": 0.1, "delta": 0.05}}')
    assert main(["train", *FLAGS, "--steps", str(ROLLOUT), "--shape-file", str(shape_file)]) == 0
    assert (tmp_path / "runs" / "Pendulum-v1-klip-linear_ramp-s0" / "summary.json").is_file()
    out = tmp_path / "eps"
    assert main(["train", *FLAGS, "--steps", str(ROLLOUT), "--shape", "sigmoid", "--clip-eps", "0.3",
                 "--out", str(out)]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["shape_params"]["eps"] == 0.3 and recorded["clip_eps"] == 0.3
    assert recorded["kl_beta"] is None and recorded["kl_target"] is None
    clip = tmp_path / "clip"
    assert main(["train", *FLAGS, "--steps", str(ROLLOUT), "--loss", "clip", "--out", str(clip)]) == 0
    recorded = yaml.safe_load((clip / "config.yaml").read_text())
    assert recorded["shape"] is None and recorded["shape_params"] == {} and recorded["clip_eps"] == 0.2
    assert recorded["diagnostics"] is False  # what ran: the shape diagnostics are klip's


# -- 6. user code fails cleanly ------------------------------------------------------------------
RAISING_GATE = (
    "import torch\nfrom klip.shapes import CoefficientShape, register_shape\n"
    "@register_shape('{name}')\nclass Gate(CoefficientShape):\n"
    "    calls = 0\n"
    "    def gate(self, ratio, advantage):\n"
    "        type(self).calls += 1\n"
    "        if type(self).calls > {good_calls}:\n"
    "            {failure}\n"
    "        return torch.zeros_like(ratio)\n"
)


@pytest.mark.parametrize("failure,told", [("raise ValueError('bad knot')", "ValueError: bad knot"),
                                          ("raise ValueError('two\\nlines')", "ValueError: two | lines"),
                                          ("raise SystemExit(5)", "SystemExit: 5")])
def test_a_gate_that_raises_during_training_gives_one_line(tmp_path, capsys, clean_registry, failure, told):
    plugin = tmp_path / "raising.py"
    plugin.write_text(RAISING_GATE.format(name="raising", good_calls=0, failure=failure))
    arguments = ["train", *FLAGS, "--steps", str(ROLLOUT), "--shape-plugin", str(plugin),
                 "--shape", "raising", "--out", str(tmp_path / "run")]
    assert main(arguments) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert "shape 'raising'" in lines[0] and str(plugin) in lines[0]
    assert told in lines[0] and "iteration 1" in lines[0]
    assert main([*arguments, "--resume", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_plugin_shape_whose_constructor_raises_gives_one_line(tmp_path, capsys, clean_registry):
    plugin = tmp_path / "bad_init.py"
    plugin.write_text("from klip.shapes import CoefficientShape, register_shape\n"
                      "@register_shape('bad_init')\nclass Bad(CoefficientShape):\n"
                      "    def __init__(self, **values):\n        raise TypeError('no knots given')\n")
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--steps", str(ROLLOUT), "--shape-plugin", str(plugin),
                 "--shape", "bad_init", "--out", str(out)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines == [f"klip: error: shape 'bad_init' ({plugin}) raised TypeError: no knots given"]
    assert not out.exists()


# -- 7. divergence -----------------------------------------------------------------------------
def test_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys, clean_registry):
    plugin = tmp_path / "nan.py"
    # 4 minibatches per iteration: iterations 1 and 2 are fine, the third goes NaN.
    plugin.write_text(RAISING_GATE.format(name="nan_gate", good_calls=8,
                                          failure="return torch.full_like(ratio, float('nan'))"))
    out = tmp_path / "run"
    code = main(["train", *FLAGS, "--steps", str(5 * ROLLOUT), "--checkpoint-every", "1",
                 "--shape-plugin", str(plugin), "--shape", "nan_gate", "--out", str(out)])
    assert code == 3
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert "diverged at iteration 3: loss_objective (minibatch 1 of the iteration)" in lines[0]
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["klip"]["frames"] == 2 * ROLLOUT
    assert all(torch.isfinite(value).all() for value in parameters(out).values())
    summary = json.loads((out / "summary.json").read_text(), parse_constant=pytest.fail)
    assert summary["status"] == "diverged" and "iteration 3" in summary["error"]


# -- 8. Ctrl-C -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_checkpoints_the_last_finished_iteration_and_resumes_exactly(tmp_path):
    flags = [*FLAGS, "--steps", str(60 * ROLLOUT), "--checkpoint-every", "1000"]
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "klip", "train", *flags, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.csv").is_file() and len(rows(out / "metrics.csv")) >= 2, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = error_lines(stderr)
    iteration = len(rows(out / "metrics.csv"))
    assert lines == [f"klip: interrupted at iteration {iteration}; continue with "
                     f"klip train --out {out} --resume"]
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["klip"]["frames"] == iteration * ROLLOUT
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    shorter = [*FLAGS, "--steps", str((iteration - 1) * ROLLOUT)]  # below what is trained
    assert main(["train", *shorter, "--checkpoint-every", "1000", "--out", str(out), "--resume"]) == 2
    # Continuing to the planned end gives the uninterrupted run's parameters and rows.
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0
    assert_same_parameters(out, tmp_path / "whole")
    assert without_timings(rows(out / "metrics.csv")) == without_timings(rows(tmp_path / "whole" /
                                                                                "metrics.csv"))


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_the_run_still_resumes(tmp_path):
    out = tmp_path / "run"
    flags = ["--task", "Pendulum-v1", "--steps", str(40 * 2048), "--rollout-steps", "2048",
             "--epochs", "10", "--checkpoint-every", "1", "--eval-episodes", "0", "--no-progress"]
    process = subprocess.Popen([sys.executable, "-m", "klip", "train", *flags, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "checkpoints" / "last.ckpt").is_file(), process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("klip: interrupted")
    assert lines[0].endswith(f"continue with klip train --out {out} --resume")
    done = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    iterations = done["klip"]["frames"] // 2048
    resumed = klip("train", "--out", str(out), "--resume", "--steps", str((iterations + 1) * 2048),
                   "--no-progress")
    assert resumed.returncode == 0, resumed.stderr


# -- 9. metrics that mean what they say -----------------------------------------------------------
@pytest.mark.parametrize("loss", ["klip", "clip", "kl_adaptive"])
def test_metrics_columns_are_documented_and_summary_is_complete(tmp_path, loss):
    out = tmp_path / loss
    result = train(tiny(loss=loss, steps=2 * ROLLOUT, eval_episodes=1, entropy_coeff=0.01), out,
                   progress=False)
    header = rows(out / "metrics.csv")[0].keys()
    assert set(header) <= set(METRICS_COLUMNS), set(header) - set(METRICS_COLUMNS)
    summary = json.loads((out / "summary.json").read_text(), parse_constant=pytest.fail)
    for key in ("task", "loss", "shape", "shape_params", "seed", "frames", "final_return_last10pct",
                "evaluation", "wall_seconds", "peak_rss_mib", "status"):
        assert key in summary, key
    assert summary["status"] == "finished" and summary["frames"] == 2 * ROLLOUT
    assert summary["evaluation"]["episodes"] == 1
    assert result.summary == summary
    # Which machine and libraries made it: runs reproduce bitwise on one kind of machine only.
    machine = summary["machine"]
    assert machine["cpu"] and machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["packages"]["torch"] == torch.__version__
    assert machine["packages"]["mujoco"] and machine["packages"]["gymnasium"]


def test_episode_rows_carry_the_frame_the_episode_ended_at(tmp_path):
    out = tmp_path / "run"
    train(tiny(steps=3 * ROLLOUT, num_envs=2), out, progress=False)
    episodes = rows(out / "episodes.csv")
    # Pendulum episodes last 200 steps; two sub-envs end theirs at the same vector step 200.
    assert [int(row["end_frame"]) for row in episodes] == [400, 400]


# -- 10. evaluation whenever it is wanted ----------------------------------------------------------
def test_eval_every_writes_deterministic_evaluations(tmp_path):
    out = tmp_path / "run"
    train(tiny(steps=4 * ROLLOUT, eval_every=2), out, progress=False)
    evaluations = rows(out / "evaluations.csv")
    assert [(row["iteration"], row["frames"]) for row in evaluations] == [("2", "512"), ("4", "1024")]
    assert all(float(row["return_mean"]) < 0 for row in evaluations)  # Pendulum returns are negative
    # Evaluating does not disturb training, which is why --eval-every may change on resume.
    train(tiny(steps=4 * ROLLOUT), tmp_path / "plain", progress=False)
    assert without_timings(rows(out / "metrics.csv")) == without_timings(rows(tmp_path / "plain" /
                                                                                "metrics.csv"))


def test_klip_eval_evaluates_a_checkpoint_and_explains_a_missing_renderer(tmp_path, capsys, monkeypatch):
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    out = tmp_path / "run"
    train(tiny(task="Hopper-v4", steps=ROLLOUT), out, progress=False)
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    assert "over 2 episodes" in capsys.readouterr().out

    def no_display(self):
        raise RuntimeError("EGL: no display\nsecond line")

    monkeypatch.setattr(MujocoEnv, "render", no_display)
    assert main(["eval", str(out), "--episodes", "1", "--video", str(tmp_path / "v.gif")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith("klip: error: cannot render off-screen with MUJOCO_GL=")
    assert "RuntimeError: EGL: no display" in lines[0]
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "not a klip run directory" in capsys.readouterr().err

    import imageio.v2

    def no_backend(*args, **kwargs):
        raise ValueError("Could not find a backend to open `v.mp4`\n  FFMPEG: pip install imageio[ffmpeg]")

    monkeypatch.setattr(imageio.v2, "get_writer", no_backend)
    assert main(["eval", str(out), "--video", str(tmp_path / "v.mp4")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "an .mp4 needs the imageio-ffmpeg package" in lines[0]
    assert not (tmp_path / "v.mp4").exists()


# -- 11. the Python API --------------------------------------------------------------------------
def test_python_api_trains_and_reads_runs_back(tmp_path):
    import numpy as np

    import klip
    from klip.shapes import make_shape

    run = klip.train({"task": "Pendulum-v1", "rollout_steps": ROLLOUT, "epochs": 1}, steps=2 * ROLLOUT,
                     eval_episodes=0, shape=make_shape("sigmoid", tau=0.1), out=tmp_path / "api")
    assert run.config.shape == "sigmoid" and run.config.shape_params == {"eps": 0.2, "tau": 0.1}
    assert run.summary["frames"] == 2 * ROLLOUT
    assert np.array_equal(run.metrics["iteration"], [1.0, 2.0])
    assert run.metrics["lr"][0] == run.config.lr
    assert "metrics.csv" in run.files and "shape.json" in run.files
    again = klip.load_run(tmp_path / "api")
    assert again.summary == run.summary and again.config == run.config
    assert np.array_equal(again.episodes["end_frame"], run.episodes["end_frame"])
    actor = again.policy()
    assert any(parameter.requires_grad for parameter in actor.parameters())


def test_a_run_without_its_checkpoint_evaluates_the_same_from_its_parameters_file(tmp_path):
    import shutil

    import klip
    from klip.algos.run import evaluate_run
    from klip.algos.train import PARAMETERS_FILE
    from klip.studies.compare import parameters_sha256

    out = tmp_path / "committed"
    klip.train({"task": "Pendulum-v1", "rollout_steps": ROLLOUT, "epochs": 1}, steps=3 * ROLLOUT,
               eval_episodes=0, out=out)
    checkpoint = out / "checkpoints" / "last.ckpt"
    assert parameters_sha256(out / PARAMETERS_FILE) == parameters_sha256(checkpoint)
    from_checkpoint = evaluate_run(out, episodes=2)
    shutil.rmtree(out / "checkpoints")  # as in a clone of results committed without checkpoints
    from_parameters = evaluate_run(out, episodes=2)
    assert from_parameters.pop("seconds") > 0 and from_checkpoint.pop("seconds") > 0
    assert from_parameters == from_checkpoint
    (out / PARAMETERS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        klip.load_run(out).load_module()


def test_import_klip_does_not_import_torch():
    code = "import sys, klip; assert 'torch' not in sys.modules; assert callable(klip.train)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# -- 12. small things ----------------------------------------------------------------------------
def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys; from klip.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'klip --help imported torch'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "runs/<task>-<loss>-<shape>-s<seed>" in result.stdout


def test_shapes_plot_writes_exactly_the_given_path_and_plugin_after_the_subcommand(
    tmp_path, capsys, clean_registry
):
    plugin = tmp_path / "gates.py"
    plugin.write_text(RAISING_GATE.format(name="late_plugin_gate", good_calls=10**9, failure="pass"))
    path = tmp_path / "gates-figure"
    assert main(["shapes", "plot", "step", "late_plugin_gate", "--plugin", str(plugin),
                 "--out", str(path)]) == 0
    assert path.is_file() and path.read_bytes().startswith(b"\x89PNG")
    assert set(tmp_path.iterdir()) == {plugin, path}  # not gates-figure.png
    assert f"plot written to {path}" in capsys.readouterr().out
    assert main(["shapes", "list", "--plugin", str(plugin)]) == 0
    assert "late_plugin_gate" in capsys.readouterr().out


def test_shapes_list_answers_without_torch_and_matches_the_registry():
    from klip.shapes import available_shapes, get_shape_class
    from klip.shapes.catalog import shape_summaries

    registered = {name: (get_shape_class(name).__doc__ or "").strip().splitlines()[0]
                  for name in available_shapes()}
    assert shape_summaries() == registered
    code = ("import sys; from klip.cli import main\nassert main(['shapes', 'list']) == 0\n"
            "assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == sorted(registered)


def test_python_api_takes_a_shape_name_with_parameters_or_refuses_in_one_line(tmp_path):
    import klip
    from klip.algos.config import ConfigError

    run = klip.train({"task": "Pendulum-v1", "rollout_steps": ROLLOUT, "epochs": 1, "eval_episodes": 0},
                     steps=ROLLOUT, shape="sigmoid:tau=0.05", out=tmp_path / "named")
    assert run.config.shape == "sigmoid" and run.config.shape_params == {"eps": 0.2, "tau": 0.05}
    with pytest.raises(ConfigError, match=r"shape must be a shape name .* got int"):
        klip.train({"task": "Pendulum-v1"}, shape=3, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_klip_eval_names_a_damaged_checkpoint_and_falls_back_to_the_parameters_file(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(steps=ROLLOUT), out, progress=False)
    assert main(["eval", str(out), "--episodes", "1"]) == 0
    expected = capsys.readouterr().out
    (out / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    assert main(["eval", str(out), "--episodes", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected  # the parameters the checkpoint held
    lines = error_lines(captured.err)
    assert len(lines) == 1 and "last.ckpt (UnpicklingError) is unreadable; evaluated" in lines[0]
    (out / "parameters.pt").unlink()
    assert main(["eval", str(out), "--episodes", "1"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines == [f"klip: error: checkpoint {out / 'checkpoints' / 'last.ckpt'} is unreadable "
                     f"(UnpicklingError) and {out} has no parameters.pt to fall back to"]
