"""Synthetic request traces: arrival process plus input/output length distributions.

Length specs are short strings so they fit on a command line:
  fixed:N | uniform:LO,HI | normal:MEAN,STD | lognormal:MEAN,STD
optionally followed by `,min=N` and/or `,max=N` clipping bounds, e.g. "lognormal:1000,500,max=4096".
For lognormal, MEAN and STD describe the lengths themselves (what users know from a dataset),
not the underlying normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pdsim.errors import PdsimError
from pdsim.workload.trace import TraceRequest

ARRIVALS = ("poisson", "uniform", "burst")

_FORMS = (
    "fixed:N, uniform:LO,HI, normal:MEAN,STD or lognormal:MEAN,STD, "
    "optionally followed by ,min=N and/or ,max=N"
)
_NUM_PARAMS = {"fixed": 1, "uniform": 2, "normal": 2, "lognormal": 2}


@dataclass(frozen=True)
class LengthDist:
    kind: str
    params: tuple[float, ...]
    min_len: int = 1
    max_len: int | None = None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, self.params[0], dtype=float)
        elif self.kind == "uniform":
            lo, hi = self.params
            x = rng.integers(int(lo), int(hi), size=n, endpoint=True).astype(float)
        elif self.kind == "normal":
            x = rng.normal(self.params[0], self.params[1], size=n)
        else:  # lognormal, moments matched to the requested mean/std of the lengths
            mean, std = self.params
            sigma2 = math.log1p((std / mean) ** 2)
            x = rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
        hi = self.max_len if self.max_len is not None else np.inf
        return np.clip(np.rint(x), self.min_len, hi).astype(np.int64)


def parse_length_dist(spec: str, option: str = "length", max_len: int | None = None) -> LengthDist:
    """Parse a length spec; `option` names the CLI option in errors, `max_len` is an extra cap."""

    def bad(why: str) -> PdsimError:
        return PdsimError(f"{option}: {why} in {spec!r}; accepted forms: {_FORMS}")

    kind, sep, rest = spec.strip().partition(":")
    if not sep or kind not in _NUM_PARAMS:
        raise bad(f"unknown distribution {kind!r}" if sep else "missing 'KIND:'")
    params: list[float] = []
    bounds: dict[str, int] = {}
    for part in (p.strip() for p in rest.split(",")):
        key, eq, val = part.partition("=")
        try:
            if eq:
                if key not in ("min", "max"):
                    raise bad(f"unknown option {key!r}")
                bounds[key] = int(val)
            else:
                params.append(float(part))
        except ValueError:
            raise bad(f"{part!r} is not a number") from None
    if len(params) != _NUM_PARAMS[kind]:
        raise bad(f"{kind} takes {_NUM_PARAMS[kind]} number(s), got {len(params)}")
    if not all(math.isfinite(p) for p in params):
        raise bad("parameters must be finite")
    if kind == "fixed" and (params[0] < 1 or not params[0].is_integer()):
        raise bad("N must be a positive integer")
    if kind == "uniform" and not (1 <= params[0] <= params[1]):
        raise bad("need 1 <= LO <= HI")
    if kind in ("normal", "lognormal") and (params[0] <= 0 or params[1] < 0):
        raise bad("need MEAN > 0 and STD >= 0")
    min_len = bounds.get("min", 1)
    caps = [c for c in (bounds.get("max"), max_len) if c is not None]
    cap = min(caps) if caps else None
    if min_len < 1 or (cap is not None and cap < min_len):
        raise bad("need 1 <= min <= max")
    return LengthDist(kind, tuple(params), min_len, cap)


def arrival_times_ns(rng: np.random.Generator, n: int, rate_per_s: float, arrival: str) -> np.ndarray:
    """Arrival times in ns; the first request arrives at 0."""
    if arrival not in ARRIVALS:
        raise PdsimError(f"--arrival: unknown process {arrival!r}; expected one of {', '.join(ARRIVALS)}")
    if arrival == "burst":  # everything at once: a saturation test, rate unused
        return np.zeros(n, dtype=np.int64)
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise PdsimError(f"--rate: expected a finite number of requests/s > 0, got {rate_per_s}")
    if arrival == "uniform":
        gaps_s = np.full(n, 1.0 / rate_per_s)
    else:
        gaps_s = rng.exponential(1.0 / rate_per_s, size=n)
    gaps_s[0] = 0.0
    return np.rint(np.cumsum(gaps_s) * 1e9).astype(np.int64)


def generate_requests(
    num_requests: int,
    rate_per_s: float,
    input_dist: str | LengthDist,
    output_dist: str | LengthDist,
    seed: int = 0,
    arrival: str = "poisson",
    max_len: int | None = None,
) -> list[TraceRequest]:
    """A deterministic synthetic trace; `max_len` caps every input and output length."""
    if num_requests < 1:
        raise PdsimError(f"--num-requests: expected a positive integer, got {num_requests}")
    din = (
        input_dist
        if isinstance(input_dist, LengthDist)
        else parse_length_dist(input_dist, "--input-len", max_len)
    )
    dout = (
        output_dist
        if isinstance(output_dist, LengthDist)
        else parse_length_dist(output_dist, "--output-len", max_len)
    )
    rng = np.random.default_rng(seed)
    # Fixed draw order (arrivals, inputs, outputs) keeps traces reproducible per seed.
    arrivals = arrival_times_ns(rng, num_requests, rate_per_s, arrival)
    inputs = din.sample(rng, num_requests)
    outputs = dout.sample(rng, num_requests)
    return [
        TraceRequest(request_id=i, input_toks=int(a), output_toks=int(b), arrival_time_ns=int(t))
        for i, (a, b, t) in enumerate(zip(inputs, outputs, arrivals, strict=True))
    ]
