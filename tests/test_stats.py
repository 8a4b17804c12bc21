"""The shared statistics (pdsim/metrics/stats.py) against numpy's named percentile methods."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdsim.metrics.stats import (
    per_second,
    percentiles_interpolated,
    percentiles_linear,
    percentiles_nearest_rank,
    sorted_by_value,
    span_s,
)

PS = (1, 10, 50, 90, 99, 100)


@pytest.mark.parametrize("seed", range(20))
def test_each_definition_is_the_numpy_method_it_claims(seed):
    rng = np.random.default_rng(seed)
    values = np.round(rng.exponential(10.0, int(rng.integers(1, 30))), 1)  # ties included
    weights = rng.integers(1, 5, values.size)
    assert percentiles_linear(values, PS) == [float(np.percentile(values, p)) for p in PS]
    v, w = sorted_by_value(values, weights)
    # Weighted nearest rank = the inverted CDF of the values repeated by their weights.
    repeated = np.repeat(values, weights)
    assert percentiles_nearest_rank(v, w, PS) == [float(np.percentile(repeated, p, method="inverted_cdf"))
                                                 for p in PS]
    # Interpolated with unit weights = Hazen's rule (each value at the middle of its 1/n).
    unit, ones = sorted_by_value(values, np.ones(values.size))
    np.testing.assert_allclose(percentiles_interpolated(unit, ones, PS),
                               [np.percentile(values, p, method="hazen") for p in PS], rtol=1e-12)


def test_nan_dropped_and_empty_is_nan():
    assert percentiles_linear(np.array([np.nan, 1.0, 3.0]), [50]) == [2.0]
    assert all(math.isnan(x) for x in percentiles_linear(np.array([np.nan]), [50, 90]))


def test_throughput_over_first_arrival_to_last_finish():
    assert span_s(2.0, 12.0) == 10.0
    assert per_second(50, span_s(2.0, 12.0)) == 5.0
    assert per_second(3, 0.0) == 0.0 and math.isnan(per_second(3, math.nan, math.nan))
