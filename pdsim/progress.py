"""A one-line progress bar on stderr, shown only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self._started = time.perf_counter()
        self._last_draw = 0.0

    def update(self, done: int, total: int, extra: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.2 and done < total:
            return
        self._last_draw = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        elapsed = now - self._started
        self.stream.write(f"\r\033[K{self.label} [{bar:<30}] {done}/{total} {extra} {elapsed:.1f}s")
        self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def status(self, text: str) -> None:
        """What is being done where there is nothing to count (a large run's reports take seconds): a line that
        the next update or close() clears."""
        if self.enabled:
            self.stream.write(f"\r\033[K{text}")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A log line that must not be overwritten by the bar."""
        if self.enabled:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
