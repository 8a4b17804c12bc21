"""Pipeline parallelism (pp_size > 1): the layer split, each stage's memory and each stage's step time.

An instance with pp_size P spans tp_size x P GPUs: P stages of tp_size GPUs each, run as vLLM runs
them (docs/pipeline.md):

- Layers: vLLM's `get_pp_indices` (vllm/distributed/utils.py, read in the 0.19.0 wheel):
  num_hidden_layers // P per stage, and the remainder, one layer each, to the stages just before
  the last (`partitions[-i] += 1 for i in 2..remainder+1`): the last stage holds the final norm
  and the LM head, so it gets none of it.
- Weights: each stage holds its layers; the first the embedding, the last the final norm and the
  LM head (vLLM's LlamaModel builds `embed_tokens` on the first rank, or on the last when the
  word embeddings are tied, since the LM head is that matrix; PPMissingLayer elsewhere).
- KV cache: a stage caches its own layers only, so its bytes per block are layers_in_stage /
  num_layers of the whole model's. Each stage's GPUs size their cache by vLLM's accounting
  (pdsim/perf/memory.py) and the engine takes the smallest (vLLM's executor takes the minimum
  num_gpu_blocks over all workers).
- Time: a stage's step is the predictor's step for its layers (a StepTimePredictor of the stage's
  layers), less the embedding on every stage but the first and less the final norm, LM head and
  sampler on every stage but the last; the engine's per-step CPU overhead is charged once, on the
  first. Between two stages the activations move: vLLM sends IntermediateTensors
  {hidden_states, residual} (2 x tokens x hidden x dtype bytes), each TP rank to its peer in the
  next stage. pdsim prices that as latency + bytes / bandwidth over the node's GPU-to-GPU link
  (estimated: no measurement of a PP send is behind it).

MoE layers are taken to be the model's last `moe_layers` layers (exact for the bundled models:
Qwen3-MoE and Mixtral have MoE in every layer, DeepSeek-V3 after its first_k_dense_replace).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

from pdsim.config import InstanceConfig
from pdsim.errors import ConfigError
from pdsim.models import ModelSpec, dtype_bytes
from pdsim.perf.memory import KVBudget, kv_budget


def pp_partition(num_layers: int, pp_size: int) -> list[int]:
    """Layers per stage, as vLLM's get_pp_indices splits them (module docstring)."""
    if pp_size < 1 or pp_size > num_layers:
        raise ConfigError(f"pp_size {pp_size}: must be between 1 and the model's {num_layers} layers")
    per_stage, remainder = divmod(num_layers, pp_size)
    parts = [per_stage] * pp_size
    for i in range(2, remainder + 2):
        parts[-i] += 1
    return parts


@dataclass(frozen=True)
class Stage:
    index: int
    start_layer: int
    end_layer: int
    first: bool
    last: bool

    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer


def pp_stages(num_layers: int, pp_size: int) -> list[Stage]:
    stages, start = [], 0
    for i, n in enumerate(pp_partition(num_layers, pp_size)):
        stages.append(Stage(i, start, start + n, i == 0, i == pp_size - 1))
        start += n
    return stages


def stage_model(model: ModelSpec, stage: Stage) -> ModelSpec:
    """The model restricted to the stage's layers (embedding and LM head still counted whole;
    stage_weight_bytes takes them off where the stage does not hold them)."""
    moe = model.moe
    if moe is not None:
        first_moe = model.num_layers - moe.moe_layers
        moe_here = max(0, stage.end_layer - max(stage.start_layer, first_moe))
        moe = dataclasses.replace(moe, moe_layers=moe_here)
    return dataclasses.replace(model, num_layers=stage.num_layers, moe=moe)


# vLLM's models of these architectures build the embedding, the final norm and the LM head on every pipeline stage
# (model_executor/models/{qwen3_moe,qwen2_moe,mixtral,phimoe,gpt_oss}.py, 0.11 to 0.19, and olmoe.py, read in 0.19:
# no PPMissingLayer), where the others (Llama, Qwen2/3, DeepSeek) keep them to the first and last.
ENDS_ON_EVERY_STAGE = frozenset({"qwen3_moe", "qwen2_moe", "mixtral", "phimoe", "gpt_oss", "olmoe"})


def stage_weight_bytes(model: ModelSpec, stage: Stage, dtype: str, tp: int, expert_shards: int | Fraction | None,
                       quantization: str | None) -> int:
    """Weight bytes one GPU of `stage` holds."""
    part = stage_model(model, stage)
    with_ends = part.weight_bytes(dtype, tp, expert_shards, quantization)
    if model.architecture in ENDS_ON_EVERY_STAGE:
        return with_ends
    # The same model without layers: embedding, final norm and (untied) LM head, kept in dtype.
    ends_model = dataclasses.replace(part, num_layers=0,
                                     moe=dataclasses.replace(part.moe, moe_layers=0) if part.moe else None)
    ends = ends_model.weight_bytes(dtype, tp, expert_shards, quantization)
    matrix = model.vocab_per_shard(tp) * model.hidden_size * dtype_bytes(dtype)  # embedding or LM head
    norm = model.hidden_size * dtype_bytes(dtype)
    held = with_ends - ends
    if stage.first or (stage.last and model.tie_word_embeddings):
        held += matrix
    if stage.last:
        held += norm + (0 if model.tie_word_embeddings else matrix)
    return held


class _StageSizes:
    """What kv_budget reads from a model (weight and KV bytes per GPU), for one stage's GPUs."""

    def __init__(self, model: ModelSpec, stage: Stage) -> None:
        self.model = model
        self.stage = stage
        self.part = stage_model(model, stage)

    def weight_bytes(self, dtype: str, tp: int = 1, expert_shards: int | Fraction | None = None,
                     quantization: str | None = None) -> int:
        return stage_weight_bytes(self.model, self.stage, dtype, tp, expert_shards, quantization)

    def kv_bytes_per_token(self, dtype: str, tp: int = 1) -> int:
        return self.part.kv_bytes_per_token(dtype, tp)

    def rope_cache_bytes(self, dtype: str) -> int:
        return self.model.rope_cache_bytes(dtype)  # each stage's attention layers build their own


@dataclass(frozen=True)
class PipelineBudget:
    budget: KVBudget  # the binding stage's, with the instance's block count
    stage: Stage  # the stage whose KV cache holds the fewest blocks
    kv_bytes_per_token: int  # per GPU of that stage
    per_stage_blocks: tuple[int, ...]


def pipeline_kv_budget(ic: InstanceConfig, model: ModelSpec, activation_bytes: int, forward_bytes: int, where: str,
                       measured_gpu_blocks: int | None = None, expert_shards: int | Fraction = 1,
                       recorded_util: float | None = None) -> PipelineBudget:
    """Each stage's KV cache by vLLM's accounting (or LLMServingSim's rule) for its weights and
    layers; the engine gets the fewest blocks of any stage. The last stage reserves the profile run's whole
    peak (`activation_bytes`); the others `forward_bytes`, its forward's alone, as only the last stage runs the
    dummy sampler (v1/worker/gpu_model_runner.py profile_run, `is_last_rank`)."""
    stages = pp_stages(model.num_layers, ic.pp_size)
    reserve = [activation_bytes if s.last else forward_bytes for s in stages]
    budgets = [kv_budget(ic, _StageSizes(model, s), r, f"{where} (pipeline stage {s.index})",  # type: ignore[arg-type]
                         None, expert_shards, recorded_util) for s, r in zip(stages, reserve, strict=True)]
    i = min(range(len(stages)), key=lambda k: budgets[k].num_gpu_blocks)
    blocks = tuple(b.num_gpu_blocks for b in budgets)
    note = (f"pipeline stage {i} of {len(stages)} binds ({stages[i].num_layers} layers; blocks per stage "
            f"{', '.join(f'{b:,}' for b in blocks)}): {budgets[i].note}")
    binding = dataclasses.replace(budgets[i], note=note)
    if measured_gpu_blocks is not None:
        binding = dataclasses.replace(binding, rule="measured", num_gpu_blocks=measured_gpu_blocks,
                                      note=f"the measured engine's {measured_gpu_blocks:,} blocks, instead of {note}")
    per_token = _StageSizes(model, stages[i]).kv_bytes_per_token(ic.kv_dtype, ic.tp_size)
    return PipelineBudget(binding, stages[i], per_token, blocks)


def max_stage_weight_bytes(model: ModelSpec, pp_size: int, dtype: str, tp: int, expert_shards: int | Fraction | None,
                           quantization: str | None) -> int:
    """The most weight bytes any GPU of the pipeline holds (for the config's does-it-fit check)."""
    return max(stage_weight_bytes(model, s, dtype, tp, expert_shards, quantization)
               for s in pp_stages(model.num_layers, pp_size))
