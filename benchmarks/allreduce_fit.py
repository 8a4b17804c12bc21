"""Re-derive pdsim's measured all-reduce models (pdsim/perf/collectives.py: PCIE_MEASURED for PCIe
servers, NVLINK_MEASURED for NVLink ones) from the collective tables aiconfigurator-core ships, and
print how well each fit follows them; then how the H100-derived NVLink model (what an NVLink GPU
without its own tables gets) follows every NVLink server's tables.

    pip download aiconfigurator-core==0.12.0 --no-deps -d /tmp/aic && unzip -q /tmp/aic/*.whl -d /tmp/aic
    python benchmarks/allreduce_fit.py --systems-dir /tmp/aic/aiconfigurator_core/systems/data

(or, with aiconfigurator-core installed, no option: its own systems data is used). The wheel is
Apache-2.0; nothing of it is copied into pdsim, only the fitted constants, which this script checks.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pdsim

from pdsim.hardware import get_hardware  # noqa: E402
from pdsim.perf.collectives import (  # noqa: E402
    NVLINK4_BY_GPUS,
    NVLINK4_NCCL_BY_GPUS,
    NVLINK_MEASURED,
    PCIE_CUSTOM_MAX_BYTES,
    PCIE_MEASURED,
    nvlink_model,
)

# pdsim hardware -> (aiconfigurator system, vLLM custom all-reduce table, NCCL table)
NVLINK_TABLES = {
    "H100-SXM": ("h100_sxm", "comm/vllm/0.24.0/custom_allreduce_perf.parquet", "comm/nccl/2.27.3/nccl_perf.parquet"),
    "A100-80GB": ("a100_sxm", "comm/vllm/0.14.0/custom_allreduce_perf.parquet", "comm/nccl/2.27.3/nccl_perf.parquet"),
    "B200": ("b200_sxm", "comm/vllm/0.19.0/custom_allreduce_perf.parquet", "comm/nccl/2.29.2/nccl_perf.parquet"),
    "GB200": ("gb200", "comm/vllm/0.19.0/custom_allreduce_perf.parquet", "comm/nccl/2.29.2/nccl_perf.parquet"),
    # not in NVLINK_MEASURED: checked against the H100 model below
    "H200": ("h200_sxm", "comm/vllm/0.19.0/custom_allreduce_perf.parquet", "comm/nccl/2.29.2/nccl_perf.parquet"),
}
PCIE_TABLES = {
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


def fit_protocols(nbytes: np.ndarray, measured_us: np.ndarray, n: int) -> tuple[tuple[float, ...], np.ndarray]:
    """Two lines, the faster taken at each size (pdsim/perf/collectives.py: NCCL's protocols, or the custom
    all-reduce and NCCL): each line fitted as `fit` does on the sizes below / from a split, the split whose two lines
    fit all sizes best (least squares in relative error). Returns (small call us, small busbw, large call us, large
    busbw) and each point's error."""
    x = 2 * (n - 1) / n * nbytes / 1e3
    best = None
    for split in range(2, len(x) - 1):
        c1, b1, _ = fit(nbytes[:split], measured_us[:split], n)
        c2, b2, _ = fit(nbytes[split:], measured_us[split:], n)
        if min(c1, b1, c2, b2) <= 0:
            continue
        rel = np.minimum(c1 + x / b1, c2 + x / b2) / measured_us - 1
        if best is None or (rel ** 2).sum() < (best[1] ** 2).sum():
            best = ((c1, b1, c2, b2), rel)
    assert best is not None
    return best


def rows(table: pd.DataFrame | list[pd.DataFrame], n: int, max_bytes: float) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, us) of n GPUs from MIN_BYTES to below max_bytes; several tables: the fastest at each size."""
    tables = table if isinstance(table, list) else [table]
    t = pd.concat([x[x.num_gpus == n].groupby("message_size").latency.min() for x in tables], axis=1).min(axis=1)
    nbytes = t.index.to_numpy(dtype=float) * 2  # elements of bf16
    keep = (nbytes >= MIN_BYTES) & (nbytes < max_bytes)
    return nbytes[keep], t.to_numpy()[keep] * 1e3


def default_systems_dir() -> Path | None:
    spec = importlib.util.find_spec("aiconfigurator_core")
    return Path(spec.origin).parent / "systems" / "data" if spec and spec.origin else None


def read(systems_dir: Path, system: str, custom_file: str, nccl_file: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    custom = pd.read_parquet(systems_dir / system / custom_file)
    custom = custom[custom.kernel_source == "vLLM_custom_graph"]
    nccl = pd.read_parquet(systems_dir / system / nccl_file)
    return custom, nccl[(nccl.op_name == "all_reduce") & (nccl.nccl_dtype == "half")]


def refit(name: str, nbytes: np.ndarray, us: np.ndarray, n: int, ours: tuple[float, float] | None) -> float:
    """Print the refit beside pdsim's constants (None: a table pdsim does not use); return their largest
    relative difference."""
    c, b, rel = fit(nbytes, us, n)
    beside = "not used by pdsim" if ours is None else f"pdsim {ours[0]} us, {ours[1]} GB/s"
    print(f"  {name}, {n} GPUs: fit {c:.2f} us + busbw {b:.3g} GB/s ({beside});"
          f" mean |error| {np.abs(rel).mean():.0%}, worst {np.abs(rel).max():.0%}")
    return 0.0 if ours is None else max(abs(c / ours[0] - 1), abs(b / ours[1] - 1))


def refit_lines(name: str, nbytes: np.ndarray, us: np.ndarray, n: int, ours: tuple[float, ...] | None,
                from_8_mib: bool = False) -> float:
    """Print the two-line refit beside pdsim's constants (None: a table pdsim does not use) and what one line would
    do; from_8_mib: also the errors from 8 MiB (what NCCL prices behind the custom all-reduce on two GPUs). Returns
    their largest relative difference."""
    refit_constants, rel = fit_protocols(nbytes, us, n)
    beside = "not used by pdsim" if ours is None else f"pdsim {', '.join(f'{c:g}' for c in ours)}"
    print(f"  {name}, {n} GPUs: fit {refit_constants[0]:.3g} us + busbw {refit_constants[1]:.3g} GB/s, "
          f"{refit_constants[2]:.3g} us + busbw {refit_constants[3]:.3g} GB/s, the faster ({beside}); mean |error| "
          f"{np.abs(rel).mean():.0%}, worst {np.abs(rel).max():.0%}")
    refit("  (one line instead)", nbytes, us, n, None)
    if from_8_mib:
        large = nbytes >= PCIE_CUSTOM_MAX_BYTES
        print(f"    from 8 MiB: mean |error| {np.abs(rel[large]).mean():.1%}, worst {np.abs(rel[large]).max():.1%}")
    return 0.0 if ours is None else max(abs(r / c - 1) for r, c in zip(refit_constants, ours))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems-dir", type=Path, default=default_systems_dir())
    args = ap.parse_args()
    if args.systems_dir is None or not args.systems_dir.is_dir():
        sys.exit("no aiconfigurator-core systems data: give --systems-dir (see the usage above)")
    worst = 0.0
    for hardware, (system, custom_file, nccl_file) in PCIE_TABLES.items():
        _, custom_ours, nccl_ours = PCIE_MEASURED[hardware]
        custom, nccl = read(args.systems_dir, system, custom_file, nccl_file)
        print(f"{hardware} ({system}; versions {', '.join(sorted(set(custom.version) | set(nccl.version)))})")
        for n, constants in custom_ours.items():
            worst = max(worst, refit("custom all-reduce", *rows(custom, n, PCIE_CUSTOM_MAX_BYTES), n, constants))
        for n, constants in nccl_ours.items():
            worst = max(worst, refit_lines("NCCL", *rows(nccl, n, MAX_NCCL_BYTES + 1), n, constants, True))
    print()
    print("NVLink: the faster of the custom all-reduce and NCCL at each size, and NCCL alone; "
          "then the H100-derived model (scaled by line rate) against the same tables")
    for hardware, (system, custom_file, nccl_file) in NVLINK_TABLES.items():
        custom, nccl = read(args.systems_dir, system, custom_file, nccl_file)
        print(f"{hardware} ({system}; versions {', '.join(sorted(set(custom.version) | set(nccl.version)))})")
        ours = ((NVLINK4_BY_GPUS, NVLINK4_NCCL_BY_GPUS) if hardware == "H100-SXM" else
                NVLINK_MEASURED[hardware][1:] if hardware in NVLINK_MEASURED else None)
        spec = get_hardware(hardware)
        h100_like = replace(spec, name="H100-SXM")  # the H100 model scaled to this GPU's line rate
        for label, tables, custom_on, i in (("custom or NCCL", [custom, nccl], True, 0), ("NCCL", [nccl], False, 1)):
            for n in sorted(set(nccl.num_gpus)):
                nbytes, us = rows(tables, n, MAX_NCCL_BYTES + 1)
                worst = max(worst, refit_lines(label, nbytes, us, n, None if ours is None else ours[i].get(n)))
                h100_model = nvlink_model(h100_like, n, custom_on)
                rel = np.array([h100_model.time_us(b, n) for b in nbytes]) / us - 1
                print(f"    H100 model x{spec.intra_node_bw_gbps / 450:.2f} ({label}, {n} GPUs): mean |error| "
                      f"{np.abs(rel).mean():.0%}, signed {rel.mean():+.0%}")
    print(f"largest difference between a refit and pdsim's constants: {worst:.1%}")
    if worst > 0.02:
        sys.exit("pdsim's constants do not follow from these tables")


if __name__ == "__main__":
    main()
