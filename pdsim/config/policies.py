"""The cluster-wide policies of a config: which instance gets a request (`router`) and how a
prefilled request's KV cache moves to its decode instance (`kv_transfer`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from pdsim.config.base import KV_TRANSFER_DTYPES, KV_TRANSFER_MODES, MAX_OVERHEAD_US, ROUTER_POLICIES, _one_of, _Strict


class RouterConfig(_Strict):
    prefill_policy: str = "least_loaded"
    decode_policy: str = "least_loaded"

    @field_validator("prefill_policy", "decode_policy", mode="before")
    @classmethod
    def _policy(cls, v: Any) -> Any:
        return _one_of(v, ROUTER_POLICIES)


class KVTransferConfig(_Strict):
    """How a prefilled request's KV cache moves to its decode instance (docs/pd_realism.md)."""

    # after_prefill: the transfer starts once the prefill step is over and decode-side blocks are
    # reserved (vLLM's NIXL connector). layerwise: decode-side blocks are reserved when
    # the final prefill step starts, and each layer's KV leaves as soon as that layer is computed.
    mode: str = "after_prefill"
    # Wire format: "same" sends the KV in the instances' dtype; fp8/int8 quantise it (1 byte/value).
    dtype: str = "same"
    # Defaults measured, not line rate (docs/pd_realism.md, benchmarks/mooncake_kv_transfer.py):
    # derived from Mooncake's vLLM v1 table (Qwen3-8B TP8, H800, 8x200 Gb/s RoCE), held out on its
    # SGLang table. The connector posts each layer's K and V blocks as their own RDMA writes and
    # waits for their completions, so a hand-off pays a fixed cost per model layer (per TP rank
    # queued on one NIC, NodeConfig.gpus_per_nic); and RDMA
    # reaches a fraction of the NICs' line rate.
    per_layer_overhead_us: float = Field(default=10.5, ge=0, le=MAX_OVERHEAD_US, allow_inf_nan=False)
    per_transfer_overhead_us: float = Field(default=0.0, ge=0, le=MAX_OVERHEAD_US,
                                            allow_inf_nan=False)  # handshake + completion notice
    # Share of link_bw / nic_bw a transfer achieves (network and NIC links; not intra_node_bw). At least 1%:
    # below it a link is broken, not slow, and a hand-off would outlast any run (the link's own floor is
    # 1 MB/s).
    bandwidth_efficiency: float = Field(default=0.73, ge=0.01, le=1, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _explicit_overhead_replaces_per_layer(cls, raw: Any) -> Any:
        # A config that states its per-transfer overhead (fitted as the whole fixed cost) keeps
        # exactly that: the per-layer default is not added on top.
        if isinstance(raw, dict) and "per_transfer_overhead_us" in raw and "per_layer_overhead_us" not in raw:
            return {**raw, "per_layer_overhead_us": 0.0}
        return raw

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        return _one_of(v, KV_TRANSFER_MODES)

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: Any) -> Any:
        return _one_of(v, KV_TRANSFER_DTYPES)
