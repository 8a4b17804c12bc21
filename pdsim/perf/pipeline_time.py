"""Step times of a pipeline-parallel instance (pp_size > 1): per stage, and the activation sends
between stages. The layer split and each stage's memory are in pdsim/perf/pipeline.py; the module
docstring there says what vLLM does and what is estimated (docs/pipeline.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pdsim.errors import ConfigError
from pdsim.hardware import HardwareSpec
from pdsim.models import ModelSpec, dtype_bytes
from pdsim.perf.moe_time import MoELayerModel
from pdsim.perf.pipeline import Stage
from pdsim.perf.predictor import StepTimePredictor


@dataclass(frozen=True)
class ActivationSend:
    """Price of one stage-to-stage send of a step's activations (estimated)."""

    bw_gbps: float
    latency_ns: float
    bytes_per_token: int
    source: str

    def seconds(self, tokens: int) -> float:
        return self.latency_ns * 1e-9 + tokens * self.bytes_per_token / (self.bw_gbps * 1e9)


def activation_send(model: ModelSpec, dtype: str, hardware: HardwareSpec | None, link: tuple[float, float, str] | None
                    ) -> ActivationSend:
    """vLLM's IntermediateTensors {hidden_states, residual} per token, over `link` (GB/s, ns, where
    from) or else the GPU's own intra-node link (NVLink or PCIe, pdsim/hardware.py)."""
    per_token = 2 * model.hidden_size * dtype_bytes(dtype)
    if link is None:
        if hardware is None:
            raise ConfigError(f"{model.name}: pp_size > 1 needs a link to send activations between stages; "
                              "the hardware has no spec and the node gives no intra_node_bw")
        link = (hardware.intra_node_bw_gbps, hardware.intra_node_latency_ns,
                f"{hardware.name}'s {hardware.intra_node_link} link (pdsim/hardware.py)")
    bw, latency, where = link
    return ActivationSend(bw, latency, per_token, f"point-to-point send over {where}, {bw:g} GB/s, {latency:g} ns "
                          "(estimated, not measured)")


class PipelinePredictor:
    """Step times of a pipelined instance: one StepTimePredictor per stage (for its layers), the
    stage-edge corrections and the activation sends. `full` is the whole model's predictor, which
    answers what is not per stage (activation reserve, MoE layer of a DP group, notes)."""

    def __init__(self, full: StepTimePredictor, stages: Sequence[StepTimePredictor], stage_info: Sequence[Stage],
                 send: ActivationSend) -> None:
        self.full = full
        self.stages = list(stages)
        self.stage_info = list(stage_info)
        self.send = send
        self.num_stages = len(self.stages)
        profile = full.profile
        self._embedding = profile.dense["embedding"]
        self._final_norm = profile.dense["final_layernorm"]
        self._lm_head = profile.per_sequence["lm_head"]
        self._sampler = profile.per_sequence["sampler"]
        self.notes = full.notes
        self.notes.append(f"pipeline parallelism: {self.num_stages} stages of "
                          f"{', '.join(str(s.num_layers) for s in self.stage_info)} layers; activations "
                          f"between stages by {send.source}")
        self._cache: dict[tuple, tuple[float, ...]] = {}

    # -- what the rest of pdsim reads from a predictor ---------------------------------------------
    @property
    def estimated(self) -> bool:
        return self.full.estimated or any(s.estimated for s in self.stages)

    @property
    def allreduce_source(self) -> str | None:
        return self.full.allreduce_source

    @property
    def fused_norm_tokens(self) -> int | None:
        return self.stages[0].fused_norm_tokens

    @property
    def moe_layer(self) -> MoELayerModel | None:
        # The whole model's MoE layers: a DP group runs the stages one after another.
        return self.full.moe_layer

    @property
    def profile_path(self) -> str:
        return self.full.profile_path

    def extrapolation_notes(self) -> list[str]:
        return self.full.extrapolation_notes()

    def forward_reserve_bytes(self, max_num_batched_tokens: int, moe_workspace: str = "batch") -> int:
        return self.full.forward_reserve_bytes(max_num_batched_tokens, moe_workspace)

    def activation_reserve_bytes(self, max_num_batched_tokens: int, max_num_seqs: int = 1024,
                                 top_k_top_p: str = "triton", moe_workspace: str = "batch") -> int:
        return self.full.activation_reserve_bytes(max_num_batched_tokens, max_num_seqs, top_k_top_p, moe_workspace)

    # -- times ----------------------------------------------------------------------------------
    def stage_times_s(self, prefill_chunks: Sequence[tuple[int, int]], n_decode: int, kv_decode_sum: int,
                      kv_decode_max: int | None = None, graph_tokens: int | None = None) -> tuple[float, ...]:
        """Seconds each stage computes this step (sends not included); graph_tokens as
        StepTimePredictor.step_time_s's."""
        chunks = tuple(prefill_chunks)
        key = (chunks, n_decode, kv_decode_sum, kv_decode_max, graph_tokens)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        tokens = sum(c for c, _ in chunks) + n_decode
        seqs = len(chunks) + n_decode
        # A stage's predictor priced the final norm only in a step whose norms are not fused into the all-reduces.
        graphed = self.full.graphed_tokens(tokens, seqs, graph_tokens)
        fused = self.fused_norm_tokens is not None and graphed <= self.fused_norm_tokens
        final_norm = 0.0 if fused else self._final_norm(graphed)
        times = []
        for pred, stage in zip(self.stages, self.stage_info):
            us = pred.step_time_s(chunks, n_decode, kv_decode_sum, kv_decode_max, graph_tokens) * 1e6
            if not stage.first:
                us -= self._embedding(graphed)
            if not stage.last:
                us -= final_norm + self._lm_head(seqs) + self._sampler(seqs)
            times.append(max(us, 0.0) * 1e-6)
        result = tuple(times)
        if len(self._cache) > 1_000_000:
            self._cache.clear()
        self._cache[key] = result
        return result

    def send_s(self, tokens: int) -> float:
        return self.send.seconds(tokens)

    def step_time_s(self, prefill_chunks: Sequence[tuple[int, int]], n_decode: int, kv_decode_sum: int,
                    kv_decode_max: int | None = None, graph_tokens: int | None = None) -> float:
        """One step through every stage, one after another, with the sends: what a step takes when
        nothing overlaps it (a single micro-batch; a DP group's lock step)."""
        tokens = sum(c for c, _ in prefill_chunks) + n_decode
        if tokens <= 0:
            return 0.0
        stages = self.stage_times_s(prefill_chunks, n_decode, kv_decode_sum, kv_decode_max, graph_tokens)
        return sum(stages) + (self.num_stages - 1) * self.send_s(tokens)

    def decode_run_s(self, n_decode: int, kv_decode_sum: int, num_steps: int,
                     kv_decode_max: int | None = None) -> np.ndarray:
        return np.array([self.step_time_s((), n_decode, kv_decode_sum + j * n_decode,
                                          None if kv_decode_max is None else kv_decode_max + j)
                         for j in range(num_steps)])

    def dummy_step_s(self, graph_tokens: int | None = None) -> float:
        logits_s = (self._lm_head(1) + self._sampler(1)) * 1e-6
        return self.step_time_s(((1, 0),), 0, 0, graph_tokens=graph_tokens) - logits_s

    def dummy_stage_times_s(self, graph_tokens: int | None = None) -> tuple[float, ...]:
        """An idle DP rank's dummy batch (one token, no logits or sampling) on each stage."""
        times = list(self.stage_times_s(((1, 0),), 0, 0, graph_tokens=graph_tokens))
        times[-1] = max(times[-1] - (self._lm_head(1) + self._sampler(1)) * 1e-6, 0.0)
        return tuple(times)

    @property
    def moe_layers_per_stage(self) -> list[int]:
        return [p.model.moe.moe_layers if p.model.moe is not None else 0 for p in self.stages]


class AsyncPipelinePredictor(PipelinePredictor):
    """Step times of a pipelined instance under vLLM's async scheduling (docs/pipeline.md).

    Every micro-batch then holds every decoding request, and the first stage takes the previous
    micro-batch's sampled tokens as input, broadcast from the last stage (vLLM 0.19's
    gpu_model_runner, _pp_receive_prev_sampled_token_ids_to_input_batch): a step passes every stage
    before the next one starts. Its time is the whole traversal with the sends, plus that broadcast
    (a few bytes per request: priced at the send's latency)."""

    def step_time_s(self, prefill_chunks: Sequence[tuple[int, int]], n_decode: int, kv_decode_sum: int,
                    kv_decode_max: int | None = None, graph_tokens: int | None = None) -> float:
        seconds = super().step_time_s(prefill_chunks, n_decode, kv_decode_sum, kv_decode_max, graph_tokens)
        return seconds + self.send_s(0) if seconds > 0 else 0.0
