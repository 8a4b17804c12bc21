"""Small builders shared by the engine tests."""

from __future__ import annotations

from pdsim.config import ClusterConfig, cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, SimulationResult, simulate
from pdsim.workload.trace import TraceRequest

MODEL = "meta-llama/Llama-3.1-8B"


def instance(pd_type: str | None, mem_size_gb: float = 96, hardware: str = "RTXPRO6000", **knobs) -> dict:
    return {
        "model_name": MODEL, "hardware": hardware,
        "npu_mem": {"mem_size": mem_size_gb, "mem_bw": 1597, "mem_latency": 0, "mem_util": 0.9},
        "num_npus": 1, "tp_size": 1, "pd_type": pd_type, **knobs,
    }


def cluster(*instances: dict, link_bw: float = 16, link_latency: float = 20000, **top) -> ClusterConfig:
    return cluster_config_from_dict({
        "num_nodes": 1, "link_bw": link_bw, "link_latency": link_latency,
        "nodes": [{"num_instances": len(instances), "instances": list(instances)}], **top,
    })


def trace(rows: list[tuple[int, int, float]]) -> list[TraceRequest]:
    """(input, output, arrival seconds) rows."""
    return [TraceRequest(i, inp, out, int(round(t * 1e9))) for i, (inp, out, t) in enumerate(rows)]


def run(cfg: ClusterConfig, rows: list[tuple[int, int, float]], **opts) -> SimulationResult:
    return simulate(cfg, trace(rows), SimOptions(**opts))
