"""Building a pipeline-parallel instance's step-time model: one predictor per stage and the link
its activations cross (pdsim/perf/pipeline.py, pdsim/perf/pipeline_time.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pdsim.config import ClusterConfig, InstanceConfig
from pdsim.hardware import HardwareSpec
from pdsim.models import ModelSpec
from pdsim.perf.pipeline import pp_stages, stage_model
from pdsim.perf.pipeline_time import AsyncPipelinePredictor, PipelinePredictor, activation_send
from pdsim.perf.predictor import StepTimePredictor
from pdsim.perf.profile import Profile


def pp_link(cfg: ClusterConfig, node_index: int) -> tuple[float, float, str] | None:
    """(GB/s, ns, where from) of the link between two stages of an instance (all on one node): the
    node's intra_node_bw fabric; else the PP entry of per-dimension link_bw / link_latency lists
    (LLMServingSim's topology is [tp, pp, dp], innermost first; a one-value list's value), each way; else None (the
    GPU's own link)."""
    node = cfg.nodes[node_index]
    if node.intra_node_bw is not None:
        return node.intra_node_bw, node.intra_node_latency, "the node's intra_node_bw fabric"
    if (link := cfg.gpu_link(1)) is not None:
        return (*link, "the PP dimension of the config's link_bw/link_latency lists (both directions together: "
                       "ClusterConfig.gpu_link)")
    return None


def pipeline_predictor(full: StepTimePredictor, step_times: Callable[..., StepTimePredictor], profile: Profile,
                       model: ModelSpec, ic: InstanceConfig, hardware: HardwareSpec | None,
                       knobs: dict[str, Any], link: tuple[float, float, str] | None) -> PipelinePredictor:
    """Stage predictors for each stage's layers; the engine's per-step CPU overhead only on the first."""
    stages = pp_stages(model.num_layers, ic.pp_size)
    no_overhead = {**knobs, "step_overhead_us": 0.0, "step_overhead_per_seq_us": 0.0}
    predictors = [step_times(profile, stage_model(model, s), ic.tp_size, hardware,
                             **(knobs if s.first else no_overhead)) for s in stages]
    kind = AsyncPipelinePredictor if ic.async_scheduling else PipelinePredictor
    return kind(full, predictors, stages, activation_send(model, profile.meta.dtype, hardware, link))
