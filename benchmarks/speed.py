"""Simulation speed: requests and simulated seconds per wall second, and peak memory.

Synthetic Poisson traces (input ~1000, output ~200 tokens) of 10k and 100k requests on the
1P1D and 2P2D example clusters, and with --large N on a cluster of N/2 prefill and N/2 decode
H100s (configs/cluster/sweep_base_h100.json's instance, 4 req/s per instance), where the
per-request routing and hand-off checks over the pool show.
Run: python benchmarks/speed.py [--sizes 10000,100000] [--large 64]
Each run happens in a fresh process so the peak memory (ru_maxrss) is that run's own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "1P1D": REPO / "configs/cluster/single_node_pd_instance.json",
    "2P2D": REPO / "configs/cluster/multi_node_2p2d.json",
}
# Rates that load the clusters without overloading them: the run then measures steady serving.
RATES = {"1P1D": 8.0, "2P2D": 16.0}

CHILD = r"""
import json, resource, sys, time
from pdsim.config import load_cluster_config
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.workload.generate import generate_requests
from pdsim.metrics.summary import requests_frame, summarize
config, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
trace = generate_requests(n, rate, "normal:1000,200", "normal:200,50", seed=0)
cfg = load_cluster_config(config)
t0 = time.perf_counter()
res = simulate(cfg, trace, SimOptions())
sim_wall = time.perf_counter() - t0
df = requests_frame(res)
summary = summarize(res, df)
total_wall = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"sim_wall_s": sim_wall, "total_wall_s": total_wall, "sim_end_s": res.sim_end_s,
                  "finished": summary["finished"], "peak_rss_mb": peak_mb,
                  "tpot_p50_ms": summary["tpot_ms"]["p50"], "ttft_p50_ms": summary["ttft_ms"]["p50"]}))
"""


def large_cluster(folder: Path, half: int) -> Path:
    cfg = json.loads((REPO / "configs/cluster/sweep_base_h100.json").read_text())
    node = cfg["nodes"][0]
    one = node["instances"][0]
    node["instances"] = [dict(one, pd_type=kind) for kind in ("prefill", "decode") for _ in range(half)]
    node["num_instances"] = 2 * half
    path = folder / f"{half}p{half}d.json"
    path.write_text(json.dumps(cfg))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--large", type=int, default=0, help="also a cluster of this many instances (even)")
    args = parser.parse_args()
    print(f"{'cluster':<8}{'requests':>10}{'finished':>10}{'wall_s':>9}{'req/s wall':>12}"
          f"{'sim_s':>9}{'sim_s/wall_s':>14}{'peak_mb':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        configs, rates = dict(CONFIGS), dict(RATES)
        if args.large:
            half = args.large // 2
            name = f"{half}P{half}D"
            configs[name] = large_cluster(Path(tmp), half)
            rates[name] = 4.0 * 2 * half
        for name, config in configs.items():
            for n in (int(x) for x in args.sizes.split(",")):
                out = subprocess.run([sys.executable, "-c", CHILD, str(config), str(n), str(rates[name])],
                                     check=True, capture_output=True, text=True, cwd=REPO)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                wall = r["total_wall_s"]
                print(f"{name:<8}{n:>10}{r['finished']:>10}{wall:>9.2f}{n / wall:>12,.0f}"
                      f"{r['sim_end_s']:>9.0f}{r['sim_end_s'] / wall:>14,.0f}{r['peak_rss_mb']:>9.0f}")


if __name__ == "__main__":
    main()
