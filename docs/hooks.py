"""MkDocs hooks: one site from the repository's own Markdown, links checked as the build's.

- The README is the site's front page (`index.md`), so the front door is written once.
- The results, benchmark and example write-ups (`results/**/*.md` outside run and trial
  directories, `benchmarks/README.md`, `examples/README.md`) and the images they show are
  published at their repository paths.
- Every page's links are written as they work on the repository (relative to the Markdown file);
  this hook resolves each one in the repository and rewrites it to the published page. A link to
  a repository file the site does not publish (a script, a JSON file, a directory) becomes its
  repository path in code; a link to nothing is left alone, so `mkdocs build --strict` fails on it.
- mkdocstrings reads the sources through `build/docs-src/klip`, which puts the root folders
  (`algos/`, `shapes/`, ...) where their installed names (`klip.algos`, ...) say, as the
  editable install maps them.
"""

from __future__ import annotations

import posixpath
import re
import shutil
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SUBPACKAGES = {"algos": "algos", "shapes": "shapes", "envs": "envs", "studies": "studies"}
PUBLISHED_IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)((?:\s+\"[^\"]*\")?)\)")
FENCE = re.compile(r"^(```|~~~)", re.M)

# site path (src_uri) -> repository path, for every page and image outside docs/
_EXTRA: dict[str, Path] = {}


def published_markdown() -> list[Path]:
    """The repository's write-ups that the site publishes besides docs/."""
    pages = [ROOT / "benchmarks" / "README.md", ROOT / "examples" / "README.md"]
    for path in sorted((ROOT / "results").rglob("*.md")):
        parts = path.relative_to(ROOT).parts
        if any(part == "runs" or part.startswith("trial-") for part in parts):
            continue
        pages.append(path)
    return pages


def stage_sources() -> Path:
    """`build/docs-src/klip`: the installed package layout for griffe, which reads the sources
    without importing them. `klip/*.py` are copied (griffe follows a linked file to its folder,
    which lacks the sub-packages); the sub-packages are symbolic links to their folders."""
    package = ROOT / "build" / "docs-src" / "klip"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for path in (ROOT / "klip").glob("*.py"):
        shutil.copyfile(path, package / path.name)
    for name, folder in SUBPACKAGES.items():
        (package / name).symlink_to(ROOT / folder, target_is_directory=True)
    return package.parent


def on_startup(command, dirty):
    # Before any plugin's on_config: mkdocstrings fixes its search paths there, and drops a
    # path that does not exist yet.
    stage_sources()


def _targets(markdown: str, source: Path) -> list[Path]:
    found = []
    for match in LINK.finditer(_outside_code(markdown)):
        target = match.group(3).split("#")[0]
        if target and "://" not in target and not target.startswith(("mailto:", "/")):
            found.append((source.parent / target).resolve())
    return found


def on_files(files: Files, config) -> Files:
    _EXTRA.clear()
    _EXTRA["index.md"] = ROOT / "README.md"
    pages = published_markdown()
    _EXTRA.update({page.relative_to(ROOT).as_posix(): page for page in pages})
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md")), *pages]:
        for target in _targets(page.read_text(), page):
            if (target.suffix.lower() in PUBLISHED_IMAGES and target.is_file() and ROOT in target.parents
                    and DOCS not in target.parents):
                _EXTRA.setdefault(target.relative_to(ROOT).as_posix(), target)
    for uri, path in _EXTRA.items():
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    _add_to_results_nav(config, [uri for uri in _EXTRA if uri.endswith(".md") and uri != "index.md"])
    return files


def _nav_paths(items) -> set[str]:
    found = set()
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, str):
            found.add(item)
        elif isinstance(item, dict):
            for value in item.values():
                found |= _nav_paths(value)
    return found


def _add_to_results_nav(config, uris: list[str]) -> None:
    """A published write-up that mkdocs.yml's nav does not list goes at the end of "Results",
    titled by its first heading: a new results page is reachable without editing mkdocs.yml."""
    nav = config.get("nav") or []
    listed = _nav_paths(nav)
    section = next((item["Results"] for item in nav if isinstance(item, dict) and "Results" in item), None)
    if section is None:
        return
    for uri in uris:
        if uri not in listed:
            heading = re.search(r"^#\s+(.+)$", _EXTRA[uri].read_text(), flags=re.M)
            section.append({(heading.group(1).strip() if heading else uri): uri})


def repository_path(src_uri: str) -> Path:
    """Where the page or file published at `src_uri` lives in the repository."""
    return _EXTRA.get(src_uri, DOCS / src_uri)


def site_uri(path: Path) -> str | None:
    """The site path of a repository file, or None where the site does not publish it."""
    for uri, source in _EXTRA.items():
        if source == path:
            return uri
    if DOCS in path.parents and path.is_file():
        return path.relative_to(DOCS).as_posix()
    if path in (DOCS, ROOT):
        return "index.md"
    return None


def _outside_code(markdown: str) -> str:
    """The Markdown with fenced code blocks blanked (same length), so links are not read in code."""
    pieces = FENCE.split(markdown)
    out, inside, i = [], False, 0
    while i < len(pieces):
        piece = pieces[i]
        if piece in ("```", "~~~"):
            inside = not inside
            out.append(piece)
        else:
            out.append(re.sub(r"[^\n]", " ", piece) if inside else piece)
        i += 1
    return "".join(out)


def rewrite_links(markdown: str, page_uri: str) -> str:
    """Rewrite repository-relative links to site links (see the module's docstring)."""
    source = repository_path(page_uri)
    masked = _outside_code(markdown)
    out, last = [], 0
    for match in LINK.finditer(masked):
        bang, text, target, title = match.groups()
        if "://" in target or target.startswith(("mailto:", "#", "/")):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (source.parent / path_part).resolve()
        uri = site_uri(resolved)
        if uri is not None:
            relative = posixpath.relpath(uri, posixpath.dirname(page_uri) or ".")
            new = f"{bang}[{text}]({relative}{'#' + anchor if anchor else ''}{title})"
        elif resolved.exists() and ROOT in resolved.parents:
            shown = resolved.relative_to(ROOT).as_posix() + ("/" if resolved.is_dir() else "")
            new = f"{text} (`{shown}`)" if text.strip("`") != shown.rstrip("/") else f"`{shown}`"
            if bang:
                new = f"`{shown}`"
        else:
            continue  # a link to nothing: MkDocs reports it, and --strict fails
        out.append(markdown[last:match.start()])
        out.append(new)
        last = match.end()
    out.append(markdown[last:])
    return "".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return rewrite_links(markdown, page.file.src_uri)
