"""The command line as a user meets it: the main job, its outputs, and clean errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
PD_CONFIG = REPO / "configs/cluster/single_node_pd_instance.json"
TRACE = REPO / "workloads/example_trace.jsonl"


def pdsim(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pdsim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_main_job_writes_csv_summary_and_plots(tmp_path):
    out = tmp_path / "pd_split_run.csv"
    r = pdsim("--cluster-config", str(PD_CONFIG), "--dataset", str(TRACE), "--output", str(out),
              "--log-interval", "10", "--plot", "--num-requests", "60")
    assert r.returncode == 0, r.stderr
    assert "[INFO] t=10.0s P=" in r.stderr
    assert "TTFT (ms)" in r.stdout and "TPOT (ms)" in r.stdout and "ITL (ms)" in r.stdout
    assert "step times estimated from hardware specs" in r.stdout
    df = pd.read_csv(out)
    for col in ["request_id", "input_toks", "output_toks", "arrival_s", "first_token_s", "finish_s", "ttft_ms",
                "tpot_ms", "e2e_ms", "queue_ms", "prefill_instance", "decode_instance", "kv_transfer_ms",
                "preemptions", "status"]:
        assert col in df.columns
    assert len(df) == 60 and (df.status == "finished").all()
    assert (df.prefill_instance == "n0.i0").all() and (df.decode_instance == "n0.i1").all()
    summary = json.loads((tmp_path / "pd_split_run_summary.json").read_text())
    assert summary["requests"] == summary["finished"] == 60
    assert summary["estimated_profile"] is True
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(summary[key]) >= {"mean", "p50", "p90", "p99"}
    assert summary["throughput"]["output_tokens_per_s"] > 0
    assert [i["pd_type"] for i in summary["instances"]] == ["prefill", "decode"]
    assert all(i["peak_mem_gb"] > i["peak_kv_gb"] > 0 for i in summary["instances"])
    for name in ("latency_cdf", "memory", "throughput"):
        assert (tmp_path / f"pd_split_run_{name}.png").stat().st_size > 1000


def test_help_lists_options_with_defaults_and_subcommands():
    r = pdsim("--help")
    assert r.returncode == 0
    for text in ("--cluster-config", "--dataset", "--log-interval", "--max-num-seqs", "[default: 0]",
                 "outputs/run.csv", "workload", "profile", "run"):
        assert text in r.stdout


def test_every_routing_policy_a_config_takes_is_taken_on_the_command_line(tmp_path):
    from pdsim.config.base import ROUTER_POLICIES

    r = pdsim("run", "--help")
    assert "|".join(ROUTER_POLICIES) in r.stdout.replace("\n", "").replace(" ", "")
    # The cache-aware one routes differently from the default: two colocated instances, prompts that
    # share prefixes, so prefix_aware sends more of them where their prefix is cached.
    # Five conversations of ten turns, each turn's prompt extending the last, their answers of unequal lengths
    # (with equal ones the load alone kept each conversation on one instance).
    trace = tmp_path / "chats.jsonl"
    outputs = [16, 32, 16, 48, 16]
    trace.write_text("".join(
        json.dumps({"input_toks": 512 * (turn + 2), "output_toks": outputs[chat],
                    "arrival_time_ns": (turn * 5 + chat) * 10**8,
                    "hash_ids": [chat * 1000 + b for b in range(turn + 2)]}) + "\n"
        for turn in range(10) for chat in range(5)))
    outs = {}
    for policy in ("least_loaded", "prefix_aware"):
        r = pdsim("run", "--cluster-config", "single_node_2colocated", "--dataset", str(trace),
                  "--prefill-policy", policy, "--output", str(tmp_path / f"{policy}.csv"),
                  "--quiet")
        assert r.returncode == 0, r.stderr
        outs[policy] = pd.read_csv(tmp_path / f"{policy}.csv")
        assert (outs[policy].status == "finished").all()
    assert outs["prefix_aware"].cached_tokens.sum() > outs["least_loaded"].cached_tokens.sum()


def test_a_stats_plot_named_as_another_format_is_refused(tmp_path):
    r = pdsim("workload", "stats", str(TRACE), "--plot", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and "--plot " in r.stderr and "the plot is a PNG; name it .png" in r.stderr
    assert not (tmp_path / "x.txt").exists()


def test_more_clients_than_requests_is_said(tmp_path):
    r = pdsim("run", "--cluster-config", str(REPO / "configs/cluster/single_node_single_instance.json"),
              "--concurrency", "20", "--num-reqs", "6", "--input-len", "64", "--output-len", "4",
              "--output", str(tmp_path / "cl.csv"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "6 requests, closed loop with 20 clients (only 6 of them send: one request each)" in r.stdout


def test_closed_loop_run_without_dataset(tmp_path):
    r = pdsim("run", "--cluster-config", str(REPO / "configs/cluster/single_node_single_instance.json"),
              "--concurrency", "4", "--num-reqs", "12", "--input-len", "512", "--output-len", "32",
              "--output", str(tmp_path / "cl.csv"), "--quiet")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "cl.csv")
    assert len(df) == 12 and (df.input_toks == 512).all()
    # Never more than 4 requests in flight: each arrival waits for an earlier finish.
    events = sorted([(t, 1) for t in df.arrival_s] + [(t, -1) for t in df.finish_s], key=lambda e: (e[0], e[1]))
    in_flight = peak = 0
    for _, delta in events:
        in_flight += delta
        peak = max(peak, in_flight)
    assert peak == 4
    r = pdsim("run", "--cluster-config", str(REPO / "configs/cluster/single_node_single_instance.json"),
              "--concurrency", "4", "--num-reqs", "12", "--input-len", "512", "--output-len", "32",
              "--client-delay-ms", "-1", "--output", str(tmp_path / "cl.csv"), "--quiet")
    assert r.returncode == 2 and "--client-delay-ms" in r.stderr and "Traceback" not in r.stderr



def test_validate_closed_loop_table(tmp_path):
    table = tmp_path / "bench.csv"
    table.write_text("isl,osl,batch_size,tp_size,silicon_ttft_ms,silicon_tpot_ms\n"
                     "1024,64,4,1,100.0,20.0\n2048,64,8,1,300.0,30.0\n")
    out = tmp_path / "val.csv"
    base = ("validate", "--measured", str(table), "--model", "meta-llama/Llama-3.1-8B", "--hardware", "H100-SXM",
            "--rounds", "3", "--output", str(out))
    r = pdsim(*base)
    assert r.returncode == 0, r.stderr
    assert "MAPE: TTFT" in r.stdout
    # The per-group table: one line per (tp, isl) with the signed error of that row.
    assert "TTFT signed error (%)" in r.stdout and "TPOT signed error (%)" in r.stdout
    aic = pd.read_csv(out)
    first_group = [line for line in r.stdout.splitlines() if line.lstrip().startswith("1  1024")][0]
    assert f"{aic.ttft_err_pct.iloc[0]:+.1f}" in first_group
    assert len(aic) == 2 and aic.sim_ttft_ms.gt(0).all() and aic.sim_tpot_ms.gt(0).all()
    # A 8192-token budget packs the burst of 8 prompts into fewer, longer steps than 8 + 2048 + 1500.
    r = pdsim(*base, "--engine-preset", "vllm-serve")
    assert r.returncode == 0, r.stderr
    serve = pd.read_csv(out)
    assert serve.sim_ttft_ms.iloc[1] != pytest.approx(aic.sim_ttft_ms.iloc[1], rel=1e-3)
    r = pdsim(*base[:-2], "--rounds", "0", "--output", str(out))
    assert r.returncode == 2 and "--rounds" in r.stderr and "Traceback" not in r.stderr
    # calibrate fits the step overhead on the table's per-row TPOT error, with leave-one-out error.
    cal = tmp_path / "cal.json"
    r = pdsim("calibrate", "--measured", str(table), "--model", "meta-llama/Llama-3.1-8B", "--hardware", "H100-SXM",
              "--rounds", "2", "--out", str(cal))
    assert r.returncode == 0, r.stderr
    fit = json.loads(cal.read_text())
    assert fit["step_overhead_us"] in fit["grid_us"] and fit["mape_pct"] == min(fit["mape_by_grid_pct"])
    assert fit["loo_mape_pct"] >= fit["mape_pct"]
    r = pdsim("calibrate", "--measured", str(table), "--model", "meta-llama/Llama-3.1-8B", "--metric", "e2e_ms")
    assert r.returncode == 2 and "e2e_ms" in r.stderr

def _config(tmp_path: Path, mutate) -> Path:
    raw = json.loads(PD_CONFIG.read_text())
    mutate(raw)
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


def _inst(raw: dict, i: int = 1) -> dict:
    return raw["nodes"][0]["instances"][i]


BAD_CONFIGS = {
    "pd_type typo": (lambda r: _inst(r).update(pd_type="prefil"),
                     'nodes[0].instances[1].pd_type: expected "prefill", "decode" or null, got "prefil"'),
    "negative bandwidth": (lambda r: r.update(link_bw=-1), "link_bw"),
    "zero memory": (lambda r: _inst(r)["npu_mem"].update(mem_size=0), "nodes[0].instances[1].npu_mem.mem_size"),
    "unknown model": (lambda r: _inst(r).update(model_name="meta-llama/Llama-9"), "Llama-3.1-8B"),
    "unknown hardware": (lambda r: _inst(r).update(hardware="RTX9090"), "nodes[0].instances[1].hardware"),
    "weights do not fit": (lambda r: _inst(r)["npu_mem"].update(mem_size=10), "weights need"),
    "kv cache does not fit": (lambda r: _inst(r)["npu_mem"].update(mem_size=17), "no room for the KV cache"),
    "num_instances mismatch": (lambda r: r["nodes"][0].update(num_instances=3), "num_instances"),
    "decode without prefill": (lambda r: _inst(r, 0).update(pd_type="decode"), "prefill"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_gives_one_clear_error(tmp_path, case):
    mutate, expected = BAD_CONFIGS[case]
    path = _config(tmp_path, mutate)
    r = pdsim("--cluster-config", str(path), "--dataset", str(TRACE), "--output", str(tmp_path / "o.csv"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ")
    assert str(path) in r.stderr
    assert expected in r.stderr


BAD_TRACES = {
    "malformed json": ('{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 0}\n{"input_toks": 1', ":2:"),
    "missing field": ('{"input_toks": 10, "arrival_time_ns": 0}\n', "output_toks"),
    "non-numeric": ('{"input_toks": "ten", "output_toks": 5, "arrival_time_ns": 0}\n', "input_toks"),
    "nan": ('{"input_toks": 10, "output_toks": 5, "arrival_time_ns": NaN}\n', "arrival_time_ns"),
    "negative": ('{"input_toks": 10, "output_toks": -5, "arrival_time_ns": 0}\n', "output_toks"),
    "empty": ("", "no requests"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRACES))
def test_bad_trace_gives_one_clear_error(tmp_path, case):
    text, expected = BAD_TRACES[case]
    path = tmp_path / "trace.jsonl"
    path.write_text(text)
    r = pdsim("--cluster-config", str(PD_CONFIG), "--dataset", str(path), "--output", str(tmp_path / "o.csv"))
    assert r.returncode == 2, r.stdout
    assert "Traceback" not in r.stderr
    assert str(path) in r.stderr and expected in r.stderr


def test_missing_files_and_debug_flag(tmp_path):
    r = pdsim("--cluster-config", str(tmp_path / "nope.json"), "--dataset", str(TRACE))
    assert r.returncode == 2 and "nope.json" in r.stderr and "Traceback" not in r.stderr
    r = pdsim("--cluster-config", str(tmp_path / "nope.json"), "--dataset", str(TRACE), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


# -- the first hour of a new user ------------------------------------------------------------------

def _commands():
    import click

    from pdsim.cli import cli

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            yield path, cmd
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    return list(walk(cli, []))


def test_misspelled_command_is_named_with_a_suggestion():
    r = pdsim("serach", "--gpus", "8")
    assert r.returncode == 2 and "no such command 'serach', did you mean 'search'?" in r.stderr
    assert "Traceback" not in r.stderr and "--gpus" not in r.stderr


def test_debug_is_accepted_by_every_command(tmp_path):
    r = pdsim("workload", "generate", "--num-requests", "3", "--output", str(tmp_path / "w.jsonl"), "--debug")
    assert r.returncode == 0, r.stderr
    r = pdsim("profile", "estimate", "--hardware", "H10", "--model", "meta-llama/Llama-3.1-8B", "--debug",
              "--out", str(tmp_path))
    assert "No such option" not in r.stderr and "Traceback" in r.stderr  # --debug shows it
    for workload_args in (["stats", str(tmp_path / "nosuch.csv")], ["generate", "--input-len", "lognormal:abc",
                                                                   "--output", str(tmp_path / "x.jsonl")]):
        plain, debug = pdsim("workload", *workload_args), pdsim("workload", *workload_args, "--debug")
        assert plain.returncode == 2 and "Traceback" not in plain.stderr, plain.stderr
        assert "Traceback" in debug.stderr and "PdsimError" in debug.stderr, debug.stderr


def test_every_option_has_help_and_every_writer_takes_out_and_output():
    for path, cmd in _commands():
        for param in cmd.params:
            if getattr(param, "help", None) is None and param.param_type_name == "option":
                pytest.fail(f"pdsim {' '.join(path)} {param.opts[0]}: no help text")
        names = {opt for p in cmd.params for opt in p.opts}
        if names & {"--out", "--output"}:
            assert {"--out", "--output"} <= names, f"pdsim {' '.join(path)}: accepts only one of --out/--output"


def test_workload_generate_takes_bare_lengths_and_refuses_a_rate_for_burst(tmp_path):
    out = tmp_path / "w.jsonl"
    r = pdsim("workload", "generate", "--num-requests", "4", "--input-len", "1024", "--output-len", "128",
              "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["input_toks"], x["output_toks"]) for x in rows] == [(1024, 128)] * 4
    r = pdsim("workload", "generate", "--arrival", "burst", "--rate", "3", "--out", str(tmp_path / "b.jsonl"))
    assert r.returncode == 2 and "burst" in r.stderr and "--rate" in r.stderr
    assert not (tmp_path / "b.jsonl").exists()
    r = pdsim("workload", "generate", "--arrival", "burst", "--num-requests", "3", "--out", str(tmp_path / "b.jsonl"))
    assert r.returncode == 0 and "all at t=0" in r.stdout


def test_estimate_suggests_the_hardware_name(tmp_path):
    r = pdsim("profile", "estimate", "--hardware", "H100-SX", "--model", "meta-llama/Llama-3.1-8B",
              "--out", str(tmp_path))
    assert r.returncode == 2 and "did you mean 'H100-SXM'?" in r.stderr


def test_profile_check_verdict_against_the_10_percent_goal():
    from pdsim.profiler.check import CheckRow
    from pdsim.profiler.cli import check_verdict

    def row(tokens: int, measured: float, predicted: float, spread: float = 0.02) -> CheckRow:
        return CheckRow("decode", tokens, 512, measured, predicted, spread, True)

    assert check_verdict([row(1, 10, 10.5), row(4, 10, 9.2)]).startswith("verdict: PASS, all 2 steps within 10%")
    assert check_verdict([row(1, 10, 10.5)]).endswith("; measured with the profiler's stand-in kernels chained, "
                                                      "not vLLM")
    verdict = check_verdict([row(1, 10, 10.5), row(8, 10, 11.5), row(16, 10, 8.8, spread=0.15)])
    assert verdict.startswith("verdict: FAIL, 2 of 3 steps outside 10%: decode B=8 L=512 +15.0%")
    assert "1 of them within the measurement's own spread" in verdict


def test_profile_check_table_reports_the_sustained_forward():
    from pdsim.profiler.check import CheckRow, format_table

    rows = [CheckRow("prefill", 1024, 0, 28.0, 27.0, 0.01, True, 30.0, 30.0),
            CheckRow("decode", 64, 1024, 10.0, 10.2, 0.01, True, 20.0, 10.0)]
    table = format_table(rows)
    assert "sustained ms" in table.splitlines()[0]
    assert "-10.0%" in table.splitlines()[1] and "+2.0%" in table.splitlines()[2]
    assert "prefill vs sustained: max |rel error| 10.0%" in table
    assert "sustained" not in format_table([CheckRow("decode", 1, 16, 1.0, 1.0, 0.0, True)])  # the CPU's table


def test_import_aiconfigurator_lists_its_systems(tmp_path):
    from pdsim.perf.aiconfigurator import importable_systems

    r = pdsim("profile", "import-aiconfigurator", "--help")
    assert all(s in " ".join(r.stdout.split()) for s in importable_systems())
    r = pdsim("profile", "import-aiconfigurator", "--systems-dir", str(tmp_path), "--system", "b200",
              "--model", "meta-llama/Llama-3.1-8B", "--tp", "1")
    assert r.returncode == 2 and "importable: a100_sxm, b200_sxm, gb200, gb200_sxm, h100_sxm" in r.stderr


AIC_H100 = REPO.parent / "shared/data/calibration/aiconfigurator-h100/systems_data_h100_sxm"


@pytest.mark.skipif(not AIC_H100.is_dir(), reason="../shared data not present")
def test_import_aiconfigurator_reads_an_a100_shaped_database_and_refuses_another_gpus(tmp_path):
    """aiconfigurator's A100 tables have no window_size column and FlashAttention 2 rows only (the
    H100 ones, reshaped so, stand in for them here); an H100 folder given as A100 is refused."""
    pytest.importorskip("pyarrow")
    db = tmp_path / "a100_sxm"
    shutil.copytree(AIC_H100, db)
    for path in db.rglob("*.parquet"):
        df = pd.read_parquet(path)
        if "device" in df.columns:
            df["device"] = "NVIDIA A100-SXM4-80GB"
        if "attention" in path.parts:
            df = df[(df.kernel_source == "vllm_flash_attn_fa3") & (df.window_size == 0)].drop(columns="window_size")
            df["kernel_source"] = "vllm_flash_attn"
        df.to_parquet(path)
    args = ("profile", "import-aiconfigurator", "--model", "meta-llama/Llama-3.1-8B", "--tp", "1")
    r = pdsim(*args, "--systems-dir", str(tmp_path), "--system", "a100_sxm", "--out", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "p/A100-80GB/meta-llama/Llama-3.1-8B/bfloat16/tp1/meta.json").read_text())
    assert "vllm_flash_attn)" in meta["notes"]
    r = pdsim(*args, "--systems-dir", str(AIC_H100), "--system", "a100_sxm", "--out", str(tmp_path / "q"))
    assert r.returncode == 2 and "measured on NVIDIA H100" in r.stderr and not (tmp_path / "q").exists()


@pytest.mark.skipif(not AIC_H100.is_dir(), reason="../shared data not present")
def test_import_aiconfigurator_refuses_latencies_it_cannot_use(tmp_path):
    # A GEMM latency of 0 priced the kernel at nothing (TPOT 1.0 ms for 7.2 ms); a corrupt file crashed.
    pytest.importorskip("pyarrow")
    db = tmp_path / "h100_sxm"
    shutil.copytree(AIC_H100, db)
    gemm = next(db.rglob("gemm_perf.parquet"))
    df = pd.read_parquet(gemm)
    df.loc[df.index[3], "latency"] = 0.0
    df.to_parquet(gemm)
    args = ("profile", "import-aiconfigurator", "--model", "meta-llama/Llama-3.1-8B", "--tp", "1", "--system",
            "h100_sxm", "--systems-dir", str(tmp_path), "--out", str(tmp_path / "p"))
    r = pdsim(*args)
    assert r.returncode == 2 and f"{gemm}: row 3: latency 0.0: expected a finite time > 0 (ms)" in r.stderr, r.stderr
    gemm.write_bytes(b"not parquet")
    r = pdsim(*args)
    assert r.returncode == 2 and f"{gemm}: not a readable parquet table" in r.stderr, r.stderr
    assert not (tmp_path / "p").exists()


def test_rejections_are_counted_by_reason_and_numbers_never_run_together(tmp_path):
    from pdsim.metrics.summary import format_summary

    trace = tmp_path / "t.jsonl"
    lines = [{"input_toks": 100, "output_toks": 10, "arrival_time_ns": 0}]
    lines += [{"input_toks": 200_000 + i, "output_toks": 10, "arrival_time_ns": i} for i in range(5)]
    trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = pdsim("--cluster-config", str(PD_CONFIG), "--dataset", str(trace), "--output", str(tmp_path / "o.csv"),
              "--quiet")
    assert r.returncode == 0, r.stderr
    rejected = [line for line in r.stdout.splitlines() if "rejected:" in line]
    assert len(rejected) == 1 and rejected[0].strip().startswith("5 rejected:") and "200,010 to 200,014" in rejected[0]
    summary = json.loads((tmp_path / "o_summary.json").read_text())
    huge = {"mean": 938_123_456.7, "p50": 12_345_678.9, "p90": 999_999_999.9, "p99": 1_234_567_890.1}
    summary["e2e_ms"] = huge
    row = [line for line in format_summary(summary).splitlines() if line.startswith("E2E latency")][0]
    assert row.split()[3:] == ["938,123,456.7", "12,345,678.9", "999,999,999.9", "1,234,567,890.1"]


def test_the_measured_h200_profile_prices_its_config(tmp_path):
    """The bundled H200 profile was measured by `pdsim profile` on an H200: a run on that GPU uses
    it and says nothing about estimates; the same cluster on an estimated profile differs."""
    from pdsim.perf.profile import read_profile

    meta = read_profile(REPO / "profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1").meta
    assert meta.source == "measured" and meta.device["name"] == "NVIDIA H200" and meta.tool == "pdsim profile"
    out = tmp_path / "h200.csv"
    r = pdsim("--cluster-config", str(REPO / "configs/cluster/single_node_pd_h200.json"), "--dataset", str(TRACE),
              "--output", str(out), "--num-requests", "40")
    assert r.returncode == 0, r.stderr
    assert "estimated" not in r.stdout.replace("estimated_profile", "")
    summary = json.loads((tmp_path / "h200_summary.json").read_text())
    assert summary["estimated_profile"] is False and summary["finished"] == 40
    empty = tmp_path / "no_profiles"
    empty.mkdir()
    r2 = pdsim("--cluster-config", str(REPO / "configs/cluster/single_node_pd_h200.json"), "--dataset", str(TRACE),
               "--output", str(tmp_path / "est.csv"), "--num-requests", "40", "--profiles-root", str(empty))
    assert r2.returncode == 0, r2.stderr
    assert "step times estimated from hardware specs" in r2.stdout
    estimated = json.loads((tmp_path / "est_summary.json").read_text())
    assert estimated["tpot_ms"]["mean"] != summary["tpot_ms"]["mean"]


def test_no_python_warning_reaches_the_user(tmp_path):
    """A lookup off the profile's grid is said once as a note, not also as a Python warning with its source
    line; plots of a run where nothing finished draw no empty legend (matplotlib warned)."""
    prof = tmp_path / "prof"
    shutil.copytree(REPO / "profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1", prof)
    decode = prof / "attention_decode.csv"
    decode.write_text("".join(decode.read_text().splitlines(keepends=True)[:3]))  # kv_tokens 1 and 16 only
    r = pdsim("--cluster-config", str(REPO / "configs/cluster/single_node_pd_h200.json"), "--dataset", str(TRACE),
              "--output", str(tmp_path / "r.csv"), "--num-requests", "5", "--profile-dir", str(prof), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("profile table 'attention_decode.csv': kv_tokens=") == 1
    assert "Warning" not in r.stderr, r.stderr
    r = pdsim("--cluster-config", str(PD_CONFIG), "--dataset", str(TRACE), "--output", str(tmp_path / "n.csv"),
              "--num-requests", "5", "--max-sim-time", "0.001", "--plot", "--quiet")
    assert r.returncode == 0 and "5 total, 0 finished" in r.stdout, r.stdout
    assert "Warning" not in r.stderr, r.stderr


def test_a_profile_filed_under_another_models_name_is_refused(tmp_path):
    # Found by the profiles-root lookup (not --profile-dir), its meta.json's model was not checked.
    root = tmp_path / "profiles"
    shutil.copytree(REPO / "profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1",
                    root / "H200/Qwen/Qwen3-8B/bfloat16/tp1")
    config = json.loads((REPO / "configs/cluster/single_node_pd_h200.json").read_text())
    for node in config["nodes"]:
        for inst in node["instances"]:
            inst["model_name"] = "Qwen/Qwen3-8B"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    r = pdsim("--cluster-config", str(path), "--dataset", str(TRACE), "--num-requests", "5", "--profiles-root",
              str(root), "--output", str(tmp_path / "r.csv"), "--quiet")
    assert r.returncode == 2 and "field 'model': the profile is for meta-llama/Llama-3.1-8B, but the instance runs " \
                                 "Qwen/Qwen3-8B" in r.stderr, r.stderr


def test_a_cluster_config_may_come_from_a_pipe_a_trace_may_not(tmp_path):
    # run reads a config once; a trace's first bytes tell its format and would be gone from a pipe.
    cmd = (f"{sys.executable} -m pdsim --cluster-config <(cat {PD_CONFIG}) --dataset {TRACE} --num-requests 5 "
           f"--quiet --output {tmp_path / 'r.csv'}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cmd = (f"{sys.executable} -m pdsim --cluster-config {PD_CONFIG} --dataset <(cat {TRACE}) --num-requests 5 "
           f"--quiet --output {tmp_path / 'p.csv'}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not a regular file (a pipe, FIFO or device)" in r.stderr, r.stderr


def test_rate_rescales_the_trace_to_that_mean_rate_and_is_refused_where_it_means_nothing(tmp_path):
    out = tmp_path / "r.csv"
    res = pdsim("--cluster-config", str(PD_CONFIG), "--dataset", str(TRACE), "--rate", "7.5", "--num-requests", "50",
                "--output", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    arrivals = pd.read_csv(out).arrival_s.sort_values().to_numpy()
    assert len(arrivals) == 50 and (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) == pytest.approx(7.5, rel=1e-6)
    assert "(--rate 7.5 req/s)" in res.stderr
    assert json.loads((tmp_path / "r_summary.json").read_text())["dataset_selection"] == {
        "dataset_format": None, "window": None, "num_requests": 50, "time_scale": 1.0, "rate_per_s": 7.5}
    # A window that starts before its first request: the rate is over the kept arrivals' own span.
    gap = tmp_path / "gap.jsonl"
    gap.write_text("".join(json.dumps({"input_toks": 100, "output_toks": 10, "arrival_time_ns": int(t * 1e9)}) + "\n"
                           for t in [0.0, *(100 + 0.5 * i for i in range(21))]))
    res = pdsim("--cluster-config", str(PD_CONFIG), "--dataset", str(gap), "--window", "1:200", "--rate", "4",
                "--output", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    arrivals = pd.read_csv(out).arrival_s.sort_values().to_numpy()
    assert len(arrivals) == 21 and 20 / (arrivals[-1] - arrivals[0]) == pytest.approx(4, rel=1e-6)
    lengths = tmp_path / "lengths.csv"
    lengths.write_text("num_prefill_tokens,num_decode_tokens\n100,10\n200,20\n")
    for args, words in ((("--dataset", str(TRACE), "--time-scale", "2"), "give one of them, not both"),
                        (("--dataset", str(TRACE), "--concurrency", "4"), "a closed loop's clients send"),
                        (("--num-requests", "8"), "it rescales a --dataset's arrivals"),
                        (("--dataset", str(lengths)), "lengths.csv has no arrival times, so it has no rate"),
                        (("--dataset", str(TRACE), "--num-requests", "1"),
                         "the 1 request(s) of " + str(TRACE) + " (those --window / --num-requests kept) arrive at one "
                         "instant")):
        res = pdsim("--cluster-config", str(PD_CONFIG), *args, "--rate", "5", "--output", str(tmp_path / "x.csv"))
        assert res.returncode == 2 and words in res.stderr, (args, res.stderr)
    res = pdsim("--cluster-config", str(PD_CONFIG), "--dataset", str(TRACE), "--rate", "1e-9", "--output",
                str(tmp_path / "x.csv"))
    assert res.returncode == 2 and "--rate 1e-09: the last arrival would be" in res.stderr, res.stderr


def test_options_this_cluster_gives_nothing_to_act_on_are_said(tmp_path, capsys):
    # A routing policy over a pool of one routing unit, TP switches without TP, the client's TTFT without decode
    # instances: the outputs are the same as without them, which a note says instead of silence.
    from pdsim.cli import main

    def notes(config: str, *options: str) -> list[str]:
        try:
            main(["--cluster-config", config, "--dataset", str(TRACE), "--num-requests", "5", "--output",
                  str(tmp_path / "r.csv"), "--quiet", *options])
        except SystemExit as e:
            assert not e.code
        return [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: --")]

    said = notes("single_node_2colocated", "--decode-policy", "random", "--prefill-policy", "random",
                 "--ttft-mode", "client", "--no-allreduce-rms-fusion", "--disable-custom-all-reduce")
    assert said == ["note: --decode-policy random: routes nothing here (no decode instance to choose among)",
                    "note: --disable-custom-all-reduce: no instance has TP >= 2, so there is no TP all-reduce to set",
                    "note: --no-allreduce-rms-fusion: no instance has TP >= 2, so there is no TP all-reduce to set",
                    "note: --ttft-mode client: no decode instance, so the first token reaches the client from the "
                    "instance that made it (the same as prefill)"]
    assert notes(str(PD_CONFIG), "--prefill-policy", "random") == [
        "note: --prefill-policy random: routes nothing here (one instance to choose among)"]
    assert notes(str(PD_CONFIG), "--ttft-mode", "client") == []  # P/D: it applies


def test_run_option_errors_name_the_option(tmp_path, capsys):
    from pdsim.cli import main

    def err(*options: str) -> tuple[int, str]:
        try:
            main(["--cluster-config", str(PD_CONFIG), "--output", str(tmp_path / "r.csv"), "--quiet", *options])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        return code, capsys.readouterr().err

    # A profile error an override caused (no estimate for float32 GEMMs) names the option, as a config error does.
    code, text = err("--dataset", str(TRACE), "--num-requests", "3", "--dtype", "float32")
    assert code == 2 and text.rstrip().endswith("(with --dtype float32 from the command line)")
    # ... and not one it did not (an option that picks nothing a profile must give).
    (tmp_path / "empty").mkdir()
    code, text = err("--dataset", str(TRACE), "--num-requests", "3", "--profile-dir", str(tmp_path / "empty"),
                     "--max-num-seqs", "8")
    assert code == 2 and "not a profile directory" in text and "from the command line" not in text
    # An empty length spec is that option's error, not a missing --dataset.
    code, text = err("--concurrency", "4", "--input-len", "", "--output-len", "20", "--num-requests", "8")
    assert code == 2 and text.startswith("error: --input-len: missing 'KIND:' in ''")
    # --time-scale at 1 beside --rate changes nothing: noted, as other options at their default are, not refused.
    code, text = err("--dataset", str(TRACE), "--num-requests", "10", "--rate", "2", "--time-scale", "1")
    assert code == 0 and "note: --time-scale 1.0: given at its default value, which does not apply here" in text
    code, text = err("--dataset", str(TRACE), "--num-requests", "10", "--rate", "2", "--time-scale", "2")
    assert code == 2 and "--rate: applies to an open-loop --dataset without --time-scale" in text


def test_a_missing_profile_says_how_a_measured_one_is_found_and_an_unknown_model_how_to_estimate_one(tmp_path):
    # A newcomer's profile from `pdsim profile` lies under ./profiles, which runs do not search by default.
    raw = json.loads((REPO / "configs" / "cluster" / "cpu_llama160m.json").read_text())
    for node in raw["nodes"]:
        for inst in node["instances"]:
            inst["hardware"] = "CPU-7core"
    cfg = tmp_path / "cpu7.json"
    cfg.write_text(json.dumps(raw))
    res = pdsim("run", "--cluster-config", str(cfg), "--dataset", "cpu_trace", "--output", str(tmp_path / "o.csv"))
    assert res.returncode == 2
    assert "a profile `pdsim profile` measured is looked up with --profiles-root" in res.stderr
    res = pdsim("profile", "estimate", "--hardware", "L40S", "--model", "foo/bar", "--out", str(tmp_path / "p"))
    assert res.returncode == 2
    assert "for another model give its Hugging Face config.json with --model-config" in res.stderr


LSS_4090 = REPO.parent / "shared" / "data" / "llmservingsim-configs" / "rtx4090_single_instance.json"


@pytest.mark.skipif(not LSS_4090.is_file(), reason="needs ../shared")
def test_llmservingsims_run_flags_are_taken_with_its_meaning(tmp_path, capsys):
    # A switching user's --npu-memory-utilization was refused with "did you mean --gpu-memory-utilization", vLLM's
    # knob of another rule: its configs' mem_util (0.833919 here) is calibrated to KV = mem_size x it - weights.
    from pdsim.cli import main

    def run(*options: str) -> tuple[int, str, dict]:
        out = tmp_path / "r.csv"
        try:
            main(["--cluster-config", str(LSS_4090), "--dataset", str(TRACE), "--num-requests", "5", "--quiet",
                  "--output", str(out), *options])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        summary = json.loads(out.with_name("r_summary.json").read_text()) if code == 0 else {}
        return code, capsys.readouterr().err, summary

    code, err, summary = run("--npu-memory-utilization", "0.8", "--kv-cache-dtype", "fp8",
                             "--long-prefill-token-threshold", "512", "--no-reserve-full-isl")
    assert code == 0, err
    assert ("note: --npu-memory-utilization 0.8 replaces the npu_mem.mem_util of nodes[0].instances[0] (0.833919)"
            in err)
    _, _, default = run()
    # LLMServingSim's rule at 0.8 rather than the config's 0.833919: 24 GiB x the share, less the same weights.
    ours, theirs = summary["instances"][0], default["instances"][0]
    assert ours["kv_rule"] == theirs["kv_rule"] == "llmservingsim"
    assert ours["kv_capacity_gb"] == pytest.approx(24 * 0.8 - (24 * 0.833919 - theirs["kv_capacity_gb"]), abs=0.01)
    assert ours["kv_cache_dtype"] == "fp8" and theirs["kv_cache_dtype"] != "fp8"
    code, err, _ = run("--npu-memory-utilization", "0.8", "--gpu-memory-utilization", "0.9")
    assert code == 2 and "give one" in err
    # Its switches of features pdsim does not simulate are refused with the reason, as the instance keys are.
    code, err, _ = run("--enable-sub-batch-interleaving")
    assert code == 2 and err.startswith("error: --enable-sub-batch-interleaving: LLMServingSim's switch of a feature "
                                        "pdsim does not simulate (sub-batch interleaving is not modelled)")


def test_the_scheduler_flags_reach_every_instance(monkeypatch, tmp_path):
    # vLLM's and LLMServingSim's names of one switch, and the chunk cap: each sets its instance key.
    import pdsim.config
    from pdsim.cli import main

    built = []
    load = pdsim.config.load_cluster_config
    monkeypatch.setattr(pdsim.config, "load_cluster_config", lambda *a, **k: built.append(load(*a, **k)) or built[-1])
    for flag, reserve in (("--no-reserve-full-isl", False), ("--scheduler-reserve-full-isl", True)):
        main(["--cluster-config", str(PD_CONFIG), "--dataset", str(TRACE), "--num-requests", "3", "--quiet",
              "--output", str(tmp_path / "r.csv"), flag, "--long-prefill-token-threshold", "256"])
        assert {(ref.config.scheduler_reserve_full_isl, ref.config.long_prefill_token_threshold)
                for ref in built[-1].instances()} == {(reserve, 256)}
