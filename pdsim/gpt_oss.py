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
  config's `modules_to_not_convert`). vLLM pads the experts' dims to its MXFP4 kernel's alignment
  (`on_gpu`, by the GPU's compute capability): Hopper's Triton kernel the per-GPU intermediate size to
  64 (nothing at TP1: 2880, but 1440 -> 1472 at TP2), Blackwell's FlashInfer TRT-LLM kernel both sizes
  to 256, Marlin (the other CUDA GPUs) the intermediate size to 128 and the hidden size to 256.
* KV cache (vLLM's hybrid allocator, `_get_kv_cache_config_uniform_page_size`): the sliding and
  full layers form two KV-cache groups of equal size sharing one block pool; a pool block holds
  `block_size` tokens of one group's layers, so the pool has avail // (page x layers per group)
  blocks and vLLM logs num_blocks // 2 x block_size tokens. A request keeps one full-group block
  per block_size tokens and, in the sliding group, only the blocks that reach into its window
  (SlidingWindowManager frees the rest): at most cdiv(window - 1, block_size) + 1.
  pdsim counts a block as one full-group block (`kv_bytes_per_token`: the full layers), and a running
  request holds that window maximum of the pool beside its own blocks (BlockManager.window_blocks), from
  admission to its end.
* An engine with a KV connector (a P/D instance) has no hybrid allocator: vLLM 0.19 turns it off
  when `--kv-transfer-config` is set and the user has not asked for it (`config/vllm.py`), and
  `unify_hybrid_kv_cache_specs` then makes the sliding layers full-attention ones for the cache.
  Every layer keeps every token's KV and the connector moves all of them (`with_connector_kv`);
  attention still reads only the window.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from fractions import Fraction
from pathlib import Path

from pdsim.errors import PdsimError
from pdsim.hardware import get_hardware
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
    hybrid_kv: bool = True  # vLLM's hybrid KV-cache allocator (off in an engine with a KV connector)
    # (hidden, intermediate per GPU, the expert TP it is per) as a GPU's MXFP4 kernel pads them; None: unpadded
    padded_expert_dims: tuple[int, int, int] | None = None

    @property
    def full_layers(self) -> int:
        return self.num_layers - self.sliding_layers

    def sliding_blocks_per_request(self, block_size: int) -> int:
        """Most sliding-group blocks a running request holds (the blocks reaching into its window)."""
        return -(-(self.sliding_window - 1) // block_size) + 1

    def _bias_and_sink_params(self, tp: int, expert_shards: int | Fraction | None) -> int:
        h, moe = self.hidden_size, self.moe
        attn = self.qkv_out(tp) + h + self.heads_per_shard(tp)  # qkv bias, o_proj bias, sinks
        shards = tp if expert_shards is None else expert_shards
        experts = -(-moe.moe_layers * moe.num_experts * (2 * moe.expert_intermediate + h) // shards)
        return self.num_layers * attn + moe.moe_layers * moe.num_experts + experts  # + router bias

    def _params_per_shard(self, tp: int, expert_shards: int | Fraction | None = None) -> int:
        return super()._params_per_shard(tp, expert_shards) + self._bias_and_sink_params(tp, expert_shards)

    def _expert_params_per_shard(self, tp: int, expert_shards: int | Fraction | None) -> int:
        shards = tp if expert_shards is None else expert_shards
        return -(-self.moe.routed_params(self.hidden_size) // shards)

    def _stored_expert_params(self, tp: int, expert_shards: int | Fraction | None) -> int:
        """The experts' matrix entries one GPU stores, with the kernel's padding where `on_gpu` set it."""
        if self.padded_expert_dims is None:
            return self._expert_params_per_shard(tp, expert_shards)
        hidden, intermediate, expert_tp = self.padded_expert_dims
        local_experts = self.moe.num_experts * expert_tp // (tp if expert_shards is None else expert_shards)
        return self.moe.moe_layers * local_experts * 3 * hidden * intermediate

    def weight_bytes(self, dtype: str, tp: int = 1, expert_shards: int | Fraction | None = None,
                     quantization: str | None = None) -> int:
        """Bytes one GPU holds: the experts' matrices at 4.25 bits (MXFP4 checkpoints), all else in dtype."""
        if quantization is not None:
            raise PdsimError(f"{self.name}: quantization {quantization!r}: gpt-oss expert weights are the "
                             "checkpoint's MXFP4 and the rest stays in dtype; leave quantization null")
        total = self._params_per_shard(tp, expert_shards)
        if self.expert_weight_bits is None:
            return total * dtype_bytes(dtype)
        experts = self._expert_params_per_shard(tp, expert_shards)
        stored = self._stored_expert_params(tp, expert_shards)
        return (total - experts) * dtype_bytes(dtype) + -(-int(stored * self.expert_weight_bits) // 8)

    def on_gpu(self, hardware: str, expert_tp: int) -> GptOssModelSpec:
        """MXFP4 experts padded as vLLM 0.19 pads them for the kernel it picks on that GPU
        (`fused_moe/oracle/mxfp4.py`: select_mxfp4_moe_backend, mxfp4_round_up_hidden_size_and_intermediate_size)."""
        spec = get_hardware(hardware)
        if self.expert_weight_bits is None or spec is None:
            return self
        hidden_align, intermediate_align = mxfp4_alignment(spec.compute_capability)
        intermediate = self.moe.expert_intermediate // expert_tp
        return replace(self, padded_expert_dims=(_round_up(self.hidden_size, hidden_align),
                                                 _round_up(intermediate, intermediate_align), expert_tp))

    def kv_bytes_per_token(self, dtype: str, tp: int = 1) -> int:
        """KV bytes a token adds on one TP shard: in the full-attention layers with the hybrid allocator
        (the sliding layers' window is held per running request: module docstring), else in every layer."""
        layers = self.full_layers if self.hybrid_kv else self.num_layers
        return 2 * layers * self.kv_size(tp) * dtype_bytes(dtype)

    def with_connector_kv(self) -> GptOssModelSpec:
        return replace(self, hybrid_kv=False)


def mxfp4_alignment(compute_capability: str) -> tuple[int, int]:
    """(hidden, intermediate) multiples vLLM 0.19 pads MXFP4 experts to on a GPU of this compute capability:
    its first supported backend there is FlashInfer TRT-LLM on 10.x (256, 256), the Triton kernel on 9.x
    (intermediate 64), else Marlin (256, 128)."""
    major = int(compute_capability.split(".")[0])
    return {10: (256, 256), 9: (1, 64)}.get(major, (256, 128))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


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
