"""When disaggregation wins and when it loses: 1P1D against two colocated instances on the same GPUs.

Llama-3.1-8B on H100-SXM (pdsim's bundled profile), Poisson arrivals, two workloads:
- chat-like: short prompts (~256 tokens), long outputs (~1024 tokens);
- summarisation-like: long prompts (~8000 tokens), short outputs (~128 tokens);
and three clusters on two GPUs: two colocated instances, 1P1D over a slow link (10 GbE:
1.25 GB/s, 50 us), 1P1D over a fast one (NVLink-class fabric on one node, 450 GB/s).

Reported per run: mean and p99 TTFT (client view: through the decode instance) and TPOT,
mean end-to-end latency, mean KV transfer time, and SLO attainment (share of requests meeting
both the TTFT and the TPOT SLO, DistServe's goodput criterion): chat TTFT <= 500 ms and TPOT
<= 20 ms; summarisation TTFT <= 2 s and TPOT <= 12 ms (its readers want a steady stream).

Run: python benchmarks/pd_tradeoff.py [--num-requests 400]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from pdsim.config import ClusterConfig, cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.metrics.summary import requests_frame
from pdsim.workload.generate import generate_requests

MODEL = "meta-llama/Llama-3.1-8B"
WORKLOADS = {
    # name: (input spec, output spec, arrival rate req/s, TTFT SLO ms, TPOT SLO ms)
    "short prompt, long output": ("lognormal:256,64,max=1024", "lognormal:1024,256,max=2048", 12.0, 500, 20),
    "long prompt, short output": ("lognormal:8000,1000,max=12000", "lognormal:128,32,max=256", 2.6, 2000, 12),
}


def _instance(pd_type: str | None) -> dict:
    return {
        "model_name": MODEL, "hardware": "H100-SXM", "pd_type": pd_type, "max_num_batched_tokens": 2048,
        "npu_mem": {"mem_size": 80, "mem_bw": 3350, "mem_latency": 0}, "gpu_memory_utilization": 0.9,
    }


def clusters() -> dict[str, ClusterConfig]:
    colocated = {"num_nodes": 1, "link_bw": 50, "link_latency": 5000, "nodes": [
        {"num_instances": 2, "instances": [_instance(None), _instance(None)]}]}
    slow = {"num_nodes": 2, "link_bw": 1.25, "link_latency": 50000, "nodes": [
        {"num_instances": 1, "instances": [_instance("prefill")]},
        {"num_instances": 1, "instances": [_instance("decode")]}]}
    fast = {"num_nodes": 1, "link_bw": 50, "link_latency": 5000, "nodes": [
        {"num_instances": 2, "intra_node_bw": 450, "instances": [_instance("prefill"), _instance("decode")]}]}
    return {name: cluster_config_from_dict(raw) for name, raw in
            [("2 colocated", colocated), ("1P1D, 10GbE", slow), ("1P1D, NVLink", fast)]}


def run(num_requests: int, seed: int = 0) -> list[dict]:
    out = []
    for wl, (inp, outp, rate, slo_ttft_ms, slo_tpot_ms) in WORKLOADS.items():
        trace = generate_requests(num_requests, rate, inp, outp, seed=seed)
        for name, cfg in clusters().items():
            res = simulate(cfg, trace, SimOptions(seed=seed, ttft_mode="client"))
            df = requests_frame(res)
            done = df[df.status == "finished"]
            ok = (done.ttft_ms <= slo_ttft_ms) & ((done.tpot_ms <= slo_tpot_ms) | done.tpot_ms.isna())
            out.append({
                "workload": wl, "cluster": name, "finished": len(done),
                "ttft_mean_ms": done.ttft_ms.mean(), "ttft_p99_ms": np.percentile(done.ttft_ms, 99),
                "tpot_mean_ms": done.tpot_ms.mean(), "tpot_p99_ms": np.nanpercentile(done.tpot_ms, 99),
                "e2e_mean_s": done.e2e_ms.mean() / 1e3, "kv_transfer_ms": done.kv_transfer_ms.mean(),
                "slo": ok.sum() / len(df),
            })
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| workload | cluster | TTFT mean / p99 (ms) | TPOT mean / p99 (ms) | E2E mean (s) | KV transfer (ms) "
        "| SLO attainment |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kv = "-" if np.isnan(r["kv_transfer_ms"]) else f"{r['kv_transfer_ms']:.1f}"
        lines.append(
            f"| {r['workload']} | {r['cluster']} | {r['ttft_mean_ms']:,.0f} / {r['ttft_p99_ms']:,.0f} "
            f"| {r['tpot_mean_ms']:.1f} / {r['tpot_p99_ms']:.1f} | {r['e2e_mean_s']:.2f} | {kv} | {r['slo']:.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # profile extrapolation notes; the table is the point here
    print(markdown(run(args.num_requests, args.seed)))
