"""Attention kernels the profiler times: prefill of one request's chunk, and a decode batch.

Both write the step's new K/V into the cache first and then attend over it, as vLLM's
attention backends do (the cache write is part of the attention op's time).

Backends:
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention` on a dense per-request cache
  [batch, kv_heads, kv_len, head_dim]; GQA through `enable_gqa` (no K/V head expansion copy).
  A chunk with a cached prefix needs a bottom-right-aligned causal mask (`causal_lower_right`),
  a fresh prompt uses `is_causal`.
- `flash`: flash-attn's `flash_attn_varlen_func` (prefill) and `flash_attn_with_kvcache`
  (decode), used on CUDA with fp16/bf16 when the `flash_attn` package is importable, as vLLM.
- `torch-flash`: the FlashAttention-2 kernel that PyTorch's CUDA build carries, called through
  its variable-length entry (`aten._flash_attention_forward` with cumulative sequence lengths,
  causal aligned bottom-right, K/V heads shared natively). Used on CUDA when flash-attn is not
  installed: SDPA has no fused kernel for a chunk behind a cached prefix with grouped K/V heads
  and would fall back to a materialised mask and the unfused math path, which no engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pdsim.errors import PdsimError
from pdsim.profiler.ops import ShardShapes


@dataclass
class KVCache:
    """One layer's K and V for `batch` requests of up to `capacity` tokens each."""

    k: torch.Tensor
    v: torch.Tensor
    cached_tokens: int  # tokens already in the cache before this step (same for every request)
    lengths: torch.Tensor | None = None  # int32 [batch] for flash-attn, = cached_tokens
    # flash and torch-flash: int32 cumulative query / key lengths, built with the cache so that no host
    # to device copy happens inside a timed call or a captured CUDA graph
    cu_q: torch.Tensor | None = None
    cu_k: torch.Tensor | None = None
    # uneven decode batches (one request at a long KV, the rest at a short one): where each request's new
    # K/V goes, and for sdpa the mask of each request's own length
    write_at: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def flash_available(device: str, dtype: torch.dtype) -> bool:
    if device != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


class SdpaAttention:
    name = "sdpa"

    def __init__(self, s: ShardShapes, dtype: torch.dtype, device: str) -> None:
        self.s, self.dtype, self.device = s, dtype, device
        self.gqa = s.heads != s.kv_heads

    def new_cache(self, batch: int, cached_tokens: int, new_tokens: int) -> KVCache:
        shape = (batch, self.s.kv_heads, cached_tokens + new_tokens, self.s.head_dim)
        k = torch.randn(shape, dtype=self.dtype, device=self.device)
        return KVCache(k, torch.randn_like(k), cached_tokens)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """q [c, H, D], k/v [c, KVH, D] for one request with `cache.cached_tokens` prefix."""
        c, p = q.shape[0], cache.cached_tokens
        cache.k[0, :, p : p + c].copy_(k.transpose(0, 1))
        cache.v[0, :, p : p + c].copy_(v.transpose(0, 1))
        qh = q.transpose(0, 1).unsqueeze(0)
        kc, vc = cache.k[:, :, : p + c], cache.v[:, :, : p + c]
        if p == 0:
            out = F.scaled_dot_product_attention(qh, kc, vc, is_causal=True, enable_gqa=self.gqa)
        else:
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(c, p + c)
            out = F.scaled_dot_product_attention(qh, kc, vc, attn_mask=mask, enable_gqa=self.gqa)
        return out[0].transpose(0, 1).reshape(c, self.s.q_size)

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """q [B, H, D], k/v [B, KVH, D]: one new token per request, each with L cached."""
        b, L = q.shape[0], cache.cached_tokens
        cache.k[:, :, L].copy_(k)
        cache.v[:, :, L].copy_(v)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2), cache.k[:, :, : L + 1], cache.v[:, :, : L + 1], enable_gqa=self.gqa
        )
        return out.reshape(b, self.s.q_size)

    def uneven_cache(self, batch: int, kv_short: int, kv_long: int) -> KVCache:
        cache = self.new_cache(batch, kv_long, 1)
        lengths = torch.full((batch,), kv_short, dtype=torch.long, device=self.device)
        lengths[0] = kv_long
        cache.write_at = lengths
        cache.mask = (torch.arange(kv_long + 1, device=self.device) <= lengths[:, None])[:, None, None, :]
        return cache

    def decode_uneven(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """As decode, each request at its own length (a padded cache, masked per request)."""
        b = q.shape[0]
        rows = torch.arange(b, device=self.device)
        cache.k[rows, :, cache.write_at] = k
        cache.v[rows, :, cache.write_at] = v
        out = F.scaled_dot_product_attention(q.unsqueeze(2), cache.k, cache.v, attn_mask=cache.mask,
                                             enable_gqa=self.gqa)
        return out.reshape(b, self.s.q_size)


class FlashAttention:
    name = "flash_attn"

    def __init__(self, s: ShardShapes, dtype: torch.dtype, device: str) -> None:
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

        self.s, self.dtype, self.device = s, dtype, device
        self._varlen = flash_attn_varlen_func
        self._with_kvcache = flash_attn_with_kvcache

    def new_cache(self, batch: int, cached_tokens: int, new_tokens: int) -> KVCache:
        # flash-attn's layout: [batch, kv_len, kv_heads, head_dim]
        shape = (batch, cached_tokens + new_tokens, self.s.kv_heads, self.s.head_dim)
        k = torch.randn(shape, dtype=self.dtype, device=self.device)
        lengths = torch.full((batch,), cached_tokens, dtype=torch.int32, device=self.device)
        # made here, not per call: a host-to-device copy inside the timed op would be timed and break graph capture
        steps = torch.arange(batch + 1, dtype=torch.int32, device=self.device)
        kv_len = cached_tokens + new_tokens
        return KVCache(k, torch.randn_like(k), cached_tokens, lengths, cu_q=steps * new_tokens, cu_k=steps * kv_len)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        c, p = q.shape[0], cache.cached_tokens
        cache.k[0, p : p + c].copy_(k)
        cache.v[0, p : p + c].copy_(v)
        # causal=True is bottom-right aligned in flash-attn >= 2.1: the chunk sees its prefix
        out = self._varlen(q, cache.k[0, : p + c], cache.v[0, : p + c], cache.cu_q, cache.cu_k, c, p + c, causal=True)
        return out.reshape(c, self.s.q_size)

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        b = q.shape[0]
        out = self._with_kvcache(
            q.unsqueeze(1),
            cache.k,
            cache.v,
            k=k.unsqueeze(1),
            v=v.unsqueeze(1),
            cache_seqlens=cache.lengths,
            causal=True,
        )
        return out.reshape(b, self.s.q_size)

    def uneven_cache(self, batch: int, kv_short: int, kv_long: int) -> KVCache:
        cache = self.new_cache(batch, kv_long, 1)
        cache.lengths.fill_(kv_short)
        cache.lengths[0] = kv_long
        return cache

    def decode_uneven(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.decode(q, k, v, cache)  # flash-attn reads each request's own cache_seqlens


class TorchFlashAttention:
    name = "torch_flash_attention_2"

    def __init__(self, s: ShardShapes, dtype: torch.dtype, device: str) -> None:
        self.s, self.dtype, self.device = s, dtype, device

    def new_cache(self, batch: int, cached_tokens: int, new_tokens: int) -> KVCache:
        # [batch, kv_len, kv_heads, head_dim], contiguous: viewed as the packed [batch * kv_len,
        # kv_heads, head_dim] K/V of a varlen call where every request has kv_len tokens
        kv_len = cached_tokens + new_tokens
        k = torch.randn((batch, kv_len, self.s.kv_heads, self.s.head_dim), dtype=self.dtype, device=self.device)
        steps = torch.arange(batch + 1, dtype=torch.int32, device=self.device)
        return KVCache(k, torch.randn_like(k), cached_tokens, cu_q=steps * new_tokens, cu_k=steps * kv_len)

    def _call(self, q: torch.Tensor, cache: KVCache, max_q: int) -> torch.Tensor:
        kv_len = cache.k.shape[1]
        packed = (-1, self.s.kv_heads, self.s.head_dim)
        out = torch.ops.aten._flash_attention_forward(
            q, cache.k.view(packed), cache.v.view(packed), cache.cu_q, cache.cu_k, max_q, kv_len, 0.0, True, False
        )[0]
        return out.reshape(q.shape[0], self.s.q_size)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        c, p = q.shape[0], cache.cached_tokens
        cache.k[0, p : p + c].copy_(k)
        cache.v[0, p : p + c].copy_(v)
        return self._call(q.contiguous(), cache, c)

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        L = cache.cached_tokens
        cache.k[:, L].copy_(k)
        cache.v[:, L].copy_(v)
        return self._call(q.contiguous(), cache, 1)

    def uneven_cache(self, batch: int, kv_short: int, kv_long: int) -> KVCache:
        # packed [sum of lengths + 1 each, kv_heads, head_dim]: the first request kv_long, the others kv_short
        lengths = torch.full((batch,), kv_short + 1, dtype=torch.int32, device=self.device)
        lengths[0] = kv_long + 1
        cu_k = torch.zeros(batch + 1, dtype=torch.int32, device=self.device)
        cu_k[1:] = torch.cumsum(lengths, 0)
        k = torch.randn((int(cu_k[-1]), self.s.kv_heads, self.s.head_dim), dtype=self.dtype, device=self.device)
        cu_q = torch.arange(batch + 1, dtype=torch.int32, device=self.device)
        return KVCache(k, torch.randn_like(k), kv_long, cu_q=cu_q, cu_k=cu_k, write_at=(cu_k[1:] - 1).long())

    def decode_uneven(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        cache.k.index_copy_(0, cache.write_at, k)
        cache.v.index_copy_(0, cache.write_at, v)
        out = torch.ops.aten._flash_attention_forward(
            q.contiguous(), cache.k, cache.v, cache.cu_q, cache.cu_k, 1, cache.cached_tokens + 1, 0.0, True, False
        )[0]
        return out.reshape(q.shape[0], self.s.q_size)


def torch_flash_available(s: ShardShapes, device: str, dtype: torch.dtype) -> bool:
    """Whether this torch build runs its bundled FlashAttention-2 here (a tiny probe call)."""
    if device != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        attn = TorchFlashAttention(s, dtype, device)
        cache = attn.new_cache(1, 16, 4)
        q = torch.randn((4, s.heads, s.head_dim), dtype=dtype, device=device)
        kv = torch.randn((4, s.kv_heads, s.head_dim), dtype=dtype, device=device)
        attn.prefill(q, kv, kv, cache)
        torch.cuda.synchronize()
    except (RuntimeError, AttributeError, TypeError):
        return False
    return True


Attention = SdpaAttention | FlashAttention | TorchFlashAttention


def make_attention(s: ShardShapes, dtype: torch.dtype, device: str, backend: str = "auto") -> Attention:
    """`auto` picks flash-attn where it runs, else torch's bundled FlashAttention-2, else SDPA."""
    if backend == "flash" and not flash_available(device, dtype):
        raise PdsimError(f"--attention flash: flash-attn does not run here ({device}, {dtype}: it needs a CUDA GPU, "
                         "16-bit activations and the flash-attn package); use auto or sdpa")
    if backend == "torch-flash" and not torch_flash_available(s, device, dtype):
        raise PdsimError(f"--attention torch-flash: torch's FlashAttention-2 kernel does not run here ({device}, "
                         f"{dtype}); use auto or sdpa")
    if backend == "flash" or (backend == "auto" and flash_available(device, dtype)):
        return FlashAttention(s, dtype, device)
    if backend == "torch-flash" or (backend == "auto" and torch_flash_available(s, device, dtype)):
        return TorchFlashAttention(s, dtype, device)
    return SdpaAttention(s, dtype, device)
