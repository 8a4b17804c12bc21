"""Model architectures, read from Hugging Face `config.json` files.

The files live in `configs/models/<org>/<name>.json` so that a model is referred to by
its Hugging Face id and a new one is added by dropping its published config there.
Only decoder-only architectures whose layer shapes we count exactly are accepted: dense ones
here, and mixture-of-experts ones whose MoE blocks `pdsim/moe.py` reads.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path

from pdsim.bundled import bundled_path
from pdsim.errors import PdsimError, read_json_object
from pdsim.moe import DEEPSEEK_TYPES, MOE_KEYS, MoESpec, moe_from_hf
from pdsim.text import did_you_mean

MODELS_DIR = bundled_path("configs", "models")

DTYPE_BYTES: dict[str, int] = {
    "bfloat16": 2,
    "float16": 2,
    "float32": 4,
    "fp8": 1,
    "int8": 1,
}

# Weight quantisation schemes (InstanceConfig.quantization): fp8 linear weights, 1 byte each, with
# fp32 scales per output channel ("fp8") or per 128x128 block ("fp8_block").
QUANTIZATIONS = ("fp8", "fp8_block")
FP8_WEIGHT_BYTES = 1
SCALE_BYTES = 4  # fp32 weight scales, as vLLM allocates them
FP8_BLOCK = 128
VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE

# model_type -> whether attention has RMSNorm on q and k (Qwen3 per head; OLMoE over the whole projection).
_SUPPORTED_MODEL_TYPES: dict[str, bool] = {
    "llama": False, "mistral": False, "qwen2": False, "qwen3": True, "qwen3_moe": True, "qwen2_moe": False,
    "mixtral": False, "phi3": False, "phimoe": False, "deepseek_v2": False, "deepseek_v3": False, "gpt_oss": False,
    "olmoe": True,
}
# Types whose q and k norms span the whole projection, not one head (vLLM 0.19 OlmoeAttention: RMSNorm of
# num_heads x head_dim and of num_kv_heads x head_dim, held whole on every TP rank, over q and k all-gathered).
WHOLE_QK_NORM_TYPES = ("olmoe",)
BIASED_MODEL_TYPES = ("gpt_oss",)  # biased projections counted (pdsim/gpt_oss.py)
# Types whose `attention_bias: true` puts biases on q, k, v and o (vLLM's LlamaAttention, PhiMoE);
# Qwen2 always has q, k, v biases and none on o. The biases are counted in the weights.
ATTENTION_BIAS_TYPES = ("llama", "mistral", "phimoe")


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        known = ", ".join(DTYPE_BYTES)
        raise PdsimError(f"unknown dtype {dtype!r}; known dtypes: {known}") from None


_NOT_SHAPE = ("name", "checkpoint_quantization", "checkpoint_kv_cache_dtype", "checkpoint_format",
              "checkpoint_weight_scales",
              "max_position_embeddings", "max_model_len", "default_max_model_len", "rope_cache_elements")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # HF model_type: "llama", "mistral", "qwen3"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    has_qk_norm: bool
    max_position_embeddings: int
    moe: MoESpec | None = None  # None: a dense model
    # The checkpoint's own weight quantization (its config.json's quantization_config), which vLLM
    # applies without --quantization: "fp8", "fp8_block" or None (pdsim/models.py, checkpoint_quantization).
    checkpoint_quantization: str | None = None
    # The KV cache dtype vLLM resolves kv_cache_dtype "auto" to for this checkpoint: "fp8" for a ModelOpt one whose
    # quantization_config stores the cache in fp8 (checkpoint_kv_cache_dtype), None for the model's dtype.
    checkpoint_kv_cache_dtype: str | None = None
    # Its quantization_config's quant_method, lower case ("fp8", "compressed-tensors", "modelopt"), None unquantised:
    # vLLM checks a --quantization argument against it.
    checkpoint_format: str | None = None
    # How an fp8 checkpoint scales its weights: "tensor", "channel" or "block" (checkpoint_weight_scales); None
    # unquantised. vLLM allocates a routed expert's scales by it (ModelSpec.expert_scales).
    checkpoint_weight_scales: str | None = None
    # vLLM's rotary cos/sin cache (rope_cache_elements): a buffer loaded with the weights, positions x rotary dims.
    rope_cache_elements: int = 0
    # The longest request vLLM serves (vllm_max_model_len: the most --max-model-len may ask); 0:
    # max_position_embeddings. And vLLM's max_model_len when none is asked (shorter for longrope); 0: the same.
    max_model_len: int = 0
    default_max_model_len: int = 0
    # Bias vectors (held in `dtype`, also under fp8): on q/k/v, on o_proj, on both norms of each layer
    # and the final one (PhiMoE's LayerNorm), on lm_head (PhiMoE).
    qkv_bias: bool = False
    o_bias: bool = False
    norm_bias: bool = False
    lm_head_bias: bool = False
    # A sliding window vLLM would honour on every layer (shorter than the context), which pdsim does not
    # model: it keeps and attends to every token's KV (0: none). gpt-oss's windows are modelled.
    unmodelled_sliding_window: int = 0
    # The q/k norms (has_qk_norm) span the whole projection, not one head (WHOLE_QK_NORM_TYPES).
    whole_qk_norm: bool = False

    def __post_init__(self) -> None:
        if not self.max_model_len:
            object.__setattr__(self, "max_model_len", self.max_position_embeddings)
        if not self.default_max_model_len:
            object.__setattr__(self, "default_max_model_len", self.max_model_len)

    @property
    def shape(self) -> tuple:
        """What its layers compute, every field but its name, its checkpoint's weight format and its length: two
        models of one shape (a checkpoint and its fp8 copy) time alike."""
        return (type(self).__name__, *(getattr(self, f.name) for f in fields(self) if f.name not in _NOT_SHAPE))

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def on_gpu(self, hardware: str, expert_tp: int) -> ModelSpec:
        """The model as vLLM lays its weights out on that GPU: the same, but for MXFP4 experts, which vLLM pads
        to its kernel's alignment (pdsim/gpt_oss.py)."""
        return self

    def with_connector_kv(self) -> ModelSpec:
        """The model as an engine with a KV connector (a P/D instance) caches it: the same, but for
        sliding-window models, whose hybrid KV-cache allocator vLLM turns off there (pdsim/gpt_oss.py)."""
        return self

    def in_engine(self, pd_type: str | None) -> ModelSpec:
        """The model as an instance of this pd_type caches it: a prefill or decode one has a KV connector."""
        return self if pd_type is None else self.with_connector_kv()

    @property
    def dense_mlp_layers(self) -> int:
        return self.num_layers - (self.moe.moe_layers if self.moe else 0)

    # ---- tensor-parallel shapes (vLLM's column/row-parallel split) ----

    def check_tp(self, tp: int) -> None:
        """Raise PdsimError when vLLM could not shard this model `tp` ways."""
        if tp < 1:
            raise PdsimError(f"{self.name}: tensor-parallel size must be >= 1, got {tp}")
        if self.num_heads % tp:
            raise PdsimError(f"{self.name}: {self.num_heads} attention heads cannot be split over tp={tp}")
        kv = self.num_kv_heads
        # vLLM splits KV heads when there are enough, else replicates each on tp/kv shards.
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            raise PdsimError(f"{self.name}: {kv} KV heads cannot be split over tp={tp}")

    def check_shards(self, tp: int, expert_tp: int, quantization: str | None = None) -> None:
        """Raise PdsimError where vLLM refuses to load the weights split so: an MLP width that does not divide
        over TP (linear.py `divide`; fused_moe/layer.py asserts it for the experts over their TP), and under
        128x128 fp8 blocks a row-parallel input or an expert's slice that is no whole number of blocks
        (quantization/utils/fp8_utils.py `validate_fp8_block_shape`, fp8.py `Fp8MoEMethod.create_weights`;
        vLLM lets the merged column-parallel layers, qkv and gate_up, be uneven)."""
        widths = [("intermediate_size", self.intermediate_size)] if self.dense_mlp_layers else []
        if self.moe and self.moe.shared_intermediate:
            widths.append(("the shared experts' intermediate size", self.moe.shared_intermediate))
        for what, width in widths:
            if width % tp:
                raise PdsimError(f"{self.name}: {what} {width} cannot be split over tp={tp}")
        experts = self.moe.expert_intermediate if self.moe and self.architecture != "gpt_oss" else 0  # MXFP4 pads
        if experts % expert_tp:
            raise PdsimError(f"{self.name}: an expert's intermediate size {experts} cannot be split over "
                             f"{expert_tp} GPUs")
        if quantization != "fp8_block":
            return
        slices = [("o_proj's input", self.o_in(tp))] if tp > 1 else []
        slices += [(f"down_proj's input ({what} / {tp})", width // tp) for what, width in widths if tp > 1]
        if experts:
            slices.append((f"an expert's slice ({experts} / {expert_tp})", experts // expert_tp))
        for what, size in slices:
            if size % FP8_BLOCK:
                raise PdsimError(f"{self.name}: {what} is {size}, not a multiple of the fp8 checkpoint's "
                                 f"{FP8_BLOCK}-wide weight blocks, so vLLM cannot load it so split")

    def heads_per_shard(self, tp: int = 1) -> int:
        return self.num_heads // tp

    def kv_heads_per_shard(self, tp: int = 1) -> int:
        return max(1, self.num_kv_heads // tp)

    def q_size(self, tp: int = 1) -> int:
        return self.heads_per_shard(tp) * self.head_dim

    def kv_size(self, tp: int = 1) -> int:
        return self.kv_heads_per_shard(tp) * self.head_dim

    def qkv_out(self, tp: int = 1) -> int:
        return self.q_size(tp) + 2 * self.kv_size(tp)

    def o_in(self, tp: int = 1) -> int:
        return self.q_size(tp)

    def intermediate_per_shard(self, tp: int = 1) -> int:
        return math.ceil(self.intermediate_size / tp)

    def vocab_per_shard(self, tp: int = 1) -> int:
        """Rows of the embedding and LM head one GPU holds: vLLM pads the vocabulary to a multiple of 64, then
        splits it (vocab_parallel_embedding.py, DEFAULT_VOCAB_PADDING_SIZE)."""
        return math.ceil(-(-self.vocab_size // VOCAB_PADDING) * VOCAB_PADDING / tp)

    # ---- sizes ----

    def qk_norm_params(self) -> int:
        """Weights of one layer's q and k norms, whole on every TP rank: one head's width each (Qwen3), or the
        whole projection's (OLMoE: num_heads x head_dim and num_kv_heads x head_dim)."""
        if not self.has_qk_norm:
            return 0
        if self.whole_qk_norm:
            return (self.num_heads + self.num_kv_heads) * self.head_dim
        return 2 * self.head_dim

    def _params_per_shard(self, tp: int, expert_shards: int | Fraction | None = None) -> int:
        h = self.hidden_size
        attn = h * self.qkv_out(tp) + self.o_in(tp) * h
        mlp = 3 * h * self.intermediate_per_shard(tp)  # gate, up, down
        norms = 2 * h + self.qk_norm_params()  # replicated on every shard
        embed = self.vocab_per_shard(tp) * h
        lm_head = 0 if self.tie_word_embeddings else embed
        total = embed + self.num_layers * (attn + norms) + self.dense_mlp_layers * mlp + h + lm_head
        total += self._bias_params(tp)
        if self.moe is not None:
            # Every expert is held somewhere: split over the GPUs holding experts (EP, or TP
            # shards of each expert); the router gate is replicated.
            shards = tp if expert_shards is None else expert_shards
            total += self.moe.moe_layers * self.moe.non_expert_mlp_params(h, tp)
            total += -(-self.moe.routed_params(h) // shards)
        return total

    def param_count(self) -> int:
        return self._params_per_shard(1)

    def active_param_count(self) -> int:
        """Parameters one token uses: all but the routed experts it does not pick."""
        if self.moe is None:
            return self.param_count()
        idle = self.moe.num_experts - self.moe.top_k
        return self.param_count() - self.moe.moe_layers * idle * self.moe.expert_params(self.hidden_size)

    def _unquantized_params_per_shard(self, tp: int) -> int:
        """Parameters that fp8 quantisation leaves in `dtype` (vLLM's Fp8Config, compressed-tensors
        W8A8 and block-wise fp8 quantise only the decoder's linear layers): embeddings, lm_head,
        norms and the MoE router gates (Qwen2-MoE's shared-expert gate, a plain Linear, too)."""
        h = self.hidden_size
        embed = self.vocab_per_shard(tp) * h
        lm_head = 0 if self.tie_word_embeddings else embed
        norms = 2 * h + self.qk_norm_params()
        routers = 0
        if self.moe is not None:
            routers = self.moe.moe_layers * h * (self.moe.num_experts + int(self.moe.shared_expert_gate))
        return embed + lm_head + self.num_layers * norms + h + routers + self._bias_params(tp)

    def _bias_params(self, tp: int) -> int:
        """Bias parameters on one GPU: column-parallel ones (q/k/v, lm_head) are split, the others
        held whole on every rank, as vLLM allocates them."""
        h = self.hidden_size
        per_layer = (self.qkv_out(tp) if self.qkv_bias else 0) + (h if self.o_bias else 0)
        per_layer += 2 * h if self.norm_bias else 0
        once = (h if self.norm_bias else 0) + (self.vocab_per_shard(tp) if self.lm_head_bias else 0)
        return self.num_layers * per_layer + once

    def _linear_shapes(self, tp: int, expert_shards: int | Fraction | None = None,
                       routed: bool = True) -> list[tuple[float, int, int]]:
        """(matrices per GPU, output rows, input columns) of the quantised linear layers on one GPU,
        merged as vLLM merges them (qkv_proj, gate_up_proj); routed experts as a fraction (none: `routed` False)."""
        h, inter = self.hidden_size, self.intermediate_per_shard(tp)
        shapes = [(self.num_layers, self.qkv_out(tp), h), (self.num_layers, h, self.o_in(tp)),
                  (self.dense_mlp_layers, 2 * inter, h), (self.dense_mlp_layers, h, inter)]
        if self.moe is not None and routed:
            e_inter = self.moe.expert_intermediate
            experts = self._experts_per_gpu(tp, expert_shards)
            shapes += [(experts, 2 * e_inter, h), (experts, h, e_inter)]
        if self.moe is not None and self.moe.shared_intermediate:
            s_inter = -(-self.moe.shared_intermediate // tp)
            shapes += [(self.moe.moe_layers, 2 * s_inter, h), (self.moe.moe_layers, h, s_inter)]
        return shapes

    def weight_bytes(self, dtype: str, tp: int = 1, expert_shards: int | Fraction | None = None,
                     quantization: str | None = None) -> int:
        """Bytes of weights one GPU holds: a TP shard of the dense weights and, for a MoE model,
        1/`expert_shards` of the routed experts (default: split over the tp GPUs; a Fraction where the experts
        split unevenly, ExpertPlacement.weight_shards).

        quantization (docs/precision.md): None keeps every weight in `dtype`; "fp8" stores the
        linear layers at 1 byte with one fp32 scale per output channel (compressed-tensors W8A8
        fp8, the published FP8 checkpoints); "fp8_block" at 1 byte with one fp32 scale per 128x128
        block (DeepSeek-style block-wise fp8). Embeddings, lm_head, norms and routers stay in `dtype`."""
        total = self._params_per_shard(tp, expert_shards)
        if quantization is None:
            return total * dtype_bytes(dtype)
        kept = self._unquantized_params_per_shard(tp)
        scales = self._weight_scales(tp, expert_shards, quantization)
        return kept * dtype_bytes(dtype) + (total - kept) * FP8_WEIGHT_BYTES + scales * SCALE_BYTES

    def _experts_per_gpu(self, tp: int, expert_shards: int | Fraction | None) -> float:
        """Routed expert matrices (all MoE layers) one GPU holds, as a fraction: split over `expert_shards` GPUs."""
        assert self.moe is not None
        return self.moe.moe_layers * self.moe.num_experts / (tp if expert_shards is None else expert_shards)

    def _weight_scales(self, tp: int, expert_shards: int | Fraction | None, quantization: str) -> int:
        """fp32 weight scales one GPU holds: per output channel or 128 x 128 block of each linear layer
        (scale_count), but a fixed few per routed expert where vLLM scales experts per tensor (expert_scales)."""
        per_expert = self.expert_scales(quantization)
        if per_expert is None or self.moe is None:
            return scale_count(self._linear_shapes(tp, expert_shards), quantization)
        # A TP-split expert keeps its whole per-tensor scales on each GPU; counted as a fraction here, as its
        # matrices are, they are a few KB short (E x 3 fp32 per layer at most).
        experts = math.ceil(self._experts_per_gpu(tp, expert_shards) * per_expert)
        return scale_count(self._linear_shapes(tp, expert_shards, routed=False), quantization) + experts

    def expert_scales(self, quantization: str | None) -> int | None:
        """fp32 weight scales vLLM 0.19 allocates per routed expert where it scales experts per tensor, else None
        (per channel or block: they follow the matrices' shape, scale_count). A per-tensor fp8 checkpoint (HF fp8
        without weight_block_size, ModelOpt FP8, compressed-tensors `tensor`) loads w13 scales of (E, 2), gate and
        up each, and w2 scales of (E,) (quantization/fp8.py Fp8MoEMethod.create_weights, modelopt.py
        ModelOptFp8MoEMethod, compressed_tensors_moe.py): 3; `--quantization fp8` over an unquantised checkpoint
        quantises each expert's w13 and w2 whole, (E,) and (E,) (fp8.py Fp8OnlineMoEMethod, after loading): 2."""
        if quantization != "fp8":
            return None
        if self.checkpoint_quantization is None:
            return 2
        return 3 if self.checkpoint_weight_scales == "tensor" else None

    def rope_cache_bytes(self, dtype: str) -> int:
        """Bytes of vLLM's rotary cos/sin cache on each GPU, held in the activations' `dtype` (gpt-oss's in fp32, as its
        model builds it): part of what vLLM counts as the weights' memory."""
        return self.rope_cache_elements * (4 if self.architecture == "gpt_oss" else dtype_bytes(dtype))

    def kv_bytes_per_token(self, dtype: str, tp: int = 1) -> int:
        """KV-cache bytes one token occupies on one TP shard (K and V, all layers)."""
        return 2 * self.num_layers * self.kv_size(tp) * dtype_bytes(dtype)


def scale_count(shapes: list[tuple[float, int, int]], quantization: str) -> int:
    if quantization == "fp8":
        return math.ceil(sum(n * out for n, out, _ in shapes))
    if quantization == "fp8_block":
        b = FP8_BLOCK
        return math.ceil(sum(n * -(-out // b) * -(-cols // b) for n, out, cols in shapes))
    raise PdsimError(f"unknown quantization {quantization!r}; known: {', '.join(QUANTIZATIONS)}")


def known_models(models_dir: Path | None = None) -> list[str]:
    root = Path(models_dir) if models_dir is not None else MODELS_DIR
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.json"))


# Model configs that a run brings with it (LLMServingSim's run layout: model_config.json beside the
# cluster config), for names pdsim does not bundle: name -> file. Bundled names are never replaced: the
# registry lasts as long as the process, and a bundled name means the bundled model to every later run.
_RUN_MODEL_FILES: dict[str, Path] = {}
_COMPARED_MODEL_FILES: set[tuple[str, Path]] = set()  # files of bundled names, compared with the bundled config


def use_model_file(name: str, path: str | Path, quantizations: frozenset[str | None] = frozenset()) -> str | None:
    """Take `path` (a Hugging Face config.json) as model `name` when pdsim bundles no config of that name.
    Returns what to tell the user: that it was taken, or, for a bundled name, where the file differs
    from the bundled config (which is kept); None when there is nothing to say. The file is read and
    checked at once (errors name it). A file of another weight format than the bundled model's is another
    checkpoint: refused, unless the instances (`quantizations`, as they give it) ask for the file's own."""
    path = Path(path).resolve()
    if _RUN_MODEL_FILES.get(name) == path or (name, path) in _COMPARED_MODEL_FILES:
        return None  # taken, or compared with the bundled config, already: said once
    if name not in known_models():
        _load_model_file(name, path)
        _RUN_MODEL_FILES[name] = path
        return f"model {name!r} from {path} (pdsim bundles no config of that name)"
    try:
        spec = _load_model_file(name, path)
    except PdsimError as e:  # not used, so not in the way: said, and the bundled config runs
        if _has_quantization_config(path):  # but its weights are not the bundled model's
            raise PdsimError(f"{e}; its quantization_config makes it another checkpoint than pdsim's bundled "
                             f"{name!r} (the instance's model_name)") from None
        _COMPARED_MODEL_FILES.add((name, path))
        return f"model {name!r}: the bundled config is used; {path} beside it cannot be compared with it ({e})"
    bundled = _load_model(name, _bundled_models_root())
    own = spec.checkpoint_quantization
    if ((own, spec.checkpoint_format) != (bundled.checkpoint_quantization, bundled.checkpoint_format)
            and not (own is not None and quantizations == {own})):  # the instances ask for the file's own
        raise PdsimError(f"{path}: its quantization_config makes the checkpoint's weights {_weights(spec)}, but "
                         f"pdsim's bundled {name!r} (the instance's model_name) is {_weights(bundled)}: the file is "
                         "another checkpoint than the name; give model_name that checkpoint's own id (pdsim then "
                         "takes the file)" + (f", or the instance quantization {own!r}" if own else ""))
    _COMPARED_MODEL_FILES.add((name, path))
    differs = [f"{f.name} {getattr(spec, f.name)!r} there, {getattr(bundled, f.name)!r} bundled"
               for f in fields(ModelSpec) if getattr(spec, f.name) != getattr(bundled, f.name)]
    if not differs:
        return None
    return (f"model {name!r}: {path} differs from pdsim's bundled config of that name ({'; '.join(differs)}); "
            "the bundled one is used (give the instance a model_name pdsim does not bundle to use the file)")


def _has_quantization_config(path: Path) -> bool:
    try:
        return "quantization_config" in read_json_object(path)
    except PdsimError:  # not JSON: nothing says what it holds
        return False


def _weights(model: ModelSpec) -> str:
    """A checkpoint's weight format, as a message names it."""
    return model.checkpoint_quantization or model.checkpoint_format or "unquantised"


def load_model(name: str, models_dir: Path | None = None) -> ModelSpec:
    if models_dir is None and name in _RUN_MODEL_FILES:
        return _load_model_file(name, _RUN_MODEL_FILES[name])
    return _load_model(name, Path(models_dir).resolve() if models_dir is not None else _bundled_models_root())


@functools.cache
def _bundled_models_root() -> Path:
    # Resolved once: config validation looks a model up for every instance, and resolving is a dozen stats.
    return MODELS_DIR.resolve()


@functools.cache
def _load_model_file(name: str, path: Path) -> ModelSpec:
    return _spec_from_hf(name, path, read_json_object(path))


@functools.cache
def _load_model(name: str, root: Path) -> ModelSpec:
    path = root / f"{name}.json"
    # The resolve check keeps names like "../x" from escaping the models directory.
    if not path.is_file() or root not in path.resolve().parents:
        names = known_models(root)
        raise PdsimError(f"unknown model {name!r}{did_you_mean(name, names)}; known models: "
                         f"{', '.join(names) or '(none)'} (configs in {root})")
    return _spec_from_hf(name, path, read_json_object(path))


def checkpoint_quantization(path: Path, raw: dict) -> str | None:
    """The fp8 scheme of a quantised checkpoint's `quantization_config`, as vLLM reads it: "fp8_block"
    for 128x128 block scales, "fp8" for per-tensor or per-channel scales, None for an unquantised
    checkpoint. Other schemes are refused with the field named (gpt-oss's MXFP4: pdsim/gpt_oss.py)."""
    q = raw.get("quantization_config")
    if q is None:
        return None
    where = f"{path}: field 'quantization_config"
    if not isinstance(q, dict):
        raise PdsimError(f"{where}': expected an object, got {q!r}")
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8":  # HF fp8 (Qwen3-*-FP8, DeepSeek-V3): weight_block_size gives block scales
        block = q.get("weight_block_size")
        if block is not None and block != [128, 128]:  # pdsim's shard checks and GEMM tables: 128 x 128 alone
            raise PdsimError(f"{where}.weight_block_size': {block!r} is not modelled (128 x 128 blocks are, as "
                             "published fp8 checkpoints have them)")
        return "fp8_block" if block else "fp8"
    if method == "modelopt" and str(q.get("quant_algo", "")).upper() == "FP8":
        return "fp8"
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        if not isinstance(groups, dict):
            raise PdsimError(f"{where}.config_groups': expected an object of quantization groups, got {groups!r}")
        weights = [g.get("weights") or {} for g in groups.values() if isinstance(g, dict)]
        if not all(isinstance(w, dict) for w in weights):
            raise PdsimError(f"{where}.config_groups': expected each group's 'weights' to be an object, got "
                             f"{weights!r}")
        if weights and all(w.get("num_bits") == 8 and w.get("type") == "float" for w in weights):
            return "fp8_block" if any(w.get("strategy") == "block" for w in weights) else "fp8"
        raise PdsimError(f"{where}.config_groups': only 8-bit float (fp8) weights are modelled, got {weights!r}")
    raise PdsimError(f"{where}.quant_method': {method!r} is not modelled (fp8, fp8 block-wise and gpt-oss's "
                     "MXFP4 are)")


def checkpoint_weight_scales(raw: dict) -> str | None:
    """How an fp8 checkpoint's quantization_config scales its weights, as vLLM reads it: "block" (HF fp8's
    weight_block_size, compressed-tensors `block`), "channel" (compressed-tensors `channel`) or "tensor" (HF fp8
    otherwise, ModelOpt FP8, compressed-tensors `tensor`); None unquantised or where checkpoint_quantization
    refuses it."""
    q = raw.get("quantization_config")
    if not isinstance(q, dict):
        return None
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8":
        return "block" if q.get("weight_block_size") else "tensor"
    if method == "modelopt":
        return "tensor"
    if method == "compressed-tensors" and isinstance(q.get("config_groups"), dict):
        weights = [g["weights"] for g in q["config_groups"].values()
                   if isinstance(g, dict) and isinstance(g.get("weights"), dict)]
        strategies = {str(w.get("strategy", "tensor")).lower() for w in weights}
        return next((s for s in ("block", "channel", "tensor") if s in strategies), None)
    return None


def _quant_method(raw: dict) -> str | None:
    """A checkpoint's quantization_config's quant_method, lower case; None where it has none."""
    q = raw.get("quantization_config")
    method = q.get("quant_method") if isinstance(q, dict) else None
    return str(method).lower() if method else None


def _positive(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


def rope_cache_elements(raw: dict, head_dim: int) -> int:
    """Elements of the cos/sin cache vLLM 0.19's rotary embedding registers as a buffer (model_executor/layers/
    rotary_embedding: one instance per model, get_rope caches it): positions x rotary dims, the positions YaRN's
    original_max_position_embeddings x factor, linear and dynamic scaling's max_position_embeddings x factor,
    longrope's short and long caches together (original + max_position_embeddings), else max_position_embeddings."""
    params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    params = params if isinstance(params, dict) else {}
    positions = _positive(raw.get("max_position_embeddings")) or 0.0
    kind = _rope_kind(params)
    factor = _positive(params.get("factor"))
    original = _original_positions(raw, params)
    if kind in ("yarn", "deepseek_yarn", "deepseek_llama_scaling") and factor and original:
        positions = original * factor
    elif kind in ("linear", "dynamic") and factor:
        positions *= factor
    elif kind in ("longrope", "su") and original:
        positions += original  # Phi-3's short cache beside the long one
    # vLLM's patch_rope_parameters copies the config's own over its RoPE parameters' (transformers 4)
    partial = _positive(raw.get("partial_rotary_factor") or params.get("partial_rotary_factor")) or 1.0
    rotary_dim = _positive(raw.get("qk_rope_head_dim")) or head_dim * min(partial, 1.0)  # MLA: its rope part
    return int(positions) * int(rotary_dim)


# The config keys vLLM takes a model's length from, the smallest given (vLLM 0.19
# transformers_utils/model_arch_config_convertor.py, derive_max_model_len_and_key).
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
VLLM_UNKNOWN_MAX_LEN = 2048  # vLLM's assumption where the config gives no length


def _rope_parameters(raw: dict) -> list[tuple[str, dict]]:
    """The config's RoPE parameters with the field they sit in: `rope_scaling` (or `rope_parameters`), one dict per
    layer type where transformers 5 nests them so (`rope_parameters.<layer type>`); [] for none."""
    name = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    params = raw.get(name)
    if not isinstance(params, dict):
        return []
    if params and all(isinstance(value, dict) for value in params.values()):
        return [(f"{name}.{layer}", value) for layer, value in params.items()]
    return [(name, params)]


def _rope_kind(params: dict) -> str:
    return str(params.get("rope_type") or params.get("type") or "default")


def _original_positions(raw: dict, params: dict) -> float | None:
    """original_max_position_embeddings, the config's own before its RoPE parameters' (vLLM 0.19's
    patch_rope_parameters copies the top-level one over the nested one under transformers 4; PhiMoE's sits only
    in rope_scaling)."""
    return _positive(raw.get("original_max_position_embeddings") or params.get("original_max_position_embeddings"))


def vllm_max_model_len(raw: dict) -> int:
    """The longest request vLLM 0.19 (and 0.12) serves a model (config/model.py, _get_and_verify_max_len): the
    config's length, scaled by its RoPE factor where the scaling stretches the trained positions (YaRN from
    original_max_position_embeddings; linear, dynamic; not llama3's or longrope's, whose length is already the
    scaled one). The most --max-model-len may ask, and vLLM's default but for longrope (vllm_default_max_model_len);
    pdsim, with no such setting, admits up to it."""
    lengths = [length for key in _LENGTH_KEYS if (length := _positive(raw.get(key)))]
    derived = _positive(raw.get("model_max_length")) or (min(lengths) if lengths else VLLM_UNKNOWN_MAX_LEN)
    factor = 1.0
    for _, p in _rope_parameters(raw):
        kind = _rope_kind(p)
        if kind in ("su", "longrope", "llama3"):
            continue
        factor = _positive(p.get("factor")) or (1.0 if "factor" in p else factor)  # a null factor: vLLM takes 1
        if kind == "yarn" and (original := _original_positions(raw, p)):
            derived = original
    return int(derived * factor)


def vllm_default_max_model_len(raw: dict) -> int:
    """vLLM's max_model_len when none is asked: vllm_max_model_len, but for longrope (Phi-3; its legacy name "su",
    which vLLM's config patching renames) its original_max_position_embeddings, which keeps short sequences on the
    short factors (config/model.py)."""
    for _, p in _rope_parameters(raw):
        if _rope_kind(p) in ("longrope", "su") and (original := _original_positions(raw, p)):
            return int(original)
    return vllm_max_model_len(raw)


# The most tokens a model's length may be (config.base.MAX_TOKENS, which bounds every token count pdsim takes).
_MOST_POSITIONS = 10**9


def check_length_fields(path: Path, raw: dict) -> None:
    """The length and RoPE fields the model's max length and rotary cache are derived from, as vLLM could use them:
    lengths whole numbers from 1 to 10^9, RoPE factors finite numbers > 0 (vLLM multiplies by them; a string or
    0 breaks it), partial_rotary_factor at most 1. The derived length is bounded too."""
    def number(where: str, value: object, whole: bool, most: float | None) -> None:
        if value is None:
            return
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if ok and whole:
            ok = value == int(value) and value >= 1
        if not ok or (most is not None and value > most):
            kind = "a whole number >= 1" if whole else "a finite number > 0"
            bound = f" and at most {most:,}" if most is not None else ""
            raise PdsimError(f"{path}: field '{where}': expected {kind}{bound}, got {value!r}")

    for key in (*_LENGTH_KEYS, "original_max_position_embeddings", "qk_rope_head_dim"):
        number(key, raw.get(key), True, _MOST_POSITIONS)
    number("partial_rotary_factor", raw.get("partial_rotary_factor"), False, 1)
    for where, params in _rope_parameters(raw):
        number(f"{where}.factor", params.get("factor"), False, None)
        number(f"{where}.original_max_position_embeddings", params.get("original_max_position_embeddings"), True,
               _MOST_POSITIONS)
        number(f"{where}.partial_rotary_factor", params.get("partial_rotary_factor"), False, 1)
    longest = vllm_max_model_len(raw)
    if not 1 <= longest <= _MOST_POSITIONS:
        shown = f"{longest:,}" if longest < 1e15 else f"{longest:.3g}"
        raise PdsimError(f"{path}: its length fields and RoPE factor give a max model length of {shown}, as vLLM "
                         f"derives it; expected 1 to {_MOST_POSITIONS:,} tokens")


def checkpoint_kv_cache_dtype(raw: dict) -> str | None:
    """"fp8" where vLLM 0.19 runs kv_cache_dtype "auto" as fp8 for this checkpoint, else None (the model's dtype).
    vLLM resolves "auto" from a ModelOpt checkpoint's `kv_cache_scheme` or `kv_cache_quant_algo` only
    (utils/torch_utils.py `resolve_kv_cache_dtype_string`); any other scheme there falls back to "auto"."""
    q = raw.get("quantization_config")
    if not isinstance(q, dict) or not str(q.get("quant_method", "")).startswith("modelopt"):
        return None
    inner = q.get("quantization", q) if isinstance(q.get("quantization", q), dict) else q
    algo = (inner.get("kv_cache_scheme") or q.get("kv_cache_scheme") or inner.get("kv_cache_quant_algo")
            or q.get("kv_cache_quant_algo"))
    if isinstance(algo, dict):
        fp8 = algo.get("dynamic") is False and algo.get("num_bits") == 8 and algo.get("type") == "float"
        return "fp8" if fp8 else None
    return "fp8" if isinstance(algo, str) and algo.lower() == "fp8" else None


def _check_supported(path: Path, model_type: str, raw: dict) -> None:
    """Refuse what pdsim does not model, naming the field."""
    if model_type not in _SUPPORTED_MODEL_TYPES:
        supported = ", ".join(_SUPPORTED_MODEL_TYPES)
        raise PdsimError(
            f"{path}: field 'model_type': {model_type!r} is not supported; supported: {supported}"
        )
    if raw.get("mlp_bias") and model_type not in BIASED_MODEL_TYPES:
        raise PdsimError(f"{path}: field 'mlp_bias': biased MLP projections are not modelled")
    if raw.get("attention_bias") and model_type not in (*BIASED_MODEL_TYPES, *ATTENTION_BIAS_TYPES):
        raise PdsimError(f"{path}: field 'attention_bias': biased attention projections are not modelled for "
                         f"model_type {model_type!r}")
    if model_type in MOE_KEYS and model_type != "qwen2_moe" and raw.get("shared_expert_intermediate_size"):
        raise PdsimError(f"{path}: field 'shared_expert_intermediate_size': shared experts are not modelled yet")


# transformers' configs of these types window only with use_sliding_window true (their default is false).
USE_SLIDING_WINDOW_TYPES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")


def _sliding_window(raw: dict, model_type: str) -> int:
    """The window of a model whose every layer vLLM would run with sliding-window attention, else 0."""
    window = raw.get("sliding_window")
    windowed = raw.get("use_sliding_window") is True or model_type not in USE_SLIDING_WINDOW_TYPES
    if model_type == "gpt_oss" or not windowed:
        return 0
    max_len = raw.get("max_position_embeddings")
    if isinstance(window, int) and not isinstance(window, bool) and isinstance(max_len, int) and 0 < window < max_len:
        return window
    return 0


def _spec_from_hf(name: str, path: Path, raw: dict) -> ModelSpec:
    def field(key: str, kind: type = int, default: object = None) -> object:
        if key not in raw or raw[key] is None:
            if default is not None:
                return default
            raise PdsimError(f"{path}: missing field {key!r}")
        value = raw[key]
        # bool is an int subclass; a "true" layer count is a broken file, not 1.
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok or (kind is int and value <= 0):
            expected = "a positive integer" if kind is int else kind.__name__
            raise PdsimError(f"{path}: field {key!r}: expected {expected}, got {value!r}")
        return value

    model_type = field("model_type", str)
    _check_supported(path, model_type, raw)
    check_length_fields(path, raw)
    hidden = field("hidden_size")
    heads = field("num_attention_heads")
    # HF defaults: no num_key_value_heads means MHA; no head_dim means hidden / heads.
    kv_heads = field("num_key_value_heads", int, heads)
    if hidden % heads and raw.get("head_dim") is None:
        raise PdsimError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    head_dim = field("head_dim", int, hidden // heads)
    if model_type in WHOLE_QK_NORM_TYPES and head_dim * heads != hidden:  # vLLM's OlmoeAttention ignores head_dim
        raise PdsimError(f"{path}: field 'head_dim': {head_dim}, but vLLM's OLMoE attention takes hidden_size / "
                         f"num_attention_heads = {hidden / heads:g}")
    if heads % kv_heads:
        raise PdsimError(
            f"{path}: field 'num_key_value_heads': {kv_heads} does not divide num_attention_heads {heads}"
        )
    num_layers = field("num_hidden_layers")
    spec = ModelSpec(
        name=name,
        architecture=model_type,
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=field("intermediate_size"),
        vocab_size=field("vocab_size"),
        tie_word_embeddings=field("tie_word_embeddings", bool, False) is True,
        has_qk_norm=_SUPPORTED_MODEL_TYPES[model_type],
        max_position_embeddings=field("max_position_embeddings"),
        moe=moe_from_hf(path, model_type, raw, num_layers),
        checkpoint_quantization=checkpoint_quantization(path, raw) if model_type != "gpt_oss" else None,
        checkpoint_kv_cache_dtype=checkpoint_kv_cache_dtype(raw),
        checkpoint_format=_quant_method(raw),
        checkpoint_weight_scales=checkpoint_weight_scales(raw) if model_type != "gpt_oss" else None,
        rope_cache_elements=rope_cache_elements(raw, head_dim),
        max_model_len=vllm_max_model_len(raw),
        default_max_model_len=vllm_default_max_model_len(raw),
        qkv_bias=model_type in ("qwen2", "qwen2_moe") or (model_type in ATTENTION_BIAS_TYPES
                                                          and raw.get("attention_bias") is True),
        o_bias=model_type in ATTENTION_BIAS_TYPES and raw.get("attention_bias") is True,
        norm_bias=model_type == "phimoe",  # nn.LayerNorm with bias in vLLM's PhiMoE
        lm_head_bias=model_type == "phimoe" and raw.get("lm_head_bias") is True,
        unmodelled_sliding_window=_sliding_window(raw, model_type),
        whole_qk_norm=model_type in WHOLE_QK_NORM_TYPES,
    )
    if model_type in DEEPSEEK_TYPES:  # MLA attention: pdsim/mla.py
        from pdsim.mla import with_mla

        return with_mla(spec, path, raw)
    if model_type == "gpt_oss":  # sliding-window layers, sinks, MXFP4 experts: pdsim/gpt_oss.py
        from pdsim.gpt_oss import with_gpt_oss

        return with_gpt_oss(spec, path, raw)
    return spec
