"""The engine's state over time, measured against the replay's: how many requests were running and
waiting, from the `timeseries.csv` LLMServingSim's vLLM runner writes beside `requests.jsonl` (one row
per tick: `t` seconds since the run started, vLLM's `running` and `waiting` request counts).

The latency figures say how long requests took; these say why. A replay whose batch stays below the
engine's (running) while its queue is longer (waiting) holds fewer requests at once than the engine
did, which on a tight KV cache points at the capacity; one that matches both and still misses TTFT
points at the step times.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.engine.result import SimulationResult
from pdsim.errors import PdsimError
from pdsim.text import plural
from pdsim.validate.engine_meta import meta_time

TIMESERIES = "timeseries.csv"
COLUMNS = ("t", "running", "waiting")
MAX_COUNT = 1e9  # requests running or waiting at one tick


def read_timeseries(path: Path) -> pd.DataFrame:
    """t, running, waiting per tick, in time order; a file without those columns, or with a row whose
    value there is no finite number, is refused naming the file, the line and the column."""
    try:
        # Blank lines kept (and dropped below) so that row i is line i + 2; index_col=False keeps a row with
        # a field too many from shifting its values into the wrong columns, and pandas warns of it: refused.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, skip_blank_lines=False, index_col=False, dtype=str)
    except pd.errors.ParserWarning:
        raise PdsimError(f"{path}: a row has more fields than the header ({', '.join(COLUMNS)}, ...)") from None
    except (OSError, ValueError) as e:
        raise PdsimError(f"{path}: cannot read the engine's timeseries ({e})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise PdsimError(f"{path}: expected columns {', '.join(COLUMNS)}; missing {', '.join(missing)}")
    df = df[df.notna().any(axis=1)]  # blank lines
    out = df[list(COLUMNS)].apply(pd.to_numeric, errors="coerce")
    for column in COLUMNS:
        x = out[column].to_numpy(dtype=float)
        bad = ~np.isfinite(x)
        if column != "t":  # request counts
            with np.errstate(invalid="ignore"):
                bad |= (x < 0) | (x > MAX_COUNT) | (x != np.round(x))
        if bad.any():
            label = df.index[int(np.argmax(bad))]
            raw = df.at[label, column]
            got = "an empty field" if pd.isna(raw) else repr(raw)
            want = "a number" if column == "t" else f"a whole number of requests from 0 to {MAX_COUNT:.0e}"
            raise PdsimError(f"{path}: line {label + 2}, column {column!r}: expected {want}, got {got}")
    return out.sort_values("t", kind="stable").reset_index(drop=True)


def first_arrival_tick_s(meta: dict, first_arrival_wall_s: float | None) -> tuple[float, str | None]:
    """When, on the timeseries' clock (seconds since meta.json's `started_at`), the first request
    arrived, which is the replay's time 0; (0, why) when the record does not say."""
    started = meta.get("started_at")
    if not isinstance(started, str):
        return 0.0, ("no meta.json beside the run to say when it started" if not meta else
                     "meta.json has no started_at" if started is None
                     else f"meta.json's started_at {started!r:.40} is no ISO time")
    if first_arrival_wall_s is None:
        return 0.0, "the first request has no arrival_time"
    try:
        started_at = meta_time(started)
    except ValueError:
        return 0.0, f"meta.json's started_at {started!r} is no ISO 8601 time"
    offset = first_arrival_wall_s - started_at.timestamp()
    if not 0.0 <= offset < 3600.0:
        return 0.0, f"the first request's arrival_time is {offset:,.0f} s from meta.json's started_at"
    return offset, None


def simulated_counts(result: SimulationResult, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running and waiting requests summed over the instances at each of `times_s` (replay time),
    interpolated between the replay's samples, which need not fall on the ticks (0 before the first)."""
    samples = pd.DataFrame([(s.time_s, s.instance, s.prefill_reqs + s.decode_reqs, s.waiting_reqs)
                            for s in result.samples], columns=["time_s", "instance", "running", "waiting"])
    if samples.empty:
        return np.zeros(times_s.size), np.zeros(times_s.size)
    wide = samples.pivot_table(index="time_s", columns="instance", values=["running", "waiting"], aggfunc="last")
    wide = wide.sort_index().ffill().fillna(0)
    at = wide.index.to_numpy(dtype=float)
    return tuple(np.interp(times_s, at, wide[name].sum(axis=1).to_numpy(dtype=float), left=0.0)
                 for name in ("running", "waiting"))


def engine_state_line(ts: pd.DataFrame, running: np.ndarray, waiting: np.ndarray, source: Path,
                      offset_unknown: str | None = None) -> str:
    """One line: running and waiting, mean over the ticks, peak and mean difference tick by tick,
    measured vs simulated (`running`, `waiting`: simulated_counts at the ticks)."""
    parts = []
    for name, measured, simulated in (("running", ts.running.to_numpy(dtype=float), running),
                                      ("waiting", ts.waiting.to_numpy(dtype=float), waiting)):
        parts.append(f"{name} mean {measured.mean():,.1f} / {simulated.mean():,.1f}, peak {measured.max():,.0f} / "
                     f"{simulated.max():,.0f}, tick by tick {np.abs(simulated - measured).mean():,.1f} apart")
    placed = f"; the replay placed at tick time 0 ({offset_unknown})" if offset_unknown else ""
    return (f"engine state over {plural(len(ts), 'tick')} of {source} (measured / simulated, requests summed over the "
            f"engines{placed}): {'; '.join(parts)}")


def state_plot_path(prefix: Path) -> Path:
    """Where write_state_plot puts the running / waiting overlay."""
    return prefix.with_name(f"{prefix.name}_engine_state.png")


def write_state_plot(ts: pd.DataFrame, running: np.ndarray, waiting: np.ndarray, prefix: Path) -> Path:
    """Running and waiting requests per tick, measured (solid) against simulated (dashed, simulated_counts at
    the ticks), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdsim.outputs import atomic_path

    t = ts.t.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, measured, simulated, color in (("running", ts.running, running, "C0"),
                                             ("waiting", ts.waiting, waiting, "C1")):
        ax.plot(t, measured, color=color, label=f"{name}, measured")
        ax.plot(t, simulated, color=color, linestyle="--", label=f"{name}, simulated")
    ax.set_xlabel("time since the run started (s)")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = state_plot_path(prefix)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
