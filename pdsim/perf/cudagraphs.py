"""The token counts vLLM runs a step at under CUDA graphs.

vLLM 0.19 captures graphs at a list of batch sizes (config/vllm.py `_set_cudagraph_sizes`) and runs a step
of at most the largest of them padded up to the next one (v1/cudagraph_dispatcher.py `dispatch`): the GEMMs,
norms and TP collectives of every layer see the padded count; attention and the logits only the real
requests. Under FULL_DECODE_ONLY only decode-only batches have graphs, up to max_num_seqs of them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence


def cudagraph_sizes(max_num_seqs: int, max_num_batched_tokens: int, sizes: Sequence[int] | None = None,
                    max_size: int | None = None) -> list[int]:
    """vLLM 0.19's CUDA-graph capture sizes: the given `sizes` up to max_num_batched_tokens, sorted; else 1, 2, 4,
    then every 8 below 256, then every 16, up to `max_size` (default min(2 x max_num_seqs, 512)), at most
    max_num_batched_tokens."""
    if sizes is not None:
        return sorted({size for size in sizes if size <= max_num_batched_tokens})
    cap = min(min(2 * max_num_seqs, 512) if max_size is None else max_size, max_num_batched_tokens)
    return [s for s in (1, 2, 4) if s <= cap] + list(range(8, min(cap + 1, 256), 8)) + list(range(256, cap + 1, 16))


def graph_sizes_run(sizes: Sequence[int], decode_only: bool, max_num_seqs: int) -> tuple[int, ...]:
    """The capture sizes a step can run at: under FULL_DECODE_ONLY those of at most max_num_seqs (vLLM's dispatcher
    finds no graph for a decode batch padded past them)."""
    return tuple(s for s in sizes if s <= max_num_seqs) if decode_only else tuple(sizes)


def graph_size(sizes: Sequence[int], decode_only: bool, tokens: int, requests: int) -> int | None:
    """The token count a step of `tokens` new tokens over `requests` requests runs a CUDA graph at, the next capture
    size; None where vLLM's dispatcher finds no graph: above the largest size, or under FULL_DECODE_ONLY (decode_only)
    for a step that is not one token per request. `sizes`: those a step can run at (graph_sizes_run)."""
    if not sizes or tokens > sizes[-1] or (decode_only and tokens != requests):
        return None
    return sizes[bisect_left(sizes, tokens)]
