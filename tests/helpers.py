"""Small builders shared by the engine tests (and benchmarks/vllm_scheduler_check.py)."""

from __future__ import annotations

import numpy as np

from pdsim.config import ClusterConfig, cluster_config_from_dict
from pdsim.engine.cluster import SimOptions, SimulationResult, StepTimeFactory, simulate
from pdsim.perf.predictor import StepTimePredictor
from pdsim.workload.trace import TraceRequest

MODEL = "meta-llama/Llama-3.1-8B"


def instance(pd_type: str | None, mem_size_gb: float = 96, hardware: str = "RTXPRO6000", **knobs) -> dict:
    return {
        "model_name": MODEL, "hardware": hardware,
        "npu_mem": {"mem_size": mem_size_gb, "mem_bw": 1792, "mem_latency": 0}, "gpu_memory_utilization": 0.9,
        "num_npus": 1, "tp_size": 1, "pd_type": pd_type, **knobs,
    }


def cluster(*instances: dict, link_bw: float = 16, link_latency: float = 20000, **top) -> ClusterConfig:
    return cluster_config_from_dict({
        "num_nodes": 1, "link_bw": link_bw, "link_latency": link_latency,
        "nodes": [{"num_instances": len(instances), "instances": list(instances)}], **top,
    })


def trace(rows: list[tuple]) -> list[TraceRequest]:
    """(input, output, arrival seconds[, hash_ids, hash_block_tokens]) rows."""
    return [TraceRequest(i, inp, out, int(round(t * 1e9)), *(tuple(p) if isinstance(p, list) else p for p in prefix))
            for i, (inp, out, t, *prefix) in enumerate(rows)]


def run(cfg: ClusterConfig, rows: list[tuple], step_times: StepTimeFactory = StepTimePredictor,
        **opts) -> SimulationResult:
    """Simulate the rows; step_times makes each instance's step-time model (e.g. AnalyticStepTimes)."""
    return simulate(cfg, trace(rows), SimOptions(**opts), step_times=step_times)


class AnalyticStepTimes(StepTimePredictor):
    """Step times from a closed formula instead of the profile's tables, for scheduler tests whose
    expected times were recorded elsewhere (tests/data/vllm_scheduler_golden_<vLLM version>.json): 1 ms per step,
    40 us per token, 2 ns per decode KV token and 1 ns per prefill query-key pair."""

    def step_time_s(self, prefill_chunks, n_decode, kv_decode_sum, kv_decode_max=None, graph_tokens=None) -> float:
        tokens = n_decode + sum(c for c, _ in prefill_chunks)
        if tokens <= 0:
            return 0.0
        pairs = sum(c * (p + c / 2) for c, p in prefill_chunks)
        return 1e-3 + 40e-6 * tokens + 2e-9 * kv_decode_sum + 1e-9 * pairs

    def decode_run_s(self, n_decode, kv_decode_sum, num_steps, kv_decode_max=None) -> np.ndarray:
        if n_decode <= 0:
            return np.zeros(max(num_steps, 0))
        steps = np.arange(max(num_steps, 0), dtype=np.float64)
        return 1e-3 + 40e-6 * n_decode + 2e-9 * (kv_decode_sum + steps * n_decode)


def all_released(inst) -> bool:
    """Every block of an instance is free once its engine's next KV-connector poll frees the blocks of requests
    whose KV the decode side read after the engine's last step (Instance.kv_read): no block leaked."""
    inst.free_read_kv()
    return inst.kv.free == inst.kv.num_blocks and inst.held_for_transfer_blocks == 0


class Terminal:
    """stderr as a terminal would be: the progress bars draw on it."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass
