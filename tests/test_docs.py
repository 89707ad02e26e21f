"""The documentation cannot go stale: its code runs, and the site builds strictly.

Every fenced code block of the README and of `docs/**/*.md` is one of:

- a file: a block whose first line is `# NAME.EXT` (`# my_gates.py`, `# my.yaml`) is written to
  the page's working directory, and a Python file is also run, so later blocks can use it;
- run (the default): Python blocks run in a fresh interpreter; in shell blocks every line is a
  `klip` command, run with a tiny budget substituted (Pendulum-v1, 512 steps of 256-step
  rollouts, one epoch; at most two seeds and one worker in a comparison; see `tiny`);
- `<!-- docs: options-only (why) -->` on the line before the fence: every `--option` of every
  `klip` command must be one that the command's `--help` lists (for commands too long to run
  here: a renamed option still fails);
- `<!-- docs: skip (why) -->`: not checked; the reason says why. Blocks in any other language
  (text, a directory tree) are prose.

The blocks of one page run in order in one temporary directory, as a reader would type them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"^<!--\s*docs:\s*(skip|options-only)\b(.*?)-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
FILE_LINE = re.compile(r"^#\s+([\w.-]+\.(py|ya?ml|json))\s*$")
RUNNABLE = {"python", "bash", "sh", "console", "shell"}
TINY_TRAIN = ["--task", "Pendulum-v1", "--steps", "512", "--rollout-steps", "256", "--epochs", "1",
              "--eval-episodes", "0"]
TIMEOUT = 600


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    mode: str  # "run", "options-only" or "skip"
    reason: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def file_name(self) -> str | None:
        first = self.code.splitlines()[0] if self.code.strip() else ""
        match = FILE_LINE.match(first)
        return match.group(1) if match else None


def blocks(page: Path) -> list[Block]:
    """The page's fenced code blocks with the marker (if any) on the line before each."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start, language = i, fence.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous.strip())
        mode, reason = (marker.group(1), marker.group(2).strip()) if marker else ("run", "")
        found.append(Block(page, start + 1, language, mode, reason, "\n".join(lines[start + 1:end]) + "\n"))
        i = end + 1
    return found


def commands(block: Block) -> list[list[str]]:
    """The block's shell commands as argument lists, `klip` first; anything else fails."""
    text = re.sub(r"\\\n", " ", block.code)
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        argv = shlex.split(line, comments=True)
        if argv and argv[0] == ".venv/bin/klip":
            argv[0] = "klip"
        assert argv and argv[0] == "klip", (
            f"{block.where}: {line!r} is not a klip command; mark the block "
            "<!-- docs: skip (why) --> or <!-- docs: options-only (why) -->")
        out.append(argv)
    return out


def _subcommand(argv: list[str]) -> list[str]:
    """`klip compare report DIR` -> ["compare", "report"]: the words before the first option
    that name (sub)commands, found by asking the CLI's help which sub-commands exist."""
    path = []
    for word in argv[1:]:
        if word.startswith("-") or word not in _choices(tuple(path)):
            break
        path.append(word)
    return path


@cache
def _help(path: tuple[str, ...]) -> str:
    result = subprocess.run([sys.executable, "-m", "klip", *path, "--help"], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"klip {' '.join(path)} --help failed: {result.stderr[-1000:]}"
    return result.stdout


@cache
def _choices(path: tuple[str, ...]) -> set[str]:
    usage = _help(path).split("\n\n")[0]
    return {word for group in re.findall(r"\{([\w,-]+)\}", usage) for word in group.split(",")}


def check_options(block: Block, argv: list[str]) -> None:
    path = tuple(_subcommand(argv))
    known = set(re.findall(r"(?<![\w-])(--?[\w][\w-]*)", _help(path)))
    for word in argv:
        option = word.split("=", 1)[0]
        if option.startswith("--"):
            assert option in known, (f"{block.where}: `klip {' '.join(path)}` has no option {option} "
                                     f"(in: {shlex.join(argv)})")


def _without(argv: list[str], *options: str) -> list[str]:
    """`argv` less each of `options` and its value."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in options:
            skip = True
        elif word.split("=", 1)[0] not in options:
            out.append(word)
    return out


def _value(argv: list[str], option: str) -> str | None:
    for i, word in enumerate(argv):
        if word == option and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def tiny(block: Block, argv: list[str], index: int) -> list[str]:
    """The command with a tiny budget substituted: what the test runs for `argv`."""
    path = _subcommand(argv)
    if path == ["train"]:
        if "--resume" in argv:  # the run keeps its recorded options; a larger --steps grows it
            return [*_without(argv, "--steps"), *(["--steps", "1024"] if "--steps" in argv else []),
                    "--no-progress"]
        out = [*_without(argv, "--task", "--steps", "--eval-episodes"), *TINY_TRAIN, "--no-progress"]
        return out if "--out" in argv else [*out, "--out", f"runs/docs-{index}"]
    if path == ["eval"]:
        return [*_without(argv, "--episodes"), "--episodes", "2"]
    if path == ["shapes", *path[1:]]:
        return argv
    if path == ["compare", "report"]:
        return [*_without(argv, "--resamples"), "--resamples", "200"]
    if path == ["compare"]:
        if "--losses" not in argv and "--entries" not in argv:
            return argv  # `klip compare --out DIR`: continue the grid as recorded
        from klip.seeds import format_seeds, parse_seeds

        seeds = format_seeds(parse_seeds(_value(argv, "--seeds") or "0-4")[:2])
        return [*_without(argv, "--tasks", "--steps", "--seeds", "--workers", "--storage"),
                "--tasks", "Pendulum-v1", "--steps", "512", "--seeds", seeds, "--workers", "1",
                "--set", "rollout_steps=256", "--set", "epochs=1", "--set", "eval_episodes=0",
                "--progress-every", "0"]
    raise AssertionError(f"{block.where}: no tiny budget is known for `klip {' '.join(path)}`; "
                         "mark the block <!-- docs: options-only (why) -->")


def run_block(block: Block, cwd: Path, index: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(cwd), "MPLBACKEND": "Agg"}
    if block.file_name:
        (cwd / block.file_name).write_text(block.code)
        if block.language != "python":
            return
    if block.language == "python":
        argv = [sys.executable, block.file_name] if block.file_name else [sys.executable, "-c", block.code]
        result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, f"{block.where}: the Python block fails:\n{result.stderr[-3000:]}"
        return
    argvs = commands(block)
    for argv in argvs:  # every option of the block first: a renamed option fails before any training
        check_options(block, argv)
    if block.mode == "options-only":
        return
    for argv in argvs:
        command = tiny(block, argv, index)
        result = subprocess.run([sys.executable, "-m", "klip", *command[1:]], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, (f"{block.where}: `{shlex.join(argv)}` fails "
                                        f"(run as `{shlex.join(command)}`):\n{result.stderr[-3000:]}")


def test_every_page_is_collected_and_every_block_is_classified() -> None:
    total = 0
    for page in PAGES:
        for block in blocks(page):
            total += 1
            if block.mode != "run":
                assert block.reason.startswith("(") and block.reason.endswith(")"), (
                    f"{block.where}: a {block.mode} marker says why, in parentheses")
            if block.language in ("bash", "sh", "shell", "console") and block.mode != "skip":
                commands(block)  # every line is a klip command
    assert total > 20, total


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(b.language in RUNNABLE and b.mode != "skip"
                                                           for b in blocks(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    for index, block in enumerate(blocks(page)):
        if block.mode == "skip":
            continue
        if block.language in RUNNABLE or block.file_name:
            run_block(block, tmp_path, index)


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, anchor or API reference fails it."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "losses" / "index.html").is_file()


def test_shape_tables_list_every_built_in_shape() -> None:
    """The README's and the shapes page's tables are typed, so they are checked against the registry."""
    from klip.shapes import available_shapes

    for page in (ROOT / "README.md", ROOT / "docs" / "shapes.md"):
        table = re.search(r"^\| shape \|.*?(?=\n\n)", page.read_text(), flags=re.M | re.S)
        assert table is not None, f"{page.name} has no shape table"
        rows = set(re.findall(r"^\| `(\w+)` \|", table.group(0), flags=re.M))
        assert rows == set(available_shapes()), (page.name, rows ^ set(available_shapes()))


def test_dotted_names_in_prose_exist() -> None:
    """A `klip.module.name` written in a page names something that imports: a renamed or moved
    function fails here, not in a reader's traceback."""
    import importlib

    missing = []
    for page in [*PAGES, ROOT / "tests" / "README.md"]:
        for dotted in sorted(set(re.findall(r"`(klip(?:\.\w+)+)`", page.read_text()))):
            parts = dotted.split(".")
            for split in range(len(parts), 0, -1):
                try:
                    target: object = importlib.import_module(".".join(parts[:split]))
                except ImportError:
                    continue
                for attribute in parts[split:]:
                    target = getattr(target, attribute, None)
                break
            if target is None:
                missing.append(f"{page.relative_to(ROOT)}: {dotted}")
    assert not missing, missing
