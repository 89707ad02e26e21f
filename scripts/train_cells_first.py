"""Train some cells of an existing `klip compare` grid ahead of its queue, one after another.

    .venv/bin/python scripts/train_cells_first.py results/paper-table \
        Hopper-v4/kl_fixed/s2 Hopper-v4/kl_fixed/s3 ...

Each cell goes through the grid's own `run_job` (checked, quarantined if corrupt, resumed if
partial, trained, recorded), so a worker that later pops its job finds it done and moves on.
Only the order changes: use it when one task's cells are wanted before the grid's seed-major
order reaches them. Each cell's run directory is locked while it trains, so a worker that
reaches the same cell meanwhile fails that job instead of training it twice (the grid's
next run trains it again if it is still missing).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from klip.algos.train import RunInterrupted
from klip.preload import preload
from klip.studies.compare import check_cell, load_grid, run_job, train_cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the grid directory")
    parser.add_argument("cells", nargs="+", help="cell keys, TASK/ENTRY/sSEED")
    args = parser.parse_args(argv)
    preload()  # one version of klip for the hours this runs
    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "egl")
    spec = load_grid(args.out)
    cells = {cell.key: cell for cell in spec.cells()}
    unknown = [key for key in args.cells if key not in cells]
    if unknown:
        print(f"not cells of this grid: {', '.join(unknown)}", file=sys.stderr)
        return 2
    for key in args.cells:
        if check_cell(spec, args.out, cells[key], write_record=False).status == "done":
            print(f"{key}: done already", flush=True)
            continue
        try:
            run_job(spec, args.out, (cells[key],), train_cells, lambda line: print(line, flush=True))
        except (RunInterrupted, KeyboardInterrupt):
            print(f"{key}: interrupted; it continues from its checkpoint on the next run", flush=True)
            return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
