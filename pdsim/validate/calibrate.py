"""Fit the engine's per-step CPU overhead (the one calibration knob with no kernel table behind
it) to measured runs, by grid search on the simulated error, with leave-one-out error reported.

The knob is physical: vLLM spends CPU time every step (scheduling, input preparation, output
processing) that no kernel profile sees; CUDA graphs hide part of it. One number per engine and
GPU, not per workload row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pdsim.errors import PdsimError

DEFAULT_GRID_US = tuple(float(x) for x in range(0, 3001, 250))


def fit_overhead(errors_at: Callable[[float], np.ndarray], grid_us: Sequence[float] = DEFAULT_GRID_US
                 ) -> dict:
    """errors_at(overhead_us) -> signed % error per sample (row or metric).

    Returns the overhead minimising the mean absolute error, its in-sample MAPE, and the
    leave-one-out MAPE (each sample predicted with the overhead fitted on the others; None for one sample).
    """
    errs = np.array([np.asarray(errors_at(float(g)), dtype=float) for g in grid_us])  # grid x samples
    if errs.size == 0 or np.isnan(errs).any():
        # A metric without samples (TPOT of one-token outputs, a row measured as NaN) has no error to
        # minimise: argmin over NaN would "fit" the grid's first point.
        raise PdsimError("--metric: the measured run has no samples of this metric to fit on (e.g. TPOT when every "
                         "output is one token); choose another --metric")
    abs_errs = np.abs(errs)
    best = int(np.argmin(abs_errs.mean(axis=1)))
    total = abs_errs.sum(axis=1)
    n = errs.shape[1]
    loo = []
    for i in range(n if n > 1 else 0):  # one sample leaves nothing to fit the others on: no such error
        j = int(np.argmin((total - abs_errs[:, i]) / (n - 1)))
        loo.append(abs_errs[j, i])
    # The grid's last point as the best: the error may still fall beyond it, so it is no fit.
    at_edge = best == len(grid_us) - 1 and len(grid_us) > 1
    # The first point (0 us) as the best is a genuine bound, an overhead is never negative, but it is no fit
    # either: every overhead made the error worse, so whatever is off is not a missing per-step cost.
    at_bottom = best == 0 and len(grid_us) > 1
    return {"step_overhead_us": float(grid_us[best]), "mape_pct": float(abs_errs[best].mean()),
            "signed_err_pct": float(errs[best].mean()), "loo_mape_pct": float(np.mean(loo)) if loo else None,
            "grid_us": list(grid_us), "mape_by_grid_pct": [float(x) for x in abs_errs.mean(axis=1)],
            "at_grid_edge": at_edge, "at_grid_bottom": at_bottom}
