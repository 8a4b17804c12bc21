"""fp8 MoE expert GEMMs: the estimated expert layers follow the instance's weight quantization."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import simpy

from pdsim.config import cluster_config_from_dict
from pdsim.engine.cluster import Cluster, SimOptions
from pdsim.errors import PdsimError
from pdsim.hardware import get_hardware
from pdsim.models import load_model
from pdsim.perf.estimate import KERNEL_LAUNCH_US, MEM_EFF, MOE_KERNEL, MoERoofline, _Roofline, estimate_profile
from pdsim.perf.moe_time import ExpertPlacement, MoELayerModel
from pdsim.perf.predictor import StepTimePredictor
from tests.helpers import cluster, instance

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "cluster" / "deepseek_v3_pd_h200.json"
QWEN = "Qwen/Qwen3-30B-A3B"


def _routed_us(roof: MoERoofline, tokens: int, pairs: float, active: float) -> float:
    """The routed-expert part of one layer: the layer less the (bf16) router gate, shared experts, top-k
    launch and fused-MoE fixed cost."""
    gate = _Roofline.gemm_us(roof._unquantised, tokens, roof.m.moe.num_experts, roof.m.hidden_size)
    fixed = KERNEL_LAUNCH_US + roof.kernel.fixed_us
    return roof.layer_us(tokens, pairs, active) - gate - roof.shared_us(tokens) - fixed


@pytest.mark.parametrize("quantization", ["fp8", "fp8_block"])
def test_memory_bound_experts_speed_up_by_the_weight_byte_ratio(quantization):
    # A DeepSeek-V3 DP rank (EP8, 32 local experts) decoding 8 tokens of the group: 8 tokens x top-8
    # over 256 experts activate ~2 of its 32 experts on ~2 pairs: streaming weights dominates.
    v3, hw = load_model("deepseek-ai/DeepSeek-V3"), get_hardware("H200")
    h, inter = v3.hidden_size, v3.moe.expert_intermediate
    tokens, local = 8, 32
    active = v3.moe.expected_active_experts(tokens, local)
    pairs = tokens * v3.moe.top_k * local / v3.moe.num_experts
    # Without fused_moe's passes over all gathered rows (bf16 activations in both), to isolate the weights.
    weights_only = replace(MOE_KERNEL, row_passes=0.0)
    bf16 = MoERoofline(hw, v3, "bfloat16", 1, kernel=weights_only)
    fp8 = MoERoofline(hw, v3, "bfloat16", 1, quantization, kernel=weights_only)
    # Bytes of one expert: gate_up (2 x inter rows) and down (h rows) at 2 bytes, or at 1 byte plus
    # fp32 scales: one per output row ("fp8") or per 128 x 128 block ("fp8_block").
    params = 3 * h * inter
    scales = (2 * inter + h) if quantization == "fp8" else (2 * inter // 128) * (h // 128) + (h // 128) * (inter // 128)
    byte_ratio = (2 * params) / (params + 4 * scales)
    assert fp8.expert_bytes == params + 4 * scales and bf16.expert_bytes == 2 * params
    ratio = _routed_us(bf16, tokens, pairs, active) / _routed_us(fp8, tokens, pairs, active)
    assert ratio == pytest.approx(byte_ratio, rel=0.02)
    assert 1.9 < ratio < 2.0
    # The router gate is the same in both (vLLM's fp8 schemes keep it in bf16).
    assert _Roofline.gemm_us(fp8._unquantised, 8, 256, h) == bf16.gemm_us(8, 256, h)


def test_bf16_experts_unchanged_hand_roofline():
    # Qwen3-30B-A3B TP1 on H100, one decode token: 8 of 128 experts, each 3 x 2048 x 768 bf16 weights
    # streamed at the fused-MoE memory efficiency of 3350 GB/s with fused_moe's passes over the token's
    # 8 top-k rows, plus the gate GEMM (2048 x 128), the top-k launch and the fused-MoE fixed cost.
    qwen, hw = load_model(QWEN), get_hardware("H100-SXM")
    layer = MoELayerModel(qwen, ExpertPlacement(1, 1, 1), "bfloat16", hw, None, quantization=None)
    active = qwen.moe.expected_active_experts(1)
    assert active == pytest.approx(8.0)
    k = MOE_KERNEL
    rows = k.row_passes * 8 * (3 * 768 + 2048) * 2
    experts = (active * 3 * 2048 * 768 * 2 + 4 * 8 * 2048 * 2 + rows) / (hw.mem_bw_gbps * 1e3 * k.mem_eff)
    gate = ((2048 + 2048 * 128) * 2 + 128 * 2) / (hw.mem_bw_gbps * 1e3 * MEM_EFF) + KERNEL_LAUNCH_US
    assert layer.experts_us(1) == pytest.approx(gate + experts + KERNEL_LAUNCH_US + k.fixed_us, rel=1e-9)


def _qwen_fp8_saving_us(tokens: int) -> float:
    """Qwen3-30B-A3B on H100, TP1: what fp8 experts save over bf16 on a memory-bound step: per activated
    expert, 3 x 2048 x 768 weights at 1 byte less, less the 2 fp32 scales (w13's, w2's) that vLLM's
    `--quantization fp8` of the bf16 checkpoint gives it."""
    qwen, hw = load_model(QWEN), get_hardware("H100-SXM")
    saved_bytes = 3 * 2048 * 768 - 4 * 2
    active = qwen.moe.expected_active_experts(tokens)
    return qwen.moe.moe_layers * active * saved_bytes / (hw.mem_bw_gbps * 1e3 * MOE_KERNEL.mem_eff)


def test_predictor_passes_quantization_to_the_expert_estimate():
    qwen, hw = load_model(QWEN), get_hardware("H100-SXM")
    prof = estimate_profile(hw, qwen, "bfloat16", 1, "fp8")
    fp8 = StepTimePredictor(prof, qwen, 1, hw, quantization="fp8")
    unquantised = StepTimePredictor(prof, qwen, 1, hw)
    saved = unquantised.moe_layer.step_us(4) - fp8.moe_layer.step_us(4)
    assert saved == pytest.approx(_qwen_fp8_saving_us(4), rel=1e-6)
    assert any("MoE expert layers estimated" in n and "fp8 GEMMs at the" in n for n in fp8.notes)
    assert any("MoE expert layers estimated" in n and "bf16 peak" in n for n in unquantised.notes)


def _decode_instance(cfg):
    c = Cluster(simpy.Environment(), cfg, SimOptions(), "<test>")
    return next(i for i in c.instances if i.pd_type == "decode")


def test_fp8_instance_config_prices_experts_at_fp8_end_to_end():
    inst = {"model_name": QWEN, "hardware": "H100", "npu_mem": {"mem_size": 80, "mem_bw": 3350},
            "num_npus": 1, "tp_size": 1, "pd_type": "decode"}
    prefill = {**inst, "pd_type": "prefill"}
    by_q = {q: _decode_instance(cluster(prefill, {**inst, "quantization": q})) for q in (None, "fp8")}
    bf16_us, fp8_us = (by_q[q].predictor.moe_layer.step_us(4) for q in (None, "fp8"))
    assert bf16_us - fp8_us == pytest.approx(_qwen_fp8_saving_us(4), rel=1e-6)
    # A DP-group rank of the bundled DeepSeek example (fp8_block) streams 1-byte experts too.
    v3_rank = _decode_instance(cluster_config_from_dict(json.loads(EXAMPLE.read_text()), str(EXAMPLE)))
    assert v3_rank.predictor.moe_layer._estimate.wt == 1


def test_fp8_experts_vllm_runs_with_another_kernel_than_the_fit_covers_are_said():
    # vLLM 0.19 (fused_moe/oracle/fp8.py): block fp8 on Hopper goes to FlashInfer CUTLASS under expert
    # parallelism, to Triton without; per-channel/per-tensor fp8 depends on the activation scales.
    from pdsim.hardware import get_hardware
    from pdsim.perf.moe_time import fp8_kernel_note

    h200, a100, b200 = get_hardware("H200"), get_hardware("A100"), get_hardware("B200")
    assert "FlashInfer's CUTLASS kernels" in fp8_kernel_note(h200, "fp8_block", 8)
    assert "moe.csv, measured without expert parallelism" in fp8_kernel_note(h200, "fp8_block", 2, "moe.csv")
    assert fp8_kernel_note(h200, "fp8_block", 1) is None and fp8_kernel_note(b200, "fp8_block", 8) is None
    assert "activation scales" in fp8_kernel_note(h200, "fp8", 1)
    assert fp8_kernel_note(h200, "fp8", 1, "moe.csv") is None  # measured: its own kernel
    assert fp8_kernel_note(a100, "fp8", 1) is None and fp8_kernel_note(h200, None, 8) is None


def test_layouts_vllm_cannot_load_an_fp8_block_checkpoint_in_are_refused():
    # Qwen3-30B-A3B's experts are 768 wide: split 4 ways, 192 is no whole number of 128-wide fp8 blocks, and vLLM's
    # Fp8MoEMethod refuses it; with expert parallelism each GPU holds whole experts, which loads.
    with pytest.raises(Exception, match=r"an expert's slice \(768 / 4\) is 192, not a multiple of the fp8"):
        cluster(dict(instance(None, hardware="H100", mem_size_gb=80, model_name=QWEN, quantization="fp8_block"),
                     tp_size=4, num_npus=4, ep_size=1))
    cluster(dict(instance(None, hardware="H100", mem_size_gb=80, model_name=QWEN, quantization="fp8_block"),
                 tp_size=4, num_npus=4, ep_size=4))
    cluster(dict(instance(None, hardware="H100", mem_size_gb=80, model_name=QWEN), tp_size=4, num_npus=4,
                 ep_size=1))  # bf16


def test_an_mlp_that_does_not_divide_over_tp_is_refused():
    llama = load_model("meta-llama/Llama-3.1-8B")
    with pytest.raises(PdsimError, match="intermediate_size 14335 cannot be split over tp=2"):
        replace(llama, intermediate_size=14335).check_shards(2, 2)
    llama.check_shards(8, 8, "fp8_block")  # 14336 / 8 = 1792, 14 blocks
    wide = replace(llama, intermediate_size=14400)
    wide.check_shards(8, 8)  # bf16 splits it
    with pytest.raises(PdsimError, match=r"down_proj's input \(intermediate_size / 8\) is 1800, not a multiple"):
        wide.check_shards(8, 8, "fp8_block")


def _fp8_checkpoint(tmp_path: Path, name: str, quantization_config: dict) -> str:
    """Qwen3-30B-A3B's config with a quantization_config, taken as model `name`."""
    from pdsim.models import MODELS_DIR, use_model_file

    raw = json.loads((MODELS_DIR / f"{QWEN}.json").read_text())
    path = tmp_path / f"{name.replace('/', '_')}.json"
    path.write_text(json.dumps({**raw, "quantization_config": quantization_config}))
    use_model_file(name, path)
    return name


def test_per_tensor_fp8_experts_hold_a_few_scales_each_as_vllm_allocates_them(tmp_path):
    # vLLM 0.19 scales a per-tensor fp8 checkpoint's experts with w13 (E, 2) and w2 (E,) fp32 scales
    # (quantization/fp8.py Fp8MoEMethod.create_weights; modelopt and compressed-tensors `tensor` alike), and
    # `--quantization fp8` over a bf16 checkpoint with (E,) and (E,) (Fp8OnlineMoEMethod); pdsim counted one
    # scale per output row of each (2 x 768 + 2048 per expert), 0.082 GiB too many on one GPU of Qwen3-30B-A3B.
    from pdsim.models import SCALE_BYTES

    bf16 = load_model(QWEN)
    moe = bf16.moe
    layers_experts = moe.moe_layers * moe.num_experts
    per_row = layers_experts * (2 * moe.expert_intermediate + bf16.hidden_size)
    ct_channel = load_model(_fp8_checkpoint(tmp_path, "test-org/Qwen3-30B-A3B-FP8-channel", {
        "quant_method": "compressed-tensors",
        "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}))
    hf_tensor = load_model(_fp8_checkpoint(tmp_path, "test-org/Qwen3-30B-A3B-FP8-tensor", {
        "quant_method": "fp8", "activation_scheme": "dynamic"}))
    modelopt = load_model(_fp8_checkpoint(tmp_path, "test-org/Qwen3-30B-A3B-FP8-modelopt", {
        "quant_method": "modelopt", "quant_algo": "FP8"}))
    assert (hf_tensor.checkpoint_weight_scales, modelopt.checkpoint_weight_scales,
            ct_channel.checkpoint_weight_scales) == ("tensor", "tensor", "channel")
    channel = ct_channel.weight_bytes("bfloat16", 1, quantization="fp8")
    online = bf16.weight_bytes("bfloat16", 1, quantization="fp8")
    assert online == channel - SCALE_BYTES * (per_row - 2 * layers_experts)
    for per_tensor in (hf_tensor, modelopt):
        assert per_tensor.weight_bytes("bfloat16", 1, quantization="fp8") == \
            channel - SCALE_BYTES * (per_row - 3 * layers_experts)
    assert (channel - online) / 2**30 == pytest.approx(0.082, abs=0.001)
    # Over EP 4 each GPU holds a quarter of the experts and their scales.
    assert bf16.weight_bytes("bfloat16", 4, 4, "fp8") == \
        ct_channel.weight_bytes("bfloat16", 4, 4, "fp8") - SCALE_BYTES * (per_row - 2 * layers_experts) // 4
    # The expert estimate streams the same scales per activated expert.
    hw = get_hardware("H100-SXM")
    assert MoERoofline(hw, hf_tensor, "bfloat16", 1, "fp8").expert_bytes == 3 * bf16.hidden_size * \
        moe.expert_intermediate + 3 * SCALE_BYTES


def test_fp8_experts_dispatch_fp8_hidden_states_where_vllm_quantises_before_the_all_gather(tmp_path):
    # vLLM 0.19's naive DP prepare step (fused_moe/prepare_finalize/naive_dp_ep.py) quantises the hidden states
    # for an fp8 expert kernel before the all-gather and gathers their scales beside them, unless the kernel
    # takes them unquantised (FlashInfer CUTLASS, block fp8 under EP on Hopper; Marlin below sm_89). pdsim priced
    # every dispatch at the activations' 2 bytes a value. The reduce-scatter stays in the activations' dtype.
    qwen = load_model(QWEN)
    h = qwen.hidden_size
    channel = load_model(_fp8_checkpoint(tmp_path, "test-org/Qwen3-30B-A3B-FP8-ct-channel", {
        "quant_method": "compressed-tensors",
        "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}))

    def layer_us(hardware: str, quantization: str | None, ep_size: int = 4, model=qwen) -> tuple[float, float]:
        """(dispatch + combine us of 4096 group tokens over 4 DP ranks at 100 GB/s, the dispatch's bytes a token)"""
        layer = MoELayerModel(model, ExpertPlacement(1, ep_size, 4), "bfloat16", get_hardware(hardware), None,
                              quantization)
        layer.set_link(100.0, 0.0, "a test link")
        return layer.dispatch_combine_us(4096), layer._dispatch_bytes_per_token

    def ring_us(bytes_per_token: float) -> float:
        return 3 / 4 * 4096 * bytes_per_token / 100e3

    bf16_us, bf16_bytes = layer_us("H100-SXM", None)
    assert bf16_bytes == 2 * h and bf16_us == pytest.approx(2 * ring_us(2 * h), rel=1e-12)
    # Block fp8: 1 byte a value and one fp32 scale per 128 (Triton without EP on Hopper, TRT-LLM on Blackwell,
    # Triton on sm_120); FlashInfer's CUTLASS kernels under EP on Hopper quantise inside: bf16 on the link.
    block = h + 4 * h // 128
    assert layer_us("H100-SXM", "fp8_block", ep_size=1) == pytest.approx((ring_us(block) + ring_us(2 * h), block))
    assert layer_us("B200", "fp8_block")[1] == layer_us("RTXPRO6000", "fp8_block")[1] == block
    assert layer_us("H100-SXM", "fp8_block") == (bf16_us, bf16_bytes)
    # Per-tensor scales (online --quantization fp8): one a rank, so 1 byte a value; per-token ones (compressed-
    # tensors per-channel weights) one fp32 a token. Marlin (A100) runs fp8 weight-only: bf16 on the link.
    assert layer_us("H100-SXM", "fp8")[1] == layer_us("L40S", "fp8")[1] == h
    assert layer_us("H100-SXM", "fp8", model=channel)[1] == h + 4
    assert layer_us("A100-80GB", "fp8")[1] == layer_us("A100-80GB", "fp8_block")[1] == 2 * h
    # The run says so.
    layer = MoELayerModel(qwen, ExpertPlacement(1, 4, 4), "bfloat16", get_hardware("H200"), None, "fp8")
    assert "the all-gather carries fp8 hidden states and their scales (2048 bytes a token" in \
        layer.set_link(100.0, 0.0, "a test link")
