"""pdsim vs NVIDIA aiconfigurator's own estimate, on the 90 measured H100 Qwen3-32B vLLM 0.12.0 rows.

    python benchmarks/aiconfigurator_compare.py [--aic-python /path/to/venv/bin/python]

pdsim side: profiles imported from aiconfigurator's per-kernel database in ../shared
(`pdsim profile import-aiconfigurator`), every row simulated as `pdsim validate` does (closed
loop, aiconfigurator's engine preset, step_overhead_us 1500 as `pdsim calibrate` fits it on TPOT).

aiconfigurator side: `aiconfigurator.cli.api.cli_estimate(mode="agg", ...)`, the function behind
`aiconfigurator cli estimate --estimate-mode agg`, with its defaults (SILICON database, its newest
h100_sxm vLLM tables). It needs `pip install aiconfigurator==0.12.0`, best in a venv of its own
(`--aic-python` names that venv's python); without it only pdsim's figures are printed.
Both are scored on the rows both could estimate (aiconfigurator refuses some as out of memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "calibration" / "aiconfigurator-h100"
TABLE = SHARED / "silicon_h100_qwen3-32b_vllm-0.12.0_agg_bf16.csv"
SYSTEMS = SHARED / "systems_data_h100_sxm"
KEY = ["isl", "osl", "concurrency", "tp"]

# Runs under the aiconfigurator python: one JSON line per row, estimate or error.
AIC_SCRIPT = r"""
import csv, json, logging, sys, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from aiconfigurator.cli.api import cli_estimate
for r in csv.DictReader(open(sys.argv[1])):
    row = {"isl": int(r["isl"]), "osl": int(r["osl"]), "concurrency": int(r["batch_size"]), "tp": int(r["tp_size"])}
    try:
        res = cli_estimate(model_path=r["model_path"], system_name=r["system"], mode="agg",
                           backend_name=r["backend"], database_mode="SILICON", isl=row["isl"], osl=row["osl"],
                           batch_size=row["concurrency"], tp_size=row["tp"], pp_size=int(r["pp_size"]))
        row.update(aic_ttft_ms=res.ttft, aic_tpot_ms=res.tpot, aic_backend_version=res.backend_version)
    except Exception as e:
        row["aic_error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    print(json.dumps(row), flush=True)
"""


def pdsim_rows(workdir: Path) -> pd.DataFrame:
    profiles = workdir / "aic"
    subprocess.run([sys.executable, "-m", "pdsim", "profile", "import-aiconfigurator", "--systems-dir", str(SYSTEMS),
                    "--system", "h100_sxm", "--model", "Qwen/Qwen3-32B", "--tp", "2", "--tp", "4", "--tp", "8",
                    "--out", str(profiles)], check=True, stdout=subprocess.DEVNULL)
    out = workdir / "pdsim.csv"
    subprocess.run([sys.executable, "-m", "pdsim", "validate", "--measured", str(TABLE), "--profile-dir",
                    str(profiles), "--step-overhead-us", "1500", "--output", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return pd.read_csv(out)


def aic_rows(python: str) -> pd.DataFrame | None:
    probe = subprocess.run([python, "-c", "import aiconfigurator"], capture_output=True)
    if probe.returncode != 0:
        print(f"aiconfigurator is not importable by {python}: install it with "
              "`pip install aiconfigurator==0.12.0` (best in its own venv, then --aic-python)")
        return None
    done = subprocess.run([python, "-c", AIC_SCRIPT, str(TABLE)], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return pd.DataFrame(rows).reindex(columns=KEY + ["aic_ttft_ms", "aic_tpot_ms", "aic_backend_version", "aic_error"])


def mape(err: pd.Series) -> str:
    return f"{err.abs().mean():5.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aic-python", default=sys.executable, help="python that can import aiconfigurator")
    args = parser.parse_args()
    if not TABLE.is_file():
        sys.exit(f"{TABLE}: not found (this benchmark reads ../shared beside the repository)")
    with tempfile.TemporaryDirectory() as tmp:
        sim = pdsim_rows(Path(tmp))
    table = sim[KEY + ["ttft_ms", "tpot_ms", "ttft_err_pct", "tpot_err_pct"]]
    aic = aic_rows(args.aic_python)
    if aic is not None:
        for r in aic[aic.aic_error.notna()].itertuples():
            print(f"aiconfigurator could not estimate isl {r.isl} osl {r.osl} conc {r.concurrency} tp {r.tp}: "
                  f"{r.aic_error}")
        aic = aic.dropna(subset=["aic_ttft_ms"])
        print("aiconfigurator database:", ", ".join(sorted(set(aic.aic_backend_version))))
        table = table.merge(aic[KEY + ["aic_ttft_ms", "aic_tpot_ms"]], on=KEY)
        table["aic_ttft_err_pct"] = (table.aic_ttft_ms / table.ttft_ms - 1) * 100
        table["aic_tpot_err_pct"] = (table.aic_tpot_ms / table.tpot_ms - 1) * 100
    groups = [("all", table)] + [(f"tp {t}", g) for t, g in table.groupby("tp")]
    groups += [(f"isl {i}", g) for i, g in table.groupby("isl")]
    header = f"{'rows':<8} {'n':>3}  {'pdsim TTFT':>10} {'pdsim TPOT':>10}"
    if aic is not None:
        header += f"  {'aic TTFT':>9} {'aic TPOT':>9}"
    print("MAPE vs measured")
    print(header)
    for name, g in groups:
        line = f"{name:<8} {len(g):>3}  {mape(g.ttft_err_pct):>10} {mape(g.tpot_err_pct):>10}"
        if aic is not None:
            line += f"  {mape(g.aic_ttft_err_pct):>9} {mape(g.aic_tpot_err_pct):>9}"
        print(line)


if __name__ == "__main__":
    main()
