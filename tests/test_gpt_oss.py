"""gpt-oss: config reading, parameters, MXFP4 weights, vLLM's hybrid KV allocator, sliding-window timing."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pdsim.config import cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.errors import PdsimError, ProfileError
from pdsim.gpt_oss import GptOssModelSpec
from pdsim.hardware import get_hardware
from pdsim.models import load_model
from pdsim.perf.estimate import KERNEL_LAUNCH_US, MOE_KERNEL, MoERoofline, _Roofline, estimate_profile
from pdsim.perf.memory import GIB, non_torch_bytes, visible_memory_gib
from tests.helpers import trace

H, LAYERS, E, INTER, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 2880, 24, 32, 2880, 201_088, 64, 8, 64


def _instance(**knobs) -> dict:
    return {"model_name": "openai/gpt-oss-20b", "hardware": "H100", "npu_mem": {"mem_size": 80, "mem_bw": 3350},
            "num_npus": 1, "tp_size": 1, "pd_type": None, **knobs}


def _cluster(*instances: dict):
    return cluster_config_from_dict({"num_nodes": 1, "link_bw": 50, "link_latency": 5000,
                                     "nodes": [{"num_instances": len(instances), "instances": list(instances)}]})


def test_layout_and_published_parameter_counts():
    m20, m120 = load_model("openai/gpt-oss-20b"), load_model("openai/gpt-oss-120b")
    assert isinstance(m20, GptOssModelSpec)
    assert (m20.sliding_layers, m20.full_layers, m20.sliding_window) == (12, 12, 128)
    assert (m20.moe.num_experts, m20.moe.top_k, m20.moe.moe_layers, m20.dense_mlp_layers) == (32, 4, 24, 0)
    assert m120.moe.num_experts == 128 and m120.sliding_layers == 18
    # OpenAI's model card: 20.91 B and 116.83 B parameters in all (biases and sinks included).
    assert m20.param_count() / 1e9 == pytest.approx(20.91, abs=0.005)
    assert m120.param_count() / 1e9 == pytest.approx(116.83, abs=0.005)


def _hand_weight_bytes_20b() -> int:
    """gpt-oss-20b on one GPU: the experts' matrices in MXFP4, everything else bf16."""
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM  # 4096, 512
    attention = (H * q + q) + 2 * (H * kv + kv) + (q * H + H) + HEADS  # q, k, v, o with biases; sinks
    router = H * E + E
    expert_biases = E * (2 * INTER + H)
    per_layer = attention + 2 * H + router + expert_biases  # + the two RMSNorms
    bf16_params = 2 * VOCAB * H + LAYERS * per_layer + H  # embedding, lm_head (untied), final norm
    mxfp4_params = LAYERS * E * 3 * H * INTER  # gate_up (2 x inter) and down, 19.11 B
    return 2 * bf16_params + mxfp4_params * 17 // 32  # 4.25 bits = 17/32 byte


# gpt-oss's rotary cos/sin cache, which vLLM counts in the weights' memory: built in fp32 (gpt_oss.py get_rope), YaRN's
# 4,096 x 32 positions x the 64-wide head.
ROPE_BYTES = 4096 * 32 * HEAD_DIM * 4


def test_weights_are_mxfp4_experts_and_bf16_rest():
    m = load_model("openai/gpt-oss-20b")
    assert m.weight_bytes("bfloat16", 1) == _hand_weight_bytes_20b()
    assert m.weight_bytes("bfloat16", 1) / GIB == pytest.approx(12.82, abs=0.01)
    assert 60.7 < load_model("openai/gpt-oss-120b").weight_bytes("bfloat16", 1) / GIB < 60.8  # "fits one 80 GB GPU"
    with pytest.raises(PdsimError, match="MXFP4"):
        m.weight_bytes("bfloat16", 1, quantization="fp8")


@pytest.mark.parametrize(("hardware", "tp", "hidden", "inter"), [
    ("H100-SXM", 1, 2880, 2880), ("H100-SXM", 2, 2880, 1472), ("H100-SXM", 8, 2880, 384),  # Triton: 64
    ("B200", 1, 3072, 3072), ("B200", 8, 3072, 512),  # FlashInfer TRT-LLM: 256 both
    ("A100-80GB", 2, 3072, 1536), ("RTXPRO6000", 1, 3072, 2944)])  # Marlin: 256 hidden, 128 intermediate
def test_mxfp4_experts_are_padded_for_the_kernel_vllm_picks_on_that_gpu(hardware, tp, hidden, inter):
    m = load_model("openai/gpt-oss-120b")
    extra = 36 * 128 * 3 * (hidden * inter - 2880 * (2880 // tp))  # 36 layers of 128 experts, gate_up + down
    grown = m.on_gpu(hardware, tp).weight_bytes("bfloat16", tp) - m.weight_bytes("bfloat16", tp)
    assert grown == pytest.approx(extra * 17 / 32, abs=1)
    if (hardware, tp) == ("H100-SXM", 2):  # a run holds them so (experts split by TP, not EP: ep_size 1)
        knobs = dict(model_name="openai/gpt-oss-120b", tp_size=2, num_npus=2, ep_size=1)
        info = simulate(_cluster(_instance(**knobs)), trace([(200, 2, 0.0)]), SimOptions()).infos[0]
        assert m.rope_cache_bytes("bfloat16") == ROPE_BYTES
        assert info.weights_gb * GIB == pytest.approx(m.on_gpu(hardware, tp).weight_bytes("bfloat16", tp) + ROPE_BYTES)
        assert 0.62 < grown / GIB < 0.64


def test_kv_capacity_on_h100_as_vllms_hybrid_allocator_computes_it():
    cfg = _cluster(_instance(max_num_seqs=256, max_num_batched_tokens=8192))
    res = simulate(cfg, trace([(3000, 40, 0.0), (200, 20, 0.01)]), SimOptions())
    assert all(r.status == "finished" for r in res.requests)
    info, inst = res.infos[0], res.instances[0]
    # vLLM: requested = 79.19 GiB visible x 0.9; available = requested - weights - activation peak -
    # non-torch (the last two: pdsim's profile-run and non-torch figures, docs/memory.md).
    total_gib, _ = visible_memory_gib("H100-SXM", 80)
    activation = info.activation_gb * GIB
    assert info.non_torch_gb * GIB == non_torch_bytes(1, "H100-SXM")
    available = (total_gib * GIB * 0.9 - _hand_weight_bytes_20b() - ROPE_BYTES - activation
                 - non_torch_bytes(1, "H100-SXM"))
    # Two KV-cache groups of 12 layers (sliding, full); a page is one layer's 16-token block:
    # 16 x (K, V) x 8 heads x 64 x 2 bytes = 32,768 B, and num_blocks = available // page // 12.
    page = 16 * 2 * KV_HEADS * HEAD_DIM * 2
    num_blocks = int(available // page // 12)
    assert info.kv_predicted_tokens == info.kv_tokens == num_blocks // 2 * 16  # vLLM's "GPU KV cache size"
    assert 1_150_000 < info.kv_tokens < 1_300_000
    # One pool for both groups (the null block aside); each running request's sliding layers hold cdiv(127, 16) + 1
    # = 9 of its blocks beside its full-attention ones, whose bytes are the 12 full layers' only: 24,576 B a token.
    assert inst.kv.num_blocks == num_blocks - 1 and inst.kv.window_blocks == 9
    assert inst.spec.kv_bytes_per_token == 12 * 2 * KV_HEADS * HEAD_DIM * 2
    assert "each running request's sliding-window layers hold 9 blocks of the pool" in info.memory_note


def test_each_running_request_holds_its_window_beside_its_blocks_not_max_num_seqs_windows():
    # vLLM's hybrid allocator takes a request's sliding-layer blocks from the shared pool while it runs. pdsim once
    # kept max_num_seqs x 9 blocks out of the pool: 74% of gpt-oss-120b's on one H100 at vllm serve's 1024 sequences.
    from tests.helpers import all_released

    one = simulate(_cluster(_instance(max_num_seqs=1024)), trace([(3000, 40, 0.0)]), SimOptions())
    assert one.instances[0].kv.peak_used == -(-3040 // 16) + 9  # 190 full-attention blocks and the window's 9
    # A pool of 400 blocks: two such requests (2 x 199) run at once, a third waits; every block comes back.
    rows = [(3000, 40, 0.0), (3000, 40, 0.0), (3000, 40, 0.0)]
    unchecked = _instance(max_num_seqs=1024, scheduler_reserve_full_isl=False)
    tight = simulate(_cluster(unchecked), trace(rows), SimOptions(kv_gpu_blocks={"n0.i0": 400}))
    inst = tight.instances[0]
    assert all(r.status == "finished" for r in tight.requests)
    assert inst.kv.peak_used <= inst.kv.num_blocks == 399 and all_released(inst)
    assert inst.kv.peak_used > 2 * 190  # two windows beside two requests' blocks at once
    # vLLM 0.19's whole-sequence check sizes the sliding group by the whole prompt too (188 + 188 blocks a request):
    # one runs at a time. Alone in a pool short of that, a request runs when its window fits (vLLM would wait).
    checked = simulate(_cluster(_instance(max_num_seqs=1024)), trace(rows), SimOptions(kv_gpu_blocks={"n0.i0": 400}))
    assert checked.instances[0].kv.peak_used == 199 and all(r.status == "finished" for r in checked.requests)
    alone = simulate(_cluster(_instance()), trace(rows[:1]), SimOptions(kv_gpu_blocks={"n0.i0": 300}))
    assert alone.requests[0].status == "finished" and alone.instances[0].kv.peak_used == 199
    # Preempted and finished requests give their windows back, synchronous and asynchronous.
    many = [(1500, 300, 0.001 * i) for i in range(8)]
    for async_scheduling in (False, True):
        knobs = dict(scheduler_reserve_full_isl=False, async_scheduling=async_scheduling)
        res = simulate(_cluster(_instance(**knobs)), trace(many), SimOptions(kv_gpu_blocks={"n0.i0": 400}))
        assert res.instances[0].sched.num_preemptions > 0 and all(r.status == "finished" for r in res.requests)
        assert all_released(res.instances[0])
    # The planner's rate estimate counts the windows too: a 1,000-token mean KV is 63 blocks and 9 a request.
    from pdsim.sweep.ratematch import Lengths, decode_rate

    _, batch, _ = decode_rate(inst, Lengths(mean_input=900, mean_output=200), tpot_slo_ms=1e9)
    assert batch == 399 // (63 + 9)
    # A request whose blocks and window just fit runs; one a block longer cannot, and is rejected, not left waiting.
    fits = simulate(_cluster(_instance()), trace([(390 * 16 - 40, 40, 0.0), (390 * 16 - 39, 40, 0.0)]),
                    SimOptions(kv_gpu_blocks={"n0.i0": 400}))
    assert [r.status for r in fits.requests] == ["finished", "rejected"]


def test_pd_instances_cache_every_layer_as_vllm_without_its_hybrid_allocator():
    # vLLM 0.19 turns the hybrid KV-cache allocator off in an engine with a KV connector (config/vllm.py),
    # and the sliding layers then cache like full ones: one group of 24 layers, every token kept, all sent.
    knobs = dict(max_num_seqs=256, max_num_batched_tokens=8192)
    cfg = _cluster(_instance(pd_type="prefill", **knobs), _instance(pd_type="decode", **knobs))
    res = simulate(cfg, trace([(3000, 40, 0.0), (200, 20, 0.01)]), SimOptions())
    assert all(r.status == "finished" for r in res.requests)
    colocated = simulate(_cluster(_instance(**knobs)), trace([(200, 2, 0.0)]), SimOptions())
    total_gib, _ = visible_memory_gib("H100-SXM", 80)
    for info, inst in zip(res.infos, res.instances):
        available = (total_gib * GIB * 0.9 - _hand_weight_bytes_20b() - ROPE_BYTES - info.activation_gb * GIB
                     - non_torch_bytes(1, "H100-SXM"))
        page = 16 * 2 * KV_HEADS * HEAD_DIM * 2
        num_blocks = int(available // (page * LAYERS))
        assert inst.spec.kv_bytes_per_token == LAYERS * 2 * KV_HEADS * HEAD_DIM * 2  # 49,152 B
        assert inst.kv.num_blocks == num_blocks - 1  # nothing set aside
        assert info.kv_tokens == num_blocks * 16 == colocated.infos[0].kv_tokens  # the same logged size
        assert "hybrid KV-cache allocator off" in info.memory_note
    # The connector moves every layer's blocks: 3,008 cached tokens (188 blocks) of 24 layers.
    assert res.requests[0].kv_bytes == 188 * 16 * LAYERS * 2 * KV_HEADS * HEAD_DIM * 2


def test_sliding_layers_cap_attention_at_the_window():
    m, hw = load_model("openai/gpt-oss-20b"), get_hardware("H100-SXM")
    prof = estimate_profile(hw, m, "bfloat16", 1)
    full = _Roofline(hw, m, "bfloat16", 1)
    # Decode: half the layers read the whole context, half at most 127 cached tokens.
    expected = 0.5 * full.attention_decode(64, 65_536) + 0.5 * full.attention_decode(64, 127)
    assert prof.attention_decode(64, 65_536) == pytest.approx(expected, rel=0.02)
    assert prof.attention_decode(64, 65_536) < 0.55 * full.attention_decode(64, 65_536)
    assert prof.attention_decode(8, 100) == pytest.approx(full.attention_decode(8, 100), rel=0.02)  # within the window
    # Prefill of a long chunk: the sliding half does ~128 pairs per token instead of ~chunk / 2.
    assert prof.attention_prefill(8192, 0) < 0.6 * full.attention_prefill(8192, 0)


def test_mxfp4_experts_stream_4_25_bits_per_weight():
    m, hw = load_model("openai/gpt-oss-20b"), get_hardware("H100-SXM")
    # No small-M compute penalty, so that one token stays memory-bound (MXFP4 GEMMs run at the bf16 peak).
    k = replace(MOE_KERNEL, half_eff_rows=0.0)
    roof = MoERoofline(hw, m, "bfloat16", 1, kernel=k)
    assert roof.expert_bytes == 3 * H * INTER * 4.25 / 8
    assert "4.25 bits (MXFP4)" in roof.gemm_source
    # One token, 4 experts: memory-bound; the experts' part is their 4.25-bit bytes, the 4 pairs'
    # activations (in, gate_up out, act out, down out: 4 x hidden x 2 bytes each) and fused_moe's
    # passes over the token's 4 top-k rows, at the fused-MoE memory efficiency, plus its fixed cost.
    others = roof.gemm_us(1, E, H) + KERNEL_LAUNCH_US + k.fixed_us  # the bf16 router gate, top-k, fused-MoE
    streamed = 4 * 3 * H * INTER * 17 / 32 + 4 * 4 * H * 2 + k.row_passes * 4 * (3 * INTER + H) * 2
    assert roof.layer_us(1, 4, 4.0) - others == pytest.approx(streamed / (hw.mem_bw_gbps * 1e3 * k.mem_eff))


def test_bad_gpt_oss_configs_are_refused_naming_the_field(tmp_path):
    raw = json.loads((load_model.__globals__["MODELS_DIR"] / "openai" / "gpt-oss-20b.json").read_text())
    for key, value, message in (("layer_types", ["full_attention"] * 24, "only equal numbers"),
                                ("layer_types", ["sliding_attention"] * 3, "expected 24 entries"),
                                ("sliding_window", 0, "'sliding_window'"),
                                ("quantization_config", {"quant_method": "awq"}, "only 'mxfp4'")):
        (tmp_path / "m.json").write_text(json.dumps({**raw, key: value}))
        with pytest.raises(PdsimError, match=message):
            load_model("m", tmp_path)


def test_measured_profile_sources_refuse_sliding_window(tmp_path):
    from pdsim.perf.aiconfigurator import build_rows

    with pytest.raises(ProfileError, match="sliding-window attention is not in aiconfigurator"):
        build_rows(tmp_path, "h100_sxm", load_model("openai/gpt-oss-20b"), 1)


def test_mxfp4_experts_keep_the_dense_gemm_constants():
    # The fused-MoE fit (docs/moe.md) was made on bf16/fp8 kernels, not on gpt-oss's MXFP4 ones.
    from pdsim.perf.estimate import DENSE_GEMM_MOE_KERNEL

    roof = MoERoofline(get_hardware("H100-SXM"), load_model("openai/gpt-oss-20b"), "bfloat16", 1)
    assert roof.kernel == DENSE_GEMM_MOE_KERNEL and "did not cover MXFP4" in roof.gemm_source
    assert MoERoofline(get_hardware("H100-SXM"), load_model("Qwen/Qwen3-30B-A3B"), "bfloat16", 1).kernel == MOE_KERNEL


def test_fitted_mxfp4_constants_follow_the_measured_h200_kernel():
    # MXFP4_MOE_KERNEL (fitted on H200 MXFP4 kernel tables, EP 1; docs/moe.md) against the dense constants
    # on gpt-oss-120b's TP 4 shard. aiconfigurator-core 0.12's H200 vLLM 0.24 table (OAI-Triton MXFP4,
    # 128 experts, TP 4, EP 1): 1 token 42.2 us, 8 tokens 73.3 us, 8192 tokens 923 us; the dense
    # constants give 16, 45 and 656.
    from pdsim.perf.estimate import DENSE_GEMM_MOE_KERNEL, MXFP4_MOE_KERNEL

    m, hw = load_model("openai/gpt-oss-120b"), get_hardware("H200")
    fitted = MoERoofline(hw, m, "bfloat16", 4, kernel=MXFP4_MOE_KERNEL)
    dense = MoERoofline(hw, m, "bfloat16", 4, kernel=DENSE_GEMM_MOE_KERNEL)
    assert "fitted on measured MXFP4" in fitted.gemm_source
    for tokens, measured_us in ((1, 42.2), (8, 73.3), (8192, 923.0)):
        pairs = tokens * 4
        assert fitted.experts_us(tokens, pairs, min(128, pairs)) == pytest.approx(measured_us, rel=0.1)
        assert dense.experts_us(tokens, pairs, min(128, pairs)) < 0.75 * measured_us
