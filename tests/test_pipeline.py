"""Pipeline parallelism (docs/pipeline.md): vLLM's layer split, per-stage memory, micro-batches in flight."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from pdsim.engine import pipeline as engine_pipeline
from pdsim.engine.cluster import Cluster, SimOptions
from pdsim.errors import ConfigError
from pdsim.metrics.summary import requests_frame, summarize
from pdsim.models import load_model
from pdsim.perf.pipeline import pp_partition, pp_stages, stage_model, stage_weight_bytes
from tests.helpers import MODEL, AnalyticStepTimes, all_released, cluster, instance, run


def _pp(pd_type=None, pp=2, **knobs) -> dict:
    return instance(pd_type, pp_size=pp, num_npus=pp, **knobs)


def _built(cfg):
    return Cluster(simpy.Environment(), cfg, SimOptions()).instances[0]


def test_layer_split_is_vllms_get_pp_indices():
    # vLLM: layers // P each; the remainder, one each, to the stages before the last.
    assert pp_partition(32, 2) == [16, 16]
    assert pp_partition(30, 4) == [7, 8, 8, 7]
    assert pp_partition(61, 4) == [15, 15, 16, 15]
    assert pp_partition(5, 4) == [1, 1, 2, 1]
    stages = pp_stages(30, 4)
    assert [(s.start_layer, s.end_layer) for s in stages] == [(0, 7), (7, 15), (15, 23), (23, 30)]
    assert [s.first for s in stages] == [True, False, False, False] and stages[-1].last
    with pytest.raises(ConfigError, match="pp_size 33"):
        pp_partition(32, 33)


def test_stage_weights_add_up_to_the_model():
    model = load_model(MODEL)  # untied: embedding on stage 0, LM head on the last
    whole = model.weight_bytes("bfloat16")
    for pp in (2, 4):
        parts = [stage_weight_bytes(model, s, "bfloat16", 1, None, None) for s in pp_stages(32, pp)]
        assert sum(parts) == whole
    first, last = (stage_weight_bytes(model, s, "bfloat16", 1, None, None) for s in pp_stages(32, 2))
    matrix = model.vocab_size * model.hidden_size * 2
    assert first - last == -model.hidden_size * 2  # same layers; embedding vs LM head + final norm
    assert abs(first - (whole - matrix) / 2) < matrix  # half the layers, one of the two big matrices


def test_moe_mla_stages_hold_their_experts_and_add_up():
    # DeepSeek-V3: 61 layers, the first 3 dense (MLA attention, fp8 block-wise weights, experts over EP 4).
    model = load_model("deepseek-ai/DeepSeek-V3")
    whole = model.weight_bytes("bfloat16", 4, 4, "fp8_block")
    for pp, moe_layers in ((2, [28, 30]), (4, [12, 15, 16, 15])):
        stages = pp_stages(model.num_layers, pp)
        assert [stage_model(model, s).moe.moe_layers for s in stages] == moe_layers
        assert sum(stage_weight_bytes(model, s, "bfloat16", 4, 4, "fp8_block") for s in stages) == whole
        per_token = [stage_model(model, s).kv_bytes_per_token("bfloat16", 4) for s in stages]
        assert sum(per_token) == model.kv_bytes_per_token("bfloat16", 4)


def test_memory_per_gpu_and_kv_blocks_p2_vs_p1():
    one, two = _built(cluster(instance(None))), _built(cluster(_pp()))
    bb1 = one.spec.block_size * one.spec.kv_bytes_per_token
    bb2 = two.spec.block_size * two.spec.kv_bytes_per_token
    assert two.spec.kv_bytes_per_token * 2 == one.spec.kv_bytes_per_token  # 16 of 32 layers per GPU
    assert two.spec.weight_bytes < 0.51 * one.spec.weight_bytes
    # Same GPU, same reserve: the stage's free memory is the P=1 free memory plus the weights it no longer holds.
    free1 = (one.kv.num_blocks + 1) * bb1
    free2 = (two.kv.num_blocks + 1) * bb2
    assert abs(free2 - (free1 + one.spec.weight_bytes - two.spec.weight_bytes)) < bb1 + bb2
    assert two.kv.num_blocks > 2 * one.kv.num_blocks


def test_single_request_ttft_is_the_sum_of_stages_plus_the_send():
    rows = [(1000, 2, 0.0)]
    (r1,) = run(cluster(instance(None)), rows).requests
    (r2,) = run(cluster(_pp()), rows).requests
    pred = _built(cluster(_pp())).predictor
    stages = pred.stage_times_s([(1000, 0)], 0, 0)
    send = pred.send_s(1000)
    ttft2 = r2.first_token_s - r2.arrival_s
    assert ttft2 == pytest.approx(sum(stages) + send, rel=1e-9)
    # No speed-up for one request: the stages add up to the unpipelined step, plus the send.
    assert ttft2 == pytest.approx(r1.first_token_s - r1.arrival_s + send, rel=1e-6)
    assert send > 0


def test_a_long_prompts_chunks_are_pipelined():
    # 8,000 tokens in chunks of 2,048: vLLM schedules the next chunk while the previous one is in
    # flight, so the chunks follow each other through stage 0 and the prompt takes about one stage
    # per chunk plus one pass through the rest, not a whole pass per chunk.
    rows = [(8000, 2, 0.0)]
    (r2,) = run(cluster(_pp()), rows).requests
    pred = _built(cluster(_pp())).predictor
    chunks = [(2048, 0), (2048, 2048), (2048, 4096), (1856, 6144)]
    per_chunk = [pred.stage_times_s([c], 0, 0) for c in chunks]
    serial = sum(sum(t) + pred.send_s(c[0]) for t, c in zip(per_chunk, chunks))
    ttft = r2.first_token_s - r2.arrival_s
    assert ttft < 0.8 * serial
    # By hand: at most 2 chunks in flight (a chunk is scheduled once the one two before it returned);
    # each stage takes one chunk at a time, in order; stage 1 after the chunk's stage 0 and send.
    launch, stage0_end, stage1_end, done = 0.0, 0.0, 0.0, []
    for k, (t, c) in enumerate(zip(per_chunk, chunks)):
        launch = max(launch, done[k - 2] if k >= 2 else 0.0)
        stage0_end = max(launch, stage0_end) + t[0]
        stage1_end = max(stage0_end + pred.send_s(c[0]), stage1_end) + t[1]
        done.append(stage1_end)
    assert ttft == pytest.approx(done[-1], rel=1e-6)


def test_two_micro_batches_overlap_in_steady_decode():
    # 64 short prompts at once: the token budget (2048) puts 32 in each of two micro-batches, which
    # then alternate through the two stages.
    rows = [(64, 300, 0.0)] * 64
    res = run(cluster(_pp()), rows)
    pred = _built(cluster(_pp())).predictor
    stage = max(pred.stage_times_s((), 32, 32 * 200))  # mid-run KV
    send = pred.send_s(32)
    tpot = np.median([(r.finish_s - r.first_token_s) / (r.output_toks - 1) for r in res.requests])
    # Each request's step goes through both stages and the send: a cycle of 2 stages + 1 send ...
    assert tpot == pytest.approx(2 * stage + send, rel=0.05)
    # ... and with two micro-batches in flight a batch completes every (stage + send / 2): near
    # 1 / max-stage-time, twice the rate without overlap (1 / sum of the stages).
    batches_per_s = 2 / tpot
    assert batches_per_s > 0.9 / stage
    assert batches_per_s > 1.8 / (2 * stage + send)


def test_requests_are_never_scheduled_twice_while_in_flight(monkeypatch):
    in_flight: set[int] = set()
    detach, complete = engine_pipeline.PipelineScheduler.detach, engine_pipeline.PipelineScheduler.complete_batch
    launched = []

    def checked_detach(self, plan, batch):
        detach(self, plan, batch)
        ids = {r.id for r in (*batch.decoders, *batch.prefills)}
        assert not ids & in_flight, "a request in flight was scheduled again"
        assert len(ids) == len(batch.decoders) + len(batch.prefills)
        in_flight.update(ids)
        launched.append(len(in_flight))

    def checked_complete(self, batch, now):
        in_flight.difference_update(r.id for r in (*batch.decoders, *batch.prefills))
        return complete(self, batch, now)

    monkeypatch.setattr(engine_pipeline.PipelineScheduler, "detach", checked_detach)
    monkeypatch.setattr(engine_pipeline.PipelineScheduler, "complete_batch", checked_complete)
    rng = np.random.default_rng(3)
    rows = [(int(rng.integers(20, 3000)), int(rng.integers(1, 60)), float(t))
            for t in np.sort(rng.uniform(0, 2, 120))]
    res = run(cluster(_pp(pp=4, max_num_seqs=16)), rows)
    assert all(r.status == "finished" and r.num_generated == r.output_toks for r in res.requests)
    assert max(launched) <= 16  # max_num_seqs counts the requests in flight
    assert not in_flight


def test_preemption_under_memory_pressure_completes():
    # A KV cache too small for everyone: requests are preempted and recomputed, all finish, and
    # the block pool ends empty.
    cfg = cluster(_pp(mem_size_gb=96, gpu_memory_utilization=0.9))
    rows = [(1500, 400, 0.001 * i) for i in range(40)]
    res = run(cfg, rows, kv_gpu_blocks={"n0.i0": 400})
    assert all(r.status == "finished" for r in res.requests)
    assert sum(r.preemptions for r in res.requests) > 0


def test_pd_with_a_pipelined_prefill_instance_moves_all_the_kv():
    rows = [(2000, 5, 0.0), (700, 3, 0.01)]
    flat = run(cluster(instance("prefill"), instance("decode")), rows).requests
    piped = run(cluster(_pp("prefill"), instance("decode")), rows).requests
    assert [r.status for r in piped] == ["finished"] * 2
    assert [r.kv_bytes for r in piped] == [r.kv_bytes for r in flat] and flat[0].kv_bytes > 0


def test_moe_dp_group_ranks_send_micro_batches_through_the_stages_together(monkeypatch):
    # Two pipelined MoE ranks in one DP group: every launch is a group micro-batch (a dummy one on an
    # idle rank), so both ranks launch at the same instants, and up to pp_size are in flight.
    launches: dict[str, list[tuple[float, int]]] = {"n0.i0": [], "n0.i1": []}
    launch = engine_pipeline.PipelinedInstance._launch

    def recorded(self, plan, stage_s, send_s):
        launch(self, plan, stage_s, send_s)
        launches[self.id].append((self.env.now, len(self.in_flight)))

    monkeypatch.setattr(engine_pipeline.PipelinedInstance, "_launch", recorded)
    rank = {"model_name": "Qwen/Qwen3-30B-A3B-Instruct-2507", "hardware": "RTXPRO6000",
            "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0}, "tp_size": 1, "pp_size": 2,
            "ep_size": 2, "dp_group": "A", "pd_type": None}
    rows = [(600, 20, 0.0)] * 12  # 3,600 prompt tokens per rank: two micro-batches of at most 2,048
    res = run(cluster(rank, dict(rank)), rows)
    assert all(r.status == "finished" for r in res.requests)
    assert [t for t, _ in launches["n0.i0"]] == [t for t, _ in launches["n0.i1"]]
    assert max(n for _, n in launches["n0.i0"]) == 2
    # The group stops only at vLLM's every-32-steps check: dummy micro-batches until then.
    assert len(launches["n0.i0"]) % 32 == 0 and res.instances[0].dp_group.num_steps % 32 == 0


def test_pipelined_moe_dp_ranks_pad_to_a_cuda_graph_size(monkeypatch):
    # vLLM pads a DP group's batches whether or not its ranks are pipelined: three decodes on one rank and two on
    # the other run their MoE layers at 4 tokens each (a capture size), unless nothing runs graphs.
    from pdsim.perf.moe_time import MoELayerModel

    layer_us = MoELayerModel.layer_us

    def moe_tokens(**knobs):
        seen = set()

        def recorded(self, tokens, most):
            seen.add((tokens, most))
            return layer_us(self, tokens, most)

        monkeypatch.setattr(MoELayerModel, "layer_us", recorded)
        rank = {"model_name": "Qwen/Qwen3-30B-A3B-Instruct-2507", "hardware": "RTXPRO6000",
                "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0}, "tp_size": 1, "pp_size": 2,
                "ep_size": 2, "dp_group": "A", "pd_type": None, **knobs}
        res = run(cluster(rank, dict(rank)), [(100, 20, 0.0)] * 5)
        assert all(r.status == "finished" for r in res.requests)
        return seen

    padded, eager = moe_tokens(), moe_tokens(enforce_eager=True)
    assert (8, 4) in padded and (5, 3) not in padded
    assert (5, 3) in eager and (8, 4) not in eager


def test_a_pipelined_dp_decode_rank_schedules_a_hand_off_a_decision_after_the_poll_that_sees_its_kv(monkeypatch):
    # As an unpipelined rank (tests/test_moe.py): a rank launching dummy micro-batches learns a transfer ended at
    # its next decision's KV connector poll, so the decision after that launches the request.
    from pdsim.engine.pipeline_dp import PipelineDPGroup

    launches: list[tuple[float, bool]] = []  # (time, whether any rank had work)
    price = PipelineDPGroup._price

    def recorded(self):
        launches.append((self.env.now, not all(plan.empty for plan in self._plans.values())))
        return price(self)

    monkeypatch.setattr(PipelineDPGroup, "_price", recorded)
    rank = {"model_name": "Qwen/Qwen3-30B-A3B-Instruct-2507", "hardware": "RTXPRO6000",
            "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0}, "tp_size": 1, "pp_size": 2,
            "ep_size": 2, "dp_group": "D", "pd_type": "decode"}
    prefill = {**rank, "pp_size": 1, "dp_group": None, "ep_size": 1, "pd_type": "prefill"}
    res = run(cluster(prefill, rank, dict(rank), link_bw=0.5), [(4000, 5, 0.0)])
    req = res.requests[0]
    assert req.status == "finished"
    after = [(t, busy) for t, busy in launches if t > req.kv_transfer_end_s]
    assert not after[0][1] and after[1][1]  # the first decision after the KV came cannot see it; the next runs it


def test_summary_reports_the_stages():
    res = run(cluster(_pp(pp=4)), [(500, 50, 0.0), (500, 50, 0.001), (3000, 20, 0.002)])
    inst = summarize(res, requests_frame(res))["instances"][0]
    assert inst["pp"] == 4 and len(inst["stage_busy_fraction"]) == 4
    # Each stage is busy for part of the time the instance has a batch in flight, never more.
    assert all(0 < f <= inst["busy_fraction"] + 1e-9 for f in inst["stage_busy_fraction"])
    flat = run(cluster(instance(None)), [(500, 5, 0.0)])
    flat_summary = summarize(flat, requests_frame(flat))
    assert "pp" not in flat_summary["instances"][0]
    # The text report gets a pp column only when an instance is pipelined.
    from pdsim.metrics.summary import format_summary

    header = next(line for line in format_summary(summarize(res, requests_frame(res))).splitlines()
                  if line.startswith("instance"))
    assert header.split()[:5] == ["instance", "pd_type", "hardware", "tp", "pp"]
    assert " pp " not in next(line for line in format_summary(flat_summary).splitlines() if line.startswith("instance"))


def _random_open_loop(seed: int, rate_per_s: float) -> list[tuple[int, int, float]]:
    """80 requests of benchmarks/vllm_scheduler_check.py's random pipeline mode, each within 2,500 tokens."""
    from pdsim.workload.generate import generate_requests

    return [(r.input_toks, r.output_toks, r.arrival_time_ns * 1e-9)
            for r in generate_requests(80, rate_per_s, "lognormal:700,600", "lognormal:120,100", seed=seed)
            if r.input_toks + r.output_toks <= 2500]


def test_a_request_preempted_from_one_micro_batch_cohort_and_rejoining_another_finishes_once():
    # Each in-flight micro-batch has a decode cohort of its own. A request preempted out of one
    # and back in another (here after a prefix-cache hit on its own blocks) left a stale entry in
    # the first, whose step count could match its new finish step: the first cohort then
    # "finished" it too, and the run stopped with a KeyError.
    from tests.helpers import AnalyticStepTimes, cluster, instance, run

    cfg = cluster(instance(None, 80.0, pp_size=2, num_npus=2, max_num_seqs=32, max_num_batched_tokens=512,
                           enable_prefix_caching=True, block_size=32, scheduler_reserve_full_isl=True))
    rows = _random_open_loop(7002, 60)
    res = run(cfg, rows, step_times=AnalyticStepTimes, kv_gpu_blocks={"n0.i0": 351})
    assert sum(r.preemptions for r in res.requests) > 5
    assert all(r.status == "finished" and r.num_generated == r.output_toks for r in res.requests)


def test_a_token_returning_for_a_request_admitted_again_lets_it_run_beside_its_chunk_in_flight(monkeypatch):
    # A request preempted in flight and admitted again: when its old micro-batch returns, vLLM
    # appends the token it sampled, counts the new chunk in flight as computed, and schedules the
    # new token at once, beside that chunk (whose own token comes later; it may finish the request
    # while the other step is in flight). Every request still finishes once, with exactly its
    # output tokens, and every block is returned. (That the times are vLLM's is the golden scenario
    # open_loop_pipeline_late_token in tests/test_engine.py.)
    from tests.helpers import AnalyticStepTimes, cluster, instance, run

    in_flight_again = []
    late_token = engine_pipeline.PipelineScheduler._late_token

    def counted(self, req, now, out, from_prefill=False):
        in_flight_again.append(any(req in b.decoders or req in b.prefills for b in self.batches))
        late_token(self, req, now, out, from_prefill)

    monkeypatch.setattr(engine_pipeline.PipelineScheduler, "_late_token", counted)
    finishes = []
    finish = engine_pipeline.PipelineScheduler._finish

    def finished(self, req, now, out):
        finishes.append(req.id)
        finish(self, req, now, out)

    monkeypatch.setattr(engine_pipeline.PipelineScheduler, "_finish", finished)
    cfg = cluster(instance(None, 80.0, pp_size=3, num_npus=3, max_num_seqs=32, max_num_batched_tokens=2048,
                           enable_prefix_caching=True, block_size=32, scheduler_reserve_full_isl=True))
    rows = _random_open_loop(7013, 30)
    res = run(cfg, rows, step_times=AnalyticStepTimes, kv_gpu_blocks={"n0.i0": 351})
    assert sum(in_flight_again) > 0  # late tokens came for requests with a step in flight again
    assert all(r.status == "finished" and r.num_generated == r.output_toks for r in res.requests)
    assert sorted(finishes) == sorted(r.id for r in res.requests)
    assert all_released(res.instances[0])


def test_async_scheduling_at_two_stages_runs_one_micro_batch_at_a_time():
    # vLLM 0.19's async scheduling with PP: every micro-batch holds every decode and waits for the
    # previous one's sampled tokens (broadcast back to the first stage), so nothing overlaps. A lone
    # request's first token comes one traversal plus that broadcast after it arrives; synchronously,
    # one traversal. The summary still reports each stage's busy time.
    rows = [(1500, 40, 0.0)]
    sync = run(cluster(_pp()), rows)
    asynchronous = run(cluster(_pp(async_scheduling=True)), rows)
    inst = asynchronous.instances[0]
    assert isinstance(inst, engine_pipeline.AsyncPipelinedInstance)
    broadcast_s = inst.predictor.send_s(0)
    assert broadcast_s > 0
    assert asynchronous.requests[0].first_token_s == pytest.approx(sync.requests[0].first_token_s + broadcast_s)
    s = summarize(asynchronous, requests_frame(asynchronous))["instances"][0]
    assert s["pp"] == 2 and all(0 < f <= s["busy_fraction"] + 1e-9 for f in s["stage_busy_fraction"])
    # Busy, the synchronous engine overlaps its micro-batches and serves more.
    busy = [(1200, 60, 0.002 * i) for i in range(300)]
    ends = [max(r.finish_s for r in run(cluster(_pp(async_scheduling=a)), busy).requests) for a in (False, True)]
    assert ends[0] < ends[1]


def test_async_scheduling_with_stages_in_a_moe_dp_group_is_refused():
    rank = {"model_name": "Qwen/Qwen3-30B-A3B-Instruct-2507", "hardware": "RTXPRO6000",
            "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0}, "tp_size": 1, "pp_size": 2,
            "ep_size": 2, "dp_group": "A", "pd_type": None, "async_scheduling": True}
    with pytest.raises(ConfigError, match="async_scheduling true in a MoE DP group is not modelled"):
        run(cluster(rank, dict(rank)), [(600, 20, 0.0)])


def test_async_scheduling_with_three_stages_decides_two_steps_ahead(monkeypatch):
    # vLLM's batch queue is pp_size long: it decides pp_size - 1 steps ahead and counts only the tokens
    # it has seen, so a request is in one step after its last token (pp_size 3) before it leaves.
    from pdsim.engine.instance import Instance

    steps = []
    after = Instance._after_steps

    def recorded(self, plan, durations, n):
        steps.extend([(len(plan.prefill), plan.n_decode)] * n)
        after(self, plan, durations, n)

    monkeypatch.setattr(Instance, "_after_steps", recorded)
    res = run(cluster(_pp(pp=3, async_scheduling=True)), [(100, 5, 0.0), (100, 40, 0.0)])
    assert all(r.status == "finished" and r.num_generated == r.output_toks for r in res.requests)
    # One prefill step for both, four decode steps of both, the short one's extra step, then the long one.
    assert steps[:7] == [(2, 0), (0, 2), (0, 2), (0, 2), (0, 2), (0, 2), (0, 1)]
    assert all_released(res.instances[0])


@pytest.mark.parametrize(("pp", "asynchronous", "pd"), [(3, True, False), (4, True, False), (2, False, True),
                                                        (3, True, True)])
def test_itl_samples_are_the_tokens_a_client_sees(pp, asynchronous, pd):
    # Ghost decodes (async scheduling deciding PP steps ahead) make no token, and behind vLLM's P/D proxy
    # (client TTFT mode) the prefill's token to the first decode token is no gap the client sees: the ITL
    # samples are n - 1 per request and sum to E2E - TTFT. (Were: pp - 2 extra per request; one extra.)
    from pdsim.metrics.summary import itl_samples

    if pd:
        cfg = cluster(instance("prefill"), _pp("decode", pp, async_scheduling=asynchronous))
    else:
        cfg = cluster(_pp(None, pp, async_scheduling=asynchronous))
    res = run(cfg, [(100 + 900 * pd, 20, 0.0), (300, 7, 0.002)], ttft_mode="client")
    df = requests_frame(res)
    values, weights = itl_samples(res)
    assert weights.sum() == (df.output_toks - 1).sum()
    assert res.instances[-1].stats.decode_tokens == (df.output_toks - (0 if pd else 1)).sum()
    assert float((values * weights).sum()) == pytest.approx(float((df.e2e_ms - df.ttft_ms).sum()) / 1e3, rel=1e-9)


def _mixed_trace(seed: int, n: int, rate_per_s: float) -> list[tuple[int, int, float]]:
    """Prompts of 1 to 1,500 tokens (whole blocks and one over), outputs of 1 to 150, Poisson arrivals."""
    import random

    rng = random.Random(seed)
    rows, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate_per_s)
        rows.append((rng.choice([1, 2, 15, 16, 17, 31, 32, 33, 100, 255, 256, 600, 1500]),
                     rng.choice([1, 1, 2, 2, 3, 4, 10, 40, 150]), t))
    return rows


def test_a_layerwise_hand_off_in_flight_on_a_pipelined_prefill_is_not_preempted_there():
    # Handed off as its final chunk launched (layer-wise KV), a request was still preempted in flight on the
    # pipelined prefill instance, recomputed and handed off a second time: two reservations and transfers,
    # a negative free-block count or leaked blocks.
    cfg = cluster(_pp("prefill", 2, block_size=8, long_prefill_token_threshold=300, scheduler_reserve_full_isl=True),
                  _pp("decode", 4, block_size=8, long_prefill_token_threshold=300, scheduler_reserve_full_isl=True),
                  kv_transfer={"mode": "layerwise"})
    res = run(cfg, _mixed_trace(199, 60, 200.0), ttft_mode="client", kv_gpu_blocks={"n0.i0": 240, "n0.i1": 80})
    assert {r.status for r in res.requests} <= {"finished", "rejected"}
    assert all(all_released(inst) for inst in res.instances)


def test_a_pipelined_decode_instance_preempts_the_newest_request_in_flight_too(monkeypatch):
    # Every request on a decode instance came by a hand-off: the rule that spares a prefill instance's hand-off in
    # flight kept all of them out, so memory pressure preempted the newest request not in flight instead.
    import random

    victims: list[bool] = []
    preempt = engine_pipeline.PipelineScheduler._preempt_last

    def watched(self, now):
        everyone = [*self.running, *(r for b in self.batches for r in (*b.decoders, *b.prefills))]
        newest = max(everyone, key=lambda r: r.admitted_seq, default=None)
        victim = preempt(self, now)
        if victim is not None and not self.prefill_only:
            victims.append(victim is newest)
        return victim

    monkeypatch.setattr(engine_pipeline.PipelineScheduler, "_preempt_last", watched)
    rng = random.Random(5)
    rows = sorted(((rng.choice([30, 100, 200]), rng.choice([20, 100, 300]), rng.random() * 0.3) for _ in range(16)),
                  key=lambda r: r[2])
    cfg = cluster(instance("prefill", 80.0), _pp("decode", 2, num_gpu_blocks_override=48, max_num_seqs=8))
    res = run(cfg, rows, step_times=AnalyticStepTimes)
    assert all(r.status == "finished" for r in res.requests) and victims and all(victims)


def test_client_mode_decode_deciding_steps_ahead_with_prefix_ids_and_whole_block_prompts():
    # The decode instance caches the prompt blocks whose KV arrived: behind vLLM's proxy not the last token's
    # yet; a recompute after preemption hit the whole prompt and planned a chunk of -1 tokens (internal error).
    from pdsim.engine.cluster import simulate
    from pdsim.workload.trace import TraceRequest

    cfg = cluster(instance("prefill"), _pp("decode", 4, async_scheduling=True))
    reqs = [TraceRequest(i, 64, out, int(i * 1e6), (0, 1, 2, 3), 16) for i, out in enumerate((8, 20, 40, 8))]
    for blocks in (9, 11):
        res = simulate(cfg, reqs, SimOptions(ttft_mode="client", kv_gpu_blocks={"n0.i1": blocks}))
        assert all(r.status == "finished" for r in res.requests) and sum(r.preemptions for r in res.requests)
        assert all(all_released(inst) for inst in res.instances)


@pytest.mark.parametrize("pp", [3, 4])
def test_what_finished_is_freed_when_the_engine_goes_idle(pp):
    # Async scheduling deciding pp - 1 steps ahead freed a finished request only at decisions to come: a
    # one-token request's blocks stayed held until the next arrival, and past the end of the run.
    res = run(cluster(_pp(None, pp, async_scheduling=True)), [(17, 1, 0.0)])
    assert res.requests[0].status == "finished" and res.instances[0].kv.free == res.instances[0].kv.num_blocks


def test_a_recompute_never_plans_a_prefill_chunk_of_no_tokens(monkeypatch):
    # After a preemption with tokens still in flight, the prefix-cache hit was capped by every token the
    # request had, seen or not: it could cover all the tokens vLLM knows, leaving a 0-token chunk (priced by
    # extrapolating the attention table below its grid). vLLM caps the hit at the tokens it has seen, less one.
    from pdsim.engine import scheduler as engine_scheduler

    chunks: list[int] = []
    schedule = engine_scheduler.Scheduler.schedule

    def recorded(self, now, cutoff=None):
        plan = schedule(self, now, cutoff)
        chunks.extend(n for _, n in plan.prefill)
        return plan

    monkeypatch.setattr(engine_scheduler.Scheduler, "schedule", recorded)
    cfg = cluster(_pp(None, 3, async_scheduling=True, block_size=32, max_num_seqs=8, long_prefill_token_threshold=64,
                      scheduler_reserve_full_isl=True))
    res = run(cfg, _mixed_trace(0, 40, 200.0), kv_gpu_blocks={"n0.i0": 12})
    assert sum(r.preemptions for r in res.requests) and chunks and min(chunks) >= 1


def test_a_recompute_whose_last_chunk_left_in_flight_gives_its_token_an_itl():
    # Preempted in flight and admitted again, a request's recomputed last chunk can leave its micro-batch in
    # flight; the token that batch brings back is a token after the first, so an inter-token gap (was: none).
    from pdsim.metrics.summary import itl_samples

    cfg = cluster(_pp(None, 2, block_size=8, max_num_seqs=8, long_prefill_token_threshold=64,
                      enable_prefix_caching=False))
    res = run(cfg, _mixed_trace(19, 40, 30.0), kv_gpu_blocks={"n0.i0": 120})
    _, weights = itl_samples(res)
    assert weights.sum() == sum(r.output_toks - 1 for r in res.requests if r.status == "finished")


def test_a_prefill_only_request_whose_token_returns_beside_its_recompute_in_flight_is_handed_off(monkeypatch):
    # Preempted in flight on a pipelined prefill instance and admitted again, a request's token came back
    # while its recomputed prompt was in flight: it then decoded on the prefill instance (one extra ITL
    # sample per request, and a hand-off never made) instead of leaving with its first token.
    from pdsim.metrics.summary import itl_samples

    beside: list[int] = []  # requests whose token returned while their recompute's last chunk was in flight
    late_token = engine_pipeline.PipelineScheduler._late_token
    cfg = cluster(_pp("prefill", 4, block_size=8, long_prefill_token_threshold=64), _pp("decode", 1))

    def counted(self, req, now, out, from_prefill=False):
        in_flight = any(req in b.prefills for b in self.batches)
        late_token(self, req, now, out, from_prefill)
        if in_flight and req.status != "finished":
            beside.append(req.id)

    monkeypatch.setattr(engine_pipeline.PipelineScheduler, "_late_token", counted)
    res = run(cfg, _mixed_trace(3, 40, 200.0), kv_gpu_blocks={"n0.i0": 80})
    assert beside, "the case no longer has a token returning beside a recompute in flight"
    finished = [r for r in res.requests if r.status == "finished"]
    assert {r.status for r in res.requests} <= {"finished", "rejected"}  # 1,510 tokens do not fit 80 blocks of 8
    assert all(all_released(inst) for inst in res.instances)
    assert all(res.requests[i].decode_instance == "n0.i1" for i in beside)
    _, weights = itl_samples(res)
    assert weights.sum() == sum(r.output_toks - 1 for r in finished)


def test_a_token_dropped_for_a_request_that_finished_on_its_other_step_in_flight_is_no_itl(monkeypatch):
    # Preempted with its decode in flight and admitted again, a request has two steps in flight; it finished on
    # one, and the other's token was dropped (as vLLM drops a finished request's output), but that batch's
    # decode count still gave the token an ITL sample: one sample too many.
    from pdsim.engine.cluster import simulate
    from pdsim.metrics.summary import itl_samples
    from pdsim.workload.trace import TraceRequest

    dropped: list[int] = []
    late_token = engine_pipeline.PipelineScheduler._late_token

    def counted(self, req, now, out, from_prefill=False):
        if req.status == "finished" and not from_prefill:
            dropped.append(req.id)
        late_token(self, req, now, out, from_prefill)

    monkeypatch.setattr(engine_pipeline.PipelineScheduler, "_late_token", counted)
    shared = tuple(range(1000, 1016))
    rows = [(0, 16, 2, 0.48, (7681492,), 32), (1, 256, 4, 1.22, shared, 16), (2, 255, 3, 1.75, shared, 16),
            (3, 256, 150, 3.27, (*shared[:4], 8069921, 1926972, 2707475, 1236000), 32),
            (7, 256, 2, 6.00, shared[:8], 32), (8, 600, 150, 7.29, tuple(range(5_000_000, 5_000_019)), 32),
            (9, 2, 10, 7.50, (1885276,), 16), (10, 32, 3, 8.51, (1000,), 32),
            (11, 256, 2, 9.41, tuple(range(6_000_000, 6_000_016)), 16),
            (14, 255, 2, 11.14, (*shared[:8], *range(7_000_000, 7_000_008)), 16), (16, 255, 40, 14.68, shared, 16),
            (17, 31, 2, 15.23, (3810338,), 32), (18, 100, 10, 16.01, shared[:4], 32)]
    reqs = [TraceRequest(i, inp, out, int(ms * 1e6), ids, hbt) for i, inp, out, ms, ids, hbt in rows]
    cfg = cluster(instance(None, tp_size=2, pp_size=3, num_npus=6, block_size=16, max_num_batched_tokens=2048,
                           scheduler_reserve_full_isl=False, long_prefill_token_threshold=64),
                  link_latency=0)
    res = simulate(cfg, reqs, SimOptions(kv_gpu_blocks={"n0.i0": 120}))
    assert dropped, "the case no longer drops a token of a request that finished on its other step in flight"
    finished = [r for r in res.requests if r.status == "finished"]
    assert len(finished) == len(rows)
    _, weights = itl_samples(res)
    assert weights.sum() == sum(r.output_toks - 1 for r in finished)


def test_a_layerwise_transfer_from_a_pipelined_prefill_ends_after_the_step_that_computes_its_kv():
    # The layer-wise feed spread a micro-batch's layers over the sum of its stage times from its launch; a stage
    # still busy with an earlier micro-batch made the batch end later, and its KV had all arrived before the last
    # stage computed it.
    cfg = cluster(_pp("prefill", 2), instance("decode"), link_bw=1, link_latency=0, kv_transfer={"mode": "layerwise"})
    res = run(cfg, [(3000, 3, 0.122151763), (33, 2, 0.165102743)])
    assert all(r.status == "finished" for r in res.requests)
    assert all(r.kv_transfer_end_s >= r.first_token_s for r in res.requests)


def test_a_prefill_only_request_leaves_with_its_first_token_whatever_it_was_recomputing(monkeypatch):
    # Preempted with its last chunk in flight, a request got that chunk's token while it waited or recomputed; the
    # pipelined prefill instance then recomputed it and sampled more tokens (up to 49 on one random cluster), so
    # requests of two tokens never left it, and a hand-off carrying several tokens outgrew the decode side's
    # reservation (internal error). vLLM's prefill instance was asked for one token: the first finishes it there.
    from pdsim.engine import handoff as engine_handoff

    tokens_at_handoff: list[int] = []
    hand_off = engine_handoff.HandOff._hand_off

    def counted(self, src, req):
        tokens_at_handoff.append(req.num_generated)
        hand_off(self, src, req)

    monkeypatch.setattr(engine_handoff.HandOff, "_hand_off", counted)
    cfg = cluster(_pp("prefill", 4, block_size=8, long_prefill_token_threshold=64), _pp("decode", 1))
    res = run(cfg, _mixed_trace(0, 40, 200.0), kv_gpu_blocks={"n0.i0": 80})
    finished = [r for r in res.requests if r.status == "finished"]
    assert sum(r.preemptions for r in finished) and set(tokens_at_handoff) == {1}
    assert all(r.decode_instance == "n0.i1" for r in finished if r.output_toks > 1)


def test_a_layerwise_transfer_from_a_busy_pipelined_prefill_feeds_the_earlier_chunks_at_once(monkeypatch):
    # The final chunk of a long prompt launched while the first stage was still busy: its start was in the
    # future, the layers counted as done came out negative, and the KV of the earlier chunks, ready now, was fed
    # below its size (and only reached it by the step's start).
    from pdsim.engine import network as engine_network

    fed: list[tuple[int, int]] = []
    start = engine_network.Network.start

    def watched(self, path, nbytes, on_done, delay_after_s=0.0, fed_bytes=None, endpoints=("", "")):
        fed.append((nbytes, fed_bytes))
        return start(self, path, nbytes, on_done, delay_after_s, fed_bytes, endpoints)

    monkeypatch.setattr(engine_network.Network, "start", watched)
    cfg = cluster(_pp("prefill", 2), instance("decode"), link_bw=1, link_latency=0, kv_transfer={"mode": "layerwise"})
    res = run(cfg, [(3000, 3, 0.0)])
    assert res.requests[0].status == "finished" and len(fed) == 1
    total, first = fed[0]
    chunks = [2048, 952]  # the prompt's two chunks at the default budget; the first is done when the last launches
    assert first == pytest.approx(total * chunks[0] / sum(chunks), rel=1e-9)


@pytest.mark.parametrize("ttft_mode", ["prefill", "client"])
def test_a_late_prompt_token_on_a_pipelined_prefill_instance_is_no_decoded_token(ttft_mode):
    # The second request is preempted while its last prompt chunk is in flight: that chunk's token comes late.
    cfg = cluster(_pp("prefill", num_gpu_blocks_override=250, long_prefill_token_threshold=1024), instance("decode"),
                  link_bw=50, link_latency=5000)
    res = run(cfg, [(n, 5, 0.0) for n in (3000, 1500, 2000, 1700, 3000)], ttft_mode=ttft_mode)
    prefill, decode = res.instances
    assert any(r.preemptions for r in res.requests) and all(r.status == "finished" for r in res.requests)
    assert prefill.stats.decode_tokens == 0
    per_request = 5 if ttft_mode == "client" else 4  # behind the proxy the decode instance makes every token
    assert decode.stats.decode_tokens == per_request * len(res.requests)


@pytest.mark.parametrize("stop_s", [6.5, 9.0])
def test_a_pipeline_stopped_by_the_clock_while_busy_counts_its_busy_time(stop_s):
    # The busy span was closed only when the pipeline emptied: one kept busy to the stop showed 0%.
    from pdsim.engine.cluster import simulate
    from tests.helpers import trace

    cfg = cluster(instance(None, max_num_seqs=8, pp_size=2, num_npus=2))
    reqs = trace([(300, 400 + 7 * i, 0.01 * i) for i in range(40)])
    res = simulate(cfg, reqs, SimOptions(max_sim_time_s=stop_s))
    busy = summarize(res, requests_frame(res))["instances"][0]["busy_fraction"]
    whole = simulate(cfg, reqs, SimOptions())
    assert busy == pytest.approx(1.0) and whole.instances[0].stats.busy_s == pytest.approx(whole.sim_end_s)


@pytest.mark.parametrize("layout", ["moe_dp_group", "async_4_stages"])
def test_busy_time_is_counted_up_to_the_last_finish(layout):
    # Steps that run after the last request finished (a DP group's tail of dummy micro-batches, the steps an async
    # pipeline decided ahead) are not the run's busy time: they took the busy share to 152% and 104%.
    if layout == "moe_dp_group":
        rank = {"model_name": "Qwen/Qwen3-30B-A3B-Instruct-2507", "hardware": "RTXPRO6000",
                "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0}, "tp_size": 1, "pp_size": 2,
                "num_npus": 2, "ep_size": 2, "dp_group": "A", "pd_type": None}
        res = run(cluster(rank, dict(rank)), [(200, 20, 0.0)])
    else:
        engine = {"model_name": "meta-llama/Llama-3.1-8B", "hardware": "RTXPRO6000", "pd_type": None,
                  "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0}, "gpu_memory_utilization": 0.9,
                  "tp_size": 1, "max_num_seqs": 4, "max_num_batched_tokens": 195, "block_size": 16,
                  "enable_prefix_caching": False, "async_scheduling": True, "pp_size": 4, "num_npus": 4}
        res = run(cluster(engine), [(210, 52, 0.0), (246, 61, 0.001), (184, 79, 0.002)], kv_gpu_blocks={"n0.i0": 57})
    assert all(r.status == "finished" for r in res.requests)
    for inst in summarize(res, requests_frame(res))["instances"]:
        assert 0.9 < inst["busy_fraction"] <= 1 + 1e-12, inst
        assert all(share <= 1 + 1e-12 for share in inst["stage_busy_fraction"]), inst


def test_a_stage_whose_norms_are_fused_into_the_all_reduce_is_not_charged_a_final_norm_it_never_ran():
    # With the all-reduce + norm fusion asked for (vLLM leaves it off under PP by default), a step of up to the
    # fused size prices no norms, the final one included: the first stage takes off only the logits it does not run.
    pred = _built(cluster(instance(None, 80, "H100", pp_size=2, tp_size=2, num_npus=4,
                                   allreduce_rms_fusion=True))).predictor
    first = pred.stages[0]
    assert first.fused_norm_tokens is not None and first.fused_norm_tokens >= 64
    step_us = first.step_time_s((), 64, 64 * 500) * 1e6
    logits_us = pred._lm_head(64) + pred._sampler(64)
    assert pred.stage_times_s((), 64, 64 * 500)[0] * 1e6 == pytest.approx(step_us - logits_us, rel=1e-12)


def test_a_stage_takes_off_the_embedding_and_final_norm_at_the_steps_graphed_size():
    # vLLM runs a decode of 61 requests as its CUDA graph of 64: each stage's predictor priced the embedding and the
    # final norm at 64 tokens, so the stages that do not run them take off those of 64, not of 61.
    pred = _built(cluster(_pp())).predictor
    assert pred.full.graphed_tokens(61, 61) == 64
    assert pred._embedding(64) != pred._embedding(61) and pred._final_norm(64) != pred._final_norm(61)
    kv = 61 * 500
    first, last = (stage.step_time_s((), 61, kv) * 1e6 for stage in pred.stages)
    stage_us = [s * 1e6 for s in pred.stage_times_s((), 61, kv)]
    assert stage_us[0] == pytest.approx(first - pred._final_norm(64) - pred._lm_head(61) - pred._sampler(61), rel=1e-12)
    assert stage_us[1] == pytest.approx(last - pred._embedding(64), rel=1e-12)


def test_a_link_bw_lists_pp_entry_is_read_both_ways_as_its_tp_entry():
    # [tp, pp, between instances]: the TP entry was halved (both directions, as LLMServingSim's configs write GPU
    # links) while the PP entry was taken one way, so [128, 128, 16] sent activations at twice the TP link's rate.
    inst = _built(cluster(_pp(), link_bw=[128, 96, 16], link_latency=[500, 700, 20000]))
    send = inst.predictor.send
    assert (send.bw_gbps, send.latency_ns) == (48.0, 700.0)
    assert "the PP dimension of the config's link_bw/link_latency lists (both directions together" in send.source
    # A one-value list gives every dimension its value, the PP link too, from the config, not the GPU's spec.
    one = _built(cluster(_pp(), link_bw=[128], link_latency=[500])).predictor.send
    assert (one.bw_gbps, one.latency_ns) == (64.0, 500.0) and "link_bw/link_latency lists" in one.source


def test_only_the_last_stage_reserves_the_sampler_and_moe_models_hold_their_ends_on_every_stage():
    # vLLM's profile_run runs the dummy sampler on the last pipeline rank alone; each stage sizes its own cache,
    # and the fewest blocks bind.
    from pdsim.models import load_model
    from pdsim.perf import memory
    from pdsim.perf.pipeline import ENDS_ON_EVERY_STAGE, pipeline_kv_budget

    model = load_model(MODEL)
    cfg = cluster(_pp(max_num_seqs=1024, max_num_batched_tokens=8192)).instances()[0].config
    whole = memory.activation_peak_bytes(model, "bfloat16", 1, 8192, 1024)
    forward = memory.activation_peak_bytes(model, "bfloat16", 1, 8192, 1024, with_sampler=False)
    assert forward < whole
    staged = pipeline_kv_budget(cfg, model, whole, forward, "x")
    conservative = pipeline_kv_budget(cfg, model, whole, whole, "x")  # the whole peak on every stage
    assert staged.per_stage_blocks[1] == conservative.per_stage_blocks[1]  # the last stage: the same
    assert staged.per_stage_blocks[0] > conservative.per_stage_blocks[0]  # the first: the sampler's share more
    # Qwen3-MoE builds its embedding, final norm and LM head on every stage (vLLM's qwen3_moe.py).
    qwen = load_model("Qwen/Qwen3-30B-A3B")
    assert qwen.architecture in ENDS_ON_EVERY_STAGE
    parts = [stage_weight_bytes(qwen, s, "bfloat16", 1, None, None) for s in pp_stages(qwen.num_layers, 2)]
    ends = 2 * qwen.vocab_per_shard(1) * qwen.hidden_size * 2 + qwen.hidden_size * 2  # untied: both matrices
    assert sum(parts) == qwen.weight_bytes("bfloat16") + ends
