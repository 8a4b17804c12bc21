"""Paged KV-cache block accounting for one instance (one TP shard's view; all shards move together).

Without prefix information a block's contents never matter, so blocks are only counted. With
prefix caching (vLLM v1's default) the full prompt blocks of requests that carry prefix ids
(`Request.hash_ids`) are also kept by key, as vLLM's BlockPool keeps them by block hash:

- a block is identified by the hash chain of the prefix up to its last token, so two requests
  with the same prefix name the same blocks (vLLM: hash(parent hash, block tokens));
- a cached block has a reference count; at zero it stays cached but free, in a least-recently-
  freed queue with every other free block, and is evicted only when an allocation reaches it
  (vLLM's FreeKVCacheBlockQueue: allocation pops the head, a freed block goes to the tail, the
  blocks of one request tail first);
- a cache hit takes the block out of that queue (vLLM's `touch`), so a block shared by several
  requests is held, and counted, once;
- a block computed again while a copy is cached (two requests computing the same prefix at once)
  is cached too: a lookup finds the earliest copy still cached, and the later one takes over when
  that one is evicted (vLLM's BlockHashToBlockMap keeps every copy of a hash).

Free blocks that hold nothing reusable are kept as runs of counts in the same queue, so a
workload without prefix ids costs what plain counting costs.
"""

from __future__ import annotations

import math
from collections import deque

from pdsim.engine.request import Request
from pdsim.errors import PdsimError


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def prefix_block_keys(hash_ids: tuple[int, ...], hash_block_tokens: int, input_toks: int,
                      block_size: int) -> tuple[int, ...]:
    """One key per full engine block of the prompt that the prefix ids cover.

    Engine block b holds tokens [b*bs, (b+1)*bs); its contents are fixed by the hash ids of every
    span reaching its last token, so its key is (chain hash up to that span, b). A partial last
    span is cacheable only up to its last full engine block, as vLLM caches full blocks only.
    """
    covered = min(len(hash_ids) * hash_block_tokens, input_toks)
    keys = []
    chain = 0
    span = -1
    for b in range(covered // block_size):
        last_span = ((b + 1) * block_size - 1) // hash_block_tokens
        while span < last_span:
            span += 1
            chain = hash((chain, _unwrapped(hash_ids[span])))
        keys.append(hash((chain, b)))
    return tuple(keys)


_INT_HASH_MODULUS = 2**61 - 1  # CPython hashes an int modulo this: ids that far apart would share a hash


def _unwrapped(prefix_id: int) -> int | tuple[int, int]:
    """A prefix id as a key part whose hash keeps it apart from every other id (a 64-bit id, or one a sweep
    shifted past the modulus, as its quotient and remainder)."""
    return prefix_id if prefix_id < _INT_HASH_MODULUS else divmod(prefix_id, _INT_HASH_MODULUS)


_OWN_BLOCK = -1  # salt of the keys of blocks whose contents only their own request has


def keep_computed_blocks(req: Request, block_size: int) -> None:
    """Name every full block of `req`'s tokens so far, prompt and output, before it is preempted.

    vLLM hashes all of a request's full blocks by content (`Request.block_hashes` grows with every
    output token) and caches each once computed, so a preempted request's freed blocks stay
    findable until evicted and its recompute starts from the longest run still cached. Blocks past
    the prompt's prefix ids hold content no other request has: keyed by (request, block), they can
    only be hit by the request itself."""
    keys = request_keys(req, block_size)
    total = (req.input_toks + req.num_generated) // block_size
    if total > len(keys):
        req.prefix_keys = keys + tuple(hash((_OWN_BLOCK, req.id, b)) for b in range(len(keys), total))


def request_keys(req: Request, block_size: int) -> tuple[int, ...]:
    """The request's prefix block keys for this block size (computed once per size)."""
    if req.prefix_keys_block_size != block_size:
        req.prefix_keys = prefix_block_keys(req.hash_ids, req.hash_block_tokens, req.input_toks, block_size)
        req.prefix_keys_block_size = block_size
    return req.prefix_keys


Copy = int | tuple[int, int]  # a cached block: its key, or (key, serial) for a later copy of that key


class BlockManager:
    """Free-block counting, plus vLLM's prefix cache for blocks that have keys."""

    def __init__(self, num_blocks: int, block_size: int, block_bytes: int, enable_caching: bool = False,
                 window_blocks: int = 0) -> None:
        self.num_blocks = num_blocks
        # Blocks a running request's sliding-window layers hold beside its own (pdsim/gpt_oss.py): taken when it
        # is admitted, given back with its blocks (so a request holding blocks here holds these too).
        self.window_blocks = window_blocks
        self.block_size = block_size
        self.block_bytes = block_bytes
        self.enable_caching = enable_caching
        self.free = num_blocks  # every block not referenced by a request (cached-but-free ones included)
        self.peak_used = 0
        # A cached block is named by its key if it is the first copy of that key cached, else by
        # (key, serial). Reference count of every cached copy; a free one (cached, in the queue below)
        # has instead minus the stamp of the segment it was freed in:
        self.refs: dict[Copy, int] = {}
        # A lookup finds the earliest copy of a key still cached: the key itself while that copy is
        # cached (so one dict lookup per block, in `refs`), else the later copy `_moved` names.
        self._moved: dict[int, Copy] = {}
        self._later_copies: dict[int, list[Copy]] = {}  # key -> the copies after the first, earliest first
        self._serial = 0
        # The free queue behind `_anon_head` anonymous blocks (which come first): runs of anonymous
        # blocks (a count) and segments, the cached copies one request freed together
        # ([stamp, copies, next index]). A copy taken out by a hit stays in its segment, stale,
        # and is skipped when reached: a Python dict entry per block in a queue would cost more than
        # the rest of a prefix-cache run.
        self._queue: deque[int | list] = deque()
        self._anon_head = num_blocks
        self._stamp = 0
        self._queued_copies = 0  # free cached copies in the queue
        self._stale = 0  # copies in segments that are no longer free there
        # Prompt tokens looked up, and found, at admission (vLLM's PrefixCacheStats queries/hits).
        self.query_tokens = 0
        self.hit_tokens = 0

    @property
    def most_per_request(self) -> int:
        """Blocks one request can hold: all but those its sliding-window layers take beside them."""
        return self.num_blocks - self.window_blocks

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    @property
    def cached(self) -> dict[int, Copy]:
        """Every cached key -> the copy a lookup finds (for checks and reports; built on each call)."""
        found: dict[int, Copy] = {copy: copy for copy in self.refs if type(copy) is int}
        found.update(self._moved)
        return found

    # -- anonymous blocks (no key) ---------------------------------------------------------------
    def allocate(self, n: int) -> None:
        if n > self.free:
            raise PdsimError(f"internal error: allocating {n} KV blocks with only {self.free} free")
        self.free -= n
        used = self.num_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used
        if n > self._anon_head:
            self._take_from_queue(n)
        else:
            self._anon_head -= n

    def _take_from_queue(self, n: int) -> None:
        """Pop `n` free blocks from the head of the queue, evicting the cached ones reached."""
        queue = self._queue
        refs, later_copies = self.refs, self._later_copies
        n -= self._anon_head
        self._anon_head = 0
        while n > 0:
            head = queue[0]
            if type(head) is int:
                queue.popleft()
                if head > n:
                    self._anon_head = head - n
                    n = 0
                else:
                    n -= head
                continue
            free_mark, copies, i = -head[0], head[1], head[2]
            end = len(copies)
            while i < end and n > 0:
                copy = copies[i]
                i += 1
                if refs.get(copy) != free_mark:  # taken out by a hit since
                    self._stale -= 1
                    continue
                if type(copy) is int and copy not in later_copies:  # the usual case, inlined: a key's only copy
                    del refs[copy]
                else:
                    self._evict(copy)
                self._queued_copies -= 1
                n -= 1
            if i == end:
                queue.popleft()
            else:
                head[2] = i

    def _compact(self) -> None:
        """Drop the stale copies from the queue's segments (they only cost memory and skipping)."""
        refs = self.refs
        compacted: deque[int | list] = deque()
        for entry in self._queue:
            if type(entry) is int:
                compacted.append(entry)
                continue
            free_mark = -entry[0]
            live = [copy for copy in entry[1][entry[2]:] if refs.get(copy) == free_mark]
            if live:
                compacted.append([entry[0], live, 0])
        self._queue = compacted
        self._stale = 0

    def release(self, n: int) -> None:
        self.free += n
        if self.free > self.num_blocks or n < 0:
            raise PdsimError(f"internal error: released {n} KV blocks, free count now {self.free}/{self.num_blocks}")
        if self.free - n > self._anon_head:  # free blocks are queued behind the head: these go after them
            if n:
                self._queue.append(n)
            return
        if self._queue:  # only stale copies left: the queue is empty
            self._queue.clear()
            self._stale = 0
        self._anon_head += n

    def _evict(self, copy: Copy) -> None:
        """A free cached copy is reused (vLLM: _maybe_evict_cached_block): a later copy of its key,
        if one is cached, is what lookups find from now on."""
        del self.refs[copy]
        key = copy if type(copy) is int else copy[0]
        later = self._later_copies.get(key)
        if copy == key or self._moved.get(key) == copy:  # the copy lookups found
            if later:
                self._moved[key] = later.pop(0)
            else:
                self._moved.pop(key, None)
        else:
            later.remove(copy)
        if later is not None and not later:
            del self._later_copies[key]

    # -- blocks with keys ----------------------------------------------------------------------
    def longest_hit(self, keys: tuple[int, ...], max_blocks: int) -> tuple[int, int]:
        """(leading blocks of `keys` cached here, how many of those are free and would be taken out
        of the free queue), at most `max_blocks` (vLLM's find_longest_cache_hit)."""
        if not self.enable_caching:
            return 0, 0
        refs, moved = self.refs, self._moved
        hits = evictable = 0
        for key in keys[:max_blocks]:
            ref = refs.get(key)
            if ref is None:
                copy = moved.get(key)
                if copy is None:
                    break
                ref = refs[copy]
            hits += 1
            if ref < 0:
                evictable += 1
        return hits, evictable

    def touch(self, keys: tuple[int, ...] | list[int]) -> list[Copy]:
        """Take a reference on the cached blocks of `keys` (a hit), the copies a lookup finds: a
        free one leaves the free queue. Returns those copies."""
        refs, moved = self.refs, self._moved
        copies = []
        taken = 0
        for key in keys:
            copy = key if key in refs else moved[key]
            ref = refs[copy]
            if ref < 0:  # free: out of the queue (its segment entry goes stale)
                taken += 1
                ref = 0
            refs[copy] = ref + 1
            copies.append(copy)
        if taken:
            self.free -= taken
            self._queued_copies -= taken
            self._stale += taken
            if self._stale > 2 * self._queued_copies + 4096:  # bounds the queue at 3x its live copies + 4096
                self._compact()
        used = self.num_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used
        return copies

    def register(self, keys: tuple[int, ...], start: int, stop: int, held: list[Copy]) -> None:
        """A request's blocks start..stop-1 now hold (or are being written with) the prefix those
        keys name: they become cached, referenced by the request (`held`, which names its blocks
        0..start-1 already). A key another copy already caches gets a second copy, found by
        lookups only once the first is evicted."""
        if start != len(held):
            raise PdsimError(f"internal error: caching blocks from {start} of a request holding {len(held)}")
        refs, moved = self.refs, self._moved
        for key in keys[start:stop]:
            if key in refs or key in moved:
                self._serial += 1
                copy = (key, self._serial)
                self._later_copies.setdefault(key, []).append(copy)
            else:
                copy = key
            refs[copy] = 1
            held.append(copy)

    def free_request(self, num_blocks: int, held: list[Copy] | None) -> None:
        """Release a request's `num_blocks` blocks, of which those in `held` are cached: they
        stay cached at the tail of the free queue, last block first (vLLM frees in reverse)."""
        if not held:
            self.release(num_blocks)
            return
        self.release(num_blocks - len(held))
        refs = self.refs
        self._stamp += 1
        free_mark = -self._stamp
        freed = []
        for copy in reversed(held):
            ref = refs[copy] - 1
            if ref == 0:
                refs[copy] = free_mark
                freed.append(copy)
            else:
                refs[copy] = ref
        if freed:
            self._queue.append([self._stamp, freed, 0])
            self._queued_copies += len(freed)
            self.free += len(freed)
        if self.free > self.num_blocks:
            raise PdsimError(f"internal error: free KV blocks {self.free} over capacity {self.num_blocks}")

    def cache_preempted(self, req: Request, cached_tokens: int) -> None:
        """Before a preempted request is freed: the full blocks of its first `cached_tokens`
        tokens become cached (see keep_computed_blocks), so free_request leaves them findable at
        the tail of the free queue."""
        keep_computed_blocks(req, self.block_size)
        if req.cache_keys is None:
            req.cache_keys = []
        held = len(req.cache_keys)
        self.register(req.prefix_keys, held, max(held, min(cached_tokens // self.block_size, req.blocks)),
                      req.cache_keys)

    def request_hit(self, req: Request, unseen: int = 0) -> tuple[int, int]:
        """(leading blocks cached here, of which free) for a request about to start from nothing:
        prompt blocks named by prefix ids, and after a preemption its own earlier blocks. unseen: of its
        tokens, those the engine has not seen yet (async scheduling), which it cannot count."""
        if req.num_computed or req.kv_ready or not self.enable_caching:
            return 0, 0
        keys = request_keys(req, self.block_size)
        # At least the last token it knows is computed: its logits give the next token (vLLM caps the hit
        # at num_tokens - 1, the tokens it has seen).
        return self.longest_hit(keys, (req.input_toks + req.num_generated - unseen - 1) // self.block_size)

    def start_request(self, req: Request, hit: int) -> None:
        """A request starts here from nothing with its first `hit` prompt blocks found cached."""
        bs = self.block_size
        if not req.preemptions:  # vLLM counts a recompute's lookup apart from its hit rate
            self.query_tokens += req.input_toks
            self.hit_tokens += hit * bs
            req.cached_tokens = hit * bs
        if req.has_block_keys:
            req.cache_keys = self.touch(req.prefix_keys[:hit])
            req.num_computed = hit * bs
            req.blocks = hit

    def register_request(self, req: Request, num_new: int) -> None:
        """Cache the request's full prompt blocks up to `num_new` tokens past its computed ones."""
        keys = req.prefix_keys
        bs = self.block_size
        stop = min((req.num_computed + num_new) // bs, len(keys))
        start = min(req.num_computed // bs, len(keys))
        if stop > start:
            self.register(keys, start, stop, req.cache_keys)

    @property
    def hit_rate(self) -> float:
        """NaN before any lookup: no rate, not a rate of 0."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else math.nan
