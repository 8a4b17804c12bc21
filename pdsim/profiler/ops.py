"""The ops of a Llama-style decoder, as the profiler times them and the self-check chains them.

Every op is a plain function of tensors so that the per-op timings (`run.py`) and the full
forward pass of the self-check (`model.py`) execute exactly the same code; the elementwise ones
are called through `elementwise.py`, which may compile them as vLLM does. Shapes are those of
ONE tensor-parallel shard (vLLM's column/row split: heads, KV heads, intermediate and vocab
divided by tp); the weights are random, nothing is downloaded.

Imported only by the profiler: it needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pdsim.errors import PdsimError
from pdsim.models import ModelSpec
from pdsim.perf.profile import PER_LAYER_OPS, PER_SEQUENCE_OPS, PER_STEP_OPS  # noqa: F401 - re-exported

RMS_EPS = 1e-6
ROPE_THETA = 10000.0

# The op vocabulary is the profile format's (pdsim/perf/profile_format.py); layer_overhead is derived
# from whole-layer timings, not timed as an op of its own.
LAYER_OPS = tuple(op for op in PER_LAYER_OPS if op != "layer_overhead")
STEP_OPS = PER_STEP_OPS

_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def torch_dtype(dtype: str) -> torch.dtype:
    from pdsim.errors import PdsimError

    try:
        return _TORCH_DTYPES[dtype]
    except KeyError:
        raise PdsimError(
            f"the profiler cannot run dtype {dtype!r}; it runs: {', '.join(_TORCH_DTYPES)}"
        ) from None


@dataclass(frozen=True)
class ShardShapes:
    """Tensor shapes of one TP shard."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab_shard: int
    vocab: int  # the sampler sees the gathered, full-vocab logits
    qk_norm: bool
    max_positions: int
    # False for a MoE model without dense MLP layers: the predictor reads no dense MLP for it, and the layer
    # forward timed for layer_overhead must be the layer the profile composes (the experts are not profiled)
    dense_mlp: bool = True

    @classmethod
    def of(cls, model: ModelSpec, tp: int) -> ShardShapes:
        model.check_tp(tp)
        if getattr(model, "mla", None) is not None:  # the profiler's ops are GQA attention
            raise PdsimError(f"{model.name}: MLA attention is not profiled; pdsim estimates it from specs")
        if getattr(model, "sliding_window", 0):  # the profiler's attention has no window, sinks or biases
            raise PdsimError(f"{model.name}: sliding-window attention is not profiled; pdsim estimates it from specs")
        return cls(
            hidden=model.hidden_size,
            heads=model.heads_per_shard(tp),
            kv_heads=model.kv_heads_per_shard(tp),
            head_dim=model.head_dim,
            intermediate=model.intermediate_per_shard(tp),
            vocab_shard=model.vocab_per_shard(tp),
            vocab=model.vocab_size,
            qk_norm=model.has_qk_norm,
            max_positions=model.max_position_embeddings,
            dense_mlp=model.dense_mlp_layers > 0,
        )

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim


def _rand(shape: tuple[int, ...], dtype: torch.dtype, device: str, scale: float = 0.02) -> torch.Tensor:
    # Small values keep bf16 activations finite through many random layers (NaN/Inf could
    # take slower paths in some kernels); the values themselves are irrelevant to timing.
    return torch.randn(shape, dtype=torch.float32, device=device).mul_(scale).to(dtype)


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [q + 2 kv, hidden]
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: torch.Tensor  # [hidden, q]
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor  # [hidden, intermediate]

    @classmethod
    def random(cls, s: ShardShapes, dtype: torch.dtype, device: str) -> LayerWeights:
        ones = torch.ones(s.hidden, dtype=dtype, device=device)
        head_ones = torch.ones(s.head_dim, dtype=dtype, device=device) if s.qk_norm else None
        return cls(
            input_norm=ones,
            qkv=_rand((s.q_size + 2 * s.kv_size, s.hidden), dtype, device),
            q_norm=head_ones,
            k_norm=head_ones,
            o=_rand((s.hidden, s.q_size), dtype, device),
            post_norm=ones.clone(),
            gate_up=_rand((2 * s.intermediate, s.hidden), dtype, device),
            down=_rand((s.hidden, s.intermediate), dtype, device),
        )


@dataclass
class HeadWeights:
    """Weights used once per step: embedding, final norm, lm_head."""

    embedding: torch.Tensor  # [vocab_shard, hidden]
    final_norm: torch.Tensor
    lm_head: torch.Tensor  # [vocab_shard, hidden]

    @classmethod
    def random(cls, s: ShardShapes, dtype: torch.dtype, device: str) -> HeadWeights:
        embedding = _rand((s.vocab_shard, s.hidden), dtype, device)
        return cls(
            embedding=embedding,
            final_norm=torch.ones(s.hidden, dtype=dtype, device=device),
            lm_head=_rand((s.vocab_shard, s.hidden), dtype, device),
        )


class Rope:
    """cos/sin tables for rotary embeddings (neox style, as Llama/Qwen in vLLM)."""

    def __init__(self, s: ShardShapes, dtype: torch.dtype, device: str, max_positions: int) -> None:
        half = s.head_dim // 2
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(half, dtype=torch.float32, device=device) / half)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32, device=device), inv_freq)
        self.cos = angles.cos().to(dtype)
        self.sin = angles.sin().to(dtype)


# ---------------------------------------------------------------------------------------------
# The ops. x is [tokens, hidden]; q is [tokens, heads, head_dim]; k, v [tokens, kv_heads, head_dim].


def embedding(ids: torch.Tensor, w: HeadWeights) -> torch.Tensor:
    return F.embedding(ids, w.embedding)


def layernorm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, RMS_EPS)


def qkv_proj(x: torch.Tensor, w: LayerWeights) -> torch.Tensor:
    return F.linear(x, w.qkv)


def split_qkv(qkv: torch.Tensor, s: ShardShapes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views, no copy: q [T, H, D], k and v [T, KVH, D]."""
    q, k, v = qkv.split([s.q_size, s.kv_size, s.kv_size], dim=-1)
    t = qkv.shape[0]
    return (
        q.view(t, s.heads, s.head_dim),
        k.view(t, s.kv_heads, s.head_dim),
        v.view(t, s.kv_heads, s.head_dim),
    )


def qk_rms_norm(q: torch.Tensor, k: torch.Tensor, q_norm: torch.Tensor, k_norm: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3: RMSNorm over head_dim of every query and key head."""
    d = q.shape[-1]
    return F.rms_norm(q, (d,), q_norm, RMS_EPS), F.rms_norm(k, (d,), k_norm, RMS_EPS)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox rotary embedding of q and k (vLLM's RotaryEmbedding.forward_native)."""
    cos = cos_table[positions].unsqueeze(1)  # [T, 1, D/2], broadcast over heads
    sin = sin_table[positions].unsqueeze(1)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def o_proj(attn_out: torch.Tensor, w: LayerWeights) -> torch.Tensor:
    return F.linear(attn_out, w.o)


def gate_up_proj(x: torch.Tensor, w: LayerWeights) -> torch.Tensor:
    return F.linear(x, w.gate_up)


def act_fn(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up (vLLM's SiluAndMul)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def down_proj(x: torch.Tensor, w: LayerWeights) -> torch.Tensor:
    return F.linear(x, w.down)


def residual_add(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return x + residual


def lm_head(x: torch.Tensor, last_token_idx: torch.Tensor, w: HeadWeights) -> torch.Tensor:
    """Logits of the last token of every sequence (vLLM gathers them before the matmul)."""
    return F.linear(x.index_select(0, last_token_idx), w.lm_head)


def sampler(logits: torch.Tensor) -> torch.Tensor:
    """Greedy sampling: softmax in float32 (vLLM computes probabilities/logprobs) then argmax."""
    probs = torch.softmax(logits.float(), dim=-1)
    return probs.argmax(dim=-1)


def full_vocab_logits(s: ShardShapes, sequences: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """What the sampler sees under TP: the shards' logits gathered to the full vocabulary."""
    return _rand((sequences, s.vocab), dtype, device, scale=1.0)
