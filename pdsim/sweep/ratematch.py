"""Rate matching: the analytic estimate of how many requests/s a P:D split sustains, from the
step-time predictor alone (no simulation), as DistServe's placement reasoning does.

- Prefill capacity of one prefill instance: requests/s with steps packed to the token budget
  (max_num_batched_tokens) at the mean prompt length: floor(budget / L) prompts per step when a
  prompt fits, else one prompt in ceil(L / budget) chunks.
- Decode capacity of one decode instance: the largest batch n with n <= max_num_seqs, KV for n
  requests at mid-generation (prompt + output/2 tokens) within the instance's KV blocks, and the
  step time at that batch and mean context <= the TPOT SLO; then n / (output length x step time).
  When even a batch of one misses the SLO the pool has no capacity under it (0), and the rate at
  batch one is kept only as where a search starts.
- A decode DP group (MoE, lock step) is dp ranks at the same batch, each step paying the MoE layers
  at the group's dp x n tokens (pdsim/engine/dp_group.py).
- Pipeline stages whose micro-batches overlap (sync scheduling): a prefill step holds the instance for
  its slowest stage; a decode batch of n is one micro-batch of n / P per stage, and a request's
  tokens come every max(P x slowest stage, whole traversal) of such a micro-batch. Async scheduling
  runs one step at a time: the whole traversal (docs/pipeline.md).
- A split's capacity is min(P x prefill, D x decode): the slower pool is the bottleneck.
- Colocated: each instance spends 1/prefill + 1/decode seconds per request, so 1 / (that sum);
  this ignores that chunked prefill rides along with decode steps, so it is pessimistic for
  short prompts.
- KV transfer of a split: the prompt's KV (kv_transfer.kv_transfer_bytes at the mean prompt) over the
  links the hand-offs cross at the rate they achieve (topology.py), requests spread evenly over the P x D
  pairs: each link (a pair's own, an instance's NIC or fabric port) carries the share of the pairs that
  cross it, and the narrowest in that sense sets the rate. Decode-side prefix hits, which send less, are
  not counted. A capacity below both pools' makes the link the bottleneck.
It ignores queueing (TTFT tails) and the transfers' fixed costs, which is why the simulation can disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import simpy

from pdsim.engine.cluster import Cluster, SimOptions
from pdsim.engine.instance import Instance, StepTimeModel
from pdsim.engine.kv_cache import blocks_for
from pdsim.engine.kv_transfer import kv_transfer_bytes
from pdsim.perf.pipeline_time import AsyncPipelinePredictor, PipelinePredictor
from pdsim.sweep.expand import Variant


@dataclass(frozen=True)
class Lengths:
    mean_input: float
    mean_output: float


@dataclass(frozen=True)
class Estimate:
    label: str
    prefill_req_s_per_inst: float
    decode_req_s_per_inst: float
    decode_batch: int
    capacity_req_s: float
    bottleneck: str  # "prefill", "decode", "link" or "colocated"
    # Where a goodput search starts: the capacity, or, when batch one already misses the TPOT SLO,
    # the capacity at batch one (the simulated TPOT spreads around the mean-context estimate).
    start_req_s: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _overlapped(pred: StepTimeModel | PipelinePredictor) -> bool:
    """Pipeline stages whose micro-batches overlap (synchronous scheduling; docs/pipeline.md)."""
    return getattr(pred, "num_stages", 1) > 1 and not isinstance(pred, AsyncPipelinePredictor)


def _prefill_step_s(pred: StepTimeModel | PipelinePredictor, chunks: tuple[tuple[int, int], ...]) -> float:
    """Seconds a prefill step holds the instance: overlapping stages take a new micro-batch as fast as
    the slowest stage frees up; otherwise the whole step."""
    if _overlapped(pred):
        return max(pred.stage_times_s(chunks, 0, 0))
    return pred.step_time_s(chunks, 0, 0)


def _decode_interval_s(pred: StepTimeModel | PipelinePredictor, n: int, context: int) -> float:
    """Seconds between two tokens of one request at decode batch n. With overlapping stages the n
    requests are spread over one micro-batch per stage; a request's next step waits for its micro-batch
    to pass every stage, and each stage runs every micro-batch in turn."""
    if not _overlapped(pred):
        return pred.step_time_s((), n, n * context)
    m = -(-n // pred.num_stages)
    return max(pred.num_stages * max(pred.stage_times_s((), m, m * context)), pred.step_time_s((), m, m * context))


def prefill_rate(inst: Instance, mean_input: float) -> float:
    """Requests/s one instance prefills with every step filled to its token budget."""
    length = max(1, round(mean_input))
    budget = inst.spec.max_num_batched_tokens
    pred = inst.predictor
    if length <= budget:
        k = min(budget // length, inst.spec.max_num_seqs)
        return k / _prefill_step_s(pred, tuple([(length, 0)] * k))
    seconds, done = 0.0, 0
    while done < length:
        chunk = min(budget, length - done)
        seconds += _prefill_step_s(pred, ((chunk, done),))
        done += chunk
    return 1.0 / seconds


def decode_rate(inst: Instance, lengths: Lengths, tpot_slo_ms: float,
                group_ranks: int = 1) -> tuple[float, int, bool]:
    """(requests/s, batch, SLO met) one instance decodes at the largest batch that meets the TPOT SLO,
    or at batch one, not met, when even that misses it. A rank of a MoE DP group of `group_ranks` (all
    at the same batch) adds the MoE layers at the group's tokens."""
    out = max(1.0, lengths.mean_output)
    context = round(lengths.mean_input + out / 2)  # mean KV length over a request's decode
    per_req_blocks = blocks_for(context, inst.kv.block_size) + inst.kv.window_blocks  # and its sliding window's
    n_max = min(inst.spec.max_num_seqs, inst.kv.num_blocks // max(1, per_req_blocks))
    best_n, best_step = 0, math.inf
    for n in range(1, max(1, n_max) + 1):
        step_s = _decode_interval_s(inst.predictor, n, context)
        if group_ranks > 1 and inst.predictor.moe_layer is not None:
            step_s += inst.predictor.moe_layer.step_us(group_ranks * n, n) * 1e-6
        if step_s * 1e3 > tpot_slo_ms and n > 1:
            break
        best_n, best_step = n, step_s
    if best_n == 0:
        return 0.0, 0, False
    return best_n / (out * best_step), best_n, best_step * 1e3 <= tpot_slo_ms


def link_rate(cluster: Cluster, lengths: Lengths) -> float:
    """Requests/s the hand-offs' links carry with each request's prompt KV sent to each of the P x D pairs
    alike: every link (a pair's own, or an instance's NIC or fabric port) carries the share of the requests
    whose pair crosses it, so the rate is the least of capacity / (share x bytes per request)."""
    prefills = [i for i in cluster.instances if i.pd_type == "prefill"]
    decodes = [i for i in cluster.instances if i.pd_type == "decode"]
    if not prefills or not decodes:
        return math.inf
    pairs_over: dict[str, int] = {}
    links = {}
    for src in prefills:
        for dst in decodes:
            for link in cluster.topology.path(src, dst):
                pairs_over[link.name] = pairs_over.get(link.name, 0) + 1
                links[link.name] = link
    pairs = len(prefills) * len(decodes)
    bytes_per_s = min(links[name].capacity_bytes_per_s * pairs / count for name, count in pairs_over.items())
    src, dst = prefills[0], decodes[0]
    model = cluster.kv_transfers.models[src.spec.model_name]  # as P/D engines cache it
    per_request = kv_transfer_bytes(model, max(1, round(lengths.mean_input)), src.spec.block_size,
                                    src.spec.kv_dtype or src.spec.dtype, dst.spec.tp, cluster.cfg.kv_transfer.dtype)
    return bytes_per_s / per_request if per_request > 0 else math.inf


def estimate(variant: Variant, lengths: Lengths, tpot_slo_ms: float, opts: SimOptions | None = None,
             cluster: Cluster | None = None) -> Estimate:
    # Building the cluster (not running it) gives each instance's predictor and KV size exactly
    # as the simulation will have them; `cluster` is that build where the caller made it already.
    cluster = cluster or Cluster(simpy.Environment(), variant.config(), opts or SimOptions(), variant.label)
    if variant.colocated:
        inst = cluster.instances[0]
        p = prefill_rate(inst, lengths.mean_input)
        d, n, met = decode_rate(inst, lengths, tpot_slo_ms)
        per_inst = 1.0 / (1.0 / p + 1.0 / d) if p > 0 and d > 0 else 0.0
        total = per_inst * len(cluster.instances)
        return Estimate(variant.label, p, d, n, total if met else 0.0, "colocated", total)
    p_inst = next(i for i in cluster.instances if i.pd_type == "prefill")
    d_inst = next(i for i in cluster.instances if i.pd_type == "decode")
    p = prefill_rate(p_inst, lengths.mean_input)
    d, n, met = decode_rate(d_inst, lengths, tpot_slo_ms, variant.dp_decode)
    p_cap, d_cap = variant.num_prefill * p, variant.num_decode * variant.dp_decode * d
    link_cap = link_rate(cluster, lengths)
    cap = min(p_cap, d_cap, link_cap)
    bottleneck = ("decode" if not met else "link" if link_cap < min(p_cap, d_cap) else
                  "prefill" if p_cap <= d_cap else "decode")
    return Estimate(variant.label, p, d, n, cap if met else 0.0, bottleneck, cap)
