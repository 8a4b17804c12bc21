"""Goodput search: for each configuration, the highest request rate at which the SLO attainment
target holds, found by bracketing then bisection on the rate.

Goodput follows DistServe: the maximum request rate at which at least `attainment` of the requests
meet their SLOs. Two readings of "meet their SLOs" are offered:
  joint    -- a request counts only if it meets both the TTFT and the TPOT SLO (the default, and
              DistServe's end-to-end attainment);
  separate -- the TTFT attainment and the TPOT attainment must each reach the target, counted
              over all requests independently (looser: different requests may miss each).
Attainment is assumed to fall as the rate rises, which is what makes bisection valid. A configuration
that misses the target even when load no longer matters misses it at any rate: its search stops there
instead of halving towards zero. Where a run holds the dataset's requests once, the requests that ran
alone tell: their lives overlapped no other's, so their latency is a lone request's, which no rate
improves on (lone_requests_miss). Elsewhere (a dataset repeated to fill the run, prefix ids, separate
SLO attainment) two halvings in a row that change neither its attainment nor its p90 latencies do.

All configurations advance in lockstep, one probe each per round, so one round is one batch of
independent runs for the executor; the sequence of probed rates depends only on the results, so
the same seed gives the same probes and the same answer on any executor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pdsim.sweep.expand import Variant
from pdsim.sweep.rows import MEMORY_FIELDS
from pdsim.sweep.runner import Executor, Job, RowWriter, normalize
from pdsim.sweep.steady import BACKLOG_TOLERANCE, within_chance

SLO_MODES = ("joint", "separate")
# A passing probe whose queue growth stayed under the chance bound while it served clearly less than offered
# (steady.within_chance), or one that met the target but whose growth just passed that bound, is re-run with
# arrivals this many times as long: growth that is real grows with the scored window (3 to 10 longest lives
# here), the chance bound only with the root of the counts.
LONGER_X = 4


def meets(row: dict[str, Any], attainment: float, mode: str) -> bool:
    """An unstable run (its queue kept growing: steady.stability) never meets the target."""
    if not row.get("stable", 1):
        return False
    if mode == "joint":
        return row["attain_both"] >= attainment
    return row["attain_ttft"] >= attainment and row["attain_tpot"] >= attainment


def unstable_by_growth_alone(row: dict[str, Any], attainment: float, mode: str) -> bool:
    """A run that meets the target but was flagged unstable for a small queue growth alone (it served at least
    1 - 3 x BACKLOG_TOLERANCE of the offered rate and left no request unfinished): over a default-length window
    of a small cluster such growth can be chance, as a pass within chance can be overload, so a longer run
    decides (docs/sweep.md)."""
    offered, served = float(row.get("offered_req_s", math.nan)), float(row.get("served_req_s", math.nan))
    small = served >= (1 - 3 * BACKLOG_TOLERANCE) * offered
    return not row.get("stable", 1) and not row.get("unfinished", 0) and small and meets({**row, "stable": 1},
                                                                                        attainment, mode)


def round_rate(rate: float) -> float:
    """Probed rates have 4 significant digits, so they are short and exact in the CSV."""
    return float(f"{rate:.4g}")


@dataclass
class Bisection:
    variant: Variant
    start_rate: float
    rel_tol: float = 0.05
    max_probes: int = 14
    min_rate: float = 1e-3
    attainment: float = 0.9  # the target and its reading (SLO_MODES), for telling a low-load miss
    mode: str = "joint"
    base_requests: int = 0  # the dataset's requests, when none has prefix ids (0: lone requests do not tell)
    max_rate: float = math.inf  # the highest rate a probe may run (its trace's requests within the cap)
    lo: float = 0.0  # highest rate that passed
    hi: float = math.inf  # lowest rate that failed
    lo_row: dict[str, Any] | None = None
    hi_row: dict[str, Any] | None = None
    probes: list[tuple[float, bool]] = field(default_factory=list)
    low_load_miss: bool = False  # fails where load no longer matters: no rate meets the target
    low_load_by_lone: bool = False  # ... told by the requests that ran alone (else by flat halvings)
    flat_halvings: int = 0  # consecutive halvings that changed neither attainment nor the p90s
    confirming: float | None = None  # a rate whose verdict is being re-run LONGER_X times as long
    lengthened: list[tuple[float, bool]] = field(default_factory=list)  # (rate, passed) of the longer runs

    @property
    def cut_short(self) -> bool:
        """--max-probes ended the bisection before its bracket [lo, hi) narrowed to rel_tol."""
        return (len(self.probes) >= self.max_probes and self.lo > 0 and math.isfinite(self.hi)
                and self.hi - self.lo > self.rel_tol * self.hi)

    def next_probe(self) -> tuple[float, int] | None:
        """The next (rate, duration_x) to run, or None when the answer is known well enough."""
        if self.confirming is not None:
            return self.confirming, LONGER_X
        rate = self.next_rate()
        return None if rate is None else (rate, 1)

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when the answer is known well enough."""
        if len(self.probes) >= self.max_probes or self.low_load_miss:
            return None
        if not self.probes:
            return min(round_rate(self.start_rate), self.max_rate)
        if math.isinf(self.hi):  # still passing: double until it fails, or the cap ends the bracket
            nxt = round_rate(self.lo * 2)
            return nxt if nxt <= self.max_rate else None
        if self.lo == 0.0:
            nxt = self.hi / 2  # failing even here: halve until something passes
            return round_rate(nxt) if nxt >= self.min_rate else None
        if (self.hi - self.lo) <= self.rel_tol * self.hi:
            return None
        nxt = round_rate((self.lo + self.hi) / 2)
        return nxt if self.lo < nxt < self.hi else None

    def record(self, rate: float, row: dict[str, Any], passed: bool) -> None:
        self.probes.append((rate, passed))
        if not passed and self.lo == 0.0:
            if self.hi_row is not None and rate < self.hi:
                self.flat_halvings = self.flat_halvings + 1 if _load_free(self.hi_row, row) else 0
            lone = lone_requests_miss(row, self.attainment, self.mode, self.base_requests)
            # Where lone requests tell, they alone do: flat figures may only mean the scored requests did
            # not change yet (a lower rate scores more of the dataset).
            self.low_load_miss = self.flat_halvings >= 2 if lone is None else lone
            self.low_load_by_lone = lone is not None
        if passed and rate > self.lo:
            self.lo, self.lo_row = rate, row
        elif not passed and rate < self.hi:
            self.hi, self.hi_row = rate, row


def lone_requests_miss(row: dict[str, Any], attainment: float, mode: str, base_requests: int) -> bool | None:
    """Whether the requests that ran alone and missed, with the rejected ones, keep attainment below the
    target at every lower rate; None where they do not tell. A lone request's latency is the least it can
    have (latency does not fall as load rises; without prefix ids it does not depend on what the cache
    still holds), so one that missed alone misses at any rate; a rejected request (too long for the model
    or any KV cache) is rejected at any rate and misses every SLO. While a run holds the dataset's requests
    once, so does any lower rate, their times stretched, and it scores these requests and maybe more
    (the warm-up and drain windows are fixed in seconds), at most the whole dataset. Of the rejected, at
    least r = rejected - (requests - scored) were scored; the most a lower rate can attain is where its
    window adds every request that was not rejected: 1 - (alone_missed + r) / (requests - rejected + r).
    A lone miss may miss one SLO only, so with separate SLOs only the rejected tell, and only that they
    doom it. A run that scored every request had arrivals too short for a window (steady.Window): a lower
    rate's window may then leave out what this one scored, so nothing is told."""
    if base_requests <= 0 or row.get("requests") != base_requests or "alone_missed" not in row:
        return None
    scored = int(row.get("scored", base_requests))
    if scored >= base_requests:
        return None
    rejected = int(row.get("rejected", 0))
    scored_rejected = max(0, rejected - (base_requests - scored))
    room = base_requests - rejected + scored_rejected
    if mode != "joint":
        return True if 1.0 - scored_rejected / room < attainment - 1e-9 else None
    return 1.0 - (row["alone_missed"] + scored_rejected) / room < attainment - 1e-9


def _load_free(higher: dict[str, Any], lower: dict[str, Any], rel: float = 0.02) -> bool:
    """Two failing runs, the second at a lower rate: queueing no longer moves the figures when both
    are stable, attainment did not rise and the p90 TTFT and TPOT moved by under `rel`."""
    if not (higher.get("stable", 1) and lower.get("stable", 1)):
        return False
    if lower.get("attain_both", 0.0) > higher.get("attain_both", 0.0) + 0.005:
        return False
    for key in ("ttft_p90_ms", "tpot_p90_ms"):
        a, b = higher.get(key, math.nan), lower.get(key, math.nan)
        if math.isnan(a) != math.isnan(b) or (not math.isnan(a) and abs(a - b) > rel * max(abs(a), abs(b))):
            return False
    return True


def search(
    variants: Sequence[Variant],
    start_rates: dict[str, float],
    executor: Executor,
    writer: RowWriter,
    attainment: float,
    mode: str,
    rel_tol: float = 0.05,
    max_probes: int = 14,
    on_round: Callable[[int, int, int], None] | None = None,
    base_requests: int = 0,
    max_rate: float = math.inf,
    can_lengthen: Callable[[float], bool] = lambda _rate: True,
) -> list[Bisection]:
    """Bisect every variant's goodput; rows already in `writer` (a resumed run) are reused.
    can_lengthen(rate): whether a probe at that rate may run LONGER_X times as long (its trace within the request
    cap and the clock); where not, a pass within chance stands."""
    states = [Bisection(v, max(start_rates.get(v.label, 1.0), 1e-3), rel_tol, max_probes, attainment=attainment,
                        mode=mode, base_requests=base_requests, max_rate=max_rate) for v in variants]
    rounds = 0
    while True:
        wanted: dict[tuple[str, str, str], tuple[Bisection, Job]] = {}
        for st in states:
            probe = st.next_probe()
            if probe is not None:
                job = Job(st.variant, *probe)
                wanted[job.key] = (st, job)
        if not wanted:
            return states
        jobs = [job for key, (_st, job) in wanted.items() if key not in writer.rows]
        for _job, row in executor.run(jobs):
            writer.add(row)
        rounds += 1
        for key, (st, job) in wanted.items():
            row = normalize(writer.rows[key])
            passed = meets(row, attainment, mode)
            undecided = within_chance(row) if passed else unstable_by_growth_alone(row, attainment, mode)
            if job.duration_x == 1 and undecided and can_lengthen(job.rate_per_s):
                st.confirming = job.rate_per_s  # the default length cannot tell: a longer run decides
                continue
            if job.duration_x > 1:
                st.confirming = None
                st.lengthened.append((job.rate_per_s, passed))
            st.record(job.rate_per_s, row, passed)
        if on_round:
            on_round(rounds, sum(len(s.probes) for s in states), len(writer.rows))


def goodput_row(st: Bisection, est: dict[str, Any] | None) -> dict[str, Any]:
    """The metrics are the goodput rate's; when no rate passed, the lowest failing rate's, so a
    configuration that never meets the target still shows by how much it misses."""
    v, row = st.variant, st.lo_row or st.hi_row or {}
    goodput = st.lo
    out: dict[str, Any] = {
        "label": v.label, "ratio": v.ratio, "gpus": v.gpus, "goodput_req_s": goodput,
        "goodput_req_s_per_gpu": goodput / v.gpus,
        # The bracket: the true goodput is in [goodput, first_fail).
        "first_fail_req_s": st.hi if math.isfinite(st.hi) else math.nan,
        "first_fail_why": _why_failed(st.hi_row, st.low_load_miss, st.low_load_by_lone, st.attainment, st.mode),
        "low_load_miss": int(st.low_load_miss),
        "metrics_at_req_s": st.lo if st.lo_row is not None else (st.hi if st.hi_row is not None else math.nan),
        "attain_ttft": row.get("attain_ttft", math.nan), "attain_tpot": row.get("attain_tpot", math.nan),
        "attain_both": row.get("attain_both", math.nan),
        "ttft_mode": row.get("ttft_mode", ""),
        "ttft_p90_ms": row.get("ttft_p90_ms", math.nan), "tpot_p90_ms": row.get("tpot_p90_ms", math.nan),
        "output_tok_s_per_gpu": row.get("output_tok_s_per_gpu", math.nan), "probes": len(st.probes),
        **{k: row.get(k, math.nan) for k in MEMORY_FIELDS},
    }
    if est is not None:
        out["est_capacity_req_s"] = est["capacity_req_s"]
        out["est_req_s_per_gpu"] = est["capacity_req_s"] / v.gpus
        out["est_bottleneck"] = est["bottleneck"]
        out["sim_over_est"] = goodput / est["capacity_req_s"] if est["capacity_req_s"] > 0 else math.nan
    return out


LOW_LOAD = "misses at low load: "  # requests that ran alone missed
FLAT = "flat as the rate halved: "  # two halvings moved neither attainment nor the p90s


def floored(attainment: float) -> float:
    """An attainment as printed (3 decimals), rounded down: 0.8996 fails a 0.9 target and must not read 0.9."""
    return math.floor(attainment * 1000) / 1000 if math.isfinite(attainment) else attainment


def _why_failed(row: dict[str, Any] | None, low_load: bool = False, by_lone: bool = True, attainment: float = 0.9,
                mode: str = "joint") -> str:
    """Why the first failing rate failed, in the terms of the target (--slo-mode): under `separate` the SLO whose
    own attainment missed, not the joint figure, which the target does not read."""
    if row is None:
        return "-"
    if not row.get("stable", 1):
        return "unstable"
    if mode != "joint" and not low_load:
        missed = [f"{name} {floored(row[key]):.3g}" for name, key in (("TTFT", "attain_ttft"), ("TPOT", "attain_tpot"))
                  if row[key] < attainment]
        return f"attain {', '.join(missed)}" if missed else f"attain {floored(row['attain_both']):.3g}"
    if low_load:  # which SLO is missed, and by how many rejections where they count
        rejected = (f"; {int(row['rejected']):,} of {int(row['requests']):,} rejected, "
                    f"{int(row.get('alone_missed', 0)):,} missed alone" if row.get("rejected") else "")
        return (f"{LOW_LOAD if by_lone else FLAT}attain {floored(row['attain_both']):.3g} "
                f"(TTFT {floored(row['attain_ttft']):.3g}, TPOT {floored(row['attain_tpot']):.3g}{rejected})")
    return f"attain {floored(row['attain_both']):.3g}"


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best goodput per GPU first; ties (e.g. all zero) keep the expansion order via the stable sort."""
    return sorted(rows, key=lambda r: -r["goodput_req_s_per_gpu"])


def disagreements(rows: list[dict[str, Any]], tolerance: float = 0.3, arrival: str = "scale") -> list[str]:
    """Where the rate-matching estimate and the simulation tell different stories."""
    notes: list[str] = []
    if not rows or "est_req_s_per_gpu" not in rows[0]:
        return notes
    sim_best = rows[0]
    est_best = max(rows, key=lambda r: r["est_req_s_per_gpu"])
    if est_best["label"] != sim_best["label"] and sim_best["goodput_req_s_per_gpu"] > 0:
        notes.append(
            f"the estimate picks {est_best['label']} ({est_best['est_req_s_per_gpu']:.3g} req/s/GPU), the simulation "
            f"{sim_best['label']} ({sim_best['goodput_req_s_per_gpu']:.3g} req/s/GPU; "
            f"{est_best['label']} simulates at {est_best['goodput_req_s_per_gpu']:.3g})"
        )
    for r in rows:
        ratio = r["sim_over_est"]
        if r["low_load_miss"] and r["first_fail_why"].startswith(FLAT):
            notes.append(f"{r['label']}: attainment and the p90 latencies stayed put over two halvings of the rate "
                         f"({r['first_fail_why'].removeprefix(FLAT)}): what keeps it below the target does not ease "
                         "with the rate (requests that miss even alone, rejected requests"
                         + (", or arrivals the trace sends together, which rescaling the rate keeps together: "
                            "--arrival poisson spreads them)" if arrival == "scale" else ")"))
        elif r["low_load_miss"]:
            why = r["first_fail_why"]
            limit = "a lone request's latency, not capacity, is the limit"
            if " rejected, " in why:
                limit = ("requests rejected at any rate (too long for the model or its KV cache: see the rejected "
                         "column of probes.csv)" + ("" if why.endswith(" 0 missed alone)") else
                                                    " and lone requests' latency") + ", not capacity, are the limit")
            notes.append(f"{r['label']}: misses the target even at low load "
                         f"({r['first_fail_why'].removeprefix(LOW_LOAD)}): {limit}")
        elif math.isnan(ratio):
            notes.append(f"{r['label']}: the estimate has no capacity for it (decode cannot meet the TPOT SLO)")
        elif abs(ratio - 1) > tolerance:
            if ratio > 1 and r["ratio"] == "colo":
                why = ("the estimate counts a colocated instance's prefills and decodes apart, where prefill chunks "
                       "ride along with decode steps")
            elif ratio > 1 and r.get("est_bottleneck") == "prefill":
                why = ("the estimate does not fill a prefill step's token budget with the next prompt's chunk, as "
                       "chunked prefill does")
            elif ratio > 1:
                why = "the estimate's simplifications (pdsim/sweep/ratematch.py) undercount it"
            elif math.isnan(r["first_fail_req_s"]):  # never failed: the bracket ended (probes or the cap) unclosed
                why = "a lower bound: no probe failed before the search stopped"
            elif r["ratio"] == "colo":
                why = "prefill chunks sharing steps with decode stretch TPOT, which the estimate ignores"
            else:
                why = "queueing and TTFT tails bind before the pools saturate"
            notes.append(f"{r['label']}: simulated goodput is {ratio:.2f}x the estimate ({why})")
    return notes
