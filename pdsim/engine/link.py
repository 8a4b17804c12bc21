"""A network link between two instances that carries KV-cache transfers.

Concurrent transfers share the bandwidth equally (processor sharing), re-planned whenever one
starts or ends, so a burst of long prompts slows every transfer on the link down. A transfer
of `b` bytes alone takes b / bandwidth + latency.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy


class Link:
    def __init__(self, env: simpy.Environment, name: str, bw_gbps: float, latency_ns: float) -> None:
        self.env = env
        self.name = name
        self.bw_bytes_per_s = bw_gbps * 1e9
        self.latency_s = latency_ns * 1e-9
        self._active: dict[int, list] = {}  # id -> [remaining bytes, on_done]
        self._next_id = 0
        self._last_update_s = 0.0
        self._generation = 0
        self.bytes_moved = 0
        self.busy_s = 0.0  # time with at least one transfer in flight

    def transfer(self, nbytes: int, on_done: Callable[[], None]) -> None:
        """Start moving `nbytes`; `on_done` is called when the last byte (plus latency) has arrived."""
        self._settle()
        self._active[self._next_id] = [float(nbytes), on_done]
        self._next_id += 1
        self.bytes_moved += nbytes
        self._plan()

    @property
    def num_active(self) -> int:
        return len(self._active)

    def _settle(self) -> None:
        """Charge the bytes each active transfer moved since the last change."""
        now = self.env.now
        elapsed = now - self._last_update_s
        if self._active and elapsed > 0:
            moved = elapsed * self.bw_bytes_per_s / len(self._active)
            for entry in self._active.values():
                entry[0] -= moved
            self.busy_s += elapsed
        self._last_update_s = now

    def _plan(self) -> None:
        self._generation += 1
        if not self._active:
            return
        smallest = min(entry[0] for entry in self._active.values())
        delay = max(smallest, 0.0) * len(self._active) / self.bw_bytes_per_s
        generation = self._generation
        self.env.timeout(delay).callbacks.append(lambda _ev: self._on_timer(generation))

    def _on_timer(self, generation: int) -> None:
        if generation != self._generation:
            return  # a transfer started or ended since this timer was set
        self._settle()
        # Within a byte: floating-point residue must not leave a transfer a hair short of done.
        done = [key for key, entry in self._active.items() if entry[0] <= 1.0]
        for key in done:
            on_done = self._active.pop(key)[1]
            if self.latency_s > 0:
                self.env.timeout(self.latency_s).callbacks.append(lambda _ev, cb=on_done: cb())
            else:
                on_done()
        self._plan()
