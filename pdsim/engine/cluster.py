"""The whole cluster: instances built from the config, links between them, routing, and the run itself."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import simpy

from pdsim.config import GB, ClusterConfig, InstanceRef
from pdsim.engine.instance import Instance, InstanceSpec
from pdsim.engine.kv_cache import blocks_for
from pdsim.engine.link import Link
from pdsim.engine.request import Request
from pdsim.engine.router import Router
from pdsim.errors import ConfigError, ProfileError
from pdsim.hardware import get_hardware
from pdsim.models import load_model
from pdsim.perf.estimate import load_or_estimate
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
    profile_notes: list[str]


@dataclass
class SimulationResult:
    requests: list[Request]
    instances: list[Instance]
    infos: list[InstanceInfo]
    links: dict[tuple[str, str], Link]
    samples: list[Sample]
    sim_end_s: float
    rejected: int = 0
    warnings: list[str] = field(default_factory=list)


def _build_instance(
    env: simpy.Environment, ref: InstanceRef, cfg: ClusterConfig, opts: SimOptions, source: str
) -> tuple[Instance, InstanceInfo]:
    ic = ref.config
    where = f"{source}: nodes[{ref.node_index}].instances[{ref.instance_index}]"
    model = load_model(ic.model_name)
    try:
        profile = load_or_estimate(
            ic.hardware, model, ic.dtype, ic.tp_size,
            root=opts.profiles_root, profile_dir=opts.profile_dir or ic.profile_dir,
        )
    except ProfileError as exc:
        raise ProfileError(f"{where}.hardware: {exc}") from None
    predictor = StepTimePredictor(
        profile, model, ic.tp_size, get_hardware(ic.hardware),
        step_overhead_us=opts.step_overhead_us or ic.step_overhead_us,
        step_overhead_per_seq_us=(opts.step_overhead_per_seq_us if opts.step_overhead_per_seq_us is not None
                                  else ic.step_overhead_per_seq_us),
        skew_alpha=opts.decode_skew_alpha if opts.decode_skew_alpha is not None else ic.decode_skew_alpha,
    )
    weight_bytes = model.weight_bytes(ic.dtype, ic.tp_size)
    activation_bytes = predictor.activation_reserve_bytes(ic.max_num_batched_tokens)
    usable = ic.npu_mem.mem_size * GIB * ic.npu_mem.mem_util
    kv_bytes_per_token = model.kv_bytes_per_token(ic.dtype, ic.tp_size)
    block_bytes = ic.block_size * kv_bytes_per_token
    num_blocks = math.floor((usable - weight_bytes - activation_bytes) / block_bytes)
    if num_blocks <= 0:
        raise ConfigError(
            f"{where}.npu_mem.mem_size: no room for the KV cache: {ic.npu_mem.mem_size} GB x mem_util "
            f"{ic.npu_mem.mem_util} = {usable / GIB:.2f} GB per GPU, but weights take {weight_bytes / GIB:.2f} GB "
            f"and activations {activation_bytes / GIB:.2f} GB (tp_size {ic.tp_size})"
        )
    spec = InstanceSpec(
        id=ref.instance_id, pd_type=ic.pd_type, model_name=ic.model_name, hardware=ic.hardware,
        tp=ic.tp_size, dtype=ic.dtype, node=ref.node_index, max_num_seqs=ic.max_num_seqs,
        max_num_batched_tokens=ic.max_num_batched_tokens, block_size=ic.block_size,
        enable_chunked_prefill=ic.enable_chunked_prefill, kv_bytes_per_token=kv_bytes_per_token,
        weight_bytes=weight_bytes, activation_bytes=activation_bytes, mem_capacity_bytes=int(usable),
    )
    inst = Instance(env, spec, predictor, num_blocks, opts.max_decode_run_steps)
    info = InstanceInfo(
        id=spec.id, pd_type=ic.pd_type, model_name=ic.model_name, hardware=ic.hardware, tp=ic.tp_size,
        num_kv_blocks=num_blocks, kv_capacity_gb=num_blocks * block_bytes / GIB,
        weights_gb=weight_bytes / GIB, activation_gb=activation_bytes / GIB,
        profile_path=str(profile.meta.path), estimated_profile=profile.estimated,
        profile_notes=predictor.notes,
    )
    return inst, info


class Cluster:
    """Wires instances, routers and links together inside one SimPy environment."""

    def __init__(self, env: simpy.Environment, cfg: ClusterConfig, opts: SimOptions, source: str = "<config>") -> None:
        self.env = env
        self.cfg = cfg
        self.opts = opts
        self.instances: list[Instance] = []
        self.infos: list[InstanceInfo] = []
        for ref in cfg.instances():
            inst, info = _build_instance(env, ref, cfg, opts, source)
            inst.on_finish = self._on_finish
            inst.on_handoff = self._on_handoff
            inst.on_reserved = self._on_reserved
            self.instances.append(inst)
            self.infos.append(info)
        self.by_id = {inst.id: inst for inst in self.instances}
        self.prefill_pool = [i for i in self.instances if i.pd_type in (None, "prefill")]
        self.decode_pool = [i for i in self.instances if i.pd_type == "decode"]
        self.prefill_router = Router(opts.prefill_policy or cfg.router.prefill_policy, opts.seed)
        self.decode_router = Router(opts.decode_policy or cfg.router.decode_policy, opts.seed + 1)
        self.links: dict[tuple[str, str], Link] = {}
        self.models = {inst.spec.model_name: load_model(inst.spec.model_name) for inst in self.instances}
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
        inst = self.prefill_router.choose(candidates)
        req.prefill_instance = inst.id
        if inst.pd_type is None:
            req.decode_instance = inst.id
        inst.submit(req)

    def _fits(self, inst: Instance, req: Request) -> bool:
        if req.input_toks + req.output_toks > self.max_model_len[inst.spec.model_name]:
            return False
        if not inst.spec.enable_chunked_prefill and req.input_toks > inst.spec.max_num_batched_tokens:
            return False
        tokens = req.input_toks if inst.pd_type == "prefill" else req.input_toks + req.output_toks
        if blocks_for(tokens, inst.kv.block_size) > inst.kv.num_blocks:
            return False
        if inst.pd_type == "prefill" and req.output_toks > 1:
            return any(self._fits_decode(d, inst, req) for d in self.decode_pool)
        return True

    def _fits_decode(self, dec: Instance, src: Instance, req: Request) -> bool:
        return (dec.spec.model_name == src.spec.model_name
                and blocks_for(req.input_toks + req.output_toks, dec.kv.block_size) <= dec.kv.num_blocks)

    def _why_not(self, req: Request) -> str:
        total = req.input_toks + req.output_toks
        if all(total > self.max_model_len[i.spec.model_name] for i in self.prefill_pool):
            return f"input+output = {total} tokens exceeds the model's max length"
        if all(not i.spec.enable_chunked_prefill and req.input_toks > i.spec.max_num_batched_tokens
               for i in self.prefill_pool):
            return "prompt longer than max_num_batched_tokens with chunked prefill disabled"
        return f"input+output = {total} tokens needs more KV blocks than any instance has"

    def _reject(self, req: Request, reason: str) -> None:
        req.status = "rejected"
        req.reason = reason
        self.num_done += 1
        self.on_done(req)

    def _on_finish(self, req: Request) -> None:
        self.num_done += 1
        self.on_done(req)

    def _on_handoff(self, src: Instance, req: Request) -> None:
        """Prefill done on a prefill-only instance: pick a decode instance, wait there for blocks."""
        req.handoff_s = self.env.now
        req.prefill_blocks = req.blocks
        req.blocks = 0
        req.status = "handoff"
        candidates = [d for d in self.decode_pool if self._fits_decode(d, src, req)]
        dec = self.decode_router.choose(candidates)
        req.decode_instance = dec.id
        dec.receive_handoff(req)

    def _on_reserved(self, dec: Instance, req: Request) -> None:
        """Decode-side blocks are reserved: pull the KV cache over the link."""
        src = self.by_id[req.prefill_instance]
        link = self._link(src, dec)
        model = self.models[src.spec.model_name]
        req.kv_bytes = req.num_computed * model.kv_bytes_per_token(src.spec.dtype, 1)
        req.kv_transfer_start_s = self.env.now
        req.status = "kv_transfer"

        def done() -> None:
            req.kv_transfer_end_s = self.env.now
            src.release_blocks(req.prefill_blocks)
            req.prefill_blocks = 0
            req.kv_ready = True
            dec.submit(req)

        link.transfer(req.kv_bytes, done)

    def _link(self, src: Instance, dst: Instance) -> Link:
        key = (src.id, dst.id)
        link = self.links.get(key)
        if link is None:
            link = Link(self.env, f"{src.id}->{dst.id}", self.cfg.link_bw, self.cfg.link_latency)
            self.links[key] = link
        return link

    # -- observation ----------------------------------------------------------------------------
    def sample(self) -> list[Sample]:
        now = self.env.now
        out = []
        for inst in self.instances:
            prefill, decode, used_blocks, decode_tokens = inst.snapshot()
            kv_gb = used_blocks * inst.kv.block_bytes / GIB
            fixed_gb = (inst.spec.weight_bytes + inst.spec.activation_bytes) / GIB
            out.append(Sample(
                time_s=now, instance=inst.id, prefill_reqs=prefill, decode_reqs=decode,
                waiting_reqs=len(inst.sched.waiting) + len(inst.pending), kv_used_gb=kv_gb,
                mem_used_gb=fixed_gb + kv_gb, prompt_tokens=inst.stats.prompt_tokens, decode_tokens=decode_tokens,
            ))
        return out


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
    requests = [Request(t.request_id, t.input_toks, t.output_toks, t.arrival_time_ns * 1e-9) for t in trace]
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

        def send_next(_done: Request | None = None) -> None:
            req = next(backlog, None)
            if req is not None:
                req.arrival_s = env.now
                cluster.admit(req)

        def clients():
            for _ in range(opts.concurrency):
                send_next()
            yield env.timeout(0)

        cluster.on_done = send_next
        arrivals = clients  # noqa: F811 - the closed loop replaces the trace's arrival times

    def monitor():
        while True:
            snap = cluster.sample()
            samples.extend(snap)
            if on_sample is not None:
                on_sample(env.now, snap)
            if on_progress is not None:
                on_progress(cluster.num_done, total)
            if cluster.num_done >= total:
                return
            yield env.timeout(opts.sample_interval_s)
            if env.peek() == math.inf and cluster.num_done < total:
                # Nothing else will ever happen: what is left is stuck; it is reported below.
                samples.extend(cluster.sample())
                return

    env.process(arrivals())
    env.process(monitor())
    env.run(until=opts.max_sim_time_s)
    end = env.now
    for req in requests:
        if req.status not in ("finished", "rejected"):
            req.reason = _unfinished_reason(req, opts, end)
            req.status = "unfinished"
    return SimulationResult(
        requests=requests, instances=cluster.instances, infos=cluster.infos, links=cluster.links,
        samples=samples, sim_end_s=end, rejected=sum(r.status == "rejected" for r in requests),
    )


def _unfinished_reason(req: Request, opts: SimOptions, end_s: float) -> str:
    if opts.max_sim_time_s is not None and end_s >= opts.max_sim_time_s:
        return f"simulation stopped at --max-sim-time {opts.max_sim_time_s:g} s (request was {req.status})"
    return f"simulation could not make progress (request was {req.status})"
