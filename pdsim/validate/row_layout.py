"""What one closed-loop table row asks of the engine, in pdsim's instance keys, or why pdsim cannot express it.

A row's precision columns become the instance's `quantization` and `kv_cache_dtype`; its MoE layout
columns (aiconfigurator's silicon tables: `moe_tp_size`, `moe_ep_size`, `attention_dp_size`) its
`ep_size`. Anything else is refused with a reason, never simulated as something it is not:

- 4-bit weights only where the model's own checkpoint is MXFP4 (gpt-oss: its config's
  `quantization_config`), the one 4-bit scheme pdsim sizes and prices. aiconfigurator's tables label
  gpt-oss's Hopper rows `nvfp4`; Hopper has no NVFP4 and vLLM runs the checkpoint's MXFP4 there.
- fp8 as vLLM loads it: "fp8" (per-tensor/per-channel scales) unless a column says block-wise.
- no attention data parallelism: the closed-loop replay builds one instance, not a DP group of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdsim.errors import PdsimError
from pdsim.models import load_model

BACKENDS = ("vllm",)
MODES = ("agg", "aggregated", "colocated")
WEIGHT_COLUMNS = ("precision", "dtype", "weight_dtype", "quant", "quantization", "quant_mode",
                  "gemm_quant_mode", "moe_quant_mode")
KV_COLUMNS = ("fmha_quant_mode", "kvcache_quant_mode", "kv_cache_dtype")
SIXTEEN_BIT = ("bf16", "bfloat16", "fp16", "float16", "half", "auto", "none")
FP8 = {"fp8": "fp8", "fp8_e4m3": "fp8", "float8_e4m3fn": "fp8", "fp8_block": "fp8_block",
       "fp8_blockwise": "fp8_block", "block_fp8": "fp8_block"}
FP4 = ("fp4", "nvfp4", "mxfp4", "w4a16_mxfp4")
MXFP4 = "mxfp4"


@dataclass(frozen=True)
class RowLayout:
    """Instance keys for one row (None: pdsim's default)."""

    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    ep_size: int | None = None

    def instance_keys(self) -> dict:
        keys: dict = {"quantization": self.quantization, "kv_cache_dtype": self.kv_cache_dtype}
        if self.ep_size is not None:
            keys["ep_size"] = self.ep_size
        return keys

    @property
    def profile_precision(self) -> str:
        """The profile folder's precision (docs/precision.md: quantization when set, else dtype)."""
        return self.quantization or "bfloat16"


def text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip().lower()


def _number(value: object) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


# The layout columns that hold counts, and the least each may hold (0: not recorded).
LAYOUT_COUNTS = {"pp_size": 1, "pp": 1, "attention_dp_size": 0, "moe_tp_size": 0, "moe_ep_size": 0}


def whole_number(row: dict, column: str) -> int | None:
    """A layout column's count (LAYOUT_COUNTS; None: empty, not recorded); PdsimError naming the column and
    value for anything else (text, a fraction, a count below the least): a bad row, not a layout."""
    value = text(row.get(column))
    if not value or value == "nan":
        return None
    number = _number(value)
    least = LAYOUT_COUNTS[column]
    if number is None or not (number.is_integer() and number >= least):  # inf fails is_integer
        raise PdsimError(f"column {column}: expected a whole number >= {least}, got {str(row[column]).strip()!r}")
    return int(number)


def _is_mxfp4_model(model: str | None) -> bool:
    if not model:
        return False
    try:
        spec = load_model(model)
    except PdsimError:
        return False
    return getattr(spec, "expert_weight_bits", None) is not None


def _weights(row: dict, model: str | None) -> tuple[str | None, str | None]:
    """(quantization, reason): the weight precision the row's columns name."""
    kinds: dict[str, str] = {}
    for column in WEIGHT_COLUMNS:
        value = text(row.get(column))
        if not value or value in SIXTEEN_BIT:
            continue
        if value in FP8:
            kinds.setdefault(FP8[value], column)
        elif value in FP4:
            if not _is_mxfp4_model(model):
                return None, (f"{column} {row[column]} (pdsim simulates 4-bit weights only as a checkpoint's own "
                              f"MXFP4 experts, as gpt-oss's; {model or 'the row'} is not one)")
            kinds.setdefault(MXFP4, column)
        else:
            return None, f"{column} {row[column]} (pdsim simulates bf16/fp16, fp8 and gpt-oss's MXFP4 weights only)"
    if "fp8_block" in kinds:  # a generic "fp8" label beside a block-wise one names the same weights
        kinds.pop("fp8", None)
    if len(kinds) > 1:
        named = ", ".join(f"{column} {kind}" for kind, column in kinds.items())
        return None, f"mixed weight precisions ({named}): pdsim runs one scheme per instance"
    kind = next(iter(kinds), None)
    return (None if kind in (None, MXFP4) else kind), None


def _kv(row: dict) -> tuple[str, str | None]:
    for column in KV_COLUMNS:
        value = text(row.get(column))
        if not value or value in SIXTEEN_BIT:
            continue
        if value in ("fp8", "fp8_e4m3", "fp8_e5m2"):
            return value, None
        return "auto", f"{column} {row[column]} (pdsim stores the KV cache in 16 bits or fp8 only)"
    return "auto", None


def _experts(row: dict, model: str | None) -> tuple[int | None, str | None]:
    """(ep_size, reason) from the MoE layout columns (0 or empty: not recorded)."""
    tp = _number(row.get("tp")) or 1
    recorded_dp = whole_number(row, "attention_dp_size")
    dp = recorded_dp or 1
    moe_tp = whole_number(row, "moe_tp_size") or 0
    moe_ep = whole_number(row, "moe_ep_size") or 0
    if recorded_dp and moe_tp and moe_ep and moe_tp * moe_ep > tp * dp:
        return None, f"moe_tp_size {moe_tp:g} x moe_ep_size {moe_ep:g} is more than tp x attention_dp_size"
    if moe_tp and moe_ep and moe_tp * moe_ep > tp:  # not recorded: the experts' GPUs beyond TP are DP ranks
        dp = max(dp, moe_tp * moe_ep / tp)
    if dp > 1:
        return None, (f"attention data parallelism (DP {dp:g} x TP {tp:g}, moe_tp {moe_tp:g}, moe_ep {moe_ep:g}): "
                      "the closed-loop replay builds one instance, not a DP group of them")
    if not moe_ep or not model:
        return None, None
    try:
        is_moe = load_model(model).is_moe
    except PdsimError:
        return None, None  # the simulation names the unknown model
    return (int(moe_ep) if is_moe else None), None


def row_layout(row: dict, model: str | None = None) -> tuple[RowLayout | None, str | None]:
    """(layout, None) when pdsim can simulate the row as measured, else (None, why not).

    model: the pdsim model the row runs (None: its model_path). A layout column whose value is no count
    (pp_size abc, moe_ep_size -1) raises PdsimError: the row is bad, not a layout pdsim lacks."""
    backend = text(row.get("backend"))
    if backend and backend not in BACKENDS:
        return None, f"backend {row['backend']} (pdsim models vLLM's scheduler only)"
    mode = text(row.get("mode"))
    if mode and mode not in MODES:
        return None, f"mode {row['mode']} (closed-loop rows are simulated as one aggregated instance)"
    for column in ("pp_size", "pp"):
        pp = whole_number(row, column)
        if pp is not None and pp > 1:
            return None, f"{column} {row[column]} (the closed-loop replay builds no pipelined instances)"
    model = model or (str(row["model_path"]).strip() if text(row.get("model_path")) else None)
    quantization, why = _weights(row, model)
    if why is None:
        kv_cache_dtype, why = _kv(row)
    if why is None:
        ep_size, why = _experts(row, model)
    if why is not None:
        return None, why
    return RowLayout(quantization, kv_cache_dtype, ep_size), None
