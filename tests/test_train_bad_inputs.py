"""The bad-input catalogue of `klip train`: exit code 2, one `klip: error:` line, nothing written.

Each case runs the real command line in-process against a sandbox directory holding one
finished tiny run (`done/`), shape files and plugins; the sandbox is compared file by file
(content and modification time) before and after.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from klip.algos.run_lock import RunLock
from klip.cli import main

BASE = ["--task", "Pendulum-v1", "--steps", "256", "--rollout-steps", "256", "--epochs", "1",
        "--eval-episodes", "0", "--no-progress"]

PLUGINS = {
    "syntax.py": "def broken(:\n",
    "missing_import.py": "import klip_no_such_module\n",
    "type_error.py": "len(3)\n",
    "exits.py": "import sys\nsys.exit(4)\n",
}

SHAPE_FILES = {
    "sigmoid.json": '{"name": "sigmoid", "params": {"eps": 0.1, "tau": 0.02}}',
    "nan_state.json": '{"name": "learned", "params": {"eps": 0.2}, "state": {"values": '
                      '[[NaN, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1, 1]]}}',
    "nan_param.json": '{"name": "sigmoid", "params": {"eps": 0.1, "tau": NaN}}',
    "broken.json": "{oops",
}

CONFIG_FILES = {
    "hidden_string.yaml": "hidden: '64'\n",
    "hidden_float.yaml": "hidden: 2.5\n",
    "anneal_string.yaml": "anneal_lr: 'yes'\n",
    "lr_nan.yaml": "lr: .nan\n",
    "lr_negative.yaml": "lr: -0.001\n",
    "lr_string.yaml": "lr: fast\n",
    "seed_negative.yaml": "seed: -1\n",
    "seed_huge.yaml": f"seed: {2**64}\n",
    "critic_negative.yaml": "critic_coeff: -1\n",
    "entropy_inf.yaml": "entropy_coeff: .inf\n",
    "shape_params_nan.yaml": "shape: sigmoid\nshape_params: {tau: .nan}\n",
    "shape_params_list.yaml": "shape_params: [1, 2]\n",
    "unknown_key.yaml": "epoch: 3\n",
    "not_mapping.yaml": "- 1\n- 2\n",
    "invalid.yaml": "epochs: [1\n",
}

# (id, arguments, expected message); {sandbox} is the sandbox directory, {out} a fresh run path.
CASES = [
    ("unknown-task", ["--task", "Hopper-v9"], "unknown task 'Hopper-v9'; known tasks: HalfCheetah-v4"),
    ("unknown-shape", ["--shape", "tanh"], "unknown shape 'tanh'; registered shapes:"),
    ("shape-param-range", ["--shape", "sigmoid", "--shape-param", "tau=-1"], "'tau' = -1 is outside"),
    ("shape-param-syntax", ["--shape-param", "tau"], "must look like NAME=VALUE"),
    ("shape-param-unknown", ["--shape", "sigmoid", "--shape-param", "width=1"], "unknown parameter"),
    ("steps-zero", ["--steps", "0"], "steps must be a positive integer, got 0"),
    ("steps-negative", ["--steps", "-5"], "steps must be a positive integer"),
    ("unknown-loss", ["--loss", "trpo"], "unknown loss 'trpo'"),
    ("epochs-not-int", ["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    ("lr-not-number", ["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    ("abbreviated-flag", ["--epoch", "3"], "unrecognized arguments: --epoch 3"),
    ("lr-nan", ["--lr", "nan"], "lr must be a finite number"),
    ("lr-negative", ["--lr=-1e-3"], "lr must be > 0"),
    ("seed-negative", ["--seed", "-1"], "seed must be in [0, 4294967295]"),
    ("seed-64-bit", ["--seed", str(2**64)], "seed must be in [0, 4294967295]"),
    ("critic-negative", ["--critic-coeff", "-0.5"], "critic_coeff must be >= 0"),
    ("entropy-inf", ["--entropy-coeff", "inf"], "entropy_coeff must be a finite number"),
    ("gamma-range", ["--gamma", "1.5"], "gamma must be in [0, 1]"),
    ("minibatch-divides", ["--minibatch-size", "100"], "must be a multiple of minibatch_size"),
    ("eval-every-negative", ["--eval-every", "-1"], "eval_every must be >= 0"),
    ("clip-with-shape", ["--loss", "clip", "--shape", "sigmoid"], "shape only apply to --loss klip"),
    ("clip-with-shape-param", ["--loss", "clip", "--shape-param", "tau=1"],
     "shape_params only apply to --loss klip"),
    ("clip-with-shape-file", ["--loss", "clip", "--shape-file", "{sandbox}/sigmoid.json"],
     "shape_file only apply to --loss klip"),
    ("klip-with-kl-beta", ["--kl-beta", "2"], "kl_beta only applies to --loss kl_fixed"),
    ("kl-fixed-with-target", ["--loss", "kl_fixed", "--kl-target", "0.01"],
     "kl_target only applies to --loss kl_adaptive"),
    ("kl-with-clip-eps", ["--loss", "kl_adaptive", "--clip-eps", "0.1"], "clip_eps does not apply"),
    ("kl-fixed-with-measure", ["--loss", "kl_fixed", "--kl-measure", "final"],
     "kl_measure only applies to --loss kl_adaptive"),
    ("kl-measure-unknown", ["--loss", "kl_adaptive", "--kl-measure", "last"], "unknown kl_measure 'last'"),
    ("clip-with-kl-direction", ["--loss", "clip", "--kl-direction", "new_old"],
     "kl_direction only applies to --loss kl_fixed and kl_adaptive"),
    ("kl-direction-unknown", ["--loss", "kl_fixed", "--kl-direction", "reverse"],
     "unknown kl_direction 'reverse'"),
    ("clip-eps-shape-without-eps", ["--shape", "none", "--clip-eps", "0.1"], "has no eps"),
    ("clip-eps-disagrees", ["--shape", "sigmoid", "--clip-eps", "0.1", "--shape-param", "eps=0.3"],
     "disagree; --clip-eps sets the shape's eps"),
    ("shape-file-vs-shape", ["--shape-file", "{sandbox}/sigmoid.json", "--shape", "step"],
     "the shape file wins, drop --shape"),
    ("shape-file-vs-param", ["--shape-file", "{sandbox}/sigmoid.json", "--shape-param", "tau=0.5"],
     "disagree with --shape-file"),
    ("shape-file-vs-clip-eps", ["--shape-file", "{sandbox}/sigmoid.json", "--clip-eps", "0.3"],
     "the shape file wins, drop --clip-eps"),
    ("shape-file-missing", ["--shape-file", "{sandbox}/nowhere.json"], "shape file not found"),
    ("shape-file-broken", ["--shape-file", "{sandbox}/broken.json"], "is not valid JSON"),
    ("shape-file-nan-state", ["--shape-file", "{sandbox}/nan_state.json"], "holds non-finite values"),
    ("shape-file-nan-param", ["--shape-file", "{sandbox}/nan_param.json"], "is not finite"),
    ("plugin-missing", ["--shape-plugin", "{sandbox}/nowhere.py"], "shape plugin file not found"),
    ("plugin-not-py", ["--shape-plugin", "{sandbox}/sigmoid.json"], "must be a .py file"),
    *[(f"plugin-{name.removesuffix('.py')}", ["--shape-plugin", f"{{sandbox}}/{name}"], message)
      for name, message in [("syntax.py", "syntax.py failed to import: SyntaxError: invalid syntax"),
                            ("missing_import.py", "failed to import: ModuleNotFoundError"),
                            ("type_error.py", "failed to import: TypeError"),
                            ("exits.py", "failed to import: SystemExit: 4")]],
    *[(f"config-{name.removesuffix('.yaml')}", ["--config", f"{{sandbox}}/{name}"], message)
      for name, message in [
          ("hidden_string.yaml", "hidden must be an integer, got '64'"),
          ("hidden_float.yaml", "hidden must be an integer, got 2.5"),
          ("anneal_string.yaml", "anneal_lr must be true or false, got 'yes'"),
          ("lr_nan.yaml", "lr must be a finite number"),
          ("lr_negative.yaml", "lr must be > 0"),
          ("lr_string.yaml", "lr must be a number, got 'fast'"),
          ("seed_negative.yaml", "seed must be in [0, 4294967295], got -1"),
          ("seed_huge.yaml", "seed must be in [0, 4294967295]"),
          ("critic_negative.yaml", "critic_coeff must be >= 0"),
          ("entropy_inf.yaml", "entropy_coeff must be a finite number"),
          ("shape_params_nan.yaml", "shape_params 'tau' must be a finite number"),
          ("shape_params_list.yaml", "shape_params must be a mapping"),
          ("unknown_key.yaml", "unknown option(s) epoch"),
          ("not_mapping.yaml", "must hold a mapping of option: value"),
          ("invalid.yaml", "is not valid YAML"),
      ]],
    ("config-missing", ["--config", "{sandbox}/nowhere.yaml"], "config file not found"),
    # The run directory.
    ("out-is-a-file", ["--out", "{sandbox}/sigmoid.json"], "exists and is not a directory"),
    ("out-under-a-file", ["--out", "{sandbox}/sigmoid.json/run"], "cannot write to output directory"),
    ("out-not-empty", ["--out", "{sandbox}/plugins"], "is not empty and holds no klip run"),
    ("resume-missing", ["--out", "{sandbox}/missing/run", "--resume"], "nothing to resume"),
    ("resume-empty-dir", ["--out", "{sandbox}/empty", "--resume"], "nothing to resume"),
    ("same-run-without-resume", ["--out", "{sandbox}/done"], "pass --resume to continue it"),
    ("different-run", ["--out", "{sandbox}/done", "--seed", "3"], "differs in: seed"),
    ("different-run-resume", ["--out", "{sandbox}/done", "--resume", "--gamma", "0.9"],
     "differs in: gamma"),
    ("resume-below-trained", ["--out", "{sandbox}/done", "--resume", "--steps", "256"],
     "--steps 256 is below the 512 steps this run has already trained"),
    ("resume-past-annealing", ["--out", "{sandbox}/done", "--resume", "--steps", "1024"],
     "annealed its learning rate to 0 at iteration 2"),
    ("corrupt-checkpoint", ["--out", "{sandbox}/corrupt-checkpoint", "--resume", "--steps", "512"],
     "last.ckpt is unreadable (UnpicklingError); it cannot be resumed"),
    ("corrupt-config", ["--out", "{sandbox}/corrupt-config", "--steps", "512"],
     "config.yaml is corrupt; choose another --out"),
    ("locked", ["--out", "{sandbox}/done", "--resume", "--steps", "512"],
     "is in use by another klip run (pid "),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "done"
    assert main(["train", *BASE, "--steps", "512", "--out", str(out)]) == 0
    return out


def make_sandbox(root: Path, finished_run: Path) -> Path:
    sandbox = root / "sandbox"
    (sandbox / "plugins").mkdir(parents=True)
    (sandbox / "empty").mkdir()
    for name, text in {**PLUGINS, **SHAPE_FILES, **CONFIG_FILES}.items():
        (sandbox / name).write_text(text)
    (sandbox / "plugins" / "unrelated.txt").write_text("not a run\n")
    shutil.copytree(finished_run, sandbox / "done")
    shutil.copytree(finished_run, sandbox / "corrupt-checkpoint")
    (sandbox / "corrupt-checkpoint" / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    (sandbox / "corrupt-config").mkdir()
    (sandbox / "corrupt-config" / "config.yaml").write_text("task: [unclosed\n")
    return sandbox


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(path.relative_to(root)): (path.read_bytes() if path.is_file() else b"",
                                          path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


@pytest.mark.parametrize("arguments,message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(
    tmp_path, capsys, clean_registry, finished_run, monkeypatch, arguments, message
):
    sandbox = make_sandbox(tmp_path, finished_run)
    monkeypatch.chdir(tmp_path)  # a default run directory would appear here
    arguments = [argument.format(sandbox=sandbox) for argument in arguments]
    if "--out" not in arguments:
        arguments += ["--out", str(sandbox / "new-run")]
    before = snapshot(tmp_path)
    lock = RunLock(sandbox / "done")
    if message.startswith("is in use"):
        lock.acquire()  # flock excludes another open file, even in this process
        before = snapshot(tmp_path)
    try:
        code = main(["train", *BASE, *arguments])
    finally:
        lock.release()
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("klip: error: ") and message in lines[0], lines[0]
    assert captured.out == ""
    assert snapshot(tmp_path) == before
