"""How much GPU memory an instance gives its KV cache (docs/memory.md).

Two rules, chosen per instance by the config:

* vLLM's own accounting (v1 `gpu_worker.determine_available_memory`, vLLM 0.19):
      KV = total CUDA memory x gpu_memory_utilization - weights - torch activation peak of the
           profiling run - non-torch memory increase (- CUDA-graph estimate, off by default)
  with the GPU's CUDA-visible total (GPU_VISIBLE_MEMORY), not its datasheet size.
* LLMServingSim's rule, for configs that carry `npu_mem.mem_util` (LLMServingSim's knob, whose
  published values were calibrated against this very formula, e.g. 0.833919 on its RTX 4090 example):
      KV = mem_size GiB x mem_util - weights

Blocks are counted as vLLM reports them (`num_gpu_blocks`, "GPU KV cache size: N tokens" = blocks x
block_size); the scheduler gets one block fewer, as vLLM's block pool keeps its first block as the
null block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from pdsim.config import GB, InstanceConfig
from pdsim.errors import ConfigError
from pdsim.hardware import get_hardware
from pdsim.models import ModelSpec, dtype_bytes

GIB = GB
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# LLMServingSim's --npu-memory-utilization default (its README.upstream.md, npu_mem.mem_util).
LLMSERVINGSIM_DEFAULT_MEM_UTIL = 0.9


@dataclass(frozen=True)
class VisibleMemory:
    total_gib: float  # what torch.cuda.mem_get_info() reports as total, per GPU
    kind: str  # how the figure is known, for the run's output
    source: str


# CUDA-visible memory per GPU (GiB = 2^30 bytes), which vLLM multiplies by gpu_memory_utilization.
# Less than the datasheet size: the driver and ECC keep part of it.
GPU_VISIBLE_MEMORY: dict[str, VisibleMemory] = {
    "H100-SXM": VisibleMemory(79.19, "vLLM logs", "vLLM 0.19 start-up logs on H100 80GB HBM3 (llm-d-planner "
                              "sweep, ../shared/data/calibration/vllm-kv-capacity): 'total memory 79.19 GiB'"),
    "A100-80GB": VisibleMemory(79.15, "published torch figure", "PyTorch out-of-memory messages on A100-SXM4-80GB "
                               "('GPU 0 has a total capacity of 79.15 GiB'), quoted from public reports"),
    "RTX4090": VisibleMemory(23.65, "published torch figure", "PyTorch out-of-memory messages on RTX 4090 "
                             "('GPU 0 has a total capacity of 23.65 GiB'), quoted from public reports"),
    "H200": VisibleMemory(139.80, "measured by pdsim's profiler", "torch's total_memory on an H200 (141 GB HBM3e), "
                          "150,109,880,320 bytes, recorded by `pdsim profile` in profiles/H200/meta-llama/Llama-3.1-8B/"
                          "bfloat16/tp1/meta.json (device.memory_bytes)"),
    "A100-40GB": VisibleMemory(39.39, "published torch figure", "PyTorch out-of-memory messages on A100-SXM4-40GB "
                               "('39.39 GiB total capacity'), quoted from public reports"),
}
# Hardware without a figure above: assume the H100's ratio of CUDA-visible to datasheet memory.
ASSUMED_VISIBLE_FRACTION = 79.19 / 80.0
# Data-center boards with GDDR6 ship with ECC on, and GDDR6 has no check bits of its own: the memory
# controller keeps 1/16 of the memory for them (nvidia-smi shows 46,068 of 49,152 MiB on an L40S, L40 or
# A40 and 23,028-23,034 of 24,576 MiB on an A10 or L4; public figures, recalled, not measured here). HBM
# carries its check bits beside the data, and workstation and GeForce boards ship with ECC off.
ECC_ON_GDDR = frozenset({"L4", "L40", "L40S", "A10", "A40"})
INLINE_ECC_FRACTION = 15 / 16

# vLLM's "non-torch forward increase" per GPU: what the profiling run adds outside torch's allocator after
# the start-up snapshot, which vLLM (0.11 and 0.19, v1/worker/gpu_worker.py) takes once NCCL is initialised
# (cuBLAS workspace; at TP >= 2 also the buffers NCCL connects at its first collectives, NCCL_RUNTIME_CONNECT).
# vLLM 0.19 on H100 SXM: 0.24-0.27 GiB at TP 1 (9 start-up logs), 2.06-2.21 GiB at TP 2 and 4 (6 logs).
# Assumed for other GPUs and versions (vLLM 0.11 logged 0.13-0.54 GiB); non_torch_memory_gb overrides.
NON_TORCH_GIB_TP1 = 0.25
NON_TORCH_GIB_TP_MULTI = 2.1

# vLLM's profile_run ends with _dummy_sampler_run: the sampler over max_num_seqs rows of
# full-vocabulary logits. Its torch peak per (sequence x vocab) element, fitted on the 12
# sampler-bound vLLM 0.19 start-up logs (docs/memory.md), with the Triton kernel's buffer below taken out first.
# What 0.19's Sampler holds per logit: the bf16 logits (2), their fp32 copy (4), the probabilities (4) and
# exponential noise (4): 14 counted.
SAMPLER_BYTES_PER_LOGIT = 14.42
# Beside those, vLLM 0.17+'s Triton top-k/top-p kernel keeps a scratch buffer of one fp32 vocabulary row per
# program it launches, min(rows, SMs) of them, rounded up to a power of two and capped at the SM count, allocated
# at its first call and cached (v1/sample/ops/topk_topp_triton.py, _TRITON_BUFFER_CACHE; read in 0.17 and 0.19):
# 132 rows on an H100 at 1024 sequences (0.52 bytes per logit), 128 rows at 128 sequences (4 per logit).
TRITON_BUFFER_BYTES_PER_ELEMENT = 4
# A GPU without a spec: the H100's, the GPU of the logs the coefficient above was fitted on.
ASSUMED_SM_COUNT = 132
# That is vLLM 0.17+'s sampler from 8 rows on, where apply_top_k_top_p runs a Triton kernel
# (v1/sample/ops/topk_topp_sampler.py). Below 8 rows, and at every size in vLLM 0.16 and older (whose FlashInfer
# sampler is opt-in from 0.12, VLLM_USE_FLASHINFER_SAMPLER=1), it sorts the whole vocabulary in PyTorch,
# logits.sort(dim=-1). Held during that sort, per logit: the bf16 logits (2 B) and their fp32 copy (4), the sorted
# values (4) and their int64 indices (8), and what PyTorch's CUDA segmented sort allocates for itself, an int64
# index per sorted element (8) and cub's alternate key and value buffers (4 + 8). Counted, not fitted; vLLM 0.11's
# logged peaks give 38.4 (docs/memory.md).
SORT_SAMPLER_BYTES_PER_LOGIT = 2 + 4 + 4 + 8 + 8 + 4 + 8
TRITON_TOP_K_TOP_P_MIN_ROWS = 8
# FlashInfer's sampler (VLLM_USE_FLASHINFER_SAMPLER=1 from 0.12; 0.11's default where FlashInfer is installed) sorts
# nothing: beside the bf16 logits (2) and their fp32 copy (4), top_k_top_p_sampling_from_logits holds the top-k
# masked logits (4) and their probabilities (4) (flashinfer 0.3.1 sampling.py, "top_k_first"). Counted.
FLASHINFER_SAMPLER_BYTES_PER_LOGIT = 2 + 4 + 4 + 4


def visible_memory_gib(hardware: str, mem_size_gb: float) -> tuple[float, str]:
    """The CUDA-visible total per GPU and how it is known. mem_size below the hardware's visible
    total (a smaller slice of the GPU) is taken as given."""
    known = GPU_VISIBLE_MEMORY.get(hardware)
    spec = get_hardware(hardware)
    if known is not None:
        total, kind = known.total_gib, known.kind
    elif spec is not None and spec.name in ECC_ON_GDDR:
        total = spec.mem_size_gb * INLINE_ECC_FRACTION * ASSUMED_VISIBLE_FRACTION
        kind = (f"assumed: 15/16 of {spec.mem_size_gb:g} GB left by its ECC, on by default, x "
                f"{ASSUMED_VISIBLE_FRACTION:.1%} as on H100")
    elif spec is not None:
        total = spec.mem_size_gb * ASSUMED_VISIBLE_FRACTION
        kind = f"assumed {ASSUMED_VISIBLE_FRACTION:.1%} of {spec.mem_size_gb:g} GB as on H100"
    else:  # a GPU pdsim has no spec for: its config's nominal size, less what the driver keeps
        total = mem_size_gb * ASSUMED_VISIBLE_FRACTION
        return total, (f"assumed {ASSUMED_VISIBLE_FRACTION:.1%} of mem_size {mem_size_gb:g} GB as on H100; "
                       f"no spec for {hardware}")
    if mem_size_gb < total:
        return mem_size_gb, f"mem_size, below the {total:.2f} GiB CUDA shows"
    return total, kind


def non_torch_gib(tp: int, hardware: str) -> tuple[float, str | None]:
    """vLLM's non-torch increase per GPU, and why it is assumed at TP >= 2 (None: measured there, or TP 1,
    whose figure holds no communication buffers).

    The H100 SXM figure at TP >= 2 is 1.85 GiB over TP 1's and the same at TP 2 and 4, so no workspace
    sized by the TP degree; read here as NCCL's buffers over NVLink and NVSwitch (many channels, LL128,
    NVLink SHARP), which no log splits out. A GPU without NVLink connects NCCL over PCIe (a few
    channels, neither of those; through host memory where peer-to-peer access is off), buffers of tens
    of MiB: it gets TP 1's figure, and the run says so."""
    spec = get_hardware(hardware)
    if tp == 1:
        return NON_TORCH_GIB_TP1, None
    if spec is not None and spec.name == "H100-SXM":
        return NON_TORCH_GIB_TP_MULTI, None
    if spec is None:  # its TP all-reduce is priced over PCIe too (pdsim/perf/collectives.py)
        return NON_TORCH_GIB_TP1, (f"TP 1's, assumed for {hardware} at TP >= 2: no spec for it, so no NVLink is "
                                   "assumed, and H100's 2.1 GiB there is read as NCCL's NVLink buffers; "
                                   "non_torch_memory_gb sets it")
    if spec.nvlink_bridge_gbps:
        return NON_TORCH_GIB_TP1, (f"TP 1's, assumed for {spec.name} at TP >= 2: H100 SXM's 2.1 GiB there is read as "
                                   "NCCL's buffers over NVLink and NVSwitch, and NVLink-bridged pairs have no "
                                   "NVSwitch; non_torch_memory_gb sets it")
    if spec.intra_node_link == "pcie":
        return NON_TORCH_GIB_TP1, (f"TP 1's, assumed for {spec.name} at TP >= 2: H100's 2.1 GiB there is read as "
                                   "NCCL's NVLink buffers, which a PCIe GPU does not allocate; non_torch_memory_gb "
                                   "sets it")
    return NON_TORCH_GIB_TP_MULTI, f"H100's at TP >= 2, assumed for {spec.name}; non_torch_memory_gb sets it"


def non_torch_bytes(tp: int, hardware: str) -> int:
    return int(non_torch_gib(tp, hardware)[0] * GIB)


def forward_peak_bytes(model: ModelSpec, dtype: str, tp: int, tokens: int) -> int:
    """Torch peak of one decoder layer's forward over `tokens` tokens on one TP shard: the residual,
    the normed input and the layer's output ([T, hidden] each) beside the larger of the attention
    block (QKV output, attention output) and the MLP (gate_up output and its activation)."""
    attention = model.qkv_out(tp) + model.q_size(tp)
    mlp = 3 * model.intermediate_per_shard(tp)
    return tokens * dtype_bytes(dtype) * (3 * model.hidden_size + max(attention, mlp))


def sampler_kind(top_k_top_p: str, rows: int) -> str:
    """What applies top-k/top-p to `rows` sampled rows: "flashinfer", "sort" (PyTorch's, at every size before
    0.17 and below 8 rows after) or "triton"."""
    if top_k_top_p == "flashinfer":
        return "flashinfer"
    return "sort" if top_k_top_p == "pytorch" or rows < TRITON_TOP_K_TOP_P_MIN_ROWS else "triton"


_SAMPLER_BYTES_PER_LOGIT = {"flashinfer": FLASHINFER_SAMPLER_BYTES_PER_LOGIT, "sort": SORT_SAMPLER_BYTES_PER_LOGIT,
                            "triton": SAMPLER_BYTES_PER_LOGIT}


def triton_buffer_rows(rows: int, sm_count: int | None) -> int:
    """The vocabulary rows of the Triton top-k/top-p kernel's cached buffer when it samples `rows` rows."""
    sms = ASSUMED_SM_COUNT if sm_count is None else sm_count
    programs = min(sms, rows)
    return min(1 << (programs - 1).bit_length(), sms)


def sampler_peak_bytes(model: ModelSpec, dtype: str, tokens: int, seqs: int, bytes_per_logit: float | None = None,
                       top_k_top_p: str = "triton", sm_count: int | None = None) -> int:
    """Torch peak of vLLM's dummy sampler run: min(T, max_num_seqs) rows of the whole vocabulary
    (every rank gathers it), while the forward's [T, hidden] output is still held, with the Triton kernel's buffer
    on a GPU of `sm_count` SMs (None: ASSUMED_SM_COUNT). bytes_per_logit, where given, replaces what top_k_top_p's
    implementation holds per logit."""
    rows = min(tokens, seqs)
    kind = sampler_kind(top_k_top_p, rows)
    if bytes_per_logit is None:
        bytes_per_logit = _SAMPLER_BYTES_PER_LOGIT[kind]
    buffer = (triton_buffer_rows(rows, sm_count) * model.vocab_size * TRITON_BUFFER_BYTES_PER_ELEMENT
              if kind == "triton" else 0)
    return int(bytes_per_logit * rows * model.vocab_size) + buffer + tokens * model.hidden_size * dtype_bytes(dtype)


def moe_workspace_bytes(model: ModelSpec, dtype: str, expert_tp: int, tokens: int) -> int:
    """vLLM's fused-MoE workspaces (FusedMoEModularKernel with TritonExperts, vLLM 0.19): workspace13
    [M, top_k, max(I, H)] (intermediate caches 2 and 3) and workspace2 [M, top_k, max(2 I, H)]
    (intermediate cache 1, the gate_up output), M = tokens (moe_workspace_rows: the whole batch from 0.18, one
    chunk before), I the expert intermediate size on one GPU. From 0.14 vLLM's workspace manager allocates them at
    the first MoE forward and keeps them, so they are still held when the sampler runs (activation_peak_bytes).
    0 for a dense model."""
    if model.moe is None:
        return 0
    m, h = tokens, model.hidden_size
    inter = -(-model.moe.expert_intermediate // expert_tp)
    return m * model.moe.top_k * (max(inter, h) + max(2 * inter, h)) * dtype_bytes(dtype)


# VLLM_FUSED_MOE_CHUNK_SIZE's default (0.12 on; 32768 in 0.11): the rows a fused-MoE call takes at once where it
# chunks, which vLLM's fused_experts does up to 0.13 and its modular kernel up to 0.17.
MOE_CHUNK_ROWS = 16384


def moe_workspace_rows(tokens: int, dp_size: int, expert_tp: int, moe_workspace: str) -> int:
    """The rows vLLM's profiling run sizes the fused-MoE workspaces for (InstanceConfig.moe_workspace), each of a DP
    group's `dp_size` ranks giving `tokens`: the whole gathered batch from 0.18 ("batch"), one chunk of it before
    ("chunk", "layer"); under DP with expert parallelism (whole experts on each GPU, expert_tp 1) 0.14 to 0.17
    size them for a whole chunk whatever the batch, the worst case random routing may not show while profiling
    (fused_moe/modular_kernel.py `is_profile_run and ... self.is_dp_ep`)."""
    if moe_workspace == "chunk" and dp_size > 1 and expert_tp == 1:
        return MOE_CHUNK_ROWS
    rows = dp_size * tokens
    return rows if moe_workspace == "batch" else min(rows, MOE_CHUNK_ROWS)


def moe_forward_peak_bytes(model: ModelSpec, dtype: str, expert_tp: int, tokens: int, dp_size: int = 1,
                           moe_workspace: str = "batch") -> int:
    """Torch peak inside one MoE block: the residual, the normed input and the block's output [T, hidden]
    beside the router logits [M, E] and the fused-MoE workspaces of M rows. M = T, or, in a DP group of
    `dp_size` ranks, dp_size x T: vLLM's all-gather dispatch gathers every rank's hidden states (another
    [M, hidden]) and router logits, and the kernels size their workspaces by the gathered rows
    (device_communicators/all2all.py, fused_moe/modular_kernel.py; one chunk of them before 0.18,
    moe_workspace_rows). In the profiling run every rank gives max_num_batched_tokens."""
    if model.moe is None:
        return 0
    gathered = dp_size * tokens
    held = tokens * 3 * model.hidden_size + gathered * model.moe.num_experts
    if dp_size > 1:
        held += gathered * model.hidden_size
    rows = moe_workspace_rows(tokens, dp_size, expert_tp, moe_workspace)
    return held * dtype_bytes(dtype) + moe_workspace_bytes(model, dtype, expert_tp, rows)


def activation_peak_bytes(model: ModelSpec, dtype: str, tp: int, tokens: int, seqs: int,
                          expert_tp: int | None = None, dp_size: int = 1, bytes_per_logit: float | None = None,
                          top_k_top_p: str = "triton", moe_workspace: str = "batch", with_sampler: bool = True,
                          forward_bytes: int | None = None, sm_count: int | None = None) -> int:
    """vLLM's profile_run peak: the forward, then the sampler (with a MoE model's fused-MoE workspaces, where
    vLLM keeps them); torch reports the larger. expert_tp: the ways each expert is split (default tp);
    dp_size: the ranks of a MoE model's DP group, whose tokens the MoE blocks gather; top_k_top_p: the
    sampler's implementation (config/base.py TOP_K_TOP_P_SAMPLERS); bytes_per_logit: the sampler's, in its place
    (benchmarks/kv_capacity_check.py refits it leaving one log out); moe_workspace: how vLLM holds the fused-MoE
    workspaces (config/base.py MOE_WORKSPACES): "layer" frees them after each layer, so the sampler runs without;
    with_sampler False: the forward's peak alone (a pipeline stage before the last, which runs no sampler);
    forward_bytes: a measured forward peak in place of the forward's estimate (pdsim's profiler measures one);
    sm_count: the GPU's SMs, which size the Triton sampler's buffer (sampler_peak_bytes)."""
    etp = tp if expert_tp is None else expert_tp
    forward = forward_bytes if forward_bytes is not None else max(
        forward_peak_bytes(model, dtype, tp, tokens), moe_forward_peak_bytes(model, dtype, etp, tokens, dp_size,
                                                                             moe_workspace))
    if not with_sampler:
        return forward
    kept = 0 if moe_workspace == "layer" else moe_workspace_bytes(
        model, dtype, etp, moe_workspace_rows(tokens, dp_size, etp, moe_workspace))
    return max(forward, sampler_peak_bytes(model, dtype, tokens, seqs, bytes_per_logit, top_k_top_p, sm_count) + kept)


@dataclass(frozen=True)
class KVBudget:
    # "vllm", "llmservingsim", "override" (vLLM's kv_cache_memory_bytes / num_gpu_blocks_override), "measured"
    rule: str
    num_gpu_blocks: int  # as vLLM counts them (the null block included)
    block_bytes: int
    block_size: int
    weight_bytes: int
    activation_bytes: int
    other_bytes: int  # non-torch + CUDA-graph
    note: str  # how the capacity was obtained, for the run's output
    predicted_gpu_blocks: int = 0  # what the config's rule predicts (differs when measured)
    # Sliding-window models (pdsim/gpt_oss.py): the blocks each running request's sliding layers hold
    # (its window), and vLLM's KV-cache groups, which its logged token count divides the blocks by.
    window_blocks: int = 0
    kv_groups: int = 1

    @property
    def usable_blocks(self) -> int:
        return self.num_gpu_blocks - 1

    @property
    def kv_tokens(self) -> int:
        """vLLM's "GPU KV cache size: N tokens" (num_blocks // groups x block_size)."""
        return self.num_gpu_blocks // self.kv_groups * self.block_size

    @property
    def kv_gib(self) -> float:
        return self.num_gpu_blocks * self.block_bytes / GIB


def _vllm_blocks(ic: InstanceConfig, weight_bytes: int, activation_bytes: int, other_bytes: int,
                 block_bytes: int, recorded_util: float | None) -> tuple[int, float, str]:
    total_gib, source = visible_memory_gib(ic.hardware, ic.npu_mem.mem_size)
    util = recorded_util or ic.gpu_memory_utilization or VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
    requested = total_gib * GIB * util
    said = (" (the measured engine's)" if recorded_util else
            " (vLLM's default)" if ic.gpu_memory_utilization is None else "")
    return math.floor((requested - weight_bytes - activation_bytes - other_bytes) / block_bytes), requested, \
        f"{total_gib:.2f} GiB ({source}) x gpu_memory_utilization {util:g}{said}"


def _sampler_said(ic: InstanceConfig) -> str:
    """How the KV line names the sampler's top-k/top-p, where it is not vLLM 0.17+'s Triton kernel."""
    kind = sampler_kind(ic.top_k_top_p, min(ic.max_num_batched_tokens, ic.max_num_seqs))
    return {"flashinfer": ", FlashInfer's", "sort": ", sorting them in PyTorch", "triton": ""}[kind]


def kv_budget(ic: InstanceConfig, model: ModelSpec, activation_bytes: int, where: str,
              measured_gpu_blocks: int | None = None, expert_shards: int | Fraction = 1,
              recorded_util: float | None = None) -> KVBudget:
    """The instance's KV cache. measured_gpu_blocks: the measured engine's own num_gpu_blocks,
    used instead of the prediction (validate --kv-capacity measured); expert_shards: the GPUs a
    MoE model's experts are split over; recorded_util: the measured engine's gpu_memory_utilization,
    at which vLLM's accounting is taken (beside LLMServingSim's rule too)."""
    block_bytes = ic.block_size * model.kv_bytes_per_token(ic.kv_dtype, ic.tp_size)
    weight_bytes = model.weight_bytes(ic.dtype, ic.tp_size, expert_shards, ic.quantization)
    # vLLM counts what loading the model took, its rotary cache too; LLMServingSim's rule, the weights alone.
    lss_weight_bytes = weight_bytes
    weight_bytes = vllm_weight_bytes = lss_weight_bytes + model.rope_cache_bytes(ic.dtype)
    default_gib, why = non_torch_gib(ic.tp_size, ic.hardware)
    given = ic.non_torch_memory_gb is not None
    non_torch = int((ic.non_torch_memory_gb if given else default_gib) * GIB)
    other = non_torch + int(ic.cudagraph_memory_gb * GIB)
    vllm_blocks, requested, how = _vllm_blocks(ic, weight_bytes, activation_bytes, other, block_bytes, recorded_util)
    engine_parts = activation_bytes, other  # what a vLLM engine holds besides weights and KV
    assumed = f" ({why})" if why and not given else ""
    held = f" ({ic.quantization} weights)" if ic.quantization else ""  # the precision that sized them
    vllm_note = (f"vLLM's accounting, {how} - weights {weight_bytes / GIB:.2f}{held} - activation peak "
                 f"{activation_bytes / GIB:.2f} - non-torch {other / GIB:.2f} GiB{assumed}")
    if ic.npu_mem.mem_util is not None:
        usable = ic.npu_mem.mem_size * GIB * ic.npu_mem.mem_util
        weight_bytes = lss_weight_bytes
        blocks = math.floor((usable - weight_bytes) / block_bytes)
        activation_bytes, other = 0, 0
        detail = (f"mem_size {ic.npu_mem.mem_size:g} GiB x mem_util {ic.npu_mem.mem_util:g} = "
                  f"{usable / GIB:.2f} GiB, weights {weight_bytes / GIB:.2f} GiB")
        note = (f"LLMServingSim's rule (npu_mem.mem_util given): {ic.npu_mem.mem_size:g} GiB x {ic.npu_mem.mem_util:g}"
                f" - weights {weight_bytes / GIB:.2f} GiB{held} = {blocks * block_bytes / GIB:.2f} GiB "
                f"({blocks:,} blocks); {vllm_note} would give {max(vllm_blocks, 0) * block_bytes / GIB:.2f} GiB "
                f"({max(vllm_blocks, 0):,} blocks)")
    else:
        blocks = vllm_blocks
        detail = (f"{requested / GIB:.2f} GiB requested ({how}), weights {weight_bytes / GIB:.2f}, activation "
                  f"peak {activation_bytes / GIB:.2f} (vLLM's profiling forward over max_num_batched_tokens "
                  f"{ic.max_num_batched_tokens:,}, its sampler over up to max_num_seqs {ic.max_num_seqs:,} rows"
                  f"{_sampler_said(ic)}), "
                  f"non-torch and CUDA-graph {other / GIB:.2f} GiB")
        if not ic.enable_chunked_prefill:  # the budget may be the model's whole length (config._unchunked_budget)
            detail += ("; without chunked prefill vLLM's default budget is max_model_len: a smaller "
                       "max_num_batched_tokens, as a smaller vLLM --max-model-len gives, leaves more")
        note = f"{vllm_note} = {vllm_blocks * block_bytes / GIB:.2f} GiB"
        if ic.gpu_memory_utilization is None:
            # An LLMServingSim config without mem_util: LLMServingSim sizes it at its own default.
            lss_blocks = max(math.floor((ic.npu_mem.mem_size * GIB * LLMSERVINGSIM_DEFAULT_MEM_UTIL - lss_weight_bytes)
                                        / block_bytes), 0)
            note += (f"; LLMServingSim would give {lss_blocks * block_bytes / GIB:.2f} GiB ({lss_blocks:,} blocks: "
                     f"mem_size {ic.npu_mem.mem_size:g} GiB x its default mem_util {LLMSERVINGSIM_DEFAULT_MEM_UTIL:g}"
                     f" - weights); set npu_mem.mem_util to size it that way")
    override = vllm_override_blocks(ic, block_bytes)
    if override is not None:  # vLLM's own override of both rules
        blocks, how = override
        detail, note = how, f"{how}, instead of {note}"
        activation_bytes, other = engine_parts
        weight_bytes = vllm_weight_bytes
        total_gib, source = visible_memory_gib(ic.hardware, ic.npu_mem.mem_size)
        needed = weight_bytes + activation_bytes + other + blocks * block_bytes
        if needed > total_gib * GIB:  # vLLM would run out of memory allocating it
            raise ConfigError(f"{where}: {how}: with weights {weight_bytes / GIB:.2f}, activation peak "
                              f"{activation_bytes / GIB:.2f} and non-torch {other / GIB:.2f} GiB that is "
                              f"{needed / GIB:.2f} GiB per GPU, more than the {total_gib:.2f} GiB there ({source})")
    parts = dict(block_bytes=block_bytes, block_size=ic.block_size, weight_bytes=weight_bytes,
                 activation_bytes=activation_bytes, other_bytes=other, predicted_gpu_blocks=blocks)
    window = sliding_window_blocks(ic, model)
    window_blocks = 0 if window is None else window[0]  # one request's window beside its blocks must fit too
    if window is not None:
        parts.update(window_blocks=window_blocks, kv_groups=window[1])
        note += window[2]
        detail += window[2]
    if measured_gpu_blocks is not None:
        _check_room(measured_gpu_blocks - window_blocks, where,
                    f"the measured engine's {measured_gpu_blocks} blocks", None)
        return KVBudget("measured", measured_gpu_blocks, note=f"the measured engine's {measured_gpu_blocks:,} "
                        f"blocks, instead of {note}", **parts)
    # The figure that set the size (vLLM applies num_gpu_blocks_override after kv_cache_memory_bytes).
    field = ("npu_mem.mem_size" if override is None else "num_gpu_blocks_override"
             if ic.num_gpu_blocks_override is not None else "kv_cache_memory_bytes")
    _check_room(blocks - window_blocks, where, detail, field)
    return KVBudget(kv_rule(ic), blocks, note=note, **parts)


def kv_rule(ic: InstanceConfig) -> str:
    """Which rule sizes an instance's KV cache: "override" (vLLM's kv_cache_memory_bytes or
    num_gpu_blocks_override), "llmservingsim" (npu_mem.mem_util given) or "vllm" (its accounting)."""
    if ic.num_gpu_blocks_override is not None or ic.kv_cache_memory_bytes is not None:
        return "override"
    return "llmservingsim" if ic.npu_mem.mem_util is not None else "vllm"


def vllm_override_blocks(ic: InstanceConfig, block_bytes: int) -> tuple[int, str] | None:
    """(blocks, how) where the config fixes the KV size as vLLM lets one (gpu_worker.py and
    kv_cache_utils.py, vLLM 0.19): kv_cache_memory_bytes replaces the memory left by the utilization,
    and num_gpu_blocks_override, applied after it, replaces the block count."""
    if ic.num_gpu_blocks_override is not None:
        return ic.num_gpu_blocks_override, f"num_gpu_blocks_override {ic.num_gpu_blocks_override:,} (vLLM's)"
    if ic.kv_cache_memory_bytes is not None:
        blocks = ic.kv_cache_memory_bytes // block_bytes
        return blocks, (f"kv_cache_memory_bytes {ic.kv_cache_memory_bytes:,} ({ic.kv_cache_memory_bytes / GIB:.2f} "
                        f"GiB per GPU, vLLM's --kv-cache-memory-bytes) = {blocks:,} blocks")
    return None


def sliding_window_blocks(ic: InstanceConfig, model: ModelSpec) -> tuple[int, int, str] | None:
    """(blocks each running request's sliding layers hold, KV-cache groups, note) for a model with sliding-window
    layers, else None. vLLM's hybrid allocator draws both groups' blocks from one pool and keeps a running
    request's sliding layers at the blocks reaching into its window (pdsim/gpt_oss.py): the scheduler takes
    that many beside a request's full-attention blocks while it runs. Without that allocator (an engine with a
    KV connector) there are none: every block holds every layer."""
    per_request = getattr(model, "sliding_blocks_per_request", None)
    if per_request is None:
        return None
    if not getattr(model, "hybrid_kv", True):
        return 0, 1, ("; the sliding-window layers keep every token's KV, as the full ones do: vLLM turns its "
                      "hybrid KV-cache allocator off in an engine with a KV connector")
    from pdsim.gpt_oss import KV_GROUPS

    window = per_request(ic.block_size)
    note = (f"; each running request's sliding-window layers hold {window} blocks of the pool (its "
            f"{model.sliding_window}-token window) beside its full-attention ones")
    return window, KV_GROUPS, note


def _check_room(blocks: int, where: str, detail: str, field: str | None) -> None:
    if blocks < 2:  # one block is vLLM's null block
        raise ConfigError(f"{where}{'.' + field if field else ''}: no room for the KV cache per GPU: {detail}")
