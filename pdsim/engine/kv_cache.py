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
  requests is held, and counted, once.

Free blocks that hold nothing reusable are kept as runs of counts in the same queue, so a
workload without prefix ids costs what plain counting costs.
"""

from __future__ import annotations

from collections import OrderedDict

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
            chain = hash((chain, hash_ids[span]))
        keys.append(hash((chain, b)))
    return tuple(keys)


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


class BlockManager:
    """Free-block counting, plus vLLM's prefix cache for blocks that have keys."""

    def __init__(self, num_blocks: int, block_size: int, block_bytes: int, enable_caching: bool = False) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.block_bytes = block_bytes
        self.enable_caching = enable_caching
        self.free = num_blocks  # every block not referenced by a request (cached-but-free ones included)
        self.peak_used = 0
        # key -> reference count; a count of 0 means cached, free, and in the queue below.
        self.cached: dict[int, int] = {}
        # The free queue behind `_anon_head` anonymous blocks (which come first): cached keys
        # (value None) and runs of anonymous blocks (key a 1-tuple run id, never equal to an int
        # key; value the count).
        self._queue: OrderedDict[int | tuple[int], int | None] = OrderedDict()
        self._anon_head = num_blocks
        self._run_id = 0
        # Prompt tokens looked up, and found, at admission (vLLM's PrefixCacheStats queries/hits).
        self.query_tokens = 0
        self.hit_tokens = 0

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

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
        n -= self._anon_head
        self._anon_head = 0
        while n > 0:
            key, count = queue.popitem(last=False)
            if count is None:
                del self.cached[key]  # evicted (vLLM: _maybe_evict_cached_block)
                n -= 1
            elif count > n:
                self._anon_head = count - n
                n = 0
            else:
                n -= count

    def release(self, n: int) -> None:
        self.free += n
        if self.free > self.num_blocks or n < 0:
            raise PdsimError(f"internal error: released {n} KV blocks, free count now {self.free}/{self.num_blocks}")
        if not self._queue:
            self._anon_head += n
        elif n:
            self._run_id += 1
            self._queue[(self._run_id,)] = n

    # -- blocks with keys ----------------------------------------------------------------------
    def longest_hit(self, keys: tuple[int, ...], max_blocks: int) -> tuple[int, int]:
        """(leading blocks of `keys` cached here, how many of those are free and would be taken out
        of the free queue), at most `max_blocks` (vLLM's find_longest_cache_hit)."""
        if not self.enable_caching:
            return 0, 0
        cached = self.cached
        hits = evictable = 0
        for key in keys[:max_blocks]:
            ref = cached.get(key)
            if ref is None:
                break
            hits += 1
            if ref == 0:
                evictable += 1
        return hits, evictable

    def touch(self, keys: tuple[int, ...] | list[int]) -> None:
        """Take a reference on cached blocks (a hit): a free one leaves the free queue."""
        cached = self.cached
        for key in keys:
            ref = cached[key]
            if ref == 0:
                del self._queue[key]
                self.free -= 1
            cached[key] = ref + 1
        used = self.num_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used

    def register(self, keys: tuple[int, ...], start: int, stop: int, held: list[int]) -> None:
        """A request's blocks start..stop-1 now hold (or are being written with) the prefix those
        keys name: they become cached, referenced by the request (`held`). A key already cached
        by another request's copy stays that copy's; this one remains an anonymous block, as
        vLLM keeps a duplicate block out of its lookups."""
        cached = self.cached
        for key in keys[start:stop]:
            if key not in cached:
                cached[key] = 1
                held.append(key)

    def free_request(self, num_blocks: int, held: list[int] | None) -> None:
        """Release a request's `num_blocks` blocks, of which those in `held` are cached: they
        stay cached at the tail of the free queue, last block first (vLLM frees in reverse)."""
        if not held:
            self.release(num_blocks)
            return
        self.release(num_blocks - len(held))
        cached = self.cached
        queue = self._queue
        for key in reversed(held):
            ref = cached[key] - 1
            cached[key] = ref
            if ref == 0:
                queue[key] = None
                self.free += 1
        if self.free > self.num_blocks:
            raise PdsimError(f"internal error: free KV blocks {self.free} over capacity {self.num_blocks}")

    def cache_preempted(self, req: Request, cached_tokens: int) -> None:
        """Before a preempted request is freed: the full blocks of its first `cached_tokens`
        tokens become cached (see keep_computed_blocks), so free_request leaves them findable at
        the tail of the free queue."""
        keep_computed_blocks(req, self.block_size)
        if req.cache_keys is None:
            req.cache_keys = []
        self.register(req.prefix_keys, 0, min(cached_tokens // self.block_size, req.blocks), req.cache_keys)

    def request_hit(self, req: Request) -> tuple[int, int]:
        """(leading blocks cached here, of which free) for a request about to start from nothing:
        prompt blocks named by prefix ids, and after a preemption its own earlier blocks."""
        if req.num_computed or req.kv_ready or not self.enable_caching:
            return 0, 0
        keys = request_keys(req, self.block_size)
        # At least the last token is computed: its logits give the next token.
        return self.longest_hit(keys, (req.input_toks + req.num_generated - 1) // self.block_size)

    def start_request(self, req: Request, hit: int) -> None:
        """A request starts here from nothing with its first `hit` prompt blocks found cached."""
        bs = self.block_size
        if not req.preemptions:  # vLLM counts a recompute's lookup apart from its hit rate
            self.query_tokens += req.input_toks
            self.hit_tokens += hit * bs
            req.cached_tokens = hit * bs
        if req.has_block_keys:
            req.cache_keys = list(req.prefix_keys[:hit])
            self.touch(req.cache_keys)
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
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0
