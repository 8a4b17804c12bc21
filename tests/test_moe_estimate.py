"""The estimated MoE expert time (MoERoofline.experts_us) and the fit against measured kernels
(benchmarks/moe_kernel_fit.py), on synthetic frames: the aiconfigurator wheel is not in CI."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdsim.hardware import get_hardware
from pdsim.models import ModelSpec
from pdsim.perf.estimate import DENSE_GEMM_MOE_KERNEL, KERNEL_LAUNCH_US, MOE_KERNEL, MoEKernel, MoERoofline, _Roofline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import moe_kernel_fit as fit_mod  # noqa: E402

H200 = get_hardware("H200")


def qwen235(experts: int = 128) -> ModelSpec:
    return fit_mod._model(4096, 1536, 8, experts)


def roofline(tp: int = 1, quantization: str | None = "fp8_block", kernel: MoEKernel | None = None) -> MoERoofline:
    return MoERoofline(H200, qwen235(), "bfloat16", tp, quantization, kernel=kernel)


def test_large_chunk_runs_at_the_fitted_compute_efficiency():
    # 16k tokens on 128 experts: 1024 rows per expert, compute bound; FLOPs / (peak x eff) + fixed.
    k, r = MOE_KERNEL, roofline(quantization="fp8")
    pairs = 16384 * 8
    rows = pairs / 128
    eff = k.compute_eff_max * rows / (rows + k.half_eff_rows)
    expected = 2.0 * pairs * 3 * 4096 * 1536 / (H200.fp8_tflops * 1e6 * eff) + k.fixed_us
    assert r.experts_us(16384, pairs, 128) == pytest.approx(expected, rel=1e-9)


def test_block_scaled_fp8_computes_slower_than_per_tensor_fp8():
    pairs = 16384 * 8
    block, tensor = roofline().experts_us(16384, pairs, 128), roofline(quantization="fp8").experts_us(16384, pairs, 128)
    fixed = MOE_KERNEL.fixed_us
    assert (block - fixed) == pytest.approx((tensor - fixed) / MOE_KERNEL.block_scale_eff, rel=1e-9)


def test_block_scaled_fp8_without_fp8_tensor_cores_is_not_slowed_twice():
    # A100: fp8 checkpoints run weight-only at the bf16 peak already (gemm_precision), so block scales add no
    # second slow-down; the expert GEMMs are never slower than the bf16 checkpoint's (they were up to 44%).
    a100 = get_hardware("A100-80GB")

    def experts_us(quantization, tokens):
        return MoERoofline(a100, qwen235(), "bfloat16", 1, quantization).experts_us(tokens, tokens * 8, 128)

    for tokens in (1, 64, 256, 2048, 16384):
        bf16, block, tensor = (experts_us(q, tokens) for q in (None, "fp8_block", "fp8"))
        assert block <= bf16 and block == pytest.approx(tensor, rel=0.01), tokens


def test_decode_is_weight_streaming_plus_the_fixed_cost():
    # One token on 8 of 128 experts: memory bound, 8 experts' fp8 weights (+ block scales).
    r = roofline()
    t = r.experts_us(1, 8, 8)
    weights_us = 8 * r.expert_bytes / (H200.mem_bw_gbps * 1e3 * MOE_KERNEL.mem_eff)
    assert weights_us + MOE_KERNEL.fixed_us < t < 1.05 * weights_us + MOE_KERNEL.fixed_us + 1.0


def test_expert_parallelism_keeps_the_all_rows_cost():
    # vLLM's fused_moe touches every (token, top-k) row it is given: EP 8 of a 16k chunk costs more
    # than an eighth of EP 1, and without that term (row_passes 0) it costs about an eighth.
    t, pairs = 16384, 16384 * 8
    ep1, ep8 = roofline().experts_us(t, pairs, 128), roofline().experts_us(t, pairs / 8, 16)
    assert ep8 > 1.3 * (ep1 - MOE_KERNEL.fixed_us) / 8 + MOE_KERNEL.fixed_us
    no_rows = replace(MOE_KERNEL, row_passes=0.0)
    a, b = roofline(kernel=no_rows).experts_us(t, pairs, 128), roofline(kernel=no_rows).experts_us(t, pairs / 8, 16)
    assert (b - no_rows.fixed_us) == pytest.approx((a - no_rows.fixed_us) / 8, rel=0.01)


def test_fewer_rows_per_expert_lose_compute_efficiency():
    # Same pairs spread over more experts: smaller GEMM M per expert, lower efficiency, slower.
    k = replace(MOE_KERNEL, row_passes=0.0)
    r = MoERoofline(H200, qwen235(512), "bfloat16", 1, "fp8", kernel=k)
    pairs = 8192 * 8
    assert r.experts_us(8192, pairs, 512) > r.experts_us(8192, pairs, 64)


def test_layer_is_gate_plus_experts_plus_shared():
    r = roofline()
    gate = _Roofline.gemm_us(r._unquantised, 100, 128, 4096)
    assert r.layer_us(100, 800, 100) == pytest.approx(gate + KERNEL_LAUNCH_US + r.experts_us(100, 800, 100))


def test_fit_recovers_known_constants_from_synthetic_measurements():
    truth = MoEKernel(compute_eff_max=0.4, half_eff_rows=40.0, mem_eff=0.7, fixed_us=30.0, row_passes=2.0,
                      block_scale_eff=0.6)
    cases = []
    for dtype in ("fp8", "fp8_block"):
        rows = [dict(hidden_size=h, inter_size=i, topk=8, num_experts=e, moe_tp_size=tp, moe_ep_size=ep, num_tokens=t)
                for h, i, e in ((4096, 1536, 128), (2048, 768, 64)) for tp, ep in ((1, 1), (2, 1), (1, 8))
                for t in (1, 4, 16, 64, 256, 1024, 4096, 16384)]
        frame = pd.DataFrame(rows)
        case = fit_mod.Case("h200_sxm", dtype, "synthetic", frame)
        frame["latency_us"] = fit_mod.predict_us(case, truth)
        cases.append(case)
    got = fit_mod.fit(cases, DENSE_GEMM_MOE_KERNEL)
    for name in ("compute_eff_max", "half_eff_rows", "mem_eff", "fixed_us", "row_passes", "block_scale_eff"):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=0.05), name
    assert fit_mod.errors(cases, got).err.abs().max() < 0.01


def test_loader_keeps_balanced_rows_and_prefers_triton(tmp_path):
    pytest.importorskip("pyarrow")
    base = dict(moe_dtype="fp8_block", num_tokens=8, hidden_size=4096, inter_size=1536, topk=8, num_experts=128,
                moe_tp_size=1, moe_ep_size=1, latency=0.3)
    rows = [dict(base, kernel_source="vllm_fp8moe_flashinfer_cutlass_flashinferexperts", distribution="balanced"),
            dict(base, kernel_source="vllm_fp8moe_flashinfer_cutlass_flashinferexperts", distribution="balanced",
                 num_tokens=16),
            dict(base, kernel_source="vllm_fp8moe_triton_tritonexperts", distribution="balanced"),
            dict(base, kernel_source="vllm_fp8moe_triton_tritonexperts", distribution="power_law_1.2"),
            dict(base, kernel_source="vllm_fp8moe_triton_tritonexperts", distribution="balanced", moe_dtype="int4_wo")]
    d = tmp_path / "systems" / "data" / "h100_sxm" / "moe" / "vllm" / fit_mod.SYSTEMS["h100_sxm"][1]
    d.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(d / "moe_perf.parquet")
    (case,) = fit_mod.load_cases(tmp_path, ["h100_sxm"])
    assert (case.dtype, case.kernel_source, len(case.frame)) == ("fp8_block", "vllm_fp8moe_triton_tritonexperts", 1)
    assert case.frame.latency_us.tolist() == [300.0]


def test_qwen3_235b_prefill_chunk_near_aiconfigurators_measured_h200_kernel():
    # docs/validation.md: aiconfigurator-core 0.12's H200 vLLM fp8_block MoE table for these shapes,
    # TP 2 / EP 1: 4096 tokens 1,367 us, 8192 tokens 2,631 us; the dense-GEMM constants gave 624 / 917.
    r = roofline(tp=2)
    for tokens, measured_us in ((4096, 1367.0), (8192, 2631.0)):
        active = 128 * (1 - (1 - 8 / 128) ** tokens)
        assert r.experts_us(tokens, tokens * 8, active) == pytest.approx(measured_us, rel=0.15)
        before = roofline(tp=2, kernel=DENSE_GEMM_MOE_KERNEL).experts_us(tokens, tokens * 8, active)
        assert before < 0.75 * measured_us
    assert np.isfinite(r.experts_us(0, 0, 0))


def _mxfp4_rows(tmp_path, system: str, version: str, rows: list[dict]) -> None:
    d = tmp_path / "systems" / "data" / system / "moe" / "vllm" / version
    d.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(d / "moe_perf.parquet")


def test_mxfp4_family_reads_gpt_oss_kernels_and_only_ep1_of_vllm_019(tmp_path):
    pytest.importorskip("pyarrow")
    base = dict(moe_dtype="w4a16_mxfp4", num_tokens=8, hidden_size=2880, inter_size=2880, topk=4, num_experts=128,
                moe_tp_size=1, moe_ep_size=1, latency=0.2, distribution="balanced",
                kernel_source="vllm_gptossmxfp4moe_triton_oaitritonmxfp4expertsmonolithic")
    # 0.24: another model's compressed-tensors MXFP4 (Marlin) rows are not gpt-oss's kernel; bf16 rows another family
    _mxfp4_rows(tmp_path, "h200_sxm", "0.24.0", [
        base, dict(base, num_tokens=16),
        dict(base, kernel_source="vllm_compressedtensorsw4a4mxfp4moe_marlin_marlinexperts", hidden_size=3584),
        dict(base, moe_dtype="bfloat16", kernel_source="vllm_fused_moe")])
    # 0.19: every EP size timed like EP 1, so only EP 1 is read
    _mxfp4_rows(tmp_path, "h200_sxm", "0.19.0", [dict(base, kernel_source="vllm_mxfp4_moe"),
                                                  dict(base, kernel_source="vllm_mxfp4_moe", moe_ep_size=8)])
    dtypes = fit_mod.FAMILIES["mxfp4"][0]
    cases = fit_mod.load_cases(tmp_path, ["h200_sxm"], dtypes, fit_mod.tables(["h200_sxm"], "mxfp4"))
    got = {c.system: (c.kernel_source, sorted(c.frame.num_tokens), sorted(c.frame.moe_ep_size)) for c in cases}
    assert got == {"h200_sxm": (base["kernel_source"], [8, 16], [1, 1]),
                   "h200_sxm@0.19.0": ("vllm_mxfp4_moe", [8], [1])}
    assert fit_mod.hardware_of("h200_sxm@0.19.0") == "H200"


def test_mxfp4_case_prices_4_25_bit_experts():
    # One token on 4 of 32 experts, memory-bound with no small-M penalty: the 4 experts' weights at 4.25 bits.
    k = MoEKernel(0.5, 0.0, 0.5, 0.0, 0.0, 1.0)
    frame = pd.DataFrame([dict(hidden_size=2880, inter_size=2880, topk=4, num_experts=32, moe_tp_size=1,
                               moe_ep_size=1, num_tokens=1)])
    (got,) = fit_mod.predict_us(fit_mod.Case("h200_sxm", "w4a16_mxfp4", "synthetic", frame), k)
    weights = 4 * 3 * 2880 * 2880 * 4.25 / 8
    activations = 4 * 4 * 2880 * 2
    assert got == pytest.approx((weights + activations) / (H200.mem_bw_gbps * 1e3 * 0.5), rel=1e-9)
    bf16 = fit_mod.predict_us(fit_mod.Case("h200_sxm", "bfloat16", "synthetic", frame), k)[0]
    assert got < 0.3 * bf16  # bf16 experts stream 16 bits per weight


def test_fit_recovers_mxfp4_constants_from_synthetic_measurements():
    truth = MoEKernel(compute_eff_max=0.55, half_eff_rows=45.0, mem_eff=0.65, fixed_us=60.0, row_passes=0.5,
                      block_scale_eff=1.0)
    rows = [dict(hidden_size=2880, inter_size=2880, topk=4, num_experts=e, moe_tp_size=tp, moe_ep_size=ep,
                 num_tokens=t) for e in (32, 128) for tp, ep in ((1, 1), (2, 1), (1, 8))
            for t in (1, 4, 16, 64, 256, 1024, 4096, 16384)]
    frame = pd.DataFrame(rows)
    case = fit_mod.Case("h200_sxm", "w4a16_mxfp4", "synthetic", frame)
    frame["latency_us"] = fit_mod.predict_us(case, truth)
    got = fit_mod.fit([case], replace(DENSE_GEMM_MOE_KERNEL, block_scale_eff=1.0))
    # At gpt-oss's shapes the small-M compute term outweighs weight streaming, so mem_eff (and the
    # row passes) are weakly determined; the compute constants and the fixed cost are not.
    for name in ("compute_eff_max", "half_eff_rows", "fixed_us"):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=0.05), name
    assert fit_mod.errors([case], got).err.abs().max() < 0.01
