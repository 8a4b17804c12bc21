"""What a measured run's meta.json says about its engine: vLLM's defaults by release, its compilation
settings, and the checks and notes on the record itself."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pdsim.cli_checks import vllm_int
from pdsim.config.base import MAX_TOKENS
from pdsim.errors import PdsimError, json_shown


def vllm_major_minor(version: str) -> tuple[int, int] | None:
    """(0, 19) for "0.19.0" (or "v0.19.0", "0.19.1+cu128"); None when it is not a release number."""
    try:
        major, minor = (int(x) for x in str(version).strip().lower().removeprefix("v").split(".")[:2])
    except ValueError:
        return None
    return major, minor


def vllm_at_least(version: str, first: tuple[int, int]) -> bool | None:
    """Whether `version` is `first` or later: what a default that vLLM turned on in `first` is for that
    version; None when it is not a release number."""
    major_minor = vllm_major_minor(version)
    return None if major_minor is None else major_minor >= first


def vllm_async_scheduling_default(version: str) -> bool | None:
    """vLLM's default: off up to 0.13 (`SchedulerConfig.async_scheduling = False`), on from 0.14 (None there,
    which `VllmConfig.__post_init__` turns on unless something rules it out: ray, speculative decoding other
    than EAGLE, and in 0.14 alone pipeline parallelism); read in the 0.13.0 to 0.19.0 releases. None: unknown."""
    return vllm_at_least(version, (0, 14))


def vllm_fuses_allreduce_norm(version: str) -> bool | None:
    """Whether the version's default compilation (-O2) fuses TP all-reduces with the RMSNorm after them where
    the GPU allows (`config/vllm.py`: off in every optimization level up to 0.16, enable_allreduce_rms_fusion
    from 0.17); None: unknown."""
    return vllm_at_least(version, (0, 17))


def vllm_top_k_top_p(version: str) -> str | None:
    """The sampler's top-k/top-p implementation (InstanceConfig.top_k_top_p): "pytorch" up to 0.16 (a sort of the
    whole vocabulary; FlashInfer's sampler is opt-in from 0.12, and in 0.11 and older taken only where FlashInfer
    is installed, an extra of the pip release), "triton" from 0.17 (`v1/sample/ops/topk_topp_sampler.py`); None:
    unknown."""
    newer = vllm_at_least(version, (0, 17))
    return None if newer is None else "triton" if newer else "pytorch"


def vllm_moe_workspace(version: str) -> str | None:
    """How the release holds the fused-MoE workspaces (InstanceConfig.moe_workspace): "layer" up to 0.13 (fused_experts
    allocates them per call), "chunk" 0.14 to 0.17 (the modular kernel keeps them in the workspace manager, sized for
    one VLLM_FUSED_MOE_CHUNK_SIZE chunk), "batch" from 0.18 (for the whole batch); None: unknown."""
    if (modular := vllm_at_least(version, (0, 14))) is None:
        return None
    return "batch" if vllm_at_least(version, (0, 18)) else "chunk" if modular else "layer"


def vllm_start_up(version: str) -> dict[str, str]:
    """The instance keys of what the release holds at start-up, which sizes its KV cache (docs/memory.md): its
    sampler's top-k/top-p and its fused-MoE workspaces; {} where the version is unknown."""
    found = {"top_k_top_p": vllm_top_k_top_p(version), "moe_workspace": vllm_moe_workspace(version)}
    return {key: value for key, value in found.items() if value is not None}


def vllm_pipelines_async(version: str) -> bool | None:
    """Whether async scheduling may run with pipeline parallelism: from 0.15; 0.11 to 0.14 refuse to start with both
    asked for (engine/arg_utils.py, then config/vllm.py: "not yet compatible"). None: unknown."""
    return vllm_at_least(version, (0, 15))


def vllm_honours_no_chunked_prefill(version: str) -> bool | None:
    """Whether --no-enable-chunked-prefill is honoured: from 0.12; 0.11's _set_default_args turns chunked prefill on
    for every generating model (engine/arg_utils.py). None: unknown."""
    return vllm_at_least(version, (0, 12))


def vllm_reads_checkpoint_kv_dtype(version: str) -> bool | None:
    """Whether kv_cache_dtype "auto" takes a checkpoint's fp8 KV scheme (ModelOpt): from 0.14
    (engine/arg_utils.py resolve_kv_cache_dtype_string); before, "auto" is the model's dtype. None: unknown."""
    return vllm_at_least(version, (0, 14))


def vllm_refuses_partial_prefills(version: str) -> bool | None:
    """Whether max_num_partial_prefills or max_long_partial_prefills above 1 stops the engine at start-up: from 0.12
    ("Concurrent Partial Prefill" is not supported by its v1 engine: engine/arg_utils.py, _check_feature_supported;
    read in 0.12 and 0.19); before, config/scheduler.py turns them into a chunk cap. None: unknown."""
    return vllm_at_least(version, (0, 12))


def vllm_reserves_full_isl(version: str) -> bool | None:
    """scheduler_reserve_full_isl: new in 0.19 (on by default), absent up to 0.18; None: unknown."""
    return vllm_at_least(version, (0, 19))


# The engine arguments pdsim reads as switches (meta.json engine_kwargs): anything but true, false or null is
# an error, not a silent fall-back on vLLM's default.
ENGINE_SWITCHES = ("async_scheduling", "enforce_eager", "enable_expert_parallel", "scheduler_reserve_full_isl",
                   "enable_chunked_prefill", "enable_prefix_caching", "disable_custom_all_reduce")


# vLLM's CompilationMode, by number: only VLLM_COMPILE (its default) compiles piecewise graphs and runs fusion passes.
COMPILATION_MODES = ("NONE", "STOCK_TORCH_COMPILE", "DYNAMO_TRACE_ONCE", "VLLM_COMPILE")


def compilation_config(value: object) -> dict:
    """vLLM's compilation_config as EngineArgs take it: an object, its JSON text (-cc), or a mode number."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    return {"mode": value} if type(value) is int else value


def optimization_level(value: object) -> int | None:
    """vLLM's -O level as EngineArgs take it or a record writes it (2, "2", "O2", "-O2", "OptimizationLevel.O2");
    None when not recorded. ValueError for anything else."""
    if value is None:
        return None
    text = str(value).removeprefix("OptimizationLevel.").removeprefix("-").removeprefix("O")
    if isinstance(value, bool) or not isinstance(value, int | str) or text not in ("0", "1", "2", "3"):
        raise ValueError(value)
    return int(text)


# meta.json's fields beside LLMServingSim's vLLM runs (schema_version 1): the engine's arguments are read from
# engine_kwargs (and kv_cache's, under vLLM's cache config names), so one written elsewhere is named, not taken,
# and not dropped unsaid.
# kv_cache fields under vLLM's CacheConfig names that are engine arguments (a harness writing the engine's cache
# config there): read as those arguments (with_cache_config).
KV_CACHE_ARGS = {"cache_dtype": "kv_cache_dtype", "gpu_memory_utilization": "gpu_memory_utilization"}
# What kv_capacity.kv_from_meta reads, and those.
KV_CACHE_FIELDS = frozenset({"num_gpu_blocks", "block_size", *KV_CACHE_ARGS})
META_FIELDS = frozenset({"schema_version", "model", "vllm_version", "engine_kwargs", "kv_cache", "dataset_path",
                         "dataset_hash", "num_requests", "started_at", "finished_at", "tick_seconds"})


def meta_time(value: str) -> datetime:
    """A meta.json time (LLMServingSim's runner writes `started_at` / `finished_at` in UTC ISO 8601, with a `Z`); one
    without a zone is read as UTC. ValueError where it is no ISO time."""
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def meta_notes(meta: dict) -> list[str]:
    """What a meta.json leaves the replay without: the engine's arguments (a NOTE where one the replay would take
    sits outside engine_kwargs), or other fields it does not read (the harness's own records: said in passing)."""
    from pdsim.validate.recorded import REPLAYED_KWARGS

    notes = []
    if meta and not isinstance(meta.get("engine_kwargs"), dict):
        notes.append("NOTE: meta.json records no engine_kwargs (the engine's arguments): the replay takes the "
                     "cluster config's settings and vLLM's defaults")
    other = sorted(set(meta) - META_FIELDS)
    if misplaced := [key for key in other if key in REPLAYED_KWARGS]:
        notes.append(f"NOTE: meta.json gives {', '.join(misplaced)} outside engine_kwargs, where the replay reads the "
                     "engine's arguments: not taken")
    if rest := [key for key in other if key not in REPLAYED_KWARGS]:
        notes.append(f"meta.json fields not read: {', '.join(rest)}")
    kv = meta.get("kv_cache") if meta else None
    read = KV_CACHE_FIELDS if isinstance(meta.get("engine_kwargs"), dict) else KV_CACHE_FIELDS - KV_CACHE_ARGS.keys()
    if isinstance(kv, dict) and (unread := sorted(set(kv) - read)):
        notes.append(f"meta.json kv_cache fields not read: {', '.join(unread)} (the engine's KV size is read from "
                     "num_gpu_blocks and block_size)")
    return notes


# Whole-number engine arguments: vLLM's pydantic configs take 64.0 as 64 (lax mode), so a record may write them so.
WHOLE_NUMBER_KWARGS = frozenset({"max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_memory_bytes",
                                 "num_gpu_blocks_override", "max_model_len", "long_prefill_token_threshold",
                                 "max_num_partial_prefills", "max_long_partial_prefills", "tensor_parallel_size",
                                 "pipeline_parallel_size", "data_parallel_size", "max_cudagraph_capture_size"})


def with_python_names(meta_path: Path, meta: dict) -> dict:
    """meta.json with engine_kwargs under EngineArgs' own names: a record written with the command line's
    (`max-num-seqs`, `--max-num-seqs`) is read under `max_num_seqs`, and a whole number written as 64.0 as 64.
    Both spellings of one argument with different values is an error (which did the engine run?)."""
    kwargs = meta.get("engine_kwargs")
    if not isinstance(kwargs, dict):
        return meta
    named: dict = {}
    for key, value in kwargs.items():
        name = key.removeprefix("--").replace("-", "_") if isinstance(key, str) else key
        if name in WHOLE_NUMBER_KWARGS and isinstance(value, float) and value.is_integer():
            value = int(value)
        if name in named and named[name] != value:
            raise PdsimError(f"{meta_path}: engine_kwargs gives {name} twice, as {json_shown(named[name], 40)} and "
                             f"{json_shown(value, 40)} ({key!r}): one engine ran with one of them")
        named[name] = value
    return {**meta, "engine_kwargs": named}


def with_cache_config(meta_path: Path, meta: dict) -> tuple[dict, dict[str, str]]:
    """meta.json with kv_cache's engine arguments (vLLM's CacheConfig names: cache_dtype, gpu_memory_utilization)
    taken into engine_kwargs where those leave them out, and where each taken one was recorded (for the notes).
    One that disagrees with engine_kwargs is an error, except kv_cache_dtype "auto" there, which the engine
    resolves (to the checkpoint's, the kv_cache record). A meta.json without engine_kwargs keeps them as fields
    not read (the replay takes the config's settings then)."""
    kv, kwargs = meta.get("kv_cache"), meta.get("engine_kwargs")
    if not isinstance(kv, dict) or not isinstance(kwargs, dict):
        return meta, {}
    taken, sources = {}, {}
    for field, arg in KV_CACHE_ARGS.items():
        value, given = kv.get(field), kwargs.get(arg)
        if value is None or value == given:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (isinstance(value, str) if arg == "kv_cache_dtype" else number and 0 < value <= 1):
            expected = "a string (vLLM's cache dtype)" if arg == "kv_cache_dtype" else "a number in (0, 1]"
            raise PdsimError(f"{meta_path}: kv_cache.{field}: expected {expected}, got {json_shown(value, 40)}")
        if given is not None and not (arg == "kv_cache_dtype" and given == "auto"):
            raise PdsimError(f"{meta_path}: kv_cache.{field} {value!r} and engine_kwargs.{arg} {given!r} disagree: "
                             "one engine ran with one of them")
        taken[arg], sources[arg] = value, f"kv_cache.{field}"
    return ({**meta, "engine_kwargs": {**kwargs, **taken}}, sources) if taken else (meta, {})


def check_engine_meta(meta_path: Path, meta: dict) -> None:
    """The shape of what meta.json says about the engine; each field's own meaning is checked where it is used."""
    kwargs = meta.get("engine_kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise PdsimError(f"{meta_path}: engine_kwargs: expected an object (the engine's arguments by name), "
                         f"got {kwargs!r}")
    for key in ENGINE_SWITCHES:
        if kwargs.get(key) is not None and not isinstance(kwargs[key], bool):
            raise PdsimError(f"{meta_path}: engine_kwargs.{key}: expected true or false, got {kwargs[key]!r}")
    try:
        parsed = compilation_config(kwargs.get("compilation_config"))
    except json.JSONDecodeError as e:
        parsed = e
    if not isinstance(parsed, dict):
        raise PdsimError(f"{meta_path}: engine_kwargs.compilation_config: expected an object, its JSON text or a "
                         f"compilation mode number (vLLM's forms), got {json_shown(kwargs['compilation_config'], 60)}")
    mode = parsed.get("mode")
    if not (mode is None or (type(mode) is int and 0 <= mode < len(COMPILATION_MODES))
            or (isinstance(mode, str) and mode.upper() in COMPILATION_MODES)):
        raise PdsimError(f"{meta_path}: engine_kwargs.compilation_config.mode: expected 0 to 3 or one of "
                         f"{', '.join(COMPILATION_MODES)} (vLLM's CompilationMode), got {json_shown(mode, 40)}")
    try:
        optimization_level(kwargs.get("optimization_level"))
    except ValueError:
        raise PdsimError(f"{meta_path}: engine_kwargs.optimization_level: expected 0, 1, 2 or 3 (vLLM's -O levels), "
                         f"got {json_shown(kwargs['optimization_level'], 40)}") from None
    limit = kwargs.get("max_model_len")
    number = vllm_int(limit) if isinstance(limit, str) else limit
    if not (limit is None or limit == "auto" or number == -1 or (type(number) is int and 1 <= number <= MAX_TOKENS)):
        raise PdsimError(f"{meta_path}: engine_kwargs.max_model_len: expected a whole number from 1 to "
                         f"{MAX_TOKENS:,}, -1 or 'auto' (vLLM fits it to the memory), got {json_shown(limit, 40)}")
    for where, obj, key in (("", meta, "model"), ("", meta, "vllm_version"), ("engine_kwargs.", kwargs, "model")):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise PdsimError(f"{meta_path}: {where}{key}: expected a string, got {obj[key]!r}")
