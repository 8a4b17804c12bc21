"""Shared system prompts and multi-turn sessions, with the prefix-block ids (`hash_ids`) a
prefix-caching engine needs to see which prompts share a prefix.

Ids follow Mooncake's convention: one id per hash_block_tokens tokens of the prompt, the last block
possibly partial; two prompts whose first k blocks are the same tokens have the same first k ids.
A block that mixes shared and new tokens gets a new id.

A session's turn carries the whole conversation so far (previous prompt, its reply, then the new
message) as its prefix. The generator is offline, so it cannot wait for the served reply: the next
turn arrives a think time after the previous turn's *expected* end, arrival + output_toks x
expected_tpot_ms (docs/workloads.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdsim.errors import PdsimError
from pdsim.workload.trace import TraceRequest, hash_blocks

MAX_PROMPT_IDS = 10**7  # every prompt's ids are built up front (8 bytes and more each)


@dataclass(frozen=True)
class SystemPrompts:
    count: int  # distinct prompts, each picked with equal probability
    tokens: int  # length of each
    share: float  # share of sessions (or requests, without sessions) that start with one


@dataclass(frozen=True)
class SessionShape:
    turns: np.ndarray  # turns per session (a draw per session start)
    think_time_s: float  # mean of the exponential think time
    expected_tpot_ms: float  # assumed time per output token, to place the next turn


class _Ids:
    """Fresh block ids, counting up."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[int]:
        ids = list(range(self.next, self.next + max(n, 0)))
        self.next += max(n, 0)
        return ids


def build_requests(starts_ns: np.ndarray, inputs: np.ndarray, outputs: np.ndarray, rng: np.random.Generator,
                   prompts: SystemPrompts | None, sessions: SessionShape | None, max_len: int | None,
                   block: int) -> list[TraceRequest]:
    """len(inputs) requests: sessions start at starts_ns and take the next new message (inputs[i])
    and reply length (outputs[i]) for each turn; sorted by arrival, ids in that order."""
    n = len(inputs)
    if block < 1:
        raise PdsimError(f"--hash-block-tokens: expected a positive integer, got {block}")
    if prompts is not None:
        if prompts.count < 1 or prompts.tokens < 1 or not (0 <= prompts.share <= 1):
            raise PdsimError("--system-prompts/--system-prompt-len/--system-prompt-share: need at least one "
                             "prompt of at least one token, and a share in [0, 1]")
        id_count = prompts.count * hash_blocks(prompts.tokens, block)
        if id_count > MAX_PROMPT_IDS:
            raise PdsimError(f"--system-prompts {prompts.count} x --system-prompt-len {prompts.tokens} / "
                             f"--hash-block-tokens {block}: {id_count:,} prefix ids to build, more than "
                             f"{MAX_PROMPT_IDS:,}; give fewer or shorter prompts, or larger blocks")
        if max_len is not None and prompts.tokens >= max_len:
            raise PdsimError(f"--system-prompt-len: {prompts.tokens} leaves no room under --max-len {max_len}")
    ids = _Ids()
    prompt_ids = [ids.take(prompts.tokens // block) for _ in range(prompts.count)] if prompts else []
    with_prompt = rng.random(n) < prompts.share if prompts else np.zeros(n, dtype=bool)
    which = rng.integers(0, prompts.count, size=n) if prompts else np.zeros(n, dtype=np.int64)
    turns = sessions.turns if sessions else np.ones(n, dtype=np.int64)
    think_ns = rng.exponential(sessions.think_time_s * 1e9, size=n) if sessions else np.zeros(n)
    tpot_ns = sessions.expected_tpot_ms * 1e6 if sessions else 0.0
    out: list[tuple[int, int, int, tuple[int, ...]]] = []  # (arrival, input, output, hash ids)
    i = 0
    for s in range(n):
        if i >= n:
            break
        t = float(starts_ns[s])
        context_tokens = prompts.tokens if with_prompt[s] else 0
        context_ids = list(prompt_ids[which[s]]) if with_prompt[s] else []
        for turn in range(int(turns[s])):
            if i >= n:
                break
            inp = context_tokens + int(inputs[i])
            if max_len is not None and inp > max_len:
                if turn > 0:
                    break  # the conversation outgrew the context: the session ends here
                inp = max_len  # a first turn keeps its system prompt and loses some of the message
            hash_ids = context_ids + ids.take(hash_blocks(inp, block) - len(context_ids))
            out.append((round(t), inp, int(outputs[i]), tuple(hash_ids)))
            context_tokens = inp + int(outputs[i])
            context_ids = hash_ids[: inp // block] + ids.take(context_tokens // block - inp // block)
            t += int(outputs[i]) * tpot_ns + think_ns[i]
            i += 1
    out.sort(key=lambda r: r[0])
    keep_ids = prompts is not None or sessions is not None
    return [TraceRequest(k, inp, o, t, h if keep_ids else (), block if keep_ids else 0)
            for k, (t, inp, o, h) in enumerate(out)]
