"""The statistics every report uses: percentiles (three definitions, each kept where its figures
come from, see docs/architecture.md) and throughput over a run's span."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

REPORTED_PERCENTILES = (50, 90, 99)  # what `pdsim run` and `pdsim sweep` report


def percentiles_linear(values: np.ndarray, ps: Sequence[float]) -> list[float]:
    """numpy's default percentile: linear interpolation between order statistics (rank (n - 1) p / 100).
    NaNs are dropped; NaN for each p when nothing is left."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [math.nan] * len(ps)
    return [float(v) for v in np.percentile(values, ps)]


def sorted_by_value(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values in ascending order (stable), their weights alongside: what the weighted percentiles take."""
    order = np.argsort(values, kind="stable")
    return values[order], weights[order]


def percentiles_nearest_rank(values: np.ndarray, weights: np.ndarray, ps: Sequence[float]) -> list[float]:
    """Weighted nearest rank: the first value (ascending, non-empty) at which the cumulative weight
    reaches p% of the total, i.e. the value below which p% of the weight falls."""
    cum = np.cumsum(weights)
    total = cum[-1]
    last = values.size - 1
    return [float(values[min(int(np.searchsorted(cum, p / 100 * total, side="left")), last)]) for p in ps]


def percentiles_interpolated(values: np.ndarray, weights: np.ndarray, ps: Sequence[float]) -> list[float]:
    """Weighted, interpolated: linear interpolation on the weighted empirical CDF with each value at
    the middle of its weight (values ascending, non-empty; float weights)."""
    cum = (np.cumsum(weights) - 0.5 * weights) / weights.sum()
    return [float(np.interp(p / 100, cum, values)) for p in ps]


def span_s(first_arrival_s: float, last_finish_s: float) -> float:
    """The span a run's throughput is over: its first arrival to its last finish (s)."""
    return float(last_finish_s - first_arrival_s)


def per_second(amount: float, span: float, empty: float = 0.0) -> float:
    """amount / span: requests or tokens per second; `empty` when the span is not positive (or NaN)."""
    return amount / span if span > 0 else empty
