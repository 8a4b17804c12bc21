"""`pdsim workload ...` commands: generate, convert and describe request traces."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click
import numpy as np

from pdsim.bundled import InputFile
from pdsim.cli_checks import OutputFile, given_options, number_in, unused_options
from pdsim.config.base import MAX_TOKENS
from pdsim.errors import PdsimError
from pdsim.outputs import check_output_file, json_text
from pdsim.workload.arrivals import ARRIVALS, parse_diurnal, parse_rate_schedule
from pdsim.workload.generate import MAX_EXPECTED_TPOT_MS, MAX_THINK_TIME_S
from pdsim.workload.readers import Dataset, dataset_options, parse_window, read_dataset
from pdsim.workload.sessions import SystemPrompts
from pdsim.workload.trace import DEFAULT_HASH_BLOCK_TOKENS, write_trace

MAX_SYSTEM_PROMPTS = 1_000_000
MAX_BINS = 1_000_000  # of `stats --bin-s`: each is a row of the JSON and a bar of the plot


class _UserError(click.ClickException):
    exit_code = 2  # bad input, as pdsim's main() exits on a PdsimError

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=True)  # as main() prints a PdsimError


class _Group(click.Group):
    """Bad input ends with its message and exit code 2 also when this group runs on its own."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PdsimError as e:
            if ctx.parent is not None:  # under `pdsim`, whose main() prints it, or its traceback with --debug
                raise
            raise _UserError(str(e)) from None


@click.group("workload", cls=_Group)
def workload() -> None:
    """Create, convert and describe request traces (docs/workloads.md)."""


def _format_options(f: Callable) -> Callable:
    return dataset_options(f, ("--format", "--dataset-format"))


def _read(trace: Path, dataset_format: str | None, window: str | None, time_scale: float,
          num_requests: int | None) -> Dataset:
    return read_dataset(trace, dataset_format, parse_window(window), time_scale, num_requests)


@workload.command("generate")
@click.option("--num-requests", "--num-reqs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Requests to write (with --turns: every turn counts).")
@click.option("--rate", type=float, default=5.0, show_default=True,
              help="Mean arrival rate, requests/s (with --turns: new sessions/s; with --diurnal: the mean).")
@click.option("--input-len", default="lognormal:1000,400", show_default=True,
              help="Input length: N, or a spec fixed:N, uniform:LO,HI, normal:MEAN,STD or lognormal:MEAN,STD, "
                   "optionally with ,min=N and ,max=N. With --turns: each turn's new message.")
@click.option("--output-len", default="lognormal:200,100", show_default=True, help="Output length: N or a spec.")
@click.option("--arrival", type=click.Choice(ARRIVALS), default="poisson", show_default=True,
              help="Gaps between arrivals: poisson (exponential), gamma (CV --cv), uniform (even), burst (every "
                   "request at t=0, a saturation test; --rate does not apply).")
@click.option("--cv", type=float, default=2.0, show_default=True,
              help="--arrival gamma only: coefficient of variation of the gaps (1 is Poisson; above 1 burstier).")
@click.option("--rate-schedule", default=None,
              help="A rate that changes over time: TIME_S:RATE pairs, e.g. 0:5,60:20,120:5 (5 req/s, from 60 s "
                   "20, from 120 s 5 again); replaces --rate. Not with --arrival burst.")
@click.option("--diurnal", default=None,
              help="A sinusoidal rate PERIOD_S,AMPLITUDE around --rate, e.g. 86400,0.6 (+-60% once a day). Not "
                   "with --arrival burst.")
@click.option("--lengths-from", type=InputFile("dataset"), default=None,
              help="Draw (input, output) pairs from this trace (any format workload stats reads) instead of "
                   "--input-len/--output-len.")
@click.option("--lengths-format", default=None, help="Format of --lengths-from (only with it).  [default: detected]")
@click.option("--system-prompts", type=click.IntRange(0, MAX_SYSTEM_PROMPTS), default=0, show_default=True,
              help="Number of distinct shared system prompts (0: none). Requests that use one get hash_ids, "
                   "so a prefix-caching engine can reuse it.")
@click.option("--system-prompt-len", type=click.IntRange(1, MAX_TOKENS), default=1024, show_default=True,
              help="--system-prompts: tokens in each system prompt (added to the input length).")
@click.option("--system-prompt-share", type=float, default=1.0, show_default=True,
              callback=number_in(0, 1, what="a share of requests"),
              help="--system-prompts: share of requests (with --turns: sessions) that start with a system "
                   "prompt, chosen uniformly.")
@click.option("--turns", default=None,
              help="Multi-turn sessions: turns per session as a length spec (fixed:4, uniform:2,8). Each turn "
                   "carries the whole conversation as its prefix (hash_ids).  [default: single requests]")
@click.option("--think-time-s", type=float, default=10.0, show_default=True,
              callback=number_in(0, MAX_THINK_TIME_S, what="a time (s)"),
              help="--turns (more than one turn): mean (exponential) user think time between a reply and the "
                   "next turn.")
@click.option("--expected-tpot-ms", type=float, default=20.0, show_default=True,
              callback=number_in(0, MAX_EXPECTED_TPOT_MS, what="a time (ms)"),
              help="--turns (more than one turn): assumed time per output token, to place the next turn after "
                   "the previous one's expected end (the generator is offline and cannot see the served reply).")
@click.option("--hash-block-tokens", type=click.IntRange(min=1), default=DEFAULT_HASH_BLOCK_TOKENS,
              show_default=True, help="--system-prompts or --turns: tokens per hash id (Mooncake's traces use "
                                      "512).")
@click.option("--max-len", type=click.IntRange(1, MAX_TOKENS), default=8192, show_default=True,
              help="Cap on every sampled length (a session ends when its context would exceed it); a length spec "
                   "that gives only more (fixed:N, or uniform:LO,HI with LO above it) is refused.")
@click.option("--seed", type=int, default=0, show_default=True, callback=number_in(0, what="a seed"),
              help="Random seed; a seed always gives the same trace.")
@click.option("--output", "--out", "out_path", type=OutputFile(), required=True,
              help="Trace JSONL to write (replaced whole, only once it is complete).")
@click.pass_context
def generate(ctx: click.Context, num_requests: int, rate: float, input_len: str, output_len: str, arrival: str,
             cv: float,
             rate_schedule: str | None, diurnal: str | None, lengths_from: Path | None, lengths_format: str | None,
             system_prompts: int, system_prompt_len: int, system_prompt_share: float, turns: str | None,
             think_time_s: float, expected_tpot_ms: float, hash_block_tokens: int, max_len: int, seed: int,
             out_path: Path) -> None:
    """Write a synthetic JSONL trace in LLMServingSim's format."""
    from pdsim.workload.generate import generate_requests, parse_length_dist

    # An option that would change nothing is refused before anything is read or written: the user
    # meant it to matter. "Given" is by its source, so an option spelled out at its default counts too.
    if arrival == "burst" and unused_options(ctx, "rate"):
        raise PdsimError(f"--rate {rate:g}: --arrival burst sends every request at t=0, so a rate does not apply; "
                         "use --arrival poisson or uniform for a rate")
    if arrival == "burst" and (over_time := unused_options(ctx, "rate_schedule", "diurnal")):
        raise PdsimError(f"{' and '.join(over_time)} with --arrival burst: burst sends every request at t=0, so a "
                         "rate over time does not apply; use --arrival poisson, gamma or uniform with it")
    if unused_options(ctx, "rate_schedule") and unused_options(ctx, "rate"):
        raise PdsimError(f"--rate {rate:g} with --rate-schedule: the schedule sets the rate from 0 s on, so --rate "
                         "would not be used; give one of them")
    if arrival not in _TAKE_CV and unused_options(ctx, "cv"):
        default = " (the default)" if not given_options(ctx, "arrival") else ""
        raise PdsimError(f"--cv {cv:g}: only --arrival {' or '.join(_TAKE_CV)} takes a coefficient of variation "
                         f"(poisson's gaps have CV 1, uniform's 0, burst has none); got --arrival {arrival}{default}")
    if lengths_from is None and unused_options(ctx, "lengths_format"):
        raise PdsimError(f"--lengths-format {lengths_format}: it names the format of --lengths-from, which is not "
                         "given")
    if not system_prompts and (knobs := unused_options(ctx, "system_prompt_len", "system_prompt_share")):
        raise PdsimError(f"{' and '.join(knobs)}: shape the shared system prompts, but there are none "
                         f"(--system-prompts {system_prompts}); add --system-prompts N, the number of distinct "
                         "prompts")
    turns_dist = parse_length_dist(turns, "--turns") if turns is not None else None
    if (turns_dist is None or turns_dist.bounds()[1] <= 1) and (timing := unused_options(ctx, "think_time_s",
                                                                                  "expected_tpot_ms")):
        why = "--turns is not given" if turns_dist is None else f"--turns {turns} gives one turn per session"
        raise PdsimError(f"{' and '.join(timing)}: place the next turn of a session, but {why}; give --turns "
                         "with more than one turn, e.g. uniform:2,8")
    if not system_prompts and turns is None and unused_options(ctx, "hash_block_tokens"):
        raise PdsimError(f"--hash-block-tokens {hash_block_tokens}: hash_ids are written only with --system-prompts "
                         "or --turns, and neither is given")
    check_output_file(out_path, "--output", [lengths_from])
    _check_jsonl_name(out_path)
    if lengths_from and (lengths := unused_options(ctx, "input_len", "output_len")):
        raise PdsimError(f"{' and '.join(lengths)}: --lengths-from draws both lengths from {lengths_from}; "
                         "give one or the other")
    input_len, output_len = _spec(input_len), _spec(output_len)
    if rate_schedule is not None and diurnal is not None:
        raise PdsimError("--rate-schedule and --diurnal: give one of them")
    rate_fn = parse_rate_schedule(rate_schedule) if rate_schedule is not None else (
        parse_diurnal(diurnal, rate) if diurnal is not None else None)
    try:
        pairs = read_dataset(lengths_from, lengths_format).requests if lengths_from else None
    except PdsimError as e:  # the reader names its format option as run's; here it is --lengths-format
        raise PdsimError(str(e).replace("--dataset-format", "--lengths-format")) from None
    prompts = SystemPrompts(system_prompts, system_prompt_len, system_prompt_share) if system_prompts else None
    reqs = generate_requests(num_requests, rate, input_len, output_len, seed, arrival, max_len, cv=cv,
                             rate_fn=rate_fn, lengths_from=pairs, prompts=prompts, turns=turns_dist,
                             think_time_s=think_time_s, expected_tpot_ms=expected_tpot_ms,
                             hash_block_tokens=hash_block_tokens)
    write_trace(out_path, reqs)
    if pairs:  # the cap is a default the user may not have asked for: how much of the source it cut, said
        cut = sum(r.input_toks > max_len or r.output_toks > max_len for r in pairs)
        if cut:
            click.echo(f"note: --max-len {max_len} caps {cut:,} of the {len(pairs):,} length pairs of {lengths_from} "
                       f"(longest input {max(r.input_toks for r in pairs):,}, output "
                       f"{max(r.output_toks for r in pairs):,}); raise it to keep them", err=True)
    inp = np.array([r.input_toks for r in reqs])
    out = np.array([r.output_toks for r in reqs])
    if not pairs and turns_dist is None:  # a drawn tail cut at the cap: said, as for --lengths-from
        at_cap = [f"{int((lengths == max_len).sum()):,} {name}s" for name, lengths, spec in
                  (("input", inp, input_len), ("output", out, output_len))
                  if _cut_by(spec, max_len) and (lengths == max_len).any()]
        if at_cap:
            click.echo(f"note: --max-len {max_len} cut the drawn lengths' tail: {' and '.join(at_cap)} of "
                       f"{len(reqs):,} are at it; raise it to keep them", err=True)
    # Measured as `workload stats` and a run read it: from the first arrival, where a run's clock starts.
    first_s, last_s = (f(r.arrival_time_ns for r in reqs) / 1e9 for f in (min, max))
    span_s = last_s - first_s
    rate_txt = f"{(len(reqs) - 1) / span_s:.2f} req/s" if span_s > 0 else f"all at t={first_s:g}"
    lead = f" from the first at {first_s:.1f} s (a run's clock starts there)" if first_s > 0 else ""
    click.echo(
        f"wrote {len(reqs)} requests to {out_path}: arrivals over {span_s:.1f} s{lead} ({rate_txt}), "
        f"input mean {inp.mean():.0f} (max {inp.max()}), output mean {out.mean():.0f} (max {out.max()})"
    )


def _cut_by(spec: str, max_len: int) -> bool:
    """Whether --max-len, not the spec's own bounds, cuts some of the lengths `spec` draws."""
    from pdsim.workload.generate import parse_length_dist

    low, high = parse_length_dist(spec).bounds()
    return low < max_len < high


# The arrival processes whose gaps have a CV to choose (arrivals.unit_gaps reads --cv only for these).
_TAKE_CV = ("gamma",)


def _spec(value: str) -> str:
    """A bare number means that length for every request, as `pdsim run --input-len 1024` reads it."""
    return f"fixed:{value.strip()}" if value.strip().isdigit() else value


@workload.command("convert")
@click.argument("trace", type=InputFile("dataset"))
@_format_options
@click.option("--output", "--out", "out_path", type=OutputFile(), required=True,
              help="pdsim JSONL to write (atomically; never over the input).")
@click.option("--num-requests", "--num-reqs", type=click.IntRange(min=1), default=None,
              help="Keep the earliest N requests.  [default: all]")
def convert(trace: Path, out_path: Path, num_requests: int | None, **kw: Any) -> None:
    """Convert a public trace (Azure, Mooncake, BurstGPT, ShareGPT, vllm bench ...) to pdsim JSONL."""
    check_output_file(out_path, "--output", [trace])
    _check_jsonl_name(out_path)
    data = _read(trace, kw["dataset_format"], kw["window"], kw["time_scale"], num_requests)
    write_trace(out_path, data.requests)
    notes = f" ({'; '.join(data.notes)})" if data.notes else ""
    click.echo(f"wrote {len(data.requests)} requests from {trace} ({data.fmt}) to {out_path}{notes}")


# Names that promise another format than the plain JSONL these commands write (read back by their suffix, a
# compressed or CSV file would be read as what it is not).
_NOT_JSONL_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst", ".csv", ".parquet", ".png")


def _check_jsonl_name(out_path: Path) -> None:
    if out_path.suffix.lower() in _NOT_JSONL_SUFFIXES:
        raise PdsimError(f"--output {out_path}: pdsim writes the trace as plain, uncompressed JSONL, which a "
                         f"{out_path.suffix} name would misdescribe; name it .jsonl")


@workload.command("stats")
@click.argument("trace", type=InputFile("dataset"))
@_format_options
@click.option("--num-requests", "--num-reqs", type=click.IntRange(min=1), default=None,
              help="Only the earliest N requests.  [default: all]")
@click.option("--bin-s", type=float, default=None,
              help="Width of the bins of the rate over time (s).  [default: about 60 bins over the span]")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON (rate over time included).")
@click.option("--plot", type=OutputFile(), default=None,
              help="Write a PNG: arrival rate over time and the input/output length histograms.")
def stats(trace: Path, num_requests: int | None, bin_s: float | None, as_json: bool, plot: Path | None,
          **kw: Any) -> None:
    """Size, span, arrival rate (mean, over time), gap CV, length percentiles and prefix reuse of a trace."""
    from pdsim.workload.stats import format_stats, plot_stats, trace_stats

    if bin_s is not None and not 0 < bin_s < math.inf:
        raise PdsimError(f"--bin-s: expected a finite number of seconds > 0, got {bin_s}")
    if plot is not None:
        check_output_file(plot, "--plot", [trace])
        if plot.suffix.lower() != ".png":
            raise PdsimError(f"--plot {plot}: the plot is a PNG; name it .png")
    data = _read(trace, kw["dataset_format"], kw["window"], kw["time_scale"], num_requests)
    span_s = max(r.arrival_time_ns for r in data.requests) / 1e9
    if bin_s is not None and span_s / bin_s > MAX_BINS:
        raise PdsimError(f"--bin-s {bin_s:g}: {span_s / bin_s:.3g} bins over the trace's {span_s:g} s, more than "
                         f"{MAX_BINS:,}; give at least {span_s / MAX_BINS:.3g} s")
    figures = trace_stats(data.requests, bin_s)
    figures.update({"trace": str(trace), "format": data.fmt, "notes": data.notes})
    if as_json:
        click.echo(json_text(figures), nl=False)
    else:
        click.echo(format_stats(figures, f"{trace} ({data.fmt})"))
        for note in data.notes:
            click.echo(f"note: {note}")
    if plot is not None:
        written = plot_stats(data.requests, figures, plot, f"{trace.name} ({data.fmt}, {len(data.requests):,} "
                                                           "requests)")
        click.echo(f"wrote {written}", err=as_json)


if __name__ == "__main__":  # lets the trace be made before the top-level CLI is wired
    workload()
