"""What a latency profile is: the lookup tables of one (hardware, model, dtype, tp) and the ops
they time (the format is documented in profiles/README.md).

How the tables compose into a step time is `pdsim/perf/predictor.py`'s business; reading and
writing them on disk is `profile_readers.py` and `profile.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pdsim.bundled import bundled_path
from pdsim.perf.interp import Table1D, Table2D, TableND
from pdsim.perf.moe_time import MoELayoutTable, MoETable

FORMAT_NAME = "pdsim-profile"
FORMAT_VERSION = 1
# The bundled profiles: the checkout's profiles/, or an installed wheel's copy of it (pdsim/bundled.py).
PROFILES_ROOT = bundled_path("profiles")

# op -> how many times it runs per step-layer; "per_step" ops run once per step, not per layer.
PER_LAYER_OPS: dict[str, int] = {
    "layernorm": 2,
    "qkv_proj": 1,
    "qk_norm": 1,
    "rotary_emb": 1,
    "o_proj": 1,
    "gate_up_proj": 1,
    "act_fn": 1,
    "down_proj": 1,
    "residual_add": 2,
    # measured: one whole decoder layer minus the sum of its isolated ops (README "dense.csv")
    "layer_overhead": 1,
}
PER_STEP_OPS: tuple[str, ...] = ("embedding", "final_layernorm")
OPTIONAL_DENSE_OPS: frozenset[str] = frozenset({"qk_norm", "residual_add", "layer_overhead"})
# The dense MLP; a profile of a MoE model whose layers are all MoE has moe.csv instead.
MLP_OPS: frozenset[str] = frozenset({"gate_up_proj", "act_fn", "down_proj"})
DENSE_OPS: tuple[str, ...] = (*PER_LAYER_OPS, *PER_STEP_OPS)
PER_SEQUENCE_OPS: tuple[str, ...] = ("lm_head", "sampler")


# The tool name of a profile built from another tool's kernel database (import-aiconfigurator): its
# kernels are measured, but ops the database lacks are pdsim's estimate.
IMPORT_TOOL_PREFIX = "pdsim profile import-"


@dataclass
class ProfileMeta:
    hardware: str
    model: str
    dtype: str
    tp: int
    source: str = "measured"  # "measured" | "estimated"
    tool: str = ""
    tool_version: str = ""
    created_at: str = ""
    num_layers: int | None = None  # of the profiled model (LLMServingSim profiles a 1-layer copy)
    device: dict = field(default_factory=dict)
    activation_peak_bytes: int | None = None
    notes: str = ""
    path: str = ""
    fmt: str = "pdsim"  # "pdsim" | "llmservingsim"
    # max_num_batched_tokens the activation peak was measured at (lets it be rescaled), if known
    activation_tokens: int | None = None
    # The weights' fp8 scheme the profile was measured with (an LLMServingSim `variant: fp8`), or None;
    # `dtype` is then the activations' dtype, as in vLLM.
    quantization: str | None = None
    # The profiled vLLM's enforce_eager (LLMServingSim's meta.yaml engine_effective): True means its
    # custom CUDA ops, not the Inductor-compiled ones a default engine runs; None where not recorded.
    engine_enforce_eager: bool | None = None
    # The profiled vLLM's kv_cache_dtype (engine_effective), None where not recorded: the KV cache of
    # the activations' dtype, vLLM's `auto`.
    engine_kv_cache_dtype: str | None = None

    @property
    def imported(self) -> bool:
        return self.tool.startswith(IMPORT_TOOL_PREFIX)

    @property
    def allreduce_by_vllms_choice(self) -> bool:
        """Whether allreduce.csv holds what vLLM runs (its custom kernel for small messages, NCCL
        above: the aiconfigurator import) rather than NCCL alone (pdsim's profiler, torch.distributed)."""
        return self.tool == "pdsim profile import-aiconfigurator"


@dataclass
class Profile:
    meta: ProfileMeta
    dense: dict[str, Table1D]
    per_sequence: dict[str, Table1D]
    attention_prefill: Table2D | None = None
    attention_decode: Table2D | None = None
    attention_grid4d: TableND | None = None
    allreduce: Table1D | None = None
    moe: MoETable | None = None  # LLMServingSim's moe.csv: expert layer by tokens, activated experts
    moe_layouts: MoELayoutTable | None = None  # fused expert kernels by (moe_tp, moe_ep, tokens)
    # pdsim's profiler: uneven decode batches (batch_size, kv_short_tokens, kv_long_tokens, us), one request
    # at the long KV; the decode skew is derived from them (pdsim/perf/skew_fit.py)
    decode_skew_rows: list[tuple[int, int, int, float]] | None = None

    @property
    def estimated(self) -> bool:
        return self.meta.source == "estimated"

    def tables(self) -> list:
        """Every lookup table, e.g. to collect their extrapolation notes for a report."""
        found = [*self.dense.values(), *self.per_sequence.values()]
        for t in (self.attention_prefill, self.attention_decode, self.attention_grid4d, self.allreduce, self.moe):
            if t is not None:
                found.append(t)
        if self.moe_layouts is not None:
            found.extend(self.moe_layouts.tables())
        return found


# `layer_overhead` reference shape (README "dense.csv"): up to the largest decode batch of the
# profile a decode step of T sequences with this many cached tokens each, above a prefill of T
# tokens with KV prefix 0.
LAYER_OVERHEAD_DECODE_KV = 16
DECODE_SKEW_FILE = "attention_decode_skew.csv"
DECODE_SKEW_COLUMNS = ("batch_size", "kv_short_tokens", "kv_long_tokens", "time_us")


def layer_overhead_is_decode(profile: Profile, tokens: float) -> bool:
    """Whether `layer_overhead` at `tokens` is measured on a decode step (else on a prefill)."""
    return profile.attention_decode is not None and tokens <= max(profile.attention_decode.xs)


def layer_ops_us(profile: Profile, tokens: float) -> float:
    """One decoder layer of T = `tokens` new tokens at `layer_overhead`'s reference shape, as the
    predictor composes it from this profile without `layer_overhead`: what it is measured against."""
    us = sum(
        count * profile.dense[op](tokens)
        for op, count in PER_LAYER_OPS.items()
        if op != "layer_overhead" and op in profile.dense
    )
    if layer_overhead_is_decode(profile, tokens):
        return us + profile.attention_decode(tokens, float(LAYER_OVERHEAD_DECODE_KV))
    return us + profile.attention_prefill(tokens, 0.0)
