"""Paged KV-cache block accounting for one instance (one TP shard's view; all shards move together)."""

from __future__ import annotations

from pdsim.errors import PdsimError


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    """Counts free blocks; which block holds which token does not change any latency, so only counts are kept.

    Without prefix caching, vLLM's allocator hands out and takes back whole blocks per request, so a
    counter reproduces its capacity decisions exactly.
    """

    def __init__(self, num_blocks: int, block_size: int, block_bytes: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.block_bytes = block_bytes
        self.free = num_blocks
        self.peak_used = 0

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    def allocate(self, n: int) -> None:
        if n > self.free:
            raise PdsimError(f"internal error: allocating {n} KV blocks with only {self.free} free")
        self.free -= n
        used = self.num_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used

    def release(self, n: int) -> None:
        self.free += n
        if self.free > self.num_blocks or n < 0:
            raise PdsimError(f"internal error: released {n} KV blocks, free count now {self.free}/{self.num_blocks}")
