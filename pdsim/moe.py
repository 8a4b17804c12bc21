"""Mixture-of-experts layer shapes, read from Hugging Face configs (`qwen3_moe`, `qwen2_moe`, `mixtral`,
`deepseek_v2`, `deepseek_v3`, `gpt_oss`, `phimoe`, `olmoe`).

A MoE decoder layer replaces the dense MLP by a router gate (hidden x num_experts, replicated on
every GPU), `num_experts` routed experts of which each token uses `top_k`, and optionally shared
experts every token uses. Weights count every expert (split over the GPUs that hold them); time
counts the experts a step's tokens actually activate.

Expected distinct experts. Under uniform top-k routing each token picks a given expert with
probability k/E (k distinct experts of E), independently of the other tokens, so T tokens leave
it unused with probability (1 - k/E)^T and activate on average

    A(T) = E * (1 - (1 - k/E)^T)

distinct experts (the occupancy expectation; exact for independent uniform top-k choices, an
upper bound for real, skewed routers, which concentrate tokens on fewer experts). A GPU holding
E_local of the E experts activates E_local / E of that on average.

DeepSeek-V3 routes by groups (n_group groups of experts, the topk_group best groups, then the top
k experts inside them); the formula treats it as plain top-k over all E experts: every expert is
still equally likely under uniform scores, and the group limit only makes a token's k experts
cluster in fewer groups (which matters for DeepEP's node-limited dispatch, not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass

from pdsim.errors import PdsimError

# DeepSeek-V2 and V3: one architecture in vLLM (DeepseekV3ForCausalLM subclasses DeepseekV2ForCausalLM): MLA
# attention (pdsim/mla.py), MoE layers after the first dense ones, shared experts.
DEEPSEEK_TYPES = ("deepseek_v2", "deepseek_v3")
# model_type -> (experts key, expert intermediate key); the dense intermediate_size of a
# qwen3_moe config is for its non-MoE layers (mlp_only_layers), Mixtral's is the expert size.
MOE_KEYS: dict[str, tuple[str, str]] = {
    "qwen3_moe": ("num_experts", "moe_intermediate_size"),
    "qwen2_moe": ("num_experts", "moe_intermediate_size"),
    "mixtral": ("num_local_experts", "intermediate_size"),
    "deepseek_v2": ("n_routed_experts", "moe_intermediate_size"),
    "deepseek_v3": ("n_routed_experts", "moe_intermediate_size"),
    "gpt_oss": ("num_local_experts", "intermediate_size"),
    "phimoe": ("num_local_experts", "intermediate_size"),
    "olmoe": ("num_experts", "intermediate_size"),  # every layer MoE, no shared expert (vLLM's olmoe.py)
}


@dataclass(frozen=True)
class MoESpec:
    num_experts: int
    top_k: int
    expert_intermediate: int  # of one routed expert
    moe_layers: int  # layers whose MLP is a MoE block (the others are dense)
    shared_intermediate: int = 0  # all shared experts together, 0 when none
    # Qwen2-MoE scales its shared expert's output by sigmoid(a [hidden -> 1] gate) (vLLM's Qwen2MoeSparseMoeBlock).
    shared_expert_gate: bool = False

    def expected_active_experts(self, tokens: float, local_experts: int | None = None) -> float:
        """Expected distinct experts `tokens` tokens activate among `local_experts` (default all)."""
        local = self.num_experts if local_experts is None else local_experts
        if tokens <= 0:
            return 0.0
        return local * (1.0 - (1.0 - self.top_k / self.num_experts) ** tokens)

    def expert_params(self, hidden: int) -> int:
        """Parameters of one routed expert (gate, up and down projections)."""
        return 3 * hidden * self.expert_intermediate

    def routed_params(self, hidden: int) -> int:
        """Routed-expert parameters of the whole model."""
        return self.moe_layers * self.num_experts * self.expert_params(hidden)

    def non_expert_mlp_params(self, hidden: int, tp: int) -> int:
        """Per MoE layer and GPU: the router gate (replicated) and the shared experts (TP-sharded)."""
        shared = 3 * hidden * -(-self.shared_intermediate // tp) if self.shared_intermediate else 0
        return hidden * self.num_experts + shared + (hidden if self.shared_expert_gate else 0)

    def ep_refusal(self, ep: int) -> str | None:
        """Why the experts cannot be laid out over `ep` EP ranks, or None. An uneven split runs: vLLM 0.19 gives
        the first E mod ep ranks one expert more (fused_moe/layer.py determine_expert_map; ExpertPlacement)."""
        if ep < 1:
            return f"ep_size {ep}: expected at least 1"
        if ep > self.num_experts:  # vLLM would leave ranks with no expert at all: not modelled
            return f"ep_size {ep} is more than the {self.num_experts} experts, so some ranks would hold none"
        return None


def moe_from_hf(path: object, model_type: str, raw: dict, num_layers: int) -> MoESpec | None:
    """The MoE part of a HF config, or None for a dense model_type."""
    if model_type not in MOE_KEYS:
        return None
    experts_key, inter_key = MOE_KEYS[model_type]

    def positive(key: str, default: int | None = None) -> int:
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise PdsimError(f"{path}: field {key!r}: expected a positive integer, got {value!r}")
        return value

    experts, top_k = positive(experts_key), positive("num_experts_per_tok")
    if top_k > experts:
        raise PdsimError(f"{path}: field 'num_experts_per_tok': {top_k} is more than the {experts} experts")
    moe_layers = num_layers
    if model_type in ("qwen3_moe", "qwen2_moe"):
        # vLLM's Qwen3MoeDecoderLayer and Qwen2MoeDecoderLayer: MoE where the layer is not in mlp_only_layers
        # and (index + 1) % decoder_sparse_step == 0.
        step = positive("decoder_sparse_step", 1)
        dense_only = set(raw.get("mlp_only_layers") or [])
        moe_layers = sum(1 for i in range(num_layers) if i not in dense_only and (i + 1) % step == 0)
    shared = 0
    if model_type in DEEPSEEK_TYPES:
        # vLLM's DeepseekV2DecoderLayer: MoE where index >= first_k_dense_replace and
        # index % moe_layer_freq == 0; the shared experts are one MLP of n_shared x the expert size.
        first_dense, freq = raw.get("first_k_dense_replace", 0), positive("moe_layer_freq", 1)
        if not isinstance(first_dense, int) or isinstance(first_dense, bool) or not 0 <= first_dense <= num_layers:
            raise PdsimError(f"{path}: field 'first_k_dense_replace': expected an integer in 0..{num_layers}, "
                             f"got {first_dense!r}")
        moe_layers = sum(1 for i in range(first_dense, num_layers) if i % freq == 0)
        n_shared = raw.get("n_shared_experts") or 0
        if not isinstance(n_shared, int) or isinstance(n_shared, bool) or n_shared < 0:
            raise PdsimError(f"{path}: field 'n_shared_experts': expected a non-negative integer, got {n_shared!r}")
        shared = n_shared * positive(inter_key)
    if model_type == "qwen2_moe":  # one shared expert of its own width (0: none), gated
        shared = raw.get("shared_expert_intermediate_size") or 0
        if not isinstance(shared, int) or isinstance(shared, bool) or shared < 0:
            raise PdsimError(f"{path}: field 'shared_expert_intermediate_size': expected a non-negative integer, "
                             f"got {shared!r}")
    return MoESpec(
        num_experts=experts,
        top_k=top_k,
        expert_intermediate=positive(inter_key),
        moe_layers=moe_layers,
        shared_intermediate=shared,
        shared_expert_gate=model_type == "qwen2_moe" and shared > 0,
    )
