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
composes it). `add_layer_overhead` (`pdsim profile --only layer_overhead`) measures just this
into an existing profile.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from pdsim import __version__
from pdsim.errors import PdsimError
from pdsim.hardware import get_hardware
from pdsim.models import ModelSpec, dtype_bytes, load_model
from pdsim.perf.profile import (
    LAYER_OVERHEAD_DECODE_KV,
    Profile,
    ProfileMeta,
    layer_ops_us,
    profile_path,
    read_profile,
    replace_dense_op,
    write_profile,
)
from pdsim.profiler import ops
from pdsim.profiler.attention import make_attention
from pdsim.profiler.device import describe_device, last_level_cache_bytes
from pdsim.profiler.grid import GridSpec
from pdsim.profiler.memory import activation_peak_bytes
from pdsim.profiler.model import RandomModel, decoder_layer
from pdsim.profiler.ops import LayerWeights, ShardShapes
from pdsim.profiler.outliers import DEFAULT_TOLERANCE, suspicious_points
from pdsim.profiler.progress import Progress
from pdsim.profiler.timing import TIMINGS_FILE, Timer, Timing, TimingConfig, write_timings

TOOL = "pdsim profile"

Variants = list[Callable[[], object]]


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
    seed: int = 0
    passes: int = 1  # whole-grid passes, fastest median per point kept
    recheck_rounds: int = 2  # rounds of re-measuring points out of line with their neighbours
    recheck_tolerance: float = DEFAULT_TOLERANCE


@dataclass
class _Point:
    table: str  # dense | per_sequence | attention_prefill | attention_decode | layer_forward
    op: str
    key: tuple[int, ...]
    work: float  # rough cost for the ETA
    build: Callable[[], Variants]


@dataclass
class Measurements:
    rows: dict[str, list[tuple]] = field(
        default_factory=lambda: {
            "dense": [],
            "per_sequence": [],
            "attention_prefill": [],
            "attention_decode": [],
            "layer_forward": [],
        }
    )
    timings: list[tuple[str, str, tuple[int, ...], Timing]] = field(default_factory=list)
    remeasured: int = 0  # points re-measured as out of line with their neighbours
    suspicious_left: list[str] = field(default_factory=list)  # still out of line after the rechecks

    def add(self, p: _Point, t: Timing) -> None:
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


class _Builder:
    """Makes the closures timed at each grid point."""

    def __init__(self, model: ModelSpec, req: ProfileRequest) -> None:
        self.s = ShardShapes.of(model, req.tp)
        self.dtype = ops.torch_dtype(req.dtype)
        self.dev = req.device
        self.elem = dtype_bytes(req.dtype)
        self.flush_bytes = 2 * last_level_cache_bytes(req.device)
        self.num_layers = model.num_layers
        s = self.s
        smallest = (
            min(s.hidden * (s.q_size + 2 * s.kv_size), s.hidden * s.q_size, 2 * s.hidden * s.intermediate)
            * self.elem
        )
        n_copies = self._copies(smallest)
        # Several layers' weights, used in turn: as in a real forward pass, an op does not find
        # its weights hot in cache from the previous repeat (CPU L3 / GPU L2 would hold them).
        self.layers = [LayerWeights.random(s, self.dtype, self.dev) for _ in range(n_copies)]
        self.head = ops.HeadWeights.random(s, self.dtype, self.dev)
        self.rope = ops.Rope(s, self.dtype, self.dev, req.grid.max_tokens + req.grid.max_kv + 1)
        self.attention = make_attention(s, self.dtype, self.dev, req.attention_backend)

    def _copies(self, nbytes: int) -> int:
        return max(1, min(self.num_layers, math.ceil(self.flush_bytes / max(nbytes, 1))))

    def _x(self, tokens: int, width: int | None = None) -> torch.Tensor:
        return torch.randn(tokens, width or self.s.hidden, dtype=self.dtype, device=self.dev)

    def dense(self, op: str, t: int) -> Variants:
        s, L = self.s, self.layers
        if op == "layernorm":
            x = self._x(t)
            return [lambda w=w: ops.layernorm(x, w.input_norm) for w in L]
        if op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            fn = getattr(ops, op)
            x = self._x(t, s.q_size if op == "o_proj" else s.intermediate if op == "down_proj" else None)
            return [lambda w=w: fn(x, w) for w in L]
        if op in ("qk_norm", "rotary_emb"):
            q, k, _ = ops.split_qkv(self._x(t, s.q_size + 2 * s.kv_size), s)
            if op == "qk_norm":
                return [lambda w=w: ops.qk_norm(q, k, w) for w in L]
            positions = torch.arange(t, device=self.dev)
            return [lambda: ops.rotary_emb(q, k, positions, self.rope)]
        if op == "act_fn":
            x = self._x(t, 2 * s.intermediate)
            return [lambda: ops.act_fn(x)]
        if op == "residual_add":
            x, r = self._x(t), self._x(t)
            return [lambda: ops.residual_add(x, r)]
        if op == "embedding":
            ids = torch.randint(0, s.vocab_shard, (t,), device=self.dev)
            return [lambda: ops.embedding(ids, self.head)]
        if op == "final_layernorm":
            x = self._x(t)
            return [lambda: ops.final_layernorm(x, self.head)]
        raise ValueError(op)

    def layer(self, t: int, decode: bool) -> Variants:
        """One whole decoder layer of t new tokens at `layer_overhead`'s reference shape (decode:
        t sequences with LAYER_OVERHEAD_DECODE_KV cached each; else a prefill with KV prefix 0),
        rotating over the weight copies as the isolated ops do (and a full forward over its layers)."""
        x = self._x(t)
        if decode:
            kv = LAYER_OVERHEAD_DECODE_KV
            positions = torch.full((t,), kv, device=self.dev)
            caches = [self.attention.new_cache(t, kv, 1) for _ in self.layers]
            attention = self.attention.decode
        else:
            positions = torch.arange(t, device=self.dev)
            caches = [self.attention.new_cache(1, 0, t) for _ in self.layers]
            attention = self.attention.prefill
        return [
            lambda w=w, c=c: decoder_layer(x, w, self.s, positions, self.rope, attention, c)
            for w, c in zip(self.layers, caches, strict=True)
        ]

    def per_sequence(self, op: str, n: int) -> Variants:
        if op == "lm_head":
            x, idx = self._x(n), torch.arange(n, device=self.dev)
            return [lambda: ops.lm_head(x, idx, self.head)]
        logits = ops.full_vocab_logits(self.s, n, self.dtype, self.dev)
        return [lambda: ops.sampler(logits)]

    def _qkv(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.s
        return ops.split_qkv(self._x(t, s.q_size + 2 * s.kv_size), s)

    def _cache_copies(self, batch: int, cached: int, new: int) -> int:
        return self._copies(2 * batch * (cached + new) * self.s.kv_size * self.elem)

    def prefill(self, chunk: int, prefix: int) -> Variants:
        q, k, v = self._qkv(chunk)
        caches = [
            self.attention.new_cache(1, prefix, chunk) for _ in range(self._cache_copies(1, prefix, chunk))
        ]
        return [lambda c=c: self.attention.prefill(q, k, v, c) for c in caches]

    def decode(self, batch: int, kv: int) -> Variants:
        q, k, v = self._qkv(batch)
        caches = [self.attention.new_cache(batch, kv, 1) for _ in range(self._cache_copies(batch, kv, 1))]
        return [lambda c=c: self.attention.decode(q, k, v, c) for c in caches]

    # FLOP estimates (only rank points for the ETA)
    def dense_flops(self, op: str, t: int) -> float:
        s = self.s
        out = {
            "qkv_proj": s.q_size + 2 * s.kv_size,
            "o_proj": s.hidden,
            "gate_up_proj": 2 * s.intermediate,
            "down_proj": s.hidden,
        }.get(op)
        inp = {"o_proj": s.q_size, "down_proj": s.intermediate}.get(op, s.hidden)
        return 2.0 * t * inp * out if out else 10.0 * t * s.hidden

    def attention_flops(self, q_tokens: int, kv_tokens: int, batch: int = 1) -> float:
        return 4.0 * batch * q_tokens * kv_tokens * self.s.q_size


def _layer_points(b: _Builder, grid: GridSpec) -> list[_Point]:
    layer_flops = sum(b.dense_flops(op, 1) for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"))
    return [
        _Point(
            "layer_forward",
            "layer_forward",
            (t,),
            Progress.work(t * layer_flops + b.attention_flops(t, t)),
            lambda t=t: b.layer(t, decode=t <= grid.max_batch),
        )
        for t in grid.tokens()
    ]


def _points(b: _Builder, grid: GridSpec) -> list[_Point]:
    points: list[_Point] = []
    dense_ops = [op for op in (*ops.LAYER_OPS, *ops.STEP_OPS) if op != "qk_norm" or b.s.qk_norm]
    for op in dense_ops:
        for t in grid.tokens():
            points.append(
                _Point(
                    "dense", op, (t,), Progress.work(b.dense_flops(op, t)), lambda op=op, t=t: b.dense(op, t)
                )
            )
    for op in ops.PER_SEQUENCE_OPS:
        for n in grid.sequences():
            flops = 2.0 * n * b.s.hidden * b.s.vocab_shard if op == "lm_head" else 5.0 * n * b.s.vocab
            points.append(
                _Point(
                    "per_sequence", op, (n,), Progress.work(flops), lambda op=op, n=n: b.per_sequence(op, n)
                )
            )
    for c in grid.prefill_chunks():
        for p in grid.prefill_prefixes():
            points.append(
                _Point(
                    "attention_prefill",
                    "attention_prefill",
                    (c, p),
                    Progress.work(b.attention_flops(c, p + c)),
                    lambda c=c, p=p: b.prefill(c, p),
                )
            )
    for n in grid.decode_batches():
        for kv in grid.decode_kv():
            points.append(
                _Point(
                    "attention_decode",
                    "attention_decode",
                    (n, kv),
                    Progress.work(b.attention_flops(1, kv + 1, n)),
                    lambda n=n, kv=kv: b.decode(n, kv),
                )
            )
    return points + _layer_points(b, grid)


def _label(p: _Point) -> str:
    return f"{p.op} {'x'.join(map(str, p.key))}"


def measure(
    req: ProfileRequest, model: ModelSpec, progress_enabled: bool, layer_only: bool = False
) -> Measurements:
    """Every grid point (`layer_only`: just the `layer_forward` series)."""
    b = _Builder(model, req)
    points = _layer_points(b, req.grid) if layer_only else _points(b, req.grid)
    passes = max(1, req.passes)
    progress = Progress(len(points) * passes, sum(p.work for p in points) * passes, progress_enabled)
    timer = Timer(req.device, req.timing)
    best: list[Timing | None] = [None] * len(points)
    runs = [0] * len(points)

    def measure_point(i: int) -> None:
        p = points[i]
        variants = p.build()
        t = timer.time(variants)
        del variants  # free this point's inputs before building the next
        runs[i] += 1
        kept = best[i]
        if kept is None or t.median_us < kept.median_us:
            best[i] = t
        progress.advance(_label(p), p.work)

    def suspicious() -> list[int]:
        medians = {(p.table, p.op, p.key): best[i].median_us for i, p in enumerate(points)}
        flagged = suspicious_points(medians, req.recheck_tolerance)
        return [i for i, p in enumerate(points) if (p.table, p.op, p.key) in flagged]

    result = Measurements()
    try:
        with torch.inference_mode():
            for k in range(passes):
                for i in range(len(points)) if k % 2 == 0 else reversed(range(len(points))):
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
            result.remeasured = len(remeasured)
            result.suspicious_left = [_label(points[i]) for i in suspicious()] if req.recheck_rounds > 0 else []
    finally:
        progress.close()
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
    torch.manual_seed(req.seed)
    threads = _set_threads(req)
    started = dt.datetime.now(dt.timezone.utc)
    load_at_start = round(os.getloadavg()[0], 2)

    measured = measure(req, model, progress_enabled)

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
    )
    peak = activation_peak_bytes(one_layer, req.grid.max_tokens)
    del one_layer

    allreduce_rows = None
    allreduce_note = "all-reduce not profiled (tp=1)" if req.tp == 1 else ""
    if req.tp > 1:
        from pdsim.profiler.allreduce import can_measure_allreduce, measure_allreduce

        if can_measure_allreduce(req.device, req.tp):
            # the largest message: the activations of max_tokens tokens (2 per layer)
            max_bytes = req.grid.max_tokens * model.hidden_size * dtype_bytes(req.dtype)
            allreduce_rows = measure_allreduce(req.tp, req.dtype, req.timing, max_bytes)
            allreduce_note = f"all-reduce measured with NCCL over {req.tp} GPUs"
        else:
            allreduce_note = (
                f"all-reduce not measured (fewer than {req.tp} GPUs visible): the simulator "
                f"models it from {req.hardware}'s intra-node link"
            )

    device_info = describe_device(req.device, threads)
    # Other processes on the machine inflate CPU timings (an OpenMP region waits for a
    # descheduled thread): record the load so a suspicious profile can be recognised.
    device_info["loadavg_1m_at_start"] = load_at_start
    device_info["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    attention_name = make_attention(
        ShardShapes.of(model, req.tp), ops.torch_dtype(req.dtype), req.device, req.attention_backend
    ).name
    device_info["attention_backend"] = attention_name
    if get_hardware(req.hardware) is None:
        device_info["hardware_spec"] = "none in pdsim/hardware.py (measured-only hardware)"
    meta = ProfileMeta(
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
            f"attention: {attention_name}; sampler: fp32 softmax + argmax over the full vocabulary; "
            f"{allreduce_note}"
        ),
    )
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
    )
    # Extra keys the reader ignores: the grid limits (which cluster configs must stay inside),
    # timing settings and the per-table spread.
    meta_path = out_dir / "meta.json"
    raw = json.loads(meta_path.read_text())
    raw["grid"] = req.grid.to_dict()
    raw["timing"] = {
        "warmup": req.timing.warmup,
        "repeats": req.timing.repeats,
        "max_seconds_per_point": req.timing.max_seconds_per_point,
        "timer": "cuda events" if req.device == "cuda" else "time.perf_counter_ns",
        "cache_flush_bytes": 2 * last_level_cache_bytes(req.device),
        "passes": max(1, req.passes),
        "recheck_rounds": req.recheck_rounds,
        "recheck_tolerance": req.recheck_tolerance,
        "remeasured_points": measured.remeasured,
        "suspicious_points_left": measured.suspicious_left,
    }
    raw["spread"] = measured.spread_summary()
    raw["allreduce"] = allreduce_note
    meta_path.write_text(json.dumps(raw, indent=2) + "\n")
    write_timings(out_dir / TIMINGS_FILE, measured.timings)
    _write_layer_overhead(out_dir, measured, "measured with the rest of the profile")
    return out_dir


LAYER_OVERHEAD_DEFINITION = (
    "max(0, one decoder-layer forward (pdsim.profiler.model.decoder_layer) of T new tokens minus that "
    "layer as this profile composes it (sum of count x dense op(T) + its attention)); for T <= the "
    f"largest decode batch a decode step of T sequences with {LAYER_OVERHEAD_DECODE_KV} cached tokens "
    "each (attention_decode(T, 16)), above a prefill of T tokens with KV prefix 0 (attention_prefill(T, 0)); "
    "added once per layer to every step of T tokens"
)


def layer_overhead_rows(profile: Profile, layer_rows: list[tuple]) -> list[tuple[int, float]]:
    """(tokens, us) of `layer_overhead` from the measured ("layer_forward", T, us) rows."""
    return [(int(t), max(0.0, us - layer_ops_us(profile, t))) for _, t, us in layer_rows]


def _write_layer_overhead(out_dir: Path, measured: Measurements, how: str) -> None:
    """Derive `layer_overhead` from the measured layer forwards and the profile on disk, write it
    into dense.csv and record how it was made in meta.json."""
    layer_rows = sorted(measured.rows["layer_forward"], key=lambda r: r[1])
    overhead = layer_overhead_rows(read_profile(out_dir), layer_rows)
    replace_dense_op(out_dir, "layer_overhead", overhead)
    meta_path = out_dir / "meta.json"
    raw = json.loads(meta_path.read_text())
    raw["layer_overhead"] = {
        "definition": LAYER_OVERHEAD_DEFINITION,
        "how": how,
        "clipped_to_zero": [t for t, us in overhead if us == 0.0],
        "median_fraction_of_layer": round(
            sorted(o / r[2] for (_, o), r in zip(overhead, layer_rows, strict=True))[len(overhead) // 2], 4
        ),
    }
    raw.setdefault("spread", {}).update(
        {k: v for k, v in measured.spread_summary().items() if k == "layer_forward"}
    )
    meta_path.write_text(json.dumps(raw, indent=2) + "\n")


def add_layer_overhead(req: ProfileRequest, progress_enabled: bool = False) -> Path:
    """`pdsim profile --only layer_overhead`: measure `layer_overhead` into the existing profile
    that `req` names (its grid and thread count as recorded in its meta.json), leaving every other
    table as it is. Returns the profile directory."""
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
    raw = json.loads((out_dir / "meta.json").read_text())
    if "grid" in raw:
        req = replace(req, grid=GridSpec(**raw["grid"]))
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    load_at_start = round(os.getloadavg()[0], 2)
    measured = measure(req, model, progress_enabled, layer_only=True)
    how = (
        f"added later by `pdsim profile --only layer_overhead` at {started} (load {load_at_start} at start, "
        f"{round(os.getloadavg()[0], 2)} at end), fastest of {max(1, req.passes)} pass(es) and "
        f"{req.recheck_rounds} recheck round(s), {req.timing.repeats} repeats after {req.timing.warmup} warm-up; "
        f"the other tables are those of {profile.meta.created_at}"
    )
    _write_layer_overhead(out_dir, measured, how)
    timings_path = out_dir / TIMINGS_FILE
    if timings_path.is_file():
        # bytes, not text: the csv module's \r\n line ends must survive the rewrite
        lines = timings_path.read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(b"layer_forward,")]
        new = out_dir / (TIMINGS_FILE + ".new")
        write_timings(new, measured.timings)
        timings_path.write_bytes(b"".join(kept) + b"".join(new.read_bytes().splitlines(keepends=True)[1:]))
        new.unlink()
    return out_dir
