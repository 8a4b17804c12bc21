"""Closed-loop rows with precision and MoE layout columns (aiconfigurator's silicon tables), and the
benchmark that runs aiconfigurator-core's silicon_sample.csv (on small synthetic tables here)."""

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from pdsim.engine.cluster import SimOptions
from pdsim.errors import ProfileError
from pdsim.validate.closed_loop import simulate_table, unsupported_reason
from pdsim.validate.row_layout import row_layout

ROOT = Path(__file__).resolve().parents[1]


def _row(**over) -> dict:
    return {"backend": "vllm", "backend_version": "0.12.0", "model_path": "meta-llama/Llama-3.1-8B", "mode": "agg",
            "isl": 256, "osl": 16, "concurrency": 2, "tp": 1, "pp_size": 1, "ttft_ms": 30.0, "tpot_ms": 8.0, **over}


@pytest.mark.parametrize("over, quantization", [
    ({}, None),
    ({"precision": "bf16", "gemm_quant_mode": "bf16"}, None),
    ({"precision": "fp8", "gemm_quant_mode": "fp8"}, "fp8"),
    # A block-wise column beside a generic fp8 label: the block-wise scheme.
    ({"precision": "fp8", "quantization": "fp8_block"}, "fp8_block"),
    # gpt-oss's checkpoint is MXFP4 (its config); the table's nvfp4 label on Hopper is that.
    ({"model_path": "openai/gpt-oss-120b", "precision": "fp4", "gemm_quant_mode": "nvfp4"}, None),
])
def test_precision_columns_become_the_instance_quantization(over, quantization):
    layout, reason = row_layout(_row(**over))
    assert reason is None and layout.quantization == quantization
    assert layout.profile_precision == (quantization or "bfloat16")


@pytest.mark.parametrize("over, words", [
    ({"precision": "fp4"}, ["fp4", "MXFP4", "Llama-3.1-8B"]),  # 4-bit weights on a model without MXFP4 experts
    ({"precision": "int4"}, ["int4"]),
    ({"precision": "fp8", "moe_quant_mode": "fp4", "model_path": "openai/gpt-oss-120b"}, ["mixed"]),
    ({"kv_cache_dtype": "int8"}, ["kv_cache_dtype int8"]),
    ({"mode": "disagg"}, ["disagg"]),
    ({"model_path": "Qwen/Qwen3-30B-A3B", "attention_dp_size": 2}, ["DP 2"]),
    # TP 1 with the experts over 2 GPUs: two attention DP ranks, experts by TP over both.
    ({"model_path": "Qwen/Qwen3-30B-A3B", "moe_tp_size": 2, "moe_ep_size": 1}, ["DP 2", "moe_tp 2"]),
])
def test_rows_pdsim_cannot_express_are_refused_with_the_reason(over, words):
    reason = unsupported_reason(_row(**over))
    assert reason is not None and all(w in reason for w in words), reason


def test_moe_layout_columns_set_the_expert_parallel_degree():
    moe = {"model_path": "Qwen/Qwen3-30B-A3B", "tp": 2}
    assert row_layout(_row(**moe, moe_tp_size=1, moe_ep_size=2))[0].ep_size == 2
    assert row_layout(_row(**moe, moe_tp_size=2, moe_ep_size=1))[0].ep_size == 1  # experts by TP, as vLLM's default
    assert row_layout(_row(**moe, moe_tp_size=0, moe_ep_size=0))[0].ep_size is None  # not recorded: pdsim's default
    assert row_layout(_row(tp=2, moe_tp_size=2, moe_ep_size=1))[0].ep_size is None  # dense: no experts to place


def test_fp8_row_runs_fp8_weights_and_looks_up_the_fp8_profile():
    # The same row at bf16 and fp8 (estimated step times): the fp8 one is simulated, asks for the
    # fp8 profile and decodes faster (1-byte weights streamed at batch 2); an int4 row stays skipped.
    table = pd.DataFrame([_row(precision="bf16"), _row(precision="fp8"), _row(precision="int4")])
    asked = []

    def lookup(model, tp, precision):
        asked.append((model, tp, precision))
        return None

    df = simulate_table(table, None, "H100-SXM", 80, None, SimOptions(client_delay_s=0.001), rounds=2,
                        profile_lookup=lookup)
    assert list(df.status) == ["simulated", "simulated", "skipped"]
    assert asked == [("meta-llama/Llama-3.1-8B", 1, "bfloat16"), ("meta-llama/Llama-3.1-8B", 1, "fp8")]
    assert df.sim_tpot_ms[1] < 0.8 * df.sim_tpot_ms[0]


def test_row_with_an_empty_number_is_an_error_not_a_crash():
    table = pd.DataFrame([_row(), _row(concurrency=float("nan"))])
    df = simulate_table(table, None, "H100-SXM", 80, lambda tp: None, SimOptions(client_delay_s=0.001), rounds=1)
    assert list(df.status) == ["simulated", "error"]
    assert "line 3" in df.reason[1] and "concurrency" in df.reason[1]


def _benchmark():
    path = ROOT / "benchmarks" / "aiconfigurator_silicon.py"
    spec = importlib.util.spec_from_file_location("aiconfigurator_silicon", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SILICON_HEADER = ("backend,backend_version,model_path,system,precision,mode,isl,osl,batch_size,tp_size,pp_size,"
                  "attention_dp_size,moe_tp_size,moe_ep_size,silicon_ttft_ms,silicon_tpot_ms\n")


def test_silicon_benchmark_runs_expressible_rows_and_names_every_skip(tmp_path, monkeypatch, capsys):
    core = tmp_path / "aiconfigurator_core"
    (core / "systems" / "data").mkdir(parents=True)  # no kernel tables: every profile is estimated, and said so
    rows = [
        "vllm,0.12.0,nvidia/Llama-3.1-8B-Instruct-FP8,h200_sxm,fp8,agg,256,16,2,1,1,,1,1,40.0,6.0",
        "vllm,0.12.0,MiniMaxAI/MiniMax-M2.5,h200_sxm,fp8,agg,256,16,2,1,1,,1,1,40.0,6.0",
        "vllm,0.12.0,Qwen/Qwen3-32B,h100_sxm,fp8,disagg,256,16,,,,,,,40.0,6.0",
        "vllm,,meta-llama/Llama-3.1-8B,h100_sxm,fp8,agg,256,16,2,1,1,,1,1,40.0,6.0",
        "vllm,0.12.0,meta-llama/Llama-3.1-8B,b300_sxm,fp8,agg,256,16,2,1,1,,1,1,40.0,6.0",
        "sglang,0.5.0,meta-llama/Llama-3.1-8B,h100_sxm,fp8,agg,256,16,2,1,1,,1,1,40.0,6.0",
    ]
    (core / "systems" / "silicon_sample.csv").write_text(SILICON_HEADER + "\n".join(rows) + "\n")
    out_csv = tmp_path / "rows.csv"
    monkeypatch.setattr(sys, "argv", ["x", "--aic-core", str(core), "--rounds", "2", "--overhead-us", "0",
                                      "--csv", str(out_csv)])
    _benchmark().main()
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("h200_sxm  nvidia/Llama-3.1-8B-Instruct-FP8"))
    assert "ESTIMATED from hardware specs" in line and " 1 " in line
    assert "skipped before simulation: 4 rows" in out  # the SGLang row is not a vLLM row: not listed
    assert "MiniMax-M2.5" in out and "no config" in out
    assert "no client concurrency recorded" in out and "version not recorded" in out and "b300_sxm" in out
    df = pd.read_csv(out_csv)
    assert df.status.tolist() == ["simulated"] and df.quantization.tolist() == ["fp8"]
    assert df.model_path.tolist() == ["nvidia/Llama-3.1-8B-Instruct-FP8"]
    assert df.prefill_load[0] > 0 and df.lone_prefill_ms[0] > 0


def test_attention_table_takes_the_kernel_measured_over_the_lengths(tmp_path):
    # B200's vLLM context-attention table: FlashInfer's prefill kernel over every isl and its decode
    # kernel at isl 1 only. The decode kernel's single row would be extrapolated to every length.
    from pdsim.perf.aiconfigurator import _attn_table

    shape = {"num_heads": 8, "num_key_value_heads": 1, "head_dim": 128, "kv_cache_dtype": "bfloat16",
             "window_size": 0, "batch_size": 1}
    rows = [{**shape, "isl": 1, "latency": 0.009, "kernel_source": "vllm_flashinfer_trtllmdecode"}]
    rows += [{**shape, "isl": n, "latency": 0.01 * n / 1024, "kernel_source": "vllm_flashinfer_trtllmprefill"}
             for n in (16, 1024, 4096, 16384)]
    path = tmp_path / "context_attention_perf.parquet"
    pd.DataFrame(rows).to_parquet(path)
    table, kernel = _attn_table(path, "b200_sxm", 8, 1, 128, "isl")
    assert kernel == "vllm_flashinfer_trtllmprefill" and sorted(table.isl) == [16, 1024, 4096, 16384]
    # Another shape is not in it: the table is named.
    with pytest.raises(ProfileError, match=r"context_attention_perf\.parquet: no attention rows for heads=64"):
        _attn_table(path, "b200_sxm", 64, 8, 128, "isl")
    # A generation row of one step leaves nothing to extrapolate a longer KV from: said with the table's name.
    from pdsim.perf.aiconfigurator import _interp2

    one_step = pd.DataFrame({"batch_size": [1, 1, 8], "step": [128, 1024, 128], "latency": [0.01, 0.02, 0.03]})
    with pytest.raises(ProfileError, match=r"^gen\.parquet: batch_size=8 has one step \(128\), so nothing to "
                                           r"extrapolate step=2048 from"):
        _interp2(one_step, "batch_size", "step", 8, 2048, "gen.parquet")


def test_per_request_run_with_fp8_weights_replays_with_fp8_weights(tmp_path):
    # meta.json says fp8 weights: the replay runs them whatever the config says (noting the config's
    # value), never replays the run as bf16. A run that names no quantization is not second-guessed.
    import json

    from click.testing import CliRunner

    from pdsim.engine.cluster import simulate
    from pdsim.errors import PdsimError
    from pdsim.validate.cli import validate
    from tests.helpers import cluster, instance, trace

    rows = [(int(i * 37 % 500 + 60), int(i * 13 % 60 + 20), 0.05 * i) for i in range(20)]
    fp8 = cluster(instance(None, max_num_seqs=16, quantization="fp8"))
    made = simulate(fp8, trace(rows), SimOptions())
    lines = [json.dumps({"input_toks": r.input_toks, "output_toks": r.output_toks, "arrival_time": r.arrival_s,
                         "queued_ts": r.arrival_s, "scheduled_ts": r.arrival_s, "first_token_ts": r.first_token_s,
                         "last_token_ts": r.finish_s}) for r in made.requests]
    (tmp_path / "requests.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "fp8.json").write_text(fp8.model_dump_json(exclude_none=True))
    (tmp_path / "bf16.json").write_text(cluster(instance(None, max_num_seqs=16)).model_dump_json(exclude_none=True))

    def run(config: str, kwargs: dict):
        (tmp_path / "meta.json").write_text(json.dumps({"vllm_version": "0.19.0", "engine_kwargs": kwargs}))
        return CliRunner().invoke(validate, ["--measured", str(tmp_path / "requests.jsonl"), "--cluster-config",
                                             str(tmp_path / config), "--output", str(tmp_path / "v.csv")],
                                  catch_exceptions=False)

    on_fp8 = run("fp8.json", {"quantization": "fp8"})
    assert on_fp8.exit_code == 0 and "quantization fp8 from meta.json engine_kwargs" in on_fp8.output
    first = (tmp_path / "v.csv").read_text()
    on_bf16 = run("bf16.json", {"quantization": "fp8"})
    assert on_bf16.exit_code == 0
    assert "quantization fp8 from meta.json engine_kwargs, the config says" not in on_fp8.output
    assert (tmp_path / "v.csv").read_text() == first  # the same replay: fp8 weights both times
    assert run("fp8.json", {"async_scheduling": False}).exit_code == 0
    with pytest.raises(PdsimError, match="cannot express this run"):
        run("bf16.json", {"quantization": "gptq"})
