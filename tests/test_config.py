import copy
import json
import re
from pathlib import Path

import pytest

from pdsim.config import ClusterConfig, load_cluster_config
from pdsim.errors import ConfigError, PdsimError

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "configs" / "cluster"
PD = json.loads((CLUSTER_DIR / "single_node_pd_instance.json").read_text())


@pytest.mark.parametrize("path", sorted(CLUSTER_DIR.glob("*.json")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_cluster_config(path)
    assert isinstance(cfg, ClusterConfig)
    assert cfg.instances()


def test_shipped_config_contents():
    single = load_cluster_config(CLUSTER_DIR / "single_node_single_instance.json")
    assert [r.config.pd_type for r in single.instances()] == [None]
    pd = load_cluster_config(CLUSTER_DIR / "single_node_pd_instance.json")
    assert [r.config.pd_type for r in pd.instances()] == ["prefill", "decode"]
    assert pd.link_bw == 16 and pd.link_latency == 20000
    inst = pd.instances()[0].config
    assert inst.model_name == "meta-llama/Llama-3.1-8B" and inst.hardware == "RTXPRO6000"
    assert (inst.npu_mem.mem_size, inst.npu_mem.mem_bw, inst.npu_mem.mem_util) == (96, 1792, None)
    assert inst.gpu_memory_utilization == 0.9
    # vLLM defaults for our knobs
    assert (inst.max_num_seqs, inst.max_num_batched_tokens, inst.block_size) == (128, 2048, 16)
    assert inst.enable_chunked_prefill and inst.dtype == "bfloat16" and inst.profile_dir is None
    assert pd.router.prefill_policy == "least_loaded"
    multi = load_cluster_config(CLUSTER_DIR / "multi_node_2p2d.json")
    assert [r.instance_id for r in multi.instances()] == ["n0.i0", "n0.i1", "n1.i0", "n1.i1"]
    node, idx, conf = multi.instances()[2]
    assert (node, idx, conf.pd_type) == (1, 0, "decode")


def _write(tmp_path, raw) -> Path:
    p = tmp_path / "cluster.json"
    p.write_text(json.dumps(raw))
    return p


def _err(tmp_path, mutate) -> str:
    raw = copy.deepcopy(PD)
    mutate(raw)
    with pytest.raises(ConfigError) as e:
        load_cluster_config(_write(tmp_path, raw))
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "cluster.json") + ": ")
    return msg


def _inst(raw, i=1):
    return raw["nodes"][0]["instances"][i]


@pytest.mark.parametrize(("extra", "why"), [
    ({"npu_num": 4}, "npu_num, LLMServingSim's former key for them, is not read"),
    ({"pp_size": 2}, "pp_size 2 needs tp_size x pp_size of them"),
])
def test_an_instance_without_its_gpu_count_is_refused_where_one_gpu_would_drop_what_it_meant(tmp_path, extra, why):
    def mutate(raw):
        for key in ("num_npus", "tp_size"):
            _inst(raw).pop(key, None)
        _inst(raw).update(extra)

    assert _err(tmp_path, mutate).endswith(f"nodes[0].instances[1]: give num_npus or tp_size, the instance's GPUs "
                                           f"({why})")


def test_npu_num_is_not_read_but_may_not_contradict_the_gpu_count(tmp_path):
    def mutate(raw):
        _inst(raw).update(npu_num=2, num_npus=1, tp_size=1)

    assert _err(tmp_path, mutate).endswith("nodes[0].instances[1]: npu_num 2 (LLMServingSim's former key for the "
                                           "instance's GPUs, not read) but num_npus 1: remove npu_num or make it agree")


def test_memory_bandwidth_and_latency_are_bounded(tmp_path):
    # 1e308 GB/s overflowed the estimator's bytes per microsecond to inf.
    for key, value, bound in (("mem_bw", 1e308, "1000000"), ("mem_latency", 1e300, "1000000000")):
        msg = _err(tmp_path, lambda r, key=key, value=value: _inst(r)["npu_mem"].update({key: value}))
        assert msg.endswith(f"nodes[0].instances[1].npu_mem.{key}: expected a number <= {bound}, got {value:g}")


def test_pd_type_typo(tmp_path):
    msg = _err(tmp_path, lambda r: _inst(r).update(pd_type="prefil"))
    assert msg.endswith('nodes[0].instances[1].pd_type: expected "prefill", "decode" or null, got "prefil"')


@pytest.mark.parametrize(
    ("where", "key", "value", "expect"),
    [
        ("inst", "tp_size", 0, "nodes[0].instances[1].tp_size: expected a number >= 1, got 0"),
        ("inst", "max_num_seqs", -5, "nodes[0].instances[1].max_num_seqs: expected a number >= 1, got -5"),
        ("mem", "mem_size", 0, "nodes[0].instances[1].npu_mem.mem_size: expected a number > 0, got 0"),
        ("mem", "mem_bw", -1, "nodes[0].instances[1].npu_mem.mem_bw: expected a number >= 1, got -1"),
        # Below 1 GB/s a run's steps stretch so far that its timeline alone would not finish.
        ("mem", "mem_bw", 1e-6, "nodes[0].instances[1].npu_mem.mem_bw: expected a number >= 1, got 1e-06"),
        ("mem", "mem_util", 1.5, "nodes[0].instances[1].npu_mem.mem_util: expected a number <= 1, got 1.5"),
        ("top", "link_bw", 0, "link_bw: expected a number > 0, got 0"),
        ("top", "link_latency", -3, "link_latency: expected a number >= 0, got -3"),
    ],
)
def test_bad_numbers(tmp_path, where, key, value, expect):
    def mutate(r):
        target = {"inst": _inst(r), "mem": _inst(r)["npu_mem"], "top": r}[where]
        target[key] = value

    assert _err(tmp_path, mutate).endswith(expect)


def test_a_memory_latency_is_said_to_be_ignored(tmp_path, capsys):
    raw = copy.deepcopy(PD)
    _inst(raw)["npu_mem"]["mem_latency"] = 250
    (tmp_path / "c.json").write_text(json.dumps(raw))
    load_cluster_config(tmp_path / "c.json")
    err = capsys.readouterr().err
    assert "nodes[0].instances[1].npu_mem.mem_latency: memory access latency is not modelled" in err
    assert "instances[0].npu_mem.mem_latency" not in err  # 0, as LLMServingSim's configs give it: nothing to say


def test_a_step_budget_above_the_context_length_is_said(tmp_path, capsys):
    # LLMServingSim's scheduler takes min(max_num_batched_tokens, max_position_embeddings); vLLM's does not.
    raw = copy.deepcopy(PD)
    for inst in raw["nodes"][0]["instances"]:
        inst["max_num_batched_tokens"] = 140_000
    (tmp_path / "c.json").write_text(json.dumps(raw))
    load_cluster_config(tmp_path / "c.json")
    err = capsys.readouterr().err
    assert err.count("nodes[0].instances[0].max_num_batched_tokens: 140,000 is above meta-llama/Llama-3.1-8B's "
                     "context length 131,072: LLMServingSim's scheduler caps a step there") == 1
    load_cluster_config(CLUSTER_DIR / "single_node_pd_instance.json")
    assert "context length" not in capsys.readouterr().err


def test_an_instance_without_pd_type_is_said_to_be_colocated(tmp_path, capsys):
    raw = copy.deepcopy(PD)
    del _inst(raw)["pd_type"]
    _inst(raw, 0)["pd_type"] = None
    (tmp_path / "c.json").write_text(json.dumps(raw))
    assert load_cluster_config(tmp_path / "c.json").instances()[1].config.pd_type is None
    err = capsys.readouterr().err
    assert "nodes[0].instances[1]: no pd_type, read as null (colocated, prefill and decode); LLMServingSim requires" \
           in err and "instances[0]: no pd_type" not in err  # null given is null meant


def test_wrong_types_are_not_coerced(tmp_path):
    assert _err(tmp_path, lambda r: r.update(link_bw="16")).endswith('link_bw: expected a number, got "16"')
    assert _err(tmp_path, lambda r: _inst(r).update(num_npus=1.5)).endswith(
        "instances[1].num_npus: expected an integer, got 1.5"
    )
    assert _err(tmp_path, lambda r: _inst(r).update(enable_chunked_prefill="yes")).endswith(
        'enable_chunked_prefill: expected true or false, got "yes"'
    )


def test_missing_field(tmp_path):
    msg = _err(tmp_path, lambda r: _inst(r, 0).pop("hardware"))
    assert msg.endswith("nodes[0].instances[0].hardware: missing required field")


def test_num_instances_mismatch(tmp_path):
    msg = _err(tmp_path, lambda r: r["nodes"][0].update(num_instances=3))
    assert msg.endswith("nodes[0]: num_instances is 3 but 2 instances are listed")


def test_num_nodes_mismatch(tmp_path):
    assert _err(tmp_path, lambda r: r.update(num_nodes=2)).endswith("num_nodes is 2 but 1 nodes are listed")


def test_unknown_model(tmp_path):
    msg = _err(tmp_path, lambda r: _inst(r).update(model_name="meta-llama/Llama-9B"))
    assert "nodes[0].instances[1].model_name: unknown model 'meta-llama/Llama-9B'" in msg
    assert "known models:" in msg and "meta-llama/Llama-3.1-8B" in msg
    assert msg.endswith("another model: its Hugging Face config.json as model_config.json beside the cluster config "
                        "of one model (LLMServingSim's run layout)")


def test_unknown_dtype(tmp_path):
    msg = _err(tmp_path, lambda r: _inst(r).update(dtype="bf16"))
    assert msg.endswith(
        'instances[1].dtype: expected "bfloat16", "float16", "float32", "fp8" or "int8", got "bf16"'
    )


def test_weights_do_not_fit(tmp_path):
    msg = _err(tmp_path, lambda r: _inst(r)["npu_mem"].update(mem_size=16))
    # Llama-3.1-8B bf16 is 16.06e9 bytes = 14.96 GiB; mem_size 16 (under what CUDA shows: as given) x 0.9 leaves 14.4
    assert "nodes[0].instances[1]: meta-llama/Llama-3.1-8B weights need 14.96 GiB" in msg
    assert "only 14.40 GiB is usable" in msg


def test_weights_must_fit_in_the_memory_cuda_shows_as_the_kv_accounting_takes_it(tmp_path):
    # 14.96 GiB of weights: 96 x 0.157 = 15.07 would hold them, but of an RTX PRO 6000's 96 GB CUDA shows 95.03
    # (assumed as on H100), x 0.157 = 14.92
    msg = _err(tmp_path, lambda r: _inst(r).update(gpu_memory_utilization=0.157))
    assert msg.endswith("weights need 14.96 GiB per NPU (bfloat16, tp=1) but only 14.92 GiB is usable (95.03 GiB that "
                        "CUDA shows of mem_size 96 GB x gpu_memory_utilization 0.157)")
    # With kv_cache_memory_bytes vLLM ignores the utilization: the weights then have all the memory CUDA shows (the
    # KV sizing checks weights + KV + the rest against it).
    raw = copy.deepcopy(PD)
    _inst(raw).update(gpu_memory_utilization=0.157, kv_cache_memory_bytes=4 * 2**30)
    assert load_cluster_config(_write(tmp_path, raw)).instances()[1].config.kv_cache_memory_bytes == 4 * 2**30
    msg = _err(tmp_path, lambda r: (_inst(r)["npu_mem"].update(mem_size=14),
                                    _inst(r).update(kv_cache_memory_bytes=2**30)))
    assert msg.endswith("but only 14.00 GiB is usable (mem_size 14 GB; kv_cache_memory_bytes given, so no "
                        "utilization applies)")
    # LLMServingSim's mem_util too: the override sizes the KV whatever the rule (perf/memory.py kv_rule).
    raw = copy.deepcopy(PD)
    _inst(raw)["npu_mem"]["mem_util"] = 0.1
    _inst(raw).pop("gpu_memory_utilization", None)
    _inst(raw).update(kv_cache_memory_bytes=4 * 2**30)
    assert load_cluster_config(_write(tmp_path, raw)).instances()[1].config.kv_cache_memory_bytes == 4 * 2**30


def test_tp_makes_weights_fit(tmp_path):
    raw = copy.deepcopy(PD)
    for inst in raw["nodes"][0]["instances"]:
        inst.update(num_npus=2, tp_size=2)
        inst["npu_mem"]["mem_size"] = 16
    cfg = load_cluster_config(_write(tmp_path, raw))
    assert cfg.instances()[0].config.tp_size == 2


def test_decode_only_cluster(tmp_path):
    msg = _err(tmp_path, lambda r: _inst(r, 0).update(pd_type="decode"))
    assert 'there are "decode" instances but no "prefill" instance' in msg


def test_prefill_with_only_colocated(tmp_path):
    # a colocated instance does not take KV hand-offs, so it cannot pair with a prefill one
    msg = _err(tmp_path, lambda r: _inst(r, 1).update(pd_type=None))
    assert 'there are "prefill" instances but no "decode" instance' in msg


def test_prefill_and_decode_of_different_models(tmp_path):
    # Before, such a cluster ran and rejected every request as too large for any instance.
    msg = _err(tmp_path, lambda r: _inst(r, 1).update(model_name="Qwen/Qwen3-8B"))
    assert ("nodes[0].instances[0] is a prefill instance of meta-llama/Llama-3.1-8B, but no decode instance serves "
            "that model (they serve Qwen/Qwen3-8B)") in msg


def test_prefill_and_decode_holding_the_kv_cache_in_other_formats(tmp_path):
    # vLLM's NixlConnector refuses a peer whose KV cache dtype differs; this ran, moving fp8 blocks into a bf16 cache.
    msg = _err(tmp_path, lambda r: _inst(r, 0).update(kv_cache_dtype="fp8"))
    assert ("nodes[0].instances[0] (prefill) holds meta-llama/Llama-3.1-8B's KV cache as fp8 with dtype bfloat16, "
            "but nodes[0].instances[1] (decode) as bfloat16 with dtype bfloat16") in msg
    # Two prefill instances of different formats: the pair named is a prefill and a decode one, not the two prefills.
    raw = copy.deepcopy(PD)
    second = copy.deepcopy(_inst(raw, 0))
    second["kv_cache_dtype"] = "fp8"
    raw["nodes"][0]["instances"].append(second)
    raw["nodes"][0]["num_instances"] = 3
    with pytest.raises(ConfigError, match=re.escape("nodes[0].instances[2] (prefill) holds meta-llama/Llama-3.1-8B's "
                                                    "KV cache as fp8 with dtype bfloat16, but nodes[0].instances[1] "
                                                    "(decode) as bfloat16")):
        load_cluster_config(_write(tmp_path, raw))
    raw = copy.deepcopy(PD)
    for i in (0, 1):
        _inst(raw, i)["kv_cache_dtype"] = "fp8"
    assert load_cluster_config(_write(tmp_path, raw)).instances()[1].config.kv_dtype == "fp8"


def test_unknown_extra_key(tmp_path):
    msg = _err(tmp_path, lambda r: _inst(r).update(max_num_seq=64))
    assert 'nodes[0].instances[1]: unknown key "max_num_seq" (did you mean "max_num_seqs"?)' in msg
    assert _err(tmp_path, lambda r: r.update(lnk_bw=3)).startswith(
        str(tmp_path / "cluster.json") + ': unknown key "lnk_bw"'
    )


def test_allowlisted_keys_are_ignored(tmp_path):
    raw = copy.deepcopy(PD)
    _inst(raw).update(npu_num=1, npu_group=1, name="dec0", _comment="why")
    cfg = load_cluster_config(_write(tmp_path, raw))
    assert cfg.instances()[1].config.pd_type == "decode"


def test_pipeline_parallel_limits(tmp_path):
    # pp_size > 1 loads (docs/pipeline.md), with async scheduling too, but never with more stages than layers.
    raw = copy.deepcopy(PD)
    _inst(raw).update(pp_size=4, num_npus=4, async_scheduling=True)
    assert load_cluster_config(_write(tmp_path, raw)).instances()[1].config.pp_size == 4
    msg = _err(tmp_path, lambda r: _inst(r).update(pp_size=64, num_npus=64))
    assert msg.endswith("pp_size 64: more pipeline stages than the model's 32 layers")


def test_tp_larger_than_npus(tmp_path):
    msg = _err(tmp_path, lambda r: _inst(r).update(tp_size=2))
    assert msg.endswith("nodes[0].instances[1]: tp_size * pp_size = 2 is more than num_npus = 1: an instance runs "
                        "on tp_size x pp_size GPUs")
    # Spare GPUs would be counted in nothing: refused too (before, silently ignored).
    msg = _err(tmp_path, lambda r: _inst(r).update(num_npus=2))
    assert "nodes[0].instances[1]: tp_size * pp_size = 1 is less than num_npus = 2" in msg


def test_router_policy(tmp_path):
    msg = _err(tmp_path, lambda r: r.update(router={"decode_policy": "rr"}))
    assert msg.endswith('router.decode_policy: expected "round_robin", "random", "least_loaded", "power_of_two", '
                        '"prefix_aware" or "kv_aware", got "rr"')


def test_several_errors_one_line_each(tmp_path):
    def mutate(r):
        _inst(r, 0)["tp_size"] = 0
        _inst(r, 1)["block_size"] = 0

    lines = _err(tmp_path, mutate).splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("instances[0].tp_size: expected a number >= 1, got 0")
    assert lines[1].endswith("instances[1].block_size: expected a number >= 1, got 0")


def test_one_error_in_the_same_field_of_every_instance_is_one_line(tmp_path):
    # As an option applied to every instance gives it: the places are named together.
    def mutate(r):
        for i in (0, 1):
            _inst(r, i)["block_size"] = 0

    assert _err(tmp_path, mutate).endswith("nodes[0].instances[0].block_size, nodes[0].instances[1].block_size: "
                                           "expected a number >= 1, got 0")


def test_malformed_json(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "num_nodes": 1,\n  "link_bw": 16,,\n}')
    with pytest.raises(ConfigError, match=r"bad\.json:3:17: not valid JSON \(Expecting property name"):
        load_cluster_config(p)


def test_a_trace_given_as_the_cluster_config_is_named_so(tmp_path):
    with pytest.raises(ConfigError, match=r"example_trace\.jsonl:2:1: not valid JSON \(Extra data\): the file holds "
                                          r"one JSON object per line, as a trace does; a cluster config is a single"):
        load_cluster_config(CLUSTER_DIR.parent.parent / "workloads/example_trace.jsonl")
    p = tmp_path / "two.json"  # two objects, but not one per line: no such guess
    p.write_text('{"num_nodes": 1}\n{"num_nodes": 1,\n "link_bw": 16}\n')
    with pytest.raises(ConfigError) as err:
        load_cluster_config(p)
    assert "per line" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cluster config not found"):
        load_cluster_config(tmp_path / "nope.json")


def test_overrides_apply_to_all_instances_before_validation(tmp_path):
    p = _write(tmp_path, PD)
    cfg = load_cluster_config(p, {"max_num_seqs": 64, "block_size": None, "enable_chunked_prefill": False})
    assert [r.config.max_num_seqs for r in cfg.instances()] == [64, 64]
    assert all(r.config.block_size == 16 and not r.config.enable_chunked_prefill for r in cfg.instances())
    with pytest.raises(ConfigError, match="max_num_batched_tokens .* must be >= max_num_seqs"):
        load_cluster_config(p, {"max_num_batched_tokens": 64})
    with pytest.raises(ConfigError, match="cannot override tp_size"):
        load_cluster_config(p, {"tp_size": 2})


def test_a_hardware_name_with_no_spec_or_profile_gets_a_close_one_named(tmp_path):
    # A name one letter off was shown in a long list of the known ones; blanks around a name are read past, as
    # case and separators are (" RTXPRO6000 " is the RTX PRO 6000).
    from pdsim.engine.cluster import SimOptions, simulate
    from tests.helpers import trace

    raw = copy.deepcopy(PD)
    for i in (0, 1):
        _inst(raw, i)["hardware"] = "RTXPRO600"
    with pytest.raises(PdsimError, match=r"no hardware spec for 'RTXPRO600' to estimate one \(did you mean "
                                         r"'RTXPRO6000'\?\)"):
        simulate(load_cluster_config(_write(tmp_path, raw)), trace([(10, 2, 0.0)]), SimOptions())
    for i in (0, 1):
        _inst(raw, i)["hardware"] = " RTXPRO6000 "
    assert load_cluster_config(_write(tmp_path, raw)).instances()[0].config.hardware == "RTXPRO6000"


def test_without_chunked_prefill_an_unset_budget_is_vllms_max_model_len():
    # vLLM 0.19 (arg_utils.py): with chunked prefill off and no max_num_batched_tokens, the budget is raised to
    # max_model_len so a whole prompt fits one step, and kept under max_num_seqs x max_model_len.
    from pdsim.config import cluster_config_from_dict

    raw = json.loads((CLUSTER_DIR / "single_node_single_instance.json").read_text())
    inst = raw["nodes"][0]["instances"][0]
    inst.pop("max_num_batched_tokens", None)
    inst["enable_chunked_prefill"] = False
    assert cluster_config_from_dict(raw).instances()[0].config.max_num_batched_tokens == 131072  # Llama-3.1-8B
    inst["max_num_batched_tokens"] = 4096  # given: stands (vLLM then serves prompts up to it)
    assert cluster_config_from_dict(raw).instances()[0].config.max_num_batched_tokens == 4096
    del inst["max_num_batched_tokens"]
    inst["enable_chunked_prefill"] = True  # chunked: vLLM's default budget
    assert cluster_config_from_dict(raw).instances()[0].config.max_num_batched_tokens == 2048
