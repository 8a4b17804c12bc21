"""The P/D hand-off: a prefill-only instance's finished prompt goes to a decode instance, which
reserves blocks and pulls the KV cache over the network; the prefill side holds its blocks until
the transfer is over and its engine has polled for it (Instance.kv_read). Layer-wise mode hands off
as the final prefill step begins."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import simpy

from pdsim.engine.dp_group import DPGroup, route
from pdsim.engine.instance import Instance
from pdsim.engine.kv_cache import blocks_for
from pdsim.engine.kv_transfer import KVTransfers
from pdsim.engine.request import Request
from pdsim.engine.router import Router
from pdsim.engine.step_plan import StepPlan


def recompute_fits(inst: Instance, req: Request) -> bool:
    """Without chunked prefill a preempted request recomputes its prompt and what it generated in
    one step, so that must fit the token budget or the request blocks its queue forever. vLLM
    refuses max_num_batched_tokens < max_model_len then; pdsim rejects the longer requests with a
    reason instead, as vLLM run with max_model_len = max_num_batched_tokens would. A prefill-only
    instance hands the request off with its first token, so only the prompt is ever recomputed there."""
    if inst.spec.enable_chunked_prefill:
        return True
    tokens = req.input_toks if inst.pd_type == "prefill" else req.input_toks + req.output_toks
    return tokens <= inst.spec.max_num_batched_tokens


def fits_decode(dec: Instance, src: Instance, req: Request) -> bool:
    """Whether decode instance `dec` can ever continue `req` from `src`: same model (a heterogeneous
    pool may mix hardware and TP, never weights), and room for the whole sequence."""
    return (dec.spec.model_name == src.spec.model_name and recompute_fits(dec, req)
            and blocks_for(req.input_toks + req.output_toks, dec.kv.block_size) <= dec.kv.most_per_request)


def fit_class(inst: Instance) -> tuple:
    """What fits_decode and the cluster's admission check read of `inst`: instances alike in these
    answer them alike for every request."""
    spec = inst.spec
    return (spec.model_name, inst.pd_type, spec.enable_chunked_prefill, spec.max_num_batched_tokens,
            inst.kv.block_size, inst.kv.num_blocks)


class FitClasses:
    """A pool of instances grouped by fit_class, so that a per-request fit check costs one call per
    class instead of one per instance (a sweep's large clusters are a few classes of many instances)."""

    def __init__(self, pool: Sequence[Instance]) -> None:
        self.pool = list(pool)
        self.classes = [fit_class(inst) for inst in self.pool]
        self.first: dict[tuple, Instance] = {}  # each class's first instance, in pool order
        for key, inst in zip(self.classes, self.pool):
            self.first.setdefault(key, inst)

    def select(self, fits: Callable[[Instance], bool]) -> list[Instance]:
        """The instances for which fits holds, in pool order."""
        ok = {key: fits(inst) for key, inst in self.first.items()}
        if all(ok.values()):
            return list(self.pool)
        return [inst for inst, key in zip(self.pool, self.classes) if ok[key]]

    def any(self, fits: Callable[[Instance], bool]) -> bool:
        return any(fits(inst) for inst in self.first.values())


class HandOff:
    """Moves requests from prefill to decode instances; wired to the instances' callbacks."""

    def __init__(self, env: simpy.Environment, kv_transfers: KVTransfers, instances: Sequence[Instance],
                 decode_router: Router, group_of: dict[str, DPGroup]) -> None:
        self.env = env
        self.kv_transfers = kv_transfers
        self.by_id = {inst.id: inst for inst in instances}
        self.decode_pool = [i for i in instances if i.pd_type == "decode"]
        self.decode_classes = FitClasses(self.decode_pool)
        self.decode_router = decode_router
        self.group_of = group_of  # a DP group's coordinator picks the rank (dp_group.route)
        self._early_handoffs: set[int] = set()  # layer-wise: handed off as their final prefill step began
        self._arrived_early: set[int] = set()  # ... whose KV arrived before that step's end was processed

    def on_prefill_step(self, src: Instance, plan: StepPlan, start_s: float, duration_s: float) -> None:
        """Layer-wise mode: a request whose final prefill chunk starts now is handed off now, so that
        its decode-side blocks can be reserved and its KV streamed while the layers compute."""
        if not self.kv_transfers.layerwise or src.pd_type != "prefill":
            return
        for (req, num_new), prior in zip(plan.prefill, plan.prefill_prefix):
            completes = req.num_computed + num_new >= req.input_toks + req.num_generated
            if completes and src.sched.hands_off(req, req.num_generated + 1):
                self.kv_transfers.note_final_step(req, start_s, duration_s, prior, num_new)
                self._early_handoffs.add(req.id)
                self._hand_off(src, req)

    def on_handoff(self, src: Instance, req: Request) -> None:
        """Prefill done on a prefill-only instance: pick a decode instance, wait there for blocks."""
        if req.id in self._early_handoffs:
            self._early_handoffs.discard(req.id)
            if req.id in self._arrived_early:
                self._arrived_early.discard(req.id)
                self._kv_arrived(src, self.by_id[req.decode_instance], req)
            return
        self._hand_off(src, req)

    def _hand_off(self, src: Instance, req: Request) -> None:
        req.handoff_s = self.env.now
        # The prefill instance keeps these blocks until the transfer is over and it has polled for it.
        req.prefill_blocks = req.blocks
        req.prefill_cache_keys, req.cache_keys = req.cache_keys, None
        src.hold_for_transfer(req.blocks, req.prefill_cache_keys)
        req.blocks = 0
        req.status = "handoff"
        candidates = self.decode_classes.select(lambda d: fits_decode(d, src, req))
        # Any policy first looks among the instances that can take the KV now, so a request does
        # not queue behind a full decode instance while another has room; only when all are full
        # does it wait in the pending queue of the one the policy picks.
        with_room = [d for d in candidates if d.has_room_for(req)]
        if with_room and self.group_of:
            # A DP group's coordinator picks its rank by load alone (vLLM's DP load balancer: 4 x waiting + running),
            # not by room: a group with room on any rank offers every rank, and the request may wait on a full one.
            roomy = {self.group_of[d.id] for d in with_room if d.id in self.group_of}
            with_room = [d for d in candidates if d in with_room or self.group_of.get(d.id) in roomy]
        dec = route(self.decode_router, with_room or candidates, self.group_of, req)
        req.decode_instance = dec.id
        dec.receive_handoff(req)

    def on_reserved(self, dec: Instance, req: Request) -> None:
        """Decode-side blocks are reserved: pull the KV cache over the network (pull model)."""
        src = self.by_id[req.prefill_instance]
        req.kv_transfer_start_s = self.env.now
        req.status = "kv_transfer"

        def done() -> None:
            req.kv_transfer_end_s = self.env.now
            if req.id in self._early_handoffs:
                # Layer-wise KV all arrived in the same instant the final prefill step ends: let
                # that step finish first, so the request leaves the prefill instance in order.
                self._arrived_early.add(req.id)
                return
            self._kv_arrived(src, dec, req)

        self.kv_transfers.start(src, dec, req, done)

    def _kv_arrived(self, src: Instance, dec: Instance, req: Request) -> None:
        src.kv_read(req.prefill_blocks, req.prefill_cache_keys)
        req.prefill_blocks = 0
        req.prefill_cache_keys = None
        req.kv_ready = True
        if dec.regenerates_first_token:
            # vLLM's P/D proxy: the decode instance gets the prompt alone, with its KV but the last token's
            # (vLLM's scheduler recomputes that token to sample from: _update_waiting_for_remote_kv), and
            # makes every output token, the first included.
            req.num_computed -= 1
            req.num_generated -= 1
        dec.receive_kv(req)
