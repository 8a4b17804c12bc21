"""Piecewise-linear lookup tables for latency profiles.

Inside a table's grid values are interpolated linearly between neighbouring grid points; outside it
they are extrapolated linearly from the nearest segment and never go below 0 (a latency). Leaving
the grid is recorded and warned about once per table (an `ExtrapolationWarning`), since a
simulation whose batches fall outside the profiled range deserves a second look but not a flood.

Scalar lookups use `bisect` on Python lists: for one point that is several times faster than numpy,
and the predictor calls them on every cache miss.
"""

from __future__ import annotations

import warnings
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np


class ExtrapolationWarning(UserWarning):
    """A lookup left the profiled grid of a table; the value was extrapolated linearly.

    Besides the message it carries the table, axis, value and profiled range, so that a report
    gathering many of them (`pdsim profile --check`) can summarise without parsing the text.
    """

    def __init__(
        self,
        message: str,
        table: str | None = None,
        axis: str | None = None,
        value: float | None = None,
        lo: float | None = None,
        hi: float | None = None,
    ) -> None:
        super().__init__(message)  # args == (message,): str(), pickling and filters see the text only
        self.table = table
        self.axis = axis
        self.value = value
        self.lo = lo
        self.hi = hi



@contextmanager
def extrapolations_gathered(caught: list[ExtrapolationWarning] | None = None) -> Iterator[None]:
    """Gather the block's ExtrapolationWarnings into `caught` (None: drop them, where the caller reports the
    tables' `out_of_range` itself), so a report says them once, not as raw warnings with file and line. Any
    other warning is issued again, also when the block raises."""
    seen: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", ExtrapolationWarning)  # none lost to a once-per-location filter
            yield
    finally:
        for w in seen:
            if isinstance(w.message, ExtrapolationWarning):
                if caught is not None:
                    caught.append(w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def extrapolation_key(note: str) -> str:
    """What identifies a note on a table left at some value (_RangeTracker's wording, behind the profile path
    a report puts in front): its profile, table and axis, so runs that left the same table at other values
    say it once. Any other note is its own key."""
    at = note.find(" profile table '")
    head, found, _ = note[at:].partition("=") if at >= 0 else ("", "", "")
    return note[:at] + head if found else note


class _RangeTracker:
    """Warns once per table and axis when a lookup leaves the range of that axis."""

    name: str
    axis_names: tuple[str, ...]
    _left: dict[str, str]  # axis name -> its first out-of-range lookup; each axis is said once

    @property
    def out_of_range(self) -> str | None:
        """The first out-of-range lookup of each axis left, for reports (None: none left)."""
        if not self._left:
            return None
        return (f"profile table {self.name!r}: {', '.join(self._left.values())}; extrapolating linearly (said for "
                "the first such lookup)")

    def _left_range(self, axis: int, value: float, lo: float, hi: float) -> None:
        name = self.axis_names[axis]
        if name in self._left:
            return
        self._left[name] = f"{name}={value:g} is outside the profiled range [{lo:g}, {hi:g}]"
        warning = ExtrapolationWarning(self.out_of_range, self.name, name, value, lo, hi)
        warnings.warn(warning, stacklevel=4)


def _spanning(keys: list[float], children: list, fixed: list[tuple], x: tuple[float, ...],
              axis: int) -> tuple[list[float], list]:
    """The keys (and sub-tables) to bracket a query among: those whose sub-table holds the query's deeper
    coordinates, where two or more do and they bracket it (or it lies beyond every key, where they extrapolate).
    LLMServingSim's attention grid is a union of two grids, and the second's prefill-only rows (n_decode 0) sit
    between mixed rows of the first: bracketed with them, a mixed step's decode attention was read as the
    prefill-only row's (none), and beyond the grid extrapolated from it. Inside the keys with spanning ones on one
    side only, the nearest sub-tables stand, constant along their single value."""
    kept = [k for k, f in enumerate(fixed) if all(x[j] == v for j, v in f)]
    if len(kept) == len(keys) or len(kept) < 2:
        return keys, children
    at = x[axis]
    if keys[0] <= at <= keys[-1] and not keys[kept[0]] <= at <= keys[kept[-1]]:
        return keys, children
    return [keys[k] for k in kept], [children[k] for k in kept]


def _bracket(keys: list[float], x: float) -> tuple[int, float]:
    """Index i of the segment [keys[i], keys[i+1]] used for x and the weight t of keys[i+1].

    Outside the keys the first or last segment is used with t < 0 or t > 1 (linear
    extrapolation). Needs len(keys) >= 2.
    """
    i = bisect_right(keys, x) - 1
    last = len(keys) - 2
    if i < 0:
        i = 0
    elif i > last:
        i = last
    x0 = keys[i]
    return i, (x - x0) / (keys[i + 1] - x0)


def _as_sorted_axis(values: Sequence[float], what: str) -> np.ndarray:
    axis = np.asarray(values, dtype=np.float64)
    if axis.ndim != 1 or axis.size == 0:
        raise ValueError(f"{what}: needs at least one grid point")
    if np.any(np.diff(axis) <= 0):
        raise ValueError(f"{what}: grid values must be strictly increasing")
    return axis


class Table1D(_RangeTracker):
    """time = f(x), piecewise linear over a sorted grid."""

    def __init__(self, name: str, xs: Sequence[float], ys: Sequence[float], axis_name: str = "x") -> None:
        self.name = name
        self.axis_names = (axis_name,)
        self._left = {}
        self.xs = _as_sorted_axis(xs, name)
        self.ys = np.asarray(ys, dtype=np.float64)
        if self.ys.shape != self.xs.shape:
            raise ValueError(f"{name}: {self.xs.size} grid points but {self.ys.size} values")
        self._xl = self.xs.tolist()
        self._yl = self.ys.tolist()
        n = self.xs.size
        self._slope_lo = float((self.ys[1] - self.ys[0]) / (self.xs[1] - self.xs[0])) if n > 1 else 0.0
        self._slope_hi = float((self.ys[-1] - self.ys[-2]) / (self.xs[-1] - self.xs[-2])) if n > 1 else 0.0

    def __call__(self, x: float) -> float:
        xl = self._xl
        if len(xl) == 1:
            return self._yl[0]
        if x < xl[0] or x > xl[-1]:
            self._left_range(0, x, xl[0], xl[-1])
        i, t = _bracket(xl, x)
        y0 = self._yl[i]
        y = y0 + t * (self._yl[i + 1] - y0)
        return y if y > 0.0 else 0.0

    def covers(self, lo: float, hi: float) -> bool:
        """Whether [lo, hi] lies inside the grid (lookups there neither extrapolate nor warn)."""
        return self._xl[0] <= lo and hi <= self._xl[-1]

    def interp_inside(self, x: float) -> float:
        """np.interp(x, xs, ys) at one x inside the grid, bit for bit (numpy's formula: a grid point's value as it
        is, else slope * (x - x_j) + y_j), without numpy's per-call cost, which exceeds a few float operations."""
        xl, yl = self._xl, self._yl
        j = bisect_right(xl, x) - 1
        if j == len(xl) - 1 or xl[j] == x:
            return yl[j]
        y0 = yl[j]
        return (yl[j + 1] - y0) / (xl[j + 1] - xl[j]) * (x - xl[j]) + y0

    def eval_sorted(self, x: np.ndarray) -> np.ndarray:
        """Vectorised lookup of ascending points: np.interp inside, linear outside, floor 0.

        The fast path for runs of decode steps, whose KV lengths only grow.
        """
        lo, hi = self._xl[0], self._xl[-1]
        first, last = x[0], x[-1]
        y = np.interp(x, self.xs, self.ys)
        if last > hi:
            self._left_range(0, float(last), lo, hi)
            y += np.maximum(x - hi, 0.0) * self._slope_hi
        if first < lo:
            self._left_range(0, float(first), lo, hi)
            y += np.minimum(x - lo, 0.0) * self._slope_lo
            return np.maximum(y, 0.0)
        if self._slope_hi < 0.0 and last > hi:
            return np.maximum(y, 0.0)
        return y  # inside the grid (or rising beyond it) values are >= 0 already


class Table2D(_RangeTracker):
    """time = f(x, y) on a full grid (every x with every y), bilinear."""

    def __init__(
        self,
        name: str,
        xs: Sequence[float],
        ys: Sequence[float],
        values: np.ndarray,
        axis_names: tuple[str, str] = ("x", "y"),
    ) -> None:
        self.name = name
        self.axis_names = axis_names
        self._left = {}
        self.xs = _as_sorted_axis(xs, f"{name} {axis_names[0]}")
        self.ys = _as_sorted_axis(ys, f"{name} {axis_names[1]}")
        self.values = np.asarray(values, dtype=np.float64)
        if self.values.shape != (self.xs.size, self.ys.size):
            raise ValueError(
                f"{name}: values shape {self.values.shape} != grid {self.xs.size}x{self.ys.size}"
            )
        self._xl = self.xs.tolist()
        self._yl = self.ys.tolist()
        self._vl = self.values.tolist()

    def _weights(self, axis: int, keys: list[float], v: float) -> tuple[int, float]:
        if len(keys) == 1:
            return 0, 0.0
        if v < keys[0] or v > keys[-1]:
            self._left_range(axis, v, keys[0], keys[-1])
        return _bracket(keys, v)

    def __call__(self, x: float, y: float) -> float:
        i, tx = self._weights(0, self._xl, x)
        j, ty = self._weights(1, self._yl, y)
        rows = self._vl
        r0 = rows[i]
        r1 = rows[i + 1] if len(rows) > 1 else r0
        j1 = j + 1 if len(r0) > 1 else j
        a = r0[j] + ty * (r0[j1] - r0[j])
        b = r1[j] + ty * (r1[j1] - r1[j])
        v = a + tx * (b - a)
        return v if v > 0.0 else 0.0

    def slice_at_x(self, x: float) -> Table1D:
        """The 1-D function y -> f(x, y): linear in between the y grid points, so exact."""
        i, tx = self._weights(0, self._xl, x)
        r0 = self.values[i]
        r1 = self.values[i + 1] if self.xs.size > 1 else r0
        ys = np.maximum(r0 + tx * (r1 - r0), 0.0)
        table = Table1D(f"{self.name}[{self.axis_names[0]}={x:g}]", self.ys, ys, self.axis_names[1])
        # The slice reports under this table's name so one warning covers both.
        return _SliceOf(self, table, axis=1)


class _SliceOf(Table1D):
    """A Table1D whose out-of-range notes go to the table it was cut from."""

    def __init__(self, parent: _RangeTracker, table: Table1D, axis: int) -> None:  # noqa: D107
        self.__dict__.update(table.__dict__)  # share the arrays; no second validation
        self._parent = parent
        self._axis = axis

    def _left_range(self, axis: int, value: float, lo: float, hi: float) -> None:
        self._parent._left_range(self._axis, value, lo, hi)


class TableND(_RangeTracker):
    """time = f(x_0, ..., x_{d-1}) on a nested grid, interpolated one axis at a time.

    The grid need not be full: for every value of axis 0 the rows may hold their own set of
    axis-1 values, and so on (LLMServingSim's 4-D attention grid is a union of two grids, and
    its decode-only rows have no prefix axis). A lookup brackets x_0 between the two nearest
    axis-0 values present, looks up the rest recursively in each of those two sub-tables, and
    blends linearly. On a full grid this is exactly multilinear interpolation. A sub-table
    with a single value on an axis is constant along it, but where such a sub-table does not hold
    the query's value and others that do bracket it, or the query is beyond every key, those others
    are bracketed instead (_spanning). Leaving the range an axis spans over the whole table is what
    counts as extrapolation for the warning.
    """

    def __init__(
        self,
        name: str,
        points: np.ndarray,
        values: np.ndarray,
        axis_names: tuple[str, ...],
    ) -> None:
        self.name = name
        self.axis_names = tuple(axis_names)
        self._left = {}
        points = np.asarray(points, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        d = len(axis_names)
        if points.ndim != 2 or points.shape[1] != d or points.shape[0] != values.shape[0] or not len(values):
            raise ValueError(f"need an (n, {d}) array of grid points and n values")
        self.ndim = d
        self.axis_min = points.min(axis=0).tolist()
        self.axis_max = points.max(axis=0).tolist()
        self.axis_values = [np.unique(points[:, k]) for k in range(d)]
        order = np.lexsort(points.T[::-1])
        points, values = points[order], values[order]
        repeated = np.flatnonzero(np.all(np.diff(points, axis=0) == 0, axis=1))
        if len(repeated):
            at = ", ".join(f"{axis}={x:g}" for axis, x in zip(axis_names, points[repeated[0]], strict=True))
            raise ValueError(f"two rows for {at} ({len(repeated)} repeated grid point(s))")
        self._root = self._build(points, values, 0)

    def _build(self, points: np.ndarray, values: np.ndarray, axis: int) -> tuple:
        col = points[:, axis]
        keys, starts = np.unique(col, return_index=True)
        if axis == self.ndim - 1:
            return keys.tolist(), values.tolist()
        ends = list(starts[1:]) + [len(col)]
        children = [
            self._build(points[s:e], values[s:e], axis + 1) for s, e in zip(starts, ends, strict=True)
        ]
        # Per child, the deeper axes its rows hold one value of, (axis, value): a child measured only there (a
        # prefill-only row beside mixed ones) says nothing of a query elsewhere on those axes (_spanning).
        fixed = [tuple((j, float(points[s, j])) for j in range(axis + 1, self.ndim)
                       if np.all(points[s:e, j] == points[s, j]))
                 for s, e in zip(starts, ends, strict=True)]
        return keys.tolist(), children, fixed if any(fixed) else None

    def __call__(self, *x: float) -> float:
        lo, hi = self.axis_min, self.axis_max
        for k, v in enumerate(x):
            if v < lo[k] or v > hi[k]:
                self._left_range(k, v, lo[k], hi[k])
        v = self._eval(self._root, x, 0)
        return v if v > 0.0 else 0.0

    def _eval(self, node: tuple, x: tuple[float, ...], axis: int) -> float:
        keys, children = node[0], node[1]
        last = axis == self.ndim - 1
        if len(keys) == 1:
            return children[0] if last else self._eval(children[0], x, axis + 1)
        if not last and node[2] is not None:
            keys, children = _spanning(keys, children, node[2], x, axis)
            if len(keys) == 1:
                return self._eval(children[0], x, axis + 1)
        i, t = _bracket(keys, x[axis])
        if last:
            y0 = children[i]
            return y0 + t * (children[i + 1] - y0)
        if t == 0.0:  # on a grid value: one sub-table suffices
            return self._eval(children[i], x, axis + 1)
        if t == 1.0:
            return self._eval(children[i + 1], x, axis + 1)
        y0 = self._eval(children[i], x, axis + 1)
        y1 = self._eval(children[i + 1], x, axis + 1)
        return y0 + t * (y1 - y0)

    def slice_last_axis(self, *leading: float) -> Table1D:
        """The 1-D function x_last -> f(*leading, x_last), exact on the union of last-axis values.

        Every leaf is piecewise linear in the last axis with breakpoints among the table's
        last-axis values, and blends of such functions keep those breakpoints, so evaluating at
        all of them reproduces the N-D lookup exactly (up to the clip at 0).
        """
        grid = self.axis_values[-1]
        ys = [self(*leading, float(v)) for v in grid]
        name = (
            f"{self.name}["
            + ",".join(f"{n}={v:g}" for n, v in zip(self.axis_names, leading, strict=False))
            + "]"
        )
        table = Table1D(name, grid, ys, self.axis_names[-1])
        return _SliceOf(self, table, axis=self.ndim - 1)
