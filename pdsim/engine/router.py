"""Routing policies: which instance of a pool gets a request.

Cache-aware policies see each instance's real prefix cache (what vLLM's KV events report), not
an approximation the router keeps of what it routed:

- `prefix_aware`, as SGLang's cache-aware router (sgl-router, policies/cache_aware.rs): when the
  pool is imbalanced (max - min requests in flight > balance_abs_threshold and max >
  balance_rel_threshold x min) the least loaded instance; otherwise the instance with the
  longest cached prefix if that prefix is more than cache_threshold of the prompt, else the
  least loaded (SGLang picks the worker with the smallest radix tree there). Defaults are
  sgl-router's RouterArgs: cache_threshold 0.3, balance_abs_threshold 64, balance_rel_threshold 1.5.
- `kv_aware`, as NVIDIA Dynamo's KV router (KvScheduler's cost): the lowest
  overlap_score_weight x prefill_blocks + decode_blocks, where prefill_blocks are the prompt
  blocks not cached on the instance and decode_blocks the instance's active (queued and running)
  tokens in blocks; Dynamo's defaults overlap_score_weight 1.0 and router_temperature 0 (the
  minimum, not a softmax sample).
- `power_of_two`: two instances drawn at random (seeded), the less loaded of them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from pdsim.config.base import ROUTER_POLICIES
from pdsim.engine.request import Request

POLICIES = ROUTER_POLICIES  # one list: configs, the CLI and the router accept the same names

SGLANG_CACHE_THRESHOLD = 0.3
SGLANG_BALANCE_ABS_THRESHOLD = 64
SGLANG_BALANCE_REL_THRESHOLD = 1.5
DYNAMO_OVERLAP_SCORE_WEIGHT = 1.0


class Routable(Protocol):
    @property
    def load_tokens(self) -> int: ...

    @property
    def num_requests(self) -> int: ...

    def prefix_hit_tokens(self, req: Request) -> int: ...


class Router:
    """Picks one instance from a list of candidates; one router per pool (prefill or decode)."""

    def __init__(self, policy: str, seed: int) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.policy = policy
        self._rng = random.Random(seed)
        self._turn = 0

    def choose(self, candidates: Sequence[Routable], req: Request | None = None) -> Routable:
        if len(candidates) == 1:
            return candidates[0]
        policy = self.policy
        if policy == "round_robin":
            choice = candidates[self._turn % len(candidates)]
            self._turn += 1
            return choice
        if policy == "random":
            return candidates[self._rng.randrange(len(candidates))]
        if policy == "power_of_two":
            a, b = self._rng.sample(range(len(candidates)), 2)
            return candidates[b] if candidates[b].load_tokens < candidates[a].load_tokens else candidates[a]
        if policy == "kv_aware" and req is not None:
            return self._kv_aware(candidates, req)
        if policy == "prefix_aware" and req is not None:
            return self._prefix_aware(candidates, req)
        return self._least_loaded(candidates)

    def _least_loaded(self, candidates: Sequence[Routable]) -> Routable:
        # Fewest queued + running tokens. Ties (typically several idle instances) rotate, so a
        # light load spreads over the pool instead of piling onto the first one.
        n = len(candidates)
        start = self._turn % n
        self._turn += 1
        loads = [c.load_tokens for c in candidates]
        lowest = min(loads)
        # The first instance at the lowest load from `start` on, wrapping round: min over (load, (i - start) % n).
        for i in range(start, n):
            if loads[i] == lowest:
                return candidates[i]
        return candidates[loads.index(lowest)]

    def _prefix_aware(self, candidates: Sequence[Routable], req: Request) -> Routable:
        loads = [c.num_requests for c in candidates]
        lo, hi = min(loads), max(loads)
        if hi - lo > SGLANG_BALANCE_ABS_THRESHOLD and hi > lo * SGLANG_BALANCE_REL_THRESHOLD:
            return self._least_loaded(candidates)
        hits = [c.prefix_hit_tokens(req) for c in candidates]
        best = max(range(len(candidates)), key=lambda i: (hits[i], -candidates[i].load_tokens))
        if hits[best] > SGLANG_CACHE_THRESHOLD * req.input_toks:
            return candidates[best]
        return self._least_loaded(candidates)

    def _kv_aware(self, candidates: Sequence[Routable], req: Request) -> Routable:
        n = len(candidates)
        turn = self._turn
        self._turn += 1

        def cost(i: int) -> tuple[float, int]:
            # Both terms in tokens: dividing each by the block size, as Dynamo does, picks the same.
            c = candidates[i]
            prefill_tokens = req.input_toks - c.prefix_hit_tokens(req)
            return DYNAMO_OVERLAP_SCORE_WEIGHT * prefill_tokens + c.load_tokens, (i - turn) % n

        return candidates[min(range(n), key=cost)]
