"""One way in for every request trace: `load_dataset()` detects (or is told) the format, reads
it, then keeps a time window, rescales time and caps the number of requests.

A format is named `NAME[:key=value,...]`, e.g. `burstgpt:model=ChatGPT,log=Conversation log` or
`sharegpt:chars_per_token=3.6`; see FORMATS and docs/workloads.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from pdsim.cli_checks import split_items
from pdsim.errors import COMPRESSED_SUFFIXES, TraceError, decode_text
from pdsim.workload import formats
from pdsim.workload.trace import MAX_ARRIVAL_NS, TraceRequest, read_trace

FORMATS = ("pdsim", "azure", "mooncake", "burstgpt", "sharegpt", "lengths-csv", "vllm-bench")
_PARAMS = {"burstgpt": ("model", "log"), "sharegpt": ("chars_per_token",)}


@dataclass
class Dataset:
    """Requests sorted by arrival (ns from the window's start, scaled), plus how they were read."""

    requests: list[TraceRequest]
    fmt: str
    notes: list[str] = field(default_factory=list)
    has_times: bool = True


@dataclass(frozen=True)
class Window:
    """Seconds from the trace's first request: keep start_s <= t < end_s (end_s None: to the end)."""

    start_s: float = 0.0
    end_s: float | None = None


def parse_window(text: str | None) -> Window | None:
    """`START:END` in seconds from the first request; either side may be empty (`:600`, `1800:`)."""
    if text is None or not text.strip():
        return None
    start, sep, end = text.partition(":")
    try:
        w = Window(float(start) if start.strip() else 0.0, float(end) if end.strip() else None)
    except ValueError:
        w = None
    if not sep or w is None or not (0 <= w.start_s < math.inf) or (w.end_s is not None and not w.end_s > w.start_s):
        raise TraceError(f"--window: expected START_S:END_S with 0 <= START_S < END_S (either may be empty), "
                         f"got {text!r}")
    return w


def parse_format(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.strip().partition(":")
    if name not in FORMATS:
        raise TraceError(f"--dataset-format: unknown format {name!r}; expected one of {', '.join(FORMATS)}")
    params: dict[str, str] = {}
    for part in split_items(rest, "--dataset-format"):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in _PARAMS.get(name, ()):
            allowed = ", ".join(f"{k}=..." for k in _PARAMS.get(name, ())) or "none"
            raise TraceError(f"--dataset-format: {name} takes options {allowed}; got {part.strip()!r}")
        if key in params:  # one filter each: a second would silently replace the first
            raise TraceError(f"--dataset-format: {key}= given twice ({params[key]!r} and {value.strip()!r}); "
                             "give it once")
        params[key] = value.strip()
    return name, params


CSV_FORMATS = ("azure", "burstgpt", "lengths-csv")


def _whole_characters(head: bytes) -> bytes:
    """A file's head without a UTF-8 character the read may have cut at its end (and perhaps the whole one
    before it: the head is only looked at)."""
    end = len(head)
    while end > 0 and len(head) - end < 3 and head[end - 1] & 0xC0 == 0x80:  # continuation bytes
        end -= 1
    return head[:end - 1] if end > 0 and head[end - 1] >= 0xC0 else head[:end]


def detect_format(path: Path) -> str:
    """The format, from the file's first line (and, for one JSON document, its keys)."""
    try:
        with path.open("rb") as f:
            head = f.read(65536)
    except FileNotFoundError:
        raise TraceError(f"{path}: trace file not found") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read trace ({e.strerror})") from None
    if path.suffix.lower() in COMPRESSED_SUFFIXES:  # pandas reads these CSVs; their bytes tell no format
        raise TraceError(f"{path}: a compressed file's format is not told from its bytes; give --dataset-format "
                         f"(the CSV formats, {', '.join(CSV_FORMATS)}, read it compressed)")
    # Not UTF-8 (UTF-16, a binary file): said as the config reader says it, not shown as mojibake.
    text = decode_text(_whole_characters(head), str(path), TraceError).lstrip("\ufeff \t\r\n")
    if not text.strip():
        raise TraceError(f"{path}: the trace has no requests (the file is empty)")
    first = text.split("\n", 1)[0].strip()
    if text.startswith("["):
        return "sharegpt"
    if text.startswith("{"):
        try:
            obj = json.loads(first)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            obj = None  # one JSON document over many lines (vllm bench's saved result)
        if isinstance(obj, dict):
            if "input_toks" in obj:
                return "pdsim"
            if "input_length" in obj or "hash_ids" in obj:
                return "mooncake"
            if "input_lens" in obj or "ttfts" in obj:
                return "vllm-bench"
        if obj is None and any(k in text for k in ('"input_lens"', '"ttfts"')):
            return "vllm-bench"
        if obj is None:  # a first line longer than the head (token ids), or one the reader will refuse: its keys
            if '"input_toks"' in first or '"input_tok_ids"' in first:  # the ids may come first and fill the head
                return "pdsim"
            if '"input_length"' in first or '"hash_ids"' in first:
                return "mooncake"
    header = {c.strip().strip('"') for c in first.split(",")}  # a CSV writer may quote every name
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= header:
        return "azure"
    if {"Timestamp", "Request tokens", "Response tokens"} <= header:
        return "burstgpt"
    if {"num_prefill_tokens", "num_decode_tokens"} <= header:
        return "lengths-csv"
    if {"input_toks", "output_toks"} <= header:
        raise TraceError(f"{path}: a CSV of pdsim's trace columns; pdsim reads them as JSONL, one object per line "
                         "(input_toks, output_toks, arrival_time_ns), e.g. pandas' df.to_json(path, orient='records', "
                         "lines=True); CSVs it reads: " + ", ".join(CSV_FORMATS))
    if text.startswith("{") and ('"nodes"' in text or '"num_nodes"' in text):
        raise TraceError(f"{path}: a cluster config (num_nodes, nodes), not a trace: give it as --cluster-config, and "
                         "as --dataset a trace (JSONL of input_toks, output_toks, arrival_time_ns, or a public one)")
    hint = ""
    if text.startswith("{") and isinstance(obj, dict):  # a pdsim trace with a misspelt key ("input_tokens")
        from pdsim.text import did_you_mean
        from pdsim.workload.trace import TRACE_KEYS

        keys = sorted(TRACE_KEYS)
        hint = next((f"; {key!r}{did_you_mean(key, keys)}" for key in obj
                     if key not in keys and did_you_mean(key, keys)), "")
    raise TraceError(f"{path}:1: cannot tell the trace's format from {first[:80]!r}{hint}; give --dataset-format, "
                     f"one of {', '.join(FORMATS)} (docs/workloads.md)")


def _format_told(path: Path) -> str | None:
    """The format the file's bytes tell, None where they tell none."""
    try:
        return detect_format(path)
    except TraceError:
        return None


def _read(path: Path, name: str, params: dict[str, str]) -> formats.Loaded:
    if name not in CSV_FORMATS and path.suffix.lower() in COMPRESSED_SUFFIXES:
        raise TraceError(f"{path}: a {name} trace is read uncompressed (only the CSV formats, "
                         f"{', '.join(CSV_FORMATS)}, are read compressed): decompress it first")
    if name == "pdsim":
        return formats.Loaded.from_requests(*read_trace(path))
    if not path.is_file():
        raise TraceError(f"{path}: trace file not found")
    if name == "sharegpt":
        cpt = params.get("chars_per_token", str(formats.CHARS_PER_TOKEN))
        try:
            chars = float(cpt)
        except ValueError:
            chars = math.nan
        if not (0.1 <= chars <= 100):  # English text runs 3-5 characters per token
            raise TraceError(f"--dataset-format: sharegpt chars_per_token: expected a number from 0.1 to 100, "
                             f"got {cpt!r}")
        return formats.read_sharegpt(path, chars)
    if name == "burstgpt":
        return formats.read_burstgpt(path, params.get("model"), params.get("log"))
    readers: dict[str, Callable[[Path], formats.Loaded]] = {
        "azure": formats.read_azure, "mooncake": formats.read_mooncake,
        "lengths-csv": formats.read_lengths_csv, "vllm-bench": formats.read_vllm_bench,
    }
    return readers[name](path)


def read_dataset(path: str | Path, fmt: str | None = None, window: Window | None = None, time_scale: float = 1.0,
                 max_requests: int | None = None, rate_per_s: float | None = None) -> Dataset:
    """Read a trace; times start at the first request (or the window's start), multiplied by
    time_scale (2: half the rate), or stretched so that the mean rate ((n - 1) / span, as `workload
    stats` gives it) is rate_per_s; with max_requests, the earliest that many are kept."""
    path = Path(path)
    if not (0 < time_scale < math.inf):
        raise TraceError(f"--time-scale: expected a number > 0, got {time_scale}")
    if rate_per_s is not None and not (0 < rate_per_s < math.inf):
        raise TraceError(f"--rate: expected a rate > 0 (requests/s), got {rate_per_s}")
    if max_requests is not None and max_requests < 1:
        raise TraceError(f"--num-requests: expected a positive integer, got {max_requests}")
    name, params = parse_format(fmt) if fmt else (detect_format(path), {})
    try:
        loaded = _read(path, name, params)
    except TraceError as e:
        if fmt and (other := _format_told(path)) not in (None, name):
            raise TraceError(f"{e} (--dataset-format {name} was given, but the file reads as the {other} format: "
                             f"give --dataset-format {other}, or leave it out)") from None
        raise
    if len(loaded.arrival_ns) == 0:
        raise TraceError(f"{path}: no request left ({'; '.join(loaded.notes)})")
    order = np.argsort(loaded.arrival_ns, kind="stable")  # ties keep file order
    times = loaded.arrival_ns[order]
    origin_ns = int(times[0])
    notes = list(loaded.notes)
    if window is not None:
        lo = origin_ns + _window_ns(window.start_s)
        keep = times >= lo
        if window.end_s is not None:
            keep &= times < origin_ns + _window_ns(window.end_s)
        order, times, origin_ns = order[keep], times[keep], lo
        if not len(order):
            raise TraceError(f"{path}: no request in the window {window.start_s:g}-{window.end_s or 'end'} s")
        notes.append(f"window {window.start_s:g} to {'the end' if window.end_s is None else f'{window.end_s:g} s'}")
    if max_requests is not None:
        order, times = order[:max_requests], times[:max_requests]
    times = times - origin_ns
    if rate_per_s is not None:
        span_ns = times[-1] - times[0]  # from the first kept arrival, which a window need not start with
        if not loaded.has_times:
            raise TraceError(f"--rate: {path} has no arrival times, so it has no rate to rescale; give arrivals a "
                             "rate with `pdsim workload generate --lengths-from` (docs/workloads.md)")
        if len(times) < 2 or span_ns <= 0:
            kept = "" if len(times) == len(loaded.arrival_ns) else " (those --window / --num-requests kept)"
            raise TraceError(f"--rate: the {len(times)} request(s) of {path}{kept} arrive at one instant, so they "
                             "have no rate to rescale")
        time_scale = (len(times) - 1) / (span_ns / 1e9) / rate_per_s
    if time_scale != 1.0:
        with np.errstate(over="ignore"):  # an overflow is inf, refused just below
            scaled = np.rint(times * time_scale)
        if scaled[-1] > MAX_ARRIVAL_NS:  # times are sorted
            given = f"--time-scale {time_scale:g}" if rate_per_s is None else f"--rate {rate_per_s:g}"
            raise TraceError(f"{given}: the last arrival would be {scaled[-1] / 1e9:.3g} s after the first, past the "
                             f"{MAX_ARRIVAL_NS / 1e9:.0e} s a run's clock holds")
        times = scaled.astype(np.int64)
        notes.append(f"times x{time_scale:g}" + (f" (--rate {rate_per_s:g} req/s)" if rate_per_s is not None else ""))
    return Dataset(_requests(loaded, order, times), name, notes, loaded.has_times)


def _window_ns(bound_s: float) -> int:
    """A window bound in ns from the first arrival; one past the clock's range (1e300 s) is held just past
    it, where it keeps nothing or everything, as in seconds, instead of overflowing int64."""
    return round(min(bound_s * 1e9, MAX_ARRIVAL_NS + 1))


def _requests(loaded: formats.Loaded, order: np.ndarray, times_ns: np.ndarray) -> list[TraceRequest]:
    """TraceRequests for the kept rows (request_id: the row's place among the file's requests)."""
    inputs = loaded.input_toks[order].tolist()
    outputs = loaded.output_toks[order].tolist()
    rids = (loaded.request_ids[order] if loaded.request_ids is not None else order).tolist()
    if loaded.hash_ids is None:
        return [TraceRequest(r, a, b, t) for r, a, b, t in zip(rids, inputs, outputs, times_ns.tolist())]
    ids, blocks = loaded.hash_ids, loaded.hash_block_tokens or []
    return [TraceRequest(r, a, b, t, ids[i], blocks[i])
            for i, r, a, b, t in zip(order.tolist(), rids, inputs, outputs, times_ns.tolist())]


def load_dataset(path: str | Path, fmt: str | None = None, window: str | Window | None = None,
                 time_scale: float = 1.0, max_requests: int | None = None,
                 report: Callable[[str], None] | None = None, rate_per_s: float | None = None) -> list[TraceRequest]:
    """The requests of any supported trace, for `run`, `sweep`, `search` (see read_dataset). What
    the reader left out or assumed (failed rows, missing times) goes to `report`, by default
    stderr: every request of the file is accounted for."""
    if isinstance(window, str):
        window = parse_window(window)
    data = read_dataset(path, fmt, window, time_scale, max_requests, rate_per_s)
    say = report or (lambda text: click.echo(text, err=True))
    for note in data.notes:
        say(f"note: {path} ({data.fmt}): {note}")
    return data.requests


def dataset_options(f: Callable, format_names: tuple[str, ...] = ("--dataset-format",),
                    rescales_itself: bool = False) -> Callable:
    """--dataset-format, --window and --time-scale, for every command that reads a --dataset.
    rescales_itself: the command sets the rate itself (sweep, search), so --time-scale is refused there (it stays
    an option, so that the refusal can say why)."""
    time_scale_help = ("Not used here: each rate rescales the trace's arrivals (refused when given)." if rescales_itself
                       else "Multiply arrival times by this (2 halves the rate, 0.5 doubles it), after --window "
                            "has cut the trace.")
    options = [
        click.option(*format_names, "dataset_format", default=None, metavar="NAME[:KEY=VALUE,...]",
                     help=f"Trace format: {', '.join(FORMATS)}; burstgpt takes model=...,log=... filters "
                          "(e.g. 'burstgpt:model=ChatGPT,log=Conversation log'), sharegpt chars_per_token=N.  "
                          "[default: detected from the file]"),
        click.option("--window", default=None, metavar="START_S:END_S",
                     help="Keep requests arriving START_S:END_S seconds after the trace's first one "
                          "(e.g. 600:1200, or :300), in the trace's own seconds (the window is cut before "
                          "--time-scale); kept times then count from START_S.  [default: all]"),
        click.option("--time-scale", type=float, default=1.0, show_default=not rescales_itself, help=time_scale_help),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f
