"""PNG plots of a run: latency CDFs and per-instance memory and throughput over time."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pdsim.metrics.summary import ESTIMATED_NOTE

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn, not with the module
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Stage = Callable[[Path, Callable[[Path], object]], Path]
PERCENTILE_STYLES = (("p50", ":"), ("p90", "--"), ("p99", "-."))


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; plots are files
    import matplotlib.pyplot as plt

    return plt


def write_plots(df: pd.DataFrame, timeline: pd.DataFrame, summary: dict, prefix: Path, stage: Stage) -> list[Path]:
    """Stages <prefix>_latency_cdf.png, <prefix>_memory.png and <prefix>_throughput.png through
    `stage(path, write)` (pdsim.outputs.OutputSet.stage); returns their paths."""
    plt = _pyplot()
    paths = [_latency_cdfs(plt, df, summary, _name(prefix, "latency_cdf"), stage)]
    if not timeline.empty:
        paths.append(_memory(plt, timeline, summary, _name(prefix, "memory"), stage))
        paths.append(_throughput(plt, timeline, summary, _name(prefix, "throughput"), stage))
    return paths


def _name(prefix: Path, what: str) -> Path:
    return prefix.with_name(f"{prefix.name}_{what}.png")


def _notes(summary: dict) -> str:
    notes = []
    if summary.get("estimated_profile"):
        notes.append(f"NOTE: {summary.get('step_time_source') or ESTIMATED_NOTE}, not measured")
    load = summary.get("load") or {}
    if load.get("overloaded"):
        notes.append(f"OVERLOADED: {load['offered_req_per_s_second_half']:.3g} req/s offered, "
                     f"{load['served_req_per_s_second_half']:.3g} served; latencies grow with the trace length")
    return "\n".join(notes)


def _save(plt: ModuleType, fig: Figure, summary: dict, path: Path, stage: Stage) -> Path:
    notes = _notes(summary)
    if notes:
        fig.text(0.01, 0.01, notes, fontsize="small", color="firebrick", va="bottom")
        fig.tight_layout(rect=(0, 0.06 * (notes.count("\n") + 1), 1, 1))
    else:
        fig.tight_layout()
    try:
        return stage(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _cdf(ax: Axes, values: np.ndarray, stats: dict, slo: float | None, unit: str, met: float | None = None,
         arrived: int = 0, curve: str = "all finished requests") -> None:
    """met: the SLO attainment the summary gives, a share of the `arrived` requests (one not finished misses).
    curve: what the curve's requests are (those with a figure: a one-token request has no TPOT)."""
    values = np.sort(values[~np.isnan(values)])
    if values.size:
        ax.plot(values, np.arange(1, values.size + 1) / values.size, color="tab:blue", label=curve)
    else:
        ax.text(0.5, 0.5, f"no {curve}", transform=ax.transAxes, ha="center", va="center", color="grey")
    for key, style in PERCENTILE_STYLES:
        if stats.get(key) is not None:
            ax.axvline(stats[key], color="grey", linestyle=style, linewidth=1,
                       label=f"{key} {stats[key]:,.1f} {unit}")
    if slo is not None and met is not None and not math.isnan(met):
        ax.axvline(slo, color="firebrick", linewidth=1.5,
                   label=f"SLO {slo:g} {unit}: met by {met:.0%} of {arrived:,} arrived requests")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # none when no request finished and no SLO is drawn
        ax.legend(fontsize="small", loc="lower right")


def _latency_cdfs(plt: ModuleType, df: pd.DataFrame, summary: dict, path: Path, stage: Stage) -> Path:
    finished = df[df.status == "finished"]
    slo = summary.get("slo") or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ttft_label = "TTFT client" if summary.get("ttft_mode") == "client" else "TTFT"
    # The SLO shares are the summary's (of the requests that arrived), not the finished ones' the curves show.
    arrived = slo.get("requests", 0)
    _cdf(axes[0], finished.ttft_ms.to_numpy(dtype=float), summary["ttft_ms"], slo.get("ttft_ms"), "ms",
         slo.get("attain_ttft"), arrived)
    tpot = finished.tpot_ms.to_numpy(dtype=float)
    with_tpot = int((~np.isnan(tpot)).sum())  # a one-token request has no time per output token
    _cdf(axes[1], tpot, summary["tpot_ms"], slo.get("tpot_ms"), "ms", slo.get("attain_tpot"), arrived,
         "finished requests of 2+ output tokens")
    axes[0].set_xlabel(f"{ttft_label} (ms)")
    axes[1].set_xlabel("TPOT (ms)")
    axes[0].set_title(f"Time to first token, {len(finished)} finished requests")
    axes[1].set_title(f"Time per output token, {with_tpot} requests of 2+ tokens")
    return _save(plt, fig, summary, path, stage)


def _instance_labels(summary: dict) -> dict[str, tuple[str, dict]]:
    return {i["id"]: (f"{i['id']} {i['pd_type'] or 'colocated'}", i) for i in summary["instances"]}


def _memory(plt: ModuleType, timeline: pd.DataFrame, summary: dict, path: Path, stage: Stage) -> Path:
    labels = _instance_labels(summary)
    fig, (ax_kv, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
    for n, (inst, g) in enumerate(timeline.groupby("instance", sort=False)):
        color = f"C{n % 10}"
        label, info = labels.get(inst, (inst, {}))
        ax_kv.plot(g.time_s, g.kv_used_gb, color=color, label=f"{label}: KV in use")
        ax_mem.plot(g.time_s, g.mem_used_gb, color=color, label=f"{label}: in use")
        if "kv_capacity_gb" in info:
            ax_kv.axhline(info["kv_capacity_gb"], color=color, linestyle="--", linewidth=1,
                          label=f"{label}: KV capacity {info['kv_capacity_gb']:.1f} GB")
            ceiling = (info["weights_gb"] + info["activation_gb"] + info["non_torch_gb"]
                       + info["kv_capacity_gb"])
            ax_mem.axhline(ceiling, color=color, linestyle="--", linewidth=1,
                           label=f"{label}: weights + activations + non-torch + KV capacity {ceiling:.1f} GB")
        # The samples show the state at each sample time; a peak between two of them is the summary's.
        for ax, key, what in ((ax_kv, "peak_kv_gb", "peak KV"), (ax_mem, "peak_mem_gb", "peak")):
            if info.get(key) is not None:
                ax.axhline(info[key], color=color, linestyle=":", linewidth=1,
                           label=f"{label}: {what} {info[key]:.2f} GB (between samples too)")
    ax_kv.set_title("KV cache per GPU")
    ax_mem.set_title("GPU memory per GPU (weights, activations, non-torch, KV)")
    for ax in (ax_kv, ax_mem):
        _time_axes(ax, "GB (2^30 bytes)")
        ax.set_ylim(bottom=0)
    return _save(plt, fig, summary, path, stage)


def _throughput(plt: ModuleType, timeline: pd.DataFrame, summary: dict, path: Path, stage: Stage) -> Path:
    labels = _instance_labels(summary)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for n, (inst, g) in enumerate(timeline.groupby("instance", sort=False)):
        t = g.time_s.to_numpy()
        if t.size < 2:
            continue
        dt = np.diff(t)
        dt[dt <= 0] = np.nan
        label = labels.get(inst, (inst, {}))[0]
        for column, kind, style in (("cumulative_prompt_tokens", "prompt", "-"),
                                    ("cumulative_decode_tokens", "decode", "--")):
            counts = g[column].to_numpy()
            if counts[-1] == counts[0]:
                continue  # a prefill instance decodes nothing and a decode instance prefills nothing
            ax.plot(t[1:], np.diff(counts) / dt, color=f"C{n % 10}", linestyle=style, label=f"{label}: {kind} tok/s")
    ax.set_title("Tokens processed per second, per instance (between timeline samples)")
    _time_axes(ax, "tokens/s")
    return _save(plt, fig, summary, path, stage)


def _time_axes(ax: Axes, ylabel: str) -> None:
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
