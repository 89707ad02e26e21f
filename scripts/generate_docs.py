"""Write the generated docs (docs/options.md, docs/metrics.md) and the built-in shapes'
declarations (shapes/declared.py, read without torch) from their one source in code.

    .venv/bin/python scripts/generate_docs.py          # rewrite them
    .venv/bin/python scripts/generate_docs.py --check  # exit 1 if a committed file is stale
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def generated() -> dict[Path, Callable[[], str]]:
    from klip.algos.columns import metrics_markdown
    from klip.algos.config import options_markdown
    from klip.shapes.catalog import declarations_source

    return {DOCS / "options.md": options_markdown, DOCS / "metrics.md": metrics_markdown,
            ROOT / "shapes" / "declared.py": declarations_source}


def main(argv: list[str]) -> int:
    stale = []
    for path, render in generated().items():
        text = render()
        if "--check" in argv:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} is out of date; run scripts/generate_docs.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
