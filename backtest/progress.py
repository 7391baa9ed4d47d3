"""A progress bar on stderr over every input record of every run of a backtest.

On a terminal it redraws one line; otherwise (a log file, CI) it writes one line per
finished run, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, runs: int, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.runs = runs
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.run_no = 0
        self.label = ""
        self.t0 = time.monotonic()
        self.run_t0 = self.t0
        self._last_draw = 0.0

    def start_run(self, label: str) -> None:
        self.run_no += 1
        self.label = label
        self.run_t0 = time.monotonic()
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def end_run(self) -> None:
        if self.tty:
            self._draw(force=True)
        else:
            secs = time.monotonic() - self.run_t0
            self.stream.write(
                f"run {self.run_no}/{self.runs} {self.label}: done in {secs:.1f} s "
                f"({min(self.done / self.total, 1.0):.0%} of all input records)\n"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * WIDTH)
        elapsed = now - self.t0
        eta = elapsed / frac - elapsed if frac > 0.001 else 0.0
        self.stream.write(
            f"\r[{'#' * filled}{'-' * (WIDTH - filled)}] {frac:4.0%} "
            f"run {self.run_no}/{self.runs} {self.label}  "
            f"{_clock(elapsed)} elapsed, ~{_clock(eta)} left\x1b[K"
        )
        self.stream.flush()
