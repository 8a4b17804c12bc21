"""MoE models, the expert layer's time, DP groups in lock step, and the LLMServingSim keys for them."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import simpy

from pdsim.config import cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.errors import ConfigError, PdsimError
from pdsim.hardware import get_hardware
from pdsim.metrics.summary import requests_frame, summarize
from pdsim.models import load_model
from pdsim.perf.estimate import MoERoofline, estimate_profile
from pdsim.perf.moe_time import ExpertPlacement, MoELayerModel, check_placement
from pdsim.perf.predictor import StepTimePredictor
from pdsim.perf.profile import read_profile
from tests.helpers import trace

QWEN_MOE = "Qwen/Qwen3-30B-A3B-Instruct-2507"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CASE = SHARED / "calibration" / "llmservingsim-rtxpro6000-qwen3-30b-a3b"
KV_CSV = SHARED / "calibration" / "vllm-kv-capacity" / "vllm_kv_capacity_h100.csv"
needs_case = pytest.mark.skipif(not CASE.is_dir(), reason="needs ../shared/data (the measured MoE run)")
GIB = 1024**3


def _instance(**knobs) -> dict:
    return {
        "model_name": QWEN_MOE, "hardware": "RTXPRO6000",
        "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0, "mem_util": 0.9},
        "tp_size": 1, "pd_type": None, **knobs,
    }


def _cluster(*instances: dict, **top) -> dict:
    return {"num_nodes": 1, "link_bw": 16, "link_latency": 20000,
            "nodes": [{"num_instances": len(instances), "instances": list(instances)}], **top}


# ---------------------------------------------------------------- model shapes


def test_total_and_active_parameters_match_the_published_counts():
    qwen, mixtral = load_model(QWEN_MOE), load_model("mistralai/Mixtral-8x7B-v0.1")
    # Model cards: Qwen3-30B-A3B 30.5B total, 3.3B activated; Mixtral 8x7B 46.7B total, 12.9B active.
    assert qwen.param_count() == pytest.approx(30.5e9, rel=3e-3)
    assert qwen.active_param_count() == pytest.approx(3.3e9, rel=2e-2)
    assert mixtral.param_count() == pytest.approx(46.7e9, rel=3e-3)
    assert mixtral.active_param_count() == pytest.approx(12.9e9, rel=2e-2)
    assert qwen.moe.num_experts == 128 and qwen.moe.top_k == 8 and qwen.moe.moe_layers == 48
    assert load_model("Qwen/Qwen3-8B").moe is None


@pytest.mark.skipif(not KV_CSV.is_file(), reason="needs ../shared/data (vLLM start-up logs)")
def test_weight_bytes_per_gpu_match_vllm_startup_logs():
    rows = {r["model_id"]: r for r in csv.DictReader(KV_CSV.open())}
    qwen = rows["Qwen/Qwen3-30B-A3B"]
    mixtral = rows["mistralai/Mixtral-8x7B-Instruct-v0.1"]
    got = load_model("Qwen/Qwen3-30B-A3B").weight_bytes("bfloat16", 1) / GIB
    assert got == pytest.approx(float(qwen["weights_gib"]), abs=0.02)
    got = load_model("mistralai/Mixtral-8x7B-v0.1").weight_bytes("bfloat16", int(mixtral["tensor_parallel_size"]))
    assert got / GIB == pytest.approx(float(mixtral["weights_gib"]), abs=0.02)


def test_experts_split_by_ep_the_rest_replicated():
    m = load_model(QWEN_MOE)
    routed = m.moe.routed_params(m.hidden_size) * 2
    whole = m.weight_bytes("bfloat16", 1)
    assert whole - m.weight_bytes("bfloat16", 1, expert_shards=2) == routed // 2
    assert whole - m.weight_bytes("bfloat16", 1, expert_shards=4) == routed * 3 // 4


def test_expected_active_experts_matches_uniform_routing():
    moe = load_model(QWEN_MOE).moe
    assert moe.expected_active_experts(1) == pytest.approx(8)
    assert moe.expected_active_experts(10_000) == pytest.approx(128)
    assert moe.expected_active_experts(1, local_experts=64) == pytest.approx(4)
    rng = np.random.default_rng(0)
    for tokens in (2, 8, 32, 100):
        seen = [len({e for _ in range(tokens) for e in rng.choice(128, 8, replace=False)}) for _ in range(400)]
        assert np.mean(seen) == pytest.approx(moe.expected_active_experts(tokens), rel=0.02)


def test_unsupported_moe_shapes_are_refused(tmp_path):
    raw = json.loads((Path(__file__).resolve().parents[1] / "configs/models/Qwen/Qwen3-30B-A3B.json").read_text())
    raw["num_experts_per_tok"] = 200
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "m.json").write_text(json.dumps(raw))
    with pytest.raises(PdsimError, match="num_experts_per_tok"):
        load_model("org/m", tmp_path)
    raw["num_experts_per_tok"], raw["shared_expert_intermediate_size"] = 8, 1024
    (tmp_path / "org" / "s.json").write_text(json.dumps(raw))
    with pytest.raises(PdsimError, match="shared experts are not modelled"):
        load_model("org/s", tmp_path)


# Qwen1.5-MoE-A2.7B's Hugging Face config (the shape keys): 60 routed experts of 1408 (4 per token) and one
# gated shared expert of 5632 in every layer; q, k, v biases as in Qwen2.
QWEN15_MOE = {
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
    "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
    "num_experts_per_tok": 4, "decoder_sparse_step": 1, "mlp_only_layers": [], "num_hidden_layers": 24,
    "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 8192, "vocab_size": 151936,
    "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 32768, "torch_dtype": "bfloat16",
}


def test_qwen2_moe_with_its_gated_shared_expert(tmp_path):
    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "Qwen1.5-MoE-A2.7B.json").write_text(json.dumps(QWEN15_MOE))
    m = load_model("Qwen/Qwen1.5-MoE-A2.7B", tmp_path)
    assert (m.moe.num_experts, m.moe.top_k, m.moe.moe_layers, m.moe.shared_intermediate) == (60, 4, 24, 5632)
    assert m.moe.shared_expert_gate and m.qkv_bias and not m.has_qk_norm
    assert 14.3e9 < m.param_count() < 14.35e9  # published: 14.3B
    no_gate = m.moe.non_expert_mlp_params(2048, 1) - 2048  # the gate is [hidden -> 1] per layer
    assert no_gate == 2048 * 60 + 3 * 2048 * 5632
    hw = get_hardware("H100")
    roof = MoERoofline(hw, m, "bfloat16", 1, shared_tp=1)
    assert roof.shared_us(256) > 0
    from pdsim.models import use_model_file

    use_model_file("Qwen/Qwen1.5-MoE-A2.7B", tmp_path / "Qwen" / "Qwen1.5-MoE-A2.7B.json")  # as beside a config
    cfg = cluster_config_from_dict(_cluster({**_instance(), "model_name": "Qwen/Qwen1.5-MoE-A2.7B", "hardware": "H100",
                                             "npu_mem": {"mem_size": 80, "mem_bw": 3350}}))
    result = simulate(cfg, trace([(300, 10, i * 0.05) for i in range(10)]), SimOptions())
    assert all(r.status == "finished" for r in result.requests)


# allenai/OLMoE-1B-7B-0924's Hugging Face config (its keys as published): 64 experts of 1024 (8 per token) in every
# layer, no shared expert, q/k norms over the whole projection, norm_topk_prob false.
OLMOE = {
    "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_size": 2048, "intermediate_size": 1024,
    "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64,
    "num_experts_per_tok": 8, "vocab_size": 50304, "max_position_embeddings": 4096, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "norm_topk_prob": False,
    "clip_qkv": None, "hidden_act": "silu", "attention_bias": False, "output_router_logits": False,
    "router_aux_loss_coef": 0.01, "pad_token_id": 1, "eos_token_id": 50279,
}


def _olmoe(tmp_path) -> str:
    from pdsim.models import use_model_file

    (tmp_path / "allenai").mkdir(exist_ok=True)
    path = tmp_path / "allenai" / "OLMoE-1B-7B-0924.json"
    path.write_text(json.dumps(OLMOE))
    use_model_file("allenai/OLMoE-1B-7B-0924", path)
    return "allenai/OLMoE-1B-7B-0924"


def test_olmoe_weights_and_kv_follow_vllms_modules(tmp_path):
    m = load_model(_olmoe(tmp_path))
    assert (m.moe.num_experts, m.moe.top_k, m.moe.moe_layers, m.moe.shared_intermediate) == (64, 8, 16, 0)
    assert m.dense_mlp_layers == 0 and m.has_qk_norm and m.whole_qk_norm
    # Model card: 6.9 B total, 1.3 B active.
    assert m.param_count() == pytest.approx(6.9e9, rel=3e-3)
    assert m.active_param_count() == pytest.approx(1.3e9, rel=2e-2)
    # vLLM 0.19 olmoe.py, per GPU at TP t: VocabParallelEmbedding and ParallelLMHead (50304 rows, a multiple of 64)
    # split t ways; per layer QKVParallelLinear and RowParallelLinear split t ways, q_norm (2048) and k_norm (2048),
    # both RMSNorms held whole, two layer norms, the ReplicatedLinear gate (2048 x 64) and the FusedMoE experts
    # (64 x gate, up, down of 2048 x 1024) split over the expert shards; the final norm.
    h, inter, experts, vocab, layers = 2048, 1024, 64, 50304, 16

    def by_hand(tp: int) -> int:
        layer = h * 3 * h // tp + h * h // tp + 2 * h + 2 * h + h * experts + experts * 3 * h * inter // tp
        return 2 * (2 * vocab * h // tp + layers * layer + h)

    assert m.weight_bytes("bfloat16", 1) == by_hand(1) == 13_838_323_712  # 12.89 GiB
    assert m.weight_bytes("bfloat16", 2) == by_hand(2)
    # KV: 16 layers x K and V x 16 heads x 128 x 2 bytes (hidden / heads: OlmoeAttention's head_dim).
    assert m.kv_bytes_per_token("bfloat16", 1) == 131_072 and m.kv_bytes_per_token("bfloat16", 2) == 65_536
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "m.json").write_text(json.dumps({**OLMOE, "head_dim": 64}))
    with pytest.raises(PdsimError, match="field 'head_dim': 64, but vLLM's OLMoE attention takes"):
        load_model("org/m", tmp_path)


def test_olmoe_runs_with_an_estimated_profile(tmp_path):
    name = _olmoe(tmp_path)
    rows = [(800, 100, i * 0.1) for i in range(20)]
    for tp in (1, 2):
        cfg = cluster_config_from_dict(_cluster({**_instance(tp_size=tp), "model_name": name, "hardware": "H100",
                                                 "npu_mem": {"mem_size": 80, "mem_bw": 3350}}))
        res = simulate(cfg, trace(rows), SimOptions())
        assert all(r.status == "finished" for r in res.requests)
        notes = res.instances[0].predictor.notes
        assert any(n.startswith("MoE expert layers estimated from hardware specs") for n in notes)
        # Under TP vLLM gathers q and k for their whole-projection norms: the all-gathers are not priced, and said.
        assert any("vLLM all-gathers q and k over the TP group" in n for n in notes) is (tp > 1)
        if tp == 1:
            assert res.infos[0].weights_gb == pytest.approx(12.89, abs=0.005)
            tpot = [(r.finish_s - r.first_token_s) / 99 for r in res.requests]
            assert 1e-3 < min(tpot) and max(tpot) < 20e-3  # a 1.3 B-active model on one H100, 1 to 9 decodes


def test_placement_checks():
    m = load_model(QWEN_MOE)
    assert check_placement(m, ExpertPlacement(tp=1, ep_size=2, dp_size=2)) is None
    assert check_placement(m, ExpertPlacement(tp=1, ep_size=3, dp_size=3)) is None  # 43, 43, 42: as vLLM runs it
    assert "ep_size 256 is more than the 128 experts" in check_placement(m, ExpertPlacement(1, 256, 256))
    assert "multiple of the DP group size" in check_placement(m, ExpertPlacement(tp=2, ep_size=2, dp_size=4))
    assert "must divide tp_size" in check_placement(m, ExpertPlacement(tp=1, ep_size=4, dp_size=2))
    p = ExpertPlacement(tp=2, ep_size=2, dp_size=2)  # experts EP-split over the group, TP-split in it
    assert (p.expert_tp, p.expert_shards, p.local_experts(128)) == (2, 4, 64)
    # ep_size 1 in a DP group: vLLM without expert parallelism, every expert TP-split over all the group's GPUs.
    flat = ExpertPlacement(tp=2, ep_size=1, dp_size=2)
    assert flat.over_group and (flat.expert_tp, flat.expert_shards, flat.local_experts(128)) == (4, 4, 128)
    assert check_placement(m, flat) is None
    assert not ExpertPlacement(tp=2, ep_size=1, dp_size=1).over_group
    assert "cannot be split 5 ways" in check_placement(m, ExpertPlacement(tp=1, ep_size=1, dp_size=5))


def test_uneven_expert_splits_follow_vllms_determine_expert_map():
    # vLLM 0.19 fused_moe/layer.py determine_expert_map: the first E mod ep ranks hold one expert more.
    p = ExpertPlacement(tp=1, ep_size=8, dp_size=8)
    assert [p.gpu_experts(60, r) for r in range(8)] == [8, 8, 8, 8, 7, 7, 7, 7]
    assert p.local_experts(60) == 8 and p.local_experts(60, dp_rank=3) == 8 and p.local_experts(60, dp_rank=4) == 7
    # DP 3 x TP 2 with EP over all 6 GPUs: DP rank d holds EP ranks 2d and 2d + 1 (FusedMoEParallelConfig.make).
    wide = ExpertPlacement(tp=2, ep_size=6, dp_size=3)
    assert [wide.local_experts(64, d) for d in range(3)] == [11, 11, 10]
    assert wide.uneven(64) and not p.uneven(64)
    # An even split keeps the GPU count as its weight share; an uneven one gives each rank its own experts' bytes.
    m = load_model(QWEN_MOE)
    assert p.weight_shards(m.moe) == 8 and p.weight_shards(None) == 8
    whole, routed = m.weight_bytes("bfloat16", 1), m.moe.routed_params(m.hidden_size) * 2
    split = ExpertPlacement(tp=1, ep_size=3, dp_size=3)  # 128 over 3: 43, 43, 42
    for rank, local in ((0, 43), (2, 42)):
        held = m.weight_bytes("bfloat16", 1, split.weight_shards(m.moe, rank))
        assert whole - held == routed - routed * local // 128


def test_a_dp_group_whose_experts_split_unevenly_runs_each_rank_on_its_own_experts(tmp_path):
    # Qwen1.5-MoE's 60 experts over DP 8 + EP: refused before, though vLLM runs it (8, 8, 8, 8, 7, 7, 7, 7).
    from pdsim.engine.build import build_instances
    from pdsim.models import use_model_file

    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "Qwen1.5-MoE-A2.7B.json").write_text(json.dumps(QWEN15_MOE))
    use_model_file("Qwen/Qwen1.5-MoE-A2.7B", tmp_path / "Qwen" / "Qwen1.5-MoE-A2.7B.json")
    rank = {**_instance(ep_size=8, dp_group="A"), "model_name": "Qwen/Qwen1.5-MoE-A2.7B"}
    cfg = cluster_config_from_dict(_cluster(*[rank] * 8))
    instances, infos = build_instances(simpy.Environment(), cfg, SimOptions(), "x.json")
    m = load_model("Qwen/Qwen1.5-MoE-A2.7B")
    one_expert_gib = m.moe.moe_layers * m.moe.expert_params(m.hidden_size) * 2 / GIB
    # Ranks 0-3 hold 8 experts, ranks 4-7 7: one expert's bytes apart, and the lighter ranks get the KV it frees.
    assert infos[0].weights_gb - infos[4].weights_gb == pytest.approx(one_expert_gib)
    assert len({i.weights_gb for i in infos[:4]}) == 1 and len({i.weights_gb for i in infos[4:]}) == 1
    assert infos[4].num_kv_blocks > infos[0].num_kv_blocks
    # Every rank waits for the GPU holding 8 in each MoE layer: all are timed at it, and the run says so.
    assert {inst.predictor.moe_layer.local_experts for inst in instances} == {8}
    said = "ep_size 8: the 60 experts split 8, 8, 8, 8, 7, 7, 7, 7"
    assert any(n.startswith(said) for n in instances[0].predictor.notes)
    res = simulate(cfg, trace([(300, 10, i * 0.05) for i in range(16)]), SimOptions())
    assert all(r.status == "finished" for r in res.requests)
    # validate --kv-capacity measured gives all ranks the one recorded figure: it says so for such a group alone.
    from pdsim.validate.recorded import _uneven_dp_experts

    even = {**rank, "ep_size": 4}
    assert _uneven_dp_experts(cfg) and not _uneven_dp_experts(cluster_config_from_dict(_cluster(*[even] * 4)))


# ---------------------------------------------------------------- expert layer time


@needs_case
def test_moe_table_reproduces_its_rows_and_interpolates():
    profile = read_profile(CASE / "profile", tp=1)
    rows = [tuple(float(v) for v in r.values()) for r in csv.DictReader((CASE / "profile/tp1/moe.csv").open())]
    for tokens, active, us in rows:
        assert profile.moe(tokens, active) == pytest.approx(us)
    mid = profile.moe(96, 64)  # between the 64- and 128-token rows
    assert profile.moe(64, 64) < mid < profile.moe(128, 64)
    assert "gate_up_proj" not in profile.dense  # a MoE profile has no dense MLP


@needs_case
def test_predictor_prices_moe_layers_from_the_table():
    model = load_model(QWEN_MOE)
    profile = read_profile(CASE / "profile", tp=1)
    hw = get_hardware("RTXPRO6000")
    whole = StepTimePredictor(profile, model, 1, hw, moe_placement=ExpertPlacement(1, 1, 1))
    external = StepTimePredictor(profile, model, 1, hw, moe_placement=ExpertPlacement(1, 1, 1), moe_external=True)
    for tokens in (1, 37, 512):
        moe_us = 48 * profile.moe(tokens, model.moe.expected_active_experts(tokens))
        diff_us = (whole.step_time_s(((tokens, 0),), 0, 0) - external.step_time_s(((tokens, 0),), 0, 0)) * 1e6
        assert diff_us == pytest.approx(moe_us, rel=1e-9)
    assert not whole.estimated and not any("estimated" in n for n in whole.notes)


@needs_case
def test_a_tp2_instance_borrows_the_tp1_moe_table():
    # LLMServingSim writes moe.csv under tp1/ only; it times whole experts on one GPU.
    model = load_model(QWEN_MOE)
    hw = get_hardware("RTXPRO6000")
    tp1, tp2 = read_profile(CASE / "profile", tp=1), read_profile(CASE / "profile", tp=2)
    assert not (CASE / "profile/tp2/moe.csv").exists() and tp2.moe is not None and tp2.moe.measured_tp == 1
    ep = StepTimePredictor(tp2, model, 2, hw, moe_placement=ExpertPlacement(2, ep_size=2))
    assert not ep.estimated and any("tp1/moe.csv (no moe.csv for tp=2" in n for n in ep.notes)
    for tokens in (1, 64, 2048):  # 64 whole experts per GPU: the table at the same token-expert pairs
        active = model.moe.expected_active_experts(tokens, 64)
        assert ep.moe_layer.experts_us(tokens) == pytest.approx(tp1.moe(tokens / 2, active), rel=1e-12)
    split = StepTimePredictor(tp2, model, 2, hw, moe_placement=ExpertPlacement(2, ep_size=1))
    assert any("scaled by the hardware-spec estimate" in n for n in split.notes)
    for tokens in (1, 64, 2048):  # 128 experts of half width: the table's time, less the narrower GEMMs
        whole = tp1.moe(tokens, model.moe.expected_active_experts(tokens, 128))
        assert 0.3 * whole < split.moe_layer.experts_us(tokens) < whole


@needs_case
def test_moe_roofline_estimate_against_the_measured_table():
    model = load_model(QWEN_MOE)
    roof = MoERoofline(get_hardware("RTXPRO6000"), model, "bfloat16", 1)
    ratios = np.array([roof.layer_us(t, t * 8, a) / us for t, a, us in (
        tuple(float(v) for v in r.values()) for r in csv.DictReader((CASE / "profile/tp1/moe.csv").open()))])
    # Constants fitted on H200 kernels (docs/moe.md "Estimated expert time"): this held-out table gives
    # ratio 1.06-1.95, median +17 %, worst at 1-16 tokens on 8 experts (the fixed cost).
    assert 1.0 < ratios.min() and ratios.max() < 2.0
    assert np.median(np.abs(ratios - 1)) < 0.2


def test_estimated_moe_layers_are_said_so():
    model = load_model(QWEN_MOE)
    hw = get_hardware("RTXPRO6000")
    pred = StepTimePredictor(estimate_profile(hw, model, "bfloat16", 1), model, 1, hw)
    assert pred.estimated and any("MoE expert layers estimated" in n for n in pred.notes)
    # The dense MLP ops (of intermediate_size 6144) must not be charged on top of the experts.
    layer = MoELayerModel(model, ExpertPlacement(1, 1, 1), "bfloat16", hw, None)
    no_moe = StepTimePredictor(estimate_profile(hw, model, "bfloat16", 1), model, 1, hw, moe_external=True)
    step = pred.step_time_s(((64, 0),), 0, 0) - no_moe.step_time_s(((64, 0),), 0, 0)
    assert step * 1e6 == pytest.approx(48 * layer.layer_us(64), rel=1e-9)


# ---------------------------------------------------------------- DP groups


def _dp_run(rows, **opts):
    cfg = cluster_config_from_dict(_cluster(_instance(ep_size=2, dp_group="A"), _instance(ep_size=2, dp_group="A")))
    return simulate(cfg, trace(rows), SimOptions(**opts))


def test_a_dp_group_of_other_than_two_ranks_is_told_its_dispatch_combine_was_checked_on_two():
    # docs/moe.md "What the agreement rests on": the one measured MoE run is DP 2; DP 4 could be 14% apart.
    def link_notes(res):
        said = "MoE dispatch/combine modelled"
        return {n for inst in res.instances for n in inst.predictor.notes if n.startswith(said)}

    two = link_notes(_dp_run([(300, 5, 0.0)]))
    four = link_notes(simulate(cluster_config_from_dict(_cluster(*[_instance(ep_size=4, dp_group="A")] * 4)),
                               trace([(300, 5, 0.0)]), SimOptions()))
    assert len(two) == len(four) == 1 and "checked on" not in next(iter(two))
    assert next(iter(four)).endswith(
        "not measured, and checked on a DP group of 2 ranks only (this one has 4): two readings that both fit that "
        "run put a DP 4 group's TPOT 14% apart (docs/moe.md, \"What the agreement rests on\")")


def test_dp_group_runs_dummy_steps_until_its_every_32_steps_check():
    # vLLM's DPEngineCoreProc asks whether any rank has requests only every 32 steps of a wave.
    first_finish_s = _dp_run([(300, 5, 0.0)]).requests[0].finish_s
    res = _dp_run([(300, 5, 0.0), (300, 5, first_finish_s + 1e-4), (300, 5, 100.0)])
    group = res.instances[0].dp_group
    assert group.num_steps == 64  # two waves: the first, then the one the request at 100 s starts
    assert all(r.status == "finished" for r in res.requests)
    waited_s = [r.first_scheduled_s - r.arrival_s for r in res.requests]
    # Sent during the first wave's dummy steps, a request waits for the one in progress; at 100 s the
    # group has stopped, and the request is scheduled at once.
    assert waited_s[1] > 0 and waited_s[2] == 0


def test_an_eager_dp_group_runs_its_ranks_unpadded():
    # vLLM pads a DP group's ranks to a CUDA-graph capture size; enforce_eager captures none.
    def group(**knobs):
        cfg = cluster_config_from_dict(_cluster(*[_instance(ep_size=2, dp_group="A", **knobs)] * 2))
        res = simulate(cfg, trace([(300, 5, 0.0)]), SimOptions())
        return res.instances[0].dp_group, res.instances[0].predictor.notes

    graphs, _ = group()
    eager, notes = group(enforce_eager=True)
    assert graphs._counts([(3, 3), (1, 1)]) == [4, 4] and eager._counts([(3, 3), (1, 1)]) == [3, 1]
    # Its step times are estimated, not measured eager: the launches they leave out are said.
    assert any(n.startswith("enforce_eager: the engine launches") for n in notes)


def test_a_dp_group_layout_llmservingsim_refuses_is_said(tmp_path, capsys):
    from pdsim.config import load_cluster_config

    for ep, said in ((None, True), (1, True), (2, False)):
        knobs = {} if ep is None else {"ep_size": ep}
        path = tmp_path / "c.json"
        path.write_text(json.dumps(_cluster(*[_instance(dp_group="A", **knobs)] * 2)))
        load_cluster_config(path)
        err = capsys.readouterr().err
        assert ("dp_group 'A': ep_size 1 over its 2 members, which LLMServingSim refuses" in err) is said


def test_link_lists_must_give_one_value_per_dimension_of_a_dp_topology():
    # LLMServingSim's topology with DP groups is [tp, dp] ([tp, pp, dp] with stages); a list of another length is
    # an error there, and read here it would price the wrong links.
    group = [_instance(ep_size=2, dp_group="A")] * 2
    assert cluster_config_from_dict(_cluster(*group, link_bw=[128, 16], link_latency=500)).link_bw == 16
    msg = _config_error(_cluster(*group, link_bw=[128, 64, 16]))
    assert msg.endswith("link_bw: 3 values, but a config with DP groups has 2 topology dimensions, innermost first "
                        "(tp, dp): give one value per dimension, or one number for all")
    # Without DP groups the same dimensions, the outermost the link between instances, or one value for all: a
    # value no dimension reads is refused, not left out without a word.
    single = [_instance(tp_size=2)] * 2
    for given in ([16], [128, 16]):
        assert cluster_config_from_dict(_cluster(*single, link_bw=given)).link_bw == 16
    for given, n in (([1, 2, 3, 16], 4), ([128, 64, 16], 3)):
        assert _config_error(_cluster(*single, link_latency=given)).endswith(
            f"link_latency: {n} values, but pdsim reads one value for every link, or 2 topology dimensions, "
            "innermost first (tp, between instances): give one value per dimension, or one number for all")
    staged = [_instance(tp_size=2, pp_size=2)] * 2
    assert cluster_config_from_dict(_cluster(*staged, link_bw=[128, 64, 16])).link_bw == 16


def test_dp_group_steps_in_lock_step_with_dummy_batches():
    res = _dp_run([(300, 40, 0.0), (2000, 5, 0.0)])
    assert all(r.status == "finished" for r in res.requests)
    a, b = res.instances
    group = a.dp_group
    assert group is b.dp_group and group.lockstep
    # Both requests arrive together: the group router sends them to different ranks.
    assert {r.prefill_instance for r in res.requests} == {a.id, b.id}
    # Every rank takes part in every group step: its own steps plus its dummy ones.
    for inst in (a, b):
        assert inst.stats.steps + group.dummy_steps[inst.id] == group.num_steps
    assert sum(group.dummy_steps.values()) > 0  # the short request's rank idled while the other decoded
    # Weights per GPU: the dense part plus half of the experts (ep_size 2 over the group).
    assert res.infos[0].weights_gb == pytest.approx(
        load_model(QWEN_MOE).weight_bytes("bfloat16", 1, expert_shards=2) / GIB)


def test_dp_group_step_lasts_as_long_as_the_slowest_rank():
    # One long prefill on one rank: the other rank's decode steps wait for it.
    alone = _dp_run([(50, 30, 0.0)])
    shared = _dp_run([(50, 30, 0.0), (2000, 2, 0.001)])
    r_alone, r_shared = alone.requests[0], shared.requests[0]
    assert r_shared.finish_s - r_shared.first_token_s > r_alone.finish_s - r_alone.first_token_s


def test_dp_ranks_pad_to_the_largest_cuda_graph_size_when_all_run_graphs():
    from types import SimpleNamespace

    import simpy

    from pdsim.engine.dp_group import DPGroup
    from pdsim.perf.cudagraphs import cudagraph_sizes, graph_sizes_run

    # vLLM 0.19's default capture sizes at max_num_seqs 128, 2048 batched tokens: 1, 2, 4, 8..248 by 8, 256.
    sizes = cudagraph_sizes(128, 2048)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-2:] == [248, 256] and len(sizes) == 35
    assert cudagraph_sizes(256, 8192)[-1] == 512 and cudagraph_sizes(4, 8192) == [1, 2, 4, 8]
    # Given sizes are taken up to the token budget (sorted, once each); a given largest size caps the defaults.
    assert cudagraph_sizes(128, 2048, sizes=[64, 8, 4096, 8, 1]) == [1, 8, 64]
    assert cudagraph_sizes(128, 2048, max_size=20) == [1, 2, 4, 8, 16]

    def group(decode_only=False):  # the sizes a step can run at, as the instance's spec holds them (build.py)
        spec = SimpleNamespace(max_num_seqs=128, max_num_batched_tokens=2048,
                               cudagraph_sizes=graph_sizes_run(sizes, decode_only, 128),
                               cudagraph_decode_only=decode_only)
        return DPGroup(simpy.Environment(), "A", [SimpleNamespace(id=f"r{i}", spec=spec) for i in range(2)], None)

    # Each rank's count from its (new tokens, requests): the experts see their sum, its router gate and shared experts
    # its own.
    assert group()._counts([(61, 61), (3, 3)]) == [64, 64]  # both under 256: padded to 64, then to the largest
    assert group()._counts([(1, 1), (1, 1)]) == [1, 1]  # two dummy batches
    # One rank above the largest graph: the group runs without graphs, each rank at its own count, the dispatcher's
    # padded one where it found a graph (vLLM keeps that count and runs it eagerly).
    assert group()._counts([(300, 300), (3, 3)]) == [300, 4]
    assert group()._counts([(61, 32), (3, 3)]) == [64, 64]  # FULL_AND_PIECEWISE: prefills run graphs too
    # FULL_DECODE_ONLY: graphs for batches of one token per request, at most max_num_seqs.
    assert group(decode_only=True)._counts([(61, 61), (3, 3)]) == [64, 64]
    assert group(decode_only=True)._counts([(61, 32), (3, 3)]) == [61, 4]  # rank 0 prefills: no graph there
    assert group(decode_only=True)._counts([(130, 130), (3, 3)]) == [130, 4]  # 136 would be over max_num_seqs



def test_a_dp_groups_ranks_run_their_own_layers_at_the_groups_padded_size():
    """vLLM 0.19 pads every rank to the largest rank's capture size (dp_utils.py `_post_process_dp_padding`), its
    GEMMs, norms and TP collectives too, not only the MoE layers; when some rank's step has no graph, each rank keeps
    its own dispatcher's count."""
    from types import SimpleNamespace

    import simpy

    from pdsim.engine.dp_group import DPGroup
    from pdsim.engine.step_plan import StepPlan
    from pdsim.perf.cudagraphs import cudagraph_sizes

    seen: dict[str, int | None] = {}

    def member(name):
        def step_time_s(chunks, n_decode, kv_sum, kv_max=None, graph_tokens=None):
            seen[name] = graph_tokens
            return 1e-3

        def dummy_step_s(graph_tokens=None):
            seen[name] = graph_tokens
            return 1e-4

        spec = SimpleNamespace(cudagraph_sizes=tuple(cudagraph_sizes(128, 2048)), cudagraph_decode_only=False)
        return SimpleNamespace(id=name, spec=spec, predictor=SimpleNamespace(step_time_s=step_time_s,
                                                                           dummy_step_s=dummy_step_s))

    moe = SimpleNamespace(step_us=lambda tokens, most: 0.0)
    group = DPGroup(simpy.Environment(), "A", [member("r0"), member("r1")], moe)

    def price(plan0, plan1):
        group._plans = {"r0": plan0, "r1": plan1}
        group._price()
        return seen["r0"], seen["r1"]

    assert price(StepPlan(n_decode=61), StepPlan(n_decode=3)) == (64, 64)
    assert price(StepPlan(n_decode=61), StepPlan()) == (64, 64)  # the idle rank's dummy batch too
    assert price(StepPlan(), StepPlan()) == (1, 1)
    # A rank over the largest graph (256) runs eagerly, so the group pads to no common size: each runs its own
    # dispatcher's count, 61 decodes at 64.
    assert price(StepPlan(prefill=[(None, 297)], prefill_prefix=[0], n_decode=3), StepPlan(n_decode=61)) == (300, 64)


def test_cuda_graph_settings_decide_a_dp_groups_padding():
    def padded(**knobs):
        cfg = cluster_config_from_dict(_cluster(*[_instance(ep_size=2, dp_group="A", **knobs)] * 2))
        return simulate(cfg, trace([(300, 5, 0.0)]), SimOptions()).instances[0].dp_group._counts([(3, 3), (1, 1)])

    assert padded() == [4, 4]
    assert padded(cudagraph_capture_sizes=[2, 6]) == [6, 6]
    assert padded(max_cudagraph_capture_size=2) == [3, 1]  # rank 0 above the largest graph, rank 1 at its own 1
    assert padded(cudagraph_mode="none") == [3, 1]  # vLLM takes the mode's name in any case
    assert padded(cudagraph_mode="FULL_DECODE_ONLY") == [4, 4]
    # Sizes above the token budget are dropped, as vLLM drops them: none left, no step runs a graph, said.
    cfg = cluster_config_from_dict(_cluster(*[_instance(ep_size=2, dp_group="A", cudagraph_capture_sizes=[4096])] * 2))
    res = simulate(cfg, trace([(300, 5, 0.0)]), SimOptions())
    assert res.instances[0].dp_group._counts([(3, 3), (1, 1)]) == [3, 1]
    assert "cudagraph_capture_sizes: none at or below max_num_batched_tokens 2,048, which vLLM drops, so no step " \
           "runs a CUDA graph" in res.instances[0].predictor.notes
    msg = _config_error(_cluster(_instance(cudagraph_capture_sizes=[8, 16, 4096], max_cudagraph_capture_size=4096)))
    assert msg.endswith("max_cudagraph_capture_size 4096 is not the largest of cudagraph_capture_sizes (16, of those "
                        "up to max_num_batched_tokens 2048): give one of the two, or both agreeing, as vLLM needs")
    assert "cudagraph_mode" in _config_error(_cluster(_instance(cudagraph_mode="FULL_ONLY")))
    assert "expected token counts from 1" in _config_error(_cluster(_instance(cudagraph_capture_sizes=[0, 8])))
    msg = _config_error(_cluster(_instance(ep_size=2, dp_group="A"),
                                 _instance(ep_size=2, dp_group="A", cudagraph_mode="NONE")))
    assert 'dp_group "A": n0.i1 has cudagraph_mode "NONE", but n0.i0 has null' in msg


def test_dense_dp_group_is_routed_as_one_but_not_synchronised():
    inst = {"model_name": "meta-llama/Llama-3.1-8B", "hardware": "RTXPRO6000",
            "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_util": 0.9}, "tp_size": 1, "dp_group": "D"}
    cfg = cluster_config_from_dict(_cluster(inst, dict(inst)))
    res = simulate(cfg, trace([(100, 10, 0.0), (100, 10, 0.0)]), SimOptions())
    assert {r.prefill_instance for r in res.requests} == {"n0.i0", "n0.i1"}
    assert all(i.dp_group is None for i in res.instances)


# ---------------------------------------------------------------- config keys


def _config_error(raw) -> str:
    with pytest.raises(ConfigError) as exc:
        cluster_config_from_dict(raw, "x.json")
    return str(exc.value)


def test_ep_and_dp_group_checks():
    assert "ep_size 2 is more than tp_size 1" in _config_error(_cluster(_instance(ep_size=2)))
    assert "ep_size 3 does not divide tp_size 4" in _config_error(_cluster(_instance(tp_size=4, ep_size=3)))
    assert "ep_size 3 is more than tp_size 1" in _config_error(_cluster(_instance(ep_size=3)))
    msg = _config_error(_cluster(_instance(ep_size=2, dp_group="A"), _instance(ep_size=4, dp_group="A")))
    assert 'dp_group "A": n0.i1 has ep_size 4' in msg
    msg = _config_error(_cluster(_instance(ep_size=4, dp_group="A"), _instance(ep_size=4, dp_group="A")))
    assert "must divide tp_size=1" in msg
    msg = _config_error(_cluster(_instance(ep_size=2, dp_group="A"),
                                 _instance(ep_size=2, dp_group="A", quantization="fp8")))
    # The ranks of one engine share its weights' format.
    assert 'dp_group "A": n0.i1 has quantization "fp8", but n0.i0 has null' in msg
    msg = _config_error(_cluster(_instance(ep_size=2, dp_group="A"),
                                 _instance(ep_size=2, dp_group="A", enforce_eager=True)))
    assert 'dp_group "A": n0.i1 has enforce_eager true, but n0.i0 has false' in msg  # one engine's arguments


def test_a_tp_moe_instance_without_ep_size_says_it_runs_llmservingsims_default_not_vllms():
    # LLMServingSim's ep_size defaults to tp_size; vLLM without --enable-expert-parallel splits every expert by TP.
    from pdsim.metrics.summary import profile_notes

    def notes(*instances):
        res = simulate(cluster_config_from_dict(_cluster(*instances)), trace([(100, 4, 0.0)]), SimOptions())
        return [n for n in profile_notes(res) if "without ep_size" in n]

    said = notes(_instance(tp_size=2), _instance(tp_size=2))
    # Once, in words that do not change with the layout, so a sweep's runs say it once too.
    assert said == notes(_instance(tp_size=4)) == [
        "MoE instances of TP > 1 without ep_size run ep_size = tp_size, LLMServingSim's default (expert "
        "parallelism); vLLM's default, without --enable-expert-parallel, splits every expert by TP instead "
        "(fused_moe/config.py FusedMoEParallelConfig.make): the instance key ep_size: 1 replays that"]
    assert notes(_instance(tp_size=2, ep_size=2)) == notes(_instance(tp_size=2, ep_size=1)) == []
    assert notes(_instance()) == []  # TP 1: ep_size 1 either way


def test_expert_parallelism_asked_of_a_dense_model_is_said_to_change_nothing():
    # vLLM's --enable-expert-parallel is a no-op for a model without experts: run, and said, not silently dropped.
    dense = dict(model_name="meta-llama/Llama-3.1-8B", ep_size=2, dp_group="A")
    res = simulate(cluster_config_from_dict(_cluster(_instance(**dense), _instance(**dense))),
                   trace([(100, 4, 0.0)]), SimOptions())
    note = "ep_size 2: meta-llama/Llama-3.1-8B is a dense model (no experts), so expert parallelism changes nothing"
    assert all(any(note in n for n in inst.predictor.notes) for inst in res.instances)
    res = simulate(cluster_config_from_dict(_cluster(_instance(ep_size=2, dp_group="A"),
                                                     _instance(ep_size=2, dp_group="A"))),
                   trace([(100, 4, 0.0)]), SimOptions())
    assert not any("changes nothing" in n for inst in res.instances for n in inst.predictor.notes)


def test_llmservingsim_instance_keys():
    raw = _cluster(_instance(hardware="H100", npu_mem={"mem_size": 80, "mem_bw": 3350}, kv_cache_dtype="fp8",
                             enable_prefix_caching=False),
                   _instance(tp_size=None, num_npus=2, max_num_seqs=0, max_num_batched_tokens=0))
    del raw["nodes"][0]["instances"][1]["tp_size"]
    cfg = cluster_config_from_dict(raw)
    a, b = (ref.config for ref in cfg.instances())
    assert a.hardware == "H100-SXM" and a.num_npus == 1 and a.kv_dtype == "fp8" and b.kv_dtype == "bfloat16"
    assert b.tp_size == 2 and b.num_npus == 2  # tp inferred from num_npus
    assert b.max_num_batched_tokens == 262144 and b.max_num_seqs == 262144  # 0: unlimited (context length)
    res = simulate(cluster_config_from_dict(_cluster(raw["nodes"][0]["instances"][0])), trace([(100, 5, 0.0)]),
                   SimOptions())
    assert res.requests[0].status == "finished"
    fp8, bf16 = res.instances[0].spec.kv_bytes_per_token, load_model(QWEN_MOE).kv_bytes_per_token("bfloat16")
    assert fp8 * 2 == bf16
    assert "kv_cache_dtype" in _config_error(_cluster(_instance(kv_cache_dtype="fp4")))


def test_per_dimension_links_and_refused_keys():
    cfg = cluster_config_from_dict(_cluster(_instance(), link_bw=[128, 16], link_latency=[500, 20000]))
    assert (cfg.link_bw, cfg.link_latency, cfg.link_bw_per_dim) == (16.0, 20000.0, (128.0, 16.0))
    assert "link_bw: expected a number or a non-empty list" in _config_error(_cluster(_instance(), link_bw=[]))
    msg = _config_error(_cluster(_instance(), cxl_mem={"mem_size": 1}))
    assert msg == 'x.json: key "cxl_mem" is not supported: CXL memory expansion (weights or KV cache in CXL memory) ' \
                  "is not modelled"
    assert cluster_config_from_dict(_cluster(_instance(pp_size=2))).instances()[0].config.num_npus == 2


# ---------------------------------------------------------------- the measured run


@needs_case
def test_validation_on_the_measured_moe_run(tmp_path):
    from click.testing import CliRunner

    from pdsim.validate.cli import validate

    out = CliRunner().invoke(validate, [
        "--measured", str(CASE / "vllm_run/requests.jsonl"), "--cluster-config", str(CASE / "cluster_config.json"),
        "--profile-dir", str(CASE / "profile"), "--output", str(tmp_path / "v.csv")])
    assert out.exit_code == 0, out.output
    import pandas as pd

    table = pd.read_csv(tmp_path / "v.csv")
    diffs = table.query("stat == 'mean'").set_index("metric").diff_pct
    assert abs(diffs["TTFT (ms)"]) <= 10 and abs(diffs["TPOT (ms)"]) <= 3 and abs(diffs["E2E latency (ms)"]) <= 3, \
        out.output
    # The measured percentiles are numpy's, as the benchmark's own summary prints them (LLMServingSim's, beside the run)
    summary = (CASE / "llmservingsim_validation_summary.txt").read_text()
    measured = table.set_index(["metric", "stat"]).measured
    for metric, label in (("TTFT (ms)", "TTFT"), ("TPOT (ms)", "TPOT"), ("E2E latency (ms)", "Latency")):
        for stat in ("p90", "p95", "p99"):
            printed = float(next(line.split()[2] for line in summary.splitlines()
                                 if line.startswith(f"{label} {stat.upper()} ")))
            assert round(measured[metric, stat], 1) == printed, (metric, stat)


def test_mixtral_tp2_runs_with_estimated_experts_and_vllm_weights():
    inst = {"model_name": "mistralai/Mixtral-8x7B-v0.1", "hardware": "H100", "tp_size": 2,
            "npu_mem": {"mem_size": 80, "mem_bw": 3350, "mem_util": 0.9}}
    res = simulate(cluster_config_from_dict(_cluster(inst)), trace([(500, 20, 0.0), (80, 40, 0.01)]), SimOptions())
    assert [r.status for r in res.requests] == ["finished", "finished"]
    info = res.infos[0]
    assert info.hardware == "H100-SXM"
    assert info.weights_gb == pytest.approx(43.50, abs=0.01)  # vLLM 0.19 reports 43.51 GiB (H100, TP2)
    assert info.estimated_profile
    notes = res.instances[0].predictor.notes
    assert any("MoE expert layers estimated" in n for n in notes)


def test_per_dimension_links_innermost_prices_tp_outermost_dp():
    dims = dict(link_bw=[128, 16], link_latency=[500, 20000])
    tp2 = _instance(tp_size=2, ep_size=4, dp_group="A")
    res = simulate(cluster_config_from_dict(_cluster(tp2, dict(tp2), **dims)), trace([(100, 3, 0.0)]), SimOptions())
    predictor = res.instances[0].predictor
    notes = " ".join(predictor.notes)
    # The innermost dimension's 128 GB/s is the TP link, both directions together as LLMServingSim writes PCIe 5.0
    # x16 (this is its dual_node_moe_dp_ep_intra_inter_instance.json): the GPU's own 64 GB/s each way, so the measured
    # RTX PRO 6000 server's tables (custom all-reduce 14.7 GB/s, NCCL 22.3 and 37.0 on two GPUs, its two protocol
    # lines) as measured. It had been read as one direction: every all-reduce at twice the measured bandwidth.
    assert "TP all-reduce priced by PCIe model measured on RTX PRO 6000 Server" in notes
    assert "scaled" not in notes and "128 GB/s, is read as both directions together" in notes
    model = predictor._allreduce_model
    assert model.bus_bw_gbps == pytest.approx(14.7) and model.large.bus_bw_gbps == pytest.approx(22.3)
    assert model.large.other_protocol == pytest.approx((16.6, 37.0))
    assert "outermost link_bw/link_latency, 16 GB/s, 20000 ns" in notes
    # The ranks' own PCIe 5 link is faster than the config's: kept (the measured MoE run agrees with it), and said.
    assert ("the ranks' RTXPRO6000 GPUs share a node and link at 64 GB/s each way (by the config's link_bw list), "
            "but the config's link_bw 16 GB/s prices it") in notes
    same = dict(tp2, hardware="RTXPRO6000")
    raw = _cluster(same, dict(same), **dims)
    raw["nodes"][0]["intra_node_bw"] = 64
    assert "share a node" not in " ".join(simulate(cluster_config_from_dict(raw), trace([(100, 3, 0.0)]),
                                                   SimOptions()).instances[0].predictor.notes)
    # A TP link twice as fast (256 both ways) scales the measured bandwidths by 2, their per-call costs kept.
    dims = dict(link_bw=[256, 16], link_latency=[500, 20000])
    res = simulate(cluster_config_from_dict(_cluster(tp2, dict(tp2), **dims)), trace([(100, 3, 0.0)]), SimOptions())
    predictor = res.instances[0].predictor
    assert "bandwidth scaled x2.00 to its 128 GB/s link" in " ".join(predictor.notes)
    assert "link at 128 GB/s each way (by the config's link_bw list)" in " ".join(predictor.notes)
    assert predictor._allreduce_model.bus_bw_gbps == pytest.approx(2 * 14.7)


def test_expert_parallelism_over_a_dp_group_of_tp_instances_is_sequence_parallel():
    # vLLM 0.19 (ParallelConfig.use_sequence_parallel_moe): with EP over DP x TP, each TP rank takes 1/tp of the
    # tokens into the MoE block: the dispatch/combine rings run over all 4 GPUs, and the block ends with a TP
    # all-gather where a dense MLP (and a MoE without it) ends with an all-reduce.
    def group(ep_size: int):
        tp2 = _instance(tp_size=2, ep_size=ep_size, dp_group="A")
        res = simulate(cluster_config_from_dict(_cluster(tp2, dict(tp2))), trace([(100, 3, 0.0)]), SimOptions())
        return res.instances[0].predictor

    sp, not_sp = group(4), group(2)  # ep_size 2 over a DP group of TP 2: experts split 2 ways, no vLLM layout
    assert sp.moe_layer.sequence_parallel and not not_sp.moe_layer.sequence_parallel
    bw_gbps, latency_ns = sp.moe_layer._link
    tokens = 512
    nbytes = tokens * 2048 * 2  # Qwen3-30B-A3B's hidden states in bf16
    ring = 2 * (3 / 4 * nbytes / (bw_gbps * 1e3) + 3 * latency_ns * 1e-3)
    assert sp.moe_layer.dispatch_combine_us(tokens) == pytest.approx(ring)
    assert not_sp.moe_layer.dispatch_combine_us(tokens) == pytest.approx(
        2 * (1 / 2 * nbytes / (bw_gbps * 1e3) + latency_ns * 1e-3))
    allreduce, gather = sp._allreduce_us(nbytes), sp._all_gather_us(nbytes)
    assert gather < allreduce
    assert sp._layer_collectives_us(tokens) == pytest.approx(allreduce + gather)  # every layer is MoE
    assert not_sp._layer_collectives_us(tokens) == pytest.approx(2 * allreduce)
    # Mixtral's MoE block does not ask for it (vLLM's mixtral.py): the same layout keeps the DP rings and all-reduce.
    mixtral = _instance(model_name="mistralai/Mixtral-8x7B-v0.1", tp_size=2, ep_size=4, dp_group="A",
                        npu_mem={"mem_size": 96, "mem_bw": 1597, "mem_latency": 0})
    res = simulate(cluster_config_from_dict(_cluster(mixtral, dict(mixtral))), trace([(100, 3, 0.0)]), SimOptions())
    plain = res.instances[0].predictor
    assert plain.moe_layer.placement.sequence_parallel_layout and not plain.moe_layer.sequence_parallel
    assert plain._layer_collectives_us(tokens) == pytest.approx(2 * plain._allreduce_us(tokens * 4096 * 2))


def test_fp8_kv_cache_halves_the_kv_transferred():
    def run(kv_cache_dtype: str) -> int:
        pd = [_instance(pd_type=t, kv_cache_dtype=kv_cache_dtype) for t in ("prefill", "decode")]
        res = simulate(cluster_config_from_dict(_cluster(*pd)), trace([(512, 4, 0.0)]), SimOptions())
        assert res.requests[0].status == "finished"
        return res.requests[0].kv_bytes

    assert run("fp8") * 2 == run("auto")


@needs_case
def test_bad_moe_csv_names_the_file_and_row(tmp_path):
    import shutil

    from pdsim.errors import ProfileError

    shutil.copy(CASE / "profile/meta.yaml", tmp_path / "meta.yaml")
    shutil.copytree(CASE / "profile/tp1", tmp_path / "tp1")
    moe = tmp_path / "tp1/moe.csv"
    lines = moe.read_text().splitlines()
    moe.write_text("\n".join([*lines, lines[1]]) + "\n")  # the first row again
    with pytest.raises(ProfileError, match=r"moe.csv: two rows for tokens=1, activated_experts=8"):
        read_profile(tmp_path, tp=1)
    moe.write_text("tokens,experts,time_us\n1,8,50\n")
    with pytest.raises(ProfileError, match=r"moe.csv: line 1: missing column\(s\) activated_experts"):
        read_profile(tmp_path, tp=1)
    moe.write_text("tokens,activated_experts,time_us\n1,8,fast\n")
    with pytest.raises(ProfileError, match=r"moe.csv: line 2, column 'time_us': expected a number"):
        read_profile(tmp_path, tp=1)


def test_dummy_batch_is_a_forward_pass_without_sampling():
    model, hw = load_model(QWEN_MOE), get_hardware("RTXPRO6000")
    profile = estimate_profile(hw, model, "bfloat16", 1)
    pred = StepTimePredictor(profile, model, 1, hw, moe_external=True)
    per_seq_s = (profile.per_sequence["lm_head"](1) + profile.per_sequence["sampler"](1)) * 1e-6
    assert pred.dummy_step_s() == pytest.approx(pred.step_time_s(((1, 0),), 0, 0) - per_seq_s, rel=1e-12)
    assert 0 < pred.dummy_step_s() < pred.step_time_s(((1, 0),), 0, 0)


def test_llmservingsim_switches():
    cfg = cluster_config_from_dict(_cluster(_instance(reserve_full_isl=False, enable_local_offloading=False,
                                                      enable_block_copy=False)))
    assert cfg.instances()[0].config.scheduler_reserve_full_isl is False
    msg = _config_error(_cluster(_instance(enable_attn_offloading=True)))
    assert msg == "x.json: nodes[0].instances[0]: enable_attn_offloading true is not supported: attention " \
                  "offloading is not modelled"
    msg = _config_error(_cluster(_instance(reserve_full_isl=False, scheduler_reserve_full_isl=True)))
    assert "reserve_full_isl and scheduler_reserve_full_isl disagree" in msg


@pytest.mark.parametrize("mode", ["after_prefill", "layerwise"])
def test_pd_with_a_dp_group_on_each_side(mode):
    insts = [_instance(pd_type=t, ep_size=2, dp_group=t[0].upper()) for t in ("prefill", "prefill", "decode", "decode")]
    rows = [(100 + 37 * i, 5 + i % 17, i * 0.02) for i in range(120)]
    res = simulate(cluster_config_from_dict(_cluster(*insts, kv_transfer={"mode": mode})), trace(rows), SimOptions())
    assert all(r.status == "finished" for r in res.requests)
    assert {r.prefill_instance for r in res.requests} == {"n0.i0", "n0.i1"}
    assert {r.decode_instance for r in res.requests} == {"n0.i2", "n0.i3"}
    for inst in res.instances:
        assert inst.stats.steps + inst.dp_group.dummy_steps[inst.id] == inst.dp_group.num_steps


def test_a_dp_decode_group_keeps_stepping_while_a_hand_offs_kv_is_on_its_way(monkeypatch):
    # vLLM counts a request waiting for its KV among a DP rank's unfinished ones, so the group runs dummy steps
    # past its wave check until the KV is there; the rank, stepping a dummy batch, learns the transfer ended at its
    # next step's poll, after that step's decision, and schedules the request at the decision after.
    from pdsim.engine.dp_group import WAVE_CHECK_STEPS, DPGroup

    steps: list[tuple[float, float]] = []  # (start, end) of each decode group step
    price = DPGroup._price

    def recorded(self):
        seconds = price(self)
        steps.append((self.env.now, self.env.now + seconds))
        return seconds

    monkeypatch.setattr(DPGroup, "_price", recorded)
    cfg = cluster_config_from_dict(_cluster(
        _instance(pd_type="prefill"),
        _instance(pd_type="decode", ep_size=2, dp_group="A"), _instance(pd_type="decode", ep_size=2, dp_group="A"),
        link_bw=0.5))  # a slow link: the transfer lasts several group steps
    res = simulate(cfg, trace([(4000, 5, 0.0)]), SimOptions())
    req = res.requests[0]
    assert req.status == "finished"
    during = [s for s in steps if req.kv_transfer_start_s <= s[0] < req.kv_transfer_end_s]
    assert len(during) > WAVE_CHECK_STEPS  # past the check: the request is unfinished there
    ends = [end for _, end in steps]
    arrived_in = next(i for i, (start, end) in enumerate(steps) if start <= req.kv_transfer_end_s < end)
    # Scheduled two step ends later: the first decode step starts at ends[arrived_in + 1], and its token comes
    # at the end of that step.
    assert req.decode_first_token_s == pytest.approx(steps[arrived_in + 2][1])
    assert ends[arrived_in + 1] == steps[arrived_in + 2][0]


def test_a_hand_off_to_a_dp_decode_group_goes_to_the_rank_its_coordinator_picks(monkeypatch):
    # vLLM's P/D proxy sends a hand-off to the decode engine, whose DP coordinator picks the rank: lowest
    # 4 x waiting + running, where a request waiting for its KV is waiting.
    from types import SimpleNamespace

    from pdsim.engine.dp_group import DPGroup
    from pdsim.engine.instance import Instance

    picks = []
    choose_rank = DPGroup.choose_rank

    def recorded(self, candidates):
        rank = choose_rank(self, candidates)
        picks.append((self.name, [c.id for c in candidates], rank.id))
        return rank

    monkeypatch.setattr(DPGroup, "choose_rank", recorded)
    cfg = cluster_config_from_dict(_cluster(
        _instance(pd_type="prefill"),
        _instance(pd_type="decode", ep_size=2, dp_group="D"), _instance(pd_type="decode", ep_size=2, dp_group="D")))
    res = simulate(cfg, trace([(300, 5, 0.0), (300, 5, 0.0)]), SimOptions())
    assert all(r.status == "finished" for r in res.requests)
    assert [rank for group, _, rank in picks] == ["n0.i1", "n0.i2"] and {g for g, _, _ in picks} == {"D"}

    def rank(name, waiting=0, pending=0, in_flight=0, unpolled=0, running=0):
        sched = SimpleNamespace(waiting=[None] * waiting, running=[None] * running, num_in_flight=0)
        inst = SimpleNamespace(id=name, sched=sched, pending=[None] * pending, reads_in_flight=in_flight,
                               unpolled=[None] * unpolled)
        inst.num_waiting = Instance.num_waiting.fget(inst)  # vLLM's waiting queue, as the instance counts it
        return inst

    group = DPGroup.__new__(DPGroup)
    assert choose_rank(group, [rank("a", in_flight=1), rank("b", running=3)]).id == "b"  # 4 against 3
    assert choose_rank(group, [rank("a", unpolled=1), rank("b", running=4)]).id == "a"  # ties: the lowest rank
    assert choose_rank(group, [rank("a", running=2), rank("b", pending=1)]).id == "a"


def test_decode_dp_groups_leave_the_prefill_router_its_request(monkeypatch):
    # Only the decode instances form a DP group: the prefill choice is among single instances and a
    # cache-aware policy there gets the request, as without groups.
    from pdsim.engine.router import Router

    seen = []
    choose = Router.choose

    def watched(self, candidates, req=None):
        seen.append(req is not None)
        return choose(self, candidates, req)

    monkeypatch.setattr(Router, "choose", watched)
    cfg = cluster_config_from_dict(_cluster(
        _instance(pd_type="prefill"), _instance(pd_type="prefill"),
        _instance(pd_type="decode", ep_size=2, dp_group="A"), _instance(pd_type="decode", ep_size=2, dp_group="A"),
        router={"prefill_policy": "prefix_aware"}))
    res = simulate(cfg, trace([(300, 5, 0.0), (300, 5, 0.001)]), SimOptions())
    assert all(r.status == "finished" for r in res.requests)
    assert seen and all(seen[:2])  # the two prefill choices came with their requests


def test_a_dp_rank_running_dummy_batches_for_a_working_rank_is_busy():
    # One request on a two-rank group: the other rank runs a dummy batch in every step and waits in the MoE
    # collectives for the rank with work, so it is as busy; the steps after the request (the wave's tail, no
    # rank with work) are not busy time, so neither rank passes 100%.
    cfg = cluster_config_from_dict(_cluster(_instance(ep_size=2, dp_group="A"), _instance(ep_size=2, dp_group="A")))
    res = simulate(cfg, trace([(200, 300, 0.0)]), SimOptions())
    summary = summarize(res, requests_frame(res))
    working, idle = summary["instances"]
    assert working["steps"] == 300 and idle["steps"] == 0
    assert idle["dummy_steps"] > 300 and working["dummy_steps"] > 0  # the tail runs on both
    assert idle["busy_fraction"] == pytest.approx(working["busy_fraction"])
    assert 0.99 < idle["busy_fraction"] <= 1.0


@needs_case
def test_a_measured_profile_without_moe_csv_is_said_to_be_estimated_in_that_part_only(tmp_path):
    # The run said "step times ...: estimated from hardware specs" and "no measured profile; give --profile-dir"
    # of a profile given and measured in all but its expert layers.
    import shutil

    from pdsim.metrics.summary import format_summary

    shutil.copy(CASE / "profile/meta.yaml", tmp_path / "meta.yaml")
    shutil.copytree(CASE / "profile/tp1", tmp_path / "tp1", ignore=shutil.ignore_patterns("moe.csv"))
    cfg = cluster_config_from_dict(_cluster(_instance(profile_dir=str(tmp_path / "tp1"))))
    res = simulate(cfg, trace([(100, 3, 0.0)]), SimOptions())
    info = res.infos[0]
    assert info.estimated_profile and info.estimated_part == "MoE expert layers"
    summary = summarize(res, requests_frame(res))
    assert summary["step_time_source"].endswith("for the MoE expert layers (the measured profile has no table of them)")
    text = format_summary(summary)
    assert f"step times n0.i0: measured, profile {tmp_path / 'tp1'}; its MoE expert layers estimated from hardware " \
           "specs" in text
    assert "NOTE: step times estimated from hardware specs for the MoE expert layers" in text
    assert "no measured profile" not in text
    # validate's line says the same, from the same helper.
    from pdsim.metrics.summary import estimated_part
    from pdsim.validate.cli import _estimated_line

    part = estimated_part((i.estimated_profile, i.estimated_part) for i in res.infos)
    assert _estimated_line(part=part).startswith("NOTE: step times estimated from hardware specs for the MoE expert "
                                                  "layers (the measured profile has no table of them)")
    assert estimated_part([(True, "MoE expert layers"), (True, "")]) == ""  # a whole estimated profile beside it


@needs_case
def test_a_profile_without_the_models_qk_norm_rows_says_they_are_not_priced(tmp_path):
    # qk_norm is optional in a profile (models without it); Qwen3 runs it in every layer, so its absence is said.
    import shutil

    from pdsim.perf.predictor import StepTimePredictor
    from pdsim.perf.profile import read_profile

    model = load_model("Qwen/Qwen3-30B-A3B")
    said = "normalises q and k in every layer"
    assert not any(said in n for n in StepTimePredictor(read_profile(CASE / "profile" / "tp1"), model, 1, None).notes)
    shutil.copytree(CASE / "profile", tmp_path / "profile")
    dense = tmp_path / "profile" / "tp1" / "dense.csv"
    dense.write_text("".join(line for line in dense.read_text().splitlines(keepends=True) if "qk_norm" not in line))
    notes = StepTimePredictor(read_profile(tmp_path / "profile" / "tp1"), model, 1, None).notes
    assert any(said in n and "no qk_norm rows: those norms are not priced" in n for n in notes)
