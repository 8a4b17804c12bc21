"""aiperf's per-request export, `profile_export.jsonl` (NVIDIA's benchmark client, the one Dynamo and
aiconfigurator use; its default `--export-level records`), with the summary beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.errors import PdsimError, decode_text, json_shown, optional_object, parse_json, read_json_object
from pdsim.validate.measured_run import MAX_LATENCY_S, MeasuredRun, count_field, duration_field

AIPERF_RECORDS = "profile_export.jsonl"
AIPERF_SUMMARY = "profile_export_aiperf.json"
_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "sec": 1e3, "s": 1e3}


def _aiperf_value(record: dict, tag: str, where: str, unit: str = "ms") -> object:
    """A metric of one aiperf record, times converted to ms; None when the record lacks it."""
    metric = record["metrics"].get(tag)
    if metric is None:
        return None
    if not isinstance(metric, dict) or "value" not in metric:
        raise PdsimError(f"{where}: metrics.{tag}: expected {{\"value\": ..., \"unit\": ...}}, got {metric!r}")
    value, got = metric["value"], metric.get("unit", unit)
    if unit == "ms":
        if got not in _TO_MS:
            raise PdsimError(f"{where}: metrics.{tag}: unit {got!r}, expected one of {', '.join(_TO_MS)}")
        scale = _TO_MS[got]
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            raise PdsimError(f"{where}: metrics.{tag}.value: expected a number or a list of numbers, got {value!r:.60}")
        return [v * scale for v in value] if isinstance(value, list) else value * scale
    return value


def gaps_since_latest(ends: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each of `times`, how long after the latest of `ends` strictly before it (same unit);
    times with no end before them are left out."""
    ends = np.sort(np.asarray(ends))
    times = np.asarray(times)
    k = np.searchsorted(ends, times, side="left")
    return times[k > 0] - ends[k[k > 0] - 1]


def _input_config(records_path: Path) -> tuple[Path, dict] | None:
    """(path, input_config) of the profile_export_aiperf.json beside the records; None where there is none."""
    summary = records_path.with_name(AIPERF_SUMMARY)
    if not summary.is_file():
        return None
    return summary, optional_object(read_json_object(summary), "input_config", f"{summary}: input_config")


def aiperf_concurrency(summary: Path, config: dict) -> tuple[int | None, object]:
    """The profiling phase's concurrency, from the summary's input_config (aiperf's YAML-v2 layout,
    `input_config.phases[]`, else the older `input_config.loadgen`), and its request rate where it has one
    (None where not: a concurrency alone is a closed loop)."""
    phases = config.get("phases") or []
    if not isinstance(phases, list):
        raise PdsimError(f"{summary}: input_config.phases: expected a list of phases, got {json_shown(phases)}")
    phases = [ph for ph in phases if isinstance(ph, dict)]
    phase = next((ph for ph in phases if ph.get("name") == "profiling"), phases[0] if phases else None)
    value, where = (phase.get("concurrency"), "input_config.phases[].concurrency") if phase else (None, "")
    rate = phase.get("request_rate") if phase else None
    loadgen = optional_object(config, "loadgen", f"{summary}: input_config.loadgen")
    if value is None:
        value, where = loadgen.get("concurrency"), "input_config.loadgen.concurrency"
    if rate is None and not phase:
        rate = loadgen.get("request_rate")
    if value is None:
        return None, rate
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PdsimError(f"{summary}: {where}: expected a whole number of clients >= 1, got {json_shown(value)}")
    return value, rate


def aiperf_model(config: dict) -> str | None:
    """The model aiperf asked for, from the summary's input_config (`models.items[].name`, or the older
    `endpoint.model_names`), where it names one."""
    models = config.get("models")
    items = models.get("items") if isinstance(models, dict) else None
    names = [item.get("name") for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    endpoint = config.get("endpoint")
    if not names and isinstance(endpoint, dict) and isinstance(endpoint.get("model_names"), list):
        names = endpoint["model_names"]
    return names[0] if len(names) == 1 and isinstance(names[0], str) else None


def read_aiperf_jsonl(path: str | Path) -> MeasuredRun:
    """aiperf's `profile_export.jsonl`: one record per request, `metadata` (phase, wall-clock
    `request_start_ns`) and `metrics` (`time_to_first_token`, `request_latency`,
    `inter_chunk_latency`: value and unit; `input_sequence_length`, `output_sequence_length`).
    The inter-chunk gaps are compared as ITL: vLLM and Dynamo stream one token per chunk.

    Only the profiling phase is compared (warm-up records are left out, and failed or cancelled
    requests are counted in the notes). TTFT and E2E are the client's, from when it sent the
    request. TPOT is (latency - TTFT) / (osl - 1), aiperf's inter-token latency. The replay is a
    closed loop when the summary beside the records (profile_export_aiperf.json) names a
    concurrency, as aiperf `--concurrency` measures; otherwise requests arrive when aiperf sent them.
    """
    p = Path(path)
    rows, itls, ends_ns = [], [], []
    warmup = failed = 0
    other_phases: dict[str, int] = {}
    seen: dict[str, int] = {}  # a record's text -> its line: a line repeated whole is a copy, not a request
    for line_no, line in enumerate(decode_text(p.read_bytes(), str(p)).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{line_no}"
        if (first := seen.setdefault(line.strip(), line_no)) != line_no:
            raise PdsimError(f"{where}: the same record as line {first} (a duplicated line: one request is one "
                             "record)")
        record = parse_json(line, where)
        if not isinstance(record, dict) or not isinstance(record.get("metadata"), dict) \
                or not isinstance(record.get("metrics"), dict):
            raise PdsimError(f"{where}: expected an aiperf record with 'metadata' and 'metrics' objects")
        meta = record["metadata"]
        if isinstance(meta.get("request_end_ns"), int):
            ends_ns.append(meta["request_end_ns"])  # any request's end, warm-up too, frees a client
        phase = str(meta.get("benchmark_phase", "profiling")).lower()
        if phase != "profiling":
            if phase == "warmup":
                warmup += 1
            else:  # no phase aiperf writes: left out with the warm-up, and said by name
                other_phases[phase] = other_phases.get(phase, 0) + 1
            continue
        if record.get("error") is not None or meta.get("was_cancelled"):
            failed += 1
            continue
        row, chunks = _aiperf_request(record, meta, where)
        rows.append(row)
        if chunks is not None:
            itls.extend(chunks)
    if not rows:
        raise PdsimError(f"{p}: no successful profiling-phase request")
    df, sent_ns = _by_arrival(rows)
    summary = _input_config(p)  # read once, for the load and the model
    concurrency, rate = aiperf_concurrency(*summary) if summary else (None, None)
    notes = ["arrival times: when aiperf sent each request"]
    gaps = None
    if concurrency and rate is not None:
        # A request rate with a concurrency cap: aiperf sent at the rate, holding a request back while the cap was
        # reached, so the recorded send times carry both; a closed loop would drop the rate.
        notes = [f"arrival times: when aiperf sent each request (request rate {json_shown(rate)} with at most "
                 f"{concurrency} in flight, {AIPERF_SUMMARY}: the cap is in the recorded send times)"]
        concurrency = None
    if concurrency:
        # A closed-loop client sends when a request ends: how long after the latest end each send
        # came is the client's own delay, measured on its clock.
        gaps = gaps_since_latest(ends_ns, sent_ns) / 1e9
        notes = [f"closed loop, {concurrency} clients ({AIPERF_SUMMARY})"]
    if warmup:
        notes.append(f"{warmup} warm-up request(s) left out")
    if other_phases:
        notes.append("NOTE: request(s) of a benchmark_phase neither warmup nor profiling left out: "
                     + ", ".join(f"{n} of {phase!r}" for phase, n in sorted(other_phases.items())))
    if failed:
        notes.append(f"{failed} failed or cancelled request(s) left out")
    model = aiperf_model(summary[1]) if summary else None
    return MeasuredRun(str(p), df, itl_ms=np.asarray(itls, dtype=float) if itls else None,
                       concurrency=concurrency, notes=notes, client_gaps_s=gaps if gaps is not None and gaps.size
                       else None, client_model=(model, f"{AIPERF_SUMMARY}'s model") if model else None)


def _by_arrival(rows: list[dict]) -> tuple[pd.DataFrame, np.ndarray]:
    """The requests in arrival order with `arrival_s` from the first send, and their send times (ns)."""
    df = pd.DataFrame(rows)
    # Wall-clock ns since 1970 lose sub-microsecond precision as float seconds: subtract first.
    start_ns = df.pop("start_ns")
    df.insert(2, "arrival_s", (start_ns - start_ns.min()) / 1e9)
    order = np.argsort(df.arrival_s.to_numpy(), kind="stable")
    return df.iloc[order].reset_index(drop=True), start_ns.to_numpy(dtype=np.int64)[order]


def _aiperf_request(record: dict, meta: dict, where: str) -> tuple[dict, list[float] | None]:
    """One successful profiling-phase record: its row (lengths, send time, TTFT, TPOT, E2E) and
    its inter-chunk gaps (None when the record has none)."""
    values = {tag: _aiperf_value(record, tag, where, unit) for tag, unit in (
        ("time_to_first_token", "ms"), ("request_latency", "ms"),
        ("input_sequence_length", "tokens"), ("output_sequence_length", "tokens"))}
    missing = [tag for tag, v in values.items() if v is None]
    if missing:
        hint = " (TTFT needs a streamed run: aiperf --streaming)" if "time_to_first_token" in missing else ""
        raise PdsimError(f"{where}: metrics lack {', '.join(missing)}{hint}")
    if "request_start_ns" not in meta:
        raise PdsimError(f"{where}: metadata lacks request_start_ns")
    start_ns = meta["request_start_ns"]
    if type(start_ns) is not int or not 0 <= start_ns < 2**62:  # ns since 1970 fit int64 to the year 2116
        raise PdsimError(f"{where}: metadata.request_start_ns: expected a whole number of ns, got {start_ns!r:.60}")
    end_ns = meta.get("request_end_ns")
    if type(end_ns) is int and end_ns < start_ns:
        raise PdsimError(f"{where}: metadata.request_end_ns {end_ns} is before request_start_ns {start_ns}")
    osl = count_field(values["output_sequence_length"], where, "metrics.output_sequence_length")
    most_ms = MAX_LATENCY_S * 1e3
    ttft = duration_field(values["time_to_first_token"], where, "metrics.time_to_first_token", 0.0, most_ms, "ms")
    latency = duration_field(values["request_latency"], where, "metrics.request_latency", ttft, most_ms, "ms")
    row = {"input_toks": count_field(values["input_sequence_length"], where, "metrics.input_sequence_length"),
           "output_toks": osl, "start_ns": start_ns, "ttft_ms": ttft,
           "tpot_ms": (latency - ttft) / (osl - 1) if osl > 1 else np.nan, "e2e_ms": latency}
    chunks = _aiperf_value(record, "inter_chunk_latency", where)
    if chunks is not None:
        if not isinstance(chunks, list):
            raise PdsimError(f"{where}: metrics.inter_chunk_latency: expected a list of gaps, got {chunks!r:.60}")
        chunks = [duration_field(x, where, "metrics.inter_chunk_latency", 0.0, most_ms, "ms") for x in chunks]
    return row, chunks
