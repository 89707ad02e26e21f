"""One writer per run directory: an exclusive `flock` held for the life of a run.

The kernel releases the lock when its process dies, however it dies, so a lock file
left by a dead process is simply taken over. The holder writes its PID and host into
the file, which a refused process reports. On Linux, NFS forwards `flock` to the server,
so machines sharing a file system also exclude each other.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".klip.lock"


class RunLocked(RuntimeError):
    """Another process holds the run directory."""


class RunLock:
    """`with RunLock(out):` holds `<out>/.klip.lock`; raises RunLocked if another process has it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None
        self.created = False

    def acquire(self) -> None:
        self.created = not self.path.exists()
        # No O_TRUNC: opening must not erase the holder's PID before we know we hold the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            self.created = False  # the holder's file, not ours to remove
            raise RunLocked(
                f"{self.path.parent} is in use by another klip run ({holder}); wait for it to end "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self, remove: bool = False) -> None:
        if self._fd is None:
            return
        if remove:  # only while still holding it, so no other holder loses its file
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


__all__ = ["LOCK_FILE", "RunLock", "RunLocked"]
