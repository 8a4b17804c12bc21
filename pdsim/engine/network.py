"""Flows over capacity-limited links, sharing bandwidth max-min fairly.

A KV transfer is a flow that crosses one or more links (a sender's NIC, the network path, a
receiver's NIC, or the intra-node fabric ports). Whenever a flow starts, ends, stalls or gets
more data to send, every flow's rate is recomputed by progressive filling: all flows grow
together until some link is full; the flows crossing it are frozen at that rate, and the rest
go on growing. So two equal flows on one link each get half of it, and a flow held back
elsewhere leaves its unused share to the others.

A flow may be fed gradually (layer-wise streaming: a layer's KV can only leave once that layer
has been computed). A flow that has sent everything it has been given stalls at rate 0 until
`feed` gives it more; it is done when all of its bytes have been sent, and its `on_done` runs
after the path latency plus a fixed per-transfer overhead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import simpy

from pdsim.engine.link import Link

# Floating-point residue must not leave a flow a hair short of done (or of its fed bytes).
_BYTE_EPS = 1.0


@dataclass(eq=False)
class Flow:
    path: tuple[Link, ...]
    total_bytes: float
    delay_after_s: float  # path latency + per-transfer overhead, paid once after the last byte
    on_done: Callable[[], None]
    start_s: float
    fed_bytes: float  # bytes handed to the flow so far (== total_bytes unless streamed)
    endpoints: tuple[str, str] = ("", "")  # sender and receiver, for per-instance rates
    sent_bytes: float = 0.0
    rate_bytes_per_s: float = 0.0

    @property
    def remaining_bytes(self) -> float:
        return self.total_bytes - self.sent_bytes

    @property
    def stalled(self) -> bool:
        return self.fed_bytes - self.sent_bytes <= _BYTE_EPS and self.remaining_bytes > _BYTE_EPS


class Network:
    """All flows of one simulation; links belong to the topology that builds the paths."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        # Insertion-ordered (a dict, not a set): flows then finish, and rates sum, in the same
        # order in every run; a set of objects iterates in memory-address order.
        self.flows: dict[Flow, None] = {}
        self._last_update_s = 0.0
        self._generation = 0

    def start(
        self,
        path: tuple[Link, ...],
        nbytes: float,
        on_done: Callable[[], None],
        delay_after_s: float = 0.0,
        fed_bytes: float | None = None,
        endpoints: tuple[str, str] = ("", ""),
    ) -> Flow:
        """Start moving `nbytes` over `path` (all of it available now unless `fed_bytes` is given)."""
        if not path:
            raise ValueError("a flow needs at least one link")
        self.settle()
        fed = float(nbytes) if fed_bytes is None else min(float(fed_bytes), float(nbytes))
        flow = Flow(path, float(nbytes), delay_after_s, on_done, self.env.now, fed, endpoints)
        self.flows[flow] = None
        for link in path:
            link.flows[flow] = None
            link.peak_flows = max(link.peak_flows, len(link.flows))
        self._finish_done()  # a zero-byte flow ends at once (after its delay)
        self._replan()
        return flow

    def feed(self, flow: Flow, fed_bytes: float) -> None:
        """A streamed flow now has `fed_bytes` (cumulative) ready to send."""
        if flow not in self.flows or fed_bytes <= flow.fed_bytes:
            return
        self.settle()
        flow.fed_bytes = min(flow.total_bytes, float(fed_bytes))
        self._replan()

    def settle(self) -> None:
        """Charge the bytes every flow moved since the last change (call before reading stats)."""
        now = self.env.now
        elapsed = now - self._last_update_s
        if elapsed > 0 and self.flows:
            links: dict[Link, None] = {}
            for flow in self.flows:
                if flow.rate_bytes_per_s > 0:
                    moved = flow.rate_bytes_per_s * elapsed
                    flow.sent_bytes = min(flow.sent_bytes + moved, flow.fed_bytes)
                    for link in flow.path:
                        link.bytes_moved += moved
                        links[link] = None
            for link in links:
                link.busy_s += elapsed
        self._last_update_s = now

    # -- internals --------------------------------------------------------------------------------
    def _finish_done(self) -> None:
        done = [f for f in self.flows if f.remaining_bytes <= _BYTE_EPS]
        for flow in done:
            del self.flows[flow]
            for link in flow.path:
                del link.flows[flow]
            flow.rate_bytes_per_s = 0.0
            if flow.delay_after_s > 0:
                self.env.timeout(flow.delay_after_s).callbacks.append(lambda _ev, cb=flow.on_done: cb())
            else:
                flow.on_done()

    def _replan(self) -> None:
        self._solve()
        self._generation += 1
        delay = math.inf
        for flow in self.flows:
            if flow.rate_bytes_per_s > 0:
                # Next change: the flow ends, or it runs out of fed bytes and stalls.
                ahead = min(flow.remaining_bytes, flow.fed_bytes - flow.sent_bytes)
                delay = min(delay, max(ahead, 0.0) / flow.rate_bytes_per_s)
        if delay < math.inf:
            generation = self._generation
            self.env.timeout(delay).callbacks.append(lambda _ev: self._on_timer(generation))

    def _on_timer(self, generation: int) -> None:
        if generation != self._generation:
            return  # a flow started, ended or was fed since this timer was set
        self.settle()
        self._snap_unrepresentable()
        self._finish_done()
        self._replan()

    def _snap_unrepresentable(self) -> None:
        """Late in a run the clock's resolution (one ulp of `now`) can exceed the time a fast flow
        needs for its last bytes: the timer then fires at the same `now`, `settle` moves nothing,
        and the flow would be rescheduled forever. Such a flow has, to the clock's resolution,
        reached its next change already: move those bytes now."""
        now = self.env.now
        resolution_s = 2.0 * math.ulp(now)
        for flow in self.flows:
            rate = flow.rate_bytes_per_s
            if rate <= 0:
                continue
            ahead = min(flow.remaining_bytes, flow.fed_bytes - flow.sent_bytes)
            if 0 < ahead and ahead / rate <= resolution_s:
                flow.sent_bytes += ahead
                for link in flow.path:
                    link.bytes_moved += ahead

    def _solve(self) -> None:
        """Max-min fair rates by progressive filling over the flows that have bytes to send."""
        active = [f for f in self.flows if not f.stalled]
        for flow in self.flows:
            flow.rate_bytes_per_s = 0.0
        left: dict[Link, float] = {}
        count: dict[Link, int] = {}
        for flow in active:
            for link in flow.path:
                left[link] = link.capacity_bytes_per_s
                count[link] = count.get(link, 0) + 1
        unfrozen = dict.fromkeys(active)
        while unfrozen:
            bottleneck = min((lk for lk in count if count[lk] > 0), key=lambda lk: left[lk] / count[lk])
            share = left[bottleneck] / count[bottleneck]
            for flow in [f for f in bottleneck.flows if f in unfrozen]:
                flow.rate_bytes_per_s = share
                del unfrozen[flow]
                for link in flow.path:
                    left[link] -= share
                    count[link] -= 1
