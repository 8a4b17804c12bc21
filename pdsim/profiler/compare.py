"""Compare two profiles of the same model point by point (run-to-run stability).

For every grid point both profiles have, the relative difference |a - b| / mean(a, b); per
table its median and maximum, next to the spread each run recorded (`timings.csv`,
(p90 - p10) / median of the repeats at a point) so one can tell whether two runs differ more
than the repeats within a run do.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from pdsim.errors import PdsimError, decode_text
from pdsim.profiler.timing import TIMINGS_FILE

TABLES = ("dense", "per_sequence", "attention_prefill", "attention_decode")


@dataclass(frozen=True)
class TableDiff:
    table: str
    points: int
    median_diff_rel: float
    p90_diff_rel: float
    max_diff_rel: float
    max_at: str
    median_spread_rel: float  # median over both runs' points of the recorded spread


def _load(profile_dir: Path) -> dict[tuple[str, str, str, str], tuple[float, float]]:
    """(table, op, x, y) -> (median us, relative spread) of a profile's timings.csv; a bad cell names its line."""
    path = Path(profile_dir) / TIMINGS_FILE
    rows: dict[tuple[str, str, str, str], tuple[float, float]] = {}
    if not path.is_file():
        raise PdsimError(f"{profile_dir}: no timings.csv (only profiles written by `pdsim profile` have one)")
    try:
        f = path.open(newline="")
    except OSError as e:
        raise PdsimError(f"{path}: cannot read ({e.strerror})") from None
    try:
        reader = csv.DictReader(f)
        for r in reader:
            line = reader.line_num  # the file's own line, blank lines counted
            missing = [c for c in _COLUMNS if r.get(c) is None]
            if missing:
                raise PdsimError(f"{path}:{line}: missing column(s) {', '.join(missing)}; expected "
                                 f"{', '.join(_COLUMNS)}")
            try:
                median, spread = float(r["median_us"]), float(r["spread_rel"])
            except ValueError:
                median = spread = math.nan
            if not (0 < median < math.inf and 0 <= spread < math.inf):
                raise PdsimError(f"{path}:{line}: median_us {r['median_us']!r} and spread_rel {r['spread_rel']!r}: "
                                 "expected a time > 0 and a spread >= 0")
            rows[(r["table"], r["op"], r["x"], r["y"])] = (median, spread)
    except UnicodeDecodeError as e:
        decode_text(path.read_bytes(), str(path))  # names the line
        raise PdsimError(f"{path}: not valid UTF-8 ({e.reason})") from None
    finally:
        f.close()
    if not rows:
        raise PdsimError(f"{path}: no timing rows")
    return rows


_COLUMNS = ("table", "op", "x", "y", "median_us", "spread_rel")


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def compare_profiles(a: Path, b: Path) -> list[TableDiff]:
    ra, rb = _load(Path(a)), _load(Path(b))
    diffs: list[TableDiff] = []
    for table in TABLES:
        keys = [k for k in ra if k[0] == table and k in rb]
        if not keys:
            continue
        rel = {k: abs(ra[k][0] - rb[k][0]) / ((ra[k][0] + rb[k][0]) / 2 or 1.0) for k in keys}
        worst = max(rel, key=rel.__getitem__)
        spreads = [ra[k][1] for k in keys] + [rb[k][1] for k in keys]
        diffs.append(
            TableDiff(
                table=table,
                points=len(keys),
                median_diff_rel=_quantile(list(rel.values()), 0.5),
                p90_diff_rel=_quantile(list(rel.values()), 0.9),
                max_diff_rel=rel[worst],
                max_at=" ".join(x for x in worst[1:] if x),
                median_spread_rel=_quantile(spreads, 0.5),
            )
        )
    return diffs


def format_diffs(diffs: list[TableDiff]) -> str:
    lines = [
        f"{'table':<18} {'points':>6} {'median diff':>12} {'p90 diff':>9} {'max diff':>9} "
        f"{'median spread':>14}  max at"
    ]
    for d in diffs:
        lines.append(
            f"{d.table:<18} {d.points:6d} {d.median_diff_rel:12.1%} {d.p90_diff_rel:9.1%} "
            f"{d.max_diff_rel:9.1%} {d.median_spread_rel:14.1%}  {d.max_at}"
        )
    return "\n".join(lines)
