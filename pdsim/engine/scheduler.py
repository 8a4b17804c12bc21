"""vLLM-v1-style continuous batching for one instance: what runs in the next step.

The rules follow vLLM v1's `Scheduler.schedule()` (vllm/v1/core/sched/scheduler.py, checked
against 0.19.0; docs/validation.md has the rule table):

- Running requests are served in admission order (vLLM's `self.running` list) under the token
  budget `max_num_batched_tokens`: a decode takes one token, a prefill (or recompute) chunk
  `min(tokens left, long_prefill_token_threshold if > 0, budget left)`. Once the budget is spent
  the rest of the list waits a step, decodes included. With the default threshold 0 a partial
  prefill always takes the whole remaining budget, so nothing is ever admitted behind it while it
  is partial and the order is the same as "all decodes, then partial prefills". With a fixed
  threshold a request can be admitted behind partial prefills, but the tokens scheduled ahead of
  it never grow afterwards, so it is not skipped either; a threshold that grows (vLLM 0.33's
  adaptive one) can skip it, and pdsim follows the list order in every case. The decode cohort
  keeps its O(log n) step: only the requests from the first partial prefill on are walked.
- KV blocks are allocated before a step. When they run out the last request of the running list
  (the newest) is preempted: its blocks are freed, its progress reset to 0 (recompute), and it
  goes to the FRONT of the waiting queue; no waiting request is admitted in a step that preempted.
- Then waiting requests, first come first served, stopping at the first that does not fit:
  `max_num_seqs` running, budget spent, not enough free blocks for its whole sequence (vLLM
  0.19's `scheduler_reserve_full_isl`, on by default; `reserve_full_isl=False`: for its first
  chunk only, as up to 0.18), or (without chunked prefill) a prompt larger than the budget left.
  Hand-offs whose KV has arrived go first (vLLM's `skipped_waiting` queue).
- With async scheduling (`async_scheduling`, vLLM's `--async-scheduling`) a step is decided while
  the previous one runs, so only requests queued before that step started can join, and a
  request that finished in that step still holds its slot and blocks; an idle engine still starts
  at once. With pipeline stages (one step at a time, pipeline.py) vLLM decides `async_depth` =
  pp_size - 1 steps ahead: a finished request holds its slot for that many decisions and, as vLLM
  counts only the tokens it has seen, takes part in the steps already decided (a ghost decode,
  Finishing); a preempted request's tokens from the steps decided before reach vLLM over the next
  decisions, so a recompute admitted before then leaves them out of its first chunk.

Prefix caching (see kv_cache.py): a request admitted with nothing computed first takes the
longest run of its blocks cached here, at most all but its last token (vLLM's
get_computed_blocks), and computes from there; its new full prompt blocks are cached as they are
allocated (vLLM's cache_blocks in allocate_slots). Shared prompt blocks need prefix ids; a
preempted request's computed blocks, prompt and output, stay cached under keys of their own
until evicted, so its recompute can be shorter. With async scheduling a request whose last token
is in flight is still in vLLM's running list: when it is the newest it is the one preempted.

Not modelled: speculative decoding (`num_lookahead_tokens`),
and KV allocation per request in list order (the decode cohort asks for its blocks as one group;
the victims are the same unless partial prefills sit between decodes and memory runs out).

Checked against vLLM 0.12.0's and 0.19.0's `Scheduler` and `AsyncScheduler` (first-token and finish
times agree to rounding; benchmarks/vllm_scheduler_check.py, docs/validation.md; the golden
scenarios are replayed by tests/test_engine.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pdsim.engine.admission import WaitingAdmission
from pdsim.engine.cohort import DecodeCohort
from pdsim.engine.kv_cache import BlockManager, blocks_for
from pdsim.engine.request import Request
from pdsim.engine.step_plan import StepOutcome, StepPlan

_NONE: frozenset[Request] = frozenset()


@dataclass(slots=True)
class Finishing:
    """A request that finished while async scheduling had decided later steps: in vLLM it is still in
    the running list (the newest can be the one preempted, freeing its blocks early), holding its slot
    and blocks until its output is processed, `async_depth` decisions later. Deciding more than one step
    ahead, vLLM also put it in the steps after its last (it counts only the tokens it has seen): a ghost
    decode in the cohort until then."""

    req: Request
    blocks: int
    cache_keys: list[int | tuple[int, int]] | None
    release_after: int  # the decision after which its blocks are freed
    ghost: bool = False


class Scheduler(WaitingAdmission):
    num_in_flight = 0  # running requests in micro-batches in flight (pipeline.py; none here)
    num_batches_in_flight = 0  # micro-batches in flight (pipeline.py; none here)

    def __init__(
        self,
        kv: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool,
        prefill_only: bool,
        max_decode_run_steps: int,
        long_prefill_token_threshold: int = 0,
        async_scheduling: bool = False,
        reserve_full_isl: bool = True,
        async_depth: int = 1,
    ) -> None:
        self.kv = kv
        self.block_size = kv.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.prefill_only = prefill_only
        # Behind vLLM's P/D proxy every request goes on to the decode instance, a one-token output too
        # (the proxy drops the prefill's token); set by the cluster in client TTFT mode.
        self.hands_off_all = False
        self.max_decode_run_steps = max_decode_run_steps
        self.long_prefill_token_threshold = long_prefill_token_threshold  # 0: no cap on a chunk
        self.reserve_full_isl = reserve_full_isl  # admit only what fits whole (vLLM >= 0.19)
        self.waiting: deque[Request] = deque()
        self.running: dict[Request, None] = {}  # admission order; the last one is preempted first
        self.prefilling: list[Request] = []  # running requests still computing prompt (or recompute) tokens
        self.cohort = DecodeCohort(kv.block_size)
        # Decoding requests the last step's budget ran out before (behind partial prefills in the
        # running list; needs a chunk cap that grew since they were admitted): out of the cohort.
        self.paused: dict[Request, None] = {}
        self._decided_s = 0.0  # when the decision being made was taken (see schedule)
        # Async scheduling decides step n+1 before step n's output is processed, so a request that
        # finished in step n still holds its slot and blocks for that decision: freed after it.
        self.async_scheduling = async_scheduling
        # How many steps ahead vLLM decides: its batch queue less the step running (1 without pipeline
        # stages; pp_size - 1 with them, whose steps run one at a time: pipeline.py). A request that
        # finished holds its slot and blocks for that many decisions.
        self.async_depth = async_depth
        self._decisions = 0
        self._releasing: list[Finishing] = []
        self.ghosts = 0  # entries of _releasing with a ghost decode still in the cohort
        # A preempted request's tokens from the steps vLLM had decided but not yet seen (async_depth > 1):
        # for each, the decision by which vLLM has seen it.
        self._unseen: dict[Request, list[int]] = {}
        self._admissions = 0  # running requests' admission numbers (Request.admitted_seq)
        self.released_after_decision = 0
        self.paused_kv_tokens = 0
        self._rejoined: set[Request] | frozenset[Request] = _NONE  # paused last step, back in the cohort now
        self.waiting_tokens = 0  # tokens the waiting requests still have to compute
        self.prefilling_kv_tokens = 0
        self.num_preemptions = 0
        self.num_waiting_kv_ready = 0
        # The instance's hand-offs waiting for decode-side blocks take them here, in the waiting phase
        # (Instance._reserve_pending; set by the instance).
        self.reserve_handoffs: Callable[[], None] = lambda: None
        # Blocks of a run of decode steps passing in one event taken before its end (Instance._take_run_blocks).
        self.run_blocks_taken = 0
        self._cohort_blocks_allocated = False

    # -- queue state -------------------------------------------------------------------------
    @property
    def load_tokens(self) -> int:
        """Queued plus running tokens: the router's measure of how busy this instance is."""
        return self.waiting_tokens + self.prefilling_kv_tokens + self.cohort.kv_sum + self.paused_kv_tokens

    def add_waiting(self, req: Request) -> None:
        self.waiting.append(req)
        if req.kv_ready:
            self.num_waiting_kv_ready += 1
        self.waiting_tokens += req.tokens_to_compute

    # -- one scheduling decision ---------------------------------------------------------------
    def schedule(self, now: float, admit_cutoff_s: float | None = None) -> StepPlan:
        """The next step. admit_cutoff_s: only requests queued by then may be admitted; vLLM's async
        scheduling decides step n+1 while step n runs, so a request that arrived during step n
        waits for step n+2. None: everything queued so far (synchronous scheduling).

        The phases follow vLLM's schedule(): the running list first (budget, decode blocks,
        partial prefill chunks, preempting the newest when memory runs out), then the waiting
        queue, then how many decode steps may run before the next decision."""
        plan = StepPlan()
        self._decisions += 1
        self._decided_s = now if admit_cutoff_s is None else admit_cutoff_s
        self.released_after_decision = 0  # blocks of finished requests freed once it was taken
        rejoined = self._rejoin_paused()
        chunks = self._budget_running_tail(now) if self.prefilling else {}
        preempted = self._allocate_decodes(now)
        budget = self.max_num_batched_tokens - self.cohort.n
        for req in rejoined:
            if req.in_cohort:
                plan.fresh_decoders.append(req)  # its gap since the last token is two steps or more
        budget, preempted_chunk = self._schedule_partial_prefills(plan, chunks, budget, now)
        budget = self._schedule_waiting(plan, budget, preempted or preempted_chunk, now)
        if not (preempted or preempted_chunk) and self.has_free_slot and budget > 0:
            # vLLM's waiting loop, where a remote-KV request allocates its blocks: after the running
            # requests took theirs, not in a step that preempted, not while max_num_seqs run, and not
            # once the step's token budget is spent.
            self.reserve_handoffs()
            if not plan.prefill and not self.cohort.n and self._decided_s < now and not self.lagging(now):
                # Nothing would run: with no step in flight the engine sees every hand-off that has reached it
                # (async scheduling decided this step while the last one ran, before later ones came).
                self._decided_s = now
                self.reserve_handoffs()
        self._plan_decode_run(plan, preempted or preempted_chunk)
        self._release_finished()
        if self._releasing:
            plan.max_steps = 1  # held for decisions to come, each of which may free it (async_depth > 1)
        return plan

    def lagging(self, now: float) -> bool:
        """Deciding two or more steps ahead (async scheduling, 3+ pipeline stages), this decision was taken
        before now, with steps in flight: an empty one is queued as a step of its own, and the engine decides
        again when the oldest returns (pdsim/engine/instance.py), not at once."""
        return self.async_depth > 1 and self._decided_s < now

    def _rejoin_paused(self) -> list[Request]:
        """Members skipped last step decode again (unless skipped again this step)."""
        rejoined: list[Request] = []
        if self.paused:
            rejoined = list(self.paused)
            for req in rejoined:
                self.cohort.add(req)
            self.paused.clear()
            self.paused_kv_tokens = 0
        self._rejoined = set(rejoined) if rejoined else _NONE
        return rejoined

    def _budget_running_tail(self, now: float) -> dict[Request, int]:
        """The running list in admission order: decodes ahead of the first partial prefill take a
        token each (the budget always covers them: max_num_batched_tokens >= max_num_seqs), the
        requests from there on share what is left in order, and whoever comes after the budget
        is spent waits (a decode is paused, out of the cohort). Only that tail is walked, one
        request at a time. Returns each partial prefill's chunk."""
        cohort = self.cohort
        chunks: dict[Request, int] = {}
        first = self.prefilling[0]
        tail: list[Request] = []
        for req in reversed(self.running):
            tail.append(req)
            if req is first:
                break
        tail.reverse()
        budget = self.max_num_batched_tokens - cohort.n + sum(1 for r in tail if r.in_cohort)
        for req in tail:
            if req.in_cohort:
                if budget > 0:
                    budget -= 1
                else:
                    cohort.remove(req)  # syncs num_computed / num_generated
                    if req not in self._rejoined:
                        req.last_token_s = now  # its last token came at the end of the last step
                    self.paused[req] = None
                    self.paused_kv_tokens += req.num_computed
            elif budget > 0:
                num_new = min(self._chunk_cap(req.tokens_to_compute), budget)
                chunks[req] = num_new
                budget -= num_new
        return chunks

    def hands_off(self, req: Request, generated: int) -> bool:
        """Whether this (prefill-only) instance hands `req` on to a decode instance once it has made `generated`
        tokens, rather than finishing it here."""
        return self.prefill_only and (self.hands_off_all or generated < req.output_toks)

    def _allocate_decodes(self, now: float) -> bool:
        """Decoding requests allocate first: each needs one token and, at a block boundary, one
        new block; short of blocks, the newest running request is preempted. Returns whether any was."""
        cohort, kv = self.cohort, self.kv
        preempted = False
        self._cohort_blocks_allocated = False
        need = cohort.new_blocks(0, 1)
        while cohort.n and need > kv.free:
            self._preempt_last(now)
            preempted = True
            need = cohort.new_blocks(0, 1)
        kv.allocate(need)
        self._cohort_blocks_allocated = True
        return preempted

    def _schedule_partial_prefills(self, plan: StepPlan, chunks: dict[Request, int], budget: int,
                                   now: float) -> tuple[int, bool]:
        """The partial prefills' chunks, in admission order. Returns the budget left and whether a
        request was preempted for their blocks."""
        preempted = False
        for req in list(self.prefilling):
            num_new = chunks.get(req, 0)
            if budget <= 0:
                break
            if num_new <= 0:  # nothing to compute until a token it sampled comes back (async_depth > 1)
                continue
            if req not in self.running:  # preempted while serving an earlier one
                continue
            num_new = min(num_new, budget)
            need = blocks_for(req.num_computed + num_new, self.block_size) - req.blocks
            while need > self.kv.free and req in self.running:
                self._preempt_last(now)
                preempted = True
            if req not in self.running:
                break
            self.kv.allocate(need)
            req.blocks += need
            if req.cache_keys is not None:
                self.kv.register_request(req, num_new)
            plan.prefill.append((req, num_new))
            plan.prefill_prefix.append(req.num_computed)
            budget -= num_new
        return budget, preempted

    def _schedule_waiting(self, plan: StepPlan, budget: int, preempted: bool, now: float) -> int:
        """Waiting requests, unless this step already had to preempt (as vLLM does) and still has
        work: with nothing left running, vLLM's next decision would admit them, so they are admitted
        now, as it would. (With micro-batches in flight vLLM queues the empty step and decides again
        when the oldest returns: pipeline.py. plan.n_decode is only filled in later, so the decodes are
        counted from the cohort.) Returns the token budget left."""
        cohort = self.cohort
        left = budget
        if preempted and not plan.prefill and not cohort.n and not self.num_batches_in_flight \
                and not self.lagging(now):
            # vLLM's step that preempted is empty, and the next decision admits: with the whole token budget
            # (none spent on the decodes it preempted), and, scheduling asynchronously, once the step in
            # flight has returned (core.py step_with_batch_queue: an empty step waits for it), so with what
            # finished there freed and every arrival seen.
            budget = self.max_num_batched_tokens
            if self.async_scheduling:
                self._catch_up(now)
            return self._admit_waiting(plan, budget, now)
        if not preempted:
            left = self._admit_waiting(plan, budget, now)
        if not plan.prefill and not cohort.n and self.waiting and (self._decided_s < now or self._releasing) \
                and not self.lagging(now):
            # Nothing would run: with no step in flight the engine has processed the last output
            # (freeing what finished, seeing every token) and schedules what has arrived at once.
            self._catch_up(now)
            left = self._admit_waiting(plan, budget, now)
        return left

    def _catch_up(self, now: float) -> None:
        """The decision is taken as after every step's output was processed: what finished freed, every token
        and arrival until now seen."""
        self._release_finished(everything=True)
        self._unseen.clear()
        self._decided_s = now

    def _plan_decode_run(self, plan: StepPlan, preempted: bool) -> None:
        """The decode batch, and how many decode steps may run back to back."""
        cohort = self.cohort
        plan.n_decode = cohort.n
        plan.n_ghosts = self.ghosts
        plan.kv_decode_sum = cohort.kv_sum
        plan.kv_decode_max = cohort.kv_max
        if not plan.prefill and cohort.n and not preempted and not self.paused:
            # Nothing else can be scheduled until a member finishes: admission is blocked by
            # max_num_seqs, memory or budget, and none of those improve while only decodes run.
            # (After a preemption, the next step may admit the victim again: no run then.)
            limit = min(cohort.steps_to_next_finish(), self.max_decode_run_steps)
            plan.max_steps = 1 + cohort.max_steps_within(self.kv.free, 1, limit - 1)
            if self.waiting and self.waiting[-1].queued_s > self._cutoff:
                # Async scheduling: the newest arrival (appended last) may join at the next decision.
                plan.max_steps = 1

    def release_when_idle(self) -> bool:
        """Nothing runs and nothing is in flight: the engine has processed every output, so what finished is
        freed now, not at decisions that will not come (async scheduling deciding 2+ steps ahead kept a
        one-token request's blocks until the next arrival, and past the end of the run). Whether any were."""
        if not self._releasing or self.num_batches_in_flight:
            return False
        self._release_finished(everything=True)
        return True

    @property
    def decisions(self) -> int:
        """Scheduling decisions taken so far (async scheduling frees what a step reported this many later)."""
        return self._decisions

    @property
    def releasing_blocks(self) -> int:
        """Blocks of finished requests that later decisions free (async scheduling)."""
        return sum(entry.blocks for entry in self._releasing)

    def _release_finished(self, everything: bool = False) -> None:
        """Free what finished `async_depth` decisions ago (everything: all of it)."""
        if not self._releasing:
            return
        kept = []
        for entry in self._releasing:
            if everything or entry.release_after <= self._decisions:
                self._end_ghost(entry)
                self.kv.free_request(entry.blocks, entry.cache_keys)
                self.released_after_decision += entry.blocks
            else:
                kept.append(entry)
        self._releasing = kept

    def _end_ghost(self, entry: Finishing) -> None:
        """Its ghost decodes end (taken out of the cohort if still there): their blocks join its own."""
        if not entry.ghost:
            return
        self.ghosts -= 1
        req = entry.req
        if req.cohort is self.cohort:
            self.cohort.remove(req)
            if self._cohort_blocks_allocated and req.num_computed % self.block_size == 0:
                req.blocks += 1  # the block it was given for the step being decided
        entry.blocks = max(entry.blocks, req.blocks + self.kv.window_blocks)  # its window's beside them
        req.num_generated, req.blocks, entry.ghost = req.output_toks, 0, False

    def _preempt_finishing(self) -> bool:
        """Async scheduling: when the newest request of vLLM's running list is one whose last
        token is in flight, vLLM preempts it (its blocks are freed now; it still finishes when
        that step's output comes). Returns whether that happened."""
        if not self._releasing:
            return False
        newest = max(range(len(self._releasing)), key=lambda i: self._releasing[i].req.admitted_seq)
        entry = self._releasing[newest]
        if self.running and next(reversed(self.running)).admitted_seq > entry.req.admitted_seq:
            return False
        del self._releasing[newest]
        self._end_ghost(entry)
        self.kv.free_request(entry.blocks, entry.cache_keys)
        self.num_preemptions += 1
        return True

    def _preempt_last(self, now: float) -> Request | None:
        """Preempt the newest running request; None when that was a finishing one (see
        _preempt_finishing)."""
        if self._preempt_finishing():
            return None
        victim, _ = self.running.popitem()
        # vLLM caches a block once its tokens are known and its KV computed. With async scheduling
        # the token a decode step is computing now (this decision's step in flight) is still a
        # placeholder to it, so the block that token completes is not cached yet.
        decoded = self.cohort.steps - victim.cohort_join_step if self.async_scheduling and victim.in_cohort else None
        in_flight_decode = min(self.async_depth, decoded) if decoded is not None else 0
        # The tokens it sampled in the steps vLLM had decided but not yet seen: those decodes, and the
        # step that completed its prompt if that is one of them (a hand-off's prompt ran elsewhere).
        prompt_step = 0 if victim.joined_from_handoff else 1
        unseen = min(self.async_depth, decoded + prompt_step) if decoded is not None else 0
        decoding = victim.in_cohort
        self._take_out(victim)
        if decoding:
            if victim not in self._rejoined:
                victim.last_token_s = now  # it decoded in the step that just ended
            if self._cohort_blocks_allocated and victim.num_computed % self.block_size == 0:
                victim.blocks += 1  # the block it was given for this step
        if self.async_depth > 1 and unseen:
            # Those tokens reach vLLM one step apart, after this decision: admitted again before they
            # have, its first chunk leaves them out (_known_todo), and later ones count them, as vLLM
            # counts output placeholders (_deliver_late_tokens).
            first = self._decisions + self.async_depth - unseen
            self._unseen.setdefault(victim, []).extend(first + j for j in range(1, unseen + 1))
        return self._send_back(victim, victim.num_computed - in_flight_decode)

    def _take_out(self, req: Request) -> None:
        """Take a running request out of where it waits for its next step: the paused decodes, the
        decode cohort (its progress synced) or the partial prefills."""
        if req in self.paused:
            del self.paused[req]
            self.paused_kv_tokens -= req.num_computed
        elif req.in_cohort:
            self.cohort.remove(req)
        else:
            self.prefilling.remove(req)
            self.prefilling_kv_tokens -= req.num_computed

    def _send_back(self, victim: Request, cached_tokens: int) -> Request:
        """Free a preempted request's blocks (its first `cached_tokens` tokens' full blocks stay
        cached) and put it at the head of the waiting queue, as vLLM's _preempt_request does."""
        if self.kv.enable_caching:
            self.kv.cache_preempted(victim, cached_tokens)
        self.kv.free_request(victim.blocks + self.kv.window_blocks, victim.cache_keys)  # and its window's
        victim.cache_keys = None
        victim.blocks = 0
        victim.num_computed = 0
        victim.preemptions += 1
        victim.status = "preempted"
        self.num_preemptions += 1
        self.waiting.appendleft(victim)
        self.waiting_tokens += victim.tokens_to_compute
        return victim

    # -- after the step(s) ran ----------------------------------------------------------------
    def complete(self, plan: StepPlan, steps_done: int, now: float) -> StepOutcome:
        out = StepOutcome()
        cohort = self.cohort
        # Blocks for the decode steps after the first (the first was allocated in schedule()).
        self.kv.allocate(cohort.new_blocks(1, steps_done - 1) - self.run_blocks_taken)
        self.run_blocks_taken = 0
        out.decode_tokens = (cohort.n - self.ghosts) * steps_done  # a ghost decode makes no token
        finishing = cohort.advance(steps_done)
        if self.async_depth > 1:
            finishing = self._end_ghosts(finishing)
        for req in finishing:
            del self.running[req]
        from_chunk: set[Request] | None = None  # finished by the token a (recompute) chunk sampled

        for req, num_new in plan.prefill:
            req.num_computed += num_new
            self.prefilling_kv_tokens += num_new
            out.prompt_tokens += num_new
            if req.num_computed < req.input_toks + req.num_generated:
                continue
            # The chunk that completes the prompt (or the recompute) samples a token.
            self.prefilling.remove(req)
            self.prefilling_kv_tokens -= req.num_computed
            if req.num_generated:
                out.gap_itls_s.append(now - req.last_token_s)
            req.num_generated += 1
            if req.first_token_s is None:
                req.first_token_s = now
            req.last_token_s = now
            if self.hands_off(req, req.num_generated):
                del self.running[req]
                out.handoffs.append(req)
            elif req.num_generated >= req.output_toks:
                del self.running[req]
                finishing.append(req)
                if from_chunk is None:  # made only when a chunk finishes a request: complete() runs every step
                    from_chunk = set()
                from_chunk.add(req)
            else:
                req.joined_from_handoff = False
                cohort.add(req)
        # vLLM frees the requests that finished in a step in the order of its running list (their
        # admission order): with prefix caching, that order is the order their cached blocks are
        # evicted in.
        if len(finishing) > 1:
            finishing.sort(key=lambda r: r.admitted_seq)
        for req in finishing:
            self._finish(req, now, out)
            if self.async_depth > 1 and req.output_toks > 1 and (from_chunk is None or req not in from_chunk):
                # vLLM decided the next async_depth - 1 steps before seeing this request's last token. Not after a
                # chunk that sampled it: vLLM schedules a request again only while the tokens it has not yet seen
                # may fall short of max_tokens, and that chunk's one token cannot.
                self._releasing[-1].ghost = True
                self.ghosts += 1
                cohort.add(req, steps_left=self.async_depth - 1)
        if self._unseen:
            self._deliver_late_tokens()
        return out

    def queued_empty_step(self) -> None:
        """A lagging empty decision was queued as a step (lagging): the engine decides again once the oldest batch
        in flight returned, so with the tokens that batch's output carries."""
        if self._unseen:
            self._deliver_late_tokens()

    def _deliver_late_tokens(self) -> None:
        """The unseen tokens that vLLM sees by the next decision."""
        decision = self._decisions + 1
        for req in list(self._unseen):
            later = [at for at in self._unseen[req] if at > decision]
            if later:
                self._unseen[req] = later
            else:
                del self._unseen[req]

    def _end_ghosts(self, leaving: list[Request]) -> list[Request]:
        """The members that finished, less the ghosts (pdsim/engine/scheduler.py, Finishing) whose extra
        steps are over, which leave here."""
        ghosts = [r for r in leaving if r.status == "finished"]
        if not ghosts:
            return leaving
        for entry in self._releasing:
            if entry.ghost and entry.req in ghosts:
                self._end_ghost(entry)
        return [r for r in leaving if r.status != "finished"]

    def _finish(self, req: Request, now: float, out: StepOutcome) -> None:
        if self.async_scheduling:
            self._releasing.append(Finishing(req, req.blocks + self.kv.window_blocks, req.cache_keys,
                                             self._decisions + self.async_depth))
        else:
            self.kv.free_request(req.blocks + self.kv.window_blocks, req.cache_keys)  # and its window's
        req.cache_keys = None
        req.blocks = 0
        req.finish_s = now
        req.status = "finished"
        out.finished.append(req)
