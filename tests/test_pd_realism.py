"""P/D realism (issue #5): topology, contention, transfer modes, decode back-pressure, TTFT modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simpy

from pdsim.config import cluster_config_from_dict, load_cluster_config
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.engine.kv_cache import blocks_for
from pdsim.engine.kv_transfer import kv_transfer_bytes
from pdsim.engine.link import Link
from pdsim.engine.network import Network
from pdsim.errors import ConfigError
from pdsim.metrics.summary import requests_frame, summarize
from pdsim.models import load_model
from tests.helpers import MODEL, all_released, cluster, instance, run, trace

REPO = Path(__file__).resolve().parent.parent
MOONCAKE = REPO.parent / "shared/data/calibration/mooncake-kv-transfer/vllm-v1-pd-performance.md"
PER_TOKEN = 131072  # Llama-3.1-8B bf16: 2 x 32 layers x 8 KV heads x 128 x 2 bytes
# The mechanics tests use an ideal transfer: line rate, no fixed cost (the defaults are measured).
IDEAL_XFER = {"per_layer_overhead_us": 0.0, "bandwidth_efficiency": 1.0}
IDEAL = {"kv_transfer": IDEAL_XFER}


def _two_nodes(prefill: dict, decodes: list[dict], **top) -> dict:
    return {
        "num_nodes": 2, "link_bw": top.pop("link_bw", 16), "link_latency": top.pop("link_latency", 20000),
        "nodes": [
            {"num_instances": 1, "instances": [prefill], **top.pop("node0", {})},
            {"num_instances": len(decodes), "instances": decodes, **top.pop("node1", {})},
        ],
        **top,
    }


# -- the network on its own ---------------------------------------------------------------------
def _run_flows(flows: list[tuple[tuple[Link, ...], float, float]]) -> list[float]:
    """Start (path, bytes, at_s) flows; return each one's completion time."""
    env = simpy.Environment()
    net = Network(env)
    ends = [0.0] * len(flows)

    def starter(i, path, nbytes, at):
        yield env.timeout(at)
        net.start(path, nbytes, lambda: ends.__setitem__(i, env.now))

    for i, (path, nbytes, at) in enumerate(flows):
        env.process(starter(i, path, nbytes, at))
    env.run()
    return ends


def test_two_flows_on_one_link_each_take_twice_as_long():
    link = Link("l", "network", 1e9)
    (alone,) = _run_flows([((link,), 1e9, 0.0)])
    both = _run_flows([((link,), 1e9, 0.0), ((link,), 1e9, 0.0)])
    assert alone == pytest.approx(1.0)
    assert both == pytest.approx([2.0, 2.0])


def test_sharing_is_max_min_fair_and_recomputed_when_flows_start_and_end():
    wide, narrow = Link("wide", "nic_out", 10e9), Link("narrow", "network", 2e9)
    # Flow b is held to 2 GB/s by the narrow link, so a gets the other 8 of the wide one.
    a_end, b_end = _run_flows([((wide,), 16e9, 0.0), ((wide, narrow), 4e9, 0.0)])
    assert a_end == pytest.approx(2.0) and b_end == pytest.approx(2.0)
    # A late flow halves the first one's rate from then on: 1 s alone, then 1 GB left at 0.5 GB/s each.
    link = Link("l", "network", 1e9)
    first, second = _run_flows([((link,), 2e9, 0.0), ((link,), 1e9, 1.0)])
    assert first == pytest.approx(3.0) and second == pytest.approx(3.0)


def test_a_streamed_flow_stalls_until_fed():
    env = simpy.Environment()
    net = Network(env)
    link = Link("l", "network", 1e9)
    ended = []
    flow = net.start((link,), 2e9, lambda: ended.append(env.now), fed_bytes=1e9)

    def later():
        yield env.timeout(5.0)
        net.feed(flow, 2e9)

    env.process(later())
    env.run()
    assert ended == [pytest.approx(6.0)]  # 1 s for the first half, stalled till 5 s, 1 s more
    assert link.bytes_moved == pytest.approx(2e9)


# -- bytes ----------------------------------------------------------------------------------------
def test_bytes_are_grouped_query_aware_block_granular_and_follow_tp_and_wire_dtype():
    llama = load_model(MODEL)
    assert kv_transfer_bytes(llama, 2000, 16, "bfloat16", 1) == 2000 * PER_TOKEN  # 8 KV heads, not 32
    assert kv_transfer_bytes(llama, 2001, 16, "bfloat16", 1) == 2016 * PER_TOKEN  # the last block goes whole
    assert kv_transfer_bytes(llama, 2000, 16, "bfloat16", 8) == 2000 * PER_TOKEN  # 1 head per shard, 8 shards
    assert kv_transfer_bytes(llama, 2000, 16, "bfloat16", 1, "fp8") == 2000 * PER_TOKEN // 2
    # Llama-3.1-70B on TP16: each of its 8 KV heads lives on two shards, and both need it.
    big = load_model("meta-llama/Llama-3.1-70B")
    assert kv_transfer_bytes(big, 16, 16, "bfloat16", 16) == 2 * kv_transfer_bytes(big, 16, 16, "bfloat16", 8)


needs_mooncake = pytest.mark.skipif(not MOONCAKE.is_file(), reason="../shared data not present")


@needs_mooncake
def test_transfer_defaults_are_the_vllm_tables_fit_and_hold_on_the_sglang_table():
    # The defaults come from Mooncake's vLLM table (8 NICs for 8 GPUs); its SGLang table (another
    # engine, model, GPU, and 4 NICs for 8 GPUs) is held out. Bytes within 5% everywhere; transfer
    # times with the defaults within 20% on the held-out table (measured: +3..+18%) and 10% on the
    # table they were fitted on; each table's own fit predicts the other within 20% (measured 18%),
    # which without the GPUs-per-NIC term it did not (53% and 36%).
    from benchmarks.mooncake_kv_transfer import CASES, NIC_SHARING_IGNORED, derive, load_rows, score
    from pdsim.config import KVTransferConfig

    tables = {name: load_rows(case) for name, case in CASES.items()}
    assert [len(rows) for rows in tables.values()] == [9, 9]
    default = KVTransferConfig()
    assert derive(CASES["vllm"], tables["vllm"]) == default
    line_rate = KVTransferConfig(per_layer_overhead_us=0.0, bandwidth_efficiency=1.0)
    for name, bound in (("sglang", 0.20), ("vllm", 0.10)):
        settings = {"default": default, "line": line_rate, NIC_SHARING_IGNORED: default}
        results = score(CASES[name], tables[name], settings)
        for r in results:
            assert r["sim_bytes"] == pytest.approx(r["their_bytes"], rel=0.05), (name, r)
            assert r["default"] == pytest.approx(r["their_ms"], rel=bound), (name, r)
            assert abs(r["default"] / r["their_ms"] - 1) < abs(r["line"] / r["their_ms"] - 1), (name, r)
        if name == "sglang":  # the shared NICs are what the small prompts' fixed cost needs
            assert min(r[NIC_SHARING_IGNORED] / r["their_ms"] for r in results) < 0.7
        elsewhere = "sglang" if name == "vllm" else "vllm"
        crossed = score(CASES[name], tables[name], {"crossed": derive(CASES[elsewhere], tables[elsewhere])})
        assert all(abs(r["crossed"] / r["their_ms"] - 1) < 0.20 for r in crossed), (name, crossed)


def _cross_node_transfer_s(prefill_tp: int, decode_tp: int, decode_gpus_per_nic: int = 1) -> float:
    """How long one 2,000-token prompt's KV takes from a prefill node to a decode node."""
    def at(role: str, tp: int) -> dict:
        return {**instance(role), "tp_size": tp, "num_npus": tp}

    cfg = cluster_config_from_dict({
        "num_nodes": 2, "link_bw": 2, "link_latency": 0,
        "nodes": [{"num_instances": 1, "instances": [at("prefill", prefill_tp)]},
                  {"num_instances": 1, "gpus_per_nic": decode_gpus_per_nic, "instances": [at("decode", decode_tp)]}],
    })
    req = run(cfg, [(2000, 5, 0.0)]).requests[0]
    return req.kv_transfer_end_s - req.kv_transfer_start_s


def test_ranks_sharing_a_nic_multiply_the_per_layer_cost():
    # Two TP 2 instances on two nodes: with 2 GPUs per NIC on the receiving node both ranks queue
    # their per-layer requests on one NIC, so the fixed part doubles; the bytes' part does not move.
    layers = load_model(MODEL).num_layers
    one, shared = (_cross_node_transfer_s(2, 2, gpus_per_nic) for gpus_per_nic in (1, 2))
    assert shared - one == pytest.approx(10.5e-6 * layers, rel=1e-9)


def test_a_decode_tp_four_times_the_prefills_queues_four_reads_on_the_prefill_rank():
    # vLLM 0.19's NixlConnector: each of the 4 decode ranks reads its slice of the heads from the one prefill
    # rank, so 4 reads' per-layer requests queue there; the bytes are the same whichever ranks read them.
    layers = load_model(MODEL).num_layers
    same, wider = _cross_node_transfer_s(1, 1), _cross_node_transfer_s(1, 4)
    assert wider - same == pytest.approx(3 * 10.5e-6 * layers, rel=1e-6)


def test_transfer_time_is_per_layer_cost_plus_bytes_at_the_achieved_rate():
    rows = [(2000, 5, 0.0)]
    layers = load_model(MODEL).num_layers
    req = run(cluster(instance("prefill"), instance("decode"), link_bw=2, link_latency=0), rows).requests[0]
    expected_s = 10.5e-6 * layers + 2000 * PER_TOKEN / (0.73 * 2e9)
    assert req.kv_transfer_end_s - req.kv_transfer_start_s == pytest.approx(expected_s, rel=1e-9)
    # A config stating its whole per-transfer overhead keeps exactly that (no per-layer term added).
    stated = run(cluster(instance("prefill"), instance("decode"), link_bw=2, link_latency=0,
                         kv_transfer={"per_transfer_overhead_us": 400}), rows).requests[0]
    assert stated.kv_transfer_end_s - stated.kv_transfer_start_s == pytest.approx(
        400e-6 + 2000 * PER_TOKEN / (0.73 * 2e9), rel=1e-9)


# -- the engine ---------------------------------------------------------------------------------
def test_two_simultaneous_handoffs_share_the_link():
    one = run(cluster(instance("prefill"), instance("decode"), link_bw=2, link_latency=0, **IDEAL), [(2000, 5, 0.0)])
    two = run(cluster(instance("prefill", max_num_batched_tokens=4096), instance("decode"), link_bw=2,
                      link_latency=0, **IDEAL), [(2000, 5, 0.0), (2000, 5, 0.0)])
    alone_s = 2000 * PER_TOKEN / 2e9
    assert one.requests[0].kv_transfer_end_s - one.requests[0].kv_transfer_start_s == pytest.approx(alone_s)
    for req in two.requests:  # prefilled in one step, handed off together
        assert req.kv_transfer_start_s == pytest.approx(two.requests[0].kv_transfer_start_s)
        assert req.kv_transfer_end_s - req.kv_transfer_start_s == pytest.approx(2 * alone_s)


def test_one_nic_is_shared_by_all_transfers_of_an_instance():
    # Two decode instances on another node: their network paths are separate, the prefill's NIC is not.
    raw = _two_nodes(instance("prefill", max_num_batched_tokens=4096), [instance("decode"), instance("decode")],
                     link_bw=10, link_latency=0,
                     node0={"nic_bw": 2}, **IDEAL)
    res = simulate(cluster_config_from_dict(raw), trace([(2000, 5, 0.0), (2000, 5, 0.0)]), SimOptions())
    assert {r.decode_instance for r in res.requests} == {"n1.i0", "n1.i1"}
    for req in res.requests:
        assert req.kv_transfer_end_s - req.kv_transfer_start_s == pytest.approx(2 * 2000 * PER_TOKEN / 2e9)
    assert res.links["n0.i0.nic_out"].peak_flows == 2
    assert res.links["n0.i0->n1.i0"].peak_flows == 1


def test_same_node_uses_the_fabric_when_given_and_link_bw_otherwise():
    rows = [(2000, 5, 0.0)]
    flat = run(cluster(instance("prefill"), instance("decode")), rows)  # LLMServingSim meaning
    assert list(flat.links) == ["n0.i0->n0.i1"]
    raw = {"num_nodes": 1, "link_bw": 16, "link_latency": 20000, **IDEAL, "nodes": [{
        "num_instances": 2, "intra_node_bw": 400, "instances": [instance("prefill"), instance("decode")]}]}
    nvl = simulate(cluster_config_from_dict(raw), trace(rows), SimOptions())
    assert sorted(nvl.links) == ["n0.i0.fabric_out", "n0.i1.fabric_in"]
    req = nvl.requests[0]
    assert req.kv_transfer_end_s - req.kv_transfer_start_s == pytest.approx(2000 * PER_TOKEN / 400e9 + 2e-6)


def test_layerwise_hides_all_but_the_last_layer_behind_compute():
    rows = [(4000, 5, 0.0)]
    # The link moves a layer's KV faster than the prefill computes a layer, but the whole prompt's
    # KV takes longer than a few layers: overlap matters.
    base = dict(link_bw=20, link_latency=0)
    pre = instance("prefill", max_num_batched_tokens=4096)  # one prefill step
    after = run(cluster(pre, instance("decode"), **base, **IDEAL), rows).requests[0]
    raw = {"num_nodes": 1, **base, "kv_transfer": {"mode": "layerwise", **IDEAL_XFER},
           "nodes": [{"num_instances": 2, "instances": [pre, instance("decode")]}]}
    res = simulate(cluster_config_from_dict(raw), trace(rows), SimOptions())
    lw = res.requests[0]
    total_s = 4000 * PER_TOKEN / 20e9
    layers = load_model(MODEL).num_layers
    prefill_end = lw.first_token_s
    assert after.kv_transfer_end_s - after.first_token_s == pytest.approx(total_s)
    step_s = prefill_end - lw.kv_transfer_start_s
    assert total_s / layers < step_s / layers < total_s  # the premise of this test
    assert lw.kv_transfer_end_s - prefill_end == pytest.approx(total_s / layers, rel=1e-6)
    assert lw.kv_bytes == after.kv_bytes and lw.status == "finished"
    # Layer-wise reserves decode-side blocks for the whole final prefill step.
    assert lw.kv_transfer_start_s < prefill_end
    assert lw.finish_s < after.finish_s


def test_layerwise_under_pressure_finishes_everything_and_frees_all_blocks():
    raw = {"num_nodes": 1, "link_bw": 4, "link_latency": 20000, "kv_transfer": {"mode": "layerwise"},
           "nodes": [{"num_instances": 2, "instances": [instance("prefill", 19.5), instance("decode", 19.5)]}]}
    from pdsim.workload.generate import generate_requests

    reqs = generate_requests(80, 20, "lognormal:1500,800,max=6000", "lognormal:200,100,max=800", seed=2)
    res = simulate(cluster_config_from_dict(raw), reqs, SimOptions())
    df = requests_frame(res)
    assert (df.status == "finished").all(), df[df.status != "finished"].reason.unique()
    for inst in res.instances:
        # Every block is free but those of requests whose KV was read after the prefill engine's last step:
        # vLLM frees them when it next polls its KV connector, and an idle engine does not step.
        assert inst.pd_type == "prefill" or inst.held_for_transfer_blocks == 0
        assert all_released(inst)


def test_a_prefill_engine_frees_read_kv_when_it_next_polls_its_connector():
    # vLLM frees a sent request's blocks at the end of the prefill engine's next step after the read (the
    # worker's get_finished), or in an empty step when a waiting request needs the room; idle, it holds them.
    raw = {"num_nodes": 1, "link_bw": 4, "link_latency": 20000,
           "nodes": [{"num_instances": 2, "instances": [instance("prefill", 19.5), instance("decode", 19.5)]}]}
    cfg = cluster_config_from_dict(raw)
    alone = simulate(cfg, trace([(2000, 5, 0.0)]), SimOptions())
    prefill = alone.instances[0]
    req = alone.requests[0]
    assert prefill.held_for_transfer_blocks == blocks_for(2000, 16) and req.kv_transfer_end_s is not None
    later = simulate(cfg, trace([(2000, 5, 0.0), (100, 5, 5.0)]), SimOptions())
    prefill = later.instances[0]
    assert prefill.held_for_transfer_blocks == blocks_for(100, 16)  # the first freed by the second's step
    assert prefill.kv.free + prefill.held_for_transfer_blocks == prefill.kv.num_blocks


def test_full_decode_instance_queues_handoffs_and_the_wait_is_in_the_csv(tmp_path):
    cfg = cluster(instance("prefill"), instance("decode", 18.8))  # room for ~1.8 of these requests
    res = run(cfg, [(3000, 400, 0.01 * i) for i in range(8)])
    path = tmp_path / "requests.csv"
    requests_frame(res).to_csv(path, index=False)
    df = pd.read_csv(path)
    assert len(df) == 8 and (df.status == "finished").all()
    assert (df.kv_transfer_wait_ms > 100).sum() >= 4  # queued for decode-side memory
    assert (df.kv_bytes == 3008 * PER_TOKEN).all()
    assert res.instances[1].kv.peak_used <= res.instances[1].kv.num_blocks


def test_memory_duplication_shows_in_the_prefill_instance_timeline():
    # A slow link: the 2000-token KV (262 MB) takes 0.26 s, during which both sides hold it.
    cfg = cluster(instance("prefill"), instance("decode"), link_bw=1, link_latency=0, **IDEAL)
    res = run(cfg, [(2000, 5, 0.0)], sample_interval_s=0.01)
    req = res.requests[0]
    tl = pd.DataFrame([s.__dict__ for s in res.samples])
    during = tl[(tl.time_s > req.kv_transfer_start_s) & (tl.time_s < req.kv_transfer_end_s)]
    pre, dec = during[during.instance == "n0.i0"], during[during.instance == "n0.i1"]
    kv_gb = 2000 * PER_TOKEN / 2**30
    assert len(pre) >= 20
    assert (pre.kv_used_gb >= kv_gb * 0.999).all() and (pre.kv_held_for_transfer_gb >= kv_gb * 0.999).all()
    assert (dec.kv_used_gb >= kv_gb * 0.999).all()  # reserved on the decode side at the same time
    assert np.allclose(pre.kv_send_gbps, 1.0) and np.allclose(dec.kv_recv_gbps, 1.0)
    after = tl[(tl.time_s > req.kv_transfer_end_s) & (tl.instance == "n0.i0")]
    # Read, but the idle prefill engine has not stepped since: it frees them at its next poll (kv_read).
    assert (after.kv_used_gb >= kv_gb * 0.999).all() and (after.kv_send_gbps == 0).all()
    links = pd.DataFrame([s.__dict__ for s in res.link_samples])
    busy = links[(links.time_s > req.kv_transfer_start_s + 0.01) & (links.time_s < req.kv_transfer_end_s)]
    assert np.allclose(busy.utilisation, 1.0) and (busy.active_transfers == 1).all()


def test_ttft_modes():
    cfg = cluster(instance("prefill"), instance("decode"))
    rows = [(2000, 20, 0.0)]
    prefill_mode = run(cfg, rows)
    client_mode = run(cfg, rows, ttft_mode="client")
    req = client_mode.requests[0]
    dec = client_mode.instances[1]
    # Behind vLLM's P/D proxy the decode instance recomputes the prompt's last token (KV 1999 before it) and
    # makes all 20 output tokens; the prefill instance's token is dropped.
    expected_client_s = (req.kv_transfer_end_s + dec.predictor.step_time_s([], 1, 1999))
    assert dec.stats.decode_tokens == 20 and prefill_mode.instances[1].stats.decode_tokens == 19
    df = requests_frame(client_mode)
    assert df.ttft_ms[0] == pytest.approx(expected_client_s * 1e3, rel=1e-9)
    assert df.ttft_client_ms[0] == pytest.approx(expected_client_s * 1e3, rel=1e-9)
    assert requests_frame(prefill_mode).ttft_ms[0] == pytest.approx(req.first_token_s * 1e3, rel=1e-9)
    assert summarize(client_mode, df)["ttft_mode"] == "client"
    # The columns add up in either mode: e2e = ttft + (n - 1) x tpot, first token = arrival + ttft.
    for frame in (df, requests_frame(prefill_mode)):
        assert frame.e2e_ms[0] == pytest.approx(frame.ttft_ms[0] + 19 * frame.tpot_ms[0], rel=1e-9)
        assert frame.first_token_s[0] * 1e3 == pytest.approx(frame.arrival_s[0] * 1e3 + frame.ttft_ms[0], rel=1e-9)
    with pytest.raises(ConfigError):
        SimOptions(ttft_mode="first")


@pytest.mark.parametrize("mode", ["after_prefill", "layerwise"])
@pytest.mark.parametrize("pp_size", [1, 2])
def test_a_one_token_output_goes_on_to_the_decode_instance_behind_the_proxy(mode, pp_size):
    # vLLM's P/D proxy sends every request on to the decode instance (max_tokens=1 at the prefill one, its
    # token dropped), so a one-token output's TTFT and E2E include the transfer and one decode step; as
    # papers count it, it ends at the prefill instance.
    raw = {"num_nodes": 1, "link_bw": 16, "link_latency": 0, "kv_transfer": {"mode": mode},
           "nodes": [{"num_instances": 2, "instances": [instance("prefill", pp_size=pp_size, num_npus=pp_size),
                                                              instance("decode")]}]}
    cfg = cluster_config_from_dict(raw)
    rows = [(2000, 1, 0.0), (2000, 20, 1.0)]
    prefill_mode = run(cfg, rows)
    client_mode = run(cfg, rows, ttft_mode="client")
    assert prefill_mode.requests[0].kv_bytes == 0 and prefill_mode.instances[1].stats.decode_tokens == 19
    one = client_mode.requests[0]
    dec = client_mode.instances[1]
    assert one.status == "finished" and one.decode_instance == dec.id and one.kv_bytes == 2000 * PER_TOKEN
    assert dec.stats.decode_tokens == 1 + 20  # the recomputed last prompt token samples it
    df = requests_frame(client_mode)
    assert df.ttft_ms[0] == pytest.approx(df.e2e_ms[0]) and df.ttft_ms[0] > df.ttft_prefill_ms[0]
    assert one.finish_s == pytest.approx(one.kv_transfer_end_s + dec.predictor.step_time_s([], 1, 1999), rel=1e-9)
    for inst in client_mode.instances:
        assert all_released(inst)

# -- configs --------------------------------------------------------------------------------------
def test_llmservingsim_configs_stay_valid_and_new_keys_are_checked():
    for path in sorted((REPO / "configs/cluster").glob("*.json")):
        load_cluster_config(path)
    base = _two_nodes(instance("prefill"), [instance("decode")])
    with pytest.raises(ConfigError, match='kv_transfer.mode: expected "after_prefill" or "layerwise"'):
        cluster_config_from_dict({**base, "kv_transfer": {"mode": "eager"}})
    with pytest.raises(ConfigError, match='unknown key "overhead_us"'):
        cluster_config_from_dict({**base, "kv_transfer": {"overhead_us": 3}})
    with pytest.raises(ConfigError, match=r"nodes\[0\].nic_bw: expected a number > 0"):
        cluster_config_from_dict(_two_nodes(instance("prefill"), [instance("decode")], node0={"nic_bw": 0}))


def test_heterogeneous_example_runs_and_decode_choice_respects_the_model():
    path = REPO / "configs/cluster/heterogeneous_h100p_a100d.json"
    cfg = load_cluster_config(path)
    raw = json.loads(path.read_text())
    assert raw["nodes"][0]["instances"][0]["hardware"] != raw["nodes"][1]["instances"][0]["hardware"]
    res = simulate(cfg, trace([(1500, 30, 0.05 * i) for i in range(10)]), SimOptions())
    assert all(r.status == "finished" for r in res.requests)
    # A decode instance serving another model is never chosen.
    other = instance("decode", model_name="Qwen/Qwen3-8B")
    mixed = cluster_config_from_dict(_two_nodes(instance("prefill"), [other, instance("decode")]))
    res = simulate(mixed, trace([(500, 10, 0.01 * i) for i in range(6)]), SimOptions())
    assert {r.decode_instance for r in res.requests} == {"n1.i1"}
    # ... and the run says so; and instances of two models that both take arrivals pool their requests.
    from pdsim.config.load import _model_notes

    assert ("nodes[1].instances[0]: a decode instance of Qwen/Qwen3-8B, which no prefill instance serves: it never "
            "receives a request") in _model_notes(mixed)
    colocated = cluster_config_from_dict(_two_nodes(instance(None), [instance(None, model_name="Qwen/Qwen3-8B")]))
    assert any("serve 2 models (Qwen/Qwen3-8B, meta-llama/Llama-3.1-8B)" in n for n in _model_notes(colocated))
    assert not any("never receives" in n or "models (" in n for n in _model_notes(cfg))


def test_a_hand_off_takes_decode_blocks_after_the_running_requests_and_only_with_a_free_slot():
    # vLLM's scheduler allocates the running requests first; a remote-KV request allocates in the waiting loop,
    # which stops while max_num_seqs requests run. pdsim reserved a hand-off's blocks before the running
    # decodes took theirs and whatever the slots, so a running decode was preempted (its recompute made it
    # finish 0.1 s later) for a hand-off that could not be admitted anyway.
    from tests.helpers import cluster, instance, run

    cfg = cluster(instance("prefill"), instance("decode", max_num_seqs=1))
    for steps in (4096, 1):
        a, b = run(cfg, [(16, 300, 0.0), (600, 10, 0.01)], kv_gpu_blocks={"n0.i1": 50},
                   max_decode_run_steps=steps).requests
        assert a.preemptions == 0 and b.status == "finished"
        assert b.kv_transfer_start_s == pytest.approx(a.finish_s)  # the slot frees when A finishes


def test_no_hand_off_reserves_in_a_step_whose_token_budget_is_spent(monkeypatch):
    # vLLM's waiting loop, where a remote-KV request allocates, runs only while the step has token budget left;
    # pdsim reserved whatever was left, so hand-offs took the blocks a recompute filling the budget needed
    # (3 preemptions of it instead of 1).
    from pdsim.engine import instance as engine_instance
    from pdsim.engine import scheduler as engine_scheduler
    from tests.helpers import cluster, instance, run

    instances: list = []
    spent: list[float] = []  # decisions that reserved a hand-off in a step whose budget was spent
    init, schedule = engine_instance.Instance.__init__, engine_scheduler.Scheduler.schedule

    def kept(self, *args, **kwargs):
        init(self, *args, **kwargs)
        instances.append(self)

    def watched(self, now, cutoff=None):
        pending = [len(inst.pending) for inst in instances]
        plan = schedule(self, now, cutoff)
        used = sum(n for _, n in plan.prefill) + plan.n_decode
        if used >= self.max_num_batched_tokens and any(len(i.pending) < n for i, n in zip(instances, pending)):
            spent.append(now)
        return plan

    monkeypatch.setattr(engine_instance.Instance, "__init__", kept)
    monkeypatch.setattr(engine_scheduler.Scheduler, "schedule", watched)
    cfg = cluster(instance("prefill"), instance("decode", max_num_batched_tokens=64, max_num_seqs=4, block_size=16))
    rows = [(200, 300, 0.0), (200, 300, 0.001)] + [(30, 5, 3.5 + 0.004 * i) for i in range(25)]
    res = run(cfg, rows, kv_gpu_blocks={"n0.i1": 40})
    assert all(r.status == "finished" for r in res.requests)
    assert sum(r.preemptions for r in res.requests[:2]) == 1 and not spent


def test_a_request_no_decode_instance_can_hold_is_rejected_naming_the_decode_instances():
    cfg = cluster(instance("prefill"), instance("decode", num_gpu_blocks_override=4))
    res = run(cfg, [(100, 5, 0.0), (30, 5, 0.0)])
    assert [r.status for r in res.requests] == ["rejected", "finished"]
    assert "needs more KV blocks than any decode instance has (the largest holds 48 tokens)" in res.requests[0].reason


def test_a_prompt_no_prefill_instance_can_hold_is_rejected_naming_the_prefill_instances():
    cfg = cluster(instance("prefill", num_gpu_blocks_override=4), instance("decode"))
    res = run(cfg, [(100, 5, 0.0), (30, 5, 0.0)])
    assert [r.status for r in res.requests] == ["rejected", "finished"]
    assert res.requests[0].reason == ("input = 100 tokens needs more KV blocks than any prefill instance has (the "
                                      "largest holds 48 tokens)")


def test_a_prompt_refused_by_prefill_instances_for_different_reasons_names_both():
    cfg = cluster(instance("prefill", num_gpu_blocks_override=4),
                  instance("prefill", enable_chunked_prefill=False, max_num_batched_tokens=64, max_num_seqs=64),
                  instance("decode"))
    res = run(cfg, [(100, 5, 0.0)])
    assert res.requests[0].reason == ("input = 100 tokens: no prefill instance can take the prompt (too long for "
                                      "the KV cache of some, for one step without chunked prefill on the others)")


def test_a_clock_stop_inside_a_decode_run_keeps_the_client_first_token_stepping_gives():
    cfg = cluster(instance("prefill"), instance("decode"))
    frames = [requests_frame(run(cfg, [(1000, 500, 0.0)], ttft_mode="client", max_sim_time_s=0.5,
                                 max_decode_run_steps=steps)) for steps in (4096, 1)]
    assert frames[0].status[0] == "unfinished" and frames[0].ttft_client_ms[0] > frames[0].ttft_prefill_ms[0]
    assert frames[0].ttft_client_ms[0] == frames[1].ttft_client_ms[0]


def test_a_prompt_block_held_for_several_hand_offs_counts_once():
    # Three hand-offs sharing a cached 240-token prefix on a slow link: the prefill side holds those 15 blocks
    # once, so what it holds for transfers never exceeds what it has in use.
    from pdsim.workload.trace import TraceRequest

    cfg = cluster(instance("prefill", enable_prefix_caching=True), instance("decode", enable_prefix_caching=True),
                  link_bw=0.1)
    ids = tuple(range(15))
    rows = [TraceRequest(i, 256, 5, 0, ids + (100 + i,), 16) for i in range(3)]
    res = simulate(cfg, rows, SimOptions(kv_gpu_blocks={"n0.i0": 40}, sample_interval_s=0.005))
    assert all(r.status == "finished" for r in res.requests)
    prefill = [s for s in res.samples if s.instance == "n0.i0"]
    assert max(s.kv_held_for_transfer_gb for s in prefill) > 0
    assert all(s.kv_held_for_transfer_gb <= s.kv_used_gb + 1e-12 for s in prefill)
    pre = res.instances[0]
    assert pre.held_for_transfer_blocks == pre.kv.used == 15 + 3  # the shared prefix once, each own last block
    assert all_released(pre)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_request_waiting_for_read_kv_is_admitted_by_the_empty_step_that_polls_for_it(async_scheduling):
    # B's prompt fits only once A's KV is freed; the prefill engine, stepping empty while B waits, polls for
    # A's read and frees it (vLLM's kv_connector_no_forward): B is scheduled the moment the read ends.
    cfg = cluster(instance("prefill", max_num_batched_tokens=4096, async_scheduling=async_scheduling),
                  instance("decode"), link_bw=2)
    res = run(cfg, [(2000, 3, 0.0), (2000, 3, 0.001)], kv_gpu_blocks={"n0.i0": 130})
    a, b = res.requests
    assert b.first_scheduled_s == pytest.approx(a.kv_transfer_end_s, abs=1e-9)
    assert all(r.status == "finished" for r in res.requests)


def test_under_async_scheduling_a_steps_reported_reads_are_freed_after_the_decisions_already_taken():
    # vLLM decides step n+1 before it processes step n's output, where the reads step n's poll reported are freed
    # (after that step's own finished requests): usable from the decision after, as Scheduler._finish frees.
    cfg = cluster(instance("prefill", async_scheduling=True), instance("decode"))
    res = run(cfg, [(2000, 3, 0.0)])
    pre = res.instances[0]
    held = pre.held_for_transfer_blocks
    assert held == blocks_for(2000, 16) and pre.kv.used == held  # the idle engine has not polled
    pre._poll_after_step()  # as if a step ended now: its poll reports the read
    assert pre.kv.used == held and pre._polled  # reported, not yet freed
    due = pre._polled[0][0]
    while pre.sched.decisions < due:
        assert not pre._free_polled() and pre.kv.used == held
        pre.sched.schedule(res.sim_end_s)
    assert pre._free_polled() and pre.kv.used == 0 and pre.held_for_transfer_blocks == 0


def test_the_transfer_defaults_are_said_where_the_config_leaves_them():
    # LLMServingSim moves KV at link_bw; pdsim's measured defaults are slower, so a run that takes them says so.
    from pdsim.metrics.summary import profile_notes

    rows = [(500, 4, 0.0)]
    said = "KV hand-offs reach 73% of link_bw / nic_bw and pay 10.5 us per model layer: pdsim's defaults"
    pd_split = run(cluster(instance("prefill"), instance("decode")), rows)
    assert any(n.startswith(said) for n in profile_notes(pd_split))
    assert not any(n.startswith("KV hand-offs") for n in profile_notes(
        run(cluster(instance("prefill"), instance("decode"),
                    kv_transfer={"bandwidth_efficiency": 0.9, "per_layer_overhead_us": 0}), rows)))
    assert not any(n.startswith("KV hand-offs") for n in profile_notes(run(cluster(instance(None)), rows)))
    # Over a node's NVLink fabric a hand-off runs at its line rate: only the per-layer cost applies.
    fabric = cluster_config_from_dict({"num_nodes": 1, "link_bw": 16, "link_latency": 20000, "nodes": [
        {"num_instances": 2, "intra_node_bw": 450, "instances": [instance("prefill"), instance("decode")]}]})
    assert [n for n in profile_notes(run(fabric, rows)) if n.startswith("KV hand-offs")] == [
        "KV hand-offs pay 10.5 us per model layer: pdsim's defaults, from Mooncake's measured transfers "
        "(docs/pd_realism.md), where LLMServingSim moves KV at line rate; kv_transfer.bandwidth_efficiency and "
        "per_layer_overhead_us set them"]
    # A per-transfer cost replaces the per-layer one; the share of line rate still applies.
    fixed = cluster(instance("prefill"), instance("decode"), kv_transfer={"per_transfer_overhead_us": 5})
    assert any(n.startswith("KV hand-offs reach 73% of link_bw / nic_bw: pdsim's defaults")
               for n in profile_notes(run(fixed, rows)))
    # A quantised wire format is a what-if: vLLM's connectors send the cache as it is stored.
    wire = cluster(instance("prefill"), instance("decode"), kv_transfer={"dtype": "fp8"})
    assert any(n.startswith("kv_transfer.dtype fp8: the KV is sent at 1 byte a value, a what-if")
               for n in profile_notes(run(wire, rows)))
    assert not any(n.startswith("kv_transfer.dtype") for n in profile_notes(pd_split))


def test_a_config_leaving_async_scheduling_out_is_told_vllms_default_differs():
    # pdsim's default is synchronous (LLMServingSim's way); vLLM 0.14+ schedules asynchronously: a run that takes
    # pdsim's default says so once, and one that sets the key (as a validate replay does) says nothing.
    from pdsim.metrics.summary import profile_notes

    rows = [(500, 4, 0.0)]
    said = "async_scheduling not set, so off: pdsim's default, as LLMServingSim schedules; vLLM 0.14 and later"
    unset = [n for n in profile_notes(run(cluster(instance("prefill"), instance("decode")), rows))
             if n.startswith(said)]
    assert len(unset) == 1
    for value in (False, True):
        notes = profile_notes(run(cluster(instance("prefill", async_scheduling=value),
                                          instance("decode", async_scheduling=value)), rows))
        assert not any(n.startswith("async_scheduling not set") for n in notes)


def test_under_async_scheduling_a_hand_off_is_seen_by_the_decision_after_the_step_it_came_in():
    # vLLM's async engine took the decision for step k+1 while step k ran: a hand-off that reaches a decoding
    # engine during step k gets its blocks, and its read starts, at the decision for step k+2, a step later
    # than under synchronous scheduling.
    rows = [(100, 300, 0.0), (100, 5, 0.5)]  # the first keeps the decode instance stepping
    wait_s, step_s = {}, 0.0
    for mode in (False, True):
        res = run(cluster(instance("prefill", async_scheduling=mode), instance("decode", async_scheduling=mode),
                          **IDEAL), rows)
        first, late = res.requests
        assert all(r.status == "finished" for r in res.requests)
        wait_s[mode] = late.kv_transfer_start_s - late.handoff_s
        step_s = (first.finish_s - first.decode_first_token_s) / (first.output_toks - 2)
    assert 0 <= wait_s[False] < step_s * 1.01
    assert step_s * 0.99 < wait_s[True] < 2 * step_s * 1.01


def test_the_decode_router_counts_hand_offs_whose_kv_is_still_in_flight(monkeypatch):
    # A slow link keeps each prompt's KV in flight for seconds. vLLM holds such a request in the decode
    # engine's waiting queue from the moment its blocks are reserved, so least_loaded sees it there; when it
    # counted only requests queued or running, all eight prompts went to the decode instance that had no
    # long decode running (its load read 0 while up to seven transfers were on their way to it).
    from pdsim.engine.instance import Instance

    seen = []
    receive = Instance.receive_kv

    def watched(self, req):  # the KV has just arrived: up to now the request was in flight to `self`
        seen.append((req.input_toks, self.num_waiting, self.num_requests, self.load_tokens))
        receive(self, req)

    monkeypatch.setattr(Instance, "receive_kv", watched)
    cfg = cluster(instance("prefill"), instance("decode"), instance("decode"), link_bw=0.5)
    rows = [(16, 3000, 0.0)] + [(3000, 20, 0.5 + 0.001 * i) for i in range(8)]
    res = run(cfg, rows)
    assert all(r.status == "finished" for r in res.requests)
    prompts = [r.decode_instance for r in res.requests[1:]]
    assert sorted(prompts.count(name) for name in ("n0.i1", "n0.i2")) == [4, 4]
    assert len(seen) == 9
    assert all(waiting >= 1 and requests >= 1 and load >= tokens for tokens, waiting, requests, load in seen)


def test_a_pd_run_says_where_its_ttft_is_taken():
    # In prefill mode a P/D run's TTFT does not move with the link; the text summary says why.
    from pdsim.metrics.summary import format_summary

    said = "(TTFT at the prefill instance, as papers report it: the KV transfer counts in TPOT"
    rows = [(500, 20, 0.0), (800, 30, 0.1)]
    for cfg, mode, expected in [(cluster(instance("prefill"), instance("decode")), "prefill", True),
                                (cluster(instance("prefill"), instance("decode")), "client", False),
                                (cluster(instance(None)), "prefill", False)]:
        res = simulate(cfg, trace(rows), SimOptions(ttft_mode=mode))
        text = format_summary(summarize(res, requests_frame(res)))
        assert (said in text) is expected, (mode, text)


def test_the_text_summary_names_what_priced_the_steps():
    # Measured or estimated, and from which profile folder: the figures' trust rests on it.
    from pdsim.metrics.summary import format_summary

    for config, said in [("configs/cluster/single_node_pd_h200.json",
                          "step times n0.i0, n0.i1: measured, profile "),
                         ("configs/cluster/single_node_pd_instance.json",
                          "step times n0.i0, n0.i1: estimated from hardware specs, profile ")]:
        res = simulate(load_cluster_config(Path(__file__).resolve().parents[1] / config), trace([(500, 20, 0.0)]),
                       SimOptions())
        text = format_summary(summarize(res, requests_frame(res)))
        line = next(line for line in text.splitlines() if line.startswith("step times"))
        assert line.startswith(said) and line.endswith("Llama-3.1-8B/bfloat16/tp1"), line


def test_hand_offs_whose_kv_arrived_start_in_the_order_their_blocks_were_reserved():
    # vLLM 0.19 keeps a hand-off in its skipped-waiting queue from the reservation on and starts the ones whose
    # KV arrived first come first served; pdsim started them in the order their KV came. Times recorded from
    # vLLM 0.19's Scheduler driven with a scheduler-side NIXL-like mock connector, each read lasting what
    # pdsim's did (1P1D, client TTFT, a 1,000,000 GB/s link of 3 ms latency, decode max_num_seqs 2): four
    # hand-offs reserved together, their reads ending in the order of their sizes, not of their reservation.
    from tests.helpers import AnalyticStepTimes

    cfg = cluster(instance("prefill", 96, max_num_seqs=64, max_num_batched_tokens=8192),
                  instance("decode", 96, max_num_seqs=2, max_num_batched_tokens=2048, block_size=16),
                  link_bw=1e6, link_latency=3e6,
                  kv_transfer={"per_layer_overhead_us": 0.0, "bandwidth_efficiency": 1.0})
    rows = [(190, 28, 0.0), (194, 27, 0.002), (208, 46, 0.004), (177, 88, 0.006), (159, 60, 0.008), (169, 94, 0.01)]
    res = simulate(cfg, trace(rows), SimOptions(kv_gpu_blocks={"n0.i1": 10_000}, ttft_mode="client"),
                   step_times=AnalyticStepTimes)
    vllm_first_token_s = [0.012658, 0.044830, 0.074011, 0.108598, 0.043749, 0.126851]
    vllm_finish_s = [0.040749, 0.072930, 0.122649, 0.202511, 0.107517, 0.226443]
    got = sorted(res.requests, key=lambda r: r.id)
    np.testing.assert_allclose([r.decode_first_token_s for r in got], vllm_first_token_s, atol=1e-6)
    np.testing.assert_allclose([r.finish_s for r in got], vllm_finish_s, atol=1e-6)


def test_a_dp_decode_group_picks_its_rank_by_load_alone_not_by_room():
    # vLLM's DP load balancer scores a rank 4 x waiting + running, ties to the lowest, and knows nothing of its KV
    # room: a hand-off goes to rank 0 (one running request, its cache nearly full of it) over rank 1 (one running,
    # room to spare) and waits there for blocks. pdsim filtered the ranks by room first and sent it to rank 1.
    from tests.helpers import AnalyticStepTimes, cluster, instance, run

    cfg = cluster(instance("prefill"), instance("decode", dp_group="D"), instance("decode", dp_group="D"))
    rows = [(1800, 2000, 0.0), (100, 3000, 0.02), (400, 400, 1.9)]
    res = run(cfg, rows, step_times=AnalyticStepTimes, kv_gpu_blocks={"n0.i1": 245, "n0.i2": 305})
    a, b, c = res.requests
    assert (a.decode_instance, b.decode_instance, c.decode_instance) == ("n0.i1", "n0.i2", "n0.i1")
    assert c.finish_s > a.finish_s  # its blocks came free when the long request ended
