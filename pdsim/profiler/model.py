"""A random-weight model built from the profiled ops, and its full forward pass.

The self-check (`check.py`) times this forward pass against the profile's prediction; the
activation-memory measurement (`memory.py`) runs it too. It chains exactly the op functions of
`ops.py` that the profiler times one by one, so any difference between the measured and the
predicted step time comes from composing ops (caches, allocation, dispatch), not from
different kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pdsim.models import ModelSpec
from pdsim.profiler import ops
from pdsim.profiler.attention import KVCache, make_attention
from pdsim.profiler.elementwise import Elementwise, make_elementwise
from pdsim.profiler.ops import HeadWeights, LayerWeights, Rope, ShardShapes

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, KVCache], torch.Tensor]


class RandomModel:
    """`num_layers` random decoder layers of one TP shard of `model`, plus embedding and head."""

    def __init__(
        self,
        model: ModelSpec,
        tp: int,
        dtype: str,
        device: str,
        *,
        max_positions: int,
        num_layers: int | None = None,
        attention_backend: str = "auto",
        elementwise: str = "auto",
    ) -> None:
        self.spec = model
        self.shapes = ShardShapes.of(model, tp)
        self.dtype = ops.torch_dtype(dtype)
        self.device = device
        n = model.num_layers if num_layers is None else num_layers
        self.layers = [LayerWeights.random(self.shapes, self.dtype, device) for _ in range(n)]
        self.head = HeadWeights.random(self.shapes, self.dtype, device)
        self.rope = Rope(self.shapes, self.dtype, device, max_positions)
        self.attention = make_attention(self.shapes, self.dtype, device, attention_backend)
        self.ew = make_elementwise(device, self.dtype, elementwise)


def decoder_layer(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    w: LayerWeights,
    s: ShardShapes,
    positions: torch.Tensor,
    rope: Rope,
    attention: AttentionFn,
    cache: KVCache,
    ew: Elementwise,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pre-norm Llama/Qwen3 decoder layer as vLLM writes it: the residual add of the previous
    sub-layer is done by the next norm (`norm(x, residual)`), so the layer takes and returns the
    sub-layer output and the residual stream apart (residual None: the first layer). Two norms,
    each with its add, per layer: the op sequence dense.csv's counts describe."""
    if residual is None:
        residual, h = x, ew.layernorm(x, w.input_norm)
    else:
        h, residual = ew.add_layernorm(x, residual, w.input_norm)
    q, k, v = ops.split_qkv(ops.qkv_proj(h, w), s)
    if s.qk_norm:
        q, k = ew.qk_norm(q, k, w)
    q, k = ew.rotary_emb(q, k, positions, rope)
    h, residual = ew.add_layernorm(ops.o_proj(attention(q, k, v, cache), w), residual, w.post_norm)
    if not s.dense_mlp:  # a MoE layer: its expert block is not the profiler's (estimated from specs)
        return h, residual
    return ops.down_proj(ew.act_fn(ops.gate_up_proj(h, w)), w), residual


@dataclass
class StepInputs:
    """Everything one engine step's forward needs, allocated before timing starts."""

    ids: torch.Tensor
    positions: torch.Tensor
    last_token_idx: torch.Tensor
    caches: list[KVCache]
    attention: AttentionFn


def prefill_inputs(m: RandomModel, chunk_tokens: int, kv_prefix_tokens: int = 0) -> StepInputs:
    """One request prefilling `chunk_tokens` new tokens after `kv_prefix_tokens` cached ones."""
    dev = m.device
    return StepInputs(
        ids=torch.randint(0, m.shapes.vocab_shard, (chunk_tokens,), device=dev),
        positions=torch.arange(kv_prefix_tokens, kv_prefix_tokens + chunk_tokens, device=dev),
        last_token_idx=torch.tensor([chunk_tokens - 1], device=dev),
        caches=[m.attention.new_cache(1, kv_prefix_tokens, chunk_tokens) for _ in m.layers],
        attention=m.attention.prefill,
    )


def decode_inputs(m: RandomModel, batch_size: int, kv_tokens: int) -> StepInputs:
    """`batch_size` requests decoding one token each, with `kv_tokens` cached per request."""
    dev = m.device
    return StepInputs(
        ids=torch.randint(0, m.shapes.vocab_shard, (batch_size,), device=dev),
        positions=torch.full((batch_size,), kv_tokens, device=dev),
        last_token_idx=torch.arange(batch_size, device=dev),
        caches=[m.attention.new_cache(batch_size, kv_tokens, 1) for _ in m.layers],
        attention=m.attention.decode,
    )


def uneven_decode_inputs(m: RandomModel, batch_size: int, kv_short: int, kv_long: int) -> StepInputs:
    """`batch_size` requests decoding one token each: one with `kv_long` cached, the others `kv_short`."""
    dev = m.device
    positions = torch.full((batch_size,), kv_short, device=dev)
    positions[0] = kv_long
    return StepInputs(
        ids=torch.randint(0, m.shapes.vocab_shard, (batch_size,), device=dev),
        positions=positions,
        last_token_idx=torch.arange(batch_size, device=dev),
        caches=[m.attention.uneven_cache(batch_size, kv_short, kv_long) for _ in m.layers],
        attention=m.attention.decode_uneven,
    )


@torch.inference_mode()
def forward(m: RandomModel, step: StepInputs) -> torch.Tensor:
    """Token ids sampled for every sequence of the step."""
    x, residual = ops.embedding(step.ids, m.head), None
    for w, cache in zip(m.layers, step.caches, strict=True):
        x, residual = decoder_layer(x, residual, w, m.shapes, step.positions, m.rope, step.attention, cache, m.ew)
    x, _ = m.ew.add_layernorm(x, residual, m.head.final_norm)
    return ops.sampler(ops.lm_head(x, step.last_token_idx, m.head))
