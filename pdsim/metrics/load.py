"""Is an open-loop run overloaded? Offered vs served rate and the growth of the backlog.

An overloaded cluster (requests arrive faster than it serves them) has no steady state: its queue
grows for as long as requests keep arriving, and every latency figure then measures the length
of the trace, not the cluster. The test uses two signs that must agree, as either alone misleads
on a short trace: over the second half of the arrival window fewer requests finish than arrive
(served < 90% of offered), and the requests arriving in the last quarter of the window take more
than 1.5x as long end to end as those of the first quarter. A stable cluster still filling up
(latency longer than half the window) fails the first sign but not the second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pdsim.engine.request import NOT_ARRIVED

SERVED_SHARE = 0.9
LATENCY_GROWTH = 1.5
MIN_REQUESTS = 20


def arrived_not(df: pd.DataFrame) -> pd.Series:
    """The requests a run stopped by --max-sim-time never saw arrive."""
    return df.reason.astype(str).str.startswith(NOT_ARRIVED)


def load_report(df: pd.DataFrame, sim_end_s: float) -> dict:
    """Offered and served rates (req/s), the backlog (arrived, not yet finished) at the middle and
    the end of the arrival window, and the verdict; `overloaded` is None when there are too few
    requests or arrivals span no time to judge."""
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
    e2e = np.where(np.isnan(finish), sim_end_s, finish) - live.arrival_s.to_numpy(dtype=float)
    arrival = live.arrival_s.to_numpy(dtype=float)
    first = float(e2e[arrival <= t0 + window_s / 4].mean())
    last = float(e2e[arrival >= t1 - window_s / 4].mean())
    growth = last / first if first > 0 else float("inf")
    overloaded = bool(served < SERVED_SHARE * offered and growth > LATENCY_GROWTH)
    report.update({
        "offered_req_per_s_second_half": float(offered), "served_req_per_s_second_half": float(served),
        "backlog_at_mid_window": backlog(mid), "backlog_at_last_arrival": backlog(t1),
        "backlog_growth_req_per_s": (backlog(t1) - backlog(mid)) / half_s,
        "e2e_mean_s_first_quarter_arrivals": first, "e2e_mean_s_last_quarter_arrivals": last,
        "overloaded": overloaded,
    })
    report["verdict"] = _verdict(report, growth)
    return report


def _verdict(r: dict, growth: float) -> str:
    rates = (f"over the second half of the arrivals {r['offered_req_per_s_second_half']:,.3g} req/s offered, "
             f"{r['served_req_per_s_second_half']:,.3g} req/s served")
    if not r["overloaded"]:
        return f"not overloaded ({rates})"
    return (f"OVERLOADED: {rates}; the backlog (requests arrived, not finished) grew by "
            f"{r['backlog_growth_req_per_s']:,.3g} req/s, from {r['backlog_at_mid_window']:,} to "
            f"{r['backlog_at_last_arrival']:,}, and the last quarter of arrivals took {growth:,.1f}x as long end to "
            "end as the first. There is no steady state: the latencies below grow with the trace length.")
