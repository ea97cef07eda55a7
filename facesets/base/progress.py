"""Progress on long work: a one-line bar with rate and ETA on a terminal, silence elsewhere.

The line never runs past the terminal's width (the bar shrinks first, then the line is cut), so a narrow pane
does not wrap it on every redraw. The rate, and the ETA from it, are those of the last :data:`WINDOW` seconds:
work that speeds up or slows down (cached files first, then new ones) gets an ETA that follows it.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

WINDOW = 30.0  # seconds of recent work the rate is measured over
BAR = 24  # widest bar


class Progress:
    def __init__(
        self, total: int, label: str, unit: str = "img", stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def grow(self, count: int) -> None:
        """Raise the total (work whose size is learnt as it goes, like a paged listing)."""
        self.total += count

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._last_draw >= 0.25 or self.done >= self.total):
            self._last_draw = now
            self._draw(now)

    def rate(self, now: float) -> float:
        """Units per second over the last :data:`WINDOW` seconds (since the start, when younger)."""
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[0][0] > WINDOW:
            self._samples.popleft()
        then, done_then = self._samples[0]
        return (self.done - done_then) / max(now - then, 1e-9)

    def line(self, now: float, columns: int) -> str:
        rate = self.rate(now)
        remaining = (self.total - self.done) / rate if rate > 0 else 0.0
        counts = f"{self.done}/{self.total} {rate:.1f} {self.unit}/s ETA {_clock(remaining)}"
        room = columns - 1 - len(self.label) - len(counts) - 4  # spaces and brackets
        width = min(BAR, room)
        if width < 4:
            return f"{self.label} {counts}"[: columns - 1]
        filled = int(width * self.done / self.total) if self.total else width
        return f"{self.label} [{'#' * filled}{'-' * (width - filled)}] {counts}"

    def _draw(self, now: float) -> None:
        columns = shutil.get_terminal_size((80, 24)).columns
        text = self.line(now, columns)
        self.stream.write("\r" + text.ljust(columns - 1))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


ProgressFactory = Callable[[int], Progress]  # what every stage takes: the bar for a total (None: no bar)
