"""Running (config, rate) points: one simulation each, reduced to one row; executed inline, on a
local process pool, or on a Ray cluster, with rows streamed to a CSV so a killed sweep can resume.

Every run is a pure function of (config, rate, base trace, settings): rows do not depend on the
executor, the number of workers or the completion order, which is what makes `--resume` and the
pool-vs-Ray comparison exact.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdsim.errors import PdsimError
from pdsim.metrics.stats import REPORTED_PERCENTILES, per_second, percentiles_linear, span_s
from pdsim.sweep.expand import Variant
from pdsim.sweep.rows import NOTES_KEY, ROW_FIELDS, RowWriter, normalize, parse_row, partial_path  # noqa: F401 - re-exported
from pdsim.sweep.steady import Window, stability
from pdsim.workload.arrivals import arrival_times_ns
from pdsim.workload.trace import MAX_ARRIVAL_NS, MAX_HASH_ID, TraceRequest, check_request_count

if TYPE_CHECKING:  # the engine is imported where a run starts, not with the sweep's CLI
    import pandas as pd

    from pdsim.engine.result import InstanceInfo, SimulationResult

ARRIVAL_MODES = ("scale", "poisson")
ID_SPREAD = 0x9E3779B97F4A7C15  # odd: its multiples below 2^64 are distinct modulo 2^64 (repeated 64-bit prefix ids)


@dataclass(frozen=True)
class Slo:
    ttft_ms: float
    tpot_ms: float


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs besides its config and rate; picklable, shared by all runs."""

    slo: Slo
    arrival: str = "scale"  # "scale": the dataset's arrival times rescaled; "poisson": new arrivals
    seed: int = 0
    time_limit_slack_s: float = 120.0  # simulate this long after the last arrival, then count the rest as misses
    # At high rates a finite trace arrives in a burst the cluster can absorb whole (all requests
    # batched at once), which is a transient, not a sustainable rate: traces are lengthened by
    # repeating the dataset until arrivals span at least this long.
    # sweep/search set this to steady.run_duration_s (at least 3 longest request lives).
    min_duration_s: float = 60.0
    # Warm-up and drain windows (steady.longest_life_s): requests arriving within this long of the
    # first or the last arrival are simulated but not scored. 0: every request is scored.
    warmup_s: float = 0.0
    ttft_mode: str = "prefill"  # what TTFT means in P/D (SimOptions.ttft_mode)
    profiles_root: str | None = None
    profile_dir: str | None = None


@dataclass(frozen=True)
class Job:
    variant: Variant
    rate_per_s: float
    # Arrivals span this many times what they span at the default length (the settings' min_duration_s, or the
    # dataset's own span at this rate where longer): search re-runs a probe whose stability the default length
    # cannot tell (steady.within_chance) longer.
    duration_x: int = 1

    @property
    def key(self) -> tuple[str, str, str]:
        return self.variant.label, rate_key(self.rate_per_s), str(self.duration_x)


def rate_key(rate_per_s: float) -> str:
    """A rate as it is written in the CSV; also the resume key, so it must round-trip."""
    return f"{rate_per_s:.6g}"


# -- traces ---------------------------------------------------------------------------------------

def arrivals_span_s(rate_per_s: float, duration_x: int, n_base: int, min_duration_s: float) -> float:
    """The least span of a run's arrivals: the minimum duration, or for a run lengthened duration_x times that
    many times the default run's span (the dataset alone may outlast the minimum: its requests are all run at
    least once)."""
    if duration_x == 1:
        return min_duration_s
    return duration_x * max(min_duration_s, n_base / rate_per_s)


def requests_at_rate(n_base: int, rate_per_s: float, min_duration_s: float) -> int:
    """How many requests trace_at_rate makes: the dataset's, or enough for arrivals to span min_duration_s."""
    return max(n_base, math.ceil(rate_per_s * min_duration_s))


def trace_at_rate(base: Sequence[TraceRequest], rate_per_s: float, arrival: str, seed: int,
                  min_duration_s: float = 0.0) -> list[TraceRequest]:
    """The base trace's lengths arriving at `rate_per_s` on average, for at least `min_duration_s`.

    scale: the base arrival times multiplied so the mean rate is `rate_per_s` (keeps the dataset's
    burstiness); poisson: exponential gaps drawn from `seed` (same seed, same trace), stretched so the mean
    rate is `rate_per_s` too.
    When n / rate is shorter than min_duration_s, the dataset is repeated (its lengths and, for
    scale, its arrival pattern) to ceil(rate x min_duration_s) requests. Prefix ids (`hash_ids`)
    travel with their request; a repeated copy gets ids of its own, so a repetition is not a
    prefix-cache hit that the real traffic would not have."""
    if rate_per_s <= 0 or not math.isfinite(rate_per_s):
        raise PdsimError(f"rate: expected a positive number of requests/s, got {rate_per_s}")
    n_base = len(base)
    n = requests_at_rate(n_base, rate_per_s, min_duration_s)
    check_request_count(n, f"rate {rate_per_s:g} req/s for at least {min_duration_s:g} s")
    # Within the run clock's range (with room for Poisson's spread), not wrapped past int64 ns.
    if (n - 1) / rate_per_s > 0.9 * MAX_ARRIVAL_NS / 1e9:
        raise PdsimError(f"rate {rate_per_s:g} req/s: {n:,} requests would arrive over {(n - 1) / rate_per_s:.3g} s, "
                         f"past the {MAX_ARRIVAL_NS / 1e9:.0e} s a run's clock holds; give a higher rate")
    lengths = [(base[i % n_base].input_toks, base[i % n_base].output_toks) for i in range(n)]
    if arrival == "poisson":
        times_ns = arrival_times_ns(np.random.default_rng(seed), n, rate_per_s, "poisson")
        if n > 1 and times_ns[-1] > 0:
            # Stretched to span (n - 1) / rate, as scale's arrivals are, so the probe offers the rate it is reported
            # at: as drawn, a seed's 60 s of arrivals came 0.86-1.10x the rate. The first and last fixed, the
            # arrivals between are still a Poisson process's (given their count, uniform order statistics).
            times_ns = np.rint(times_ns * ((n - 1) / rate_per_s * 1e9 / times_ns[-1])).astype(np.int64)
    elif arrival == "scale":
        base_ns = np.array([r.arrival_time_ns for r in base], dtype=np.float64) - base[0].arrival_time_ns
        span_ns = float(base_ns[-1])
        if n_base < 2 or span_ns <= 0:
            # All at once in the dataset: spread them evenly at the rate instead.
            times_ns = np.rint(np.arange(n) / rate_per_s * 1e9).astype(np.int64)
        else:
            # Copies follow each other one mean gap apart, then the whole is stretched to the rate.
            period_ns = span_ns * n_base / (n_base - 1)
            idx = np.arange(n)
            tiled_ns = base_ns[idx % n_base] + (idx // n_base) * period_ns
            factor = (n - 1) / rate_per_s * 1e9 / tiled_ns[-1]
            times_ns = np.rint(tiled_ns * factor).astype(np.int64)
    else:
        raise PdsimError(f"--arrival: expected one of {', '.join(ARRIVAL_MODES)}, got {arrival!r}")
    id_span = 1 + max((max(r.hash_ids) for r in base if r.hash_ids), default=-1)
    if (n - 1) // n_base * id_span + id_span - 1 > MAX_HASH_ID:
        # Ids of 64-bit hashes: each copy is shifted by a multiple of an odd 64-bit constant, wrapped, so that its
        # ids stay hashes (a copy meets another's id by chance only, as two real hashes do).
        id_span = ID_SPREAD
    out = []
    for i, ((inp, outp), t) in enumerate(zip(lengths, times_ns)):
        src = base[i % n_base]
        shift = (i // n_base) * id_span
        ids = tuple((h + shift) & MAX_HASH_ID for h in src.hash_ids) if shift else src.hash_ids
        out.append(TraceRequest(i, inp, outp, int(t), ids, src.hash_block_tokens))
    return out


# -- one run --------------------------------------------------------------------------------------

def run_job(job: Job, base_trace: Sequence[TraceRequest], settings: RunSettings) -> dict[str, Any]:
    """Simulate one (config, rate) point and reduce it to a row (see ROW_FIELDS)."""
    from pdsim.engine.cluster import SimOptions, simulate
    from pdsim.metrics.summary import requests_frame
    from pdsim.perf.interp import extrapolations_gathered

    v = job.variant
    trace = trace_at_rate(base_trace, job.rate_per_s, settings.arrival, settings.seed,
                          arrivals_span_s(job.rate_per_s, job.duration_x, len(base_trace), settings.min_duration_s))
    last_arrival_s = trace[-1].arrival_time_ns * 1e-9
    opts = SimOptions(
        seed=settings.seed, profiles_root=settings.profiles_root, profile_dir=settings.profile_dir,
        # A coarse timeline: the sweep keeps no samples, and each one costs a pass over the instances.
        sample_interval_s=max(1.0, last_arrival_s / 20),
        # Long enough for a drain-window request to finish in a stable run: what is still running
        # then marks the run unstable.
        max_sim_time_s=last_arrival_s + max(settings.time_limit_slack_s, 2 * settings.warmup_s),
        ttft_mode=settings.ttft_mode,
    )
    with extrapolations_gathered():  # they come back as the row's notes, not as every worker's warnings
        result = simulate(v.config(), trace, opts, source=v.label)
    df = requests_frame(result)
    row = summarize_run(job, df, settings.slo, settings.warmup_s)
    row["ttft_mode"] = settings.ttft_mode  # where the row's TTFT ends: the CSV read alone must say it
    row["estimated_profile"] = int(any(info.estimated_profile for info in result.infos))
    row.update(memory_columns(result))
    row[NOTES_KEY] = sorted({n for inst in result.instances for n in inst.predictor.extrapolation_notes()}
                            | set(result.notes) | set(unstartable_notes(v.label, result.infos)))
    return row


def unstartable_notes(label: str, infos: Sequence[InstanceInfo]) -> list[str]:
    """A configuration whose KV cache holds no request of the model's max length, which vLLM refuses to start
    as written (engine/build.py _max_len_note): said with the --max-model-len it would take."""
    short = [info for info in infos if info.max_model_len_unheld]
    if not short:
        return []
    fewest = min(info.kv_tokens for info in short)
    return [f"{label}: a KV cache of {fewest:,} tokens holds no request of the model's max length "
            f"({short[0].max_model_len_unheld:,}): vLLM starts it only with --max-model-len {fewest:,} or less "
            "(here longer requests are rejected)"]


def memory_columns(result: SimulationResult) -> dict[str, Any]:
    """Per role, the smallest KV capacity per GPU (GiB) of its instances and the largest share of its own KV
    cache any of them held at once; a colocated instance counts for both roles. NaN for a role the config
    lacks (an instance has at least one block: build.py refuses less)."""
    out: dict[str, Any] = {}
    for role in ("prefill", "decode"):
        held = [(info.kv_capacity_gb, inst.kv.peak_used / info.num_kv_blocks)
                for inst, info in zip(result.instances, result.infos) if info.pd_type in (role, None)]
        out[f"{role}_kv_capacity_gb"] = min((cap for cap, _ in held), default=math.nan)
        out[f"{role}_peak_kv_frac"] = max((frac for _, frac in held), default=math.nan)
    out["preemptions"] = sum(inst.sched.num_preemptions for inst in result.instances)
    return out


def summarize_run(job: Job, df: pd.DataFrame, slo: Slo, warmup_s: float = 0.0) -> dict[str, Any]:
    """Counts and throughput over the whole run; latencies and attainment over the requests that
    arrived in the scored window (steady.Window); stability over that window."""
    v = job.variant
    window = Window.of(df.arrival_s.to_numpy(dtype=float), warmup_s)
    steady = stability(df, window)
    in_window = window.holds(df.arrival_s.to_numpy(dtype=float))
    # Arrivals too sparse to have any inside the window: all are scored.
    held = in_window if in_window.any() else np.ones(len(df), dtype=bool)
    scored = df[held]
    all_done = df[df.status == "finished"]
    n = len(scored)
    done = scored[scored.status == "finished"]
    ttft = done.ttft_ms.to_numpy(dtype=float)
    tpot = done.tpot_ms.to_numpy(dtype=float)
    e2e = done.e2e_ms.to_numpy(dtype=float)
    # Unfinished and rejected requests miss every SLO; a one-token output has no TPOT to miss.
    ok_ttft = ttft <= slo.ttft_ms
    ok_tpot = np.isnan(tpot) | (tpot <= slo.tpot_ms)
    # Requests that ran alone had a lone request's latency (search.lone_requests_miss). Only those inside
    # the window count: a lower rate's window holds them too, where all scored at this rate may not be.
    alone = _alone(df) & in_window
    lone = alone[held & (df.status == "finished").to_numpy()]  # in the order of `done`
    alone_missed = int((lone & ~(ok_ttft & ok_tpot)).sum())
    span = span_s(df.arrival_s.min(), all_done.finish_s.max()) if len(all_done) else 0.0
    tok_s = per_second(float(all_done.output_toks.sum()), span)
    tpot_mean = float(np.nanmean(tpot)) if np.any(~np.isnan(tpot)) else math.nan
    return {
        "label": v.label, "ratio": v.ratio, "num_prefill": v.num_prefill, "num_decode": v.num_decode,
        "tp_prefill": v.tp_prefill, "tp_decode": v.tp_decode, "pp_prefill": v.pp_prefill, "pp_decode": v.pp_decode,
        "dp_decode": v.dp_decode, "ep_decode": v.ep_decode, "gpus": v.gpus,
        "rate_per_s": rate_key(job.rate_per_s), "duration_x": job.duration_x,
        "rate_per_s_per_gpu": job.rate_per_s / v.gpus,
        "requests": len(df), "finished": len(all_done), "unfinished": int((df.status == "unfinished").sum()),
        "rejected": int((df.status == "rejected").sum()),
        **{f"{name}_p{p}_ms": x for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e))
           for p, x in zip(REPORTED_PERCENTILES, percentiles_linear(values, REPORTED_PERCENTILES))},
        "throughput_req_s": per_second(len(all_done), span),
        "output_tok_s": tok_s, "output_tok_s_per_gpu": tok_s / v.gpus,
        # What one user sees while its request streams: tokens per second of its own decode.
        "output_tok_s_per_user": 1e3 / tpot_mean if tpot_mean > 0 else math.nan,
        "scored": n, "attain_ttft": float(ok_ttft.sum()) / n, "attain_tpot": float(ok_tpot.sum()) / n,
        "attain_both": float((ok_ttft & ok_tpot).sum()) / n,
        "alone": int(alone.sum()), "alone_missed": alone_missed,
        **steady, "last_finish_s": _last_finish_s(df),
    }


def _alone(df: pd.DataFrame) -> np.ndarray:
    """Per request (in df's row order): whether it finished and its life, arrival to finish, overlapped no
    other request's anywhere in the cluster. Such a request saw no load: its latency is a lone request's.
    A request still running at the end occupies the cluster from its arrival on; a rejected one never
    entered it (it overlaps nothing, and is not alone either)."""
    arrival = df.arrival_s.to_numpy(dtype=float)
    status = df.status.to_numpy()
    finished = status == "finished"
    end = np.where(finished, df.finish_s.to_numpy(dtype=float), np.where(status == "rejected", arrival, np.inf))
    order = np.argsort(arrival, kind="stable")
    a, f = arrival[order], end[order]
    occupying = (f > a) | finished[order]  # a rejection takes no time in the cluster
    # The latest end among the earlier arrivals, and the first later arrival that occupies the cluster.
    earlier_end = np.concatenate([[-np.inf], np.maximum.accumulate(np.where(occupying, f, -np.inf))[:-1]])
    starts = np.where(occupying, a, np.inf)
    next_start = np.concatenate([np.minimum.accumulate(starts[::-1])[::-1][1:], [np.inf]])
    alone = np.empty(len(a), dtype=bool)
    alone[order] = (earlier_end <= a) & (next_start >= f) & finished[order]
    return alone


def _last_finish_s(df: pd.DataFrame) -> float:
    finish = df.finish_s.to_numpy(dtype=float)
    return float(np.nanmax(finish)) if np.any(~np.isnan(finish)) else 0.0


# -- executors ------------------------------------------------------------------------------------

# Per worker process: the base trace, sent once by the pool initializer rather than with every job.
_WORKER_STATE: dict[str, Any] = {}


# A pool worker outlives a sweep killed outright (SIGKILL, the OOM killer, a batch system's kill): it
# finishes its run, then waits for ever on the task queue, whose other end its sibling workers hold
# open, keeping its memory. Each worker checks this often that it still has the parent it started with and,
# under the forkserver start method (the fork server is its parent and outlives the sweep), that the sweep's
# process still exists.
PARENT_CHECK_S = 1.0


def _exit_with_sweep(parent_pid: int, sweep_pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(1)
        if sweep_pid != parent_pid:
            try:
                os.kill(sweep_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except OSError:  # exists, not ours to signal
                pass


def _init_worker(base_trace: Sequence[TraceRequest], settings: RunSettings, sweep_pid: int | None = None) -> None:
    _WORKER_STATE["trace"] = base_trace
    _WORKER_STATE["settings"] = settings
    if sweep_pid is not None:
        # Ctrl-C reaches the whole process group: the sweep stops the workers (PoolExecutor.close). A worker
        # that took it would print a traceback when idle, or go on to its next run when busy.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The sweep's own SIGTERM handler (pdsim.cli.main), inherited through the fork, would turn the SIGTERM
        # with which close() stops a worker into an exception the pool hands back, and the worker would go on.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if hasattr(signal, "pthread_sigmask"):  # forked while the sweep held SIGINT and SIGTERM back (_sigint_held)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        threading.Thread(target=_exit_with_sweep, args=(os.getppid(), sweep_pid), name="pdsim-sweep-check",
                         daemon=True).start()


def _run_in_worker(job: Job) -> dict[str, Any]:
    return run_job(job, _WORKER_STATE["trace"], _WORKER_STATE["settings"])


class Executor:
    """Runs jobs, yielding (job, row) as they complete, in any order."""

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InlineExecutor(Executor):
    def __init__(self, base_trace: Sequence[TraceRequest], settings: RunSettings) -> None:
        self.trace, self.settings = base_trace, settings

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        for job in jobs:
            yield job, run_job(job, self.trace, self.settings)


class PoolExecutor(Executor):
    """A local process pool, kept across calls so search rounds do not pay the start-up again."""

    def __init__(self, base_trace: Sequence[TraceRequest], settings: RunSettings, workers: int) -> None:
        self.pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                        initargs=(list(base_trace), settings, os.getpid()))
        self.interrupted = False

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        pending: dict[Future, Job] = {}
        try:
            with _sigint_held():  # a Ctrl-C held here is raised as it ends: runs submitted then are stopped (close)
                for job in jobs:
                    pending[self.pool.submit(_run_in_worker, job)] = job
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
        finally:
            for fut in pending:
                fut.cancel()
            self.interrupted = self.interrupted or bool(pending)

    def close(self) -> None:
        if self.interrupted:
            # Ctrl-C or an error left runs unfinished: nobody wants them, yet a worker would finish the run it
            # holds and the one queued behind it.
            terminate = getattr(self.pool, "terminate_workers", None)  # Python >= 3.14
            if terminate is not None:
                terminate()
            else:
                for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                    process.terminate()
        self.pool.shutdown(cancel_futures=True)


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Holds Ctrl-C back while the pool takes jobs, which is where it forks its workers: one that came during
    a fork was raised inside the fork's callbacks, where CPython prints it and drops it, and the sweep ran on
    (one that came during the pool's bookkeeping left its manager thread to fail with a traceback). Held, it
    interrupts as soon as the submissions are done."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # SIGTERM is raised as Ctrl-C
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class RayExecutor(Executor):
    """Ray tasks; the base trace goes into the object store once and every task reads it from there."""

    def __init__(self, base_trace: Sequence[TraceRequest], settings: RunSettings, address: str | None,
                 num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise PdsimError("--ray-address: ray is not installed; pip install 'pdsim[ray]'") from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "include_dashboard": False}
            if num_cpus is not None and address in (None, "local"):
                kwargs["num_cpus"] = num_cpus
            if address == "local":
                kwargs["address"] = None
            # Workers import pdsim from the same checkout when the cluster shares it; otherwise it
            # must be installed on every node.
            if kwargs["address"] not in (None, "auto"):
                _check_reachable(address)
            try:
                ray.init(**kwargs)
            except ValueError as e:  # Ray's words for an address it cannot parse
                raise PdsimError(f"--ray-address {address!r}: {e} (expected 'auto', 'local' or HOST:PORT)") from None
        self.trace_ref = ray.put(list(base_trace))
        self.settings = settings
        self.remote = ray.remote(run_job)

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        refs = {self.remote.remote(job, self.trace_ref, self.settings): job for job in jobs}
        try:
            while refs:
                ready, _ = self.ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    yield refs.pop(ref), self.ray.get(ref)
        finally:
            for ref in refs:
                self.ray.cancel(ref)

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A Ray HOST:PORT that does not answer is said in seconds; ray.init retries it for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # Ray words what it cannot parse
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise PdsimError(f"--ray-address {address!r}: nothing answers at {host}:{port} within {timeout_s:g} s ({e}); "
                         "start the cluster with `ray start --head` there, or use 'local'") from None


def make_executor(base_trace: Sequence[TraceRequest], settings: RunSettings, workers: int | None,
                  ray_address: str | None, ray_num_cpus: int | None = None) -> Executor:
    if ray_address is not None:
        return RayExecutor(base_trace, settings, ray_address, ray_num_cpus)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1:
        return InlineExecutor(base_trace, settings)
    return PoolExecutor(base_trace, settings, workers)


def run_sweep(jobs: Sequence[Job], executor: Executor, out_csv: Path, resume: bool,
              on_row: Callable[[int, int], None] | None = None, commit: bool = True,
              settings: dict[str, Any] | None = None, notes: set[str] | None = None,
              kept: list[int] | None = None) -> list[dict[str, Any]]:
    """Run the jobs not already in `out_csv` (with resume), stream their rows to its partial file,
    and return all rows in job order (configs as expanded, rates ascending), rounded as stored.
    commit: move the partial file to `out_csv` when every job has run (else the caller does).
    settings: what the rows depend on besides their key, kept beside the CSV; a resume with other ones is refused.
    notes: gathers what the runs said besides their rows; kept: gets the number of jobs resumed, not run."""
    writer = RowWriter(out_csv, ROW_FIELDS, resume, settings)
    todo = [j for j in jobs if j.key not in writer.rows]
    done = len(jobs) - len(todo)
    if kept is not None:
        kept.append(done)
    try:
        if on_row:
            on_row(done, len(jobs))
        for _job, row in executor.run(todo):
            writer.add(row)
            done += 1
            if on_row:
                on_row(done, len(jobs))
    finally:
        writer.close()
        if notes is not None:
            notes.update(writer.notes)
    writer.keep_only({j.key for j in jobs})
    if commit:
        os.replace(writer.partial, out_csv)
    return [normalize(writer.rows[j.key]) for j in jobs]
