"""Time of a mixture-of-experts layer on one GPU, measured (LLMServingSim's `moe.csv`) or estimated.

Placement (LLMServingSim's keys, vLLM's layout). An instance of `tp` GPUs in a DP group of
`dp_size` instances with expert-parallel degree `ep_size` (the whole group's, as LLMServingSim
counts it; `ep_size / dp_size` <= tp of it inside one instance) holds E / ep_size experts per GPU,
each split `expert_tp = tp / (ep_size / dp_size)` ways by TP. Weights: the routed experts are
split over `ep_size * expert_tp` GPUs. Where ep_size does not divide E, the first E mod ep_size EP
ranks hold one expert more (vLLM's determine_expert_map): each DP rank's weights and KV cache are its
own GPUs' (the most any of them holds), and the layer's time is the GPU holding the most, which paces
the GPUs that synchronise with it. `ep_size` 1 in a DP group is vLLM's DP without
`enable_expert_parallel` (`FusedMoEParallelConfig.make` flattens TP across DP): every GPU of the group
holds every expert, split `tp * dp_size` ways, over the same gathered tokens.

One MoE layer of a step in which the group's ranks together compute T_g tokens (vLLM's default
all2all backend for DP+EP, `allgather_reducescatter`, hands every rank all T_g tokens):

* experts: each GPU runs its local experts over the tokens routed to them. Under uniform top-k
  routing (pdsim/moe.py) it activates A = E_local * (1 - (1 - k/E)^T_g) distinct experts and
  gets T_g * k * E_local / E token-expert pairs on average. `moe.csv` (tokens, activated_experts,
  time_us) was measured on the whole layer (all E experts on one GPU; taken to include the router
  gate, which dense.csv does not list); the same work
  there is T_eq = T_g * E_local / E tokens (same pairs) activating A experts, looked up piecewise
  linearly (tokens bracketed between the two nearest measured counts; activated experts linear
  within each, extended linearly past its ends: a row only holds A <= k * tokens).
* dispatch/combine (dp_size > 1): an all-gather of the T_g tokens' hidden states and a
  reduce-scatter of the expert outputs over the DP ranks, each a ring:
  (P-1)/P * T_g * hidden * bytes / bw + (P-1) * latency, P = dp_size (dp_size x tp in vLLM's
  sequence-parallel MoE, SEQUENCE_PARALLEL_MOE_TYPES), over the link
  pdsim/engine/dp_group.py picks (docs/moe.md). Not measured: the profile has no collective tables.
  The all-gather carries what vLLM's expert kernel takes in (fp8 and its scales for most fp8 experts,
  dispatch_bytes_per_token); the reduce-scatter, the activations' dtype.
* without `moe.csv` the experts are estimated from specs (pdsim/perf/estimate.py, said so), at the
  instance's weight precision (`quantization`: fp8 experts at the fp8 peak, 1-byte weights plus
  scales); the estimate's router gate and shared experts run on the busiest rank's own tokens, which
  vLLM does not gather. A `moe.csv` is used as measured (its gate included, at T_eq): profiles are keyed
  by precision, so an fp8 instance reads the one under `.../fp8/tp<N>/`.

Why the group's total: a MoE layer is a collective, so every rank waits for every other one in
each layer; a DP group therefore steps in lock step (pdsim/engine/dp_group.py).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pdsim.errors import ProfileError
from pdsim.hardware import HardwareSpec
from pdsim.models import FP8_BLOCK, FP8_WEIGHT_BYTES, SCALE_BYTES, ModelSpec, dtype_bytes
from pdsim.moe import MoESpec
from pdsim.perf.interp import Table1D


class MoETable:
    """moe.csv: us of one MoE layer by (tokens, activated_experts), a row per measured point."""

    def __init__(self, name: str, rows: dict[float, tuple[np.ndarray, np.ndarray]],
                 measured_tp: int | None = None) -> None:
        self.name = name
        # Set when the table was read from another TP degree's folder than the instance's (tp1/).
        self.measured_tp = measured_tp
        self._tokens = sorted(rows)
        self._rows = [rows[t] for t in self._tokens]
        self.out_of_range: str | None = None

    @classmethod
    def read(cls, path: Path, measured_tp: int | None = None) -> MoETable:
        from pdsim.perf.profile import _read_csv  # the strict CSV reader shared by every table

        cols = ("tokens", "activated_experts", "time_us")
        by_tokens: dict[float, dict[float, float]] = {}
        for t, a, us in _read_csv(path, cols, cols):
            row = by_tokens.setdefault(t, {})
            if a in row:
                raise ProfileError(f"{path}: two rows for tokens={t:g}, activated_experts={a:g}")
            row[a] = us
        rows = {t: (np.array(sorted(r)), np.array([r[a] for a in sorted(r)])) for t, r in by_tokens.items()}
        return cls(path.name, rows, measured_tp)

    def _row(self, i: int, active: float) -> float:
        xs, ys = self._rows[i]
        if len(xs) == 1:
            return float(ys[0])
        j = min(max(int(np.searchsorted(xs, active)) - 1, 0), len(xs) - 2)
        return float(ys[j] + (ys[j + 1] - ys[j]) * (active - xs[j]) / (xs[j + 1] - xs[j]))

    def __call__(self, tokens: float, active: float) -> float:
        keys = self._tokens
        if tokens > keys[-1] and self.out_of_range is None:
            self.out_of_range = (f"profile table {self.name!r}: tokens={tokens:g} is above the profiled "
                                 f"{keys[-1]:g}; extrapolating linearly")
        if len(keys) == 1:
            return max(self._row(0, active), 0.0)
        i = min(max(bisect_right(keys, tokens) - 1, 0), len(keys) - 2)
        lo, hi = self._row(i, active), self._row(i + 1, active)
        w = (tokens - keys[i]) / (keys[i + 1] - keys[i])
        if tokens < keys[0]:
            w = 0.0  # below the smallest count: a layer does not get cheaper than one token's
        return max(lo + (hi - lo) * w, 0.0)


class MoELayoutTable:
    """moe_layouts.csv (`pdsim profile import-aiconfigurator`): us of the fused expert kernels on one GPU
    by (moe_tp, moe_ep, tokens given to the GPU), measured per expert layout; no router, no top-k.
    Each layout's row is a piecewise-linear table over tokens (pdsim/perf/interp.py)."""

    FILE = "moe_layouts.csv"
    COLUMNS = ("moe_tp", "moe_ep", "tokens", "time_us")

    def __init__(self, name: str, rows: dict[tuple[int, int], Table1D]) -> None:
        self.name = name
        self._rows = rows

    @classmethod
    def read(cls, path: Path) -> MoELayoutTable:
        from pdsim.perf.profile import _read_csv

        by_layout: dict[tuple[int, int], dict[float, float]] = {}
        for tp, ep, t, us in _read_csv(path, cls.COLUMNS, cls.COLUMNS):
            by_layout.setdefault((int(tp), int(ep)), {})[t] = us
        return cls(path.name, {(tp, ep): Table1D(f"{path.name} moe_tp {tp} x moe_ep {ep}", sorted(r),
                                                 [r[t] for t in sorted(r)], "tokens")
                               for (tp, ep), r in by_layout.items()})

    def layouts(self) -> list[tuple[int, int]]:
        return sorted(self._rows)

    def has(self, moe_tp: int, moe_ep: int) -> bool:
        return (moe_tp, moe_ep) in self._rows

    def tables(self) -> list[Table1D]:
        return list(self._rows.values())

    def __call__(self, moe_tp: int, moe_ep: int, tokens: float) -> float | None:
        """None when the layout was not measured."""
        row = self._rows.get((moe_tp, moe_ep))
        return None if row is None else row(tokens)


@dataclass(frozen=True)
class ExpertPlacement:
    """Where the experts of one GPU of an instance come from (module docstring)."""

    tp: int
    ep_size: int = 1
    dp_size: int = 1

    @property
    def over_group(self) -> bool:
        """Experts split by TP over the whole DP group (vLLM's DP without expert parallelism)."""
        return self.ep_size == 1 and self.dp_size > 1

    @property
    def ep_in_instance(self) -> int:
        return max(1, self.ep_size // self.dp_size)

    @property
    def expert_tp(self) -> int:
        if self.over_group:
            return self.tp * self.dp_size
        return max(1, self.tp // self.ep_in_instance)

    @property
    def expert_shards(self) -> int:
        """GPUs the routed experts are split over (for weight bytes per GPU)."""
        return self.ep_size * self.expert_tp

    def gpu_experts(self, num_experts: int, ep_rank: int) -> int:
        """Experts EP rank `ep_rank` holds. vLLM 0.19 splits them as evenly as it can, the first E mod ep_size
        ranks taking one more (fused_moe/layer.py determine_expert_map: 60 over 8 is 8, 8, 8, 8, 7, 7, 7, 7; the
        same counts under its "linear" and "round_robin" placements)."""
        base, extra = divmod(num_experts, self.ep_size)
        return base + (1 if ep_rank < extra else 0)

    def local_experts(self, num_experts: int, dp_rank: int | None = None) -> int:
        """Experts on the GPU that holds the most: of DP rank `dp_rank`, or of the whole layout (None). A DP
        rank's GPUs are EP ranks dp_rank * ep_in_instance on (vLLM's FusedMoEParallelConfig.make flattens TP
        across DP), so its first holds the most. Where GPUs synchronise (the TP all-reduce inside an instance,
        the dispatch/combine of a DP group) that GPU paces the layer, so step times take the layout's."""
        first = 0 if dp_rank is None else dp_rank * self.ep_in_instance
        return self.gpu_experts(num_experts, first)

    def weight_shards(self, moe: MoESpec | None, dp_rank: int = 0) -> int | Fraction:
        """`expert_shards` as ModelSpec.weight_bytes takes it for the GPU of DP rank `dp_rank` that holds the
        most experts: the routed experts' bytes over it are that GPU's (its local experts, each 1/expert_tp).
        The GPU count itself where the experts split evenly; a fraction where they do not (60 over 8: 7.5)."""
        if moe is None:
            return self.expert_shards
        local = self.local_experts(moe.num_experts, dp_rank)
        if local * self.ep_size == moe.num_experts:
            return self.expert_shards
        return Fraction(moe.num_experts * self.expert_tp, local)

    def uneven(self, num_experts: int) -> bool:
        """Whether EP ranks hold different expert counts (num_experts not a multiple of ep_size)."""
        return num_experts % self.ep_size != 0

    @property
    def sequence_parallel_layout(self) -> bool:
        """The layout of vLLM's sequence-parallel MoE (`ParallelConfig.use_sequence_parallel_moe`: expert
        parallelism over a DP group of TP > 1 instances), which the models of SEQUENCE_PARALLEL_MOE_TYPES run so."""
        return self.dp_size > 1 and self.tp > 1 and self.ep_size == self.dp_size * self.tp


# The model types whose vLLM 0.19 MoE block passes is_sequence_parallel to FusedMoE (model_executor/models/:
# deepseek_v2, qwen3_moe, gpt_oss, ...): under that layout each TP rank takes its 1/tp of the tokens into the block,
# the dispatch/combine runs over all dp x tp GPUs, and the block ends with a TP all-gather, not an all-reduce.
# Mixtral, Qwen2-MoE and PhiMoE do not.
SEQUENCE_PARALLEL_MOE_TYPES = frozenset({"deepseek_v2", "deepseek_v3", "qwen3_moe", "gpt_oss"})


class MoELayerModel:
    """us of one MoE layer (experts + dispatch/combine) on one GPU by the group's token count."""

    def __init__(self, model: ModelSpec, placement: ExpertPlacement, dtype: str,
                 hardware: HardwareSpec | None, table: MoETable | None, quantization: str | None = None,
                 layouts: MoELayoutTable | None = None) -> None:
        assert model.moe is not None
        self.moe = model.moe
        self.model = model
        self.placement = placement
        self.table = table
        self.notes: list[str] = []
        # The GPU holding the most experts: every GPU of the layout waits for it (ExpertPlacement.local_experts).
        self.local_experts = placement.local_experts(model.moe.num_experts)
        if placement.uneven(model.moe.num_experts):
            self.notes.append(uneven_split_note(model.moe.num_experts, placement))
        self.sequence_parallel = (placement.sequence_parallel_layout
                                  and model.architecture in SEQUENCE_PARALLEL_MOE_TYPES)
        # The dispatch's all-gather and the combine's reduce-scatter carry other bytes under fp8 experts.
        self._bytes_per_token = model.hidden_size * dtype_bytes(dtype)
        self._dispatch_bytes_per_token = dispatch_bytes_per_token(model, dtype, quantization, hardware,
                                                                  placement.ep_size)
        self._hardware = hardware
        # (GB/s, ns) of the DP ranks' link: the GPU's intra-node link until a DP group sets one.
        self._link = (hardware.intra_node_bw_gbps, hardware.intra_node_latency_ns) if hardware else (0.0, 0.0)
        self._cache: dict[int | tuple[int, int], float] = {}
        self._scale_from: tuple | None = None  # (estimate at this expert_tp, at the table's) when rescaled
        if table is not None and (table.measured_tp is not None or placement.over_group):
            self._note_borrowed_table(table, hardware, dtype, quantization)
        # The profile's per-layout kernel table, where it measured this layout (one instance, no DP group).
        measured_layout = layouts is not None and layouts.has(placement.expert_tp, placement.ep_size)
        self.layouts = layouts if measured_layout and placement.dp_size == 1 else None
        if table is None:
            if hardware is None:
                raise ProfileError(f"{model.name}: the profile has no moe.csv and there is no hardware spec "
                                   "to estimate the expert layers from")
            from pdsim.perf.estimate import MoERoofline, check_estimable

            check_estimable(dtype, quantization)
            self._estimate = MoERoofline(hardware, model, dtype, placement.expert_tp, quantization,
                                         shared_tp=placement.tp)
            if self.layouts is not None:
                self.notes.append(f"MoE expert kernels from the profile's {self.layouts.name} (moe_tp "
                                  f"{placement.expert_tp}, moe_ep {placement.ep_size}); router and top-k "
                                  f"estimated ({self._estimate.gemm_source})")
            else:
                have = f"; its {layouts.name} has no moe_tp {placement.expert_tp} x moe_ep {placement.ep_size}" \
                    if layouts is not None else ""
                self.notes.append("MoE expert layers estimated from hardware specs (no moe.csv in the profile"
                                  f"{have}; {self._estimate.gemm_source})")
                if (said := fp8_kernel_note(hardware, quantization, placement.ep_size)) is not None:
                    self.notes.append(said)
        else:  # a moe.csv is measured on one GPU, all experts present: no expert parallelism
            if (said := fp8_kernel_note(hardware, quantization, placement.ep_size, table.name)) is not None:
                self.notes.append(said)

    def _note_borrowed_table(self, table: MoETable, hardware: HardwareSpec | None, dtype: str,
                             quantization: str | None) -> None:
        """A moe.csv from the tp{measured_tp}/ folder: whole experts on one GPU. A rank that holds whole
        experts (expert parallelism) runs the same kernels on its own experts; one whose experts are
        TP-split runs narrower ones, priced as the table times the spec model's ratio between the two."""
        p = self.placement
        measured_tp = table.measured_tp if table.measured_tp is not None else p.tp  # its own folder's: this tp
        where, why = f"tp{measured_tp}/{table.name}", f"no moe.csv for tp={p.tp}"
        if p.over_group:
            why = f"experts split over the DP group's {p.tp * p.dp_size} GPUs, without expert parallelism"
        if p.expert_tp == measured_tp:
            self.notes.append(f"MoE expert layers from the profile's {where} (no moe.csv for tp={p.tp}; each GPU "
                              f"holds whole experts under ep_size={p.ep_size}, as the profiled GPU did)")
            return
        if hardware is None:
            self.notes.append(f"MoE expert layers from the profile's {where} unscaled, an upper bound: experts "
                              f"split {p.expert_tp} ways here, and no hardware spec to scale the table by")
            return
        from pdsim.perf.estimate import MoERoofline

        model = self.model
        self._scale_from = (MoERoofline(hardware, model, dtype, p.expert_tp, quantization, shared_tp=p.tp),
                            MoERoofline(hardware, model, dtype, measured_tp, quantization, shared_tp=measured_tp))
        self.notes.append(f"MoE expert layers from the profile's {where}, scaled by the hardware-spec estimate's "
                          f"ratio for experts split {p.expert_tp} ways (estimated: {why})")

    def set_link(self, bw_gbps: float, latency_ns: float, where: str) -> str:
        """The link the DP ranks' dispatch/combine crosses (pdsim/engine/dp_group.py picks it);
        returns the note a report should carry."""
        self._link = (bw_gbps, latency_ns)
        self._cache.clear()
        note = (f"MoE dispatch/combine modelled (all-gather + reduce-scatter ring over {where}, "
                f"{bw_gbps:g} GB/s, {latency_ns:g} ns), not measured{self._group_size_caveat()}")
        if self._dispatch_bytes_per_token != self._bytes_per_token:
            note += (f"; the all-gather carries fp8 hidden states and their scales "
                     f"({self._dispatch_bytes_per_token:g} bytes a token, as vLLM 0.19 quantises them for its "
                     "fp8 expert kernel before the dispatch), the reduce-scatter the activations' dtype")
        self.notes.append(note)
        return note

    def _group_size_caveat(self) -> str:
        """The one measured MoE run this pricing was checked on is a DP 2 group; two readings that both fit it part
        by 14% on a DP 4 group's TPOT (docs/moe.md), so a group of another size is told so."""
        size = self.placement.dp_size
        if size == 2:
            return ""
        return (f", and checked on a DP group of 2 ranks only (this one has {size}): two readings that both fit that "
                "run put a DP 4 group's TPOT 14% apart (docs/moe.md, \"What the agreement rests on\")")

    def active_experts(self, group_tokens: float) -> float:
        return self.moe.expected_active_experts(group_tokens, self.local_experts)

    def experts_us(self, group_tokens: int, rank_tokens: int | None = None) -> float:
        """The layer's kernels on one GPU: the experts over the group's tokens and, where estimated, the
        router gate and any shared experts over the rank's own (`rank_tokens`, default the group's: no DP
        group); a measured moe.csv, its gate included, is read at the group's tokens (module docstring)."""
        active = self.active_experts(group_tokens)
        tokens_eq = group_tokens * self.local_experts / self.moe.num_experts
        pairs = tokens_eq * self.moe.top_k
        if self.table is not None:
            measured = self.table(tokens_eq, active)
            if self._scale_from is None:
                return measured
            here, there = self._scale_from
            return measured * here.layer_us(group_tokens, pairs, active) / there.layer_us(group_tokens, pairs, active)
        layer = self._estimate.layer_us(group_tokens, pairs, active, rank_tokens)
        if self.layouts is not None:  # the measured kernels in place of the estimated ones
            measured = self.layouts(self.placement.expert_tp, self.placement.ep_size, group_tokens)
            layer += measured - self._estimate.experts_us(group_tokens, pairs, active)
        return layer

    def dispatch_combine_us(self, group_tokens: int) -> float:
        placement = self.placement
        p = placement.dp_size * (placement.tp if self.sequence_parallel else 1)
        bw_gbps, latency_ns = self._link
        if p <= 1 or bw_gbps <= 0:
            return 0.0

        def ring_us(bytes_per_token: float) -> float:
            nbytes = group_tokens * bytes_per_token
            return (p - 1) / p * nbytes / (bw_gbps * 1e3) + (p - 1) * latency_ns * 1e-3

        return ring_us(self._dispatch_bytes_per_token) + ring_us(self._bytes_per_token)

    def layer_us(self, group_tokens: int, rank_tokens: int | None = None) -> float:
        """One MoE layer of a step in which the group's ranks give `group_tokens` in all and the busiest
        `rank_tokens` (default: the group's, no DP group)."""
        key = group_tokens if rank_tokens is None else (group_tokens, rank_tokens)
        cached = self._cache.get(key)
        if cached is None:
            cached = self.experts_us(group_tokens, rank_tokens) + self.dispatch_combine_us(group_tokens)
            self._cache[key] = cached
        return cached

    def step_us(self, group_tokens: int, rank_tokens: int | None = None) -> float:
        """All MoE layers of a step."""
        if group_tokens <= 0:
            return 0.0
        return self.moe.moe_layers * self.layer_us(group_tokens, rank_tokens)


def dispatch_bytes_per_token(model: ModelSpec, dtype: str, quantization: str | None,
                             hardware: HardwareSpec | None, ep_size: int) -> float:
    """One token's bytes in the DP dispatch's all-gather. vLLM 0.19 builds fp8 experts with its naive DP
    prepare/finalize (fused_moe/oracle/fp8.py make_fp8_moe_kernel, all2all_utils.maybe_make_prepare_finalize with
    allow_new_interface), which quantises the hidden states for the expert kernel before the all-gather and
    gathers their scales beside them (prepare_finalize/naive_dp_ep.py _quantize_and_setup_dispatch): 1 byte a
    value, plus one fp32 scale per 128 values under block fp8 (per_token_group_quant_fp8) or per token under
    per-token activations (compressed-tensors per-channel checkpoints); per-tensor scales are one a rank. Not
    where the kernel quantises its input itself or takes it unquantised (_dispatches_fp8): the activations'
    dtype then, as for bf16 experts, whose unquantised method keeps the dispatch in the layer's dtype. The routing
    data gathered beside the hidden states is not counted: the router logits (num_experts values a token, the
    unquantised path's dispatch_router_logits) or the top-k ids and fp32 weights (8 x top_k bytes, the modular
    path's dispatch; device_communicators/all2all.py), 3-6% more bytes on Qwen3-30B-A3B."""
    if not _dispatches_fp8(hardware, quantization, ep_size):
        return model.hidden_size * dtype_bytes(dtype)
    if quantization == "fp8_block":
        scales = -(-model.hidden_size // FP8_BLOCK)
    else:
        per_token = model.checkpoint_quantization == "fp8" and model.checkpoint_weight_scales == "channel"
        scales = 1 if per_token else 0
    return model.hidden_size * FP8_WEIGHT_BYTES + scales * SCALE_BYTES


def _dispatches_fp8(hardware: HardwareSpec | None, quantization: str | None, ep_size: int) -> bool:
    """Whether vLLM 0.19, by default (FlashInfer installed, no backend forced), quantises fp8 experts' input
    before the dispatch. Its kernel choice (fused_moe/oracle/fp8.py select_fp8_moe_backend) decides: below
    compute capability 8.9 (A100) fp8 experts run weight-only on Marlin (fp8_w8a16 quant config: nothing to
    quantise); on Hopper (9.0) block fp8 under expert parallelism runs FlashInfer's CUTLASS kernels, which
    quantise inside (flashinfer_cutlass_moe.py FlashInferExperts.expects_unquantized_inputs: block fp8), so the
    prepare step defers (modular_kernel.py defer_input_quant). Every other pick quantises first: Triton (block
    fp8 without expert parallelism on Hopper, everything on Ada and sm_120), FlashInfer CUTLASS on per-tensor
    static scales, vLLM's CUTLASS grouped GEMM (compressed-tensors), FlashInfer TRT-LLM (Blackwell).
    No hardware spec: the activations' dtype, as before this was known."""
    if quantization is None or hardware is None or float(hardware.compute_capability) < 8.9:
        return False
    return not (quantization == "fp8_block" and hardware.compute_capability == "9.0" and ep_size > 1)


def fp8_kernel_note(hardware: HardwareSpec | None, quantization: str | None, ep_size: int,
                    measured: str | None = None) -> str | None:
    """Where vLLM 0.19 runs fp8 experts with a kernel other than the Triton fused_moe the expert-time fit
    covers (fused_moe/oracle/fp8.py, flashinfer_cutlass_moe.py), or a measured table's kernel (taken on one
    GPU, without expert parallelism) is not the engine's: what to tell the user, else None."""
    if hardware is None or quantization is None or float(hardware.compute_capability) < 9.0:
        return None
    if quantization == "fp8_block":
        if hardware.compute_capability != "9.0" or ep_size <= 1:
            return None
        what = (f"the profile's {measured}, measured without expert parallelism, times Triton's fused_moe"
                if measured else "the expert-time fit covers Triton's fused_moe only")
        return (f"vLLM 0.19 runs block-fp8 experts with expert parallelism (ep_size {ep_size}) on Hopper "
                f"through FlashInfer's CUTLASS kernels, and {what}: their time is unmeasured (docs/moe.md, "
                "\"Which kernel vLLM 0.19 runs\")")
    if measured:
        return None
    return ("vLLM 0.19 picks its fp8 MoE kernel by the checkpoint's activation scales: static per-tensor ones "
            "run FlashInfer's CUTLASS kernels, per-token dynamic ones (compressed-tensors) vLLM's CUTLASS grouped "
            "GEMM, dynamic per-tensor ones Triton's fused_moe, the only one the expert-time fit covers (docs/moe.md)")


def uneven_split_note(num_experts: int, placement: ExpertPlacement) -> str:
    """What a run says of experts that do not divide over the EP ranks."""
    counts = [placement.gpu_experts(num_experts, r) for r in range(placement.ep_size)]
    return (f"ep_size {placement.ep_size}: the {num_experts} experts split {', '.join(map(str, counts))} over the EP "
            "ranks, as vLLM 0.19's determine_expert_map splits them; each instance's weights and KV cache are those "
            "of its GPU holding the most (vLLM keeps the fewest KV blocks of an engine's GPUs), and the MoE layers "
            f"are timed at the {counts[0]} experts of the GPU holding the most, which the others wait for")


def check_placement(model: ModelSpec, placement: ExpertPlacement) -> str | None:
    """Why vLLM could not lay this model's experts out so, or None."""
    if model.moe is None:
        return None
    p = placement
    if p.over_group:
        if model.moe.expert_intermediate % p.expert_tp:
            return (f"expert intermediate size {model.moe.expert_intermediate} cannot be split {p.expert_tp} ways "
                    f"(ep_size 1 in a DP group: each expert over the group's tp x {p.dp_size} GPUs)")
        return None
    if (why := model.moe.ep_refusal(p.ep_size)) is not None:  # an uneven split runs (ExpertPlacement.gpu_experts)
        return why
    if p.ep_size % p.dp_size:
        return f"ep_size={p.ep_size} is not a multiple of the DP group size {p.dp_size}"
    if p.ep_in_instance > p.tp or p.tp % p.ep_in_instance:
        return f"ep_size / DP group size = {p.ep_in_instance} must divide tp_size={p.tp}"
    if model.moe.expert_intermediate % p.expert_tp:
        return f"expert intermediate size {model.moe.expert_intermediate} cannot be split {p.expert_tp} ways"
    return None
