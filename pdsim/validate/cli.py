"""`pdsim validate`, `pdsim calibrate` and `pdsim profile import-aiconfigurator`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from pdsim.cli_checks import number_in
from pdsim.errors import PdsimError
from pdsim.outputs import atomic_path, check_output_file, write_json_atomic
from pdsim.validate.kv_capacity import capacity_line

if TYPE_CHECKING:
    from pdsim.engine.cluster import SimOptions
    from pdsim.validate.measured import MeasuredRun


def _sim_options(profile_dir: Path | None, step_overhead_us: float, run: MeasuredRun | None = None,
                 client_delay_ms: float = 0.0) -> SimOptions:
    """Simulation options; a closed-loop measured run (run.concurrency) gets the client delay, as
    closed-loop tables do (without one a successor would arrive at the very instant its step
    ends), and, when it has them (aiperf), its own measured gaps between a request's end and the
    client's next send."""
    from pdsim.engine.cluster import SimOptions

    if client_delay_ms < 0:
        raise PdsimError(f"--client-delay-ms: expected a delay >= 0, got {client_delay_ms}")
    opts = SimOptions(profile_dir=str(profile_dir) if profile_dir else None, step_overhead_us=step_overhead_us)
    if run is not None and run.concurrency is not None:
        opts.client_delay_s = client_delay_ms / 1e3
        if run.client_gaps_s is not None:
            opts.client_send_gaps_s = tuple(float(g) for g in run.client_gaps_s)
    return opts


def _closed_loop_options(f):
    """Options describing how a closed-loop table was measured (shared by validate and calibrate)."""
    options = [
        click.option("--model", default=None, help="Closed-loop tables: model id (default: the table's model_path)."),
        click.option("--hardware", default="H100-SXM", show_default=True, help="Closed-loop tables: pdsim hardware."),
        click.option("--mem-gb", default=80.0, show_default=True,
                     callback=number_in(0, 1e6, low_open=True), help="Closed-loop tables: GPU memory (GB)."),
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


def _closed_loop_simulator(measured: Path, profile_dir: Path | None, model: str | None, hardware: str,
                           mem_gb: float, engine_preset: str, rounds: int, client_delay_ms: float,
                           async_scheduling: bool | None):
    """step_overhead_us -> the table with every row simulated (see closed_loop.simulate_table)."""
    from pdsim.perf.profile import profile_path
    from pdsim.validate.closed_loop import ENGINE_PRESETS, simulate_table
    from pdsim.validate.measured import read_closed_loop_table

    if rounds < 1:
        raise PdsimError(f"--rounds: expected a positive number, got {rounds}")
    if client_delay_ms < 0:
        raise PdsimError(f"--client-delay-ms: expected a delay >= 0, got {client_delay_ms}")
    table = read_closed_loop_table(measured)
    if not model and "model_path" not in table:
        raise PdsimError("--model: needed (the table has no model_path column)")

    def lookup(row_model: str, tp: int, precision: str) -> str | None:
        return str(profile_path(profile_dir, hardware, row_model, precision, tp)) if profile_dir else None

    preset = ENGINE_PRESETS[engine_preset]

    def engine(concurrency: int, isl: int) -> dict:
        return {**preset(concurrency, isl), "async_scheduling": bool(async_scheduling)}

    def simulate(step_overhead_us: float):
        opts = _sim_options(None, step_overhead_us)
        opts.client_delay_s = client_delay_ms / 1e3
        return simulate_table(table, model, hardware, mem_gb, None, opts, rounds, engine, profile_lookup=lookup)

    return simulate


def _replay_config(cluster_config: Path | None, run, async_scheduling: bool | None):
    """The measured engine's cluster config, scheduling as the run did: the option, else what the
    run's meta.json says (noted in the run's notes), else the config's."""
    from pdsim.config import load_cluster_config
    from pdsim.config.load import raw_instances
    from pdsim.errors import ConfigError, read_json_object

    if cluster_config is None:
        raise PdsimError("--cluster-config: needed to replay a per-request run")
    if async_scheduling is None:
        async_scheduling, why = run.async_scheduling()
        if async_scheduling is not None:
            run.notes.append(f"async scheduling {'on' if async_scheduling else 'off'}: {why}")
    reserve, why = run.reserve_full_isl()
    if reserve is not None:
        run.notes.append(f"whole-sequence admission check {'on' if reserve else 'off'}: {why}")
    # What the config itself states, for the notes on what the run's meta.json overrides.
    stated = raw_instances(read_json_object(cluster_config, ConfigError, "cluster config"))
    _check_dp_size(stated, run, cluster_config)
    cfg = load_cluster_config(cluster_config, {"async_scheduling": async_scheduling,
                                               "scheduler_reserve_full_isl": reserve,
                                               **_engine_limits(stated, run),
                                               **_recorded_precision(stated, run),
                                               **_recorded_expert_layout(stated, run)})
    _check_parallelism(run, cfg, cluster_config)
    return cfg


def _check_parallelism(run, cfg, cluster_config: Path) -> None:
    """The config must lay the engine out as the run did: its TP and PP degrees are the config's
    structure, not something a replay can override."""
    kwargs = run.engine_kwargs
    for key, field in (("tensor_parallel_size", "tp_size"), ("pipeline_parallel_size", "pp_size")):
        recorded = kwargs.get(key)
        if not isinstance(recorded, int) or isinstance(recorded, bool):
            continue
        for ref in cfg.instances():
            if getattr(ref.config, field) != recorded:
                raise PdsimError(f"{cluster_config}: instance {ref.instance_id} has {field} "
                                 f"{getattr(ref.config, field)}, but the measured engine ran {key} {recorded} "
                                 f"({run.source}'s meta.json engine_kwargs): give the measured engine's config")


def _stated_model(instances: list[dict]):
    """The model the config's instances name (the first's), or None where pdsim does not know it (the
    config's own check words that)."""
    from pdsim.models import load_model

    try:
        return load_model(str(instances[0].get("model_name"))) if instances else None
    except PdsimError:
        return None


def _check_dp_size(instances: list[dict], run, cluster_config: Path) -> None:
    """A MoE config's DP groups must be the run's data_parallel_size (checked before the recorded expert
    layout is applied to them); a dense one's mismatch is noted."""
    recorded = run.engine_kwargs.get("data_parallel_size")
    if not isinstance(recorded, int) or isinstance(recorded, bool):
        return
    groups: dict[object, int] = {}
    for i, inst in enumerate(instances):
        key = inst.get("dp_group") or ("", i)  # an instance outside a group is a group of one
        groups[key] = groups.get(key, 0) + 1
    sizes = sorted(set(groups.values()))
    if sizes == [recorded]:
        return
    what = (f"{cluster_config}: its data-parallel groups have {', '.join(map(str, sizes))} instance(s), but the "
            f"measured engine ran data_parallel_size {recorded} ({run.source}'s meta.json engine_kwargs)")
    model = _stated_model(instances)
    # The ranks of a MoE group step together and share the experts: the group is structure.
    if model is not None and model.is_moe:
        raise PdsimError(f"{what}: give the measured engine's config (the instances of one DP group share a "
                         "dp_group)")
    # Dense DP ranks are independent engines; the group only changes how requests are spread.
    run.notes.append(f"{what}: dense DP ranks run independently, so the replay goes on with the config's instances")


# Engine arguments a measured run records (meta.json engine_kwargs) that decide its batches, its KV
# cache's size and its TP collectives: the replay takes what the engine ran, whatever the cluster config
# (LLMServingSim gets them from command-line flags).
_RECORDED_LIMITS = {"max_num_seqs": int, "max_num_batched_tokens": int, "block_size": int,
                    "enable_chunked_prefill": bool, "enable_prefix_caching": bool,
                    "kv_cache_memory_bytes": int, "num_gpu_blocks_override": int, "disable_custom_all_reduce": bool}


def _human_readable_int(text: str) -> int | str:
    """vLLM's command-line integers ('2048', '25.6k' = 25,600, '4G' = 4 x 2^30: engine/arg_utils.py,
    human_readable_int); the text unchanged when it is not one."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgtKMGT]?)", text.strip())
    if m is None:
        return text
    number, suffix = m.groups()
    if not suffix:
        return int(number) if number.isdigit() else text
    if suffix.islower():
        return int(float(number) * 1000 ** ("kmgt".index(suffix) + 1))
    return int(number) * 1024 ** ("KMGT".index(suffix) + 1) if number.isdigit() else text


def _engine_limits(instances: list[dict], run) -> dict[str, object]:
    kwargs = run.engine_kwargs
    stated = {k: inst[k] for inst in instances for k in _RECORDED_LIMITS if k in inst}
    out: dict[str, object] = {}
    meta = Path(run.source).with_name("meta.json")
    for key, kind in _RECORDED_LIMITS.items():
        value = kwargs.get(key)
        if value is None:  # the engine's own default, not recorded
            continue
        if kind is int and isinstance(value, str):
            value = _human_readable_int(value)
        if type(value) is not kind or (kind is int and value < 1):
            raise PdsimError(f"{meta}: engine_kwargs.{key}: expected "
                             f"{'a whole number >= 1' if kind is int else 'true or false'}, got {value!r}")
        out[key] = value
        was = f", the config says {stated[key]}" if key in stated and stated[key] != value else ""
        run.notes.append(f"{key} {value} from meta.json engine_kwargs{was}")
    out.update(_recorded_chunk_cap(instances, run, meta))
    util = kwargs.get("gpu_memory_utilization")
    if util is not None and (isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1):
        raise PdsimError(f"{meta}: engine_kwargs.gpu_memory_utilization: expected a number in (0, 1], got {util!r}")
    if util is not None:
        mem_util = {inst.get("npu_mem", {}).get("mem_util") for inst in instances} - {None}
        if mem_util:  # LLMServingSim's rule sizes the KV from the config's own, calibrated figure
            run.notes.append(f"meta.json engine_kwargs record gpu_memory_utilization {util:g}; the config's "
                             f"npu_mem.mem_util {', '.join(f'{m:g}' for m in sorted(mem_util))} sizes the KV cache "
                             "(LLMServingSim's rule)")
        else:
            out["gpu_memory_utilization"] = float(util)
            run.notes.append(f"gpu_memory_utilization {util:g} from meta.json engine_kwargs")
    return out


def _recorded_chunk_cap(instances: list[dict], run, meta: Path) -> dict[str, object]:
    """vLLM's cap on one request's prefill chunk per step: long_prefill_token_threshold as recorded, or, when
    max_num_partial_prefills > 1 leaves it 0, 4% of max_model_len (vLLM 0.19 config/scheduler.py; the v1
    scheduler uses max_num_partial_prefills for nothing else)."""
    kwargs = run.engine_kwargs
    values = {}
    for key, least in (("long_prefill_token_threshold", 0), ("max_num_partial_prefills", 1), ("max_model_len", 1)):
        value = kwargs.get(key)
        if isinstance(value, str):
            value = _human_readable_int(value)
        if value is not None and (type(value) is not int or value < least):
            raise PdsimError(f"{meta}: engine_kwargs.{key}: expected a whole number >= {least}, got {value!r}")
        values[key] = value
    threshold, partial = values["long_prefill_token_threshold"], values["max_num_partial_prefills"]
    if not threshold and partial is not None and partial > 1:
        model = _stated_model(instances)
        max_model_len = values["max_model_len"] or (model.max_position_embeddings if model else None)
        if max_model_len is None:
            return {}
        threshold = int(max_model_len * 0.04)
        run.notes.append(f"long_prefill_token_threshold {threshold} (vLLM sets 4% of max_model_len {max_model_len} "
                         f"when max_num_partial_prefills is {partial}, meta.json engine_kwargs)")
    elif threshold is not None:
        run.notes.append(f"long_prefill_token_threshold {threshold} from meta.json engine_kwargs")
    return {} if threshold is None else {"long_prefill_token_threshold": threshold}


def _recorded_precision(instances: list[dict], run) -> dict[str, object]:
    """The weight and KV precision meta.json's engine_kwargs name (`quantization`, `kv_cache_dtype`):
    the replay runs them whatever the cluster config says, as it takes the batch limits. A precision
    pdsim cannot express stops the replay with the reason."""
    from pdsim.validate.row_layout import row_layout

    kwargs = run.engine_kwargs
    if kwargs.get("speculative_config"):
        raise PdsimError(f"{run.source}: skipped, pdsim cannot express this run: speculative decoding "
                         f"(speculative_config {kwargs['speculative_config']!r}) is not modelled "
                         "(meta.json engine_kwargs)")
    layout, reason = row_layout({k: kwargs.get(k) for k in ("dtype", "quantization", "kv_cache_dtype")})
    if reason is not None:
        raise PdsimError(f"{run.source}: skipped, pdsim cannot express this run: {reason} (meta.json engine_kwargs)")
    out: dict[str, object] = {}
    if layout.quantization is not None:
        model = _stated_model(instances)
        # vLLM's --quantization fp8 keeps a block-scaled checkpoint's own scheme
        block = model is not None and model.checkpoint_quantization == "fp8_block"
        out["quantization"] = "fp8_block" if block else layout.quantization
    if layout.kv_cache_dtype != "auto":
        out["kv_cache_dtype"] = layout.kv_cache_dtype
    for key, value in out.items():
        stated = {str(v) for inst in instances if (v := _stated_precision(inst, key)) is not None}
        was = f", the config says {', '.join(sorted(stated))}" if stated and stated != {value} else ""
        run.notes.append(f"{key} {value} from meta.json engine_kwargs{was}")
    if "quantization" in out and any(inst.get("dtype") == "fp8" for inst in instances):
        out["dtype"] = "bfloat16"  # LLMServingSim's dtype "fp8" names fp8 weights too; the override decides
    return out


def _recorded_expert_layout(instances: list[dict], run) -> dict[str, object]:
    """A MoE run's expert layout as meta.json's engine_kwargs record it: vLLM shards every expert by TP
    unless `enable_expert_parallel` is set, when each GPU holds whole experts (over the DP group's
    GPUs too). LLMServingSim's `ep_size` defaults to tp_size, i.e. expert parallelism; the replay takes
    what the engine ran, as it takes the batch limits."""
    kwargs = run.engine_kwargs
    expert_parallel = kwargs.get("enable_expert_parallel")
    model = _stated_model(instances)
    if not isinstance(expert_parallel, bool) or model is None or not model.is_moe:
        return {}
    tp = kwargs.get("tensor_parallel_size")
    dp = kwargs.get("data_parallel_size")
    tp = tp if isinstance(tp, int) and tp >= 1 else int(instances[0].get("tp_size") or 1)
    dp = dp if isinstance(dp, int) and dp >= 1 else 1
    grouped = any(inst.get("dp_group") for inst in instances)
    if not expert_parallel and grouped and dp > 1:
        raise PdsimError(f"{run.source}: skipped, pdsim cannot express this run: vLLM without "
                         "enable_expert_parallel shards every expert by TP over the whole DP group, and pdsim's DP "
                         "groups place experts by expert parallelism (meta.json engine_kwargs)")
    ep = tp * (dp if grouped else 1) if expert_parallel else 1
    stated = {inst.get("ep_size") for inst in instances} - {None}
    was = f", the config says {', '.join(str(v) for v in sorted(stated))}" if stated and stated != {ep} else ""
    run.notes.append(f"ep_size {ep} from meta.json engine_kwargs enable_expert_parallel "
                     f"{str(expert_parallel).lower()}{was}")
    return {"ep_size": ep}


def _stated_precision(inst: dict, key: str) -> object:
    if key == "quantization" and inst.get("dtype") == "fp8":  # LLMServingSim's spelling of fp8 weights
        return inst.get("quantization") or "fp8"
    return inst.get(key)


def _kv_override(run, cfg, opts: SimOptions, engine_log: Path | None, kv_capacity: str):
    """The measured engine's KV capacity (None when not recorded); with --kv-capacity measured,
    every instance of the replay gets it."""
    from pdsim.validate.kv_capacity import measured_kv

    block_size = cfg.instances()[0].config.block_size
    meta_source = str(Path(run.source).parent / "meta.json")
    kv = measured_kv(run.engine_meta, meta_source, engine_log, block_size)
    if kv_capacity == "measured":
        if kv is None:
            raise PdsimError("--kv-capacity measured: the run records no KV capacity; give --engine-log (vLLM's "
                             "'GPU KV cache size' line) or a meta.json with kv_cache.num_gpu_blocks beside it")
        opts.kv_gpu_blocks = {ref.instance_id: kv.tokens // ref.config.block_size for ref in cfg.instances()}
    return kv


def _eager_profile_note(run, result) -> None:
    """A profile measured with enforce_eager (LLMServingSim's) times vLLM's custom CUDA ops; an engine
    that compiled its model (vLLM's default) ran Inductor's kernels instead, which differ at prefill
    sizes (docs/validation.md): said, not corrected."""
    predictors = [getattr(inst.predictor, "full", inst.predictor) for inst in result.instances]
    if not any(p.profile.meta.engine_enforce_eager for p in predictors):
        return
    if run.engine_kwargs.get("enforce_eager") is True:
        return
    run.notes.append("the profile was measured with enforce_eager (vLLM's custom CUDA ops); the run records no "
                     "enforce_eager, so its engine compiled the model (vLLM's default) and ran its norms, rotary and "
                     "SiLU as Inductor kernels, which at prefill sizes may be slower than the profile's: not "
                     "corrected (docs/validation.md, RTX PRO 6000)")


def _estimated_line(rows: int | None = None, of: int | None = None) -> str:
    """The one line that says the comparison is against estimated, not measured, step times."""
    from pdsim.metrics.summary import ESTIMATED_NOTE

    where = f"in {rows} of {of} simulated rows" if rows is not None else "for at least one instance"
    return (f"NOTE: {ESTIMATED_NOTE} {where} (no measured profile; give --profile-dir): the differences "
            "above include the estimate's error")


def _prefix_ids(run, cfg, token_ids: Path | None) -> None:
    """The prompts' prefix blocks from --token-ids; without them, say that no hits are modelled where
    the engine had prefix caching on."""
    first = cfg.instances()[0].config
    if token_ids is not None:
        from pdsim.validate.token_ids import attach_prefix_ids

        run.prefix_ids = attach_prefix_ids(run, token_ids, first.block_size)
        run.prefix_block_tokens = first.block_size
    elif first.enable_prefix_caching:
        run.notes.append("prefix caching on, but the measured requests carry no token ids: no prefix-cache hits "
                         "are modelled (--token-ids gives them)")


@click.command("validate")
@click.option("--measured", required=True, type=click.Path(exists=True, path_type=Path),
              help="Per-request engine JSONL, `vllm bench serve --save-detailed` JSON, an aiperf run (its "
                   "artifacts folder or profile_export.jsonl), or a closed-loop CSV (isl, osl, "
                   "concurrency/batch_size, tp, ttft, tpot).")
@click.option("--cluster-config", type=click.Path(exists=True, path_type=Path), default=None,
              help="Cluster config of the measured engine (not needed for closed-loop tables).")
@click.option("--profile-dir", type=click.Path(path_type=Path), default=None,
              help="Profile for every instance; for closed-loop tables, a root holding "
                   "<hw>/<model>/<dtype>/tp<N> (as import-aiconfigurator writes).")
@click.option("--step-overhead-us", default=0.0, show_default=True, callback=number_in(0, 1e6),
              help="Engine CPU time per step (calibrate).")
@click.option("--async-scheduling/--sync-scheduling", default=None,
              help="vLLM's --async-scheduling on every instance (on by default in vLLM 0.19, off in 0.12).  "
                   "[default: the measured run's meta.json (its engine_kwargs, else its vLLM version's "
                   "default), else the cluster config's; sync for closed-loop tables]")
@click.option("--clock", type=click.Choice(["engine", "client"]), default="engine", show_default=True,
              help="Engine JSONL: which timestamps give the replay's arrival times.")
@_closed_loop_options
@click.option("--engine-log", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The measured engine's vLLM log: its 'GPU KV cache size: N tokens' line gives the measured KV "
                   "capacity (else meta.json's kv_cache.num_gpu_blocks beside the run, when there).")
@click.option("--kv-capacity", type=click.Choice(["predicted", "measured"]), default="predicted", show_default=True,
              help="KV capacity the replay uses: pdsim's prediction from the config, or the measured engine's "
                   "(to see timing errors apart from memory errors).")
@click.option("--token-ids", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The workload that fed a per-request run, with its prompts' token ids (LLMServingSim's "
                   "workload.jsonl, input_tok_ids): the replay then gets the engine's prefix-cache hits.")
@click.option("--output", "--out", "output", default="outputs/validate.csv", show_default=True,
              type=click.Path(path_type=Path), help="Comparison CSV; with --plot the PNGs go beside it.")
@click.option("--plot", is_flag=True, help="Write CDF overlays (measured vs simulated) as PNG.")
def validate(measured: Path, cluster_config: Path | None, profile_dir: Path | None, model: str | None,
             hardware: str, mem_gb: float, step_overhead_us: float, async_scheduling: bool | None, clock: str,
             engine_preset: str, rounds: int, client_delay_ms: float, engine_log: Path | None, kv_capacity: str,
             token_ids: Path | None, output: Path, plot: bool) -> None:
    """Compare a simulated run with a measured one (TTFT, TPOT, ITL, E2E: mean/p50/p90/p95/p99)."""
    from pdsim.validate.measured import is_closed_loop_table, read_measured

    check_output_file(output, "--output", [measured, cluster_config, engine_log])
    if is_closed_loop_table(measured):
        from pdsim.validate.closed_loop import format_rows

        simulate = _closed_loop_simulator(measured, profile_dir, model, hardware, mem_gb, engine_preset, rounds,
                                          client_delay_ms, async_scheduling)
        df = simulate(step_overhead_us)
        with atomic_path(output) as tmp:
            df.to_csv(tmp, index=False, float_format="%.4f")
        click.echo(format_rows(df))
        ran = df[df.status == "simulated"]
        estimated = int(ran.estimated_profile.astype(bool).sum())
        if estimated:
            click.echo(_estimated_line(estimated, len(ran)))
        click.echo(f"wrote {output}")
        return
    from pdsim.metrics.summary import ESTIMATED_NOTE, profile_notes
    from pdsim.validate.compare import compare, format_table, replay, write_cdf_plots

    run = read_measured(measured, clock)
    cfg = _replay_config(cluster_config, run, async_scheduling)
    _prefix_ids(run, cfg, token_ids)
    opts = _sim_options(profile_dir, step_overhead_us, run, client_delay_ms)
    if opts.client_send_gaps_s:
        run.notes.append(f"clients send after the run's own gaps (median {np.median(opts.client_send_gaps_s) * 1e3:.1f}"
                         f" ms after a request ends)")
    if opts.client_delay_s:
        run.notes.append(f"client-to-engine delay uniform on [0, {2 * client_delay_ms:g}] ms")
    kv_measured = _kv_override(run, cfg, opts, engine_log, kv_capacity)
    result = replay(cfg, run, opts, str(cluster_config))
    _eager_profile_note(run, result)
    table = compare(run, result)
    estimated = any(info.estimated_profile for info in result.infos)
    table["estimated_profile"] = estimated
    with atomic_path(output) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    click.echo(f"{run.source}: {len(run.requests)} requests; " + "; ".join(run.notes))
    for note in profile_notes(result):
        if note != ESTIMATED_NOTE:  # said after the table, where the figures it qualifies are
            click.echo(f"note: {note}")
    info = result.infos[0]
    first = cfg.instances()[0].config
    rule = ("override" if first.kv_cache_memory_bytes or first.num_gpu_blocks_override
            else "llmservingsim" if first.npu_mem.mem_util is not None else "vllm")
    click.echo(capacity_line(info.kv_predicted_tokens, rule, kv_measured, kv_capacity))
    click.echo(format_table(table))
    if estimated:
        click.echo(_estimated_line())
    written = [output]
    if plot:
        written += write_cdf_plots(run, result, output.with_suffix(""))
    click.echo("wrote " + ", ".join(str(p) for p in written))


@click.command("calibrate")
@click.option("--measured", required=True, type=click.Path(exists=True, path_type=Path),
              help="A per-request run (as for validate) or a closed-loop table.")
@click.option("--cluster-config", type=click.Path(exists=True, path_type=Path), default=None,
              help="Cluster config of the measured engine (not needed for closed-loop tables).")
@click.option("--profile-dir", type=click.Path(path_type=Path), default=None, help="As for validate.")
@click.option("--metric", type=click.Choice(["tpot_ms", "e2e_ms", "ttft_ms"]), default="tpot_ms", show_default=True,
              help="Fit on this metric (per-request runs: its mean/p50/p90; tables: its per-row error); the "
                   "others stay held out.")
@click.option("--async-scheduling/--sync-scheduling", default=None,
              help="As for validate.  [default: the run's meta.json, else the config's; sync for tables]")
@_closed_loop_options
@click.option("--output", "--out", "out", default="outputs/calibration.json", show_default=True,
              type=click.Path(path_type=Path), help="The fitted overhead and its errors, JSON.")
def calibrate(measured: Path, cluster_config: Path | None, profile_dir: Path | None, metric: str,
              async_scheduling: bool | None, model: str | None, hardware: str, mem_gb: float, engine_preset: str,
              rounds: int, client_delay_ms: float, out: Path) -> None:
    """Fit the per-step engine overhead to one measured run or table; writes it as JSON (config knob),
    with the in-sample and leave-one-out error."""
    from pdsim.validate.calibrate import fit_overhead
    from pdsim.validate.measured import is_closed_loop_table, read_measured

    check_output_file(out, "--output", [measured, cluster_config])

    if is_closed_loop_table(measured):
        if metric == "e2e_ms":
            raise PdsimError("--metric: closed-loop tables have ttft_ms and tpot_ms, not e2e_ms")
        simulate = _closed_loop_simulator(measured, profile_dir, model, hardware, mem_gb, engine_preset, rounds,
                                          client_delay_ms, async_scheduling)
        column = {"tpot_ms": "tpot_err_pct", "ttft_ms": "ttft_err_pct"}[metric]

        def errors_at(overhead_us: float):
            df = simulate(overhead_us)
            return df[df.status == "simulated"][column].to_numpy()

        what = f"{metric} per row"
    else:
        from pdsim.validate.compare import compare, replay

        run = read_measured(measured)
        cfg = _replay_config(cluster_config, run, async_scheduling)
        label = {"tpot_ms": "TPOT (ms)", "e2e_ms": "E2E latency (ms)", "ttft_ms": "TTFT (ms)"}[metric]

        def errors_at(overhead_us: float):
            table = compare(run, replay(cfg, run, _sim_options(profile_dir, overhead_us, run, client_delay_ms)))
            sel = table[(table.metric == label) & table.stat.isin(["mean", "p50", "p90"])]
            return sel.diff_pct.to_numpy()

        what = f"{metric} mean/p50/p90"

    fit = fit_overhead(errors_at)
    fit.update({"measured": str(measured), "metric": metric,
                "config_knob": {"step_overhead_us": fit["step_overhead_us"]}})
    write_json_atomic(out, fit)
    click.echo(f"step_overhead_us = {fit['step_overhead_us']:g} (MAPE {fit['mape_pct']:.1f}% on {what}, "
               f"leave-one-out {fit['loo_mape_pct']:.1f}%); wrote {out}")


@click.command("import-aiconfigurator")
@click.option("--systems-dir", type=click.Path(path_type=Path), default=None,
              help="aiconfigurator's systems/data folder (default: the installed aiconfigurator package's).")
@click.option("--system", required=True,
              help="aiconfigurator system, one of: a100_sxm, b200_sxm, gb200_sxm, h100_sxm, h200_sxm, l40s, "
              "rtx_pro_6000_server.")
@click.option("--model", required=True, help="Hugging Face id, e.g. Qwen/Qwen3-32B")
@click.option("--tp", type=int, multiple=True, required=True, help="Tensor-parallel size; repeat for several.")
@click.option("--dtype", default="bfloat16", show_default=True, help="Activations and KV dtype (16-bit only).")
@click.option("--quant", "quantization", type=click.Choice(["fp8", "fp8_block"]), default=None,
              help="fp8 weights: layer GEMMs from the table's fp8 / fp8_block rows; writes <dtype> = the scheme.")
@click.option("--out", "--output", "out", default="profiles", show_default=True, type=click.Path(path_type=Path),
              help="Profile root; writes <out>/<hardware>/<org>/<model>/<dtype>/tp<N>/.")
def import_aiconfigurator(systems_dir: Path | None, system: str, model: str, tp: tuple[int, ...], dtype: str,
                          quantization: str | None, out: Path) -> None:
    """Build pdsim profiles from NVIDIA aiconfigurator's per-kernel database (not committed)."""
    from pdsim.models import load_model
    from pdsim.perf.aiconfigurator import find_systems_dir, import_profile

    root = systems_dir or find_systems_dir()
    if root is None:
        raise PdsimError("--systems-dir: not given, and no aiconfigurator database is installed "
                         "(pip install -e '.[aiconfigurator]' installs aiconfigurator-core, or give the "
                         "database folder: <system>/gemm/... or gemm/... directly)")
    spec = load_model(model)
    for n in tp:
        click.echo(f"wrote {import_profile(root, system, spec, n, out, dtype, quantization)}")
