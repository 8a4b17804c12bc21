"""Reading a cluster config file: CLI overrides, validation, and error messages that name the
file, the JSON path of the field and what was expected."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pdsim.config.base import MEM_UTIL_OVERRIDE, OVERRIDABLE_KEYS, UTILIZATION_OVER_MEM_UTIL, _fmt
from pdsim.config.models import ClusterConfig
from pdsim.errors import ConfigError, PdsimError, read_json_object
from pdsim.llmservingsim_keys import RENAMED_KEYS, noted_keys
from pdsim.models import use_model_file

_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "none_required": "null",
    "finite_number": "a finite number",
}

# Error types raised by our validators, whose message is already complete.
_OWN_ERROR_TYPES = frozenset(
    {
        "unsupported",
        "ep",
        "dp",
        "choice",
        "unknown_key",
        "unknown_model",
        "pp",
        "npus",
        "budget",
        "tp",
        "weights",
        "memory",
        "count",
        "pd",
        "empty",
        "bandwidth",
    }
)

_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = _fmt(err.get("input"))
    if kind == "missing":
        return "missing required field"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {got}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"expected a number {_BOUNDS[kind]} {bound}, got {got}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {got}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in _OWN_ERROR_TYPES:
        return err["msg"]
    msg = err["msg"].removeprefix("Value error, ")
    return f"{msg}, got {got}" if "input" in err and not isinstance(err["input"], dict | list) else msg


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: the same one in the same field of several instances (an option applied to every
    instance) names them together."""
    places: dict[tuple[str, str], list[str]] = {}
    for err in exc.errors():
        field = next((part for part in reversed(err["loc"]) if isinstance(part, str)), "")
        places.setdefault((_describe(err), field), []).append(_loc(err["loc"]))
    lines = []
    for (what, _), wheres in places.items():
        where = ", ".join(w for w in wheres[:3] if w) + (f" and {len(wheres) - 3} more" if len(wheres) > 3 else "")
        lines.append(f"{source}: {where}: {what}" if where else f"{source}: {what}")
    return "\n".join(lines)


def raw_instances(raw: Any) -> list[dict]:
    """The instance objects of an unvalidated cluster config; broken parts are skipped (validation
    reports them)."""
    return [inst for _, inst in _placed_instances(raw)]


def _placed_instances(raw: Any) -> list[tuple[str, dict]]:
    """raw_instances with where each is ("nodes[0].instances[1]")."""
    if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), list):
        return []
    return [(f"nodes[{n}].instances[{i}]", inst) for n, node in enumerate(raw["nodes"])
            if isinstance(node, dict) and isinstance(node.get("instances"), list)
            for i, inst in enumerate(node["instances"]) if isinstance(inst, dict)]


def _apply_overrides(raw: Any, overrides: dict[str, object]) -> dict[str, list[str]]:
    """Set the overrides on every instance; per key, the instances (and values) whose own other value each replaced."""
    overrides = dict(overrides)
    engine_util = overrides.pop(UTILIZATION_OVER_MEM_UTIL, None)
    mem_util = overrides.pop(MEM_UTIL_OVERRIDE, None)
    unknown = sorted(set(overrides) - set(OVERRIDABLE_KEYS))
    if unknown:
        raise ConfigError(f"cannot override {', '.join(unknown)}; overridable: {', '.join(OVERRIDABLE_KEYS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    replaced: dict[str, list[str]] = {}
    for where, inst in _placed_instances(raw):
        for theirs, ours in RENAMED_KEYS.items():  # an override replaces the setting under either name
            if ours in given and theirs in inst:
                inst.setdefault(ours, inst.pop(theirs))
        for key in sorted(given.keys() & inst.keys()):
            if inst[key] is not None and inst[key] != given[key]:
                replaced.setdefault(key, []).append(f"{where} ({_fmt(inst[key])})")
        inst.update(given)
        if engine_util is not None:
            if isinstance(inst.get("npu_mem"), dict):
                inst["npu_mem"].pop("mem_util", None)
            inst["gpu_memory_utilization"] = engine_util
        if mem_util is not None and isinstance(inst.get("npu_mem"), dict):  # else the config's own error says it
            own = inst["npu_mem"].get("mem_util")
            if own is not None and own != mem_util:
                replaced.setdefault(MEM_UTIL_OVERRIDE, []).append(f"{where} ({_fmt(own)})")
            inst["npu_mem"]["mem_util"] = mem_util
    return replaced


RUN_MODEL_CONFIG = "model_config.json"


def cluster_config_from_dict(raw: Any, source: str = "<config>") -> ClusterConfig:
    if isinstance(raw, dict) and "nodes" not in raw and ("architectures" in raw or "model_type" in raw):
        # A first mistake worth its own words: the model's config where the cluster's goes.
        raise ConfigError(f"{source}: a Hugging Face model config (architectures, model_type), not a cluster config "
                          f"(num_nodes, nodes[].instances[]); a run reads the model's config as {RUN_MODEL_CONFIG} "
                          "beside the cluster config")
    try:
        return ClusterConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from None


def config_inputs(path: Path | None) -> list[Path]:
    """The files reading the cluster config at `path` may read (itself, and the model config beside it):
    what no output may be written over. A folder there is refused as reading it would be, before an output
    inside it is blamed on the output."""
    if path is not None and path.is_dir():
        raise ConfigError(f"{path}: cannot read cluster config (Is a directory)")
    return [] if path is None else [path, path.parent / RUN_MODEL_CONFIG]


def use_run_model_config(path: Path, raw: dict) -> None:
    """LLMServingSim's run layout keeps the model's Hugging Face config as model_config.json beside
    the cluster config: it gives the config's one model when pdsim bundles none of that name; where
    pdsim bundles one that reads differently, that is said."""
    beside = path.parent / RUN_MODEL_CONFIG
    # A name that is not a string is left to the config's validation, which names the field.
    names = {name if isinstance(name, str) else None for name in
             (inst.get("model_name") for inst in raw_instances(raw))}
    if len(names) != 1 or not beside.is_file() or None in names:
        return
    name = next(iter(names))
    # The weight formats the instances ask for (LLMServingSim's dtype "fp8" is fp8 weights).
    asked = frozenset(inst.get("quantization") or ("fp8" if inst.get("dtype") == "fp8" else None)
                      for inst in raw_instances(raw))
    try:
        if (note := use_model_file(name, beside, asked)) is not None:
            print(f"note: {path}: {note}", file=sys.stderr)
    except PdsimError as e:
        raise ConfigError(f"{path}: model {name!r}: {e}") from None


def load_cluster_config(path: str | Path, overrides: dict[str, object] | None = None,
                        from_command_line: bool = False) -> ClusterConfig:
    """from_command_line: the overrides are options the user gave, and where one replaces a value an instance
    sets, that is said (LLMServingSim's flags give way to an instance's own value)."""
    path = Path(path)
    raw = read_json_object(path, ConfigError, "cluster config")
    replaced = _apply_overrides(raw, overrides) if overrides else {}
    use_run_model_config(path, raw)
    cfg = cluster_config_from_dict(raw, str(path))
    if untyped := [where for where, inst in _placed_instances(raw) if "pd_type" not in inst]:
        print(f"note: {path}: {', '.join(untyped[:3])}{' ...' if len(untyped) > 3 else ''}: no pd_type, read as null "
              "(colocated, prefill and decode); LLMServingSim requires the key", file=sys.stderr)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    said = [f"{option_shown(key, given[key])} replaces the {_config_key(key)} of {', '.join(where)} in the config "
            "(pdsim's options apply to every instance; LLMServingSim's keep an instance's own value)"
            for key, where in replaced.items()] if from_command_line else []
    for note in dict.fromkeys([*said, *(_command_line_note(n, given) for n in [*noted_keys(raw), *_model_notes(cfg)])]):
        print(f"note: {note}" if note.startswith("--") else f"note: {path}: {note}", file=sys.stderr)
    return cfg


def _config_key(key: str) -> str:
    """An override's key as the config writes it (mem_util is npu_mem's)."""
    return "npu_mem.mem_util" if key == MEM_UTIL_OVERRIDE else key


def _command_line_note(note: str, given: dict[str, object]) -> str:
    """A note on an instance field that an option set names the option, once, not each instance's field."""
    where, _, text = note.partition(": ")
    key = where.rsplit(".", 1)[-1]
    return f"{option_shown(key, given[key])}: {text}" if key in given else note


def option_shown(key: str, value: object) -> str:
    """The command-line option that set an instance key to `value`: a switch by the flag's name."""
    option = {MEM_UTIL_OVERRIDE: "--npu-memory-utilization"}.get(key, f"--{key.replace('_', '-')}")
    if isinstance(value, bool):  # the options are --x/--no-x pairs, some named the other way round
        on, off = {"enable-chunked-prefill": ("--enable-chunked-prefill", "--disable-chunked-prefill"),
                   "disable-custom-all-reduce": ("--disable-custom-all-reduce", "--enable-custom-all-reduce"),
                   "async-scheduling": ("--async-scheduling", "--sync-scheduling")}.get(
            key.replace("_", "-"), (option, f"--no-{option[2:]}"))
        return on if value else off
    return f"{option} {value}"


def _model_notes(cfg: ClusterConfig) -> list[str]:
    """What pdsim reads otherwise than LLMServingSim in the config's DP groups, and leaves out of its models,
    said once per group and model."""
    from pdsim.models import load_model

    notes = []
    for group, refs in cfg.dp_groups().items():
        if len(refs) > 1 and refs[0].config.effective_ep_size() == 1 and load_model(refs[0].config.model_name).is_moe:
            notes.append(f"dp_group {group!r}: ep_size 1 over its {len(refs)} members, which LLMServingSim refuses "
                         "(it wants a multiple of them); pdsim reads it as vLLM's data parallelism without expert "
                         "parallelism, every expert split over the group's GPUs (docs/moe.md)")
    budgets_seen: set[tuple[str, int]] = set()  # said once per model and budget, at its first instance
    for ref in cfg.instances():
        name, budget = ref.config.model_name, ref.config.max_num_batched_tokens
        if not ref.config.enable_chunked_prefill or (name, budget) in budgets_seen:
            continue
        budgets_seen.add((name, budget))
        context = load_model(name).max_model_len
        if budget > context:
            notes.append(f"nodes[{ref.node_index}].instances[{ref.instance_index}].max_num_batched_tokens: "
                         f"{budget:,} is above {name}'s context length {context:,}: LLMServingSim's scheduler caps "
                         "a step there, vLLM's (and pdsim's) does not")
    refs = cfg.instances()
    prefilled = {ref.config.model_name for ref in refs if ref.config.pd_type == "prefill"}
    for ref in refs:
        if ref.config.pd_type == "decode" and prefilled and ref.config.model_name not in prefilled:
            notes.append(f"nodes[{ref.node_index}].instances[{ref.instance_index}]: a decode instance of "
                         f"{ref.config.model_name}, which no prefill instance serves: it never receives a request")
    # A trace's requests name no model: the router sends each to any instance that takes arrivals.
    if len(arrivals := sorted({ref.config.model_name for ref in refs if ref.config.pd_type != "decode"})) > 1:
        notes.append(f"the instances that take arrivals serve {len(arrivals)} models ({', '.join(arrivals)}): a trace "
                     "names no model, so the router sends each request to any of them, and the reports pool every "
                     "model's requests")
    for name in dict.fromkeys(ref.config.model_name for ref in refs):
        window = load_model(name).unmodelled_sliding_window
        if window:
            notes.append(f"model {name}: sliding_window {window} is not modelled: vLLM keeps and attends to the "
                         f"last {window} tokens of a sequence, pdsim to all of them (KV use and attention beyond "
                         f"{window} tokens over-counted)")
    return notes

