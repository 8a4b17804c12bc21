"""Closed-loop benchmark tables (one row per isl, osl, concurrency, tp), simulated row by row.

Each row is what a closed-loop benchmark with fixed lengths measures: C clients, each sending
its next request when its previous one ends. The simulated benchmark follows aiperf, the client
of NVIDIA's aiconfigurator collection (aiperf 0.13 `timing/config.py`, aiconfigurator 0.12
`generator/config/backend_templates/benchmark/bench_run.sh.j2`):

- the warm-up requests are drained before the measured phase starts (warm-up phases wait for
  every in-flight request, `seamless=False`), so the measured phase starts from an idle engine
  (pdsim models no prefix cache, so the warm-up leaves nothing behind) with all C clients
  sending at once (concurrency mode issues credits with zero delay);
- `rounds * C` measured requests (`--num-requests C * BENCH_MULTI_ROUND`, default 20);
- the mean TTFT and TPOT over all of them;
- every request reaches the engine after a client delay (HTTP, API server), uniform on
  [0, 2 * client_delay_s] and counted in TTFT. Without one, a finished request's successor would
  arrive at the very instant its step ends, which no HTTP round trip can do.

The engine is configured as the benchmark deployed it (`ENGINE_PRESETS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from pdsim.config import ClusterConfig, cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.errors import PdsimError
from pdsim.hardware import HARDWARE, HARDWARE_ALIASES, canonical_hardware_name, get_hardware
from pdsim.metrics.summary import requests_frame
from pdsim.validate.measured import (
    vllm_async_scheduling_default,
    vllm_fuses_allreduce_norm,
    vllm_major_minor,
    vllm_reserves_full_isl,
)
from pdsim.validate.row_layout import row_layout, text
from pdsim.workload.trace import TraceRequest

ROUNDS = 20
CLIENT_DELAY_S = 0.001


def aiconfigurator_engine(concurrency: int, isl: int) -> dict:
    """What aiconfigurator's generator deploys for a vLLM aggregated worker of max batch size
    `concurrency` (generator/rule_plugin/vllm.rule and benchmark/vllm.rule, 0.12):
    max_num_seqs = max_batch_size, max_num_batched_tokens = max_batch_size + isl + 1500."""
    return {"max_num_seqs": concurrency, "max_num_batched_tokens": concurrency + isl + 1500,
            "gpu_memory_utilization": 0.9}


def vllm_serve_engine(concurrency: int, isl: int) -> dict:
    """vLLM v1's `vllm serve` defaults on GPUs with >= 70 GiB (vllm/engine/arg_utils.py)."""
    return {"max_num_seqs": 1024, "max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.9}


ENGINE_PRESETS: dict[str, Callable[[int, int], dict]] = {
    "aiconfigurator": aiconfigurator_engine,
    "vllm-serve": vllm_serve_engine,
}


def row_config(model: str, hardware: str, mem_gb: float, tp: int, profile_dir: str | None = None,
               engine: dict | None = None) -> ClusterConfig:
    eng = {**vllm_serve_engine(1, 0), **(engine or {})}
    # The GPU's own bandwidth (an estimated profile reads it from npu_mem.mem_bw); 3350 GB/s (H100 SXM)
    # only for hardware pdsim has no spec for.
    spec = get_hardware(hardware)
    inst = {
        "model_name": model, "hardware": hardware, "num_npus": tp, "tp_size": tp, "pd_type": None,
        "npu_mem": {"mem_size": mem_gb, "mem_bw": spec.mem_bw_gbps if spec else 3350}, **eng,
    }
    if profile_dir is not None:
        inst["profile_dir"] = profile_dir
    return cluster_config_from_dict({
        "num_nodes": 1, "link_bw": 16, "link_latency": 0,
        "nodes": [{"num_instances": 1, "instances": [inst]}],
    }, f"row (model {model}, tp {tp})")


def simulate_row(cfg: ClusterConfig, isl: int, osl: int, concurrency: int, opts: SimOptions,
                 rounds: int = ROUNDS) -> dict[str, float]:
    """The measured phase of one row: `rounds * concurrency` requests from clients that start together."""
    trace = [TraceRequest(i, isl, osl, 0) for i in range(rounds * concurrency)]
    result = simulate(cfg, trace, replace(opts, concurrency=concurrency, client_start_spread_s=0.0))
    df = requests_frame(result)
    done = df[df.status == "finished"]
    return {"sim_ttft_ms": float(done.ttft_ms.mean()), "sim_tpot_ms": float(done.tpot_ms.mean()),
            "sim_preemptions": int(df.preemptions.sum()),
            "estimated_profile": any(info.estimated_profile for info in result.infos)}


def _hardware_key(name: str) -> str:
    """A GPU name compared loosely: case, '-' and '_' aside (h100_sxm and H100-SXM are one name)."""
    return name.strip().lower().replace("_", "-")


def system_hardware(system: str) -> str | None:
    """pdsim's hardware name for a table's `system` (aiconfigurator's h100_sxm, b200_sxm, ..., or a name
    or alias pdsim knows, in any case); None where pdsim knows no such GPU."""
    from pdsim.perf.aiconfigurator import SYSTEM_HARDWARE

    name = system.strip()
    if name.lower() in SYSTEM_HARDWARE:
        return SYSTEM_HARDWARE[name.lower()]
    known = {_hardware_key(n): canonical_hardware_name(n) for n in [*HARDWARE, *HARDWARE_ALIASES]}
    return known.get(_hardware_key(name))


def system_reason(row: dict, hardware: str) -> str | None:
    """Why a row measured on another GPU than the one simulated is left out (None: the same GPU). Asked only
    of tables with a `system` column: a row that names no GPU pdsim knows cannot be matched either."""
    system = text(row.get("system"))
    if not system:
        return "system empty (the row does not say which GPU measured it)"
    measured_on = system_hardware(system)
    if measured_on is None:
        return f"system {str(row['system']).strip()}: a GPU pdsim does not know, so not matched to the simulated one"
    simulated_on = canonical_hardware_name(hardware)
    if _hardware_key(measured_on) != _hardware_key(simulated_on):
        return (f"system {str(row['system']).strip()} (pdsim's {measured_on}), not the simulated hardware "
                f"{simulated_on} (--hardware chooses it)")
    return None


def version_note(row: dict, async_given: bool = False) -> str | None:
    """A row whose backend_version is not a vLLM release number is simulated with pdsim's choices for an
    unknown version where the version would decide: said, as for a run's meta.json (recorded.py)."""
    version = text(row.get("backend_version"))
    if vllm_major_minor(version) is not None:
        return None
    what = "backend_version empty" if not version else f"backend_version {str(row['backend_version']).strip()!r}"
    decided = "" if async_given else "synchronous scheduling, "
    return (f"{what}, not a vLLM release number: the defaults that depend on it are pdsim's for an unknown "
            f"version ({decided}the whole-sequence admission check on, all-reduce + norm fusion by the GPU's rule)")


def unsupported_reason(row: dict, model: str | None = None) -> str | None:
    """Why pdsim cannot simulate this row as measured (None: it can); see row_layout."""
    return row_layout(row, model)[1]


def simulate_table(table: pd.DataFrame, model: str | None, hardware: str, mem_gb: float,
                   profile_dir_for_tp, opts: SimOptions | None = None, rounds: int = ROUNDS,
                   engine: str | Callable[[int, int], dict] = "aiconfigurator",
                   profile_lookup: Callable[[str, int], str | None] | None = None,
                   on_row: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Every row simulated that pdsim can express; adds sim_ttft_ms, sim_tpot_ms, their % errors,
    `status` (simulated, skipped: not expressible; error: bad row) and `reason`.

    model: model id for every row (None: each row's model_path).
    profile_dir_for_tp: tp -> profile folder (or None to look profiles up by hardware/model);
    profile_lookup, when given, replaces it: (model, tp, precision) -> profile folder, for tables of
    several models or precisions (precision: the profile's folder name, `quantization` or bfloat16).
    engine: a preset of ENGINE_PRESETS, or (concurrency, isl) -> engine settings.
    opts: simulation options; the closed loop's client delay defaults to CLIENT_DELAY_S.
    on_row: called with (rows done, rows) after each row, for a progress bar.
    """
    opts = opts or SimOptions(client_delay_s=CLIENT_DELAY_S)
    lookup = profile_lookup or (lambda _model, tp, _precision: profile_dir_for_tp(tp))
    # Where the table says which GPU measured each row, only the rows of the GPU simulated are comparable.
    has_system = "system" in table.columns
    has_version = "backend_version" in table.columns
    async_given = not isinstance(engine, str) and "async_scheduling" in engine(1, 1)
    out: list[dict] = []
    for line, row in enumerate(table.itertuples(index=False), start=2):
        if on_row is not None:
            on_row(line - 2, len(table))
        fields = row._asdict()
        layout, reason = row_layout(fields, model)
        if reason is None and has_system:
            reason = system_reason(fields, hardware)
        if reason is not None:
            out.append({**fields, "status": "skipped", "reason": reason, "note": ""})
            continue
        try:
            sim = _simulate_one(fields, layout, model, hardware, mem_gb, lookup, opts, rounds, engine,
                                table.attrs.get("source_columns", {}))
        except PdsimError as e:
            out.append({**fields, "status": "error", "reason": f"line {line}: " + str(e).replace("\n", "; "),
                        "note": ""})
            continue
        note = version_note(fields, async_given) if has_version else None
        out.append({**fields, **sim, "status": "simulated", "reason": "", "note": note or ""})
    if on_row is not None:
        on_row(len(table), len(table))
    df = pd.DataFrame(out)
    for column in ("sim_ttft_ms", "sim_tpot_ms", "sim_preemptions", "estimated_profile"):
        if column not in df:
            df[column] = np.nan
    df["ttft_err_pct"] = (df.sim_ttft_ms - df.ttft_ms) / df.ttft_ms * 100
    df["tpot_err_pct"] = (df.sim_tpot_ms - df.tpot_ms) / df.tpot_ms * 100
    return df


def _simulate_one(row: dict, layout, model: str | None, hardware: str, mem_gb: float, lookup,
                  opts: SimOptions, rounds: int, engine, names: dict[str, str]) -> dict:
    isl, osl, conc, tp = (_positive_int(row, column, names.get(column, column))
                          for column in ("isl", "osl", "concurrency", "tp"))
    _measured_ms(row, "ttft_ms", names.get("ttft_ms", "ttft_ms"))
    if osl > 1:  # one output token has no TPOT; the row's TTFT is still compared
        _measured_ms(row, "tpot_ms", names.get("tpot_ms", "tpot_ms"))
    if model is None and text(row.get("model_path")):
        model = str(row["model_path"]).strip()
    if not model:
        raise PdsimError("no model: give --model (the row has no model_path)")
    eng = {**(ENGINE_PRESETS[engine] if isinstance(engine, str) else engine)(conc, isl), **layout.instance_keys()}
    # vLLM 0.19 added the whole-sequence admission check: on for a row measured with 0.19 or
    # later (or of unknown version), off before.
    version = str(row.get("backend_version", ""))
    eng.setdefault("scheduler_reserve_full_isl", vllm_reserves_full_isl(version) is not False)
    # Async scheduling as the row's vLLM runs it by default (aiconfigurator's generator sets nothing; rows
    # are not pipelined): off up to 0.13 and where the version is not known, on from 0.14.
    eng.setdefault("async_scheduling", bool(vllm_async_scheduling_default(version)))
    # vLLM 0.17's default compilation added the all-reduce + RMSNorm fusion (where the GPU allows it).
    if vllm_fuses_allreduce_norm(version) is False:
        eng.setdefault("allreduce_rms_fusion", False)
    cfg = row_config(model, hardware, mem_gb, tp, lookup(model, tp, layout.profile_precision), eng)
    return simulate_row(cfg, isl, osl, conc, opts, rounds)


def _positive_int(row: dict, column: str, shown: str) -> int:
    value = text(row.get(column))
    if not value or value == "nan":
        raise PdsimError(f"column {shown}: no value (the cell is empty or not a number); expected a positive integer")
    number = _as_float(value)
    if not (number.is_integer() and number >= 1):  # NaN and inf fail is_integer
        raise PdsimError(f"column {shown}: expected a positive integer, got {value!r}")
    return int(number)


def _as_float(value: str) -> float:
    """A table cell as a number; NaN where it is not one."""
    try:
        return float(value)
    except ValueError:
        return float("nan")


def _measured_ms(row: dict, column: str, shown: str) -> None:
    """A measured latency must be a positive number, or the row's error would be meaningless."""
    value = text(row.get(column))
    if not value or value == "nan":  # pandas reads an empty cell and "nan" alike
        raise PdsimError(f"column {shown}: no measured value (the cell is empty or not a number); expected a "
                         "positive number of ms")
    number = _as_float(value)
    if not (np.isfinite(number) and number > 0):
        raise PdsimError(f"column {shown}: the measured value must be a positive number of ms, got {value!r}")


def simulated(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.status == "simulated"]


def mape(errors_pct: pd.Series) -> float:
    """Over the rows that have the error (an osl-1 row has no TPOT)."""
    return float(np.mean(np.abs(errors_pct.dropna())))


def with_table_step_margin(table: pd.DataFrame, faster: pd.DataFrame, slower: pd.DataFrame,
                           margin_pct: float) -> pd.DataFrame:
    """The table with each row's simulated TTFT and TPOT, and their errors, when every step was margin_pct %
    faster and slower (the same rows, simulated again)."""
    out = table.copy()
    out["step_time_margin_pct"] = margin_pct
    for side, other in (("faster", faster), ("slower", slower)):
        for metric in ("ttft", "tpot"):
            out[f"sim_{metric}_ms_steps_{side}"] = other[f"sim_{metric}_ms"].to_numpy()
            out[f"{metric}_err_pct_steps_{side}"] = other[f"{metric}_err_pct"].to_numpy()
    return out


def format_rows(table: pd.DataFrame) -> str:
    df = simulated(table)
    lines = [f"{'isl':>6}{'osl':>6}{'conc':>6}{'tp':>4}{'TTFT meas':>11}{'sim':>9}{'err':>8}"
             f"{'TPOT meas':>11}{'sim':>8}{'err':>8}"]
    for r in df.itertuples(index=False):
        tpot = (f"{r.tpot_ms:>11.2f}{r.sim_tpot_ms:>8.2f}{r.tpot_err_pct:>+7.1f}%" if np.isfinite(r.tpot_err_pct)
                else f"{'-':>11}{'-':>8}{'-':>8}")  # one output token: no TPOT
        lines.append(f"{r.isl:>6}{r.osl:>6}{r.concurrency:>6}{r.tp:>4}{r.ttft_ms:>11.1f}{r.sim_ttft_ms:>9.1f}"
                     f"{r.ttft_err_pct:>+7.1f}%{tpot}")
    if len(df):
        without_tpot = int(df.tpot_err_pct.isna().sum())
        lines.append(f"MAPE: TTFT {mape(df.ttft_err_pct):.1f}%, TPOT {mape(df.tpot_err_pct):.1f}% over {len(df)} "
                     f"simulated rows of {len(table)}" + (f" (TPOT over {len(df) - without_tpot}: "
                                                          f"{without_tpot} with one output token have none)"
                                                          if without_tpot else ""))
        if "step_time_margin_pct" in df:
            m = f"{df.step_time_margin_pct.iloc[0]:g}%"
            lines.append(f"with every step {m} faster .. {m} slower: " + ", ".join(
                f"{name} MAPE {mape(df[f'{col}_steps_faster']):.1f} .. {mape(df[f'{col}_steps_slower']):.1f}% (signed "
                f"{df[f'{col}_steps_faster'].mean():+.1f} .. {df[f'{col}_steps_slower'].mean():+.1f}%)"
                for col, name in (("ttft_err_pct", "TTFT"), ("tpot_err_pct", "TPOT"))))
    else:
        lines.append(f"no row of {len(table)} simulated")
    lines += not_simulated_lines(table)
    if len(df) > 1:
        # Where the error lies: signed, averaged over the rows that differ only in osl.
        for column, name in (("ttft_err_pct", "TTFT"), ("tpot_err_pct", "TPOT")):
            pivot = df.pivot_table(index=["tp", "isl"], columns="concurrency", values=column, aggfunc="mean")
            lines.append(f"\n{name} signed error (%), mean over osl, by tp/isl (rows) and concurrency (columns):")
            lines.append(pivot.apply(lambda col: col.map(lambda v: "" if np.isnan(v) else f"{v:+.1f}")).to_string())
    return "\n".join(lines)


def not_simulated_lines(table: pd.DataFrame) -> list[str]:
    """The rows left out, counted by status and reason, then the simulated rows with a caveat, counted by it."""
    lines = []
    for status in ("skipped", "error"):
        rows = table[table.status == status]
        if len(rows):
            lines.append(f"skipped: {len(rows)} row(s) pdsim cannot express, or measured on other hardware"
                         if status == "skipped" else
                         f"bad rows: {len(rows)} row(s) with values that cannot be simulated (left out)")
            for reason, n in rows.reason.value_counts(sort=False).items():
                lines.append(f"  {n} x {reason}")
    noted = table[table.status == "simulated"]
    noted = noted[noted.note.fillna("").astype(str) != ""] if "note" in noted else noted.iloc[:0]
    if len(noted):
        lines.append(f"notes: {len(noted)} simulated row(s)")
        for note, n in noted.note.value_counts(sort=False).items():
            lines.append(f"  {n} x {note}")
    return lines
