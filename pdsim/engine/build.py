"""Building the instances of a cluster config: each one's step-time model, KV budget and engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import simpy

from pdsim.config import GB, ClusterConfig, InstanceConfig, InstanceRef
from pdsim.engine.instance import Instance, InstanceSpec
from pdsim.engine.options import SimOptions
from pdsim.engine.pipeline import AsyncPipelinedInstance, PipelinedInstance
from pdsim.engine.pipeline_build import pipeline_predictor, pp_link
from pdsim.engine.result import InstanceInfo
from pdsim.errors import ConfigError, PdsimError, ProfileError
from pdsim.hardware import (
    HARDWARE,
    HardwareSpec,
    board_family,
    canonical_hardware_name,
    device_board,
    family_board,
    get_hardware,
    is_family_name,
    is_gpu_slice,
)
from pdsim.llmservingsim_keys import kv_dtype_of
from pdsim.models import ModelSpec, dtype_bytes, load_model
from pdsim.perf.attention_kernel import kernel_mismatch
from pdsim.perf.collectives import fused_allreduce_norm_tokens
from pdsim.perf.cudagraphs import cudagraph_sizes, graph_sizes_run
from pdsim.perf.estimate import load_or_estimate
from pdsim.perf.memory import KVBudget, kv_budget
from pdsim.perf.pipeline import pipeline_kv_budget
from pdsim.perf.predictor import StepTimePredictor
from pdsim.perf.profile import Profile, same_model
from pdsim.perf.profile_format import ProfileMeta
from pdsim.perf.scaled import ScaledStepTimes

# Makes an instance's step-time model; called as StepTimePredictor is. Tests pass a closed-form one.
StepTimeFactory = Callable[..., StepTimePredictor]


def build_instances(
    env: simpy.Environment, cfg: ClusterConfig, opts: SimOptions, source: str,
    step_times: StepTimeFactory = StepTimePredictor,
) -> tuple[list[Instance], list[InstanceInfo]]:
    """Every instance of the config, in config order, with what the summary reports about it."""
    unknown = sorted(set(opts.kv_gpu_blocks) - {ref.instance_id for ref in cfg.instances()})
    if unknown:
        raise ConfigError(f"KV-capacity override for {', '.join(unknown)}: no such instance in {source}")
    # Each grouped instance's (group size, place in the group as the config lists the ranks): under an uneven expert
    # split the place sets the rank's expert count (ExpertPlacement.local_experts), so its weights and KV cache.
    in_group = {ref.instance_id: (len(refs), i) for refs in cfg.dp_groups().values() for i, ref in enumerate(refs)}
    instances: list[Instance] = []
    infos: list[InstanceInfo] = []
    for ref in cfg.instances():
        dp_size, dp_rank = in_group.get(ref.instance_id, (1, 0))
        inst, info = build_instance(env, ref, cfg, opts, source, dp_size, step_times, dp_rank=dp_rank)
        instances.append(inst)
        infos.append(info)
    return instances, infos


def _profiled_kv_dtype(meta: ProfileMeta) -> str:
    """The KV cache a measured profile's attention was timed with (engine_effective.kv_cache_dtype)."""
    try:
        return kv_dtype_of(meta.engine_kv_cache_dtype or "auto", meta.model, meta.dtype)
    except PdsimError:  # `auto` for a model pdsim does not know: the activations'
        return meta.dtype


def _kv_read_scale(ic: InstanceConfig, profile: Profile) -> float:
    """Bytes per KV value of the instance's cache over those of the cache the measured profile's attention read:
    decode attention, which streams the cache, is priced at the KV length of the same bytes. An estimated profile
    prices the instance's cache itself (1)."""
    return 1.0 if profile.estimated else dtype_bytes(ic.kv_dtype) / dtype_bytes(_profiled_kv_dtype(profile.meta))


def _kv_dtype_note(ic: InstanceConfig, meta: ProfileMeta) -> str | None:
    """An instance whose cache holds other bytes per value than the one the profile was timed with (an fp8 cache
    over a bf16-timed profile) says how its attention is priced."""
    profiled = _profiled_kv_dtype(meta)
    if dtype_bytes(ic.kv_dtype) == dtype_bytes(profiled):
        return None
    # `auto` resolves to the checkpoint's cache (fp8 for a ModelOpt FP8 one) or the model's dtype: the note names
    # the dtype the cache is held in, which is what no kernel of the profile read.
    cache = ic.kv_cache_dtype if ic.kv_cache_dtype == ic.kv_dtype else f"{ic.kv_cache_dtype} ({ic.kv_dtype})"
    fp8_kernels = (" (vLLM 0.19 reads an fp8 cache with FlashAttention 3 on Hopper, its queries quantised to fp8 too, "
                   "and with FlashInfer elsewhere: other kernels than the profile's)"
                   if dtype_bytes(ic.kv_dtype) == 1 else "")
    return (f"kv_cache_dtype {cache}: the profile's attention was timed with a {profiled} KV cache; "
            "decode attention, which streams the cache, is priced at the KV length of the same bytes "
            f"({dtype_bytes(ic.kv_dtype)} against {dtype_bytes(profiled)} per value), prefill attention as timed; no "
            f"{ic.kv_dtype} kernel was measured{fp8_kernels}")


def _dtype_note(ic: InstanceConfig, meta: ProfileMeta) -> str | None:
    """A measured profile timed at another 16-bit activation dtype than the instance runs (float16 beside a
    bfloat16 profile): the same bytes, but other kernels, so its times are used as measured, and said."""
    if meta.dtype == ic.dtype or dtype_bytes(meta.dtype) != dtype_bytes(ic.dtype):
        return None
    return (f"dtype {ic.dtype}: the profile was measured in {meta.dtype}; its times are used as measured (the same "
            "bytes per value, but other kernels, whose speed may differ)")


def build_instance(
    env: simpy.Environment, ref: InstanceRef, cfg: ClusterConfig, opts: SimOptions, source: str,
    dp_size: int = 1, step_times: StepTimeFactory = StepTimePredictor, dp_rank: int = 0,
) -> tuple[Instance, InstanceInfo]:
    ic = ref.config
    # A MoE DP group (dp_size > 1) steps in lock step and shares its experts (engine/dp_group.py).
    placement = ic.expert_placement(dp_size)
    where = f"{source}: nodes[{ref.node_index}].instances[{ref.instance_index}]"
    model = load_model(ic.model_name)
    # The model as this instance's GPUs hold it: MXFP4 experts padded for the GPU's kernel, and the KV cache
    # of an engine with a KV connector.
    held = model.on_gpu(ic.hardware, placement.expert_tp).in_engine(ic.pd_type)
    set_aside: list[str] = []  # a given estimated profile made for another KV cache (load_or_estimate)
    try:
        profile = load_or_estimate(
            ic.hardware, model, ic.dtype, ic.tp_size,
            root=opts.profiles_root, profile_dir=opts.profile_dir or ic.profile_dir, mem_bw_gbps=ic.npu_mem.mem_bw,
            quantization=ic.quantization, kv_dtype=ic.kv_dtype, said=set_aside,
        )
    except ProfileError as exc:
        # A profile looked up by the instance's hardware names that field; a given one (--profile-dir, the
        # instance's profile_dir) may not fit the instance in another way (its TP, its model), which it says.
        field = "" if (opts.profile_dir or ic.profile_dir) else ".hardware"
        raise type(exc)(f"{where}{field}: {exc}") from None
    board_note, board_told = "", False
    if not profile.estimated:
        ic, board_note, board_told = _recorded_board(ic, profile.meta, where)
    board_note = board_note or _memory_board_note(ic)
    mismatch = (_profile_hardware_mismatch(profile.meta.hardware, ic.hardware)
                if not profile.estimated and not board_told else None)
    if mismatch == "error":
        device = profile.meta.device.get("gpu") or profile.meta.device.get("name")
        named = canonical_hardware_name(device) if isinstance(device, str) else None
        hint = (f" (its recorded device, {device!r}, is this GPU, {ic.hardware}: the profile's hardware field "
                "looks wrong)"
                if named is not None and named == ic.hardware else "")
        raise ProfileError(f"{where}.hardware: {ic.hardware}, but the profile ({profile.meta.path}) was measured on "
                           f"{profile.meta.hardware}{hint}: its step times are that GPU's; give the instance that "
                           "hardware, or a profile measured on this one")
    hardware = _tp_link_hardware(get_hardware(ic.hardware), cfg)
    knobs = dict(
        step_overhead_us=opts.step_overhead_us or ic.step_overhead_us,
        step_overhead_per_seq_us=(opts.step_overhead_per_seq_us if opts.step_overhead_per_seq_us is not None
                                  else ic.step_overhead_per_seq_us),
        skew_alpha=opts.decode_skew_alpha if opts.decode_skew_alpha is not None else ic.decode_skew_alpha,
        moe_placement=placement, moe_external=model.is_moe and dp_size > 1, quantization=ic.quantization,
        custom_all_reduce=not ic.disable_custom_all_reduce,
        fused_norm_tokens=_fused_norm_tokens(ic, hardware, model, dp_size), kv_read_scale=_kv_read_scale(ic, profile),
        graph_sizes=_graph_sizes(ic), graphs_decode_only=ic.cudagraph_mode == "FULL_DECODE_ONLY",
    )
    predictor = step_times(profile, model, ic.tp_size, hardware, **knobs)
    if ic.pp_size > 1:  # pdsim/engine/pipeline_build.py
        predictor = pipeline_predictor(predictor, step_times, profile, model, ic, hardware, knobs,
                                       pp_link(cfg, ref.node_index))
    if opts.step_time_scale != 1.0:
        predictor = ScaledStepTimes(predictor, opts.step_time_scale)
    if profile.meta.imported:
        predictor.notes.append(f"step times from a profile built by {profile.meta.tool}: kernels from its database "
                               "are measured, the ops it lacks (element-wise ops and the sampler; its meta.json notes "
                               f"list them) pdsim's roofline estimate at {profile.meta.hardware}'s datasheet "
                               "bandwidth; npu_mem.mem_bw is not used")
    elif not profile.estimated:
        predictor.notes.append("npu_mem.mem_bw is not used where step times come from a measured profile")
        if (kernel_note := kernel_mismatch(profile.meta.device)) is not None:
            predictor.notes.append(kernel_note)
    elif (note := mem_bw_note(ic)) is not None:
        predictor.notes.append(note)
    predictor.notes.extend(set_aside)
    if board_note:
        predictor.notes.append(board_note)
    if ic.tp_size > 1 and cfg.link_bw_per_dim is None:  # LLMServingSim broadcasts a scalar to its TP dimension too
        predictor.notes.append(f"the config's link_bw {cfg.link_bw:g} GB/s is the link between instances, not the TP "
                               "group's, which LLMServingSim would price its all-reduce over (docs/validation.md, "
                               "TP collectives); a link_bw list's first value sets the TP link")
    elif ic.tp_size > 1 and (link := cfg.gpu_link(0)) is not None:
        predictor.notes.append(f"the TP link, link_bw's first value {cfg.link_bw_per_dim[0]:g} GB/s, is read as both "
                               "directions together, as datasheets and LLMServingSim's configs give GPU links (900 "
                               f"for H100's NVLink, 128 for PCIe 5.0 x16): {link[0]:g} GB/s each way")
    if not profile.estimated and not same_model(profile.meta.model, model.name):  # perf/profile.py, same_shape
        predictor.notes.append(f"the profile times {profile.meta.model}'s layers, the instance runs {model.name}, a "
                               "model of the same shape: the profile's times are taken for it")
    if mismatch == "note":
        predictor.notes.append(f"the profile was measured on {profile.meta.hardware!r}, the instance names "
                               f"{ic.hardware!r}: step times are the profile's, memory and links the instance's")
    elif mismatch == "family":
        predictor.notes.append(f"the profile names the family {profile.meta.hardware!r}, not which board measured it "
                               f"(no device recorded): its step times are taken as the {ic.hardware}'s")
    if ic.kv_cache_dtype == "auto" and model.checkpoint_kv_cache_dtype is not None:
        predictor.notes.append(f"kv_cache_dtype auto: {model.checkpoint_kv_cache_dtype}, as vLLM resolves it from "
                               f"{model.name}'s quantization_config (its KV cache scheme)")
    if not model.is_moe and ic.ep_size is not None and ic.ep_size > 1:  # vLLM's --enable-expert-parallel: a no-op
        predictor.notes.append(f"ep_size {ic.ep_size}: {model.name} is a dense model (no experts), so expert "
                               "parallelism changes nothing; ignored")
    if model.whole_qk_norm and ic.tp_size > 1:  # vLLM's OlmoeAttention._apply_qk_norm
        predictor.notes.append(f"{model.name}: its q and k norms span the whole projection, so vLLM all-gathers q and "
                               f"k over the TP group in every layer and splits them after (OlmoeAttention): the norms "
                               "are priced over the gathered q and k where estimated, the all-gathers not at all")
    if ic.cudagraph_capture_sizes is not None and _capture_sizes(ic) == ():
        predictor.notes.append(f"cudagraph_capture_sizes: none at or below max_num_batched_tokens "
                               f"{ic.max_num_batched_tokens:,}, which vLLM drops, so no step runs a CUDA graph")
    if ic.enforce_eager and not profile.meta.engine_enforce_eager:
        predictor.notes.append("enforce_eager: the engine launches every kernel of every step from Python (no CUDA "
                               "graphs), which step times not measured under enforce_eager do not include: not "
                               "modelled")
    for note in (_kv_dtype_note(ic, profile.meta), _dtype_note(ic, profile.meta)):
        if note is not None and not profile.estimated:
            predictor.notes.append(note)
    activation_bytes = predictor.activation_reserve_bytes(ic.max_num_batched_tokens, ic.max_num_seqs, ic.top_k_top_p,
                                                          ic.moe_workspace)
    kv_per_token = held.kv_bytes_per_token(ic.kv_dtype, ic.tp_size)
    expert_shards = placement.weight_shards(model.moe, dp_rank)  # this rank's own experts
    if ic.pp_size > 1:  # each stage's GPUs hold their layers' weights and KV; the fewest blocks bind
        forward_bytes = predictor.forward_reserve_bytes(ic.max_num_batched_tokens, ic.moe_workspace)
        staged = pipeline_kv_budget(ic, model, activation_bytes, forward_bytes, where,
                                    opts.kv_gpu_blocks.get(ref.instance_id), expert_shards,
                                    opts.recorded_gpu_memory_utilization)
        budget, kv_per_token = staged.budget, staged.kv_bytes_per_token
    else:
        budget = kv_budget(ic, held, activation_bytes, where, opts.kv_gpu_blocks.get(ref.instance_id),
                           expert_shards, opts.recorded_gpu_memory_utilization)
    spec = _spec(ref, ic, budget, kv_per_token)
    num_blocks = budget.usable_blocks
    lockstep = model.is_moe and dp_size > 1  # one step at a time, in step with the group
    engine: type[Instance] = Instance
    if ic.pp_size > 1:
        engine = AsyncPipelinedInstance if ic.async_scheduling else PipelinedInstance
        if ic.async_scheduling and lockstep:
            raise ConfigError(f"{where}: pp_size {ic.pp_size} with async_scheduling true in a MoE DP group is not "
                              "modelled; set async_scheduling false, or give --sync-scheduling (validate takes it "
                              "too, where the run's vLLM release scheduled asynchronously by default; "
                              "docs/pipeline.md)")
    inst = engine(env, spec, predictor, num_blocks, 1 if lockstep else opts.max_decode_run_steps)
    info = InstanceInfo(
        id=spec.id, pd_type=ic.pd_type, model_name=ic.model_name, hardware=ic.hardware, tp=ic.tp_size,
        num_kv_blocks=num_blocks, kv_capacity_gb=num_blocks * budget.block_bytes / GB,
        weights_gb=budget.weight_bytes / GB, activation_gb=budget.activation_bytes / GB,
        non_torch_gb=budget.other_bytes / GB,
        kv_rule=budget.rule, kv_tokens=budget.kv_tokens, kv_cache_dtype=ic.kv_dtype,
        memory_note=budget.note + _max_len_note(budget, model, opts.recorded_max_model_len,
                                                opts.max_model_len_recorded_as),
        max_model_len_unheld=_unheld_max_len(budget, model, opts.recorded_max_model_len),
        kv_predicted_tokens=budget.predicted_gpu_blocks // budget.kv_groups * ic.block_size,
        profile_path=str(profile.meta.path), estimated_profile=profile.estimated or predictor.estimated,
        estimated_part="" if profile.estimated or not predictor.estimated else "MoE expert layers",
        board_note=board_note,
    )
    return inst, info


def _unheld_max_len(budget: KVBudget, model: ModelSpec, recorded_max_len: int | None) -> int:
    """The max_model_len (the measured engine's where validate read one, else the model's max length) of which the
    KV cache holds no request, which vLLM will not start with (vLLM 0.19 kv_cache_utils.check_enough_kv_cache_memory);
    0 where it holds one."""
    max_len = recorded_max_len or model.default_max_model_len
    if budget.kv_groups > 1 or budget.kv_tokens >= max_len:  # sliding-window layers: vLLM counts them apart
        return 0
    return max_len


def _max_len_note(budget: KVBudget, model: ModelSpec, recorded_max_len: int | None = None,
                  recorded_as: str | None = None) -> str:
    """What the run says of a KV cache that holds no request of its max_model_len (_unheld_max_len): how the
    measured engine came to start (recorded_as: SimOptions.max_model_len_recorded_as), or that vLLM would not."""
    max_len = _unheld_max_len(budget, model, recorded_max_len)
    if not max_len:
        return ""
    if recorded_max_len:
        return (f"; {budget.kv_tokens:,} tokens hold no request of the measured engine's max_model_len "
                f"{max_len:,}, which vLLM refuses to start with: the predicted KV cache is smaller than the "
                "engine's was")
    if recorded_as == "default":
        return (f"; {budget.kv_tokens:,} tokens hold no request of the model's max length ({max_len:,}), the measured "
                "engine's as its meta.json records no max_model_len: vLLM refuses to start with a cache that small, "
                "so the engine's was larger or its max_model_len went unrecorded")
    if recorded_as == "fit":
        return (f"; {budget.kv_tokens:,} tokens hold no request of the model's max length ({max_len:,}): the measured "
                "engine's max_model_len -1 fits it to the cache at start-up (here longer requests are rejected)")
    return (f"; {budget.kv_tokens:,} tokens hold no request of the model's max length ({max_len:,}): vLLM starts "
            f"such an engine only with --max-model-len {budget.kv_tokens:,} or less (here longer requests are "
            "rejected)")


def mem_bw_note(ic: InstanceConfig) -> str | None:
    """What an estimate priced at the config's npu_mem.mem_bw, when that is not the GPU's datasheet figure: a
    template copied from another GPU keeps its bandwidth unless edited."""
    spec = get_hardware(ic.hardware)
    if spec is None or ic.npu_mem.mem_bw == spec.mem_bw_gbps:
        return None
    return (f"step times estimated at npu_mem.mem_bw {ic.npu_mem.mem_bw:g} GB/s, the config's; "
            f"{spec.name}'s datasheet gives {spec.mem_bw_gbps:g} GB/s")


def _recorded_board(ic: InstanceConfig, meta: ProfileMeta, where: str) -> tuple[InstanceConfig, str, bool]:
    """The board a measured profile's recorded device names, where the instance's hardware is of its family.
    Where the config named the family ("H100", which LLMServingSim writes for any H100 and pdsim reads as
    H100-SXM), the instance runs as that board, since its step times are that board's, and says so; where it
    named another board, that is refused, as a profile of another GPU is. Also whether the device told the
    board, which then stands for the profile's hardware field (an "H100" profile measured on an H100 PCIe is an
    H100-PCIe profile)."""
    device = meta.device.get("gpu") or meta.device.get("name")
    if isinstance(device, str) and is_gpu_slice(device):
        return ic, (f"the profile was measured on a MIG slice, {device!r} ({meta.path}): its step times are that "
                    f"slice's, slower than the whole {ic.hardware}'s; memory and links are the instance's"), False
    board = device_board(device, ic.hardware) if isinstance(device, str) else None
    named = canonical_hardware_name(device) if isinstance(device, str) else None
    if (board is None and named in HARDWARE and (board_family(named) or named) != (board_family(ic.hardware)
                                                                                    or ic.hardware)
            and get_hardware(ic.hardware) is not None  # a GPU pdsim does not know may be that one: said below
            and _profile_hardware_mismatch(meta.hardware, ic.hardware) != "error"):  # else that error says it
        raise ProfileError(f"{meta.path}: measured on {device!r} ({named}), but {where} names {ic.hardware}: its step "
                           "times are the other GPU's (whatever the profile's hardware field says); give a profile "
                           "measured on this GPU, or the instance that hardware")
    if board is not None and board == ic.hardware and board != canonical_hardware_name(ic.hardware_given):
        # The config's memory chose this board (_board_by_memory), and the device agrees.
        return ic, (f"hardware {ic.hardware_given} taken as {board}, not {canonical_hardware_name(ic.hardware_given)}: "
                    f"the profile was measured on {device!r} ({meta.path}), and {_board_chosen_by(ic)}"), True
    if board is None and isinstance(device, str) and device.strip() and named not in HARDWARE:
        return ic, (f"the profile records its device as {device!r} ({meta.path}), which pdsim cannot tell as a GPU "
                    f"it knows: its step times are taken as {ic.hardware}'s"), False
    if board is None or board == ic.hardware:
        return ic, "", board is not None
    spec = get_hardware(board)  # every board a device name tells has a spec (hardware.py _BOARD_PATTERNS)
    if not ic.hardware_is_family_name:
        raise ProfileError(f"{where}.hardware: {ic.hardware}, but the profile ({meta.path}) was measured on {device!r} "
                           f"({board}): its step times are that board's; give the instance that hardware, or a profile "
                           "measured on this one")
    if ic.npu_mem.mem_size > spec.mem_size_gb:  # the config's own check saw the family's default board
        raise ConfigError(f"{where}.npu_mem.mem_size: {ic.npu_mem.mem_size:g} GB is more than the {board}'s "
                          f"{spec.mem_size_gb:g} GB ({spec.source}), the board the profile was measured on "
                          f"({device!r}, {meta.path})")
    return ic.model_copy(update={"hardware": board}), (
        f"hardware {ic.hardware_given} taken as {board}, not {ic.hardware}: the profile was measured on {device!r} "
        f"({meta.path}); the boards differ in TP link, memory bandwidth and non-torch memory"), True


def _memory_board_note(ic: InstanceConfig) -> str:
    """What the instance runs as where its name was taken as another board than the name's default for its memory
    or memory bandwidth (config/models.py _board_by_memory); "" otherwise."""
    default = canonical_hardware_name(ic.hardware_given)
    mem = ic.npu_mem
    if ic.hardware == default or family_board(ic.hardware_given, mem.mem_size, mem.mem_bw) != ic.hardware:
        return ""
    return f"hardware {ic.hardware_given} taken as {ic.hardware}, not {default}: {_board_chosen_by(ic)}"


def _board_chosen_by(ic: InstanceConfig) -> str:
    """Which of npu_mem's figures made _board_by_memory take the instance's board for its name's default: the
    memory where the two boards' differ, else the bandwidth."""
    default = canonical_hardware_name(ic.hardware_given)
    spec, other, mem = get_hardware(ic.hardware), get_hardware(default), ic.npu_mem
    if spec.mem_size_gb != other.mem_size_gb:
        return (f"npu_mem.mem_size {mem.mem_size:g} GB is the {ic.hardware}'s memory ({spec.mem_size_gb:g} GB), not "
                f"the {default}'s ({other.mem_size_gb:g} GB)")
    return (f"npu_mem.mem_bw {mem.mem_bw:g} GB/s is the {ic.hardware}'s memory bandwidth ({spec.mem_bw_gbps:g} "
            f"GB/s), not the {default}'s ({other.mem_bw_gbps:g} GB/s)")


def _profile_hardware_mismatch(measured_on: str, named: str) -> str | None:
    """How a measured profile's GPU and the instance's differ: "error" where both are GPUs pdsim knows and
    they differ (another GPU's step times would be reported as this one's), "note" where a name pdsim does
    not know may still be the same GPU, "family" where the profile names a family ("H100") and the instance
    one of its boards (which the profile does not say measured it), None where they agree."""
    if canonical_hardware_name(measured_on) == canonical_hardware_name(named):
        return None
    if is_family_name(measured_on) and (board_family(canonical_hardware_name(named))
                                        == board_family(canonical_hardware_name(measured_on))):
        return "family"
    if get_hardware(measured_on) is not None and get_hardware(named) is not None:
        return "error"
    return "note"


def _spec(ref: InstanceRef, ic: InstanceConfig, budget: KVBudget, kv_bytes_per_token: int) -> InstanceSpec:
    return InstanceSpec(
        id=ref.instance_id, pd_type=ic.pd_type, model_name=ic.model_name, hardware=ic.hardware,
        tp=ic.tp_size, dtype=ic.dtype, node=ref.node_index, max_num_seqs=ic.max_num_seqs,
        max_num_batched_tokens=ic.max_num_batched_tokens, block_size=ic.block_size,
        enable_chunked_prefill=ic.enable_chunked_prefill, kv_bytes_per_token=kv_bytes_per_token,
        weight_bytes=budget.weight_bytes, activation_bytes=budget.activation_bytes + budget.other_bytes,
        long_prefill_token_threshold=ic.long_prefill_token_threshold,
        async_scheduling=ic.async_scheduling, reserve_full_isl=ic.scheduler_reserve_full_isl,
        kv_dtype=ic.kv_dtype, pp=ic.pp_size,
        async_depth=ic.pp_size - 1 if ic.async_scheduling and ic.pp_size > 1 else 1,
        enable_prefix_caching=ic.enable_prefix_caching, enforce_eager=ic.enforce_eager,
        cudagraph_sizes=_graph_sizes(ic), cudagraph_decode_only=ic.cudagraph_mode == "FULL_DECODE_ONLY",
        window_blocks=budget.window_blocks,
    )


def _capture_sizes(ic: InstanceConfig) -> tuple[int, ...] | None:
    """The CUDA-graph sizes vLLM captures for this instance (none left of those given: ()); None where it captures
    no graphs at all (enforce_eager, cudagraph_mode NONE)."""
    if ic.enforce_eager or ic.cudagraph_mode == "NONE":
        return None
    return tuple(cudagraph_sizes(ic.max_num_seqs, ic.max_num_batched_tokens, ic.cudagraph_capture_sizes,
                                 ic.max_cudagraph_capture_size))


def _graph_sizes(ic: InstanceConfig) -> tuple[int, ...]:
    """The CUDA-graph sizes a step of this instance can run at (perf/cudagraphs.py), () for none."""
    return graph_sizes_run(_capture_sizes(ic) or (), ic.cudagraph_mode == "FULL_DECODE_ONLY", ic.max_num_seqs)


def _fused_norm_tokens(ic: InstanceConfig, hardware: HardwareSpec | None, model: ModelSpec,
                       dp_size: int) -> int | None:
    """Up to how many tokens a step runs its TP all-reduces fused with the norms after them, as vLLM >= 0.17
    decides it (None: never): by default not in a DP group or with PP, where vLLM leaves the fusion off."""
    setting = ic.allreduce_rms_fusion
    if ic.tp_size <= 1 or setting is False or ic.enforce_eager or (setting is None and (dp_size > 1 or ic.pp_size > 1)):
        return None
    tokens = fused_allreduce_norm_tokens(hardware, ic.tp_size, model.hidden_size * dtype_bytes(ic.dtype))
    return None if tokens is None else min(tokens, ic.max_num_batched_tokens)  # as vLLM sizes its workspace


def _tp_link_hardware(hw: HardwareSpec | None, cfg: ClusterConfig) -> HardwareSpec | None:
    """The GPU spec, with its intra-node link replaced by the innermost of per-dimension link_bw /
    link_latency lists when the config gives them (LLMServingSim's TP dimension, docs/moe.md), read as
    both directions together (ClusterConfig.gpu_link)."""
    link = cfg.gpu_link(0)
    if hw is None or link is None:
        return hw
    each_way, latency = link
    bridge = each_way if hw.nvlink_bridge_gbps else 0.0  # a bridged pair's TP link is the given one
    return dataclasses.replace(hw, intra_node_bw_gbps=each_way, intra_node_latency_ns=latency,
                               nvlink_bridge_gbps=bridge)
