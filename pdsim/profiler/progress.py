"""Progress line on stderr: which op, grid points left, ETA.

Grid points differ in cost by orders of magnitude (a 1-token matmul vs an 8192-token one), so
the ETA divides the elapsed time by the estimated work done, not by the points done. The work
estimate of a point is rough (FLOPs plus a fixed per-call cost); it only has to rank points.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_FIXED_COST_FLOPS = 2e6  # ~ the dispatch/launch cost of one call, expressed in FLOPs
_REDRAW_S = 0.1


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    def __init__(
        self, total_points: int, total_work: float, enabled: bool, stream: TextIO | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.points_left = total_points
        self.work_left = total_work
        self.work_done = 0.0
        self.started = time.perf_counter()
        self._last_draw = 0.0

    @staticmethod
    def work(flops: float) -> float:
        return flops + _FIXED_COST_FLOPS

    def extend(self, points: int, work: float) -> None:
        """More points to measure than announced (re-measured outliers)."""
        self.points_left += points
        self.work_left += work

    def restart(self, points: int, work: float) -> None:
        """What is left once the grid was made smaller and the measurement goes on over it."""
        self.points_left = points
        self.work_left = work

    def advance(self, label: str, work: float) -> None:
        """One grid point (of estimated `work`) was measured."""
        self.points_left -= 1
        self.work_left = max(0.0, self.work_left - work)
        self.work_done += work
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw >= _REDRAW_S or self.points_left == 0):
            self._last_draw = now
            elapsed = now - self.started
            eta = elapsed * self.work_left / self.work_done if self.work_done else 0.0
            line = (
                f"profiling {label:<40.40} {self.points_left:5d} points left  "
                f"elapsed {format_duration(elapsed)}  ETA {format_duration(eta)}"
            )
            self.stream.write("\r\033[K" + line)
            self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r\033[K" + text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def progress_enabled(quiet: bool, stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return not quiet and hasattr(stream, "isatty") and stream.isatty()
