"""PNG plots of a run: latency CDFs and per-instance memory and throughput over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; plots are files
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax, values: np.ndarray, label: str, xlabel: str) -> None:
    values = np.sort(values[~np.isnan(values)])
    if values.size:
        ax.plot(values, np.arange(1, values.size + 1) / values.size, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)


def write_plots(df: pd.DataFrame, samples: pd.DataFrame, prefix: Path) -> list[Path]:
    """Writes <prefix>_latency_cdf.png, <prefix>_memory.png and <prefix>_throughput.png."""
    plt = _pyplot()
    paths = []
    finished = df[df.status == "finished"]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _cdf(axes[0], finished.ttft_ms.to_numpy(dtype=float), "TTFT", "TTFT (ms)")
    _cdf(axes[1], finished.tpot_ms.to_numpy(dtype=float), "TPOT", "TPOT (ms)")
    axes[0].set_title("Time to first token")
    axes[1].set_title("Time per output token")
    fig.tight_layout()
    paths.append(prefix.with_name(prefix.name + "_latency_cdf.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if not samples.empty:
        fig, ax = plt.subplots(figsize=(9, 4))
        for inst, g in samples.groupby("instance", sort=False):
            ax.plot(g.time_s, g.mem_used_gb, label=f"{inst} total")
            ax.plot(g.time_s, g.kv_used_gb, linestyle="--", label=f"{inst} KV cache")
        paths.append(_finish_over_time(plt, fig, ax, "memory per GPU (GB)", "Memory over time", prefix, "memory"))

        fig, ax = plt.subplots(figsize=(9, 4))
        for inst, g in samples.groupby("instance", sort=False):
            dt = np.diff(g.time_s.to_numpy())
            if dt.size == 0:
                continue
            dt[dt <= 0] = np.nan
            t = g.time_s.to_numpy()[1:]
            ax.plot(t, np.diff(g.prompt_tokens.to_numpy()) / dt, label=f"{inst} prompt tok/s")
            ax.plot(t, np.diff(g.decode_tokens.to_numpy()) / dt, linestyle="--", label=f"{inst} decode tok/s")
        paths.append(_finish_over_time(plt, fig, ax, "tokens/s", "Throughput over time", prefix, "throughput"))
    return paths


def _finish_over_time(plt, fig, ax, ylabel: str, title: str, prefix: Path, name: str) -> Path:
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = prefix.with_name(f"{prefix.name}_{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
