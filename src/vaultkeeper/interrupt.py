"""SIGTERM handled like Ctrl-C, so cleanup code runs however a run is stopped."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (systemd's stop, cron's ``timeout``, a CI) raises
    KeyboardInterrupt, so ``finally`` blocks and context managers unwind: scratch clusters
    stop, temp dirs go, failed runs are recorded. Outside the main thread it does nothing.

    SIGINT is set to raise KeyboardInterrupt too: a process started in the background of a
    shell script inherits SIGINT *ignored*, and Python then never installs its own handler, so
    an operator's Ctrl-C (or `kill -INT`) would do nothing at all.
    """

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
