"""What a trace looks like: size, span, arrival rate (mean and over time), burstiness (CV of the
gaps between arrivals), length percentiles and, where it has hash_ids, how much prefix it reuses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pdsim.outputs import atomic_path
from pdsim.workload.trace import TraceRequest

PERCENTILES = (50, 90, 99)


def default_bin_s(span_s: float) -> float:
    """About 60 bins over the span, rounded to 1, 2 or 5 x 10^k seconds."""
    if span_s <= 0:
        return 1.0
    raw = span_s / 60
    base = 10 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def rate_over_time(arrival_s: np.ndarray, bin_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin start times, requests/s in each bin, whether the bin is whole). Bins run from 0 to the
    last arrival; the last one, usually cut short by it, is counted over the part it covers."""
    span_s = float(arrival_s.max())
    n_bins = max(1, int(math.ceil(span_s / bin_s)))
    counts = np.bincount(np.minimum((arrival_s // bin_s).astype(np.int64), n_bins - 1), minlength=n_bins)
    starts = np.arange(n_bins) * bin_s
    widths = np.minimum(bin_s, span_s - starts)
    whole = widths >= bin_s * (1 - 1e-9)
    widths[~whole] = np.maximum(widths[~whole], 1e-9)
    return starts, counts / widths if span_s > 0 else counts / bin_s, whole


def prefix_reuse(requests: Sequence[TraceRequest]) -> dict[str, Any] | None:
    """Share of hash blocks (in arrival order) whose id was seen in an earlier request: the hit
    rate of a prefix cache that never evicts, an upper bound for a real one. None without hash_ids."""
    seen: set[int] = set()
    total = reused = reused_tokens = 0
    block = 0
    for r in requests:
        if not r.hash_ids:
            continue
        block = r.hash_block_tokens
        for k, h in enumerate(r.hash_ids):
            if h in seen:
                reused += 1
                # The last block of a prompt covers only what is left of it.
                reused_tokens += min(block, r.input_toks - k * block)
            else:
                seen.add(h)
        total += len(r.hash_ids)
    if total == 0:
        return None
    input_tokens = sum(r.input_toks for r in requests if r.hash_ids)
    return {"blocks": total, "reused_blocks": reused, "block_reuse_ratio": reused / total,
            "token_reuse_ratio": reused_tokens / input_tokens if input_tokens else 0.0,
            "hash_block_tokens": block}


def _lengths(x: np.ndarray) -> dict[str, float]:
    out = {f"p{q}": float(np.percentile(x, q)) for q in PERCENTILES}
    out["mean"] = float(x.mean())
    out["max"] = float(x.max())
    return out


def trace_stats(requests: Sequence[TraceRequest], bin_s: float | None = None) -> dict[str, Any]:
    """Figures of a trace sorted by arrival; see the module docstring."""
    arrival_s = np.array([r.arrival_time_ns for r in requests], dtype=np.float64) / 1e9
    arrival_s -= arrival_s[0]
    inputs = np.array([r.input_toks for r in requests], dtype=np.int64)
    outputs = np.array([r.output_toks for r in requests], dtype=np.int64)
    n = len(requests)
    span_s = float(arrival_s[-1])
    gaps_s = np.diff(arrival_s)
    bin_s = bin_s or default_bin_s(span_s)
    rate: dict[str, float] | None = None
    over_time: dict[str, list[float]] | None = None
    if span_s > 0:  # else every request arrives at once (a trace without times): no rate to speak of
        starts, rates, whole = rate_over_time(arrival_s, bin_s)
        summary = rates[whole] if whole.any() else rates  # a sliver of a bin says little about the rate
        rate = {"min": float(summary.min()), "p50": float(np.median(summary)), "max": float(summary.max())}
        over_time = {"start_s": starts.tolist(), "end_s": np.minimum(starts + bin_s, span_s).tolist(),
                     "rate_per_s": rates.tolist()}
    stats: dict[str, Any] = {
        "requests": n,
        "span_s": span_s,
        # n - 1 gaps over the span: the rate a renewal process with these gaps has.
        "mean_rate_per_s": (n - 1) / span_s if span_s > 0 else None,
        "gap_cv": float(gaps_s.std() / gaps_s.mean()) if n > 1 and gaps_s.mean() > 0 else None,
        "rate_bin_s": bin_s,
        "rate_per_s": rate,
        "rate_over_time": over_time,
        "input_toks": _lengths(inputs),
        "output_toks": _lengths(outputs),
        "total_input_toks": int(inputs.sum()),
        "total_output_toks": int(outputs.sum()),
        "prefix_reuse": prefix_reuse(requests),
    }
    return stats


def format_stats(stats: dict[str, Any], source: str) -> str:
    def num(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    r = stats["rate_per_s"]
    count = stats["requests"]
    lines = [f"{source}: {count:,} request{'' if count == 1 else 's'} over {stats['span_s']:,.1f} s"]
    if r is None:
        lines.append("every request arrives at t=0: no arrival rate")
    else:
        lines += [
            f"mean rate {num(stats['mean_rate_per_s'])} req/s; per whole {stats['rate_bin_s']:g} s bin: "
            f"min {r['min']:.2f}, median {r['p50']:.2f}, max {r['max']:.2f} req/s",
            f"inter-arrival gap CV {num(stats['gap_cv'])} (Poisson: 1; above 1: burstier)",
        ]
    lines += [
        f"{'tokens':<12}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    for key in ("input_toks", "output_toks"):
        s = stats[key]
        lines.append(f"{key:<12}" + "".join(f"{s[k]:>10,.0f}" for k in ("mean", "p50", "p90", "p99", "max")))
    pr = stats["prefix_reuse"]
    if pr is None:
        lines.append("prefix reuse: no hash_ids in the trace")
    else:
        lines.append(f"prefix reuse: {pr['block_reuse_ratio']:.1%} of {pr['blocks']:,} hash blocks "
                     f"({pr['hash_block_tokens']} tokens each) seen before, {pr['token_reuse_ratio']:.1%} of "
                     "input tokens (a cache that never evicts)")
    return "\n".join(lines)


def plot_stats(requests: Sequence[TraceRequest], stats: dict[str, Any], path: Path, title: str) -> Path:
    """Arrival rate over time and the two length histograms, in one PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = np.array([r.input_toks for r in requests])
    outputs = np.array([r.output_toks for r in requests])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    rot = stats["rate_over_time"]
    ax = axes[0]
    if rot is None:
        ax.text(0.5, 0.5, "no arrival times:\nevery request at t=0", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ax.stairs(rot["rate_per_s"], [*rot["start_s"], rot["end_s"][-1]], color="C0")
    if stats["mean_rate_per_s"]:
        ax.axhline(stats["mean_rate_per_s"], color="C3", ls="--", lw=1,
                   label=f"mean {stats['mean_rate_per_s']:.2f} req/s")
        ax.legend(loc="upper right", fontsize=8)
    ax.set(xlabel="time (s)", ylabel=f"arrival rate (req/s, {stats['rate_bin_s']:g} s bins)",
           title="arrival rate over time")
    for ax, x, name, color in ((axes[1], inputs, "input", "C1"), (axes[2], outputs, "output", "C2")):
        s = stats[f"{name}_toks"]
        ax.hist(x, bins=60, color=color, alpha=0.8)
        for q, ls in (("p50", "-"), ("p90", "--"), ("p99", ":")):
            ax.axvline(s[q], color="k", ls=ls, lw=1, label=f"{q} {s[q]:,.0f}")
        ax.legend(fontsize=8)
        ax.set(xlabel=f"{name} length (tokens)", ylabel="requests", title=f"{name} lengths (mean {s['mean']:,.0f})")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
