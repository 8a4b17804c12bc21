"""`pdsim search` over decode DP-group layouts (MoE DP attention): expansion, skips with reasons, a search."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from pdsim.cli import cli
from pdsim.config import load_cluster_config
from pdsim.errors import PdsimError
from pdsim.sweep.expand import expand

ROOT = Path(__file__).resolve().parent.parent
DEEPSEEK = ROOT / "configs" / "cluster" / "deepseek_v3_pd_h200.json"
DENSE = ROOT / "configs" / "cluster" / "sweep_base_h100.json"


@pytest.fixture(scope="module")
def deepseek():
    return load_cluster_config(DEEPSEEK)


def test_dp1_and_dp8_decode_layouts_are_built_from_the_base(deepseek):
    skipped: list[str] = []
    variants = expand(deepseek, 16, tp_prefill=[8], tp_decode=[1, 8], dp_decode=[1, 8], colocated=False,
                      skipped=skipped)
    by_label = {v.label: v for v in variants}
    assert set(by_label) == {"1P1D-tp8/dp8xtp1", "1P1D-tp8/8"}
    dp = by_label["1P1D-tp8/dp8xtp1"].config()
    prefill, *ranks = dp.instances()
    assert len(ranks) == 8 and {r.config.dp_group for r in ranks} == {"decode0"}
    assert {(r.config.tp_size, r.config.ep_size, r.node_index) for r in ranks} == {(1, 8, 1)}  # one node
    assert prefill.config.dp_group is None and prefill.config.ep_size == 8
    tp8 = by_label["1P1D-tp8/8"].config()
    assert [(r.config.tp_size, r.config.dp_group, r.config.ep_size) for r in tp8.instances()] == [
        (8, None, 8), (8, None, 8)]
    # Every base field but the nodes is kept (links, precision, memory knobs of the instance).
    base_top = deepseek.model_dump(exclude={"nodes", "num_nodes"})
    assert dp.model_dump(exclude={"nodes", "num_nodes"}) == base_top
    assert all(r.config.quantization == "fp8_block" and r.config.max_num_seqs == 128 for r in ranks)
    # TP1 decode without a DP group holds all 256 experts: refused by the config's fit check, skipped.
    assert any(s.startswith("1P8D-tp8/1: ") and "weights need" in s for s in skipped)


def test_dp_groups_without_expert_parallelism_split_every_expert_over_the_group(deepseek):
    from pdsim.engine.build import build_instances
    from pdsim.engine.options import SimOptions

    ep, flat = (expand(deepseek, 16, tp_prefill=[8], tp_decode=[1], dp_decode=[8], colocated=False,
                       expert_parallel=e)[0] for e in (True, False))
    assert (ep.label, flat.label) == ("1P1D-tp8/dp8xtp1", "1P1D-tp8/dp8xtp1-noep")
    # The CSV rows carry the decode layout as columns, not only in the label.
    assert [(v.dp_decode, v.ep_decode) for v in (ep, flat)] == [(8, 8), (8, 1)]
    ranks = flat.config().instances()[1:]
    assert {(r.config.dp_group, r.config.ep_size) for r in ranks} == {("decode0", 1)}
    import simpy

    infos = {v.label: build_instances(simpy.Environment(), v.config(), SimOptions(), v.label)[1] for v in (ep, flat)}
    # The same expert bytes per GPU either way (256 experts over 8 GPUs, whole or sliced), so the same KV.
    assert infos[ep.label][1].num_kv_blocks == infos[flat.label][1].num_kv_blocks
    # Two GPUs cannot hold the experts, sliced or not: the group's check refuses it, naming the group.
    skipped: list[str] = []
    with pytest.raises(PdsimError, match="no P:D split"):
        expand(deepseek, 10, tp_prefill=[8], tp_decode=[1], dp_decode=[2], colocated=False, expert_parallel=False,
               skipped=skipped)
    assert skipped[0].startswith('1P1D-tp8/dp2xtp1-noep: dp_group "decode0": deepseek-ai/DeepSeek-V3 weights need')


def test_invalid_dp_layouts_are_skipped_with_a_reason(deepseek):
    skipped: list[str] = []
    variants = expand(deepseek, 32, tp_prefill=[8], tp_decode=[1, 2, 8], dp_decode=[3, 8], colocated=False,
                      skipped=skipped)
    # 256 experts over DP 3 x TP 2 split 43, 43, 43, 43, 42, 42, as vLLM runs them; over DP 3 x TP 1 too, but three
    # GPUs cannot hold them.
    assert {v.label for v in variants} >= {"1P3D-tp8/dp8xtp1", "1P4D-tp8/dp3xtp2"}
    assert any(s.startswith("1P8D-tp8/dp3xtp1: decode instance: deepseek-ai/DeepSeek-V3 weights need") for s in skipped)
    assert any(s.startswith("decode DP 8 x TP 2: DP 8 x TP 2 = 16 GPUs does not fit a node of 8 GPUs") for s in skipped)
    assert any(s.startswith("decode DP 8 x TP 8: DP 8 x TP 8 = 64 GPUs does not fit a node of 8 GPUs") for s in skipped)
    # A pdsim limit of the sweep, not vLLM's: said so.
    assert any("vLLM also runs them across nodes" in s for s in skipped)
    with pytest.raises(PdsimError, match="decode of 6 GPU.s. .tp8/2, DP 3.: no whole number of them makes exactly 16"):
        expand(deepseek, 16, tp_prefill=[8], tp_decode=[2], dp_decode=[3], colocated=False)


def test_dp_on_a_dense_model_is_skipped_not_crashed():
    skipped: list[str] = []
    variants = expand(load_cluster_config(DENSE), 8, tp_decode=[1], dp_decode=[1, 2], skipped=skipped)
    assert variants and all(v.dp_decode == 1 for v in variants)
    assert len(skipped) == 1 and "is dense" in skipped[0]


def test_search_over_dp1_and_dp8_decode_returns_both(tmp_path):
    dataset = tmp_path / "small.jsonl"
    runner = CliRunner()
    res = runner.invoke(cli, ["workload", "generate", "--num-requests", "30", "--rate", "4", "--input-len",
                              "lognormal:2000,800", "--output-len", "lognormal:200,50", "--seed", "2",
                              "--output", str(dataset)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, [
        "search", "--base-config", str(DEEPSEEK), "--dataset", str(dataset), "--gpus", "16", "--tp-prefill", "8",
        "--tp-decode", "1,8", "--decode-dp", "1,8", "--no-colocated", "--slo-ttft-ms", "1000",
        "--slo-tpot-ms", "70", "--max-probes", "3", "--workers", "1", "--min-duration-s", "0", "--no-plots",
        "--quiet", "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    assert "skipped decode DP 8 x TP 8: DP 8 x TP 8 = 64 GPUs does not fit a node of 8 GPUs" in res.output
    rows = pd.read_csv(tmp_path / "q" / "search.csv").set_index("label")
    assert set(rows.index) == {"1P1D-tp8/dp8xtp1", "1P1D-tp8/8"}
    dp8, tp8 = rows.loc["1P1D-tp8/dp8xtp1"], rows.loc["1P1D-tp8/8"]
    assert dp8.tpot_p90_ms != tp8.tpot_p90_ms
    # Both 1P1D layouts share the TP8 prefill instance: when both are prefill-bound their estimates agree.
    both_prefill_bound = dp8.est_bottleneck == tp8.est_bottleneck == "prefill"
    assert both_prefill_bound or dp8.est_capacity_req_s != tp8.est_capacity_req_s
    assert (tmp_path / "q" / "configs" / "1P1D-tp8-dp8xtp1.json").exists()


def test_ep_decode_says_the_expert_parallel_size_a_moe_instance_without_ep_size_runs(tmp_path):
    # Without ep_size a MoE instance runs LLMServingSim's default, ep_size = tp_size; the column said 1.
    import json

    raw = json.loads(DEEPSEEK.read_text())
    for node in raw["nodes"]:
        for inst in node["instances"]:
            inst.pop("ep_size", None)
    (tmp_path / "c.json").write_text(json.dumps(raw))
    variant = expand(load_cluster_config(tmp_path / "c.json"), 16, tp_prefill=[8], tp_decode=[8], dp_decode=[1],
                     colocated=False)[0]
    decode = variant.config().instances()[1].config
    assert decode.ep_size is None and variant.ep_decode == decode.effective_ep_size() == 8
