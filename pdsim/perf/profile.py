"""Latency profiles on disk: the pdsim format (see profiles/README.md) and LLMServingSim's.

The way in: `read_profile`, `find_profile` (the profile of an instance), `write_profile`. A
`Profile` holds the lookup tables of one (hardware, model, dtype, tp) (`profile_format.py`); the
readers are strict (`profile_readers.py`); how the tables compose into a step time is
`pdsim/perf/predictor.py`'s business. The format's names are re-exported here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pdsim.errors import PdsimError, PrecisionMismatch, ProfileError
from pdsim.outputs import check_output_dir, staged_folder, write_json_atomic, write_text_atomic
from pdsim.perf.moe_time import MoELayoutTable
from pdsim.perf.profile_format import (  # noqa: F401 - the format's names are used from here
    DECODE_SKEW_COLUMNS,
    DECODE_SKEW_FILE,
    DENSE_OPS,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMPORT_TOOL_PREFIX,
    LAYER_OVERHEAD_DECODE_KV,
    MLP_OPS,
    OPTIONAL_DENSE_OPS,
    PER_LAYER_OPS,
    PER_SEQUENCE_OPS,
    PER_STEP_OPS,
    PROFILES_ROOT,
    Profile,
    ProfileMeta,
    layer_ops_us,
    layer_overhead_is_decode,
)
from pdsim.perf.profile_readers import _read_csv, _read_llmservingsim, _read_pdsim

# ---------------------------------------------------------------- public API


def read_profile(path: str | Path, tp: int | None = None) -> Profile:
    """Read a pdsim profile directory or an LLMServingSim one (`meta.yaml` + `tpN/`).

    For LLMServingSim, `tp` picks the `tpN/` sub-folder (default: the only one, else tp1); a
    `tpN/` folder itself is accepted too.
    """
    root = Path(path)
    if not root.is_dir():
        raise ProfileError(f"{root}: profile directory not found")
    if (root / "meta.json").is_file():
        profile = _read_pdsim(root)
        if tp is not None and profile.meta.tp != tp:
            raise ProfileError(f"{root / 'meta.json'}: profile is for tp={profile.meta.tp}, needed tp={tp}")
        return profile
    if (root / "meta.yaml").is_file():
        present = sorted(
            int(m.group(1)) for d in root.iterdir() if d.is_dir() and (m := re.fullmatch(r"tp(\d+)", d.name))
        )
        if tp is None:
            tp = present[0] if present else 1
        tp_dir = root / f"tp{tp}"
        if not tp_dir.is_dir():
            have = ", ".join(f"tp{n}" for n in present) or "none"
            raise ProfileError(f"{root}: no tp{tp}/ sub-folder for tp={tp}; present: {have}")
        return _read_llmservingsim(root, tp_dir, tp)
    m = re.fullmatch(r"tp(\d+)", root.name)
    if m and (root.parent / "meta.yaml").is_file():
        if tp is not None and tp != int(m.group(1)):
            raise ProfileError(f"{root}: folder is for tp={m.group(1)}, needed tp={tp}")
        return _read_llmservingsim(root.parent, root, int(m.group(1)))
    raise ProfileError(
        f"{root}: not a profile directory: expected meta.json (pdsim) or meta.yaml with tpN/ "
        "sub-folders (LLMServingSim)"
    )


def replace_dense_op(directory: str | Path, op: str, rows: Iterable[tuple[int, float]]) -> None:
    """Rewrite `directory`/dense.csv with `op`'s rows replaced by `rows` ((tokens, us) each), then
    check that the profile still reads."""
    path = Path(directory) / "dense.csv"
    kept = [r for r in _read_csv(path, ("op", "tokens", "time_us"), ("tokens", "time_us")) if r[0] != op]
    _write_rows(path, "op,tokens,time_us", [*kept, *((op, float(t), float(us)) for t, us in rows)])
    read_profile(directory)


def _write_rows(path: Path, header: str, rows: Iterable[Sequence]) -> None:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}"
        return str(v)

    lines = [header, *(",".join(fmt(v) for v in row) for row in rows)]
    write_text_atomic(path, "\n".join(lines) + "\n")  # a profile file is replaced whole or not at all


def write_profile(
    directory: str | Path,
    meta: ProfileMeta,
    dense_rows: Sequence[tuple[str, int, float]],
    per_sequence_rows: Sequence[tuple[str, int, float]],
    attention_prefill_rows: Sequence[tuple[int, int, float]],
    attention_decode_rows: Sequence[tuple[int, int, float]],
    allreduce_rows: Sequence[tuple[int, float]] | None = None,
    moe_layout_rows: Sequence[tuple[int, int, int, float]] | None = None,
    decode_skew_rows: Sequence[tuple[int, int, int, float]] | None = None,
    finish: Callable[[Path], None] | None = None,
) -> None:
    """Write a pdsim-format profile to `directory` (created if needed) and check it reads back.
    `finish(folder)` adds what a tool keeps beside the tables (the profiler's timings) before the
    folder is put in place, so that is part of the whole too.

    The profile replaces the folder whole (no file of an earlier profile is left), and only when
    `check_profile_target` allows it: never an estimate or an import over a measured profile.

    Rows: dense (op, tokens, us), per-sequence (op, sequences, us), prefill attention
    (chunk_tokens, kv_prefix_tokens, us), decode attention (batch_size, kv_tokens, us),
    all-reduce (bytes, us), fused MoE experts (moe_tp, moe_ep, tokens, us), uneven decode batches
    (batch_size, kv_short_tokens, kv_long_tokens, us). Times are for one layer, as in profiles/README.md.
    """
    out = Path(directory)
    if out.is_symlink():  # replace the folder the link names, and keep the link
        out = out.resolve()
    check_profile_target(out, meta.source, meta.tool)
    holder = next((p for p in out.absolute().parents if _is_profile_folder(p, out)), None)
    if holder is not None:  # a profile tree nested in a profile folder: neither would read as it should
        raise ProfileError(f"{out}: inside the profile folder {holder}; give --out a folder outside it")
    raw = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "hardware": meta.hardware,
        "model": meta.model,
        "dtype": meta.dtype,
        "tp": int(meta.tp),
        "source": meta.source,
        "tool": meta.tool,
        "tool_version": meta.tool_version,
        "created_at": meta.created_at,
        "num_layers": meta.num_layers,
        "device": meta.device,
        "memory": {"activation_peak_bytes": meta.activation_peak_bytes},
        "notes": meta.notes,
    }
    if meta.activation_tokens is not None:
        raw["memory"]["max_num_batched_tokens"] = meta.activation_tokens
    # The profile is written whole into a hidden sibling folder and then put in place of the old one,
    # so a reader never sees two profiles' tables mixed, and no table (nor a timings.csv) of the profile
    # replaced is left beside the new one.
    with staged_folder(out) as stage:
        write_json_atomic(stage / "meta.json", raw)
        _write_rows(stage / "dense.csv", "op,tokens,time_us", dense_rows)
        _write_rows(stage / "per_sequence.csv", "op,sequences,time_us", per_sequence_rows)
        _write_rows(
            stage / "attention_prefill.csv", "chunk_tokens,kv_prefix_tokens,time_us", attention_prefill_rows
        )
        _write_rows(stage / "attention_decode.csv", "batch_size,kv_tokens,time_us", attention_decode_rows)
        for rows, name, header in ((allreduce_rows, "allreduce.csv", "bytes,time_us"),
                                   (moe_layout_rows, MoELayoutTable.FILE, ",".join(MoELayoutTable.COLUMNS)),
                                   (decode_skew_rows, DECODE_SKEW_FILE, ",".join(DECODE_SKEW_COLUMNS))):
            if rows:
                _write_rows(stage / name, header, rows)
        _check_staged(stage, out)  # fail here, before the old profile is replaced, on a malformed table
        if finish is not None:
            finish(stage)
            _check_staged(stage, out)


def _is_profile_folder(folder: Path, target: Path) -> bool:
    """`folder` holds a profile that `target` (below it) would be nested in: a pdsim meta.json, or an
    LLMServingSim meta.yaml other than the one beside a tpN/ target (its own tables' folders)."""
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text()).get("format") == FORMAT_NAME
        except (OSError, ValueError, AttributeError):
            return False  # another tool's meta.json (a run folder): no profile
    return (folder / "meta.yaml").is_file() and target.absolute().parent != folder


def _check_staged(stage: Path, out_dir: Path) -> None:
    """read_profile of the staged tables; its error names the profile being written, not the staging folder,
    which is gone by the time the message is read."""
    try:
        read_profile(stage)
    except ProfileError as e:
        raise ProfileError(str(e).replace(str(stage), f"{out_dir} (as it would be written)")) from None


# How much a profile is worth keeping: one may replace a profile of its own rank or below, so an
# estimate (made again in a second) never replaces a profile timed on a GPU, nor an import (which
# needs aiconfigurator's database) one that pdsim's profiler measured.
_RANK_NAMES = {0: "an estimated", 1: "an imported", 2: "a measured"}


def _profile_rank(source: str, tool: str) -> int:
    if source != "measured":
        return 0
    return 1 if tool.startswith(IMPORT_TOOL_PREFIX) else 2


def check_profile_target(directory: Path, source: str, tool: str, option: str = "--out") -> None:
    """Refuse (PdsimError, exit 2) to write a profile of `source`/`tool` to `directory`: when a file
    stands where a folder is needed, the folder is not writable, or it holds something the new
    profile must not replace (a measured profile under an estimated or imported one, a folder that
    is no pdsim profile, whose files the whole-set replacement would delete)."""
    check_output_dir(directory, option)
    check_output_dir(directory.parent, option, directory)  # the staging folder is made beside it
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    llmservingsim = (directory / "meta.yaml").is_file() or (
        re.fullmatch(r"tp\d+", directory.name) is not None and (directory.parent / "meta.yaml").is_file())
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        what = "an LLMServingSim profile" if llmservingsim else "files but no pdsim profile (no meta.json)"
        raise ProfileError(f"{option} {directory}: holds {what}; pdsim replaces only a pdsim profile folder "
                           f"whole: give another {option}, or move that folder away first")
    try:
        raw = json.loads(meta_path.read_text())
        old_source, old_tool = raw["source"], str(raw.get("tool", ""))
    except (OSError, ValueError, TypeError, KeyError):
        raise ProfileError(f"{option} {directory}: {meta_path} cannot be read as a pdsim profile's meta (no "
                           f"'source'), so it is not replaced: give another {option}, or move that folder away "
                           "first") from None
    old, new = _profile_rank(str(old_source), old_tool), _profile_rank(source, tool)
    if new < old:
        made_by = f" (made by {old_tool})" if old_tool else ""
        raise ProfileError(
            f"{option} {directory}: holds {_RANK_NAMES[old]} profile{made_by}, "
            f"which {_RANK_NAMES[new]} one must not replace: give another {option} (runs then use it with "
            f"--profiles-root or --profile-dir), or move that folder away first if it is to go")


def write_decode_skew(directory: str | Path, rows: Sequence[tuple[int, int, int, float]]) -> None:
    """Write (or replace) a profile's uneven decode batches (`pdsim profile --only attention_decode_skew`)."""
    _write_rows(Path(directory) / DECODE_SKEW_FILE, ",".join(DECODE_SKEW_COLUMNS), rows)


def same_model(a: str, b: str) -> bool:
    # LLMServingSim's meta.yaml may name a model without its organisation ("Llama-3.1-8B").
    return a.lower() == b.lower() or a.rsplit("/", 1)[-1].lower() == b.rsplit("/", 1)[-1].lower()


def same_shape(a: str, b: str) -> bool:
    """Two models pdsim knows whose layers are alike: an fp8 checkpoint and the model it quantises (LLMServingSim
    files a precision's profile under the base model, variant fp8), whose precision _check_precision holds apart."""
    from pdsim.models import load_model

    try:
        return load_model(a).shape == load_model(b).shape
    except PdsimError:
        return False


def _check_model(profile: Profile, model: str) -> None:
    """A profile (given with --profile-dir, or found under the profiles root) that times another model's layers:
    refuse it, not use it."""
    if not same_model(profile.meta.model, model) and not same_shape(profile.meta.model, model):
        path = Path(profile.meta.path)
        meta = path / "meta.json" if profile.meta.fmt == "pdsim" else path.parent / "meta.yaml"
        raise ProfileError(f"{meta}: field 'model': the profile is for {profile.meta.model}, "
                           f"but the instance runs {model}")


def _check_precision(profile: Profile, precision: str) -> None:
    """A profile measured with fp8 weights times fp8 GEMMs: an instance running unquantised weights
    (or the reverse) would be sized one way and timed another, so refuse it."""
    meta = profile.meta
    if meta.fmt == "llmservingsim":
        measured, where = meta.quantization or meta.dtype, Path(meta.path).parent / "meta.yaml"
        field = "variant"
        fix = (" (give a profile measured with fp8 weights, variant fp8, or run the instance unquantised)"
               if precision.startswith("fp8") else
               " (set the instance's quantization \"fp8\", or dtype \"fp8\" as LLMServingSim does, or give a profile "
               "measured with unquantised weights)")
    else:  # pdsim's own: an fp8 profile names its GEMM tables (import-aiconfigurator --quant)
        gemms = meta.device.get("gemm_precision", "") if isinstance(meta.device, dict) else ""
        measured = "fp8" if "fp8" in gemms else meta.dtype
        where, field, fix = Path(meta.path) / "meta.json", "device.gemm_precision", ""
    if measured.startswith("fp8") != precision.startswith("fp8"):
        raise PrecisionMismatch(f"{where}: field '{field}': the profile was measured with {measured} weights, but "
                                f"the instance runs {precision}{fix}")


def profile_path(root: str | Path, hardware: str, model: str, dtype: str, tp: int) -> Path:
    """root/<hardware>/<org>/<model>/<dtype>/tp<N>; `model` is a Hugging Face id (org/name)."""
    return Path(root) / hardware / Path(*model.split("/")) / dtype / f"tp{tp}"


def find_profile(
    hardware: str,
    model: str,
    dtype: str,
    tp: int,
    root: str | Path | None = None,
    profile_dir: str | Path | None = None,
) -> Profile | None:
    """The profile for this instance, or None when none is on disk.

    `profile_dir` (the --profile-dir option) overrides the lookup under `root`: it must then
    hold a profile, and for LLMServingSim its `tpN/` for this tp.
    """
    if profile_dir is not None:
        profile = read_profile(profile_dir, tp=tp)
        _check_model(profile, model)
        _check_precision(profile, dtype)
        return profile
    path = profile_path(root if root is not None else PROFILES_ROOT, hardware, model, dtype, tp)
    if not path.is_dir():
        return None
    profile = read_profile(path, tp=tp)
    _check_model(profile, model)  # a folder copied under another model's name would time that model
    return profile
