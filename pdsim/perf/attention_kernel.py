"""Which attention kernel a measured profile timed, beside the one vLLM 0.19 runs on that GPU.

The profiler times FlashAttention-2 (the flash-attn package, or the copy bundled with torch) or SDPA, while
vLLM 0.19 picks by compute capability: FlashAttention-3 on 9.x (fa_utils.get_flash_attn_version), FlashInfer
first on 10.x (platforms/cuda.py _get_backend_priorities), FlashAttention-2 elsewhere from 8.0 unless the KV
cache is fp8, which its FA2 cannot read (flash_attn.py supports_kv_cache_dtype), so FlashInfer. On Hopper FA2
takes about twice FA3's time (profiles/PROFILER.md), so a mismatch is said where the profile is made and used.
Torch-free: the simulator reads it.
"""

from __future__ import annotations

# The profiler's attention backends (pdsim/profiler/attention.py `name`) by the kernel they run.
TIMED_KERNELS = {"flash_attn": "FlashAttention-2", "torch_flash_attention_2": "FlashAttention-2", "sdpa": "SDPA"}


def vllm_attention_kernel(major: int, minor: int, kv_cache_dtype: str = "auto") -> str:
    """The attention kernel vLLM 0.19 runs for a dense (non-MLA) model on a GPU of compute capability
    major.minor with that KV cache dtype, when nothing overrides its choice."""
    fp8_kv = kv_cache_dtype.startswith("fp8")
    if major == 9:
        return "FlashAttention-3"  # FA3 reads fp8 KV too
    if major == 10:
        return "FlashInfer"
    if major >= 8:
        return "FlashInfer" if fp8_kv else "FlashAttention-2"
    return "FlashInfer" if (major, minor) >= (7, 5) else "Triton attention"


def kernel_fields(backend: str, compute_capability: str) -> dict:
    """meta.json device keys: the kernel timed, vLLM's on this compute capability ("9.0") and whether they match
    (the profiler's KV cache is in the activation dtype: vLLM's kv_cache_dtype auto)."""
    major, minor = (int(v) for v in compute_capability.split("."))
    timed = TIMED_KERNELS.get(backend, backend)
    vllm = vllm_attention_kernel(major, minor)
    return {"attention_kernel_timed": timed, "vllm_attention_kernel": vllm,
            "attention_kernel_matches_vllm": timed == vllm}


def kernel_mismatch(device: dict) -> str | None:
    """What a profile's recorded device says about its attention kernel where it is not vLLM's, else None. A
    profile made before the match was recorded is judged by its backend and compute capability where it has them
    (the bundled H200 profile: torch's FlashAttention-2 on 9.0)."""
    if "attention_kernel_matches_vllm" not in device and device.get("attention_backend") in TIMED_KERNELS:
        try:
            device = {**device, **kernel_fields(device["attention_backend"], str(device["compute_capability"]))}
        except (KeyError, ValueError):
            return None
    if device.get("attention_kernel_matches_vllm") is not False:
        return None
    return (f"the profile's attention was timed with {device.get('attention_kernel_timed')}, but vLLM 0.19 runs "
            f"{device.get('vllm_attention_kernel')} on this GPU (compute capability "
            f"{device.get('compute_capability')}), so its attention times are not vLLM's (on Hopper "
            "FlashAttention-2 takes about twice FlashAttention-3's time)")
