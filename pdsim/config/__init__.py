"""Cluster configuration, in LLMServingSim's cluster-config schema (pydantic models).

base.py holds the strict base model, limits and choice lists; models.py the config sections
(instance, node, cluster); policies.py the router and KV-transfer sections; load.py reads a file
and words its errors.
The names most callers need are re-exported here (`from pdsim.config import ClusterConfig`).
"""

from pdsim.config.base import (
    GB,
    IGNORED_KEYS,
    INTRA_NODE_LATENCY_NS,
    KV_TRANSFER_DTYPES,
    KV_TRANSFER_MODES,
    MAX_BLOCK_SIZE,
    MAX_BW_GBPS,
    MAX_LATENCY_NS,
    MAX_MEM_GB,
    MAX_NPUS,
    MAX_OVERHEAD_US,
    MAX_TOKENS,
    MIN_BW_GBPS,
    OVERRIDABLE_KEYS,
    PD_TYPES,
    ROUTER_POLICIES,
    TTFT_MODES,
)
from pdsim.config.load import cluster_config_from_dict, format_validation_error, load_cluster_config
from pdsim.config.models import (
    ClusterConfig,
    InstanceConfig,
    InstanceRef,
    MemConfig,
    NodeConfig,
    NpuMemConfig,
    instance_id,
)
from pdsim.config.policies import KVTransferConfig, RouterConfig

__all__ = [
    "GB", "IGNORED_KEYS", "INTRA_NODE_LATENCY_NS", "KV_TRANSFER_DTYPES", "KV_TRANSFER_MODES", "MAX_BLOCK_SIZE",
    "MAX_BW_GBPS", "MAX_LATENCY_NS", "MAX_MEM_GB", "MAX_NPUS", "MAX_OVERHEAD_US", "MAX_TOKENS", "MIN_BW_GBPS",
    "OVERRIDABLE_KEYS", "PD_TYPES", "ROUTER_POLICIES", "TTFT_MODES",
    "ClusterConfig", "InstanceConfig", "InstanceRef", "KVTransferConfig", "MemConfig", "NodeConfig", "NpuMemConfig",
    "RouterConfig", "instance_id",
    "cluster_config_from_dict", "format_validation_error", "load_cluster_config",
]
