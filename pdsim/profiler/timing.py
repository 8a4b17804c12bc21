"""Timing one op: warm-up, repeats, median and spread.

On CUDA each repeat is bracketed by CUDA events (device time, no host jitter); on the CPU by
`time.perf_counter_ns` around a call that is synchronous anyway. On CUDA the GPU is first kept
busy by a spin kernel lasting longer than the host needs to launch the call: otherwise a small
op's events also time the host's launch latency (an RMSNorm of a few tokens reads 18 us instead
of a few), which an engine replaying CUDA graphs, as vLLM does, never pays. Each repeat calls the next of
several equivalent closures in turn: they hold different copies of the weights / KV cache so
that, as in a real forward pass where every layer has its own weights, the op does not find
its operands hot in the last-level cache from the previous repeat.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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

    def __init__(self, device: str, config: TimingConfig, *, spin: bool = True, graphs: bool = False) -> None:
        self.device = device
        self.config = config
        self.spin = spin  # False: time the call as launched, host launch gaps included
        # CUDA: time calls replayed from a CUDA graph, as vLLM replays its steps (kernels queued
        # by a graph start closer together than kernels launched one by one)
        self.graphs = graphs and device == "cuda"
        self.graph_failures: list[str] = []
        self._sleep_cycles = 0
        if device == "cuda":
            import torch

            self._torch = torch

    def time(self, variants: Sequence[Callable[[], object]]) -> Timing:
        """Median and spread of calling `variants` round-robin, after warm-up."""
        if not variants:
            raise ValueError("nothing to time")
        cfg = self.config
        warmup = max(cfg.warmup, 1)
        launch_s = 0.0
        for i in range(warmup):
            self._sync()
            t0 = time.perf_counter()
            variants[i % len(variants)]()
            if i >= warmup - 3:  # the first calls include one-off set-up (cuBLAS heuristics)
                launch_s = max(launch_s, time.perf_counter() - t0)
        self._sync()
        if self.spin:
            # twice the host launch time of the last warm-up calls, at least 100 us, at ~2 GHz
            # (a slower clock only makes the spin longer); capped so it cannot stall the profile
            self._sleep_cycles = int(2e9 * min(max(2 * launch_s, 100e-6), 50e-3))
        calls, replay = 1, None
        if self.graphs:
            calls, replay = self._capture(variants)
        samples: list[float] = []
        started = time.perf_counter()
        for i in range(cfg.repeats):
            fn = replay if replay is not None else variants[i % len(variants)]
            samples.append(self._time_once(fn) / calls)
            if i + 1 >= cfg.min_repeats and time.perf_counter() - started > cfg.max_seconds_per_point:
                break
        return summarize(samples)

    def _capture(self, variants: Sequence[Callable[[], object]]) -> tuple[int, Callable[[], object] | None]:
        """A CUDA graph of the variants called round-robin, enough times to run >= 200 us
        (so the replay's own launch is small beside it); (1, None) when capture fails."""
        torch = self._torch
        single_us = max(self._time_once(variants[0]), 1e-3)
        rounds = max(1, min(32, math.ceil(200.0 / single_us / len(variants))))
        calls = rounds * len(variants)

        def repeated() -> None:
            for i in range(calls):
                variants[i % len(variants)]()

        try:
            graph = capture_cuda_graph(repeated, warmup=variants)
        except RuntimeError as e:
            if isinstance(e, torch.OutOfMemoryError):  # no failure of the graph: the point does not fit
                raise
            self.graph_failures.append(str(e).splitlines()[0][:200])
            torch.cuda.synchronize()
            return 1, None
        return calls, graph.replay

    def _sync(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    def _time_once(self, fn: Callable[[], object]) -> float:
        if self.device == "cuda":
            torch = self._torch
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            if self._sleep_cycles:
                torch.cuda._sleep(self._sleep_cycles)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1000.0  # ms -> us
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1000.0


def capture_cuda_graph(fn: Callable[[], object], warmup: Sequence[Callable[[], object]]) -> torch.cuda.CUDAGraph:
    """`fn` captured in a CUDA graph, after the `warmup` calls on a side stream (as torch asks:
    library handles and workspaces are set up outside the capture)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in warmup:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


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
