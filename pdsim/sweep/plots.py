"""PNG plots of a sweep or search: goodput per GPU by P:D ratio, p90 latencies against rate with
the SLO lines, and the throughput-per-GPU vs speed-per-user Pareto front."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


COLOCATED_COLORS = ("tab:red", "tab:orange", "tab:brown", "tab:pink", "tab:olive")


def goodput_bar_colors(goodput_rows: list[dict[str, Any]]) -> list[str]:
    """Green for every configuration with the highest goodput per GPU (all of them where they tie: the plot must
    not pick one the numbers do not), none where nothing met the target; else blue, colocated red as in the
    command's other plots."""
    values = [float(r["goodput_req_s_per_gpu"]) for r in goodput_rows]
    top = max(values, default=0.0)
    return ["tab:green" if top > 0 and v == top else COLOCATED_COLORS[0] if r["ratio"] == "colo" else "tab:blue"
            for r, v in zip(goodput_rows, values)]


def plot_goodput(goodput_rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Bars in expansion order (P:D from prefill-light to prefill-heavy, then colocated)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
    labels = [r["label"] for r in goodput_rows]
    values = [r["goodput_req_s_per_gpu"] for r in goodput_rows]
    ax.bar(range(len(labels)), values, color=goodput_bar_colors(goodput_rows))
    if goodput_rows and "est_req_s_per_gpu" in goodput_rows[0]:
        estimates = [r["est_req_s_per_gpu"] for r in goodput_rows]
        ax.plot(range(len(labels)), estimates, "kx", label="rate-matching estimate")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("goodput (req/s per GPU)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")  # path may be a temporary name without .png
    plt.close(fig)
    return path


def log_minor_label(low: float, high: float) -> Callable[[float, object], str]:
    """The label of a minor tick (2, 3, ... x 10^n) on a log axis from `low` to `high`: its value where the axis
    spans less than a decade, which may hold no power of ten to label; none across more, where they would crowd."""
    if high < 10 * low:
        return lambda v, _: f"{v:g}"
    return lambda v, _: ""


def plot_latency_vs_rate(rows: list[dict[str, Any]], slo_ttft_ms: float, slo_tpot_ms: float, path: Path,
                         ttft_at: str = "", title: str = "") -> Path:
    """TTFT and TPOT p90 by rate per configuration; ttft_at: where TTFT ends (--ttft-mode), in its axis label;
    title: which runs (the command's dataset and GPUs, and whether step times were estimated)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    cmap = plt.get_cmap("viridis", max(2, len(labels)))
    colocated = [label for label in labels if label.startswith("colo")]
    for i, label in enumerate(labels):
        pts = sorted((float(r["rate_per_s"]), r["ttft_p90_ms"], r["tpot_p90_ms"], _stable(r))
                     for r in rows if r["label"] == label)
        rates = [p[0] for p in pts]
        style = "--" if label.startswith("colo") else "-"
        # Colocated layouts dashed in warm colours of their own, so that two of them tell apart in the legend.
        color = COLOCATED_COLORS[colocated.index(label) % len(COLOCATED_COLORS)] if label in colocated else cmap(i)
        for ax, k in ((axes[0], 1), (axes[1], 2)):
            ax.plot(rates, [p[k] for p in pts], style, marker=".", color=color, label=label)
            bad = [p for p in pts if not p[3]]
            ax.plot([p[0] for p in bad], [p[k] for p in bad], "x", color=color, ms=7, ls="none")
    axes[1].plot([], [], "kx", ls="none", label="unstable (queue grows)")
    ttft_name = f"TTFT p90 (ms), {ttft_at}" if ttft_at else "TTFT p90 (ms)"
    for ax, slo, name in ((axes[0], slo_ttft_ms, ttft_name), (axes[1], slo_tpot_ms, "TPOT p90 (ms)")):
        ax.axhline(slo, color="k", lw=1, ls=":", label=f"SLO {slo:g} ms")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(plt.FuncFormatter(log_minor_label(*ax.get_ylim())))
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")  # path may be a temporary name without .png
    plt.close(fig)
    return path


def _stable(row: dict[str, Any]) -> bool:
    return bool(row.get("stable", 1))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher is better on both)."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def front_lines(front: list[dict[str, Any]], met_undrawn: int, undrawn: int) -> list[str]:
    """The list beside the Pareto plot: its front's runs, left to right, and the runs it could not draw."""
    lines = [f"{n}: {r['label']} at {float(r['rate_per_s']):.3g} req/s" for n, r in enumerate(front, start=1)]
    if not front:  # a run that met the SLOs but has no point to draw still met them
        lines.append("no run drawn meets the SLOs" if met_undrawn else "no run meets the SLOs")
    if undrawn:
        lines.append(f"\nnot drawn: {undrawn} run{'s' * (undrawn != 1)} with no TPOT or no throughput"
                     + (f" ({met_undrawn} meeting the SLOs)" if met_undrawn else ""))
    return lines


def plot_pareto(rows: list[dict[str, Any]], path: Path, passes: Callable[[dict[str, Any]], bool],
                slo_text: str, run: str = "") -> Path:
    """Throughput per GPU against speed per user, one point per run. The front is drawn through
    the runs that meet the SLOs (`passes`) only: a run that misses them is no trade-off to choose.
    Front points are numbered and listed beside the plot with their configuration and rate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 4.6), dpi=90)
    drawable = [not (math.isnan(r["output_tok_s_per_user"]) or math.isnan(r["output_tok_s_per_gpu"])) for r in rows]
    usable = [r for r, d in zip(rows, drawable) if d]
    # one-token outputs have no TPOT, so no speed per user; a run that finished nothing, no throughput
    undrawn = [r for r, d in zip(rows, drawable) if not d]
    # Unstable runs are drawn apart and left out of the front: their throughput is not sustainable.
    unstable = [r for r in usable if not _stable(r)]
    usable = [r for r in usable if _stable(r)]
    ok = [r for r in usable if passes(r)]
    for group, style in (([r for r in usable if not passes(r)], dict(facecolors="none", edgecolors="grey",
                                                                      label="misses the SLOs (title)")),
                         ([r for r in ok if not r["label"].startswith("colo")], dict(color="tab:blue",
                                                                                     label="P:D split, meets it")),
                         ([r for r in ok if r["label"].startswith("colo")], dict(color="tab:red",
                                                                                 label="colocated, meets it")),
                         (unstable, dict(marker="x", color="0.5", label="unstable (not on the front)"))):
        if group:
            ax.scatter([r["output_tok_s_per_user"] for r in group], [r["output_tok_s_per_gpu"] for r in group],
                       s=16, alpha=0.7, **style)
    pts = [(r["output_tok_s_per_user"], r["output_tok_s_per_gpu"]) for r in ok]
    front = sorted(pareto_front(pts), key=lambda i: pts[i][0])
    if front:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k-", lw=1, label="Pareto front (meets SLOs)")
        for n, i in enumerate(front, start=1):
            ax.annotate(str(n), pts[i], fontsize=8, fontweight="bold", xytext=(4, 4), textcoords="offset points")
    lines = front_lines([ok[i] for i in front], sum(1 for r in undrawn if passes(r)), len(undrawn))
    fig.text(0.74, 0.92, "front, left to right:\n" + "\n".join(lines), fontsize=7.5, va="top", family="monospace")
    ax.set_xlabel("output tokens/s per user (1000 / mean TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(f"Throughput vs speed per user, every run ({slo_text})" + (f"\n{run}" if run else ""), fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # none when no run has latency figures
        # beside the axes, under the front's list: inside, it hid the runs in its corner
        fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="lower left", bbox_to_anchor=(0.735, 0.08))
    fig.tight_layout(rect=(0, 0, 0.73, 1))
    fig.savefig(path, format="png")  # path may be a temporary name without .png
    plt.close(fig)
    return path
