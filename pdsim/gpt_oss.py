"""gpt-oss (`gpt_oss` Hugging Face configs): alternating sliding-window / full attention, attention
sinks, biased projections, and MXFP4 expert weights.

* Layers: `layer_types` lists "sliding_attention" (a window of `sliding_window` tokens) or
  "full_attention" per layer (HF's default when absent: even layers sliding). gpt-oss-20b/120b
  alternate them, 12 + 12 / 18 + 18.
* Attention: q/k/v and o projections with biases, one learned sink logit per head (`sinks`, a
  parameter per head; its softmax cost is negligible and not priced).
* MoE: `num_local_experts` experts of `intermediate_size` with `num_experts_per_tok` per token
  (pdsim/moe.py), gate_up and down biases per expert, and a router with a bias.
* Weights: with `quantization_config.quant_method == "mxfp4"` the routed experts' weight matrices
  are MXFP4 (4-bit values plus one 8-bit E8M0 scale per 32 values: 4.25 bits per parameter);
  attention, router, embeddings, lm_head, norms, sinks and every bias stay in `dtype` (the
  config's `modules_to_not_convert`). vLLM pads expert dims for some MXFP4 kernels; 2880 is a
  multiple of 64 (the Hopper Triton backend's alignment), so none is counted.
* KV cache (vLLM's hybrid allocator, `_get_kv_cache_config_uniform_page_size`): the sliding and
  full layers form two KV-cache groups of equal size sharing one block pool; a pool block holds
  `block_size` tokens of one group's layers, so the pool has avail // (page x layers per group)
  blocks and vLLM logs num_blocks // 2 x block_size tokens. A request keeps one full-group block
  per block_size tokens and, in the sliding group, only the blocks that reach into its window
  (SlidingWindowManager frees the rest): at most cdiv(window - 1, block_size) + 1.
  pdsim counts a block as one full-group block (`kv_bytes_per_token`: the full layers) and sets
  aside max_num_seqs x that window maximum for the sliding group (pdsim/perf/memory.py), the most
  the running requests can hold there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from pdsim.errors import PdsimError
from pdsim.models import ModelSpec, dtype_bytes

LAYER_TYPES = ("sliding_attention", "full_attention")
MXFP4_BITS_PER_PARAM = 4.25  # 4-bit E2M1 values + one 8-bit E8M0 scale per 32 values
KV_GROUPS = 2  # vLLM's hybrid allocator: one group of sliding layers, one of full layers


@dataclass(frozen=True)
class GptOssModelSpec(ModelSpec):
    """A ModelSpec with gpt-oss's sliding-window layers, biases, sinks and MXFP4 experts."""

    sliding_window: int = 0
    sliding_layers: int = 0
    expert_weight_bits: float | None = None  # None: experts in the instance dtype

    @property
    def full_layers(self) -> int:
        return self.num_layers - self.sliding_layers

    def sliding_blocks_per_request(self, block_size: int) -> int:
        """Most sliding-group blocks a running request holds (the blocks reaching into its window)."""
        return -(-(self.sliding_window - 1) // block_size) + 1

    def _bias_and_sink_params(self, tp: int, expert_shards: int | None) -> int:
        h, moe = self.hidden_size, self.moe
        attn = self.qkv_out(tp) + h + self.heads_per_shard(tp)  # qkv bias, o_proj bias, sinks
        shards = tp if expert_shards is None else expert_shards
        experts = -(-moe.moe_layers * moe.num_experts * (2 * moe.expert_intermediate + h) // shards)
        return self.num_layers * attn + moe.moe_layers * moe.num_experts + experts  # + router bias

    def _params_per_shard(self, tp: int, expert_shards: int | None = None) -> int:
        return super()._params_per_shard(tp, expert_shards) + self._bias_and_sink_params(tp, expert_shards)

    def _expert_params_per_shard(self, tp: int, expert_shards: int | None) -> int:
        shards = tp if expert_shards is None else expert_shards
        return -(-self.moe.routed_params(self.hidden_size) // shards)

    def weight_bytes(self, dtype: str, tp: int = 1, expert_shards: int | None = None,
                     quantization: str | None = None) -> int:
        """Bytes one GPU holds: the experts' matrices at 4.25 bits (MXFP4 checkpoints), all else in dtype."""
        if quantization is not None:
            raise PdsimError(f"{self.name}: quantization {quantization!r}: gpt-oss expert weights are the "
                             "checkpoint's MXFP4 and the rest stays in dtype; leave quantization null")
        total = self._params_per_shard(tp, expert_shards)
        if self.expert_weight_bits is None:
            return total * dtype_bytes(dtype)
        experts = self._expert_params_per_shard(tp, expert_shards)
        return (total - experts) * dtype_bytes(dtype) + -(-int(experts * self.expert_weight_bits) // 8)

    def kv_bytes_per_token(self, dtype: str, tp: int = 1) -> int:
        """KV bytes a token adds on one TP shard in the full-attention layers (the sliding layers'
        window is set aside per request: module docstring)."""
        return 2 * self.full_layers * self.kv_size(tp) * dtype_bytes(dtype)


def _layer_types(path: Path, raw: dict, num_layers: int) -> list[str]:
    types = raw.get("layer_types")
    if types is None:  # transformers' GptOssConfig default
        return [LAYER_TYPES[i % 2] for i in range(num_layers)]
    if not isinstance(types, list) or len(types) != num_layers or any(t not in LAYER_TYPES for t in types):
        raise PdsimError(f"{path}: field 'layer_types': expected {num_layers} entries, each one of "
                         f"{', '.join(LAYER_TYPES)}, got {types!r}")
    return types


def with_gpt_oss(spec: ModelSpec, path: Path, raw: dict) -> GptOssModelSpec:
    """`spec` (read by models.py) with gpt-oss's layer types, window and expert weight format."""
    types = _layer_types(path, raw, spec.num_layers)
    sliding = types.count("sliding_attention")
    if 2 * sliding != spec.num_layers:
        # vLLM groups unequal layer counts differently; only gpt-oss's equal split is modelled.
        raise PdsimError(f"{path}: field 'layer_types': {sliding} sliding and {spec.num_layers - sliding} full "
                         "attention layers; only equal numbers (as gpt-oss has) are modelled")
    window = raw.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise PdsimError(f"{path}: field 'sliding_window': expected a positive integer, got {window!r}")
    quant = raw.get("quantization_config")
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    if quant is not None and method != "mxfp4":
        raise PdsimError(f"{path}: field 'quantization_config.quant_method': only 'mxfp4' is modelled, got {method!r}")
    base = {f.name: getattr(spec, f.name) for f in fields(ModelSpec)}
    return GptOssModelSpec(**base, sliding_window=window, sliding_layers=sliding,
                           expert_weight_bits=MXFP4_BITS_PER_PARAM if method == "mxfp4" else None)
