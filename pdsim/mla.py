"""Multi-head latent attention (MLA) shapes, read from `deepseek_v2` / `deepseek_v3` Hugging Face configs.

MLA (DeepSeek-V2/V3) replaces per-head K and V by one compressed latent per token:

* queries: x -> q_a (hidden x q_lora_rank, then RMSNorm) -> q_b (q_lora_rank x heads x
  (qk_nope + qk_rope)); without q_lora_rank one hidden x heads x qk_head projection.
* keys/values: x -> kv_a (hidden x (kv_lora_rank + qk_rope), RMSNorm on the kv_lora_rank part);
  kv_b (kv_lora_rank x heads x (qk_nope + v_head)) expands the latent to per-head K_nope and V.
* o_proj: heads x v_head -> hidden.

vLLM's DeepseekV2MLAAttention holds q_a and kv_a as ReplicatedLinear (fused_qkv_a_proj) on every
TP rank and shards q_b, kv_b and o_proj by heads. The KV cache stores only the latent
(kv_lora_rank + qk_rope_head_dim values per token and layer), the same on every TP rank: MLA's
cache is replicated across TP ranks, not divided by TP.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path

from pdsim.errors import PdsimError
from pdsim.models import ModelSpec, dtype_bytes


@dataclass(frozen=True)
class MLASpec:
    q_lora_rank: int | None  # None: queries projected directly from hidden
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_per_token(self) -> int:
        """Values one token stores per layer in the KV cache."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def replicated_params(self, hidden: int) -> int:
        """q_a and kv_a with their RMSNorms: held whole on every TP rank."""
        q_a = hidden * self.q_lora_rank + self.q_lora_rank if self.q_lora_rank else 0
        return q_a + hidden * self.latent_per_token + self.kv_lora_rank

    def per_head_params(self, hidden: int) -> int:
        """q_b (or the direct q projection), kv_b and o_proj, per attention head (sharded by TP)."""
        q_in = self.q_lora_rank or hidden
        kv_b = self.kv_lora_rank * (self.qk_nope_head_dim + self.v_head_dim)
        return q_in * self.qk_head_dim + kv_b + self.v_head_dim * hidden


@dataclass(frozen=True)
class MLAModelSpec(ModelSpec):
    """A ModelSpec whose attention is MLA; the MLP/MoE parts are ModelSpec's."""

    mla: MLASpec | None = None

    @property
    def _mla(self) -> MLASpec:
        assert self.mla is not None
        return self.mla

    def check_tp(self, tp: int) -> None:
        if tp < 1:
            raise PdsimError(f"{self.name}: tensor-parallel size must be >= 1, got {tp}")
        if self.num_heads % tp:
            raise PdsimError(f"{self.name}: {self.num_heads} attention heads cannot be split over tp={tp}")

    def q_size(self, tp: int = 1) -> int:
        return self.heads_per_shard(tp) * self._mla.qk_head_dim

    def kv_size(self, tp: int = 1) -> int:
        """Cached values per token and layer: the latent, whole on every TP rank."""
        return self._mla.latent_per_token

    def qkv_out(self, tp: int = 1) -> int:
        """Widths the attention's projections produce for one token (activation peak)."""
        m, heads = self._mla, self.heads_per_shard(tp)
        q_a = m.q_lora_rank or 0
        return q_a + m.latent_per_token + heads * m.qk_head_dim + heads * (m.qk_nope_head_dim + m.v_head_dim)

    def o_in(self, tp: int = 1) -> int:
        return self.heads_per_shard(tp) * self._mla.v_head_dim

    def _params_per_shard(self, tp: int, expert_shards: int | Fraction | None = None) -> int:
        h = self.hidden_size
        attn = self._mla.replicated_params(h) + self.heads_per_shard(tp) * self._mla.per_head_params(h)
        mlp = 3 * h * self.intermediate_per_shard(tp)
        embed = self.vocab_per_shard(tp) * h
        lm_head = 0 if self.tie_word_embeddings else embed
        total = embed + self.num_layers * (attn + 2 * h) + self.dense_mlp_layers * mlp + h + lm_head
        if self.moe is not None:
            shards = tp if expert_shards is None else expert_shards
            total += self.moe.moe_layers * self.moe.non_expert_mlp_params(h, tp)
            total += -(-self.moe.routed_params(h) // shards)
        return total

    def _unquantized_params_per_shard(self, tp: int) -> int:
        """What fp8 leaves in `dtype`: ModelSpec's (embeddings, lm_head, norms, routers) with MLA's
        q_a/kv_a RMSNorms in place of per-head q/k norms."""
        h, m = self.hidden_size, self._mla
        embed = self.vocab_per_shard(tp) * h
        lm_head = 0 if self.tie_word_embeddings else embed
        norms = 2 * h + (m.q_lora_rank or 0) + m.kv_lora_rank
        routers = self.moe.moe_layers * h * self.moe.num_experts if self.moe is not None else 0
        return embed + lm_head + self.num_layers * norms + h + routers

    def _linear_shapes(self, tp: int, expert_shards: int | Fraction | None = None,
                       routed: bool = True) -> list[tuple[float, int, int]]:
        """MLA's linear layers (fused q_a/kv_a, q_b, kv_b, o_proj) and ModelSpec's MLP/expert ones."""
        h, m, heads, n = self.hidden_size, self._mla, self.heads_per_shard(tp), self.num_layers
        q_lora = m.q_lora_rank or 0
        attn = [(n, q_lora + m.latent_per_token, h), (n, heads * m.qk_head_dim, q_lora or h),
                (n, heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank), (n, h, heads * m.v_head_dim)]
        return attn + super()._linear_shapes(tp, expert_shards, routed)[2:]

    def weight_bytes(self, dtype: str, tp: int = 1, expert_shards: int | Fraction | None = None,
                     quantization: str | None = None) -> int:
        """ModelSpec's, plus, for fp8 weights, the `dtype` copy of kv_b that vLLM's MLA keeps beside the fp8
        one: its decode matmuls have no fp8 kernel, so `process_weights_after_loading` dequantizes kv_b_proj
        and keeps W_UK_T and W_UV as views of the copy (vLLM 0.19, layers/attention/mla_attention.py)."""
        total = super().weight_bytes(dtype, tp, expert_shards, quantization)
        if quantization is None:
            return total
        m = self._mla
        kv_b = self.heads_per_shard(tp) * m.kv_lora_rank * (m.qk_nope_head_dim + m.v_head_dim)
        return total + self.num_layers * kv_b * dtype_bytes(dtype)

    def kv_bytes_per_token(self, dtype: str, tp: int = 1) -> int:
        """Latent-cache bytes one token occupies on one GPU (all layers; not divided by TP)."""
        return self.num_layers * self._mla.latent_per_token * dtype_bytes(dtype)


def mla_from_hf(path: Path, raw: dict) -> MLASpec:
    def positive(key: str, optional: bool = False) -> int | None:
        value = raw.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise PdsimError(f"{path}: field {key!r}: expected a positive integer, got {value!r}")
        return value

    return MLASpec(
        q_lora_rank=positive("q_lora_rank", optional=True),
        kv_lora_rank=positive("kv_lora_rank"),
        qk_nope_head_dim=positive("qk_nope_head_dim"),
        qk_rope_head_dim=positive("qk_rope_head_dim"),
        v_head_dim=positive("v_head_dim"),
    )


def with_mla(spec: ModelSpec, path: Path, raw: dict) -> MLAModelSpec:
    """`spec` (read by models.py) with its attention replaced by the config's MLA shapes."""
    mla = mla_from_hf(path, raw)
    base = {f.name: getattr(spec, f.name) for f in fields(ModelSpec)}
    base["head_dim"] = mla.qk_head_dim
    return MLAModelSpec(**base, mla=mla)
