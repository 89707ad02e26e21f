"""`klip compare --reuse DIR`: a grid's cells already trained in another grid are linked, not retrained.

A cell is the same run wherever it was trained when its task, seed, entry options, step budget
and shared options are the same (every agent of a population is bitwise its single run, so a
cell trained alone serves a `--seeds-together` grid too). Such a cell of the other grid, found
finished and sound by `check_cell`, becomes a relative symbolic link in this grid's `runs/`, and
`events.jsonl` records where it came from; the workers then find it done. Nothing is copied and
nothing in the other grid is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from klip.studies.cells import check_cell
from klip.studies.entries import CompareError
from klip.studies.grid import EVENTS_FILE, RUNS_DIR, Cell, GridSpec, differences, load_grid, log_event


def link_reused_cells(spec: GridSpec, out: Path, sources: list[Path]) -> int:
    """Link every cell of `spec` missing under `out` that a grid in `sources` holds finished;
    return how many were linked."""
    linked = 0
    for source in sources:
        held = _source_grid(source, spec)
        entries = {_options_key(entry.options): entry for entry in held.entries}
        for cell in spec.cells():
            target = spec.cell_dir(out, cell)
            theirs = entries.get(_options_key(cell.entry.options))
            if (target.exists() or target.is_symlink() or theirs is None or cell.task not in held.tasks
                    or cell.seed not in held.seeds):
                continue
            source_cell = Cell(theirs, cell.task, cell.seed)
            if check_cell(held, source, source_cell, write_record=False).status != "done":
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            relative = os.path.relpath(held.cell_dir(source, source_cell).resolve(), target.parent.resolve())
            target.symlink_to(relative, target_is_directory=True)
            grid = os.path.relpath(source.resolve(), out.resolve())
            log_event(out, {"event": "reused", "cell": cell.key, "from": relative, "grid": grid})
            linked += 1
    return linked


def _source_grid(source: Path, spec: GridSpec) -> GridSpec:
    try:
        held = load_grid(source)
    except CompareError as error:
        raise CompareError(f"--reuse {source}: {error}") from None
    held.root = source
    changed = ["steps"] if held.steps != spec.steps else []
    changed += differences(held.base, spec.base)
    if changed:
        raise CompareError(f"--reuse {source}: its cells were trained with other settings "
                           f"(differs in: {', '.join(changed)})")
    return held


def _options_key(options: dict[str, object]) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def reused_grids(out: Path) -> dict[str, int]:
    """The grids `out` linked cells from (relative to `out`), with how many cells each."""
    events = out / EVENTS_FILE
    if not events.is_file():
        return {}
    counts: dict[str, int] = {}
    for line in events.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") != "reused":
            continue
        grid = event.get("grid")
        if grid is None:  # logged before events named the grid: its cell's link says where
            cell = Path(os.path.normpath(out / RUNS_DIR / Path(event["cell"]).parent / event["from"]))
            grid = os.path.relpath(cell.parents[3], out)
        counts[grid] = counts.get(grid, 0) + 1
    return counts


__all__ = ["link_reused_cells", "reused_grids"]
