"""The base of every config model and the limits and choices its fields are checked against.

`_Strict` refuses unknown keys (with a "did you mean"), so a typo such as "max_num_seq" is not
silently ignored; only IGNORED_KEYS, which LLMServingSim configs may carry but which we do not
model, and "_"-prefixed comment keys are dropped.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from pdsim.errors import json_shown
from pdsim.llmservingsim_keys import UNSUPPORTED_KEYS

# Keys accepted at any level and ignored: LLMServingSim's NPU placement/grouping and naming
# fields, plus "_"-prefixed keys, the usual way to put a comment in JSON.
IGNORED_KEYS: frozenset[str] = frozenset(
    {"name", "description", "npu_num", "npu_group", "power"}
)

PD_TYPES = ("prefill", "decode")
# vLLM's CUDAGraphMode names (config/compilation.py); null is its default, FULL_AND_PIECEWISE.
CUDAGRAPH_MODES = ("NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")
# How vLLM's sampler applies top-k/top-p, which sizes its dummy run's memory peak (perf/memory.py): "triton" is
# vLLM 0.17+'s (a Triton kernel from 8 sequences, PyTorch's sort below), "pytorch" the sort at every size (0.16 and
# older), "flashinfer" FlashInfer's sampler (VLLM_USE_FLASHINFER_SAMPLER=1).
TOP_K_TOP_P_SAMPLERS = ("triton", "pytorch", "flashinfer")
# How vLLM holds a MoE model's fused-MoE workspaces, which sizes its start-up peak (perf/memory.py): "batch", vLLM
# 0.18+ (kept, sized for the whole batch), "chunk", 0.14 to 0.17 (kept, one VLLM_FUSED_MOE_CHUNK_SIZE chunk),
# "layer", 0.13 and older (fused_experts allocates them per layer call and frees them).
MOE_WORKSPACES = ("batch", "chunk", "layer")
KV_TRANSFER_MODES = ("after_prefill", "layerwise")
KV_TRANSFER_DTYPES = ("same", "fp8", "int8")
TTFT_MODES = ("prefill", "client")
INTRA_NODE_LATENCY_NS = 2000.0  # NVLink-class hop incl. launch, when intra_node_bw is given
ROUTER_POLICIES = ("round_robin", "random", "least_loaded", "power_of_two", "prefix_aware", "kv_aware")

GB = 1024**3  # memory sizes (mem_size) are in GB as GPU vendors count memory: 2^30 bytes

# Bounds that keep every simulated time finite and far inside the clock's resolution (a float64
# second count resolves 1 us up to ~4e9 s): they reject Infinity, 1e400 or 1e-300, not hardware.
MIN_BW_GBPS = 1e-3  # 1 MB/s: a 1 GB KV transfer then still ends within ~17 minutes
MAX_BW_GBPS = 1e6  # 1 PB/s, 2000x an NVLink port
MAX_LATENCY_NS = 1e9  # 1 s per hop
MAX_OVERHEAD_US = 1e6  # 1 s per step or transfer
MAX_MEM_GB = 1e6  # per GPU
MAX_NPUS = 65536
MAX_TOKENS = 10**9
MAX_BLOCK_SIZE = 1024  # tokens per KV block (vLLM's sizes are 1-256)

# CLI knobs that `load_cluster_config(overrides=...)` sets on every instance.
OVERRIDABLE_KEYS = (
    "max_num_seqs", "max_num_batched_tokens", "block_size", "enable_chunked_prefill", "dtype", "async_scheduling",
    "scheduler_reserve_full_isl", "enable_prefix_caching", "quantization", "kv_cache_dtype",
    "gpu_memory_utilization", "ep_size", "kv_cache_memory_bytes", "num_gpu_blocks_override",
    "disable_custom_all_reduce", "long_prefill_token_threshold", "allreduce_rms_fusion", "enforce_eager",
    "cudagraph_capture_sizes", "max_cudagraph_capture_size", "cudagraph_mode", "top_k_top_p", "moe_workspace",
)
# An override that sets gpu_memory_utilization in place of npu_mem.mem_util (validate: a config whose mem_util is
# the measured engine's own argument, not a figure calibrated to LLMServingSim's rule).
UTILIZATION_OVER_MEM_UTIL = "gpu_memory_utilization_over_mem_util"
# An override of npu_mem.mem_util (LLMServingSim's --npu-memory-utilization), a key nested in npu_mem.
MEM_UTIL_OVERRIDE = "mem_util"


def _fmt(value: Any) -> str:
    return json_shown(value, 80)


def _choices(options: tuple[str, ...], nullable: bool = False) -> str:
    quoted = [f'"{o}"' for o in options] + (["null"] if nullable else [])
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def _one_of(value: str | None, options: tuple[str, ...], nullable: bool = False) -> str | None:
    if (value is None and nullable) or value in options:
        return value
    raise PydanticCustomError(
        "choice",
        "expected {expected}, got {got}",
        {"expected": _choices(options, nullable), "got": _fmt(value)},
    )


def _bandwidth_floor(gbps: float) -> float:
    if gbps < MIN_BW_GBPS:
        raise PydanticCustomError(
            "bandwidth", "expected a bandwidth >= {low} GB/s, got {got}", {"low": MIN_BW_GBPS, "got": _fmt(gbps)}
        )
    return gbps


class _Strict(BaseModel):
    # strict: JSON "16" or true must not pass for a number; frozen: configs are shared.
    model_config = ConfigDict(strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        allowed = set(cls.model_fields)
        kept = {}
        for key, value in data.items():
            if key in allowed:
                kept[key] = value
            elif key in IGNORED_KEYS or (isinstance(key, str) and key.startswith("_")):
                continue
            elif key in UNSUPPORTED_KEYS:
                raise PydanticCustomError(
                    "unsupported", 'key "{key}" is not supported: {why}', {"key": key, "why": UNSUPPORTED_KEYS[key]}
                )
            else:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise PydanticCustomError(
                    "unknown_key",
                    'unknown key "{key}"{hint}; allowed keys: {allowed}',
                    {"key": key, "hint": hint, "allowed": ", ".join(sorted(allowed))},
                )
        return kept
