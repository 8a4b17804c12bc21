"""Cluster configuration, in LLMServingSim's cluster-config schema.

Units follow that schema: link_bw and mem_bw in GB/s, link_latency and mem_latency in ns,
mem_size in GB. Our own per-instance scheduler knobs (vLLM names and defaults) are added on
the instances. Unknown keys are errors, so a typo such as "max_num_seq" is not silently
ignored; only the keys in IGNORED_KEYS, which LLMServingSim configs may carry but which we
do not model, are dropped.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from pydantic import Field, PrivateAttr, ValidationInfo, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pdsim.config.base import (
    CUDAGRAPH_MODES,
    GB,
    INTRA_NODE_LATENCY_NS,
    MAX_BLOCK_SIZE,
    MAX_BW_GBPS,
    MAX_LATENCY_NS,
    MAX_MEM_GB,
    MAX_NPUS,
    MAX_OVERHEAD_US,
    MAX_TOKENS,
    MIN_BW_GBPS,
    MOE_WORKSPACES,
    PD_TYPES,
    TOP_K_TOP_P_SAMPLERS,
    _bandwidth_floor,
    _fmt,
    _one_of,
    _Strict,
)
from pdsim.config.policies import KVTransferConfig, RouterConfig
from pdsim.errors import PdsimError
from pdsim.hardware import (
    board_family,
    canonical_hardware_name,
    family_board,
    family_boards,
    get_hardware,
    is_family_name,
)
from pdsim.llmservingsim_keys import (
    KV_CACHE_DTYPES,
    check_dp_group,
    check_ep,
    infer_instance_sizes,
    kv_dtype_of,
    per_dim_links,
)
from pdsim.models import DTYPE_BYTES, QUANTIZATIONS, load_model
from pdsim.perf.moe_time import ExpertPlacement


def _checkpoint_quantization(data: Any) -> Any:
    """A quantised checkpoint (its config.json's quantization_config) runs quantised in vLLM without
    --quantization: take its scheme when the instance gives none; a different one is an error."""
    if not isinstance(data, dict) or not isinstance(data.get("model_name"), str):
        return data
    try:
        own = load_model(data["model_name"]).checkpoint_quantization
    except PdsimError:
        return data  # the model_name validator words it
    given = data.get("quantization")
    if own is None or given == own:
        return data
    if given is None:
        return {**data, "quantization": own}
    raise PydanticCustomError(
        "quantization", "the checkpoint of {model} is quantised {own} (its quantization_config); got quantization "
        "{given}", {"model": data["model_name"], "own": own, "given": _fmt(given)})


def unchunked_budget(max_model_len: int, max_num_seqs: Any = None) -> int:
    """vLLM's default step budget without chunked prefill (engine/arg_utils.py
    _set_default_max_num_seqs_and_batched_tokens_args, 0.19), where the user set no max_num_batched_tokens:
    raised to max_model_len, so that a whole prompt fits one step, and kept under max_num_seqs x max_model_len
    (max_num_seqs None: the default's; one that is no count is left to the config's validation)."""
    if max_num_seqs is None:
        max_num_seqs = InstanceConfig.model_fields["max_num_seqs"].default
    budget = max(max_model_len, InstanceConfig.model_fields["max_num_batched_tokens"].default)
    if type(max_num_seqs) is int and max_num_seqs >= 1:
        budget = min(max_num_seqs * max_model_len, budget)
    return min(budget, MAX_TOKENS)


def _unchunked_budget(data: Any) -> Any:
    """unchunked_budget where the instance turns chunked prefill off and gives no budget; pdsim's max_model_len
    is the model's own."""
    if (not isinstance(data, dict) or data.get("enable_chunked_prefill") is not False
            or "max_num_batched_tokens" in data or not isinstance(data.get("model_name"), str)):
        return data
    try:
        max_len = load_model(data["model_name"]).default_max_model_len
    except PdsimError:
        return data  # the model_name validator words it
    return {**data, "max_num_batched_tokens": unchunked_budget(max_len, data.get("max_num_seqs"))}


def _fp8_dtype_as_quantization(data: Any) -> Any:
    """LLMServingSim's `dtype: "fp8"` means fp8 weights: read it as vLLM's `--quantization fp8`
    over bf16 activations (embeddings, norms and lm_head stay bf16, as in vLLM); the KV cache
    stays bf16 unless kv_cache_dtype says fp8, as with vLLM's flags (docs/precision.md)."""
    if not isinstance(data, dict) or data.get("dtype") != "fp8":
        return data
    if data.get("quantization") not in (None, "fp8"):
        raise PydanticCustomError(
            "quantization", 'dtype "fp8" means quantization "fp8"; got quantization {got}; give dtype "bfloat16" '
            "with the quantization wanted", {"got": _fmt(data.get("quantization"))})
    return {**data, "dtype": "bfloat16", "quantization": "fp8"}


def effective_ep_size(model_name: str, tp_size: int, ep_size: int | None) -> int:
    """The expert-parallel size an instance runs: its ep_size, else LLMServingSim's default, tp_size for a MoE model
    (whole experts per GPU), 1 for a dense one."""
    if ep_size is not None:
        return ep_size
    return tp_size if load_model(model_name).is_moe else 1


def _finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _board_by_memory(data: Any) -> Any:
    """A name that leaves the board open ("H100", "A100-SXM4") with another board's memory, or (a family name) with
    its memory bandwidth, names that board (hardware.family_board: 94 GB is the H100 NVL, 80 GB at 2,000 GB/s the
    H100 PCIe); the name as given is kept (`hardware_given`), so a measured profile's device still tells the board
    (engine/build.py)."""
    if not isinstance(data, dict) or not isinstance(data.get("hardware"), str):
        return data
    mem = data.get("npu_mem")
    size = mem.get("mem_size") if isinstance(mem, dict) else None
    if not _finite_number(size):
        return data
    bw = mem.get("mem_bw")
    board = family_board(data["hardware"], size, bw if _finite_number(bw) else None)
    return data if board is None else {**data, "hardware": board}



class MemConfig(_Strict):
    mem_size: float = Field(gt=0, le=MAX_MEM_GB, allow_inf_nan=False)  # GB
    # GB/s. At least 1: slower memory is no serving GPU's, and (a TB/s figure typed in GB/s, say) would
    # stretch every step so far that the run's timeline alone would not finish.
    mem_bw: float = Field(ge=1, le=MAX_BW_GBPS, allow_inf_nan=False)
    mem_latency: float = Field(default=0, ge=0, le=MAX_LATENCY_NS, allow_inf_nan=False)  # ns


class NpuMemConfig(MemConfig):
    # LLMServingSim's knob: when given, the KV cache is sized by LLMServingSim's rule, KV =
    # mem_size x mem_util - weights (its published values are calibrated to that formula), and the
    # run says what vLLM's accounting would give. Left out: vLLM's accounting (gpu_memory_utilization
    # on the instance). See docs/memory.md.
    mem_util: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)


class InstanceConfig(_Strict):
    model_name: str
    hardware: str  # not checked here: a measured profile may exist for unlisted hardware
    npu_mem: NpuMemConfig
    num_npus: int = Field(default=1, ge=1, le=MAX_NPUS)
    tp_size: int = Field(default=1, ge=1, le=MAX_NPUS)
    pp_size: int = Field(default=1, ge=1, le=MAX_NPUS)
    pd_type: str | None = None  # "prefill", "decode", or None for a colocated instance
    max_num_seqs: int = Field(default=128, ge=1, le=MAX_TOKENS)
    max_num_batched_tokens: int = Field(default=2048, ge=1, le=MAX_TOKENS)
    block_size: int = Field(default=16, ge=1, le=MAX_BLOCK_SIZE)
    enable_chunked_prefill: bool = True
    dtype: str = "bfloat16"
    profile_dir: str | None = Field(default=None, min_length=1)
    # Calibration knobs (docs/validation.md; `pdsim calibrate` fits the first two to a measured
    # run). Engine CPU time per step that kernel profiles do not see: a fixed part and a part per
    # scheduled sequence (us). decode_skew_alpha: how much of the gap between the longest and the
    # mean decode KV the attention pays; null takes the profile's own fit (0 when it has none).
    step_overhead_us: float = Field(default=0.0, ge=0, le=MAX_OVERHEAD_US, allow_inf_nan=False)
    step_overhead_per_seq_us: float = Field(default=0.0, ge=0, le=MAX_OVERHEAD_US, allow_inf_nan=False)
    decode_skew_alpha: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    # vLLM v1 scheduler knob: cap on one request's prefill chunk per step; 0 (vLLM's default with
    # max_num_partial_prefills 1) lets a prefill take the whole budget left.
    long_prefill_token_threshold: int = Field(default=0, ge=0, le=MAX_TOKENS)
    # vLLM's scheduler_reserve_full_isl (new in 0.19, on by default; absent up to 0.18): a waiting
    # request is admitted only when its whole sequence fits in the free KV blocks, not just its
    # first chunk. Set false to model vLLM 0.18 or older.
    scheduler_reserve_full_isl: bool = True
    # vLLM's --async-scheduling: the next step is decided while the current one runs, so a request
    # that arrives during step n starts in step n+2. Off by default in vLLM 0.12, on in 0.19.
    async_scheduling: bool = False
    # vLLM's --enable-prefix-caching (on by default in vLLM v1). Prompts share blocks only where requests
    # carry prefix ids (trace `hash_ids`); without them it acts only on a preempted request, which recomputes
    # from its own blocks still cached.
    enable_prefix_caching: bool = True
    # GPU memory vLLM's determine_available_memory() keeps out of the KV cache besides weights and
    # the activation peak (GB per GPU). non_torch: NCCL/cuBLAS/attention-backend buffers that appear
    # during start-up and profiling ("non-torch forward increase memory" in vLLM's log; ~0.1-0.3
    # GiB at TP 1, more with NCCL). cudagraph: vLLM's CUDA-graph estimate, subtracted only when
    # VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1 (off by default in 0.19.0, on in 0.33.0), so 0 here.
    # null: vLLM 0.19's measured increase on H100, 0.25 GiB at TP 1 and 2.1 GiB at TP >= 2, where NVLink
    # carries NCCL; TP 1's figure at TP >= 2 on a PCIe GPU (perf/memory.py non_torch_gib, docs/memory.md).
    non_torch_memory_gb: float | None = Field(default=None, ge=0, le=MAX_MEM_GB, allow_inf_nan=False)
    cudagraph_memory_gb: float = Field(default=0.0, ge=0, le=MAX_MEM_GB, allow_inf_nan=False)
    # vLLM's --gpu-memory-utilization: the fraction of the GPU's CUDA-visible memory the engine may
    # use (weights, activations and KV cache); null: vLLM's default 0.9. Not with npu_mem.mem_util.
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    # vLLM's two ways to fix the KV cache's size instead (docs/memory.md): --kv-cache-memory-bytes, bytes
    # per GPU (vLLM then ignores the utilization), and num_gpu_blocks_override, the engine's block count
    # whatever the memory ("used for testing preemption"). Either replaces both rules above.
    kv_cache_memory_bytes: int | None = Field(default=None, ge=1, le=int(MAX_MEM_GB * GB))
    num_gpu_blocks_override: int | None = Field(default=None, ge=2, le=MAX_TOKENS)
    # vLLM's --disable-custom-all-reduce: TP all-reduces run on NCCL only (what vLLM also does when its
    # peer-to-peer check fails); its custom kernel is otherwise used for small messages (collectives.py).
    disable_custom_all_reduce: bool = False
    # vLLM >= 0.17's all-reduce + RMSNorm fusion (FlashInfer; -O2, its default compilation): null runs it where
    # vLLM does (compute capability 9.0/10.x, TP 2/4/8, no DP group, no PP; pdsim/perf/collectives.py); false
    # for vLLM 0.16 or older, enforce_eager or -O0/-O1; true also in a DP group or with PP (vLLM's
    # pass_config fuse_allreduce_rms set by hand), still only on the GPUs and TP sizes vLLM has sizes for.
    allreduce_rms_fusion: bool | None = None
    # vLLM's --enforce-eager: no torch.compile and no CUDA graphs (config/vllm.py sets both off), so no
    # all-reduce + norm fusion and no padding of a MoE DP group's ranks to a capture size (dp_group.py).
    enforce_eager: bool = False
    # vLLM's CUDA graphs (its compilation_config keys), which decide what a MoE DP group's ranks pad their batches
    # to (dp_group.py). cudagraph_capture_sizes null: vLLM 0.19's defaults, 1, 2, 4, then every 8 below 256 and
    # every 16 up to max_cudagraph_capture_size (null: min(2 x max_num_seqs, 512)), none above
    # max_num_batched_tokens; given sizes above it are dropped, as vLLM drops them. cudagraph_mode null is vLLM's
    # FULL_AND_PIECEWISE; FULL_DECODE_ONLY runs graphs for decode-only steps alone, NONE for no step (the model
    # is still compiled, unlike enforce_eager).
    cudagraph_capture_sizes: list[int] | None = Field(default=None, min_length=1)
    max_cudagraph_capture_size: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    cudagraph_mode: str | None = None
    # How vLLM's sampler applies top-k/top-p, which sizes the activation peak its start-up takes out of the KV cache
    # (docs/memory.md): "triton", vLLM 0.17 and later (a Triton kernel from 8 sequences); "pytorch", vLLM 0.16 and
    # older, which sort the whole vocabulary in PyTorch (2.5x the memory per sampled sequence); "flashinfer", its
    # FlashInfer sampler (VLLM_USE_FLASHINFER_SAMPLER=1; 0.11's default where FlashInfer is installed).
    top_k_top_p: str = "triton"
    # How vLLM holds a MoE model's fused-MoE workspaces, which also sizes that peak (docs/memory.md): "batch", vLLM
    # 0.18 and later (kept from the first MoE forward, for the whole batch); "chunk", 0.14 to 0.17 (kept, for one
    # 16,384-row chunk); "layer", 0.13 and older (allocated and freed in each layer).
    moe_workspace: str = "batch"

    # ---- LLMServingSim keys: expert/data parallelism and engine settings (docs/moe.md) ----
    # Expert-parallel degree; in a dp_group the whole group's (LLMServingSim). None: tp_size for a
    # MoE model (experts split over the instance's GPUs), 1 for a dense one.
    ep_size: int | None = Field(default=None, ge=1, le=MAX_NPUS)
    # Instances with the same dp_group form one data-parallel group (vLLM's data_parallel_size):
    # they step in lock step and, for a MoE model, share the experts (pdsim/engine/dp_group.py).
    dp_group: str | None = None
    # vLLM's --kv-cache-dtype: "auto" stores KV in `dtype`; fp8 variants store one byte per value.
    kv_cache_dtype: str = "auto"
    # vLLM's --quantization for the weights (docs/precision.md): null keeps them in `dtype`; "fp8"
    # (per-channel scales, as compressed-tensors W8A8 / FP8-dynamic checkpoints) and "fp8_block"
    # (128x128 block scales) store the linear layers at 1 byte and run their GEMMs in fp8.
    quantization: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _infer_sizes(cls, data: Any) -> Any:
        return _unchunked_budget(_board_by_memory(infer_instance_sizes(_checkpoint_quantization(
            _fp8_dtype_as_quantization(data)))))

    @field_validator("hardware", mode="before")
    @classmethod
    def _hardware_alias(cls, v: Any) -> Any:
        return canonical_hardware_name(v) if isinstance(v, str) else v

    # The hardware name as the config wrote it: a family name ("H100") lets a measured profile's recorded device
    # tell the board (engine/build.py), where an explicit board ("H100-SXM") is held to.
    _hardware_given: str | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_given_hardware(cls, data: Any, handler: Any) -> Any:
        instance = handler(data)
        if isinstance(data, dict) and isinstance(data.get("hardware"), str):
            instance._hardware_given = data["hardware"]
        return instance

    @field_serializer("hardware")
    def _hardware_as_given(self, hardware: str) -> str:
        # A family name is written back as given, so a config made from this one (sweep's) keeps its meaning.
        given = self._hardware_given
        return given if given is not None and (canonical_hardware_name(given) == hardware or (
            is_family_name(given) and board_family(hardware) == board_family(canonical_hardware_name(given)))) \
            else hardware

    @property
    def hardware_given(self) -> str:
        """The hardware name as the config wrote it (an alias before it was resolved)."""
        return self._hardware_given or self.hardware

    @property
    def hardware_is_family_name(self) -> bool:
        """Whether the config named a GPU family whose boards differ (LLMServingSim's "H100"), not one board."""
        return is_family_name(self.hardware_given)

    @property
    def kv_dtype(self) -> str:
        """The dtype the KV cache is stored in (its bytes per value)."""
        return kv_dtype_of(self.kv_cache_dtype, self.model_name, self.dtype)

    def effective_ep_size(self) -> int:
        return effective_ep_size(self.model_name, self.tp_size, self.ep_size)

    def expert_placement(self, dp_size: int = 1) -> ExpertPlacement:
        return ExpertPlacement(self.tp_size, self.effective_ep_size(), dp_size)

    def _check_ep(self) -> None:
        check_ep(self)

    @field_validator("cudagraph_capture_sizes")
    @classmethod
    def _capture_sizes(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not all(1 <= size <= MAX_TOKENS for size in v):
            raise PydanticCustomError("capture_sizes", "expected token counts from 1 to {most}", {"most": MAX_TOKENS})
        return v

    @field_validator("kv_cache_memory_bytes", mode="before")
    @classmethod
    def _vllm_bytes(cls, v: Any) -> Any:
        # vLLM's --kv-cache-memory-bytes takes "4G" (4 x 2^30) too, as `pdsim run` does.
        from pdsim.cli_checks import vllm_int

        return vllm_int(v) if isinstance(v, str) else v

    @field_validator("cudagraph_mode", mode="before")
    @classmethod
    def _cudagraph_mode(cls, v: Any) -> Any:
        if isinstance(v, str) and v.upper() in CUDAGRAPH_MODES:  # vLLM takes the names in any case
            return v.upper()
        return _one_of(v, CUDAGRAPH_MODES, nullable=True)

    @field_validator("pd_type", "dtype", "quantization", "kv_cache_dtype", "top_k_top_p", "moe_workspace",
                     mode="before")
    @classmethod
    def _choice(cls, v: Any, info: ValidationInfo) -> Any:
        choices, nullable = {"pd_type": (PD_TYPES, True), "dtype": (tuple(DTYPE_BYTES), False),
                             "quantization": (QUANTIZATIONS, True),
                             "kv_cache_dtype": (tuple(KV_CACHE_DTYPES), False),
                             "top_k_top_p": (TOP_K_TOP_P_SAMPLERS, False),
                             "moe_workspace": (MOE_WORKSPACES, False)}[info.field_name]
        return _one_of(v, choices, nullable=nullable)

    @field_validator("model_name")
    @classmethod
    def _model_known(cls, v: str) -> str:
        try:
            load_model(v)
        except PdsimError as e:
            msg = str(e)
            if msg.startswith("unknown model"):  # where a model pdsim does not bundle comes from in a run
                msg += ("; another model: its Hugging Face config.json as model_config.json beside the cluster "
                        "config of one model (LLMServingSim's run layout)")
            raise PydanticCustomError("unknown_model", "{msg}", {"msg": msg}) from None
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> InstanceConfig:
        if self.pp_size > 1:
            _check_pipeline(self)
        if self.tp_size * self.pp_size != self.num_npus:
            # An instance runs on exactly tp x pp GPUs (LLMServingSim's configs say so too); spare GPUs
            # would be counted in nothing, a shortfall cannot run.
            raise PydanticCustomError(
                "npus",
                "tp_size * pp_size = {need} is {rel} num_npus = {have}: an instance runs on tp_size x pp_size GPUs",
                {"need": self.tp_size * self.pp_size, "have": self.num_npus,
                 "rel": "more than" if self.tp_size * self.pp_size > self.num_npus else "less than"},
            )
        if self.enforce_eager and self.allreduce_rms_fusion:
            raise PydanticCustomError(
                "eager_fusion",
                "allreduce_rms_fusion true needs vLLM's compilation, which enforce_eager true turns off", {})
        if (self.cudagraph_capture_sizes is not None and self.max_cudagraph_capture_size is not None
                and not self.enforce_eager and self.cudagraph_mode != "NONE"):  # where vLLM sizes its graphs
            largest = max((size for size in self.cudagraph_capture_sizes if size <= self.max_num_batched_tokens),
                          default=0)
            if self.max_cudagraph_capture_size != largest:  # vLLM refuses the two disagreeing
                raise PydanticCustomError(
                    "capture_size",
                    "max_cudagraph_capture_size {most} is not the largest of cudagraph_capture_sizes ({largest}, of "
                    "those up to max_num_batched_tokens {budget}): give one of the two, or both agreeing, as vLLM "
                    "needs",
                    {"most": self.max_cudagraph_capture_size, "largest": largest,
                     "budget": self.max_num_batched_tokens})
        if self.max_num_batched_tokens < self.max_num_seqs:
            # vLLM refuses this too: a full decode batch must fit in one step's token budget.
            raise PydanticCustomError(
                "budget",
                "max_num_batched_tokens ({tokens}) must be >= max_num_seqs ({seqs})",
                {"tokens": self.max_num_batched_tokens, "seqs": self.max_num_seqs},
            )
        model = load_model(self.model_name)
        try:
            model.check_tp(self.tp_size)
        except PdsimError as e:
            raise PydanticCustomError("tp", "{msg}", {"msg": str(e)}) from None
        self._check_memory()
        self._check_ep()
        # At least max(tp, ep) GPUs share the experts (more in a DP group; cluster.py counts them). With
        # ep_size 1 in a DP group each expert is split over the whole group: check_dp_group checks that.
        if not (self.dp_group is not None and model.is_moe and self.effective_ep_size() == 1):
            self.check_weights_fit(self.expert_placement())
        return self

    def check_weights_fit(self, placement: ExpertPlacement) -> None:
        """The weights one GPU holds, with the routed experts placed as `placement` says, must fit."""
        model = load_model(self.model_name).on_gpu(self.hardware, placement.expert_tp)
        try:
            model.check_shards(self.tp_size, placement.expert_tp, self.quantization)
        except PdsimError as e:
            raise PydanticCustomError("tp", "{msg}", {"msg": str(e)}) from None
        expert_shards = placement.weight_shards(model.moe)  # the GPU holding the most experts
        try:  # a precision the model's weights do not take (gpt-oss: MXFP4 experts) is named with the instance
            weight_gb = model.weight_bytes(self.dtype, self.tp_size, expert_shards, self.quantization) / GB  # 2^30
        except PdsimError as e:
            raise PydanticCustomError("quantization", "{msg}", {"msg": str(e)}) from None
        if self.pp_size > 1:  # each GPU holds its stage's layers (pdsim/perf/pipeline.py)
            from pdsim.perf.pipeline import max_stage_weight_bytes

            weight_gb = max_stage_weight_bytes(model, self.pp_size, self.dtype, self.tp_size, expert_shards,
                                               self.quantization) / GB
        if self.npu_mem.mem_util is not None and self.kv_cache_memory_bytes is None:  # LLMServingSim's rule
            total_gb, util = self.npu_mem.mem_size, self.npu_mem.mem_util
            limit = f"mem_size {total_gb:g} GiB x mem_util {util:g}"
        else:  # vLLM's: of the memory CUDA shows, as the KV accounting takes it (docs/memory.md)
            from pdsim.perf.memory import visible_memory_gib

            total_gb = visible_memory_gib(self.hardware, self.npu_mem.mem_size)[0]
            total = (f"mem_size {total_gb:g} GB" if total_gb == self.npu_mem.mem_size
                     else f"{total_gb:.2f} GiB that CUDA shows of mem_size {self.npu_mem.mem_size:g} GB")
            if self.kv_cache_memory_bytes is not None:  # it sets the KV size whatever either rule says, and vLLM
                # ignores the utilization then (perf/memory.py checks weights + KV + the rest against the memory)
                util, limit = 1.0, f"{total}; kv_cache_memory_bytes given, so no utilization applies"
            else:
                util = self.gpu_memory_utilization or 0.9
                limit = f"{total} x gpu_memory_utilization {util:g}"
        usable_gb = total_gb * util
        if weight_gb > usable_gb:
            raise PydanticCustomError(
                "weights",
                "{msg}",
                {
                    "msg": f"{self.model_name} weights need {weight_gb:.2f} GiB per NPU "
                    f"({self.quantization or self.dtype}, "
                    f"tp={self.tp_size}{f', pp={self.pp_size}' if self.pp_size > 1 else ''}) "
                    f"but only {usable_gb:.2f} GiB is usable ({limit})"
                },
            )

    def _check_memory(self) -> None:
        if self.npu_mem.mem_util is not None and self.gpu_memory_utilization is not None:
            raise PydanticCustomError(
                "memory", "npu_mem.mem_util (LLMServingSim's rule) and gpu_memory_utilization (vLLM's) are both "
                "given; keep one (docs/memory.md)", {})
        spec = get_hardware(self.hardware)
        if spec is not None and self.npu_mem.mem_size > spec.mem_size_gb:
            family = board_family(self.hardware)
            sizes = {board: get_hardware(board).mem_size_gb for board in family_boards(family)} if family else {}
            larger = [f"the {board} has {size:g} GB: hardware {board!r}, or {family!r} with mem_size {size:g}, runs it"
                      for board, size in sizes.items() if size >= self.npu_mem.mem_size]
            also = f" ({'; '.join(larger)})" if larger else ""
            raise PydanticCustomError(
                "memory", "{msg}",
                {"msg": f"npu_mem.mem_size: {self.npu_mem.mem_size:g} GB is more than the {self.hardware}'s "
                        f"{spec.mem_size_gb:g} GB ({spec.source}); pdsim does not clamp it{also}"})


def _check_pipeline(ic: InstanceConfig) -> None:
    """What pdsim's pipeline model (docs/pipeline.md) needs of a pp_size > 1 instance."""
    model = load_model(ic.model_name)
    layers = model.num_layers
    if ic.pp_size > layers:
        raise PydanticCustomError("pp", "pp_size {pp}: more pipeline stages than the model's {n} layers",
                                  {"pp": ic.pp_size, "n": layers})
    if getattr(model, "sliding_layers", 0):
        # A stage's KV-cache groups would hold its own mix of sliding and full layers, which vLLM's hybrid
        # allocator groups otherwise than the whole model's equal split (pdsim/gpt_oss.py).
        raise PydanticCustomError("pp", "pp_size {pp}: pipeline stages of {name}, whose sliding-window and full "
                                  "attention layers share a hybrid KV cache, are not modelled; use pp_size 1",
                                  {"pp": ic.pp_size, "name": ic.model_name})


class NodeConfig(_Strict):
    num_instances: int = Field(ge=0, le=MAX_NPUS)
    cpu_mem: MemConfig | None = None
    instances: list[InstanceConfig]
    # KV-transfer topology (docs/pd_realism.md). All optional: left out, the node is as in
    # LLMServingSim, where link_bw/link_latency join every pair of instances.
    # intra_node_bw: GB/s per GPU and direction into the node's fabric (NVLink-class: 450 on H100,
    # 300 on A100); same-node transfers then use the fabric instead of link_bw.
    intra_node_bw: float | None = Field(default=None, gt=0, le=MAX_BW_GBPS, allow_inf_nan=False)
    # ns, used with intra_node_bw
    intra_node_latency: float = Field(default=INTRA_NODE_LATENCY_NS, ge=0, le=MAX_LATENCY_NS, allow_inf_nan=False)
    # nic_bw: GB/s per GPU and direction of the node's network interfaces (one NIC per GPU, as on
    # HGX boards: an instance's NIC bandwidth is nic_bw x tp_size); shared by all of the instance's
    # outgoing (or incoming) transfers. Left out: NICs are not a bottleneck.
    nic_bw: float | None = Field(default=None, gt=0, le=MAX_BW_GBPS, allow_inf_nan=False)
    # GPUs that share one NIC (1 on HGX boards; 2 where 8 GPUs have 4 NICs). The TP ranks that share
    # a NIC queue their per-layer RDMA requests on it, so a transfer's per-layer cost grows with them.
    gpus_per_nic: int = Field(default=1, ge=1, le=MAX_NPUS)

    @field_validator("intra_node_bw", "nic_bw")
    @classmethod
    def _bw_floor(cls, v: float | None) -> float | None:
        return None if v is None else _bandwidth_floor(v)

    @model_validator(mode="after")
    def _count(self) -> NodeConfig:
        if self.num_instances != len(self.instances):
            raise PydanticCustomError(
                "count",
                "num_instances is {n} but {m} instances are listed",
                {"n": self.num_instances, "m": len(self.instances)},
            )
        return self


class InstanceRef(NamedTuple):
    node_index: int
    instance_index: int
    config: InstanceConfig

    @property
    def instance_id(self) -> str:
        return instance_id(self.node_index, self.instance_index)


def instance_id(node_index: int, instance_index: int) -> str:
    """Stable instance name used in logs and metrics: "n0.i1" is node 0, instance 1."""
    return f"n{node_index}.i{instance_index}"


# A GPU link's rate in a per-dimension link_bw list counts both directions (ClusterConfig.gpu_link).
GPU_LINK_DIRECTIONS = 2


class ClusterConfig(_Strict):
    num_nodes: int = Field(ge=1, le=MAX_NPUS)
    # The network between instances: GB/s (per direction) one instance pair gets, and ns. Without
    # intra_node_bw on a node, same-node pairs use it too (LLMServingSim's meaning).
    link_bw: float = Field(gt=0, le=MAX_BW_GBPS, allow_inf_nan=False)
    link_latency: float = Field(ge=0, le=MAX_LATENCY_NS, allow_inf_nan=False)
    # LLMServingSim's per-topology-dimension lists (innermost first, e.g. [TP, DP]); link_bw and
    # link_latency then hold the outermost value, the link between instances (docs/moe.md).
    link_bw_per_dim: tuple[float, ...] | None = None
    link_latency_per_dim: tuple[float, ...] | None = None
    nodes: list[NodeConfig]
    router: RouterConfig = Field(default_factory=RouterConfig)
    kv_transfer: KVTransferConfig = Field(default_factory=KVTransferConfig)

    @field_validator("link_bw")
    @classmethod
    def _bw_floor(cls, v: float) -> float:
        return _bandwidth_floor(v)

    @model_validator(mode="before")
    @classmethod
    def _per_dim_links(cls, data: Any) -> Any:
        return per_dim_links(data, {"link_bw": (MIN_BW_GBPS, MAX_BW_GBPS), "link_latency": (0.0, MAX_LATENCY_NS)})

    def gpu_link(self, dim: int) -> tuple[float, float] | None:
        """(GB/s each way, ns) of a GPU-to-GPU dimension of the per-dimension lists (0 TP, 1 PP; a one-value list
        gives every dimension its value), None without lists. These entries are read as both directions together,
        as datasheets quote NVLink and PCIe and LLMServingSim's configs write them (900 for H100's NVLink in
        single_node_single_instance_H100.json, 128 for PCIe 5.0 x16 in dual_node_moe_dp_ep_intra_inter_instance.json,
        where pdsim's specs say 450 and 64 each way); the outermost, the network between instances, is taken as
        given, one way, as NICs are quoted."""
        if self.link_bw_per_dim is None:
            return None
        i = min(dim, len(self.link_bw_per_dim) - 1)
        latencies = self.link_latency_per_dim
        latency = latencies[min(dim, len(latencies) - 1)] if latencies else self.link_latency
        return self.link_bw_per_dim[i] / GPU_LINK_DIRECTIONS, latency

    def dp_groups(self) -> dict[str, list[InstanceRef]]:
        """dp_group name -> its instances, in config order."""
        groups: dict[str, list[InstanceRef]] = {}
        for ref in self.instances():
            if ref.config.dp_group is not None:
                groups.setdefault(ref.config.dp_group, []).append(ref)
        return groups

    def _check_dp_groups(self) -> None:
        for name, refs in self.dp_groups().items():
            check_dp_group(name, refs)

    @model_validator(mode="after")
    def _cross_checks(self) -> ClusterConfig:
        self._check_dp_groups()
        if self.num_nodes != len(self.nodes):
            raise PydanticCustomError(
                "count",
                "num_nodes is {n} but {m} nodes are listed",
                {"n": self.num_nodes, "m": len(self.nodes)},
            )
        refs = self.instances()
        if not refs:
            raise PydanticCustomError("empty", "the cluster has no instances", {})
        types = {ref.config.pd_type for ref in refs}
        # A colocated (null) instance serves whole requests and never hands KV off, so it
        # cannot stand in for the missing half of a prefill/decode pair.
        if "decode" in types and "prefill" not in types:
            raise PydanticCustomError(
                "pd",
                'there are "decode" instances but no "prefill" instance to hand them requests; '
                'add a pd_type "prefill" instance or set pd_type to null for colocated serving',
                {},
            )
        if "prefill" in types and "decode" not in types:
            raise PydanticCustomError(
                "pd",
                'there are "prefill" instances but no "decode" instance to continue their requests; '
                'add a pd_type "decode" instance or set pd_type to null for colocated serving',
                {},
            )
        # A prefilled request's KV only continues on a decode instance of the same model (a decode instance of
        # another model may sit beside them: it is never chosen).
        for side, other in (("prefill", "decode"),):
            served = {ref.config.model_name for ref in refs if ref.config.pd_type == other}
            for ref in refs:
                if ref.config.pd_type == side and served and ref.config.model_name not in served:
                    raise PydanticCustomError(
                        "pd",
                        "nodes[{n}].instances[{i}] is a {side} instance of {model}, but no {other} instance serves "
                        "that model (they serve {served}): a request's KV cache can only move between instances of "
                        "one model",
                        {"n": ref.node_index, "i": ref.instance_index, "side": side, "model": ref.config.model_name,
                         "other": other, "served": ", ".join(sorted(served))},
                    )
        self._check_kv_formats(refs)
        self._check_link_ranks()
        return self

    @staticmethod
    def _check_kv_formats(refs: list[InstanceRef]) -> None:
        """The prefill and decode instances of one model hold the KV cache in one format: vLLM's KV connectors move
        it as stored, and NixlConnector refuses a peer whose activation or KV cache dtype differs (its handshake's
        compatibility hash, vLLM 0.19)."""
        decodes: dict[str, list[InstanceRef]] = {}
        for ref in refs:
            if ref.config.pd_type == "decode":
                decodes.setdefault(ref.config.model_name, []).append(ref)
        # A prefill instance hands its requests to any decode instance of its model: each such pair must match (two
        # prefill instances of different formats are one pair that does not, named as a pair).
        pairs = [(seen, ref) for ref in refs if ref.config.pd_type == "prefill"
                 for seen in decodes.get(ref.config.model_name, [])]
        for seen, ref in pairs:
            ic = ref.config
            a, b = (seen.config.dtype, seen.config.kv_dtype), (ic.dtype, ic.kv_dtype)
            if a != b:
                raise PydanticCustomError(
                    "pd", "nodes[{n}].instances[{i}] ({side}) holds {model}'s KV cache as {b_kv} with dtype {b_dt}, "
                    "but nodes[{n0}].instances[{i0}] ({side0}) as {a_kv} with dtype {a_dt}: vLLM's KV connectors move "
                    "the cache as stored, and refuse a prefill/decode pair whose formats differ; give them one "
                    "kv_cache_dtype and dtype",
                    {"n": ref.node_index, "i": ref.instance_index, "side": ic.pd_type, "model": ic.model_name,
                     "b_kv": b[1], "b_dt": b[0], "n0": seen.node_index, "i0": seen.instance_index,
                     "side0": seen.config.pd_type, "a_kv": a[1], "a_dt": a[0]})

    def _check_link_ranks(self) -> None:
        """A link_bw / link_latency list gives one value per topology dimension; in a config with DP groups
        LLMServingSim's topology is [tp, dp], or [tp, pp, dp] with pipeline stages, and a list of another length
        is an error there (its README), so it would be read here against the wrong dimensions. Without DP groups
        pdsim reads the same dimensions, the outermost being the link between instances, or one value for all:
        a list of another length would have values no dimension reads, left out without a word."""
        lists = {key: len(v) for key, v in (("link_bw", self.link_bw_per_dim),
                                            ("link_latency", self.link_latency_per_dim)) if v is not None}
        if not lists:
            return
        groups = self.dp_groups()
        within = [ref for members in groups.values() for ref in members] if groups else self.instances()
        rank = 3 if any(ref.config.pp_size > 1 for ref in within) else 2
        for key, n in lists.items():
            if n != rank and (groups or n != 1):
                what = ("a config with DP groups has" if groups else
                        "pdsim reads one value for every link, or")
                outer = "dp" if groups else "between instances"
                dims = ["tp", "pp", outer] if rank == 3 else ["tp", outer]
                raise PydanticCustomError(
                    "rank", "{key}: {n} values, but {what} {rank} topology dimensions, innermost first ({dims}): "
                    "give one value per dimension, or one number for all",
                    {"key": key, "n": n, "rank": rank, "what": what, "dims": ", ".join(dims)})

    def routing_units(self, decode: bool) -> set[str]:
        """What a router chooses among for arrivals (prefill and colocated instances) or, with `decode`, for
        hand-offs: each instance, a DP group as one (pdsim/engine/dp_group.py route)."""
        return {ref.config.dp_group or ref.instance_id for ref in self.instances()
                if (ref.config.pd_type == "decode") == decode}

    def instances(self) -> list[InstanceRef]:
        return [
            InstanceRef(n, i, inst)
            for n, node in enumerate(self.nodes)
            for i, inst in enumerate(node.instances)
        ]
