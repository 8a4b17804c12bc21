"""Closed-loop tables (`isl, osl, concurrency, tp, mean TTFT, mean TPOT` per row), as in aiconfigurator's
silicon CSVs: read and named here, simulated row by row in closed_loop.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pdsim.errors import PdsimError, csv_error_detail, csv_row_lines

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
