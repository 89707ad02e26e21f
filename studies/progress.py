"""The one progress reporter of studies and comparisons.

`status()` says where the work stands, `(done, summary)`; `show(text)` names what runs right now.
On a terminal a study shows a tqdm bar (done / total, then `summary | text`); a comparison, whose
output is usually a log, prints its summary as a line whenever it changes, every `interval`
seconds. A status that cannot be read (a busy SQLite file) never stops the work.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable
from typing import TextIO

Status = Callable[[], tuple[int, str]]


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A tqdm bar (`bar=True`) or printed lines, from `status`; as a context manager, a thread
    refreshes it every `interval` seconds."""

    def __init__(self, status: Status, *, total: int, desc: str = "", bar: bool = False,
                 enabled: bool = True, stream: TextIO | None = None, interval: float = 30.0) -> None:
        self.status, self.total, self.interval = status, total, interval
        self.stream = stream or sys.stderr
        self.summary, self.current, self.last_line = "", "", ""
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="trial", disable=not enabled, dynamic_ncols=True, desc=desc,
                            file=self.stream)
        self.enabled = enabled
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def refresh(self, force: bool = False) -> None:
        """Ask `status` again and show it."""
        try:
            done, self.summary = self.status()
        except Exception as error:  # a busy SQLite file must not stop the work
            done, self.summary = -1, f"progress unavailable ({type(error).__name__})"
        if self.bar is not None:
            if done >= 0:
                self.bar.n = min(done, self.total)
            self._render()
        elif self.enabled and (force or self.summary != self.last_line):
            print(self.summary, file=self.stream, flush=True)
            self.last_line = self.summary

    def show(self, text: str) -> None:
        """What runs right now (shown on the bar; a line reporter shows its summary only)."""
        self.current = text
        if self.bar is not None:
            self._render()

    def _render(self) -> None:
        assert self.bar is not None
        self.bar.set_postfix_str(f"{self.summary} | {self.current}", refresh=True)

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        self.refresh(force=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()
        self.refresh(force=True)
        self.close()


__all__ = ["Progress", "format_duration"]
