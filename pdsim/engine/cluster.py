"""The whole cluster: instances built from the config, links between them, routing, and the run itself."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import simpy

from pdsim.config import GB, TTFT_MODES, ClusterConfig, InstanceRef
from pdsim.engine.dp_group import DPGroup, build_dp_groups
from pdsim.engine.instance import Instance, InstanceSpec
from pdsim.engine.kv_cache import blocks_for
from pdsim.engine.kv_transfer import KVTransfers
from pdsim.engine.link import Link
from pdsim.engine.network import Network
from pdsim.engine.request import Request
from pdsim.engine.router import Router
from pdsim.engine.scheduler import StepPlan
from pdsim.engine.topology import Topology
from pdsim.errors import ConfigError, ProfileError
from pdsim.hardware import HardwareSpec, get_hardware
from pdsim.models import load_model
from pdsim.perf.estimate import load_or_estimate
from pdsim.perf.memory import kv_budget
from pdsim.perf.predictor import StepTimePredictor
from pdsim.workload.trace import TraceRequest

GIB = GB


@dataclass
class SimOptions:
    seed: int = 0
    prefill_policy: str | None = None  # None: the config's router section (default least_loaded)
    decode_policy: str | None = None
    profile_dir: str | None = None  # overrides every instance's profile lookup
    profiles_root: str | None = None  # where <hardware>/<model>/<dtype>/tp<N> profiles live
    # Calibration knobs; when left at None (0.0 for step_overhead_us) each instance's config decides.
    step_overhead_us: float = 0.0
    step_overhead_per_seq_us: float | None = None
    decode_skew_alpha: float | None = None
    max_decode_run_steps: int = 4096  # 1 steps every decode one event at a time (for checking)
    sample_interval_s: float = 1.0  # timeline resolution (simulated seconds)
    max_sim_time_s: float | None = None
    # Closed loop: this many clients, each sending its next request (the next one of the trace,
    # whose arrival time is then ignored) when its previous one ends, as `vllm bench serve
    # --max-concurrency` does. None: open loop, requests arrive at their trace times.
    concurrency: int | None = None
    # Closed loop: client i sends its first request at i * spread / concurrency instead of all at
    # 0. Real closed loops drift apart (jitter, chunked prefills); with fixed lengths a simulated
    # one that starts in lockstep stays in lockstep, so a steady-state measurement spreads them.
    client_start_spread_s: float = 0.0
    # Closed loop: each request reaches the engine this long after its client sends it (HTTP,
    # tokenisation, API-server queue): uniform on [0, 2 * mean], seeded. TTFT counts it (it is
    # measured from the client's send). It also breaks the exact lockstep of equal-length clients.
    client_delay_s: float = 0.0
    # Closed loop: measured gaps between a request's end and its client's next send (seconds; each
    # send draws one at random, seeded), e.g. an aiperf run's own. Not counted in TTFT: the request
    # is sent after it; the client delay above then applies as usual.
    client_send_gaps_s: tuple[float, ...] = ()
    # What TTFT means for a P/D request (docs/pd_realism.md): "prefill", the first token leaves the
    # prefill instance (as papers count it); "client", it reaches the user through the decode
    # instance after the KV transfer and the first decode step (what a client of vLLM's P/D proxy
    # measures). Colocated requests are the same either way.
    ttft_mode: str = "prefill"
    # Instance id -> the measured engine's num_gpu_blocks, used instead of the predicted KV capacity
    # (validate --kv-capacity measured), so memory and timing errors can be seen apart.
    kv_gpu_blocks: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ttft_mode not in TTFT_MODES:
            raise ConfigError(f"ttft_mode: expected one of {', '.join(TTFT_MODES)}, got {self.ttft_mode!r}")
        # A sample per 1e-12 s would never end; the CLI's --log-interval refuses the same range.
        if not (math.isfinite(self.sample_interval_s) and self.sample_interval_s >= 1e-3):
            raise ConfigError(f"sample_interval_s: expected a finite number >= 0.001 s, got {self.sample_interval_s}")
        if self.max_sim_time_s is not None and not (math.isfinite(self.max_sim_time_s) and self.max_sim_time_s > 0):
            raise ConfigError(f"max_sim_time_s: expected a finite number > 0 (s), got {self.max_sim_time_s}")


@dataclass
class Sample:
    time_s: float
    instance: str
    prefill_reqs: int
    decode_reqs: int
    waiting_reqs: int
    kv_used_gb: float
    mem_used_gb: float
    prompt_tokens: int
    decode_tokens: int
    # KV hand-off: prefill-side blocks still held for transfers in flight (the temporary
    # duplication with the decode side), and the instance's current transfer rates.
    kv_held_for_transfer_gb: float = 0.0
    kv_send_gbps: float = 0.0
    kv_recv_gbps: float = 0.0
    # Prefix cache: prompt tokens looked up and found so far (cumulative; vLLM's queries/hits).
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefix_hit_rate: float = 0.0  # hit / query tokens so far


@dataclass
class LinkSample:
    """One link at one sample time; utilisation is averaged over the interval since the last sample."""

    time_s: float
    link: str
    kind: str
    capacity_gbps: float
    active_transfers: int
    rate_gbps: float  # at the sample instant
    utilisation: float
    moved_gb: float  # since the start


@dataclass
class InstanceInfo:
    id: str
    pd_type: str | None
    model_name: str
    hardware: str
    tp: int
    num_kv_blocks: int
    kv_capacity_gb: float
    weights_gb: float
    activation_gb: float
    profile_path: str
    estimated_profile: bool
    # KV sizing: rule ("vllm", "llmservingsim", "measured"), capacity in tokens as vLLM reports it
    # (num_gpu_blocks x block_size, the null block included) and how it was obtained.
    kv_rule: str = "vllm"
    kv_tokens: int = 0
    memory_note: str = ""
    kv_predicted_tokens: int = 0  # the config's prediction, when a measured capacity replaced it


@dataclass
class SimulationResult:
    requests: list[Request]
    instances: list[Instance]
    infos: list[InstanceInfo]
    links: dict[str, Link]
    samples: list[Sample]
    sim_end_s: float
    warnings: list[str] = field(default_factory=list)
    link_samples: list[LinkSample] = field(default_factory=list)
    ttft_mode: str = "prefill"


def _build_instance(
    env: simpy.Environment, ref: InstanceRef, cfg: ClusterConfig, opts: SimOptions, source: str,
    dp_size: int = 1,
) -> tuple[Instance, InstanceInfo]:
    ic = ref.config
    # A MoE DP group (dp_size > 1) steps in lock step and shares its experts (engine/dp_group.py).
    placement = ic.expert_placement(dp_size)
    where = f"{source}: nodes[{ref.node_index}].instances[{ref.instance_index}]"
    model = load_model(ic.model_name)
    try:
        profile = load_or_estimate(
            ic.hardware, model, ic.dtype, ic.tp_size,
            root=opts.profiles_root, profile_dir=opts.profile_dir or ic.profile_dir, mem_bw_gbps=ic.npu_mem.mem_bw,
            quantization=ic.quantization, kv_dtype=ic.kv_dtype,
        )
    except ProfileError as exc:
        raise ProfileError(f"{where}.hardware: {exc}") from None
    predictor = StepTimePredictor(
        profile, model, ic.tp_size, _tp_link_hardware(get_hardware(ic.hardware), cfg),
        step_overhead_us=opts.step_overhead_us or ic.step_overhead_us,
        step_overhead_per_seq_us=(opts.step_overhead_per_seq_us if opts.step_overhead_per_seq_us is not None
                                  else ic.step_overhead_per_seq_us),
        skew_alpha=opts.decode_skew_alpha if opts.decode_skew_alpha is not None else ic.decode_skew_alpha,
        moe_placement=placement, moe_external=model.is_moe and dp_size > 1,
    )
    if not profile.estimated:
        predictor.notes.append("npu_mem.mem_bw is not used where step times come from a measured profile")
    activation_bytes = predictor.activation_reserve_bytes(ic.max_num_batched_tokens, ic.max_num_seqs)
    budget = kv_budget(ic, model, activation_bytes, where, opts.kv_gpu_blocks.get(ref.instance_id),
                       placement.expert_shards)
    weight_bytes, kv_bytes_per_token = budget.weight_bytes, model.kv_bytes_per_token(ic.kv_dtype, ic.tp_size)
    num_blocks = budget.usable_blocks
    spec = InstanceSpec(
        id=ref.instance_id, pd_type=ic.pd_type, model_name=ic.model_name, hardware=ic.hardware,
        tp=ic.tp_size, dtype=ic.dtype, node=ref.node_index, max_num_seqs=ic.max_num_seqs,
        max_num_batched_tokens=ic.max_num_batched_tokens, block_size=ic.block_size,
        enable_chunked_prefill=ic.enable_chunked_prefill, kv_bytes_per_token=kv_bytes_per_token,
        weight_bytes=weight_bytes, activation_bytes=budget.activation_bytes + budget.other_bytes,
        long_prefill_token_threshold=ic.long_prefill_token_threshold,
        async_scheduling=ic.async_scheduling, reserve_full_isl=ic.scheduler_reserve_full_isl,
        kv_dtype=ic.kv_dtype,
        enable_prefix_caching=ic.enable_prefix_caching,
    )
    lockstep = model.is_moe and dp_size > 1  # one step at a time, in step with the group
    inst = Instance(env, spec, predictor, num_blocks, 1 if lockstep else opts.max_decode_run_steps)
    info = InstanceInfo(
        id=spec.id, pd_type=ic.pd_type, model_name=ic.model_name, hardware=ic.hardware, tp=ic.tp_size,
        num_kv_blocks=num_blocks, kv_capacity_gb=num_blocks * budget.block_bytes / GIB,
        weights_gb=weight_bytes / GIB, activation_gb=(budget.activation_bytes + budget.other_bytes) / GIB,
        kv_rule=budget.rule, kv_tokens=budget.kv_tokens, memory_note=budget.note,
        kv_predicted_tokens=budget.predicted_gpu_blocks * ic.block_size,
        profile_path=str(profile.meta.path), estimated_profile=profile.estimated or predictor.estimated,
    )
    return inst, info


def _tp_link_hardware(hw: HardwareSpec | None, cfg: ClusterConfig) -> HardwareSpec | None:
    """The GPU spec, with its intra-node link replaced by the innermost of per-dimension link_bw /
    link_latency lists when the config gives them (LLMServingSim's TP dimension, docs/moe.md)."""
    if hw is None or cfg.link_bw_per_dim is None:
        return hw
    latency = cfg.link_latency_per_dim[0] if cfg.link_latency_per_dim else cfg.link_latency
    return dataclasses.replace(hw, intra_node_bw_gbps=cfg.link_bw_per_dim[0], intra_node_latency_ns=latency)


class Cluster:
    """Wires instances, routers and links together inside one SimPy environment."""

    def __init__(self, env: simpy.Environment, cfg: ClusterConfig, opts: SimOptions, source: str = "<config>") -> None:
        self.env = env
        self.cfg = cfg
        self.opts = opts
        self.instances: list[Instance] = []
        self.infos: list[InstanceInfo] = []
        unknown = sorted(set(opts.kv_gpu_blocks) - {ref.instance_id for ref in cfg.instances()})
        if unknown:
            raise ConfigError(f"KV-capacity override for {', '.join(unknown)}: no such instance in {source}")
        group_of = {ref.instance_id: name for name, refs in cfg.dp_groups().items() for ref in refs}
        group_sizes = {name: len(refs) for name, refs in cfg.dp_groups().items()}
        for ref in cfg.instances():
            inst, info = _build_instance(env, ref, cfg, opts, source, group_sizes.get(group_of.get(ref.instance_id), 1))
            inst.on_finish = self._on_finish
            inst.on_handoff = self._on_handoff
            inst.on_reserved = self._on_reserved
            inst.on_prefill_step = self._on_prefill_step
            self.instances.append(inst)
            self.infos.append(info)
        self.by_id = {inst.id: inst for inst in self.instances}
        self.dp_groups = build_dp_groups(env, cfg, self.by_id)
        self._unit_of = {m.id: g for g in self.dp_groups for m in g.members}
        self.prefill_pool = [i for i in self.instances if i.pd_type in (None, "prefill")]
        self.decode_pool = [i for i in self.instances if i.pd_type == "decode"]
        self.prefill_router = Router(opts.prefill_policy or cfg.router.prefill_policy, opts.seed)
        self.decode_router = Router(opts.decode_policy or cfg.router.decode_policy, opts.seed + 1)
        self.models = {inst.spec.model_name: load_model(inst.spec.model_name) for inst in self.instances}
        self.network = Network(env)
        self.topology = Topology(cfg, self.instances)
        self.links = self.topology.links  # name -> Link, created as transfers first use them
        self.kv_transfers = KVTransfers(env, cfg.kv_transfer, self.topology, self.network, self.models)
        self._early_handoffs: set[int] = set()  # layer-wise: handed off as their final prefill step began
        self._arrived_early: set[int] = set()  # ... whose KV arrived before that step's end was processed
        self._held_blocks: dict[str, int] = {inst.id: 0 for inst in self.instances}
        self.link_samples: list[LinkSample] = []
        self._last_link_sample: tuple[float, dict[str, float]] = (0.0, {})
        self.max_model_len = {name: m.max_position_embeddings for name, m in self.models.items()}
        self.num_done = 0
        self.on_done: Callable[[Request], None] = lambda req: None

    # -- request flow ---------------------------------------------------------------------------
    def admit(self, req: Request) -> None:
        """Route a newly arrived request, or reject it with a reason when it can never run."""
        candidates = [inst for inst in self.prefill_pool if self._fits(inst, req)]
        if not candidates:
            self._reject(req, self._why_not(req))
            return
        inst = self._choose_prefill(candidates, req)
        req.prefill_instance = inst.id
        if inst.pd_type is None:
            req.decode_instance = inst.id
        inst.submit(req)

    def _choose_prefill(self, candidates: list[Instance], req: Request) -> Instance:
        """The router picks an instance or a whole DP group, which then picks its rank (a group is
        chosen by load: cache-aware policies look at single instances' caches)."""
        if not self.dp_groups:
            return self.prefill_router.choose(candidates, req)
        units = list(dict.fromkeys(self._unit_of.get(c.id, c) for c in candidates))
        unit = self.prefill_router.choose(units)
        if isinstance(unit, DPGroup):
            return unit.choose_rank([c for c in candidates if self._unit_of.get(c.id) is unit])
        return unit

    def _fits(self, inst: Instance, req: Request) -> bool:
        if req.input_toks + req.output_toks > self.max_model_len[inst.spec.model_name]:
            return False
        if not _recompute_fits(inst, req):
            return False
        tokens = req.input_toks if inst.pd_type == "prefill" else req.input_toks + req.output_toks
        if blocks_for(tokens, inst.kv.block_size) > inst.kv.num_blocks:
            return False
        if inst.pd_type == "prefill" and req.output_toks > 1:
            return any(self._fits_decode(d, inst, req) for d in self.decode_pool)
        return True

    def _fits_decode(self, dec: Instance, src: Instance, req: Request) -> bool:
        return (dec.spec.model_name == src.spec.model_name and _recompute_fits(dec, req)
                and blocks_for(req.input_toks + req.output_toks, dec.kv.block_size) <= dec.kv.num_blocks)

    def _why_not(self, req: Request) -> str:
        total = req.input_toks + req.output_toks
        if all(total > self.max_model_len[i.spec.model_name] for i in self.prefill_pool):
            return f"input+output = {total} tokens exceeds the model's max length"
        if all(not _recompute_fits(i, req) for i in self.prefill_pool):
            return (f"input+output = {total} tokens (input alone on a prefill-only instance) exceeds "
                    "max_num_batched_tokens with chunked prefill disabled (vLLM then caps max_model_len at "
                    "max_num_batched_tokens)")
        if self.decode_pool and all(not _recompute_fits(d, req) for d in self.decode_pool):
            return (f"input+output = {total} tokens exceeds the decode instances' max_num_batched_tokens with "
                    "chunked prefill disabled (vLLM then caps max_model_len at max_num_batched_tokens)")
        return f"input+output = {total} tokens needs more KV blocks than any instance has"

    def _reject(self, req: Request, reason: str) -> None:
        req.status = "rejected"
        req.reason = reason
        self.num_done += 1
        self.on_done(req)

    def _on_finish(self, req: Request) -> None:
        self.num_done += 1
        self.on_done(req)

    def _on_prefill_step(self, src: Instance, plan: StepPlan, start_s: float, duration_s: float) -> None:
        """Layer-wise mode: a request whose final prefill chunk starts now is handed off now, so that
        its decode-side blocks can be reserved and its KV streamed while the layers compute."""
        if not self.kv_transfers.layerwise or src.pd_type != "prefill":
            return
        for (req, num_new), prior in zip(plan.prefill, plan.prefill_prefix):
            completes = req.num_computed + num_new >= req.input_toks + req.num_generated
            if completes and req.num_generated + 1 < req.output_toks:
                self.kv_transfers.note_final_step(req, start_s, duration_s, prior, num_new)
                self._early_handoffs.add(req.id)
                self._hand_off(src, req)

    def _on_handoff(self, src: Instance, req: Request) -> None:
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
        # The prefill instance keeps these blocks until the transfer is over.
        req.prefill_blocks = req.blocks
        req.prefill_cache_keys, req.cache_keys = req.cache_keys, None
        self._held_blocks[src.id] += req.blocks
        req.blocks = 0
        req.status = "handoff"
        # Same model only: a heterogeneous pool may mix hardware and TP, never weights.
        candidates = [d for d in self.decode_pool if self._fits_decode(d, src, req)]
        # Any policy first looks among the instances that can take the KV now, so a request does
        # not queue behind a full decode instance while another has room; only when all are full
        # does it wait in the pending queue of the one the policy picks.
        with_room = [d for d in candidates if d.has_room_for(req)]
        dec = self.decode_router.choose(with_room or candidates, req)
        req.decode_instance = dec.id
        dec.receive_handoff(req)

    def _on_reserved(self, dec: Instance, req: Request) -> None:
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
        self._held_blocks[src.id] -= req.prefill_blocks
        src.release_blocks(req.prefill_blocks, req.prefill_cache_keys)
        req.prefill_blocks = 0
        req.prefill_cache_keys = None
        req.kv_ready = True
        dec.submit(req)

    # -- observation ----------------------------------------------------------------------------
    def is_still(self) -> bool:
        """Nothing changes until the next scheduled event: no bytes moving, no run of decode steps
        passing in one event (whose steps end in between)."""
        return (not any(flow.rate_bytes_per_s > 0 for flow in self.network.flows)
                and not any(inst.in_run for inst in self.instances))

    def sample(self) -> list[Sample]:
        now = self.env.now
        self.network.settle()
        send, recv = self._transfer_rates()
        out = []
        for inst in self.instances:
            prefill, decode, used_blocks, decode_tokens = inst.snapshot()
            kv_gb = used_blocks * inst.kv.block_bytes / GIB
            fixed_gb = (inst.spec.weight_bytes + inst.spec.activation_bytes) / GIB
            out.append(Sample(
                time_s=now, instance=inst.id, prefill_reqs=prefill, decode_reqs=decode,
                waiting_reqs=len(inst.sched.waiting) + len(inst.pending), kv_used_gb=kv_gb,
                mem_used_gb=fixed_gb + kv_gb, prompt_tokens=inst.stats.prompt_tokens, decode_tokens=decode_tokens,
                kv_held_for_transfer_gb=self._held_blocks[inst.id] * inst.kv.block_bytes / GIB,
                kv_send_gbps=send.get(inst.id, 0.0) / 1e9, kv_recv_gbps=recv.get(inst.id, 0.0) / 1e9,
                prefix_query_tokens=inst.kv.query_tokens, prefix_hit_tokens=inst.kv.hit_tokens,
                prefix_hit_rate=inst.kv.hit_rate,
            ))
        return out

    def _transfer_rates(self) -> tuple[dict[str, float], dict[str, float]]:
        """Bytes per second each instance is sending and receiving right now."""
        send: dict[str, float] = {}
        recv: dict[str, float] = {}
        for flow in self.network.flows:
            src, dst = flow.endpoints
            send[src] = send.get(src, 0.0) + flow.rate_bytes_per_s
            recv[dst] = recv.get(dst, 0.0) + flow.rate_bytes_per_s
        return send, recv

    def sample_links(self) -> list[LinkSample]:
        """Every link used so far, its load now and its utilisation since the previous call."""
        self.network.settle()
        now = self.env.now
        last_s, last_bytes = self._last_link_sample
        span_s = now - last_s
        out = []
        for name, link in self.links.items():
            moved = link.bytes_moved - last_bytes.get(name, 0.0)
            util = moved / (link.capacity_bytes_per_s * span_s) if span_s > 0 else 0.0
            out.append(LinkSample(
                time_s=now, link=name, kind=link.kind, capacity_gbps=link.capacity_bytes_per_s / 1e9,
                active_transfers=link.num_active, rate_gbps=link.rate_bytes_per_s / 1e9,
                utilisation=util, moved_gb=link.bytes_moved / 1e9,
            ))
        self._last_link_sample = (now, {name: link.bytes_moved for name, link in self.links.items()})
        self.link_samples.extend(out)
        return out


def _recompute_fits(inst: Instance, req: Request) -> bool:
    """Without chunked prefill a preempted request recomputes its prompt and what it generated in
    one step, so that must fit the token budget or the request blocks its queue forever. vLLM
    refuses max_num_batched_tokens < max_model_len then; pdsim rejects the longer requests with a
    reason instead, as vLLM run with max_model_len = max_num_batched_tokens would. A prefill-only
    instance hands the request off with its first token, so only the prompt is ever recomputed there."""
    if inst.spec.enable_chunked_prefill:
        return True
    tokens = req.input_toks if inst.pd_type == "prefill" else req.input_toks + req.output_toks
    return tokens <= inst.spec.max_num_batched_tokens


def simulate(
    cfg: ClusterConfig,
    trace: Sequence[TraceRequest],
    opts: SimOptions | None = None,
    source: str = "<config>",
    on_sample: Callable[[float, list[Sample]], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Run the trace through the cluster until every request has finished, been rejected, or the
    time limit is reached (what is left is reported unfinished with the reason)."""
    opts = opts or SimOptions()
    env = simpy.Environment()
    cluster = Cluster(env, cfg, opts, source)
    requests = [Request(t.request_id, t.input_toks, t.output_toks, t.arrival_time_ns * 1e-9,
                        hash_ids=t.hash_ids, hash_block_tokens=t.hash_block_tokens) for t in trace]
    total = len(requests)
    samples: list[Sample] = []

    def arrivals():
        for req in requests:
            delay = req.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            cluster.admit(req)

    if opts.concurrency is not None:
        backlog = iter(requests)
        rng = random.Random(opts.seed)

        def deliver(req: Request, delay_s: float):
            yield env.timeout(delay_s)
            cluster.admit(req)

        def send(req: Request) -> None:
            req.arrival_s = env.now
            if opts.client_delay_s > 0:
                env.process(deliver(req, rng.uniform(0.0, 2.0 * opts.client_delay_s)))
            else:
                cluster.admit(req)

        def send_after(req: Request, gap_s: float):
            yield env.timeout(gap_s)
            send(req)

        def send_next(_done: Request | None = None) -> None:
            req = next(backlog, None)
            if req is not None:
                if opts.client_send_gaps_s:
                    env.process(send_after(req, rng.choice(opts.client_send_gaps_s)))
                else:
                    send(req)

        def clients():
            gap_s = opts.client_start_spread_s / opts.concurrency
            # Clients beyond the number of requests would never send one: only the others are started.
            for i in range(min(opts.concurrency, total)):
                if i and gap_s > 0:
                    yield env.timeout(gap_s)
                send_next()
            yield env.timeout(0)

        cluster.on_done = send_next
        arrivals = clients  # noqa: F811 - the closed loop replaces the trace's arrival times

    all_done = env.event()
    forward_done = cluster.on_done

    def on_done(req: Request) -> None:
        forward_done(req)
        if cluster.num_done >= total and not all_done.triggered:
            all_done.succeed(env.now)

    cluster.on_done = on_done

    def monitor():
        while True:
            snap = cluster.sample()
            samples.extend(snap)
            cluster.sample_links()
            if on_sample is not None:
                on_sample(env.now, snap)
            if on_progress is not None:
                on_progress(cluster.num_done, total)
            if cluster.num_done >= total:
                return
            # Wake at the next sample time, or as soon as the last request is done, so the run
            # ends there and not at the next multiple of the sample interval.
            yield env.timeout(_next_sample_delay_s(env, cluster, opts.sample_interval_s)) | all_done
            if env.peek() == math.inf and cluster.num_done < total:
                # Nothing else will ever happen: what is left is stuck; it is reported below.
                samples.extend(cluster.sample())
                cluster.sample_links()
                return

    env.process(arrivals())
    env.process(monitor())
    env.run(until=opts.max_sim_time_s)
    end = all_done.value if all_done.triggered else env.now
    for req in requests:
        if req.status not in ("finished", "rejected"):
            req.reason = _unfinished_reason(req, opts, end)
            req.status = "unfinished"
    return SimulationResult(
        requests=requests, instances=cluster.instances, infos=cluster.infos, links=cluster.links,
        samples=samples, sim_end_s=end,
        link_samples=cluster.link_samples, ttft_mode=opts.ttft_mode,
    )


# An idle span longer than this many sample intervals is skipped (its samples would all repeat the
# one before it): a lone request at t = 1e6 s, or Unix-epoch arrival times, must not cost a sample
# per simulated second. Normal runs never idle this long, so their timelines keep every row.
_IDLE_SAMPLES_KEPT = 1000


def _next_sample_delay_s(env: simpy.Environment, cluster: Cluster, interval_s: float) -> float:
    """The next sample interval, or, when nothing changes before the next event, a jump to the last
    sample time before it (the timeline then shows the idle state at both ends of the gap)."""
    if not cluster.is_still():
        return interval_s
    gap_s = env.peek() - env.now
    if gap_s == math.inf or gap_s <= _IDLE_SAMPLES_KEPT * interval_s:
        return interval_s
    steps = math.floor(gap_s / interval_s)
    if steps * interval_s >= gap_s:
        steps -= 1  # strictly before the event, as a sample at its very time might see it or not
    return max(steps, 1) * interval_s


def _unfinished_reason(req: Request, opts: SimOptions, end_s: float) -> str:
    if opts.max_sim_time_s is not None and end_s >= opts.max_sim_time_s:
        return f"simulation stopped at --max-sim-time {opts.max_sim_time_s:g} s (request was {req.status})"
    return f"simulation could not make progress (request was {req.status})"
