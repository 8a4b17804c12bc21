"""`pdsim profile --check`: does the profile predict a whole forward pass?

On the device the profile was measured on, time the full forward pass of the random model (all
layers stacked, `model.forward`) for prefill steps of N tokens and decode steps of B requests
at KV length L, and compare with what `StepTimePredictor` composes from the profile's per-op
tables. A large error means the per-op tables miss something the simulator would then miss too
(fusion, cache effects, dispatch overhead between ops).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pdsim.errors import PdsimError
from pdsim.hardware import get_hardware
from pdsim.models import load_model
from pdsim.perf.interp import ExtrapolationWarning, extrapolations_gathered
from pdsim.perf.predictor import StepTimePredictor
from pdsim.perf.profile import read_profile
from pdsim.profiler.model import (
    RandomModel,
    StepInputs,
    decode_inputs,
    forward,
    prefill_inputs,
    uneven_decode_inputs,
)
from pdsim.profiler.progress import Progress
from pdsim.profiler.timing import Timer, TimingConfig, capture_cuda_graph

PREFILL_TOKENS = (128, 256, 512, 1024, 2048)
DECODE_BATCHES = (1, 4, 8, 16, 32)
DECODE_KV = 512


@dataclass(frozen=True)
class CheckRow:
    kind: str  # "prefill" | "decode" | "decode_uneven"
    tokens: int  # prefill: new tokens; decode: batch size
    kv: int  # decode: KV tokens per request (uneven: of all but the first); prefill: 0
    measured_ms: float
    predicted_ms: float
    spread_rel: float  # (p90-p10)/median of the measured forward
    in_grid: bool  # False when the prediction extrapolated beyond the profiled grid
    # CUDA: measured_ms is the forward replayed from a CUDA graph, as vLLM runs its steps (no
    # launch gaps); this is the same forward launched op by op. None on the CPU.
    eager_ms: float | None = None
    # CUDA: the same graph replayed back to back for SUSTAINED_S, as an engine under load runs its
    # steps; compute-bound forwards then run at the clock the GPU's power limit allows, below the
    # boost clock an isolated forward (measured_ms) gets. None on the CPU.
    sustained_ms: float | None = None
    kv_long: int | None = None  # decode_uneven: the first request's KV tokens

    @property
    def rel_error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def sustained_rel_error(self) -> float | None:
        if self.sustained_ms is None:
            return None
        return (self.predicted_ms - self.sustained_ms) / self.sustained_ms

    def label(self) -> str:
        if self.kind == "prefill":
            return f"prefill N={self.tokens}"
        return f"decode B={self.tokens} L={self.kv}" + (f",{self.kv_long}" if self.kv_long else "")


@dataclass
class CheckRequest:
    model: str
    profile_dir: Path
    device: str
    timing: TimingConfig
    threads: int | None
    prefill_tokens: tuple[int, ...] = PREFILL_TOKENS
    decode_batches: tuple[int, ...] = DECODE_BATCHES
    decode_kv: int = DECODE_KV
    attention_backend: str = "auto"
    elementwise: str = "auto"
    passes: int = 1  # time every case this many times, interleaved; the fastest median is kept
    # What the command line said of the profile beside --profile-dir (tp, dtype, hardware): it must be that one.
    stated: dict[str, object] = field(default_factory=dict)


@dataclass
class CheckResult:
    rows: list[CheckRow]
    # One line per kind of profile table the predictions extrapolated (`summarise_extrapolations`).
    notes: list[str] = field(default_factory=list)


def run_check(req: CheckRequest, progress_enabled: bool = False) -> CheckResult:
    profile = read_profile(req.profile_dir)
    meta = profile.meta
    if meta.model != req.model:
        raise PdsimError(f"{req.profile_dir}: profile is for model {meta.model!r}, not {req.model!r}")
    for key, value in req.stated.items():
        if getattr(meta, key) != value:
            raise PdsimError(f"--{key} {value}: {req.profile_dir} is a profile of {key} {getattr(meta, key)}, which "
                             "the check measures against; give that, or leave the option out")
    spec = load_model(req.model)
    # No engine runs a request past the model's context; checking there would only measure memory
    # the real run never needs (and --check-kv 10^7 x a decode batch does not fit).
    context = spec.max_model_len
    prefill = max(req.prefill_tokens)
    if prefill > context:
        raise PdsimError(f"--check-prefill {prefill}: past {req.model}'s context of {context} tokens "
                         "(vLLM's max_model_len for its config)")
    if req.decode_kv + 1 > context:
        raise PdsimError(f"--check-kv {req.decode_kv}: a decode step at that KV length holds {req.decode_kv + 1} "
                         f"tokens, past {req.model}'s context of {context} (vLLM's max_model_len for its config)")
    if req.device == "cpu" and req.threads:
        torch.set_num_threads(req.threads)
    recorded = meta.device.get("threads")
    if req.device == "cpu" and recorded and recorded != torch.get_num_threads():
        raise PdsimError(
            f"{req.profile_dir}: profile measured with {recorded} threads, check runs with "
            f"{torch.get_num_threads()}; pass --threads {recorded}"
        )
    predictor = StepTimePredictor(profile, spec, meta.tp, get_hardware(meta.hardware))
    max_tokens = max(profile.dense["qkv_proj"].xs)
    max_batch = max(profile.attention_decode.xs)
    max_kv = max(profile.attention_decode.ys)

    m = RandomModel(
        spec,
        meta.tp,
        meta.dtype,
        req.device,
        max_positions=max([*req.prefill_tokens, 4 * req.decode_kv + 1]) + 1,
        attention_backend=req.attention_backend,
        elementwise=req.elementwise,
    )
    timer = Timer(req.device, req.timing)
    launched = Timer(req.device, req.timing, spin=False)  # eager: host launch gaps included
    # Uneven decode batches (one request at 4x the KV of the others, within the profile's grid) check
    # the decode skew: a uniform lookup at the batch's mean KV would miss what the long request adds.
    long_kv = min(4 * req.decode_kv, int(max_kv), context - 1)
    cases = [("prefill", n, 0) for n in req.prefill_tokens] + [
        ("decode", b, req.decode_kv) for b in req.decode_batches
    ] + [("decode_uneven", b, req.decode_kv) for b in req.decode_batches if b >= 2 and long_kv > req.decode_kv]
    passes = max(1, req.passes)
    progress = Progress(len(cases) * passes, float(len(cases) * passes), progress_enabled)
    best: dict[int, tuple[float, float]] = {}  # case -> (median us, spread) of the fastest pass
    eager: dict[int, float] = {}
    sustained: dict[int, float] = {}
    try:
        for _ in range(passes):
            for i, (kind, n, kv) in enumerate(cases):
                if kind == "prefill":
                    step = prefill_inputs(m, n)
                elif kind == "decode":
                    step = decode_inputs(m, n, kv)
                else:
                    step = uneven_decode_inputs(m, n, kv, long_kv)
                if req.device == "cuda":
                    timing = launched.time([lambda step=step: forward(m, step)])
                    eager[i] = min(eager.get(i, timing.median_us), timing.median_us)
                    replay = _graph_replay(m, step)
                    timing = timer.time([replay])
                    us = sustained_us(replay, timing.median_us)
                    sustained[i] = min(sustained.get(i, us), us)
                else:
                    timing = timer.time([lambda step=step: forward(m, step)])
                del step
                if i not in best or timing.median_us < best[i][0]:
                    best[i] = (timing.median_us, timing.spread_rel)
                progress.advance(f"check {kind} {n}", 1.0)
    finally:
        progress.close()
    # One GPU runs one shard of a tp > 1 model: there is nothing to all-reduce with, so the
    # prediction is compared without its all-reduces.
    one_shard = meta.tp > 1 and (req.device != "cuda" or torch.cuda.device_count() < meta.tp)
    rows: list[CheckRow] = []
    notes: list[str] = []
    with _extrapolations_summarised(notes):
        for i, (kind, n, kv) in enumerate(cases):
            if kind == "prefill":
                predicted = predictor.step_time_s([(n, 0)], 0, 0)
                in_grid = n <= max_tokens
            elif kind == "decode":
                predicted = predictor.step_time_s([], n, n * kv)
                in_grid = n <= max_batch and kv <= max_kv
            else:
                predicted = predictor.step_time_s([], n, long_kv + (n - 1) * kv, long_kv)
                in_grid = n <= max_batch and long_kv <= max_kv
            if one_shard:
                predicted -= predictor.allreduce_s(n, 1 if kind == "prefill" else n)
            median_us, spread = best[i]
            eager_ms = eager[i] / 1e3 if i in eager else None
            sustained_ms = sustained[i] / 1e3 if i in sustained else None
            rows.append(CheckRow(kind, n, kv, median_us / 1e3, predicted * 1e3, spread, in_grid, eager_ms, sustained_ms,
                                 long_kv if kind == "decode_uneven" else None))
    return CheckResult(rows, notes)


@contextmanager
def _extrapolations_summarised(notes: list[str]) -> Iterator[None]:
    """Gather the ExtrapolationWarnings of the block into `notes` (`summarise_extrapolations`).

    Checking steps beyond the profiled grid is deliberate here, so a raw warning per table (one
    per dense op, with file and line) is noise. Only the predictions are wrapped: warnings from
    the measurements are shown as usual, and anything else caught here is re-issued.
    """
    caught: list[ExtrapolationWarning] = []
    with extrapolations_gathered(caught):
        yield
    notes.extend(summarise_extrapolations(caught))


def summarise_extrapolations(caught: Iterable[ExtrapolationWarning]) -> list[str]:
    """One "note:" line per kind of profile table (dense.csv, attention_decode.csv, ...), axis and
    profiled range that lookups left, naming the ops; instead of one warning per table.

    A table warns only at its first lookup outside the grid, so the value shown is the first one
    seen, not necessarily the farthest (the check's table flags every extrapolated step).
    """
    groups: dict[tuple[str, str, float, float], tuple[list[str], list[float]]] = {}
    unstructured: list[str] = []
    for w in caught:
        if w.table is None or w.axis is None or w.value is None or w.lo is None or w.hi is None:
            unstructured.append(str(w))  # raised without the table's details: show its text as it is
            continue
        kind, _, op = w.table.partition(":")
        kind = kind.removesuffix(".csv")
        names, values = groups.setdefault((kind, w.axis, w.lo, w.hi), ([], []))
        if (op or kind) not in names:
            names.append(op or kind)
        values.append(w.value)
    lines = []
    for (kind, axis, lo, hi), (names, values) in groups.items():
        first = ", ".join(f"{v:g}" for v in sorted(set(values)))
        where = f"the profiled {axis} range [{lo:g}, {hi:g}] (first at {axis}={first})"
        if names == [kind]:  # a table of one op (attention): its name says it all
            lines.append(f"note: the {kind} table was extrapolated beyond {where}")
        else:
            ops = "op was" if len(names) == 1 else "ops were"
            lines.append(f"note: {len(names)} {kind} {ops} extrapolated beyond {where}: {', '.join(names)}")
    lines += [f"note: {text}" for text in unstructured]
    return lines


SUSTAINED_S = 2.0  # back-to-back replays before the timed window: clocks settle within a second
SUSTAINED_WINDOW_S = 0.5


def sustained_us(replay: Callable[[], object], single_us: float, heat_s: float = SUSTAINED_S) -> float:
    """Mean us of `replay` in a window of SUSTAINED_WINDOW_S of back-to-back calls after `heat_s` of the same."""
    calls = max(1, round(SUSTAINED_WINDOW_S * 1e6 / max(single_us, 1.0)))
    end = time.perf_counter() + heat_s
    while time.perf_counter() < end:
        for _ in range(calls):
            replay()
        torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        replay()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) * 1e3 / calls


def _graph_replay(m: RandomModel, step: StepInputs) -> Callable[[], object]:
    """The forward captured once in a CUDA graph (after two warm-up forwards)."""
    def step_forward() -> object:
        return forward(m, step)

    return capture_cuda_graph(step_forward, warmup=[step_forward] * 2).replay


def format_table(rows: list[CheckRow]) -> str:
    graphs = any(r.eager_ms is not None for r in rows)
    loaded = any(r.sustained_ms is not None for r in rows)
    extra_head = f" {'eager ms':>10}" if graphs else ""
    extra_head += f" {'sustained ms':>13} {'vs sustained':>13}" if loaded else ""
    lines = [f"{'step':<22} {'measured ms':>12} {'predicted ms':>13} {'rel error':>10} {'spread':>8}{extra_head}"]
    for r in rows:
        flag = "" if r.in_grid else "  (outside the profiled grid: extrapolated)"
        extra = f" {r.eager_ms:10.3f}" if r.eager_ms is not None else ""
        if r.sustained_ms is not None:
            extra += f" {r.sustained_ms:13.3f} {r.sustained_rel_error:+13.1%}"
        lines.append(
            f"{r.label():<22} {r.measured_ms:12.3f} {r.predicted_ms:13.3f} {r.rel_error:+10.1%} "
            f"{r.spread_rel:8.1%}{extra}{flag}"
        )
    if graphs:
        lines.append("measured: the forward replayed from a CUDA graph (as vLLM runs it); eager: launched op by op")
    if loaded:
        lines.append(f"sustained: the same graph replayed back to back for {SUSTAINED_S:g} s first, as an engine under "
                     "load runs its steps (GPU clocks then settle under the power limit); vs sustained: the "
                     "prediction's error against it")
    if any(r.kind == "decode_uneven" for r in rows):
        lines.append("L=s,l: an uneven decode batch, one request at l cached tokens and the others at s "
                     "(the decode skew)")
    for kind in ("prefill", "decode", "decode_uneven"):
        errs = [abs(r.rel_error) for r in rows if r.kind == kind]
        if errs:
            lines.append(f"{kind}: max |rel error| {max(errs):.1%}, mean {sum(errs) / len(errs):.1%}")
        loaded_errs = [abs(r.sustained_rel_error) for r in rows if r.kind == kind and r.sustained_ms is not None]
        if loaded_errs:
            lines.append(f"{kind} vs sustained: max |rel error| {max(loaded_errs):.1%}, "
                         f"mean {sum(loaded_errs) / len(loaded_errs):.1%}")
    return "\n".join(lines)
