"""Timing one op: warm-up, repeats, median and spread.

On CUDA each repeat is bracketed by CUDA events (device time, no host jitter); on the CPU by
`time.perf_counter_ns` around a call that is synchronous anyway. Each repeat calls the next of
several equivalent closures in turn: they hold different copies of the weights / KV cache so
that, as in a real forward pass where every layer has its own weights, the op does not find
its operands hot in the last-level cache from the previous repeat.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TIMINGS_FILE = "timings.csv"  # per-point median/p10/p90/repeats, next to the profile tables


@dataclass(frozen=True)
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    repeats: int
    runs: int = 1  # how many times the point was measured (passes, re-measures); the fastest is kept

    @property
    def spread_rel(self) -> float:
        """(p90 - p10) / median: the relative width of the middle 80% of the repeats."""
        return (self.p90_us - self.p10_us) / self.median_us if self.median_us > 0 else 0.0


@dataclass(frozen=True)
class TimingConfig:
    warmup: int
    repeats: int
    # Stop repeating an expensive point once this much time went into it (keeps big CPU grid
    # points from dominating the run); at least `min_repeats` are always taken.
    max_seconds_per_point: float = 2.0
    min_repeats: int = 3


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_us: Sequence[float]) -> Timing:
    values = sorted(samples_us)
    return Timing(
        median_us=statistics.median(values),
        p10_us=_quantile(values, 0.10),
        p90_us=_quantile(values, 0.90),
        repeats=len(values),
    )


class Timer:
    """Times closures on one device ("cpu" or "cuda")."""

    def __init__(self, device: str, config: TimingConfig) -> None:
        self.device = device
        self.config = config
        if device == "cuda":
            import torch

            self._torch = torch

    def time(self, variants: Sequence[Callable[[], object]]) -> Timing:
        """Median and spread of calling `variants` round-robin, after warm-up."""
        if not variants:
            raise ValueError("nothing to time")
        cfg = self.config
        for i in range(max(cfg.warmup, 1)):
            variants[i % len(variants)]()
        self._sync()
        samples: list[float] = []
        started = time.perf_counter()
        for i in range(cfg.repeats):
            samples.append(self._time_once(variants[i % len(variants)]))
            if i + 1 >= cfg.min_repeats and time.perf_counter() - started > cfg.max_seconds_per_point:
                break
        return summarize(samples)

    def _sync(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    def _time_once(self, fn: Callable[[], object]) -> float:
        if self.device == "cuda":
            torch = self._torch
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1000.0  # ms -> us
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1000.0


def write_timings(path: Path, timings: Sequence[tuple[str, str, tuple[int, ...], Timing]]) -> None:
    """(table, op, grid key, timing) per point; the profile reader ignores this file."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "op", "x", "y", "median_us", "p10_us", "p90_us", "spread_rel", "repeats", "runs"])
        for table, op, key, t in timings:
            x, y = key[0], key[1] if len(key) > 1 else ""
            w.writerow(
                [
                    table,
                    op,
                    x,
                    y,
                    f"{t.median_us:.6g}",
                    f"{t.p10_us:.6g}",
                    f"{t.p90_us:.6g}",
                    f"{t.spread_rel:.4f}",
                    t.repeats,
                    t.runs,
                ]
            )


def iter_timings(profile_dir: Path) -> Iterator[dict[str, str]]:
    """Rows of a profile's timings.csv (none when it has none, e.g. an estimated profile)."""
    path = Path(profile_dir) / TIMINGS_FILE
    if path.is_file():
        with path.open(newline="") as f:
            yield from csv.DictReader(f)
