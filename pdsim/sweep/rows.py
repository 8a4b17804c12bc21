"""A run's row: its columns, and the CSV the rows stream to while a sweep or search runs, so a
killed command loses at most the runs in flight and `--resume` picks up the rest."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pdsim.errors import PdsimError
from pdsim.outputs import atomic_path, write_json_atomic
from pdsim.text import listed

# Per role (a colocated instance is both): the smallest KV capacity per GPU (GiB) of its instances and the
# largest share of its own KV cache any of them held at once; and the run's preemptions.
MEMORY_FIELDS = ("prefill_kv_capacity_gb", "prefill_peak_kv_frac", "decode_kv_capacity_gb", "decode_peak_kv_frac",
                 "preemptions")
ROW_FIELDS = [
    "label", "ratio", "num_prefill", "num_decode", "tp_prefill", "tp_decode", "pp_prefill", "pp_decode",
    "dp_decode", "ep_decode", "gpus",
    "rate_per_s", "duration_x", "rate_per_s_per_gpu", "requests", "finished", "unfinished", "rejected",
    "ttft_mode", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms",
    "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms", "throughput_req_s", "output_tok_s", "output_tok_s_per_gpu",
    "output_tok_s_per_user", "scored", "attain_ttft", "attain_tpot", "attain_both", "alone", "alone_missed",
    "offered_req_s", "served_req_s", "backlog_growth_requests", "stable", "unstable_reason", "last_finish_s",
    "estimated_profile",
    *MEMORY_FIELDS,
]
_INT_FIELDS = {"num_prefill", "num_decode", "tp_prefill", "tp_decode", "pp_prefill", "pp_decode", "dp_decode",
               "ep_decode", "gpus", "duration_x",
               "requests", "finished", "unfinished", "rejected", "scored", "alone", "alone_missed",
               "backlog_growth_requests", "stable", "estimated_profile", "preemptions"}
_STR_FIELDS = {"label", "ratio", "rate_per_s", "ttft_mode", "unstable_reason"}


# -- the streamed CSV -----------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def partial_path(path: Path) -> Path:
    """Where rows stream while a command runs (runs.partial.csv); moved to `path` when it succeeds,
    so an earlier run's complete CSV is replaced only by a complete one."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def settings_path(path: Path) -> Path:
    """Beside runs.csv / probes.csv: the settings its rows were made with (runs.settings.json)."""
    return path.with_name(f"{path.stem}.settings.json")


def _shown(value: Any) -> str:
    """A setting as the message shows it: derived floats (min_duration_s) to 6 significant digits."""
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


def _check_same_settings(sidecar: Path, settings: dict[str, Any], source: Path) -> None:
    """Rows made under other settings (SLOs, seed, dataset, base config, ...) must not be mixed with new ones."""
    if not sidecar.is_file():
        return  # rows from before the settings were recorded: nothing to compare
    try:
        old = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        raise PdsimError(f"--resume: {sidecar} is not readable JSON; use another --out or drop --resume") from None
    if not isinstance(old, dict):
        raise PdsimError(f"--resume: {sidecar}: expected the JSON object of settings pdsim writes, got "
                         f"{type(old).__name__}; use another --out or drop --resume")
    changed = [f"{k} {_shown(old.get(k))} -> {_shown(settings.get(k))}" for k in sorted(set(old) | set(settings))
               if old.get(k) != settings.get(k)]
    if changed:
        raise PdsimError(f"--resume: the rows in {source} were made with other settings ({'; '.join(changed)}); "
                         "use another --out or drop --resume")


NOTES_KEY = "notes"  # a fresh row's notes (profile tables left, the run's own), said by the command, not a CSV column


class RowWriter:
    """Appends rows to <path>.partial as they arrive, flushed each time, so a killed run loses at most
    the runs in flight. With resume, the rows already in the partial file (else in `path`, a
    finished run) are kept and their keys skipped. The caller moves the partial file into place."""

    def __init__(self, path: Path, fields: list[str], resume: bool, settings: dict[str, Any] | None = None) -> None:
        self.path, self.fields = path, fields
        self.partial = partial_path(path)
        self.rows: dict[tuple[str, ...], dict[str, Any]] = {}
        self.notes: set[str] = set()  # what the runs said besides their rows (NOTES_KEY), once each
        path.parent.mkdir(parents=True, exist_ok=True)
        source = self.partial if self.partial.exists() else path
        if resume and source.exists() and source.stat().st_size > 0:
            _check_same_settings(settings_path(path), settings or {}, source)
            try:
                text = source.read_text()
            except UnicodeDecodeError as e:
                raise PdsimError(f"--resume: {source} is not UTF-8 text ({e.reason} at byte {e.start}); this command "
                                 "did not write it: use another --out or drop --resume") from None
            # Every row is written whole with its line end, so a last line without one was cut mid-write
            # (after a comma, or mid-number: a value that would read as another): that run is done again.
            text = text[:text.rfind("\n") + 1]
            with io.StringIO(text, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != fields:
                    raise PdsimError(f"--resume: {source} has other columns than this command writes "
                                     f"({_column_change(reader.fieldnames or [], fields)}; an older pdsim's "
                                     "file?); use another --out or drop --resume")
                for row in reader:
                    if None in row.values() or None in row:  # a short line: not one of pdsim's rows
                        continue
                    self.rows[self.key(row)] = _resumed_row(row, f"{source}:{reader.line_num}")
        # Rewritten whole (header plus the rows kept) and swapped in at once, so a torn last line
        # never merges with a new one and a crash here loses none of the kept rows.
        _rewrite(self.partial, fields, ([_fmt(row[f]) for f in fields] for row in self.rows.values()))
        if settings is not None:  # what made these rows, for a later --resume to compare with
            write_json_atomic(settings_path(path), settings)
        self.file = self.partial.open("a", newline="")
        self.writer = csv.writer(self.file)

    def key(self, row: dict[str, Any]) -> tuple[str, ...]:
        return row["label"], str(row["rate_per_s"]), str(row["duration_x"])

    def add(self, row: dict[str, Any]) -> None:
        self.notes.update(row.pop(NOTES_KEY, ()))
        self.rows[self.key(row)] = row
        self.writer.writerow([_fmt(row[f]) for f in self.fields])
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def keep_only(self, keys: set[tuple[str, ...]]) -> None:
        """Rewrite the closed partial file with the rows of `keys` alone (a --resume of a smaller grid found others
        from an earlier command, which the same command run fresh would not write)."""
        dropped = [key for key in self.rows if key not in keys]
        if dropped:
            for key in dropped:
                del self.rows[key]
            _rewrite(self.partial, self.fields, ([_fmt(row[f]) for f in self.fields] for row in self.rows.values()))


def sort_rows(path: Path, labels: list[str]) -> None:
    """Rewrite a streamed rows CSV in a fixed order, configurations as expanded, rates ascending, a lengthened
    run after its first: rows stream in as parallel runs end, an order that differs from one command to the
    next, and a run is to give the same files each time."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    at_label, at_rate, at_x = (header.index(k) for k in ("label", "rate_per_s", "duration_x"))
    rank = {label: i for i, label in enumerate(labels)}
    rows.sort(key=lambda r: (rank.get(r[at_label], len(rank)), r[at_label], float(r[at_rate]), float(r[at_x])))
    _rewrite(path, header, rows)


def _rewrite(path: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    """A rows CSV written whole and swapped in at once (atomic_path)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


_NOT_WRITTEN_HERE = "this command did not write it: use another --out or drop --resume"


def _resumed_row(row: dict[str, str], where: str) -> dict[str, Any]:
    """A kept row, or PdsimError naming its line and cell: a row this command did not write (edited, or
    another tool's) would be skipped as done, or crash the summary."""
    parsed = parse_row(row, where)
    try:  # kept as its text (the key a rerun must match), but it must be a rate
        rate = float(row.get("rate_per_s") or "nan")
    except ValueError:
        rate = math.nan
    if not parsed.get("label") or not (math.isfinite(rate) and rate > 0):
        raise PdsimError(f"--resume: {where}: expected a label and a rate_per_s > 0, got {row.get('label')!r} and "
                         f"{row.get('rate_per_s')!r}; {_NOT_WRITTEN_HERE}")
    from pdsim.sweep.runner import rate_key

    if row.get("rate_per_s") != rate_key(rate):  # the key a rerun matches: 32.480 would run 32.48 again
        raise PdsimError(f"--resume: {where}: rate_per_s written {row.get('rate_per_s')!r}, where pdsim writes "
                         f"{rate_key(rate)!r}; {_NOT_WRITTEN_HERE}")
    for k, v in parsed.items():
        if k in _STR_FIELDS or k == "backlog_growth_requests" or (isinstance(v, float) and math.isnan(v)):
            continue  # backlog_growth_requests may be negative; an empty cell is a figure a run did not have
        share = k.startswith("attain_") or k.endswith("_frac") or k in ("stable", "estimated_profile")
        if not (0 <= v <= (1 if share else math.inf) and v < math.inf):
            expected = "a number from 0 to 1" if share else "a finite number >= 0"
            raise PdsimError(f"--resume: {where}: column {k!r}: expected {expected}, got {row[k]!r}; "
                             f"{_NOT_WRITTEN_HERE}")
    nested = [parsed.get(k, 0) for k in ("alone_missed", "alone", "scored", "requests")]
    if nested != sorted(nested):
        got = ", ".join(repr(row.get(k)) for k in ("alone_missed", "alone", "scored", "requests"))
        raise PdsimError(f"--resume: {where}: expected alone_missed <= alone <= scored <= requests, got {got}; "
                         f"{_NOT_WRITTEN_HERE}")
    counts = [parsed.get(k, 0) for k in ("finished", "unfinished", "rejected")]
    if sum(counts) != parsed.get("requests", 0):  # the search's low-load rule reads them (search.lone_requests_miss)
        raise PdsimError(f"--resume: {where}: expected finished + unfinished + rejected = requests, got "
                         f"{' + '.join(map(str, counts))} and {parsed.get('requests', 0)}; {_NOT_WRITTEN_HERE}")
    return parsed


def _column_change(found: list[str], written: list[str]) -> str:
    """What differs between a CSV's header and the columns this command writes, in a few words."""
    missing = [f for f in written if f not in found]
    extra = [f for f in found if f not in written]
    parts = ([f"it lacks {listed(missing)}"] if missing else []) + ([f"it has {listed(extra)}"] if extra else [])
    return "; ".join(parts) or "the same columns in another order"


def parse_row(row: dict[str, str], where: str = "") -> dict[str, Any]:
    """A CSV row back into typed values; floats go through the same text as fresh rows do. A cell that is no
    number (a row read back from `where` that this command did not write) is a PdsimError naming it."""
    out: dict[str, Any] = {}
    for k, text in row.items():
        try:
            if k in _STR_FIELDS:
                out[k] = text
            elif k in _INT_FIELDS:
                out[k] = int(text)
            else:
                out[k] = float(text) if text != "" else math.nan
        except ValueError:
            kind = "a whole number" if k in _INT_FIELDS else "a number"
            raise PdsimError(f"--resume: {where}: column {k!r}: expected {kind}, got {text!r}; "
                             f"{_NOT_WRITTEN_HERE}") from None
    return out


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    """A fresh row rounded as the CSV stores it, so resumed and fresh rows compare equal."""
    return parse_row({k: _fmt(v) for k, v in row.items()})
