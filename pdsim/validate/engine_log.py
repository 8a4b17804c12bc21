"""The engine's per-request log (`input_toks, output_toks, arrival_time, queued_ts, scheduled_ts,
first_token_ts, last_token_ts`, one JSON object a line), as LLMServingSim's vLLM runner writes it, with
the meta.json beside it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.errors import PdsimError, decode_text, json_shown, parse_json, read_json_object
from pdsim.validate.engine_meta import check_engine_meta, meta_notes, meta_time, with_cache_config, with_python_names
from pdsim.validate.measured_run import MeasuredRun, count_field

ENGINE_FIELDS = ("input_toks", "output_toks", "arrival_time", "queued_ts", "first_token_ts", "last_token_ts")


def read_engine_jsonl(path: str | Path, clock: str = "engine") -> MeasuredRun:
    """Per-request engine timestamps. Latencies are taken on the engine clock (`queued_ts` to
    `first_token_ts` / `last_token_ts`): `arrival_time` is the client's wall clock, another clock.
    vLLM stamps `queued_ts` when its engine loop takes the request in, between two steps, so the
    latencies exclude the wait for the step in progress; the simulated ones are then taken from
    the simulated pick-up too (`latency_origin`).

    clock: which arrival times the replay uses, relative to the first request: "engine"
    (`queued_ts`: already aligned to the measured engine's step boundaries) or "client"
    (`arrival_time`, when the benchmark sent it).
    """
    p = Path(path)
    rows, line_nos = _records(p)
    df = _request_frame(p, rows, line_nos, clock)
    stamps = _ordered_stamps(p, df, rows, line_nos)
    arrival_time = pd.to_numeric(df.arrival_time, errors="coerce")
    if clock == "client":
        _check_client_times(p, rows, line_nos, arrival_time, stamps)
    meta_path = p.with_name("meta.json")
    # A meta.json that is there but no file (a folder) is read, and refused, rather than taken as absent.
    meta = read_json_object(meta_path) if meta_path.exists() else {}
    meta, sources = with_cache_config(meta_path, with_python_names(meta_path, meta))
    check_engine_meta(meta_path, meta)
    _check_run_span(p, meta, stamps, line_nos)
    notes = [f"arrival times from the {clock} clock", *meta_notes(meta)]
    if (said := _request_count_note(p, meta, len(rows))) is not None:
        notes.append(said)
    if (said := _repeated_id_note(p, rows, line_nos, stamps)) is not None:
        notes.append(said)
    arrival = stamps["queued_ts"] if clock == "engine" else arrival_time
    seen = _replayed(p, df, stamps, arrival, clock, notes)
    out = _latencies(p, df[seen], arrival[seen], {k: s[seen] for k, s in stamps.items()}, notes)
    first_wall = arrival_time[seen].loc[arrival[seen].idxmin()]
    return MeasuredRun(str(p), out, notes=notes, engine_meta=meta, kwargs_sources=sources, latency_origin="pickup",
                       first_arrival_wall_s=float(first_wall) if np.isfinite(first_wall) else None)


def _run_span_s(meta: dict) -> float | None:
    """How long the run lasted by meta.json's started_at and finished_at (LLMServingSim's runner), or None."""
    started, finished = meta.get("started_at"), meta.get("finished_at")
    if not isinstance(started, str) or not isinstance(finished, str):
        return None
    try:
        span = (meta_time(finished) - meta_time(started)).total_seconds()
    except ValueError:
        return None
    return span if span > 0 else None


def _check_run_span(p: Path, meta: dict, stamps: dict[str, pd.Series], line_nos: list[int]) -> None:
    """An engine stamp later after the run's first pick-up than the whole run lasted (meta.json's started_at to
    finished_at, with a tenth and 10 s to spare) is not this run's time: refused with its line, not averaged in
    (one end 3,000 s late in a 66 s run took E2E mean 35% up)."""
    span = _run_span_s(meta)
    start = stamps["queued_ts"].min()
    if span is None or not np.isfinite(start):
        return
    limit = 1.1 * span + 10.0
    for key in ("queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts"):
        if key not in stamps:
            continue
        late = (stamps[key] - start > limit).to_numpy()  # NaN compares False
        if late.any():
            i = int(np.flatnonzero(late)[0])
            raise PdsimError(f"{p}:{line_nos[i]}: {key} {stamps[key].iloc[i]!r} is "
                             f"{stamps[key].iloc[i] - start:,.1f} s after the run's first queued_ts, but meta.json's "
                             f"started_at and finished_at say the run lasted {span:,.1f} s: not this run's time")


def _records(p: Path) -> tuple[list[dict], list[int]]:
    """The file's objects, one a line, and the line each is on."""
    rows, line_nos = [], []
    for line_no, line in enumerate(decode_text(p.read_bytes(), str(p)).splitlines(), start=1):
        if line.strip():
            if line.strip() in ("{", "[") and not rows:  # a JSON document written over several lines
                raise PdsimError(f"{p}:{line_no}: a JSON document over several lines, not JSON lines (one object per "
                                 "request, each on its own line, as a run's requests.jsonl has): is it the right file?")
            record = parse_json(line, f"{p}:{line_no}")
            if not isinstance(record, dict):
                raise PdsimError(f"{p}:{line_no}: expected one JSON object per request, got "
                                 f"{type(record).__name__} {record!r:.60}")
            rows.append(record)
            line_nos.append(line_no)
    if not rows:  # said as such: a list of missing fields would point at the wrong problem
        raise PdsimError(f"{p}: no requests in the file (expected one JSON object per request, with "
                         f"{', '.join(ENGINE_FIELDS)})")
    return rows, line_nos


def _request_frame(p: Path, rows: list[dict], line_nos: list[int], clock: str) -> pd.DataFrame:
    """The records as a table, every field an engine log needs there, the token counts whole numbers and the
    timestamps numbers of seconds."""
    df = pd.DataFrame(rows)
    missing = [c for c in ENGINE_FIELDS if c not in df.columns]
    if missing:
        raise PdsimError(f"{p}: missing field(s) {', '.join(missing)}; expected {', '.join(ENGINE_FIELDS)}")
    if clock not in ("engine", "client"):
        raise PdsimError(f"clock: expected 'engine' or 'client', got {clock!r}")
    for key in ("input_toks", "output_toks"):
        if (absent := next((n for row, n in zip(rows, line_nos) if key not in row), None)) is not None:
            raise PdsimError(f"{p}:{absent}: field {key!r} missing; expected a whole number of tokens")
        # No output token is a count only a request aborted before its first token has.
        for row, n in zip(rows, line_nos):
            if key == "output_toks" and row[key] == 0 and row.get("first_token_ts") is not None:
                raise PdsimError(f"{p}:{n}: field 'output_toks': 0 with a first_token_ts; a request that made a "
                                 "token counts it (0 is only for one aborted before its first token)")
        df[key] = [count_field(row[key], f"{p}:{n}", key,
                               0 if key == "output_toks" and row.get("first_token_ts") is None else 1)
                   for row, n in zip(rows, line_nos)]
    _check_stamp_values(p, df, rows, line_nos)
    return df


def _ordered_stamps(p: Path, df: pd.DataFrame, rows: list[dict], line_nos: list[int]) -> dict[str, pd.Series]:
    """The engine's stamps (seconds, NaN where missing), each request's in the order an engine writes them, all
    within the run's span."""
    stamps = {k: pd.to_numeric(df[k], errors="coerce") for k in ("queued_ts", "scheduled_ts", "first_token_ts",
                                                                  "last_token_ts") if k in df}
    for earlier, later in (("queued_ts", "scheduled_ts"), ("scheduled_ts", "first_token_ts"),
                           ("queued_ts", "first_token_ts"), ("first_token_ts", "last_token_ts")):
        if earlier in stamps and later in stamps:
            bad = (stamps[later] < stamps[earlier]).to_numpy()  # NaN compares False: a missing time is not this
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise PdsimError(f"{p}:{line_nos[i]}: {later} {rows[i].get(later)!r} is before {earlier} "
                                 f"{rows[i].get(earlier)!r}; an engine stamps them in that order")
    _check_engine_span(p, rows, line_nos, stamps)
    return stamps


def _replayed(p: Path, df: pd.DataFrame, stamps: dict[str, pd.Series], arrival: pd.Series, clock: str,
              notes: list[str]) -> pd.Series:
    """Which requests the replay takes (those with an arrival), with a note for each kind left out of it or of
    the statistics; an error where nothing would be compared."""
    seen = arrival.notna()
    if not seen.all():  # never reached the engine (or the client sent nothing): nothing to replay
        notes.append(f"{int((~seen).sum())} request(s) without {'queued_ts' if clock == 'engine' else 'arrival_time'} "
                     "left out of the replay")
    seen &= ~_take_zero_output_requests(df, stamps, seen, notes)
    if not seen.any():
        raise PdsimError(f"{p}: no request has {'queued_ts' if clock == 'engine' else 'arrival_time'}: nothing to "
                         "replay")
    queued, first, last = (stamps[k][seen] for k in ("queued_ts", "first_token_ts", "last_token_ts"))
    unfinished = first.isna() | last.isna()
    if unfinished.all():
        raise PdsimError(f"{p}: no request has both a first_token_ts and a last_token_ts (every one failed or was "
                         "aborted in the measured run): nothing to compare")
    if unfinished.any():
        notes.append(f"{int(unfinished.sum())} request(s) without a first or last token time (failed or aborted in "
                     "the measured run): replayed, left out of both sides' statistics")
    unstarted = queued.isna() & ~unfinished
    if not (~unfinished & ~unstarted).any():
        raise PdsimError(f"{p}: no finished request has queued_ts, where vLLM's TTFT and E2E start (the engine "
                         "picking it up): nothing to compare")
    if unstarted.any():
        notes.append(f"{int(unstarted.sum())} request(s) without queued_ts: replayed at their arrival_time, left out "
                     "of both sides' statistics")
    return seen


def _latencies(p: Path, df: pd.DataFrame, arrival: pd.Series, stamps: dict[str, pd.Series],
               notes: list[str]) -> pd.DataFrame:
    """The replayed requests' lengths, arrivals and latencies (MEASURED_COLUMNS, and the wait before the first
    schedule where the engine stamped it), in arrival order; stamps that are no engine's times are refused or
    said."""
    queued, first, last = stamps["queued_ts"], stamps["first_token_ts"], stamps["last_token_ts"]
    if not (df.output_toks > 1).any():
        notes.append("no request has more than one output token: TPOT and ITL have no samples")
    several = (df.output_toks > 1) & (last.notna() & first.notna())
    if several.any() and not ((last - first)[several] > 0).any():
        # Every multi-token request's last token at its first: the stamps (all 0, one copied into the others) are
        # not times an engine wrote, and every TPOT compared would be 0.
        raise PdsimError(f"{p}: every request of more than one output token has its last_token_ts at its "
                         "first_token_ts: these stamps are not an engine's times (TPOT would be 0)")
    late = (df.output_toks == 1) & ((last - first) > 1e-3)  # NaN compares False
    if late.any():
        longest_s = (last - first)[late].max()
        notes.append(f"NOTE: {int(late.sum())} request(s) with one output token end up to {longest_s:.3g} s after "
                     "their first token, which a one-token request cannot (its first token is its last): check "
                     "output_toks")
    out = pd.DataFrame({
        "input_toks": df.input_toks.astype(int),
        "output_toks": df.output_toks.astype(int),
        "arrival_s": arrival - arrival.min(),
        "ttft_ms": (first - queued) * 1e3,
        "tpot_ms": np.where(df.output_toks > 1,
                            (last - first) / (df.output_toks - 1).clip(lower=1) * 1e3,
                            np.nan),
        "e2e_ms": (last - queued) * 1e3,
    })
    if "scheduled_ts" in stamps:  # vLLM stamps it when it first schedules the request
        scheduled = stamps["scheduled_ts"]
        out["queue_ms"] = (scheduled - queued) * 1e3
        out["sched_to_token_ms"] = (first - scheduled) * 1e3
        unscheduled = scheduled.isna() & first.notna() & last.notna() & queued.notna()
        if unscheduled.any() and scheduled.notna().any():
            notes.append(f"{int(unscheduled.sum())} finished request(s) without scheduled_ts: left out of both sides' "
                         "queueing and sched.-to-first-token statistics (in the others)")
    out = out.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    tpot_s = float(np.nanmedian(out.tpot_ms)) / 1e3 if out.tpot_ms.notna().any() else 0.0
    if tpot_s > 10:  # no engine takes 10 s a token: the stamps are not in seconds
        notes.append(f"NOTE: the median time per output token is {tpot_s:,.0f} s: the engine times are read as "
                     "seconds (vLLM's stamps are); times in milliseconds would need converting first")
    return out


ENGINE_STAMPS = ("arrival_time", "queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")


def _take_zero_output_requests(df: pd.DataFrame, stamps: dict[str, pd.Series], seen: pd.Series,
                         notes: list[str]) -> pd.Series:
    """Requests with no output token (aborted before their first, e.g. by a client's timeout): one the engine
    never scheduled did no work, so it is left out (the mask returned); one it scheduled ran its prompt, so it
    is replayed as a one-token request (df changed in place). When it was dropped is not recorded."""
    zero = seen & (df.output_toks == 0)
    scheduled = stamps.get("scheduled_ts")
    ran = zero & scheduled.notna() if scheduled is not None else zero
    if (waiting := int((zero & ~ran).sum())):
        notes.append(f"{waiting} request(s) with output_toks 0 and no scheduled_ts (aborted while waiting, before "
                     "the engine scheduled them): left out of the replay")
    if (started := int(ran.sum())):
        how = "scheduled, then aborted" if scheduled is not None else "no scheduled_ts recorded: taken as run"
        notes.append(f"{started} request(s) with output_toks 0 ({how} before their first token): replayed as "
                     "one-token requests, their prompt run once (when the engine dropped them is not recorded), "
                     "left out of both sides' statistics")
        df.loc[ran, "output_toks"] = 1
    return zero & ~ran


def _stamp_number(value: object) -> float | None:
    """A timestamp field as seconds: None where it is missing (null); NaN where it is not a finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return math.nan
    try:
        number = float(value)  # a number, or a number written as a string (as read before)
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
        return math.nan
    return number if math.isfinite(number) else math.nan


def _check_stamp_values(p: Path, df: pd.DataFrame, rows: list[dict], line_nos: list[int]) -> None:
    """Every timestamp a finite number of seconds, or null where the request never got there: Infinity,
    NaN or text would otherwise turn into a missing time (a request left out) or an overflow."""
    for key in ENGINE_STAMPS:
        if key not in df:
            continue
        column = df[key]
        if column.dtype.kind in "iu" or (column.dtype.kind == "f" and np.isfinite(column.to_numpy()).all()):
            continue  # all plain numbers, all finite: the usual log, checked without a per-value loop
        for record, line_no in zip(rows, line_nos):  # a null, a bool, text or a non-finite number somewhere
            value = record.get(key)
            number = _stamp_number(value)
            if number is not None and math.isnan(number):
                raise PdsimError(f"{p}:{line_no}: field {key!r}: expected a finite number of seconds (or null "
                                 f"where the request never got there), got {json_shown(value)}")


def _check_engine_span(p: Path, rows: list[dict], line_nos: list[int], stamps: dict[str, pd.Series]) -> None:
    """The engine stamps share one clock and one run: a stamp far outside the span the bulk of them cover
    (a typo, a placeholder such as -1) would make one request's TTFT or E2E days long and move the means
    it is compared on. The window is the 10th..90th percentile of all stamps widened by 100 times its width
    on each side: a pause in the run or a straggler stays inside, a stamp off by orders of magnitude does not."""
    pooled = pd.concat(list(stamps.values())).dropna() if stamps else pd.Series(dtype=float)
    if len(pooled) < 5:
        return
    p10, p90 = (float(x) for x in pooled.quantile([0.1, 0.9]))
    width = max(p90 - p10, 1.0)
    lo, hi = p10 - 100 * width, p90 + 100 * width
    for key, values in stamps.items():
        outside = ((values < lo) | (values > hi)).to_numpy()  # NaN compares False
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise PdsimError(f"{p}:{line_nos[i]}: field {key!r}: {rows[i].get(key)!r} lies far outside the run's "
                             f"engine times ({p10:.6g} .. {p90:.6g} s for most stamps): not a time of this run")


def _check_client_times(p: Path, rows: list[dict], line_nos: list[int], arrival: pd.Series,
                        stamps: dict[str, pd.Series]) -> None:
    """--clock client replays `arrival_time`, the client's clock, which is offset from the engine's by an
    unknown constant: the two cannot be ordered like the engine's own stamps, but every request's
    arrival_time must lie where the others' put it (queued_ts minus their median lag) give or take how
    long the run lasted on the engine clock. A value outside is not a time of this run (a typo, a
    placeholder such as -1e12), and would make the replay wait for years or overflow."""
    queued = stamps["queued_ts"]
    both = arrival.notna() & queued.notna()
    if not both.any():
        return  # nothing on the engine clock to place them against
    lag = float((queued[both] - arrival[both]).median())
    engine_times = pd.concat([s for s in stamps.values()]).dropna()
    t0, t1 = float(engine_times.min()), float(engine_times.max())
    slack = max(t1 - t0, 1.0)
    placed = arrival + lag  # on the engine clock
    outside = (arrival.notna() & ((placed < t0 - slack) | (placed > t1 + slack))).to_numpy()
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        off = t0 - placed.iloc[i] if placed.iloc[i] < t0 else placed.iloc[i] - t1
        where = "before the run's first" if placed.iloc[i] < t0 else "after the run's last"
        raise PdsimError(f"{p}:{line_nos[i]}: field 'arrival_time': {rows[i].get('arrival_time')!r} is {off:.3g} s "
                         f"{where} engine time, placed by the other requests' arrival_time and queued_ts (median "
                         f"lag {lag:.6g} s), while the run lasts {t1 - t0:.3g} s: not a client time of this run "
                         "(--clock engine replays queued_ts instead)")


def _request_count_note(p: Path, meta: dict, read: int) -> str | None:
    """meta.json's num_requests against the lines read: a cut (or padded) log replays another workload than
    the run's, so the figures compare a part of it."""
    recorded = meta.get("num_requests")
    if recorded is None:
        return None
    if type(recorded) is not int or recorded < 0:
        return f"meta.json num_requests {recorded!r} is not a count: not compared with the {read} request(s) read"
    if recorded == read:
        return None
    return (f"NOTE: meta.json records num_requests {recorded}, but {p.name} has {read} request(s) (a cut or partial "
            f"log, or another run's meta.json): the {read} are replayed, so the comparison is not of the whole run")


def _repeated_id_note(p: Path, rows: list[dict], line_nos: list[int], stamps: dict[str, pd.Series]) -> str | None:
    """A request_id on more than one line. A line repeated exactly is a duplicated line: refused. Other
    repeats are replayed as separate requests and said: one after the other (a client that restarts its
    numbering), or, where vLLM would have refused the id as still running, ids that are not the engine's
    (the log may merge runs). Each line is compared with the previous one of its id only, so a log whose
    ids are all one value stays linear."""
    queued, last = stamps["queued_ts"].to_numpy(), stamps["last_token_ts"].to_numpy()
    previous: dict[str, int] = {}
    reused: list[tuple[int, int]] = []
    overlapping: list[tuple[int, int]] = []
    for i, record in enumerate(rows):
        rid = record.get("request_id")
        if rid is None:
            continue
        key = json.dumps(rid, sort_keys=True)  # ids may be any JSON value; 1 and "1" stay apart
        j = previous.get(key)
        if j is not None:
            if record == rows[j]:
                raise PdsimError(f"{p}:{line_nos[i]}: repeats line {line_nos[j]} exactly (request_id {rid!r}): a "
                                 "duplicated line; an engine logs each request once")
            both_in = queued[i] < last[j] and queued[j] < last[i]
            (overlapping if both_in else reused).append((j, i))
        previous[key] = i
    notes = []
    for pairs, what in ((reused, "by another request after the first ended"),
                        (overlapping, "while an earlier request of that id was still in the engine, which vLLM "
                                      "refuses: the ids may not be the engine's, or the log may merge runs")):
        if pairs:
            j, i = pairs[0]
            notes.append(f"{len(pairs)} request_id repeat(s) {what} (e.g. {rows[i]['request_id']!r} on lines "
                         f"{line_nos[j]} and {line_nos[i]}): replayed as separate requests")
    return "; ".join(notes) or None
