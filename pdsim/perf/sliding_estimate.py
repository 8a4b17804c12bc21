"""Roofline of attention for models whose layers alternate sliding-window and full attention
(gpt-oss, pdsim/gpt_oss.py), for the estimated profile.

A profile's attention tables are per layer and the predictor multiplies them by the layer count,
so these tables hold the mean over the model's layers: a full layer as in pdsim/perf/estimate.py,
a sliding layer with every query attending to at most `sliding_window` tokens (itself and the
window - 1 before it, FlashAttention's window (w - 1, 0) as vLLM runs it): decode reads at most
that many cached tokens per request, and prefill computes min(position, w) pairs per token. The
attention sinks (one extra logit per head in the softmax) are not priced.
"""

from __future__ import annotations

from pdsim.gpt_oss import GptOssModelSpec
from pdsim.hardware import HardwareSpec
from pdsim.perf.estimate import FLASH_ATTN_COMPUTE_EFF, KERNEL_LAUNCH_US, MEM_EFF, _Roofline


class SlidingRoofline(_Roofline):
    def __init__(self, hw: HardwareSpec, model: GptOssModelSpec, dtype: str, tp: int,
                 quantization: str | None = None, kv_dtype: str | None = None) -> None:
        super().__init__(hw, model, dtype, tp, quantization, kv_dtype)
        self.window = model.sliding_window
        self.sliding_share = model.sliding_layers / model.num_layers

    def _mean(self, full_us: float, sliding_us: float) -> float:
        return (1.0 - self.sliding_share) * full_us + self.sliding_share * sliding_us

    def attention_decode(self, batch: int, kv_tokens: int) -> float:
        sliding = super().attention_decode(batch, min(kv_tokens, self.window - 1))
        return self._mean(super().attention_decode(batch, kv_tokens), sliding)

    def attention_prefill(self, chunk: int, prefix: int) -> float:
        return self._mean(super().attention_prefill(chunk, prefix), self._sliding_prefill(chunk, prefix))

    def _sliding_prefill(self, chunk: int, prefix: int) -> float:
        m, w = self.m, self.window
        # Token i (1-based) of the chunk sees min(prefix + i, w) tokens.
        below = max(0, min(chunk, w - prefix))
        pairs = below * prefix + below * (below + 1) / 2 + (chunk - below) * w
        flops = 4.0 * pairs * m.heads_per_shard(self.tp) * m.head_dim
        kv_read = 2 * (min(prefix, w - 1) + chunk) * m.kv_size(self.tp) * self.kt
        nbytes = 2 * chunk * m.q_size(self.tp) * self.dt + kv_read
        compute = flops / (self.attn_flops_per_us * FLASH_ATTN_COMPUTE_EFF)
        memory = nbytes / (self.bytes_per_us * MEM_EFF)
        return max(compute, memory) + KERNEL_LAUNCH_US + self._kv_cache_write_us(chunk)
