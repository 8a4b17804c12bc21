"""A measured run's prompt token ids, for replaying the engine's prefix-cache hits.

vLLM v1 caches prefix blocks by a hash chained over each full block of `block_size` token ids, and
has prefix caching on by default; a run whose prompts share blocks gets those tokens from cache.
The per-request engine log has lengths only; LLMServingSim's workload file (`workload.jsonl`,
`input_tok_ids`) has the ids the engine was sent. Each request gets `hash_ids`: one id per full
block, the same id for the same chain of blocks (pdsim/engine/kv_cache.py matches them as vLLM does).
"""

from __future__ import annotations

import json
from pathlib import Path

from pdsim.errors import PdsimError, decode_text
from pdsim.validate.measured_run import MeasuredRun
from pdsim.workload.trace import block_chain_ids, checked_token_ids


def block_hash_ids(prompts: list[list[int]], block_size: int) -> list[tuple[int, ...]]:
    """Per prompt, an id per full block: equal ids for equal chains of blocks (vLLM's block hash)."""
    chains: dict[int, int] = {}
    return [block_chain_ids(tokens, block_size, chains) for tokens in prompts]


def read_prompt_ids(path: Path) -> list[list[int]]:
    rows = []
    for line_no, line in enumerate(decode_text(path.read_bytes(), str(path)).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            tokens = json.loads(line)["input_tok_ids"]
        except (ValueError, KeyError, TypeError):
            raise PdsimError(f"{path}:{line_no}: expected a JSON object with input_tok_ids") from None
        rows.append(checked_token_ids(tokens, f"{path}:{line_no}"))
    return rows


def attach_prefix_ids(run: MeasuredRun, path: Path, block_size: int) -> list[tuple[int, ...]]:
    """Each measured request's block hash ids, from the workload file that fed the run: requests are
    matched to its lines by prompt length, in order (error when a length has no line left)."""
    prompts = read_prompt_ids(path)
    # More prompts than requests: the run left some out of the replay (never reached the engine).
    if len(prompts) < len(run.requests):
        raise PdsimError(f"{path}: {len(prompts)} prompts with token ids, but the measured run replays "
                         f"{len(run.requests)} requests")
    by_length: dict[int, list[int]] = {}
    for i, tokens in enumerate(prompts):
        by_length.setdefault(len(tokens), []).append(i)
    order = []
    for n in run.requests.input_toks.astype(int):
        if not by_length.get(n):
            raise PdsimError(f"{path}: no prompt of {n} token ids left for a measured request of {n} input tokens")
        order.append(by_length[n].pop(0))
    if len(prompts) > len(order):
        run.notes.append(f"{len(prompts) - len(order)} of the {len(prompts)} prompts in {path} matched no replayed "
                         "request (requests are matched to prompts by length, in order)")
    chains = block_hash_ids([prompts[i] for i in order], block_size)
    seen: set[int] = set()
    hit = 0
    for chain in chains:
        hit += sum(h in seen for h in chain)
        seen.update(chain)
    share = hit * block_size / int(run.requests.input_toks.sum())
    run.notes.append(f"prompt token ids from {path}: {share:.1%} of prompt tokens are in "
                     f"{block_size}-token blocks an earlier prompt had (prefix-cache hits when still cached)")
    return chains
