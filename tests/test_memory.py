"""KV-cache sizing (pdsim/perf/memory.py): vLLM's accounting, LLMServingSim's rule, measured capacities."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pdsim.config import GB, cluster_config_from_dict, load_cluster_config
from pdsim.engine.cluster import SimOptions
from pdsim.errors import ConfigError, PdsimError
from pdsim.models import load_model
from pdsim.perf import memory
from pdsim.validate.kv_capacity import kv_from_log, kv_from_meta
from tests.helpers import MODEL, cluster, instance, run

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "data" / "vllm_run_kv"
SHARED = REPO.parent / "shared" / "data"
LLAMA = load_model(MODEL)
BLOCK_BYTES = 16 * LLAMA.kv_bytes_per_token("bfloat16")


def _blocks(cfg, **opts) -> int:
    return run(cfg, [(100, 2, 0.0)], **opts).infos[0].num_kv_blocks


def test_vllm_accounting_uses_the_cuda_visible_memory():
    inst = instance(None, 80, "H100-SXM", max_num_seqs=1024, max_num_batched_tokens=8192, gpu_memory_utilization=0.95)
    inst["npu_mem"]["mem_bw"] = 3350
    res = run(cluster(inst), [(100, 2, 0.0)])
    info = res.infos[0]
    activation = memory.activation_peak_bytes(LLAMA, "bfloat16", 1, 8192, 1024)
    # vLLM's weights: what loading took, the rotary cos/sin cache too (131,072 positions x 128 x 2 bytes, 32 MiB)
    assert LLAMA.rope_cache_bytes("bfloat16") == 131072 * 128 * 2
    weights = LLAMA.weight_bytes("bfloat16") + LLAMA.rope_cache_bytes("bfloat16")
    kv = 79.19 * GB * 0.95 - weights - activation - 0.25 * GB
    assert info.kv_tokens == math.floor(kv / BLOCK_BYTES) * 16
    assert info.num_kv_blocks == math.floor(kv / BLOCK_BYTES) - 1  # vLLM's null block
    assert info.kv_rule == "vllm" and "79.19 GiB (vLLM logs)" in info.memory_note


def test_mem_size_below_the_gpu_is_taken_as_given_and_util_defaults_to_vllms():
    small = instance(None, 40, "H100-SXM")
    small["npu_mem"]["mem_bw"] = 3350
    kv = 40 * GB * 0.9 - LLAMA.weight_bytes("bfloat16") - LLAMA.rope_cache_bytes("bfloat16") - \
        memory.activation_peak_bytes(LLAMA, "bfloat16", 1, 2048, 128) - 0.25 * GB
    assert _blocks(cluster(small)) == math.floor(kv / BLOCK_BYTES) - 1


def test_llmservingsim_rule_when_its_mem_util_is_given():
    # LLMServingSim's RTX 4090 example: mem_util 0.833919 was calibrated to KV = mem_size x mem_util - weights.
    inst = instance(None, 24, "RTX4090")
    del inst["gpu_memory_utilization"]
    inst["npu_mem"].update(mem_util=0.833919, mem_bw=1008)
    res = run(cluster(inst), [(100, 2, 0.0)])
    info = res.infos[0]
    expected = math.floor((24 * GB * 0.833919 - LLAMA.weight_bytes("bfloat16")) / BLOCK_BYTES)
    assert info.kv_rule == "llmservingsim" and info.kv_tokens == expected * 16
    assert info.num_kv_blocks == expected - 1
    # The output says so, and what vLLM's accounting would give instead.
    assert "LLMServingSim's rule" in info.memory_note and "vLLM's accounting" in info.memory_note
    vllm_cfg = instance(None, 24, "RTX4090")
    vllm_cfg["npu_mem"]["mem_bw"] = 1008
    vllm_blocks = _blocks(cluster(vllm_cfg)) + 1
    assert f"({vllm_blocks:,} blocks)" in info.memory_note


def test_a_config_with_neither_utilization_says_what_llmservingsim_would_give():
    # LLMServingSim sizes a config without mem_util at its default 0.9 of mem_size, less the weights;
    # pdsim follows vLLM's accounting there, and the output gives LLMServingSim's figure beside it.
    inst = instance(None, 24, "RTX4090")
    del inst["gpu_memory_utilization"]
    inst["npu_mem"]["mem_bw"] = 1008
    info = run(cluster(inst), [(100, 2, 0.0)]).infos[0]
    lss_blocks = math.floor((24 * GB * 0.9 - LLAMA.weight_bytes("bfloat16")) / BLOCK_BYTES)
    assert info.kv_rule == "vllm" and info.num_kv_blocks + 1 < lss_blocks
    said = f"LLMServingSim would give {lss_blocks * BLOCK_BYTES / GB:.2f} GiB ({lss_blocks:,} blocks"
    assert said in info.memory_note
    # A config that asks for vLLM's accounting explicitly gets no such remark.
    explicit = instance(None, 24, "RTX4090", gpu_memory_utilization=0.9)
    explicit["npu_mem"]["mem_bw"] = 1008
    assert "LLMServingSim" not in run(cluster(explicit), [(100, 2, 0.0)]).infos[0].memory_note


def test_the_non_torch_figure_at_tp2_follows_the_link_and_says_when_it_is_assumed():
    def note(hardware: str, mem_gb: int, tp: int, **extra) -> str:
        inst = instance(None, mem_gb, hardware, tp_size=tp, num_npus=tp, **extra)
        return run(cluster(inst), [(100, 2, 0.0)]).infos[0].memory_note

    # Without NVLink, TP 1's figure: H100's excess at TP >= 2 is read as NCCL's NVLink buffers.
    assert "non-torch 0.25 GiB (TP 1's, assumed for RTX4090 at TP >= 2: H100's 2.1 GiB" in note("RTX4090", 24, 2)
    assert "non-torch 2.10 GiB (H100's at TP >= 2, assumed for H200; non_torch_memory_gb sets it)" in \
        note("H200", 141, 2)
    assert "non-torch 2.10 GiB = " in note("H100-SXM", 80, 2)  # where it was measured
    assert "non-torch 0.25 GiB = " in note("RTX4090", 24, 1)
    assert "non-torch 0.60 GiB = " in note("RTX4090", 24, 2, non_torch_memory_gb=0.6)  # given: not assumed


def test_a_null_block_count_in_meta_json_is_no_record():
    assert kv_from_meta({"kv_cache": {"num_gpu_blocks": None, "block_size": 16}}, "meta.json", 16) is None
    assert kv_from_meta({"kv_cache": {}}, "meta.json", 16) is None
    with pytest.raises(PdsimError, match=r"meta.json: kv_cache.num_gpu_blocks: expected a positive integer, got 0"):
        kv_from_meta({"kv_cache": {"num_gpu_blocks": 0}}, "meta.json", 16)


def test_both_utilizations_or_too_much_memory_are_errors(tmp_path):
    both = instance(None, gpu_memory_utilization=0.9)
    both["npu_mem"]["mem_util"] = 0.9
    with pytest.raises(ConfigError, match=r"instances\[0\].*mem_util.*gpu_memory_utilization"):
        cluster(both)
    over = instance(None, 96, "H100-SXM")
    raw = {"num_nodes": 1, "link_bw": 16, "link_latency": 0, "nodes": [{"num_instances": 1, "instances": [over]}]}
    with pytest.raises(ConfigError, match=r"instances\[0\]: npu_mem.mem_size: 96 GB is more than the H100-SXM's 80"):
        cluster_config_from_dict(raw, "x.json")
    path = tmp_path / "over.json"
    path.write_text(json.dumps(raw))
    out = subprocess.run([sys.executable, "-m", "pdsim", "--cluster-config", str(path), "--dataset",
                          str(REPO / "workloads" / "example_trace.jsonl"), "--output", str(tmp_path / "o.csv")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "npu_mem.mem_size" in out.stderr and "Traceback" not in out.stderr


def test_activation_peak_is_the_sampler_or_the_forward_whichever_is_larger():
    # vLLM's profiling run: the sampler over 1024 full-vocabulary rows dominates at 8192 tokens,
    # whatever the TP (vLLM logs 1.89 GiB for Llama-3.1-8B at TP 1, 2 and 4).
    peaks = [memory.activation_peak_bytes(LLAMA, "bfloat16", tp, 8192, 1024) for tp in (1, 2, 4)]
    assert peaks[0] == peaks[1] == peaks[2]
    assert peaks[0] / GB == pytest.approx(1.89, rel=0.01)
    # Few sequences: the forward (sharded by TP) is the peak.
    assert memory.activation_peak_bytes(LLAMA, "bfloat16", 1, 8192, 16) == memory.forward_peak_bytes(
        LLAMA, "bfloat16", 1, 8192)
    assert memory.forward_peak_bytes(LLAMA, "bfloat16", 2, 8192) < memory.forward_peak_bytes(LLAMA, "bfloat16", 1, 8192)


def test_mem_bw_changes_estimated_step_times_only():
    slow, fast = instance(None), instance(None)
    slow["npu_mem"]["mem_bw"] = 900
    decode = [(10, 200, 0.0)]
    t_fast = run(cluster(fast), decode).requests[0].finish_s
    t_slow = run(cluster(slow), decode).requests[0].finish_s
    assert t_slow > 1.3 * t_fast  # decode streams the weights: memory bound
    # The bandwidth that priced the estimate is said when it is not the datasheet's (1792 for this GPU).
    said = [n for n in run(cluster(slow), decode).instances[0].predictor.notes if "mem_bw" in n]
    assert said == ["step times estimated at npu_mem.mem_bw 900 GB/s, the config's; RTXPRO6000's datasheet "
                    "gives 1792 GB/s"]
    assert not any("mem_bw" in n for n in run(cluster(fast), decode).instances[0].predictor.notes)
    cpu = load_cluster_config(REPO / "configs" / "cluster" / "cpu_llama160m.json")
    res = run(cpu, [(10, 3, 0.0)])
    assert any("mem_bw is not used" in note for note in res.instances[0].predictor.notes)


def test_measured_capacity_overrides_the_prediction():
    cfg = cluster(instance(None))
    assert _blocks(cfg, kv_gpu_blocks={"n0.i0": 501}) == 500
    with pytest.raises(ConfigError, match="no room"):
        _blocks(cfg, kv_gpu_blocks={"n0.i0": 1})
    with pytest.raises(ConfigError, match="n3.i0: no such instance"):
        _blocks(cfg, kv_gpu_blocks={"n3.i0": 500})


def test_reads_the_measured_kv_size():
    meta = json.loads((FIXTURE / "meta.json").read_text())
    kv = kv_from_meta(meta, "meta.json", 16)
    assert (kv.num_gpu_blocks, kv.block_size, kv.tokens) == (1200, 16, 19200)
    assert kv_from_log(FIXTURE / "vllm_startup.log", 16).tokens == 19200
    assert kv_from_meta({}, "m", 16) is None
    with pytest.raises(PdsimError, match="kv_cache.num_gpu_blocks: expected a positive integer"):
        kv_from_meta({"kv_cache": {"num_gpu_blocks": "1200"}}, "m.json", 16)
    with pytest.raises(PdsimError, match="not a multiple of block_size 112"):
        kv_from_log(FIXTURE / "vllm_startup.log", 112)


def test_two_kv_figures_are_both_named(tmp_path):
    from pdsim.validate.kv_capacity import measured_kv

    log = tmp_path / "engine.log"
    log.write_text("INFO GPU KV cache size: 32,000 tokens\nrestart\nINFO GPU KV cache size: 19,200 tokens\n")
    kv = kv_from_log(log, 16)
    assert kv.tokens == 19200 and "the last of 2 such lines, which also give 32,000" in kv.source
    meta = {"kv_cache": {"num_gpu_blocks": 3000}}
    both = measured_kv(meta, "meta.json", log, 16)
    assert both.num_gpu_blocks == 1200 and ("taken over meta.json kv_cache.num_gpu_blocks's 3,000 blocks, -60.0% from "
                                            "it: is the log this run's engine's?") in both.source
    assert "taken over" not in measured_kv({"kv_cache": {"num_gpu_blocks": 1200}}, "meta.json", log, 16).source
    # The engines of a DP group each log their size: two that differ are no restart, and said so.
    log.write_text("(EngineCore_DP0 pid=1) INFO GPU KV cache size: 100,000 tokens\n"
                   "(EngineCore_DP1 pid=2) INFO GPU KV cache size: 40,000 tokens\n")
    assert ("NOTE: the DP engines log different sizes (EngineCore_DP0 100,000, EngineCore_DP1 40,000): the last is "
            "taken for every instance") in kv_from_log(log, 16).source
    log.write_text("(EngineCore_DP0 pid=1) INFO GPU KV cache size: 40,000 tokens\n"
                   "(EngineCore_DP1 pid=2) INFO GPU KV cache size: 40,000 tokens\n")
    assert "NOTE" not in kv_from_log(log, 16).source


def test_an_engine_log_without_a_kv_line_leaves_the_capacity_to_meta_json(tmp_path):
    """A log cut before the engine sized its cache, or given for its sampler and all-reduce lines, is no error."""
    from pdsim.validate.kv_capacity import capacity_line, measured_kv

    log = tmp_path / "engine.log"
    log.write_text("INFO Using FlashInfer for top-p & top-k sampling.\n")
    assert kv_from_log(log, 16) is None
    kv = measured_kv({"kv_cache": {"num_gpu_blocks": 1200}}, "meta.json", log, 16)
    assert kv.num_gpu_blocks == 1200 and f"{log} has no 'GPU KV cache size: N tokens' line" in kv.source
    assert measured_kv({}, "meta.json", log, 16) is None
    line = capacity_line(20_000, "vllm", None, "predicted", engine_log=log)
    measured = measured_kv({"kv_cache": {"num_gpu_blocks": 1200}}, "meta.json", None, 16)
    assert capacity_line(20_000, "vllm", measured, "measured", instances=2).endswith(
        "the replay used the measured capacity on each of its 2 instances")
    assert f"measured: not recorded by the run ({log} has no 'GPU KV cache size: N tokens' line" in line


def _pdsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pdsim", *args], capture_output=True, text=True, cwd=REPO)


def _ttft_mean(output: str) -> float:
    row = next(x for x in output.splitlines() if x.startswith("TTFT (ms)") and " mean " in x)
    return float(row.split()[4].replace(",", ""))  # TTFT (ms) mean <measured> <simulated> <diff>


def test_validate_prints_and_can_replay_the_measured_capacity(tmp_path):
    args = ["validate", "--measured", str(FIXTURE / "requests.jsonl"), "--cluster-config",
            str(FIXTURE / "cluster_config.json"), "--output", str(tmp_path / "v.csv")]
    predicted = _pdsim(*args)
    assert predicted.returncode == 0, predicted.stderr
    line = next(x for x in predicted.stdout.splitlines() if x.startswith("KV capacity"))
    assert "predicted 41,408" in line and "measured 19,200" in line and "used the predicted" in line
    # Its 41,408 tokens fill (2,587 blocks used, one preemption), so the +116% gap is flagged.
    assert "NOTE: the replay filled its KV cache" in predicted.stdout
    # The CSV carries the same figures beside every row, for a script that reads it.
    import pandas as pd

    first = pd.read_csv(tmp_path / "v.csv").iloc[0]
    assert (first.kv_capacity_predicted_tokens, first.kv_capacity_measured_tokens) == (41_408, 19_200)
    assert first.kv_capacity_replayed == "predicted" and first.preemptions_simulated == 1
    measured = _pdsim(*args, "--kv-capacity", "measured")
    assert measured.returncode == 0 and "used the measured capacity" in measured.stdout
    assert pd.read_csv(tmp_path / "v.csv").iloc[0].kv_capacity_replayed == "measured"
    assert "NOTE: the replay filled its KV cache" not in measured.stdout
    # The fixture's measured cache is less than half the predicted one: requests wait, TTFT rises.
    assert _ttft_mean(measured.stdout) > 1.5 * _ttft_mean(predicted.stdout)
    no_kv = tmp_path / "run"
    no_kv.mkdir()
    (no_kv / "requests.jsonl").write_text((FIXTURE / "requests.jsonl").read_text())
    failed = _pdsim("validate", "--measured", str(no_kv / "requests.jsonl"), "--cluster-config",
                    str(FIXTURE / "cluster_config.json"), "--kv-capacity", "measured", "--output", str(tmp_path / "w"))
    assert failed.returncode == 2 and "--engine-log" in failed.stderr


def test_the_triton_samplers_buffer_is_a_vocabulary_row_per_program_it_launches():
    # vLLM 0.17+'s Triton top-k/top-p kernel launches min(rows, SMs) programs and caches a fp32 vocabulary row for
    # each, rounded up to a power of two and capped at the SM count (v1/sample/ops/topk_topp_triton.py).
    assert [memory.triton_buffer_rows(rows, 132) for rows in (8, 100, 128, 129, 1024)] == [8, 128, 128, 132, 132]
    assert [memory.triton_buffer_rows(rows, 188) for rows in (128, 129, 1024)] == [128, 188, 188]
    # At 128 sequences it is 4 bytes per logit, against 0.52 at 1024 on an H100, where the coefficient was fitted.
    base = memory.sampler_peak_bytes(LLAMA, "bfloat16", 2048, 128, bytes_per_logit=0, sm_count=188)
    assert base == 128 * LLAMA.vocab_size * 4 + 2048 * LLAMA.hidden_size * 2
    # No buffer where the vocabulary is sorted (below 8 rows, or a release before 0.17) or FlashInfer samples.
    for sampler, rows in (("triton", 7), ("pytorch", 128), ("flashinfer", 128)):
        assert memory.sampler_peak_bytes(LLAMA, "bfloat16", 2048, rows, bytes_per_logit=0, top_k_top_p=sampler,
                                         sm_count=188) == 2048 * LLAMA.hidden_size * 2


def test_a_sampler_that_sorts_the_vocabulary_holds_more_at_start_up():
    # vLLM 0.16 and older sort the whole vocabulary for top-k/top-p (38 bytes per logit held, counted from the code
    # path), 0.17+ run a Triton kernel from 8 rows (14.42, fitted on 0.19's logs, beside its buffer of 132 rows on
    # an H100) and sort below 8.
    hidden = 8192 * LLAMA.hidden_size * 2  # the forward's output, held while the sampler runs
    buffer = 132 * LLAMA.vocab_size * 4
    for sampler, per_logit, kept in (("triton", memory.SAMPLER_BYTES_PER_LOGIT, buffer), ("pytorch", 38, 0)):
        assert memory.sampler_peak_bytes(LLAMA, "bfloat16", 8192, 1024, top_k_top_p=sampler, sm_count=132) == int(
            per_logit * 1024 * LLAMA.vocab_size) + kept + hidden
    assert memory.sampler_peak_bytes(LLAMA, "bfloat16", 8192, 7) == int(38 * 7 * LLAMA.vocab_size) + hidden
    # The instance key moves the KV cache by the difference, where the sampler is the larger peak.
    blocks = {s: _blocks(cluster(instance(None, 80, "H100-SXM", max_num_seqs=1024, max_num_batched_tokens=8192,
                                          top_k_top_p=s))) for s in ("triton", "pytorch")}
    extra = (38 - memory.SAMPLER_BYTES_PER_LOGIT) * 1024 * LLAMA.vocab_size - buffer
    assert blocks["triton"] - blocks["pytorch"] == pytest.approx(extra / BLOCK_BYTES, abs=1)
    # FlashInfer's sampler (VLLM_USE_FLASHINFER_SAMPLER=1) sorts nothing, at every size: 14 bytes counted.
    assert memory.sampler_peak_bytes(LLAMA, "bfloat16", 8192, 7, top_k_top_p="flashinfer") == int(
        14 * 7 * LLAMA.vocab_size) + hidden
    with pytest.raises(ConfigError, match="top_k_top_p"):
        cluster(instance(None, 80, "H100-SXM", top_k_top_p="aiter"))


def test_fused_moe_workspaces_are_held_as_the_vllm_release_holds_them():
    # 0.18+ keeps them for the whole (gathered) batch; 0.14-0.17 keep one 16,384-row chunk; 0.13 and older allocate
    # them per layer call, so the sampler runs without them.
    qwen = load_model("Qwen/Qwen3-30B-A3B")

    def peak(tokens: int, workspace: str, dp: int = 1) -> int:
        return memory.activation_peak_bytes(qwen, "bfloat16", 1, tokens, 1024, dp_size=dp, moe_workspace=workspace)

    def held(rows: int) -> int:
        return memory.moe_workspace_bytes(qwen, "bfloat16", 1, rows)

    sampler = memory.sampler_peak_bytes(qwen, "bfloat16", 8192, 1024)
    assert peak(8192, "batch") == peak(8192, "chunk") == sampler + held(8192)
    assert peak(8192, "layer") == sampler
    assert peak(8192, "batch", dp=4) - peak(8192, "chunk", dp=4) == held(4 * 8192) - held(16384)
    assert peak(32768, "chunk") < peak(32768, "batch")
    # Under DP with expert parallelism 0.14-0.17 size the profiling run's for a whole chunk, whatever the batch.
    assert peak(2048, "chunk", dp=2) - peak(2048, "batch", dp=2) == held(16384) - held(2 * 2048)
    with pytest.raises(ConfigError, match="moe_workspace"):
        cluster(instance(None, moe_workspace="all"))


def test_kv_cache_memory_bytes_takes_vllms_written_form_in_a_config_too():
    # As `pdsim run --kv-cache-memory-bytes 4G` and vLLM's flag take it: 4 x 2^30 bytes.
    assert cluster(instance(None, kv_cache_memory_bytes="4G")).instances()[0].config.kv_cache_memory_bytes == 4 * 2**30
    with pytest.raises(ConfigError, match="kv_cache_memory_bytes: expected an integer"):
        cluster(instance(None, kv_cache_memory_bytes="lots"))


def test_shipped_configs_use_vllms_accounting():
    for path in sorted((REPO / "configs" / "cluster").glob("*.json")):
        for ref in load_cluster_config(path).instances():
            assert ref.config.npu_mem.mem_util is None, path


@pytest.mark.skipif(not (SHARED / "calibration" / "vllm-kv-capacity").is_dir(), reason="../shared not present")
def test_kv_capacity_of_public_vllm_start_ups():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import kv_capacity_check as check

    cases = check.load_cases(check.CSV)
    df = check.evaluate(cases).set_index("row")
    dense = [c.row for c in check.fit_cases(cases)]
    assert len(dense) == 15  # 11 dense bf16 rows, 2 fp8-weight (rows 10, 11), 2 MoE (rows 12, 13)
    # Measured: at most 2.6% (Qwen2.5-72B TP 2, whose 3 GiB cache makes 0.08 GiB 2.6%), 0.25% elsewhere.
    assert df.loc[dense, "kv_err_loo_pct"].abs().max() < 2.7
    assert (df.loc[[r for r in dense if r != 9], "kv_err_loo_pct"].abs() < 0.25).all()
    # fp8 weights, MoE and fp8 KV come out of the model (nothing taken from the logs). The weights are what vLLM's
    # loading logs, its rotary cos/sin cache included (Llama's 0.03 GiB).
    assert df.loc[[1, 10, 11], "pred_weights_gib"].tolist() == pytest.approx([14.99, 33.88, 16.96], abs=0.006)
    assert df.loc[[12, 13], "pred_act_gib"].tolist() == pytest.approx([1.21, 2.68], rel=0.04)
    assert df.loc[4, "pred_kv_tokens"] == pytest.approx(2 * df.loc[1, "pred_kv_tokens"], abs=16)
    sampler_bound = [c.row for c in check.fit_cases(cases) if check.sampler_bound(c, memory.SAMPLER_BYTES_PER_LOGIT)]
    assert df.loc[sampler_bound, "act_err_loo_pct"].abs().max() < 1.5
    assert check.fit_sampler_bytes(check.fit_cases(cases)) == pytest.approx(memory.SAMPLER_BYTES_PER_LOGIT, abs=0.05)
    # vLLM 0.11's rows (not fitted on): its sampler sorts the vocabulary; the counted peak is within 1.1% of the
    # logged one, and the KV cache within 1.1% where the non-torch memory is TP 1's (row 18's TP 2 logged 0.54 GiB
    # of it, where pdsim takes 0.19's 2.1: -4.1%).
    assert df.loc[[16, 17], "act_err_loo_pct"].abs().max() < 1.2
    assert df.loc[[16, 17], "kv_err_pct"].abs().max() < 1.1


def test_sim_options_default_has_no_override():
    assert SimOptions().kv_gpu_blocks == {}


def test_a_gpu_without_a_spec_keeps_back_what_the_driver_does():
    # vLLM multiplies the CUDA-visible total, not the nominal size, by gpu_memory_utilization: a GPU
    # pdsim has no spec for is assumed to show H100's share of its config's mem_size.
    from pdsim.perf.memory import ASSUMED_VISIBLE_FRACTION, visible_memory_gib

    total, why = visible_memory_gib("SOME-NEW-GPU", 48.0)
    assert total == pytest.approx(48.0 * ASSUMED_VISIBLE_FRACTION) and "no spec for SOME-NEW-GPU" in why


def test_vllms_kv_size_overrides_replace_both_rules():
    # vLLM 0.19: kv_cache_memory_bytes replaces the memory the utilization leaves (blocks = bytes // block
    # bytes, per GPU); num_gpu_blocks_override replaces the block count itself and wins over it.
    for mem_util in (None, 0.833919):  # vLLM's accounting, and an LLMServingSim config
        inst = instance(None, 24, "RTX4090")
        inst["npu_mem"]["mem_bw"] = 1008
        if mem_util is not None:
            del inst["gpu_memory_utilization"]
            inst["npu_mem"]["mem_util"] = mem_util
        info = run(cluster({**inst, "kv_cache_memory_bytes": 3 * 2**30}), [(100, 2, 0.0)]).infos[0]
        assert info.kv_rule == "override" and info.num_kv_blocks == 3 * 2**30 // BLOCK_BYTES - 1
        assert "kv_cache_memory_bytes" in info.memory_note and "instead of" in info.memory_note
        both = {**inst, "kv_cache_memory_bytes": 3 * 2**30, "num_gpu_blocks_override": 777}
        assert _blocks(cluster(both)) == 776
    # More than the GPU holds (23.65 GiB visible, 14.96 GiB of weights): vLLM would run out of memory.
    with pytest.raises(ConfigError, match=r"kv_cache_memory_bytes .* more than the 23.65 GiB"):
        _blocks(cluster({**instance(None, 24, "RTX4090"), "kv_cache_memory_bytes": 10 * 2**30}))
    with pytest.raises(ConfigError, match="num_gpu_blocks_override"):
        cluster_config_from_dict(cluster({**instance(None), "num_gpu_blocks_override": 1}))


def test_data_center_gddr_boards_lose_a_sixteenth_to_ecc():
    # ECC is on by default on an L40S and uses 1/16 of its GDDR6; an RTX 6000 Ada (ECC off) and an H200 (HBM) do not.
    l40s, how = memory.visible_memory_gib("L40S", 48)
    assert l40s == pytest.approx(48 * 15 / 16 * memory.ASSUMED_VISIBLE_FRACTION) and "ECC" in how
    assert memory.visible_memory_gib("RTX6000Ada", 48)[0] == pytest.approx(48 * memory.ASSUMED_VISIBLE_FRACTION)
    assert "ECC" not in memory.visible_memory_gib("H200", 141)[1]
    # The H200's total as pdsim's own profiler read it from torch, recorded in the bundled profile.
    recorded = json.loads((REPO / "profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1/meta.json").read_text())
    total, how = memory.visible_memory_gib("H200", 141)
    assert total == pytest.approx(recorded["device"]["memory_bytes"] / 2**30, abs=0.005)
    assert how == "measured by pdsim's profiler"
    # A config slice below that is still taken as given.
    assert memory.visible_memory_gib("L40S", 40) == (40, "mem_size, below the 44.54 GiB CUDA shows")


def test_a_capacity_gap_is_flagged_when_the_replay_fills_its_cache():
    from pdsim.validate.kv_capacity import MeasuredKV, capacity_line

    measured = MeasuredKV(2588, 16, "meta.json kv_cache.num_gpu_blocks")  # 41,408 tokens
    flag = "NOTE: the replay filled its KV cache"
    assert flag in capacity_line(46_000, "vllm", measured, "predicted", replay_filled=True)  # +11%
    assert flag not in capacity_line(46_000, "vllm", measured, "predicted", replay_filled=False)
    assert flag not in capacity_line(42_000, "vllm", measured, "predicted", replay_filled=True)  # +1.4%
    assert flag not in capacity_line(46_000, "vllm", measured, "measured", replay_filled=True)


def test_a_larger_replay_cache_that_never_filled_is_flagged():
    # The engine's smaller cache may have filled where the replay's did not: said even without a fill.
    from pdsim.validate.kv_capacity import MeasuredKV, capacity_line

    measured = MeasuredKV(2588, 16, "meta.json kv_cache.num_gpu_blocks")  # 41,408 tokens
    flag = "NOTE: the replay's KV cache is larger than the engine's and did not fill"
    assert flag in capacity_line(46_000, "vllm", measured, "predicted", replay_filled=False)  # +11%
    assert flag not in capacity_line(42_000, "vllm", measured, "predicted", replay_filled=False)  # +1.4%
    assert flag not in capacity_line(36_000, "vllm", measured, "predicted", replay_filled=False)  # smaller
    assert flag not in capacity_line(46_000, "vllm", measured, "measured", replay_filled=False)
    assert flag not in capacity_line(46_000, "vllm", measured, "predicted", replay_filled=True)


def test_a_cache_shorter_than_the_models_max_length_is_said():
    # vLLM refuses to start an engine whose cache cannot hold one request of max_model_len.
    from pdsim.engine.build import _max_len_note
    from pdsim.models import load_model

    model = load_model("meta-llama/Llama-3.1-8B")  # max_position_embeddings 131,072
    tight = memory.KVBudget("vllm", 2588, 16 * 131072, 16, 0, 0, 0, "")
    note = _max_len_note(tight, model)
    assert "41,408 tokens hold no request of the model's max length (131,072)" in note
    assert "--max-model-len 41,408 or less" in note
    assert _max_len_note(memory.KVBudget("vllm", 8193, 16 * 131072, 16, 0, 0, 0, ""), model) == ""
    # A measured engine started with --max-model-len 8192: its cache held that, whatever the model's length.
    assert _max_len_note(tight, model, recorded_max_len=8192) == ""
    assert "max_model_len 65,536, which vLLM refuses to start with" in _max_len_note(tight, model, 65_536)
    # A run that records its engine's arguments without max_model_len ran the model's length, so its cache held that;
    # one that records -1 ("auto") had vLLM fit the length to its cache.
    assert "so the engine's was larger or its max_model_len went unrecorded" in _max_len_note(tight, model, None,
                                                                                              "default")
    assert "max_model_len -1 fits it to the cache at start-up" in _max_len_note(tight, model, None, "fit")


def test_a_moe_dp_rank_sizes_its_moe_workspaces_by_the_groups_gathered_tokens():
    # vLLM's all-gather dispatch gives each rank's MoE kernels the group's dp x T rows in the profiling run.
    from pdsim.perf.memory import activation_peak_bytes, moe_workspace_bytes

    qwen = load_model("Qwen/Qwen3-30B-A3B")
    alone = activation_peak_bytes(qwen, "bfloat16", 1, 8192, 256)
    in_group = activation_peak_bytes(qwen, "bfloat16", 1, 8192, 256, dp_size=2)
    extra_workspace = (moe_workspace_bytes(qwen, "bfloat16", 1, 2 * 8192)
                       - moe_workspace_bytes(qwen, "bfloat16", 1, 8192))
    assert in_group - alone >= extra_workspace > 0
    dense = load_model("meta-llama/Llama-3.1-8B")
    assert activation_peak_bytes(dense, "bfloat16", 1, 8192, 256, dp_size=4) == activation_peak_bytes(
        dense, "bfloat16", 1, 8192, 256)


def test_a_measured_activation_peak_gets_the_dp_groups_gathered_moe_tokens_added():
    # A profile's measured peak is a forward's, taken on one GPU alone; a DP rank's profiling run also gathers the
    # group's tokens into its MoE blocks: the estimate's difference is added. The sampler's peak is vLLM's dummy
    # run's, estimated beside it: the larger of the two is reserved.
    import dataclasses

    from pdsim.hardware import get_hardware
    from pdsim.perf.estimate import estimate_profile
    from pdsim.perf.memory import activation_peak_bytes
    from pdsim.perf.moe_time import ExpertPlacement
    from pdsim.perf.predictor import StepTimePredictor

    hw, qwen = get_hardware("H100"), load_model("Qwen/Qwen3-30B-A3B")
    profile = estimate_profile(hw, qwen, "bfloat16", 1)
    measured = dataclasses.replace(profile, meta=dataclasses.replace(profile.meta, activation_peak_bytes=3 * 2**30,
                                                                     activation_tokens=None))

    def reserve(prof, dp: int) -> int:
        return StepTimePredictor(prof, qwen, 1, hw, moe_placement=ExpertPlacement(1, dp, dp),
                                 moe_external=dp > 1).activation_reserve_bytes(2048, 128)

    extra = (activation_peak_bytes(qwen, "bfloat16", 1, 2048, 128, 1, 2, with_sampler=False)
             - activation_peak_bytes(qwen, "bfloat16", 1, 2048, 128, 1, with_sampler=False))
    assert extra > 0
    assert reserve(measured, 1) == 3 * 2**30 and reserve(measured, 2) == 3 * 2**30 + extra
    assert reserve(profile, 2) == activation_peak_bytes(qwen, "bfloat16", 1, 2048, 128, 1, 2)
    # A measured forward below the sampler's peak: the sampler's binds.
    small = dataclasses.replace(profile, meta=dataclasses.replace(profile.meta, activation_peak_bytes=2**20,
                                                                  activation_tokens=None))
    sampling = memory.sampler_peak_bytes(qwen, "bfloat16", 2048, 128) + memory.moe_workspace_bytes(qwen, "bfloat16",
                                                                                                  1, 2048)
    assert reserve(small, 1) == sampling > 2**20
