"""Replay a measured run in the simulator and compare the two, statistic by statistic."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.config import ClusterConfig
from pdsim.engine.cluster import SimOptions, SimulationResult, simulate
from pdsim.errors import ConfigError, PdsimError
from pdsim.metrics.stats import per_second, percentiles_interpolated, percentiles_linear, sorted_by_value, span_s
from pdsim.metrics.summary import itl_samples, not_finished_reasons, reason_text, requests_frame
from pdsim.outputs import atomic_path
from pdsim.validate.measured_run import MeasuredRun
from pdsim.workload.trace import TraceRequest

STATS = ("mean", "p50", "p90", "p95", "p99")
METRICS = (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("itl_ms", "ITL (ms)"), ("e2e_ms", "E2E latency (ms)"),
           ("queue_ms", "queueing (ms)"), ("sched_to_token_ms", "sched. to 1st token (ms)"))
# The two parts of TTFT where the engine stamped its first schedule (vLLM's scheduled_ts).
SCHEDULE_SPLIT = ("queue_ms", "sched_to_token_ms")
# Up to this (ms) a measured time is zero for a relative difference: vLLM stamps scheduled_ts 2-8 us after
# queued_ts when it schedules a request in the same loop iteration (the MoE run's median wait is 4.4 us),
# its own bookkeeping, not a wait; every engine step is far longer.
NEGLIGIBLE = 0.1


def _compared(measured: MeasuredRun) -> list[tuple[str, str]]:
    """The metrics the run can be compared on: ITL only with per-token gaps; TTFT's two parts (the wait
    before the first schedule, then the time to the first token) only where the engine stamped it."""
    have_split = "queue_ms" in measured.requests.columns and measured.requests.queue_ms.notna().any()
    return [(key, label) for key, label in METRICS
            if (key != "itl_ms" or measured.itl_ms is not None) and (key not in SCHEDULE_SPLIT or have_split)]


def trace_of(measured: MeasuredRun) -> list[TraceRequest]:
    """The measured requests as a simulator trace: same lengths, same arrival times."""
    df = measured.requests
    ids = measured.prefix_ids or [()] * len(df)
    block = measured.prefix_block_tokens if measured.prefix_ids else 0
    return [
        TraceRequest(request_id=i, input_toks=int(r.input_toks), output_toks=int(r.output_toks),
                     arrival_time_ns=int(round(r.arrival_s * 1e9)), hash_ids=ids[i], hash_block_tokens=block)
        for i, r in enumerate(df.itertuples(index=False))
    ]


def replay(cfg: ClusterConfig, measured: MeasuredRun, opts: SimOptions | None = None,
           source: str = "<config>", on_progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    opts = opts or SimOptions()
    if measured.concurrency is not None and opts.concurrency is None:
        opts.concurrency = measured.concurrency
    try:
        return simulate(cfg, trace_of(measured), opts, source, on_progress=on_progress)
    except ConfigError as e:  # sizing the instances: a value meta.json put into the config may not fit there
        from pdsim.validate.recorded import applied_from_meta, shown_key

        named = {key: value for key, value in measured.applied_from_meta.items() if shown_key(key) in str(e)}
        if not named:
            raise
        raise ConfigError(f"{e} {applied_from_meta(measured, named)}") from e


def _stats(values: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    per_request = weights is None
    if weights is None:
        weights = np.ones(values.shape)
    keep = ~np.isnan(values) & (weights > 0)
    values, weights = values[keep], weights[keep]
    if values.size == 0:
        return dict.fromkeys(STATS, np.nan)
    values, weights = sorted_by_value(values, weights)
    weights = weights.astype(float)
    out = {"mean": float(np.average(values, weights=weights))}
    ps = [int(s[1:]) for s in STATS[1:]]
    if per_request:  # one value per request: numpy's percentiles, as vllm bench serve and aiperf print them
        out.update(zip(STATS[1:], percentiles_linear(values, ps)))
        return out
    # Interpolated percentiles on the weighted empirical CDF, so that an ITL step shared by n
    # requests counts n times (docs/architecture.md: why not the simulator's nearest rank).
    out.update(zip(STATS[1:], percentiles_interpolated(values, weights, ps)))
    return out


def simulated_requests(measured: MeasuredRun, result: SimulationResult) -> pd.DataFrame:
    """The finished simulated requests, with TTFT and E2E from the origin the measured run uses."""
    sim = requests_frame(result)
    if measured.latency_origin == "pickup":
        picked = {r.id: r.picked_up_s for r in result.requests}
        wait_ms = (sim.request_id.map(picked).astype(float) - sim.arrival_s) * 1e3
        sim = sim.assign(ttft_ms=sim.ttft_ms - wait_ms, e2e_ms=sim.e2e_ms - wait_ms, queue_ms=sim.queue_ms - wait_ms)
    sim = sim.assign(sched_to_token_ms=sim.ttft_ms - sim.queue_ms)
    return sim[sim.status == "finished"]


def lost_requests(result: SimulationResult) -> str | None:
    """How many replayed requests did not finish (rejected or unfinished) and why, or None."""
    lost = [r for r in result.requests if r.status != "finished"]
    if not lost:
        return None
    # Counted by kind of reason (each names its own request's lengths: N, and their range).
    lost_df = pd.DataFrame([(r.status, r.reason) for r in lost], columns=["status", "reason"])
    why = "; ".join(reason_text(item) for item in not_finished_reasons(lost_df))
    return f"{len(lost)} of {len(result.requests)} replayed requests did not finish in the replay ({why})"


def replay_losses(result: SimulationResult) -> str | None:
    """Replayed requests that did not finish, which both sides' figures leave out: a line saying how many and why,
    or None."""
    lost = lost_requests(result)
    if lost is None:
        return None
    return (f"{lost}; they are left out of both sides' figures (ITL aside: its gaps are pooled over every request, "
            "not kept per request)")


def requests_path(output: Path) -> Path:
    """Beside the comparison CSV: the request-by-request comparison (<stem>_requests.csv)."""
    return output.with_name(f"{output.with_suffix('').name}_requests.csv")


def per_request(measured: MeasuredRun, result: SimulationResult) -> pd.DataFrame:
    """Each replayed request, measured beside simulated (its latencies from the origin the run uses): the
    statistics say how far apart the runs are, this says where (by arrival, length, load)."""
    mea = measured.requests.reset_index(drop=True)
    sim = simulated_requests(measured, result).set_index("request_id")
    status = {r.id: r.status for r in result.requests}
    out = pd.DataFrame({"request_id": np.arange(len(mea)), "arrival_s": mea.arrival_s.to_numpy(dtype=float),
                        "input_toks": mea.input_toks.to_numpy(), "output_toks": mea.output_toks.to_numpy()})
    split = [key for key, _ in _compared(measured) if key in SCHEDULE_SPLIT]  # TTFT's parts, where stamped
    for key in ("ttft_ms", "tpot_ms", "e2e_ms", *split):
        out[f"measured_{key}"] = mea[key].to_numpy(dtype=float)
        out[f"simulated_{key}"] = out.request_id.map(sim[key]).astype(float)
    out["simulated_status"] = out.request_id.map(status)
    # compare() leaves out a request the measured engine or the replay did not finish, on both sides.
    out["in_comparison"] = (_finished(mea) & (out.simulated_status == "finished").to_numpy()).astype(int)
    return out


def _finished(mea: pd.DataFrame) -> np.ndarray:
    """The measured requests compared: those with a first token and an end (a request stamped with its last token
    but not its first failed or was aborted in the engine, and has no TTFT or TPOT)."""
    return (mea.e2e_ms.notna() & mea.ttft_ms.notna()).to_numpy()


def finished_ids(result: SimulationResult) -> set[int]:
    """The replayed requests that finished (their ids: rows of the measured run)."""
    return {r.id for r in result.requests if r.status == "finished"}


def _compared_done(measured: MeasuredRun, result: SimulationResult, among: set[int] | None) -> np.ndarray:
    """Which measured requests (rows) are compared: finished by the engine, and by the replay (or in `among`)."""
    mea = measured.requests
    done = _finished(mea)
    if not done.any():
        raise PdsimError(f"{measured.source}: no request of the measured run finished (none has both a first token "
                         "and an end-to-end latency): nothing to compare")
    done = done & np.isin(np.arange(len(mea)), sorted(finished_ids(result) if among is None else among))
    if not done.any():
        raise PdsimError(f"{measured.source}: no request the measured run finished finished in the replay too: "
                         "nothing to compare")
    return done


def _sides(measured: MeasuredRun, result: SimulationResult, sim: pd.DataFrame, done: np.ndarray
           ) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Per compared metric: (key, label, measured values, simulated values, the simulated values' weights or None),
    over the same requests on both sides: those `done` marks that the engine stamped the metric for (a request
    without scheduled_ts has no queueing of its own). ITL: every measured gap, and each simulated step weighted by
    the requests it gave a token. sim: simulated_requests(measured, result)."""
    mea = measured.requests.reset_index(drop=True)  # a replayed request's id is its row here
    for key, label in _compared(measured):
        if key == "itl_ms":
            values, weights = itl_samples(result)
            yield key, label, np.asarray(measured.itl_ms, dtype=float), values * 1e3, weights
        else:
            stamped = done & mea[key].notna().to_numpy()
            yield (key, label, mea[key].to_numpy()[stamped],
                   sim[sim.request_id.isin(np.flatnonzero(stamped).tolist())][key].to_numpy(), None)


def compare(measured: MeasuredRun, result: SimulationResult, among: set[int] | None = None) -> pd.DataFrame:
    """One row per (metric, statistic): measured, simulated, and the difference in %. among: the replayed
    requests to compare over, where several replays are compared with one measurement (those each finished);
    default: those this replay finished."""
    # A request the measured engine did not finish is left out of both sides (it was still replayed), and so is one
    # the replay did not finish (replay_losses says how many and why).
    done = _compared_done(measured, result, among)
    sim = simulated_requests(measured, result)
    rows = []
    for _key, label, m_values, s_values, s_weights in _sides(measured, result, sim, done):
        if s_weights is not None:  # ITL: both sides by the weighted definition the simulated steps need
            m, s = _stats(m_values, np.ones(m_values.shape)), _stats(s_values, s_weights)
        else:
            m, s = _stats(m_values), _stats(s_values)
        for stat in STATS:
            rows.append((label, stat, m[stat], s[stat], _pct(s[stat], m[stat], NEGLIGIBLE)))
    mea = measured.requests.reset_index(drop=True)
    sim = sim[sim.request_id.isin(np.flatnonzero(done).tolist())]
    mea = mea[done]
    span_m = span_s(mea.arrival_s.min(), (mea.arrival_s + mea.e2e_ms / 1e3).max())
    span_sim = span_s(sim.arrival_s.min(), sim.finish_s.max()) if len(sim) else np.nan
    for label, num_m, num_s in (
        ("throughput (req/s)", len(mea), len(sim)),
        ("output throughput (tok/s)", mea.output_toks.sum(), sim.output_toks.sum()),
    ):
        m, s = per_second(num_m, span_m, np.nan), per_second(num_s, span_sim, np.nan)
        rows.append((label, "mean", m, s, _pct(s, m)))
    return pd.DataFrame(rows, columns=["metric", "stat", "measured", "simulated", "diff_pct"])


def _pct(sim: float, meas: float, floor: float = 0.0) -> float:
    """The relative difference in %, NaN where the measured figure is NaN or not above `floor`."""
    return (sim - meas) / meas * 100 if not np.isnan(meas) and abs(meas) > floor else np.nan


def with_step_margin(table: pd.DataFrame, faster: pd.DataFrame, slower: pd.DataFrame,
                     margin_pct: float) -> pd.DataFrame:
    """The table with each figure of the replays whose every step was margin_pct % faster and slower."""
    out = table.copy()
    out["step_time_margin_pct"] = margin_pct
    for side, other in (("faster", faster), ("slower", slower)):  # compare()'s tables of the same run
        out[f"simulated_steps_{side}"] = other.simulated.to_numpy()
        out[f"diff_pct_steps_{side}"] = other.diff_pct.to_numpy()
    return out


def format_table(table: pd.DataFrame) -> str:
    margin = table.step_time_margin_pct.iloc[0] if "step_time_margin_pct" in table else None
    band = f"steps -/+{margin:g}%" if margin is not None else ""

    def value(x: float) -> str:  # no samples (TPOT of one-token requests): said, not printed as nan
        return "-" if np.isnan(x) else f"{x:,.2f}"

    def pct(x: float) -> str:  # a difference that rounds to zero reads +0.0%, whatever its sign
        return f"{round(x, 1) + 0.0:+.1f}%"

    rows = [["metric", "stat", "measured", "simulated", "diff"] + ([band] if band else [])]
    for r in table.itertuples(index=False):
        row = [r.metric, r.stat, value(r.measured), value(r.simulated),
               "n/a" if np.isnan(r.diff_pct) else pct(r.diff_pct)]
        if band:
            lo, hi = r.diff_pct_steps_faster, r.diff_pct_steps_slower
            row.append("n/a" if np.isnan(lo) else f"{pct(lo)} .. {pct(hi)}")
        rows.append(row)
    # Left-aligned name columns, right-aligned figures; a figure wider than its column widens it, keeping a space.
    widths = [27, 6, 12, 12, 9, 20]
    for i in range(2, len(rows[0])):
        widths[i] = max(widths[i], 1 + max(len(row[i]) for row in rows))
    return "\n".join("".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def plot_path(prefix: Path, key: str) -> Path:
    """Where write_cdf_plots puts the CDF of metric `key`."""
    return prefix.with_name(f"{prefix.name}_cdf_{key.removesuffix('_ms')}.png")


def plot_paths(prefix: Path) -> list[Path]:
    """Every file write_cdf_plots may write for `prefix` (one per metric), for checking them before the run."""
    return [plot_path(prefix, key) for key, _ in METRICS]


def write_cdf_plots(measured: MeasuredRun, result: SimulationResult, prefix: Path,
                    among: set[int] | None = None) -> list[Path]:
    """CDF overlays (measured vs simulated) per metric, as PNG, over the requests the table compares (`among` as
    compare takes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sides = _sides(measured, result, simulated_requests(measured, result), _compared_done(measured, result, among))
    for key, label, m_values, s_values, s_weights in sides:
        m = np.sort(m_values[~np.isnan(m_values)])
        s = s_values if s_weights is None else np.repeat(s_values, s_weights)
        s = np.sort(s[~np.isnan(s)])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(m, np.linspace(0, 1, m.size), label="measured")
        ax.plot(s, np.linspace(0, 1, s.size), label="simulated", linestyle="--")
        ax.set_xlabel(label)
        ax.set_ylabel("CDF")
        ax.legend()
        fig.tight_layout()
        path = plot_path(prefix, key)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path)
    return written
