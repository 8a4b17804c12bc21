"""LLMServingSim cluster-config keys beyond pdsim's own schema: what they mean here (docs/moe.md).

`pdsim/config/` calls these from its validators; they work on the raw JSON (before) or on
validated instances (after) and raise pydantic errors whose message is complete, so a bad value
is reported with its JSON path like every other config error.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticCustomError

from pdsim.errors import PdsimError
from pdsim.models import load_model
from pdsim.perf.moe_time import check_placement

if TYPE_CHECKING:
    from pdsim.config import InstanceConfig, InstanceRef

# Keys that change results in LLMServingSim but that pdsim does not model: refused with the reason
# (ignoring them would silently report a different system).
UNSUPPORTED_KEYS: dict[str, str] = {
    "cxl_mem": "CXL memory expansion (weights or KV cache in CXL memory) is not modelled",
    "placement": "per-layer weight/KV placement over NPU, CPU and CXL memory is not modelled",
    "pim_config": "processing-in-memory (PIM) devices are not modelled",
}
# Keys that change no latency or memory figure: accepted, and a note says they are ignored.
NOTED_KEYS: dict[str, str] = {"power": "power model ignored (pdsim reports no energy; latencies unchanged)"}
# vLLM's --kv-cache-dtype values -> the KV bytes pdsim counts (None, "auto": the model's dtype).
KV_CACHE_DTYPES: dict[str, str | None] = {
    "auto": None, "bfloat16": "bfloat16", "float16": "float16", "fp8": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8",
}

# LLMServingSim's per-instance switches for features pdsim does not model: false is accepted
# (the feature off is what pdsim simulates), true is refused with the reason.
OFF_ONLY_KEYS: dict[str, str] = {
    "enable_local_offloading": "KV offloading to CPU memory is not modelled",
    "enable_attn_offloading": "attention offloading is not modelled",
    "enable_sub_batch_interleaving": "sub-batch interleaving is not modelled",
    "enable_block_copy": "KV block copy between memory tiers is not modelled",
}
# LLMServingSim's names for pdsim's own instance keys.
RENAMED_KEYS: dict[str, str] = {"reserve_full_isl": "scheduler_reserve_full_isl"}
# Keys every member of a DP group must agree on (LLMServingSim: tp, pp, ep; vLLM: one model).
# One vLLM engine with --data-parallel-size N: its ranks take the same engine arguments.
DP_GROUP_SHARED_KEYS = ("model_name", "hardware", "tp_size", "pp_size", "ep_size", "dtype", "quantization", "pd_type",
                        "kv_cache_dtype", "block_size", "max_num_seqs", "max_num_batched_tokens",
                        "enable_chunked_prefill", "enable_prefix_caching", "async_scheduling", "enforce_eager",
                        "cudagraph_capture_sizes", "max_cudagraph_capture_size", "cudagraph_mode")


def kv_dtype_of(kv_cache_dtype: str, model_name: str, dtype: str) -> str:
    """The dtype a KV cache is stored in under vLLM's --kv-cache-dtype: `auto` is resolved from the
    checkpoint (ModelSpec.checkpoint_kv_cache_dtype; raises PdsimError for a model pdsim does not know),
    else the activations' dtype. A value vLLM has that the table lacks (fp8_inc, ...): fp8 by its name."""
    if kv_cache_dtype == "auto":
        return load_model(model_name).checkpoint_kv_cache_dtype or dtype
    stored = KV_CACHE_DTYPES[kv_cache_dtype] if kv_cache_dtype in KV_CACHE_DTYPES else \
        "fp8" if "fp8" in kv_cache_dtype else None
    return stored or dtype


def _fmt(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | list | type(None)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def infer_instance_sizes(data: Any) -> Any:
    """LLMServingSim infers num_npus = tp_size * pp_size, or tp_size = num_npus // pp_size; its
    batching limit 0 means unlimited: max_num_batched_tokens is then the model's context length
    (LLMServingSim caps it so) and max_num_seqs that many (no step holds more sequences)."""
    if not isinstance(data, dict):
        return data
    data = _translate_switches(data)
    if data.get("max_num_batched_tokens") == 0 and isinstance(data.get("model_name"), str):
        try:
            data = {**data, "max_num_batched_tokens": load_model(data["model_name"]).max_model_len}
        except PdsimError:
            pass  # the model_name check reports it
    if data.get("max_num_seqs") == 0 and _is_int(data.get("max_num_batched_tokens", 2048)):
        data = {**data, "max_num_seqs": data.get("max_num_batched_tokens", 2048)}
    pp = data.get("pp_size", 1)
    if not _is_int(pp) or pp < 1:
        return data  # the field check reports it
    tp, npus = data.get("tp_size"), data.get("num_npus")
    if tp is None and npus is None and ("npu_num" in data or pp != 1):
        # Without either an instance is one GPU; not where that drops what the config meant.
        why = ("npu_num, LLMServingSim's former key for them, is not read" if "npu_num" in data else
               f"pp_size {pp} needs tp_size x pp_size of them")
        raise PydanticCustomError("npus", "give num_npus or tp_size, the instance's GPUs ({why})", {"why": why})
    if npus is None and _is_int(tp):
        data = {**data, "num_npus": tp * pp}
    elif tp is None and _is_int(npus) and npus >= pp:
        data = {**data, "tp_size": npus // pp}
    former, count = data.get("npu_num"), data.get("num_npus")
    if former is not None and _is_int(count) and former != count:  # not read, but not silently contradicted either
        raise PydanticCustomError("npus", "npu_num {former} (LLMServingSim's former key for the instance's GPUs, not "
                                  "read) but num_npus {count}: remove npu_num or make it agree",
                                  {"former": _fmt(former), "count": count})
    return data


def _translate_switches(data: dict) -> dict:
    for key, why in OFF_ONLY_KEYS.items():
        if key in data:
            if data[key] is True:
                raise PydanticCustomError("unsupported", "{key} true is not supported: {why}", {"key": key, "why": why})
            if data[key] is not False:
                raise PydanticCustomError("unsupported", "{key}: expected true or false, got {got}",
                                          {"key": key, "got": _fmt(data[key])})
            data = {k: v for k, v in data.items() if k != key}
    for theirs, ours in RENAMED_KEYS.items():
        if theirs in data:
            if ours in data and data[ours] != data[theirs]:
                raise PydanticCustomError(
                    "unsupported", "{a} and {b} disagree ({x} and {y}); they are the same setting",
                    {"a": theirs, "b": ours, "x": _fmt(data[theirs]), "y": _fmt(data[ours])})
            data = {**{k: v for k, v in data.items() if k != theirs}, ours: data[theirs]}
    return data


def per_dim_links(data: Any, bounds: dict[str, tuple[float, float]]) -> Any:
    """A per-topology-dimension link_bw / link_latency list (innermost first) -> its outermost
    value, the link between instances, with the list kept in link_*_per_dim. `bounds` holds each key's
    least and greatest value, which every entry must respect (the inner ones price TP and PP traffic)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for key, (low, high) in bounds.items():
        if data.pop(f"{key}_per_dim", None) is not None:  # pdsim's own record of a list (null in its dumps)
            raise PydanticCustomError("choice", "{key}_per_dim is not a config key: give {key} as a list, innermost "
                                      "dimension first", {"key": key})
        unit = "GB/s" if key.endswith("_bw") else "ns"
        value = data.get(key)
        if isinstance(value, list):
            if not value:
                raise PydanticCustomError("choice", "{key}: expected a number or a non-empty list of numbers, got []",
                                          {"key": key})
            for i, v in enumerate(value):
                if not (isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high):
                    raise PydanticCustomError(
                        "choice", "{key}[{i}]: expected a number >= {low} and <= {high} ({unit}), got {got}",
                        {"key": key, "i": i, "low": f"{low:g}", "high": f"{high:g}", "unit": unit, "got": _fmt(v)})
            data[key] = float(value[-1])
            data[f"{key}_per_dim"] = tuple(float(v) for v in value)
    return data


def check_ep(inst: InstanceConfig) -> None:
    model = load_model(inst.model_name)
    ep = inst.effective_ep_size()
    # An uneven split runs, as in vLLM (ExpertPlacement.gpu_experts); more ranks than experts does not.
    if model.is_moe and (why := model.moe.ep_refusal(ep)) is not None:
        raise PydanticCustomError("ep", "{why}", {"why": why})
    if inst.dp_group is None and ep > inst.tp_size:
        raise PydanticCustomError(
            "ep", "ep_size {ep} is more than tp_size {tp}; without a dp_group experts are split over "
            "the instance's own GPUs", {"ep": ep, "tp": inst.tp_size})
    # Each EP rank's experts split over tp / ep GPUs: a whole number of them (once implied, for most models, by
    # ep dividing the experts; a DP group's ranks are checked by check_dp_group).
    if inst.dp_group is None and model.is_moe and inst.tp_size % ep:
        raise PydanticCustomError("ep", "ep_size {ep} does not divide tp_size {tp}; without a dp_group each EP rank's "
                                  "experts are split over tp_size / ep_size of the instance's GPUs",
                                  {"ep": ep, "tp": inst.tp_size})


def check_dp_group(name: str, refs: list[InstanceRef]) -> None:
    first = refs[0].config
    for ref in refs[1:]:
        for key in DP_GROUP_SHARED_KEYS:
            a, b = getattr(ref.config, key), getattr(first, key)
            if a != b:
                raise PydanticCustomError(
                    "dp", "dp_group {g}: {where} has {key} {a}, but {first} has {b}; all members of a DP group "
                    "must agree", {"g": _fmt(name), "where": ref.instance_id, "key": key, "a": _fmt(a),
                                   "first": refs[0].instance_id, "b": _fmt(b)})
    model = load_model(first.model_name)
    why = check_placement(model, first.expert_placement(len(refs))) if model.is_moe else None
    if why:
        raise PydanticCustomError("dp", "dp_group {g}: {why}", {"g": _fmt(name), "why": why})
    if model.is_moe and first.effective_ep_size() == 1:  # each expert split over the group's GPUs
        try:
            first.check_weights_fit(first.expert_placement(len(refs)))
        except PydanticCustomError as e:
            raise PydanticCustomError("dp", "dp_group {g}: {why}", {"g": _fmt(name), "why": str(e)}) from None


def noted_keys(raw: Any) -> list[str]:
    """One line per accepted-but-ignored LLMServingSim setting in a raw config."""
    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}" if where else str(key)
                if key in NOTED_KEYS:
                    found.append(f"{here}: {NOTED_KEYS[key]}")
                if key == "mem_latency" and isinstance(value, int | float) and value:
                    found.append(f"{here}: memory access latency is not modelled (step times come from the "
                                 "profile, or from bandwidth and compute rooflines); ignored")
                if key in ("max_num_seqs", "max_num_batched_tokens") and _is_int(value) and value == 0:
                    found.append(f"{here}: 0 is LLMServingSim's 'unlimited': " + (
                        "max_num_seqs becomes max_num_batched_tokens" if key == "max_num_seqs" else
                        "max_num_batched_tokens becomes the model's context length"))
                if key == "enable_chunked_prefill" and value is False and "max_num_batched_tokens" not in node:
                    found.append(f"{here}: chunked prefill off with no max_num_batched_tokens: the step budget "
                                 "becomes vLLM's for unchunked prefill, the model's context length (at most "
                                 "max_num_seqs times it), and vLLM's profiling forward over it takes its activation "
                                 "memory from the KV cache")
                walk(value, here)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(raw, "")
    return found
