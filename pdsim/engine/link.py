"""One direction of one piece of network hardware that KV transfers cross, with its usage counters.

A link is a sender's NIC, a receiver's NIC, a GPU's port into the intra-node fabric, or the
network path between two instances (see topology.py). It only holds its capacity and what
crossed it; how concurrent flows share it is decided in network.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pdsim.engine.network import Flow


@dataclass(eq=False)
class Link:
    name: str
    kind: str  # "nic_out", "nic_in", "fabric_out", "fabric_in" or "network"
    capacity_bytes_per_s: float
    latency_s: float = 0.0  # propagation + switching; a path pays the sum over its links
    flows: dict[Flow, None] = field(default_factory=dict)  # insertion-ordered set
    bytes_moved: float = 0.0  # settled up to the network's last update
    busy_s: float = 0.0  # time with at least one flow moving bytes over it
    peak_flows: int = 0

    @property
    def rate_bytes_per_s(self) -> float:
        return sum(f.rate_bytes_per_s for f in self.flows)

    @property
    def num_active(self) -> int:
        return len(self.flows)
