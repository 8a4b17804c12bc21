"""Every fidelity figure pdsim has against real measurements, in one table, with what was fitted.

    python benchmarks/fidelity_summary.py [--markdown]

Runs, from ../shared/data (read in place), the checks the docs describe one by one:
- the two real vLLM 0.19 runs on RTX PRO 6000 (Llama-3.1-8B; Qwen3-30B-A3B MoE, DP 2 with expert
  parallelism), replayed with `pdsim validate` as docs/validation.md says: per metric mean/p50/p90;
- the 90 H100 Qwen3-32B closed-loop rows, profiles imported from aiconfigurator's kernel tables:
  TTFT and TPOT MAPE;
- the 15 vLLM 0.19 start-up logs: KV capacity (benchmarks/kv_capacity_check.py);
- Mooncake's two KV-transfer tables with pdsim's default transfer settings
  (benchmarks/mooncake_kv_transfer.py).
About 20 s. Each line says what was fitted and on which data ("nothing" where nothing was).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from click.testing import CliRunner  # noqa: E402

from pdsim.models import load_model  # noqa: E402
from pdsim.perf.aiconfigurator import import_profile  # noqa: E402
from pdsim.validate.cli import validate  # noqa: E402

CAL = REPO.parent / "shared" / "data" / "calibration"
RUNS = {
    "RTX PRO 6000, Llama-3.1-8B, vLLM 0.19 (300 requests)": CAL / "llmservingsim-rtxpro6000-llama31-8b",
    "2 x RTX PRO 6000, Qwen3-30B-A3B MoE DP 2 + EP, vLLM 0.19 (300 requests)":
        CAL / "llmservingsim-rtxpro6000-qwen3-30b-a3b",
}
H100 = CAL / "aiconfigurator-h100"
H100_OVERHEAD_US = 1500.0  # docs/validation.md: calibrate's pick on these rows' TPOT (leave-one-out 5.6%)


def _validate(*args: str) -> str:
    res = CliRunner().invoke(validate, list(args), catch_exceptions=False)
    if res.exit_code != 0:
        raise SystemExit(f"pdsim validate {' '.join(args)} failed:\n{res.output}")
    return res.output


def per_request_runs(out: Path) -> list[tuple[str, str, str, str]]:
    rows = []
    for case, root in RUNS.items():
        csv = out / (root.name + ".csv")
        output = _validate("--measured", str(root / "vllm_run" / "requests.jsonl"), "--cluster-config",
                           str(root / "cluster_config.json"), "--profile-dir", str(root / "profile"), "--output",
                           str(csv))
        full = pd.read_csv(csv).set_index(["metric", "stat"])
        table = full.diff_pct
        # TTFT's two parts (where the engine stamped its first schedule) say where a TTFT error sits.
        for metric in ("TTFT (ms)", "queueing (ms)", "sched. to 1st token (ms)", "TPOT (ms)", "E2E latency (ms)"):
            figure = " / ".join("n/a" if pd.isna(table[(metric, s)]) else f"{table[(metric, s)]:+.1f}%"
                                for s in ("mean", "p50", "p90"))
            name = metric.split(' (')[0]
            name = f"  of TTFT, {name}" if metric in ("queueing (ms)", "sched. to 1st token (ms)") else name
            rows.append((case, f"{name} mean / p50 / p90", figure,
                         "nothing (the run's own profile, config and engine settings)"))
        # How far a step-time error of 2% moves TTFT here (validate's step-time margin columns).
        margin = full.step_time_margin_pct.iloc[0]
        band = " / ".join(f"{full.diff_pct_steps_faster[('TTFT (ms)', s)]:+.1f}.."
                          f"{full.diff_pct_steps_slower[('TTFT (ms)', s)]:+.1f}%" for s in ("mean", "p50", "p90"))
        rows.append((case, f"  TTFT mean / p50 / p90 with every step {margin:g}% faster..slower", band,
                     "nothing (the run's own profile, config and engine settings)"))
        # The engine's batch and queue over time (its timeseries.csv) against the replay's.
        state = next((line for line in output.splitlines() if line.startswith("engine state over ")), None)
        if state is not None:
            rows.append((case, "running; waiting requests, measured / simulated", state.split("): ", 1)[1],
                         "nothing (the run's own profile, config and engine settings)"))
    return rows


def h100_rows(out: Path) -> list[tuple[str, str, str, str]]:
    model = load_model("Qwen/Qwen3-32B")
    for tp in (2, 4, 8):
        import_profile(H100 / "systems_data_h100_sxm", "h100_sxm", model, tp, out / "aic")
    csv = out / "h100.csv"
    _validate("--measured", str(H100 / "silicon_h100_qwen3-32b_vllm-0.12.0_agg_bf16.csv"), "--profile-dir",
              str(out / "aic"), "--step-overhead-us", f"{H100_OVERHEAD_US:g}", "--output", str(csv))
    df = pd.read_csv(csv)
    df = df[df.status == "simulated"]
    case = f"H100, Qwen3-32B, vLLM 0.12 ({len(df)} closed-loop rows, TP 2/4/8)"
    fitted = f"step_overhead_us {H100_OVERHEAD_US:g} on these rows' TPOT (leave-one-out TPOT MAPE 5.6%)"
    rows = []
    for name in ("TTFT", "TPOT"):
        err = df[f"{name.lower()}_err_pct"]
        rows.append((case, f"{name} MAPE (signed mean)", f"{err.abs().mean():.1f}% ({err.mean():+.1f}%)", fitted))
    margin = df.step_time_margin_pct.iloc[0]
    band = " / ".join(f"{df[f'{m}_err_pct_steps_faster'].abs().mean():.1f}.."
                      f"{df[f'{m}_err_pct_steps_slower'].abs().mean():.1f}%" for m in ("ttft", "tpot"))
    rows.append((case, f"  TTFT / TPOT MAPE with every step {margin:g}% faster..slower", band, fitted))
    return rows


def _script_output(name: str) -> str:
    """What benchmarks/<name>.py prints, run in this process."""
    import runpy

    buffer = io.StringIO()
    argv, sys.argv = sys.argv, [name]
    try:
        with contextlib.redirect_stdout(buffer):
            runpy.run_path(str(REPO / "benchmarks" / f"{name}.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return buffer.getvalue()


def kv_rows() -> list[tuple[str, str, str, str]]:
    text = _script_output("kv_capacity_check")
    loo = re.search(r"KV capacity, leave-one-out: MAPE ([\d.]+%), max \|err\| ([\d.]+%)", text)
    rows = re.search(r"over (\d+) vLLM 0.19 rows", text).group(1)
    return [(f"H100, {rows} vLLM 0.19 start-up logs: KV capacity", "MAPE / max |error|, leave-one-out",
             f"{loo.group(1)} / {loo.group(2)}",
             "the sampler's bytes per logit, on the sampler-bound rows (leave-one-out shown)")]


def mooncake_rows() -> list[tuple[str, str, str, str]]:
    text = _script_output("mooncake_kv_transfer")
    found = re.findall(r"^(\w+) table.*?largest \|error\|: default ([\d.]+%)", text, re.S | re.M)
    return [(f"Mooncake KV transfers, {table} table", "largest |error|, default settings", err,
             "per-layer overhead and share of line rate, on the vllm table" +
             (" (this table held out)" if table == "sglang" else " (this table)"))
            for table, err in found]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if not CAL.is_dir():
        sys.exit(f"needs {CAL} (../shared/data beside the repository)")
    with tempfile.TemporaryDirectory() as tmp:
        rows = per_request_runs(Path(tmp)) + h100_rows(Path(tmp)) + kv_rows() + mooncake_rows()
    head = ("case", "figure", "pdsim vs measured", "fitted")
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    case = None
    for r in rows:
        if r[0] != case:
            case = r[0]
            print(f"{case}   [fitted: {r[3]}]")
        print(f"    {r[1]}: {r[2]}")


if __name__ == "__main__":
    main()
