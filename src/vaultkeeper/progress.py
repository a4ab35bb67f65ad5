"""Progress on a terminal for long work; silent when stderr is not a TTY (cron, CI, --json)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


class Progress:
    """Callable with the running byte count; redraws at most 5 times a second."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self._last = 0.0
        self.done = 0

    def __call__(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-6)
        pct = f" ~{min(99, 100 * self.done // self.total)}%" if self.total else ""
        self.stream.write(f"\r  {self.label}: {_mib(self.done)}{pct} at {_mib(rate)}/s   ")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
