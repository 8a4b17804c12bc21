"""Where instances sit, and which links a KV transfer between two of them crosses.

Links (created on first use, one object per piece of hardware and direction):
- `nic_out`/`nic_in` of an instance, when its node has `nic_bw`: nic_bw x tp_size, since each
  GPU of a TP group sends and receives its own shard through its own NIC. Every transfer the
  instance sends (receives) over the network shares its nic_out (nic_in).
- `network` per ordered instance pair: link_bw and link_latency, the top-level LLMServingSim
  fields, as the bandwidth one pair of instances gets through the network.
- `fabric_out`/`fabric_in` of an instance, when its node has `intra_node_bw`: intra_node_bw x
  tp_size (each GPU's NVLink ports), with intra_node_latency.

A transfer between two instances on one node with `intra_node_bw` crosses the sender's
fabric_out and the receiver's fabric_in; any other transfer crosses [nic_out], network,
[nic_in]. With no topology keys at all, a transfer crosses one network link of its pair, so
an LLMServingSim config keeps its meaning: link_bw and link_latency between every two instances.
"""

from __future__ import annotations

from pdsim.config import ClusterConfig
from pdsim.engine.instance import Instance
from pdsim.engine.link import Link

GB_PER_S = 1e9  # link bandwidths are in decimal GB/s, as network and NVLink speeds are quoted


class Topology:
    def __init__(self, cfg: ClusterConfig, instances: list[Instance]) -> None:
        self.cfg = cfg
        self.by_id = {inst.id: inst for inst in instances}
        self.links: dict[str, Link] = {}

    def on_fabric(self, src: Instance, dst: Instance) -> bool:
        """Whether a transfer from `src` to `dst` stays on their node's intra_node_bw fabric (else: the network)."""
        return src.spec.node == dst.spec.node and self.cfg.nodes[src.spec.node].intra_node_bw is not None

    def path(self, src: Instance, dst: Instance) -> tuple[Link, ...]:
        """The links a transfer from `src` to `dst` crosses, sender side first."""
        src_node = self.cfg.nodes[src.spec.node]
        dst_node = self.cfg.nodes[dst.spec.node]
        if self.on_fabric(src, dst):
            bw = src_node.intra_node_bw * GB_PER_S
            latency_s = src_node.intra_node_latency * 1e-9
            # The latency is charged once, on the sender's port.
            return (
                self._link(f"{src.id}.fabric_out", "fabric_out", bw * src.spec.tp, latency_s),
                self._link(f"{dst.id}.fabric_in", "fabric_in", bw * dst.spec.tp, 0.0),
            )
        path = []
        if src_node.nic_bw is not None:
            path.append(self._link(f"{src.id}.nic_out", "nic_out", src_node.nic_bw * GB_PER_S * src.spec.tp, 0.0))
        path.append(self._link(
            f"{src.id}->{dst.id}", "network", self.cfg.link_bw * GB_PER_S, self.cfg.link_latency * 1e-9))
        if dst_node.nic_bw is not None:
            path.append(self._link(f"{dst.id}.nic_in", "nic_in", dst_node.nic_bw * GB_PER_S * dst.spec.tp, 0.0))
        return tuple(path)

    def reads_in_series(self, path: tuple[Link, ...], src: Instance, dst: Instance, mla: bool = False) -> int:
        """How many reads queue one after another at the busier end: on a NIC, the TP ranks that share it (1 when
        the transfer's `path` stays on one node's fabric) times the reads each rank serves or makes. Where the
        TPs differ (vLLM 0.19 NixlConnector, kv_connector/utils.py and nixl_connector.py): a decode TP r times
        the prefill's has r decode ranks read from each prefill rank, each a slice of its heads; a prefill TP r
        times the decode's has each decode rank read from r prefill ranks (an MLA model's replicated latent
        KV: from one)."""
        r_up, r_down = max(1, dst.spec.tp // src.spec.tp), max(1, src.spec.tp // dst.spec.tp)
        reads = {src.id: r_up, dst.id: 1 if mla else r_down}
        if path[0].kind.startswith("fabric"):
            return max(reads.values())
        # The ranks read at each end: all of them, but of an MLA prefill wider than its decode only one per
        # decode rank.
        ranks = {src.id: min(src.spec.tp, dst.spec.tp) if mla else src.spec.tp, dst.id: dst.spec.tp}
        return max(min(self.cfg.nodes[inst.spec.node].gpus_per_nic, ranks[inst.id]) * reads[inst.id]
                   for inst in (src, dst))

    @staticmethod
    def latency_s(path: tuple[Link, ...]) -> float:
        return sum(link.latency_s for link in path)

    def _link(self, name: str, kind: str, capacity_bytes_per_s: float, latency_s: float) -> Link:
        link = self.links.get(name)
        if link is None:
            if not kind.startswith("fabric"):  # RDMA over the NICs reaches a measured share of line rate
                capacity_bytes_per_s *= self.cfg.kv_transfer.bandwidth_efficiency
            link = Link(name, kind, capacity_bytes_per_s, latency_s)
            self.links[name] = link
        return link
