"""A run's own model config (model_config.json beside the cluster config, LLMServingSim's run layout),
quantised checkpoints read as vLLM reads them, and fp8 LLMServingSim profiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pdsim.config import load_cluster_config
from pdsim.errors import ConfigError, PdsimError, ProfileError
from pdsim.models import MODELS_DIR, checkpoint_kv_cache_dtype, checkpoint_quantization, load_model
from pdsim.perf.profile import find_profile

LLAMA = json.loads((MODELS_DIR / "meta-llama" / "Llama-3.1-8B.json").read_text())
RUN = Path(__file__).resolve().parents[2] / "shared" / "data" / "calibration" / "llmservingsim-rtxpro6000-llama31-8b"
COMPRESSED_FP8 = {"quant_method": "compressed-tensors", "config_groups": {
    "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}


@pytest.mark.parametrize("config,expected", [
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8_block"),  # Qwen3-*-FP8, DeepSeek-V3
    ({"quant_method": "fp8"}, "fp8"),
    (COMPRESSED_FP8, "fp8"),  # RedHatAI / neuralmagic FP8-dynamic
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {
        "num_bits": 8, "type": "float", "strategy": "block"}}}}, "fp8_block"),
    ({"quant_method": "modelopt", "quant_algo": "FP8"}, "fp8"),  # nvidia/*-FP8
])
def test_checkpoint_quantization_as_vllm_reads_it(config, expected):
    assert checkpoint_quantization(Path("c.json"), {"quantization_config": config}) == expected
    assert checkpoint_quantization(Path("c.json"), {}) is None


@pytest.mark.parametrize("config,expected", [
    ({"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}, "fp8"),  # nvidia/*-FP8
    ({"quant_method": "modelopt", "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "fp8"}}, "fp8"),
    ({"quant_method": "modelopt_fp4", "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"}}, "fp8"),
    ({"quant_method": "modelopt", "kv_cache_scheme": {"dynamic": True, "num_bits": 8, "type": "float"}}, None),
    ({"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": None}, None),
    ({"quant_method": "modelopt", "kv_cache_quant_algo": "NVFP4"}, None),  # vLLM falls back to "auto"
    ({**COMPRESSED_FP8, "kv_cache_scheme": {"num_bits": 8, "type": "float"}}, None),  # not read for "auto"
])
def test_kv_cache_dtype_auto_as_vllm_resolves_it_from_the_checkpoint(config, expected):
    assert checkpoint_kv_cache_dtype({"quantization_config": config}) == expected


def test_a_modelopt_checkpoint_with_an_fp8_kv_scheme_runs_an_fp8_cache_under_auto(tmp_path):
    from pdsim.engine.cluster import SimOptions, simulate
    from tests.helpers import trace

    modelopt = {"quant_method": "modelopt", "quant_algo": "FP8"}
    tokens = {}
    for kv_algo, kv_cache_dtype in ((None, "auto"), ("FP8", "auto"), ("FP8", "bfloat16")):
        name = f"acme/Llama-3.1-8B-modelopt-{kv_algo}-test"
        run = tmp_path / f"{kv_algo}-{kv_cache_dtype}"
        run.mkdir()
        cfg = load_cluster_config(_run_dir(run, name, {**LLAMA, "quantization_config": {
            **modelopt, "kv_cache_quant_algo": kv_algo}}, kv_cache_dtype=kv_cache_dtype))
        result = simulate(cfg, trace([(100, 2, 0.0)]), SimOptions())
        info, notes = result.infos[0], result.instances[0].predictor.notes
        assert info.kv_cache_dtype == ("fp8" if (kv_algo, kv_cache_dtype) == ("FP8", "auto") else "bfloat16")
        assert any(f"kv_cache_dtype auto: fp8, as vLLM resolves it from {name}" in n for n in notes) == (
            info.kv_cache_dtype == "fp8")
        tokens[kv_algo, kv_cache_dtype] = info.kv_tokens
    # A profile measured with "auto" on such a checkpoint timed its attention over an fp8 cache.
    from dataclasses import replace

    from pdsim.engine.build import _profiled_kv_dtype
    meta = result.instances[0].predictor.profile.meta
    assert _profiled_kv_dtype(replace(meta, model=name, engine_kv_cache_dtype="auto")) == "fp8"
    assert _profiled_kv_dtype(replace(meta, model=name, engine_kv_cache_dtype="bfloat16")) == "bfloat16"
    assert _profiled_kv_dtype(replace(meta, model="acme/unknown", engine_kv_cache_dtype=None)) == meta.dtype
    assert tokens[None, "auto"] == tokens["FP8", "bfloat16"]
    assert 0 <= tokens["FP8", "auto"] - 2 * tokens[None, "auto"] <= 16  # twice the blocks of half the bytes, +-1


@pytest.mark.parametrize("config,field", [
    ({"quant_method": "awq", "bits": 4}, "quantization_config.quant_method"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 4, "type": "int"}}}},
     "quantization_config.config_groups"),
])
def test_other_schemes_are_refused_naming_the_field(config, field):
    with pytest.raises(PdsimError, match=f"c.json: field '{field}'"):
        checkpoint_quantization(Path("c.json"), {"quantization_config": config})


def _run_dir(tmp_path: Path, model_name: str, model_config: dict | None, **instance) -> Path:
    cfg = {"num_nodes": 1, "link_bw": 16, "link_latency": 0, "nodes": [{"num_instances": 1, "instances": [{
        "model_name": model_name, "hardware": "H100-SXM", "npu_mem": {"mem_size": 80, "mem_bw": 3350},
        "num_npus": 1, "tp_size": 1, "pd_type": None, **instance}]}]}
    (tmp_path / "cluster_config.json").write_text(json.dumps(cfg))
    if model_config is not None:
        (tmp_path / "model_config.json").write_text(json.dumps(model_config))
    return tmp_path / "cluster_config.json"


def test_a_runs_own_model_config_names_an_unbundled_fp8_checkpoint(tmp_path, capsys):
    name = "acme/Llama-3.1-8B-FP8-run-test"
    path = _run_dir(tmp_path, name, {**LLAMA, "quantization_config": COMPRESSED_FP8})
    cfg = load_cluster_config(path)
    assert f"model {name!r} from {tmp_path / 'model_config.json'}" in capsys.readouterr().err
    ic = cfg.nodes[0].instances[0]
    assert ic.quantization == "fp8"  # the checkpoint's, with no --quantization given
    model = load_model(name)
    fp8, bf16 = model.weight_bytes("bfloat16", 1, quantization="fp8"), model.weight_bytes("bfloat16", 1)
    assert 0.5 < fp8 / bf16 < 0.6  # fp8 layers, bf16 embeddings and lm_head
    # A quantization other than the checkpoint's is an error that names the field.
    refused = r"instances\[0\]: the checkpoint .* quantised fp8 .*got quantization \"fp8_block\""
    with pytest.raises(ConfigError, match=refused):
        load_cluster_config(_run_dir(tmp_path, name, None, quantization="fp8_block"))


def test_without_its_model_config_an_unknown_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'acme/not-bundled-anywhere'"):
        load_cluster_config(_run_dir(tmp_path, "acme/not-bundled-anywhere", None))


def test_a_bundled_model_is_never_replaced_by_a_runs_file_and_a_difference_is_said(tmp_path, capsys):
    other = {**LLAMA, "num_hidden_layers": 2}
    load_cluster_config(_run_dir(tmp_path, "meta-llama/Llama-3.1-8B", other))
    assert load_model("meta-llama/Llama-3.1-8B").num_layers == 32
    assert ("differs from pdsim's bundled config of that name (num_layers 2 there, 32 bundled); the bundled one is "
            "used") in capsys.readouterr().err
    load_cluster_config(tmp_path / "cluster_config.json")  # read again (validate reads it twice): said once
    assert "differs from pdsim's bundled config" not in capsys.readouterr().err
    (tmp_path / "same").mkdir()
    load_cluster_config(_run_dir(tmp_path / "same", "meta-llama/Llama-3.1-8B", LLAMA))  # the same: nothing to say
    assert capsys.readouterr().err == ""
    # A file of another checkpoint format is another checkpoint than the name: refused, each time it is read.
    (tmp_path / "fp8").mkdir()
    path = _run_dir(tmp_path / "fp8", "meta-llama/Llama-3.1-8B", {**LLAMA, "quantization_config": COMPRESSED_FP8})
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"model_config.json: its quantization_config makes the checkpoint's "
                                              r"weights fp8, but pdsim's bundled 'meta-llama/Llama-3.1-8B' .* is "
                                              r"unquantised"):
            load_cluster_config(path)
    # Unless the instance asks for the file's own weights: the bundled shape at that precision is that checkpoint.
    (tmp_path / "asked").mkdir()
    cfg = load_cluster_config(_run_dir(tmp_path / "asked", "meta-llama/Llama-3.1-8B",
                                       {**LLAMA, "quantization_config": COMPRESSED_FP8}, quantization="fp8"))
    assert cfg.nodes[0].instances[0].quantization == "fp8"
    assert "differs from pdsim's bundled config" in capsys.readouterr().err
    # A weight format pdsim does not read is another checkpoint too, not a file to pass over.
    (tmp_path / "awq").mkdir()
    with pytest.raises(ConfigError, match=r"its quantization_config makes it another checkpoint than pdsim's bundled "
                                          r"'meta-llama/Llama-3.1-8B'"):
        load_cluster_config(_run_dir(tmp_path / "awq", "meta-llama/Llama-3.1-8B",
                                     {**LLAMA, "quantization_config": {"quant_method": "awq", "bits": 4}}))
    # And an unquantised copy of a checkpoint bundled quantised (gpt-oss's MXFP4 experts).
    (tmp_path / "oss").mkdir()
    oss = json.loads((MODELS_DIR / "openai" / "gpt-oss-20b.json").read_text())
    oss.pop("quantization_config")
    with pytest.raises(ConfigError, match=r"weights unquantised, but pdsim's bundled 'openai/gpt-oss-20b' .* is mxfp4"):
        load_cluster_config(_run_dir(tmp_path / "oss", "openai/gpt-oss-20b", oss))
    # One that cannot be read is in nobody's way (the bundled config runs): said, not an error.
    (tmp_path / "broken").mkdir()
    load_cluster_config(_run_dir(tmp_path / "broken", "meta-llama/Llama-3.1-8B", {}))
    assert "the bundled config is used; " in capsys.readouterr().err


def test_a_broken_model_config_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="model_config.json: field 'num_hidden_layers'"):
        load_cluster_config(_run_dir(tmp_path, "acme/broken-run-test", {**LLAMA, "num_hidden_layers": "x"}))


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared/data/calibration")
def test_an_fp8_llmservingsim_profile_must_match_the_instances_weights(tmp_path):
    shutil.copytree(RUN / "profile", tmp_path / "profile")
    meta = tmp_path / "profile" / "meta.yaml"
    meta.write_text(meta.read_text().replace("variant: bf16", "variant: fp8"))
    profile = find_profile("RTXPRO6000", "meta-llama/Llama-3.1-8B", "fp8", 1, profile_dir=tmp_path / "profile")
    # fp8 weights over bf16 activations: the all-reduce and dispatch bytes stay 2 per value.
    assert profile.meta.quantization == "fp8" and profile.meta.dtype == "bfloat16"
    # Each way round, the fix offered is the one that fits it.
    with pytest.raises(ProfileError, match=r"meta.yaml: field 'variant': .*fp8 weights.*runs bfloat16 \(set the "
                                           r"instance's quantization \"fp8\""):
        find_profile("RTXPRO6000", "meta-llama/Llama-3.1-8B", "bfloat16", 1, profile_dir=tmp_path / "profile")
    bf16 = find_profile("RTXPRO6000", "meta-llama/Llama-3.1-8B", "bfloat16", 1, profile_dir=RUN / "profile")
    assert bf16.meta.quantization is None
    with pytest.raises(ProfileError, match=r"field 'variant': .*bfloat16 weights, but the instance runs fp8 \(give a "
                                           r"profile measured with fp8 weights"):
        find_profile("RTXPRO6000", "meta-llama/Llama-3.1-8B", "fp8", 1, profile_dir=RUN / "profile")


def test_a_pdsim_profile_must_match_the_instances_weights_too(tmp_path):
    from pdsim.hardware import get_hardware
    from pdsim.perf.estimate import estimate_meta, estimate_rows
    from pdsim.perf.profile import write_profile

    hw, model = get_hardware("RTXPRO6000"), load_model("meta-llama/Llama-3.1-8B")
    for name, quantization in (("bf16", None), ("fp8", "fp8")):
        write_profile(tmp_path / name, estimate_meta(hw, model, "bfloat16", 1, quantization),
                      *estimate_rows(hw, model, "bfloat16", 1, quantization))
    assert find_profile("RTXPRO6000", model.name, "fp8", 1, profile_dir=tmp_path / "fp8") is not None
    with pytest.raises(ProfileError, match=r"fp8/meta.json: field 'device.gemm_precision': .*fp8 weights.*runs "
                                           "bfloat16"):
        find_profile("RTXPRO6000", model.name, "bfloat16", 1, profile_dir=tmp_path / "fp8")
    with pytest.raises(ProfileError, match=r"bf16/meta.json: .*with bfloat16 weights, but the instance runs fp8"):
        find_profile("RTXPRO6000", model.name, "fp8", 1, profile_dir=tmp_path / "bf16")


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared")
@pytest.mark.parametrize("hardware,outcome", [
    ("H100", "error"),  # a GPU pdsim knows, not the one the profile was measured on
    ("RTX-PRO-6000", "same"),  # an alias of the profile's own
    ("RTXPRO6000-MaxQ-lab", "note"),  # a name pdsim does not know: may be the same GPU, so said, not refused
])
def test_a_profile_measured_on_another_gpu_is_refused_or_said(tmp_path, hardware, outcome):
    from click.testing import CliRunner

    from pdsim.cli import cli

    cfg = json.loads((RUN / "cluster_config.json").read_text())
    cfg["nodes"][0]["instances"][0].update(hardware=hardware, npu_mem={"mem_size": 80, "mem_bw": 1597, "mem_util": 0.9})
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    (tmp_path / "t.jsonl").write_text(
        '{"input_toks": 100, "output_toks": 4, "arrival_time_ns": 0}\n')
    res = CliRunner().invoke(cli, ["run", "--cluster-config", str(tmp_path / "c.json"), "--dataset",
                                    str(tmp_path / "t.jsonl"), "--profile-dir", str(RUN / "profile"),
                                    "--output", str(tmp_path / "o.csv"), "--quiet"])
    said = "the profile was measured on 'RTXPRO6000'"
    if outcome == "error":
        assert isinstance(res.exception, ProfileError)
        assert "instances[0].hardware: H100-SXM, but the profile" in str(res.exception)
        assert "was measured on RTXPRO6000" in str(res.exception)
    else:
        assert res.exit_code == 0, res.output
        assert (said in res.output) == (outcome == "note")


@pytest.mark.parametrize("device,hardware,board", [
    ("NVIDIA H100 PCIe", "H100", "H100-PCIe"),  # LLMServingSim's "H100" is read as the SXM board
    ("NVIDIA H100 80GB HBM3", "H100", "H100-SXM"),
    ("NVIDIA H100 80GB HBM3", "H100-PCIe", "H100-SXM"),
    ("NVIDIA H100 NVL", "H100", "H100-NVL"),
    ("NVIDIA H100 SXM5 80GB", "H100", "H100-SXM"),
    ("NVIDIA A100-SXM4-40GB", "A100", "A100-40GB"),
    ("NVIDIA A100-SXM-80GB", "A100", "A100-80GB"),
    ("NVIDIA A100 80GB PCIe", "A100", "A100-PCIe-80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100-40GB", "A100-PCIe-40GB"),
    ("NVIDIA H100 PCIe", "RTX4090", None),  # another family: the profile's hardware field decides, as before
    ("NVIDIA H800", "H100", None),
    ("NVIDIA GH200 480GB", "H100", None),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTXPRO6000", None),
])
def test_the_board_a_profile_recorded_is_told_within_a_family(device, hardware, board):
    from pdsim.hardware import device_board

    assert device_board(device, hardware) == board


def test_pdsim_s_own_descriptions_name_their_own_board():
    # Estimated and imported profiles record the spec's description as their device name.
    from pdsim.hardware import _FAMILY, HARDWARE, device_board

    assert set(_FAMILY) == {"H100-SXM", "H100-PCIe", "H100-NVL", "A100-80GB", "A100-40GB", "A100-PCIe-80GB",
                            "A100-PCIe-40GB"}
    for name in _FAMILY:  # each board a device name tells has a spec, whose description names it
        assert device_board(HARDWARE[name].description, name) == name


def _case_recorded_on(tmp_path: Path, family: str, gpu: str, named: str, **instance) -> Path:
    """The shared RTX PRO 6000 case's profile relabelled as measured on `gpu` (its meta.yaml `hardware: family`),
    and its cluster config with hardware `named` pointing at it: the config's path."""
    shutil.copytree(RUN / "profile", tmp_path / "profile")
    meta = tmp_path / "profile" / "meta.yaml"
    text = meta.read_text().replace("hardware: RTXPRO6000", f"hardware: {family}")
    meta.write_text(text.replace("gpu: NVIDIA RTX PRO 6000 Blackwell Server Edition", f"gpu: {gpu}"))
    cfg = json.loads((RUN / "cluster_config.json").read_text())
    inst = cfg["nodes"][0]["instances"][0]
    inst.update(hardware=named, profile_dir=str(tmp_path / "profile"), **instance)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    return tmp_path / "c.json"


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared")
@pytest.mark.parametrize("gpu,named,board", [
    ("NVIDIA H100 PCIe", "H100", "H100-PCIe"), ("NVIDIA H100 80GB HBM3", "H100", "H100-SXM"),
    ("NVIDIA H100 NVL", "H100", "H100-NVL"),
    ("NVIDIA H100 PCIe", "H100-PCIe", "H100-PCIe"),  # the board named: the profile's "H100" does not refuse it
    ("NVIDIA H100 PCIe", "H100-SXM", "error"),  # another board named: refused, as a profile of another GPU is
])
def test_an_h100_profile_measured_on_the_pcie_board_runs_the_instance_as_that_board(tmp_path, gpu, named, board):
    from pdsim.engine.cluster import simulate
    from pdsim.workload.trace import TraceRequest

    config = _case_recorded_on(tmp_path, "H100", gpu, named, tp_size=2, num_npus=2,
                               npu_mem={"mem_size": 80, "mem_bw": 3350})
    if board == "error":
        with pytest.raises(ProfileError, match=r"hardware: H100-SXM, but the profile .* was measured on 'NVIDIA H100 "
                                               r"PCIe' \(H100-PCIe\): its step times are that board's"):
            simulate(load_cluster_config(config), [TraceRequest(0, 100, 4, 0)])
        return
    result = simulate(load_cluster_config(config), [TraceRequest(0, 100, 4, 0)])
    (info,) = result.infos
    assert info.hardware == board
    notes = " ".join(result.instances[0].predictor.notes)
    taken = board in ("H100-PCIe", "H100-NVL") and named == "H100"
    assert (f"H100 taken as {board}, not H100-SXM: the profile was measured on {gpu!r}" in notes) == taken
    # A PCIe board's TP 2 all-reduce is not NVLink's, nor its non-torch memory NCCL's NVLink buffers; an H100 NVL
    # pair all-reduces over its NVLink bridge, and has no NVSwitch whose buffers NCCL would take.
    source = result.instances[0].predictor.allreduce_source
    assert ("PCIe model" in source) == (board == "H100-PCIe")
    assert ("scaled x0.67 to H100-NVL's NVLink bridge (one bridged pair), assumed" in source) == (board == "H100-NVL")
    assert (info.non_torch_gb < 1) == (board != "H100-SXM")


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared")
@pytest.mark.parametrize("gpu,mem_size,outcome", [
    ("NVIDIA H100 NVL", 94, "H100-NVL"),  # both the device and the memory say so
    (None, 94, "H100-NVL"),  # no device recorded: the memory tells the board
    ("NVIDIA H100 80GB HBM3", 94, "error"),  # the device says SXM, which has no 94 GB
])
def test_an_h100_of_94_gb_is_the_nvl_board(tmp_path, gpu, mem_size, outcome):
    # LLMServingSim writes "H100" for any H100; only the NVL has 94 GB, which pdsim refused as over the SXM's 80.
    from pdsim.engine.cluster import simulate
    from pdsim.workload.trace import TraceRequest

    config = _case_recorded_on(tmp_path, "H100", gpu or "", "H100", tp_size=4, num_npus=4,
                               npu_mem={"mem_size": mem_size, "mem_bw": 3900})
    if gpu is None:  # a profile that records no device
        meta = tmp_path / "profile" / "meta.yaml"
        meta.write_text("\n".join(line for line in meta.read_text().splitlines() if not line.startswith("gpu:")))
    shutil.copytree(tmp_path / "profile" / "tp2", tmp_path / "profile" / "tp4")
    cfg = load_cluster_config(config)
    assert cfg.instances()[0].config.hardware == "H100-NVL"
    if outcome == "error":
        with pytest.raises(ConfigError, match=r"npu_mem.mem_size: 94 GB is more than the H100-SXM's 80 GB .*the board "
                                              r"the profile was measured on \('NVIDIA H100 80GB HBM3'"):
            simulate(cfg, [TraceRequest(0, 100, 4, 0)])
        return
    result = simulate(cfg, [TraceRequest(0, 100, 4, 0)])
    assert result.infos[0].hardware == "H100-NVL"
    notes = " ".join(result.instances[0].predictor.notes)
    said = ("H100 taken as H100-NVL, not H100-SXM: the profile was measured on 'NVIDIA H100 NVL' ("
            f"{tmp_path / 'profile' / 'tp4'}), and npu_mem.mem_size 94 GB is the H100-NVL's memory" if gpu else
            "H100 taken as H100-NVL, not H100-SXM: npu_mem.mem_size 94 GB is the H100-NVL's memory (94 GB), not "
            "the H100-SXM's (80 GB)")
    assert said in notes
    # A profile that names the family alone does not say which board measured it, and the run says so.
    assert ("the profile names the family 'H100', not which board measured it (no device recorded): its step "
            "times are taken as the H100-NVL's" in notes) == (gpu is None)
    # Four GPUs are more than a bridged pair: NCCL over PCIe.
    assert "PCIe model measured on the RTX PRO 6000 Server" in result.instances[0].predictor.allreduce_source
    assert "4 GPUs beyond its NVLink-bridged pair" in result.instances[0].predictor.allreduce_source
    # A config written from this one keeps the family name, and with it the memory's reading.
    assert cfg.model_dump(by_alias=True)["nodes"][0]["instances"][0]["hardware"] == "H100"


@pytest.mark.parametrize("mem_size", [81.5, 85.5, 95.8])
def test_an_h100_of_no_board_s_memory_is_refused_naming_the_one_with_more(mem_size):
    # 81.5 (nvidia-smi's MiB of an SXM board) or 85.5 (its 10^9 bytes) is no H100 NVL, and is not guessed to be.
    cfg = {"num_nodes": 1, "link_bw": 16, "link_latency": 20000, "nodes": [{"num_instances": 1, "instances": [
        {"model_name": "meta-llama/Llama-3.1-8B", "hardware": "H100", "npu_mem": {"mem_size": mem_size, "mem_bw": 3350},
         "tp_size": 1, "pd_type": None}]}]}
    from pdsim.config.load import cluster_config_from_dict

    said = r"the H100-NVL has 94 GB: hardware 'H100-NVL', or 'H100' with mem_size 94, runs it"
    with pytest.raises(ConfigError, match=rf"mem_size: {mem_size:g} GB is more than the H100-SXM's 80 GB .*"
                                          + (said if mem_size < 94 else r"clamp it$")):
        cluster_config_from_dict(cfg)


@pytest.mark.parametrize("name,board", [
    ("h100", "H100-SXM"), ("H100_SXM5", "H100-SXM"), ("NVIDIA H100 80GB HBM3", "H100-SXM"),
    ("NVIDIA H100 PCIe", "H100-PCIe"), ("H100 NVL", "H100-NVL"), ("nvidia geforce rtx 4090", "RTX4090"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTXPRO6000"), ("rtx_pro_6000", "RTXPRO6000"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA A100-SXM4-80GB", "A100-80GB"), ("NVIDIA RTX 6000 Ada Generation", "RTX6000Ada"),
    ("NVIDIA A10G", "NVIDIA A10G"),  # no spec: unchanged, and said so where it matters
    # '_' for a space in device names (a word character to the patterns), and names of the form without the memory.
    ("NVIDIA_H100_80GB_HBM3", "H100-SXM"), ("NVIDIA_A100-SXM4-80GB", "A100-80GB"), ("H100-80GB", "H100-SXM"),
    ("H100 80GB", "H100-SXM"), ("NVIDIA_RTX_PRO_6000_Blackwell_Server_Edition", "RTXPRO6000"),
    ("A100-SXM4", "A100-80GB"), ("A100_SXM", "A100-80GB"), ("NVIDIA_H100_PCIe", "H100-PCIe"),
])
def test_gpu_names_are_read_in_any_spelling_and_as_torch_names_them(name, board):
    # A name pdsim did not know exactly ran as "no spec": its TP all-reduce as a PCIe 4 card's, NVLink GPUs too.
    from pdsim.hardware import HARDWARE, HARDWARE_ALIASES, _name_key, canonical_hardware_name

    assert canonical_hardware_name(name) == board
    boards: dict[str, set[str]] = {}
    for alias, target in [*((n, n) for n in HARDWARE), *HARDWARE_ALIASES.items()]:
        boards.setdefault(_name_key(alias), set()).add(target)
    assert all(len(b) == 1 for b in boards.values())  # no two spellings of one key name different boards


def test_a_lower_case_family_name_is_still_a_family_name():
    from pdsim.hardware import is_family_name

    assert is_family_name("h100") and is_family_name("NVIDIA H100") and not is_family_name("H100-SXM")
    assert not is_family_name("NVIDIA H100 80GB HBM3")  # a device name names its board


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared")
def test_a_memory_the_recorded_board_does_not_have_is_refused(tmp_path):
    # The config's own check saw "A100" as the 80 GB board; the profile says it ran on the 40 GB one.
    from pdsim.engine.cluster import simulate
    from pdsim.workload.trace import TraceRequest

    config = _case_recorded_on(tmp_path, "A100", "NVIDIA A100-SXM4-40GB", "A100",
                               npu_mem={"mem_size": 80, "mem_bw": 2039, "mem_util": 0.9})
    with pytest.raises(ConfigError, match=r"npu_mem.mem_size: 80 GB is more than the A100-40GB's 40 GB .*the board "
                                          r"the profile was measured on \('NVIDIA A100-SXM4-40GB'"):
        simulate(load_cluster_config(config), [TraceRequest(0, 100, 4, 0)])


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared")
def test_a_sweep_says_which_board_its_runs_took(tmp_path):
    from click.testing import CliRunner

    from pdsim.cli import cli

    config = _case_recorded_on(tmp_path, "H100", "NVIDIA H100 PCIe", "H100",
                               npu_mem={"mem_size": 80, "mem_bw": 3350, "mem_util": 0.9})
    res = CliRunner().invoke(cli, ["sweep", "--base-config", str(config), "--dataset",
                                   str(RUN / "workload.jsonl"), "--num-requests", "20", "--gpus", "2", "--rates", "1",
                                   "--slo-ttft-ms", "5000", "--slo-tpot-ms", "100", "--workers", "1", "--no-plots",
                                   "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert ("NOTE: TP 1 instances: hardware H100 taken as H100-PCIe, not H100-SXM: the profile was measured on "
            "'NVIDIA H100 PCIe'") in res.output
    written = {json.loads(p.read_text())["nodes"][0]["instances"][0]["hardware"]
               for p in (tmp_path / "s" / "configs").glob("*.json")}
    assert written == {"H100"}  # as given, so each keeps its meaning when run on its own


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared")
def test_a_profile_without_its_skew_fit_table_says_it_falls_back_to_alpha_default(tmp_path):
    # meta.yaml's alpha_default stands in for the per-bucket fit: TTFT moved by about 5% on the shared run that way.
    from pdsim.perf.predictor import StepTimePredictor

    shutil.copytree(RUN / "profile", tmp_path / "profile")
    spec = load_model("meta-llama/Llama-3.1-8B")
    kept = StepTimePredictor(find_profile("RTXPRO6000", spec.name, "bfloat16", 1, profile_dir=tmp_path / "profile"),
                             spec, 1, None)
    assert not any("skew_fit.csv" in n for n in kept.notes)
    (tmp_path / "profile" / "tp1" / "skew_fit.csv").unlink()
    lost = StepTimePredictor(find_profile("RTXPRO6000", spec.name, "bfloat16", 1, profile_dir=tmp_path / "profile"),
                             spec, 1, None)
    assert any("has no skew_fit.csv" in n and "alpha_default 0.0543" in n for n in lost.notes), lost.notes


def test_an_a100_of_40_gb_is_the_40_gb_board_and_a_mig_slice_no_board():
    # "A100" with 40 GB ran as the 80 GB board, whose spec differs (bandwidth, visible memory); of the two 40 GB
    # boards the one with the default's NVLink is taken.
    from pdsim.config.load import cluster_config_from_dict
    from pdsim.hardware import canonical_hardware_name, device_board

    def board(hardware: str, mem_size: float) -> str:
        cfg = {"num_nodes": 1, "link_bw": 16, "link_latency": 20000, "nodes": [{"num_instances": 1, "instances": [
            {"model_name": "meta-llama/Llama-3.1-8B", "hardware": hardware,
             "npu_mem": {"mem_size": mem_size, "mem_bw": 1555}, "tp_size": 1, "pd_type": None}]}]}
        return cluster_config_from_dict(cfg).instances()[0].config.hardware

    assert board("A100", 40) == board("a100", 39.5) == "A100-40GB"
    assert board("A100", 80) == "A100-80GB" and board("A100-80GB", 40) == "A100-80GB"  # a board named is held to
    assert board("H100", 40) == "H100-SXM"  # no H100 has 40 GB: a smaller share of the default board, as before
    # A name of the form alone leaves the memory open, not the form.
    assert board("A100-SXM4", 40) == "A100-40GB" and board("A100-PCIe", 40) == "A100-PCIe-40GB"
    # A Multi-Instance GPU slice is no board: its name is not read as the whole GPU's, nor a profile's device.
    assert canonical_hardware_name("NVIDIA A100-SXM4-80GB MIG 3g.40gb") == "NVIDIA A100-SXM4-80GB MIG 3g.40gb"
    assert device_board("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "H100") is None
    assert device_board("NVIDIA_H100_80GB_HBM3_MIG_3g.40gb", "H100") is None  # '_' for spaces too
    assert canonical_hardware_name("NVIDIA_A100-SXM4-80GB_MIG_1g.10gb") == "NVIDIA_A100-SXM4-80GB_MIG_1g.10gb"
    assert canonical_hardware_name("XA100 PCIe") == "XA100 PCIe"  # a board's name, not a longer word's part


def test_a_family_name_with_a_boards_memory_bandwidth_is_that_board():
    # "H100" at 2,000 GB/s is the PCIe card: priced as the SXM board, its TP 2 all-reduce ran 6x too fast over NVLink.
    from pdsim.config.load import cluster_config_from_dict
    from pdsim.engine.build import _memory_board_note

    def instance(hardware: str, mem_size: float, mem_bw: float):
        cfg = {"num_nodes": 1, "link_bw": 16, "link_latency": 20000, "nodes": [{"num_instances": 1, "instances": [
            {"model_name": "meta-llama/Llama-3.1-8B", "hardware": hardware,
             "npu_mem": {"mem_size": mem_size, "mem_bw": mem_bw}, "tp_size": 1, "pd_type": None}]}]}
        return cluster_config_from_dict(cfg).instances()[0].config

    pcie = instance("H100", 80, 2000)
    assert pcie.hardware == "H100-PCIe"
    assert _memory_board_note(pcie) == ("hardware H100 taken as H100-PCIe, not H100-SXM: npu_mem.mem_bw 2000 GB/s is "
                                        "the H100-PCIe's memory bandwidth (2000 GB/s), not the H100-SXM's (3350 GB/s)")
    assert instance("A100", 80, 1935).hardware == "A100-PCIe-80GB"
    assert instance("A100", 80, 2039).hardware == "A100-80GB"
    # A figure no board has, or a board named outright, changes nothing; nor does the bandwidth override the form.
    assert instance("H100", 80, 2500).hardware == "H100-SXM" and instance("H100-SXM", 80, 2000).hardware == "H100-SXM"
    assert instance("A100-PCIe", 80, 2039).hardware == "A100-PCIe-80GB"
    assert _memory_board_note(instance("H100", 80, 3350)) == ""
    assert instance("H100", 94, 2000).hardware == "H100-NVL"  # the memory names the board first
    assert instance("H100", 80, 1960).hardware == "H100-PCIe"  # 2% under its 2000 GB/s, to the edge


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared")
def test_a_profile_measured_on_a_mig_slice_says_so(tmp_path):
    from pdsim.engine.cluster import simulate
    from pdsim.workload.trace import TraceRequest

    config = _case_recorded_on(tmp_path, "H100", "NVIDIA H100 80GB HBM3 MIG 3g.40gb", "H100",
                               npu_mem={"mem_size": 80, "mem_bw": 3350})
    result = simulate(load_cluster_config(config), [TraceRequest(0, 100, 4, 0)])
    notes = " ".join(result.instances[0].predictor.notes)
    assert "the profile was measured on a MIG slice, 'NVIDIA H100 80GB HBM3 MIG 3g.40gb'" in notes


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared")
def test_a_profile_whose_device_is_another_gpu_than_its_hardware_field_is_refused(tmp_path):
    # meta.yaml says hardware RTXPRO6000, but torch's device name is an H100's: its times are the H100's.
    from pdsim.engine.cluster import simulate
    from pdsim.errors import PdsimError
    from pdsim.workload.trace import TraceRequest

    config = _case_recorded_on(tmp_path, "RTXPRO6000", "NVIDIA H100 80GB HBM3", "RTXPRO6000")
    with pytest.raises(PdsimError, match=r"measured on 'NVIDIA H100 80GB HBM3' \(H100-SXM\), but .* names RTXPRO6000"):
        simulate(load_cluster_config(config), [TraceRequest(0, 100, 4, 0)])
    ok = _case_recorded_on(tmp_path / "ws", "RTXPRO6000", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
                           "RTXPRO6000")  # the same GPU under another edition's name
    simulate(load_cluster_config(ok), [TraceRequest(0, 100, 4, 0)])


@pytest.mark.skipif(not RUN.is_dir(), reason="needs ../shared")
def test_a_profile_recorded_on_a_device_pdsim_cannot_tell_says_so(tmp_path):
    # An AMD GPU's name, or none at all that is a GPU's: taken as the instance's, and said.
    from pdsim.engine.cluster import simulate
    from pdsim.errors import PdsimError
    from pdsim.workload.trace import TraceRequest

    config = _case_recorded_on(tmp_path, "RTXPRO6000", "AMD Instinct MI300X", "RTXPRO6000")
    result = simulate(load_cluster_config(config), [TraceRequest(0, 100, 4, 0)])
    assert ("the profile records its device as 'AMD Instinct MI300X'" in " ".join(result.instances[0].predictor.notes)
            and "taken as RTXPRO6000's" in " ".join(result.instances[0].predictor.notes))
    # Its hardware field names another GPU than the device it records, which is the instance's: the error says so.
    config = _case_recorded_on(tmp_path / "h", "H100", "NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTXPRO6000")
    with pytest.raises(PdsimError, match=r"measured on H100 \(its recorded device, 'NVIDIA RTX PRO 6000 Blackwell "
                                         r"Server Edition', is this GPU, RTXPRO6000: the profile's hardware field "
                                         r"looks wrong\)"):
        simulate(load_cluster_config(config), [TraceRequest(0, 100, 4, 0)])
