"""Step time of one engine iteration, composed from a profile's per-op tables.

For a step with prefill chunks (new tokens c_i, cached prefix p_i) and n decode requests whose
KV lengths sum to K:  T = sum(c_i) + n new tokens,  S = len(chunks) + n sequences,  L layers,

    time = L * sum_op(count_op * dense_op(T)) + embedding(T) + final_layernorm(T)
         + lm_head(S) + sampler(S)
         + L * attention
         + (tp > 1) (2 * L + 1) * allreduce(T * hidden * dtype_bytes)   (pdsim/perf/collectives.py)
         + (tp > 1) all_gather(S * vocab * dtype_bytes)
         - (steps vLLM >= 0.17 fuses, below) the norms and residual adds after those all-reduces
         + step_overhead + step_overhead_per_seq * S

attention (pdsim format)  = sum_i prefill(c_i, p_i) + (n > 0) decode(n, K / n)
attention (LLMServingSim) = grid4d(sum c_i, sum p_i, n, K / n), once per step.

At TP > 1 vLLM all-reduces twice per layer (after attention's o_proj and the MLP's down_proj)
and once more after the vocabulary-parallel embedding, and all-gathers the logits of the S rows it
samples from (LogitsProcessor._gather_logits; each rank computes vocab / tp of them). A profile's
lm_head is one shard's GEMM, so the gather is added here. From 0.17, on the GPUs and TP sizes in
collectives.FUSED_ALLREDUCE_NORM_MAX_MIB, vLLM's compiled graph runs each all-reduce and the residual
add + RMSNorm after it as one FlashInfer kernel in steps up to a message size: such steps pay the
all-reduce and not the norms (the fused kernel is not measured; docs/validation.md "TP collectives").

The per-layer dense ops include the optional `layer_overhead(T)` (count 1, 0 when the profile has
none): what one whole decoder layer forward of T tokens takes beyond the sum of its isolated ops
(glue between ops, fresh activation buffers, cache effects, kernel-launch gaps). It is measured
at a reference shape (T <= the largest decode batch: a decode step of T sequences at KV 16, else
a prefill of T tokens with prefix 0; profiles/README.md) and added per layer to every step of T
tokens, whatever its mix.

Decode KV skew: the tables hold uniform decode batches, looked up at the mean KV. A batch whose
longest member has KV `kv_max` costs more (attention kernels split work by sequence, so the
longest one sets the tail): attn += alpha * (attn(kv_max) - attn(kv_mean)). alpha comes from the
profile, LLMServingSim's skew fit: its per-bucket table (`skew_fit.csv`) by decode batch size,
prefill chunk tokens and prefill prefix -- alpha is near 1 for a few decodes beside a prefill
chunk and a few hundredths for a hundred decodes -- else `alpha_default` of the instance's tp in
meta.yaml. A given alpha (config `decode_skew_alpha`) replaces all of it.

MoE models (pdsim/perf/moe_time.py): the dense MLP ops count only for the layers that have a
dense MLP, and every MoE layer adds the expert layer's time at the step's tokens (with a DP group,
at the group's tokens, added by pdsim/engine/dp_group.py instead: `moe_external`).

The overhead terms are the engine's CPU time per step that no kernel table sees (scheduling,
input preparation, output processing): a fixed part and a part per scheduled sequence. They are
calibration knobs (`pdsim calibrate` fits them to a measured run), 0 by default.

The simulator asks for millions of steps, most with a shape it has seen, so everything that
repeats is memoised: the token-parallel part by T, the per-sequence part by S, each decode
batch size's attention as a 1-D (kv -> us) slice, and whole steps by their exact key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pdsim.errors import ProfileError
from pdsim.hardware import HardwareSpec
from pdsim.models import ModelSpec, dtype_bytes
from pdsim.perf.collectives import AllReduceModel, custom_all_reduce_runs, interconnect_model, unknown_gpu_model
from pdsim.perf.cudagraphs import graph_size
from pdsim.perf.interp import Table1D
from pdsim.perf.memory import activation_peak_bytes
from pdsim.perf.moe_time import ExpertPlacement, MoELayerModel
from pdsim.perf.profile import MLP_OPS, PER_LAYER_OPS, PER_STEP_OPS, Profile
from pdsim.perf.skew_fit import (  # noqa: F401 - re-exported
    MeasuredSkew,
    SkewFit,
    _bucket_upper,
    profile_skew_alpha,
)

# The ops vLLM's all-reduce + RMSNorm fusion takes into the all-reduce kernel: every decoder norm and
# residual add follows an all-reduce (o_proj's, down_proj's or the MoE block's, and the first layer's
# input norm the embedding's), and so does the final norm.
FUSED_NORM_OPS = frozenset({"layernorm", "residual_add", "final_layernorm"})

_STEP_CACHE_MAX = 2_000_000  # entries; cleared when full so memory stays bounded on long runs
# Decode runs up to this many steps are priced with Python floats: numpy's per-call costs (a range, a division, the
# interpolation, the scaling) exceed the loop's below about this length (measured: 3 us against 12 at one step; even
# at 8).
_SCALAR_RUN_MAX_STEPS = 8


class StepTimePredictor:
    def __init__(
        self,
        profile: Profile,
        model: ModelSpec,
        tp: int,
        hardware: HardwareSpec | None,
        step_overhead_us: float = 0.0,
        step_overhead_per_seq_us: float = 0.0,
        skew_alpha: float | None = None,
        moe_placement: ExpertPlacement | None = None,
        moe_external: bool = False,
        quantization: str | None = None,  # the weights' (InstanceConfig.quantization): prices estimated experts
        custom_all_reduce: bool = True,  # False: vLLM's --disable-custom-all-reduce (NCCL only)
        fused_norm_tokens: int | None = None,  # steps of at most this many tokens fuse all-reduce and norm
        kv_read_scale: float = 1.0,  # bytes of the instance's KV values over those the profile's attention read
        graph_sizes: Sequence[int] = (),  # vLLM's CUDA-graph capture sizes (perf/cudagraphs.py); () for none
        graphs_decode_only: bool = False,  # FULL_DECODE_ONLY: graph_sizes (those it can run) hold decode batches only
    ) -> None:
        self.profile = profile
        self.model = model
        self.tp = tp
        self.hardware = hardware
        self.step_overhead_us = float(step_overhead_us)
        self.step_overhead_per_seq_us = float(step_overhead_per_seq_us)
        # The profile's overall alpha, and its per-bucket fit (by batch size, prefill chunk and
        # prefix), which is much sharper where it has the bucket; a given alpha replaces both.
        self.skew_alpha = profile_skew_alpha(profile) if skew_alpha is None else float(skew_alpha)
        self._skew_fit = SkewFit.read(profile) if skew_alpha is None else None
        self.estimated: bool = profile.estimated
        self.profile_path: str = profile.meta.path
        self.num_layers = model.num_layers
        self._grid4d = profile.attention_grid4d
        # Decode attention streams the cache: a cache of other bytes per value than the profile's costs what the
        # profile's does at the KV length of the same bytes (build.py, _kv_dtype_note).
        self.kv_read_scale = float(kv_read_scale)
        # A step of at most the largest graph size runs its token-parallel ops and collectives padded to a graph size.
        self.graph_sizes = tuple(graph_sizes)
        self.graphs_decode_only = graphs_decode_only
        if self._grid4d is None and (profile.attention_prefill is None or profile.attention_decode is None):
            raise ProfileError(f"{profile.meta.path}: profile has no attention tables")
        self._dense_ops = [op for op in PER_LAYER_OPS if op in profile.dense]
        self._step_items = [profile.dense[op] for op in PER_STEP_OPS]
        self._lm_head = profile.per_sequence["lm_head"]
        self._sampler = profile.per_sequence["sampler"]
        self._act_bytes_per_token = model.hidden_size * dtype_bytes(profile.meta.dtype)
        self._logits_bytes_per_row = model.vocab_size * dtype_bytes(profile.meta.dtype)
        self.moe_layer: MoELayerModel | None = None
        self._gathered_layer_fraction = 0.0  # the layers whose MLP block ends in a TP all-gather (_init_moe)
        self._moe_external = moe_external
        self._quantization = quantization
        if model.moe is not None:
            self._init_moe(moe_placement or ExpertPlacement(tp, ep_size=tp))
        elif not MLP_OPS <= profile.dense.keys():
            raise ProfileError(f"{profile.meta.path}: dense.csv has no {', '.join(sorted(MLP_OPS))} rows, which "
                               f"dense model {model.name} needs (a MoE model's profile?)")

        # Notes a report should carry about how these times were obtained.
        self.notes: list[str] = []
        if self.estimated:
            self.notes.append("step times estimated from hardware specs")
        elif model.has_qk_norm and "qk_norm" not in profile.dense:
            # optional in the format (models without it); a model with it runs it in every layer
            self.notes.append(f"{model.name} normalises q and k in every layer, but {profile.meta.path}'s dense "
                              "table has no qk_norm rows: those norms are not priced")
        if isinstance(self._skew_fit, MeasuredSkew):
            self.notes.append(self._skew_fit.describe())
        elif not self.estimated and skew_alpha is None and not self.skew_alpha and self._skew_fit is None:
            self.notes.append("the profile has no decode-skew fit (LLMServingSim's skew_fit.csv, or the uneven decode "
                              "batches `pdsim profile --only attention_decode_skew` adds): decode attention is "
                              "priced at the batch's mean KV length, which a batch of uneven lengths exceeds")
        elif skew_alpha is None and self._skew_fit is None and profile.meta.fmt == "llmservingsim":
            self.notes.append(f"the profile has no skew_fit.csv in {profile.meta.path}: every step's decode skew takes "
                              f"meta.yaml's alpha_default {self.skew_alpha:g}, where the per-bucket fit would give "
                              "each batch size and prefill chunk its own")
        gemm_precision = profile.meta.device.get("gemm_precision", "") if isinstance(profile.meta.device, dict) else ""
        if "fp8" in gemm_precision:  # say what priced an fp8 instance's GEMMs
            source = gemm_precision.replace("estimated: ", "an estimate from hardware specs: ", 1)
            self.notes.append(f"fp8 GEMMs priced by {source}")
        self._init_allreduce(profile, hardware, tp, custom_all_reduce)
        self.fused_norm_tokens = fused_norm_tokens if tp > 1 else None
        if self.fused_norm_tokens is not None:
            self.notes.append(f"TP all-reduce fused with the residual add and RMSNorm after it in steps of up to "
                              f"{self.fused_norm_tokens:,} tokens (vLLM >= 0.17's default on this GPU, FlashInfer): "
                              "those steps leave the norms' time out and pay the all-reduce alone (the fused kernel "
                              "was not measured)")

        if self.moe_layer is not None:
            self.notes.extend(self.moe_layer.notes)
        dense = profile.dense
        self._dense_items = [(dense[op], PER_LAYER_OPS[op]) for op in self._dense_ops]
        # What a step pays instead when its all-reduces are fused with the residual adds and norms after them.
        self._items_when_fused = [(dense[op], PER_LAYER_OPS[op]) for op in self._dense_ops if op not in FUSED_NORM_OPS]
        self._step_items_when_fused = [dense[op] for op in PER_STEP_OPS if op not in FUSED_NORM_OPS]
        self._init_caches()

    def _init_allreduce(self, profile: Profile, hardware: HardwareSpec | None, tp: int,
                        custom_all_reduce: bool) -> None:
        # TP all-reduce: the profile's table, else a model (collectives.py says which and why).
        self._allreduce_table = profile.allreduce
        self._allreduce_model: AllReduceModel | None = None
        self.allreduce_source: str | None = None
        vllms_choice = profile.meta.allreduce_by_vllms_choice
        if tp > 1 and self._allreduce_table is not None and not custom_all_reduce and vllms_choice:
            # The table holds vLLM's custom kernel for small messages, which the instance turns off.
            self._allreduce_table = None
        if tp > 1 and self._allreduce_table is not None:
            self.allreduce_source = f"measured table (allreduce.csv, {profile.meta.tool})"
            if custom_all_reduce and not vllms_choice and custom_all_reduce_runs(hardware, tp):
                self.allreduce_source += (", NCCL; vLLM runs its custom all-reduce for small messages unless "
                                          "disable_custom_all_reduce, which was not measured")
        elif tp > 1:
            self._allreduce_model = (interconnect_model(hardware, tp, custom_all_reduce) if hardware is not None
                                     else unknown_gpu_model(profile.meta.hardware, tp, custom_all_reduce))
            self.allreduce_source = self._allreduce_model.source
            if profile.allreduce is not None:
                self.allreduce_source += ("; the profile's allreduce.csv (vLLM's choice, custom kernel included) "
                                          "set aside")
        if self.allreduce_source is not None:
            self.notes.append(f"TP all-reduce priced by {self.allreduce_source}")

    def _init_caches(self) -> None:
        self._nonattn_cache: dict[tuple[int, int, int | None], float] = {}
        self._dense_cache: dict[int, float] = {}
        self._seq_cache: dict[int, float] = {}
        self._prefill_cache: dict[tuple[int, int], float] = {}
        self._decode_slices: dict[int, Table1D] = {}
        self._step_cache: dict[tuple, float] = {}

    def _init_moe(self, placement: ExpertPlacement) -> None:
        model = self.model
        self.moe_layer = MoELayerModel(model, placement, self.profile.meta.dtype, self.hardware, self.profile.moe,
                                       self._quantization, self.profile.moe_layouts)
        if self.profile.moe is None and self.moe_layer.layouts is None:
            self.estimated = True
        # The dense MLP ops run only in the layers without a MoE block.
        mlp_layers = model.dense_mlp_layers
        if mlp_layers and not MLP_OPS <= self.profile.dense.keys():
            raise ProfileError(f"{self.profile.meta.path}: {model.name} has {mlp_layers} dense MLP layers but "
                               f"dense.csv has no {', '.join(sorted(MLP_OPS))} rows")
        dense = self.profile.dense
        self._mlp_items = [(dense[op], PER_LAYER_OPS[op]) for op in self._dense_ops if op in MLP_OPS]
        self._dense_ops = [op for op in self._dense_ops if op not in MLP_OPS]
        self._mlp_layer_fraction = mlp_layers / model.num_layers
        # Sequence-parallel MoE (MoELayerModel.sequence_parallel): a MoE block ends with a TP all-gather of its
        # tokens' outputs in place of the all-reduce.
        self._gathered_layer_fraction = 1 - self._mlp_layer_fraction if self.moe_layer.sequence_parallel else 0.0

    # ------------------------------------------------------------ parts

    def _allreduce_us(self, nbytes: float) -> float:
        if self._allreduce_table is not None:
            return self._allreduce_table(nbytes)
        return self._allreduce_model.time_us(nbytes, self.tp)

    def _logits_gather_us(self, sequences: int) -> float:
        """The all-gather of `sequences` rows of logits over the TP group (0 at tp 1)."""
        if self.tp <= 1:
            return 0.0
        return self._all_gather_us(sequences * self._logits_bytes_per_row)

    def _all_gather_us(self, nbytes: float) -> float:
        """An all-gather whose output is `nbytes` over the TP group."""
        if self._allreduce_table is not None:
            # Only all-reduces were measured: an all-gather moves half an all-reduce's bytes.
            return self._allreduce_table(nbytes / 2)
        return self._allreduce_model.all_gather_us(nbytes, self.tp)

    def allreduce_s(self, tokens: int, sequences: int | None = None) -> float:
        """Seconds of a step's TP collectives at `tokens` new tokens and `sequences` sampled rows
        (default: one per token, a decode step) -- 0 at tp 1."""
        if self.tp <= 1:
            return 0.0
        rows = tokens if sequences is None else sequences
        return (self.num_layers * self._layer_collectives_us(tokens) + self._allreduce_us(
            tokens * self._act_bytes_per_token) + self._logits_gather_us(rows)) * 1e-6

    def _layer_collectives_us(self, tokens: int) -> float:
        """A layer's TP collectives at `tokens` tokens (0 at tp 1): two all-reduces, after attention and after the
        MLP, the latter an all-gather in a sequence-parallel MoE block."""
        if self.tp <= 1:
            return 0.0
        nbytes = tokens * self._act_bytes_per_token
        allreduce = self._allreduce_us(nbytes)
        gathered = self._gathered_layer_fraction
        return 2 * allreduce - gathered * (allreduce - self._all_gather_us(nbytes)) if gathered else 2 * allreduce

    def _dense_us(self, tokens: int) -> float:
        """Token-parallel ops at T tokens, all layers, plus the TP all-reduces (also by T)."""
        cached = self._dense_cache.get(tokens)
        if cached is not None:
            return cached
        fused = self.fused_norm_tokens is not None and tokens <= self.fused_norm_tokens
        per_layer = 0.0
        for table, count in (self._items_when_fused if fused else self._dense_items):
            per_layer += count * table(tokens)
        if self.moe_layer is not None:
            per_layer += self._mlp_layer_fraction * sum(count * table(tokens) for table, count in self._mlp_items)
        per_layer += self._layer_collectives_us(tokens)
        allreduce = self._allreduce_us(tokens * self._act_bytes_per_token) if self.tp > 1 else 0.0
        us = self.num_layers * per_layer + allreduce  # and the vocabulary-parallel embedding's
        if self.moe_layer is not None and not self._moe_external:
            us += self.moe_layer.step_us(tokens)
        for table in (self._step_items_when_fused if fused else self._step_items):
            us += table(tokens)
        self._dense_cache[tokens] = us
        return us

    def _per_seq_us(self, sequences: int) -> float:
        cached = self._seq_cache.get(sequences)
        if cached is None:
            cached = self._lm_head(sequences) + self._sampler(sequences) + self._logits_gather_us(sequences)
            self._seq_cache[sequences] = cached
        return cached

    def graphed_tokens(self, tokens: int, sequences: int, graph_tokens: int | None = None) -> int:
        """The token count a step of `tokens` new tokens over `sequences` requests runs its token-parallel ops and
        collectives at: padded to a CUDA-graph size when one can run it (perf/cudagraphs.py), or graph_tokens
        where given (a DP group's common size, step_time_s)."""
        if graph_tokens is not None:
            return graph_tokens
        return graph_size(self.graph_sizes, self.graphs_decode_only, tokens, sequences) or tokens

    def _nonattn_us(self, tokens: int, sequences: int, graph_tokens: int | None = None) -> float:
        key = (tokens, sequences, graph_tokens)
        cached = self._nonattn_cache.get(key)
        if cached is None:
            cached = (self._dense_us(self.graphed_tokens(tokens, sequences, graph_tokens))
                      + self._per_seq_us(sequences) + self.step_overhead_us
                      + self.step_overhead_per_seq_us * sequences)
            self._nonattn_cache[key] = cached
        return cached

    def _decode_slice(self, n_decode: int) -> Table1D:
        """mean decode KV -> per-layer attention us for a decode batch of n_decode."""
        table = self._decode_slices.get(n_decode)
        if table is None:
            if self._grid4d is not None:
                table = self._grid4d.slice_last_axis(0.0, 0.0, float(n_decode))
            else:
                table = self.profile.attention_decode.slice_at_x(float(n_decode))
            if self.kv_read_scale != 1.0:  # its range then reads in the instance's KV lengths, said so
                table = Table1D(f"{table.name} at the KV lengths of the same bytes (x{1 / self.kv_read_scale:g})",
                                table.xs / self.kv_read_scale, table.ys, table.axis_names[0])
            self._decode_slices[n_decode] = table
        return table

    def _decode_attn_us(self, n_decode: int, kv_mean: float, kv_max: int | None) -> float:
        # Goes through the same vectorised routine as decode_run_s so both agree bit for bit.
        table = self._decode_slice(n_decode)
        attn = table.eval_sorted(np.array([kv_mean]))
        if kv_max is not None:
            # A negative alpha (LLMServingSim's fits have some) never makes a time below zero.
            attn = np.maximum(attn + self._mixed_alpha(0, 0, n_decode)
                              * (table.eval_sorted(np.array([float(kv_max)])) - attn), 0.0)
        return float(attn[0])

    def _mixed_alpha(self, chunk_sum: int, prefix_sum: int, n_decode: int) -> float:
        """The skew alpha of a step (0, 0: decode-only); SkewFit memoises its lookups."""
        alpha = self._skew_fit.alpha(chunk_sum, prefix_sum, n_decode) if self._skew_fit else None
        return self.skew_alpha if alpha is None else alpha

    def _skewed_max(self, n_decode: int, kv_decode_sum: int, kv_decode_max: int | None) -> int | None:
        """kv_decode_max when the skew term applies to this batch, else None (uniform lookup)."""
        if kv_decode_max is None or n_decode <= 1 or kv_decode_max * n_decode <= kv_decode_sum:
            return None
        if not (self.skew_alpha or self._skew_fit):
            return None
        return kv_decode_max

    def _prefill_attn_us(self, chunk: int, prefix: int) -> float:
        key = (chunk, prefix)
        cached = self._prefill_cache.get(key)
        if cached is None:
            cached = self.profile.attention_prefill(chunk, prefix)
            self._prefill_cache[key] = cached
        return cached

    # ------------------------------------------------------------ public

    def step_time_s(
        self, prefill_chunks: Sequence[tuple[int, int]], n_decode: int, kv_decode_sum: int,
        kv_decode_max: int | None = None, graph_tokens: int | None = None,
    ) -> float:
        """Seconds one engine step takes.

        prefill_chunks: (new tokens, KV prefix tokens cached before this step) per prefill
        request; n_decode decode requests computing one token each, whose KV lengths before the
        step sum to kv_decode_sum and whose longest is kv_decode_max (None: a uniform batch).
        graph_tokens: the token count its token-parallel ops run at, where someone else decides it (a DP group
        pads its ranks alike); None: this instance's own CUDA-graph padding.
        """
        chunks = tuple(prefill_chunks) if not isinstance(prefill_chunks, tuple) else prefill_chunks
        kv_max = self._skewed_max(n_decode, kv_decode_sum, kv_decode_max)
        key = (chunks, n_decode, kv_decode_sum, kv_max, graph_tokens)
        cached = self._step_cache.get(key)
        if cached is not None:
            return cached

        chunk_sum = 0
        for c, _ in chunks:
            chunk_sum += c
        tokens = chunk_sum + n_decode
        if tokens <= 0:
            return 0.0
        sequences = len(chunks) + n_decode

        if self._grid4d is not None:
            if chunks:
                prefix_sum = sum(p for _, p in chunks)
                read = self.kv_read_scale
                kv_mean = kv_decode_sum / n_decode * read if n_decode else 0.0
                attn = self._grid4d(float(chunk_sum), float(prefix_sum), float(n_decode), kv_mean)
                if kv_max is not None:
                    at_max = self._grid4d(float(chunk_sum), float(prefix_sum), float(n_decode), kv_max * read)
                    attn = max(attn + self._mixed_alpha(chunk_sum, prefix_sum, n_decode) * (at_max - attn), 0.0)
            else:
                attn = self._decode_attn_us(n_decode, kv_decode_sum / n_decode, kv_max)
        else:
            attn = 0.0
            for c, p in chunks:
                attn += self._prefill_attn_us(c, p)
            if n_decode:
                attn += self._decode_attn_us(n_decode, kv_decode_sum / n_decode, kv_max)

        seconds = (self._nonattn_us(tokens, sequences, graph_tokens) + self.num_layers * attn) * 1e-6
        if len(self._step_cache) >= _STEP_CACHE_MAX:
            self._step_cache.clear()
        self._step_cache[key] = seconds
        return seconds

    def dummy_step_s(self, graph_tokens: int | None = None) -> float:
        """An idle DP rank's dummy batch (vLLM's execute_dummy_batch -> _dummy_run(1)): a forward
        pass of one token without KV, and no logits or sampling; MoE layers as the predictor
        counts them (none when `moe_external`). graph_tokens: as step_time_s's (the group's padding)."""
        return self.step_time_s(((1, 0),), 0, 0, graph_tokens=graph_tokens) - self._per_seq_us(1) * 1e-6

    def decode_run_s(
        self, n_decode: int, kv_decode_sum: int, num_steps: int, kv_decode_max: int | None = None
    ) -> np.ndarray:
        """Durations of num_steps consecutive decode-only steps of the same n_decode requests.

        Step j has KV sum kv_decode_sum + j * n_decode and longest KV kv_decode_max + j. Equal
        to calling step_time_s for each.
        """
        if num_steps <= 0:
            return np.zeros(0)
        if n_decode <= 0:
            return np.zeros(num_steps)
        if num_steps <= _SCALAR_RUN_MAX_STEPS:
            run = self._short_decode_run_s(n_decode, kv_decode_sum, num_steps, kv_decode_max)
            if run is not None:
                return np.array(run)
        # Step j's KV sum is kv_decode_sum + j * n_decode, a whole number (exact in a float64): one integer range
        # and one division, few numpy calls, as a run is often cut short after a step.
        kv_sums = np.arange(kv_decode_sum, kv_decode_sum + num_steps * n_decode, n_decode)
        table = self._decode_slice(n_decode)
        attn = table.eval_sorted(kv_sums / n_decode)
        kv_max = self._skewed_max(n_decode, kv_decode_sum, kv_decode_max)
        if kv_max is not None:
            # The gap max - mean stays constant over the run, so the skew applies to every step.
            steps = np.arange(num_steps, dtype=np.float64)
            attn = np.maximum(attn + self._mixed_alpha(0, 0, n_decode) * (table.eval_sorted(kv_max + steps) - attn),
                              0.0)
        # In place (attn is this call's own array): the same products and sums, fewer temporaries.
        attn *= self.num_layers
        attn += self._nonattn_us(n_decode, n_decode)
        attn *= 1e-6
        return attn

    def _short_decode_run_s(self, n_decode: int, kv_decode_sum: int, num_steps: int,
                            kv_decode_max: int | None) -> list[float] | None:
        """decode_run_s's durations, bit for bit, computed one float at a time, where its KV lengths stay inside the
        attention slice's grid and the batch takes no skew term (None otherwise: the vectorised route handles
        those). The same operations in the same order: the mean KV as one int-by-int division (exact ints in a
        float64 in numpy), np.interp's formula, then times the layers, plus the rest, times 1e-6."""
        table = self._decode_slice(n_decode)
        last_sum = kv_decode_sum + (num_steps - 1) * n_decode
        if (self._skewed_max(n_decode, kv_decode_sum, kv_decode_max) is not None
                or not table.covers(kv_decode_sum / n_decode, last_sum / n_decode)):
            return None
        layers = self.num_layers
        rest_us = self._nonattn_us(n_decode, n_decode)
        return [(table.interp_inside(kv_sum / n_decode) * layers + rest_us) * 1e-6
                for kv_sum in range(kv_decode_sum, last_sum + 1, n_decode)]

    def forward_reserve_bytes(self, max_num_batched_tokens: int, moe_workspace: str = "batch") -> int:
        """The profiling run's forward peak alone: what a pipeline stage before the last reserves, as only the last
        runs the sampler (activation_reserve_bytes)."""
        return self.activation_reserve_bytes(max_num_batched_tokens, 1, moe_workspace=moe_workspace,
                                             with_sampler=False)

    def activation_reserve_bytes(self, max_num_batched_tokens: int, max_num_seqs: int = 1024,
                                 top_k_top_p: str = "triton", moe_workspace: str = "batch",
                                 with_sampler: bool = True) -> int:
        """Torch activation peak of vLLM's profiling run on one GPU, which vLLM keeps out of the KV cache:
        the larger of a forward over max_num_batched_tokens tokens and the sampler over min(tokens, max_num_seqs)
        rows of full-vocabulary logits (pdsim/perf/memory.py, docs/memory.md), whose peak depends on the sampler's
        top-k/top-p implementation (`top_k_top_p`), with a MoE model's fused-MoE workspaces where the release keeps
        them (`moe_workspace`).

        The forward's is the profile's measured peak where it has one (pdsim's profiler measures a forward's,
        rescaled linearly in tokens when it records the max_num_batched_tokens it was measured at), else estimated
        from the model's shapes; the sampler's is estimated. A rank of a MoE DP group adds what gathering the
        group's tokens into its MoE blocks takes (a profile measures one GPU alone).
        """
        meta = self.profile.meta
        placement = self.moe_layer.placement if self.moe_layer is not None else None
        dp = placement.dp_size if placement is not None and self._moe_external else 1
        # The fused-MoE workspaces hold each GPU's slice of an expert: whole under expert parallelism.
        expert_tp = placement.expert_tp if placement is not None else None

        def estimate(ranks: int, forward: int | None = None, sampler: bool = with_sampler) -> int:
            return activation_peak_bytes(self.model, meta.dtype, self.tp, max_num_batched_tokens, max_num_seqs,
                                         expert_tp, ranks, top_k_top_p=top_k_top_p, moe_workspace=moe_workspace,
                                         with_sampler=sampler, forward_bytes=forward,
                                         sm_count=self.hardware.sm_count if self.hardware is not None else None)

        if meta.activation_peak_bytes is None:
            return estimate(dp)
        measured = meta.activation_peak_bytes
        if meta.activation_tokens:
            measured = measured * max_num_batched_tokens / meta.activation_tokens
        gathered = estimate(dp, sampler=False) - estimate(1, sampler=False) if dp > 1 else 0
        return estimate(dp, int(measured) + gathered)

    def extrapolation_notes(self) -> list[str]:
        """One line per table a lookup left the grid of (for reports), naming the profile: instances of one
        run or sweep may use several (TP 1 and TP 2), whose tables have the same names."""
        meta = self.profile.meta
        where = meta.path or f"estimated {meta.hardware} {meta.model} tp{meta.tp}"
        # The ops of one file left at one value ('dense.csv:act_fn', 'dense.csv:down_proj', ...) are one line.
        ops_by_note: dict[tuple[str, str], list[str]] = {}
        for table in self.profile.tables():
            if table.out_of_range:
                file, _, op = table.name.partition(":")
                said = table.out_of_range.removeprefix(f"profile table {table.name!r}: ")
                ops_by_note.setdefault((file, said), []).append(op)
        notes = [f"{where}: profile table " + (f"{file!r} ({', '.join(ops)})" if len(ops) > 1 else
                                               repr(f"{file}:{ops[0]}" if ops[0] else file)) + f": {said}"
                 for (file, said), ops in ops_by_note.items()]
        # Decode-only steps look up slices of the attention table (one per batch size): the first left is said.
        left = next((t.out_of_range for t in self._decode_slices.values() if t.out_of_range), None)
        return notes + ([f"{where}: {left}"] if left else [])
