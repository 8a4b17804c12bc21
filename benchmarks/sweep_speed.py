"""Benchmark: a P:D sweep of 7 ratios x 4 rates x 2,000 requests (plus the colocated baseline) on
the local process pool. The target is under 2 minutes on a 2-core machine.

    python benchmarks/sweep_speed.py [--workers N] [--requests 2000] [--ray] [--expand-gpus 1000]

It also times the expansion alone of a large budget into every split (what a sweep does before its
first run), which must stay a small part of such a sweep.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pdsim.config import load_cluster_config
from pdsim.sweep.expand import expand
from pdsim.sweep.runner import Job, RunSettings, Slo, make_executor, run_sweep
from pdsim.workload.generate import generate_requests

ROOT = Path(__file__).resolve().parent.parent
RATES = (2.0, 4.0, 8.0, 16.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--ray", action="store_true", help="run on a fresh local Ray instance instead")
    ap.add_argument("--expand-gpus", type=int, default=1000, help="budget of the expansion timing (0: skip)")
    args = ap.parse_args()

    base = load_cluster_config(ROOT / "configs" / "cluster" / "sweep_base_h100.json")
    variants = expand(base, 8)  # 1P7D ... 7P1D and colo-8x
    # The default generator's mix (prompts ~1000, outputs ~200), the same one workloads/example_trace.jsonl uses.
    trace = generate_requests(args.requests, 4.0, "lognormal:1000,500,max=4096", "lognormal:200,100,max=1024", seed=0)
    settings = RunSettings(slo=Slo(ttft_ms=2000, tpot_ms=100), profiles_root=str(ROOT / "profiles"))
    jobs = [Job(v, r) for v in variants for r in RATES]
    started = time.perf_counter()
    executor = make_executor(trace, settings, args.workers, "local" if args.ray else None, ray_num_cpus=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rows = run_sweep(jobs, executor, Path(tmp) / "runs.csv", resume=False)
        finally:
            executor.close()
    wall_s = time.perf_counter() - started
    split_runs = sum(1 for r in rows if r["ratio"] != "colo")
    print(f"{len(rows)} runs ({split_runs} P:D split runs = 7 ratios x {len(RATES)} rates, + colocated) x "
          f"{args.requests} requests on {args.workers} {'Ray' if args.ray else 'pool'} worker(s), "
          f"{os.cpu_count()} CPUs: {wall_s:.1f} s wall ({wall_s / len(rows):.2f} s per run per machine)")
    if args.expand_gpus:
        started = time.perf_counter()
        large = expand(base, args.expand_gpus)
        print(f"expanding {args.expand_gpus} GPUs into every split: {len(large)} configurations of "
              f"{args.expand_gpus} instances in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
