"""Steady state for sweep and search runs: how long each run lasts, which requests are scored, and
whether the cluster kept up with the offered rate.

The rule (docs/sweep.md):
- L, the longest request life the SLOs allow: TTFT SLO + (longest output in the dataset - 1) x TPOT SLO.
- Arrivals span at least max(--min-duration-s, DURATION_LIVES x L), so that the longest request
  lives several times over within a run; a shorter run measures the ramp-up (the cluster filling
  its batches), not the sustained rate.
- Requests arriving in the first L seconds (warm-up: batches still filling) and in the last L
  seconds (drain: the load falling away) are simulated but not scored.
- A run is unstable when its queue keeps growing: the number of requests in the system rose over
  the scored window by more than BACKLOG_TOLERANCE of the window's arrivals (the served rate is
  clearly below the offered rate) and by more than chance (3 sqrt of the two counts), or requests
  are still unfinished when the simulation stops (max(slack, 2 L) after the last arrival). An
  unstable run never meets an SLO target, whatever its attainment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pdsim.workload.trace import TraceRequest

if TYPE_CHECKING:
    import pandas as pd

DURATION_LIVES = 3.0
# Of the window's arrivals: a queue growing by more than 2% of the offered rate is overload, not noise; under
# search's 5% bisection resolution, so a reported goodput is a rate the configuration served (docs/sweep.md).
BACKLOG_TOLERANCE = 0.02


def longest_life_s(trace: Sequence[TraceRequest], ttft_slo_ms: float, tpot_slo_ms: float) -> float:
    """The life of the longest request of the dataset when it just meets both SLOs."""
    longest_output = max((r.output_toks for r in trace), default=1)
    return (ttft_slo_ms + max(longest_output - 1, 0) * tpot_slo_ms) / 1e3


def run_duration_s(min_duration_s: float, life_s: float) -> float:
    return max(min_duration_s, DURATION_LIVES * life_s)


@dataclass(frozen=True)
class Window:
    """The arrival times whose requests are scored: [start_s, end_s]."""

    start_s: float
    end_s: float

    @classmethod
    def of(cls, arrivals_s: np.ndarray, warmup_s: float) -> Window:
        first, last = float(arrivals_s.min()), float(arrivals_s.max())
        if last - first <= 2 * warmup_s:
            return cls(first, last)  # too short to leave anything out: every request is scored
        return cls(first + warmup_s, last - warmup_s)

    def holds(self, arrivals_s: np.ndarray) -> np.ndarray:
        return (arrivals_s >= self.start_s) & (arrivals_s <= self.end_s)


def in_system(arrivals_s: np.ndarray, finishes_s: np.ndarray, t: float) -> int:
    """Requests that arrived by t and had not finished by t (NaN finish: never finished)."""
    return int((arrivals_s <= t).sum() - (finishes_s <= t).sum())


def within_chance(row: dict) -> bool:
    """A run kept as stable though it served clearly less than the offered rate (its queue growth under
    the chance allowance)."""
    offered, served = float(row.get("offered_req_s", math.nan)), float(row.get("served_req_s", math.nan))
    return bool(row.get("stable", 1)) and served < (1 - BACKLOG_TOLERANCE) * offered


def stability(df: pd.DataFrame, window: Window) -> dict[str, object]:
    """offered and served rates over the window, backlog growth, and whether the run kept up.
    df: requests_frame of the run (rejected requests never queue and are left out)."""
    admitted = df[df.status != "rejected"]
    arrivals = admitted.arrival_s.to_numpy(dtype=float)
    finishes = admitted.finish_s.to_numpy(dtype=float)
    span_s = window.end_s - window.start_s
    arrived = int(((arrivals > window.start_s) & (arrivals <= window.end_s)).sum())
    before = in_system(arrivals, finishes, window.start_s)
    after = in_system(arrivals, finishes, window.end_s)
    growth = after - before
    reasons = []
    if arrived and growth > BACKLOG_TOLERANCE * arrived and growth > 3 * math.sqrt(before + after):
        reasons.append(f"queue grew by {growth} requests over the scored window (served "
                       f"{(arrived - growth) / arrived:.0%} of the offered rate)")
    unfinished = int((df.status == "unfinished").sum())
    if unfinished:
        reasons.append(f"{unfinished} requests unfinished at the end")
    return {
        "offered_req_s": arrived / span_s if span_s > 0 else math.nan,
        "served_req_s": (arrived - growth) / span_s if span_s > 0 else math.nan,
        "backlog_growth_requests": growth,
        "stable": int(not reasons),
        "unstable_reason": "; ".join(reasons),
    }
