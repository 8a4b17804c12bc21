"""Grid points whose time is out of line with their neighbours (`pdsim profile` re-measures them).

On a shared machine a burst of load from another process inflates whatever point is being timed
at that moment; the point's own repeats all see the burst, so its recorded spread can be small.
Its neighbours on the grid, measured at other times, expose it: every op's time grows with its
size, and between two grid points it does not rise far above the straight line (chord) joining
them (convex curves stay below it, linear ones on it). So a point is suspicious when

* an interior point of a 1-D series lies more than `tolerance` above the chord of its two
  neighbours, or
* the first point of a series is more than `tolerance` slower than the second (time must not fall
  with size).

Series: a dense / per-sequence op over its token (sequence) counts; attention along each axis of
its 2-D grid with the other fixed; the uneven decode batches along the batch size. Only slow
outliers are flagged (load only ever adds time), and a flagged point is only re-measured, never
adjusted: a real step in a kernel's time (e.g. a different matmul blocking) is re-measured,
confirmed and kept.

Torch-free, so it is tested without the profiler's dependencies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

PointKey = tuple[str, str, tuple[int, ...]]  # (table, op, grid key)

DEFAULT_TOLERANCE = 0.15


def _series(medians: Mapping[PointKey, float]) -> list[list[tuple[int, PointKey]]]:
    """1-D series (sorted by position) through the grid: one per op (1-D tables) and one per
    row and column of each 2-D attention table."""
    groups: dict[tuple, list[tuple[int, PointKey]]] = defaultdict(list)
    for key in medians:
        table, op, grid_key = key
        if len(grid_key) == 1:
            groups[(table, op)].append((grid_key[0], key))
        elif len(grid_key) > 2:  # the uneven decode batches: along the batch size at fixed KV lengths
            groups[(table, op, *grid_key[1:])].append((grid_key[0], key))
        else:
            x, y = grid_key
            groups[(table, op, "x", y)].append((x, key))  # along x at fixed y
            groups[(table, op, "y", x)].append((y, key))  # along y at fixed x
    return [sorted(g) for g in groups.values()]


def suspicious_points(medians: Mapping[PointKey, float], tolerance: float = DEFAULT_TOLERANCE) -> set[PointKey]:
    """Points out of line with their neighbours (see the module docstring)."""
    flagged: set[PointKey] = set()
    for series in _series(medians):
        if len(series) < 2:
            continue
        (_, k0), (_, k1) = series[0], series[1]
        if medians[k0] > (1 + tolerance) * medians[k1]:
            flagged.add(k0)
        for (xa, ka), (x, k), (xb, kb) in zip(series, series[1:], series[2:], strict=False):
            ta, tb = medians[ka], medians[kb]
            chord = ta + (tb - ta) * (x - xa) / (xb - xa)
            if medians[k] > (1 + tolerance) * chord:
                flagged.add(k)
    return flagged
