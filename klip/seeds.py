"""`--seeds`: one spelling for every command (`train`, `study run`, `study reference`, `compare`).

Seeds are always named, never counted: `0-4` is seeds 0..4 (five seeds), `0,3,5` a list, and
the two mix (`0-3,8`). A bare number above 0 is refused: `--seeds 5` read as "five seeds" by
one command and as "seed 5" by another was the ambiguity this spelling removes. `0` alone can
only mean seed 0, so it is accepted.
"""

from __future__ import annotations

import re

_SEED_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
SEED_LIMIT = 2**32 - 1  # numpy's and gymnasium's seeds are 32-bit
SEEDS_HELP = "seeds as a range or list: 0-4 (five seeds), 0,3,5, or both (0-3,8)"


class SeedsError(ValueError):
    """A `--seeds` value that names no seeds unambiguously, told in one line."""


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    """`"0-4"` -> [0, 1, 2, 3, 4]; `"0,3,5"` -> [0, 3, 5]; `"0-3,8"` -> [0, 1, 2, 3, 8]."""
    text = str(text)
    if not text.strip():
        raise SeedsError(f"{option} is empty; give a range or list such as 0-4 or 0,3,5")
    stripped = text.strip()
    if stripped.isdigit() and int(stripped) > 0:
        n = int(stripped)
        raise SeedsError(f"{option} {stripped} is ambiguous: write {option} 0-{n - 1} for {n} seeds "
                         f"(0..{n - 1}) or {option} {n}-{n} for seed {n} alone")
    seeds: list[int] = []
    for item in text.split(","):
        match = _SEED_ITEM.match(item)
        if match is None:
            raise SeedsError(f"{option} {text!r}: {item.strip()!r} is not a seed or a range like 0-4 "
                             "(non-negative integers)")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise SeedsError(f"{option} {text!r}: range {item.strip()!r} is empty")
        if last > SEED_LIMIT:
            raise SeedsError(f"{option} {text!r}: seed {last} is above {SEED_LIMIT} (seeds are 32-bit)")
        seeds.extend(range(first, last + 1))
    duplicates = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if duplicates:
        raise SeedsError(f"{option} {text!r} names seed(s) {duplicates} more than once")
    return seeds


def format_seeds(seeds: list[int]) -> str:
    """The shortest `--seeds` text that `parse_seeds` reads back as `seeds` (ranges where consecutive)."""
    if not seeds:
        raise SeedsError("no seeds to format")
    parts: list[str] = []
    start = previous = seeds[0]
    for seed in [*seeds[1:], None]:
        if seed is not None and seed == previous + 1:
            previous = seed
            continue
        parts.append(f"{start}-{previous}" if previous != start else f"{start}")
        if seed is not None:
            start = previous = seed
    if len(parts) == 1 and parts[0].isdigit() and int(parts[0]) > 0:
        return f"{parts[0]}-{parts[0]}"  # a bare number above 0 would be refused as ambiguous
    return ",".join(parts)


__all__ = ["SEEDS_HELP", "SeedsError", "format_seeds", "parse_seeds"]
