"""Closed-loop benchmark tables (one row per isl, osl, concurrency, tp), simulated row by row.

Each row is what `vllm bench serve --max-concurrency C` measures with fixed lengths: C clients,
each sending its next request when its previous one ends. The simulated row runs
`waves * C` requests the same way and reports the benchmark's statistics: mean TTFT and mean
TPOT over the requests after the first wave. Clients start spread over one request lifetime
(see SimOptions.client_start_spread_s): measured TTFTs at low concurrency are those of a lone
prefill, which clients in lockstep (all prompts in one step) cannot produce.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.config import ClusterConfig
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.metrics.summary import requests_frame
from pdsim.workload.trace import TraceRequest

# vLLM v1's defaults for `vllm serve` on GPUs with >= 70 GiB (vllm/engine/arg_utils.py):
# max_num_batched_tokens 8192, max_num_seqs 1024; gpu_memory_utilization 0.9.
VLLM_SERVE_DEFAULTS = {"max_num_seqs": 1024, "max_num_batched_tokens": 8192, "mem_util": 0.9}


def row_config(model: str, hardware: str, mem_gb: float, tp: int, profile_dir: str | None = None,
               engine: dict | None = None) -> ClusterConfig:
    eng = {**VLLM_SERVE_DEFAULTS, **(engine or {})}
    inst = {
        "model_name": model, "hardware": hardware, "num_npus": tp, "tp_size": tp, "pd_type": None,
        "npu_mem": {"mem_size": mem_gb, "mem_bw": 3350, "mem_util": eng["mem_util"]},
        "max_num_seqs": eng["max_num_seqs"], "max_num_batched_tokens": eng["max_num_batched_tokens"],
    }
    if profile_dir is not None:
        inst["profile_dir"] = profile_dir
    return ClusterConfig.model_validate({
        "num_nodes": 1, "link_bw": 16, "link_latency": 0,
        "nodes": [{"num_instances": 1, "instances": [inst]}],
    })


def simulate_row(cfg: ClusterConfig, isl: int, osl: int, concurrency: int, opts: SimOptions,
                 waves: int = 4, spread: bool = True) -> dict[str, float]:
    n = concurrency * waves
    trace = [TraceRequest(i, isl, osl, 0) for i in range(n)]
    # A lockstep pass measures how long one request lives; the real pass spreads the clients'
    # first requests over that time, the desynchronised steady state a long benchmark reaches.
    first = requests_frame(simulate(cfg, trace[:concurrency], replace(opts, concurrency=concurrency)))
    spread_s = float(first.e2e_ms.mean()) / 1e3 if spread else 0.0
    result = simulate(cfg, trace, replace(opts, concurrency=concurrency, client_start_spread_s=spread_s))
    df = requests_frame(result)
    steady = df.iloc[concurrency:] if waves > 1 else df
    steady = steady[steady.status == "finished"]
    return {"sim_ttft_ms": float(steady.ttft_ms.mean()), "sim_tpot_ms": float(steady.tpot_ms.mean()),
            "sim_preemptions": int(df.preemptions.sum())}


def simulate_table(table: pd.DataFrame, model: str, hardware: str, mem_gb: float,
                   profile_dir_for_tp, opts: SimOptions | None = None, waves: int = 4,
                   engine: dict | None = None, spread: bool = True) -> pd.DataFrame:
    """Every row simulated; adds sim_ttft_ms, sim_tpot_ms and their % errors.

    profile_dir_for_tp: tp -> profile folder (or None to look profiles up by hardware/model).
    """
    opts = opts or SimOptions()
    out = []
    for row in table.itertuples(index=False):
        cfg = row_config(model, hardware, mem_gb, int(row.tp), profile_dir_for_tp(int(row.tp)), engine)
        sim = simulate_row(cfg, int(row.isl), int(row.osl), int(row.concurrency), opts, waves, spread)
        out.append({**row._asdict(), **sim})
    df = pd.DataFrame(out)
    df["ttft_err_pct"] = (df.sim_ttft_ms - df.ttft_ms) / df.ttft_ms * 100
    df["tpot_err_pct"] = (df.sim_tpot_ms - df.tpot_ms) / df.tpot_ms * 100
    return df


def mape(errors_pct: pd.Series) -> float:
    return float(np.mean(np.abs(errors_pct)))


def format_rows(df: pd.DataFrame) -> str:
    lines = [f"{'isl':>6}{'osl':>6}{'conc':>6}{'tp':>4}{'TTFT meas':>11}{'sim':>9}{'err':>8}"
             f"{'TPOT meas':>11}{'sim':>8}{'err':>8}"]
    for r in df.itertuples(index=False):
        lines.append(f"{r.isl:>6}{r.osl:>6}{r.concurrency:>6}{r.tp:>4}{r.ttft_ms:>11.1f}{r.sim_ttft_ms:>9.1f}"
                     f"{r.ttft_err_pct:>+7.1f}%{r.tpot_ms:>11.2f}{r.sim_tpot_ms:>8.2f}{r.tpot_err_pct:>+7.1f}%")
    lines.append(f"MAPE: TTFT {mape(df.ttft_err_pct):.1f}%, TPOT {mape(df.tpot_err_pct):.1f}% over {len(df)} rows")
    return "\n".join(lines)


def default_profile_lookup(root: Path | str | None):
    return lambda tp: None if root is None else str(root)
