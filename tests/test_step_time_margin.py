"""Every engine step scaled (SimOptions.step_time_scale) and validate's step-time margin column."""

import json
from pathlib import Path

import pandas as pd
import pytest

from pdsim.config import cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.errors import ConfigError
from tests.helpers import cluster, instance, trace

REPO = Path(__file__).resolve().parents[1]
QWEN_MOE = "Qwen/Qwen3-30B-A3B-Instruct-2507"
ROWS = [(900, 40, 0.0), (300, 120, 0.0), (2500, 12, 0.0), (64, 200, 0.0)]


def _moe_dp_group():
    rank = {"model_name": QWEN_MOE, "hardware": "RTXPRO6000", "tp_size": 1, "pd_type": None, "ep_size": 2,
            "dp_group": "A", "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0, "mem_util": 0.9}}
    return cluster_config_from_dict({"num_nodes": 1, "link_bw": 16, "link_latency": 20000,
                                     "nodes": [{"num_instances": 2, "instances": [rank, dict(rank)]}]})


@pytest.mark.parametrize("cfg", [cluster(instance(None, max_num_seqs=8)),
                                 cluster(instance(None, async_scheduling=True)), _moe_dp_group()],
                         ids=["sync", "async", "moe-dp-group"])
def test_every_step_scaled_scales_the_whole_timeline(cfg):
    # All requests arrive at 0 and nothing else takes time (no links, no client): with every step 1.5x as long
    # every first token and finish comes at 1.5x the time. A path that missed the scale (a decode run, a DP
    # group's MoE layer or dummy step) would break it.
    base = simulate(cfg, trace(ROWS), SimOptions())
    slow = simulate(cfg, trace(ROWS), SimOptions(step_time_scale=1.5))
    assert all(r.status == "finished" for r in base.requests + slow.requests)
    for a, b in zip(base.requests, slow.requests):
        assert b.first_token_s == pytest.approx(1.5 * a.first_token_s, rel=1e-9)
        assert b.finish_s == pytest.approx(1.5 * a.finish_s, rel=1e-9)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_a_step_time_scale_must_be_positive_and_finite(scale):
    with pytest.raises(ConfigError, match="step_time_scale"):
        SimOptions(step_time_scale=scale)


def test_validate_prints_each_figure_with_every_step_faster_and_slower(tmp_path):
    from click.testing import CliRunner

    from pdsim.validate.cli import validate

    rows = [(int(i * 37 % 500 + 60), int(i * 13 % 60 + 20), 0.02 * i) for i in range(60)]
    cfg = cluster(instance(None, max_num_seqs=8))
    made = simulate(cfg, trace(rows), SimOptions())
    records = [{"input_toks": r.input_toks, "output_toks": r.output_toks, "arrival_time": r.arrival_s,
                "queued_ts": r.arrival_s, "scheduled_ts": r.arrival_s, "first_token_ts": r.first_token_s,
                "last_token_ts": r.finish_s} for r in made.requests]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "cluster.json").write_text(cfg.model_dump_json(exclude_none=True))
    args = ["--measured", str(tmp_path / "requests.jsonl"), "--cluster-config", str(tmp_path / "cluster.json")]
    res = CliRunner().invoke(validate, [*args, "--output", str(tmp_path / "v.csv")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "steps -/+2%" in res.output and "every replayed step 2% faster and 2% slower" in res.output
    table = pd.read_csv(tmp_path / "v.csv").set_index(["metric", "stat"])
    ttft, tpot = table.loc[("TTFT (ms)", "mean")], table.loc[("TPOT (ms)", "mean")]
    assert ttft.simulated_steps_faster < ttft.simulated < ttft.simulated_steps_slower
    # The run is pdsim's own: the replay is exact, and a decode step 2% longer is a TPOT 2% longer.
    assert tpot.diff_pct == pytest.approx(0, abs=1e-6)
    assert tpot.diff_pct_steps_slower == pytest.approx(2.0, abs=0.2)
    assert tpot.diff_pct_steps_faster == pytest.approx(-2.0, abs=0.2)
    # Off: the table as before.
    res = CliRunner().invoke(validate, [*args, "--step-time-margin-pct", "0", "--output", str(tmp_path / "w.csv")],
                             catch_exceptions=False)
    assert res.exit_code == 0 and "steps -/+" not in res.output
    assert "simulated_steps_faster" not in pd.read_csv(tmp_path / "w.csv").columns


def test_run_reports_ttft_tpot_and_e2e_with_every_step_faster_and_slower(tmp_path):
    from click.testing import CliRunner

    from pdsim.bundled import bundled_path
    from pdsim.cli import cli
    from pdsim.config import load_cluster_config
    from pdsim.metrics.summary import requests_frame, summarize
    from pdsim.workload.readers import load_dataset

    config, dataset = REPO / "configs/cluster/single_node_pd_instance.json", REPO / "workloads/example_trace.jsonl"
    res = CliRunner().invoke(cli, ["run", "--cluster-config", str(config), "--dataset", str(dataset), "--quiet",
                                    "--step-time-margin-pct", "5", "--output", str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    assert "with every step 5% faster .. 5% slower (mean / p90): TTFT " in res.output
    summary = json.loads((tmp_path / "r_summary.json").read_text())
    margin = summary["step_time_margin"]
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert margin["faster"][key]["mean"] < summary[key]["mean"] < margin["slower"][key]["mean"]
    # The same as a run of its own at that scale, from a freshly read trace (the first run left it as it was).
    alone = simulate(load_cluster_config(config), load_dataset(dataset),
                     SimOptions(step_time_scale=0.95, profiles_root=str(bundled_path("profiles"))))
    assert margin["faster"]["ttft_ms"] == summarize(alone, requests_frame(alone))["ttft_ms"]
    assert "NOTE: these runs finished" not in res.output  # all 200 finish each time
    # Stopped early, the three runs finish different requests: said, as the figures are over different sets.
    res = CliRunner().invoke(cli, ["run", "--cluster-config", str(config), "--dataset", str(dataset), "--quiet",
                                    "--max-sim-time", "8", "--step-time-margin-pct", "5",
                                    "--output", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert "NOTE: these runs finished 15 / 14 / 14 requests (faster / as is / slower)" in res.output
    # None finishes in any of the three: said so, not "TTFT -..- / -..- ms".
    res = CliRunner().invoke(cli, ["run", "--cluster-config", str(config), "--dataset", str(dataset), "--quiet",
                                    "--max-sim-time", "0.001", "--step-time-margin-pct", "5",
                                    "--output", str(tmp_path / "n.csv")])
    assert res.exit_code == 0, res.output
    assert "with every step 5% faster or slower: no request finished either" in res.output and "-..-" not in res.output
    # --seed as sweep and search take it.
    res = CliRunner().invoke(cli, ["run", "--cluster-config", str(config), "--dataset", str(dataset), "--seed", "-1",
                                    "--output", str(tmp_path / "x.csv")])
    assert "--seed: expected a seed >= 0" in str(res.exception), res.output


def test_validate_gives_a_closed_loop_table_its_mapes_with_every_step_faster_and_slower(tmp_path):
    from click.testing import CliRunner

    from pdsim.validate.cli import validate

    header = ("backend,backend_version,model_path,system,mode,isl,osl,batch_size,tp_size,pp_size,gemm_quant_mode,"
              "silicon_ttft_ms,silicon_tpot_ms\n")
    rows = "".join(f"vllm,0.12.0,meta-llama/Llama-3.1-8B,h100_sxm,agg,{isl},32,{c},1,1,bf16,60.0,9.0\n"
                   for isl, c in ((512, 4), (2048, 8)))
    (tmp_path / "t.csv").write_text(header + rows)
    res = CliRunner().invoke(validate, ["--measured", str(tmp_path / "t.csv"), "--rounds", "2", "--output",
                                        str(tmp_path / "v.csv")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "with every step 2% faster .. 2% slower: TTFT MAPE" in res.output
    df = pd.read_csv(tmp_path / "v.csv")
    for metric in ("ttft", "tpot"):
        assert (df[f"sim_{metric}_ms_steps_faster"] < df[f"sim_{metric}_ms"]).all()
        assert (df[f"sim_{metric}_ms"] < df[f"sim_{metric}_ms_steps_slower"]).all()


def test_a_ttft_that_moves_far_more_than_the_steps_is_said_to_be_set_by_queueing():
    from pdsim.metrics.summary import _queueing_bound

    def margin(fast: float, slow: float) -> dict:
        return {"margin_pct": 2.0, "faster": {"ttft_ms": {"mean": fast}}, "slower": {"ttft_ms": {"mean": slow}}}

    # 734 .. 3,074 ms around 1,296 ms for +-2% steps: 45x (a run at 98% of its capacity).
    said = _queueing_bound({"ttft_ms": {"mean": 1295.8}}, margin(734.0, 3074.2))
    assert said is not None and "moves 45x as far as the step times: queueing sets it" in said
    assert _queueing_bound({"ttft_ms": {"mean": 47.3}}, margin(46.3, 48.3)) is None  # about as far as the steps
    assert _queueing_bound({"ttft_ms": {"mean": None}}, margin(46.3, 48.3)) is None
    tiny = margin(46.3, 48.3) | {"margin_pct": 5e-324}  # a margin that rounds to no spread says nothing
    assert _queueing_bound({"ttft_ms": {"mean": 47.3}}, tiny) is None
