"""PNG plots of a sweep or search: goodput per GPU by P:D ratio, p90 latencies against rate with
the SLO lines, and the throughput-per-GPU vs speed-per-user Pareto front."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_goodput(goodput_rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Bars in expansion order (P:D from prefill-light to prefill-heavy, then colocated)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
    labels = [r["label"] for r in goodput_rows]
    values = [r["goodput_per_gpu"] for r in goodput_rows]
    best = int(np.argmax(values)) if values else -1
    colors = ["tab:orange" if r["ratio"] == "colo" else "tab:blue" for r in goodput_rows]
    if best >= 0:
        colors[best] = "tab:green"
    ax.bar(range(len(labels)), values, color=colors)
    if goodput_rows and "est_per_gpu" in goodput_rows[0]:
        ax.plot(range(len(labels)), [r["est_per_gpu"] for r in goodput_rows], "kx", label="rate-matching estimate")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("goodput (req/s per GPU)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_latency_vs_rate(rows: list[dict[str, Any]], slo_ttft_ms: float, slo_tpot_ms: float, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    cmap = plt.get_cmap("viridis", max(2, len(labels)))
    for i, label in enumerate(labels):
        pts = sorted((float(r["rate_per_s"]), r["ttft_p90_ms"], r["tpot_p90_ms"], _stable(r))
                     for r in rows if r["label"] == label)
        rates = [p[0] for p in pts]
        style = "--" if label.startswith("colo") else "-"
        color = "tab:red" if label.startswith("colo") else cmap(i)
        for ax, k in ((axes[0], 1), (axes[1], 2)):
            ax.plot(rates, [p[k] for p in pts], style, marker=".", color=color, label=label)
            bad = [p for p in pts if not p[3]]
            ax.plot([p[0] for p in bad], [p[k] for p in bad], "x", color=color, ms=7, ls="none")
    axes[1].plot([], [], "kx", ls="none", label="unstable (queue grows)")
    for ax, slo, name in ((axes[0], slo_ttft_ms, "TTFT p90 (ms)"), (axes[1], slo_tpot_ms, "TPOT p90 (ms)")):
        ax.axhline(slo, color="k", lw=1, ls=":", label="SLO")
        ax.set_yscale("log")
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
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


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    pts = [(r["output_tok_s_per_user"], r["output_tok_s_per_gpu"]) for r in rows]
    keep = [i for i, (x, y) in enumerate(pts) if not (math.isnan(x) or math.isnan(y))]
    bad_pts = [pts[i] for i in keep if not _stable(rows[i])]
    # Unstable runs are drawn apart and left out of the front: their throughput is not sustainable.
    keep = [i for i in keep if _stable(rows[i])]
    pts = [pts[i] for i in keep]
    labels = [rows[i]["label"] for i in keep]
    colo = np.array([lab.startswith("colo") for lab in labels], dtype=bool)
    xy = np.array(pts, dtype=float).reshape(-1, 2)
    ax.scatter(xy[~colo, 0], xy[~colo, 1], s=12, alpha=0.6, label="P:D splits")
    ax.scatter(xy[colo, 0], xy[colo, 1], s=12, alpha=0.6, color="tab:red", label="colocated")
    if bad_pts:
        bad = np.array(bad_pts, dtype=float)
        ax.scatter(bad[:, 0], bad[:, 1], s=16, marker="x", color="0.5", label="unstable (not on the front)")
    front = sorted(pareto_front(pts), key=lambda i: pts[i][0])
    if front:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k-", lw=1, label="Pareto front")
        for i in front:
            ax.annotate(labels[i], pts[i], fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("output tokens/s per user (1000 / mean TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
