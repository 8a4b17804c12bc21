"""The whole cluster: instances built from the config, routing and admission, and the run itself.

The parts live beside it: run options (options.py), result types (result.py), building instances
(build.py), the P/D hand-off (handoff.py), sampling (monitor.py) and the clients
(pdsim/workload/clients.py). Their names are re-exported here for callers."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import simpy

from pdsim.config import ClusterConfig
from pdsim.engine.build import StepTimeFactory, build_instances
from pdsim.engine.dp_group import build_dp_groups, route
from pdsim.engine.handoff import FitClasses, HandOff, fits_decode, recompute_fits
from pdsim.engine.instance import Instance
from pdsim.engine.kv_cache import blocks_for
from pdsim.engine.kv_transfer import KVTransfers
from pdsim.engine.monitor import Monitor
from pdsim.engine.network import Network
from pdsim.engine.options import SimOptions
from pdsim.engine.request import NOT_ARRIVED, Request
from pdsim.engine.result import GIB, InstanceInfo, LinkSample, Sample, SimulationResult
from pdsim.engine.router import Router
from pdsim.engine.topology import Topology
from pdsim.errors import ConfigError
from pdsim.models import load_model
from pdsim.perf.predictor import StepTimePredictor
from pdsim.workload.clients import ClosedLoopClients, OpenLoop
from pdsim.workload.trace import TraceRequest, check_requests

__all__ = [
    "GIB", "Cluster", "InstanceInfo", "LinkSample", "Sample", "SimOptions", "SimulationResult",
    "StepTimeFactory", "simulate",
]


class Cluster:
    """Wires instances, routers, the hand-off and links together inside one SimPy environment."""

    def __init__(self, env: simpy.Environment, cfg: ClusterConfig, opts: SimOptions, source: str = "<config>",
                 step_times: StepTimeFactory = StepTimePredictor) -> None:
        self.env = env
        self.cfg = cfg
        self.opts = opts
        self.instances, self.infos = build_instances(env, cfg, opts, source, step_times)
        self.by_id = {inst.id: inst for inst in self.instances}
        self.dp_groups = build_dp_groups(env, cfg, self.by_id)
        self._group_of = {m.id: g for g in self.dp_groups for m in g.members}
        self.prefill_pool = [i for i in self.instances if i.pd_type in (None, "prefill")]
        self.decode_pool = [i for i in self.instances if i.pd_type == "decode"]
        self.prefill_router = Router(opts.prefill_policy or cfg.router.prefill_policy, opts.seed)
        self.decode_router = Router(opts.decode_policy or cfg.router.decode_policy, opts.seed + 1)
        self.models = {inst.spec.model_name: load_model(inst.spec.model_name) for inst in self.instances}
        self.network = Network(env)
        self.topology = Topology(cfg, self.instances)
        self.links = self.topology.links  # name -> Link, created as transfers first use them
        self.kv_transfers = KVTransfers(env, cfg.kv_transfer, self.topology, self.network, self.models)
        self.notes = _transfer_defaults_note(cfg, self.topology, [i for i in self.prefill_pool
                                                                  if i.pd_type == "prefill"], self.decode_pool)
        self.notes += _expert_parallel_default_note(cfg) + _sync_scheduling_default_note(cfg)
        # Client mode is vLLM's P/D proxy: it drops the prefill instance's token, and the decode instance
        # makes all of the output itself (docs/pd_realism.md).
        for inst in self.decode_pool:
            inst.regenerates_first_token = opts.ttft_mode == "client"
        for inst in self.prefill_pool:
            inst.sched.hands_off_all = inst.pd_type == "prefill" and opts.ttft_mode == "client"
        self.handoff = HandOff(env, self.kv_transfers, self.instances, self.decode_router, self._group_of)
        self.prefill_classes = FitClasses(self.prefill_pool)
        for inst in self.instances:
            inst.on_finish = self._on_finish
            inst.on_handoff = self.handoff.on_handoff
            inst.on_reserved = self.handoff.on_reserved
            inst.on_prefill_step = self.handoff.on_prefill_step
        self.monitor = Monitor(env, self.instances, self.network, self.links, opts.sample_interval_s)
        # The measured engine's own where validate read one above the model's (its --max-model-len); a shorter one
        # leaves the run's longer requests to be replayed as measured (validate says so).
        self.max_model_len = {name: max(m.max_model_len, opts.recorded_max_model_len or 0)
                              for name, m in self.models.items()}
        self.num_done = 0
        self.on_done: Callable[[Request], None] = lambda req: None

    # -- request flow ---------------------------------------------------------------------------
    def admit(self, req: Request) -> None:
        """Route a newly arrived request, or reject it with a reason when it can never run."""
        req.arrived = True
        candidates = self.prefill_classes.select(lambda inst: self._fits(inst, req))
        if not candidates:
            self._reject(req, self._why_not(req))
            return
        inst = route(self.prefill_router, candidates, self._group_of, req)
        req.prefill_instance = inst.id
        if inst.pd_type is None:
            req.decode_instance = inst.id
        inst.submit(req)

    def _fits(self, inst: Instance, req: Request) -> bool:
        if not self._fits_here(inst, req):
            return False
        if inst.sched.hands_off(req, 1):  # its prompt's token is the first
            return self.handoff.decode_classes.any(lambda d: fits_decode(d, inst, req))
        return True

    def _fits_here(self, inst: Instance, req: Request) -> bool:
        """Whether `inst` itself can take `req` (a prefill-only instance: its prompt), decode instances aside."""
        if req.input_toks + req.output_toks > self.max_model_len[inst.spec.model_name]:
            return False
        if not recompute_fits(inst, req):
            return False
        tokens = req.input_toks if inst.pd_type == "prefill" else req.input_toks + req.output_toks
        return blocks_for(tokens, inst.kv.block_size) <= inst.kv.most_per_request

    def _why_not(self, req: Request) -> str:
        total = req.input_toks + req.output_toks
        if all(total > self.max_model_len[i.spec.model_name] for i in self.prefill_pool):
            longest = max(self.max_model_len[i.spec.model_name] for i in self.prefill_pool)
            return f"input+output = {total} tokens exceeds the model's max length ({longest})"
        if all(not recompute_fits(i, req) for i in self.prefill_pool):
            return (f"input+output = {total} tokens (input alone on a prefill-only instance) exceeds "
                    "max_num_batched_tokens with chunked prefill disabled (vLLM starts so only with max_model_len "
                    "at most max_num_batched_tokens)")
        if self.decode_pool and all(not recompute_fits(d, req) for d in self.decode_pool):
            return (f"input+output = {total} tokens exceeds the decode instances' max_num_batched_tokens with "
                    "chunked prefill disabled (vLLM starts so only with max_model_len at most max_num_batched_tokens)")
        if self.prefill_pool and all(i.pd_type == "prefill" and not self._fits_here(i, req) for i in self.prefill_pool):
            short = [i for i in self.prefill_pool
                     if blocks_for(req.input_toks, i.kv.block_size) > i.kv.most_per_request]
            if len(short) < len(self.prefill_pool):  # the others cannot take it in one step (no chunked prefill)
                return (f"input = {req.input_toks} tokens: no prefill instance can take the prompt (too long for "
                        "the KV cache of some, for one step without chunked prefill on the others)")
            most = max(i.kv.most_per_request * i.kv.block_size for i in short)
            return (f"input = {req.input_toks} tokens needs more KV blocks than any prefill instance has (the "
                    f"largest holds {most:,} tokens)")
        prefill_only = [i for i in self.prefill_pool if i.pd_type == "prefill" and self._fits_here(i, req)]
        decodes = [d for d in self.decode_pool if any(d.spec.model_name == i.spec.model_name for i in prefill_only)]
        if decodes:  # a prefill instance could take it: no decode instance of its model can hold it
            most = max(d.kv.most_per_request * d.kv.block_size for d in decodes)
            return (f"input+output = {total} tokens needs more KV blocks than any decode instance has (the largest "
                    f"holds {most:,} tokens); the prefill instances have room for its prompt")
        return f"input+output = {total} tokens needs more KV blocks than any instance has"

    def _reject(self, req: Request, reason: str) -> None:
        req.status = "rejected"
        req.reason = reason
        self.num_done += 1
        self.on_done(req)

    def _on_finish(self, req: Request) -> None:
        self.num_done += 1
        self.on_done(req)


def simulate(
    cfg: ClusterConfig,
    trace: Sequence[TraceRequest],
    opts: SimOptions | None = None,
    source: str = "<config>",
    on_sample: Callable[[float, list[Sample]], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    step_times: StepTimeFactory = StepTimePredictor,
) -> SimulationResult:
    """Run the trace through the cluster until every request has finished, been rejected, or the
    time limit is reached (what is left is reported unfinished with the reason).
    step_times: makes each instance's step-time model (called as StepTimePredictor is)."""
    if not isinstance(cfg, ClusterConfig):
        raise ConfigError(f"simulate: expected a ClusterConfig (pdsim.config.load_cluster_config), got {cfg!r:.80}")
    opts = SimOptions() if opts is None else opts
    if not isinstance(opts, SimOptions):
        raise ConfigError(f"simulate: expected SimOptions or None as the options, got {opts!r:.80}")
    opts.check()
    trace = check_requests(trace)
    env = simpy.Environment()
    cluster = Cluster(env, cfg, opts, source, step_times)
    requests = [Request(t.request_id, t.input_toks, t.output_toks, t.arrival_time_ns * 1e-9,
                        hash_ids=t.hash_ids, hash_block_tokens=t.hash_block_tokens) for t in trace]
    total = len(requests)
    if opts.concurrency is None:
        # By arrival (stable: ties keep the trace's order): the readers sort, a caller's list may not be.
        arrivals = OpenLoop(env, sorted(requests, key=operator.attrgetter("arrival_s")), cluster.admit)
        for inst in cluster.instances:
            inst.arrival_due = arrivals.arrival_due
        clients = arrivals.run()
    else:  # the closed loop replaces the trace's arrival times
        closed = ClosedLoopClients(env, requests, cluster.admit, opts.concurrency, opts.seed,
                                   opts.client_start_spread_s, opts.client_delay_s, opts.client_send_gaps_s)
        cluster.on_done = closed.on_done
        clients = closed.start()

    all_done = env.event()
    forward_done = cluster.on_done

    def on_done(req: Request) -> None:
        forward_done(req)
        if cluster.num_done >= total and not all_done.triggered:
            all_done.succeed(env.now)

    def freeze_busy(_: simpy.Event) -> None:
        # Processed once the step that finished the last request has been counted: what runs after (steps decided
        # ahead, a DP group's tail) is not the run's busy time.
        for inst in cluster.instances:
            inst.freeze_busy()

    cluster.on_done = on_done
    all_done.callbacks.append(freeze_busy)
    env.process(clients)
    env.process(cluster.monitor.run(lambda: cluster.num_done, total, all_done, on_sample, on_progress))
    env.run(until=opts.max_sim_time_s)
    end = all_done.value if all_done.triggered else env.now
    monitor = cluster.monitor
    if not all_done.triggered and monitor.samples and monitor.samples[-1].time_s < env.now:
        # Stopped by --max-sim-time between two samples: the timeline ends with the state it stopped in.
        monitor.samples.extend(monitor.sample())
        monitor.sample_links()
    if not all_done.triggered:
        for inst in cluster.instances:
            inst.settle_run_cut_by_clock()
    for req in requests:
        if req.status not in ("finished", "rejected"):
            req.reason = _unfinished_reason(req, opts, end)
            req.status = "unfinished"
    return SimulationResult(
        requests=requests, instances=cluster.instances, infos=cluster.infos, links=cluster.links,
        samples=cluster.monitor.samples, sim_end_s=end,
        link_samples=cluster.monitor.link_samples, ttft_mode=opts.ttft_mode,
        timeline_note=cluster.monitor.coarsening_note(), notes=cluster.notes,
    )


def _transfer_defaults_note(cfg: ClusterConfig, topology: Topology, senders: list[Instance],
                            receivers: list[Instance]) -> list[str]:
    """The KV hand-offs' measured defaults that apply, said where the config leaves them (LLMServingSim moves KV at
    line rate): the share of line rate where a hand-off crosses the network (not a node's intra_node_bw fabric), the
    per-layer cost unless a per-transfer or per-layer cost is given."""
    kv, given = cfg.kv_transfer, cfg.kv_transfer.model_fields_set
    if not senders or not receivers:
        return []
    said = []
    if "bandwidth_efficiency" not in given and not all(topology.on_fabric(s, r) for s in senders for r in receivers):
        said.append(f"reach {kv.bandwidth_efficiency:.0%} of link_bw / nic_bw")
    if not given & {"per_layer_overhead_us", "per_transfer_overhead_us"}:
        said.append(f"pay {kv.per_layer_overhead_us:g} us per model layer")
    notes = [f"KV hand-offs {' and '.join(said)}: pdsim's defaults, from Mooncake's measured transfers "
             "(docs/pd_realism.md), where LLMServingSim moves KV at line rate; kv_transfer.bandwidth_efficiency and "
             "per_layer_overhead_us set them"] if said else []
    if kv.dtype != "same":  # vLLM's NIXL and P2P NCCL connectors send the cache as it is stored
        notes.append(f"kv_transfer.dtype {kv.dtype}: the KV is sent at 1 byte a value, a what-if: vLLM 0.19's "
                     "connectors send the cache in the dtype it is stored in (kv_cache_dtype fp8 stores it so)")
    return notes


def _sync_scheduling_default_note(cfg: ClusterConfig) -> list[str]:
    """Said once where instances leave async_scheduling out: pdsim then schedules synchronously, as LLMServingSim
    does, where vLLM from 0.14 (0.19 included) schedules asynchronously by default (config/vllm.py). A validate
    replay sets it from the run's version, so says nothing."""
    if all("async_scheduling" in ref.config.model_fields_set for ref in cfg.instances()):
        return []
    return ["async_scheduling not set, so off: pdsim's default, as LLMServingSim schedules; vLLM 0.14 and later "
            "(0.19 included) schedule asynchronously by default, where a request that arrives during a step starts "
            "a step later than here (on a busy colocated engine about one decode step more TTFT; in P/D with "
            "--ttft-mode client about two); --async-scheduling or the instance key async_scheduling true runs that"]


def _expert_parallel_default_note(cfg: ClusterConfig) -> list[str]:
    """Said once where MoE instances of TP > 1 leave ep_size out: they run LLMServingSim's default, ep_size =
    tp_size, and vLLM's own default differs (without --enable-expert-parallel, FusedMoEParallelConfig.make in
    fused_moe/config.py splits every expert by TP). A validate replay sets ep_size from meta.json, so says nothing."""
    refs = [ref for ref in cfg.instances() if ref.config.ep_size is None and ref.config.tp_size > 1
            and load_model(ref.config.model_name).is_moe]
    if not refs:
        return []
    # No instance names or counts: a sweep gathers its runs' notes by their text, and says each once.
    return ["MoE instances of TP > 1 without ep_size run ep_size = tp_size, LLMServingSim's default (expert "
            "parallelism); vLLM's default, without --enable-expert-parallel, splits every expert by TP instead "
            "(fused_moe/config.py FusedMoEParallelConfig.make): the instance key ep_size: 1 replays that"]


def _unfinished_reason(req: Request, opts: SimOptions, end_s: float) -> str:
    if not req.arrived:
        stop = (f"stopped at --max-sim-time {opts.max_sim_time_s:g} s" if opts.max_sim_time_s is not None
                else "could not make progress")
        return (f"{NOT_ARRIVED}: the simulation {stop} before "
                + ("its client sent it" if opts.concurrency is not None else "it arrived"))
    if opts.max_sim_time_s is not None and end_s >= opts.max_sim_time_s:
        return f"simulation stopped at --max-sim-time {opts.max_sim_time_s:g} s (request was {req.status})"
    return f"simulation could not make progress (request was {req.status})"
