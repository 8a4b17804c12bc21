"""The clients that send a trace's requests to the cluster, as SimPy processes: an open loop (each
request at its trace time) or a closed loop (a fixed number of clients, each sending its next
request when its previous one ends, as `vllm bench serve --max-concurrency` does)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator, Sequence
from typing import Any

import simpy

from pdsim.engine.request import Request
from pdsim.workload.trace import ARRIVAL_RESOLUTION_S

Admit = Callable[[Request], None]


class OpenLoop:
    """Each request reaches the cluster at its arrival time (requests sorted by it). An engine about to decide
    less than ARRIVAL_RESOLUTION_S before the next arrival waits for it (`arrival_due`), so that the decision
    sees it, as one taken at the same instant would."""

    def __init__(self, env: simpy.Environment, requests: Sequence[Request], admit: Admit) -> None:
        self.env = env
        self.requests = requests
        self.admit = admit
        self.next_s = math.inf  # when the next request comes
        self._admitted: simpy.Event | None = None  # made when an engine waits for the next arrival

    def run(self) -> Generator[Any, Any, None]:
        """The SimPy process sending the requests."""
        for req in self.requests:
            # Requests of one arrival time come at one instant: the clock a timeout reached may stand a float's
            # last digit off that time, and the next would wait out the difference.
            if req.arrival_s != self.next_s:
                self.next_s = req.arrival_s
                if (delay := req.arrival_s - self.env.now) > 0:
                    yield self.env.timeout(delay)
            self.admit(req)
            if self._admitted is not None:
                self._admitted.succeed()
                self._admitted = None
        self.next_s = math.inf

    def arrival_due(self) -> simpy.Event | None:
        """An event that fires once the next request has been admitted, where it comes within
        ARRIVAL_RESOLUTION_S from now; None otherwise."""
        if not 0 < self.next_s - self.env.now <= ARRIVAL_RESOLUTION_S:
            return None
        if self._admitted is None:
            self._admitted = self.env.event()
        return self._admitted


class ClosedLoopClients:
    """`concurrency` clients sending the requests in order (their trace arrival times are replaced by
    the send times). Client i starts at i * start_spread_s / concurrency; each request reaches the
    engine after a seeded uniform [0, 2 * delay_s] delay; between a request's end and its client's
    next send a gap drawn from send_gaps_s (seeded) when given. Call `on_done` when a request ends."""

    def __init__(self, env: simpy.Environment, requests: Sequence[Request], admit: Admit, concurrency: int,
                 seed: int, start_spread_s: float = 0.0, delay_s: float = 0.0,
                 send_gaps_s: tuple[float, ...] = ()) -> None:
        self.env = env
        self.admit = admit
        self.concurrency = concurrency
        self.total = len(requests)
        self.start_spread_s = start_spread_s
        self.delay_s = delay_s
        self.send_gaps_s = send_gaps_s
        self._backlog = iter(requests)
        self._rng = random.Random(seed)
        # Sends owed to clients whose request ended while another send was being admitted: a request the cluster
        # rejects at admission ends within that call, and sending again from inside it would nest one call deeper
        # per rejected request (a RecursionError after a few hundred in a row).
        self._owed = 0
        self._sending = False

    def start(self) -> Generator[Any, Any, None]:
        """The SimPy process starting the clients."""
        gap_s = self.start_spread_s / self.concurrency
        # Clients beyond the number of requests would never send one: only the others are started.
        for i in range(min(self.concurrency, self.total)):
            if i and gap_s > 0:
                yield self.env.timeout(gap_s)
            self.on_done()
        yield self.env.timeout(0)

    def on_done(self, _done: Request | None = None) -> None:
        """A client's request ended (or the client starts): it sends the next one."""
        self._owed += 1
        if self._sending:  # the send in progress sends this one when its admission returns
            return
        self._sending = True
        while self._owed:
            self._owed -= 1
            req = next(self._backlog, None)
            if req is None:
                self._owed = 0
            elif self.send_gaps_s:
                self.env.process(self._send_after(req, self._rng.choice(self.send_gaps_s)))
            else:
                self._send(req)
        self._sending = False

    def _send(self, req: Request) -> None:
        req.arrival_s = self.env.now
        if self.delay_s > 0:
            self.env.process(self._deliver(req, self._rng.uniform(0.0, 2.0 * self.delay_s)))
        else:
            self.admit(req)

    def _send_after(self, req: Request, gap_s: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(gap_s)
        self._send(req)

    def _deliver(self, req: Request, delay_s: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(delay_s)
        self.admit(req)
