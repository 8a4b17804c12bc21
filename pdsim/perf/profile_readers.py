"""Reading profiles from disk, strictly: the pdsim format (meta.json and CSV tables) and
LLMServingSim's (meta.yaml and tpN/ folders).

Every problem is a `ProfileError` naming the file, the row or column and what was expected,
because a silently misread profile skews every number a simulation reports.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pdsim.errors import ProfileError, decode_text, optional_object, read_json_object
from pdsim.models import DTYPE_BYTES
from pdsim.moe import MOE_KEYS
from pdsim.perf.interp import Table1D, Table2D, TableND
from pdsim.perf.moe_time import MoELayoutTable, MoETable
from pdsim.perf.profile_format import (
    DECODE_SKEW_COLUMNS,
    DECODE_SKEW_FILE,
    DENSE_OPS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MLP_OPS,
    OPTIONAL_DENSE_OPS,
    PER_SEQUENCE_OPS,
    Profile,
    ProfileMeta,
)

# ---------------------------------------------------------------- CSV reading


# No kernel or layer takes 1,000 s: a time above it is a unit mistake or a corrupt cell (and would make
# a run of days of simulated steps).
MAX_OP_US = 1e9

# Parsed tables by path, columns and the file's bytes. A sweep builds every instance of every run from
# the same few files, and parsing them costs more than many a short run; reading the bytes does not.
# Keyed on the content, not the file's stat: a same-size rewrite within one clock tick keeps its stat.
# Rows are tuples, so handing out a copy of the list is safe. Emptied past 16 MiB of source (an
# LLMServingSim profile is about 2 MiB, and its rows take a few times that).
_PARSED: dict[tuple, list[tuple]] = {}
_PARSED_MAX_BYTES = 16 << 20


def _read_csv(path: Path, columns: Sequence[str], numeric: Sequence[str]) -> list[tuple]:
    """Rows of `path` as tuples in `columns` order; the `numeric` columns as floats.

    Row numbers in errors are file line numbers (the header is line 1).
    """
    if not path.is_file():
        raise ProfileError(f"{path}: missing profile file (expected columns {','.join(columns)})")
    data = path.read_bytes()
    key = (str(path), tuple(columns), tuple(numeric), data)
    rows = _PARSED.get(key)
    if rows is None:
        rows = _parse_csv(path, data, columns, numeric)
        if sum(len(k[-1]) for k in _PARSED) + len(data) > _PARSED_MAX_BYTES:
            _PARSED.clear()
        _PARSED[key] = rows
    return list(rows)


def _parse_csv(path: Path, data: bytes, columns: Sequence[str], numeric: Sequence[str]) -> list[tuple]:
    # Decoded up front: a UTF-16 or Latin-1 file is a clear error, not a decode failure mid-table.
    text = decode_text(data, str(path), ProfileError)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise ProfileError(f"{path}: empty file; expected a header {','.join(columns)}")
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ProfileError(
            f"{path}: line 1: missing column(s) {', '.join(missing)}; expected {','.join(columns)}, "
            f"found {','.join(header)}"
        )
    idx = [header.index(c) for c in columns]
    num = set(numeric)
    rows = []
    for line_no, raw in enumerate(reader, start=2):
        if not raw or all(not c.strip() for c in raw):
            continue
        # More fields than the header (a trailing comma aside) shift nothing here but mean the row is not
        # what it says: a thousands separator (2048,1,234.5) would read as 1 us.
        if len(raw) < len(header) or any(c.strip() for c in raw[len(header):]):
            raise ProfileError(
                f"{path}: line {line_no}: {len(raw)} fields, expected {len(header)} ({','.join(header)})"
            )
        row = []
        for c, i in zip(columns, idx, strict=True):
            cell = raw[i].strip()
            if c in num:
                try:
                    value = float(cell)
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise ProfileError(
                        f"{path}: line {line_no}, column {c!r}: expected a number, got {cell!r}"
                    )
                if c == "time_us" and value > MAX_OP_US:
                    raise ProfileError(f"{path}: line {line_no}, column 'time_us': {cell} us is over "
                                       f"{MAX_OP_US / 1e6:g} s for one op; expected microseconds")
                if value < 0:
                    raise ProfileError(
                        f"{path}: line {line_no}, column {c!r}: expected a value >= 0, got {cell!r}"
                    )
                row.append(value)
            else:
                row.append(cell)
        rows.append(tuple(row))
    if not rows:
        raise ProfileError(f"{path}: no data rows")
    if "time_us" in num and not any(row[columns.index("time_us")] for row in rows):
        # A table of zeros would run every step it prices in no time, without a word.
        raise ProfileError(f"{path}: every time_us is 0; expected measured times in microseconds")
    return rows


def _tables_by_op(
    path: Path,
    rows: Iterable[tuple[str, float, float]],
    known: Sequence[str],
    required: Iterable[str],
    axis: str,
) -> dict[str, Table1D]:
    by_op: dict[str, dict[float, float]] = {}
    for op, x, us in rows:
        if op not in known:
            raise ProfileError(f"{path}: unknown op {op!r}; known ops: {', '.join(known)}")
        points = by_op.setdefault(op, {})
        if x in points:
            raise ProfileError(f"{path}: op {op!r} has two rows for {axis}={x:g}")
        points[x] = us
    missing = [op for op in required if op not in by_op]
    if missing:
        raise ProfileError(f"{path}: missing op(s) {', '.join(missing)}")
    tables = {}
    for op, points in by_op.items():
        xs = sorted(points)
        tables[op] = Table1D(f"{path.name}:{op}", xs, [points[x] for x in xs], axis)
    return tables


def _full_grid(path: Path, rows: Sequence[tuple[float, float, float]], axes: tuple[str, str]) -> Table2D:
    xs = sorted({r[0] for r in rows})
    ys = sorted({r[1] for r in rows})
    xi = {x: i for i, x in enumerate(xs)}
    yi = {y: j for j, y in enumerate(ys)}
    values = np.full((len(xs), len(ys)), np.nan)
    for x, y, us in rows:
        if not math.isnan(values[xi[x], yi[y]]):
            raise ProfileError(f"{path}: two rows for {axes[0]}={x:g}, {axes[1]}={y:g}")
        values[xi[x], yi[y]] = us
    holes = np.argwhere(np.isnan(values))
    if len(holes):
        i, j = holes[0]
        raise ProfileError(
            f"{path}: not a full grid: no row for {axes[0]}={xs[i]:g}, {axes[1]}={ys[j]:g} "
            f"({len(holes)} of {values.size} grid points missing); every {axes[0]} value needs "
            f"every {axes[1]} value"
        )
    return Table2D(path.name, xs, ys, values, axes)


# ---------------------------------------------------------------- pdsim format


def _read_op_tables(
    folder: Path, op_column: str, mlp_optional: bool = False
) -> tuple[dict[str, Table1D], dict[str, Table1D]]:
    """dense.csv (by tokens) and per_sequence.csv (by sequences), one table per op; both formats
    share the layout and differ only in the name of the op column."""
    p = folder / "dense.csv"
    optional = OPTIONAL_DENSE_OPS | MLP_OPS if mlp_optional else OPTIONAL_DENSE_OPS
    dense = _tables_by_op(
        p,
        _read_csv(p, (op_column, "tokens", "time_us"), ("tokens", "time_us")),
        DENSE_OPS,
        [op for op in DENSE_OPS if op not in optional],
        "tokens",
    )
    p = folder / "per_sequence.csv"
    per_seq = _tables_by_op(
        p,
        _read_csv(p, (op_column, "sequences", "time_us"), ("sequences", "time_us")),
        PER_SEQUENCE_OPS,
        PER_SEQUENCE_OPS,
        "sequences",
    )
    return dense, per_seq


def _positive_int(value: object, key: str, meta_path: Path) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ProfileError(f"{meta_path}: field {key!r}: expected a positive integer, got {value!r}")
    return value


def _non_negative_bytes(value: object, meta_path: Path) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ProfileError(
            f"{meta_path}: field 'memory.activation_peak_bytes': expected a finite number of bytes >= 0, got {value!r}"
        )
    return value


def _read_pdsim(root: Path) -> Profile:
    meta_path = root / "meta.json"
    raw = read_json_object(meta_path, ProfileError)
    if raw.get("format", FORMAT_NAME) != FORMAT_NAME or raw.get("format_version", 1) != FORMAT_VERSION:
        raise ProfileError(
            f"{meta_path}: format {raw.get('format')!r} version {raw.get('format_version')!r}; "
            f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}"
        )

    def need(key: str, kind: type) -> object:
        if key not in raw:
            raise ProfileError(f"{meta_path}: missing field {key!r}")
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise ProfileError(f"{meta_path}: field {key!r}: expected {kind.__name__}, got {raw[key]!r}")
        return raw[key]

    source = need("source", str)
    if source not in ("measured", "estimated"):
        raise ProfileError(f"{meta_path}: field 'source': expected 'measured' or 'estimated', got {source!r}")
    dtype = need("dtype", str)
    if dtype not in DTYPE_BYTES:
        raise ProfileError(f"{meta_path}: field 'dtype': expected one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    tp = need("tp", int)
    memory = optional_object(raw, "memory", f"{meta_path}: field 'memory'", ProfileError)
    meta = ProfileMeta(
        hardware=need("hardware", str),
        model=need("model", str),
        dtype=dtype,
        tp=_positive_int(tp, "tp", meta_path),
        source=source,
        tool=str(raw.get("tool", "")),
        tool_version=str(raw.get("tool_version", "")),
        created_at=str(raw.get("created_at", "")),
        num_layers=_positive_int(raw.get("num_layers"), "num_layers", meta_path),
        device=optional_object(raw, "device", f"{meta_path}: field 'device'", ProfileError),
        activation_peak_bytes=_non_negative_bytes(memory.get("activation_peak_bytes"), meta_path),
        activation_tokens=_positive_int(memory.get("max_num_batched_tokens"), "memory.max_num_batched_tokens",
                                        meta_path),
        notes=str(raw.get("notes", "")),
        path=str(root),
        fmt="pdsim",
    )
    # pdsim's profiler times no dense MLP for a MoE model whose layers are all MoE, and records device.moe_experts
    # (the predictor checks that the model needs none)
    dense, per_seq = _read_op_tables(root, "op", mlp_optional="moe_experts" in meta.device)
    cols = ("chunk_tokens", "kv_prefix_tokens", "time_us")
    p = root / "attention_prefill.csv"
    prefill = _full_grid(p, _read_csv(p, cols, cols), cols[:2])
    cols = ("batch_size", "kv_tokens", "time_us")
    p = root / "attention_decode.csv"
    decode = _full_grid(p, _read_csv(p, cols, cols), cols[:2])
    allreduce = None
    p = root / "allreduce.csv"
    if p.is_file():
        rows = _read_csv(p, ("bytes", "time_us"), ("bytes", "time_us"))
        allreduce = _tables_by_op(p, [("allreduce", b, us) for b, us in rows], ["allreduce"], [], "bytes")[
            "allreduce"
        ]
    p = root / MoELayoutTable.FILE
    moe_layouts = MoELayoutTable.read(p) if p.is_file() else None
    p = root / DECODE_SKEW_FILE
    skew = _decode_skew_rows(p) if p.is_file() else None
    return Profile(meta, dense, per_seq, prefill, decode, None, allreduce, moe_layouts=moe_layouts,
                   decode_skew_rows=skew)


def _decode_skew_rows(path: Path) -> list[tuple[int, int, int, float]]:
    """The uneven decode batches the profiler timed: one request at kv_long beside batch_size - 1 at kv_short,
    so a batch of at least two, whole token counts and a short KV below the long one, each timed once."""
    rows, seen = [], set()
    for n, short, long, us in _read_csv(path, DECODE_SKEW_COLUMNS, DECODE_SKEW_COLUMNS):
        point = f"batch_size={n:g}, kv_short_tokens={short:g}, kv_long_tokens={long:g}"
        if not (n.is_integer() and short.is_integer() and long.is_integer()) or n < 2 or short >= long:
            raise ProfileError(f"{path}: row {point}: expected whole numbers, a batch_size of at least 2 (one long "
                               "request beside short ones) and kv_short_tokens below kv_long_tokens")
        if (key := (int(n), int(short), int(long))) in seen:
            raise ProfileError(f"{path}: two rows for {point}")
        seen.add(key)
        rows.append((*key, us))
    return rows


# ---------------------------------------------------------------- LLMServingSim format


def _read_simple_yaml(path: Path) -> dict[str, str]:
    """The `key: scalar` pairs of a YAML file: top-level ones by their key, those of a one-level
    block as `block.key` (deeper nesting and lists are skipped).

    LLMServingSim's meta.yaml is read for a handful of scalars only, which does not justify a PyYAML
    dependency.
    """
    found: dict[str, str] = {}
    block, child_indent = "", ""
    for line in decode_text(path.read_bytes(), str(path), ProfileError).splitlines():
        m = re.match(r"^(\s*)([A-Za-z_][\w-]*):\s*(.*?)\s*$", line)
        if not m:
            continue
        indent, key, value = m.groups()
        if not indent:
            block, child_indent = key, ""
        elif not child_indent:
            child_indent = indent  # the block's first key sets its level; deeper ones are skipped
        if (indent and indent != child_indent) or not value or value.startswith("#"):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[f"{block}.{key}" if indent else key] = value
    return found


def _read_llmservingsim(root: Path, tp_dir: Path, tp: int) -> Profile:
    meta_path = root / "meta.yaml"
    raw = _read_simple_yaml(meta_path)
    for key in ("model", "hardware"):
        if key not in raw:
            raise ProfileError(f"{meta_path}: missing top-level field {key!r}")
    variant = raw.get("variant", raw.get("dtype", "bf16"))
    # An fp8 variant is fp8 weights over bf16 activations (vLLM's fp8 checkpoints and --quantization fp8).
    quantization = ("fp8_block" if "block" in variant else "fp8") if variant.startswith("fp8") else None
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(variant, variant)
    if variant == "mxfp4" and raw.get("architecture") == "gpt_oss":
        # gpt-oss's checkpoint holds its experts in MXFP4 (pdsim/gpt_oss.py models them so) over bf16
        # activations and attention; vLLM runs them as they are, with no --quantization.
        dtype = "bfloat16"
    elif quantization:
        dtype = "bfloat16"
    elif dtype not in DTYPE_BYTES:
        field = "variant" if "variant" in raw else "dtype"
        raise ProfileError(f"{meta_path}: field {field!r}: expected bf16, fp16, fp32 or fp8 (an fp8 variant: fp8 "
                           f"weights over bf16 activations), mxfp4 on architecture gpt_oss, or one of "
                           f"{', '.join(DTYPE_BYTES)}, got {variant!r}")
    meta = ProfileMeta(
        hardware=raw["hardware"],
        model=raw["model"],
        dtype=dtype,
        tp=tp,
        source="measured",
        tool="LLMServingSim profiler",
        tool_version=raw.get("profiler_version", ""),
        created_at=raw.get("profiled_at", ""),
        num_layers=None,  # a one-layer copy was profiled; the count comes from the model
        device={k: raw[k] for k in ("gpu", "vllm_version", "cuda_version") if k in raw},
        activation_peak_bytes=None,
        notes="LLMServingSim layer-wise profile (vLLM enforce_eager); TP all-reduce not included",
        path=str(tp_dir),
        fmt="llmservingsim",
        quantization=quantization,
        engine_enforce_eager={"true": True, "false": False}.get(raw.get("engine_effective.enforce_eager", "").lower()),
        engine_kv_cache_dtype=raw.get("engine_effective.kv_cache_dtype") or None,
    )
    moe = MoETable.read(tp_dir / "moe.csv") if (tp_dir / "moe.csv").is_file() else None
    if moe is None and tp > 1 and (root / "tp1" / "moe.csv").is_file():
        # LLMServingSim writes moe.csv under tp1/ only. It times whole experts on one GPU, which is
        # what a TP rank holds under expert parallelism (pdsim/perf/moe_time.py uses it so).
        moe = MoETable.read(root / "tp1" / "moe.csv", measured_tp=1)
    # A MoE model's layers have no dense MLP to profile (the predictor checks the model needs none).
    mlp_optional = moe is not None or raw.get("architecture") in MOE_KEYS
    dense, per_seq = _read_op_tables(tp_dir, "layer", mlp_optional=mlp_optional)
    p = tp_dir / "attention.csv"
    cols = ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us")
    arr = np.array(_read_csv(p, cols, cols), dtype=np.float64)
    try:
        grid = TableND(p.name, arr[:, :4], arr[:, 4], cols[:4])
    except ValueError as e:
        raise ProfileError(f"{p}: {e}") from None
    return Profile(meta, dense, per_seq, None, None, grid, None, moe)
