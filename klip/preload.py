"""Import every klip module when a long job starts, so that it runs one version of the code.

klip imports many of its modules where they are first used, which keeps `klip --help` and short
commands quick. A job that runs for hours would then import some of them hours later, from
whatever the files hold by then: edit klip while a grid or a study runs (researchers do) and a
process combines two versions of the code. Seen here: a comparison worker finished a 1M-step run
and then failed to record it, importing a half-edited module. `klip train`, `klip compare` and
`klip study run`, and their worker processes, call `preload()` first.
"""

from __future__ import annotations

import importlib
import pkgutil

# The installed namespace: klip's own modules and the four folders mapped into it.
PACKAGES = ("klip", "klip.algos", "klip.envs", "klip.shapes", "klip.studies")


def preload() -> list[str]:
    """Import every module of klip's packages (not `klip.__main__`); return their names."""
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(module.__path__, f"{package}."):
            if info.ispkg or info.name.endswith(".__main__"):
                continue
            importlib.import_module(info.name)
            names.append(info.name)
    return names


__all__ = ["PACKAGES", "preload"]
