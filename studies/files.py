"""Writing a study's or a grid's files: whole or not at all, and a failure told in one line.

A full disk or a read-only directory raises an `OSError` whose text (`[Errno 28] No space left on
device`) names no file; `WriteError` names the path and the reason, and `write_text_atomically`
leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_REASONS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EDQUOT: "the disk quota is exceeded"}


class WriteError(RuntimeError):
    """A file or directory that could not be written, named in one line."""


def describe_os_error(error: OSError, path: str | Path | None = None) -> str:
    """`cannot write PATH: REASON` (a full disk, a read-only or forbidden directory), else
    `PATH: REASON`; the path from the error where it has one."""
    where = error.filename if error.filename is not None else path
    reason = _REASONS.get(error.errno or 0) or error.strerror or str(error) or type(error).__name__
    if (error.errno or 0) not in _REASONS:
        return f"{where}: {reason}" if where is not None else reason
    return f"cannot write {where}: {reason}" if where is not None else f"cannot write: {reason}"


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an `OSError` raised inside into a `WriteError` naming `path` (or the error's own file)."""
    try:
        yield
    except OSError as error:
        raise WriteError(describe_os_error(error, path)) from None


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in its directory and a rename."""
    path = Path(path)
    temporary: str | None = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                             delete=False) as file:
                temporary = file.name
                file.write(text)
            os.replace(temporary, path)
            temporary = None
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
    except OSError as error:  # named by the file meant, not by the temporary one
        raise WriteError(describe_os_error(OSError(error.errno, error.strerror), path)) from None
    return path


__all__ = ["WriteError", "describe_os_error", "write_text_atomically", "writing"]
