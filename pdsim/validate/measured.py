"""Measured runs of real engines: which reader takes a --measured path, and where its files lie.

Four kinds of files are read, each by its own module, into one shape (`MeasuredRun`, measured_run.py):
- per-request JSONL with engine timestamps, as LLMServingSim's vLLM runner writes (engine_log.py);
- the JSON of `vllm bench serve --save-result --save-detailed` (vllm_bench.py);
- aiperf's per-request export, `profile_export.jsonl` (aiperf.py);
- closed-loop tables, one row per load point, as in aiconfigurator's silicon CSVs (closed_loop_table.py).

Latency columns are in ms; `arrival_s` is seconds since the first request of the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from pdsim.errors import PdsimError, decode_text
from pdsim.validate.aiperf import AIPERF_RECORDS, AIPERF_SUMMARY, read_aiperf_jsonl
from pdsim.validate.engine_log import read_engine_jsonl
from pdsim.validate.measured_run import MeasuredRun
from pdsim.validate.vllm_bench import read_vllm_bench_json

LLMSERVINGSIM_REQUESTS = "requests.jsonl"  # the engine's per-request log beside meta.json
LLMSERVINGSIM_RUN = "vllm_run"  # its folder in an LLMServingSim case, beside cluster_config.json and profile/
# What an LLMServingSim case folder keeps beside its vllm_run/ (its config, model, trace and profile).
CASE_FILES = ("cluster_config.json", "model_config.json", "workload.jsonl", "profile")


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
    if run_file.name == LLMSERVINGSIM_REQUESTS:  # validate reads the timeseries beside it, whatever the folder's name
        found.append(run_file.with_name("timeseries.csv"))
    if run_file.name == LLMSERVINGSIM_REQUESTS and run_file.parent.name == LLMSERVINGSIM_RUN:
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
