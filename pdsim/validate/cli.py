"""`pdsim validate`, `pdsim calibrate` and `pdsim profile import-aiconfigurator`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from pdsim.bundled import InputFile, InputFolder
from pdsim.cli_checks import OutputFile, OutputFolder, number_in, unused_options
from pdsim.config.load import config_inputs
from pdsim.errors import PdsimError, PrecisionMismatch
from pdsim.outputs import OutputSet, check_output_file, write_json_atomic
from pdsim.perf.scaled import margin_scales
from pdsim.progress import ProgressBar
from pdsim.text import listed
from pdsim.validate.kv_capacity import capacity_line, replay_kv_line
from pdsim.validate.recorded import engine_log_beside, kv_override, replay_config

if TYPE_CHECKING:
    import pandas as pd

    from pdsim.config import ClusterConfig
    from pdsim.engine.cluster import SimOptions
    from pdsim.engine.result import SimulationResult
    from pdsim.validate.measured_run import MeasuredRun


def _sim_options(profile_dir: Path | None, step_overhead_us: float, run: MeasuredRun | None = None,
                 client_delay_ms: float = 0.0, ttft_mode: str = "client") -> SimOptions:
    """Simulation options; a closed-loop measured run (run.concurrency) gets the client delay, as
    closed-loop tables do (without one a successor would arrive at the very instant its step
    ends), and, when it has them (aiperf), its own measured gaps between a request's end and the
    client's next send."""
    from pdsim.engine.cluster import SimOptions

    if client_delay_ms < 0:
        raise PdsimError(f"--client-delay-ms: expected a delay >= 0, got {client_delay_ms}")
    # A P/D replay's TTFT is by default the client's, through the decode instance, as a measured run's is.
    opts = SimOptions(profile_dir=str(profile_dir) if profile_dir else None, step_overhead_us=step_overhead_us,
                      ttft_mode=ttft_mode)
    if run is not None:  # a number in (0, 1] or absent: replay_config checked it
        opts.recorded_gpu_memory_utilization = run.engine_kwargs.get("gpu_memory_utilization")
        opts.recorded_max_model_len = run.max_model_len
        if run.max_model_len is None and run.records_engine_kwargs:
            opts.max_model_len_recorded_as = "fit" if run.max_model_len_fits_memory else "default"
    if run is not None and run.concurrency is not None:
        opts.client_delay_s = client_delay_ms / 1e3
        if run.client_gaps_s is not None:
            opts.client_send_gaps_s = tuple(float(g) for g in run.client_gaps_s)
    return opts


def _closed_loop_options(f: Callable) -> Callable:
    """Options describing how a closed-loop table was measured (shared by validate and calibrate)."""
    options = [
        click.option("--model", default=None, help="Closed-loop tables: model id (default: the table's model_path)."),
        click.option("--hardware", default="H100-SXM", show_default=True,
                     help="Closed-loop tables: pdsim hardware; a table's rows measured on another GPU (its system "
                          "column) are skipped."),
        click.option("--mem-gb", type=float, default=None, callback=number_in(0, 1e6, low_open=True),
                     help="Closed-loop tables: GPU memory (GB).  [default: the --hardware's own, from pdsim's "
                          "hardware spec: 80 for H100-SXM]"),
        click.option("--engine-preset", type=click.Choice(["aiconfigurator", "vllm-serve"]), default="aiconfigurator",
                     show_default=True,
                     help="Closed-loop tables: the engine settings per row. aiconfigurator: what its generator "
                          "deploys (max_num_seqs = concurrency, max_num_batched_tokens = concurrency + isl + 1500); "
                          "vllm-serve: `vllm serve` defaults on >= 70 GiB GPUs (1024, 8192)."),
        click.option("--rounds", default=20, show_default=True,
                     help="Closed-loop tables: measured requests per client (aiperf --num-requests = rounds x "
                          "concurrency)."),
        click.option("--client-delay-ms", default=1.0, show_default=True, callback=number_in(0, 1e6),
                     help="Closed-loop tables and closed-loop runs: mean client-to-engine delay per request "
                          "(uniform on [0, 2 x mean], counted in TTFT). aiperf closed-loop runs also wait their "
                          "own measured gaps between a request's end and the next send."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


# Options of one kind of --measured only (parameter names): given for the other kind they would change
# nothing, so they are refused (_refuse_unused).
TABLE_OPTIONS = ("model", "hardware", "mem_gb", "engine_preset", "rounds")
TABLE_KIND = "closed-loop tables"
RUN_KIND = "per-request runs (engine JSONL, vllm bench JSON, aiperf)"


def _refuse_unused(ctx: click.Context, names: tuple[str, ...], measured: Path, applies_to: str, why: str) -> None:
    """Refuse the options among `names` that the user gave although they do nothing for this --measured."""
    given = unused_options(ctx, *names)
    if given:
        verb, it, them = ("applies", "it", "it") if len(given) == 1 else ("apply", "they", "them")
        raise PdsimError(f"{', '.join(given)}: {verb} to {applies_to} only; {measured} {why}, so {it} would change "
                         f"nothing (leave {them} out)")


def _pick_up_order_note(run: MeasuredRun, cfg: ClusterConfig, clock: str) -> None:
    """On the engine clock a request reaches the replay's router when the engine it had been routed to picked it
    up. With several engines taking arrivals that is not the order they were sent in, and the replay may route
    requests elsewhere (a DP group counts as one: its log is the one engine's): said, with the option that
    replays the order they were sent in."""
    if clock != "engine" or run.latency_origin != "pickup":
        return
    takers = cfg.routing_units(decode=False)
    if len(takers) > 1:
        run.notes.append(f"NOTE: the config routes arrivals among {len(takers)} engines: on the engine clock each "
                         "request reaches the router when the engine it went to picked it up, which is not the order "
                         "they were sent in, so the replay may route it elsewhere; --clock client replays the "
                         "client's order")


def _refuse_open_loop_delay(ctx: click.Context, run: MeasuredRun, measured: Path) -> None:
    """A client delay applies where clients wait for their previous request (a closed loop): an open-loop
    run's requests arrive at their own recorded times."""
    if run.concurrency is None and unused_options(ctx, "client_delay_ms"):
        raise PdsimError(f"--client-delay-ms: applies to closed-loop tables and closed-loop runs only; {measured} is "
                         "an open-loop run, whose requests arrive at their recorded times, so it would change nothing "
                         "(leave it out)")


def _table_mem_gb(hardware: str, mem_gb: float | None) -> float:
    """--mem-gb, else the GPU's own memory (the spec's mem_size_gb; 80 for H100-SXM, as before), so a table
    simulated on a larger GPU is not squeezed into an H100's 80 GB."""
    from pdsim.hardware import get_hardware, known_hardware

    if mem_gb is not None:
        return mem_gb
    spec = get_hardware(hardware)
    if spec is None:
        raise PdsimError(f"--mem-gb: needed, pdsim has no spec of --hardware {hardware} to take its memory from "
                         f"(specs: {', '.join(known_hardware())})")
    return spec.mem_size_gb


def _closed_loop_simulator(measured: Path, profile_dir: Path | None, model: str | None, hardware: str,
                           mem_gb: float | None, engine_preset: str, rounds: int, client_delay_ms: float,
                           async_scheduling: bool | None) -> Callable[[float, float, ProgressBar], pd.DataFrame]:
    """(step_overhead_us, step_time_scale, progress bar) -> the table with every row simulated (see
    closed_loop.simulate_table)."""
    from pdsim.hardware import canonical_hardware_name, family_board
    from pdsim.perf.profile import profile_path
    from pdsim.validate.closed_loop import ENGINE_PRESETS, simulate_table
    from pdsim.validate.closed_loop_table import FILE_LINE, read_closed_loop_table

    # The board the rows run on, as a config would name it (any spelling; "H100" with 94 GB is the NVL): the rows'
    # system column, the profile folder and the simulation all take this one.
    board = (family_board(hardware, mem_gb) if mem_gb is not None else None) or canonical_hardware_name(
        hardware)
    mem_gb = _table_mem_gb(board, mem_gb)
    hardware = board
    if not 1 <= rounds <= 1000:  # each row simulates rounds x concurrency requests
        raise PdsimError(f"--rounds: expected a number from 1 to 1000 (requests per client of each row), got {rounds}")
    if client_delay_ms < 0:
        raise PdsimError(f"--client-delay-ms: expected a delay >= 0, got {client_delay_ms}")
    table = read_closed_loop_table(measured)
    if not model and "model_path" not in table:
        raise PdsimError("--model: needed (the table has no model_path column)")
    repeated = table.index[table.duplicated(keep="first")].tolist()
    if repeated:  # a copied line, or a measurement repeated: each weighs in the MAPE as a row of its own
        where = f" (line{'s' * (len(repeated) > 1)} {listed([str(i) for i in repeated])})" if (
            table.index.name == FILE_LINE) else ""
        click.echo(f"NOTE: {len(repeated)} row(s) repeat an earlier row whole{where}: each is simulated and counted "
                   "in the figures as a row of its own")

    def lookup(row_model: str, tp: int, precision: str) -> str | None:
        return str(profile_path(profile_dir, hardware, row_model, precision, tp)) if profile_dir else None

    preset = ENGINE_PRESETS[engine_preset]

    def engine(concurrency: int, isl: int) -> dict:
        given = {} if async_scheduling is None else {"async_scheduling": async_scheduling}
        return {**preset(concurrency, isl), **given}  # else each row's vLLM version's default

    def simulate(step_overhead_us: float, step_time_scale: float, bar: ProgressBar) -> pd.DataFrame:
        opts = _sim_options(None, step_overhead_us)
        opts.client_delay_s = client_delay_ms / 1e3
        opts.step_time_scale = step_time_scale
        with bar:
            return simulate_table(table, model, hardware, mem_gb, None, opts, rounds, engine, profile_lookup=lookup,
                                  on_row=lambda done, total: bar.update(done, total, "rows"))

    return simulate


def _eager_profile_note(run: MeasuredRun, result: SimulationResult) -> None:
    """A profile measured with enforce_eager (LLMServingSim's) times vLLM's custom CUDA ops; an engine
    that compiled its model (vLLM's default) ran Inductor's kernels instead, which differ at prefill
    sizes (docs/validation.md): said, not corrected."""
    if run.engine_kwargs.get("enforce_eager") is True or not run.compiles()[0]:
        return  # nothing compiled: the engine ran vLLM's custom ops, as the profile did
    recorded = ("records enforce_eager false" if run.engine_kwargs.get("enforce_eager") is False
                else "records no enforce_eager")
    if any(inst.spec.enforce_eager for inst in result.instances):  # the config's, not the run's
        run.notes.append("NOTE: the cluster config's enforce_eager true replays an engine without compilation or "
                         f"CUDA graphs; the run {recorded}, and vLLM's default compiles")
        return
    predictors = [getattr(inst.predictor, "full", inst.predictor) for inst in result.instances]
    if not any(p.profile.meta.engine_enforce_eager for p in predictors):
        return
    run.notes.append(f"the profile was measured with enforce_eager (vLLM's custom CUDA ops); the run {recorded}, "
                     "so its engine compiled the model (vLLM's default) and ran its norms, rotary and "
                     "SiLU as Inductor kernels, which at prefill sizes may be slower than the profile's: not "
                     "corrected (docs/validation.md, the RTX PRO 6000 section, weighs this on that run)")


def _profile_version_note(run: MeasuredRun, result: SimulationResult) -> None:
    """A profile measured with another vLLM release than the run's: its kernels, and so their times, may be
    another release's. Said, not corrected."""
    from pdsim.validate.engine_meta import vllm_major_minor

    ran = run.vllm_version
    if vllm_major_minor(ran) is None:
        return
    devices = [getattr(inst.predictor, "full", inst.predictor).profile.meta.device for inst in result.instances]
    profiled = {str(d["vllm_version"]) for d in devices if isinstance(d, dict) and d.get("vllm_version")}
    other = sorted(v for v in profiled if vllm_major_minor(v) not in (None, vllm_major_minor(ran)))
    if other:
        run.notes.append(f"the profile was measured with vLLM {', '.join(other)}, the run with vLLM {ran}: kernels and "
                         "their times may differ between releases (not corrected)")


def _run_note_lines(run: MeasuredRun) -> list[str]:
    """What the replay took from the run, on one line; a NOTE (something that may make the comparison
    misleading) on a line of its own, where it is not lost among them."""
    plain = [n for n in run.notes if not n.startswith("NOTE: ")]
    return ([f"{run.source}: {len(run.requests)} requests" + "".join(f"; {n}" for n in plain)]
            + [n for n in run.notes if n.startswith("NOTE: ")])


def _estimated_line(rows: int | None = None, of: int | None = None, part: str = "") -> str:
    """The one line that says the comparison is against estimated, not measured, step times (or a part of them:
    the MoE expert layers of a profile without moe.csv)."""
    from pdsim.metrics.summary import ESTIMATED_NOTE

    where = f"in {rows} of {of} simulated rows" if rows is not None else "for at least one instance"
    why = (f"for the {part} (the measured profile has no table of them)" if part else
           f"{where} (no measured profile, or no moe.csv in a MoE one; give --profile-dir)")
    return f"NOTE: {ESTIMATED_NOTE} {why}: the differences above include the estimate's error"


def _prefix_ids(run: MeasuredRun, cfg: ClusterConfig, token_ids: Path | None, remedy: str | None = None) -> None:
    """The prompts' prefix blocks from --token-ids; without them, say that no hits are modelled where
    the engine had prefix caching on, and how to model them (`remedy`; by default --token-ids, naming
    the case folder's workload where the run has one)."""
    from pdsim.validate.measured import case_file

    first = cfg.instances()[0].config
    if token_ids is not None:
        from pdsim.validate.token_ids import attach_prefix_ids

        run.prefix_ids = attach_prefix_ids(run, token_ids, first.block_size)
        run.prefix_block_tokens = first.block_size
        if not first.enable_prefix_caching:
            whose = "in the engine" if run.engine_kwargs.get("enable_prefix_caching") is False else "the config has it"
            run.notes.append(f"prefix caching off in the replay, as {whose}: the token ids make no hits")
    elif first.enable_prefix_caching:
        if remedy is None:
            own = case_file(run.source, "workload.jsonl")
            remedy = ("--token-ids gives them" if own is None
                      else f"the run's case folder has its workload: --token-ids {own} gives them")
        run.notes.append("prefix caching on, but the measured requests carry no token ids: no prefix-cache hits "
                         f"are modelled ({remedy})")


@click.command("validate")
@click.option("--measured", required=True, type=click.Path(exists=True, path_type=Path),
              help="Per-request engine JSONL (or an LLMServingSim-style run folder: its requests.jsonl, with "
                   "meta.json beside it), `vllm bench serve --save-detailed` JSON, an aiperf run (its "
                   "artifacts folder or profile_export.jsonl), or a closed-loop CSV (isl, osl, "
                   "concurrency/batch_size, tp, ttft_ms, tpot_ms: mean ms per row).")
@click.option("--cluster-config", type=InputFile("cluster config"), default=None,
              help="Cluster config of the measured engine (not needed for closed-loop tables).")
@click.option("--profile-dir", type=InputFolder(), default=None,
              help="Profile for every instance; for closed-loop tables, a root holding "
                   "<hw>/<model>/<dtype>/tp<N> (as import-aiconfigurator writes).")
@click.option("--step-overhead-us", default=0.0, show_default=True, callback=number_in(0, 1e6),
              help="Engine CPU time per step (calibrate).")
@click.option("--async-scheduling/--sync-scheduling", default=None,
              help="vLLM's --async-scheduling on every instance (on by default from vLLM 0.14, off up to 0.13).  "
                   "[default: the measured run's meta.json (its engine_kwargs, else its vLLM version's "
                   "default), else the cluster config's; for closed-loop tables each row's"
                   " backend_version's default (off up to vLLM 0.13 and when not recorded, on from 0.14)]")
@click.option("--clock", type=click.Choice(["engine", "client"]), default="engine", show_default=True,
              help="Engine JSONL: which timestamps give the replay's arrival times.")
@click.option("--ttft-mode", type=click.Choice(["client", "prefill"]), default="client", show_default=True,
              help="A config with prefill and decode instances: the replay's TTFT ends at the first token the "
                   "client sees through the decode instance (vLLM's P/D proxy), or at the prefill instance's. "
                   "Colocated instances give the same either way.")
@_closed_loop_options
@click.option("--engine-log", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The measured engine's vLLM log: its 'GPU KV cache size: N tokens' line gives the measured KV "
                   "capacity (else meta.json's kv_cache.num_gpu_blocks beside the run, when there), and its "
                   "start-up lines what the engine fell back to (custom all-reduce off, FlashInfer sampling). "
                   "Default: the one *.log beside the run, if there is exactly one.")
@click.option("--kv-capacity", type=click.Choice(["predicted", "measured"]), default="predicted", show_default=True,
              help="KV capacity the replay uses: pdsim's prediction from the config, or the measured engine's "
                   "(to see timing errors apart from memory errors).")
@click.option("--token-ids", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The workload that fed a per-request run, with its prompts' token ids (LLMServingSim's "
                   "workload.jsonl, input_tok_ids): the replay then gets the engine's prefix-cache hits.")
@click.option("--step-time-margin-pct", default=2.0, show_default=True, callback=number_in(0, 50),
              help="Replay twice more with every engine step this % faster and slower, and print what each "
                   "figure (closed-loop tables: each MAPE) then is: how far a step-time error of that size moves "
                   "it (0: off).")
@click.option("--output", "--out", "output", default="outputs/validate.csv", show_default=True,
              type=OutputFile(), help="Comparison CSV; with --plot the PNGs go beside it.")
@click.option("--plot", is_flag=True, help="Write CDF overlays (measured vs simulated) as PNG, and the running and "
              "waiting requests over time where the run has LLMServingSim's timeseries.csv.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def validate(measured: Path, cluster_config: Path | None, profile_dir: Path | None, model: str | None,
             hardware: str, mem_gb: float | None, step_overhead_us: float, async_scheduling: bool | None, clock: str,
             ttft_mode: str, engine_preset: str, rounds: int, client_delay_ms: float, engine_log: Path | None,
             kv_capacity: str, token_ids: Path | None, step_time_margin_pct: float, output: Path, plot: bool,
             quiet: bool) -> None:
    """Compare a simulated run with a measured one (TTFT, TPOT, ITL, E2E: mean/p50/p90/p95/p99)."""
    from pdsim.validate.closed_loop_table import is_closed_loop_table
    from pdsim.validate.compare import requests_path
    from pdsim.validate.measured import measured_inputs

    ctx = click.get_current_context()
    by_request = requests_path(output)  # the request-by-request file beside --output (per-request runs)
    table_input = is_closed_loop_table(measured)
    if table_input:
        _refuse_unused(ctx, ("cluster_config", "engine_log", "token_ids", "plot", "ttft_mode"), measured, RUN_KIND,
                       "is a closed-loop table (one mean TTFT and TPOT per row, each row's engine built from the "
                       "table options; a .csv is read as one, a per-request run from JSON Lines or a `vllm bench "
                       "serve` JSON)")
        # --kv-capacity predicted and --clock engine only say what a table's replay does anyway.
        if kv_capacity != "predicted":
            _refuse_unused(ctx, ("kv_capacity",), measured, RUN_KIND,
                           "is a closed-loop table, which records no KV capacity (each row's is predicted)")
        if clock != "engine":
            _refuse_unused(ctx, ("clock",), measured, RUN_KIND,
                           "is a closed-loop table, which records no arrival times (its clients are simulated)")
    else:
        _refuse_unused(ctx, TABLE_OPTIONS, measured, TABLE_KIND,
                       "is a per-request run, replayed on its --cluster-config")
    check_output_file(output, "--output", [*measured_inputs(measured), *config_inputs(cluster_config), engine_log,
                                           token_ids, profile_dir],
                      [*(_plot_files(output) if plot else ()), by_request])
    if table_input:
        _validate_table(measured, profile_dir, model, hardware, mem_gb, step_overhead_us, async_scheduling,
                        engine_preset, rounds, client_delay_ms, step_time_margin_pct, output, by_request, quiet)
    else:
        _validate_run(ctx, measured, cluster_config, profile_dir, step_overhead_us, async_scheduling, clock,
                      ttft_mode, client_delay_ms, engine_log, kv_capacity, token_ids, step_time_margin_pct, output,
                      by_request, plot, quiet)


def _validate_table(measured: Path, profile_dir: Path | None, model: str | None, hardware: str, mem_gb: float | None,
                    step_overhead_us: float, async_scheduling: bool | None, engine_preset: str, rounds: int,
                    client_delay_ms: float, step_time_margin_pct: float, output: Path, by_request: Path,
                    quiet: bool) -> None:
    """validate on a closed-loop table: each row simulated as its benchmark ran, the table of rows written."""
    from pdsim.validate.closed_loop import format_rows, require_simulated, with_table_step_margin

    simulate = _closed_loop_simulator(measured, profile_dir, model, hardware, mem_gb, engine_preset, rounds,
                                      client_delay_ms, async_scheduling)
    df = simulate(step_overhead_us, 1.0, _bar("simulating", quiet))
    require_simulated(df)  # before the margin runs and before anything is written
    if step_time_margin_pct:
        scales = margin_scales(step_time_margin_pct)
        faster, slower = (simulate(step_overhead_us, scale, _bar(f"steps {step_time_margin_pct:g}% {side}", quiet))
                          for side, scale in scales.items())
        df = with_table_step_margin(df, faster, slower, step_time_margin_pct)
    # A table has no request-by-request file: one an earlier replay left beside --output is removed.
    with OutputSet(stale=[by_request]) as out:
        out.stage(output, lambda tmp: df.to_csv(tmp, index=False, float_format="%.4f"))
        out.commit()
    click.echo(format_rows(df))
    ran = df[df.status == "simulated"]
    estimated = int(ran.estimated_profile.astype(bool).sum())
    if estimated:
        click.echo(_estimated_line(estimated, len(ran)))
    click.echo(f"wrote {output}")


def _validate_run(ctx: click.Context, measured: Path, cluster_config: Path | None, profile_dir: Path | None,
                  step_overhead_us: float, async_scheduling: bool | None, clock: str, ttft_mode: str,
                  client_delay_ms: float, engine_log: Path | None, kv_capacity: str, token_ids: Path | None,
                  step_time_margin_pct: float, output: Path, by_request: Path, plot: bool, quiet: bool) -> None:
    """validate on a per-request run: replayed on its cluster config, compared by statistic and request by request."""
    from pdsim.metrics.summary import (
        ESTIMATED_NOTE,
        estimated_part,
        memory_notes,
        profile_notes,
        step_time_sources,
    )
    from pdsim.perf.memory import kv_rule
    from pdsim.validate.compare import (
        compare,
        finished_ids,
        format_table,
        lost_requests,
        per_request,
        replay_losses,
        with_step_margin,
        write_cdf_plots,
    )
    from pdsim.validate.measured import case_file, read_measured

    run = read_measured(measured, clock)
    _refuse_open_loop_delay(ctx, run, measured)
    if clock != "engine" and run.latency_origin != "pickup":
        raise PdsimError(f"--clock {clock}: applies to engine JSONL (per-request engine timestamps) only; {run.source} "
                         "records the client's times only, so it would change nothing (leave it out)")
    if engine_log is None:
        engine_log = engine_log_beside(run)
    cfg = replay_config(cluster_config, run, async_scheduling, engine_log)
    _prefix_ids(run, cfg, token_ids)
    _pick_up_order_note(run, cfg, clock)
    opts = _sim_options(profile_dir, step_overhead_us, run, client_delay_ms, ttft_mode)
    if any(ref.config.pd_type is not None for ref in cfg.instances()):
        run.notes.append("TTFT " + ("as the client sees it, through the decode instance (vLLM's P/D proxy; "
                                    "--ttft-mode prefill: at the prefill instance)" if ttft_mode == "client" else
                                    "at the prefill instance's token (--ttft-mode prefill)"))
    if opts.client_send_gaps_s:
        run.notes.append(f"clients send after the run's own gaps (median {np.median(opts.client_send_gaps_s) * 1e3:.1f}"
                         f" ms after a request ends)")
    if opts.client_delay_s:
        run.notes.append(f"client-to-engine delay uniform on [0, {2 * client_delay_ms:g}] ms")
    kv_measured = kv_override(run, cfg, opts, engine_log, kv_capacity)
    try:
        result = _replay_with_bar(cfg, run, opts, str(cluster_config), _bar("replaying", quiet))
    except PrecisionMismatch as e:  # say where the instance's precision came from
        applied = [n for n in run.notes if n.startswith("quantization ") and "meta.json" in n]
        if not applied:
            raise
        raise PrecisionMismatch(f"{e} (the replay applied {'; '.join(applied)})") from None
    if not any(r.status == "finished" for r in result.requests):
        raise PdsimError(f"{run.source}: {lost_requests(result)}: nothing to compare (the replay: "
                         f"{'; '.join(run.notes)})")
    _eager_profile_note(run, result)
    _profile_version_note(run, result)
    estimated = any(info.estimated_profile for info in result.infos)
    if step_time_margin_pct:
        faster, slower = (_replay_with_bar(cfg, run, dataclasses.replace(opts, step_time_scale=scale),
                                           str(cluster_config), _bar(f"steps {step_time_margin_pct:g}% {side}", quiet))
                          for side, scale in margin_scales(step_time_margin_pct).items())
        # Every figure over the same requests: those all three replays finished.
        among: set[int] | None = finished_ids(result) & finished_ids(faster) & finished_ids(slower)
        table = with_step_margin(compare(run, result, among), compare(run, faster, among),
                                 compare(run, slower, among), step_time_margin_pct)
    else:
        among = None  # the requests this replay finished
        table = compare(run, result)
    table["estimated_profile"] = estimated
    # The memory side beside the latencies, for scripts that read the CSV (the console prints it as lines below).
    table["kv_capacity_predicted_tokens"] = result.infos[0].kv_predicted_tokens
    table["kv_capacity_measured_tokens"] = kv_measured.tokens if kv_measured is not None else np.nan
    table["kv_capacity_replayed"] = kv_capacity
    table["preemptions_simulated"] = sum(inst.sched.num_preemptions for inst in result.instances)
    with OutputSet() as out:  # the two files land together
        out.stage(output, lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f"))
        out.stage(by_request, lambda tmp: per_request(run, result).to_csv(tmp, index=False, float_format="%.4f"))
        out.commit()
    for line in _run_note_lines(run):
        click.echo(line)
    for note in profile_notes(result):
        if note != ESTIMATED_NOTE:  # said after the table, where the figures it qualifies are
            click.echo(f"note: {note}")
    info = result.infos[0]
    rule = kv_rule(cfg.instances()[0].config)
    filled = any(inst.sched.num_preemptions or inst.kv.peak_used >= inst.kv.num_blocks for inst in result.instances)
    head, *notes = capacity_line(info.kv_predicted_tokens, rule, kv_measured, kv_capacity, filled,
                                 engine_log, len(result.instances)).split("\n")
    click.echo(head)
    for how in memory_notes(result):  # the arithmetic behind it, and what in it is assumed
        click.echo(f"  {how}")
    click.echo(f"  {replay_kv_line(result.instances)}")
    for note in notes:
        click.echo(note)
    for line in step_time_sources((i.id, i.profile_path, i.estimated_profile, i.estimated_part) for i in result.infos):
        click.echo(line)
    state, state_plot = _engine_state(run, result, output.with_suffix("") if plot else None)
    if state is not None:
        click.echo(state)
    if (lost := replay_losses(result)) is not None:
        click.echo(f"NOTE: {lost}")
    click.echo(format_table(table))
    if step_time_margin_pct:
        click.echo(f"(last column: the differences with every replayed step {step_time_margin_pct:g}% faster and "
                   f"{step_time_margin_pct:g}% slower; a figure that moves much more than {step_time_margin_pct:g}% "
                   "is dominated by queueing, where a small step-time error makes a large latency error)")
    if estimated:
        click.echo(_estimated_line(part=estimated_part((i.estimated_profile, i.estimated_part) for i in result.infos)))
        if profile_dir is None and (own := case_file(run.source, "profile")) is not None:
            click.echo(f"NOTE: the run's case folder has its own profile: --profile-dir {own}")
    written = [output, by_request]
    if plot:
        written += write_cdf_plots(run, result, output.with_suffix(""), among) + ([state_plot] if state_plot else [])
    click.echo("wrote " + ", ".join(str(p) for p in written))


def _engine_state(run: MeasuredRun, result: SimulationResult,
                  plot_prefix: Path | None) -> tuple[str | None, Path | None]:
    """Running and waiting over time against the engine's own timeseries.csv, where the run is laid out as
    LLMServingSim's runner writes it (requests.jsonl beside it): the line that compares them, and the plot of
    both when plot_prefix is given. A timeseries that cannot be read is said; the comparison above stands."""
    from pdsim.validate.measured import LLMSERVINGSIM_REQUESTS
    from pdsim.validate.timeseries import (
        TIMESERIES,
        engine_state_line,
        first_arrival_tick_s,
        read_timeseries,
        simulated_counts,
        write_state_plot,
    )

    path = Path(run.source).with_name(TIMESERIES)
    if run.latency_origin != "pickup" or Path(run.source).name != LLMSERVINGSIM_REQUESTS or not path.exists():
        return None, None
    try:
        ts = read_timeseries(path)
    except PdsimError as e:
        return f"NOTE: engine state not compared: {e}", None
    if ts.empty:
        return f"NOTE: engine state not compared: {path} has no ticks", None
    offset_s, unknown = first_arrival_tick_s(run.engine_meta, run.first_arrival_wall_s)
    ticks_s = ts.t.to_numpy(dtype=float) - offset_s
    inside = int(((ticks_s >= 0) & (ticks_s <= result.sim_end_s)).sum())
    if inside == 0:  # ticks on another clock (ms, or not from started_at) would compare nothing
        placed = f"at {offset_s:,.3f} s" if unknown is None else f"at 0 ({unknown})"
        return (f"NOTE: engine state not compared: none of the {len(ticks_s)} ticks of {path} falls within the replay "
                f"(0 to {result.sim_end_s:,.1f} s after the first request, placed on the ticks' clock {placed}): "
                "expected its t column in seconds from meta.json's started_at"), None
    running, waiting = simulated_counts(result, ticks_s)
    plot = write_state_plot(ts, running, waiting, plot_prefix) if plot_prefix is not None else None
    return engine_state_line(ts, running, waiting, path, unknown), plot


def _bar(label: str, quiet: bool) -> ProgressBar:
    """A progress bar on stderr: on a terminal, unless --quiet."""
    return ProgressBar(label, enabled=False if quiet else None)


def _replay_with_bar(cfg: ClusterConfig, run: MeasuredRun, opts: SimOptions, source: str,
                     bar: ProgressBar) -> SimulationResult:
    from pdsim.perf.interp import extrapolations_gathered
    from pdsim.validate.compare import replay

    with bar, extrapolations_gathered():  # said once per table among the notes (profile_notes)
        return replay(cfg, run, opts, source, lambda done, total: bar.update(done, total, "requests"))


def _plot_files(output: Path) -> list[Path]:
    """The CDF plots --plot may write beside --output (compare.write_cdf_plots names them so)."""
    from pdsim.validate.compare import plot_paths
    from pdsim.validate.timeseries import state_plot_path

    return [*plot_paths(output.with_suffix("")), state_plot_path(output.with_suffix(""))]


@click.command("calibrate")
@click.option("--measured", required=True, type=click.Path(exists=True, path_type=Path),
              help="A per-request run (as for validate) or a closed-loop table.")
@click.option("--cluster-config", type=InputFile("cluster config"), default=None,
              help="Cluster config of the measured engine (not needed for closed-loop tables).")
@click.option("--profile-dir", type=InputFolder(), default=None, help="As for validate.")
@click.option("--metric", type=click.Choice(["tpot_ms", "e2e_ms", "ttft_ms"]), default="tpot_ms", show_default=True,
              help="Fit on this metric (per-request runs: its mean/p50/p90; tables: its per-row error); the "
                   "others stay held out.")
@click.option("--async-scheduling/--sync-scheduling", default=None,
              help="As for validate.  [default: the run's meta.json, else the config's; for tables each row's "
                   "vLLM version's default]")
@_closed_loop_options
@click.option("--output", "--out", "out", default="outputs/calibration.json", show_default=True,
              type=OutputFile(), help="The fitted overhead and its errors, JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def calibrate(measured: Path, cluster_config: Path | None, profile_dir: Path | None, metric: str,
              async_scheduling: bool | None, model: str | None, hardware: str, mem_gb: float | None,
              engine_preset: str, rounds: int, client_delay_ms: float, out: Path, quiet: bool) -> None:
    """Fit the per-step engine overhead to one measured run or table; writes it as JSON (config knob),
    with the in-sample and leave-one-out error."""
    from pdsim.validate.calibrate import fit_overhead
    from pdsim.validate.closed_loop_table import is_closed_loop_table
    from pdsim.validate.measured import measured_inputs, read_measured

    ctx = click.get_current_context()
    table_input = is_closed_loop_table(measured)
    held_out: dict[float, dict[str, float]] = {}  # overhead -> the other metrics' errors there (errors_at)
    if table_input:
        _refuse_unused(ctx, ("cluster_config",), measured, RUN_KIND,
                       "is a closed-loop table (each row's engine built from the table options)")
    else:
        _refuse_unused(ctx, TABLE_OPTIONS, measured, TABLE_KIND,
                       "is a per-request run, replayed on its --cluster-config")
    check_output_file(out, "--output", [*measured_inputs(measured), *config_inputs(cluster_config), profile_dir])
    # [simulated rows or runs on estimated step times, of how many]: the same at every overhead.
    estimated = [0, 0]
    estimated_what = [""]  # of a run: the part of a measured profile estimated (its MoE expert layers), if only that

    if table_input:
        if metric == "e2e_ms":
            raise PdsimError("--metric: closed-loop tables have ttft_ms and tpot_ms, not e2e_ms")
        simulate = _closed_loop_simulator(measured, profile_dir, model, hardware, mem_gb, engine_preset, rounds,
                                          client_delay_ms, async_scheduling)
        column = {"tpot_ms": "tpot_err_pct", "ttft_ms": "ttft_err_pct"}[metric]
        left_out: list[str] = []  # the same rows at every overhead

        def errors_at(overhead_us: float) -> np.ndarray:
            from pdsim.validate.closed_loop import not_simulated_lines

            df = simulate(overhead_us, 1.0, _bar(f"step_overhead_us {overhead_us:g}", quiet))
            left_out[:] = not_simulated_lines(df)
            ran = df[df.status == "simulated"]
            estimated[:] = [int(ran.estimated_profile.astype(bool).sum()), len(ran)]
            held_out[overhead_us] = {f"{other}_mape_pct": float(ran[f"{other}_err_pct"].abs().mean())
                                     for other in ("ttft", "tpot") if f"{other}_ms" != metric}
            errors = ran[column].dropna().to_numpy()
            if (no_sample := len(ran) - len(errors)) > 0:  # e.g. TPOT of one-token outputs (osl 1)
                left_out.append(f"left out of the fit: {no_sample} simulated row(s) with no {metric} to compare "
                                "(TPOT needs an output of 2 tokens or more)")
            if not len(errors):
                raise PdsimError(f"{measured}: no row to fit on ({'; '.join(left_out) or 'no row simulated'})")
            return errors

        what = f"{metric} per row"
        notes = left_out
    else:
        from pdsim.metrics.summary import ESTIMATED_NOTE, estimated_part, profile_notes
        from pdsim.perf.interp import extrapolation_key
        from pdsim.validate.compare import compare, lost_requests

        run = read_measured(measured)
        _refuse_open_loop_delay(ctx, run, measured)
        engine_log = engine_log_beside(run)
        cfg = replay_config(cluster_config, run, async_scheduling, engine_log)
        _prefix_ids(run, cfg, None, "calibrate takes no --token-ids; validate --token-ids models them")
        _pick_up_order_note(run, cfg, "engine")
        label = {"tpot_ms": "TPOT (ms)", "e2e_ms": "E2E latency (ms)", "ttft_ms": "TTFT (ms)"}[metric]
        left_grid: dict[str, str] = {}  # what priced the steps and where the replays left a table's grid
        recorded_kv = kv_override(run, cfg, _sim_options(profile_dir, 0.0, run, client_delay_ms), engine_log,
                                  "predicted")
        predicted_kv: list[int] = []

        def errors_at(overhead_us: float) -> np.ndarray:
            result = _replay_with_bar(cfg, run, _sim_options(profile_dir, overhead_us, run, client_delay_ms),
                                      str(cluster_config), _bar(f"step_overhead_us {overhead_us:g}", quiet))
            predicted_kv[:] = [result.infos[0].kv_predicted_tokens]
            if (lost := lost_requests(result)) is not None:  # a fit over fewer requests than measured fits nothing
                raise PdsimError(f"{measured}: {lost} (at step_overhead_us {overhead_us:g}): nothing to fit")
            estimated[:] = [int(any(info.estimated_profile for info in result.infos)), 1]
            estimated_what[:] = [estimated_part((i.estimated_profile, i.estimated_part) for i in result.infos)]
            for note in profile_notes(result):  # a table left at other values by another overhead: said once
                left_grid.setdefault(extrapolation_key(note), note)
            table = compare(run, result)
            held_out[overhead_us] = {
                f"{key}_{stat}_diff_pct": float(table[(table.metric == name) & (table.stat == stat)].diff_pct.iloc[0])
                for key, name in (("ttft", "TTFT (ms)"), ("tpot", "TPOT (ms)"), ("e2e", "E2E latency (ms)"))
                if f"{key}_ms" != metric for stat in ("mean", "p50", "p90")}
            sel = table[(table.metric == label) & table.stat.isin(["mean", "p50", "p90"])]
            return sel.diff_pct.to_numpy()

        what = f"{metric} mean/p50/p90"
        # What the replay took from the run and its meta.json, as validate prints it.
        notes = _run_note_lines(run)

    fit = fit_overhead(errors_at)
    if not table_input:
        notes += [f"note: {n}" for n in left_grid.values() if n != ESTIMATED_NOTE]
        if recorded_kv is not None and predicted_kv and predicted_kv[0] != recorded_kv.tokens:
            # The fit's replays size the cache by the config's rule: an overhead fitted so also makes up for a
            # capacity error (more or fewer preemptions and queueing than the engine had).
            notes.append(f"NOTE: the run records its engine's KV capacity, {recorded_kv.tokens:,} tokens "
                         f"({recorded_kv.source}); the fit's replays had the predicted {predicted_kv[0]:,} "
                         f"({(predicted_kv[0] / recorded_kv.tokens - 1) * 100:+.1f}%), so the fitted overhead may "
                         "make up for that difference too: `validate --kv-capacity measured` replays with the "
                         "engine's")
    fitted_us = fit["step_overhead_us"]
    fit.update({"measured": str(measured), "metric": metric, "estimated_profile": estimated[0] > 0,
                "config_knob": {"step_overhead_us": fitted_us},
                # What the fit was made under, and what it does to the metrics it was not fitted on.
                "settings": {"cluster_config": str(cluster_config) if cluster_config else None,
                             "profile_dir": str(profile_dir) if profile_dir else None,
                             "async_scheduling": async_scheduling, "client_delay_ms": client_delay_ms,
                             **({"model": model, "hardware": hardware, "mem_gb": mem_gb, "engine_preset": engine_preset,
                                 "rounds": rounds} if table_input else {})},
                "held_out_at_fit": held_out.get(fitted_us, {}), "held_out_at_0_us": held_out.get(0.0, {})})
    write_json_atomic(out, fit)
    for line in notes:  # the run's notes, or the rows of a table left out of the fit with their reasons
        click.echo(line)
    if fit["at_grid_edge"]:
        click.echo(f"NOTE: the best overhead is the grid's largest, {fit['step_overhead_us']:g} us, and the error was "
                   "still falling there: the run is slower than any overhead on the grid explains (the step times "
                   "or the configuration are off), so this is not a fit to use")
    if fit["at_grid_bottom"]:
        slower = ", the simulation already slower than the run" if fit["signed_err_pct"] > 0 else ""
        click.echo(f"NOTE: the best overhead is the grid's smallest, {fit['step_overhead_us']:g} us: every overhead "
                   f"made the error worse (mean signed error {fit['signed_err_pct']:+.1f}% at "
                   f"{fit['step_overhead_us']:g} us{slower}), so there is nothing for an overhead to explain; an "
                   "error left lies in the step times or the configuration, not in a missing per-step cost")
    loo = ("no leave-one-out error: one sample, none left to fit on" if fit["loo_mape_pct"] is None
           else f"leave-one-out {fit['loo_mape_pct']:.1f}%")
    click.echo(f"step_overhead_us = {fit['step_overhead_us']:g} (MAPE {fit['mape_pct']:.1f}% on {what}, {loo}); "
               f"wrote {out}")
    if fit["held_out_at_fit"]:  # a fit that helps one metric may hurt another
        click.echo(_held_out_line(fit["held_out_at_fit"], fit["held_out_at_0_us"]))
    if estimated[0]:  # the fit is then to the estimate's error as much as to the engine's overhead
        click.echo(_estimated_line(*estimated) if table_input else _estimated_line(part=estimated_what[0]))


def _held_out_line(at_fit: dict[str, float], at_zero: dict[str, float]) -> str:
    """The metrics the fit was not made on, at the fitted overhead and at none: a table's MAPEs, a run's means."""
    parts = []
    for key, value in at_fit.items():
        name, zero = key.split("_")[0].upper(), at_zero.get(key, float("nan"))
        if "_mape_" in key:
            parts.append(f"{name} MAPE {value:.1f}% ({zero:.1f}% at 0 us)")
        elif key.endswith("_mean_diff_pct"):
            parts.append(f"{name} mean {value:+.1f}% ({zero:+.1f}% at 0 us)")
    return "held out, at the fitted overhead: " + ", ".join(parts)


@click.command("import-aiconfigurator")
@click.option("--systems-dir", type=click.Path(path_type=Path), default=None,
              help="aiconfigurator's systems/data folder (default: the installed aiconfigurator package's).")
@click.option("--system", required=True,
              help="aiconfigurator system, one of: a100_sxm, b200_sxm, gb200 (gb200_sxm in older "
              "trees), h100_sxm, h200_sxm, l40s, rtx_pro_6000_server.")
@click.option("--model", required=True, help="Hugging Face id, e.g. Qwen/Qwen3-32B")
@click.option("--tp", type=int, multiple=True, required=True, help="Tensor-parallel size; repeat for several.")
@click.option("--dtype", default="bfloat16", show_default=True, help="Activations and KV dtype (16-bit only).")
@click.option("--quant", "quantization", type=click.Choice(["fp8", "fp8_block"]), default=None,
              help="fp8 weights: layer GEMMs from the table's fp8 / fp8_block rows; writes <dtype> = the scheme.")
@click.option("--out", "--output", "out", default="profiles", show_default=True, type=OutputFolder(),
              help="Profile root; writes <out>/<hardware>/<org>/<model>/<dtype>/tp<N>/.")
def import_aiconfigurator(systems_dir: Path | None, system: str, model: str, tp: tuple[int, ...], dtype: str,
                          quantization: str | None, out: Path) -> None:
    """Build pdsim profiles from NVIDIA aiconfigurator's per-kernel database (aiconfigurator-core's systems data, not
    shipped with pdsim)."""
    from pdsim.models import load_model
    from pdsim.perf.aiconfigurator import find_systems_dir, import_profile

    root = systems_dir or find_systems_dir()
    if root is None:
        raise PdsimError("--systems-dir: not given, and no aiconfigurator database is installed "
                         "(pip install aiconfigurator-core pyarrow installs it, as pdsim's aiconfigurator extra "
                         "does, or give the database folder: <system>/gemm/... or gemm/... directly)")
    if not root.is_dir():
        raise PdsimError(f"--systems-dir {root}: not a folder (aiconfigurator's systems/data, or <system>/gemm/...)")
    spec = load_model(model)
    for n in tp:  # all checked before the first is written, so a bad one leaves none behind
        if n < 1:
            raise PdsimError(f"--tp {n}: expected a positive integer")
        spec.check_tp(n)
    for n in tp:
        click.echo(f"wrote {import_profile(root, system, spec, n, out, dtype, quantization)}")
