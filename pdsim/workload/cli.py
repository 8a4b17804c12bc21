"""`pdsim workload ...` commands (the lead attaches the `workload` group to the top-level CLI)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from pdsim.errors import PdsimError
from pdsim.outputs import atomic_path, check_output_file
from pdsim.workload.generate import ARRIVALS, generate_requests
from pdsim.workload.trace import write_trace


@click.group("workload")
def workload() -> None:
    """Create request traces."""


@workload.command("generate")
@click.option("--num-requests", "--num-reqs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Number of requests in the trace.")
@click.option("--rate", type=float, default=5.0, show_default=True,
              help="Mean arrival rate, requests/s (poisson and uniform arrivals; burst sends all at t=0).")
@click.option(
    "--input-len",
    default="lognormal:1000,400",
    show_default=True,
    help="Input length: N, or a spec fixed:N, uniform:LO,HI, normal:MEAN,STD or lognormal:MEAN,STD, "
    "optionally with ,min=N and ,max=N.",
)
@click.option("--output-len", default="lognormal:200,100", show_default=True, help="Output length: N or a spec.")
@click.option("--arrival", type=click.Choice(ARRIVALS), default="poisson", show_default=True,
              help="poisson: exponential gaps at --rate; uniform: equal gaps of 1/--rate; burst: every request "
                   "at t=0 (a saturation test; --rate does not apply).")
@click.option(
    "--max-len", type=click.IntRange(min=1), default=8192, show_default=True, help="Cap on every length."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random lengths and arrivals.")
@click.option("--output", "--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Trace JSONL to write (replaced whole, only once it is complete).")
@click.pass_context
def generate(
    ctx: click.Context,
    num_requests: int,
    rate: float,
    input_len: str,
    output_len: str,
    arrival: str,
    max_len: int,
    seed: int,
    out_path: Path,
) -> None:
    """Write a synthetic JSONL trace in LLMServingSim's format."""
    if arrival == "burst" and ctx.get_parameter_source("rate") is not click.core.ParameterSource.DEFAULT:
        raise PdsimError(f"--rate {rate:g}: --arrival burst sends every request at t=0, so a rate does not apply; "
                         "use --arrival poisson or uniform for a rate")
    check_output_file(out_path, "--output")
    try:
        reqs = generate_requests(num_requests, rate, _spec(input_len), _spec(output_len), seed, arrival, max_len)
    except PdsimError as e:
        raise click.UsageError(str(e)) from None
    with atomic_path(out_path) as tmp:
        write_trace(tmp, reqs)
    inp = np.array([r.input_toks for r in reqs])
    out = np.array([r.output_toks for r in reqs])
    span_s = reqs[-1].arrival_time_ns / 1e9
    rate_txt = f"{(len(reqs) - 1) / span_s:.2f} req/s" if span_s > 0 else "all at t=0"
    click.echo(
        f"wrote {len(reqs)} requests to {out_path}: arrivals over {span_s:.1f} s ({rate_txt}), "
        f"input mean {inp.mean():.0f} (max {inp.max()}), output mean {out.mean():.0f} (max {out.max()})"
    )


def _spec(value: str) -> str:
    """A bare number means that length for every request, as `pdsim run --input-len 1024` reads it."""
    return f"fixed:{value.strip()}" if value.strip().isdigit() else value


if __name__ == "__main__":  # lets the trace be made before the top-level CLI is wired
    workload()
