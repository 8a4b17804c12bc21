"""Routing policies: which instance of a pool gets a request."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

POLICIES = ("round_robin", "random", "least_loaded")


class Routable(Protocol):
    @property
    def load_tokens(self) -> int: ...


class Router:
    """Picks one instance from a list of candidates; one router per pool (prefill or decode)."""

    def __init__(self, policy: str, seed: int) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.policy = policy
        self._rng = random.Random(seed)
        self._turn = 0

    def choose(self, candidates: Sequence[Routable]) -> Routable:
        if len(candidates) == 1:
            return candidates[0]
        if self.policy == "round_robin":
            choice = candidates[self._turn % len(candidates)]
            self._turn += 1
            return choice
        if self.policy == "random":
            return candidates[self._rng.randrange(len(candidates))]
        # least_loaded: fewest queued + running tokens. Ties (typically several idle instances)
        # rotate, so a light load spreads over the pool instead of piling onto the first one.
        n = len(candidates)
        turn = self._turn
        self._turn += 1
        best = min(range(n), key=lambda i: (candidates[i].load_tokens, (i - turn) % n))
        return candidates[best]
