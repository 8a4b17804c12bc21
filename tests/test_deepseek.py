"""DeepSeek-V3: MLA shapes, its MoE layout, weights under EP, the estimated step time, the example."""

import json
import math
from pathlib import Path

import pytest

from pdsim.config import cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.errors import PdsimError
from pdsim.hardware import get_hardware
from pdsim.models import load_model
from pdsim.perf.estimate import MEM_EFF, MoERoofline, estimate_profile
from tests.helpers import trace

V3 = "deepseek-ai/DeepSeek-V3"
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "cluster" / "deepseek_v3_pd_h200.json"
GIB = 1024**3
H, E, I_EXPERT, MOE_LAYERS = 7168, 256, 2048, 58
ROUTED = MOE_LAYERS * E * 3 * H * I_EXPERT


@pytest.fixture(scope="module")
def v3():
    return load_model(V3)


def test_layout_read_from_the_config(v3):
    assert v3.moe.moe_layers == MOE_LAYERS and v3.dense_mlp_layers == 3  # first_k_dense_replace 3 of 61
    assert (v3.moe.num_experts, v3.moe.top_k, v3.moe.shared_intermediate) == (256, 8, 2048)
    assert v3.mla.latent_per_token == 576 and v3.mla.qk_head_dim == 192


def test_parameter_counts_match_the_published_671b_and_37b(v3):
    # DeepSeek's model card: 671B total (without the 14B MTP module), 37B activated per token.
    assert 670e9 < v3.param_count() < 672e9
    assert 37e9 < v3.active_param_count() < 38e9
    r1 = load_model("deepseek-ai/DeepSeek-R1")
    assert r1.param_count() == v3.param_count()


def test_kv_bytes_per_token_is_the_latent_and_not_divided_by_tp(v3):
    assert v3.kv_bytes_per_token("bfloat16") == 61 * 576 * 2 == 70_272
    assert v3.kv_bytes_per_token("bfloat16", 8) == 70_272  # replicated on every TP rank
    assert v3.kv_bytes_per_token("fp8") == 61 * 576


def test_weights_per_gpu_under_ep8(v3):
    dense_part = v3.param_count() - ROUTED
    # DP attention (TP1 ranks): everything but the routed experts on every GPU, 1/8 of the experts.
    assert v3.weight_bytes("fp8", 1, expert_shards=8) == dense_part + ROUTED // 8
    assert v3.weight_bytes("bfloat16", 1, expert_shards=8) == 2 * (dense_part + ROUTED // 8)
    # TP8: q_b, kv_b, o_proj, the dense MLPs, shared experts and vocab sharded; q_a/kv_a replicated.
    tp8 = v3.weight_bytes("fp8", 8, expert_shards=8)
    assert 78 * GIB < tp8 < 80 * GIB < v3.weight_bytes("fp8", 1, expert_shards=8) < 93 * GIB
    replicated = 61 * (H * 1536 + 1536 + H * 576 + 512)
    assert tp8 - ROUTED // 8 > replicated + (dense_part - replicated) // 8


@pytest.mark.parametrize(("tp", "shards"), [(1, 8), (8, 8), (8, 16)])
def test_fp8_block_weights_cover_every_mla_linear_layer(v3, tp, shards):
    kept = v3._unquantized_params_per_shard(tp)
    linear = v3._params_per_shard(tp, shards) - kept
    # The quantised shapes account for exactly the parameters outside embeddings/norms/routers.
    assert sum(n * rows * cols for n, rows, cols in v3._linear_shapes(tp, shards)) == pytest.approx(linear)
    # vLLM's MLA also keeps a bf16 copy of kv_b (its decode matmuls' W_UK_T and W_UV), 61 layers of
    # heads x 512 x (128 + 128): 1.906 GiB at TP1, 1/8 of it at TP8.
    kv_b_copy = 61 * (128 // tp) * 512 * 256 * 2
    fp8_block = v3.weight_bytes("bfloat16", tp, shards, "fp8_block") - kv_b_copy
    # 1 byte per linear weight, bf16 for the rest, plus one fp32 scale per 128x128 block (< 0.1 %).
    assert 2 * kept + linear < fp8_block < 2 * kept + linear * 1.001
    assert v3.weight_bytes("bfloat16", tp, shards) == 2 * (kept + linear)  # bf16 weights: kv_b is not copied


def _raw() -> dict:
    return json.loads((ROOT / "configs" / "models" / f"{V3}.json").read_text())


@pytest.mark.parametrize(("key", "value", "message"), [
    ("kv_lora_rank", None, "field 'kv_lora_rank': expected a positive integer"),
    ("first_k_dense_replace", 99, "field 'first_k_dense_replace': expected an integer in 0..61"),
    ("n_shared_experts", -1, "field 'n_shared_experts'"),
])
def test_broken_config_is_refused_naming_the_field(tmp_path, key, value, message):
    raw = _raw()
    raw[key] = value
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "m.json").write_text(json.dumps(raw))
    with pytest.raises(PdsimError, match=message):
        load_model("org/m", tmp_path)


def test_estimated_mla_profile(v3):
    hw = get_hardware("H200")
    prof = estimate_profile(hw, v3, "bfloat16", 1)
    assert prof.meta.source == "estimated"
    # Decode at one request over a 131k context reads at least the latent cache once.
    latent_bytes = 131_073 * 576 * 2
    assert prof.attention_decode(1, 131_072) >= latent_bytes / (hw.mem_bw_gbps * 1e3 * MEM_EFF)
    # TP8 shards the heads: per-GPU attention and q_b/o_proj are cheaper than at TP1.
    tp8 = estimate_profile(hw, v3, "bfloat16", 8)
    assert tp8.attention_prefill(4096, 0) < prof.attention_prefill(4096, 0)
    assert tp8.dense["o_proj"](4096) < prof.dense["o_proj"](4096)
    # Prefill recomputes kv_b over the cached prefix: a chunk over a long prefix costs more.
    assert prof.attention_prefill(512, 16_384) > prof.attention_prefill(512, 0)


def test_fp8_block_mla_gemms_read_half_the_weight_bytes(v3):
    hw = get_hardware("H200")
    bf16 = estimate_profile(hw, v3, "bfloat16", 1)
    fp8 = estimate_profile(hw, v3, "bfloat16", 1, "fp8_block")
    # One token: the projections only stream their weights, 1 byte instead of 2: the saving is one
    # byte per weight at the streaming bandwidth (q_a + kv_a + q_b; o_proj).
    per_byte_us = 1 / (hw.mem_bw_gbps * 1e3 * MEM_EFF)
    qkv_weights = H * (1536 + 576) + 1536 * 128 * 192
    assert bf16.dense["qkv_proj"](1) - fp8.dense["qkv_proj"](1) == pytest.approx(qkv_weights * per_byte_us, rel=0.02)
    assert bf16.dense["o_proj"](1) - fp8.dense["o_proj"](1) == pytest.approx(128 * 128 * H * per_byte_us, rel=0.02)
    # An fp8 latent cache halves what decode attention reads at one request over a long context.
    fp8_kv = estimate_profile(hw, v3, "bfloat16", 1, "fp8_block", kv_dtype="fp8")
    assert fp8_kv.attention_decode(1, 131_072) <= fp8.attention_decode(1, 131_072)


def test_gqa_only_profile_sources_refuse_mla(v3, tmp_path):
    from pdsim.errors import ProfileError
    from pdsim.perf.aiconfigurator import build_rows

    with pytest.raises(ProfileError, match="MLA attention is not in aiconfigurator"):
        build_rows(tmp_path, "h200_sxm", v3, 8)
    ops = pytest.importorskip("pdsim.profiler.ops")  # needs torch
    with pytest.raises(PdsimError, match="MLA attention is not profiled"):
        ops.ShardShapes.of(v3, 1)


def test_shared_expert_is_priced_in_the_moe_estimate(v3):
    hw = get_hardware("H200")
    with_shared = MoERoofline(hw, v3, "bfloat16", 1, shared_tp=1)
    assert with_shared.shared_us(4096) > 0
    assert with_shared.shared_us(4096) > MoERoofline(hw, v3, "bfloat16", 1, shared_tp=8).shared_us(4096)
    qwen = MoERoofline(hw, load_model("Qwen/Qwen3-30B-A3B"), "bfloat16", 1)
    assert qwen.shared_us(4096) == 0.0


def test_example_config_runs_to_completion():
    cfg = cluster_config_from_dict(json.loads(EXAMPLE.read_text()), str(EXAMPLE))
    rows = [(1500, 20, 0.0), (300, 40, 0.01), (4000, 10, 0.05), (800, 30, 0.2)]
    res = simulate(cfg, trace(rows), SimOptions())
    assert all(r.status == "finished" for r in res.requests)
    assert all(info.estimated_profile for info in res.infos)
    prefill, *decode = res.instances
    assert len(decode) == 8 and decode[0].dp_group is not None and decode[0].dp_group.lockstep
    v3 = load_model(V3)
    by_id = {i.id: i for i in res.infos}
    rope = v3.rope_cache_bytes("bfloat16")  # vLLM's weights: its rotary cache (YaRN: 4,096 x 40 positions x 64) too
    assert rope == 4096 * 40 * 64 * 2
    decode_weights = v3.weight_bytes("bfloat16", 1, 8, "fp8_block") + rope
    assert by_id[decode[0].id].weights_gb == pytest.approx(decode_weights / GIB)
    assert by_id[prefill.id].weights_gb == pytest.approx((v3.weight_bytes("bfloat16", 8, 8, "fp8_block") + rope) / GIB)
    assert 95 * GIB < v3.weight_bytes("bfloat16", 1, 8, "fp8_block") < 96 * GIB
    assert decode[0].spec.kv_bytes_per_token == 70_272  # bf16 latent cache beside fp8 weights
    # A DP rank's profiling run gathers the 8 ranks' 2048 tokens into its MoE blocks (docs/memory.md).
    from pdsim.perf.memory import activation_peak_bytes

    dp_rank = decode[0].spec
    assert by_id[decode[0].id].activation_gb == pytest.approx(activation_peak_bytes(
        v3, "bfloat16", 1, dp_rank.max_num_batched_tokens, dp_rank.max_num_seqs, dp_size=8) / GIB)
    assert by_id[decode[0].id].activation_gb > 4 * activation_peak_bytes(
        v3, "bfloat16", 1, dp_rank.max_num_batched_tokens, dp_rank.max_num_seqs) / GIB
    assert math.isfinite(max(r.finish_s for r in res.requests))


# DeepSeek-V2-Lite's Hugging Face config (the shape keys): vLLM runs deepseek_v2 and deepseek_v3 as one architecture.
V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
    "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64, "num_experts_per_tok": 6,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": None,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 102400,
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "topk_method": "greedy", "scoring_func": "softmax",
}


def test_deepseek_v2_lite_runs_from_the_model_config_beside_its_cluster_config(tmp_path):
    from pdsim.config import load_cluster_config

    (tmp_path / "model_config.json").write_text(json.dumps(V2_LITE))
    cfg = {"num_nodes": 1, "link_bw": 16, "link_latency": 0, "nodes": [{"num_instances": 1, "instances": [
        {"model_name": "deepseek-ai/DeepSeek-V2-Lite", "hardware": "H100", "npu_mem": {"mem_size": 80, "mem_bw": 3350},
         "pd_type": None, "tp_size": 2}]}]}
    (tmp_path / "cluster_config.json").write_text(json.dumps(cfg))
    config = load_cluster_config(tmp_path / "cluster_config.json")
    lite = load_model("deepseek-ai/DeepSeek-V2-Lite")
    # DeepSeek-V2's paper: 15.7B parameters, 2.4B activated per token (without the input embedding, a lookup).
    assert 15.6e9 < lite.param_count() < 15.8e9
    assert 2.4e9 < lite.active_param_count() - 102400 * 2048 < 2.5e9
    assert lite.mla.q_lora_rank is None and lite.dense_mlp_layers == 1 and lite.moe.shared_intermediate == 2 * 1408
    assert lite.kv_bytes_per_token("bfloat16", tp=2) == 27 * 576 * 2  # the latent, whole on every TP rank
    result = simulate(config, trace([(500, 20, i * 0.2) for i in range(20)]))
    assert all(r.status == "finished" for r in result.requests)


def test_a_model_pdsim_does_not_bundle_gets_an_estimated_profile_from_its_config(tmp_path):
    from click.testing import CliRunner

    from pdsim.cli import cli

    (tmp_path / "config.json").write_text(json.dumps(V2_LITE))
    name = "acme/DeepSeek-V2-Lite-estimate-test"
    res = CliRunner().invoke(cli, ["profile", "estimate", "--hardware", "H100", "--model", name, "--model-config",
                                   str(tmp_path / "config.json"), "--tp", "2", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "H100-SXM" / "acme" / "DeepSeek-V2-Lite-estimate-test" / "bfloat16" / "tp2").is_dir()


def test_a_dp_rank_runs_its_gate_and_shared_expert_on_its_own_tokens(v3):
    # vLLM 0.19 keeps the hidden states from before the all-gather for the shared experts and gates a rank's
    # own tokens: in a DP group of 8 ranks of 128 tokens, those parts cost what 128 tokens cost, not 1024.
    from pdsim.perf.moe_time import ExpertPlacement, MoELayerModel

    hw = get_hardware("H200")
    roof = MoERoofline(hw, v3, "bfloat16", 1, shared_tp=1)
    pairs, active = 1024 * 8 / 8, 32.0
    alone = roof.layer_us(1024, pairs, active)
    assert alone - roof.layer_us(1024, pairs, active, rank_tokens=128) == pytest.approx(
        roof.shared_us(1024) - roof.shared_us(128) + roof.gemm_us(1024, 256, 7168) - roof.gemm_us(128, 256, 7168),
        rel=1e-9)
    assert roof.shared_us(1024) > 2 * roof.shared_us(128)
    layer = MoELayerModel(v3, ExpertPlacement(1, 8, 8), "bfloat16", hw, None)
    assert layer.step_us(1024, 128) < layer.step_us(1024)
