"""`pdsim profile`: time every op over its grid and write a profile directory.

Each grid point builds its inputs, times the op (`timing.py`) and frees them again, so memory
stays at one model layer's weights (times the copies that defeat the cache) plus one point's
inputs. Op implementations are those of `ops.py` / `attention.py`, the same the self-check's
full forward pass chains.

Robustness against load from other processes (a shared machine): `passes` measures the whole
grid several times, alternately forwards and backwards so that a point's measurements lie
minutes apart, and keeps each point's fastest median (load only ever adds time). Then points
out of line with their grid neighbours (`outliers.py`) are re-measured, up to `recheck_rounds`
times, again keeping the fastest median.

`layer_overhead` (dense.csv): one whole decoder layer (`model.decoder_layer`, the self-check's
layer forward) is timed over the token grid, as grid points of a `layer_forward` series in the
same passes and rechecks: up to the largest decode batch as a decode step of T sequences with
16 cached tokens each, above as a prefill of T tokens with KV prefix 0; then
layer_overhead(T) = max(0, layer_forward(T) - the layer at that shape as the finished profile
composes it). `add_only` (`pdsim profile --only layer_overhead`) measures just this
into an existing profile.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from pdsim import __version__
from pdsim.errors import PdsimError
from pdsim.hardware import get_hardware
from pdsim.models import ModelSpec, dtype_bytes, load_model
from pdsim.outputs import atomic_path, write_json_atomic
from pdsim.perf.attention_kernel import kernel_fields, kernel_mismatch
from pdsim.perf.profile import (
    ProfileMeta,
    check_profile_target,
    profile_path,
    read_profile,
    write_decode_skew,
    write_profile,
)
from pdsim.profiler.attention import make_attention
from pdsim.profiler.device import describe_device, last_level_cache_bytes
from pdsim.profiler.elementwise import make_elementwise
from pdsim.profiler.grid import GridSpec, capped_grid, grid_changes
from pdsim.profiler.layer_overhead import write_layer_overhead
from pdsim.profiler.memory import activation_peak_bytes
from pdsim.profiler.model import RandomModel
from pdsim.profiler.ops import ShardShapes, torch_dtype
from pdsim.profiler.outliers import DEFAULT_TOLERANCE, suspicious_points
from pdsim.profiler.points import Point, PointBuilder, decode_skew_points, grid_points, layer_points
from pdsim.profiler.progress import Progress
from pdsim.profiler.timing import TIMINGS_FILE, Timer, Timing, TimingConfig, write_timings

TOOL = "pdsim profile"


@dataclass
class ProfileRequest:
    model: str
    hardware: str
    dtype: str
    tp: int
    device: str  # "cpu" | "cuda"
    grid: GridSpec
    timing: TimingConfig
    threads: int | None  # CPU: torch.set_num_threads; None keeps torch's default
    out: Path
    attention_backend: str = "auto"
    elementwise: str = "auto"  # auto | eager | compiled (elementwise.py)
    seed: int = 0
    passes: int = 1  # whole-grid passes, fastest median per point kept
    recheck_rounds: int = 2  # rounds of re-measuring points out of line with their neighbours
    recheck_tolerance: float = DEFAULT_TOLERANCE


@dataclass
class Measurements:
    rows: dict[str, list[tuple]] = field(
        default_factory=lambda: {
            "dense": [],
            "per_sequence": [],
            "attention_prefill": [],
            "attention_decode": [],
            "attention_decode_skew": [],
            "layer_forward": [],
        }
    )
    timings: list[tuple[str, str, tuple[int, ...], Timing]] = field(default_factory=list)
    remeasured: int = 0  # points re-measured as out of line with their neighbours
    suspicious_left: list[str] = field(default_factory=list)  # still out of line after the rechecks
    graph_failures: list[str] = field(default_factory=list)  # CUDA points timed without a graph, and why
    # the kernels the points ran (the PointBuilder's choices; meta.json device keys)
    kernels: dict[str, str] = field(default_factory=dict)
    grid: GridSpec | None = None  # the grid measured: the request's, less what did not fit in memory
    grid_caps: list[dict] = field(default_factory=list)  # each lowering of the grid, and why (meta.json grid_capped)
    points_out_of_memory: int = 0

    def add(self, p: Point, t: Timing) -> None:
        one_d = p.table in ("dense", "per_sequence", "layer_forward")
        row = (p.op, *p.key, t.median_us) if one_d else (*p.key, t.median_us)
        self.rows[p.table].append(row)
        self.timings.append((p.table, p.op, p.key, t))

    def spread_summary(self) -> dict[str, dict[str, float]]:
        """Per table: median and max of (p90-p10)/median over its grid points."""
        summary: dict[str, dict[str, float]] = {}
        for table in self.rows:
            spreads = sorted(t.spread_rel for tab, _, _, t in self.timings if tab == table)
            if spreads:
                summary[table] = {
                    "median_spread_rel": round(spreads[len(spreads) // 2], 4),
                    "p90_spread_rel": round(spreads[min(len(spreads) - 1, int(0.9 * len(spreads)))], 4),
                    "max_spread_rel": round(spreads[-1], 4),
                    "points": len(spreads),
                }
        return summary


def _label(p: Point) -> str:
    return f"{p.op} {'x'.join(map(str, p.key))}"


class _PointOutOfMemory(Exception):
    """A grid point ran out of device memory (raised once the point's tensors are let go)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


# Left free beside the point's own tensors: its kernel workspaces (flash-attn's split-KV accumulators, cuBLAS),
# the CUDA graph's private pool and the caching allocator's rounding and fragmentation, none of which the point's
# byte count includes. 10% of the free memory scales with the card; 1 GiB is the floor where 10% is less than
# those workspaces alone (a small card, or one mostly taken).
MEMORY_MARGIN_FRACTION = 0.10
MEMORY_MARGIN_MIN_BYTES = 2**30
VLLM_MEMORY_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization


def memory_margin(free_bytes: int) -> int:
    return max(int(MEMORY_MARGIN_FRACTION * free_bytes), MEMORY_MARGIN_MIN_BYTES)


def memory_capped_grid(grid: GridSpec, free_bytes: int, attention_bytes: Callable[[int, int, int], int]) -> GridSpec:
    """The grid whose attention points each fit in `free_bytes` less the margin; `attention_bytes(batch, cached,
    new)` is what one point allocates (PointBuilder.attention_bytes). PdsimError where not even the smallest fits."""
    budget = free_bytes - memory_margin(free_bytes)
    try:
        return capped_grid(grid, lambda n, kv: attention_bytes(n, kv, 1) <= budget,
                           lambda c, p: attention_bytes(1, p, c) <= budget)
    except ValueError as e:
        raise PdsimError(f"{e} in {free_bytes / 2**30:.1f} GiB of free GPU memory (less a "
                         f"{memory_margin(free_bytes) / 2**30:.1f} GiB margin) beside the weights the profiler holds: "
                         "free the GPU of other processes, or lower --max-batch / --max-tokens") from None


def _free_device_bytes(device: str) -> tuple[int, int] | None:
    """(free, total) bytes of the CUDA device, what the caching allocator holds unused given back first; None on
    the CPU (no fixed memory to plan against: the machine swaps or the kernel kills the process)."""
    if device != "cuda":
        return None
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return int(free), int(total)


def vllm_kv_tokens(model: ModelSpec, dtype: str, tp: int, total_bytes: int) -> int:
    """At most how many tokens of KV cache vLLM holds on a GPU of `total_bytes` at its default memory utilisation:
    what is left of it beside the weights (its activations and CUDA graphs take some more)."""
    left = VLLM_MEMORY_UTILIZATION * total_bytes - model.weight_bytes(dtype, tp)
    return max(0, int(left // model.kv_bytes_per_token(dtype, tp)))


def _memory_preflight(req: ProfileRequest, model: ModelSpec, b: PointBuilder, grid: GridSpec) -> tuple[GridSpec,
                                                                                                        dict | None]:
    """Run only once the point builder holds everything it keeps for the whole run (its weight copies): the
    grid capped to the free memory left, and the record of the cap (None where nothing was capped)."""
    memory = _free_device_bytes(req.device)
    if memory is None:
        return grid, None
    free, total = memory
    capped = memory_capped_grid(grid, free, b.attention_bytes)
    if capped == grid:
        return grid, None
    return capped, {
        "by": "free memory",
        "changed": grid_changes(grid, capped),
        "free_gib": round(free / 2**30, 2),
        "margin_gib": round(memory_margin(free) / 2**30, 2),
        "largest_decode_point": f"{grid.max_batch}x{grid.max_kv}",
        "largest_decode_gib": round(b.attention_bytes(grid.max_batch, grid.max_kv, 1) / 2**30, 2),
        "vllm_kv_tokens": vllm_kv_tokens(model, req.dtype, req.tp, total),
    }


def _grid_after_oom(grid: GridSpec, p: Point, only: str | None) -> GridSpec:
    """The grid without the point that ran out of memory nor any at least as large on both axes (still full
    rectangles); a PdsimError naming the options to lower where that is not an attention point's grid to cut."""
    label = _label(p)
    options = {"dense": "--max-tokens", "layer_forward": "--max-tokens or --max-batch",
               "per_sequence": "--max-batch"}.get(p.table, "--max-kv or --max-batch (decode), --max-tokens (prefill)")
    if only is not None or p.table not in ("attention_decode", "attention_decode_skew", "attention_prefill"):
        raise PdsimError(f"out of GPU memory at grid point {label}: lower {options}, or free the GPU of other "
                         "processes")
    if p.table == "attention_prefill":
        chunk, prefix = p.key
        decode_fits, prefill_fits = (lambda n, kv: True), (lambda c, q: c < chunk or q < prefix)
    else:
        batch, long = p.key[0], p.key[-1]
        decode_fits, prefill_fits = (lambda n, kv: n < batch or kv < long), (lambda c, q: True)
    try:
        return capped_grid(grid, decode_fits, prefill_fits)
    except ValueError:
        raise PdsimError(f"out of GPU memory at grid point {label}, the smallest of its KV lengths: lower "
                         f"{options}, or free the GPU of other processes") from None


def measure(
    req: ProfileRequest, model: ModelSpec, progress_enabled: bool, only: str | None = None
) -> Measurements:
    """Every grid point (`only`: just the `layer_overhead` or `attention_decode_skew` series).

    The grid is first capped to the device's free memory (`_memory_preflight`); a point that runs out of memory
    all the same caps it further (`_grid_after_oom`) and the measurement goes on over the smaller grid, keeping
    what was measured."""
    b = PointBuilder(model, req)
    grid, cap = (req.grid, None) if only is not None else _memory_preflight(req, model, b, req.grid)
    select = {"layer_overhead": layer_points, "attention_decode_skew": decode_skew_points}.get(only or "", grid_points)
    result = Measurements(grid=grid, grid_caps=[cap] if cap else [])
    passes = max(1, req.passes)
    points = select(b, grid)
    progress = Progress(len(points) * passes, sum(p.work for p in points) * passes, progress_enabled)
    timer = Timer(req.device, req.timing, graphs=True)
    done: dict[tuple, tuple[Timing, int]] = {}  # by Point.ident: the fastest timing and how often measured

    def measure_point(i: int) -> None:
        p = points[i]
        try:
            variants = p.build()
            t = timer.time(variants)
        except torch.OutOfMemoryError:
            failed = True
        else:
            failed = False
        # out of the except block: its traceback (holding the point's tensors) is gone, so they can be freed
        variants = None  # noqa: F841  (free this point's inputs before building the next)
        if failed:
            if req.device == "cuda":
                torch.cuda.empty_cache()
            raise _PointOutOfMemory(i)
        runs[i] += 1
        kept = best[i]
        if kept is None or t.median_us < kept.median_us:
            best[i] = t
        progress.advance(_label(p), p.work)

    def suspicious() -> list[int]:
        medians = {(p.table, p.op, p.key): best[i].median_us for i, p in enumerate(points)}
        flagged = suspicious_points(medians, req.recheck_tolerance)
        return [i for i, p in enumerate(points) if (p.table, p.op, p.key) in flagged]

    try:
        with torch.inference_mode():
            while True:
                best: list[Timing | None] = [done[p.ident][0] if p.ident in done else None for p in points]
                runs = [done[p.ident][1] if p.ident in done else 0 for p in points]
                try:
                    for k in range(passes):
                        for i in range(len(points)) if k % 2 == 0 else reversed(range(len(points))):
                            if runs[i] <= k:  # not yet measured in this pass (before the grid was made smaller)
                                measure_point(i)
                    remeasured: set[int] = set()
                    for _ in range(max(0, req.recheck_rounds)):
                        flagged = suspicious()
                        if not flagged:
                            break
                        progress.extend(len(flagged), sum(points[i].work for i in flagged))
                        for i in flagged:
                            measure_point(i)
                        remeasured.update(flagged)
                    break
                except _PointOutOfMemory as e:
                    oom_point = points[e.index]
                    grid = _grid_after_oom(grid, oom_point, only)
                    result.points_out_of_memory += 1
                    result.grid_caps.append({"by": "out of memory", "changed": grid_changes(result.grid, grid),
                                             "point": _label(oom_point)})
                    result.grid = grid
                    done = {p.ident: (best[i], runs[i]) for i, p in enumerate(points) if best[i] is not None}
                    points = select(b, grid)
                    left = [(p, max(0, passes - done.get(p.ident, (None, 0))[1])) for p in points]
                    progress.restart(sum(n for _, n in left), sum(p.work * n for p, n in left))
            result.remeasured = len(remeasured)
            result.suspicious_left = [_label(points[i]) for i in suspicious()] if req.recheck_rounds > 0 else []
    finally:
        progress.close()
    result.graph_failures = timer.graph_failures
    result.kernels = {
        "attention_backend": b.attention.name,
        "elementwise_ops": b.ew.name + (f"; {b.ew.note}" if b.ew.note else "")
        + (", token dim dynamic; layernorm and final_layernorm are RMSNorm fused with the residual add "
           "before it (vLLM's norm(x, residual)), no separate residual_add" if b.ew.fused_residual else ""),
    }
    if b.ew.note:  # --elementwise auto could not compile: the ops were timed eager
        result.kernels["elementwise_compile_failed"] = b.ew.note
    for i, p in enumerate(points):
        result.add(p, replace(best[i], runs=runs[i]))
    return result


def _set_threads(req: ProfileRequest) -> int:
    if req.device == "cpu" and req.threads:
        torch.set_num_threads(req.threads)
    return torch.get_num_threads()


def run_profile(req: ProfileRequest, progress_enabled: bool = False) -> Path:
    """Measure and write the profile; returns its directory."""
    model = load_model(req.model)
    ShardShapes.of(model, req.tp)  # a clean PdsimError for an impossible tp before any work
    # A folder the profile may not replace is refused now, not after the measurement (hours on a GPU).
    check_profile_target(profile_path(req.out, req.hardware, req.model, req.dtype, req.tp), "measured", TOOL)
    torch.manual_seed(req.seed)
    threads = _set_threads(req)
    started = dt.datetime.now(dt.timezone.utc)
    load_at_start = round(os.getloadavg()[0], 2)

    measured = measure(req, model, progress_enabled)
    # what was measured, less what did not fit in memory: the activation peak, the largest all-reduce and the grid
    # meta.json records (which configs must stay inside) follow it
    req = replace(req, grid=measured.grid)
    peak = _activation_peak(req, model)
    allreduce_rows, allreduce_note, allreduce_failed = _allreduce(req, model)
    device_info = _device_info(req, measured, threads, load_at_start)
    meta = _profile_meta(req, model, started, device_info, peak, allreduce_note)

    out_dir = profile_path(req.out, req.hardware, req.model, req.dtype, req.tp)
    r = measured.rows
    write_profile(
        out_dir,
        meta,
        r["dense"],
        r["per_sequence"],
        r["attention_prefill"],
        r["attention_decode"],
        allreduce_rows,
        decode_skew_rows=r["attention_decode_skew"],
        finish=lambda folder: _finish(folder, req, measured, allreduce_note, allreduce_failed),
    )
    return out_dir


def _finish(folder: Path, req: ProfileRequest, measured: Measurements, allreduce_note: str,
            allreduce_failed: str | None = None) -> None:
    """The profiler's own files beside the tables: its settings, every point's timings, the layer overhead."""
    _record_settings(folder, req, measured, allreduce_note, allreduce_failed)
    write_timings(folder / TIMINGS_FILE, measured.timings)
    write_layer_overhead(folder, measured, "measured with the rest of the profile")


def _activation_peak(req: ProfileRequest, model: ModelSpec) -> int:
    # Activation peak at the largest token count profiled (= max_num_batched_tokens a cluster
    # config may use with this profile); one layer suffices since layers free their activations.
    one_layer = RandomModel(
        model,
        req.tp,
        req.dtype,
        req.device,
        max_positions=req.grid.max_tokens + 1,
        num_layers=1,
        attention_backend=req.attention_backend,
        elementwise=req.elementwise,
    )
    peak = activation_peak_bytes(one_layer, req.grid.max_tokens)
    del one_layer
    return peak


def _allreduce(req: ProfileRequest, model: ModelSpec) -> tuple[list[tuple[int, float]] | None, str, str | None]:
    """The all-reduce rows (None when not measured), a note that says how they were obtained, and why NCCL failed
    (None unless it did)."""
    allreduce_rows = None
    allreduce_note = "all-reduce not profiled (tp=1)" if req.tp == 1 else ""
    if req.tp > 1:
        from pdsim.profiler.allreduce import can_measure_allreduce, measure_allreduce

        if can_measure_allreduce(req.device, req.tp):
            # the largest message: the activations of max_tokens tokens (2 per layer)
            max_bytes = req.grid.max_tokens * model.hidden_size * dtype_bytes(req.dtype)
            if req.device == "cuda":  # the ranks' processes need the memory this one's allocator keeps cached
                torch.cuda.empty_cache()
            try:
                allreduce_rows = measure_allreduce(req.tp, req.dtype, req.timing, max_bytes)
            # Any failure of NCCL or its ranks (no peer-to-peer between consumer cards, a rank that dies, a
            # timeout): the all-reduce is what the link model prices anyway, so the measured tables must not be lost
            except Exception as e:  # noqa: BLE001
                reason = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                return None, (f"all-reduce not measured (NCCL over {req.tp} GPUs failed, {reason}): the simulator "
                              f"models it from {req.hardware}'s intra-node link"), reason
            allreduce_note = f"all-reduce measured with NCCL over {req.tp} GPUs"
        else:
            allreduce_note = (
                f"all-reduce not measured (fewer than {req.tp} GPUs visible): the simulator "
                f"models it from {req.hardware}'s intra-node link"
            )
    return allreduce_rows, allreduce_note, None


def _device_info(req: ProfileRequest, measured: Measurements, threads: int, load_at_start: float) -> dict:
    device_info = describe_device(req.device, threads)
    # Other processes on the machine inflate CPU timings (an OpenMP region waits for a
    # descheduled thread): record the load so a suspicious profile can be recognised.
    device_info["loadavg_1m_at_start"] = load_at_start
    device_info["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    device_info.update(measured.kernels)
    if req.device == "cuda":
        device_info.update(kernel_fields(measured.kernels["attention_backend"], device_info["compute_capability"]))
    if (note := moe_note(load_model(req.model))) is not None:
        device_info["moe_experts"] = note
    if get_hardware(req.hardware) is None:
        device_info["hardware_spec"] = "none in pdsim/hardware.py (measured-only hardware)"
    return device_info


def _profile_meta(req: ProfileRequest, model: ModelSpec, started: dt.datetime, device_info: dict, peak: int,
                  allreduce_note: str) -> ProfileMeta:
    attention_name = device_info["attention_backend"]
    return ProfileMeta(
        hardware=req.hardware,
        model=req.model,
        dtype=req.dtype,
        tp=req.tp,
        source="measured",
        tool=TOOL,
        tool_version=__version__,
        created_at=started.isoformat(timespec="seconds"),
        num_layers=model.num_layers,
        device=device_info,
        activation_peak_bytes=peak,
        activation_tokens=req.grid.max_tokens,
        notes=(
            f"random weights with the exact {'TP-sharded ' if req.tp > 1 else ''}shapes; "
            f"median of up to {req.timing.repeats} repeats after {req.timing.warmup} warm-up, "
            f"fastest of {max(1, req.passes)} pass(es) over the grid and of re-measures of points "
            f"out of line with their neighbours; "
            f"spread = (p90-p10)/median per point in {TIMINGS_FILE}, per table in 'spread'; "
            f"attention: {attention_name}; elementwise ops: {device_info['elementwise_ops']}; "
            f"sampler: fp32 softmax + argmax over the full vocabulary; "
            f"{allreduce_note}"
        ),
    )


def _record_settings(out_dir: Path, req: ProfileRequest, measured: Measurements, allreduce_note: str,
                     allreduce_failed: str | None = None) -> None:
    # Extra keys the reader ignores: the grid limits (which cluster configs must stay inside),
    # timing settings and the per-table spread.
    meta_path = out_dir / "meta.json"
    raw = json.loads(meta_path.read_text())
    raw["grid"] = req.grid.to_dict()
    raw["timing"] = {
        "warmup": req.timing.warmup,
        "repeats": req.timing.repeats,
        "max_seconds_per_point": req.timing.max_seconds_per_point,
        "timer": (
            "cuda events around CUDA-graph replays of the op, after a spin kernel that outlasts the launch"
            if req.device == "cuda"
            else "time.perf_counter_ns"
        ),
        "points_timed_without_graph": len(measured.graph_failures),
        "graph_failures": sorted(set(measured.graph_failures))[:5],
        "cache_flush_bytes": 2 * last_level_cache_bytes(req.device),
        "passes": max(1, req.passes),
        "recheck_rounds": req.recheck_rounds,
        "recheck_tolerance": req.recheck_tolerance,
        "remeasured_points": measured.remeasured,
        "suspicious_points_left": measured.suspicious_left,
        "points_out_of_memory": measured.points_out_of_memory,
    }
    if measured.grid_caps:
        raw["grid_capped"] = measured.grid_caps
    raw["spread"] = measured.spread_summary()
    raw["allreduce"] = allreduce_note
    if allreduce_failed is not None:
        raw["allreduce_skipped"] = allreduce_failed
    write_json_atomic(meta_path, raw)


def add_only(req: ProfileRequest, only: str, progress_enabled: bool = False) -> Path:
    """`pdsim profile --only layer_overhead | attention_decode_skew`: measure that series into the existing
    profile that `req` names (its grid and thread count as recorded in its meta.json), leaving every
    other table as it is. Returns the profile directory."""
    out_dir = profile_path(req.out, req.hardware, req.model, req.dtype, req.tp)
    profile = read_profile(out_dir)
    model = load_model(req.model)
    if profile.meta.model != req.model:
        raise PdsimError(f"{out_dir}: profile is for model {profile.meta.model!r}, not {req.model!r}")
    torch.manual_seed(req.seed)
    threads = _set_threads(req)
    recorded = profile.meta.device.get("threads")
    if req.device == "cpu" and recorded and recorded != threads:
        raise PdsimError(
            f"{out_dir}: profile measured with {recorded} threads, not {threads}; pass --threads {recorded}"
        )
    _same_kernels(out_dir, profile.meta.device, req, model, threads)
    raw = json.loads((out_dir / "meta.json").read_text())
    if "grid" not in raw:  # the series would be timed on this command's grid, not the tables' beside it
        raise PdsimError(f"{out_dir / 'meta.json'}: no field 'grid', which pdsim's profiler records with the tables "
                         f"it measured ({'an estimated profile' if profile.estimated else 'not such a profile'}); "
                         f"--only {only} measures beside them on their grid: measure the whole profile instead")
    grid = raw["grid"]
    try:
        if not isinstance(grid, dict) or not all(type(v) is int for v in grid.values()):
            raise TypeError("expected an object of whole numbers")
        req = replace(req, grid=GridSpec(**grid))
    except (TypeError, ValueError) as e:  # an unknown key, a missing one, or a value out of range
        raise PdsimError(f"{out_dir / 'meta.json'}: field 'grid': {e}; got {grid!r}") from None
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    load_at_start = round(os.getloadavg()[0], 2)
    measured = measure(req, model, progress_enabled, only=only)
    how = (
        f"added later by `pdsim profile --only {only}` at {started} (load {load_at_start} at start, "
        f"{round(os.getloadavg()[0], 2)} at end), fastest of {max(1, req.passes)} pass(es) and "
        f"{req.recheck_rounds} recheck round(s), {req.timing.repeats} repeats after {req.timing.warmup} warm-up; "
        f"the other tables are those of {profile.meta.created_at}"
    )
    table = "layer_forward" if only == "layer_overhead" else only
    if only == "layer_overhead":
        write_layer_overhead(out_dir, measured, how)
    else:
        write_decode_skew(out_dir, measured.rows[only])
        raw = json.loads((out_dir / "meta.json").read_text())
        raw[only] = {"how": how}
        raw.setdefault("spread", {}).update({k: v for k, v in measured.spread_summary().items() if k == only})
        write_json_atomic(out_dir / "meta.json", raw)
        read_profile(out_dir)  # fail here, not in a later simulation, on a malformed table
    timings_path = out_dir / TIMINGS_FILE
    if timings_path.is_file():
        # bytes, not text: the csv module's \r\n line ends must survive the rewrite
        lines = timings_path.read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(f"{table},".encode())]
        new = out_dir / (TIMINGS_FILE + ".new")
        write_timings(new, measured.timings)
        added = new.read_bytes().splitlines(keepends=True)[1:]
        new.unlink()
        # atomically: an interrupted rewrite must not leave the profile with half its timings
        with atomic_path(timings_path) as tmp:
            tmp.write_bytes(b"".join(kept) + b"".join(added))
    return out_dir


def _same_kernels(out_dir: Path, recorded: dict, req: ProfileRequest, model: ModelSpec, threads: int) -> None:
    """Refuse `--only` where this machine would time the series on another device or other kernels than the
    profile's other tables were (a series beside tables of other kernels would mix them)."""
    s = ShardShapes.of(model, req.tp)
    dtype = torch_dtype(req.dtype)
    ew = make_elementwise(req.device, dtype, req.elementwise).name
    here = {
        "device": describe_device(req.device, threads)["name"],
        "attention backend": make_attention(s, dtype, req.device, req.attention_backend).name,
        "elementwise ops": ew,
    }
    ew_recorded = recorded.get("elementwise_ops")
    there = {
        "device": recorded.get("name"),
        "attention backend": recorded.get("attention_backend"),
        # recorded as the name, then what it was compiled with
        "elementwise ops": ew_recorded.split(";")[0].split(",")[0].strip() if isinstance(ew_recorded, str) else None,
    }
    for what, value in here.items():
        if there[what] is not None and there[what] != value:
            raise PdsimError(f"{out_dir}: profile measured with {what} {there[what]!r}, but --only would measure "
                             f"with {value!r}: measure the whole profile, or run where its other tables were timed")


def moe_note(model: ModelSpec) -> str | None:
    """What a profile of a MoE model lacks (None for a dense model)."""
    if model.moe is None:
        return None
    dense = "" if model.dense_mlp_layers else (", nor the dense MLP of intermediate_size, which none of its layers "
                                               "has")
    return (f"{model.name} is a mixture-of-experts model: the profiler does not measure its expert layers{dense}; "
            "runs with this profile estimate the experts from the hardware's specs (pdsim/hardware.py)")


def run_warnings(meta: dict) -> list[str]:
    """The lines `pdsim profile` ends with where the profile is not what vLLM would measure, from its meta.json."""
    device, timing = meta.get("device", {}), meta.get("timing", {})
    lines = [f"NOTE: {device['moe_experts']}"] if device.get("moe_experts") else []
    if (mismatch := kernel_mismatch(device)) is not None:
        lines.append(f"WARNING: {mismatch}")
    if failed := device.get("elementwise_compile_failed"):
        lines.append(f"WARNING: --elementwise auto fell back to eager ops, {failed}: norms, rotary, SiLU-and-mul and "
                     "residual adds were timed several times slower than vLLM's compiled ones; make torch.compile "
                     "work here (Triton installed) and measure again, or pass --elementwise eager to mean it")
    if skipped := meta.get("allreduce_skipped"):
        lines.append(f"WARNING: the all-reduce was not measured, NCCL failed ({skipped}): the profile has no "
                     "allreduce.csv and runs price the all-reduce from the hardware's interconnect model, as their "
                     "note 'TP all-reduce priced by' says; make NCCL run over these GPUs (e.g. NCCL_P2P_DISABLE=1 "
                     "where they have no peer-to-peer) and measure again for a measured table")
    lines += grid_cap_lines(meta.get("grid_capped", []), timing.get("points_out_of_memory", 0))
    if graphless := timing.get("points_timed_without_graph"):
        reasons = "; ".join(timing.get("graph_failures", [])[:1])
        lines.append(f"WARNING: {graphless} grid point(s) timed without a CUDA graph (capture failed: {reasons}), so "
                     "their times include launch overheads vLLM's graphs hide; meta.json timing.graph_failures says "
                     "why: fix that and measure again")
    return lines


def _changes(changed: dict[str, list[int]]) -> str:
    return ", ".join(f"--{k.replace('_', '-')} {a} -> {b}" for k, (a, b) in changed.items())


def grid_cap_lines(caps: list[dict], out_of_memory: int) -> list[str]:
    """A NOTE for the cap to free memory and one for the caps after points ran out of memory (meta.json
    grid_capped)."""
    lines = []
    for cap in caps:
        if cap["by"] == "free memory":
            lines.append(
                f"NOTE: grid capped to the free GPU memory: {_changes(cap['changed'])} (decode attention at "
                f"{cap['largest_decode_point']} sequences x KV tokens needs {cap['largest_decode_gib']} GiB, "
                f"{cap['free_gib']} GiB free beside the weights the profiler holds, less a {cap['margin_gib']} GiB "
                "margin); steps beyond are extrapolated. vLLM (gpu_memory_utilization "
                f"{VLLM_MEMORY_UTILIZATION}) holds at most {cap['vllm_kv_tokens']} tokens of KV cache on this GPU "
                "beside the weights, so no decode step of more tokens of context in all runs here")
    after_oom = [cap for cap in caps if cap["by"] == "out of memory"]
    if after_oom:
        changed: dict[str, list[int]] = {}
        for cap in after_oom:  # from the first limit to the last, over every cap in turn
            changed.update({k: [changed.get(k, v)[0], v[1]] for k, v in cap["changed"].items()})
        lines.append(f"NOTE: {out_of_memory} grid point(s) ran out of GPU memory (first {after_oom[0]['point']}): "
                     f"{_changes(changed)}, the attention tables stop at the largest full grid measured and steps "
                     "beyond are extrapolated")
    return lines
