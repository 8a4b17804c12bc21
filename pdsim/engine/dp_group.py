"""A data-parallel group: instances sharing a `dp_group` (vLLM's data_parallel_size ranks).

Routing (vLLM's DP coordinator, v1/engine/core_client.py DPLBAsyncMPClient): the cluster router
sees the group as one unit, for arrivals and for P/D hand-offs alike (`route`); inside it a request
goes to the rank with the lowest 4 x waiting + running requests, ties to the lowest rank, a decode
rank's hand-offs whose KV is still to come counted as waiting. vLLM scores ranks on counts the
coordinator publishes every 100 ms plus what the client itself sent since; pdsim uses the exact
counts at the arrival.

Lock step (MoE groups only: vLLM runs the ranks of a dense model as independent engines). A MoE
layer is a collective over the group's expert-parallel ranks, so in every step all ranks run a
forward pass together: a rank with no work runs a dummy batch of one token (vLLM's
`execute_dummy_batch`), and the step lasts as long as the slowest rank's own part (attention,
dense ops, sampling: its own batch) plus the MoE layers at the group's total token count, their
router gate and shared experts at the busiest rank's own (pdsim/perf/moe_time.py).

Waves (vLLM 0.19, v1/engine/core.py `DPEngineCoreProc.run_busy_loop`): the ranks ask each other
whether any still has requests only every 32 steps, counted from the first step of the group's
wave, so ranks that have run out of work keep running dummy batches until that check; then the
group sleeps until a request arrives, which starts a new wave. A rank whose requests wait for their
KV (a hand-off in transfer, or arrived and not yet scheduled) still has unfinished requests, so the
group keeps stepping past the check; such a rank, stepping dummy batches, sees a transfer that ended
during one only at its next step's KV connector poll, after that step's decision
(Instance.receive_kv). Ranks whose requests wait for room are not counted (pdsim's group sleeps).

Padding (vLLM 0.19, v1/worker/dp_utils.py `coordinate_batch_across_dp`, gpu_model_runner.py
`_determine_batch_execution_and_padding`): each rank's CUDA-graph dispatcher pads its batch to its capture size
where it finds a graph (at most `max_cudagraph_capture_size` tokens, vLLM's default min(2 x max_num_seqs, 512,
max_num_batched_tokens); under FULL_DECODE_ONLY, v1/cudagraph_dispatcher.py, only batches of one token per request,
at most max_num_seqs). When every rank's does, all pad to the largest of them, so the MoE layers see ranks x that
many tokens and every rank's own token-parallel ops and TP collectives (an idle rank's dummy batch's too) run at that
count; when some rank's finds none (a larger step, a prefill under FULL_DECODE_ONLY), the group runs without graphs
and each rank at its own count, the dispatcher's padded one where it found a graph (`all_gatherv` of those sizes).
Under enforce_eager or cudagraph_mode NONE nothing pads.

The barrier: every rank, after its scheduling decision, hands its plan to `step`; the last one
to arrive prices the step and releases all of them, each then lets the same duration pass.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

import simpy

from pdsim.config import ClusterConfig
from pdsim.engine.step_plan import StepPlan
from pdsim.hardware import get_hardware
from pdsim.perf.cudagraphs import graph_size
from pdsim.perf.moe_time import MoELayerModel

# vLLM's DPEngineCoreProc._has_global_unfinished_reqs: the all-reduce of "any rank unfinished" runs
# only every this many steps.
WAVE_CHECK_STEPS = 32

if TYPE_CHECKING:
    from pdsim.engine.instance import Instance
    from pdsim.engine.request import Request
    from pdsim.engine.router import Router


class DPGroup:
    def __init__(self, env: simpy.Environment, name: str, members: Sequence[Instance],
                 moe_layer: MoELayerModel | None) -> None:
        self.env = env
        self.name = name
        self.members = list(members)
        self.moe_layer = moe_layer
        self.lockstep = moe_layer is not None and len(self.members) > 1
        self._plans: dict[str, StepPlan] = {}
        self._released: simpy.Event | None = None
        self.num_steps = 0
        self.step_has_work = False  # whether some rank has work in the step last priced
        self.wave_steps = 0  # steps since the wave began (module docstring)
        self.dummy_steps: dict[str, int] = {m.id: 0 for m in self.members}  # per rank
        # vLLM's CUDA graphs, fixed by the engine's arguments, which its ranks share: for the padding.
        spec = self.members[0].spec
        self._graph_sizes = spec.cudagraph_sizes
        self._graphs_decode_only = spec.cudagraph_decode_only

    # -- routing --------------------------------------------------------------------------------
    @property
    def load_tokens(self) -> int:
        return sum(m.load_tokens for m in self.members)

    def choose_rank(self, candidates: Sequence[Instance]) -> Instance:
        def score(inst: Instance) -> int:
            # vLLM's waiting requests include a decode rank's hand-offs whose KV is still to come
            return 4 * inst.num_waiting + len(inst.sched.running) + inst.sched.num_in_flight

        return min(candidates, key=score)  # min keeps the first (lowest rank) of equal scores

    # -- lock step ------------------------------------------------------------------------------
    def step(self, inst: Instance, plan: StepPlan) -> Generator[simpy.Event, float | None, float | None]:
        """Wait until every rank has decided; seconds the group step lasts, None when no rank
        has work and the wave ends (the ranks then idle)."""
        self._plans[inst.id] = plan
        if self._released is None:
            self._released = self.env.event()
        released = self._released
        if len(self._plans) < len(self.members):
            for member in self.members:
                if member.id not in self._plans:
                    member.wake_for_group()
            return (yield released)
        seconds = None
        if not (all(p.empty for p in self._plans.values()) and self._wave_ends()):
            self.num_steps += 1
            self.wave_steps += 1
            seconds = self._price()
        self._plans = {}
        self._released = None
        released.succeed(seconds)
        return seconds

    def _wave_ends(self) -> bool:
        """No rank has work: whether the group stops now (at a wave check), else every rank runs a dummy batch."""
        if self.wave_steps % WAVE_CHECK_STEPS or any(member.awaits_kv for member in self.members):
            return False
        self.wave_steps = 0
        return True

    def _price(self) -> float:
        """Seconds the group's step lasts (some rank may have work)."""
        self.step_has_work = not all(plan.empty for plan in self._plans.values())
        counts = self._run_counts()
        slowest_s = 0.0
        for member, count in zip(self.members, counts):
            plan = self._plans[member.id]
            if plan.empty:
                own_s = member.predictor.dummy_step_s(graph_tokens=count)
                self.dummy_steps[member.id] += 1
            else:
                own_s = member.predictor.step_time_s(plan.chunks, plan.n_decode, plan.kv_decode_sum,
                                                     plan.kv_decode_max, graph_tokens=count)
            slowest_s = max(slowest_s, own_s)
        return slowest_s + self.moe_layer.step_us(sum(counts), max(counts)) * 1e-6

    def _run_counts(self) -> list[int]:
        """The token count each rank's step runs at this step (`_counts`), a dummy batch one token of one request."""
        plans = [self._plans[member.id] for member in self.members]
        return self._counts([(1, 1) if plan.empty else (sum(num_new for _, num_new in plan.prefill) + plan.n_decode,
                                                         len(plan.prefill) + plan.n_decode) for plan in plans])

    def _counts(self, steps: list[tuple[int, int]]) -> list[int]:
        """The token count each rank runs its token-parallel ops, TP collectives and MoE rows at, from its (new
        tokens, requests): its own capture size where its CUDA-graph dispatcher finds a graph (none above the largest
        size, nor under FULL_DECODE_ONLY for a step that is not one token per request), else its own count; and
        when every rank's finds one, the largest of those for all (module docstring)."""
        graphed = [graph_size(self._graph_sizes, self._graphs_decode_only, tokens, requests)
                   for tokens, requests in steps]
        own = [size or tokens for size, (tokens, _) in zip(graphed, steps)]
        return [max(own)] * len(own) if None not in graphed else own


def route(router: Router, candidates: Sequence[Instance], group_of: dict[str, DPGroup],
          req: Request | None = None) -> Instance:
    """The router picks an instance or a whole DP group, which then picks its rank (module docstring; a group is
    chosen by load: cache-aware policies look at single instances' caches)."""
    if not group_of or not any(c.id in group_of for c in candidates):
        return router.choose(candidates, req)
    units = list(dict.fromkeys(group_of.get(c.id, c) for c in candidates))
    unit = router.choose(units)
    if isinstance(unit, DPGroup):
        return unit.choose_rank([c for c in candidates if group_of.get(c.id) is unit])
    return unit


def build_dp_groups(env: simpy.Environment, cfg: ClusterConfig, by_id: dict[str, Instance]) -> list[DPGroup]:
    """The config's DP groups over the built instances; MoE groups step in lock step."""
    groups = []
    for name, refs in cfg.dp_groups().items():
        members = [by_id[ref.instance_id] for ref in refs]
        moe_layer = members[0].predictor.moe_layer if len(members) > 1 else None
        from pdsim.engine.pipeline_dp import PipelineDPGroup  # imports this module

        group = (PipelineDPGroup if members[0].spec.pp > 1 else DPGroup)(env, name, members, moe_layer)
        if group.lockstep:
            link, own = _group_link(cfg, refs)
            for member in members:
                member.predictor.notes.append(member.predictor.moe_layer.set_link(*link))
                if own is not None:
                    member.predictor.notes.append(own)
                member.dp_group = group
        groups.append(group)
    return groups


def _group_link(cfg: ClusterConfig, refs: list) -> tuple[tuple[float, float, str], str | None]:
    """(GB/s, ns, where from) of the link the ranks' MoE dispatch/combine crosses, with pdsim's
    topology rules (docs/pd_realism.md): a node's `intra_node_bw` fabric when the group is on one
    node that has one; else the config's link between instances, which in LLMServingSim's
    meaning is a scalar broadcast to every topology dimension or, as a list, the outermost
    (its DP-group topology is [tp, dp], innermost first). With it, a note where ranks on one node cross
    the config's link though their GPUs' own is faster (_own_link_note), else None."""
    nodes = {ref.node_index for ref in refs}
    if len(nodes) == 1:
        node = cfg.nodes[next(iter(nodes))]
        if node.intra_node_bw is not None:
            return (node.intra_node_bw, node.intra_node_latency, "the node's intra_node_bw fabric"), None
    where = "outermost link_bw/link_latency" if cfg.link_bw_per_dim is not None else "link_bw/link_latency"
    note = _own_link_note(cfg, refs[0].config.hardware) if len(nodes) == 1 else None
    return (cfg.link_bw, cfg.link_latency, f"the config's {where}"), note


def _own_link_note(cfg: ClusterConfig, hardware: str) -> str | None:
    """Said where ranks on one node cross the config's link though their GPUs' own is faster: kept, as LLMServingSim
    prices it (the shared MoE run agrees on that link, not on its GPUs', docs/moe.md), but a plan for other GPUs
    should know."""
    spec = get_hardware(hardware)
    if spec is None:
        return None
    given = cfg.gpu_link(0)  # a list's TP entry is the GPUs' link, as the TP all-reduce takes it
    own_gbps, how = (given[0], "by the config's link_bw list") if given else (spec.intra_node_bw_gbps,
                                                                              spec.intra_node_link)
    if own_gbps <= cfg.link_bw:
        return None
    return (f"MoE dispatch/combine: the ranks' {spec.name} GPUs share a node and link at {own_gbps:g} "
            f"GB/s each way ({how}), but the config's link_bw {cfg.link_bw:g} GB/s prices it, as in "
            "LLMServingSim: on the one measured MoE run (RTX PRO 6000, docs/moe.md) that agrees, the GPUs' own link "
            "comes out 6-12% fast on TPOT; a node's intra_node_bw sets another")
