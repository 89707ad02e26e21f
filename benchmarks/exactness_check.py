"""Does the current tree train exactly like an earlier revision? (For optimisations that claim so.)

    .venv/bin/python benchmarks/exactness_check.py 9d5e7ca          # vs. the first pipeline
    .venv/bin/python benchmarks/exactness_check.py HEAD~1 -- --fused-adam   # expect a difference

Checks the revision out into a temporary git worktree, runs the same fixed-seed
`klip train` there and here (same virtualenv), and compares the final actor and
critic parameters bit for bit, plus every metric column both runs log (timings
excluded). Extra flags after `--` go to the run of the current tree only.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = ["train", "--task", "Hopper-v4", "--shape", "step", "--steps", "10240", "--seed", "0",
       "--eval-episodes", "0", "--no-progress"]


NAMESPACED = ("shapes", "algos", "envs", "studies")


def import_root(tree: Path, folder: Path) -> Path:
    """A directory from which `import klip...` imports `tree`'s code and nothing else.

    Since the root folders install as `klip.shapes`, `klip.algos`, ... (setuptools
    `package-dir`), the virtualenv's editable finder maps those names to the checkout it was
    installed from, whatever PYTHONPATH says. A `klip` package whose subpackages are links to
    `tree`'s folders is found first, so each revision runs its own code. Revisions from before
    the namespace (top-level `algos`, ...) import from `tree` itself.
    """
    if not (tree / "klip" / "__init__.py").is_file():
        return tree
    package = folder / "klip"
    package.mkdir(parents=True)
    for entry in (tree / "klip").iterdir():
        (package / entry.name).symlink_to(entry)
    for name in NAMESPACED:
        if (tree / name).is_dir():
            (package / name).symlink_to(tree / name)
    return folder


def train(tree: Path, out: Path, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = import_root(tree, Path(folder))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(tree)])}
        check = subprocess.run(
            [sys.executable, "-c", "import klip.algos.train as t; print(t.__file__)"],
            env=env, capture_output=True, text=True, cwd=out.parent)
        if check.returncode == 0 and not check.stdout.strip().startswith(str(root)):
            raise RuntimeError(f"{tree} would run {check.stdout.strip()}, not its own code")
        subprocess.run([sys.executable, "-m", "klip", *RUN, *extra, "--out", str(out)],
                       cwd=out.parent, env=env, check=True, capture_output=True)


def parameters(out: Path) -> list[torch.Tensor]:
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    # Module paths changed between revisions; registration order did not.
    return [value for key, value in state.items() if key.startswith(("actor.", "critic."))]


def metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision")
    parser.add_argument("extra", nargs="*", help="flags for the current tree's run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        worktree, base_out, head_out = Path(folder) / "tree", Path(folder) / "a", Path(folder) / "b"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.revision],
                       cwd=ROOT, check=True, capture_output=True)
        try:
            train(worktree, base_out, [])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT,
                           check=True, capture_output=True)
        train(ROOT, head_out, args.extra)
        old, new = parameters(base_out), parameters(head_out)
        same_parameters = len(old) == len(new) and all(
            a.shape == b.shape and torch.equal(a, b) for a, b in zip(old, new, strict=True))
        old_rows, new_rows = metrics(base_out), metrics(head_out)
        common = sorted((set(old_rows[0]) & set(new_rows[0])) - {k for k in old_rows[0]
                                                                 if k.startswith("time/")})
        differing = {}
        for key in common:
            a = [float(r[key] or "nan") for r in old_rows]
            b = [float(r[key] or "nan") for r in new_rows]
            if a != b:
                differing[key] = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b, strict=True))
    print(f"revision {args.revision} vs working tree {' '.join(args.extra)}: "
          f"{len(old_rows)} iterations")
    print(f"final parameters bitwise equal: {same_parameters}")
    print(f"metric columns compared: {len(common)}; identical: {len(common) - len(differing)}")
    for key, relative in differing.items():
        print(f"  {key}: differs, max relative difference {relative:.2e}")
    return 0 if same_parameters and not differing else 1


if __name__ == "__main__":
    sys.exit(main())
