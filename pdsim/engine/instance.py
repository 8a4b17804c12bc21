"""One serving instance (a vLLM engine on `tp_size` GPUs) as a SimPy process.

The process repeats: take a scheduling decision, let the predicted step time pass, apply the
step's results. While only decodes run and nothing can change the batch, it lets a whole run
of decode steps pass in one event (their times summed exactly by the predictor); an arrival
that could join the batch wakes it, and it then stops at the end of the step in progress, just
where a step-by-step engine would first see the arrival.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING

import numpy as np
import simpy

from pdsim.engine.kv_cache import BlockManager, Copy, blocks_for, request_keys
from pdsim.engine.request import Request
from pdsim.engine.scheduler import Scheduler
from pdsim.engine.step_plan import StepOutcome, StepPlan
from pdsim.workload.trace import ARRIVAL_RESOLUTION_S

if TYPE_CHECKING:
    from pdsim.engine.dp_group import DPGroup

# numpy's pairwise summation of float64 (pairwise_sum in numpy/_core/src/umath/loops_utils.h.src): fewer than 8
# values one after another from 0.0; up to 128 in 8 interleaved partial sums; longer stretches halved at a multiple
# of 8.
_PAIRWISE_LANES = 8
_PAIRWISE_BLOCK = 128


def numpy_sum(values: Sequence[float], start: int = 0, count: int | None = None) -> float:
    """float(np.sum(values[start:start + count])) for floats, bit for bit, by numpy's own order of additions. A step's
    or a run's times are a few floats, which a loop adds several times faster than numpy's per-call cost (and than
    making an array of them); tests/test_engine.py holds it to np.sum."""
    n = len(values) - start if count is None else count
    if n < _PAIRWISE_LANES:
        total = 0.0
        for i in range(start, start + n):
            total += values[i]
        return total
    if n > _PAIRWISE_BLOCK:
        half = n // 2
        half -= half % _PAIRWISE_LANES
        return numpy_sum(values, start, half) + numpy_sum(values, start + half, n - half)
    lanes = list(values[start:start + _PAIRWISE_LANES])
    whole = start + n - n % _PAIRWISE_LANES
    for i in range(start + _PAIRWISE_LANES, whole, _PAIRWISE_LANES):
        for lane in range(_PAIRWISE_LANES):
            lanes[lane] += values[i + lane]
    total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    for i in range(whole, start + n):
        total += values[i]
    return total


class StepTimeModel:
    """What the instance needs from the performance model (see pdsim/perf/predictor.py)."""

    def step_time_s(self, prefill_chunks: list[tuple[int, int]], n_decode: int, kv_decode_sum: int,
                    kv_decode_max: int | None = None, graph_tokens: int | None = None) -> float:
        raise NotImplementedError

    def decode_run_s(self, n_decode: int, kv_decode_sum: int, num_steps: int,
                     kv_decode_max: int | None = None) -> np.ndarray:
        raise NotImplementedError


@dataclass
class InstanceSpec:
    id: str
    pd_type: str | None  # "prefill", "decode" or None (both phases)
    model_name: str
    hardware: str
    tp: int
    dtype: str
    node: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    enable_chunked_prefill: bool
    kv_bytes_per_token: int  # per TP shard
    weight_bytes: int  # per TP shard
    activation_bytes: int  # per TP shard
    long_prefill_token_threshold: int = 0
    async_scheduling: bool = False
    reserve_full_isl: bool = True
    kv_dtype: str | None = None  # the KV cache's dtype (kv_cache_dtype), None: `dtype`
    enable_prefix_caching: bool = True  # vLLM's default: shared prefixes (prefix ids), a recompute's own blocks
    pp: int = 1  # pipeline stages, each of `tp` GPUs (pdsim/engine/pipeline.py)
    async_depth: int = 1  # steps async scheduling decides ahead (pp - 1 with pipeline stages: pipeline.py)
    enforce_eager: bool = False  # no compilation, no CUDA graphs
    # The CUDA-graph sizes a step can run at (build.py _graph_sizes), () for none; decode_only: FULL_DECODE_ONLY's
    # graphs, which a step with a prefill chunk does not run (dp_group.py's padding)
    cudagraph_sizes: tuple[int, ...] = ()
    cudagraph_decode_only: bool = False
    window_blocks: int = 0  # blocks a running request's sliding-window layers hold (KVBudget.window_blocks)


@dataclass
class InstanceStats:
    steps: int = 0
    busy_s: float = 0.0
    # Busy time when the last request finished (the run's end): steps decided ahead (async pipelines' ghost steps)
    # and a DP group's tail run past it, which the share of the run's span must not count. None until then.
    busy_at_end_s: float | None = None
    # Per pipeline stage (pipeline.py; empty without stages), frozen with busy_s.
    stage_busy_s: list[float] = field(default_factory=list)
    stage_busy_at_end_s: list[float] | None = None
    prompt_tokens: int = 0
    decode_tokens: int = 0
    # Inter-token latencies: runs of decode steps, every step of a run giving a token to the run's
    # weight in requests (its first step to its first weight), plus gaps that are not one step.
    # Kept flat: a long trace makes millions of runs of a few steps each.
    itl_steps_s: array = field(default_factory=lambda: array("d"))
    itl_run_steps: array = field(default_factory=lambda: array("q"))
    itl_run_weights: array = field(default_factory=lambda: array("q"))
    itl_run_first_weights: array = field(default_factory=lambda: array("q"))
    itl_gaps_s: array = field(default_factory=lambda: array("d"))

    def freeze(self, open_s: float = 0.0) -> None:
        """The last request has finished: the busy time so far, with a busy span still open for open_s, is the run's."""
        self.busy_at_end_s = self.busy_s + open_s
        self.stage_busy_at_end_s = list(self.stage_busy_s)

    @property
    def busy_over_run_s(self) -> float:
        """Busy time over the run's span (up to the last request's finish, or the clock's stop)."""
        return self.busy_s if self.busy_at_end_s is None else self.busy_at_end_s

    @property
    def stage_busy_over_run_s(self) -> list[float]:
        return self.stage_busy_s if self.stage_busy_at_end_s is None else self.stage_busy_at_end_s

    def add_itl_run(self, durations: list[float], weight: int, first_weight: int) -> None:
        """A run of decode steps of `durations`, each giving a token to `weight` requests, the first
        to `first_weight` (those that were decoding before it)."""
        self.itl_steps_s.fromlist(durations)
        self.itl_run_steps.append(len(durations))
        self.itl_run_weights.append(weight)
        self.itl_run_first_weights.append(first_weight)


class Instance:
    def __init__(
        self,
        env: simpy.Environment,
        spec: InstanceSpec,
        predictor: StepTimeModel,
        num_blocks: int,
        max_decode_run_steps: int,
    ) -> None:
        self.env = env
        self.spec = spec
        self.id = spec.id
        self.pd_type = spec.pd_type
        self.predictor = predictor
        self.kv = BlockManager(num_blocks, spec.block_size, spec.block_size * spec.kv_bytes_per_token,
                               spec.enable_prefix_caching, spec.window_blocks)
        self.sched = Scheduler(
            self.kv,
            max_num_seqs=spec.max_num_seqs,
            max_num_batched_tokens=spec.max_num_batched_tokens,
            enable_chunked_prefill=spec.enable_chunked_prefill,
            prefill_only=spec.pd_type == "prefill",
            max_decode_run_steps=max_decode_run_steps,
            long_prefill_token_threshold=spec.long_prefill_token_threshold,
            async_scheduling=spec.async_scheduling,
            reserve_full_isl=spec.reserve_full_isl,
            async_depth=spec.async_depth,
        )
        self.pending: deque[Request] = deque()  # handed-off requests waiting for decode-side blocks
        self.pending_tokens = 0
        # A prefill instance's blocks of handed-off requests, held until freed: during the transfer, then
        # until the engine next polls its KV connector (kv_read). Counted once each: a cached prompt block
        # (its copy's key) may be held by several requests.
        self._held_own_blocks = 0  # blocks without a cache key: each request's own
        self._held_keys: Counter[Copy] = Counter()
        self._read: list[tuple[int, list[Copy] | None]] = []  # (blocks, cache keys) read, not yet polled
        # Async scheduling: reads a step's poll reported, freed when vLLM processes that step's output, after
        # the decisions it had already taken: (the decision after which they are freed, the reads).
        self._polled: list[tuple[int, list[tuple[int, list[Copy] | None]]]] = []
        self.sched.reserve_handoffs = self._reserve_pending
        self.stats = InstanceStats()
        self.on_finish: Callable[[Request], None] = lambda req: None
        self.on_handoff: Callable[[Instance, Request], None] = lambda inst, req: None
        self.on_reserved: Callable[[Instance, Request], None] = lambda inst, req: None
        # Called as a prefill step starts, with its predicted duration (layer-wise KV streaming).
        self.on_prefill_step: Callable[[Instance, StepPlan, float, float], None] = lambda inst, plan, t, d: None
        # The event of the next request's arrival where it comes within the trace's resolution from now, so that a
        # decision about to be taken sees it (OpenLoop.arrival_due; None otherwise and in a closed loop).
        self.arrival_due: Callable[[], simpy.Event | None] = lambda: None
        self._wake: simpy.Event | None = None
        self._idle = False
        self._run: tuple[float, list[float], int] | None = None  # (start, step end offsets, batch size)
        self._run_later_blocks: int | None = None  # blocks the run's steps after its first take (allocated at its end)
        self._run_plan: StepPlan | None = None  # the decision the run carries out
        self._not_picked_up: list[Request] = []  # arrived since the last decision
        # (start, durations) of the steps since the last decision; None: none since the engine idled
        self._last_steps: tuple[float, list[float]] | None = None
        # Starts of the last async_depth steps since the engine idled: async scheduling decided the
        # next step when the first of them started (vLLM had processed the step before it).
        self._step_starts: deque[float] = deque(maxlen=spec.async_depth)
        self.dp_group: DPGroup | None = None  # set by the cluster for a MoE DP group (lock step)
        self.regenerates_first_token = False  # a decode instance behind vLLM's P/D proxy (set by the cluster)
        self._woken_at_barrier = False  # work came while this rank waited for its DP group
        self.reads_in_flight = 0  # hand-offs whose KV is on its way here (blocks reserved, not yet arrived)
        # Their prompt tokens, and those of the hand-offs in `unpolled`: vLLM holds such a request in its waiting
        # queue from the reservation on (WAITING_FOR_REMOTE_KVS), so it is load the router sees.
        self.reading_tokens = 0
        self.reservations = 0  # hand-offs whose blocks were reserved so far (Request.reserved_seq)
        # Lock-step DP: hand-offs whose KV arrived during this rank's dummy step, and whether its step decided or
        # in progress is one (receive_kv).
        self.unpolled: list[Request] = []
        self._dummy_step = False
        self.process = env.process(self._loop())

    # -- what the router and the links call ---------------------------------------------------
    @property
    def load_tokens(self) -> int:
        """The router's load measure. A run of decode steps passing in one event has added a token per
        member for each of its steps that already ended, as stepping one by one would have."""
        tokens = self.sched.load_tokens + self.pending_tokens + self.reading_tokens
        if self._run is not None:
            tokens += self._run[2] * self._run_steps_done()
        return tokens

    def _run_steps_done(self, within_s: float = 0.0) -> int:
        """Steps of the run in progress that have ended by now (less `within_s`: one that ended that little
        before now counts as still in progress)."""
        start, ends, _ = self._run
        elapsed = self.env.now - start - within_s
        if elapsed < ends[0]:
            return 0
        # A bisect of the list: the router asks every instance of a large pool for its load on each request,
        # and numpy's searchsorted costs several times more on one value.
        return bisect_right(ends, elapsed)

    @property
    def num_requests(self) -> int:
        """Requests queued, running, waiting for hand-off blocks or for their KV here (SGLang's router's load)."""
        return self.num_waiting + len(self.sched.running)

    @property
    def num_waiting(self) -> int:
        """Requests in vLLM's waiting queue: queued, a hand-off waiting for blocks or for its KV."""
        return len(self.sched.waiting) + len(self.pending) + self.reads_in_flight + len(self.unpolled)

    def prefix_hit_tokens(self, req: Request) -> int:
        """Prompt tokens of `req` this instance's prefix cache holds (what a KV-aware router sees)."""
        if not req.hash_ids or not self.kv.enable_caching:
            return 0
        self._take_run_blocks()
        bs = self.kv.block_size
        return self.kv.longest_hit(request_keys(req, bs), (req.input_toks - 1) // bs)[0] * bs

    def _handoff_tokens(self, req: Request) -> int:
        """Tokens a hand-off's blocks hold as it starts decoding here: its prompt and the one its first decode
        step computes (the prefill's token; behind vLLM's P/D proxy, the prompt's last, recomputed)."""
        return req.input_toks if self.regenerates_first_token else req.input_toks + 1

    def _handoff_need(self, req: Request) -> tuple[int, int]:
        """(blocks a hand-off must take from the free pool, prompt blocks already held here)."""
        need = blocks_for(self._handoff_tokens(req), self.kv.block_size)
        if not req.hash_ids or not self.kv.enable_caching:
            return need, 0
        bs = self.kv.block_size
        hit, evict = self.kv.longest_hit(request_keys(req, bs), (req.input_toks - 1) // bs)
        return need - hit + evict, hit

    def has_room_for(self, req: Request) -> bool:
        """Whether a hand-off could reserve its blocks at once (nobody queued before it)."""
        if self.pending or not self.sched.has_free_slot:
            return False
        need, free = self._handoff_need(req)[0], self.kv.free
        if need > free:
            return False
        if self._run is None:
            return True
        # Room even once the whole run has taken its blocks (the common case) needs no look at its progress.
        if self._run_later_blocks is None:
            self._run_later_blocks = self.sched.cohort.new_blocks(1, len(self._run[1]) - 1)
        taken = self.sched.run_blocks_taken
        return need <= free - (self._run_later_blocks - taken) or need <= free - self._run_blocks_ahead()

    def _run_blocks_ahead(self) -> int:
        """Blocks a run of decode steps passing in one event has not allocated yet where stepping one by one
        would have: those of the steps after its first up to the one in progress."""
        if self._run is None:
            return 0
        due = self.sched.cohort.new_blocks(1, min(self._run_steps_done(), len(self._run[1]) - 1))
        return due - self.sched.run_blocks_taken

    def _take_run_blocks(self) -> None:
        """Allocate now the blocks that stepping one by one would have allocated by now in a run of decode
        steps passing in one event (the run's end takes only the rest): with a prefix cache, allocations evict
        cached free blocks, and a lookup must not find one that stepping would have evicted."""
        ahead = self._run_blocks_ahead()
        if ahead > 0:
            self.kv.allocate(ahead)
            self.sched.run_blocks_taken += ahead

    @property
    def in_run(self) -> bool:
        """A run of decode steps is passing in one event (the monitor counts its steps as they end)."""
        return self._run is not None

    def submit(self, req: Request) -> None:
        """A request that starts (or, after its KV arrived, continues) on this instance."""
        req.queued_s = self.env.now
        if req.kv_ready and req.cache_keys is not None:
            # The prompt KV that arrived is cached from now on (vLLM: cache_blocks once it is received).
            # The blocks whose KV it holds: behind vLLM's P/D proxy not the prompt's last token's yet.
            self.kv.register(req.prefix_keys, req.decode_cached_tokens // self.kv.block_size,
                             min(req.num_computed // self.kv.block_size, len(req.prefix_keys)), req.cache_keys)
        if req.picked_up_s is None:
            self._not_picked_up.append(req)
        self.sched.add_waiting(req)
        # A hand-off's prompt blocks, cached now, may be the hit that lets a pending one reserve.
        if self._idle or (self._run is not None and (self.sched.could_admit(req) or self._can_reserve())):
            self._wake_up()

    def receive_kv(self, req: Request) -> None:
        """A hand-off's KV has arrived. A rank of a lock-step DP group whose step is a dummy one learns of it at
        its next step's KV connector poll, which vLLM's DP loop runs after that step's decision (an idle rank's
        engine step schedules, then polls in its forward-less execute_model, then runs the dummy batch), so the
        decision after that one schedules it."""
        self.reads_in_flight -= 1
        if self._dummy_step:
            self.unpolled.append(req)
        else:
            self.reading_tokens -= req.input_toks
            self.submit(req)

    def _submit_polled(self) -> None:
        """After a decision: the KV this step's connector poll reports (receive_kv) is scheduled by the next."""
        if self.unpolled:
            for req in self.unpolled:
                self.reading_tokens -= req.input_toks
                self.submit(req)
            self.unpolled.clear()

    @property
    def awaits_kv(self) -> bool:
        """A hand-off's KV is on its way, or arrived and not yet scheduled: vLLM counts such a request among the
        engine's unfinished ones, so its DP group keeps stepping (dp_group.py, waves)."""
        return bool(self.reads_in_flight or self.unpolled or self.sched.num_waiting_kv_ready)

    def receive_handoff(self, req: Request) -> None:
        """A prefilled request chosen to decode here; it waits until blocks for its KV are free."""
        # input_toks, not num_computed: a layer-wise hand-off arrives while its last chunk computes.
        self.pending.append(req)
        self.pending_tokens += req.input_toks
        fits = self._handoff_need(req)[0] <= self.kv.free
        if fits and (self._idle or self._run is not None):
            self._wake_up()

    @property
    def held_for_transfer_blocks(self) -> int:
        """Blocks held for hand-offs: in transfer, or read and not yet polled."""
        return self._held_own_blocks + len(self._held_keys)

    def hold_for_transfer(self, n: int, cache_keys: list[Copy] | None) -> None:
        """A handed-off request's `n` blocks (its cached prompt blocks named by `cache_keys`) stay held."""
        self._held_own_blocks += n - len(cache_keys or ())
        self._held_keys.update(cache_keys or ())

    def kv_read(self, n: int, cache_keys: list[Copy] | None = None) -> None:
        """The decode side has read a handed-off request's KV. vLLM frees its blocks here when the engine next
        polls its KV connector: at the end of its next step's forward (the worker's get_finished), or in an
        empty step when a waiting request finds no room (kv_connector_no_forward). An idle engine does not
        step, so it holds them until work comes."""
        self._read.append((n, cache_keys))
        if self._idle and self.sched.waiting:
            self._wake_up()  # a request waits for room these blocks hold: vLLM is stepping (empty steps)

    def free_read_kv(self) -> bool:
        """The KV connector's poll: free the blocks of every request whose KV was read (those a step reported
        under async scheduling too). Whether any were. (Also what a caller may run once a simulation is over,
        to see every block come back.)"""
        reported = self._free_polled(everything=True)
        reads, self._read = self._read, []
        self._free_reads(reads)
        return reported or bool(reads)

    def _poll_after_step(self) -> None:
        """A step's poll: synchronously, what was read is freed as the step's output is processed, after the
        step's own finished requests; under async scheduling, vLLM processes that output after the decisions
        it has already taken (as the scheduler frees a finished request: Scheduler._finish)."""
        if not self._read:
            return
        if not self.sched.async_scheduling:
            self.free_read_kv()
            return
        self._polled.append((self.sched.decisions + self.sched.async_depth, self._read))
        self._read = []

    def _free_polled(self, everything: bool = False) -> bool:
        """After a decision: free what a step's poll reported that many decisions ago (everything: all a step
        reported, when the engine has processed every output). Whether any was."""
        due = [reads for after, reads in self._polled if everything or after <= self.sched.decisions]
        if not due:
            return False
        self._polled = [(after, reads) for after, reads in self._polled
                        if not everything and after > self.sched.decisions]
        self._free_reads([r for reads in due for r in reads])
        return True

    def _free_reads(self, reads: list[tuple[int, list[Copy] | None]]) -> None:
        for n, cache_keys in reads:
            self.kv.free_request(n, cache_keys)
            self._held_own_blocks -= n - len(cache_keys or ())
            for key in cache_keys or ():
                self._held_keys[key] -= 1
                if not self._held_keys[key]:
                    del self._held_keys[key]

    def wake_for_group(self) -> None:
        """Another rank of this instance's DP group has work: decide (maybe a dummy step) now."""
        if self._idle:
            self._wake_up()

    def _wake_up(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        elif self.dp_group is not None:
            self._woken_at_barrier = True

    def _reservable_head(self) -> tuple[int, int] | None:
        """(blocks to take, prompt blocks already cached) of the first hand-off, when it may reserve
        them now; None otherwise."""
        # Local requests waiting to (re)compute come first, as in vLLM, where a hand-off gets its
        # blocks only when it reaches the head of the waiting queue.
        sched = self.sched
        if not self.pending or len(sched.waiting) > sched.num_waiting_kv_ready or not sched.has_free_slot:
            return None
        if self._handoff_unseen():
            return None
        # Room for the KV it brings and for the token its first decode step adds (less the prompt
        # blocks this instance's prefix cache already holds: shared, not sent again).
        need, hit = self._handoff_need(self.pending[0])
        return (need, hit) if need <= self.kv.free else None

    def _handoff_unseen(self) -> bool:
        """Async scheduling: the first hand-off reached the instance after the decision being taken was taken."""
        return bool(self.pending) and self.pending[0].handoff_s > self.sched.sees_until_s

    def _can_reserve(self) -> bool:
        """Whether _reserve_pending would reserve blocks for the first hand-off now."""
        return self._reservable_head() is not None

    def _reserve_pending(self) -> None:
        while (head := self._reservable_head()) is not None:
            hit = head[1]
            req = self.pending.popleft()
            self.pending_tokens -= req.input_toks
            kv = self.kv
            if hit:
                req.cache_keys = kv.touch(req.prefix_keys[:hit])
            elif req.hash_ids and kv.enable_caching:
                req.cache_keys = []
            if kv.enable_caching:
                kv.query_tokens += req.input_toks
                kv.hit_tokens += hit * kv.block_size
            req.decode_cached_tokens = hit * kv.block_size
            new = blocks_for(self._handoff_tokens(req), kv.block_size) - hit
            kv.allocate(new)
            req.blocks = new + hit
            self.reservations += 1
            req.reserved_seq = self.reservations
            self.reads_in_flight += 1
            self.reading_tokens += req.input_toks
            self.on_reserved(self, req)

    # -- the engine loop ------------------------------------------------------------------------
    def _loop(self) -> Generator[simpy.Event, object, None]:
        env = self.env
        sched = self.sched
        predictor = self.predictor
        while True:
            if (due := self.arrival_due()) is not None:
                yield due
            if self._not_picked_up:
                self._pick_up()
            cutoff = self._step_starts[0] if self.spec.async_scheduling and self._step_starts else None
            plan = sched.schedule(env.now, cutoff)
            self._submit_polled()
            freed = bool(self._polled) and self._free_polled()  # after the decision, as Scheduler._release_finished
            # vLLM's empty step polls the KV connector: what was read is freed for the next decision (a DP rank
            # still takes its place in the group's step, a dummy one).
            polled = plan.empty and sched.waiting and (self.free_read_kv() or freed)
            if polled and self.dp_group is None:
                continue
            if sched.released_after_decision and (sched.waiting or self.pending):
                plan.max_steps = 1  # what finished was freed after the decision: the next may admit more
            elif self._handoff_unseen():
                plan.max_steps = 1  # a hand-off this decision could not see yet is seen by the next
            if self.dp_group is not None:
                # Wakeable while at the barrier: what arrives then is decided on right after.
                self._idle, self._woken_at_barrier, self._dummy_step = True, False, plan.empty
                group_s = yield from self.dp_group.step(self, plan)
                self._idle = False
                if group_s is not None:
                    yield from self._group_step(plan, group_s)
                    continue
                self._dummy_step = False  # no dummy step: the wave ended
                if self._woken_at_barrier or polled:
                    continue
            if plan.empty:
                if sched.lagging(env.now):
                    self._step_starts.append(env.now)  # vLLM's batch queue holds the empty step (Scheduler.lagging)
                    sched.queued_empty_step()
                    continue
                if sched.released_after_decision and self._can_reserve():
                    continue  # async: what finished was freed after _reserve_pending ran; a hand-off fits now
                if sched.release_when_idle():
                    continue  # a hand-off may fit now
                if self._polled and self._free_polled(everything=True):
                    continue  # nothing in flight: every step's output was processed, what it reported freed
                if self._handoff_unseen():
                    # It reached the engine during the last step, after this decision was taken (async): with
                    # nothing in flight the engine decides again at once and sees it (_sleep would wait for a
                    # wake-up that has already come).
                    self._step_starts.clear()
                    continue
                yield from self._sleep()
                continue

            start = env.now
            if plan.prefill:
                seconds = float(predictor.step_time_s(plan.chunks, plan.n_decode, plan.kv_decode_sum,
                                                      plan.kv_decode_max))
                durations = [seconds]
                self.on_prefill_step(self, plan, start, seconds)
                yield env.timeout(seconds)
                steps = 1
            elif plan.max_steps == 1:
                durations = predictor.decode_run_s(plan.n_decode, plan.kv_decode_sum, 1, plan.kv_decode_max).tolist()
                yield env.timeout(durations[0])
                steps = 1
            else:
                # As Python floats from here on: numpy's per-call cost exceeds the arithmetic on a short run.
                durations = predictor.decode_run_s(
                    plan.n_decode, plan.kv_decode_sum, plan.max_steps, plan.kv_decode_max).tolist()
                ends = list(accumulate(durations))  # np.cumsum's sums: one after another
                self._run = (start, ends, plan.n_decode)
                self._run_later_blocks = None  # found when first needed (has_room_for)
                self._run_plan = plan
                yield self._run_or_wake(ends[-1])
                self._wake = None
                steps = plan.max_steps
                elapsed = env.now - start
                if elapsed < ends[-1]:
                    # Woken: finish the step in progress, then decide again. The run stays in progress
                    # meanwhile: the router and the monitor count the steps of it that have ended.
                    # (A step that ended within the trace's resolution before the wake-up ends the run: what
                    # woke it came at that step's end.)
                    steps = min(self._run_steps_done(ARRIVAL_RESOLUTION_S) + 1, plan.max_steps)
                    yield env.timeout(max(start + ends[steps - 1] - env.now, 0.0))
                    durations = durations[:steps]
                self._run = None
            self._after_steps(plan, durations, steps)

    def _run_or_wake(self, seconds: float) -> simpy.Event:
        """An event that fires once `seconds` have passed or the instance is woken, whichever comes first:
        what `timeout | wake` gives, without a Condition's bookkeeping on every run. The first of the two to be
        processed schedules this one, as it would the Condition, so events at one instant keep their order."""
        done = self.env.event()

        def relay(_: simpy.Event) -> None:
            if not done.triggered:
                done.succeed()

        self.env.timeout(seconds).callbacks.append(relay)
        self._wake = self.env.event()
        self._wake.callbacks.append(relay)
        return done

    def _sleep(self) -> Generator[simpy.Event, object, None]:
        """Idle until something wakes the instance (an arrival, a hand-off, freed blocks)."""
        self._last_steps = None
        self._step_starts.clear()
        self._idle = True
        self._wake = self.env.event()
        yield self._wake
        self._wake = None
        self._idle = False

    def _group_step(self, plan: StepPlan, seconds: float) -> Generator[simpy.Event, object, None]:
        """One lock-step DP-group step of `seconds` (pdsim/engine/dp_group.py); an empty plan is a
        dummy batch."""
        durations = [seconds]
        if plan.prefill:
            self.on_prefill_step(self, plan, self.env.now, seconds)
        # A rank without work runs a dummy batch and waits in the MoE collectives for the ranks with work: busy.
        # Steps in which no rank has work (the wave's tail, dp_group.py) are idle spinning, not counted.
        dummy_busy = plan.empty and self.dp_group.step_has_work
        yield self.env.timeout(seconds)
        if plan.empty:
            if dummy_busy:
                self.stats.busy_s += seconds
            self._last_steps = (self.env.now - seconds, durations)
            self._step_starts.append(self.env.now - seconds)
        else:
            self._after_steps(plan, durations, 1)

    def _pick_up(self) -> None:
        # A real engine looks at its input between any two steps; a run of decode steps passed in
        # one event still had those boundaries. One that came within the trace's resolution after a step's end
        # was there at that end (not before its own arrival, though).
        ends = [self.env.now]
        if self._last_steps is not None:
            first_start, durations = self._last_steps
            ends = [first_start + offset for offset in accumulate(durations)] + ends
        # bisect_left is np.searchsorted's binary search (side 'left'), without numpy's per-call cost.
        for req in self._not_picked_up:
            at = bisect_left(ends, req.queued_s - ARRIVAL_RESOLUTION_S)
            req.picked_up_s = max(ends[min(at, len(ends) - 1)], req.queued_s)
        self._not_picked_up.clear()

    def _after_steps(self, plan: StepPlan, durations: list[float], steps: int) -> None:
        """The `steps` steps whose times are `durations` (one each) have ended now."""
        busy_s = numpy_sum(durations)
        self._last_steps = (self.env.now - busy_s, durations)
        if self.spec.async_scheduling:  # the last steps' starts, counted back from now
            starts, t = [], self.env.now
            for seconds in durations[::-1][:self.spec.async_depth]:
                t -= seconds
                starts.append(t)
            self._step_starts.extend(reversed(starts))
        outcome = self.sched.complete(plan, steps, self.env.now)
        self._poll_after_step()
        self.stats.busy_s += busy_s
        self._count_steps(plan, durations, steps, outcome, self.env.now - busy_s + durations[0])

    def _count_steps(self, plan: StepPlan, durations: list[float], steps: int, outcome: StepOutcome,
                     end_of_first: float) -> None:
        """The bookkeeping of steps that ended (busy time aside: a pipeline's micro-batches overlap): tokens,
        ITL samples, a hand-off's first decode token (at `end_of_first`, the first step's end), finishes and
        hand-offs."""
        stats = self.stats
        stats.steps += steps
        stats.prompt_tokens += outcome.prompt_tokens
        stats.decode_tokens += outcome.decode_tokens
        fresh = plan.fresh_decoders
        if outcome.dropped_decodes:
            fresh = [r for r in fresh if r not in outcome.dropped_decodes]
        if plan.n_decode:
            tokens = plan.n_decode - plan.n_ghosts - len(outcome.dropped_decodes)
            stats.add_itl_run(durations, tokens, tokens - len(fresh))
        for req in fresh:
            handed_off = req.kv_transfer_end_s is not None and req.decode_first_token_s is None
            if not (handed_off and self.regenerates_first_token):  # the client never saw the prefill's token
                stats.itl_gaps_s.append(end_of_first - req.last_token_s)
            if handed_off:
                req.decode_first_token_s = end_of_first  # what a client of a P/D proxy sees first
        stats.itl_gaps_s.extend(outcome.gap_itls_s)
        for req in outcome.finished:
            self.on_finish(req)
        for req in outcome.handoffs:
            self.on_handoff(self, req)

    def freeze_busy(self) -> None:
        """The last request has finished: the busy time so far is the run's (InstanceStats.freeze)."""
        self.stats.freeze()

    def settle_run_cut_by_clock(self) -> None:
        """The simulation stopped by the clock inside a decode run: its steps that ended count as stepping one by
        one counts them (busy time, steps, their inter-token gaps, the KV blocks they took, as the timeline
        already shows them), and a hand-off whose first decode step there has ended gets that token's time (what a
        client of a P/D proxy saw first)."""
        if self._run is None or (done := self._run_steps_done()) == 0:
            return
        start, ends, _ = self._run
        self.stats.busy_s += ends[done - 1]
        # The bookkeeping of ended steps, with no outcome: a run finishes nothing before its last step, which the
        # clock cut (and snapshot() counts a run's decode tokens from the run itself).
        self._count_steps(self._run_plan, np.diff(ends[:done], prepend=0.0).tolist(), done, StepOutcome(),
                          start + ends[0])
        self.kv.peak_used = max(self.kv.peak_used, self.kv.used + self._run_blocks_ahead())

    # -- observation --------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, int, int, int]:
        """(requests in prefill, requests decoding, KV blocks used, decode tokens so far), counting
        the steps of a run in progress that have already ended."""
        sched = self.sched
        used = self.kv.used + self._run_blocks_ahead()
        decode_tokens = self.stats.decode_tokens
        if self._run is not None:
            decode_tokens += self._run[2] * self._run_steps_done()
        return len(sched.prefilling), sched.cohort.n, used, decode_tokens
