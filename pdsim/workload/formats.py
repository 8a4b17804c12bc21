"""Readers for public request traces, each giving pdsim's TraceRequests (arrival times in ns from
the file's own origin; readers.py rebases, windows and scales them).

Formats (docs/workloads.md has the details and where to get each trace):
- azure: Azure LLM inference CSV, `TIMESTAMP,ContextTokens,GeneratedTokens` (2023 and 2024);
- mooncake: Mooncake JSONL, `timestamp` (ms), `input_length`, `output_length`, `hash_ids`;
- burstgpt: BurstGPT CSV, `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`;
- sharegpt: ShareGPT-style conversation JSON (a list of `{"conversations": [{"from", "value"}]}`);
- lengths-csv: per-request token counts without times (`num_prefill_tokens,num_decode_tokens`);
- vllm-bench: `vllm bench serve --save-result --save-detailed` JSON (read by pdsim.validate.vllm_bench).
"""

from __future__ import annotations

import json
import lzma
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.config.base import MAX_TOKENS
from pdsim.errors import (
    TraceError,
    csv_error_detail,
    csv_header,
    csv_row_lines,
    decode_text,
    json_kind,
    json_shown,
    parse_json,
)
from pdsim.workload.trace import (
    DEFAULT_HASH_BLOCK_TOKENS,
    MAX_ARRIVAL_NS,
    TraceRequest,
    check_repeated_keys,
    checked_hash_ids,
    token_count,
)

# A tokenizer-free length estimate for text: ~4 characters per token is OpenAI's rule of thumb for
# English; for Llama-2's tokenizer on ShareGPT it is about 3.5-4 (documented in docs/workloads.md).
CHARS_PER_TOKEN = 4.0


@dataclass
class Loaded:
    """What a reader found, in file order, times (ns) from the file's own origin; plus notes.
    Arrays, so that a window of a long trace is cut before any per-request object is made."""

    arrival_ns: np.ndarray  # int64
    input_toks: np.ndarray
    output_toks: np.ndarray
    notes: list[str] = field(default_factory=list)
    has_times: bool = True
    hash_ids: list[tuple[int, ...]] | None = None  # per request, when the file has them
    hash_block_tokens: list[int] | None = None
    request_ids: np.ndarray | None = None  # when not the row's place (a pdsim trace keeps its own)

    @classmethod
    def from_requests(cls, reqs: list[TraceRequest], notes: list[str] | None = None,
                      has_times: bool = True) -> Loaded:
        with_ids = any(r.hash_ids for r in reqs)
        return cls(np.fromiter((r.arrival_time_ns for r in reqs), np.int64, len(reqs)),
                   np.fromiter((r.input_toks for r in reqs), np.int64, len(reqs)),
                   np.fromiter((r.output_toks for r in reqs), np.int64, len(reqs)),
                   notes or [], has_times,
                   [r.hash_ids for r in reqs] if with_ids else None,
                   [r.hash_block_tokens for r in reqs] if with_ids else None,
                   np.fromiter((r.request_id for r in reqs), np.int64, len(reqs)))


def _read_csv(path: Path, need: tuple[str, ...], what: str) -> pd.DataFrame:
    try:
        return _read_csv_file(path, need, what)
    # What a compressed file's decompressor raises: gzip, bz2 and lzma an EOFError on a file cut short (which click
    # would report as Ctrl-C), a BadGzipFile (an OSError without the file's name), LZMAError or TarError on other
    # bytes (a .tar cut short too).
    except EOFError:
        raise TraceError(f"{path}: the compressed file ends early (cut short?); read as: {what} trace") from None
    except (OSError, lzma.LZMAError, tarfile.TarError) as e:
        if isinstance(e, OSError) and e.filename is not None:
            raise
        raise TraceError(f"{path}: cannot decompress it ({e}); read as: {what} trace") from None
    except ImportError as e:  # pandas reads .zst with the zstandard package, which pdsim does not install
        raise TraceError(f"{path}: reading it needs a package pdsim does not install ({e.msg.splitlines()[0]}); "
                         "decompress it first, or install that package") from None


def _read_csv_file(path: Path, need: tuple[str, ...], what: str) -> pd.DataFrame:
    try:
        # Default dtypes: clean numeric columns parse as int64 at once; a column with a bad cell
        # stays text and _int_column names the cell.
        # index_col=False: rows longer than the header must not turn the first column into the index;
        # pandas then drops their extra fields with a warning, made an error below.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, skipinitialspace=True, keep_default_na=False, index_col=False)
    except pd.errors.ParserWarning:
        raise TraceError(f"{path}: rows have more fields than the header (a trailing comma, or an unquoted comma in a "
                         f"cell); read as: {what} trace") from None
    except pd.errors.EmptyDataError:
        raise TraceError(f"{path}: the file is empty; read as: {what} trace (a CSV with columns "
                         f"{', '.join(need)})") from None
    except UnicodeDecodeError as e:
        decode_text(path.read_bytes(), str(path), TraceError)  # names the line
        raise TraceError(f"{path}: not valid UTF-8 ({e.reason}); read as: {what} trace") from None
    except pd.errors.ParserError as e:
        raise TraceError(f"{path}: not a readable CSV ({csv_error_detail(e)}); read as: {what} trace") from None
    except (ValueError, zipfile.BadZipFile) as e:  # a compressed file pandas cannot open as one CSV
        raise TraceError(f"{path}: not a readable CSV ({str(e).splitlines()[0]}); read as: {what} trace") from None
    df.columns = [str(c).strip() for c in df.columns]
    header = csv_header(path) or []  # pandas renames a repeated column ("X.1") without a word
    twice = [c for c in need if header.count(c) > 1]
    if twice:
        raise TraceError(f"{path}:1: column {twice[0]!r} appears {header.count(twice[0])} times; which one holds the "
                         f"values is not clear (read as: {what} trace)")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise TraceError(f"{path}:1: {what} CSV lacks column(s) {', '.join(missing)}; expected {', '.join(need)}")
    if df.empty:
        raise TraceError(f"{path}: the trace has no requests")
    return df


def _line(path: Path, i: int) -> int:
    """The file line of data row `i`, for an error (counted only then)."""
    lines = csv_row_lines(path)
    return lines[i] if lines is not None and i < len(lines) else i + 2


def _int_column(df: pd.DataFrame, column: str, path: Path, min_value: int = 1) -> np.ndarray:
    """A token-count column; the first bad cell is named by file line (header = line 1) and column."""
    x = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(x) | (x != np.round(x)) | (x < min_value) | (x > MAX_TOKENS)
    if df[column].dtype == bool:  # pandas reads a column of True/False words as booleans, which would count as 1/0
        bad[:] = True
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(f"{path}:{_line(path, i)}: field {column!r}: expected an integer from {min_value} to "
                         f"{MAX_TOKENS:.0e}, got {_cell(df[column].iloc[i])}")
    return x.astype(np.int64)


def _cell(value: object) -> str:
    """A cell as the file has it (numpy's repr, np.float64(-5.0), is not what the user wrote)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def read_azure(path: Path) -> Loaded:
    """Azure LLM inference traces: absolute timestamps (2023: 7-digit fractions; 2024: the same
    columns, optionally with a UTC offset), prompt and generated tokens per request."""
    df = _read_csv(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"), "Azure")
    # As text: pandas reads a column of bare numbers as numbers, which a later pandas takes for epoch seconds.
    text = df["TIMESTAMP"].astype(str).str.strip()
    # A time without an offset is read as UTC; beside times with one, it may well be local time: refused.
    zoned = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True).to_numpy()
    if zoned.any() and not zoned.all():
        mostly_zoned = zoned.sum() > len(zoned) / 2  # the odd row out is of the other kind
        i = int(np.argmax(~zoned if mostly_zoned else zoned))
        odd, others = ("has no", "have one") if mostly_zoned else ("has a", "have none")
        raise TraceError(f"{path}:{_line(path, i)}: field 'TIMESTAMP': {_cell(df['TIMESTAMP'].iloc[i])} {odd} UTC "
                         f"offset where the trace's other rows {others}: expected one way for every row (a time "
                         "without an offset is read as UTC)")
    times = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    if times.isna().any():
        i = int(np.argmax(times.isna().to_numpy()))
        raise TraceError(f"{path}:{_line(path, i)}: field 'TIMESTAMP': expected a date-time such as "
                         f"2023-11-16 18:15:46.6805900, got {_cell(df['TIMESTAMP'].iloc[i])}")
    # Years outside 1678..2261 do not fit int64 ns since 1970 (they would wrap); a span over the clock's
    # bound would not fit a trace's arrival times.
    outside = ((times.dt.year < 1678) | (times.dt.year > 2261)).to_numpy()
    if outside.any():
        i = int(np.argmax(outside))
        raise TraceError(f"{path}:{_line(path, i)}: field 'TIMESTAMP': expected a date-time between the years 1678 "
                         f"and 2261, got {_cell(df['TIMESTAMP'].iloc[i])}")
    arrival_ns = times.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    late = arrival_ns.astype(float) - float(arrival_ns.min()) > MAX_ARRIVAL_NS  # in float: int64 would wrap
    if late.any():
        i = int(np.argmax(late))
        raise TraceError(f"{path}:{_line(path, i)}: field 'TIMESTAMP': {_cell(df['TIMESTAMP'].iloc[i])} is more than "
                         f"{MAX_ARRIVAL_NS / 1e9:.0e} s after the trace's first request")
    inputs = _int_column(df, "ContextTokens", path)
    outputs = _int_column(df, "GeneratedTokens", path, min_value=0)
    keep = outputs > 0
    notes = []
    if not keep.all():  # no generated token: nothing to decode, the request did not complete
        notes.append(f"{int((~keep).sum())} request(s) with 0 GeneratedTokens left out")
    return Loaded(arrival_ns[keep], inputs[keep], outputs[keep], notes)


def read_burstgpt(path: Path, model: str | None = None, log_type: str | None = None) -> Loaded:
    """BurstGPT: `Timestamp` in s from the trace's start; rows with 0 response tokens are failed
    requests (left out, and counted)."""
    need = ("Timestamp", "Model", "Request tokens", "Response tokens", "Log Type")
    df = _read_csv(path, need, "BurstGPT")
    keep = np.ones(len(df), dtype=bool)
    notes = []
    for column, wanted, what in (("Model", model, "model"), ("Log Type", log_type, "log")):
        if wanted is not None:
            cells = df[column].astype(str).str.strip()  # a column of numbers reads as numbers
            match = cells.str.lower() == wanted.strip().lower()
            if not match.any():
                raise TraceError(f"{path}: no row has {column} {wanted!r}; the file has "
                                 f"{', '.join(sorted(cells.unique())[:10])}")
            keep &= match.to_numpy()
            notes.append(f"{what} {wanted!r} only")
    t_s = pd.to_numeric(df["Timestamp"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(t_s) | (t_s < 0) | (t_s > MAX_ARRIVAL_NS / 1e9)
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(f"{path}:{_line(path, i)}: field 'Timestamp': expected seconds from 0 to "
                         f"{MAX_ARRIVAL_NS / 1e9:.0e}, got {_cell(df['Timestamp'].iloc[i])}")
    inputs = _int_column(df, "Request tokens", path, min_value=0)
    outputs = _int_column(df, "Response tokens", path, min_value=0)
    failed = keep & (outputs == 0)
    empty = keep & (outputs > 0) & (inputs == 0)
    if failed.any():
        notes.append(f"{int(failed.sum())} failed request(s) (0 response tokens) left out")
    if empty.any():
        notes.append(f"{int(empty.sum())} request(s) with 0 request tokens left out")
    keep &= ~failed & ~empty
    arrival_ns = np.rint(t_s * 1e9).astype(np.int64)
    return Loaded(arrival_ns[keep], inputs[keep], outputs[keep], notes)


def read_lengths_csv(path: Path) -> Loaded:
    """Token counts without times (e.g. sarathi-serve's processed ShareGPT stats): all arrive at 0."""
    df = _read_csv(path, ("num_prefill_tokens", "num_decode_tokens"), "lengths")
    inputs = _int_column(df, "num_prefill_tokens", path)
    outputs = _int_column(df, "num_decode_tokens", path)
    return Loaded(np.zeros(len(df), dtype=np.int64), inputs, outputs,
                  ["no arrival times in the file: every request at t=0"], has_times=False)


def _mooncake_field(obj: dict, key: str, where: str, min_value: int) -> int:
    try:
        v = obj[key]
    except KeyError:
        raise TraceError(f"{where}: missing field {key!r}") from None
    return token_count(v, where, key, min_value)


MOONCAKE_KEYS = frozenset({"timestamp", "input_length", "output_length", "hash_ids"})


def read_mooncake(path: Path) -> Loaded:
    """Mooncake's FAST'25 traces: `timestamp` in ms from the trace's start, and `hash_ids`, one id
    per 512-token block of the prompt (equal ids: equal prefixes)."""
    requests: list[TraceRequest] = []
    unknown: dict[str, int] = {}
    block = DEFAULT_HASH_BLOCK_TOKENS
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TraceError(f"{where}: not valid JSON ({getattr(e, 'msg', e)})") from None
            except (RecursionError, ValueError):
                raise TraceError(f"{where}: not valid JSON (nested too deeply or a number too long)") from None
            if not isinstance(obj, dict):
                raise TraceError(f"{where}: expected a JSON object, got {json_kind(obj)}")
            check_repeated_keys(line, obj, where)
            t_ms = obj.get("timestamp")
            if type(t_ms) not in (int, float) or not 0 <= t_ms <= MAX_ARRIVAL_NS / 1e6:  # NaN fails too
                raise TraceError(f"{where}: field 'timestamp': expected ms from 0 to {MAX_ARRIVAL_NS / 1e6:.0e}, "
                                 f"got {json_shown(t_ms)}")
            inp = _mooncake_field(obj, "input_length", where, 1)
            out = _mooncake_field(obj, "output_length", where, 1)
            ids = checked_hash_ids(obj.get("hash_ids", []), inp, block, where)
            requests.append(TraceRequest(len(requests), inp, out, round(t_ms * 1_000_000), ids, block if ids else 0))
            for key in obj.keys() - MOONCAKE_KEYS:  # a misspelt hash_ids would otherwise pass as none
                unknown[key] = unknown.get(key, 0) + 1
    if not requests:
        raise TraceError(f"{path}: the trace has no requests")
    loaded = Loaded.from_requests(requests)
    if unknown:
        found = ", ".join(f"{key!r} ({n:,} line(s))" for key, n in sorted(unknown.items()))
        loaded.notes.append(f"key(s) not in the Mooncake format, ignored: {found}; its keys are "
                            f"{', '.join(sorted(MOONCAKE_KEYS))}")
    return loaded


def _conversation_lengths(item: object, where: str, chars_per_token: float) -> tuple[int, int] | None:
    """(input, output) tokens of a conversation's first human turn and the reply to it; None when
    it has no such pair. Given counts (`input_tokens`/`output_tokens`) win over the text estimate."""
    if not isinstance(item, dict):
        raise TraceError(f"{where}: expected a conversation object, got {json_kind(item)}")
    if "input_tokens" in item or "output_tokens" in item:
        return (token_count(item.get("input_tokens"), where, "input_tokens"),
                token_count(item.get("output_tokens"), where, "output_tokens"))
    turns = item.get("conversations", item.get("conversation"))
    if not isinstance(turns, list):
        record = next((k for k in ("input_toks", "input_length", "arrival_time_ns", "timestamp") if k in item), None)
        hint = (f" (it has {record!r}, a field of pdsim's and Mooncake's traces, which are JSONL: one object per "
                "line, not a JSON list)" if record else "")
        raise TraceError(f"{where}: field 'conversations': expected a list of turns, got {json_shown(turns)}{hint}")
    for k in range(len(turns) - 1):
        a, b = turns[k], turns[k + 1]
        if not (isinstance(a, dict) and isinstance(b, dict)):
            raise TraceError(f"{where}: conversations[{k}]: expected {{'from': ..., 'value': ...}}")
        if a.get("from") in ("human", "user") and b.get("from") in ("gpt", "assistant", "chatgpt"):
            pa, pb = a.get("value"), b.get("value")
            if not (isinstance(pa, str) and isinstance(pb, str)):
                raise TraceError(f"{where}: conversations[{k}]: field 'value': expected text")
            if not pa or not pb:  # an empty turn is no prompt or no reply
                return None
            lengths = max(1, round(len(pa) / chars_per_token)), max(1, round(len(pb) / chars_per_token))
            if max(lengths) > MAX_TOKENS:
                raise TraceError(f"{where}: conversations[{k}]: {max(lengths):.3g} tokens at {chars_per_token:g} "
                                 f"characters per token, more than {MAX_TOKENS:.0e}")
            return lengths
    return None


def read_sharegpt(path: Path, chars_per_token: float = CHARS_PER_TOKEN) -> Loaded:
    """ShareGPT-style JSON: one request per conversation (its first prompt and the reply, as `vllm
    bench serve --dataset-name sharegpt` samples them), lengths estimated as characters /
    chars_per_token. No times in the file: every request at t=0."""
    items = parse_json(path.read_bytes(), str(path), TraceError)  # a key given twice is refused, not the last kept
    if not isinstance(items, list):
        raise TraceError(f"{path}: expected a JSON list of conversations")
    requests, skipped = [], 0
    for i, item in enumerate(items):
        pair = _conversation_lengths(item, f"{path}: conversation {i}", chars_per_token)
        if pair is None:
            skipped += 1
            continue
        requests.append(TraceRequest(len(requests), pair[0], pair[1], 0))
    if not requests:
        raise TraceError(f"{path}: no conversation with a prompt and a reply")
    notes = ["no arrival times in the file: every request at t=0",
             f"lengths estimated at {chars_per_token:g} characters per token unless given"]
    if skipped:
        notes.append(f"{skipped} conversation(s) without a prompt and a reply left out")
    return Loaded.from_requests(requests, notes, has_times=False)


def read_vllm_bench(path: Path) -> Loaded:
    """`vllm bench serve --save-result --save-detailed`: lengths and, when saved, start times
    (read by pdsim.validate.vllm_bench, which also drops failed requests and notes how it placed
    arrivals that were not recorded)."""
    from pdsim.errors import PdsimError
    from pdsim.validate.vllm_bench import read_vllm_bench_json

    try:
        run = read_vllm_bench_json(path, parse_json(path.read_bytes(), str(path)))
    except PdsimError as e:
        raise TraceError(str(e)) from None
    df = run.requests
    if df.empty:
        raise TraceError(f"{path}: no successful request")
    arrival_ns = np.rint(df.arrival_s.to_numpy(dtype=float) * 1e9).astype(np.int64)
    notes = list(run.notes)
    if run.concurrency:
        notes.append(f"a closed-loop run (max_concurrency {run.concurrency}): its arrival times are when clients "
                     f"got free; replay it with --concurrency {run.concurrency}")
    return Loaded(arrival_ns, df.input_toks.to_numpy(dtype=np.int64), df.output_toks.to_numpy(dtype=np.int64),
                  notes)
