"""Command line: `pdsim [run] --cluster-config X --dataset Y`, plus `workload` and `profile` tools."""

from __future__ import annotations

import dataclasses
import difflib
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
import pandas as pd

from pdsim.bundled import InputFile, InputFolder, bundled_path
from pdsim.cli_checks import OutputFile, existing_folder, number_in, slo_ms, unused_options, vllm_int_option
from pdsim.config.base import MEM_UTIL_OVERRIDE, ROUTER_POLICIES
from pdsim.errors import ConfigError, PdsimError, ProfileError
from pdsim.llmservingsim_keys import KV_CACHE_DTYPES
from pdsim.text import did_you_mean
from pdsim.workload.readers import dataset_options

if TYPE_CHECKING:  # the commands import these when they run: `--help` stays quick
    from pdsim.config.models import ClusterConfig
    from pdsim.engine.options import SimOptions
    from pdsim.engine.result import Sample, SimulationResult
    from pdsim.progress import ProgressBar
    from pdsim.workload.trace import TraceRequest


class DefaultCommandGroup(click.Group):
    """A group whose `run` subcommand is implied: `pdsim --cluster-config X ...` means `pdsim run ...`."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            if not args[0].startswith("-"):  # `run` takes no positional argument: a misspelled command
                close = difflib.get_close_matches(args[0], list(self.commands), n=1)
                hint = f", did you mean '{close[0]}'?" if close else f"; commands: {', '.join(self.commands)}"
                raise click.UsageError(f"no such command '{args[0]}'{hint}", ctx)
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        run = self.commands[self.default_command]
        with formatter.section(f"Options of the default command `{self.default_command}`"):
            rows = [p.get_help_record(ctx) for p in run.get_params(ctx)]
            formatter.write_dl([r for r in rows if r is not None])


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pdsim")
def cli() -> None:
    """pdsim: simulate LLM serving clusters with prefill/decode disaggregation.

    Without a subcommand, runs a simulation (`run`), e.g.

    \b
      python -m pdsim --cluster-config configs/cluster/single_node_pd_instance.json \\
          --dataset workloads/example_trace.jsonl --output outputs/pd_split_run.csv

    Every command accepts --debug (show the traceback of an error). `pdsim docs NAME` prints the
    docs/NAME.md that a note or error cites.
    """


def _llmservingsim_only_flags(command: Callable) -> Callable:
    """LLMServingSim's run flags of features pdsim does not model (its OFF_ONLY_KEYS): hidden, and refused with
    the reason when given, as the same instance keys are, rather than as options no simulator has."""
    from pdsim.llmservingsim_keys import OFF_ONLY_KEYS

    def refuse(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            raise PdsimError(f"{param.opts[0]}: LLMServingSim's switch of a feature pdsim does not simulate "
                             f"({OFF_ONLY_KEYS[param.name]}); pdsim runs it off")

    for key in OFF_ONLY_KEYS:
        command = click.option(f"--{key.replace('_', '-')}", key, is_flag=True, hidden=True, expose_value=False,
                               callback=refuse, help=f"LLMServingSim's; refused: {OFF_ONLY_KEYS[key]}.")(command)
    return command


@cli.command("run")
@click.option("--cluster-config", required=True, type=InputFile("cluster config"),
              help="Cluster config JSON (LLMServingSim format): a path, or the name of a bundled one "
                   "such as single_node_pd_instance.")
@click.option("--dataset", type=InputFile("dataset"), default=None,
              help="Request trace: pdsim JSONL (input_toks, output_toks, arrival_time_ns), a public trace "
                   "(Azure, Mooncake, BurstGPT, ShareGPT, vllm bench; docs/workloads.md), or the name of a "
                   "bundled one such as example_trace. Optional with --concurrency and --input-len/--output-len.")
@dataset_options
@click.option("--output", "--out", "output", default="outputs/run.csv", show_default=True,
              type=OutputFile(),
              help="Per-request CSV; <stem>_summary.json, <stem>_timeline.csv, <stem>_links.csv and plots go "
                   "beside it. Existing files of that stem are replaced whole, only once the run succeeded.")
@click.option("--num-requests", "--num-reqs", type=int, default=None, callback=number_in(1, what="a request count"),
              help="Use only the first N requests (by arrival).  [default: all]")
@click.option("--rate", "rate_per_s", type=float, default=None,
              callback=number_in(0, 1e9, low_open=True, what="a rate (requests/s)"),
              help="Stretch or compress the trace's arrival times so its mean rate ((n - 1) / span, as `pdsim "
                   "workload stats` prints it) is this many requests/s, e.g. a goodput `pdsim search` found; "
                   "instead of --time-scale.  [default: the trace's own]")
@click.option("--concurrency", type=int, default=None, callback=number_in(1, what="a number of clients"),
              help="Closed loop: N clients, each sending its next request when its previous one ends "
                   "(trace arrival times are ignored).  [default: open loop]")
@click.option("--client-delay-ms", default=1.0, show_default=True, callback=number_in(0, 1e6, what="a delay (ms)"),
              help="Closed loop: mean delay from a client's send to the engine (HTTP, API server), uniform on "
                   "[0, 2 x mean] and counted in TTFT; 0 lets a request join the very step its predecessor's "
                   "end finishes, which no real client can.")
@click.option("--input-len", default=None,
              help="Without --dataset: prompt length of the synthetic requests, N or a spec such as "
                   "lognormal:1000,400.")
@click.option("--output-len", default=None, help="Without --dataset: output length, N or a spec.")
@click.option("--seed", type=int, default=0, show_default=True, callback=number_in(0, 2**32 - 1, what="a seed"),
              help="Seed for what is drawn: random routing, and in a closed loop the client delays and synthetic "
                   "lengths; runs are deterministic per seed.")
@click.option("--prefill-policy", type=click.Choice(ROUTER_POLICIES), default=None,
              help="Routing over prefill-capable instances.  [default: config's router, else least_loaded]")
@click.option("--decode-policy", type=click.Choice(ROUTER_POLICIES), default=None,
              help="Routing over decode instances.  [default: config's router, else least_loaded]")
@click.option("--profile-dir", type=InputFolder(), default=None,
              help="Use this profile for every instance: a pdsim profile dir (meta.json) or an LLMServingSim "
                   "one (meta.yaml + tpN/).  [default: look up profiles/<hw>/<model>/<dtype>/tp<N>, else estimate]")
@click.option("--profiles-root", type=InputFolder(), default=None,
              help="Where profiles are looked up by hardware/model/dtype/tp.  [default: the bundled profiles/]")
@click.option("--max-num-seqs", type=int, default=None,
              help="Override for all instances.  [default: config, else 128]")
@click.option("--max-num-batched-tokens", type=int, default=None,
              help="Override for all instances.  [default: config, else 2048]")
@click.option("--block-size", type=int, default=None, help="Override for all instances.  [default: config, else 16]")
@click.option("--enable-chunked-prefill/--disable-chunked-prefill", default=None,
              help="Override for all instances.  [default: config, else enabled]")
@click.option("--dtype", default=None, help="Override for all instances.  [default: config, else bfloat16]")
@click.option("--async-scheduling/--sync-scheduling", default=None,
              help="Override for all instances: vLLM's --async-scheduling (a request arriving during a step "
                   "starts two steps later; vLLM's default from 0.14).  [default: config, else sync]")
@click.option("--enable-prefix-caching/--no-enable-prefix-caching", default=None,
              help="Override for all instances: vLLM's prefix caching (acts on requests with prefix ids, trace "
                   "`hash_ids`; others are unaffected).  [default: config, else enabled, as vLLM]")
@click.option("--gpu-memory-utilization", type=float, default=None,
              callback=number_in(0, 1, low_open=True, what="a fraction"),
              help="Override for all instances: vLLM's share of CUDA-visible memory for weights, activations and "
                   "KV (not with LLMServingSim's npu_mem.mem_util).  [default: config, else 0.9]")
@click.option("--npu-memory-utilization", "mem_util", type=float, default=None,
              callback=number_in(0, 1, low_open=True, what="a fraction"),
              help="Override for all instances: LLMServingSim's npu_mem.mem_util, KV = mem_size x it - weights (its "
                   "rule, whose published values are calibrated to it; not vLLM's --gpu-memory-utilization).  "
                   "[default: config, else vLLM's accounting]")
@click.option("--kv-cache-dtype", type=click.Choice(sorted(KV_CACHE_DTYPES)), default=None,
              help="Override for all instances: vLLM's --kv-cache-dtype.  [default: config, else auto]")
@click.option("--long-prefill-token-threshold", type=int, default=None,
              callback=number_in(0, 10**9, what="a token count"),
              help="Override for all instances: vLLM's cap on one request's prefill chunk per step (0: none).  "
                   "[default: config, else 0]")
@click.option("--scheduler-reserve-full-isl/--no-scheduler-reserve-full-isl",
              "--reserve-full-isl/--no-reserve-full-isl", "scheduler_reserve_full_isl", default=None,
              help="Override for all instances: admit a waiting request only when its whole sequence fits the free KV "
                   "blocks, not just its first chunk (vLLM 0.19's --scheduler-reserve-full-isl; LLMServingSim's "
                   "--reserve-full-isl; off models vLLM 0.18 and older).  [default: config, else on, as vLLM 0.19]")
@_llmservingsim_only_flags
@click.option("--kv-cache-memory-bytes", default=None, callback=vllm_int_option,
              help="Override for all instances: vLLM's KV cache size per GPU, e.g. 4G, instead of what the "
                   "utilization leaves.  [default: config, else the memory rule]")
@click.option("--disable-custom-all-reduce/--enable-custom-all-reduce", default=None,
              help="Override for all instances: vLLM's --disable-custom-all-reduce (TP all-reduces on NCCL "
                   "only).  [default: config, else vLLM's custom kernel for small messages]")
@click.option("--allreduce-rms-fusion/--no-allreduce-rms-fusion", default=None,
              help="Override for all instances: vLLM's fusion of each TP all-reduce with the RMSNorm after it (its "
                   "default from 0.17; off for 0.16 and older or --enforce-eager).  [default: config, else where "
                   "vLLM fuses: TP 2/4/8 on compute capability 9.0/10.x, no DP group, no PP]")
@click.option("--step-overhead-us", default=0.0, show_default=True, callback=number_in(0, 1e6, what="a time (us)"),
              help="Fixed CPU/scheduling time added to every engine step.")
@click.option("--step-time-margin-pct", default=0.0, show_default=True, callback=number_in(0, 50, what="a percentage"),
              help="Also run with every engine step this % faster and slower, and report TTFT, TPOT and E2E under "
                   "both: how far a step-time error of that size moves them (3 runs instead of 1).")
@click.option("--max-sim-time", type=float, default=None, callback=number_in(0, 4e9, low_open=True, what="a time (s)"),
              help="Stop at this simulated time (s); requests still in flight are reported unfinished.  "
                   "[default: none]")
@click.option("--log-interval", type=float, default=None, callback=number_in(1e-3, 4e9, what="an interval (s)"),
              help="Print a progress line every this many simulated seconds, which is also the timeline CSV's "
                   "sampling interval.  [default: off; the timeline every 1 s]")
@click.option("--ttft-mode", type=click.Choice(["prefill", "client"]), default="prefill", show_default=True,
              help="P/D TTFT: when the first token leaves the prefill instance (as papers report), or when it "
                   "reaches the client through the decode instance (prefill + KV transfer + first decode step, "
                   "what a client of vLLM's P/D proxy measures). The client mode also runs the first token through "
                   "the decode instance, as the proxy does, so the two are not the same run (docs/pd_realism.md).")
@click.option("--slo-ttft-ms", type=float, default=None, callback=slo_ms,
              help="TTFT SLO: reports the share of requests within it and marks it on the CDF plot (with "
                   "--slo-tpot-ms).")
@click.option("--slo-tpot-ms", type=float, default=None, callback=slo_ms,
              help="TPOT SLO: as --slo-ttft-ms (give both or neither).")
@click.option("--plot", is_flag=True, help="Write PNG plots beside the CSV.")
@click.option("--quiet", is_flag=True, help="No progress bar or progress lines.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors (accepted by every command).")
def run_cmd(cluster_config: Path, dataset: Path | None, dataset_format: str | None, window: str | None,
            time_scale: float, output: Path, num_requests: int | None, rate_per_s: float | None,
            concurrency: int | None, client_delay_ms: float, input_len: str | None, output_len: str | None, seed: int,
            prefill_policy: str | None, decode_policy: str | None, profile_dir: Path | None,
            profiles_root: Path | None, max_num_seqs: int | None, max_num_batched_tokens: int | None,
            block_size: int | None, enable_chunked_prefill: bool | None, dtype: str | None,
            async_scheduling: bool | None, enable_prefix_caching: bool | None, gpu_memory_utilization: float | None,
            mem_util: float | None, kv_cache_dtype: str | None, long_prefill_token_threshold: int | None,
            scheduler_reserve_full_isl: bool | None, kv_cache_memory_bytes: int | None,
            disable_custom_all_reduce: bool | None,
            allreduce_rms_fusion: bool | None, step_overhead_us: float, step_time_margin_pct: float,
            max_sim_time: float | None, log_interval: float | None, ttft_mode: str, slo_ttft_ms: float | None,
            slo_tpot_ms: float | None, plot: bool, quiet: bool, debug: bool) -> None:
    """Simulate a trace on a cluster and report TTFT, TPOT, ITL, latency, throughput and memory."""
    from pdsim.config import load_cluster_config
    from pdsim.config.load import option_shown
    from pdsim.engine.cluster import SimOptions, simulate
    from pdsim.metrics.files import check_run_output, write_run_outputs
    from pdsim.metrics.summary import format_summary, requests_frame
    from pdsim.perf.interp import extrapolations_gathered
    from pdsim.progress import ProgressBar

    existing_folder(profiles_root, "--profiles-root")
    profiles_root = profiles_root if profiles_root is not None else bundled_path("profiles")
    check_run_output(output, _run_inputs(cluster_config, dataset, profile_dir, profiles_root, output))
    ctx = click.get_current_context()
    if concurrency is None and unused_options(ctx, "client_delay_ms"):
        raise PdsimError("--client-delay-ms: applies to a closed loop (--concurrency); an open-loop trace's "
                         "requests arrive at its own times")
    if (slo_ttft_ms is None) != (slo_tpot_ms is None):
        raise PdsimError("--slo-ttft-ms/--slo-tpot-ms: give both or neither")
    # Beside --rate: --time-scale at another value than 1 (given at 1, it is noted as ignored).
    scaled = rate_per_s is not None and dataset is not None and concurrency is None and bool(
        unused_options(ctx, "time_scale"))
    if dataset is None and (unused := unused_options(ctx, "window", "dataset_format", "time_scale")):
        raise PdsimError(f"{', '.join(unused)}: appl{'ies' if len(unused) == 1 else 'y'} to a --dataset; a synthetic "
                         "closed loop has no trace")
    if concurrency is not None and dataset is not None and unused_options(ctx, "time_scale"):
        raise PdsimError("--time-scale: a closed loop's clients send when their last request ends, so the trace's "
                         "arrival times are not used (its lengths are)")
    if rate_per_s is not None and (dataset is None or concurrency is not None or scaled):
        what = ("a closed loop's clients send when their last request ends" if concurrency is not None else
                "give one of them, not both" if dataset is not None else "it rescales a --dataset's arrivals")
        raise PdsimError(f"--rate: applies to an open-loop --dataset without --time-scale ({what})")
    overrides = {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
                 "block_size": block_size, "enable_chunked_prefill": enable_chunked_prefill, "dtype": dtype,
                 "async_scheduling": async_scheduling, "enable_prefix_caching": enable_prefix_caching,
                 "gpu_memory_utilization": gpu_memory_utilization, "kv_cache_memory_bytes": kv_cache_memory_bytes,
                 "disable_custom_all_reduce": disable_custom_all_reduce, "allreduce_rms_fusion": allreduce_rms_fusion,
                 "kv_cache_dtype": kv_cache_dtype, "long_prefill_token_threshold": long_prefill_token_threshold,
                 "scheduler_reserve_full_isl": scheduler_reserve_full_isl, MEM_UTIL_OVERRIDE: mem_util}
    if mem_util is not None and gpu_memory_utilization is not None:
        raise PdsimError("--npu-memory-utilization (LLMServingSim's rule, KV = mem_size x it - weights) and "
                         "--gpu-memory-utilization (vLLM's accounting): give one")
    given = ", ".join(option_shown(k, v) for k, v in overrides.items() if v is not None)
    try:
        cfg = load_cluster_config(cluster_config, overrides, from_command_line=True)
    except ConfigError as e:
        if given:
            try:
                load_cluster_config(cluster_config)
            except ConfigError as written:
                if str(written) == str(e):  # the config's own error, which the options did not cause
                    raise written from None
        raise _from_command_line(e, given) from None
    if profile_dir is None:  # the instances' own profile folders, which the config names
        check_run_output(output, [p for d in dict.fromkeys(ref.config.profile_dir for ref in cfg.instances())
                                  for p in _profile_inputs(None if d is None else Path(d))])
    for note in _options_without_effect(ctx, cfg):
        click.echo(f"note: {note}", err=True)
    trace = _run_trace(dataset, dataset_format, window, time_scale, num_requests, input_len, output_len,
                       concurrency, seed, rate_per_s)
    opts = SimOptions(
        seed=seed, prefill_policy=prefill_policy, decode_policy=decode_policy,
        profile_dir=str(profile_dir) if profile_dir else None, profiles_root=str(profiles_root),
        step_overhead_us=step_overhead_us, max_sim_time_s=max_sim_time,
        sample_interval_s=log_interval or 1.0, concurrency=concurrency, ttft_mode=ttft_mode,
        client_delay_s=client_delay_ms / 1e3,  # used by the closed loop only
    )
    bar = ProgressBar("simulating", enabled=False if quiet else None)
    on_sample = _progress_lines(bar) if not quiet and log_interval is not None else None

    started = time.perf_counter()
    with extrapolations_gathered():  # said once per table among the summary's notes (profile_notes)
        try:
            result = simulate(cfg, trace, opts, source=str(cluster_config), on_sample=on_sample,
                              on_progress=lambda done, total: bar.update(done, total, "requests"))
        except ConfigError as e:  # an instance that cannot be built (e.g. no room for its KV cache)
            raise _from_command_line(e, given) from None
        except ProfileError as e:  # of the options, only --dtype picks what a profile must give
            raise _from_command_line(e, option_shown("dtype", dtype) if dtype is not None else "") from None
        wall_s = time.perf_counter() - started
        bar.close()

        source = dataset if dataset is not None else f"synthetic input {input_len} output {output_len}"
        df = requests_frame(result)
        summary = _run_summary(result, df, wall_s, cluster_config, source, concurrency, seed, slo_ttft_ms,
                               slo_tpot_ms)
        if dataset is not None:  # how the trace's arrivals were cut and rescaled, so the run can be made again
            summary["dataset_selection"] = {"dataset_format": dataset_format, "window": window,
                                            "num_requests": num_requests, "time_scale": time_scale,
                                            "rate_per_s": rate_per_s}
        if step_time_margin_pct:
            summary["step_time_margin"] = _step_time_margin(cfg, trace, opts, str(cluster_config),
                                                            step_time_margin_pct, quiet)
    bar.status(f"simulated {len(trace):,} requests; writing the reports ...")
    try:
        written = write_run_outputs(output, df, summary, result, plot)
    finally:
        bar.close()

    loop = f", closed loop with {concurrency} clients" if concurrency else ""
    if concurrency and concurrency > len(trace):  # the clients past the requests never send
        loop += f" (only {len(trace)} of them send: one request each)"
    click.echo(f"pdsim: {cluster_config} with {source}: {len(trace)} requests{loop}, "
               f"simulated {result.sim_end_s:.1f} s in {wall_s:.2f} s wall")
    click.echo(format_summary(summary))
    click.echo("wrote " + ", ".join(str(p) for p in written))


def _run_inputs(cluster_config: Path, dataset: Path | None, profile_dir: Path | None,
                profiles_root: Path, output: Path) -> list[Path | None]:
    """Every file or folder `run` reads, which none of its outputs may be written over or into: the
    profile folders too (a table overwritten by a CSV would time the next run), those under the
    profiles root included (the bundled one when no other is given, as runs look profiles up there)."""
    from pdsim.config.load import config_inputs
    from pdsim.errors import TraceError

    if dataset is not None and dataset.is_dir():  # as reading it would say, not blamed on an output inside it
        raise TraceError(f"{dataset}: cannot read trace (Is a directory)")
    inputs: list[Path | None] = [*config_inputs(cluster_config), dataset]
    return inputs + _profile_inputs(profile_dir) + _profile_folders_around(profiles_root, output.parent)


def _profile_inputs(profile_dir: Path | None) -> list[Path]:
    """A profile folder, and the meta.yaml beside an LLMServingSim tpN/ folder."""
    if profile_dir is None:
        return []
    if profile_dir.name.startswith("tp") and not (profile_dir / "meta.json").is_file():
        return [profile_dir, profile_dir.parent / "meta.yaml"]
    return [profile_dir]


def _profile_folders_around(root: Path, folder: Path) -> list[Path]:
    """The profile folders under a profiles root that `folder` (where a run writes) lies in, at the depths
    <hw>/<org>/<model>/<dtype>/tp<N> puts them (a model without an organisation one less; an
    LLMServingSim meta.yaml one above its tpN/). Only the folders above the output are looked at, not
    the whole root, so a large root costs nothing at start-up; and only profile folders, as a run may
    write beside them (tests point --profiles-root at an empty scratch folder to have step times
    estimated, and write there)."""
    try:
        parts = folder.resolve().relative_to(root.resolve()).parts
    except ValueError:
        return []  # the output is outside the root
    above = [root.joinpath(*parts[:depth]) for depth in range(2, min(len(parts), 5) + 1)]
    return [p for p in above if (p / "meta.json").is_file() or (p / "meta.yaml").is_file()]


def _step_time_margin(cfg: ClusterConfig, trace: list[TraceRequest], opts: SimOptions, source: str,
                      margin_pct: float, quiet: bool) -> dict:
    """TTFT, TPOT and E2E (mean/p50/p90/p99) of the same run with every engine step margin_pct % faster
    and slower: how far a step-time error of that size moves them."""
    from pdsim.engine.cluster import simulate
    from pdsim.metrics.summary import requests_frame, summarize
    from pdsim.perf.scaled import margin_scales
    from pdsim.progress import ProgressBar

    out: dict = {"margin_pct": margin_pct}
    for side, scale in margin_scales(margin_pct).items():
        bar = ProgressBar(f"steps {margin_pct:g}% {side}", enabled=False if quiet else None)
        result = simulate(cfg, trace, dataclasses.replace(opts, step_time_scale=scale), source=source,
                          on_progress=lambda done, total, bar=bar: bar.update(done, total, "requests"))
        bar.close()
        summary = summarize(result, requests_frame(result))
        out[side] = {key: summary[key] for key in ("finished", "ttft_ms", "tpot_ms", "e2e_ms")}
    return out


def _options_without_effect(ctx: click.Context, cfg: ClusterConfig) -> list[str]:
    """Options given that this cluster gives nothing to act on, said rather than taken in silence: a routing
    policy over a pool of fewer than two routing units (a DP group is one), a TP all-reduce switch without TP,
    the client's TTFT without decode instances."""
    from pdsim.config.load import option_shown

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

    refs = cfg.instances()
    notes = []
    for name, decode in (("prefill_policy", False), ("decode_policy", True)):
        units = cfg.routing_units(decode)
        if given(name) and len(units) < 2:
            what = ("no decode instance" if not units else
                    "one DP group" if next(iter(units)) in cfg.dp_groups() else "one instance")
            notes.append(f"--{name.replace('_', '-')} {ctx.params[name]}: routes nothing here ({what} to choose "
                         "among)")
    if not any(r.config.tp_size > 1 for r in refs):
        notes += [f"{option_shown(name, ctx.params[name])}: no instance has TP >= 2, so there is no TP all-reduce to "
                  "set" for name in ("disable_custom_all_reduce", "allreduce_rms_fusion") if given(name)]
    if given("ttft_mode") and ctx.params["ttft_mode"] == "client" and not any(r.config.pd_type == "decode"
                                                                             for r in refs):
        notes.append("--ttft-mode client: no decode instance, so the first token reaches the client from the "
                     "instance that made it (the same as prefill)")
    return notes


def _from_command_line(error: PdsimError, given: str) -> PdsimError:
    """An error building the instances that the command line's overrides may have caused (the config may be fine
    as written), of the error's own kind."""
    return type(error)(f"{error} (with {given} from the command line)") if given else error


def _run_trace(dataset: Path | None, dataset_format: str | None, window: str | None, time_scale: float,
               num_requests: int | None, input_len: str | None, output_len: str | None,
               concurrency: int | None, seed: int, rate_per_s: float | None = None) -> list:
    """The requests of a run: the dataset's, or synthetic ones for a closed loop without one."""
    from pdsim.workload.readers import load_dataset

    if dataset is not None:
        if input_len is not None or output_len is not None:
            raise PdsimError("--input-len/--output-len: only without --dataset (lengths come from the trace)")
        trace = load_dataset(dataset, dataset_format, window, time_scale, max_requests=num_requests,
                             rate_per_s=rate_per_s)
        if num_requests is not None and num_requests > len(trace):
            print(f"note: --num-requests {num_requests}: the trace has {len(trace)} requests"
                  f"{' in that window' if window else ''}; all are used", file=sys.stderr)
        return trace
    return _synthetic_trace(input_len, output_len, num_requests, concurrency, seed)


def _progress_lines(bar: ProgressBar) -> Callable[[float, list[Sample]], None]:
    """An on_sample callback printing one line per sample: requests in each phase, prompt and decode
    tokens per second since the previous line, and each instance's memory."""
    last: dict[str, tuple[float, int, int]] = {}

    def on_sample(now: float, snap: list[Sample]) -> None:
        prompt = sum(s.prompt_tokens for s in snap)
        decode = sum(s.decode_tokens for s in snap)
        t0, p0, d0 = last.get("all", (0.0, 0, 0))
        dt = now - t0
        last["all"] = (now, prompt, decode)
        if dt <= 0:
            return
        mem = ", ".join(f"{s.mem_used_gb:.1f} GB" for s in snap)
        bar.message(
            f"[INFO] t={now:.1f}s P={sum(s.prefill_reqs for s in snap)} D={sum(s.decode_reqs for s in snap)} "
            f"W={sum(s.waiting_reqs for s in snap)} prompt_t={_si(( prompt - p0) / dt)} tok/s "
            f"decode_t={_si((decode - d0) / dt)} tok/s npu_mem=[{mem}]"
        )

    return on_sample


def _run_summary(result: SimulationResult, df: pd.DataFrame, wall_s: float, cluster_config: Path, source: object,
                 concurrency: int | None, seed: int, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> dict:
    """run_summary.json: the metrics summary, what was run, the offered load (open loop) and the
    SLO attainment (when both SLOs are given)."""
    from pdsim.metrics.load import load_report
    from pdsim.metrics.summary import summarize

    summary = summarize(result, df, wall_s=wall_s, concurrency=concurrency)
    summary["cluster_config"] = str(cluster_config)
    summary["dataset"] = str(source)
    summary["concurrency"] = concurrency
    summary["seed"] = seed
    if concurrency is None:
        summary["load"] = load_report(df, result.sim_end_s)
    if slo_ttft_ms is not None and slo_tpot_ms is not None:
        summary["slo"] = _slo_attainment(df, slo_ttft_ms, slo_tpot_ms)
    return summary


def _slo_attainment(df: pd.DataFrame, ttft_ms: float, tpot_ms: float) -> dict:
    """Shares of the requests that arrived within each SLO; a request not finished meets neither. A one-token
    output has no TPOT and meets that SLO. (A run stopped by --max-sim-time leaves out those it never saw arrive.)"""
    from pdsim.metrics.load import arrived_not

    df = df[~arrived_not(df)]
    finished = df.status == "finished"
    ttft_ok = finished & (df.ttft_ms <= ttft_ms)
    tpot_ok = finished & (df.tpot_ms.isna() | (df.tpot_ms <= tpot_ms))
    n = len(df) or math.nan  # none arrived: no share, not a share of 0
    return {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "requests": len(df), "attain_ttft": float(ttft_ok.sum() / n),
            "attain_tpot": float(tpot_ok.sum() / n), "attain_both": float((ttft_ok & tpot_ok).sum() / n)}


def _synthetic_trace(input_len: str | None, output_len: str | None, num_requests: int | None,
                     concurrency: int | None, seed: int) -> list[TraceRequest]:
    from pdsim.workload.generate import generate_requests

    if input_len is None or output_len is None or num_requests is None or concurrency is None:
        raise PdsimError(
            "--dataset: missing; give a trace, or --concurrency with --num-requests, "
            "--input-len and --output-len"
        )

    def spec(value: str) -> str:
        return f"fixed:{value}" if value.isdigit() else value

    # The rate is irrelevant in a closed loop: arrivals follow completions.
    return generate_requests(num_requests, 1.0, spec(input_len), spec(output_len), seed=seed)


@cli.command("docs", short_help="Print one of pdsim's docs (pdsim docs memory), or list them.")
@click.argument("name", required=False)
@click.option("--path", "path_only", is_flag=True, help="Print the doc's path instead of its text.")
def docs(name: str | None, path_only: bool) -> None:
    """Print one of pdsim's docs, e.g. `pdsim docs memory` for docs/memory.md; without NAME, list them.

    Notes and errors cite these files as docs/NAME.md; they ship with the package."""
    folder = bundled_path("docs")
    names = sorted(p.stem for p in folder.glob("*.md"))
    if name is None:
        click.echo(f"pdsim's docs, in {folder}:")
        for stem in names:
            click.echo(f"  {stem}")
        return
    stem = Path(name).name.removesuffix(".md")
    stem = {n.casefold(): n for n in names}.get(stem.casefold(), stem)  # `pdsim docs MEMORY` is the memory doc
    if stem not in names:
        raise PdsimError(f"docs: no doc named {name!r}{did_you_mean(stem, names)}; docs: {', '.join(names)}")
    path = folder / f"{stem}.md"
    click.echo(path if path_only else path.read_text(encoding="utf-8"), nl=path_only)


def _si(x: float) -> str:
    return f"{x / 1e3:.1f}k" if abs(x) >= 1e3 else f"{x:.0f}"


def _attach_subcommands() -> None:
    from pdsim.workload.cli import workload

    cli.add_command(workload)
    try:
        from pdsim.profiler.cli import profile
    except ImportError:  # the profiler package is optional at import time; it never imports torch eagerly
        profile = click.Group("profile", help="Latency profiles: measure, estimate, import.")
    from pdsim.perf.cli import estimate

    profile.add_command(estimate)
    from pdsim.validate.cli import calibrate, import_aiconfigurator, validate

    profile.add_command(import_aiconfigurator)
    cli.add_command(profile)
    cli.add_command(validate)
    cli.add_command(calibrate)
    from pdsim.sweep.cli import search, sweep

    cli.add_command(sweep)
    cli.add_command(search)


_attach_subcommands()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    # A global flag, read here: every command accepts it, whether or not its --help lists it.
    args = [a for a in args if a != "--debug"]
    previous = _on_sigterm(_terminated)
    try:
        cli.main(args=args, prog_name="pdsim", standalone_mode=False)
    except PdsimError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as exc:  # Ctrl-C or SIGTERM, which click turns into Abort
        if isinstance(exc.__cause__, EOFError):  # click turns an EOFError into Abort too: an input that ends early
            if debug:
                raise exc.__cause__ from None
            click.echo(f"error: an input ended early ({exc.__cause__ or 'EOFError'}: a compressed file cut short?); "
                       "--debug shows which", err=True)
            sys.exit(2)
        terminated = isinstance(exc.__cause__, _Terminated)
        click.echo("terminated" if terminated else "aborted", err=True)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    except KeyboardInterrupt:  # a second Ctrl-C, while click handled the first
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # the file system refused (disk full, a folder gone mid-run): no bug of pdsim's
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug in pdsim, not bad input: say so, keep the traceback for --debug
        if debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback, "
                   "and please report it)", err=True)
        sys.exit(1)
    finally:
        _on_sigterm(previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as Ctrl-C is: outputs being staged are discarded, none is left
    half-written beside its path (pdsim/outputs.py)."""


def _terminated(signum: int, frame: object) -> None:
    # A sweep's pool workers, forked with SIGTERM held back, restore its default before they take it
    # (pdsim/sweep/runner.py, _init_worker): this runs in the process whose main() installed it.
    raise _Terminated


def _on_sigterm(handler: object) -> object:
    """Install `handler` for SIGTERM; returns the one it replaces (None where this is not the main thread, where
    Python sets no handler)."""
    if handler is None:
        return None
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding program's worker): leave its handling as it is
        return None
