"""What a simulation returns: the requests, the instances and their sizing, and the sampled timelines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pdsim.config import GB
from pdsim.engine.instance import Instance
from pdsim.engine.link import Link
from pdsim.engine.request import Request

GIB = GB


@dataclass
class Sample:
    time_s: float
    instance: str
    prefill_reqs: int
    decode_reqs: int
    waiting_reqs: int
    kv_used_gb: float
    mem_used_gb: float
    prompt_tokens: int
    decode_tokens: int
    # KV hand-off: prefill-side blocks still held for transfers in flight (the temporary
    # duplication with the decode side), and the instance's current transfer rates.
    kv_held_for_transfer_gb: float = 0.0
    kv_send_gbps: float = 0.0
    kv_recv_gbps: float = 0.0
    # Prefix cache: prompt tokens looked up and found so far (cumulative; vLLM's queries/hits).
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefix_hit_rate: float = math.nan  # hit / query tokens so far (NaN before any lookup)


@dataclass
class LinkSample:
    """One link at one sample time; utilisation is averaged over the interval since the last sample."""

    time_s: float
    link: str
    kind: str
    capacity_gbps: float
    active_transfers: int
    rate_gbps: float  # at the sample instant
    utilisation: float
    moved_gb: float  # since the start


@dataclass
class InstanceInfo:
    id: str
    pd_type: str | None
    model_name: str
    hardware: str
    tp: int
    num_kv_blocks: int
    kv_capacity_gb: float
    weights_gb: float
    activation_gb: float  # the activation peak of vLLM's profiling run
    non_torch_gb: float  # non-torch and CUDA-graph memory, apart as vLLM's accounting takes it
    profile_path: str
    estimated_profile: bool
    # What of a measured profile was estimated from specs (its MoE expert layers, without moe.csv); "" when none
    # or all of it.
    estimated_part: str = ""
    # KV sizing: rule ("vllm", "llmservingsim", "override", "measured"), capacity in tokens as vLLM reports it
    # (num_gpu_blocks x block_size, the null block included) and how it was obtained.
    kv_rule: str = "vllm"
    kv_tokens: int = 0
    memory_note: str = ""
    # The max_model_len (the measured engine's, else the model's) a request of which the KV cache cannot hold, which
    # vLLM refuses to start with (engine/build.py _max_len_note); 0 where it holds one.
    max_model_len_unheld: int = 0
    kv_predicted_tokens: int = 0  # the config's prediction, when a measured capacity replaced it
    kv_cache_dtype: str = "bfloat16"  # what the KV cache stores its values in
    board_note: str = ""  # which board of its family the instance ran as, where its profile's device told it


@dataclass
class SimulationResult:
    requests: list[Request]
    instances: list[Instance]
    infos: list[InstanceInfo]
    links: dict[str, Link]
    samples: list[Sample]
    sim_end_s: float
    link_samples: list[LinkSample] = field(default_factory=list)
    ttft_mode: str = "prefill"
    timeline_note: str = ""  # where the sample interval grew (engine/monitor.py)
    notes: list[str] = field(default_factory=list)  # the cluster's own (engine/cluster.py), not an instance's
