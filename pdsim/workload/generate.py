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

from pdsim.config.base import MAX_TOKENS
from pdsim.errors import PdsimError
from pdsim.workload.arrivals import ARRIVALS, Diurnal, RateSchedule, arrival_times_ns
from pdsim.workload.sessions import SessionShape, SystemPrompts, build_requests
from pdsim.workload.trace import DEFAULT_HASH_BLOCK_TOKENS, MAX_ARRIVAL_NS, TraceRequest, check_request_count

__all__ = ["ARRIVALS", "MAX_EXPECTED_TPOT_MS", "MAX_THINK_TIME_S", "LengthDist", "generate_requests",
           "parse_length_dist"]


MAX_THINK_TIME_S = 1e9  # beyond, a session's next turn lands past the simulator's clock anyway
MAX_EXPECTED_TPOT_MS = 1e6

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
        # A normal or lognormal tail is cut at MAX_TOKENS, the bound every trace reader keeps (the
        # parameters are at most that, so only a far tail is cut), before int64 could wrap it.
        hi = min(self.max_len, MAX_TOKENS) if self.max_len is not None else MAX_TOKENS
        return np.clip(np.rint(x), self.min_len, hi).astype(np.int64)

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest length sample() can give (the largest inf when unbounded)."""
        if self.kind == "fixed":
            lo = hi = self.params[0]
        elif self.kind == "uniform":
            lo, hi = int(self.params[0]), int(self.params[1])  # as sample() draws them
        else:  # normal and lognormal reach any length; only min= and max= bound them
            lo, hi = 1, math.inf
        cap = self.max_len if self.max_len is not None else math.inf
        return float(np.clip(lo, self.min_len, cap)), float(np.clip(hi, self.min_len, cap))


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
    if any(abs(p) > MAX_TOKENS for p in params) or any(b > MAX_TOKENS for b in bounds.values()):
        raise bad(f"lengths are at most {MAX_TOKENS:,} tokens")
    if kind == "fixed" and (params[0] < 1 or not params[0].is_integer()):
        raise bad("N must be a positive integer")
    if kind == "uniform" and not (1 <= params[0] <= params[1]):
        raise bad("need 1 <= LO <= HI")
    if kind == "uniform" and not (params[0].is_integer() and params[1].is_integer()):
        raise bad("LO and HI must be whole numbers (the lengths drawn are)")
    if kind in ("normal", "lognormal") and (params[0] < 1 or params[1] < 0):
        raise bad("need MEAN >= 1 and STD >= 0")
    min_len, spec_max = bounds.get("min", 1), bounds.get("max")
    if min_len < 1 or (spec_max is not None and spec_max < min_len):
        raise bad("need 1 <= min <= max")
    if kind in ("fixed", "uniform"):  # a bound outside the lengths asked for would replace them all
        lo, hi = int(params[0]), int(params[-1])
        if min_len > hi or (spec_max is not None and spec_max < lo):
            pinned = min_len if min_len > hi else spec_max
            raise bad(f"min/max lie outside the {kind} lengths {lo}..{hi}, so every length would be {pinned}")
    dist = LengthDist(kind, tuple(params), min_len, spec_max)
    if max_len is None:
        return dist
    # max_len trims the tail of a distribution; a spec whose every length lies above it would be
    # replaced by max_len whole, which is not what was asked for.
    least = int(dist.bounds()[0])
    if least > max_len:
        what = f"a fixed length of {least}" if kind == "fixed" else f"never less than {least} tokens"
        raise PdsimError(f"{option}: {spec.strip()!r} is {what}, above --max-len {max_len}, so every length would "
                         f"be cut to {max_len}; give lengths of at most {max_len} or raise --max-len (it caps the "
                         "tail of a sampled distribution, not a length asked for)")
    return LengthDist(kind, tuple(params), min_len, min(max_len, spec_max or max_len))


def generate_requests(
    num_requests: int,
    rate_per_s: float,
    input_dist: str | LengthDist,
    output_dist: str | LengthDist,
    seed: int = 0,
    arrival: str = "poisson",
    max_len: int | None = None,
    *,
    cv: float = 1.0,
    rate_fn: RateSchedule | Diurnal | None = None,
    lengths_from: list[TraceRequest] | None = None,
    prompts: SystemPrompts | None = None,
    turns: str | LengthDist | None = None,
    think_time_s: float = 10.0,
    expected_tpot_ms: float = 20.0,
    hash_block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS,
) -> list[TraceRequest]:
    """A deterministic synthetic trace; `max_len` caps every input and output length.

    lengths_from: (input, output) pairs drawn (with replacement, together) from these requests
    instead of the two distributions. prompts / turns: shared system prompts and multi-turn
    sessions (see sessions.py; with turns, the arrivals are session starts).
    """
    if num_requests < 1:
        raise PdsimError(f"--num-requests: expected a positive integer, got {num_requests}")
    check_request_count(num_requests, "--num-requests")
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
    # Fixed draw order (arrivals, inputs, outputs, then sessions) keeps traces reproducible per seed.
    arrivals = arrival_times_ns(rng, num_requests, rate_per_s, arrival, cv, rate_fn)
    if lengths_from:
        pick = rng.integers(0, len(lengths_from), size=num_requests)
        hi = max_len or np.iinfo(np.int64).max
        inputs = np.minimum([lengths_from[k].input_toks for k in pick], hi)
        outputs = np.minimum([lengths_from[k].output_toks for k in pick], hi)
    else:
        inputs = din.sample(rng, num_requests)
        outputs = dout.sample(rng, num_requests)
    if prompts is not None or turns is not None:
        shape = None
        if turns is not None:
            dturns = turns if isinstance(turns, LengthDist) else parse_length_dist(turns, "--turns")
            if not (0 <= think_time_s <= MAX_THINK_TIME_S and 0 <= expected_tpot_ms <= MAX_EXPECTED_TPOT_MS):
                raise PdsimError(f"--think-time-s/--expected-tpot-ms: expected numbers >= 0 and <= "
                                 f"{MAX_THINK_TIME_S:g} s / {MAX_EXPECTED_TPOT_MS:g} ms, got {think_time_s} and "
                                 f"{expected_tpot_ms}")
            shape = SessionShape(dturns.sample(rng, num_requests), think_time_s, expected_tpot_ms)
        return _within_bounds(build_requests(arrivals, inputs, outputs, rng, prompts, shape, max_len,
                                             hash_block_tokens))
    return [
        TraceRequest(request_id=i, input_toks=int(a), output_toks=int(b), arrival_time_ns=int(t))
        for i, (a, b, t) in enumerate(zip(inputs, outputs, arrivals, strict=True))
    ]


def _within_bounds(requests: list[TraceRequest]) -> list[TraceRequest]:
    """Sessions add system prompts to the inputs and think times to the arrivals: either may pass the
    bounds every trace reader keeps, which pdsim would then refuse to read back."""
    longest = max(r.input_toks for r in requests)
    if longest > MAX_TOKENS:
        raise PdsimError(f"--system-prompt-len/--input-len: a request would have {longest:,} input tokens, more "
                         f"than {MAX_TOKENS:,}")
    last = max(r.arrival_time_ns for r in requests)
    if last > MAX_ARRIVAL_NS:
        raise PdsimError(f"--think-time-s/--expected-tpot-ms/--rate: the last turn would arrive at {last / 1e9:.3g} s, "
                         f"past the simulator's clock ({MAX_ARRIVAL_NS / 1e9:.0e} s)")
    return requests
