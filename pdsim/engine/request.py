"""A request's life in the simulator: its lengths, where it is, and when things happened."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Request:
    """One inference request.

    Progress follows vLLM v1: `num_computed` tokens have their KV in the cache of the instance
    holding the request, `num_generated` output tokens have been sampled. A request still has
    `input_toks + num_generated - num_computed` tokens to compute: many while it prefills (or
    recomputes after a preemption), exactly one while it decodes.
    """

    id: int
    input_toks: int
    output_toks: int
    arrival_s: float

    num_computed: int = 0
    num_generated: int = 0
    blocks: int = 0  # KV blocks held on the instance that runs it
    # Prefix information (empty: none, and no prefix caching for this request): Mooncake-style
    # ids of hash_block_tokens-token spans, the engine-block keys derived from them for one
    # block size, and the cached blocks it holds a reference on (a leading part of `blocks`).
    hash_ids: tuple[int, ...] = ()
    hash_block_tokens: int = 0
    prefix_keys: tuple[int, ...] = ()
    prefix_keys_block_size: int = 0
    cache_keys: list[int | tuple[int, int]] | None = None  # kv_cache.Copy names
    cached_tokens: int = 0  # prompt tokens found in the prefill (or colocated) instance's cache
    decode_cached_tokens: int = 0  # prompt tokens the decode instance already held: not transferred
    reserved_seq: int = 0  # the order the decode instance reserved hand-offs' blocks in (it starts them so)

    # Set while the request sits in a decode cohort (see cohort.py): its progress is derived
    # from the cohort's step counter instead of being counted token by token.
    cohort: object | None = None  # the DecodeCohort it is in (several exist with pipeline parallelism)
    cohort_kv_base: int = 0
    cohort_gen_base: int = 0
    cohort_finish_step: int = 0
    cohort_join_step: int = 0  # the cohort's step count when it joined (it has decoded since if lower)
    joined_from_handoff: bool = False  # joined a decode instance's cohort with its KV sent: no prompt step here

    # P/D hand-off: blocks still held on the prefill instance until the KV transfer ends.
    prefill_blocks: int = 0
    prefill_cache_keys: list[int | tuple[int, int]] | None = None
    kv_ready: bool = False  # KV arrived on the decode instance; only decoding is left

    prefill_instance: str = ""
    decode_instance: str = ""
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float = 0.0
    finish_s: float | None = None
    handoff_s: float | None = None  # prefill done, waiting for decode-side blocks
    kv_transfer_start_s: float | None = None
    kv_transfer_end_s: float | None = None
    kv_bytes: int = 0
    # End of the decode instance's first step for a handed-off request: when a client of a P/D
    # proxy (which drops the prefill instance's token) receives its first token.
    decode_first_token_s: float | None = None
    queued_s: float = 0.0  # when it last entered an instance's waiting queue
    # When the engine first took it in: the first scheduling decision at or after its arrival
    # (vLLM stamps `queued_ts` there, between steps; the engine clock's latencies start from it).
    picked_up_s: float | None = None
    preemptions: int = 0
    admitted_seq: int = 0  # its place in the instance's running list (the newest is preempted first)
    status: str = "queued"
    reason: str = ""
    arrived: bool = False  # reached the cluster (a run stopped by --max-sim-time may end before some do)

    @property
    def in_cohort(self) -> bool:
        return self.cohort is not None

    @property
    def has_block_keys(self) -> bool:
        """Its blocks can be looked up in a prefix cache: named by prefix ids, or, after a
        preemption, its own computed ones (kv_cache.py, keep_computed_blocks)."""
        return bool(self.hash_ids) or self.preemptions > 0

    @property
    def tokens_to_compute(self) -> int:
        return self.input_toks + self.num_generated - self.num_computed


# The reason of a request a stopped run never saw arrive (metrics leave these out of rates and SLO shares).
NOT_ARRIVED = "not arrived"
