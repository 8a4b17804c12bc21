"""Is an open-loop run overloaded? Offered vs served rate and the growth of the backlog.

An overloaded cluster (requests arrive faster than it serves them) has no steady state: its queue
grows for as long as requests keep arriving, and every latency figure then measures the length
of the trace, not the cluster. The test uses two signs that must agree, as either alone misleads
on a short trace: over the second half of the arrival window fewer requests finish than arrive
(served < 90% of offered), and the latency grows with the arrival time: the requests arriving in the
last quarter of the window take more than 1.5x as long end to end as those of the first quarter, or
wait longer for their first token by more than 5% of the window. A stable cluster still filling up
(latency longer than half the window) fails the first sign but not the second, and so does an overloaded
one on a trace shorter than its requests' lives: then the verdict is that the trace cannot tell. So is a latency that
grows while 90% or more of the offered rate is served: near capacity, or just over it (10% over serves 91%). The wait
is the sign where long decodes dilute the end-to-end growth (a queue for a capped number of running requests:
10 s more wait on 25 s of decoding is 1.4x); a queue growing at the 10% of the offered rate the first
sign allows adds 7.5% of the window between the quarters' middles.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pdsim.engine.request import NOT_ARRIVED

SERVED_SHARE = 0.9
LATENCY_GROWTH = 1.5
WAIT_GROWTH_SHARE = 0.05  # of the arrival window
MIN_REQUESTS = 20


def arrived_not(df: pd.DataFrame) -> pd.Series:
    """The requests a run stopped by --max-sim-time never saw arrive."""
    return df.reason.astype(str).str.startswith(NOT_ARRIVED)


def load_report(df: pd.DataFrame, sim_end_s: float) -> dict:
    """Offered and served rates (req/s), the backlog (arrived, not yet finished) at the middle and
    the end of the arrival window, and the verdict; `overloaded` is None when there are too few
    requests, arrivals span no time, or fewer are served than offered with no growth in latency (the
    trace is too short to tell)."""
    # A rejected request leaves at once and loads nothing; one a stopped run never saw arrive loads nothing yet.
    live = df[(df.status != "rejected") & ~arrived_not(df)]
    arrivals = np.sort(live.arrival_s.to_numpy(dtype=float))
    n = arrivals.size
    window_s = float(arrivals[-1] - arrivals[0]) if n else 0.0
    report: dict = {"offered_req_per_s": (n - 1) / window_s if window_s > 0 else None, "arrival_window_s": window_s,
                    "overloaded": None}
    if n < MIN_REQUESTS or window_s <= 0:
        report["verdict"] = "too few requests or no arrival window to judge the load"
        return report
    t0, t1 = float(arrivals[0]), float(arrivals[-1])
    mid = t0 + window_s / 2
    finish = live.finish_s.to_numpy(dtype=float)
    done = np.sort(finish[~np.isnan(finish)])

    def backlog(t: float) -> int:
        return int(np.searchsorted(arrivals, t, side="right") - np.searchsorted(done, t, side="right"))

    half_s = t1 - mid
    offered = (np.searchsorted(arrivals, t1, side="right") - np.searchsorted(arrivals, mid, side="right")) / half_s
    served = (np.searchsorted(done, t1, side="right") - np.searchsorted(done, mid, side="right")) / half_s
    # Unfinished requests count with the time they had spent when the run stopped (a lower bound).
    arrival = live.arrival_s.to_numpy(dtype=float)
    e2e = np.where(np.isnan(finish), sim_end_s, finish) - arrival
    # Requests without a first token waited at least until the run stopped.
    ttft = live.ttft_ms.to_numpy(dtype=float) / 1e3
    wait = np.where(np.isnan(ttft), sim_end_s - arrival, ttft)
    early, late = arrival <= t0 + window_s / 4, arrival >= t1 - window_s / 4
    first, last = float(e2e[early].mean()), float(e2e[late].mean())
    growth = last / first if first > 0 else float("inf")
    wait_growth_s = float(wait[late].mean() - wait[early].mean())
    latency_signs = []  # how the latency grew with the arrival time, where it did
    if growth > LATENCY_GROWTH:
        latency_signs.append(f"took {growth:,.2f}x as long end to end as the first")
    if wait_growth_s > WAIT_GROWTH_SHARE * window_s:
        latency_signs.append(f"waited {wait_growth_s:,.3g} s longer for its first token than the first")
    short_served = bool(served < SERVED_SHARE * offered)
    # Fewer served than offered with no growth in latency: a cluster still filling up, or one overloaded
    # on a trace too short for the growth to show; the trace cannot tell them apart.
    # Latency growing while 90% or more is served: stable near capacity with a noisy queue, or just over it, where a
    # queue grows slowly (10% over capacity serves 91%); the trace cannot tell either.
    overloaded = None if short_served != bool(latency_signs) else short_served
    report.update({
        "offered_req_per_s_second_half": float(offered), "served_req_per_s_second_half": float(served),
        "backlog_at_mid_window": backlog(mid), "backlog_at_last_arrival": backlog(t1),
        "backlog_growth_req_per_s": (backlog(t1) - backlog(mid)) / half_s,
        "e2e_mean_s_first_quarter_arrivals": first, "e2e_mean_s_last_quarter_arrivals": last,
        "ttft_mean_s_growth_first_to_last_quarter": wait_growth_s,
        "overloaded": overloaded,
    })
    report["verdict"] = _verdict(report, latency_signs)
    return report


def _verdict(r: dict, latency_signs: list[str]) -> str:
    rates = (f"over the second half of the arrivals {r['offered_req_per_s_second_half']:,.3g} req/s offered, "
             f"{r['served_req_per_s_second_half']:,.3g} req/s served")
    if r["overloaded"] is None and latency_signs:
        return (f"cannot tell whether overloaded ({rates}, but the last quarter of arrivals "
                f"{' and '.join(latency_signs)}): a cluster near its capacity and one just over it, whose queue grows "
                "slowly, look alike on a trace this short; a longer one, or `pdsim search`, tells them apart")
    if r["overloaded"] is None:
        return (f"cannot tell whether overloaded ({rates}, but latency did not grow with the arrival time; requests "
                f"took {r['e2e_mean_s_first_quarter_arrivals']:,.3g} s end to end against an arrival window of "
                f"{r['arrival_window_s']:,.3g} s): a cluster still filling up and one that cannot keep up look alike "
                "on a trace this short; a longer one tells them apart")
    if not r["overloaded"]:
        return f"not overloaded ({rates})"
    return (f"OVERLOADED: {rates}; the backlog (requests arrived, not finished) grew by "
            f"{r['backlog_growth_req_per_s']:,.3g} req/s, from {r['backlog_at_mid_window']:,} to "
            f"{r['backlog_at_last_arrival']:,}, and the last quarter of arrivals {' and '.join(latency_signs)}. "
            "There is no steady state: the latencies below grow with the trace length.")
