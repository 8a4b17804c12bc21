"""End-to-end behaviour of the SimPy engine: hand-checkable timings, conservation, P/D effects."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pdsim.engine.cluster import SimOptions, simulate
from pdsim.engine.instance import numpy_sum
from pdsim.metrics.summary import requests_frame, summarize
from pdsim.models import load_model
from pdsim.workload.generate import generate_requests
from tests.helpers import MODEL, AnalyticStepTimes, all_released, cluster, instance, run, trace


def test_single_request_ttft_and_tpot_are_the_predicted_step_times():
    cfg = cluster(instance(None))
    res = run(cfg, [(1000, 50, 0.5)])
    req = res.requests[0]
    pred = res.instances[0].predictor
    prefill_s = pred.step_time_s([(1000, 0)], 0, 0)
    assert req.first_token_s - req.arrival_s == pytest.approx(prefill_s, rel=1e-12)
    # Decode step j sees KV = 1000 + j tokens (the prompt plus the tokens decoded before it).
    decode_s = [pred.step_time_s([], 1, 1000 + j) for j in range(49)]
    assert req.finish_s - req.first_token_s == pytest.approx(sum(decode_s), rel=1e-9)
    df = requests_frame(res)
    assert df.tpot_ms[0] == pytest.approx(np.mean(decode_s) * 1e3, rel=1e-9)
    assert df.status[0] == "finished"


def test_long_prompt_is_chunked_by_the_token_budget():
    cfg = cluster(instance(None, max_num_batched_tokens=512))
    res = run(cfg, [(1200, 2, 0.0)])
    pred = res.instances[0].predictor
    expected = (pred.step_time_s([(512, 0)], 0, 0) + pred.step_time_s([(512, 512)], 0, 0)
                + pred.step_time_s([(176, 1024)], 0, 0))
    assert res.requests[0].first_token_s == pytest.approx(expected, rel=1e-12)


def test_pd_ttft_and_transfer_follow_the_link():
    cfg = cluster(instance("prefill"), instance("decode"), link_bw=16, link_latency=20000,
                  kv_transfer={"per_layer_overhead_us": 0.0, "bandwidth_efficiency": 1.0})  # line rate, no fixed cost
    res = run(cfg, [(2000, 20, 0.0)])
    req = res.requests[0]
    prefill_inst, decode_inst = res.instances
    assert req.prefill_instance == prefill_inst.id and req.decode_instance == decode_inst.id
    kv_bytes = 2000 * load_model(MODEL).kv_bytes_per_token("bfloat16")
    assert kv_bytes == 2000 * 131072
    assert req.kv_bytes == kv_bytes
    transfer_s = kv_bytes / 16e9 + 20000e-9
    assert req.kv_transfer_end_s - req.kv_transfer_start_s == pytest.approx(transfer_s, rel=1e-9)
    prefill_s = prefill_inst.predictor.step_time_s([(2000, 0)], 0, 0)
    assert req.first_token_s == pytest.approx(prefill_s, rel=1e-12)
    # The decode instance starts right after the KV arrives; its first step makes token 2.
    decode_s = sum(decode_inst.predictor.step_time_s([], 1, 2000 + j) for j in range(19))
    assert req.finish_s == pytest.approx(prefill_s + transfer_s + decode_s, rel=1e-9)
    # The prefill instance keeps the blocks until the transfer is done, then frees them.
    assert prefill_inst.kv.peak_used == -(-2000 // 16)
    # Read by the decode side after the prefill engine's last step: held until it next polls (Instance.kv_read).
    assert prefill_inst.kv.free + prefill_inst.held_for_transfer_blocks == prefill_inst.kv.num_blocks
    assert prefill_inst.held_for_transfer_blocks == -(-2000 // 16)


def _pressure_trace(n: int, seed: int, rate: float = 30.0):
    return generate_requests(n, rate, "lognormal:1500,800,max=6000", "lognormal:300,200,max=1500", seed=seed)


@pytest.mark.parametrize("pd", [False, True])
def test_conservation_under_memory_pressure(pd):
    # ~18.4 GB usable on a 15 GB model leaves room for only a few thousand tokens of KV.
    small = 19.5
    if pd:
        cfg = cluster(instance("prefill", small), instance("decode", small))
    else:
        cfg = cluster(instance(None, small))
    reqs = _pressure_trace(150, seed=3)
    res = simulate(cfg, reqs, SimOptions())
    df = requests_frame(res)
    assert len(df) == 150
    assert (df.status == "finished").all(), df[df.status != "finished"].reason.unique()
    assert res.instances[-1].sched.num_preemptions > 0, "the test needs memory pressure to mean anything"
    for inst in res.instances:
        # everything released at the end, but what was read after a prefill engine's last step (Instance.kv_read)
        assert all_released(inst)
        assert 0 < inst.kv.peak_used <= inst.kv.num_blocks
        assert not inst.sched.running and not inst.sched.waiting and not inst.pending
    # Preempted requests still produce exactly their tokens: TPOT is finite and positive.
    assert (df.tpot_ms[df.output_toks > 1] > 0).all()


def test_fast_forward_matches_stepping_one_by_one():
    cfg = cluster(instance("prefill", 19.5), instance("decode", 19.5))
    reqs = _pressure_trace(120, seed=5)
    fast = simulate(cfg, reqs, SimOptions())
    slow = simulate(cfg, reqs, SimOptions(max_decode_run_steps=1))
    assert sum(i.stats.steps for i in fast.instances) == sum(i.stats.steps for i in slow.instances)
    for a, b in zip(fast.requests, slow.requests):
        assert a.status == b.status == "finished"
        assert a.preemptions == b.preemptions
        assert a.first_token_s == pytest.approx(b.first_token_s, rel=1e-9, abs=1e-9)
        assert a.finish_s == pytest.approx(b.finish_s, rel=1e-9, abs=1e-9)
    assert fast.instances[1].sched.num_preemptions > 0


@pytest.mark.parametrize("policy", ["least_loaded", "power_of_two", "kv_aware"])
@pytest.mark.parametrize("ttft_mode", ["prefill", "client"])
def test_fast_forward_routes_as_stepping_one_by_one(policy, ttft_mode):
    # Two instances per pool: the router reads their load while a run of decode steps passes in one
    # event; the tokens of the steps that already ended count, or 58 of 120 requests went elsewhere.
    cfg = cluster(instance("prefill"), instance("prefill"), instance("decode", 19.5), instance("decode", 19.5))
    reqs = _pressure_trace(120, seed=5)
    opts = {"prefill_policy": policy, "decode_policy": policy, "ttft_mode": ttft_mode}
    fast = simulate(cfg, reqs, SimOptions(**opts))
    slow = simulate(cfg, reqs, SimOptions(max_decode_run_steps=1, **opts))
    for a, b in zip(fast.requests, slow.requests):
        assert (a.prefill_instance, a.decode_instance) == (b.prefill_instance, b.decode_instance)
        assert a.finish_s == pytest.approx(b.finish_s, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("ttft_mode", ["prefill", "client"])
def test_fast_forward_offers_hand_offs_the_room_stepping_would(ttft_mode):
    # A hand-off goes first to a decode instance with room for it; during a run passing in one event the
    # blocks of its ended steps and of the step in progress are taken already, as when stepping.
    cfg = cluster(instance("prefill"), instance("decode"), instance("decode"))
    reqs = _pressure_trace(60, seed=3)
    opts = {"ttft_mode": ttft_mode, "kv_gpu_blocks": {"n0.i1": 200, "n0.i2": 600}}  # 10 routed elsewhere before
    fast = simulate(cfg, reqs, SimOptions(**opts))
    slow = simulate(cfg, reqs, SimOptions(max_decode_run_steps=1, **opts))
    assert [r.decode_instance for r in fast.requests] == [r.decode_instance for r in slow.requests]
    assert [r.finish_s for r in fast.requests] == pytest.approx([r.finish_s for r in slow.requests], rel=1e-9)


def test_colocated_decode_suffers_prefill_interference_that_pd_removes():
    # Steady decodes, then a burst of long prompts: in a colocated instance, the decode steps
    # share batches with prefill chunks and slow down; a decode-only instance does not see them.
    rows = [(200, 400, 0.05 * i) for i in range(16)]
    rows += [(6000, 2, 2.0 + 0.01 * i) for i in range(30)]
    colo = run(cluster(instance(None)), rows)
    pd = run(cluster(instance("prefill"), instance("decode")), rows)
    steady = [r.id for r in colo.requests if r.input_toks == 200]
    colo_tpot = requests_frame(colo).set_index("request_id").loc[steady].tpot_ms
    pd_tpot = requests_frame(pd).set_index("request_id").loc[steady].tpot_ms
    assert np.percentile(colo_tpot, 99) > 1.5 * np.percentile(pd_tpot, 99)


def test_full_decode_instance_makes_handoffs_wait_without_losing_requests():
    # The decode instance fits ~2 long requests at a time; the prefill instance is fast.
    cfg = cluster(instance("prefill"), instance("decode", 18.8))  # 375 blocks: room for ~1.8 requests
    rows = [(3000, 400, 0.01 * i) for i in range(8)]
    res = run(cfg, rows)
    df = requests_frame(res)
    assert (df.status == "finished").all()
    assert (df.kv_transfer_wait_ms > 0).sum() >= 4
    assert res.instances[1].kv.peak_used <= res.instances[1].kv.num_blocks


def test_runs_are_deterministic_per_seed():
    cfg = cluster(instance(None), instance(None))
    reqs = generate_requests(200, 20, "lognormal:800,300", "lognormal:100,50", seed=1)
    a = requests_frame(simulate(cfg, reqs, SimOptions(seed=7, prefill_policy="random")))
    b = requests_frame(simulate(cfg, reqs, SimOptions(seed=7, prefill_policy="random")))
    c = requests_frame(simulate(cfg, reqs, SimOptions(seed=8, prefill_policy="random")))
    assert a.equals(b)
    assert not a.prefill_instance.equals(c.prefill_instance)


@pytest.mark.parametrize("policy", ["round_robin", "random", "least_loaded"])
def test_routing_policies_spread_requests(policy):
    cfg = cluster(instance(None), instance(None), instance(None))
    reqs = generate_requests(90, 30, "fixed:1000", "fixed:100", seed=2)
    df = requests_frame(simulate(cfg, reqs, SimOptions(prefill_policy=policy)))
    counts = df.prefill_instance.value_counts()
    assert len(counts) == 3
    if policy == "round_robin":
        assert set(counts) == {30}


def test_rejects_requests_that_can_never_fit_and_reports_them():
    cfg = cluster(instance(None, 18.8))
    res = run(cfg, [(500, 10, 0.0), (200_000, 10, 0.1), (60_000, 10, 0.2)])
    df = requests_frame(res)
    assert list(df.status) == ["finished", "rejected", "rejected"]
    assert df.reason[1] == "input+output = 200010 tokens exceeds the model's max length (131072)"
    assert "KV blocks" in df.reason[2]
    summary = summarize(res, df)
    assert summary["finished"] == 1 and summary["rejected"] == 2


def test_a_mixed_decode_pool_sends_each_request_where_it_fits():
    # Decode instances of two sizes, interleaved: a long request fits only the large ones' KV cache. The fit
    # check runs once per kind of instance (FitClasses), and the candidates keep the pool's order.
    from pdsim.engine.handoff import FitClasses

    small, large = instance("decode", 18.8), instance("decode", 80)
    cfg = cluster(instance("prefill"), small, large, dict(small), dict(large))
    rows = [(30_000, 4, 0.5 * i) for i in range(6)] + [(500, 4, 0.25 + 0.5 * i) for i in range(6)]
    res = run(cfg, rows)
    df = requests_frame(res)
    assert (df.status == "finished").all()
    by_size = {i.id: i.kv.num_blocks for i in res.instances if i.pd_type == "decode"}
    big = max(by_size.values())
    long_ones = df.input_toks == 30_000
    assert all(by_size[d] == big for d in df.decode_instance[long_ones])
    assert {by_size[d] for d in df.decode_instance[~long_ones]} == set(by_size.values())
    pool = [i for i in res.instances if i.pd_type == "decode"]
    asked = []
    classes = FitClasses(pool)
    chosen = classes.select(lambda inst: asked.append(inst) or inst.kv.num_blocks == big)
    assert len(asked) == 2 and chosen == [i for i in pool if i.kv.num_blocks == big]
    assert classes.select(lambda inst: True) == pool and not classes.any(lambda inst: False)
    assert classes.any(lambda inst: inst.kv.num_blocks == big) and list(classes.first.values()) == pool[:2]
    # fit_class holds all that fits_decode reads: grouped, it answers as instance by instance.
    from pdsim.engine.handoff import fits_decode
    from pdsim.engine.request import Request

    src = next(i for i in res.instances if i.pd_type == "prefill")
    for toks in (500, 30_000, 200_000):
        req = Request(0, toks, 4, 0.0)
        grouped = classes.select(lambda d, req=req: fits_decode(d, src, req))
        assert grouped == [d for d in pool if fits_decode(d, src, req)]


def test_max_sim_time_reports_unfinished_with_reason():
    cfg = cluster(instance(None))
    res = simulate(cfg, trace([(1000, 2000, 0.0), (1000, 10, 0.0)]), SimOptions(max_sim_time_s=1.0))
    df = requests_frame(res)
    assert df.status.tolist() == ["unfinished", "finished"]
    assert "--max-sim-time" in df.reason[0]
    # The timeline ends at the stop, with the request still decoding there.
    last = res.samples[-1]
    assert last.time_s == 1.0 and last.decode_reqs + last.prefill_reqs == 1 and last.kv_used_gb > 0
    assert res.link_samples == [] or res.link_samples[-1].time_s == 1.0
    # Its throughput counts the finished request alone, over a span that ends before the stop: said under it.
    from pdsim.metrics.summary import format_summary

    text = format_summary(summarize(res, df))
    assert ("(finished requests over the first arrival to the last finish: the 1 unfinished when the run stopped at "
            "1.0 s, and the tokens they made, are not in it)") in text
    # A request due after the stop never arrived: said so, and left out of the load check and SLO shares.
    from pdsim.cli import _slo_attainment
    from pdsim.metrics.load import load_report

    rows = [(200, 5, 0.05 * i) for i in range(30)] + [(200, 5, 10.0 + i) for i in range(30)]
    df = requests_frame(simulate(cfg, trace(rows), SimOptions(max_sim_time_s=5.0)))
    late = df.arrival_s > 5.0
    assert (df.status[late] == "unfinished").all() and (df.status[~late] == "finished").all()
    assert df.reason[late].str.startswith("not arrived: the simulation stopped at --max-sim-time 5 s").all()
    assert _slo_attainment(df, 1e6, 1e6) == {"ttft_ms": 1e6, "tpot_ms": 1e6, "requests": 30, "attain_ttft": 1.0,
                                              "attain_tpot": 1.0, "attain_both": 1.0}
    assert load_report(df, 5.0)["arrival_window_s"] == pytest.approx(0.05 * 29)
    # None arrived: no attainment (null in the summary, '-' printed), not an attainment of 0.
    none = _slo_attainment(df[late], 1e6, 1e6)
    assert none["requests"] == 0 and all(math.isnan(none[k]) for k in ("attain_ttft", "attain_tpot", "attain_both"))


@pytest.mark.parametrize("pd", [False, True])
@pytest.mark.parametrize("stop_s", [6.5, 7.3, 9.0])
def test_a_decode_run_cut_by_the_clock_counts_its_ended_steps_as_stepping_one_by_one(stop_s, pd):
    # The summary's busy time, steps, inter-token gaps and peak KV of a run passing in one event: its steps that
    # ended by --max-sim-time count, as they do when stepping (and in the timeline); they were left out.
    cfg = (cluster(instance("prefill"), instance("decode", max_num_seqs=8)) if pd else
           cluster(instance(None, max_num_seqs=8)))
    reqs = trace([(300, 400 + 7 * i, 0.01 * i) for i in range(40)])
    fast = simulate(cfg, reqs, SimOptions(max_sim_time_s=stop_s))
    slow = simulate(cfg, reqs, SimOptions(max_sim_time_s=stop_s, max_decode_run_steps=1))
    for a, b in zip(fast.instances, slow.instances, strict=True):
        assert a.stats.steps == b.stats.steps and a.stats.busy_s == pytest.approx(b.stats.busy_s, rel=1e-9)
        assert a.kv.peak_used == b.kv.peak_used
    fast_s, slow_s = (summarize(r, requests_frame(r)) for r in (fast, slow))
    assert fast_s["itl_ms"] == pytest.approx(slow_s["itl_ms"], rel=1e-9)
    assert [i["busy_fraction"] for i in fast_s["instances"]] == \
        pytest.approx([i["busy_fraction"] for i in slow_s["instances"]])
    for a, b in zip(fast.requests, slow.requests, strict=True):
        assert (a.decode_first_token_s is None) == (b.decode_first_token_s is None)
        assert a.decode_first_token_s is None or a.decode_first_token_s == pytest.approx(b.decode_first_token_s)


def test_summary_and_itl_are_consistent():
    cfg = cluster(instance(None))
    reqs = generate_requests(100, 10, "lognormal:800,300", "lognormal:100,50", seed=4)
    res = simulate(cfg, reqs, SimOptions())
    df = requests_frame(res)
    s = summarize(res, df)
    assert s["requests"] == s["finished"] == 100
    # Over all tokens, the ITL mean is the token-weighted TPOT mean (no preemption, colocated).
    weights = df.output_toks - 1
    assert s["itl_ms"]["mean"] == pytest.approx(np.average(df.tpot_ms, weights=weights), rel=1e-6)
    assert s["ttft_ms"]["p50"] <= s["ttft_ms"]["p90"] <= s["ttft_ms"]["p99"]
    assert s["instances"][0]["peak_kv_gb"] > 0


def test_closed_loop_client_delay_counts_in_ttft_and_is_seeded():
    cfg = cluster(instance(None))
    rows = [(512, 8, 0.0)] * 12
    base = requests_frame(run(cfg, rows, concurrency=1))
    slow = requests_frame(run(cfg, rows, concurrency=1, client_delay_s=0.01))
    again = requests_frame(run(cfg, rows, concurrency=1, client_delay_s=0.01))
    # One client, so no queueing: each request's TTFT grows by its own delay (uniform, mean 10 ms).
    extra = slow.ttft_ms.to_numpy() - base.ttft_ms.to_numpy()
    assert np.all(extra >= 0) and np.all(extra <= 20.0 + 1e-6) and 3.0 < extra.mean() < 17.0
    assert np.allclose(slow.ttft_ms, again.ttft_ms)
    assert np.allclose(slow.tpot_ms, base.tpot_ms)

    # Measured send gaps (an aiperf run's own) delay each send after a request ends, but the client
    # measures TTFT from its send: TTFT is unchanged, the time between requests grows by the gaps.
    gapped = run(cfg, rows, concurrency=1, client_send_gaps_s=(0.004, 0.03))
    assert np.allclose(requests_frame(gapped).ttft_ms, base.ttft_ms)
    done = sorted(gapped.requests, key=lambda r: r.arrival_s)
    gaps = [round((b.arrival_s - a.finish_s) * 1e3, 6) for a, b in zip(done, done[1:])]
    assert set(gaps) == {4.0, 30.0}



def test_a_closed_loop_client_sends_on_after_any_number_of_rejections():
    # A rejected request ends inside its own admission, and its client's next send was made from inside that
    # call: 1,000 rejections in a row with no client delay nested 1,000 calls deep (RecursionError).
    rows = [(200_000, 10, 0.0)] * 1000 + [(100, 10, 0.0)] * 3  # longer than the model's 131,072 tokens
    res = run(cluster(instance(None)), rows, step_times=AnalyticStepTimes, concurrency=2)
    assert [r.status for r in res.requests].count("rejected") == 1000
    assert [r.status for r in res.requests].count("finished") == 3


def test_closed_loop_steady_state_leaves_out_the_start_burst_and_the_tail():
    from pdsim.metrics.summary import closed_loop_steady_state

    cfg = cluster(instance(None))
    rows = [(2048, 16, 0.0)] * 40
    res = run(cfg, rows, concurrency=8, client_delay_s=0.001)
    df = requests_frame(res)
    s = summarize(res, df, concurrency=8)["closed_loop_steady_state"]
    assert s["requests"] == s["finished"] == 40 - 2 * 8
    kept = df.sort_values(["arrival_s", "request_id"]).iloc[8:32]
    assert s["ttft_ms"]["mean"] == pytest.approx(kept.ttft_ms.mean())
    # All 8 clients send at once, so the first 8 queue behind each other's prefills; a request of
    # the steady cycle returns among decodes and waits for fewer.
    first = df.sort_values("arrival_s").iloc[:8]
    assert first.ttft_ms.mean() > s["ttft_ms"]["mean"]
    assert closed_loop_steady_state(df.iloc[:16], 8)["requests"] == 0



GOLDEN = [(path.stem.rsplit("_", 1)[1], sc) for path in sorted((Path(__file__).parent / "data").glob(
    "vllm_scheduler_golden_*.json")) for sc in json.loads(path.read_text())["scenarios"]]


def test_golden_scenarios_of_both_vllm_versions_are_there():
    # Without the recorded files the test below would have no cases and pass silently.
    assert sorted({version for version, _ in GOLDEN}) == ["0.12.0", "0.19.0"] and len(GOLDEN) >= 10


@pytest.mark.parametrize(("version", "scenario"), GOLDEN, ids=[f"{v}-{sc['name']}" for v, sc in GOLDEN])
def test_schedules_as_vllms_own_scheduler(version, scenario):
    # The expected times come from vLLM's own Scheduler / AsyncScheduler classes (0.12.0 and
    # 0.19.0), run unmodified in a loop that follows its engine core, with the same closed-form step
    # times (benchmarks/vllm_scheduler_check.py --record, which needs vLLM's sources; regenerate
    # there if AnalyticStepTimes or the scenarios change). Covers closed and open loops, chunked
    # prefill, preemption under memory pressure (a resumed request reusing its own cached blocks
    # when prefix caching is on), prompts that share prefixes (`hash_ids`), a chunk cap, sync and
    # async scheduling, and 0.19's whole-sequence admission check (on in its scenarios, off in 0.12's).
    # The KV capacity vLLM was given when the scenario was recorded (num_gpu_blocks, the null
    # block included), pinned so that a change in the memory model does not move it.
    engine = scenario["engine"]
    knobs = {k: v for k, v in engine.items() if k not in ("mem_size_gb", "kv_gpu_blocks")}
    cfg = cluster(instance(None, engine["mem_size_gb"], **knobs))
    res = run(cfg, [tuple(r) for r in scenario["rows"]], step_times=AnalyticStepTimes,
              concurrency=scenario["concurrency"], client_delay_s=scenario["client_delay_s"],
              kv_gpu_blocks={"n0.i0": engine["kv_gpu_blocks"]})
    assert res.instances[0].kv.num_blocks == engine["kv_gpu_blocks"] - 1
    ours = np.array([(r.first_token_s, r.finish_s) for r in res.requests])
    theirs = np.array(scenario["vllm_times_s"])
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    if "preemption" in scenario["name"]:
        assert sum(r.preemptions for r in res.requests) > 5  # the scenario does exercise preemption
    if "shared_prefixes" in scenario["name"]:
        assert sum(r.cached_tokens for r in res.requests) > 10_000  # and prompts found in the prefix cache


# -- vLLM v1 scheduler rules (docs/validation.md, "vLLM v1 rules and pdsim") ---------------------

def _bare_scheduler(num_blocks: int = 10_000, budget: int = 1024, threshold: int = 0, max_num_seqs: int = 64):
    from pdsim.engine.kv_cache import BlockManager
    from pdsim.engine.scheduler import Scheduler

    kv = BlockManager(num_blocks, 16, 16 * 1024)
    return Scheduler(kv, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, enable_chunked_prefill=True,
                     prefill_only=False, max_decode_run_steps=1000, long_prefill_token_threshold=threshold)


def test_long_prefill_token_threshold_caps_every_chunk():
    # vLLM 0.19 scheduler.schedule(): num_new_tokens = min(tokens left, threshold, budget), also
    # for a request that is alone.
    cfg = cluster(instance(None, long_prefill_token_threshold=256))
    res = run(cfg, [(1200, 2, 0.0)])
    pred = res.instances[0].predictor
    expected = sum(pred.step_time_s([(256, 256 * i)], 0, 0) for i in range(4)) + pred.step_time_s([(176, 1024)], 0, 0)
    assert res.requests[0].first_token_s == pytest.approx(expected, rel=1e-12)


def test_threshold_lets_a_short_prompt_share_the_step_of_a_long_one():
    # Budget 1024, threshold 512: the long prompt takes 512, the short one is admitted in the same
    # step and gets its first token at its end. Without a threshold it waits for the long prefill.
    rows = [(4000, 2, 0.0), (100, 2, 0.0)]
    capped = run(cluster(instance(None, max_num_batched_tokens=1024, long_prefill_token_threshold=512)), rows)
    pred = capped.instances[0].predictor
    assert capped.requests[1].first_token_s == pytest.approx(pred.step_time_s([(512, 0), (100, 0)], 0, 0), rel=1e-12)
    plain = run(cluster(instance(None, max_num_batched_tokens=1024)), rows)
    assert plain.requests[1].first_token_s > 3 * capped.requests[1].first_token_s


def test_running_list_order_a_decode_behind_partial_prefills_waits_for_budget():
    # vLLM serves self.running in admission order and stops when the budget is spent, decodes
    # included. Here a decode sits behind a partial prefill that (with a larger cap, as vLLM's
    # adaptive threshold gives when requests leave) takes the whole budget: it must skip a step.
    from pdsim.engine.request import Request

    s = _bare_scheduler(budget=1024, threshold=512)
    long_req, short = Request(0, 4000, 5, 0.0), Request(1, 100, 5, 0.0)
    s.add_waiting(long_req)
    s.add_waiting(short)
    plan = s.schedule(0.0)
    assert [(r.id, n) for r, n in plan.prefill] == [(0, 512), (1, 100)]
    s.complete(plan, 1, 1.0)
    assert short.in_cohort and short.num_generated == 1
    s.long_prefill_token_threshold = 0  # the long prefill may now take the whole budget
    plan = s.schedule(1.0)
    assert [(r.id, n) for r, n in plan.prefill] == [(0, 1024)] and plan.n_decode == 0
    assert short in s.paused and not short.in_cohort
    s.complete(plan, 1, 2.0)
    assert short.num_generated == 1  # no token in the step it sat out
    # Next step: the long prompt needs 4000 - 1536 = 2464 > 1024 again, so the decode waits again.
    plan = s.schedule(2.0)
    assert plan.n_decode == 0 and short in s.paused
    s.complete(plan, 1, 3.0)
    s.long_prefill_token_threshold = 512
    plan = s.schedule(3.0)
    assert plan.n_decode == 1 and plan.fresh_decoders == [short] and short.last_token_s == 1.0
    assert [(r.id, n) for r, n in plan.prefill] == [(0, 512)]
    s.complete(plan, 1, 4.0)
    s.cohort.sync(short)
    assert short.num_generated == 2 and short.num_computed == 101
    assert s.kv.used == long_req.blocks + short.blocks


def test_default_order_is_decodes_then_the_partial_prefill():
    # With threshold 0 a partial prefill always takes all the budget left, so nothing is ever
    # admitted behind it: every decode runs each step and the prefill gets budget - decodes.
    from pdsim.engine.request import Request

    s = _bare_scheduler(budget=1024)
    decs = [Request(i, 50, 100, 0.0) for i in range(3)]
    for r in decs:
        s.add_waiting(r)
    s.complete(s.schedule(0.0), 1, 1.0)
    long_req = Request(9, 5000, 5, 1.0)
    s.add_waiting(long_req)
    for step in range(3):
        plan = s.schedule(1.0 + step)
        assert plan.n_decode == 3 and [(r.id, n) for r, n in plan.prefill] == [(9, 1021)]
        assert not s.paused
        s.complete(plan, 1, 2.0 + step)


def test_preemption_takes_the_newest_puts_it_first_in_line_and_admits_nobody_that_step():
    from pdsim.engine.request import Request

    # 9 blocks of 16 tokens: three requests of 48 prompt tokens hold 3 blocks each; the first
    # decode step (token 49) needs a new block per request, and there is none.
    s = _bare_scheduler(num_blocks=9, budget=256)
    reqs = [Request(i, 48, 50, 0.0) for i in range(3)]
    for r in reqs:
        s.add_waiting(r)
    s.complete(s.schedule(0.0), 1, 1.0)  # prefill: 48 tokens each, first token sampled
    newcomer = Request(7, 10, 5, 1.0)
    s.add_waiting(newcomer)
    plan = s.schedule(1.0)
    assert s.num_preemptions == 1 and reqs[2].status == "preempted" and reqs[2].num_computed == 0
    assert list(s.waiting) == [reqs[2], newcomer]  # the victim goes to the front of the queue
    assert plan.n_decode == 2 and not plan.prefill  # and nobody is admitted in this step
    assert s.kv.free == 9 - 2 * 4 and reqs[2].blocks == 0


def test_kv_capacity_subtracts_non_torch_and_cudagraph_memory():
    from pdsim.engine.cluster import GIB

    def blocks(**knobs) -> int:
        return run(cluster(instance(None, **knobs)), [(100, 2, 0.0)]).instances[0].kv.num_blocks

    block_bytes = 16 * load_model(MODEL).kv_bytes_per_token("bfloat16")
    base = blocks(non_torch_memory_gb=0.0)
    assert base - blocks() == pytest.approx(0.25 * GIB / block_bytes, abs=1)  # default non-torch at TP 1
    assert base - blocks(non_torch_memory_gb=0.0, cudagraph_memory_gb=1.5) == pytest.approx(
        1.5 * GIB / block_bytes, abs=1)


@pytest.mark.parametrize("threshold", [256, 700])
def test_fast_forward_matches_stepping_one_by_one_with_a_prefill_threshold(threshold):
    cfg = cluster(instance(None, 19.5, max_num_batched_tokens=1024, max_num_seqs=64,
                           long_prefill_token_threshold=threshold))
    reqs = _pressure_trace(120, seed=5)
    fast = simulate(cfg, reqs, SimOptions())
    slow = simulate(cfg, reqs, SimOptions(max_decode_run_steps=1))
    assert fast.instances[0].sched.num_preemptions > 0
    for a, b in zip(fast.requests, slow.requests):
        assert a.status == b.status == "finished" and a.preemptions == b.preemptions
        assert a.first_token_s == pytest.approx(b.first_token_s, rel=1e-9, abs=1e-9)
        assert a.finish_s == pytest.approx(b.finish_s, rel=1e-9, abs=1e-9)


def test_decode_router_prefers_an_instance_with_room():
    # Round robin alone would queue every other hand-off behind the small decode instance;
    # with room-first routing they go to the large one while the small one is full.
    cfg = cluster(instance("prefill"), instance("decode", 18.8), instance("decode"),
                  router={"prefill_policy": "round_robin", "decode_policy": "round_robin"})
    rows = [(3000, 300, 0.02 * i) for i in range(12)]
    res = run(cfg, rows)
    df = requests_frame(res)
    assert (df.status == "finished").all()
    assert (df.decode_instance == "n0.i2").sum() > 6
    assert df.kv_transfer_wait_ms.max() < 50


# -- async scheduling (vLLM's --async-scheduling) -------------------------------------------------

def _first_tokens(async_scheduling: bool, max_decode_run_steps: int = 4096) -> dict[int, object]:
    # A decodes alone; B arrives in the middle of one of A's decode steps.
    cfg = cluster(instance(None, async_scheduling=async_scheduling))
    res = run(cfg, [(500, 400, 0.0), (300, 4, 0.5), (200, 4, 30.0)], max_decode_run_steps=max_decode_run_steps)
    return {r.id: r for r in res.requests}


def test_async_scheduling_starts_a_request_one_step_later():
    sync, asyn = _first_tokens(False), _first_tokens(True)
    b_sync, b_async = sync[1], asyn[1]
    # Sync: B is decided at the end of the step it arrived in and computed in the next one.
    # Async: that next step was decided before B arrived, so B is decided then and computed after it.
    decode_step_s = (sync[0].finish_s - sync[0].first_token_s) / 399
    assert b_async.first_scheduled_s == pytest.approx(b_sync.first_scheduled_s, abs=1e-12)
    extra_s = b_async.first_token_s - b_sync.first_token_s
    assert 0.5 * decode_step_s < extra_s < 1.5 * decode_step_s
    # C arrives after A and B are done: an idle engine starts at once either way.
    assert sync[0].finish_s < 30.0
    assert asyn[2].first_token_s - 30.0 == pytest.approx(sync[2].first_token_s - 30.0, rel=1e-9)
    assert all(r.status == "finished" for r in asyn.values())


def test_async_scheduling_fast_forward_matches_stepping():
    fast, slow = _first_tokens(True), _first_tokens(True, max_decode_run_steps=1)
    for i in fast:
        assert fast[i].first_token_s == pytest.approx(slow[i].first_token_s, rel=1e-12)
        assert fast[i].finish_s == pytest.approx(slow[i].finish_s, rel=1e-12)


def test_async_scheduling_conserves_requests_under_memory_pressure():
    rng = np.random.default_rng(3)
    rows = [(int(rng.integers(200, 3000)), int(rng.integers(50, 800)), 0.01 * i) for i in range(300)]
    cfg = cluster(instance(None, 19.5, async_scheduling=True))
    res = run(cfg, rows)
    assert all(r.status == "finished" for r in res.requests)
    assert sum(r.preemptions for r in res.requests) > 0
    assert res.instances[0].kv.used == 0


_DETERMINISM_SCRIPT = """
import hashlib
from pdsim.metrics.summary import requests_frame
from pdsim.sweep.runner import trace_at_rate
from pdsim.workload.trace import load_trace
from tests.helpers import cluster, instance, run
trace = trace_at_rate(load_trace("workloads/decode_heavy.jsonl"), 146.0, "scale", 0, 10.0)
rows = [(r.input_toks, r.output_toks, r.arrival_time_ns * 1e-9) for r in trace]
h100 = dict(hardware="H100-SXM", mem_size_gb=80, max_num_seqs=128, max_num_batched_tokens=2048)
cfg = cluster(instance("prefill", **h100), *[instance("decode", **h100) for _ in range(3)], link_bw=50,
              link_latency=5000)
df = requests_frame(run(cfg, rows))
print(hashlib.md5(df.to_csv(float_format="%.9f").encode()).hexdigest())
"""


def test_runs_are_identical_across_processes():
    # Objects hash by address, so a set of them iterates in an order that changes from one
    # process to the next: KV transfers that end together used to finish in that order.
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    digests = set()
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=300, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_async_scheduling_pd_matches_stepping():
    # Hand-offs join decode runs in progress, past local recomputes stuck at the head of the
    # queue: the fast path must stop where stepping would.
    cfg = cluster(instance("prefill", 19.5, async_scheduling=True), instance("decode", 19.5, async_scheduling=True))
    reqs = _pressure_trace(150, seed=3)
    fast = simulate(cfg, reqs, SimOptions())
    slow = simulate(cfg, reqs, SimOptions(max_decode_run_steps=1))
    assert fast.instances[-1].sched.num_preemptions > 0
    for a, b in zip(fast.requests, slow.requests):
        assert a.status == b.status == "finished"
        assert a.first_token_s == pytest.approx(b.first_token_s, rel=1e-12)
        assert a.finish_s == pytest.approx(b.finish_s, rel=1e-12)


def test_a_trace_out_of_arrival_order_is_admitted_at_its_arrival_times():
    cfg = cluster(instance("prefill"), instance("decode"))
    rows = [(100, 4, 2.0), (100, 4, 0.0), (300, 4, 1.0)]
    given = requests_frame(run(cfg, rows)).sort_values("arrival_s").reset_index(drop=True)
    in_order = requests_frame(run(cfg, sorted(rows, key=lambda r: r[2])))
    for column in ("first_token_s", "ttft_ms", "queue_ms", "e2e_ms"):
        assert np.allclose(given[column], in_order[column], rtol=0, atol=1e-12), column


def test_a_timeline_of_too_many_samples_doubles_its_interval_and_says_so(monkeypatch):
    # Step times of hours (a corrupt profile) made a run sample every second of millions of simulated seconds:
    # two requests took 7 minutes. After MAX_ROWS_PER_INTERVAL rows (one per instance per sample) the interval doubles.
    from pdsim.engine import monitor
    from pdsim.metrics.summary import format_summary

    monkeypatch.setattr(monitor, "MAX_ROWS_PER_INTERVAL", 40)
    cfg = cluster(instance(None))
    result = run(cfg, [(100, 2000, 0)], step_times=AnalyticStepTimes, sample_interval_s=0.01)
    assert result.requests[0].status == "finished"
    times = np.array([s.time_s for s in result.samples])
    gaps = np.round(np.diff(times), 9)
    assert gaps[:38].max() == pytest.approx(0.01)  # the first 40 at 0.01 s, the next 40 at 0.02 s, ...
    assert gaps[42:78].min() == pytest.approx(0.02) and gaps.max() == pytest.approx(0.04)
    assert "timeline: 40 rows at one interval (over the instances and the links in use), so it doubled from t = " in \
        result.timeline_note
    assert result.timeline_note in format_summary(summarize(result, requests_frame(result)))
    plain = run(cfg, [(100, 400, 0)], step_times=AnalyticStepTimes, sample_interval_s=0.1)
    assert plain.timeline_note == ""
    # The budget is of rows: four instances double it after 10 sample times, not 40 (a long trace on a large cluster
    # wrote millions of rows before).
    four = run(cluster(*(instance(None) for _ in range(4))), [(100, 2000, 0)], step_times=AnalyticStepTimes,
               sample_interval_s=0.01)
    assert four.timeline_note.startswith("timeline: 40 rows at one interval")
    times = sorted({s.time_s for s in four.samples})
    gaps = np.round(np.diff(times), 9)
    assert gaps[:8].max() == pytest.approx(0.01) and gaps[10:18].min() == pytest.approx(0.02)


def test_numpy_sum_is_np_sum_bit_for_bit():
    """The instance sums step times in numpy's order of additions without numpy: the same floats."""
    rng = np.random.default_rng(7)
    for n in [*range(0, 300), 1000, 4096, 8191, 8192, 8193, 20_000]:
        for _ in range(30 if n < 300 else 3):
            values = rng.random(n) * 10.0 ** rng.integers(-6, 3, n)
            assert numpy_sum(values.tolist()) == float(values.sum()), n
