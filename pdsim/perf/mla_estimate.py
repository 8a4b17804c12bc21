"""Roofline of MLA attention (DeepSeek-V3, pdsim/mla.py) for the estimated profile.

The tables keep the op names every profile has, with MLA's work inside them:

* qkv_proj: fused q_a + kv_a GEMM (hidden -> q_lora + kv_lora + rope, replicated on every TP rank),
  their two RMSNorms, and q_b (q_lora -> heads x 192, sharded).
* o_proj: heads x v_head -> hidden.
* attention_prefill (vLLM's MLA prefill path): kv_b up-projects the latent of every token the
  chunk attends to (prefix + chunk; vLLM recomputes it for the cached context each chunk), then
  attention runs as MHA with heads x (192 qk, 128 v).
* attention_decode (the absorbed path, FlashMLA-like): q_nope x W_UK per head into the latent
  space, attention of every head over the cached latent (kv_lora + rope values per token, read
  once per request and shared by all heads: 576 qk and 512 v dims), then x W_UV back to v_head.
* the KV-cache write stores kv_lora + rope values per new token (no per-head K and V).
"""

from __future__ import annotations

from pdsim.hardware import HardwareSpec
from pdsim.mla import MLAModelSpec
from pdsim.perf.estimate import (
    FLASH_ATTN_COMPUTE_EFF,
    FLASH_ATTN_TILE_ROWS,
    KERNEL_LAUNCH_US,
    MEM_EFF,
    _Roofline,
)


class MLARoofline(_Roofline):
    def __init__(self, hw: HardwareSpec, model: MLAModelSpec, dtype: str, tp: int,
                 quantization: str | None = None, kv_dtype: str | None = None) -> None:
        super().__init__(hw, model, dtype, tp, quantization, kv_dtype)
        assert model.mla is not None
        self.mla = model.mla
        self.heads = model.heads_per_shard(tp)

    def _attn_us(self, flops: float, nbytes: float) -> float:
        compute = flops / (self.attn_flops_per_us * FLASH_ATTN_COMPUTE_EFF)
        return max(compute, nbytes / (self.bytes_per_us * MEM_EFF)) + KERNEL_LAUNCH_US

    def _latent_write_us(self, tokens: int) -> float:
        return self.mem_us(tokens * self.mla.latent_per_token * self.kt)

    def dense(self, op: str, t: int) -> float:
        mla, h, dt = self.mla, self.m.hidden_size, self.dt
        q_lora = mla.q_lora_rank or 0
        if op == "qkv_proj":
            us = self.gemm_us(t, q_lora + mla.latent_per_token, h)
            norms = self.mem_us(2 * t * (q_lora + mla.kv_lora_rank) * dt)
            q_b = self.gemm_us(t, self.heads * mla.qk_head_dim, q_lora or h)
            return us + norms + q_b
        if op == "rotary_emb":  # the rope part of every query head and of the shared key
            width = (self.heads + 1) * mla.qk_rope_head_dim
            return self.mem_us(2 * t * width * dt + t * mla.qk_rope_head_dim * 4)
        if op == "o_proj":
            return self.gemm_us(t, h, self.heads * mla.v_head_dim)
        return super().dense(op, t)

    def attention_prefill(self, chunk: int, prefix: int) -> float:
        mla, heads, dt = self.mla, self.heads, self.dt
        ctx = prefix + chunk
        kv_b = self.gemm_us(ctx, heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank)
        d_qk, d_v = mla.qk_head_dim, mla.v_head_dim
        pairs = chunk * (prefix + (chunk + 1) / 2)
        flops = 2.0 * pairs * heads * (d_qk + d_v)
        nbytes = (chunk * heads * (d_qk + d_v) + ctx * heads * (d_qk + d_v)) * dt + ctx * mla.latent_per_token * self.kt
        attn = self._attn_us(flops, nbytes)
        tiles = -(-chunk // FLASH_ATTN_TILE_ROWS)
        waves = -(-(tiles * heads) // self.sm_count)
        block_flops = 2.0 * FLASH_ATTN_TILE_ROWS * (prefix + (chunk + FLASH_ATTN_TILE_ROWS) / 2) * (d_qk + d_v)
        critical = waves * block_flops / (self.attn_flops_per_us / self.sm_count) + KERNEL_LAUNCH_US
        return kv_b + max(attn, critical) + self._latent_write_us(chunk)

    def attention_decode(self, batch: int, kv_tokens: int) -> float:
        mla, heads, dt = self.mla, self.heads, self.dt
        ctx = kv_tokens + 1
        # W_UK and W_UV absorbed: per-head batched GEMMs, priced as one GEMM of the same FLOPs and
        # weights; unquantised, as vLLM keeps the absorbed W_UK/W_UV in the model dtype.
        bf16 = self._unquantised
        absorb = (_Roofline.gemm_us(bf16, batch, heads * mla.kv_lora_rank, mla.qk_nope_head_dim)
                  + _Roofline.gemm_us(bf16, batch, heads * mla.v_head_dim, mla.kv_lora_rank))
        flops = 2.0 * batch * ctx * heads * (mla.latent_per_token + mla.kv_lora_rank)
        nbytes = batch * (ctx * mla.latent_per_token * self.kt + heads * (mla.latent_per_token + mla.kv_lora_rank) * dt)
        return absorb + self._attn_us(flops, nbytes) + self._latent_write_us(batch)
