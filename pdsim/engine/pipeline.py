"""A pipeline-parallel instance (pp_size P > 1) as vLLM V1 runs one (docs/pipeline.md).

vLLM's engine core keeps a batch queue of `max_concurrent_batches` = P scheduled batches
(vllm/v1/executor/multiproc_executor.py; EngineCore.step_with_batch_queue in
vllm/v1/engine/core.py, read in the 0.19.0 wheel): while the queue is not full and the oldest
batch has not finished it schedules another at once, otherwise it blocks on the oldest batch and
processes its output. The scheduler advances a request's computed tokens when it schedules it, so a
request whose step is in flight has nothing left to schedule ("PP>1 and we have already scheduled
all prompt tokens but they are not finished yet") and is skipped until its output returns.

Here: the batches pass through P stages, each computing one micro-batch at a time in launch order,
with the activation send between stages (non-blocking in vLLM: isend, so the stage is free once
its forward ends). The scheduler is pdsim's vLLM scheduler with the
requests of in-flight batches taken out of its running list, decode cohort and prefill list while
their batch is in flight (they keep their KV blocks and count against max_num_seqs) and put back,
in admission order, when it returns.

A prompt's chunks before its last are applied when scheduled, as vLLM advances computed tokens
then: the next chunk may go in the next micro-batch while the previous one is in flight. The last
chunk (which samples a token) and every decode are taken out until their batch returns.
A request in flight can be preempted, as in vLLM (its running list keeps in-flight requests in
admission order): its blocks are freed at once and the token its batch samples is still appended
when the batch returns. If it was admitted again meanwhile and has a step in flight, that step counts
as computed and the new token is scheduled at once, beside it (PipelineScheduler._late_token). A step
that preempts and has nothing else to run is queued empty, and the next decision waits for the oldest
batch (vLLM admits nothing in a step that preempted). With async scheduling the micro-batches do not
overlap: AsyncPipelinedInstance, at the end (docs/pipeline.md).
"""

from __future__ import annotations

import dataclasses
import operator
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from pdsim.engine.cohort import DecodeCohort
from pdsim.engine.instance import Instance, InstanceSpec
from pdsim.engine.kv_cache import blocks_for
from pdsim.engine.request import Request
from pdsim.engine.scheduler import Scheduler
from pdsim.engine.step_plan import StepOutcome, StepPlan
from pdsim.perf.pipeline_time import AsyncPipelinePredictor, PipelinePredictor


@dataclass
class MicroBatch:
    plan: StepPlan
    launched_s: float
    done: simpy.Event
    decoders: list[Request] = field(default_factory=list)
    prefills: list[Request] = field(default_factory=list)
    kv_tokens: int = 0  # KV tokens its requests hold (for the router's load)
    cohort: DecodeCohort | None = None  # the scheduler's decode cohort when it was launched
    final_plan: StepPlan | None = None  # the plan less the chunks applied at launch (not a prompt's last)
    partial_tokens: int = 0  # prompt tokens of those chunks
    # Requests that left the batch while it was in flight (preempted, or given more to compute after a
    # late token): the token it samples for them is still appended when it returns.
    leavers: list[Request] = field(default_factory=list)
    # Those of them that left with their prompt's last chunk: a prefill token, with no decode step's ITL.
    prefill_leavers: set[Request] = field(default_factory=set)


class PipelineScheduler(Scheduler):
    """vLLM's scheduler where the requests of in-flight micro-batches cannot be scheduled again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_in_flight = 0
        self.in_flight_tokens = 0
        self.batches: list[MicroBatch] = []  # in flight, oldest first

    def _preempt_last(self, now: float) -> Request | None:
        """vLLM's running list holds the requests of in-flight batches too, in admission order: when
        the newest of all is in flight, it is the victim."""
        newest = next(reversed(self.running), None)
        # On a prefill instance, not one whose final chunk is in flight with its KV already streaming out (a
        # layer-wise hand-off at the chunk's launch): it leaves this instance when the chunk returns. (pdsim does
        # not model aborting a transfer in flight; taking the next newest keeps its blocks and the hand-off
        # whole.) On a decode instance every request came by a hand-off, and each is a candidate.
        candidates = [r for b in self.batches for r in (*b.decoders, *b.prefills)
                      if not (self.prefill_only and r.handoff_s is not None)]
        if candidates:
            in_flight = max(candidates, key=operator.attrgetter("admitted_seq"))
            if newest is None or in_flight.admitted_seq > newest.admitted_seq:
                return self._preempt_in_flight(in_flight)
        return super()._preempt_last(now)

    def _preempt_in_flight(self, victim: Request) -> Request:
        """vLLM frees an in-flight request's blocks and sends it back to waiting at once; the token
        its micro-batch samples is still appended when the batch returns (complete_batch)."""
        batch = next(b for b in self.batches if victim in b.decoders or victim in b.prefills)
        decoding = victim in batch.decoders
        self._leave_in_flight(batch, victim)
        # vLLM caches a chunk's blocks when it schedules them; an in-flight decode token's block not yet.
        return self._send_back(victim, victim.num_computed - decoding)

    def _late_token(self, req: Request, now: float, out: StepOutcome, from_prefill: bool = False) -> None:
        """The token a returning micro-batch sampled for a request that left it in flight. vLLM's
        update_from_output appends it whatever the request's state now, unless it has finished.

        A request preempted in flight and admitted again may have its new last chunk (or, later, a
        decode) in flight when the token comes: vLLM has counted that step's tokens as computed, so
        the new token is schedulable at once, beside the step in flight, whose own token is appended
        when it returns. The request leaves that batch too (it becomes one of its leavers) and is
        a running request again, with the step in flight counted as computed."""
        if req.status == "finished" or (self.prefill_only and req.handoff_s is not None):
            # A prefill-only instance's request is done here once handed off (max_tokens=1).
            if not from_prefill:
                out.dropped_decodes.append(req)
            return
        if from_prefill and req.num_generated:
            # A recompute's last chunk: its token's gap is an ITL, as when a prompt completes in place
            # (a decode step's token is counted with its batch instead).
            out.gap_itls_s.append(now - req.last_token_s)
        waiting = req in self.waiting
        if waiting:
            before = req.tokens_to_compute
        else:
            batch = next((b for b in self.batches if req in b.decoders or req in b.prefills), None)
            if batch is not None:
                self._leave_in_flight(batch, req)
            else:
                self._take_out(req)
        self._add_token(req, now, out, decoded=not from_prefill)
        hand_off = self.hands_off(req, req.num_generated)
        done = not hand_off and req.num_generated >= req.output_toks
        if done or hand_off:
            if waiting:
                self.waiting.remove(req)
                self.waiting_tokens -= before
            else:
                self.running.pop(req, None)
            if done:
                self._finish(req, now, out)
            else:
                self._hand_off_late(req, out)
            return
        if waiting:
            self.waiting_tokens += req.tokens_to_compute - before
            return
        if req not in self.running:
            self.running = dict.fromkeys(sorted([*self.running, req], key=operator.attrgetter("admitted_seq")))
        if req.tokens_to_compute == 1:
            req.joined_from_handoff = False
            self.cohort.add(req)
        else:
            self.prefilling.append(req)
            self.prefilling.sort(key=operator.attrgetter("admitted_seq"))
            self.prefilling_kv_tokens += req.num_computed

    @staticmethod
    def _hand_off_late(req: Request, out: StepOutcome) -> None:
        """A prefill-only instance's request whose first token came back while it was being recomputed (preempted
        in flight): vLLM's P/D proxy asked that instance for one token (max_tokens 1), so the token finishes the
        request there and it leaves with it; a chunk of it still in flight returns a token that is dropped. The
        decode side takes its whole prompt's KV as sent: what vLLM's connector sends for blocks the request no
        longer holds (freed by the preemption) is not modelled."""
        req.num_computed = req.input_toks
        out.handoffs.append(req)

    def _leave_in_flight(self, batch: MicroBatch, req: Request) -> None:
        """Take a request out of its in-flight batch, its step there counted as computed (vLLM
        advances the computed tokens when it schedules); the batch's token for it comes later."""
        if req in batch.decoders:
            batch.decoders.remove(req)
            batch.cohort.remove(req)  # its progress before the step in flight
            held = req.num_computed
            req.num_computed += 1
            req.blocks = blocks_for(req.num_computed, self.block_size)  # with the block that step was given
        else:
            plan = batch.final_plan
            k = next(i for i, (r, _) in enumerate(plan.prefill) if r is req)
            chunk = plan.prefill[k][1]
            batch.final_plan = dataclasses.replace(plan, prefill=plan.prefill[:k] + plan.prefill[k + 1:],
                                                   prefill_prefix=plan.prefill_prefix[:k] + plan.prefill_prefix[k + 1:])
            batch.prefills.remove(req)
            batch.prefill_leavers.add(req)
            held = req.num_computed
            req.num_computed += chunk
            batch.partial_tokens += chunk
        batch.kv_tokens -= held
        self.in_flight_tokens -= held
        self.num_in_flight -= 1
        batch.leavers.append(req)

    @staticmethod
    def _add_token(req: Request, now: float, out: StepOutcome, decoded: bool) -> None:
        req.num_generated += 1
        # A prompt's last chunk samples a token too, which a step that completes the prompt in place does not count
        # as decoded (Scheduler.complete): neither is it here.
        if decoded:
            out.decode_tokens += 1
        if req.first_token_s is None:
            req.first_token_s = now
        req.last_token_s = now

    @property
    def num_batches_in_flight(self) -> int:
        return len(self.batches)

    @property
    def _slots_taken(self) -> int:
        return len(self.running) + len(self._releasing) + self.num_in_flight

    @property
    def load_tokens(self) -> int:
        return super().load_tokens + self.in_flight_tokens

    def detach(self, plan: StepPlan, batch: MicroBatch) -> None:
        """Take the plan's requests out of the schedulable state while their batch is in flight.

        Every decoding request of the cohort is in the plan, so the batch takes the whole cohort
        object (its members keep their progress relative to it) and the scheduler starts a new one."""
        running = self.running
        batch.decoders = [r for r in running if r.in_cohort]
        batch.cohort, self.cohort = self.cohort, DecodeCohort(self.block_size)
        final = []
        for (req, num_new), prefix in zip(plan.prefill, plan.prefill_prefix):
            if req.num_computed + num_new < req.input_toks + req.num_generated:
                # Not the prompt's last chunk: vLLM advances the computed tokens when it schedules, so the
                # next chunk can go in the next micro-batch while this one is in flight.
                req.num_computed += num_new
                self.prefilling_kv_tokens += num_new
                batch.partial_tokens += num_new
                continue
            final.append(((req, num_new), prefix))
            self.prefilling.remove(req)
            self.prefilling_kv_tokens -= req.num_computed
            batch.prefills.append(req)
        batch.final_plan = plan if len(final) == len(plan.prefill) else dataclasses.replace(
            plan, prefill=[f[0] for f in final], prefill_prefix=[f[1] for f in final])
        if batch.prefills:
            gone = set(batch.prefills)
            self.running = {r: None for r in running if not r.in_cohort and r not in gone}
        elif batch.decoders:
            self.running = {r: None for r in running if not r.in_cohort}
        batch.kv_tokens = batch.cohort.kv_sum + sum(r.num_computed for r in batch.prefills)
        self.num_in_flight += len(batch.decoders) + len(batch.prefills)
        self.in_flight_tokens += batch.kv_tokens
        if not plan.empty:  # a DP rank's dummy batch holds no request and is not completed
            self.batches.append(batch)

    def complete_batch(self, batch: MicroBatch, now: float) -> StepOutcome:
        """Put the batch's requests back where they were and apply its step."""
        # The engine schedules between any two returns (pdsim/engine/pipeline.py's loop, as vLLM's
        # step_with_batch_queue), and every schedule leaves the cohort empty or launches it whole.
        assert self.cohort.n == 0, "a returning micro-batch found decodes that were never launched"
        self.cohort = batch.cohort
        self.num_in_flight -= len(batch.decoders) + len(batch.prefills)
        self.in_flight_tokens -= batch.kv_tokens
        # Back in vLLM's running-list order: admission order (Request.admitted_seq).
        order = operator.attrgetter("admitted_seq")
        if batch.prefills:
            for req in batch.prefills:
                self.prefilling.append(req)
                self.prefilling_kv_tokens += req.num_computed
            self.prefilling.sort(key=order)
        self.running = dict.fromkeys(sorted([*self.running, *batch.decoders, *batch.prefills], key=order))
        self.batches.remove(batch)
        out = self.complete(batch.final_plan or batch.plan, 1, now)
        out.prompt_tokens += batch.partial_tokens
        for req in batch.leavers:
            self._late_token(req, now, out, req in batch.prefill_leavers)
        return out


class PipelinedInstance(Instance):
    """An instance of P pipeline stages with vLLM's batch queue of P micro-batches."""

    predictor: PipelinePredictor

    def __init__(self, env: simpy.Environment, spec: InstanceSpec, predictor: PipelinePredictor,
                 num_blocks: int, max_decode_run_steps: int) -> None:
        super().__init__(env, spec, predictor, num_blocks, 1)
        old = self.sched
        self.sched = PipelineScheduler(
            self.kv, max_num_seqs=old.max_num_seqs, max_num_batched_tokens=old.max_num_batched_tokens,
            enable_chunked_prefill=old.enable_chunked_prefill, prefill_only=old.prefill_only,
            max_decode_run_steps=1, long_prefill_token_threshold=old.long_prefill_token_threshold,
            async_scheduling=False, reserve_full_isl=old.reserve_full_isl)
        self.sched.reserve_handoffs = self._reserve_pending
        self.num_stages = predictor.num_stages
        self._stage_free_s = [0.0] * self.num_stages  # when each stage's last micro-batch leaves it
        self.in_flight: deque[MicroBatch] = deque()
        self.stats.stage_busy_s = [0.0] * self.num_stages
        self._busy_since: float | None = None

    def _loop(self) -> Generator[simpy.Event, object, None]:
        """vLLM's step_with_batch_queue: schedule a batch while the queue has room; go on scheduling
        while the oldest batch has not finished, else (or when nothing was scheduled) wait for the
        oldest and process its output."""
        env, sched = self.env, self.sched
        while True:
            if (due := self.arrival_due()) is not None:
                yield due  # as Instance._loop: a request within the trace's resolution is seen by this decision
            if self._not_picked_up:
                self._pick_up()
            if len(self.in_flight) < self.num_stages:
                plan = sched.schedule(env.now)
                self._submit_polled()
                # An empty step polls the KV connector (Instance.kv_read): decide again, a DP rank after its
                # place in the group's (dummy) step, as Instance._loop.
                polled = plan.empty and sched.waiting and self.free_read_kv()
                if polled and self.dp_group is None:
                    continue
                priced = None
                if self.dp_group is not None:
                    # Wakeable at the barrier, as Instance._loop: what arrives then is decided on right after.
                    self._idle, self._woken_at_barrier, self._dummy_step = True, False, plan.empty
                    priced = yield from self.dp_group.step(self, plan)  # None: the group's wave ended
                    self._idle = False
                    if priced is None:  # no dummy step: the wave ended
                        self._dummy_step = False
                        if self._woken_at_barrier or polled:
                            continue
                elif not plan.empty:
                    priced = self._price(plan)
                if priced is not None:
                    self._launch(plan, *priced)  # an empty plan: a DP rank's dummy batch
                    if len(self.in_flight) < self.num_stages and not self.in_flight[-1].done.triggered:
                        continue
                elif self.dp_group is None and any(not b.plan.empty for b in self.in_flight):
                    # vLLM queues an empty schedule too: done at once, it holds a place in the batch
                    # queue until it is the oldest, so fewer real batches fit meanwhile.
                    empty = MicroBatch(plan, env.now, env.event())
                    empty.done.succeed()
                    self.in_flight.appendleft(empty)
            if self.in_flight:
                if not self.in_flight[-1].done.triggered:
                    yield self.in_flight[-1].done
                self._collect()
                continue
            yield from self._sleep()

    def _price(self, plan: StepPlan) -> tuple[tuple[float, ...], float]:
        chunks = plan.chunks
        stage_s = self.predictor.stage_times_s(chunks, plan.n_decode, plan.kv_decode_sum, plan.kv_decode_max)
        return stage_s, self.predictor.send_s(sum(c for c, _ in chunks) + plan.n_decode)

    def _launch(self, plan: StepPlan, stage_s: tuple[float, ...], send_s: float) -> None:
        env = self.env
        batch = MicroBatch(plan, env.now, env.event())
        ends = self._stage_ends(stage_s, send_s)
        if plan.prefill:  # before detach: the layer-wise hand-off reads the chunks' progress as scheduled
            # Its layers run from the first stage's start to the last stage's end, waits for busy stages included.
            start = ends[0] - stage_s[0]
            self.on_prefill_step(self, plan, start, ends[-1] - start)
        self.sched.detach(plan, batch)
        if self._busy_since is None:
            self._busy_since = env.now
        self.in_flight.appendleft(batch)
        env.process(self._through_stages(batch, ends, stage_s))

    def _stage_ends(self, stage_s: tuple[float, ...], send_s: float) -> list[float]:
        """When a micro-batch launched now leaves each stage. Every stage runs the micro-batches one
        at a time in launch order: each stage's worker runs the forwards in the order the engine
        issued them, so a small batch does not overtake a large one whose activations are still being
        sent. The send does not hold the stage (vLLM's isend)."""
        ends, arrival, free = [], self.env.now, self._stage_free_s
        for i, seconds in enumerate(stage_s):
            free[i] = max(arrival, free[i]) + seconds
            ends.append(free[i])
            arrival = free[i] + send_s
        return ends

    def _through_stages(self, batch: MicroBatch, ends: list[float],
                        stage_s: tuple[float, ...]) -> Generator[simpy.Event, object, None]:
        env = self.env
        for i, (end, seconds) in enumerate(zip(ends, stage_s)):
            yield env.timeout(end - env.now)
            self.stats.stage_busy_s[i] += seconds
        batch.done.succeed()

    def _collect(self) -> None:
        batch = self.in_flight.pop()
        now = self.env.now
        if not batch.plan.empty:  # a DP rank's dummy batch changes nothing
            outcome = self.sched.complete_batch(batch, now)
            self.free_read_kv()
            self._count_steps(batch.plan, [now - batch.launched_s], 1, outcome, now)
        self._last_steps = None  # inputs are taken in at every decision, which happen at launches and returns
        if not self.in_flight:
            self.stats.busy_s += now - self._busy_since
            self._busy_since = None

    def freeze_busy(self) -> None:
        """As Instance.freeze_busy, with the busy span open now (micro-batches decided ahead, or a DP group's dummy
        ones, still in flight) counted up to now, and each stage's time as it stands."""
        self.stats.freeze(self.env.now - self._busy_since if self._busy_since is not None else 0.0)

    def settle_run_cut_by_clock(self) -> None:
        """Stopped by the clock with micro-batches in flight: the busy span open since the pipeline last idled
        counts up to the stop (it was counted only when the pipeline emptied, so a run cut while busy showed 0%)."""
        super().settle_run_cut_by_clock()
        if self._busy_since is not None:
            self.stats.busy_s += self.env.now - self._busy_since
            self._busy_since = self.env.now

    @property
    def num_requests(self) -> int:
        return super().num_requests + self.sched.num_in_flight

    def snapshot(self) -> tuple[int, int, int, int]:
        sched = self.sched
        prefill = len(sched.prefilling) + sum(len(b.prefills) for b in self.in_flight)
        decode = sched.cohort.n + sum(len(b.decoders) for b in self.in_flight)
        return prefill, decode, self.kv.used, self.stats.decode_tokens


class AsyncPipelinedInstance(Instance):
    """Pipeline stages under vLLM's async scheduling. Its micro-batches do not overlap (every one holds
    every decode and waits for the previous one's sampled tokens: AsyncPipelinePredictor), so the
    engine is the unpipelined async one stepping through every stage, deciding pp_size - 1 steps ahead
    as vLLM's batch queue of pp_size lets it (Scheduler.async_depth); the per-stage busy time is added."""

    predictor: AsyncPipelinePredictor

    def __init__(self, env: simpy.Environment, spec: InstanceSpec, predictor: AsyncPipelinePredictor,
                 num_blocks: int, max_decode_run_steps: int) -> None:
        super().__init__(env, spec, predictor, num_blocks, max_decode_run_steps)
        self.stats.stage_busy_s = [0.0] * predictor.num_stages

    def _after_steps(self, plan: StepPlan, durations: list[float], steps: int) -> None:
        chunks = plan.chunks
        for j in range(steps):  # the times were priced already: these lookups hit the predictor's cache
            stage_s = self.predictor.stage_times_s(chunks, plan.n_decode, plan.kv_decode_sum + j * plan.n_decode,
                                                   plan.kv_decode_max + j)
            for i, seconds in enumerate(stage_s):
                self.stats.stage_busy_s[i] += float(seconds)
        super()._after_steps(plan, durations, steps)
