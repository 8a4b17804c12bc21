"""Latency profiles estimated from hardware specs when none was measured.

Each op of one decoder layer (one TP shard) gets a roofline time

    time_us = max(flops / (peak * eff_compute), bytes / (bandwidth * eff_mem)) + KERNEL_LAUNCH_US

tabulated on the same grids a measured profile uses, so the predictor cannot tell them apart
except by `source: estimated`. The efficiencies are physical, not fitted to one GPU:

* GEMM_COMPUTE_EFF_MAX = 0.8: cuBLAS/CUTLASS BF16 GEMMs of LLM shapes reach 70-85 % of the dense
  tensor peak at large M (clock throttling under sustained tensor load and epilogues cost the rest);
  NVIDIA's aiconfigurator H100 GEMM data shows 0.75-0.85 for M >= 1024.
* small M loses compute efficiency to tile quantisation (a 64/128-row tile is partly empty) and
  too few tiles to fill the SMs: eff = MAX * M / (M + GEMM_HALF_EFF_M), i.e. half at M = 64.
  At small M the GEMM is bound by streaming its weights anyway.
* MEM_EFF = 0.8: streaming kernels reach ~80 % of datasheet DRAM bandwidth (refresh, page misses).
* FLASH_ATTN_COMPUTE_EFF = 0.5: flash attention's softmax and causal-mask tile imbalance keep
  it at about half of peak on prefill.
* a short prefill chunk over a long prefix cannot fill the GPU: flash attention runs one thread
  block per (128-row query tile, head), each walking the whole KV sequentially, so the step
  takes at least ceil(blocks / SMs) times one block's work at one SM's full peak (the critical
  path). Chunks of 16 and 128 tokens over a 16k prefix therefore cost the same.
* decode attention streams the cached K and V once per request: memory bound at MEM_EFF.
* KERNEL_LAUNCH_US = 4: the floor a tiny kernel costs on the GPU (launch, ramp-up, tail).
* the sampler is several small kernels (temperature, softmax, top-k/p, argmax) over fp32 logits:
  SAMPLER_KERNELS launches plus SAMPLER_PASSES passes over the logits.

TP all-reduce is not tabulated here: the predictor prices it with pdsim/perf/collectives.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pdsim import __version__ as PDSIM_VERSION
from pdsim.errors import ProfileError
from pdsim.hardware import HardwareSpec, get_hardware, known_hardware
from pdsim.models import SCALE_BYTES, ModelSpec, dtype_bytes, scale_count
from pdsim.perf.interp import Table1D, Table2D
from pdsim.perf.profile import (
    PROFILES_ROOT,
    Profile,
    ProfileMeta,
    find_profile,
    profile_path,
)
from pdsim.text import did_you_mean

GEMM_COMPUTE_EFF_MAX = 0.8
GEMM_HALF_EFF_M = 64.0
MEM_EFF = 0.8
FLASH_ATTN_COMPUTE_EFF = 0.5
KERNEL_LAUNCH_US = 4.0
SAMPLER_KERNELS = 5
SAMPLER_PASSES = 4
FLASH_ATTN_TILE_ROWS = 128


def _geometric_grid(stop: int, factor: float = 1.25, dense_until: int = 16, start: int = 1) -> list[int]:
    """start..dense_until in steps of 1, then x factor (rounded, deduplicated) up to stop."""
    grid = list(range(start, min(dense_until, stop) + 1))
    x = float(grid[-1])
    while grid[-1] < stop:
        x *= factor
        v = min(stop, int(round(x)))
        if v > grid[-1]:
            grid.append(v)
    return grid


TOKEN_GRID = _geometric_grid(16384)
SEQUENCE_GRID = _geometric_grid(512)
CHUNK_GRID = _geometric_grid(16384, factor=1.5, dense_until=4)
PREFIX_GRID = [0, *_geometric_grid(131072, factor=1.6, dense_until=16, start=16)]
BATCH_GRID = _geometric_grid(512, factor=1.25, dense_until=8)
KV_GRID = [0, *_geometric_grid(131072, factor=1.6, dense_until=16, start=16)]


def gemm_precision(hw: HardwareSpec, dtype: str, quantization: str | None) -> tuple[float, int, int, str]:
    """(tensor peak TFLOPS, bytes per weight, bytes per GEMM input element, what priced it) of an instance's
    GEMMs: fp8-quantised weights (and vLLM's dynamically quantised fp8 activations) at the fp8 peak. A GPU
    without fp8 tensor cores (A100, A10) runs fp8 checkpoints weight-only: vLLM's Marlin fp8 kernel
    (`quantization/fp8.py`, minimum capability 7.5) reads 1-byte weights and computes in bf16, inputs
    unquantised. float32 is priced at the bf16 peak: right only in a ratio of two such estimates (a measured
    MoE table rescaled); check_estimable keeps it out of estimated step times."""
    if quantization is None and dtype_bytes(dtype) != 1:
        return (hw.bf16_tflops, dtype_bytes(dtype), dtype_bytes(dtype),
                f"{dtype} GEMMs at the {hw.bf16_tflops:g} TFLOPS bf16 peak")
    if hw.fp8_tflops <= 0:
        inputs = dtype_bytes(dtype) if dtype_bytes(dtype) != 1 else 2  # bf16 where the dtype itself is fp8
        return (hw.bf16_tflops, 1, inputs, f"{quantization or dtype} weights on a GPU without fp8 tensor cores: "
                f"read at 1 byte and computed at the {hw.bf16_tflops:g} TFLOPS bf16 peak (vLLM's Marlin weight-only "
                "fp8 kernel; its efficiency assumed to be a bf16 GEMM's)")
    return hw.fp8_tflops, 1, 1, (f"{quantization or dtype} GEMMs at the {hw.fp8_tflops:g} TFLOPS fp8 peak, "
                                 "weights read at 1 byte")


class _Roofline:
    def __init__(self, hw: HardwareSpec, model: ModelSpec, dtype: str, tp: int,
                 quantization: str | None = None, kv_dtype: str | None = None) -> None:
        # dt: activations (norms, rotary, all-reduce); kt: the KV cache.
        self.m, self.tp, self.dt = model, tp, dtype_bytes(dtype)
        # wt: GEMM weights; at: GEMM inputs (fp8 under W8A8, unquantised under weight-only fp8).
        tflops, self.wt, self.at, self.gemm_source = gemm_precision(hw, dtype, quantization)
        self.kt = dtype_bytes(kv_dtype) if kv_dtype is not None else self.dt
        self.flops_per_us = tflops * 1e6  # TFLOP/s = 1e6 FLOP/us
        # Attention (QK^T, PV) runs in bf16 even over an fp8 KV cache (FlashAttention dequantises).
        self.attn_flops_per_us = hw.bf16_tflops * 1e6
        self.bytes_per_us = hw.mem_bw_gbps * 1e3  # GB/s = 1e3 bytes/us
        self.sm_count = hw.sm_count
        self._unquantised = self if quantization is None else _Roofline(hw, model, dtype, tp)

    def mem_us(self, nbytes: float) -> float:
        return nbytes / (self.bytes_per_us * MEM_EFF) + KERNEL_LAUNCH_US

    def gemm_us(self, m: int, n: int, k: int) -> float:
        eff = GEMM_COMPUTE_EFF_MAX * m / (m + GEMM_HALF_EFF_M)
        compute = 2.0 * m * n * k / (self.flops_per_us * eff)
        memory = (m * k * self.at + k * n * self.wt + m * n * self.dt) / (self.bytes_per_us * MEM_EFF)
        return max(compute, memory) + KERNEL_LAUNCH_US

    def dense(self, op: str, t: int) -> float:
        m, tp, dt = self.m, self.tp, self.dt
        h, q, kv, inter = m.hidden_size, m.q_size(tp), m.kv_size(tp), m.intermediate_per_shard(tp)
        if op in ("layernorm", "final_layernorm"):  # read x (+ residual), write both
            return self.mem_us(4 * t * h * dt + h * dt)
        if op == "qkv_proj":
            return self.gemm_us(t, q + 2 * kv, h)
        if op == "qk_norm":  # OLMoE's span the whole projection: each rank norms the all-gathered q and k
            q_normed, kv_normed = (m.q_size(1), m.kv_size(1)) if m.whole_qk_norm else (q, kv)
            return self.mem_us(2 * t * (q_normed + kv_normed) * dt)
        if op == "rotary_emb":  # rotate q and k in place, cos/sin cache read
            return self.mem_us(2 * t * (q + kv) * dt + t * m.head_dim * 4)
        if op == "o_proj":
            return self.gemm_us(t, h, q)
        if op == "gate_up_proj":
            return self.gemm_us(t, 2 * inter, h)
        if op == "act_fn":  # SiLU(gate) * up: read 2 x inter, write 1 x inter
            return self.mem_us(3 * t * inter * dt)
        if op == "down_proj":
            return self.gemm_us(t, h, inter)
        if op == "embedding":  # gather T rows
            return self.mem_us(2 * t * h * dt)
        raise ValueError(op)

    def per_sequence(self, op: str, s: int) -> float:
        vocab = self.m.vocab_per_shard(self.tp)
        if op == "lm_head":  # not quantised (vLLM's fp8 schemes keep lm_head in dtype)
            return _Roofline.gemm_us(self._unquantised, s, vocab, self.m.hidden_size)
        if op == "sampler":
            passes = s * vocab * 4 * SAMPLER_PASSES
            return passes / (self.bytes_per_us * MEM_EFF) + SAMPLER_KERNELS * KERNEL_LAUNCH_US
        raise ValueError(op)

    def _kv_cache_write_us(self, tokens: int) -> float:
        # vLLM's reshape_and_cache: write the step's new K and V into the paged cache.
        return self.mem_us(2 * tokens * 2 * self.m.kv_size(self.tp) * self.kt)

    def attention_prefill(self, chunk: int, prefix: int) -> float:
        m, tp, dt = self.m, self.tp, self.dt
        heads, d = m.heads_per_shard(tp), m.head_dim
        # Causal: each new token sees the prefix plus on average half the chunk.
        pairs = chunk * (prefix + (chunk + 1) / 2)
        flops = 4.0 * pairs * heads * d  # QK^T and PV
        nbytes = 2 * chunk * m.q_size(tp) * dt + 2 * (prefix + chunk) * m.kv_size(tp) * self.kt
        compute = flops / (self.attn_flops_per_us * FLASH_ATTN_COMPUTE_EFF)
        memory = nbytes / (self.bytes_per_us * MEM_EFF)
        # Critical path: one block = one padded query tile of one head over its causal KV span.
        tiles = -(-chunk // FLASH_ATTN_TILE_ROWS)
        waves = -(-(tiles * heads) // self.sm_count)
        block_flops = 4.0 * FLASH_ATTN_TILE_ROWS * (prefix + (chunk + FLASH_ATTN_TILE_ROWS) / 2) * d
        critical = waves * block_flops / (self.attn_flops_per_us / self.sm_count)
        return max(compute, memory, critical) + KERNEL_LAUNCH_US + self._kv_cache_write_us(chunk)

    def attention_decode(self, batch: int, kv_tokens: int) -> float:
        m, tp, dt = self.m, self.tp, self.dt
        ctx = kv_tokens + 1  # the new token attends to itself too
        nbytes = batch * (2 * ctx * m.kv_size(tp) * self.kt + 2 * m.q_size(tp) * dt)
        flops = 4.0 * batch * ctx * m.heads_per_shard(tp) * m.head_dim
        compute = flops / (self.attn_flops_per_us * FLASH_ATTN_COMPUTE_EFF)
        memory = nbytes / (self.bytes_per_us * MEM_EFF)
        return max(compute, memory) + KERNEL_LAUNCH_US + self._kv_cache_write_us(batch)


def _roofline(hardware: HardwareSpec, model: ModelSpec, dtype: str, tp: int,
              quantization: str | None, kv_dtype: str | None) -> _Roofline:
    if getattr(model, "mla", None) is not None:  # DeepSeek's latent attention (pdsim/mla.py)
        from pdsim.perf.mla_estimate import MLARoofline

        return MLARoofline(hardware, model, dtype, tp, quantization, kv_dtype)
    if getattr(model, "sliding_window", 0):  # gpt-oss's sliding-window layers (pdsim/gpt_oss.py)
        from pdsim.perf.sliding_estimate import SlidingRoofline

        return SlidingRoofline(hardware, model, dtype, tp, quantization, kv_dtype)
    return _Roofline(hardware, model, dtype, tp, quantization, kv_dtype)


def check_estimable(dtype: str, quantization: str | None) -> None:
    """Step times can be estimated only at a precision whose GEMM peak the hardware table holds (bf16/fp16,
    fp8). float32 GEMMs run on CUDA cores (vLLM leaves TF32 off) and int8 ones on int8 tensor cores: priced
    at another precision's peak they would be off by an order of magnitude without a word."""
    if quantization is None and dtype in ("float32", "int8"):
        raise ProfileError(f"dtype {dtype}: step times cannot be estimated for {dtype} GEMMs (pdsim's hardware "
                           "table has bf16/fp16 and fp8 tensor peaks only); give a measured profile of it "
                           "(--profile-dir) or use bfloat16, float16 or fp8")


def estimate_rows(
    hardware: HardwareSpec, model: ModelSpec, dtype: str, tp: int, quantization: str | None = None,
    kv_dtype: str | None = None,
) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
    """(dense, per_sequence, attention_prefill, attention_decode) rows in write_profile's layout.
    quantization: the weights' (InstanceConfig.quantization); kv_dtype: the KV cache's (default dtype)."""
    model.check_tp(tp)
    check_estimable(dtype, quantization)
    r = _roofline(hardware, model, dtype, tp, quantization, kv_dtype)
    ops = ["layernorm", "qkv_proj", "rotary_emb", "o_proj", "gate_up_proj", "act_fn", "down_proj"]
    if model.has_qk_norm:
        ops.append("qk_norm")
    ops += ["embedding", "final_layernorm"]
    dense = [(op, t, r.dense(op, t)) for op in ops for t in TOKEN_GRID]
    per_seq = [(op, s, r.per_sequence(op, s)) for op in ("lm_head", "sampler") for s in SEQUENCE_GRID]
    prefill = [(c, p, r.attention_prefill(c, p)) for c in CHUNK_GRID for p in PREFIX_GRID]
    decode = [(b, kv, r.attention_decode(b, kv)) for b in BATCH_GRID for kv in KV_GRID]
    return dense, per_seq, prefill, decode


def precision_key(dtype: str, quantization: str | None) -> str:
    """The profile path's precision component: the quantisation scheme, else the dtype."""
    return quantization or dtype


def estimate_meta(hardware: HardwareSpec, model: ModelSpec, dtype: str, tp: int,
                  quantization: str | None = None, kv_dtype: str | None = None) -> ProfileMeta:
    gemms = gemm_precision(hardware, dtype, quantization)[3]
    kv = f", KV cache read as {kv_dtype}" if kv_dtype not in (None, dtype) else ""
    return ProfileMeta(
        hardware=hardware.name,
        model=model.name,
        dtype=dtype,
        tp=tp,
        source="estimated",
        tool="pdsim estimate",
        tool_version=PDSIM_VERSION,
        created_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        num_layers=model.num_layers,
        device={"name": hardware.description, "spec_source": hardware.source, "mem_bw_gbps": hardware.mem_bw_gbps,
                "gemm_precision": f"estimated: {gemms}"},
        activation_peak_bytes=None,
        notes=(
            f"roofline per op: compute eff {GEMM_COMPUTE_EFF_MAX} x M/(M+{GEMM_HALF_EFF_M:g}), "
            f"flash-attn eff {FLASH_ATTN_COMPUTE_EFF}, memory eff {MEM_EFF}, "
            f"+{KERNEL_LAUNCH_US:g} us per kernel (pdsim/perf/estimate.py); {gemms}{kv}"
        ),
        path=(f"<estimated {hardware.name}/{model.name}/{precision_key(dtype, quantization)}/tp{tp}"
              f"{kv and '/kv-' + kv_dtype}>"),
        fmt="pdsim",
    )


def _table1d(name: str, rows: list[tuple], axis: str) -> dict[str, Table1D]:
    tables: dict[str, Table1D] = {}
    for op in dict.fromkeys(r[0] for r in rows):
        pts = [(x, us) for o, x, us in rows if o == op]
        tables[op] = Table1D(f"{name}:{op}", [p[0] for p in pts], [p[1] for p in pts], axis)
    return tables


def _table2d(name: str, rows: list[tuple], xs: list[int], ys: list[int], axes: tuple[str, str]) -> Table2D:
    values = np.array([us for _, _, us in rows]).reshape(len(xs), len(ys))
    return Table2D(name, xs, ys, values, axes)


def estimate_profile(hardware: HardwareSpec, model: ModelSpec, dtype: str, tp: int,
                     quantization: str | None = None, kv_dtype: str | None = None) -> Profile:
    """An in-memory profile from the roofline (source "estimated")."""
    dense, per_seq, prefill, decode = estimate_rows(hardware, model, dtype, tp, quantization, kv_dtype)
    return Profile(
        meta=estimate_meta(hardware, model, dtype, tp, quantization, kv_dtype),
        dense=_table1d("estimated dense", dense, "tokens"),
        per_sequence=_table1d("estimated per_sequence", per_seq, "sequences"),
        attention_prefill=_table2d(
            "estimated attention_prefill",
            prefill,
            CHUNK_GRID,
            PREFIX_GRID,
            ("chunk_tokens", "kv_prefix_tokens"),
        ),
        attention_decode=_table2d(
            "estimated attention_decode", decode, BATCH_GRID, KV_GRID, ("batch_size", "kv_tokens")
        ),
    )


def _estimated_for(meta: ProfileMeta, dtype: str, kv_dtype: str | None) -> bool:
    """Whether an estimated profile on disk is what an estimate for this instance's precision would be. Its
    folder is keyed by the weights' precision (precision_key); its meta.json records the activations' `dtype`
    and no KV cache, as `pdsim profile estimate` always estimates attention over a cache of that dtype. An
    instance whose cache holds other bytes per value (an fp8 cache over a bf16 estimate) is estimated afresh:
    build.py prices an estimated profile's attention as it is (its kv_read_scale is 1), so the saved one would
    time the instance as though its cache were bf16."""
    kv_bytes = dtype_bytes(kv_dtype if kv_dtype is not None else dtype)
    return dtype_bytes(meta.dtype) == dtype_bytes(dtype) and dtype_bytes(meta.dtype) == kv_bytes


def load_or_estimate(
    hardware_name: str,
    model: ModelSpec,
    dtype: str,
    tp: int,
    root: str | Path | None = None,
    profile_dir: str | Path | None = None,
    mem_bw_gbps: float | None = None,
    quantization: str | None = None,
    kv_dtype: str | None = None,
    said: list[str] | None = None,
) -> Profile:
    """The profile on disk for this instance, else one estimated from the hardware spec.

    mem_bw_gbps (the config's npu_mem.mem_bw): the memory bandwidth an estimate uses instead of the
    datasheet's; an estimated profile on disk (built from the datasheet) is then estimated afresh.
    quantization: looked up under <precision_key>/ (profiles/<hw>/<model>/fp8/tp<N>); kv_dtype: the
    KV cache's dtype, which an estimate reads attention at (a measured profile on disk is used as measured;
    an estimated one made for another cache is estimated afresh, _estimated_for). said: where a given
    profile_dir's estimate is set aside so, why is appended to it (a bundled one is set aside without a word:
    the run says its step times are estimated either way).
    """
    key = precision_key(dtype, quantization)
    found = find_profile(hardware_name, model.name, key, tp, root=root, profile_dir=profile_dir)
    if found is not None and found.estimated and not _estimated_for(found.meta, dtype, kv_dtype):
        if profile_dir is not None and said is not None:
            said.append(f"the estimated profile {found.meta.path} was made for a {found.meta.dtype} KV cache; the "
                        f"instance's is {kv_dtype}, so its step times are estimated afresh for that cache")
        found = None
    spec = get_hardware(hardware_name)
    if spec is not None and mem_bw_gbps is not None and mem_bw_gbps != spec.mem_bw_gbps:
        spec = replace(spec, mem_bw_gbps=mem_bw_gbps)
        if found is not None and found.estimated:
            found = None
    if found is not None:
        return found
    if spec is None:
        where = profile_path(
            root if root is not None else PROFILES_ROOT, hardware_name, model.name, key, tp
        )
        known = known_hardware()
        bundled = root is None or Path(root).resolve() == Path(PROFILES_ROOT).resolve()
        elsewhere = ("" if not bundled else "; a profile `pdsim profile` measured is looked up with "
                     "--profiles-root <its --out folder, profiles by default> or --profile-dir <its folder>")
        raise ProfileError(
            f"no measured profile for {hardware_name}/{model.name}/{key}/tp{tp} under {where} and no hardware "
            f"spec for {hardware_name!r} to estimate one{did_you_mean(hardware_name, known)}; known hardware: "
            f"{', '.join(known)}{elsewhere}"
        )
    return estimate_profile(spec, model, dtype, tp, quantization, kv_dtype)


@dataclass(frozen=True)
class MoEKernel:
    """How close vLLM's fused_moe gets to the roofline (MoERoofline.experts_us; docs/moe.md, "Estimated
    expert time"): what each constant stands for and the data it was fitted on are documented there."""

    compute_eff_max: float
    half_eff_rows: float
    mem_eff: float
    fixed_us: float
    row_passes: float
    block_scale_eff: float


# The dense-GEMM constants and 3 kernel launches: the fit's starting point, and what a weight format the fit
# did not cover (MXFP4) gets.
DENSE_GEMM_MOE_KERNEL = MoEKernel(GEMM_COMPUTE_EFF_MAX, GEMM_HALF_EFF_M, MEM_EFF, 3 * KERNEL_LAUNCH_US, 0.0, 1.0)
# Fitted on aiconfigurator-core 0.12's measured H200 vLLM 0.19 fused_moe tables (benchmarks/moe_kernel_fit.py).
MOE_KERNEL = MoEKernel(compute_eff_max=0.48, half_eff_rows=55.0, mem_eff=0.82, fixed_us=38.0, row_passes=3.1,
                       block_scale_eff=0.57)
# MXFP4 experts (vLLM's Hopper OAI-Triton kernel), fitted on the same wheel's H200 vLLM 0.24 EP 1 rows
# (docs/moe.md, "MXFP4 experts": how, held-out errors, and why it is not the default).
MXFP4_MOE_KERNEL = MoEKernel(compute_eff_max=0.57, half_eff_rows=42.0, mem_eff=0.56, fixed_us=36.0, row_passes=1.2,
                             block_scale_eff=1.0)


class MoERoofline(_Roofline):
    """One MoE layer on one GPU from specs (pdsim/perf/moe_time.py says what it is given):
    the router gate over the rank's own tokens (vLLM gates them before the all-gather dispatch), the
    top-k kernel, then fused_moe (experts_us, MoEKernel) over the tokens dispatched to it (a DP group's
    all). Shared experts (DeepSeek) are one dense MLP of the model's shared width, TP-sharded
    `shared_tp` ways, over the rank's own tokens too: vLLM 0.19 keeps the hidden states from before the
    dispatch for them and adds their output after the combine (fused_moe/runner/default_moe_runner.py).
    They run in series here; at up to 256 tokens vLLM puts them on a stream of their own beside the
    routed experts, which, both reading weights at the memory's pace, hides little more than launches.
    Under fp8 `quantization` the expert and shared GEMMs run at the fp8 peak and each expert streams
    1-byte weights plus its fp32 scales; the router gate stays in dtype."""

    def __init__(self, hw: HardwareSpec, model: ModelSpec, dtype: str, expert_tp: int,
                 quantization: str | None = None, shared_tp: int = 1, kernel: MoEKernel | None = None) -> None:
        super().__init__(hw, model, dtype, 1, quantization)
        bits = getattr(model, "expert_weight_bits", None)
        # MXFP4 experts (gpt-oss): dense-GEMM constants; their own fit overshoots TPOT end to end (docs/moe.md).
        self.kernel = kernel if kernel is not None else MOE_KERNEL if bits is None else DENSE_GEMM_MOE_KERNEL
        # Block-scaled fp8 rescales every 128-deep K step inside the GEMM's main loop, which brings an fp8 tensor-core
        # kernel down to about the bf16 speed (fitted so). Without fp8 tensor cores the GEMM is priced at the bf16
        # peak already (gemm_precision, weight-only): the slow-down is not taken twice.
        self.block_scale = self.kernel.block_scale_eff if quantization == "fp8_block" and hw.fp8_tflops > 0 else 1.0
        self.expert_params = model.moe.expert_params(model.hidden_size) // expert_tp
        # Bytes one activated expert streams: its weights at self.wt (1 under fp8) plus, quantised,
        # its fp32 scales counted as ModelSpec.weight_bytes counts them (docs/precision.md).
        h, inter = model.hidden_size, model.moe.expert_intermediate // expert_tp
        per_tensor = model.expert_scales(quantization)
        scales = (0 if quantization is None else per_tensor if per_tensor is not None
                  else scale_count([(1, 2 * inter, h), (1, h, inter)], quantization))
        self.expert_bytes = self.expert_params * self.wt + scales * SCALE_BYTES
        if bits is not None:  # MXFP4 experts (gpt-oss): 4.25 bits streamed, upcast to bf16 for the GEMM
            self.expert_bytes = self.expert_params * bits / 8
            fitted = self.kernel == MXFP4_MOE_KERNEL
            self.gemm_source += (f", expert weights read at {bits:g} bits (MXFP4), expert kernels at the "
                                 + ("efficiencies fitted on measured MXFP4 fused-MoE kernels" if fitted else
                                    "dense GEMM efficiencies (the fused-MoE fit did not cover MXFP4 kernels)"))
        self.shared_inter = -(-model.moe.shared_intermediate // shared_tp)
        self.expert_inter = inter

    def shared_us(self, tokens: int) -> float:
        if not self.shared_inter or tokens <= 0:
            return 0.0
        h, t, inter = self.m.hidden_size, int(tokens), self.shared_inter
        return (self.gemm_us(t, 2 * inter, h) + self.mem_us(3 * t * inter * self.dt)
                + self.gemm_us(t, h, inter))

    def experts_us(self, tokens: float, pairs: float, active: float) -> float:
        """The fused expert kernels (vLLM's fused_moe) on this GPU: `pairs` local token-expert pairs
        on `active` local experts, out of `tokens` tokens given to it (all of a DP group's under
        vLLM's all-gather dispatch)."""
        k, h, dt = self.kernel, self.m.hidden_size, self.dt
        rows = pairs / max(active, 1.0)  # tokens per active expert: each expert's GEMM M
        eff = k.compute_eff_max * rows / (rows + k.half_eff_rows) * self.block_scale
        compute = 2.0 * pairs * self.expert_params / (self.flops_per_us * max(eff, 1e-6))
        # fused_moe runs the activation and the top-k weighted sum over every (token, top-k) row it
        # is given, local expert or not (an expert_map only masks the GEMMs).
        row_bytes = k.row_passes * tokens * self.m.moe.top_k * (3 * self.expert_inter + h) * dt
        memory = (active * self.expert_bytes + 4 * pairs * h * dt + row_bytes) / (self.bytes_per_us * k.mem_eff)
        return max(compute, memory) + k.fixed_us

    def layer_us(self, tokens: int, pairs: float, active: float, rank_tokens: int | None = None) -> float:
        """`tokens` dispatched to this GPU, `rank_tokens` its own (default: the same, no DP group)."""
        h, e = self.m.hidden_size, self.m.moe.num_experts
        own = tokens if rank_tokens is None else rank_tokens
        # The router gate stays in dtype under fp8 (vLLM's fp8 schemes leave it unquantised).
        gate = _Roofline.gemm_us(self._unquantised, max(int(own), 1), e, h)
        return gate + KERNEL_LAUNCH_US + self.experts_us(tokens, pairs, active) + self.shared_us(own)
