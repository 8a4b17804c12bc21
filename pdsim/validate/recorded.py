"""The measured engine's own record as the replay's configuration: what a run's meta.json
(`engine_kwargs`, the vLLM version) says the engine ran -- batch limits, KV size, precision, expert
layout, TP collectives -- applied over the cluster config and noted in the run's notes; layouts the
config cannot replay are refused (docs/validation.md)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pdsim.cli_checks import vllm_int
from pdsim.config.base import GB, MAX_MEM_GB, MAX_TOKENS, UTILIZATION_OVER_MEM_UTIL
from pdsim.engine.kv_cache import blocks_for
from pdsim.errors import PdsimError, json_shown
from pdsim.perf.memory import VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
from pdsim.text import listed
from pdsim.validate.engine_meta import (
    vllm_honours_no_chunked_prefill,
    vllm_reads_checkpoint_kv_dtype,
    vllm_refuses_partial_prefills,
    vllm_start_up,
)
from pdsim.validate.kv_capacity import positive_int

if TYPE_CHECKING:
    from pdsim.config import ClusterConfig
    from pdsim.engine.cluster import SimOptions
    from pdsim.models import ModelSpec
    from pdsim.validate.kv_capacity import MeasuredKV
    from pdsim.validate.measured_run import MeasuredRun


def shown_key(key: str) -> str:
    """An instance key the replay set from meta.json, by the engine argument's name."""
    return "gpu_memory_utilization" if key == UTILIZATION_OVER_MEM_UTIL else key


def applied_from_meta(run: MeasuredRun, recorded: dict[str, object]) -> str:
    """What an error caused by the run's record adds: which values of meta.json the replay applied."""
    applied = ", ".join(f"{shown_key(key)} {value!s:.40}" for key, value in recorded.items())
    return f"(the replay applied what {Path(run.source).with_name('meta.json')} records: {applied})"


def replay_config(cluster_config: Path | None, run: MeasuredRun, async_scheduling: bool | None,
                  engine_log: Path | None = None) -> ClusterConfig:
    """The measured engine's cluster config, scheduling as the run did: the option, else what the
    run's meta.json says (noted in the run's notes), else the config's; engine_log: vLLM's log of that engine,
    for what its start-up says it ran (_logged_settings)."""
    from pdsim.config import load_cluster_config
    from pdsim.config.load import raw_instances, use_run_model_config
    from pdsim.errors import ConfigError, read_json_object

    if cluster_config is None:
        from pdsim.validate.measured import case_file

        beside = case_file(run.source, "cluster_config.json")
        hint = f" (the run's case folder has one: --cluster-config {beside})" if beside is not None else ""
        raise PdsimError(f"--cluster-config: needed to replay a per-request run{hint}")
    from pdsim.validate.engine_meta import vllm_major_minor

    release = vllm_major_minor(run.vllm_version)
    _note_unread_version(run, release)
    if async_scheduling is None:
        async_scheduling, why = run.async_scheduling()
        if async_scheduling is not None:
            run.notes.append(f"async scheduling {'on' if async_scheduling else 'off'}: {why}")
    # Neither the option nor a run record decided it: the values replayed are said.
    from_config = async_scheduling is None and (not run.engine_meta or release is None)
    reserve, why = run.reserve_full_isl()
    if reserve is not None:
        run.notes.append(f"whole-sequence admission check {'on' if reserve else 'off'}: {why}")
    fusion, why_not = run.allreduce_rms_fusion()
    # What the config itself states, for the notes on what the run's meta.json overrides.
    raw = read_json_object(cluster_config, ConfigError, "cluster config")
    use_run_model_config(cluster_config, raw)  # its model, for the checks of what the run records
    stated = raw_instances(raw)
    by_release = _start_up_by_release(run, stated)
    _check_parallelism(run, stated, cluster_config)
    _check_dp_size(stated, run, cluster_config)
    recorded = {**_engine_limits(stated, run), **_recorded_precision(stated, run),
                **_recorded_expert_layout(stated, run), **_recorded_cudagraphs(stated, run)}
    if engine_log is not None:
        recorded.update(_logged_settings(engine_log, stated, run, recorded))
    if by_release.get("top_k_top_p") == "pytorch" and "top_k_top_p" not in recorded:  # the log may name FlashInfer's
        run.notes.append(f"sampler: vLLM {run.vllm_version} sorts the whole vocabulary for top-k/top-p (meta.json; a "
                         "Triton kernel from 0.17): 2.5 times the start-up memory per sampled sequence, which vLLM "
                         "keeps out of the KV cache where the sampler's is the larger peak (docs/memory.md)")
    try:
        cfg = load_cluster_config(cluster_config, {"async_scheduling": async_scheduling,
                                                   "scheduler_reserve_full_isl": reserve, **by_release, **recorded,
                                                   **({} if fusion is None else {"allreduce_rms_fusion": fusion})})
    except ConfigError as e:
        if not recorded:
            raise
        # The config may be fine as written: name what the run's record put into it.
        raise ConfigError(f"{e} {applied_from_meta(run, recorded)}") from e
    run.applied_from_meta = recorded
    if from_config:
        modes = sorted({"on" if ref.config.async_scheduling else "off" for ref in cfg.instances()}, reverse=True)
        why = "no meta.json beside the run" if not run.engine_meta else "meta.json names no vLLM release"
        run.notes.append(f"async scheduling {' and '.join(modes)}: the cluster config's ({why}; vLLM schedules "
                         "asynchronously by default from 0.14, --async-scheduling / --sync-scheduling set it)")
    _note_memory_release(run, cfg, release)
    from pdsim.models import load_model

    if by_release.get("moe_workspace", "batch") != "batch" and any(load_model(ref.config.model_name).is_moe
                                                                    for ref in cfg.instances()):
        held = ("allocates them in each MoE layer and frees them, so the sampler runs without them"
                if by_release["moe_workspace"] == "layer" else "keeps them, sized for one 16,384-row chunk")
        run.notes.append(f"fused-MoE workspaces: vLLM {run.vllm_version} {held} (meta.json; kept "
                         "for the whole batch from 0.18, docs/memory.md)")
    if fusion is False and any(ref.config.tp_size > 1 for ref in cfg.instances()):
        run.notes.append(f"TP all-reduce not fused with the norms after it: {why_not}")
    _check_engine_count(run, cfg, cluster_config)
    _check_model_and_roles(run, cfg, cluster_config)
    _check_max_model_len(run)
    _note_unused(run, cfg)
    return cfg


# vLLM's start-up warning when its custom all-reduce cannot run (distributed/device_communicators/
# custom_all_reduce.py: no peer-to-peer access, more than two PCIe-only GPUs, a world size it lacks, a group across
# nodes): every TP all-reduce then goes to NCCL.
_CUSTOM_AR_OFF = re.compile(r"Custom allreduce is disabled (because|due to) ([^.]*)")


def _start_up_by_release(run: MeasuredRun, instances: list[dict]) -> dict[str, object]:
    """What the run's vLLM release holds at start-up (engine_meta.vllm_start_up), for the instances whose config
    does not say (a config's own value, e.g. a FlashInfer sampler that meta.json cannot record, stands, and is
    said)."""
    out: dict[str, object] = {}
    for key, value in vllm_start_up(run.vllm_version).items():
        stated = {inst[key] for inst in instances if inst.get(key) is not None}
        if not stated:
            out[key] = value
        elif stated != {value}:
            run.notes.append(f"{key} {', '.join(sorted(map(str, stated)))}: the config's, where vLLM "
                             f"{run.vllm_version}'s is {value} (docs/memory.md)")
    return out


# vLLM's start-up line when its sampler is FlashInfer's (v1/sample/ops/topk_topp_sampler.py, 0.11 to 0.19).
_FLASHINFER_SAMPLER = "Using FlashInfer for top-p & top-k sampling"


def engine_log_beside(run: MeasuredRun) -> Path | None:
    """The vLLM log kept beside the run (in its folder or the case folder above it) where there is exactly one:
    read as if given with --engine-log, for the KV size and the start-up fallbacks meta.json does not show (custom
    all-reduce off, FlashInfer sampling), and said. Several: none is read, and the note names them."""
    folders = dict.fromkeys([Path(run.source).parent, Path(run.source).parent.parent])
    logs = sorted(f for folder in folders for f in folder.glob("*.log") if f.is_file())
    if len(logs) == 1:
        run.notes.append(f"engine log: {logs[0]}, the one log beside the run, read as --engine-log (its KV cache "
                         "size and start-up fallbacks; --engine-log gives another)")
        return logs[0]
    if logs:
        run.notes.append(f"NOTE: {len(logs)} logs beside the run ({listed([str(f) for f in logs], 3)}), none read: "
                         "--engine-log names the measured engine's, whose KV cache size and start-up fallbacks "
                         "(custom all-reduce off, FlashInfer sampling) the replay then takes")
    return None


def _logged_settings(engine_log: Path, instances: list[dict], run: MeasuredRun,
                     recorded: dict[str, object]) -> dict[str, object]:
    """What the engine's log says it ran that meta.json does not record: its custom all-reduce turned off, its
    sampler FlashInfer's."""
    try:
        text = engine_log.read_text(errors="replace")
    except OSError:
        return {}  # kv_override names an unreadable log
    custom_ar = recorded.get("disable_custom_all_reduce") is not True and any(inst.get("tp_size", 1) > 1
                                                                             for inst in _sized(instances))
    out: dict[str, object] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if custom_ar and "disable_custom_all_reduce" not in out and (found := _CUSTOM_AR_OFF.search(line)):
            run.notes.append(f"disable_custom_all_reduce true: {engine_log}:{line_no} says vLLM's custom all-reduce "
                             f"was disabled ({found.group(1)} {found.group(2).strip()}), so every TP all-reduce ran "
                             "on NCCL")
            out["disable_custom_all_reduce"] = True
        if "top_k_top_p" not in out and _FLASHINFER_SAMPLER in line:
            run.notes.append(f"top_k_top_p flashinfer: {engine_log}:{line_no} says the engine sampled with FlashInfer, "
                             "which sorts nothing, so its start-up peak is smaller (docs/memory.md)")
            out["top_k_top_p"] = "flashinfer"
    return out


def _note_unread_version(run: MeasuredRun, release: tuple[int, int] | None) -> None:
    """A meta.json whose vLLM version pdsim cannot read (release None) leaves that version's defaults to the
    config: say so."""
    version = run.engine_meta.get("vllm_version")
    if run.engine_meta and release is None:
        what = "no vllm_version" if version in (None, "") else f"vllm_version {version!r}, not a release number"
        run.notes.append(f"meta.json has {what}: the defaults that depend on it (async scheduling, the "
                         "whole-sequence admission check, all-reduce + norm fusion, the sampler's and fused-MoE "
                         "workspaces' start-up memory, chunked prefill and kv_cache_dtype auto as a release reads "
                         "them) are the cluster config's (where it sets none, pdsim's: vLLM 0.19's, with async "
                         "scheduling off), unless its engine_kwargs set them")


def _note_memory_release(run: MeasuredRun, cfg: ClusterConfig, release: tuple[int, int] | None) -> None:
    """vLLM's accounting takes the activation peak and the non-torch memory as vLLM 0.19 has them (docs/memory.md,
    measured on that release's start-up logs): a run of another release, sized by that accounting, is told so."""
    from pdsim.perf.memory import kv_rule

    if release is None or release == (0, 19) or all(kv_rule(ref.config) != "vllm" for ref in cfg.instances()):
        return
    run.notes.append(f"KV capacity by vLLM 0.19's accounting, but for its sampler and fused-MoE workspaces: its "
                     f"forward's activation peak and its non-torch memory are that release's, vLLM "
                     f"{run.vllm_version} may differ (docs/memory.md; the instance key "
                     "non_torch_memory_gb sets the latter)")


# Engine arguments the replay reads (here, in engine_meta.py and in validate's notes), and those that do not
# change the engine's timing or memory; any other recorded one is named, so a replay never drops one silently.
_READ_KWARGS = {"async_scheduling", "distributed_executor_backend", "data_parallel_size", "enable_expert_parallel",
                "gpu_memory_utilization", "kv_cache_dtype", "max_model_len", "pipeline_parallel_size",
                "quantization", "speculative_config", "tensor_parallel_size", "dtype", "long_prefill_token_threshold",
                "max_num_partial_prefills", "cpu_offload_gb", "kv_offloading_size", "scheduler_reserve_full_isl",
                "cudagraph_capture_sizes", "max_cudagraph_capture_size", "optimization_level",
                "max_long_partial_prefills", "offload_group_size"}
_NO_EFFECT_KWARGS = {"model", "seed", "tokenizer", "tokenizer_mode", "trust_remote_code", "revision", "code_revision",
                     "tokenizer_revision", "download_dir", "load_format", "served_model_name", "disable_log_stats",
                     "enable_log_requests", "disable_log_requests", "max_logprobs", "skip_tokenizer_init",
                     "config_format", "worker_extension_cls", "hf_token"}


# Arguments a runner may record at vLLM 0.19's own default (engine/arg_utils.py), where they change nothing pdsim
# replays: the same engine as one that leaves them out.
_AT_VLLMS_DEFAULT = {"scheduling_policy": "fcfs", "swap_space": 4, "enable_lora": False, "calculate_kv_scales": False,
                     "num_scheduler_steps": 1, "stream_interval": 1, "enable_sleep_mode": False,
                     "generation_config": "auto"}


def _note_unused(run: MeasuredRun, cfg: ClusterConfig) -> None:
    unused = {k: v for k, v in run.engine_kwargs.items()
              if k not in _READ_KWARGS | _NO_EFFECT_KWARGS | _RECORDED_LIMITS.keys() and v is not None
              and not (k in _AT_VLLMS_DEFAULT and v == _AT_VLLMS_DEFAULT[k] and type(v) is type(_AT_VLLMS_DEFAULT[k]))}
    # (an offloading connector was refused before: _recorded_precision)
    if "kv_transfer_config" in unused and any(ref.config.pd_type for ref in cfg.instances()):
        # The config's prefill and decode instances are the P/D deployment; its connector's own settings are not read.
        unused.pop("kv_transfer_config")
        run.notes.append("kv_transfer_config in meta.json engine_kwargs: the config's prefill and decode instances "
                         "replay the KV hand-off (pdsim's transfer model and the config's links, docs/pd_realism.md); "
                         "the connector's own settings are not read")
    # compilation_config: its CUDA-graph settings and mode are replayed (_recorded_cudagraphs), the rest named
    if rest := {k: v for k, v in run.compilation_config().items() if k not in _CUDAGRAPH_CONFIG and v is not None}:
        unused["compilation_config"] = rest
    else:
        unused.pop("compilation_config", None)
    if unused:
        run.notes.append("NOTE: meta.json engine_kwargs not modelled, replayed as vLLM's defaults: "
                         + ", ".join(f"{k} {v!r}" for k, v in sorted(unused.items())))


def _check_parallelism(run: MeasuredRun, instances: list[dict], cluster_config: Path) -> None:
    """The config must lay the engine out as the run did: its TP and PP degrees are the config's
    structure, not something a replay can override. Checked on the config as written (sizes inferred as
    LLMServingSim infers them), before anything else about its layout is."""
    meta = Path(run.source).with_name("meta.json")
    sized = _sized(instances)
    for key, field in (("tensor_parallel_size", "tp_size"), ("pipeline_parallel_size", "pp_size")):
        recorded = _recorded_int(run.engine_kwargs, key, 1, meta)
        ran = f"{key} {recorded} ({run.source}'s meta.json engine_kwargs)"
        if recorded is None:
            if not run.records_engine_kwargs:
                continue
            recorded = 1  # vLLM's default, which the engine ran
            ran = f"{key} 1 (vLLM's default: {run.source}'s meta.json engine_kwargs record none)"
        for n, inst in enumerate(sized):
            stated = inst.get(field, 1)
            if type(stated) is not int or stated < 1:  # not a size: the config's own validation names the field
                continue
            if stated != recorded:
                raise PdsimError(f"{cluster_config}: instance {n + 1} of {len(sized)} has {field} {stated}, but "
                                 f"the measured engine ran {ran}: give the measured engine's config")


def _sized(instances: list[dict]) -> list[dict]:
    """The config's instances as written, their TP and PP sizes inferred as LLMServingSim infers them; a malformed
    one as it stands (pydantic's error: the config's own validation words that)."""
    from pdsim.llmservingsim_keys import infer_instance_sizes

    sized = []
    for inst in instances:
        try:
            sized.append(infer_instance_sizes(dict(inst)))
        except ValueError:
            sized.append(inst)
    return sized


def _check_model_and_roles(run: MeasuredRun, cfg: ClusterConfig, cluster_config: Path) -> None:
    """The config must serve the model the run's meta.json names (a Hugging Face id; a local path is not
    compared). A P/D config replaying a run whose engine records no KV connector is said loudly."""
    # meta.json's own `model` and the engine's argument: both are checked (the weights follow the latter,
    # _loaded_checkpoint), so neither names another model unseen
    for recorded in dict.fromkeys((run.engine_meta.get("model"), run.engine_kwargs.get("model"))):
        _check_recorded_model(run, cfg, cluster_config, recorded, "the run's meta.json")
    if run.client_model is not None:
        _check_recorded_model(run, cfg, cluster_config, *run.client_model)
    roles = {ref.config.pd_type for ref in cfg.instances()} - {None}
    if roles and run.engine_kwargs and "kv_transfer_config" not in run.engine_kwargs:
        run.notes.append("NOTE: the config has prefill and decode instances, but the run's meta.json engine_kwargs "
                         "record no kv_transfer_config: the measured engine looks like one vLLM engine without P/D, "
                         "so the two may not be comparable")


def _check_recorded_model(run: MeasuredRun, cfg: ClusterConfig, cluster_config: Path, recorded: object,
                          where: str) -> None:
    from pdsim.models import load_model

    if isinstance(recorded, str) and recorded.count("/") == 1 and not recorded.startswith((".", "/", "~")):
        try:
            shape = load_model(recorded).shape
        except PdsimError:
            shape = None  # a model pdsim does not know: compared by name only
        for name in dict.fromkeys(ref.config.model_name for ref in cfg.instances()):
            if name.lower() == recorded.lower():
                continue
            if shape is not None and load_model(name).shape != shape:
                raise PdsimError(f"{cluster_config}: the instances serve {name}, but the measured engine ran "
                                 f"{recorded} ({where}, {run.source}), a model of another shape: give the measured "
                                 "engine's config")
            unread = "" if shape is not None else _unknown_model_taken_as(name, cfg)
            run.notes.append(f"NOTE: the config's instances serve {name}, {where} names {recorded}"
                             + (" (the same shape)" if shape is not None else unread))


def _unknown_model_taken_as(name: str, cfg: ClusterConfig) -> str:
    """What stands in for a recorded model pdsim does not know: the instances' model's shape and the weights
    they run. Weights the config makes fp8 (quantization, dtype fp8, or a model_config.json's quantization_config)
    are used as they are; only unquantised ones may not be the checkpoint's."""
    schemes = sorted({ref.config.quantization or "" for ref in cfg.instances() if ref.config.model_name == name})
    if schemes == [""]:
        return (f": pdsim knows neither its shape nor its weights' format, so {name}'s are taken for it (an fp8 "
                "checkpoint's run needs a config of fp8 weights, or the checkpoint's config.json as model_config.json)")
    weights = " / ".join(scheme or "unquantised" for scheme in schemes)
    return (f": pdsim does not know its shape, so {name}'s is taken for it, with the {weights} weights the config's "
            "instances run (the checkpoint's own format is not read from its name)")


def _check_max_model_len(run: MeasuredRun) -> None:
    """vLLM refuses a prompt longer than max_model_len, and ends any other request when prompt plus output reach
    it (its scheduler's length cap; its API server refuses one whose max_tokens would pass it): a run recording
    a longer request contradicts itself, and the replay (which runs them) says so."""
    limit = run.max_model_len
    if limit is None:  # none recorded, or vLLM's fit to the memory: nothing to compare with
        return
    prompts = int((run.requests.input_toks > limit).sum())
    longer = int(((run.requests.input_toks + run.requests.output_toks) > limit).sum())
    if longer:
        which = f" ({prompts} by the prompt alone)" if prompts else ""
        run.notes.append(f"NOTE: meta.json records max_model_len {limit}, but {longer} request(s) are longer "
                         f"(prompt + output){which}: vLLM refuses a longer prompt, its API server a request whose "
                         "max_tokens would pass the limit, and its engine stops any other at that length; they are "
                         "replayed as measured")


def _stated_model(instances: list[dict]) -> ModelSpec | None:
    """The model the config's instances name (the first's), or None where pdsim does not know it (the
    config's own check words that)."""
    from pdsim.models import load_model

    try:
        return load_model(str(instances[0].get("model_name"))) if instances else None
    except PdsimError:
        return None


def _check_dp_size(instances: list[dict], run: MeasuredRun, cluster_config: Path) -> None:
    """A MoE config's DP groups must be the run's data_parallel_size (checked before the recorded expert
    layout is applied to them); a dense one's mismatch is noted."""
    recorded = _recorded_int(run.engine_kwargs, "data_parallel_size", 1, Path(run.source).with_name("meta.json"))
    if recorded is None:
        return
    sizes = sorted(set(_dp_groups(instances).values()))
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
    grouped = any(inst.get("dp_group") is not None for inst in instances)
    spread = ("the requests are balanced within each of its groups, not over all the ranks by vLLM's one DP "
              "balancer" if grouped else "its router spreads the requests, not vLLM's DP balancer (waiting x 4 + "
              "running per rank), which a dp_group shared by the ranks replays")
    run.notes.append(f"NOTE: {what}: dense DP ranks run independently, so the replay goes on with the config's "
                     f"instances, but {spread}")


def _dp_groups(instances: list[dict]) -> dict[object, int]:
    """The config's data-parallel groups, by dp_group in config order, and their sizes (an instance outside a
    group is a group of one, keyed by its place)."""
    groups: dict[object, int] = {}
    for i, inst in enumerate(instances):
        key = inst.get("dp_group") or ("", i)
        groups[key] = groups.get(key, 0) + 1
    return groups


def _check_engine_count(run: MeasuredRun, cfg: ClusterConfig, cluster_config: Path) -> None:
    """The config must serve the requests with as many engines as the run did. vLLM runs data_parallel_size engine
    replicas (1 without DP), each a config instance: in a DP group or not, an instance is one engine that takes
    requests (how a group steps is _check_dp_size's matter). Two instances replaying a one-engine run halve its
    load, and every figure with it, so a recorded data_parallel_size the config does not match is refused, as a
    recorded TP degree is; where meta.json's engine_kwargs leave it out, vLLM's default of 1 is assumed and a
    mismatch is a NOTE, the record being silent. A config with prefill and decode instances is left to its own
    NOTE (_check_model_and_roles): its engines split each request's work, they do not share the requests."""
    if not run.engine_kwargs or any(ref.config.pd_type is not None for ref in cfg.instances()):
        return
    recorded = _recorded_int(run.engine_kwargs, "data_parallel_size", 1, Path(run.source).with_name("meta.json"))
    engines = len(cfg.instances())
    if engines == (recorded or 1):
        return
    grouped = sum(ref.config.dp_group is not None for ref in cfg.instances())
    layout = (f"{engines} instances ({grouped} in DP groups)" if grouped else f"{engines} independent instances")
    if recorded is None:
        run.notes.append(f"NOTE: {cluster_config} serves the requests with {layout}, but the run's meta.json "
                         "engine_kwargs record no data_parallel_size (vLLM's default: 1, one engine): the replay "
                         "shares the measured load among more engines than may have served it")
        return
    raise PdsimError(f"{cluster_config}: serves the requests with {layout}, but the measured engine ran "
                     f"data_parallel_size {recorded} ({run.source}'s meta.json engine_kwargs), i.e. {recorded} "
                     f"engine(s): the replay would share the measured load among {engines}; give the measured "
                     "engine's config")


# Engine arguments a measured run records (meta.json engine_kwargs) that decide its batches, its KV
# cache's size and its TP collectives: the replay takes what the engine ran, whatever the cluster config
# (LLMServingSim gets them from command-line flags).
_BATCH_LIMITS = ("max_num_seqs", "max_num_batched_tokens")
_RECORDED_LIMITS = {"max_num_seqs": int, "max_num_batched_tokens": int, "block_size": int,
                    "enable_chunked_prefill": bool, "enable_prefix_caching": bool,
                    "kv_cache_memory_bytes": int, "num_gpu_blocks_override": int, "disable_custom_all_reduce": bool,
                    "enforce_eager": bool}


# Every engine argument the replay takes from meta.json's engine_kwargs.
REPLAYED_KWARGS = frozenset(_READ_KWARGS | _RECORDED_LIMITS.keys())


def _engine_limits(instances: list[dict], run: MeasuredRun) -> dict[str, object]:
    kwargs = run.engine_kwargs
    stated = {k: inst[k] for inst in instances for k in _RECORDED_LIMITS if k in inst}
    out: dict[str, object] = {}
    unrecorded: list[str] = []
    meta = Path(run.source).with_name("meta.json")
    for key, kind in _RECORDED_LIMITS.items():
        # A switch is true, false or null: read_engine_jsonl checked it (engine_meta.ENGINE_SWITCHES).
        value = _recorded_int(kwargs, key, 1, meta) if kind is int else kwargs.get(key)
        if value is None:  # the engine's own default, not recorded
            unrecorded.append(key)
            continue
        if key == "enable_chunked_prefill" and value is False and \
                vllm_honours_no_chunked_prefill(run.vllm_version) is False:
            out[key] = True
            run.notes.append(f"enable_chunked_prefill true: meta.json records false, but vLLM {run.vllm_version} runs "
                             "chunked prefill for every generating model whatever it is asked (engine/arg_utils.py "
                             "_set_default_args; honoured from 0.12)")
            continue
        out[key] = value
        was = f", the config says {stated[key]}" if key in stated and stated[key] != value else ""
        run.notes.append(f"{key} {value} from meta.json engine_kwargs{was}")
    if (budget := _unchunked_budget(instances, stated, out, unrecorded, run)) is not None:
        out["max_num_batched_tokens"] = budget
        unrecorded.remove("max_num_batched_tokens")
    _unrecorded_batch_limits(instances, [k for k in _BATCH_LIMITS if k in unrecorded], run)
    kv = run.engine_meta.get("kv_cache")
    if isinstance(kv, dict) and kv.get("block_size") is not None:
        # What the engine's KV cache ran with: vLLM may set another size than the argument asked for (MLA, hybrid
        # models), and the measured block count is of these blocks.
        size = positive_int(kv["block_size"], f"{meta}: kv_cache.block_size")
        asked = out.get("block_size")
        if asked is None:
            was = f", the config says {stated['block_size']}" if stated.get("block_size") not in (None, size) else ""
            run.notes.append(f"block_size {size} from meta.json kv_cache{was}")
        elif asked != size:
            run.notes.append(f"block_size {size} from meta.json kv_cache, the block size the engine's cache ran with, "
                             f"not engine_kwargs' {asked}")
        out["block_size"] = size
    out.update(_unrecorded_defaults(stated, out, unrecorded, run))
    _check_unchunked_budget(instances, out, unrecorded, run, meta)
    out.update(_recorded_chunk_cap(instances, run, meta))
    util = kwargs.get("gpu_memory_utilization")
    if util is not None and (isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1):
        # (one taken from kv_cache was checked where it was read: engine_meta.with_cache_config)
        raise PdsimError(f"{meta}: engine_kwargs.gpu_memory_utilization: expected a number in (0, 1], got {util!r}")
    # A run that records its engine's arguments but not this one ran vLLM's default: the config's mem_util is
    # judged against that as against a recorded figure (a copy of it is no calibration either).
    defaulted = util is None and run.records_engine_kwargs
    if defaulted:
        util = VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
    where = run.recorded_in("gpu_memory_utilization")
    recorded = "(vLLM's default; meta.json engine_kwargs record none)" if defaulted else f"from meta.json {where}"
    # vLLM's kv_cache_memory_bytes or num_gpu_blocks_override fixes the cache whatever the utilization: said so.
    fixed = next((f"; but {key} {out[key]} fixes the KV cache's size, as it did the engine's" for key in
                  ("num_gpu_blocks_override", "kv_cache_memory_bytes") if out.get(key) is not None), "")  # it wins
    if util is not None:
        mem_util = {inst.get("npu_mem", {}).get("mem_util") for inst in instances} - {None}
        if mem_util and min(mem_util) >= util:
            # A mem_util calibrated to the engine's KV size under LLMServingSim's rule (mem_size x mem_util - weights)
            # is below the engine's utilization: vLLM takes the activation peak and non-torch memory out of
            # utilization x the GPU's memory, which is under mem_size. One as large is not calibrated to this engine.
            out[UTILIZATION_OVER_MEM_UTIL] = float(util)
            said = ("is that same figure, the engine's argument copied, not a figure" if mem_util == {util} else
                    f"{', '.join(f'{m:g}' for m in sorted(mem_util))} is above it, so not a figure")
            run.notes.append(f"gpu_memory_utilization {util:g} {recorded}; the config's npu_mem."
                             f"mem_util {said} calibrated to this engine under LLMServingSim's rule (mem_size x "
                             "mem_util - weights, where a calibrated mem_util is below the engine's utilization, "
                             "vLLM taking the activation peak and non-torch memory out of it), so vLLM's accounting "
                             + ("would size the KV cache" + fixed if fixed else "sizes the KV cache, as in the engine"))
        elif mem_util:  # LLMServingSim's rule sizes the KV from the config's own, calibrated figure
            ran = (f"the engine ran vLLM's default gpu_memory_utilization {util:g} (meta.json engine_kwargs record "
                   "none)" if defaulted else f"meta.json {where} {'record' if where == 'engine_kwargs' else 'records'} "
                   f"gpu_memory_utilization {util:g}")
            run.notes.append(f"gpu_memory_utilization {util:g} {recorded}{fixed}" if fixed else
                             f"NOTE: {ran}, but the config's "
                             f"npu_mem.mem_util {', '.join(f'{m:g}' for m in sorted(mem_util))} sizes the KV cache "
                             "(LLMServingSim's rule, as LLMServingSim sizes it; the KV capacity line gives vLLM's "
                             "accounting at the recorded figure): without npu_mem.mem_util the replay takes that")
        elif not defaulted or {inst.get("gpu_memory_utilization") or util for inst in instances} != {util}:
            out["gpu_memory_utilization"] = float(util)
            # null is vLLM's default, as left out
            stated_util = {inst.get("gpu_memory_utilization") for inst in instances} - {None}
            was = f", the config says {', '.join(map(str, sorted(stated_util)))}" if stated_util - {util} else ""
            run.notes.append(f"gpu_memory_utilization {util:g} {recorded}{was}{fixed}")
    return out


def _unchunked_budget(instances: list[dict], stated: dict, out: dict, unrecorded: list[str],
                      run: MeasuredRun) -> int | None:
    """vLLM's step budget where the run turned chunked prefill off and set none (0.19 engine/arg_utils.py): the
    recorded max_model_len (else the model's), at least the default 2048, at most max_num_seqs x max_model_len.
    None where the budget is recorded or stated, or chunked prefill is on."""
    from pdsim.config.models import unchunked_budget

    chunked = out.get("enable_chunked_prefill", stated.get("enable_chunked_prefill", True))
    if chunked is not False or "max_num_batched_tokens" not in unrecorded or "max_num_batched_tokens" in stated:
        return None
    recorded = run.max_model_len
    # One model the config names (a name pdsim does not know: the config's validation words it).
    model = _stated_model(instances) if len({inst.get("model_name") for inst in instances}) == 1 else None
    if recorded is not None:
        max_len, whose = recorded, "meta.json's max_model_len"
    elif model is not None:
        max_len, whose = model.default_max_model_len, "the model's max length"
    else:
        return None
    budget = unchunked_budget(max_len, out.get("max_num_seqs", stated.get("max_num_seqs")))
    # The floor is the default of how the engine was started (arg_utils.py _set_default_args, usage context),
    # which the record does not say: it matters only under the largest of them.
    started = ("; NOTE: 2048 is the floor of vllm serve below 70 GiB of GPU memory or on A100 and of an engine made "
               "directly (AsyncLLM.from_engine_args); vllm serve floors it at 8192 on larger GPUs, the LLM class at "
               "8192 and 16384 (performance_mode throughput doubles each), and the record does not say how the "
               "engine was started" if max_len < 16384 else "")
    run.notes.append(f"max_num_batched_tokens {budget}: chunked prefill off and no budget recorded, so vLLM's "
                     f"default, {whose} {max_len} (at least 2048, at most max_num_seqs x it){started}")
    return budget


# vLLM's defaults (0.12 to 0.19) of engine arguments that a run recording its engine_kwargs ran when it leaves them
# out; a cluster config's other value was not measured. (The batch limits' defaults depend on how the engine was
# started: _unrecorded_batch_limits; a config's enforce_eager and CUDA-graph keys are replayed with a NOTE.)
_VLLM_ENGINE_DEFAULTS = {"block_size": 16, "enable_chunked_prefill": True, "enable_prefix_caching": True,
                         "disable_custom_all_reduce": False}


def _unrecorded_defaults(stated: dict, out: dict, unrecorded: list[str], run: MeasuredRun) -> dict[str, object]:
    """vLLM's default for each argument meta.json's engine_kwargs leave out where the config states another value."""
    if not run.records_engine_kwargs:
        return {}
    defaults: dict[str, object] = {}
    for key, default in _VLLM_ENGINE_DEFAULTS.items():
        if key in unrecorded and key not in out and stated.get(key) not in (None, default):
            defaults[key] = default
            run.notes.append(_default_ran_note(key, default, str(stated[key])))
    return defaults


def _default_ran_note(key: str, default: object, stated: str) -> str:
    return (f"NOTE: {key} {default}: vLLM's default, which the measured engine ran (meta.json engine_kwargs record "
            f"none); the config says {stated}")


def _unrecorded_batch_limits(instances: list[dict], missing: list[str], run: MeasuredRun) -> None:
    """A meta.json whose engine_kwargs leave out batch limits (`missing`): the engine ran vLLM's default for
    how it was started, which the record does not say, so the replay's values are named."""
    from pdsim.config.models import InstanceConfig

    if not missing:
        return
    used = []
    for key in missing:
        # As written: the config's validation, after this, names a value that is no whole number.
        values = dict.fromkeys(str(inst.get(key, InstanceConfig.model_fields[key].default)) for inst in instances)
        used.append(f"{key} {', '.join(values)}")
    lead = (f"meta.json engine_kwargs record no {' or '.join(missing)}"
            if Path(run.source).with_name("meta.json").is_file()
            else f"the run records no {' or '.join(missing)} (no meta.json beside it)")
    run.notes.append(f"NOTE: {lead}: replayed with "
                     f"{' and '.join(used)} (the cluster config's, else vLLM's engine default 128 seqs / 2048 "
                     "tokens), whereas vLLM's default depends on how the engine was started (`vllm serve`: 256 / 2048 "
                     "below 70 GiB of GPU memory and on A100, 1024 / 8192 above; the LLM class 256 / 8192 and "
                     "1024 / 16384), and it sets the batches and the activation peak the KV cache is sized after")


# The most a recorded whole-number argument may be: the config's own limits (a count of tokens or sequences;
# a KV size in bytes).
_RECORDED_MOST = {"kv_cache_memory_bytes": int(MAX_MEM_GB * GB)}


# vLLM's CUDA-graph settings, instance keys of the same names; with the compilation mode, what the replay takes from
# compilation_config (_recorded_cudagraphs).
_CUDAGRAPH_KEYS = ("cudagraph_capture_sizes", "max_cudagraph_capture_size", "cudagraph_mode")
_CUDAGRAPH_CONFIG = (*_CUDAGRAPH_KEYS, "mode")
# vLLM's cudagraph_mode numbers (CUDAGraphMode); the two modes of both kinds have names only.
_CUDAGRAPH_MODE_NUMBERS = {0: "NONE", 1: "PIECEWISE", 2: "FULL"}
# The CUDA graphs of vLLM's -O0 and -O1 where compilation_config gives no cudagraph_mode (-O2, -O3: the default).
_LEVEL_CUDAGRAPH_MODE = {0: "NONE", 1: "PIECEWISE"}


def _recorded_cudagraphs(instances: list[dict], run: MeasuredRun) -> dict[str, object]:
    """vLLM's CUDA graphs as the run recorded them (EngineArgs' cudagraph_capture_sizes and
    max_cudagraph_capture_size, or compilation_config's, with its cudagraph_mode): they decide what a MoE DP
    group's ranks pad to. A compilation mode other than VLLM_COMPILE turns off the modes that need its piecewise
    graphs, vLLM's default among them (config/vllm.py)."""
    kwargs, cc = run.engine_kwargs, run.compilation_config()
    meta = Path(run.source).with_name("meta.json")
    stated = {k: inst[k] for inst in instances for k in _CUDAGRAPH_KEYS if k in inst}
    out: dict[str, object] = {}
    for key in _CUDAGRAPH_KEYS[:2]:  # EngineArgs' own, or compilation_config's
        if kwargs.get(key) is not None and cc.get(key) is not None:
            raise PdsimError(f"{meta}: engine_kwargs give {key} both on its own and in compilation_config, which "
                             "vLLM refuses")
        if kwargs.get(key) is not None or cc.get(key) is not None:
            out[key], where = (kwargs[key], "") if kwargs.get(key) is not None else (cc[key], ".compilation_config")
            was = f", the config says {stated[key]}" if key in stated and stated[key] != out[key] else ""
            run.notes.append(f"{key} {json_shown(out[key], 60)} from meta.json engine_kwargs{where}{was}")
    mode = cc.get("cudagraph_mode")
    mode = _CUDAGRAPH_MODE_NUMBERS.get(mode, mode) if type(mode) is int else mode
    mode = mode.upper() if isinstance(mode, str) else mode
    given = stated.get("cudagraph_mode")
    was = f", the config says {given}" if given is not None and str(given).upper() != mode else ""
    if mode is not None:
        run.notes.append(f"cudagraph_mode {mode} from meta.json engine_kwargs.compilation_config{was}")
    elif (level := run.optimization_level()) in (0, 1):  # the level's default mode (config/vllm.py)
        mode = _LEVEL_CUDAGRAPH_MODE[level]
        run.notes.append(f"cudagraph_mode {mode}: optimization_level {level}'s, from meta.json engine_kwargs{was}")
    compiled, why = run.compiles()
    if not compiled and mode in (None, "PIECEWISE", "FULL_AND_PIECEWISE"):
        run.notes.append(f"cudagraph_mode {mode or 'FULL_AND_PIECEWISE (vLLM default)'} needs vLLM's piecewise "
                         f"compilation, which {why} leaves out: replayed as NONE, as vLLM runs it")
        mode = "NONE"
    if mode is not None:
        out["cudagraph_mode"] = mode
    if out and kwargs.get("enforce_eager") is True:
        run.notes.append(f"{', '.join(k for k in out)} not used: enforce_eager in meta.json engine_kwargs captures no "
                         "CUDA graphs")
    unrecorded = {k: v for k, v in stated.items() if k not in out and v is not None}
    if unrecorded and run.records_engine_kwargs:
        listed = ", ".join(f"{k} {json_shown(v, 40)}" for k, v in unrecorded.items())
        run.notes.append(f"NOTE: the cluster config's {listed} replayed, where the run's meta.json engine_kwargs "
                         "record none: its engine ran vLLM's default")
    return out


def _check_unchunked_budget(instances: list[dict], out: dict, unrecorded: list[str], run: MeasuredRun,
                            meta: Path) -> None:
    """vLLM refuses to start with chunked prefill off and a step budget under max_model_len (config/scheduler.py,
    verify_max_model_len): a run recording both measured no such engine."""
    budget = out.get("max_num_batched_tokens")
    if out.get("enable_chunked_prefill") is not False or "max_num_batched_tokens" in unrecorded or budget is None:
        return
    if run.max_model_len is not None:
        max_len, whose = run.max_model_len, "engine_kwargs.max_model_len"
    elif run.max_model_len_fits_memory:  # no length to check against
        return
    elif (model := _stated_model(instances)) is not None:
        max_len, whose = model.default_max_model_len, f"{model.name}'s max length"
    else:
        return
    if budget < max_len:
        raise PdsimError(f"{meta}: engine_kwargs.enable_chunked_prefill false with max_num_batched_tokens {budget} "
                         f"under {whose} {max_len}: vLLM refuses to start so (config/scheduler.py, "
                         "verify_max_model_len), so no such run was measured")


def _recorded_int(kwargs: dict, key: str, least: int, meta: Path) -> int | None:
    """A whole-number engine argument as recorded (also in vLLM's command-line form, '8k'); None when not
    recorded."""
    value = kwargs.get(key)
    if isinstance(value, str):
        value = vllm_int(value)
    most = _RECORDED_MOST.get(key, MAX_TOKENS)
    if value is not None and (type(value) is not int or not least <= value <= most):
        raise PdsimError(f"{meta}: engine_kwargs.{key}: expected a whole number from {least} to {most:,}, "
                         f"got {json_shown(value, 40)}")
    return value


def _recorded_chunk_cap(instances: list[dict], run: MeasuredRun, meta: Path) -> dict[str, object]:
    """vLLM's cap on one request's prefill chunk per step: long_prefill_token_threshold as recorded, or, when
    max_num_partial_prefills > 1 leaves it 0, 4% of max_model_len (config/scheduler.py); a release that refuses
    those (vllm_refuses_partial_prefills) stops the replay, a run of an unknown or older version keeps the rule."""
    kwargs = run.engine_kwargs
    threshold = _recorded_int(kwargs, "long_prefill_token_threshold", 0, meta)
    partial = _recorded_int(kwargs, "max_num_partial_prefills", 1, meta)
    long_partial = _recorded_int(kwargs, "max_long_partial_prefills", 1, meta)
    version = run.vllm_version
    if vllm_refuses_partial_prefills(version) and ((partial or 1) > 1 or (long_partial or 1) > 1):
        key, value = (("max_num_partial_prefills", partial) if (partial or 1) > 1
                      else ("max_long_partial_prefills", long_partial))
        raise PdsimError(f"{meta}: engine_kwargs.{key} {value}: vLLM {version} refuses to start with it (\"Concurrent "
                         "Partial Prefill\" is not supported by its v1 engine: engine/arg_utils.py, "
                         "_check_feature_supported), so no such run was measured")
    if not threshold and partial is not None and partial > 1:
        # max_model_len as recorded; vLLM's "auto" / -1 (fit to memory) and null mean the model's own, as here
        model = _stated_model(instances)
        max_model_len = run.max_model_len or (model.default_max_model_len if model else None)
        if max_model_len is None:
            return {}
        threshold = int(max_model_len * 0.04)
        run.notes.append(f"long_prefill_token_threshold {threshold} (vLLM sets 4% of max_model_len {max_model_len} "
                         f"when max_num_partial_prefills is {partial}, meta.json engine_kwargs)")
    elif threshold is not None:
        run.notes.append(f"long_prefill_token_threshold {threshold} from meta.json engine_kwargs")
    elif run.records_engine_kwargs:
        stated = {inst.get("long_prefill_token_threshold") for inst in instances} - {None, 0}
        if stated:  # the engine ran vLLM's default, no cap
            threshold = 0
            run.notes.append(_default_ran_note("long_prefill_token_threshold", threshold,
                                               ", ".join(map(str, sorted(stated)))))
    return {} if threshold is None else {"long_prefill_token_threshold": threshold}


def _recorded_precision(instances: list[dict], run: MeasuredRun) -> dict[str, object]:
    """The weight and KV precision meta.json's engine_kwargs name (`quantization`, `kv_cache_dtype`):
    the replay runs them whatever the cluster config says, as it takes the batch limits. A precision
    pdsim cannot express stops the replay with the reason."""
    from pdsim.validate.row_layout import row_layout

    kwargs = run.engine_kwargs
    if kwargs.get("speculative_config"):
        raise PdsimError(f"{run.source}: skipped, pdsim cannot express this run: speculative decoding "
                         f"(speculative_config {kwargs['speculative_config']!r}) is not modelled "
                         "(meta.json engine_kwargs)")
    connector = kwargs.get("kv_transfer_config")
    if connector and "offload" in str(connector.get("kv_connector", "") if isinstance(connector, dict)
                                      else connector).lower():  # what kv_offloading_size sets up (arg_utils.py)
        raise PdsimError(f"{run.source}: skipped, pdsim cannot express this run: KV cache offloaded to CPU memory "
                         f"(kv_transfer_config {connector!r:.80}) is not modelled (meta.json engine_kwargs)")
    for key, what in (("cpu_offload_gb", "weights offloaded to CPU memory"),
                      ("offload_group_size", "weights offloaded to CPU memory and prefetched"),
                      ("kv_offloading_size", "KV cache offloaded to CPU memory")):
        value = kwargs.get(key)
        if value in (None, 0, 0.0) and not isinstance(value, bool):  # vLLM's default: nothing offloaded
            continue
        try:  # a number, or one written as a string ("4")
            number = math.nan if isinstance(value, bool) else float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if not number >= 0:  # NaN too
            raise PdsimError(f"{Path(run.source).with_name('meta.json')}: engine_kwargs.{key}: expected a number "
                             f">= 0 (GiB), got {value!r:.60}")
        if number > 0:
            raise PdsimError(f"{run.source}: skipped, pdsim cannot express this run: {what} ({key} {value}) "
                             "is not modelled (meta.json engine_kwargs)")
    loaded, checkpoint = _loaded_checkpoint(run)
    precision = {k: kwargs.get(k) for k in ("dtype", "quantization", "kv_cache_dtype")}
    dtype = precision["dtype"] = _recorded_dtype(kwargs.get("dtype"), run)
    method = str(kwargs.get("quantization") or "").lower()
    model = checkpoint or _stated_model(instances)  # the weights the engine loaded, as far as pdsim knows them
    _check_quantization_matches(method, model, loaded, run)
    if method in _CHECKPOINT_METHODS:  # the checkpoint's own scheme, under its format's name
        precision["quantization"] = _checkpoint_scheme(instances, run, method, loaded, checkpoint)
    layout, reason = row_layout(precision)
    if reason is not None:
        raise PdsimError(f"{run.source}: skipped, pdsim cannot express this run: {reason} (meta.json engine_kwargs)")
    out: dict[str, object] = {}
    if layout.quantization is not None:
        # vLLM's --quantization fp8 keeps a block-scaled checkpoint's own scheme
        block = model is not None and model.checkpoint_quantization == "fp8_block"
        out["quantization"] = "fp8_block" if block else layout.quantization
    # The activations' 16-bit type as vLLM's --dtype names it ("auto": the checkpoint's, which the config states).
    recorded_dtype = {"half": "float16", "float16": "float16", "bfloat16": "bfloat16"}.get(str(dtype))
    stated_dtype = {str(inst.get("dtype") or "bfloat16") for inst in instances}
    said: dict[str, str] = {}  # notes of settings not read from engine_kwargs as they stand
    if method in _CHECKPOINT_METHODS:
        said["quantization"] = (f"quantization {out['quantization']} from meta.json engine_kwargs quantization "
                                f"{kwargs['quantization']} (the checkpoint's own scheme, as vLLM reads it)")
    elif layout.quantization is None and run.records_engine_kwargs:
        # No --quantization: vLLM runs the weights as the checkpoint it loaded stores them (its quantization_config).
        if (own := _unrecorded_weights(instances, run, loaded, checkpoint)) is not None:
            out["quantization"] = own
            said["quantization"] = (f"quantization {own}: meta.json records none, and the checkpoint it names, "
                                    f"{loaded}, is so quantised (its quantization_config), as vLLM loads it")
    # LLMServingSim's dtype "fp8" is fp8 weights over bfloat16 activations; vLLM's --dtype sets the activations alone.
    stated_activations = {"bfloat16" if d == "fp8" else d for d in stated_dtype}
    if "dtype" not in out and recorded_dtype is not None and stated_activations != {recorded_dtype}:
        out["dtype"] = recorded_dtype
        if "quantization" not in out and "fp8" in stated_dtype:  # the config's fp8 weights stay
            out["quantization"] = next(str(_stated_precision(inst, "quantization")) for inst in instances
                                       if inst.get("dtype") == "fp8")
            said["quantization"] = (f"quantization {out['quantization']}: the config's (its dtype fp8), kept beside "
                                    f"meta.json's dtype {recorded_dtype} (vLLM's --dtype sets the activations)")
    stated_fp8_kv = any(str(_stated_precision(inst, "kv_cache_dtype")).startswith("fp8") for inst in instances)
    if (sixteen_bit := kwargs.get("kv_cache_dtype")) in ("bfloat16", "float16"):
        # Named, not "auto": vLLM resolves only "auto" to the checkpoint's cache (utils/torch_utils.py
        # resolve_kv_cache_dtype_string), so this runs 16 bits even over a checkpoint whose own cache is fp8.
        out["kv_cache_dtype"] = sixteen_bit
    elif layout.kv_cache_dtype != "auto" or (kwargs.get("kv_cache_dtype") == "auto" and stated_fp8_kv):
        # "auto" recorded is the checkpoint's cache, which the engine ran whatever the config says
        out["kv_cache_dtype"] = layout.kv_cache_dtype
    elif "kv_cache_dtype" not in kwargs and stated_fp8_kv and run.records_engine_kwargs:
        out["kv_cache_dtype"] = "auto"  # vLLM's default
    before_0_14 = _kv_auto_before_0_14(instances, run, model, out)  # said there, as what ran
    out.update(before_0_14)
    for key, value in out.items():
        if key in before_0_14:
            continue
        stated = {str(v) for inst in instances if (v := _stated_precision(inst, key)) is not None}
        if key == "kv_cache_dtype" and key not in kwargs:
            run.notes.append(_default_ran_note(key, value, ", ".join(sorted(stated))))
            continue
        was = f", the config says {', '.join(sorted(stated))}" if stated and stated != {value} else ""
        where = run.recorded_in(key)
        run.notes.append(said[key] + was if key in said else f"{key} {value} from meta.json {where}{was}")
    if "quantization" in out and "dtype" not in out and any(inst.get("dtype") == "fp8" for inst in instances):
        out["dtype"] = "bfloat16"  # LLMServingSim's dtype "fp8" names fp8 weights too; the override decides
    return out


def _kv_auto_before_0_14(instances: list[dict], run: MeasuredRun, model: ModelSpec | None,
                         out: dict[str, object]) -> dict[str, object]:
    """kv_cache_dtype "auto" as a release before 0.14 runs it: the model's dtype, where pdsim (as vLLM from 0.14,
    engine/arg_utils.py resolve_kv_cache_dtype_string) takes a checkpoint's fp8 cache scheme."""
    version = run.vllm_version
    if model is None or model.checkpoint_kv_cache_dtype is None or vllm_reads_checkpoint_kv_dtype(version) is not False:
        return {}
    auto = out.get("kv_cache_dtype", None)
    if auto is None:
        auto = "auto" if all(_stated_precision(inst, "kv_cache_dtype") in (None, "auto") for inst in instances) else ""
    if auto != "auto":
        return {}
    dtype = str(out.get("dtype") or next((inst.get("dtype") for inst in instances if inst.get("dtype") not in
                                          (None, "fp8")), "bfloat16"))
    run.notes.append(f"kv_cache_dtype {dtype}: vLLM {version} runs 'auto' in the model's dtype, where {model.name}'s "
                     f"quantization_config stores the cache in {model.checkpoint_kv_cache_dtype}, which vLLM reads "
                     "from 0.14 on (engine/arg_utils.py)")
    return {"kv_cache_dtype": dtype}


# vLLM's --dtype values (config/model.py ModelDType, a Literal its pydantic config checks as written).
_VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")


def _recorded_dtype(value: object, run: MeasuredRun) -> object:
    """meta.json's engine_kwargs.dtype; what vLLM would refuse to start with is refused here."""
    if value is None or value in _VLLM_DTYPES:
        return value
    fp8 = " (fp8 weights are vLLM's --quantization fp8)" if "fp8" in str(value).lower() else ""
    raise PdsimError(f"{Path(run.source).with_name('meta.json')}: engine_kwargs.dtype: expected one of vLLM's --dtype "
                     f"values ({', '.join(_VLLM_DTYPES)}), got {value!r:.60}{fp8}")


# vLLM's --quantization names of checkpoint formats (config/model.py _verify_quantization): such a checkpoint runs
# with its format's name or none, and its quantization_config says the scheme (--quantization fp8 over one of them
# refuses to start).
_CHECKPOINT_METHODS = ("compressed-tensors", "modelopt")


def _check_quantization_matches(method: str, model: ModelSpec | None, loaded: str | None, run: MeasuredRun) -> None:
    """vLLM 0.19 refuses to start where --quantization names a method other than the checkpoint's own, unless the
    checkpoint's format overrides it (config/model.py `_verify_quantization`: a ModelOpt FP8 checkpoint runs as
    modelopt whatever is asked; a compressed-tensors one under --quantization fp8 raises): a record of no run."""
    own = model.checkpoint_format if model is not None else None
    if not method or own is None or method == own or own == "modelopt":
        return
    raise PdsimError(f"{Path(run.source).with_name('meta.json')}: engine_kwargs.quantization {method!r}: vLLM refuses "
                     f"to start with it, as the checkpoint ({loaded or model.name}) is quantised with {own!r} "
                     f"(\"Quantization method specified in the model config ({own}) does not match the quantization "
                     f"method specified in the `quantization` argument ({method})\"); record the run's own arguments")


def _loaded_checkpoint(run: MeasuredRun) -> tuple[str | None, ModelSpec | None]:
    """The checkpoint meta.json says the engine loaded (`model`), and pdsim's spec of it: None for a local path or an
    id pdsim neither bundles nor was given the config.json of (what it stores is then not known here)."""
    from pdsim.models import load_model

    # the engine's argument first, else meta.json's own record; a local path names no checkpoint pdsim can read
    ids = [n for n in (run.engine_kwargs.get("model"), run.engine_meta.get("model"))
           if isinstance(n, str) and n.count("/") == 1 and not n.startswith((".", "/", "~"))]
    if not ids:
        return None, None
    name = ids[0]
    try:
        return name, load_model(name)
    except PdsimError:
        return name, None


def _checkpoint_scheme(instances: list[dict], run: MeasuredRun, method: str, loaded: str | None,
                       checkpoint: ModelSpec | None) -> str:
    """The fp8 scheme behind a recorded checkpoint-format name: the checkpoint's quantization_config where pdsim
    can read it, else the scheme the config states; refused where neither says one pdsim models."""
    if checkpoint is not None:
        if checkpoint.checkpoint_quantization is not None:
            return checkpoint.checkpoint_quantization
        why = f"the checkpoint meta.json names, {loaded}, has no fp8 quantization_config"
    else:
        stated = {str(q) for inst in instances if (q := _stated_precision(inst, "quantization")) is not None}
        if len(stated) == 1:
            return stated.pop()
        why = (f"pdsim cannot read the scheme of {loaded or 'the checkpoint the engine loaded'}, and the config "
               "states no quantization (give the instances quantization \"fp8\" for an fp8 checkpoint)")
    raise PdsimError(f"{run.source}: skipped, pdsim cannot express this run: quantization {method} (meta.json "
                     f"engine_kwargs; vLLM reads the scheme from the checkpoint's quantization_config): {why}")


def _unrecorded_weights(instances: list[dict], run: MeasuredRun, loaded: str | None,
                        checkpoint: ModelSpec | None) -> str | None:
    """A run recording its engine arguments but no quantization ran the checkpoint meta.json names as it is stored.
    Where pdsim knows that checkpoint and the config states other weights, its scheme (None: the config's stand);
    an unquantised one under a config of fp8 weights (dtype "fp8", quantization, or an fp8 checkpoint) is refused."""
    if checkpoint is None or any(not isinstance(inst.get("quantization"), str | None) for inst in instances):
        return None  # the config's weights stand; a quantization that is no scheme's name is the config's error
    own = checkpoint.checkpoint_quantization
    stated = {_stated_precision(inst, "quantization") for inst in instances}
    config_model = _stated_model(instances)
    if config_model is not None and stated == {None}:
        stated = {config_model.checkpoint_quantization}  # a quantised checkpoint named by the config runs so
    if stated == {own}:
        return None
    if own is not None:
        return own
    raise PdsimError(f"{run.source}: meta.json records no quantization and names {loaded}, an unquantised "
                     "checkpoint: the engine ran 16-bit weights, but the config's instances run "
                     f"{', '.join(sorted(str(q) for q in stated))} weights: give the measured engine's config")


def _recorded_expert_layout(instances: list[dict], run: MeasuredRun) -> dict[str, object]:
    """A MoE run's expert layout as meta.json's engine_kwargs record it: vLLM shards every expert by TP
    (over the DP group's GPUs too: ep_size 1 in a DP group) unless `enable_expert_parallel` is set, when
    each GPU holds whole experts. LLMServingSim's `ep_size` defaults to tp_size, i.e. expert parallelism;
    the replay takes what the engine ran, as it takes the batch limits."""
    kwargs = run.engine_kwargs
    expert_parallel = kwargs.get("enable_expert_parallel")
    model = _stated_model(instances)
    unrecorded = expert_parallel is None and run.records_engine_kwargs
    if unrecorded:
        expert_parallel = False  # vLLM's default (ParallelConfig.enable_expert_parallel)
    if not isinstance(expert_parallel, bool) or model is None or not model.is_moe:
        return {}
    tp = kwargs.get("tensor_parallel_size")
    dp = kwargs.get("data_parallel_size")
    tp = tp if isinstance(tp, int) and tp >= 1 else int(instances[0].get("tp_size") or 1)
    grouped = any(inst.get("dp_group") for inst in instances)
    if not (isinstance(dp, int) and dp >= 1):  # not recorded: the replay runs the config's groups (a note says so)
        dp = next((n for key, n in _dp_groups(instances).items() if isinstance(key, str)), 1)  # the first group's
    ep = tp * (dp if grouped else 1) if expert_parallel else 1
    stated = {inst.get("ep_size") for inst in instances} - {None}
    if not all(isinstance(v, int) for v in stated):
        return {}  # not a count: the config's validation names the field
    was = f", the config says {', '.join(str(v) for v in sorted(stated))}" if stated and stated != {ep} else ""
    over_group = " (every expert split over the DP group's GPUs)" if not expert_parallel and grouped and dp > 1 else ""
    if unrecorded:
        # LLMServingSim's ep_size defaults to tp_size
        config_ep = ", ".join(str(v) for v in sorted(stated)) if stated else f"{tp} (LLMServingSim's default, tp_size)"
        if (stated or {tp}) != {ep}:  # the config's expert parallelism, which the engine did not run
            run.notes.append(_default_ran_note("enable_expert_parallel", "false", f"ep_size {config_ep}")
                             + f": replayed at ep_size {ep}{over_group}")
    else:
        run.notes.append(f"ep_size {ep} from meta.json engine_kwargs enable_expert_parallel "
                         f"{str(expert_parallel).lower()}{over_group}{was}")
    return {"ep_size": ep}


def _stated_precision(inst: dict, key: str) -> object:
    if key == "quantization" and inst.get("dtype") == "fp8":  # LLMServingSim's spelling of fp8 weights
        return inst.get("quantization") or "fp8"
    return inst.get(key)


def kv_override(run: MeasuredRun, cfg: ClusterConfig, opts: SimOptions, engine_log: Path | None,
                kv_capacity: str) -> MeasuredKV | None:
    """The measured engine's KV capacity (None when not recorded); with --kv-capacity measured,
    every instance of the replay gets it."""
    from pdsim.validate.kv_capacity import measured_kv, not_recorded

    block_size = cfg.instances()[0].config.block_size
    meta_source = str(Path(run.source).parent / "meta.json")
    kv = measured_kv(run.engine_meta, meta_source, engine_log, block_size, _kv_window(cfg)[1])
    if kv is not None:
        _check_fits_memory(kv, cfg)
    if kv_capacity == "measured":
        if kv is None:
            raise PdsimError(f"--kv-capacity measured: the KV capacity is {not_recorded(engine_log)}")
        _check_holds_longest(run, kv, _kv_window(cfg)[0])
        opts.kv_gpu_blocks = {ref.instance_id: kv.num_gpu_blocks * kv.block_size // ref.config.block_size
                              for ref in cfg.instances()}
        if _uneven_dp_experts(cfg):
            run.notes.append("NOTE: --kv-capacity measured gives every DP rank the one capacity the run recorded, "
                             "where its ranks hold unequal expert shares (an uneven split) and vLLM gave those "
                             "holding fewer experts more blocks")
    return kv


def _uneven_dp_experts(cfg: ClusterConfig) -> bool:
    """Whether a DP group of the config splits a MoE model's experts unevenly over its ranks, so that their
    weights, and with them the KV capacities vLLM gives them, differ."""
    from pdsim.models import load_model

    for refs in cfg.dp_groups().values():
        ic = refs[0].config
        model = load_model(ic.model_name)
        if model.is_moe and ic.expert_placement(len(refs)).uneven(model.moe.num_experts):
            return True
    return False


def _check_fits_memory(kv: MeasuredKV, cfg: ClusterConfig) -> None:
    """A recorded KV capacity whose blocks take more memory than the GPU has is not the run's: vLLM sizes its pool
    from the memory left over (v1/core/kv_cache_utils.py, get_num_blocks); e.g. a token count written as blocks."""
    from pdsim.config import GB
    from pdsim.models import load_model

    ic = cfg.instances()[0].config
    model = load_model(ic.model_name).in_engine(ic.pd_type)
    # A pipeline stage's GPUs hold its layers' KV only: the bound takes the fewest layers a stage can have.
    stage_share = (model.num_layers // ic.pp_size) / model.num_layers
    block_gb = kv.block_size * model.kv_bytes_per_token(ic.kv_dtype, ic.tp_size) * stage_share / kv.groups / GB
    if kv.num_gpu_blocks * block_gb > ic.npu_mem.mem_size:
        raise PdsimError(f"{kv.source}: {kv.num_gpu_blocks:,} blocks of {kv.block_size} tokens would take "
                         f"{kv.num_gpu_blocks * block_gb:,.1f} GB of KV per GPU ({model.name}, {ic.kv_dtype} cache, "
                         f"TP {ic.tp_size}, PP {ic.pp_size}), more than the config's {ic.npu_mem.mem_size:g} GB GPU "
                         "holds: this is not the capacity the run had (a token count given as blocks?)")


def _kv_window(cfg: ClusterConfig) -> tuple[int, int]:
    """(blocks a running request's sliding window holds, KV-cache groups one block pool serves) in the replay's
    engines: (9, 2) for gpt-oss's hybrid allocator at 16-token blocks, else (0, 1)."""
    from pdsim.models import load_model
    from pdsim.perf.memory import sliding_window_blocks

    ic = cfg.instances()[0].config
    window = sliding_window_blocks(ic, load_model(ic.model_name).in_engine(ic.pd_type))
    return (0, 1) if window is None else window[:2]


def _check_holds_longest(run: MeasuredRun, kv: MeasuredKV, window_blocks: int = 0) -> None:
    """A recorded KV capacity that cannot hold a request the measured engine finished contradicts the run: vLLM
    keeps a running request's whole sequence in its cache (and refuses to start when one max_model_len sequence
    does not fit), so such a capacity is not the one the run had. window_blocks: what its sliding window holds
    beside them (pdsim/perf/memory.py, sliding_window_blocks)."""
    done = run.requests[run.requests.e2e_ms.notna()]
    if done.empty:
        return
    # The last output token's KV is never written; one block is vLLM's null block.
    need = done.input_toks + done.output_toks - 1
    i = int(need.to_numpy().argmax())
    longest = int(need.iloc[i])
    blocks = blocks_for(longest, kv.block_size) + window_blocks
    if blocks > kv.num_gpu_blocks - 1:
        raise PdsimError(f"{kv.source}: {kv.tokens:,} tokens ({kv.num_gpu_blocks:,} blocks of {kv.block_size}) "
                         f"cannot hold a request the measured run finished ({done.input_toks.iloc[i]} prompt + "
                         f"{done.output_toks.iloc[i]} output tokens, {blocks:,} blocks): this is not the capacity "
                         "the run had; --kv-capacity predicted replays with pdsim's own")
