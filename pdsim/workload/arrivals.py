"""Arrival processes: Poisson, Gamma (a chosen CV of the gaps), evenly spaced, or all at once, at a
constant rate or one that changes over time.

A time-varying rate is made by drawing the process at rate 1 and mapping each time u through the
inverse of the cumulative rate, t = L^-1(u) with L(t) = integral of rate(s) ds over [0, t]: the
gaps keep their shape (and CV) in "operational time" while the rate follows the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pdsim.cli_checks import split_items
from pdsim.errors import PdsimError
from pdsim.workload.trace import MAX_ARRIVAL_NS

# Gamma gaps' CV: the shape 1/cv^2 stays a finite positive float, and the gaps drawable, within these.
MIN_CV, MAX_CV = 1e-6, 1e6

ARRIVALS = ("poisson", "gamma", "uniform", "burst")


@dataclass(frozen=True)
class RateSchedule:
    """Piecewise-constant rate: rates_per_s[i] req/s from times_s[i] on (times_s[0] == 0)."""

    times_s: tuple[float, ...]
    rates_per_s: tuple[float, ...]

    def inverse_cumulative(self, u: np.ndarray) -> np.ndarray:
        t = np.asarray(self.times_s)
        r = np.asarray(self.rates_per_s)
        cum = np.concatenate([[0.0], np.cumsum(np.diff(t) * r[:-1])])
        # side="right" skips zero-rate segments (their cumulative does not grow).
        i = np.searchsorted(cum, u, side="right") - 1
        return t[i] + (u - cum[i]) / r[i]

    def describe(self) -> str:
        return ", ".join(f"{r:g}/s from {t:g} s" for t, r in zip(self.times_s, self.rates_per_s))


@dataclass(frozen=True)
class Diurnal:
    """rate(t) = mean_rate_per_s x (1 + amplitude x sin(2 pi t / period_s)); 0 <= amplitude < 1."""

    mean_rate_per_s: float
    period_s: float
    amplitude: float

    def cumulative(self, t: np.ndarray) -> np.ndarray:
        w = 2 * math.pi / self.period_s
        return self.mean_rate_per_s * (t + self.amplitude / w * (1 - np.cos(w * t)))

    def inverse_cumulative(self, u: np.ndarray) -> np.ndarray:
        # L is strictly increasing (amplitude < 1): tabulate it finely and interpolate the inverse.
        t_end = float(u.max()) / (self.mean_rate_per_s * (1 - self.amplitude)) + self.period_s
        n = int(min(2_000_000, max(1000, 200 * t_end / self.period_s)))
        grid = np.linspace(0.0, t_end, n)
        return np.interp(u, self.cumulative(grid), grid)

    def describe(self) -> str:
        return f"{self.mean_rate_per_s:g}/s x (1 + {self.amplitude:g} sin(2 pi t / {self.period_s:g} s))"


def parse_rate_schedule(text: str) -> RateSchedule:
    """`T0:R0,T1:R1,...` (seconds:req/s), T0 = 0, times increasing, rates >= 0, the last one > 0."""

    def bad(why: str) -> PdsimError:
        return PdsimError(f"--rate-schedule: {why} in {text!r}; expected TIME_S:RATE pairs such as "
                          "0:5,60:20,120:5 (from 0 s 5 req/s, from 60 s 20 req/s, ...)")

    times, rates = [], []
    for part in split_items(text, "--rate-schedule"):
        t, sep, r = part.partition(":")
        try:
            times.append(float(t))
            rates.append(float(r))
        except ValueError:
            raise bad(f"{part!r} is not TIME_S:RATE") from None
        if not sep:
            raise bad(f"{part!r} is not TIME_S:RATE")
    if not times or times[0] != 0:
        raise bad("the first time must be 0")
    if any(b <= a for a, b in zip(times, times[1:])) or not all(math.isfinite(x) for x in times):
        raise bad("times must increase")
    if any(not (0 <= r < math.inf) for r in rates) or rates[-1] <= 0:
        raise bad("rates must be finite and >= 0, the last one > 0")
    return RateSchedule(tuple(times), tuple(rates))


def parse_diurnal(text: str, mean_rate_per_s: float) -> Diurnal:
    """`PERIOD_S,AMPLITUDE`, e.g. 86400,0.6: the rate swings +-60% around --rate once a day."""
    try:
        period_s, amplitude = (float(x) for x in text.split(","))
    except ValueError:
        raise PdsimError(f"--diurnal: expected PERIOD_S,AMPLITUDE such as 86400,0.6, got {text!r}") from None
    if not (0 < period_s < math.inf) or not (0 <= amplitude < 1):
        raise PdsimError(f"--diurnal: need PERIOD_S > 0 and 0 <= AMPLITUDE < 1, got {text!r}")
    _check_rate(mean_rate_per_s)
    return Diurnal(mean_rate_per_s, period_s, amplitude)


def unit_gaps(rng: np.random.Generator, n: int, arrival: str, cv: float) -> np.ndarray:
    """n gaps of mean 1 (the first one 0: the first request arrives at 0)."""
    if arrival == "gamma":
        if not (MIN_CV <= cv <= MAX_CV):  # outside, the gamma shape 1/cv^2 overflows or underflows
            raise PdsimError(f"--cv: expected a number >= {MIN_CV:g} and <= {MAX_CV:g}, got {cv}")
        shape = 1.0 / cv**2  # Gamma(k, theta): mean k theta = 1, CV 1/sqrt(k)
        gaps = rng.gamma(shape, 1.0 / shape, size=n)
    elif arrival == "uniform":
        gaps = np.ones(n)
    else:
        gaps = rng.exponential(1.0, size=n)
    gaps[0] = 0.0
    return gaps


def arrival_times_ns(rng: np.random.Generator, n: int, rate_per_s: float, arrival: str, cv: float = 1.0,
                     rate_fn: RateSchedule | Diurnal | None = None) -> np.ndarray:
    """Arrival times in ns; the first request arrives at 0. With rate_fn the rate follows it
    (rate_per_s is then unused by the schedule, and is the mean of the diurnal one)."""
    if arrival not in ARRIVALS:
        raise PdsimError(f"--arrival: unknown process {arrival!r}; expected one of {', '.join(ARRIVALS)}")
    if arrival == "burst":  # everything at once: a saturation test, rate unused
        return np.zeros(n, dtype=np.int64)
    if rate_fn is None:
        _check_rate(rate_per_s)
        if arrival == "poisson":  # drawn as before gamma existed, so old seeds give the same traces
            gaps_s = rng.exponential(1.0 / rate_per_s, size=n)
            gaps_s[0] = 0.0
        else:
            gaps_s = unit_gaps(rng, n, arrival, cv) / rate_per_s
        return checked_ns(np.cumsum(gaps_s), "--rate")
    u = np.cumsum(unit_gaps(rng, n, arrival, cv))
    return checked_ns(rate_fn.inverse_cumulative(u), "--rate-schedule/--diurnal")


def _check_rate(rate_per_s: float) -> None:
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise PdsimError(f"--rate: expected a finite number of requests/s > 0, got {rate_per_s}")


def checked_ns(times_s: np.ndarray, option: str) -> np.ndarray:
    """Times in s as int64 ns, refused (naming `option`) past the clock's bound instead of wrapping."""
    last = float(np.max(times_s)) if len(times_s) else 0.0
    if not last <= MAX_ARRIVAL_NS / 1e9:  # NaN fails too
        raise PdsimError(f"{option}: the requests would arrive over {last:.3g} s, past the simulator's clock "
                         f"({MAX_ARRIVAL_NS / 1e9:.0e} s); give a higher rate or fewer requests")
    return np.rint(times_s * 1e9).astype(np.int64)
