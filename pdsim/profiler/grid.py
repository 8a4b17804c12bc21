"""The grid points a profile is measured at.

The predictor interpolates piecewise-linearly between grid points, so the grid is dense where
op times bend (small sizes: launch/dispatch bound, every value 1..16) and geometric above, with
`steps_per_octave` points per doubling. Powers of two are always on the grid (the sizes users
and the self-check ask for most), and so is the maximum itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from pdsim.perf.profile_format import LAYER_OVERHEAD_DECODE_KV


def geometric_grid(
    max_value: int, *, dense_until: int = 16, steps_per_octave: int = 4, min_value: int = 1
) -> list[int]:
    """`min_value..dense_until` step 1, then 2^k * (1 + i/steps_per_octave), then `max_value`.

    With 4 steps per octave consecutive points differ by x1.14-1.25, so linear interpolation of
    a quadratic (attention over the chunk length) is off by at most ~1.2% between points.
    """
    if max_value < min_value:
        raise ValueError(f"grid maximum {max_value} is below its minimum {min_value}")
    points = set(range(min_value, min(dense_until, max_value) + 1))
    octave = 1
    while octave <= max_value:
        for i in range(steps_per_octave):
            value = octave + octave * i // steps_per_octave
            if dense_until < value <= max_value and value >= min_value:
                points.add(value)
        octave *= 2
    points.add(max_value)
    return sorted(points)


def kv_prefix_grid(max_kv: int, steps_per_octave: int) -> list[int]:
    """Cached-prefix lengths for prefill attention: 0 (a fresh prompt) then 16.. geometric."""
    grid = [0]
    if max_kv >= 1:
        grid += (
            geometric_grid(max_kv, dense_until=0, steps_per_octave=steps_per_octave, min_value=16)
            if max_kv >= 16
            else [max_kv]
        )
    return grid


def decode_kv_grid(max_kv: int, steps_per_octave: int) -> list[int]:
    """KV lengths for decode attention: 1 (a one-token prompt) then 16.. geometric."""
    if max_kv < 16:
        return sorted({1, max_kv})
    return [1] + geometric_grid(max_kv, dense_until=0, steps_per_octave=steps_per_octave, min_value=16)


@dataclass(frozen=True)
class GridSpec:
    """The limits of one profile; recorded in meta.json so users know the profiled range."""

    max_tokens: int  # dense ops; also the largest prefill chunk profiled
    max_batch: int  # per-sequence ops and decode batch sizes
    max_kv: int  # cached KV tokens (prefill prefix and decode KV length)
    steps_per_octave: int = 4
    attention_steps_per_octave: int = 2  # attention is a 2-D grid: coarser keeps its size sane

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_batch", "max_kv", "steps_per_octave", "attention_steps_per_octave"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_kv < LAYER_OVERHEAD_DECODE_KV:  # the layer-overhead decode point sits at that KV
            raise ValueError(f"max_kv must be >= {LAYER_OVERHEAD_DECODE_KV}, got {self.max_kv}")

    def tokens(self) -> list[int]:
        return geometric_grid(self.max_tokens, steps_per_octave=self.steps_per_octave)

    def sequences(self) -> list[int]:
        return geometric_grid(self.max_batch, steps_per_octave=self.steps_per_octave)

    def prefill_chunks(self) -> list[int]:
        return geometric_grid(
            self.max_tokens, dense_until=4, steps_per_octave=self.attention_steps_per_octave
        )

    def prefill_prefixes(self) -> list[int]:
        return kv_prefix_grid(self.max_kv, self.attention_steps_per_octave)

    def decode_batches(self) -> list[int]:
        return geometric_grid(self.max_batch, dense_until=4, steps_per_octave=self.attention_steps_per_octave)

    def decode_kv(self) -> list[int]:
        return decode_kv_grid(self.max_kv, self.attention_steps_per_octave)

    def decode_skew(self) -> list[tuple[int, int, int]]:
        """(batch, short KV, long KV) of the uneven decode batches timed for the decode skew: one request
        at a long KV beside batch - 1 at an eighth of it, at the two longest KV lengths, for every batch of
        two or more."""
        longs = [kv for kv in self.decode_kv() if kv >= 16][-2:]
        return [(n, max(1, kv // 8), kv) for n in self.decode_batches() if n >= 2 for kv in longs]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def capped_grid(
    grid: GridSpec, decode_fits: Callable[[int, int], bool], prefill_fits: Callable[[int, int], bool]
) -> GridSpec:
    """`grid` with its attention tables cut to the points that fit, as full rectangles (the profile reader needs
    every decode batch at every KV length, every prefill chunk at every prefix): `decode_fits(batch, kv)` and
    `prefill_fits(chunk, prefix)` say whether one point fits, and are taken to fall as either axis grows.

    max_kv is lowered first, to the largest KV length of the grid at which the largest decode batch and the
    largest prefill chunk both fit: long contexts are rare beside many short requests, and the reader
    extrapolates beyond the largest KV. Where not even the smallest KV (LAYER_OVERHEAD_DECODE_KV) fits,
    max_batch and max_tokens are lowered too, to the largest that fit at it. Every value chosen is a point
    of the old grid, so the smaller grid's points are the old grid's (but for the decode skew's longest two
    KV lengths). Raises ValueError when not even the smallest decode batch or prefill chunk fits."""
    kvs = [kv for kv in grid.decode_kv() if kv >= LAYER_OVERHEAD_DECODE_KV]
    fitting = [kv for kv in kvs if decode_fits(grid.max_batch, kv) and prefill_fits(grid.max_tokens, kv)]
    if fitting:
        return replace(grid, max_kv=max(fitting))
    kv = kvs[0]
    batches = [n for n in grid.decode_batches() if decode_fits(n, kv)]
    chunks = [c for c in grid.prefill_chunks() if prefill_fits(c, kv)]
    if not batches or not chunks:
        what = "decode batch" if not batches else "prefill chunk"
        raise ValueError(f"not even the smallest {what} fits at KV length {kv}")
    return replace(grid, max_kv=kv, max_batch=max(batches), max_tokens=max(chunks))


def grid_changes(before: GridSpec, after: GridSpec) -> dict[str, list[int]]:
    """{limit: [before, after]} for each limit `capped_grid` lowered."""
    return {k: [v, getattr(after, k)] for k, v in before.to_dict().items() if getattr(after, k) != v}
