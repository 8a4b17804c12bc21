"""fp8 weights (quantization), fp8 KV in the step-time estimate, and the Blackwell specs (docs/precision.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pdsim.config import InstanceConfig
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.errors import ProfileError
from pdsim.hardware import get_hardware
from pdsim.models import load_model
from pdsim.perf import memory
from pdsim.perf.aiconfigurator import SYSTEM_DEVICE, SYSTEM_HARDWARE, import_profile, importable_systems
from pdsim.perf.estimate import _Roofline, load_or_estimate
from pdsim.perf.predictor import StepTimePredictor
from pdsim.perf.profile import read_profile
from tests.helpers import cluster, trace

GIB = 1024**3
LLAMA70 = "meta-llama/Llama-3.3-70B-Instruct"
AIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "calibration" / "aiconfigurator-h100"
H100 = {"hardware": "H100", "npu_mem": {"mem_size": 80, "mem_bw": 3350}}


def test_fp8_weight_bytes_match_vllms_logged_weights():
    # vLLM 0.19 "Model loading took" for RedHatAI/Llama-3.3-70B-Instruct-fp8-dynamic (compressed-tensors W8A8)
    # on H100: 33.88 GiB at TP 2, 16.96 GiB at TP 4 (../shared/.../vllm_kv_capacity_h100.csv rows 10, 11).
    m = load_model(LLAMA70)
    assert m.weight_bytes("bfloat16", 2, quantization="fp8") / GIB == pytest.approx(33.88, abs=0.05)
    assert m.weight_bytes("bfloat16", 4, quantization="fp8") / GIB == pytest.approx(16.96, abs=0.05)
    # Not simply half the bf16 weights: embeddings and lm_head (2 x 128256 x 8192 / tp) stay bf16.
    bf16 = m.weight_bytes("bfloat16", 2)
    embed_and_head = 2 * m.vocab_per_shard(2) * m.hidden_size
    assert m.weight_bytes("bfloat16", 2, quantization="fp8") > bf16 / 2 + embed_and_head / 2


def test_block_scales_are_one_fp32_per_128x128_block():
    m = load_model("meta-llama/Llama-3.1-8B")
    linear = m.weight_bytes("bfloat16") - m._unquantized_params_per_shard(1) * 2  # 2 bytes per linear param
    per_channel = m.weight_bytes("bfloat16", quantization="fp8")
    block = m.weight_bytes("bfloat16", quantization="fp8_block")
    base = m._unquantized_params_per_shard(1) * 2 + linear // 2
    # Per layer: qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336.
    blocks = 32 * (48 * 32 + 32 * 32 + 224 * 32 + 32 * 112)
    channels = 32 * (6144 + 4096 + 28672 + 4096)
    assert block - base == 4 * blocks and per_channel - base == 4 * channels


def test_quantization_field_and_llmservingsim_dtype_fp8():
    base = dict(model_name=LLAMA70, tp_size=2, num_npus=2, **H100)
    assert InstanceConfig(**base, dtype="fp8").quantization == "fp8"
    cfg = InstanceConfig(**base, dtype="fp8")
    assert cfg.dtype == "bfloat16" and cfg.kv_dtype == "bfloat16"  # as vLLM: KV stays bf16 unless asked
    with pytest.raises(ValidationError, match='quantization\n.*expected "fp8", "fp8_block" or null, got "int4"'):
        InstanceConfig(**base, quantization="int4")
    with pytest.raises(ValidationError, match='dtype "fp8" means quantization "fp8"'):
        InstanceConfig(**base, dtype="fp8", quantization="fp8_block")
    # 70B on one H100: bf16 does not fit (131 GiB), fp8 does (~68 GiB).
    with pytest.raises(ValidationError, match="weights need 131.4"):
        InstanceConfig(**{**base, "tp_size": 1, "num_npus": 1})
    InstanceConfig(**{**base, "tp_size": 1, "num_npus": 1, "gpu_memory_utilization": 0.95}, quantization="fp8")


def test_fp8_gemms_faster_in_the_estimate_lm_head_not():
    hw, m = get_hardware("H100-SXM"), load_model(LLAMA70)
    bf16, fp8 = _Roofline(hw, m, "bfloat16", 2), _Roofline(hw, m, "bfloat16", 2, "fp8")
    for tokens in (1, 8192):  # weight-streaming bound, then compute bound: both ~2x
        assert fp8.dense("gate_up_proj", tokens) < 0.55 * bf16.dense("gate_up_proj", tokens)
    assert fp8.dense("layernorm", 512) == bf16.dense("layernorm", 512)
    assert fp8.per_sequence("lm_head", 64) == bf16.per_sequence("lm_head", 64)
    # No fp8 tensor cores (A100): vLLM's Marlin kernel runs fp8 weights weight-only, at the bf16 peak with 1-byte
    # weights: as fast as bf16 where compute binds, faster where streaming the weights does.
    a100 = get_hardware("A100-80GB")
    marlin, a100_bf16 = _Roofline(a100, m, "bfloat16", 2, "fp8"), _Roofline(a100, m, "bfloat16", 2)
    assert "without fp8 tensor cores" in marlin.gemm_source
    assert marlin.dense("gate_up_proj", 1) < 0.55 * a100_bf16.dense("gate_up_proj", 1)
    assert marlin.dense("gate_up_proj", 8192) == pytest.approx(a100_bf16.dense("gate_up_proj", 8192), rel=0.01)
    # No peak for these in the table: estimated step times are refused rather than priced at the bf16 or
    # fp8 one; a ratio of two estimates (a measured MoE table rescaled) still prices them.
    from pdsim.perf.estimate import estimate_rows

    for dtype in ("float32", "int8"):
        with pytest.raises(ProfileError, match=f"dtype {dtype}: step times cannot be estimated"):
            estimate_rows(get_hardware("A100-80GB"), m, dtype, 2)
    assert _Roofline(get_hardware("A100-80GB"), m, "float32", 2).dense("qkv_proj", 64) > 0


def test_fp8_kv_cache_halves_decode_attention_in_the_estimate():
    hw, m = get_hardware("H100-SXM"), load_model("meta-llama/Llama-3.1-8B")
    bf16, fp8 = _Roofline(hw, m, "bfloat16", 1), _Roofline(hw, m, "bfloat16", 1, None, "fp8")
    a, b = bf16.attention_decode(128, 32768), fp8.attention_decode(128, 32768)
    assert b / a == pytest.approx(0.5, abs=0.02)
    assert fp8.dense("qkv_proj", 64) == bf16.dense("qkv_proj", 64)  # weights untouched


def test_fp8_instance_runs_end_to_end_and_says_what_priced_its_gemms():
    inst = {"model_name": LLAMA70, **H100, "tp_size": 2, "num_npus": 2, "gpu_memory_utilization": 0.95,
            "max_num_batched_tokens": 8192, "max_num_seqs": 1024}
    rows = [(1000, 50, 0.1 * i) for i in range(8)]
    results = {}
    for q in (None, "fp8"):
        res = simulate(cluster({**inst, "quantization": q}), trace(rows), SimOptions())
        results[q] = res
    bf16, fp8 = results[None].infos[0], results["fp8"].infos[0]
    assert fp8.weights_gb == pytest.approx(33.85, abs=0.05) and bf16.weights_gb == pytest.approx(65.71, abs=0.05)
    assert fp8.kv_capacity_gb > bf16.kv_capacity_gb + 30
    assert "/fp8/tp2" in fp8.profile_path
    done = [r for r in results["fp8"].requests if r.finish_s is not None]
    assert len(done) == len(rows)
    notes = results["fp8"].instances[0].predictor.notes
    assert any("fp8 GEMMs priced by an estimate from hardware specs" in n for n in notes)


def test_predictor_notes_name_the_fp8_gemm_source():
    m = load_model(LLAMA70)
    prof = load_or_estimate("H100-SXM", m, "bfloat16", 2, quantization="fp8")
    pred = StepTimePredictor(prof, m, 2, get_hardware("H100-SXM"))
    assert any("fp8 GEMMs priced by an estimate from hardware specs: fp8 GEMMs at the 1978.9 TFLOPS fp8 peak" in n
               for n in pred.notes)
    bf16 = StepTimePredictor(load_or_estimate("H100-SXM", m, "bfloat16", 2), m, 2, get_hardware("H100-SXM"))
    assert pred.step_time_s([(4096, 0)], 0, 0) < 0.7 * bf16.step_time_s([(4096, 0)], 0, 0)


def test_blackwell_specs_and_aiconfigurator_systems():
    for name, bf16, fp8, mem in (("B200", 2250, 4500, 180), ("GB200", 2500, 5000, 186)):
        spec = get_hardware(name)
        assert (spec.bf16_tflops, spec.fp8_tflops, spec.mem_size_gb) == (bf16, fp8, mem)
        assert spec.mem_bw_gbps == 8000 and spec.intra_node_bw_gbps == 900 and "datasheet" in spec.source
    assert get_hardware("B200_SXM").name == "B200"
    for system in ("b200_sxm", "gb200", "gb200_sxm"):
        assert system in importable_systems()
        assert get_hardware(SYSTEM_HARDWARE[system]) is not None and SYSTEM_DEVICE[system]
    # No measured visible memory for Blackwell: the documented 79.19/80 fraction of the datasheet size.
    total, how = memory.visible_memory_gib("B200", 180)
    assert total == pytest.approx(180 * 79.19 / 80) and "assumed" in how


def test_moe_workspace_is_held_through_the_sampler_run():
    m = load_model("Qwen/Qwen3-30B-A3B")
    ws = memory.moe_workspace_bytes(m, "bfloat16", 1, 8192)
    assert ws == 8192 * 8 * (2048 + 2048) * 2  # top_k 8; max(768, 2048) + max(1536, 2048)
    peak = memory.activation_peak_bytes(m, "bfloat16", 1, 8192, 1024)
    assert peak == memory.sampler_peak_bytes(m, "bfloat16", 8192, 1024) + ws
    assert memory.moe_workspace_bytes(load_model("meta-llama/Llama-3.1-8B"), "bfloat16", 1, 8192) == 0


@pytest.mark.skipif(not AIC.is_dir(), reason="../shared data not present")
def test_import_aiconfigurator_fp8_gemm_table(tmp_path):
    m = load_model("Qwen/Qwen3-32B")
    bf16 = read_profile(import_profile(AIC / "systems_data_h100_sxm", "h100_sxm", m, 2, tmp_path))
    out = import_profile(AIC / "systems_data_h100_sxm", "h100_sxm", m, 2, tmp_path, quantization="fp8")
    assert out.parts[-2:] == ("fp8", "tp2")
    fp8 = read_profile(out)
    assert fp8.dense["gate_up_proj"](8192) < 0.8 * bf16.dense["gate_up_proj"](8192)
    assert fp8.per_sequence["lm_head"](64) == bf16.per_sequence["lm_head"](64)
    assert "fp8 table" in fp8.meta.notes and "fp8 GEMM table" in fp8.meta.device["gemm_precision"]


def test_the_kv_line_says_the_precision_that_sized_the_weights():
    from tests.helpers import instance

    def note(**knobs) -> str:
        res = simulate(cluster(instance(None, 80, "H100-SXM", **knobs)), trace([(100, 2, 0.0)]), SimOptions())
        return res.infos[0].memory_note

    assert "(fp8 weights) - activation peak" in note(quantization="fp8")
    assert "weights" in note() and "fp8 weights" not in note()


def test_an_fp8_kv_cache_over_a_profile_timed_with_another_says_how_its_attention_is_priced():
    from pdsim.engine.build import _kv_dtype_note
    from pdsim.perf.profile_format import ProfileMeta
    from tests.helpers import instance

    def note(kv_cache_dtype: str, profiled: str | None) -> str | None:
        ic = cluster(instance(None, kv_cache_dtype=kv_cache_dtype)).instances()[0].config
        return _kv_dtype_note(ic, ProfileMeta(hardware="RTXPRO6000", model="m", dtype="bfloat16", tp=1,
                                              engine_kv_cache_dtype=profiled))

    assert ("the profile's attention was timed with a bfloat16 KV cache; decode attention, which streams the cache, "
            "is priced at the KV length of the same bytes (1 against 2 per value), prefill attention as timed") \
        in note("fp8", None)
    assert note("fp8", "fp8_e4m3") is None and note("fp8", "fp8_inc") is None  # timed with an fp8 cache
    assert note("auto", None) is None
    assert "timed with a fp8 KV cache" in note("auto", "fp8")


def test_decode_attention_over_an_fp8_cache_costs_the_profiles_at_the_kv_length_of_the_same_bytes():
    # A bf16-timed profile, an fp8 cache: decode attention streams half the bytes per token, so a decode batch at
    # KV L costs the profile's at L / 2; prefill attention and everything else stay as timed.
    from pdsim.hardware import get_hardware
    from pdsim.models import load_model
    from pdsim.perf.estimate import load_or_estimate
    from pdsim.perf.predictor import StepTimePredictor

    model = load_model("meta-llama/Llama-3.1-8B")
    profile = load_or_estimate("RTXPRO6000", model, "bfloat16", 1)
    hw = get_hardware("RTXPRO6000")
    bf16, fp8 = StepTimePredictor(profile, model, 1, hw), StepTimePredictor(profile, model, 1, hw, kv_read_scale=0.5)
    assert fp8.step_time_s((), 64, 64 * 2048) == pytest.approx(bf16.step_time_s((), 64, 64 * 1024), rel=1e-12)
    assert fp8.step_time_s((), 64, 64 * 2048) < bf16.step_time_s((), 64, 64 * 2048)
    # each step of a run adds a token a request: half a token's bytes of bf16
    assert list(fp8.decode_run_s(64, 64 * 2048, 3)) == pytest.approx(
        [bf16.step_time_s((), 64, 64 * 1024 + 32 * j) for j in range(3)], rel=1e-12)
    assert fp8.step_time_s(((512, 0),), 0, 0) == bf16.step_time_s(((512, 0),), 0, 0)  # prefill: as timed
    # The skewed lookup scales its longest member too, and a run of steps equals stepping one by one.
    run = fp8.decode_run_s(8, 8 * 1000, 4, kv_decode_max=3000)
    assert list(run) == pytest.approx([fp8.step_time_s((), 8, 8 * 1000 + 8 * j, 3000 + j) for j in range(4)])
    # A decode-only lookup past the table is a note of the run, in the instance's KV lengths, said so.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp8.step_time_s((), 2, 2 * 10**7)
    assert any("at the KV lengths of the same bytes (x2)': kv_tokens=1e+07 is outside" in note
               for note in fp8.extrapolation_notes()), fp8.extrapolation_notes()


_RTX_PROFILE = (Path(__file__).resolve().parents[2] / "shared" / "data" / "calibration"
                / "llmservingsim-rtxpro6000-llama31-8b" / "profile")


@pytest.mark.skipif(not _RTX_PROFILE.is_dir(), reason="../shared data not present")
def test_a_profile_of_the_base_model_times_its_fp8_checkpoint_not_another_shape(tmp_path):
    # LLMServingSim files an fp8 profile under the base model (variant fp8); the instance may name the FP8
    # checkpoint itself. Its layers are the base model's, so the profile is taken, and said; one of another
    # shape is still refused.
    import json
    import shutil

    from pdsim.models import MODELS_DIR, use_model_file
    from pdsim.perf.profile import find_profile

    profile = tmp_path / "profile"
    shutil.copytree(_RTX_PROFILE, profile)
    meta = (profile / "meta.yaml").read_text()
    assert "variant: bf16" in meta
    (profile / "meta.yaml").write_text(meta.replace("variant: bf16", "variant: fp8"))
    base = json.loads((MODELS_DIR / "meta-llama" / "Llama-3.1-8B.json").read_text())
    fp8 = {**base, "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"}}
    (tmp_path / "config.json").write_text(json.dumps(fp8))
    use_model_file("test-org/Llama-3.1-8B-FP8-base-profile", tmp_path / "config.json")
    found = find_profile("RTXPRO6000", "test-org/Llama-3.1-8B-FP8-base-profile", "fp8", 1, profile_dir=profile)
    # Its attention is one 4-D grid: a mixed step's decode part reads an fp8 cache at the KV length of the same bytes.
    from pdsim.perf.predictor import StepTimePredictor

    model, hw = load_model("meta-llama/Llama-3.1-8B"), get_hardware("RTXPRO6000")
    bf16_cache = StepTimePredictor(found, model, 1, hw)
    fp8_cache = StepTimePredictor(found, model, 1, hw, kv_read_scale=0.5)
    assert found.attention_grid4d is not None
    assert fp8_cache.step_time_s(((256, 0),), 8, 8 * 2048) == pytest.approx(
        bf16_cache.step_time_s(((256, 0),), 8, 8 * 1024), rel=1e-12)
    assert fp8_cache.step_time_s(((256, 0),), 8, 8 * 2048, 4096) == pytest.approx(
        bf16_cache.step_time_s(((256, 0),), 8, 8 * 1024, 2048), rel=1e-12)
    assert found is not None and found.meta.model == "meta-llama/Llama-3.1-8B"
    with pytest.raises(ProfileError, match="field 'model': the profile is for meta-llama/Llama-3.1-8B, but the "
                                           "instance runs Qwen/Qwen3-8B"):
        find_profile("RTXPRO6000", "Qwen/Qwen3-8B", "fp8", 1, profile_dir=profile)
    # Every width counts: heads of another size are another shape, though layers, hidden and heads agree.
    (tmp_path / "narrow.json").write_text(json.dumps({**fp8, "head_dim": 64}))
    use_model_file("test-org/Llama-3.1-8B-FP8-head-dim-64", tmp_path / "narrow.json")
    with pytest.raises(ProfileError, match="field 'model'"):
        find_profile("RTXPRO6000", "test-org/Llama-3.1-8B-FP8-head-dim-64", "fp8", 1, profile_dir=profile)


def test_a_bundled_estimate_made_for_a_bf16_cache_is_estimated_afresh_for_an_fp8_one():
    # profiles/H100-SXM/.../Llama-3.1-8B/bfloat16/tp1 is an estimate saved with a bf16 KV cache (meta.json records
    # only `dtype`). An fp8 cache over it was timed as bf16 (build.py's kv_read_scale is 1 for an estimate):
    # TPOT 14.9 ms on a long-context trace against 11.4 ms from a fresh estimate. It is estimated afresh now.
    from pdsim.perf.estimate import estimate_profile

    model, hw = load_model("meta-llama/Llama-3.1-8B"), get_hardware("H100-SXM")
    saved = load_or_estimate("H100-SXM", model, "bfloat16", 1)
    assert saved.estimated and saved.meta.path.endswith("bfloat16/tp1")  # the bundled one, for a bf16 cache
    fp8 = load_or_estimate("H100-SXM", model, "bfloat16", 1, kv_dtype="fp8")
    fresh = estimate_profile(hw, model, "bfloat16", 1, kv_dtype="fp8")
    assert (fp8.attention_decode.values == fresh.attention_decode.values).all()
    assert fp8.attention_decode(64, 8192) < 0.6 * saved.attention_decode(64, 8192)  # half the bytes streamed
    # A bf16 (or same-sized fp16) cache still reads the saved profile, so bf16 runs do not move.
    assert load_or_estimate("H100-SXM", model, "bfloat16", 1, kv_dtype="bfloat16").meta.path == saved.meta.path
    assert load_or_estimate("H100-SXM", model, "bfloat16", 1, kv_dtype="float16").meta.path == saved.meta.path
    # Given by --profile-dir, it is set aside with a word: the user asked for that one.
    said: list[str] = []
    load_or_estimate("H100-SXM", model, "bfloat16", 1, profile_dir=saved.meta.path, kv_dtype="fp8", said=said)
    assert said == [f"the estimated profile {saved.meta.path} was made for a bfloat16 KV cache; the instance's is "
                    "fp8, so its step times are estimated afresh for that cache"]


def test_the_kv_note_of_an_auto_cache_names_the_dtype_it_resolves_to(tmp_path):
    # A ModelOpt FP8 checkpoint with an fp8 kv_cache_quant_algo: `auto` is an fp8 cache (vLLM 0.19,
    # resolve_kv_cache_dtype_string). The note over a bf16-timed profile said "no auto kernel was measured".
    import json

    from pdsim.engine.build import _kv_dtype_note
    from pdsim.models import MODELS_DIR, use_model_file
    from pdsim.perf.profile_format import ProfileMeta
    from tests.helpers import instance

    raw = json.loads((MODELS_DIR / "meta-llama" / "Llama-3.1-8B.json").read_text())
    raw["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    use_model_file("test-org/Llama-3.1-8B-Instruct-FP8-modelopt-kv", tmp_path / "config.json")
    ic = cluster(instance(None, model_name="test-org/Llama-3.1-8B-Instruct-FP8-modelopt-kv",
                          kv_cache_dtype="auto")).instances()[0].config
    note = _kv_dtype_note(ic, ProfileMeta(hardware="RTXPRO6000", model="m", dtype="bfloat16", tp=1))
    assert note.startswith("kv_cache_dtype auto (fp8): the profile's attention was timed with a bfloat16 KV cache")
    assert "no fp8 kernel was measured (vLLM 0.19 reads an fp8 cache" in note and "auto kernel" not in note
    # A bf16 cache over an fp8-timed profile: no fp8 kernel to speak of.
    bf16 = cluster(instance(None, kv_cache_dtype="auto")).instances()[0].config
    note = _kv_dtype_note(bf16, ProfileMeta(hardware="RTXPRO6000", model="m", dtype="bfloat16", tp=1,
                                            engine_kv_cache_dtype="fp8"))
    assert note.startswith("kv_cache_dtype auto (bfloat16): the profile's attention was timed with a fp8 KV cache")
    assert note.endswith("no bfloat16 kernel was measured")
