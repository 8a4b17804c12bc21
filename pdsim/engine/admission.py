"""Admitting waiting requests into the running batch: vLLM's waiting-queue loop (first come, first
served, stopping at the first that does not fit), with prefix-cache hits counted as vLLM's
get_computed_blocks does. A part of `Scheduler` (scheduler.py), kept apart as the one place that
decides whether a waiting request fits."""

from __future__ import annotations

from collections import deque
from operator import attrgetter
from typing import TYPE_CHECKING

from pdsim.engine.cohort import DecodeCohort
from pdsim.engine.kv_cache import BlockManager, blocks_for
from pdsim.engine.request import Request
from pdsim.engine.step_plan import StepPlan

if TYPE_CHECKING:
    from pdsim.engine.scheduler import Finishing


class WaitingAdmission:
    """The admission half of `Scheduler`; the state it reads is the scheduler's."""

    kv: BlockManager
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool
    reserve_full_isl: bool
    long_prefill_token_threshold: int
    waiting: deque[Request]
    running: dict[Request, None]
    prefilling: list[Request]
    cohort: DecodeCohort
    waiting_tokens: int
    prefilling_kv_tokens: int
    num_waiting_kv_ready: int
    _decided_s: float
    _releasing: list[Finishing]  # finished, still holding slots (async)
    _unseen: dict[Request, list[int]]  # sampled tokens vLLM has not seen yet (scheduler.py, async_depth > 1)
    _admissions: int

    @property
    def sees_until_s(self) -> float:
        """What reached the engine by then (requests, hand-offs) is seen by the decision being taken."""
        return self._cutoff

    @property
    def _cutoff(self) -> float:
        """Requests queued up to this time may be admitted; 1 ns of slack, as a fast-forwarded run
        sums its step times in another order than stepping one by one does."""
        return self._decided_s + 1e-9

    @property
    def _slots_taken(self) -> int:
        return len(self.running) + len(self._releasing)

    @property
    def has_free_slot(self) -> bool:
        """Fewer than max_num_seqs requests run (vLLM's waiting loop stops there)."""
        return self._slots_taken < self.max_num_seqs

    def _known_todo(self, req: Request) -> int:
        """Tokens a waiting request has to compute that vLLM knows of: its waiting loop counts no token
        still on its way back from a step in flight."""
        return req.tokens_to_compute - self._unseen_count(req)

    def _chunk_cap(self, todo: int) -> int:
        cap = self.long_prefill_token_threshold
        return cap if 0 < cap < todo else todo

    def _unseen_count(self, req: Request) -> int:
        """Its tokens the engine has not seen yet (scheduler.py, async_depth > 1)."""
        return len(self._unseen.get(req, ())) if self._unseen else 0

    def _cached_hit(self, req: Request) -> tuple[int, int]:
        """(leading blocks cached here, of which free) for a waiting request, capped by the tokens seen."""
        return self.kv.request_hit(req, self._unseen_count(req)) if req.has_block_keys else (0, 0)

    def could_admit(self, req: Request) -> bool:
        """Whether `req` might be admitted at the next step boundary (used to decide whether to wake the instance)."""
        if self._slots_taken >= self.max_num_seqs or (self.waiting[0] is not req and not req.kv_ready):
            return False
        hit, evict = self._cached_hit(req)
        if self.reserve_full_isl and not req.kv_ready and not self._fits_whole(req, hit, evict):
            return False
        hit_tokens = hit * self.block_size
        todo = min(self._chunk_cap(self._known_todo(req) - hit_tokens), self.max_num_batched_tokens)
        need = blocks_for(req.num_computed + hit_tokens + todo, self.block_size) - req.blocks - hit + evict
        return need + self.kv.window_blocks <= self.kv.free

    def _admit_waiting(self, plan: StepPlan, budget: int, now: float) -> int:
        """Admit waiting requests into the step; returns the token budget left."""
        # Hand-offs whose KV has arrived go first: their blocks are already reserved (including
        # the slot for their next token), so they cost no memory, and letting them wait behind a
        # recompute that cannot fit would hold that memory hostage (a deadlock vLLM can also hit).
        # They start in the order their blocks were reserved, not the order their KV came: vLLM keeps
        # them in its skipped-waiting queue from the reservation on, first come first served.
        if self.num_waiting_kv_ready:
            ready = sorted((r for r in self.waiting if r.kv_ready and r.queued_s <= self._cutoff),
                           key=attrgetter("reserved_seq"))
            for req in ready:
                if budget <= 0 or self._slots_taken >= self.max_num_seqs:
                    return budget
                self.waiting.remove(req)
                self.num_waiting_kv_ready -= 1
                budget -= self._start(req, 1, now, plan)
        # Then first come, first served, stopping at the first request that does not fit.
        while self.waiting and budget > 0 and self._slots_taken < self.max_num_seqs:
            req = self.waiting[0]
            if req.queued_s > self._cutoff:
                break
            hit, evict = self._cached_hit(req)
            hit_tokens = hit * self.block_size
            todo = self._chunk_cap(self._known_todo(req) - hit_tokens)
            if not self.enable_chunked_prefill and todo > budget:
                break
            if self.reserve_full_isl and not self._fits_whole(req, hit, evict):
                break
            num_new = min(todo, budget)
            if blocks_for(req.num_computed + hit_tokens + num_new, self.block_size) - req.blocks - hit + evict \
                    + self.kv.window_blocks > self.kv.free:
                break
            self.waiting.popleft()
            budget -= self._start(req, num_new, now, plan, hit)
        return budget

    def _fits_whole(self, req: Request, hit: int = 0, evict: int = 0) -> bool:
        """vLLM's can_fit_full_sequence: room for the prompt and what it has generated so far
        (cached blocks it would reuse count only when they must leave the free queue)."""
        known = req.input_toks + req.num_generated - self._unseen_count(req)
        need = blocks_for(known, self.block_size) - req.blocks - hit + evict
        if not self.kv.window_blocks:
            return need <= self.kv.free
        # With sliding-window layers (gpt-oss) vLLM sizes their group by the whole sequence as well: nothing of it
        # is computed yet, so nothing falls out of the window (SlidingWindowManager.get_num_blocks_to_allocate).
        # A request alone is admitted when its own window fits, where vLLM would wait forever.
        sliding = blocks_for(known, self.block_size) - hit
        if self._slots_taken == 0 and need + sliding > self.kv.free:
            sliding = self.kv.window_blocks
        return need + sliding <= self.kv.free

    def _start(self, req: Request, num_new: int, now: float, plan: StepPlan, hit: int = 0) -> int:
        """Move a waiting request into the running batch with `num_new` tokens this step, after
        the `hit` prompt blocks found cached."""
        self.waiting_tokens -= req.tokens_to_compute
        kv = self.kv
        if kv.enable_caching and not req.kv_ready:
            kv.start_request(req, hit)
        need = blocks_for(req.num_computed + num_new, self.block_size) - req.blocks
        kv.allocate(need + kv.window_blocks)  # a waiting request holds no window
        req.blocks += need
        if req.cache_keys is not None and not req.kv_ready:
            self.kv.register_request(req, num_new)
        self.running[req] = None
        self._admissions += 1
        req.admitted_seq = self._admissions
        if req.first_scheduled_s is None:
            # When the decision was taken (a step early when async), not before the pick-up, which a float sum
            # of other step times, or an arrival within the trace's resolution after a step end, may put later.
            req.first_scheduled_s = max(self._decided_s, req.picked_up_s or 0.0)
        req.status = "running"
        if req.kv_ready:
            # A handed-off request whose KV has arrived: it decodes from this step on.
            req.kv_ready = False
            req.joined_from_handoff = True
            self.cohort.add(req)
            plan.fresh_decoders.append(req)
        else:
            self.prefilling.append(req)
            self.prefilling_kv_tokens += req.num_computed
            plan.prefill.append((req, num_new))
            plan.prefill_prefix.append(req.num_computed)
        return num_new
