"""The decode cohort: an instance's running requests that are past their prefill, tracked in aggregate.

Every engine step gives each decoding request one token. Counting those tokens one request at a
time would cost Python work per request per step; instead the cohort keeps a step counter and,
for each member, the offsets that turn the counter into its KV length and token count. Joining,
leaving, advancing k steps and asking how many KV blocks the next k steps will need are all
O(log n) or O(block_size), whatever the batch size.
"""

from __future__ import annotations

import heapq

from pdsim.engine.request import Request


class DecodeCohort:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.steps = 0  # decode steps this instance has executed
        self.n = 0
        self._kv_base_sum = 0
        # Members by (KV length - steps) mod block_size: a member needs a new block in the step
        # where its KV length before the step is a multiple of block_size.
        self._residue_counts = [0] * block_size
        self._finish_heap: list[tuple[int, int, Request]] = []
        # Max-heap (negated) of KV bases: the longest member's KV sets how much an uneven batch
        # costs over a uniform one of the same mean (see StepTimePredictor's skew term).
        self._kv_base_heap: list[tuple[int, int, Request]] = []

    @property
    def kv_sum(self) -> int:
        """Sum of the members' KV lengths (tokens cached before the next step)."""
        return self._kv_base_sum + self.n * self.steps

    @property
    def kv_max(self) -> int:
        """The longest member's KV length before the next step (0 when empty)."""
        heap = self._kv_base_heap
        while heap and (heap[0][2].cohort is not self or heap[0][2].cohort_kv_base != -heap[0][0]):
            heapq.heappop(heap)
        return -heap[0][0] + self.steps if heap else 0

    def add(self, req: Request, steps_left: int | None = None) -> None:
        """steps_left: leave after that many steps (default: when its last output token is made)."""
        base = req.num_computed - self.steps
        req.cohort = self
        req.cohort_kv_base = base
        req.cohort_gen_base = req.num_generated - self.steps
        if steps_left is None:
            steps_left = req.output_toks - req.num_generated
        req.cohort_finish_step = self.steps + steps_left
        req.cohort_join_step = self.steps
        self.n += 1
        self._kv_base_sum += base
        self._residue_counts[base % self.block_size] += 1
        heapq.heappush(self._finish_heap, (req.cohort_finish_step, req.id, req))
        heapq.heappush(self._kv_base_heap, (-base, req.id, req))

    def sync(self, req: Request) -> None:
        """Write the member's current progress into its own fields."""
        req.num_computed = req.cohort_kv_base + self.steps
        req.num_generated = req.cohort_gen_base + self.steps
        req.blocks = -(-req.num_computed // self.block_size)

    def remove(self, req: Request) -> None:
        self.sync(req)
        req.cohort = None
        self.n -= 1
        self._kv_base_sum -= req.cohort_kv_base
        self._residue_counts[req.cohort_kv_base % self.block_size] -= 1
        if len(self._kv_base_heap) > 2 * self.n + 64:
            # Departed members that never reached the top would otherwise pile up.
            self._kv_base_heap = [e for e in self._kv_base_heap if e[2].cohort is self and e[2].cohort_kv_base == -e[0]]
            heapq.heapify(self._kv_base_heap)
        # The heap entries stay; they are skipped when they surface (the request is in no cohort or
        # another one, or the recorded step/base differs from its current one after a re-join: with
        # pipeline parallelism each in-flight micro-batch has a cohort of its own, whose step counts
        # can coincide).

    def _clean_heap_top(self) -> None:
        heap = self._finish_heap
        while heap and (heap[0][2].cohort is not self or heap[0][2].cohort_finish_step != heap[0][0]):
            heapq.heappop(heap)

    def steps_to_next_finish(self) -> int:
        self._clean_heap_top()
        return self._finish_heap[0][0] - self.steps

    def new_blocks(self, first_step_offset: int, num_steps: int) -> int:
        """KV blocks the members need over steps [steps + first_step_offset, ... + num_steps)."""
        if num_steps <= 0 or self.n == 0:
            return 0
        bs = self.block_size
        start = self.steps + first_step_offset
        full, rest = divmod(num_steps, bs)
        total = self.n * full
        if rest:
            # The members crossing in step `start + j` have residue (-(start + j)) mod bs.
            counts = self._residue_counts
            for j in range(rest):
                total += counts[(-(start + j)) % bs]
        return total

    def max_steps_within(self, free_blocks: int, first_step_offset: int, limit: int) -> int:
        """The largest k <= limit such that steps [offset, offset + k) need at most `free_blocks` blocks."""
        if self.n == 0 or self.n * -(-limit // self.block_size) <= free_blocks:
            return limit
        bs = self.block_size
        full, spare = divmod(free_blocks, self.n)
        k = full * bs
        start = self.steps + first_step_offset + k
        counts = self._residue_counts
        for j in range(bs):
            c = counts[(-(start + j)) % bs]
            if c > spare:
                break
            spare -= c
            k += 1
        return min(k, limit)

    def advance(self, num_steps: int) -> list[Request]:
        """Move the counter on; returns the members that produced their last token, now removed."""
        self.steps += num_steps
        finished: list[Request] = []
        heap = self._finish_heap
        while heap:
            self._clean_heap_top()
            if not heap or heap[0][0] > self.steps:
                break
            req = heapq.heappop(heap)[2]
            self.remove(req)
            finished.append(req)
        return finished
