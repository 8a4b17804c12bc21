"""Range checks for numeric command-line options, as click callbacks.

click's FLOAT type accepts "nan" and "inf"; these reject them, and values outside a range, with a
one-line PdsimError naming the flag (exit code 2), before anything is read or written.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import click

from pdsim.errors import PdsimError


def number_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
              what: str = "a number") -> Callable[[click.Context, click.Parameter, float | None], float | None]:
    """A callback accepting None or a finite number with low <= x <= high (low < x with low_open)."""

    def check(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
        if value is None:
            return None
        flag = param.opts[0] if param.opts else param.name
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if isinstance(value, float) and not math.isfinite(value) or too_low or too_high:
            bounds = []
            if low is not None:
                bounds.append(f"{'>' if low_open else '>='} {low:g}")
            if high is not None:
                bounds.append(f"<= {high:g}")
            raise PdsimError(f"{flag}: expected {what} {' and '.join(bounds)}, got {value}")
        return value

    return check
