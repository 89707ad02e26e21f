"""`klip` command line: a thin layer over `algos` and `shapes` (no logic of its own)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from klip.seeds import SEEDS_HELP


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    from klip.train_options import add_train_option_arguments

    add_train_option_arguments(parser, exclude=("shape_params",))
    parser.add_argument("--shape-param", dest="shape_param_list", action="append", default=[],
                        metavar="NAME=VALUE", help="a shape parameter; repeatable")


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its usage errors told in the one `klip: error:` line every error gets."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"klip: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="klip", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    # No abbreviated flags: in scripts a prefix would silently pick whichever flag matches.
    train = commands.add_parser("train", help="train one shape on one task", allow_abbrev=False)
    train.add_argument("--config", type=Path, help="YAML file of options; flags override it")
    train.add_argument("--out", type=Path,
                       help="run directory (default runs/<task>-<loss>-<shape>-s<seed>, "
                            "runs/<task>-<loss>-s<seed> for losses without a shape)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--debug", action="store_true", help="show tracebacks")
    # Populations: one agent per seed x sweep value, one process, each agent its own single run.
    train.add_argument("--seeds", help="one agent per seed, in one process: " + SEEDS_HELP)
    train.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2",
                       help="one agent per value of a shape parameter (x each seed); repeatable")
    _config_arguments(train)

    evaluation = commands.add_parser("eval", help="evaluate a run's last checkpoint deterministically")
    evaluation.add_argument("run", type=Path, help="run directory")
    evaluation.add_argument("--episodes", type=int, default=10, help="episodes (default: 10)")
    evaluation.add_argument("--video", type=Path, metavar="FILE.mp4",
                            help="also render the first episode off-screen (MuJoCo, MUJOCO_GL) "
                                 "to FILE.mp4 or FILE.gif")
    evaluation.add_argument("--debug", action="store_true", help="show tracebacks")

    shapes_parser = commands.add_parser("shapes", help="list, show, plot and check coefficient shapes")
    shapes_parser.add_argument("--plugin", type=Path, action="append", default=[],
                               help="a .py file registering shapes")
    shape_commands = shapes_parser.add_subparsers(dest="shapes_command", required=True)
    listing = shape_commands.add_parser("list", help="registered shape names")
    show = shape_commands.add_parser("show", help="a shape's parameters and search space")
    show.add_argument("name")
    plot = shape_commands.add_parser("plot", help="gate and effective advantage against the ratio")
    plot.add_argument("names", nargs="*", help="NAME or NAME:key=value,key=value or FILE.json")
    plot.add_argument("--all", action="store_true",
                      help="a gallery of every registered shape at its defaults")
    plot.add_argument("--out", type=Path, default=Path("shapes.png"),
                      help="image file, written exactly there (default: shapes.png)")
    from klip.shapes_cli import add_check_command

    add_check_command(shape_commands)
    for command in (listing, show, plot):  # `klip shapes list --plugin F.py` works too
        command.add_argument("--plugin", dest="plugins_after", type=Path, action="append", default=[],
                             help="a .py file registering shapes; repeatable")
    from klip.compare_cli import add_compare_commands
    from klip.study_cli import add_study_commands

    add_compare_commands(commands)
    add_study_commands(commands)
    return parser


def _eval(args: argparse.Namespace) -> int:
    from klip.algos.run import evaluate_run

    result = evaluate_run(args.run, args.episodes, args.video)
    if "unreadable_checkpoint" in result:
        print(f"klip: checkpoint {result['unreadable_checkpoint']} is unreadable; evaluated "
              f"{result['loaded_from']} instead", file=sys.stderr)
    print(f"deterministic evaluation: {result['return_mean']:.1f} +- {result['return_std']:.1f} "
          f"over {result['episodes']} episodes")
    if "video" in result:
        print(f"video ({result['video_frames']} frames) written to {result['video']}")
    return 0


def _parse_shape_spec(spec: str) -> Any:
    from klip.shapes import load_shape, make_shape, parse_param_assignments

    if spec.endswith(".json"):
        return load_shape(spec)
    name, _, params = spec.partition(":")
    assignments = [item for item in params.split(",") if item]
    return make_shape(name, **parse_param_assignments(assignments))


def print_shape_list(summaries: dict[str, str]) -> None:
    """One line per shape, the names in one column as wide as the longest."""
    width = max(map(len, summaries), default=0)
    for name, summary in summaries.items():
        print(f"{name:{width}s}  {summary}")


def _shapes(args: argparse.Namespace) -> int:
    if args.shapes_command == "check":
        from klip.shapes_cli import run_shapes_check

        return run_shapes_check(args)
    plugins = [*args.plugin, *args.plugins_after]
    if args.shapes_command == "list" and not plugins:
        from klip.shapes.catalog import shape_summaries  # no torch: answers at once

        print_shape_list(shape_summaries())
        return 0
    if args.shapes_command == "show" and not plugins:
        from klip.shapes.catalog import shape_declaration

        shape_declaration(args.name)  # an unknown name is refused before torch is imported
    from klip.shapes import available_shapes, get_shape_class, load_shapes_from_file

    for plugin in plugins:
        load_shapes_from_file(plugin)
    if args.shapes_command == "list":
        print_shape_list({name: (get_shape_class(name).__doc__ or "").strip().split("\n")[0]
                          for name in available_shapes()})
    elif args.shapes_command == "show":
        cls = get_shape_class(args.name)
        print(f"{args.name}: {cls.__module__}.{cls.__qualname__}")
        print((cls.__doc__ or "").strip())
        for key, spec in cls.params.items():
            search = f"search {spec.search}{' log' if spec.log else ''}" if spec.search else ""
            print(f"  {key} = {spec.default:g}  valid {spec.describe_range()}  {search}  {spec.help}")
        print(json.dumps(cls().to_dict()))
    elif args.all:
        from klip.algos.plots import plot_gallery

        path = plot_gallery([get_shape_class(name)() for name in available_shapes()], args.out)
        print(f"gallery written to {path}")
    else:
        from klip.algos.plots import plot_shapes

        if not args.names:
            raise ValueError("shapes plot: name at least one shape, or pass --all")
        path = plot_shapes([_parse_shape_spec(spec) for spec in args.names], args.out)
        print(f"plot written to {path}")
    return 0


# Exit codes: 2 bad input (options, files, user code), 3 training diverged, 130 Ctrl-C.
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already told in one line
        return int(exit_request.code or 0)
    debug = args.debug or "--debug" in argv
    try:
        if args.command == "train":
            from klip.train_cli import check_before_torch

            check_before_torch(args)  # input errors within a second, before the engine's imports
        if _trains(args):
            from klip.preload import preload

            preload()  # hours of training: one version of the code from start to end
        if args.command == "train":
            from klip.train_cli import run_train

            return run_train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "compare":
            from klip.compare_cli import run_compare

            return run_compare(args)
        if args.command == "study":
            from klip.study_cli import run_study_command

            return run_study_command(args, argv)
        return _shapes(args)
    except KeyboardInterrupt:  # outside the iterations: starting up or writing the outputs
        out = args.out if args.command == "train" else None
        resume = f"; continue with klip train --out {out} --resume" if out else ""
        print(f"klip: interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        return _report(error, debug)


def _trains(args: argparse.Namespace) -> bool:
    """Whether `klip` should preload before the command: `train`. (`compare`, not `--plan` nor
    `report`, and `study run` also train for hours; they preload themselves.)"""
    # `compare` and `study run` preload once their input has passed its checks (errors within a
    # second); `train` checks its input before (`klip.train_cli.check_before_torch`).
    return bool(args.command == "train")


def _report(error: Exception, debug: bool) -> int:
    """One `klip: error:` line (the traceback too under --debug) and the exit code."""
    # Their modules import torch; an error raised before they were imported is neither.
    train, divergence = sys.modules.get("klip.algos.train"), sys.modules.get("klip.algos.divergence")
    if train is not None and isinstance(error, train.RunInterrupted):
        print(f"klip: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not isinstance(error, (ValueError, KeyError, OSError, RuntimeError, FloatingPointError)):
        raise error
    if debug:
        traceback.print_exception(error)
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    # One line even when the message (a user's exception, a library's) has several.
    message = " | ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"klip: error: {message}", file=sys.stderr)
    diverged = divergence is not None and isinstance(error, divergence.TrainingDiverged)
    return EXIT_DIVERGED if diverged else EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
