"""Measured runs of real engines, read into one shape that can be compared with a simulation.

Four kinds of files are read:
- per-request JSONL with engine timestamps (`input_toks, output_toks, arrival_time, queued_ts,
  scheduled_ts, first_token_ts, last_token_ts`), as LLMServingSim's vLLM runner writes;
- the JSON of `vllm bench serve --save-result --save-detailed` (per-request `ttfts`, `itls`,
  `input_lens`, `output_lens`);
- aiperf's per-request export, `profile_export.jsonl` (NVIDIA's benchmark client, the one Dynamo
  and aiconfigurator use; its default `--export-level records`);
- closed-loop tables (`isl, osl, concurrency, tp, mean TTFT, mean TPOT` per row), as in
  aiconfigurator's silicon CSVs.

Latency columns are in ms; `arrival_s` is seconds since the first request of the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.cli_checks import vllm_int
from pdsim.errors import (
    PdsimError,
    csv_error_detail,
    csv_row_lines,
    decode_text,
    json_shown,
    optional_object,
    parse_json,
    read_json_object,
)
from pdsim.workload.trace import MAX_ARRIVAL_NS, token_count

MEASURED_COLUMNS = ["input_toks", "output_toks", "arrival_s", "ttft_ms", "tpot_ms", "e2e_ms"]  # + queue_ms where known


@dataclass
class MeasuredRun:
    """One measured run: a row per request, plus what is needed to replay it."""

    source: str
    requests: pd.DataFrame  # MEASURED_COLUMNS
    itl_ms: np.ndarray | None = None  # every inter-token gap, when the file has them
    concurrency: int | None = None  # closed loop: the benchmark's --max-concurrency
    # Closed loop: per request, the client's gap from the latest request end to its send (seconds),
    # when the file has both times (aiperf).
    client_gaps_s: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    # What the engine beside the run says about itself (meta.json: vllm_version, engine_kwargs).
    engine_meta: dict = field(default_factory=dict)
    # Where TTFT and E2E start: "arrival" (the client sent it) or "pickup" (the engine first took it
    # in, between two steps: vLLM's `queued_ts`).
    latency_origin: str = "arrival"
    # Per request, its prompt's prefix-block ids (pdsim/validate/token_ids.py), when the ids are known.
    prefix_ids: list[tuple[int, ...]] | None = None
    prefix_block_tokens: int = 0
    # The client's wall-clock time (arrival_time, Unix seconds) of the request replayed first, where the
    # file has it: places the replay on the clock of the run's other records (timeseries.csv).
    first_arrival_wall_s: float | None = None

    @property
    def engine_kwargs(self) -> dict:
        """The engine arguments meta.json records (empty when it records none)."""
        return self.engine_meta.get("engine_kwargs") or {}

    @property
    def max_model_len(self) -> int | None:
        """The max_model_len the engine was started with, where meta.json names one (also in vLLM's command-line
        form, '8k'); None where it records none or vLLM's fit-to-memory ('auto', -1). read_engine_jsonl
        checked the value."""
        limit = self.engine_kwargs.get("max_model_len")
        limit = vllm_int(limit) if isinstance(limit, str) else limit
        return limit if type(limit) is int and limit >= 1 else None

    def async_scheduling(self) -> tuple[bool | None, str]:
        """Whether the measured vLLM scheduled asynchronously, and why pdsim thinks so (None: unknown)."""
        kwargs = self.engine_kwargs
        set_explicitly = isinstance(kwargs.get("async_scheduling"), bool)
        if not set_explicitly and kwargs.get("distributed_executor_backend") == "ray":
            # From 0.14 vLLM leaves its default off where the executor cannot schedule ahead (config/vllm.py):
            # only the multiprocessing and single-process executors can.
            return False, "off with distributed_executor_backend ray, which cannot schedule ahead (meta.json)"
        version = str(self.engine_meta.get("vllm_version", ""))
        pp = kwargs.get("pipeline_parallel_size")
        if not set_explicitly and vllm_major_minor(version) == (0, 14) and isinstance(pp, int) and pp > 1:
            return False, f"off with pipeline_parallel_size {pp}: vLLM {version}'s default (meta.json)"
        return self._engine_setting("async_scheduling", vllm_async_scheduling_default)

    def reserve_full_isl(self) -> tuple[bool | None, str]:
        """Whether the measured vLLM admitted only requests whose whole sequence fits in the free
        KV cache (scheduler_reserve_full_isl), and why pdsim thinks so (None: unknown)."""
        return self._engine_setting("scheduler_reserve_full_isl", vllm_reserves_full_isl)

    def allreduce_rms_fusion(self) -> tuple[bool | None, str]:
        """False where the measured vLLM cannot have fused its TP all-reduces with the norms after them
        (enforce_eager, or a version before 0.17), and why; None: vLLM's own rule decides (by GPU and layout)."""
        if self.engine_kwargs.get("enforce_eager") is True:
            return False, "enforce_eager in meta.json engine_kwargs (nothing compiled)"
        compiled, mode = self.compiles()
        if not compiled:
            return False, f"{mode} (no inductor passes)"
        if (level := self.optimization_level()) in (0, 1):
            return False, f"optimization_level {level} in meta.json engine_kwargs (vLLM's -O{level} leaves it off)"
        version = str(self.engine_meta.get("vllm_version", ""))
        if vllm_fuses_allreduce_norm(version) is False:
            return False, f"vLLM {version} predates it (meta.json; on by default from 0.17)"
        return None, ""

    def compilation_config(self) -> dict:
        """meta.json engine_kwargs' compilation_config as an object ({} when not recorded; _check_engine_meta
        checked its form)."""
        return compilation_config(self.engine_kwargs.get("compilation_config"))

    def optimization_level(self) -> int | None:
        """vLLM's -O level as recorded (None: not recorded, vLLM's default 2; _check_engine_meta checked it)."""
        return optimization_level(self.engine_kwargs.get("optimization_level"))

    def compiles(self) -> tuple[bool, str]:
        """Whether the measured vLLM compiled the model as its default does (compilation_config mode VLLM_COMPILE:
        piecewise CUDA graphs and inductor's fusion passes), and the recorded setting where it did not: the mode,
        or -O0, which sets it to NONE where none is given (config/vllm.py)."""
        mode = self.compilation_config().get("mode")
        if mode is None:
            return (False, "optimization_level 0 in meta.json engine_kwargs") if self.optimization_level() == 0 \
                else (True, "")
        if mode == 3 or (isinstance(mode, str) and mode.upper() == "VLLM_COMPILE"):
            return True, ""
        return False, f"compilation_config mode {mode!r} in meta.json engine_kwargs"

    def _engine_setting(self, key: str, default_of: Callable[[str], bool | None]) -> tuple[bool | None, str]:
        """A boolean engine argument: as meta.json's engine_kwargs set it, else the default of the
        vLLM version meta.json names (default_of(version), None when not known)."""
        kwargs = self.engine_kwargs
        if isinstance(kwargs.get(key), bool):
            return kwargs[key], "set in meta.json engine_kwargs"
        version = str(self.engine_meta.get("vllm_version", ""))
        value = default_of(version)
        return (None, "") if value is None else (value, f"vLLM {version}'s default (meta.json)")


def vllm_major_minor(version: str) -> tuple[int, int] | None:
    """(0, 19) for "0.19.0" (or "v0.19.0", "0.19.1+cu128"); None when it is not a release number."""
    try:
        major, minor = (int(x) for x in str(version).strip().removeprefix("v").split(".")[:2])
    except ValueError:
        return None
    return major, minor


def vllm_at_least(version: str, first: tuple[int, int]) -> bool | None:
    """Whether `version` is `first` or later: what a default that vLLM turned on in `first` is for that
    version; None when it is not a release number."""
    major_minor = vllm_major_minor(version)
    return None if major_minor is None else major_minor >= first


def vllm_async_scheduling_default(version: str) -> bool | None:
    """vLLM's default: off up to 0.13 (`SchedulerConfig.async_scheduling = False`), on from 0.14 (None there,
    which `VllmConfig.__post_init__` turns on unless something rules it out: ray, speculative decoding other
    than EAGLE, and in 0.14 alone pipeline parallelism); read in the 0.13.0 to 0.19.0 releases. None: unknown."""
    return vllm_at_least(version, (0, 14))


def vllm_fuses_allreduce_norm(version: str) -> bool | None:
    """Whether the version's default compilation (-O2) fuses TP all-reduces with the RMSNorm after them where
    the GPU allows (`config/vllm.py`: off in every optimization level up to 0.16, enable_allreduce_rms_fusion
    from 0.17); None: unknown."""
    return vllm_at_least(version, (0, 17))


def vllm_reserves_full_isl(version: str) -> bool | None:
    """scheduler_reserve_full_isl: new in 0.19 (on by default), absent up to 0.18; None: unknown."""
    return vllm_at_least(version, (0, 19))


def resolve_measured(path: str | Path) -> Path:
    """The file a --measured path names: itself, or the run file inside a run folder (an aiperf artifacts
    folder, the vllm_run/ folder of an LLMServingSim-style run, or the case folder above it)."""
    p = Path(path)
    if p.is_dir():
        names = (AIPERF_RECORDS, LLMSERVINGSIM_REQUESTS, f"{LLMSERVINGSIM_RUN}/{LLMSERVINGSIM_REQUESTS}")
        inside = next((p / name for name in names if (p / name).is_file()), None)
        if inside is None:
            raise PdsimError(f"{p}: a folder without a measured run in it (expected {LLMSERVINGSIM_REQUESTS}, as "
                             f"in an LLMServingSim run's {LLMSERVINGSIM_RUN}/, or aiperf's {AIPERF_RECORDS}); give "
                             "the file")
        return inside
    return p


def case_file(run_file: str | Path, name: str) -> Path | None:
    """`name` (cluster_config.json, profile) in the case folder of an LLMServingSim-style run
    (<case>/vllm_run/requests.jsonl), where that layout keeps the run's config and profile; None elsewhere."""
    run_file = Path(run_file)
    if run_file.name != LLMSERVINGSIM_REQUESTS or run_file.parent.name != LLMSERVINGSIM_RUN:
        return None
    found = run_file.parent.parent / name
    return found if found.exists() else None


# The engine arguments pdsim reads as switches (meta.json engine_kwargs): anything but true, false or null is
# an error, not a silent fall-back on vLLM's default.
ENGINE_SWITCHES = ("async_scheduling", "enforce_eager", "enable_expert_parallel", "scheduler_reserve_full_isl",
                   "enable_chunked_prefill", "enable_prefix_caching", "disable_custom_all_reduce")


# vLLM's CompilationMode, by number: only VLLM_COMPILE (its default) compiles piecewise graphs and runs fusion passes.
COMPILATION_MODES = ("NONE", "STOCK_TORCH_COMPILE", "DYNAMO_TRACE_ONCE", "VLLM_COMPILE")


def compilation_config(value: object) -> dict:
    """vLLM's compilation_config as EngineArgs take it: an object, its JSON text (-cc), or a mode number."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    return {"mode": value} if type(value) is int else value


def optimization_level(value: object) -> int | None:
    """vLLM's -O level as EngineArgs take it or a record writes it (2, "2", "O2", "-O2", "OptimizationLevel.O2");
    None when not recorded. ValueError for anything else."""
    if value is None:
        return None
    text = str(value).removeprefix("OptimizationLevel.").removeprefix("-").removeprefix("O")
    if isinstance(value, bool) or not isinstance(value, int | str) or text not in ("0", "1", "2", "3"):
        raise ValueError(value)
    return int(text)


# meta.json's fields beside LLMServingSim's vLLM runs (schema_version 1): the engine's arguments are read from
# engine_kwargs alone, so one written beside them is named, not taken, and not dropped unsaid.
META_FIELDS = frozenset({"schema_version", "model", "vllm_version", "engine_kwargs", "kv_cache", "dataset_path",
                         "dataset_hash", "num_requests", "started_at", "finished_at", "tick_seconds"})


def _meta_notes(meta: dict) -> list[str]:
    """What a meta.json leaves the replay without: the engine's arguments (a NOTE where one the replay would take
    sits outside engine_kwargs), or other fields it does not read (the harness's own records: said in passing)."""
    from pdsim.validate.recorded import REPLAYED_KWARGS

    notes = []
    if meta and not isinstance(meta.get("engine_kwargs"), dict):
        notes.append("NOTE: meta.json records no engine_kwargs (the engine's arguments): the replay takes the "
                     "cluster config's settings and vLLM's defaults")
    other = sorted(set(meta) - META_FIELDS)
    if misplaced := [key for key in other if key in REPLAYED_KWARGS]:
        notes.append(f"NOTE: meta.json gives {', '.join(misplaced)} outside engine_kwargs, where the replay reads the "
                     "engine's arguments: not taken")
    if rest := [key for key in other if key not in REPLAYED_KWARGS]:
        notes.append(f"meta.json fields not read: {', '.join(rest)}")
    return notes


def _check_engine_meta(meta_path: Path, meta: dict) -> None:
    """The shape of what meta.json says about the engine; each field's own meaning is checked where it is used."""
    kwargs = meta.get("engine_kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise PdsimError(f"{meta_path}: engine_kwargs: expected an object (the engine's arguments by name), "
                         f"got {kwargs!r}")
    for key in ENGINE_SWITCHES:
        if kwargs.get(key) is not None and not isinstance(kwargs[key], bool):
            raise PdsimError(f"{meta_path}: engine_kwargs.{key}: expected true or false, got {kwargs[key]!r}")
    try:
        parsed = compilation_config(kwargs.get("compilation_config"))
    except json.JSONDecodeError as e:
        parsed = e
    if not isinstance(parsed, dict):
        raise PdsimError(f"{meta_path}: engine_kwargs.compilation_config: expected an object, its JSON text or a "
                         f"compilation mode number (vLLM's forms), got {json_shown(kwargs['compilation_config'], 60)}")
    mode = parsed.get("mode")
    if not (mode is None or (type(mode) is int and 0 <= mode < len(COMPILATION_MODES))
            or (isinstance(mode, str) and mode.upper() in COMPILATION_MODES)):
        raise PdsimError(f"{meta_path}: engine_kwargs.compilation_config.mode: expected 0 to 3 or one of "
                         f"{', '.join(COMPILATION_MODES)} (vLLM's CompilationMode), got {json_shown(mode, 40)}")
    try:
        optimization_level(kwargs.get("optimization_level"))
    except ValueError:
        raise PdsimError(f"{meta_path}: engine_kwargs.optimization_level: expected 0, 1, 2 or 3 (vLLM's -O levels), "
                         f"got {json_shown(kwargs['optimization_level'], 40)}") from None
    limit = kwargs.get("max_model_len")
    number = vllm_int(limit) if isinstance(limit, str) else limit
    if not (limit is None or limit == "auto" or number == -1 or (type(number) is int and number >= 1)):
        raise PdsimError(f"{meta_path}: engine_kwargs.max_model_len: expected a whole number >= 1, -1 or 'auto' "
                         f"(vLLM fits it to the memory), got {limit!r}")
    for where, obj, key in (("", meta, "model"), ("", meta, "vllm_version"), ("engine_kwargs.", kwargs, "model")):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise PdsimError(f"{meta_path}: {where}{key}: expected a string, got {obj[key]!r}")


def measured_inputs(path: str | Path) -> list[Path]:
    """Every file a --measured path makes pdsim read, for refusing an output that would overwrite one: the
    run file (in a folder given), and the files read beside it (an engine log's meta.json, aiperf's summary).
    Not the folder itself: only these files in it are read, so an output may go beside them. In
    LLMServingSim's case layout the run's other records (its timeseries, the case's config, model config,
    trace and profile) count too: they are the measurement, and the case's config may be read in place."""
    p = Path(path)
    try:
        run_file = resolve_measured(p)
    except PdsimError:
        return [p]  # reading it says what is wrong
    found = [run_file, run_file.with_name(AIPERF_SUMMARY if run_file.name == AIPERF_RECORDS else "meta.json")]
    if run_file.name == LLMSERVINGSIM_REQUESTS and run_file.parent.name == LLMSERVINGSIM_RUN:
        found.append(run_file.with_name("timeseries.csv"))
        found += [f for name in CASE_FILES if (f := case_file(run_file, name)) is not None]
    return found


def read_measured(path: str | Path, clock: str = "engine") -> MeasuredRun:
    """Read a per-request JSONL, a `vllm bench serve` JSON or an aiperf export (chosen by content;
    an aiperf artifacts folder is read through its profile_export.jsonl)."""
    p = resolve_measured(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        raise PdsimError(f"{p}: not a regular file (a pipe, FIFO or device); pdsim reads a measured run more than "
                         "once, so save it to a file first")
    if not p.is_file():
        raise PdsimError(f"{p}: measured run not found")
    text = decode_text(p.read_bytes(), str(p))
    first = text.lstrip()[:1]
    if first == "{":
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            obj = None  # JSONL: one object per line (the reader below names any other problem)
        if isinstance(obj, dict) and "ttfts" in obj:
            return read_vllm_bench_json(p)  # read again, strictly (no repeated keys)
        head = text.lstrip().split("\n", 1)[0]
        try:
            first_record = json.loads(head)
        except (json.JSONDecodeError, RecursionError):
            first_record = None
        if isinstance(first_record, dict) and "metadata" in first_record and "metrics" in first_record:
            return read_aiperf_jsonl(p)
    return read_engine_jsonl(p, clock)


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
    need = ("input_toks", "output_toks", "arrival_time", "queued_ts", "first_token_ts", "last_token_ts")
    if not rows:  # said as such: a list of missing fields would point at the wrong problem
        raise PdsimError(f"{p}: no requests in the file (expected one JSON object per request, with "
                         f"{', '.join(need)})")
    df = pd.DataFrame(rows)
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise PdsimError(f"{p}: missing field(s) {', '.join(missing)}; expected {', '.join(need)}")
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
        df[key] = [_count(row[key], f"{p}:{n}", key,
                          0 if key == "output_toks" and row.get("first_token_ts") is None else 1)
                   for row, n in zip(rows, line_nos)]
    _check_stamp_values(p, df, rows, line_nos)
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
    arrival_time = pd.to_numeric(df.arrival_time, errors="coerce")
    if clock == "client":
        _check_client_times(p, rows, line_nos, arrival_time, stamps)
    meta_path = p.with_name("meta.json")
    meta = read_json_object(meta_path) if meta_path.is_file() else {}
    _check_engine_meta(meta_path, meta)
    notes = [f"arrival times from the {clock} clock", *_meta_notes(meta)]
    if (said := _request_count_note(p, meta, len(rows))) is not None:
        notes.append(said)
    if (said := _repeated_id_note(p, rows, line_nos, stamps)) is not None:
        notes.append(said)
    arrival = stamps["queued_ts"] if clock == "engine" else arrival_time
    seen = arrival.notna()
    seen &= ~_take_zero_output_requests(df, stamps, seen, notes)
    if not seen.all():  # never reached the engine (or the client sent nothing): nothing to replay
        notes.append(f"{int((~seen).sum())} request(s) without {'queued_ts' if clock == 'engine' else 'arrival_time'} "
                     "left out of the replay")
    if not seen.any():
        raise PdsimError(f"{p}: no request has {'queued_ts' if clock == 'engine' else 'arrival_time'}: nothing to "
                         "replay")
    df, arrival = df[seen], arrival[seen]
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
        scheduled = stamps["scheduled_ts"][seen]
        out["queue_ms"] = (scheduled - queued) * 1e3
        out["sched_to_token_ms"] = (first - scheduled) * 1e3
    out = out.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    tpot_s = float(np.nanmedian(out.tpot_ms)) / 1e3 if out.tpot_ms.notna().any() else 0.0
    if tpot_s > 10:  # no engine takes 10 s a token: the stamps are not in seconds
        notes.append(f"NOTE: the median time per output token is {tpot_s:,.0f} s: the engine times are read as "
                     "seconds (vLLM's stamps are); times in milliseconds would need converting first")
    first_wall = arrival_time[seen].loc[arrival.idxmin()]
    return MeasuredRun(str(p), out, notes=notes, engine_meta=meta, latency_origin="pickup",
                       first_arrival_wall_s=float(first_wall) if np.isfinite(first_wall) else None)


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


def _count(value: object, where: str, key: str, least: int = 1) -> int:
    return token_count(value, where, key, least, error=PdsimError)


# A request's latency (or a gap within it) beyond a day is a corrupt value (or one in another unit): a benchmark
# that waited so long measured nothing a replay could be compared with.
MAX_LATENCY_S = 86_400.0


def _time(value: object, where: str, key: str, least: float = 0.0, most: float = MAX_LATENCY_S,
          unit: str = "s") -> float:
    """A duration (or, with most=inf, a time) as a file gives it: a finite number from `least` to `most`."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not least <= value <= most):
        bounds = ("" if least == -math.inf and most == math.inf else f" >= {least:g}" if most == math.inf
                  else f" from {least:g} to {most:g} {unit}")
        raise PdsimError(f"{where}: field {key!r}: expected a finite number{bounds}, got {value!r:.60}")
    return float(value)


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


def read_vllm_bench_json(path: str | Path, obj: dict | None = None) -> MeasuredRun:
    """`vllm bench serve --save-result --save-detailed` output. Times there are in seconds.

    Arrival times are not saved by vllm bench: with `max_concurrency` the replay is a closed
    loop with that many clients; with an infinite `request_rate` all requests arrive at 0;
    otherwise they are spaced evenly at the request rate (the benchmark drew Poisson gaps,
    whose draw is not recorded), and the run says so in its notes.
    """
    p = Path(path)
    if obj is None:
        obj = parse_json(p.read_bytes(), str(p))
    if not isinstance(obj, dict):
        raise PdsimError(f"{p}: expected a JSON object")
    for key in ("ttfts", "itls", "input_lens", "output_lens"):
        if key not in obj:
            raise PdsimError(f"{p}: missing {key!r}; save it with `vllm bench serve --save-result --save-detailed`")
    ttfts = obj["ttfts"]
    n = len(ttfts) if isinstance(ttfts, list) else 0
    lists = ["ttfts", "itls", "input_lens", "output_lens"] + [k for k in ("errors", "start_times")
                                                              if obj.get(k) is not None]
    for key in lists:
        if not isinstance(obj[key], list) or len(obj[key]) != n:
            got = f"a list of {len(obj[key])}" if isinstance(obj[key], list) else json_shown(obj[key])
            raise PdsimError(f"{p}: {key!r}: expected a list with one entry per request, like 'ttfts' ({n}), got {got}")
    errors = obj.get("errors") or [""] * n
    # A failed request has an error or no TTFT (vllm bench saves 0 or null for it).
    ok = [i for i in range(n) if not errors[i] and ttfts[i] is not None and ttfts[i] != 0]
    if not ok:
        raise PdsimError(f"{p}: no successful request (each has an error or no TTFT): nothing to compare")
    ttft = np.array([_time(ttfts[i], f"{p}: ttfts[{i}]", "ttft", 0.0) for i in ok]) * 1e3
    itls = []
    for i in ok:
        if not isinstance(obj["itls"][i], list):
            raise PdsimError(f"{p}: itls[{i}]: expected a list of seconds, got {obj['itls'][i]!r:.60}")
        itls.append(np.array([_time(x, f"{p}: itls[{i}]", "itl") for x in obj["itls"][i]], dtype=float) * 1e3)
    out_lens = np.array([_count(obj["output_lens"][i], f"{p}: output_lens[{i}]", "output_len") for i in ok])
    in_lens = np.array([_count(obj["input_lens"][i], f"{p}: input_lens[{i}]", "input_len") for i in ok])
    e2e = ttft + np.array([x.sum() for x in itls])
    tpot = np.where(out_lens > 1, (e2e - ttft) / np.maximum(out_lens - 1, 1), np.nan)
    notes = []
    conc = obj.get("max_concurrency")
    if conc is not None and (type(conc) is not int or conc < 1):
        raise PdsimError(f"{p}: 'max_concurrency': expected a whole number >= 1 or null, got {conc!r:.60}")
    rate = obj.get("request_rate", "inf")
    if rate in (None, "inf", "Infinity") or rate == math.inf:
        rate = math.inf
    elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
        raise PdsimError(f"{p}: 'request_rate': expected a number > 0 or \"inf\", got {rate!r:.60}")
    if obj.get("start_times") is not None:
        starts = np.array([_time(obj["start_times"][i], f"{p}: start_times[{i}]", "start_time", -math.inf, math.inf)
                           for i in ok])
        arrival = starts - starts.min()
    elif conc is None and math.isfinite(rate):
        arrival = np.arange(len(ok)) / rate
        notes.append(f"arrival times not recorded: spaced evenly at the request rate {rate:g}/s")
    else:
        arrival = np.zeros(len(ok))
    if arrival.size and arrival.max() > MAX_ARRIVAL_NS / 1e9:
        source = "start_times" if obj.get("start_times") is not None else "request_rate"
        raise PdsimError(f"{p}: {source!r}: the last request would arrive {arrival.max():.3g} s after the first, past "
                         f"the {MAX_ARRIVAL_NS / 1e9:.0e} s a run's clock holds")
    if len(ok) < n:
        notes.append(f"{n - len(ok)} failed request(s) left out")
    df = pd.DataFrame({"input_toks": in_lens, "output_toks": out_lens, "arrival_s": arrival,
                       "ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": e2e})
    # Results are in completion order: the replay lets requests in by arrival, so they are sorted so.
    df = df.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    itl = np.concatenate(itls) if itls else np.empty(0)
    return MeasuredRun(str(p), df, itl_ms=itl, concurrency=int(conc) if conc else None, notes=notes)


# -- aiperf ---------------------------------------------------------------------------------------

AIPERF_RECORDS = "profile_export.jsonl"
LLMSERVINGSIM_REQUESTS = "requests.jsonl"  # the engine's per-request log beside meta.json
# What an LLMServingSim case folder keeps beside its vllm_run/ (its config, model, trace and profile).
CASE_FILES = ("cluster_config.json", "model_config.json", "workload.jsonl", "profile")
LLMSERVINGSIM_RUN = "vllm_run"  # its folder in an LLMServingSim case, beside cluster_config.json and profile/
AIPERF_SUMMARY = "profile_export_aiperf.json"
_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "sec": 1e3, "s": 1e3}


def _aiperf_value(record: dict, tag: str, where: str, unit: str = "ms"):
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


def aiperf_concurrency(records_path: Path) -> int | None:
    """The profiling phase's concurrency, from the profile_export_aiperf.json beside the records
    (aiperf's YAML-v2 layout, `input_config.phases[]`, else the older `input_config.loadgen`)."""
    summary = records_path.with_name(AIPERF_SUMMARY)
    if not summary.is_file():
        return None
    config = optional_object(read_json_object(summary), "input_config", f"{summary}: input_config")
    phases = config.get("phases") or []
    if not isinstance(phases, list):
        raise PdsimError(f"{summary}: input_config.phases: expected a list of phases, got {json_shown(phases)}")
    phases = [ph for ph in phases if isinstance(ph, dict)]
    phase = next((ph for ph in phases if ph.get("name") == "profiling"), phases[0] if phases else None)
    value, where = (phase.get("concurrency"), "input_config.phases[].concurrency") if phase else (None, "")
    if value is None:
        loadgen = optional_object(config, "loadgen", f"{summary}: input_config.loadgen")
        value, where = loadgen.get("concurrency"), "input_config.loadgen.concurrency"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PdsimError(f"{summary}: {where}: expected a whole number of clients >= 1, got {json_shown(value)}")
    return value


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
    for line_no, line in enumerate(decode_text(p.read_bytes(), str(p)).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{line_no}"
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
    concurrency = aiperf_concurrency(p)
    notes = ["arrival times: when aiperf sent each request"]
    gaps = None
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
    return MeasuredRun(str(p), df, itl_ms=np.asarray(itls, dtype=float) if itls else None,
                       concurrency=concurrency, notes=notes, client_gaps_s=gaps if gaps is not None and gaps.size
                       else None)


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
    osl = _count(values["output_sequence_length"], where, "metrics.output_sequence_length")
    most_ms = MAX_LATENCY_S * 1e3
    ttft = _time(values["time_to_first_token"], where, "metrics.time_to_first_token", 0.0, most_ms, "ms")
    latency = _time(values["request_latency"], where, "metrics.request_latency", ttft, most_ms, "ms")
    row = {"input_toks": _count(values["input_sequence_length"], where, "metrics.input_sequence_length"),
           "output_toks": osl, "start_ns": start_ns, "ttft_ms": ttft,
           "tpot_ms": (latency - ttft) / (osl - 1) if osl > 1 else np.nan, "e2e_ms": latency}
    chunks = _aiperf_value(record, "inter_chunk_latency", where)
    if chunks is not None:
        if not isinstance(chunks, list):
            raise PdsimError(f"{where}: metrics.inter_chunk_latency: expected a list of gaps, got {chunks!r:.60}")
        chunks = [_time(x, where, "metrics.inter_chunk_latency", 0.0, most_ms, "ms") for x in chunks]
    return row, chunks


# -- closed-loop tables ---------------------------------------------------------------------------

_ALIASES = {
    "isl": ("isl", "input_len", "input_length"),
    "osl": ("osl", "output_len", "output_length"),
    "concurrency": ("concurrency", "batch_size", "max_concurrency"),
    "tp": ("tp", "tp_size"),
    "ttft_ms": ("silicon_ttft_ms", "ttft_ms", "mean_ttft_ms"),
    "tpot_ms": ("silicon_tpot_ms", "tpot_ms", "mean_tpot_ms"),
}


# Said where a .csv is not the closed-loop table it is read as: a per-request run's CSV is the likely slip.
CSV_IS_A_TABLE = ("a .csv is read as a closed-loop table (a row per load point); per-request runs are read from "
                  "JSON Lines (LLMServingSim's requests.jsonl, aiperf's profile_export.jsonl) or a `vllm bench serve` "
                  "JSON (docs/validation.md)")
FILE_LINE = "file_line"  # the name of a closed-loop table's index when it holds each row's line in the file


def read_closed_loop_table(path: str | Path) -> pd.DataFrame:
    """Rows of (isl, osl, concurrency, tp, ttft_ms, tpot_ms) plus whatever else the file has
    (model_path, system, backend_version ... are kept)."""
    p = Path(path)
    try:
        # Versions as written: read as numbers, 0.10 would become 0.1 (another vLLM release).
        df = pd.read_csv(p, dtype={"backend_version": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PdsimError(f"{p}: not a readable CSV table ({csv_error_detail(e)})") from None
    if df.empty:
        raise PdsimError(f"{p}: the table has no rows")
    rename = {}
    for name, options in _ALIASES.items():
        present = [c for c in options if c in df.columns]
        if not present:
            raise PdsimError(f"{p}: no column for {name} (tried {', '.join(options)}); {CSV_IS_A_TABLE}")
        if len(present) > 1:  # two columns for one quantity: which one the rows mean is not for pdsim to pick
            raise PdsimError(f"{p}: columns {' and '.join(present)} both give {name}; keep one")
        rename[present[0]] = name
    df = df.rename(columns=rename)
    df.attrs["source_columns"] = {name: found for found, name in rename.items()}  # for messages about a row
    df.attrs["source"] = str(p)
    lines = csv_row_lines(p)
    if lines is not None and len(lines) == len(df):  # each row's file line, as the index: it follows the rows kept
        df.index = pd.Index(lines, name=FILE_LINE)
    return df


def is_closed_loop_table(path: str | Path) -> bool:
    """A .csv is read as a closed-loop table (the per-request formats are JSON), so a table missing a
    column is told which one, not read as JSON."""
    return Path(path).suffix.lower() == ".csv"
