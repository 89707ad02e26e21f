"""The one worker layer of studies and comparisons: local worker processes and what each sets up.

A worker is a spawned process (a fresh interpreter: no state shared with the parent but what its
arguments carry) that imports all of klip first (`preload`: one version of the code however long
it runs), trains with one torch thread, and dies with the `klip` process that started it, rather
than train on unseen. Ctrl-C reaches every process of the group: each worker finishes its running
iteration, records what it must, and exits quietly; the parent says what happened, once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from typing import Any


def die_with_parent() -> None:
    """Linux: this process is killed when its parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def set_up_worker() -> None:
    """What every worker process does first."""
    import torch

    from klip.preload import preload

    die_with_parent()
    os.environ["OMP_NUM_THREADS"] = "1"
    preload()  # this worker runs the code as it was when it started, however long it runs
    torch.set_num_threads(1)


def run_workers(target: Callable[..., Any], arguments: Sequence[tuple[Any, ...]],
                while_running: Callable[[], None] | None = None, poll: float = 2.0) -> list[int]:
    """Start one spawned process per `arguments` item running `target(*item)`; wait for all of
    them (calling `while_running` every `poll` seconds); return their exit codes.

    A Ctrl-C while waiting lets the workers finish what the interrupt asked of them, then raises
    KeyboardInterrupt here."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=tuple(item), daemon=False) for item in arguments]
    for process in processes:
        process.start()
    try:
        while any(process.is_alive() for process in processes):
            if while_running is not None:
                while_running()
            time.sleep(poll)
    except KeyboardInterrupt:
        for process in processes:
            with contextlib.suppress(KeyboardInterrupt):
                process.join()
        raise
    return [process.exitcode or 0 for process in processes]


__all__ = ["die_with_parent", "run_workers", "set_up_worker"]
