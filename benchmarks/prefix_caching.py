"""Prefix caching and cache-aware routing on Mooncake's conversation trace (2P2D, Llama-3.1-8B).

Replays the first --window-s seconds of ../shared/data/traces/mooncake_conversation_trace.jsonl
(timestamp ms, input_length, output_length, hash_ids of 512-token blocks) on
configs/cluster/multi_node_2p2d.json (H100, TP1) and on the same cluster with H200s at TP2 (4x the
KV cache per instance), step times estimated from hardware specs, with prefix caching off and on
and each routing policy on both pools. Prints a markdown table: prefill-side
prefix hit rate (prompt tokens found cached), TTFT p50/p90 as a client of the P/D proxy sees it
(prefill + KV transfer + first decode step), prefill GPU-seconds (busy time x TP of the prefill
instances) and KV bytes sent to the decode instances.

Run: python benchmarks/prefix_caching.py [--window-s 600] [--trace PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pdsim.config import ClusterConfig, cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.engine.instance import Instance
from pdsim.metrics.summary import requests_frame
from pdsim.workload.trace import TraceRequest

REPO = Path(__file__).resolve().parent.parent
TRACE = REPO.parent / "shared/data/traces/mooncake_conversation_trace.jsonl"
CONFIG = REPO / "configs/cluster/multi_node_2p2d.json"
MOONCAKE_BLOCK_TOKENS = 512  # each Mooncake hash id names a 512-token block
RUNS = [(False, "least_loaded"), (True, "least_loaded"), (True, "power_of_two"),
        (True, "prefix_aware"), (True, "kv_aware")]


def mooncake_requests(path: Path, window_s: float) -> list[TraceRequest]:
    """Mooncake's JSONL (timestamp in ms) as pdsim trace requests, those arriving within the window."""
    out: list[TraceRequest] = []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            t_ns = int(row["timestamp"]) * 1_000_000
            if t_ns >= window_s * 1e9:
                continue
            out.append(TraceRequest(len(out), int(row["input_length"]), int(row["output_length"]), t_ns,
                                    tuple(row["hash_ids"]), MOONCAKE_BLOCK_TOKENS))
    out.sort(key=lambda r: r.arrival_time_ns)
    return out


def unbounded_hit_rate(trace: list[TraceRequest]) -> float:
    """Prompt tokens a cache that never evicts would find (leading hash ids seen before, at most all
    but the last token): the most any cache or router could get on this window."""
    seen: set[tuple[int, ...]] = set()
    hit = total = 0
    for r in trace:
        total += r.input_toks
        n = 0
        while n < len(r.hash_ids) and r.hash_ids[: n + 1] in seen:
            n += 1
        hit += min(n * r.hash_block_tokens, r.input_toks - 1) // 16 * 16
        seen.update(r.hash_ids[: k + 1] for k in range(len(r.hash_ids)))
    return hit / total


def cluster(name: str, caching: bool) -> ClusterConfig:
    raw = json.loads(CONFIG.read_text())
    for node in raw["nodes"]:
        for inst in node["instances"]:
            inst["enable_prefix_caching"] = caching
            if name == "H200 TP2":
                inst.update(hardware="H200", tp_size=2, num_npus=2,
                            npu_mem={"mem_size": 141, "mem_bw": 4800, "mem_latency": 0})
    return cluster_config_from_dict(raw, str(CONFIG))


def run_one(trace: list[TraceRequest], name: str, caching: bool, policy: str) -> dict:
    cfg = cluster(name, caching)
    opts = SimOptions(prefill_policy=policy, decode_policy=policy, ttft_mode="client")
    started = time.perf_counter()
    res = simulate(cfg, trace, opts)
    wall_s = time.perf_counter() - started
    df = requests_frame(res)
    done = df[df.status == "finished"]
    prefill = [i for i in res.instances if i.pd_type == "prefill"]
    decode = [i for i in res.instances if i.pd_type == "decode"]

    def rate(insts: list[Instance]) -> float:
        query = sum(i.kv.query_tokens for i in insts)
        return sum(i.kv.hit_tokens for i in insts) / query if query else 0.0

    ttft = done.ttft_ms.to_numpy(dtype=float)
    return {
        "caching": caching, "policy": policy, "requests": len(df), "finished": len(done),
        "prefill_hit_rate": rate(prefill), "decode_hit_rate": rate(decode),
        "ttft_p50_ms": float(np.percentile(ttft, 50)), "ttft_p90_ms": float(np.percentile(ttft, 90)),
        "prefill_gpu_s": sum(i.stats.busy_s * i.spec.tp for i in prefill),
        "prompt_tokens_computed": sum(i.stats.prompt_tokens for i in prefill),
        "kv_gb": float(df.kv_bytes.sum()) / 1e9, "wall_s": wall_s,
        "cache_tokens": prefill[0].kv.num_blocks * prefill[0].kv.block_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--window-s", type=float, default=600.0)
    args = parser.parse_args()
    trace = mooncake_requests(args.trace, args.window_s)
    print(f"{len(trace)} requests of {args.trace.name} in the first {args.window_s:g} s; {CONFIG.name}; "
          "step times estimated from hardware specs")
    print(f"a cache that never evicts would find {unbounded_hit_rate(trace):.1%} of the prompt tokens\n")
    print("| 2P2D | prefix caching | routing (both pools) | finished | prefix hit rate (prefill / decode) "
          "| TTFT p50 (ms) | TTFT p90 (ms) | prefill GPU-s | prompt tokens computed | KV sent (GB) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("H100 TP1", "H200 TP2"):
        for caching, policy in RUNS:
            r = run_one(trace, name, caching, policy)
            print(f"| {name}, {r['cache_tokens'] / 1e6:.2f}M-token KV cache each "
                  f"| {'on' if caching else 'off'} | {policy} | {r['finished']}/{r['requests']} "
                  f"| {r['prefill_hit_rate']:.1%} / {r['decode_hit_rate']:.1%} | {r['ttft_p50_ms']:,.0f} "
                  f"| {r['ttft_p90_ms']:,.0f} | {r['prefill_gpu_s']:,.1f} | {r['prompt_tokens_computed']:,} "
                  f"| {r['kv_gb']:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
