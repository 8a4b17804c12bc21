"""pdsim against aiconfigurator-core's end-to-end measurements (systems/silicon_sample.csv): other GPUs, fp8, MoE.

    python benchmarks/aiconfigurator_silicon.py [--aic-core DIR] [--overhead-us 1500 --overhead-us 0]

DIR is an unpacked aiconfigurator_core package (the public PyPI wheel aiconfigurator-core 0.12.0,
Apache-2.0): its systems/silicon_sample.csv (measured closed-loop rows: mean TTFT and TPOT per isl,
osl, concurrency and layout) and systems/data (per-kernel tables). Default: the installed package.
Nothing of it is copied; the data is read in place and profiles go to a temporary folder.

Every vLLM row is simulated as `pdsim validate --measured <table>` simulates a closed-loop row
(pdsim/validate/closed_loop.py `simulate_table`: aiperf's client, 20 rounds, 1 ms client delay,
aiconfigurator's vLLM agg engine preset), the instance's precision and MoE layout from the row's
columns (pdsim/validate/row_layout.py). Nothing is fitted here: step_overhead_us is the H100
Qwen3-32B table's (docs/validation.md), and 0 is printed beside it to show the sensitivity.
Profiles: `pdsim profile import-aiconfigurator` for the row's system, model, TP and quantization;
where the tables cannot price the model (gpt-oss's sliding-window attention) the step times are
estimated from hardware specs, and the group's line says so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdsim.engine.cluster import SimOptions
from pdsim.errors import PdsimError
from pdsim.hardware import get_hardware
from pdsim.models import load_model
from pdsim.perf.aiconfigurator import SYSTEM_HARDWARE, import_profile
from pdsim.validate.closed_loop import CLIENT_DELAY_S, ROUNDS, mape, simulate_table
from pdsim.validate.closed_loop_table import read_closed_loop_table

# Checkpoint -> (pdsim model of the same shapes, the checkpoint's weight scheme). Read from the
# checkpoints' own configs (aiconfigurator-core ships them in model_configs/):
# - nvidia/Llama-3.1-8B-Instruct-FP8: Llama-3.1-8B's shapes, NVIDIA ModelOpt FP8 (quant_algo FP8: one
#   scale per tensor), which vLLM runs as fp8 GEMMs; pdsim's "fp8" (one scale per output channel)
#   differs from it by the scales' bytes only.
# - Qwen/Qwen3-235B-A22B-FP8: quantization_config quant_method fp8, weight_block_size [128, 128].
# A plain Hugging Face id with precision fp8 (Qwen/Qwen3-32B) is vLLM's --quantization fp8 of the bf16
# checkpoint: "fp8" from the precision column.
CHECKPOINTS = {
    "nvidia/Llama-3.1-8B-Instruct-FP8": ("meta-llama/Llama-3.1-8B", "fp8"),
    "Qwen/Qwen3-235B-A22B-FP8": ("Qwen/Qwen3-235B-A22B", "fp8_block"),
}
GROUP = ["system", "model_path", "precision", "backend_version", "tp", "moe"]
STEP_OVERHEAD_US = (1500.0, 0.0)  # docs/validation.md's H100 Qwen3-32B figure, and none


def core_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    try:
        import aiconfigurator_core
    except ImportError:
        sys.exit("--aic-core: give an unpacked aiconfigurator_core folder (aiconfigurator-core is not installed)")
    return Path(aiconfigurator_core.__path__[0])


def _moe_layout(row: pd.Series) -> str:
    parts = [f"{name} {int(row[col])}" for col, name in (("attention_dp_size", "dp"), ("moe_tp_size", "moe_tp"),
                                                          ("moe_ep_size", "moe_ep")) if row.get(col, 0) > 0]
    return ", ".join(parts) or "-"


def rows(csv: Path, unrecorded_version: str | None) -> pd.DataFrame:
    """The vLLM rows, with pdsim's model and quantization where the checkpoint names them."""
    df = read_closed_loop_table(csv)
    df = df[df.backend.astype(str).str.lower() == "vllm"].copy()
    df["moe"] = df.apply(_moe_layout, axis=1)
    df["pdsim_model"] = [CHECKPOINTS.get(m, (m, None))[0] for m in df.model_path]
    df["quantization"] = [CHECKPOINTS.get(m, (m, None))[1] for m in df.model_path]
    df["backend_version"] = df.backend_version.astype(object).where(df.backend_version.notna(), None)
    if unrecorded_version:
        df["backend_version"] = df.backend_version.fillna(unrecorded_version)
    df["tp"] = df.tp.fillna(0)
    return df


def pre_skip(row: pd.Series) -> str | None:
    """Reasons the table's own columns cannot give row_layout: the system, the model, the version."""
    if row.system not in SYSTEM_HARDWARE:
        return f"system {row.system}: pdsim has no hardware spec / aiconfigurator import for it"
    try:
        load_model(row.pdsim_model)
    except PdsimError:
        return f"model {row.model_path}: pdsim has no config for it"
    if row.backend_version is None:
        return ("vLLM version not recorded (the scheduler's admission rule depends on it; "
                "--unrecorded-version V runs them as V)")
    if str(row.get("mode", "")).lower() == "disagg" and not row.concurrency > 0:
        return "disagg row with no client concurrency recorded (batch_size empty): no closed loop to replay"
    return None


class Profiles:
    """Imports a profile per (system, model, tp, precision) on first use; None where the tables cannot price it."""

    def __init__(self, systems_dir: Path, out: Path) -> None:
        self.systems_dir, self.out = systems_dir, out
        self.made: dict[tuple, str | None] = {}
        self.why_estimated: dict[tuple, str] = {}

    def lookup(self, system: str) -> Callable[[str, int, str], str | None]:
        def find(model: str, tp: int, precision: str) -> str | None:
            key = (system, model, tp, precision)
            if key not in self.made:
                quant = None if precision == "bfloat16" else precision
                try:
                    self.made[key] = str(import_profile(self.systems_dir, system, load_model(model), tp, self.out,
                                                        quantization=quant))
                except PdsimError as e:
                    self.made[key] = None
                    self.why_estimated[key] = str(e).splitlines()[0]
            return self.made[key]
        return find


def run_group(group: pd.DataFrame, profiles: Profiles, overhead_us: float, rounds: int) -> pd.DataFrame:
    system = group.system.iloc[0]
    hardware = get_hardware(SYSTEM_HARDWARE[system])
    table = group.drop(columns=["model_path"]).rename(columns={"pdsim_model": "model_path"})
    opts = SimOptions(client_delay_s=CLIENT_DELAY_S, step_overhead_us=overhead_us)
    out = simulate_table(table, None, hardware.name, hardware.mem_size_gb, None, opts, rounds,
                         "aiconfigurator", profile_lookup=profiles.lookup(system))
    # pdsim's lone prefill P of each row (one request, osl 2, no client delay) and the share of the GPU's
    # time the measured closed loop's fresh prompts need: concurrency / request latency x P. Over 1,
    # the measured rows cannot be C clients sending fresh prompts (a prefix-cache hit, or fewer clients).
    lone = table.assign(concurrency=1, osl=2)
    solo = simulate_table(lone, None, hardware.name, hardware.mem_size_gb, None, SimOptions(), 1,
                          "aiconfigurator", profile_lookup=profiles.lookup(system))
    out["lone_prefill_ms"] = solo.sim_ttft_ms.values
    latency_s = (out.ttft_ms + (out.osl - 1) * out.tpot_ms) / 1e3
    out["prefill_load"] = out.concurrency / latency_s * out.lone_prefill_ms / 1e3
    return out


def _source(estimated: bool, imported: bool) -> str:
    if not estimated:
        return "aiconfigurator tables"
    if imported:  # a MoE model: the reader imports no expert tables, so pdsim estimates the experts
        return "aiconfigurator tables, MoE experts ESTIMATED from hardware specs"
    return "ESTIMATED from hardware specs"


def _signed(errors: pd.Series) -> float:
    return float(np.mean(errors))


def report(results: dict[float, list[pd.DataFrame]], skipped: pd.DataFrame, profiles: Profiles) -> str:
    lines = []
    for overhead, frames in results.items():
        df = pd.concat(frames, ignore_index=True)
        df[["precision", "backend_version"]] = df[["precision", "backend_version"]].fillna("bf16").astype(str)
        lines.append(f"\nstep_overhead_us {overhead:g}")
        lines.append(f"{'system':<9} {'model':<34} {'prec':<5} {'vllm':<7} {'tp':>2} {'moe':<16} {'rows':>4} "
                     f"{'TTFT MAPE':>9} {'signed':>7} {'TPOT MAPE':>9} {'signed':>7} {'load':>5}  step times")
        for key, g in df.groupby(GROUP, sort=True, dropna=False):
            done = g[g.status == "simulated"]
            system, model, prec, version, tp, moe = key
            head = f"{system:<9} {model:<34} {prec:<5} {version:<7} {int(tp):>2} {moe:<16} {len(done):>4} "
            if not len(done):
                lines.append(head + "not simulated: " + "; ".join(sorted(set(g.reason))))
                continue
            estimated = bool(done.estimated_profile.astype(bool).any())
            imported = not any(k[0] == system and k[1] == done.pdsim_model.iloc[0] for k in profiles.why_estimated)
            lines.append(head + f"{mape(done.ttft_err_pct):>8.1f}% {_signed(done.ttft_err_pct):>+6.1f}% "
                                f"{mape(done.tpot_err_pct):>8.1f}% {_signed(done.tpot_err_pct):>+6.1f}% "
                                f"{done.prefill_load.median():>5.2f}  "
                                + _source(estimated, imported))
        done = df[df.status == "simulated"]
        if len(done):
            lines.append(f"all simulated: {len(done)} rows, TTFT MAPE {mape(done.ttft_err_pct):.1f}% "
                         f"(signed {_signed(done.ttft_err_pct):+.1f}%), TPOT MAPE {mape(done.tpot_err_pct):.1f}% "
                         f"(signed {_signed(done.tpot_err_pct):+.1f}%)")
        for reason, n in df[df.status != "simulated"].reason.value_counts().items():
            lines.append(f"  not simulated: {n} x {reason}")
    lines.append("load: median over the group's rows of concurrency / (TTFT + (osl - 1) x TPOT) x pdsim's lone "
                 "prefill, the GPU time share the measured rate of fresh prompts needs (> 1: not fresh prompts)")
    for key, why in sorted(profiles.why_estimated.items()):
        lines.append(f"estimated step times for {'/'.join(map(str, key))}: {why}")
    skipped = skipped.fillna({"precision": "bf16", "backend_version": "?"})
    lines.append(f"\nskipped before simulation: {len(skipped)} rows")
    for key, g in skipped.groupby(["system", "model_path", "precision", "backend_version", "skip"], dropna=False):
        system, model, prec, version, why = key
        lines.append(f"  {system} {model} {prec} vllm {version}: {len(g)} rows: {why}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aic-core", help="unpacked aiconfigurator_core folder (default: the installed package)")
    ap.add_argument("--overhead-us", type=float, action="append", help="step_overhead_us (repeat; default 1500, 0)")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--unrecorded-version", help="run rows without a backend_version as this vLLM version")
    ap.add_argument("--only", help="regular expression: only groups whose 'system model' matches")
    ap.add_argument("--csv", type=Path, help="write every row's result here (not inside the repository's data)")
    args = ap.parse_args()
    core = core_dir(args.aic_core)
    df = rows(core / "systems" / "silicon_sample.csv", args.unrecorded_version)
    df["skip"] = df.apply(pre_skip, axis=1)
    if args.only:
        df = df[(df.system + " " + df.model_path).str.contains(args.only)]
    skipped, todo = df[df.skip.notna()], df[df.skip.isna()].drop(columns=["skip"])
    results: dict[float, list[pd.DataFrame]] = {}
    with tempfile.TemporaryDirectory(prefix="pdsim-silicon-") as tmp:
        profiles = Profiles(core / "systems" / "data", Path(tmp))
        for overhead in args.overhead_us or STEP_OVERHEAD_US:
            frames = []
            for _, group in todo.groupby(["system", "pdsim_model", "quantization"], dropna=False):
                out = run_group(group, profiles, overhead, args.rounds)
                out["model_path"], out["pdsim_model"] = group.model_path.values, group.pdsim_model.values
                frames.append(out.assign(step_overhead_us=overhead))
            results[overhead] = frames
    print(report(results, skipped, profiles))
    if args.csv:
        pd.concat([f for fs in results.values() for f in fs]).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
