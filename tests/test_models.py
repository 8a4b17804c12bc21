import json
from pathlib import Path

import pytest

from pdsim.errors import PdsimError
from pdsim.models import dtype_bytes, known_models, load_model

ALL = [
    "JackFram/llama-160m",
    "Qwen/Qwen2.5-72B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen3-235B-A22B",
    "Qwen/Qwen3-30B-A3B",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-32B",
    "Qwen/Qwen3-8B",
    "deepseek-ai/DeepSeek-R1",
    "deepseek-ai/DeepSeek-V3",
    "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.3-70B-Instruct",
    "microsoft/phi-4",
    "mistralai/Mistral-7B-v0.3",
    "mistralai/Mixtral-8x7B-v0.1",
    "openai/gpt-oss-120b",
    "openai/gpt-oss-20b",
    "pdsim/tiny-llama",
]


def test_known_models_lists_shipped_configs():
    assert known_models() == ALL


@pytest.mark.parametrize("name", ALL)
def test_every_model_loads_and_tp1_weights_equal_params(name):
    m = load_model(name)
    if getattr(m, "expert_weight_bits", None):  # gpt-oss: MXFP4 experts, sized in tests/test_gpt_oss.py
        assert m.weight_bytes("bfloat16") < 0.4 * 2 * m.param_count()  # experts at 4.25 of 16 bits
        return
    assert m.weight_bytes("bfloat16") == 2 * m.param_count()
    assert m.weight_bytes("float32") == 4 * m.param_count()


def test_llama_8b_shapes_and_sizes():
    m = load_model("meta-llama/Llama-3.1-8B")
    assert (m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim) == (4096, 32, 32, 8, 128)
    assert m.architecture == "llama" and not m.has_qk_norm and not m.tie_word_embeddings
    assert m.kv_bytes_per_token("bfloat16") == 131072
    assert m.kv_bytes_per_token("fp8") == 65536
    assert m.param_count() == 8_030_261_248


def test_llama_70b_param_count():
    assert load_model("meta-llama/Llama-3.1-70B").param_count() == pytest.approx(70.55e9, rel=2e-3)


def test_qwen3_explicit_head_dim_and_qk_norm():
    m = load_model("Qwen/Qwen3-8B")
    assert m.kv_bytes_per_token("bfloat16") == 147456
    assert m.has_qk_norm
    assert m.param_count() == pytest.approx(8.19e9, rel=2e-3)
    big = load_model("Qwen/Qwen3-32B")
    # head_dim 128 with 64 heads: q projection is wider than hidden (8192 vs 5120)
    assert big.head_dim == 128 and big.q_size() == 8192 and big.hidden_size == 5120
    assert big.o_in() == 8192


def test_biased_projections_are_counted():
    # Qwen2: q/k/v biases, none on o; the published count is 7,615,616,512 parameters.
    qwen = load_model("Qwen/Qwen2.5-7B-Instruct")
    assert qwen.qkv_bias and not qwen.o_bias and qwen.param_count() == 7_615_616_512
    assert load_model("microsoft/phi-4").param_count() == pytest.approx(14.66e9, rel=1e-3)
    # fp8 leaves the biases in bf16: 2 bytes more per bias parameter than the 1-byte weights.
    plain = dict(json.loads(Path(__file__).resolve().parent.parent.joinpath(
        "configs/models/Qwen/Qwen2.5-7B-Instruct.json").read_text()), model_type="llama")
    assert qwen.param_count() - 28 * (3584 + 2 * 512) == _spec(plain).param_count()
    fp8 = {"dtype": "bfloat16", "quantization": "fp8"}
    assert qwen.weight_bytes(**fp8) - _spec(plain).weight_bytes(**fp8) == 2 * 28 * (3584 + 2 * 512)


def _spec(cfg: dict):
    from pdsim.models import _spec_from_hf

    return _spec_from_hf("org/m", Path("m.json"), cfg)


PHI_MINI_MOE = {  # microsoft/Phi-mini-MoE-instruct's shapes (7.6B total, 2.4B active, per its model card)
    "model_type": "phimoe", "hidden_size": 4096, "intermediate_size": 960, "num_attention_heads": 16,
    "num_key_value_heads": 4, "num_hidden_layers": 32, "num_local_experts": 16, "num_experts_per_tok": 2,
    "vocab_size": 32064, "max_position_embeddings": 4096, "attention_bias": True, "lm_head_bias": True,
    "sliding_window": None, "tie_word_embeddings": False,
}


def test_phimoe_reads_with_its_biases():
    m = _spec(PHI_MINI_MOE)
    assert m.moe.num_experts == 16 and m.moe.top_k == 2 and m.moe.moe_layers == 32
    assert m.qkv_bias and m.o_bias and m.norm_bias and m.lm_head_bias
    assert m.param_count() == pytest.approx(7.6e9, rel=0.01)
    assert m.active_param_count() == pytest.approx(2.4e9, rel=0.03)
    unbiased = _spec(dict(PHI_MINI_MOE, model_type="mixtral", attention_bias=False))
    h, q_kv = 4096, 4096 + 2 * 1024
    assert m.param_count() - unbiased.param_count() == 32 * (q_kv + h + 2 * h) + h + 32064


def test_refused_biases_and_unmodelled_sliding_windows():
    with pytest.raises(PdsimError, match="'attention_bias': biased attention projections are not modelled for "
                                         "model_type 'qwen3'"):
        _spec(dict(json.loads((Path(__file__).resolve().parent.parent / "configs/models/Qwen/Qwen3-8B.json")
                              .read_text()), attention_bias=True))
    # A window vLLM would honour is kept on the spec, for the run's note; Qwen2.5's is off
    # (use_sliding_window false) and one as long as the context changes nothing.
    assert _spec(dict(PHI_MINI_MOE, model_type="phi3", attention_bias=False, sliding_window=2047)) \
        .unmodelled_sliding_window == 2047
    assert _spec(dict(PHI_MINI_MOE, sliding_window=4096)).unmodelled_sliding_window == 0
    assert load_model("Qwen/Qwen2.5-72B-Instruct").unmodelled_sliding_window == 0
    # Qwen2/3 window only with use_sliding_window true: transformers reads the key's absence as false.
    qwen = json.loads((Path(__file__).resolve().parent.parent / "configs/models/Qwen/Qwen3-8B.json").read_text())
    qwen.pop("use_sliding_window", None)
    assert _spec(dict(qwen, sliding_window=4096)).unmodelled_sliding_window == 0
    assert _spec(dict(qwen, sliding_window=4096, use_sliding_window=True)).unmodelled_sliding_window == 4096
    assert load_model("openai/gpt-oss-20b").unmodelled_sliding_window == 0  # modelled (pdsim/gpt_oss.py)


def test_a_run_says_when_its_models_sliding_window_is_not_modelled(tmp_path, capsys):
    from pdsim.config import load_cluster_config

    cfg = {"num_nodes": 1, "link_bw": 16, "link_latency": 1000, "nodes": [{"num_instances": 1, "instances": [
        {"model_name": "acme/windowed-test", "hardware": "RTXPRO6000", "npu_mem": {"mem_size": 96, "mem_bw": 1597},
         "pd_type": None, "tp_size": 1}]}]}
    (tmp_path / "cluster_config.json").write_text(json.dumps(cfg))
    (tmp_path / "model_config.json").write_text(json.dumps(dict(_tiny(), sliding_window=512)))
    load_cluster_config(tmp_path / "cluster_config.json")
    assert "model acme/windowed-test: sliding_window 512 is not modelled" in capsys.readouterr().err


def test_llama_160m_defaults_kv_heads_to_heads():
    m = load_model("JackFram/llama-160m")
    assert m.num_kv_heads == 12 and m.head_dim == 64
    assert m.kv_bytes_per_token("float32") == 2 * 12 * 12 * 64 * 4


def test_tp_sharding():
    m = load_model("meta-llama/Llama-3.1-8B")
    assert m.q_size(2) == 2048 and m.kv_size(2) == 512 and m.qkv_out(2) == 3072
    assert m.intermediate_per_shard(4) == 3584 and m.vocab_per_shard(2) == 64128
    assert m.kv_bytes_per_token("bfloat16", tp=2) == 65536
    # with more shards than KV heads, each shard keeps one replicated KV head
    assert m.kv_heads_per_shard(16) == 1
    assert m.kv_bytes_per_token("bfloat16", tp=16) == 2 * 32 * 128 * 2
    one, two = m.weight_bytes("bfloat16", 1), m.weight_bytes("bfloat16", 2)
    # norms are replicated, so a shard is a little over half
    norms_bytes = (2 * 32 * 4096 + 4096) * 2
    assert two == (one - norms_bytes) // 2 + norms_bytes


def test_check_tp_rejects_uneven_split():
    m = load_model("meta-llama/Llama-3.1-8B")
    m.check_tp(8)
    with pytest.raises(PdsimError, match="32 attention heads cannot be split over tp=3"):
        m.check_tp(3)


def test_unknown_model_lists_known():
    with pytest.raises(PdsimError) as e:
        load_model("meta-llama/Llama-4-1T")
    assert "unknown model 'meta-llama/Llama-4-1T'" in str(e.value)
    assert "meta-llama/Llama-3.1-8B" in str(e.value) and "Qwen/Qwen3-8B" in str(e.value)
    # A fine-tune's or a quantised checkpoint's name is the model it extends, not the nearest spelling (for
    # "-Instruct" that was meta-llama/Llama-3.3-70B-Instruct).
    for typed, meant in [("meta-llama/Llama-3.1-8b", "meta-llama/Llama-3.1-8B"), ("Qwen3-32B", "Qwen/Qwen3-32B"),
                         ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B"),
                         ("Qwen/Qwen3-32B-FP8", "Qwen/Qwen3-32B")]:
        with pytest.raises(PdsimError, match=f"unknown model '{typed}' \\(did you mean '{meant}'\\?\\)"):
            load_model(typed)


def test_path_escape_is_unknown(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(PdsimError, match="unknown model"):
        load_model("../x", tmp_path / "models")


def test_unknown_dtype():
    with pytest.raises(PdsimError, match="unknown dtype 'bf16'; known dtypes: bfloat16"):
        dtype_bytes("bf16")


def _write(tmp_path, cfg):
    (tmp_path / "org").mkdir(exist_ok=True)
    (tmp_path / "org" / "m.json").write_text(json.dumps(cfg))
    return tmp_path


def _tiny():
    path = Path(__file__).resolve().parent.parent / "configs/models/pdsim/tiny-llama.json"
    return json.loads(path.read_text())


def test_missing_field_names_file_and_field(tmp_path):
    cfg = _tiny()
    del cfg["intermediate_size"]
    root = _write(tmp_path, cfg)
    with pytest.raises(PdsimError, match=r"m\.json: missing field 'intermediate_size'"):
        load_model("org/m", root)


def test_bad_field_value(tmp_path):
    cfg = _tiny()
    cfg["num_hidden_layers"] = "two"
    root = _write(tmp_path, cfg)
    with pytest.raises(
        PdsimError, match=r"field 'num_hidden_layers': expected a positive integer, got 'two'"
    ):
        load_model("org/m", root)


def test_unsupported_architecture(tmp_path):
    cfg = _tiny()
    cfg["model_type"] = "falcon_mamba"
    root = _write(tmp_path, cfg)
    with pytest.raises(PdsimError, match="'falcon_mamba' is not supported"):
        load_model("org/m", root)


def test_models_dir_override(tmp_path):
    root = _write(tmp_path, _tiny())
    assert known_models(root) == ["org/m"]
    assert load_model("org/m", root).hidden_size == 256


@pytest.mark.parametrize(("raw", "elements"), [
    ({}, 4096 * 128),  # the default: max_position_embeddings x head_dim
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 512}}, 4096 * 128),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}}, 2048 * 128),
    ({"rope_parameters": {"rope_type": "deepseek_yarn", "factor": 40, "original_max_position_embeddings": 4096},
      "qk_rope_head_dim": 64}, 163840 * 64),  # MLA: its rope part of the head
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, 8192 * 128),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, 8192 * 128),
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]},
      "original_max_position_embeddings": 1024}, (4096 + 1024) * 128),  # Phi-3: short and long caches
    ({"partial_rotary_factor": 0.5}, 4096 * 64),
    ({"rope_scaling": "yarn"}, 4096 * 128),  # not an object: the plain rule
    # Both given and different: vLLM copies the config's own over its RoPE parameters' (patch_rope_parameters)
    ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
      "original_max_position_embeddings": 1024}, 4096 * 128),
    ({"rope_scaling": {"type": "linear", "factor": 1.0, "partial_rotary_factor": 0.25}, "partial_rotary_factor": 0.5},
     4096 * 64),
])
def test_rotary_cache_as_vllm_builds_it(raw, elements):
    from pdsim.models import rope_cache_elements

    assert rope_cache_elements({"max_position_embeddings": 4096, **raw}, 128) == elements


@pytest.mark.parametrize(("raw", "max_len"), [
    ({}, 4096),  # no scaling: the config's length
    ({"max_seq_len": 2048}, 2048),  # the smallest length key, as vLLM takes it
    ({"model_max_length": 8192}, 8192),  # Command-R's key overrides the others
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 512}}, 4096),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}}, 32768),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, 8192),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, 8192),
    ({"rope_scaling": {"type": "yarn", "factor": None, "original_max_position_embeddings": 1024}}, 1024),
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]},
      "original_max_position_embeddings": 1024}, 4096),  # Phi-3: the most --max-model-len may ask (not scaled)
    ({"original_max_position_embeddings": 1024,  # transformers 4 copies the top-level one over the nested one
      "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}}, 4096),
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0},
                          "sliding_attention": {"rope_type": "default"}}}, 8192),  # per layer type
    ({"rope_scaling": "yarn"}, 4096),  # not an object: the plain rule
])
def test_max_model_len_as_vllm_derives_it(raw, max_len):
    from pdsim.models import vllm_max_model_len

    assert vllm_max_model_len({"max_position_embeddings": 4096, **raw}) == max_len


def test_a_longrope_model_starts_at_its_original_length_unless_asked_for_more():
    from pdsim.models import vllm_default_max_model_len, vllm_max_model_len

    phi = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
           "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}}
    assert vllm_default_max_model_len(phi) == 4096 and vllm_max_model_len(phi) == 131072
    phimoe = {"max_position_embeddings": 131072, "rope_scaling": {
        "rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0], "original_max_position_embeddings": 4096}}
    assert vllm_default_max_model_len(phimoe) == 4096
    yarn = {"max_position_embeddings": 2048, "rope_scaling": {"type": "yarn", "factor": 2.0,
                                                              "original_max_position_embeddings": 2048}}
    assert vllm_default_max_model_len(yarn) == vllm_max_model_len(yarn) == 4096


@pytest.mark.parametrize("raw, field", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": float("inf"), "original_max_position_embeddings": 2048}},
     "'rope_scaling.factor': expected a finite number > 0, got inf"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": "4", "original_max_position_embeddings": 2048}},
     "'rope_scaling.factor': expected a finite number > 0, got '4'"),  # vLLM cannot multiply by it either
    ({"rope_scaling": {"rope_type": "linear", "factor": 0}}, "'rope_scaling.factor'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 1e300}}, r"give a max model length of 4.1e\+303"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 1e-9}}, "give a max model length of 0,"),
    ({"model_max_length": 1e30}, "'model_max_length': expected a whole number >= 1 and at most 1,000,000,000"),
    ({"seq_len": 0.5}, "'seq_len': expected a whole number >= 1"),
    ({"qk_rope_head_dim": float("inf")}, "'qk_rope_head_dim'"),
    ({"partial_rotary_factor": 2}, "'partial_rotary_factor': expected a finite number > 0 and at most 1"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": "x"},
                          "sliding_attention": {"rope_type": "default"}}},
     "'rope_parameters.full_attention.factor'"),
    ({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": [{"weights": {}}]}},
     "'quantization_config.config_groups': expected an object of quantization groups"),
    ({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": "fp8"}}}},
     "each group's 'weights' to be an object"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [64, 64]}},
     r"'quantization_config.weight_block_size': \[64, 64\] is not modelled"),
])
def test_a_length_rope_or_quantization_field_no_engine_could_use_is_named(tmp_path, raw, field):
    from pdsim.models import load_model

    root = _write(tmp_path, {**_tiny(), **raw})
    with pytest.raises(PdsimError, match=rf"m.json: .*{field}" if field.startswith("'") else field):
        load_model("org/m", root)


def test_phi3s_legacy_su_scaling_starts_at_its_original_length_as_longrope_does():
    from pdsim.models import vllm_default_max_model_len

    # vLLM's config patching renames rope_type "su" to "longrope" (transformers_utils/config.py).
    su = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
          "rope_scaling": {"type": "su", "short_factor": [1.0], "long_factor": [2.0]}}
    assert vllm_default_max_model_len(su) == 4096


def test_a_request_is_served_up_to_the_scaled_length_and_refused_past_it(tmp_path, monkeypatch):
    from pdsim import models
    from pdsim.metrics.summary import requests_frame
    from tests.helpers import cluster, instance, run

    monkeypatch.setattr(models, "_RUN_MODEL_FILES", {})

    raw = dict(_tiny(), max_position_embeddings=2048,
               rope_scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048})
    (tmp_path / "config.json").write_text(json.dumps(raw))
    models.use_model_file("acme/yarn-test", tmp_path / "config.json")
    assert load_model("acme/yarn-test").max_model_len == 4096  # max_position_embeddings 2048, as vLLM scales it
    df = requests_frame(run(cluster(instance(None, model_name="acme/yarn-test")), [(3000, 10, 0), (4000, 200, 0)]))
    assert list(df.status) == ["finished", "rejected"]
    assert df.reason[1] == "input+output = 4200 tokens exceeds the model's max length (4096)"
    # A measured engine started with a longer --max-model-len (validate reads it from meta.json) serves it.
    df = requests_frame(run(cluster(instance(None, model_name="acme/yarn-test")), [(4000, 200, 0)],
                            recorded_max_model_len=8192))
    assert list(df.status) == ["finished"]


def test_the_vocabulary_is_padded_to_64_before_tp_splits_it(tmp_path):
    spec = load_model("org/m", _write(tmp_path, dict(_tiny(), vocab_size=1000)))
    assert spec.vocab_per_shard(1) == 1024 and spec.vocab_per_shard(2) == 512  # vLLM pads 1000 to 1024
    assert load_model("meta-llama/Llama-3.1-8B").vocab_per_shard(8) == 128256 // 8  # already a multiple of 64
