"""Re-derive pdsim's measured PCIe all-reduce models (pdsim/perf/collectives.py, PCIE_MEASURED) from
the collective tables aiconfigurator-core ships, and print how well each fit follows them.

    pip download aiconfigurator-core==0.12.0 --no-deps -d /tmp/aic && unzip -q /tmp/aic/*.whl -d /tmp/aic
    python benchmarks/pcie_allreduce_fit.py --systems-dir /tmp/aic/aiconfigurator_core/systems/data

(or, with aiconfigurator-core installed, no option: its own systems data is used). The wheel is
Apache-2.0; nothing of it is copied into pdsim, only the fitted constants, which this script checks.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pdsim

from pdsim.perf.collectives import PCIE_CUSTOM_MAX_BYTES, PCIE_MEASURED  # noqa: E402

# pdsim hardware -> (aiconfigurator system, vLLM custom all-reduce table, NCCL table)
TABLES = {
    "RTXPRO6000": ("rtx_pro_6000_server", "comm/vllm/0.19.0/custom_allreduce_perf.parquet",
                   "comm/nccl/2.29.2/nccl_perf.parquet"),
    # the folder named 0.22.0 holds vLLM 0.14.0's measurements (its `version` column)
    "L40S": ("l40s", "comm/vllm/0.22.0/custom_allreduce_perf.parquet", "comm/nccl/2.27.3/nccl_perf.parquet"),
}
MIN_BYTES, MAX_NCCL_BYTES = 8e3, 256e6


def fit(nbytes: np.ndarray, measured_us: np.ndarray, n: int) -> tuple[float, float, np.ndarray]:
    """call us + 2 (n - 1) / n x bytes / busbw, least squares in relative error; returns the
    constants and each point's relative error."""
    x = 2 * (n - 1) / n * nbytes / 1e3
    a = np.column_stack([1 / measured_us, x / measured_us])
    (call_us, us_per_kb), *_ = np.linalg.lstsq(a, np.ones_like(measured_us), rcond=None)
    return float(call_us), float(1 / us_per_kb), (call_us + x * us_per_kb) / measured_us - 1


def rows(table: pd.DataFrame, n: int, max_bytes: float) -> tuple[np.ndarray, np.ndarray]:
    t = table[table.num_gpus == n].groupby("message_size").latency.min()
    nbytes = t.index.to_numpy(dtype=float) * 2  # elements of bf16
    keep = (nbytes >= MIN_BYTES) & (nbytes < max_bytes)
    return nbytes[keep], t.to_numpy()[keep] * 1e3


def default_systems_dir() -> Path | None:
    spec = importlib.util.find_spec("aiconfigurator_core")
    return Path(spec.origin).parent / "systems" / "data" if spec and spec.origin else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems-dir", type=Path, default=default_systems_dir())
    args = ap.parse_args()
    if args.systems_dir is None or not args.systems_dir.is_dir():
        sys.exit("no aiconfigurator-core systems data: give --systems-dir (see the usage above)")
    worst = 0.0
    for hardware, (system, custom_file, nccl_file) in TABLES.items():
        _, custom_ours, nccl_ours = PCIE_MEASURED[hardware]
        custom = pd.read_parquet(args.systems_dir / system / custom_file)
        custom = custom[custom.kernel_source == "vLLM_custom_graph"]
        nccl = pd.read_parquet(args.systems_dir / system / nccl_file)
        nccl = nccl[(nccl.op_name == "all_reduce") & (nccl.nccl_dtype == "half")]
        print(f"{hardware} ({system}; versions {', '.join(sorted(set(custom.version) | set(nccl.version)))})")
        for name, table, ours, max_bytes in (("custom all-reduce", custom, custom_ours, PCIE_CUSTOM_MAX_BYTES),
                                             ("NCCL", nccl, nccl_ours, MAX_NCCL_BYTES + 1)):
            for n, (call_us, bus_bw) in ours.items():
                c, b, rel = fit(*rows(table, n, max_bytes), n)
                drift = max(abs(c / call_us - 1), abs(b / bus_bw - 1))
                worst = max(worst, drift)
                print(f"  {name}, {n} GPUs: fit {c:.2f} us + busbw {b:.3g} GB/s (pdsim {call_us} us, {bus_bw} GB/s);"
                      f" mean |error| {np.abs(rel).mean():.0%}, worst {np.abs(rel).max():.0%}")
    print(f"largest difference between a refit and pdsim's constants: {worst:.1%}")
    if worst > 0.02:
        sys.exit("pdsim's constants do not follow from these tables")


if __name__ == "__main__":
    main()
