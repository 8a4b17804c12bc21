"""Per-request table, summary statistics and the text report of a simulation."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pdsim.engine.result import GIB, InstanceInfo, SimulationResult
from pdsim.metrics.stats import (
    REPORTED_PERCENTILES,
    per_second,
    percentiles_linear,
    percentiles_nearest_rank,
    sorted_by_value,
    span_s,
)
from pdsim.models import dtype_bytes
from pdsim.text import listed

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pdsim.engine.instance import Instance

REQUEST_COLUMNS = [
    "request_id", "input_toks", "output_toks", "arrival_s", "first_token_s", "finish_s",
    "ttft_ms", "tpot_ms", "e2e_ms", "queue_ms", "prefill_instance", "decode_instance",
    "kv_transfer_ms", "kv_transfer_wait_ms", "kv_bytes", "preemptions", "status", "reason",
    "ttft_prefill_ms", "ttft_client_ms", "cached_tokens",
]
PERCENTILES = REPORTED_PERCENTILES
ESTIMATED_NOTE = "step times estimated from hardware specs"


def requests_frame(result: SimulationResult) -> pd.DataFrame:
    """One row per request, in trace order; times in seconds since the start of the trace."""
    rows = []
    for r in result.requests:
        ttft_prefill = r.first_token_s - r.arrival_s if r.first_token_s is not None else math.nan
        # P/D: a proxy client's first token comes from the decode instance's first step.
        client_first_s = r.decode_first_token_s if r.kv_bytes else r.first_token_s
        ttft_client = client_first_s - r.arrival_s if client_first_s is not None else math.nan
        # first_token_s, ttft_ms and tpot_ms follow the mode, so that e2e = ttft + (n - 1) x tpot either way
        # (vllm bench's TPOT: the tokens after the first the client sees).
        first_s = client_first_s if result.ttft_mode == "client" else r.first_token_s
        ttft = ttft_client if result.ttft_mode == "client" else ttft_prefill
        e2e = r.finish_s - r.arrival_s if r.finish_s is not None else math.nan
        tpot = (
            (r.finish_s - first_s) / (r.output_toks - 1)
            if r.finish_s is not None and first_s is not None and r.output_toks > 1 else math.nan
        )
        # At least 0: a request scheduled the instant it arrives can come out -1e-13 s from float clock sums.
        queue = max(r.first_scheduled_s - r.arrival_s, 0.0) if r.first_scheduled_s is not None else math.nan
        transfer = (
            r.kv_transfer_end_s - r.kv_transfer_start_s
            if r.kv_transfer_end_s is not None and r.kv_transfer_start_s is not None else math.nan
        )
        transfer_wait = (
            r.kv_transfer_start_s - r.handoff_s
            if r.kv_transfer_start_s is not None and r.handoff_s is not None else math.nan
        )
        rows.append((
            r.id, r.input_toks, r.output_toks, r.arrival_s, _or_nan(first_s), _or_nan(r.finish_s),
            ttft * 1e3, tpot * 1e3, e2e * 1e3, queue * 1e3, r.prefill_instance, r.decode_instance,
            transfer * 1e3, transfer_wait * 1e3, r.kv_bytes, r.preemptions, r.status, r.reason,
            ttft_prefill * 1e3, ttft_client * 1e3, r.cached_tokens,
        ))
    return pd.DataFrame.from_records(rows, columns=REQUEST_COLUMNS)


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else x


def _stats(values: np.ndarray) -> dict[str, float | None]:
    """Mean and percentiles of the per-request latencies (numpy's linear percentiles)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    pct = percentiles_linear(values, PERCENTILES)
    return {"mean": float(values.mean()), **{f"p{p}": v for p, v in zip(PERCENTILES, pct)}}


def itl_samples(result: SimulationResult) -> tuple[np.ndarray, np.ndarray]:
    """All inter-token latencies (s) with their weights: each decode step gives one token to each
    request in its batch, so a step's duration counts once per request in it."""
    values: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for inst in result.instances:
        stats = inst.stats
        if stats.itl_run_steps:
            steps = np.array(stats.itl_run_steps, dtype=np.int64)
            w = np.repeat(np.array(stats.itl_run_weights, dtype=np.int64), steps)
            w[np.cumsum(steps) - steps] = np.array(stats.itl_run_first_weights, dtype=np.int64)
            values.append(np.array(stats.itl_steps_s, dtype=np.float64))
            weights.append(w)
        if stats.itl_gaps_s:
            values.append(np.array(stats.itl_gaps_s, dtype=np.float64))
            weights.append(np.ones(len(stats.itl_gaps_s), dtype=np.int64))
    if not values:
        return np.empty(0), np.empty(0, dtype=np.int64)
    return np.concatenate(values), np.concatenate(weights)


def weighted_stats(values: np.ndarray, weights: np.ndarray) -> dict[str, float | None]:
    """Mean and percentiles of the ITLs, each weighted by the tokens it delayed: the value below
    which p% of the tokens' latencies fall (weighted nearest rank)."""
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    if values.size == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    values, weights = sorted_by_value(values, weights)
    out: dict[str, float | None] = {"mean": float(np.dot(values, weights) / weights.sum())}
    for p, v in zip(PERCENTILES, percentiles_nearest_rank(values, weights, PERCENTILES)):
        out[f"p{p}"] = v
    return out


def closed_loop_steady_state(df: pd.DataFrame, concurrency: int) -> dict:
    """Closed loop: the requests sent while every client was busy in its steady cycle.

    A closed-loop run starts with all clients sending at once (a burst the engine queues) and
    ends with a tail in which clients run out of requests and the load falls. Benchmarks average
    over everything they measured (pdsim's main table does the same); this drops the first and
    the last `concurrency` requests by send time, so what is left ran at full concurrency after
    the start burst had cleared. Empty when the run has no more than 2 x concurrency requests.
    """
    sent = df.sort_values(["arrival_s", "request_id"], kind="stable")
    window = sent.iloc[concurrency:len(sent) - concurrency]
    finished = window[window.status == "finished"]
    out: dict = {"clients": concurrency, "excluded": f"the first and last {concurrency} requests sent",
                 "requests": int(len(window)), "finished": int(len(finished))}
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        out[key] = _stats(finished[key].to_numpy(dtype=float))
    return out


def _instance_summary(result: SimulationResult, inst: Instance, info: InstanceInfo) -> dict:
    peak_kv_gb = inst.kv.peak_used * inst.kv.block_bytes / GIB
    out = {
        "id": info.id, "pd_type": info.pd_type, "model_name": info.model_name, "hardware": info.hardware,
        "tp": info.tp, "num_kv_blocks": info.num_kv_blocks, "kv_capacity_gb": info.kv_capacity_gb,
        "peak_kv_gb": peak_kv_gb, "peak_mem_gb": info.weights_gb + info.activation_gb + info.non_torch_gb + peak_kv_gb,
        "weights_gb": info.weights_gb, "activation_gb": info.activation_gb, "non_torch_gb": info.non_torch_gb,
        "kv_capacity_tokens": info.kv_tokens, "kv_cache_dtype": info.kv_cache_dtype, "kv_rule": info.kv_rule,
        "memory_note": info.memory_note,
        "preemptions": inst.sched.num_preemptions, "steps": inst.stats.steps,
        "busy_fraction": inst.stats.busy_over_run_s / result.sim_end_s if result.sim_end_s > 0 else 0.0,
        "profile": info.profile_path, "estimated_profile": info.estimated_profile,
        "estimated_part": info.estimated_part,
        "allreduce_source": inst.predictor.allreduce_source,  # None at tp 1
        # steps of up to this many tokens run each all-reduce fused with the norm after it (None: none do)
        "allreduce_norm_fused_max_tokens": inst.predictor.fused_norm_tokens,
        "prefix_caching": inst.kv.enable_caching, "prefix_query_tokens": inst.kv.query_tokens,
        # None (null) before any lookup, as the summary gives every figure that does not exist
        "prefix_hit_tokens": inst.kv.hit_tokens, "prefix_hit_rate": inst.kv.hit_rate if inst.kv.query_tokens else None,
    }
    if inst.dp_group is not None:  # lock-step DP rank (docs/moe.md): batches of no request, kept in step
        out["dummy_steps"] = inst.dp_group.dummy_steps[inst.id]
    if inst.spec.pp > 1:  # pipeline stages (docs/pipeline.md): steps are micro-batches
        out.update(pp=inst.spec.pp, stage_busy_fraction=[
            b / result.sim_end_s if result.sim_end_s > 0 else 0.0 for b in inst.stats.stage_busy_over_run_s])
    return out


def summarize(result: SimulationResult, df: pd.DataFrame, wall_s: float | None = None,
              concurrency: int | None = None) -> dict:
    """concurrency: the run was a closed loop of that many clients (adds its steady state)."""
    finished = df[df.status == "finished"]
    itl_values, itl_weights = itl_samples(result)
    itl = weighted_stats(itl_values * 1e3, itl_weights)
    span = span_s(df.arrival_s.min(), finished.finish_s.max()) if len(finished) else 0.0
    estimated = any(info.estimated_profile for info in result.infos)
    instances = [_instance_summary(result, inst, info) for inst, info in zip(result.instances, result.infos)]
    summary = {
        "requests": int(len(df)),
        "finished": int(len(finished)),
        "rejected": int((df.status == "rejected").sum()),
        "unfinished": int((df.status == "unfinished").sum()),
        "not_finished_reasons": not_finished_reasons(df),
        "ttft_mode": result.ttft_mode,
        "ttft_ms": _stats(finished.ttft_ms.to_numpy(dtype=float)),
        "tpot_ms": _stats(finished.tpot_ms.to_numpy(dtype=float)),
        "itl_ms": itl,
        "e2e_ms": _stats(finished.e2e_ms.to_numpy(dtype=float)),
        "queue_ms": _stats(finished.queue_ms.to_numpy(dtype=float)),
        "kv_transfer_ms": _stats(finished.kv_transfer_ms.to_numpy(dtype=float)),
        "throughput": {
            "requests_per_s": per_second(len(finished), span),
            "input_tokens_per_s": per_second(float(finished.input_toks.sum()), span),
            "output_tokens_per_s": per_second(float(finished.output_toks.sum()), span),
        },
        "duration_s": span,
        "sim_end_s": result.sim_end_s,
        "instances": instances,
        "estimated_profile": estimated,
        "step_time_source": estimated_note(instances) if estimated else "measured profiles",
        "memory_notes": memory_notes(result),
        "profile_notes": profile_notes(result),
        "timeline_note": result.timeline_note,
    }
    if concurrency is not None:
        summary["closed_loop_steady_state"] = closed_loop_steady_state(df, concurrency)
    if wall_s is not None:
        summary["wall_s"] = wall_s
    return summary


def profile_notes(result: SimulationResult) -> list[str]:
    """What priced each instance's steps (estimated parts, the all-reduce's source, MoE tables), where
    the run left the profile's grid, and the cluster's own (its KV hand-offs' defaults), once per distinct note."""
    return sorted({
        note for inst in result.instances
        for note in [*inst.predictor.notes, *inst.predictor.extrapolation_notes()]
    } | set(result.notes))


def not_finished_reasons(df: pd.DataFrame) -> list[dict]:
    """Requests not finished, counted by status and reason; reasons that differ only in their first
    number (`input+output = 9000 tokens ...`, the request's own) are one entry, with N for that number and
    its range."""
    groups: dict[tuple[str, str], list[float]] = {}
    for status, reason in df.loc[df.status != "finished", ["status", "reason"]].itertuples(index=False):
        first = _NUMBER.search(str(reason))
        key = (status, _NUMBER.sub("N", str(reason), count=1) if first else str(reason))
        groups.setdefault(key, []).extend([float(first.group().replace(",", ""))] if first else [])
    out = []
    for (status, reason), numbers in groups.items():
        item: dict = {"status": status, "reason": reason, "count": 0}
        if numbers:
            item["count"] = len(numbers)
            # A whole number (a token count) as one, so the summary JSON writes 9000, not 9000.0.
            item["N_min"], item["N_max"] = (int(n) if n.is_integer() else n for n in (min(numbers), max(numbers)))
        else:
            item["count"] = int(((df.status == status) & (df.reason == reason)).sum())
        out.append(item)
    return out


def reason_text(item: dict) -> str:
    """One entry of not_finished_reasons as a line: count, status, reason and the range of its N."""
    span = ""
    if "N_min" in item:
        lo, hi = (f"{n:,.6f}".rstrip("0").rstrip(".") for n in (item["N_min"], item["N_max"]))
        span = f" (N = {lo})" if lo == hi else f" (N = {lo} to {hi})"
    return f"{item['count']} {item['status']}: {item['reason']}{span}"


# A number standing alone: not a part of a name (tp2), of another number (1.5, 1e-300's exponent) or a range.
_NUMBER = re.compile(r"(?<![\w.+-])\d[\d,]*(?:\.\d+)?(?![\w.-])")
def memory_notes(result: SimulationResult) -> list[str]:
    """How each instance's KV capacity was obtained, one line per distinct way."""
    by_note: dict[str, list[str]] = {}
    for info in result.infos:
        by_note.setdefault(info.memory_note, []).append(info.id)
    return [f"{', '.join(ids)}: {note}" for note, ids in by_note.items() if note]


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def format_summary(summary: dict) -> str:
    lines = _status_lines(summary)
    lines.append("")
    lines.extend(_latency_lines(summary))
    steady = summary.get("closed_loop_steady_state")
    if steady is not None:
        lines.append("")
        if steady["finished"]:
            lines.append(
                f"closed loop, steady state ({steady['finished']} requests; without {steady['excluded']}): "
                f"TTFT mean {_fmt(steady['ttft_ms']['mean'])} ms, TPOT mean {_fmt(steady['tpot_ms']['mean'], 2)} ms, "
                f"E2E mean {_fmt(steady['e2e_ms']['mean'])} ms"
            )
        else:
            lines.append(f"closed loop, steady state: none (needs more than 2 x {steady['clients']} requests)")
    t = summary["throughput"]
    lines.append("")
    lines.append(
        f"throughput: {t['requests_per_s']:.2f} req/s, {t['input_tokens_per_s']:,.0f} input tok/s, "
        f"{t['output_tokens_per_s']:,.0f} output tok/s over {summary['duration_s']:.1f} s"
    )
    if summary["unfinished"]:  # a run stopped by its time limit: the figure above leaves their work out
        lines.append(f"  (finished requests over the first arrival to the last finish: the "
                     f"{summary['unfinished']:,} unfinished when the run stopped at {summary['sim_end_s']:,.1f} s, and "
                     "the tokens they made, are not in it)")
    lines.append("")
    lines.extend(_instance_lines(summary))
    return "\n".join(lines)


def _status_lines(summary: dict) -> list[str]:
    """Request counts, why some did not finish, the load verdict and notes on the step times."""
    lines: list[str] = []
    lines.append(
        f"requests: {summary['requests']} total, {summary['finished']} finished, "
        f"{summary['rejected']} rejected, {summary['unfinished']} unfinished"
    )
    for item in summary["not_finished_reasons"]:
        lines.append(f"  {reason_text(item)}")
    load = summary.get("load")
    if load and "served_req_per_s_second_half" in load:  # judged (a verdict of too few requests is not shown)
        lines.append(("WARNING: " if load["overloaded"] else "load: ") + load["verdict"])
    if summary["estimated_profile"]:
        lines.append(f"NOTE: {estimated_note(summary['instances'])}")
    for note in summary["profile_notes"]:
        if note != ESTIMATED_NOTE:
            lines.append(f"note: {note}")
    if summary.get("timeline_note"):
        lines.append(f"note: {summary['timeline_note']}")
    return lines


def _latency_lines(summary: dict) -> list[str]:
    """The latency table, and SLO attainment when the run had SLOs."""
    lines: list[str] = []
    ttft_label = "TTFT (ms)" if summary.get("ttft_mode", "prefill") == "prefill" else "TTFT client (ms)"
    rows = [["metric", "mean", "p50", "p90", "p99"]]
    for key, label in [("ttft_ms", ttft_label), ("tpot_ms", "TPOT (ms)"), ("itl_ms", "ITL (ms)"),
                       ("e2e_ms", "E2E latency (ms)"), ("queue_ms", "queueing (ms)"),
                       ("kv_transfer_ms", "KV transfer (ms)")]:
        s = summary[key]
        if s["mean"] is None and key == "kv_transfer_ms":
            continue
        rows.append([label, *(_fmt(s[k]) for k in ("mean", "p50", "p90", "p99"))])
    lines.extend(_columns(rows))
    if summary.get("ttft_mode", "prefill") == "prefill" and summary["kv_transfer_ms"]["mean"] is not None:
        # Said: a P/D run's TTFT does not move with the link, which reads as a bug where it is not said.
        lines.append("(TTFT at the prefill instance, as papers report it: the KV transfer counts in TPOT; "
                     "--ttft-mode client counts it in TTFT)")
    margin = summary.get("step_time_margin")
    if margin and not any(margin[side]["finished"] for side in ("faster", "slower")) and not summary["finished"]:
        lines.append(f"with every step {margin['margin_pct']:g}% faster or slower: no request finished either")
    elif margin:
        parts = []
        for key, label, digits in (("ttft_ms", "TTFT", 1), ("tpot_ms", "TPOT", 2), ("e2e_ms", "E2E", 1)):
            fast, slow = margin["faster"][key], margin["slower"][key]
            parts.append(f"{label} {_fmt(fast['mean'], digits)}..{_fmt(slow['mean'], digits)} / "
                         f"{_fmt(fast['p90'], digits)}..{_fmt(slow['p90'], digits)} ms")
        m = f"{margin['margin_pct']:g}%"
        lines.append(f"with every step {m} faster .. {m} slower (mean / p90): " + "; ".join(parts))
        if (said := _queueing_bound(summary, margin)) is not None:
            lines.append(said)
        finished = (margin["faster"]["finished"], summary["finished"], margin["slower"]["finished"])
        if len(set(finished)) > 1:  # a stopped run (--max-sim-time): the figures are over other requests
            lines.append(f"  NOTE: these runs finished {finished[0]} / {finished[1]} / {finished[2]} requests "
                         "(faster / as is / slower): each figure is over its own finished requests")
    slo = summary.get("slo")
    if slo:
        scored = slo.get("requests", summary["requests"])
        of = (f"of all {scored} requests" if scored == summary["requests"] else
              f"of the {scored} requests that arrived before the stop")
        lines.append(f"SLO attainment (TTFT <= {slo['ttft_ms']:g} ms, TPOT <= {slo['tpot_ms']:g} ms, {of}): "
                     f"TTFT {_pct(slo['attain_ttft'])}, TPOT "
                     f"{_pct(slo['attain_tpot'])}, both {_pct(slo['attain_both'])}")
    return lines


# A TTFT that moves this many times as far as the step times is set by the queue, not by the steps.
QUEUEING_AMPLIFICATION = 3.0


def _queueing_bound(summary: dict, margin: dict) -> str | None:
    """Said where the TTFT mean moves far more than the steps do: the run is near saturation, where waiting
    for a slot sets TTFT, so a small error in step time or rate moves it a lot."""
    fast, slow = margin["faster"]["ttft_ms"]["mean"], margin["slower"]["ttft_ms"]["mean"]
    here = summary["ttft_ms"]["mean"]
    spread = 2 * margin["margin_pct"] / 100
    if None in (fast, here, slow) or here <= 0 or spread <= 0:
        return None
    times = (slow - fast) / here / spread
    if times < QUEUEING_AMPLIFICATION:
        return None
    return (f"  NOTE: TTFT mean moves {times:,.0f}x as far as the step times: queueing sets it, near saturation, where "
            "a small error in step time or rate moves it a lot")


def _instance_lines(summary: dict) -> list[str]:
    """One row per instance (memory, busy share, preemptions) and the memory and prefix-cache notes."""
    lines: list[str] = []
    pipelined = any("pp" in inst for inst in summary["instances"])  # a pp column only where it says something
    pp_head = f"{'pp':>3}" if pipelined else ""
    lines.append(f"{'instance':<10}{'pd_type':<10}{'hardware':<12}{'tp':>3}{pp_head}{'kv_cap_gb':>11}"
                 f"{'kv_tokens':>12}{'peak_kv_gb':>12}{'peak_mem_gb':>13}{'busy':>7}{'preempt':>9}")
    for inst in summary["instances"]:
        pp = f"{inst.get('pp', 1):>3}" if pipelined else ""
        lines.append(
            f"{inst['id']:<10}{inst['pd_type'] or 'both':<10}{inst['hardware']:<12}{inst['tp']:>3}{pp}"
            f"{inst['kv_capacity_gb']:>11.2f}{inst['kv_capacity_tokens']:>12,}{inst['peak_kv_gb']:>12.2f}"
            f"{inst['peak_mem_gb']:>13.2f}{inst['busy_fraction']:>7.0%}{inst['preemptions']:>9}"
        )
    lines.append("(memory per GPU, GB = 2^30 bytes; kv_tokens as vLLM reports them; busy = share of the simulated "
                 "time the instance was running engine steps)")
    by_dtype: dict[str, list[str]] = {}
    for inst in summary["instances"]:
        by_dtype.setdefault(inst["kv_cache_dtype"], []).append(inst["id"])
    if any(dtype_bytes(dtype) != 2 for dtype in by_dtype):  # a cache of 1-byte values holds twice the tokens per GB
        lines.append("KV cache values: " + "; ".join(
            f"{dtype} ({dtype_bytes(dtype)} byte{'s' * (dtype_bytes(dtype) > 1)} each) on {listed(ids)}"
            for dtype, ids in by_dtype.items()))
    for note in summary.get("memory_notes", []):
        lines.append(f"KV capacity {note}")
    lines += step_time_sources((inst["id"], inst["profile"], bool(inst["estimated_profile"]), inst["estimated_part"])
                               for inst in summary["instances"])
    if any(inst["prefix_hit_tokens"] for inst in summary["instances"]):
        lines.append("prefix cache hit rate (prompt tokens found cached): " + ", ".join(
            f"{inst['id']} {_pct(inst['prefix_hit_rate'])}" for inst in summary["instances"]
            if inst["prefix_caching"]))
    return lines


def step_time_sources(instances: Iterable[tuple[str, str | None, bool, str]]) -> list[str]:
    """One line per profile: which instances (id, profile path, estimated, estimated part) it priced, measured or
    estimated."""
    by_profile: dict[tuple[str | None, bool, str], list[str]] = {}
    for inst_id, profile, estimated, part in instances:
        by_profile.setdefault((profile, estimated, part), []).append(inst_id)
    lines = []
    for (profile, estimated, part), ids in by_profile.items():
        source = "measured" if part or not estimated else "estimated from hardware specs"
        folder = profile and not profile.startswith("<")  # "<estimated ...>": priced on the fly, no folder
        lines.append(f"step times {listed(ids)}: {source}" + (f", profile {_shown_path(profile)}" if folder else "")
                     + (f"; its {part} estimated from hardware specs" if part else ""))
    return lines


def estimated_part(instances: Iterable[tuple[bool, str]]) -> str:
    """Of instances' (estimated, estimated part): the parts estimated where every estimated instance has a measured
    profile (its MoE expert layers), else "" (a whole profile is estimated)."""
    parts = {part for estimated, part in instances if estimated}
    return "" if "" in parts else ", ".join(sorted(parts))


def estimated_note(instances: Iterable[dict]) -> str:
    """What of the step times was estimated: whole profiles, or only a part a measured profile lacks."""
    part = estimated_part((inst["estimated_profile"], inst["estimated_part"]) for inst in instances)
    if not part:
        return f"{ESTIMATED_NOTE} (no measured profile for at least one instance)"
    return f"{ESTIMATED_NOTE} for the {part} (the measured profile has no table of them)"


def _shown_path(path: str) -> str:
    """A path under the working folder as relative to it (as the README's commands name files), else as is."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1%}"


def _columns(rows: list[list[str]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers, two spaces at least between columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [f"{r[0]:<{widths[0]}}" + "".join(f"  {c:>{w}}" for c, w in zip(r[1:], widths[1:])) for r in rows]
