"""KV-cache hand-off from a prefill instance to a decode instance: how many bytes, and when they move.

Bytes are what the receiver must end up holding: whole blocks of the sender (connectors such
as NIXL and Mooncake move block-sized regions, so a half-filled last block travels whole), of
every KV head the receiver's TP layout stores (grouped-query aware: 8 KV heads, not 32, for
Llama-3.1-8B; a head replicated over several receiver shards is sent to each of them), in the
wire dtype.

Modes (config `kv_transfer.mode`):
- after_prefill: the flow starts when decode-side blocks are reserved, after the prefill step
  is over; all bytes are ready.
- layerwise: blocks are reserved when the request's final prefill step starts, and the flow is
  fed layer by layer: KV of tokens computed in earlier chunks is ready at once, the final
  chunk's KV of layer l once l + 1 of the L layers have run (the step's time spread evenly over
  the layers). Only what the link cannot move while later layers compute stays exposed:
  ideally the last layer's share.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import simpy

from pdsim.config import KVTransferConfig
from pdsim.engine.instance import Instance
from pdsim.engine.kv_cache import blocks_for
from pdsim.engine.link import Link
from pdsim.engine.network import Network
from pdsim.engine.request import Request
from pdsim.engine.topology import Topology
from pdsim.models import ModelSpec


def kv_transfer_bytes(
    model: ModelSpec, tokens: int, block_size: int, kv_dtype: str, dst_tp: int, wire_dtype: str = "same"
) -> int:
    """Bytes moved to hand `tokens` tokens of KV over to a receiver with `dst_tp` TP shards."""
    dtype = kv_dtype if wire_dtype == "same" else wire_dtype
    cached_tokens = blocks_for(tokens, block_size) * block_size
    # kv_bytes_per_token is per shard; times the shards gives the unique heads, or every copy
    # of a replicated head when dst_tp exceeds the number of KV heads.
    return cached_tokens * model.kv_bytes_per_token(dtype, dst_tp) * dst_tp


def transfer_fixed_cost_s(cfg: KVTransferConfig, model: ModelSpec, reads_in_series: int = 1) -> float:
    """What a hand-off costs besides moving its bytes: each read moves each layer's K and V blocks as their own
    RDMA requests and waits for their completions (per layer), plus the handshake (per transfer). Reads that
    share a NIC, or a rank, queue there one after another (Topology.reads_in_series)."""
    per_layer_us = cfg.per_layer_overhead_us * reads_in_series
    return (per_layer_us * model.num_layers + cfg.per_transfer_overhead_us) * 1e-6


@dataclass
class _FinalStep:
    """The prefill step that completes a request, as seen when it starts (layerwise mode)."""

    start_s: float
    duration_s: float
    prior_tokens: int  # KV computed in earlier chunks: ready before the step
    new_tokens: int


class KVTransfers:
    def __init__(
        self, env: simpy.Environment, cfg: KVTransferConfig, topology: Topology, network: Network,
        models: dict[str, ModelSpec],
    ) -> None:
        self.env = env
        self.cfg = cfg
        self.topology = topology
        self.network = network
        # Both ends of a hand-off are P/D instances: their engines cache the model as one with a KV connector does.
        self.models = {name: model.with_connector_kv() for name, model in models.items()}
        self._final_steps: dict[int, _FinalStep] = {}  # request id -> its final prefill step
        self._routes: dict[tuple[str, str], tuple[tuple[Link, ...], float]] = {}  # see _route

    @property
    def layerwise(self) -> bool:
        return self.cfg.mode == "layerwise"

    def note_final_step(self, req: Request, start_s: float, duration_s: float, prior_tokens: int,
                        new_tokens: int) -> None:
        self._final_steps[req.id] = _FinalStep(start_s, duration_s, prior_tokens, new_tokens)

    def start(self, src: Instance, dst: Instance, req: Request, on_done: Callable[[], None]) -> None:
        """Move `req`'s prompt KV from `src` to `dst`; `on_done` runs when it has all arrived."""
        model = self.models[src.spec.model_name]
        # Only the blocks the receiver does not hold already (its prefix cache) travel.
        total = kv_transfer_bytes(model, req.input_toks - req.decode_cached_tokens, src.spec.block_size,
                                  src.spec.kv_dtype or src.spec.dtype, dst.spec.tp, self.cfg.dtype)
        req.kv_bytes = total
        path, delay_after_s = self._route(src, dst, model)
        step = self._final_steps.pop(req.id, None)
        if step is None:
            self.network.start(path, total, on_done, delay_after_s, endpoints=(src.id, dst.id))
            return
        layers = model.num_layers
        prior = total * step.prior_tokens / (step.prior_tokens + step.new_tokens)

        def fed_after(layers_done: int) -> float:
            return total if layers_done >= layers else prior + (total - prior) * layers_done / layers

        # A pipelined prefill's step may start later than now (its first stage still busy): none of its
        # layers is done yet, but the KV of the earlier chunks is.
        elapsed = max(self.env.now - step.start_s, 0.0)
        done = layers if step.duration_s <= 0 else min(layers, int(elapsed / step.duration_s * layers))
        flow = self.network.start(path, total, on_done, delay_after_s, fed_bytes=fed_after(done),
                                  endpoints=(src.id, dst.id))
        if done >= layers:
            return

        def feeder() -> Generator[simpy.Event, object, None]:
            for layer in range(done + 1, layers + 1):
                at = step.start_s + step.duration_s * layer / layers
                if at > self.env.now:
                    yield self.env.timeout(at - self.env.now)
                self.network.feed(flow, fed_after(layer))

        self.env.process(feeder())

    def _route(self, src: Instance, dst: Instance, model: ModelSpec) -> tuple[tuple[Link, ...], float]:
        """The links from `src` to `dst`, and the delay after a transfer's last byte (the path's latency, the per-layer
        and per-transfer costs): the same for every hand-off between the two, so found once per pair."""
        key = (src.id, dst.id)
        route = self._routes.get(key)
        if route is None:
            path = self.topology.path(src, dst)
            reads = self.topology.reads_in_series(path, src, dst, mla=getattr(model, "mla", None) is not None)
            route = (path, self.topology.latency_s(path) + transfer_fixed_cost_s(self.cfg, model, reads))
            self._routes[key] = route
        return route
