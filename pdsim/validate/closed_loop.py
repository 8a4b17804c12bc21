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

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.config import ClusterConfig, cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.errors import PdsimError
from pdsim.hardware import canonical_hardware_name, get_hardware, known_hardware
from pdsim.metrics.summary import requests_frame
from pdsim.models import load_model
from pdsim.perf.interp import ExtrapolationWarning, extrapolations_gathered
from pdsim.text import listed, plural
from pdsim.validate.closed_loop_table import FILE_LINE
from pdsim.validate.compare import lost_requests
from pdsim.validate.engine_meta import (
    vllm_async_scheduling_default,
    vllm_fuses_allreduce_norm,
    vllm_major_minor,
    vllm_reserves_full_isl,
    vllm_start_up,
)
from pdsim.validate.row_layout import LAYOUT_COUNTS, RowLayout, row_layout, text, whole_number
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
               engine: dict | None = None, source: str | None = None) -> ClusterConfig:
    """One row's cluster: one instance. source: what its errors are said to come from (a table's line)."""
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
    }, source or f"row (model {model}, tp {tp})")


def simulate_row(cfg: ClusterConfig, isl: int, osl: int, concurrency: int, opts: SimOptions,
                 rounds: int = ROUNDS, source: str = "<config>") -> dict[str, float]:
    """The measured phase of one row: `rounds * concurrency` requests from clients that start together.
    A row whose requests do not all finish (rejected: too long for the model or the KV cache) has no mean
    to compare: PdsimError with their reasons, counted."""
    trace = [TraceRequest(i, isl, osl, 0) for i in range(rounds * concurrency)]
    result = simulate(cfg, trace, replace(opts, concurrency=concurrency, client_start_spread_s=0.0), source)
    if (lost := lost_requests(result)) is not None:
        raise PdsimError(f"{lost}: the row has no mean to compare")
    df = requests_frame(result)
    done = df[df.status == "finished"]
    return {"sim_ttft_ms": float(done.ttft_ms.mean()), "sim_tpot_ms": float(done.tpot_ms.mean()),
            "sim_preemptions": int(df.preemptions.sum()),
            "estimated_profile": any(info.estimated_profile for info in result.infos)}


def system_hardware(system: str) -> str | None:
    """pdsim's hardware name for a table's `system` (aiconfigurator's h100_sxm, b200_sxm, ..., or a name
    or alias pdsim knows, in any case); None where pdsim knows no such GPU."""
    from pdsim.perf.aiconfigurator import SYSTEM_HARDWARE

    name = system.strip()
    if name.lower() in SYSTEM_HARDWARE:
        return SYSTEM_HARDWARE[name.lower()]
    board = canonical_hardware_name(name)  # any spelling, or the name torch gives the device
    return board if get_hardware(board) is not None else None


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
    if get_hardware(simulated_on) is None:
        return (f"system {str(row['system']).strip()}: --hardware {hardware} is no GPU pdsim knows, so no system "
                f"matches it (known: {', '.join(known_hardware())})")
    if measured_on != simulated_on:
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


# The columns read as numbers, with what each must hold (after read_closed_loop_table's renames).
NUMBER_COLUMNS = {"isl": "a positive integer", "osl": "a positive integer", "concurrency": "a positive integer",
                  "tp": "a positive integer", "ttft_ms": "a positive number of ms",
                  "tpot_ms": "a positive number of ms",
                  **{column: f"a whole number >= {least}" for column, least in LAYOUT_COUNTS.items()}}
INTEGER_COLUMNS = ("isl", "osl", "concurrency", "tp", *LAYOUT_COUNTS)


def simulate_table(table: pd.DataFrame, model: str | None, hardware: str, mem_gb: float,
                   profile_dir_for_tp: Callable[[int], Path | str | None], opts: SimOptions | None = None,
                   rounds: int = ROUNDS,
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

    A bad row (a cell of a number column that is no number, a value out of range, requests the simulation
    cannot finish) is an error with its line and why; a simulated row's profile extrapolations are its note.
    table.attrs["source"], when set (the table's path), names the rows' lines in messages.
    """
    opts = opts or SimOptions(client_delay_s=CLIENT_DELAY_S)
    lookup = profile_lookup or (lambda _model, tp, _precision: profile_dir_for_tp(tp))
    # Where the table says which GPU measured each row, only the rows of the GPU simulated are comparable.
    has_system = "system" in table.columns
    has_version = "backend_version" in table.columns
    async_given = not isinstance(engine, str) and "async_scheduling" in engine(1, 1)
    names = table.attrs.get("source_columns", {})
    source = table.attrs.get("source")
    out: list[dict] = []
    lines = table.index if table.index.name == FILE_LINE else range(2, len(table) + 2)
    for i, (line, row) in enumerate(zip(lines, table.itertuples(index=False))):
        if on_row is not None:
            on_row(i, len(table))
        fields = row._asdict()
        label = f"{source} line {line}" if source else f"line {line}"
        try:
            _check_numbers(fields, names)  # text in a number column: a bad row, whatever else the row says
            layout, reason = row_layout(fields, model)
            if reason is None and has_system:
                reason = system_reason(fields, hardware)
            if reason is not None:
                out.append({**fields, "status": "skipped", "reason": reason, "note": ""})
                continue
            extrapolated: list[ExtrapolationWarning] = []
            with extrapolations_gathered(extrapolated):
                sim = _simulate_one(fields, layout, model, hardware, mem_gb, lookup, opts, rounds, engine, names,
                                    label)
        except PdsimError as e:
            message = str(e).replace("\n", "; ")
            out.append({**fields, "status": "error", "note": "",
                        "reason": message if message.startswith(f"{label}: ") else f"{label}: {message}"})
            continue
        notes = [version_note(fields, async_given) if has_version else None, extrapolation_note(extrapolated)]
        out.append({**fields, **sim, "status": "simulated", "reason": "", "note": "; ".join(n for n in notes if n)})
    if on_row is not None:
        on_row(len(table), len(table))
    df = pd.DataFrame(out)
    df.attrs = dict(table.attrs)
    for column in NUMBER_COLUMNS:  # a bad row's text left in the column: NaN there, the others' numbers kept
        if column in df and not pd.api.types.is_numeric_dtype(df[column]):
            df[column] = _numeric(df[column], column in INTEGER_COLUMNS)
    for column in ("sim_ttft_ms", "sim_tpot_ms", "sim_preemptions", "estimated_profile"):
        if column not in df:
            df[column] = np.nan
    df["ttft_err_pct"] = (df.sim_ttft_ms - df.ttft_ms) / df.ttft_ms * 100
    df["tpot_err_pct"] = (df.sim_tpot_ms - df.tpot_ms) / df.tpot_ms * 100
    return df


def _numeric(column: pd.Series, integer: bool) -> pd.Series:
    """A column as numbers, NaN where a cell is none; whole numbers stay integers (Int64, empty where NaN)."""
    numbers = pd.to_numeric(column.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    finite = numbers.dropna()
    if integer and np.isfinite(finite).all() and (finite == finite.round()).all():
        return numbers.astype("Int64")
    return numbers.astype(float)


def extrapolation_note(caught: list[ExtrapolationWarning]) -> str | None:
    """One note for a row's extrapolated profile tables: per kind of table (dense, attention_prefill, ...),
    axis and side of the profiled range, the number of ops; the values are the row's own (its isl, its
    batch), so rows that left the grid alike share the note."""
    groups: dict[tuple[str, str, str], list[str]] = {}  # (kind, axis, side) -> the ops (none: a one-op table)
    loose: list[str] = []
    for w in caught:
        if w.table is None or w.axis is None or w.value is None or w.lo is None or w.hi is None:
            loose.append(str(w))  # warned without the table's details: its text as it is
            continue
        kind, _, op = w.table.partition(":")
        side = f"above {w.hi:g}" if w.value > w.hi else f"below {w.lo:g}"
        ops = groups.setdefault((kind.removesuffix(".csv"), w.axis, side), [])
        if op and op not in ops:
            ops.append(op)
    if not groups and not loose:
        return None
    parts = [f"{kind} ({plural(len(ops), 'op')}) {axis} {side}" if ops else f"{kind} {axis} {side}"
             for (kind, axis, side), ops in groups.items()]
    return "step times extrapolated beyond the profile's measured range: " + ", ".join(parts + loose)


def _simulate_one(row: dict, layout: RowLayout, model: str | None, hardware: str, mem_gb: float,
                  lookup: Callable[[str, int], str | None], opts: SimOptions, rounds: int,
                  engine: Callable[[int, int], dict], names: dict[str, str], source: str) -> dict:
    isl, osl, conc, tp = (_positive_int(row, column, names.get(column, column))
                          for column in ("isl", "osl", "concurrency", "tp"))
    _measured_ms(row, "ttft_ms", names.get("ttft_ms", "ttft_ms"))
    if osl > 1:  # one output token has no TPOT; the row's TTFT is still compared
        _measured_ms(row, "tpot_ms", names.get("tpot_ms", "tpot_ms"))
    if model is None and text(row.get("model_path")):
        model = str(row["model_path"]).strip()
    if not model:
        raise PdsimError("no model: give --model (the row has no model_path)")
    _check_length(model, isl, osl, names)
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
    # What the release holds at start-up (before 0.17 the sampler sorts the whole vocabulary: a larger activation
    # peak), and how it holds a MoE model's workspaces.
    for key, value in vllm_start_up(version).items():
        eng.setdefault(key, value)
    cfg = row_config(model, hardware, mem_gb, tp, lookup(model, tp, layout.profile_precision), eng, source)
    return simulate_row(cfg, isl, osl, conc, opts, rounds, source)


def _check_length(model: str, isl: int, osl: int, names: dict[str, str]) -> None:
    """vLLM refuses a request longer than the model's max length, so no such row was measured as given."""
    try:
        longest = load_model(model).max_model_len
    except PdsimError:
        return  # the simulation names the unknown model
    if longest and isl + osl > longest:
        raise PdsimError(f"not simulatable: prompt + output ({names.get('isl', 'isl')} {isl} + "
                         f"{names.get('osl', 'osl')} {osl} = {isl + osl} tokens) is longer than {model}'s max "
                         f"length {longest} (vLLM's max_model_len for its config), which vLLM refuses")


def _check_numbers(row: dict, names: dict[str, str]) -> None:
    """A cell of a number column that holds text (abc, a repeated header line's names) makes the row bad, and
    so does a layout count out of its range (checked here too, before a skip reason could hide it); the
    other values' ranges are checked where they are used."""
    for column, expected in NUMBER_COLUMNS.items():
        value = row.get(column)
        if isinstance(value, str) and value.strip() and np.isnan(_as_float(value.strip())):
            raise PdsimError(f"column {names.get(column, column)}: expected {expected}, got {value.strip()!r} "
                             "(not a number)")
    for column in LAYOUT_COUNTS:
        whole_number(row, column)


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


# A benchmark's mean TTFT or TPOT beyond a day is a corrupt cell (or one in another unit), not a measurement.
MAX_MEASURED_MS = 86_400_000.0


def _measured_ms(row: dict, column: str, shown: str) -> None:
    """A measured latency must be a positive number, or the row's error would be meaningless."""
    value = text(row.get(column))
    if not value or value == "nan":  # pandas reads an empty cell and "nan" alike
        raise PdsimError(f"column {shown}: no measured value (the cell is empty or not a number); expected a "
                         "positive number of ms")
    number = _as_float(value)
    if not (np.isfinite(number) and 0 < number <= MAX_MEASURED_MS):
        raise PdsimError(f"column {shown}: the measured value must be a positive number of ms, at most "
                         f"{MAX_MEASURED_MS:g} (a day), got {value!r}")


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


def _count(value: float | str) -> str:
    return f"{int(value)}" if float(value).is_integer() else f"{value}"


# The printed table's columns: heading, width (at least: a wider value widens its column) and format.
_ROW_COLUMNS = (("isl", 6, _count), ("osl", 6, _count), ("conc", 6, _count), ("tp", 4, _count),
                ("TTFT meas", 11, "{:.1f}".format), ("sim", 9, "{:.1f}".format), ("err", 8, "{:+.1f}%".format),
                ("TPOT meas", 11, "{:.2f}".format), ("sim", 8, "{:.2f}".format), ("err", 8, "{:+.1f}%".format))


def require_simulated(table: pd.DataFrame) -> None:
    """A table with no row simulated has nothing to compare: PdsimError saying why no row was (the reasons,
    counted)."""
    if not len(simulated(table)):
        source = table.attrs.get("source")
        raise PdsimError("\n".join([f"{source + ': ' if source else ''}no row of {len(table)} simulated, so there is "
                                    "nothing to compare", *not_simulated_lines(table)]))


def format_rows(table: pd.DataFrame) -> str:
    """The simulated rows with their errors, the MAPEs, the rows left out counted by reason and the notes."""
    require_simulated(table)
    df = simulated(table)
    cells = []
    for r in df.itertuples(index=False):
        values = [r.isl, r.osl, r.concurrency, r.tp, r.ttft_ms, r.sim_ttft_ms, r.ttft_err_pct, r.tpot_ms,
                  r.sim_tpot_ms, r.tpot_err_pct]
        row = [fmt(v) for v, (_, _, fmt) in zip(values, _ROW_COLUMNS, strict=True)]
        cells.append(row if np.isfinite(r.tpot_err_pct) else row[:7] + ["-"] * 3)  # one output token: no TPOT
    # Each column at least one wider than its widest value, so no two values run together.
    widths = [max(width, *(len(row[i]) + 1 for row in cells)) for i, (_, width, _) in enumerate(_ROW_COLUMNS)]
    lines = ["".join(f"{name:>{w}}" for (name, _, _), w in zip(_ROW_COLUMNS, widths, strict=True))]
    lines += ["".join(f"{cell:>{w}}" for cell, w in zip(row, widths, strict=True)) for row in cells]
    without_tpot = df[df.tpot_err_pct.isna()]
    one_token = int((without_tpot.osl == 1).sum())
    why = ", ".join(part for part in (f"{one_token} with one output token" if one_token else "",
                                      f"{len(without_tpot) - one_token} without a simulated TPOT"
                                      if len(without_tpot) > one_token else "") if part)
    lines.append(f"MAPE: TTFT {mape(df.ttft_err_pct):.1f}%, TPOT {mape(df.tpot_err_pct):.1f}% over {len(df)} "
                 f"simulated rows of {len(table)}" + (f" (TPOT over {len(df) - len(without_tpot)}: {why} have none)"
                                                      if len(without_tpot) else ""))
    if "step_time_margin_pct" in df:
        m = f"{df.step_time_margin_pct.iloc[0]:g}%"
        lines.append(f"with every step {m} faster .. {m} slower: " + ", ".join(
            f"{name} MAPE {mape(df[f'{col}_steps_faster']):.1f} .. {mape(df[f'{col}_steps_slower']):.1f}% (signed "
            f"{df[f'{col}_steps_faster'].mean():+.1f} .. {df[f'{col}_steps_slower'].mean():+.1f}%)"
            for col, name in (("ttft_err_pct", "TTFT"), ("tpot_err_pct", "TPOT"))))
    lines += not_simulated_lines(table)
    if len(df) > 1:
        # Where the error lies: signed, averaged over the rows that differ only in osl.
        for column, name in (("ttft_err_pct", "TTFT"), ("tpot_err_pct", "TPOT")):
            pivot = df.pivot_table(index=["tp", "isl"], columns="concurrency", values=column, aggfunc="mean")
            lines.append(f"\n{name} signed error (%), mean over osl, by tp/isl (rows) and concurrency (columns):")
            lines.append(pivot.apply(lambda col: col.map(lambda v: "" if np.isnan(v) else f"{v:+.1f}")).to_string())
    return "\n".join(lines)


_ROW_LINE = re.compile(r"^(?P<file>.*?) line (?P<line>\d+): (?P<why>.+)$", re.S)


def _by_reason(reasons: pd.Series) -> list[tuple[str, int]]:
    """Reasons counted; those that differ only in their row's line are one, naming the lines (a whole table
    left out for one cause is a line, not a row each)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for reason in reasons.astype(str):
        m = _ROW_LINE.match(reason)
        key = (m["file"], m["why"]) if m else (reason, "")
        groups.setdefault(key, []).append(m["line"] if m else "")
    out = []
    for (head, why), found in groups.items():
        if not why:
            out.append((head, len(found)))
            continue
        out.append((f"{head} line{'s' if len(found) > 1 else ''} {listed(found, 5)}: {why}", len(found)))
    return out


def not_simulated_lines(table: pd.DataFrame) -> list[str]:
    """The rows left out, counted by status and reason, then the simulated rows with a caveat, counted by it."""
    lines = []
    for status in ("skipped", "error"):
        rows = table[table.status == status]
        if len(rows):
            lines.append(f"skipped: {len(rows)} row(s) pdsim cannot express, or measured on other hardware"
                         if status == "skipped" else
                         f"bad rows: {len(rows)} row(s) with values that cannot be simulated (left out)")
            lines += [f"  {n} x {reason}" for reason, n in _by_reason(rows.reason)]
    noted = table[table.status == "simulated"]
    noted = noted[noted.note.fillna("").astype(str) != ""] if "note" in noted else noted.iloc[:0]
    if len(noted):
        lines.append(f"notes: {len(noted)} simulated row(s)")
        for note, n in noted.note.value_counts(sort=False).items():
            lines.append(f"  {n} x {note}")
    return lines
