"""Expand a base cluster config into every P:D split (and the colocated baseline) of a GPU budget."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pdsim.config import ClusterConfig, cluster_config_from_dict
from pdsim.errors import PdsimError

NODE_GPUS = 8  # GPUs per node when the base config does not say more


@dataclass(frozen=True)
class Variant:
    """One configuration to try: a label, its shape, and the full config as a JSON-able dict
    (dicts pickle cheaply to workers and Ray tasks; each worker validates its own copy)."""

    label: str
    num_prefill: int  # for a colocated variant: its number of instances
    num_decode: int  # 0 for colocated
    tp_prefill: int
    tp_decode: int
    gpus: int
    raw: dict[str, Any]

    @property
    def colocated(self) -> bool:
        return self.num_decode == 0

    @property
    def ratio(self) -> str:
        """The P:D ratio as plots label it ("3:5", "colo")."""
        return "colo" if self.colocated else f"{self.num_prefill}:{self.num_decode}"

    def config(self) -> ClusterConfig:
        return cluster_config_from_dict(self.raw, f"<sweep {self.label}>")


def parse_int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PdsimError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise PdsimError(f"{option}: expected positive integers, got {text!r}")
    return sorted(set(values))


def parse_ratios(text: str) -> list[tuple[int, int]] | None:
    """'all' -> None (every split); else '1:7,2:6' or '1P7D,2P6D' as (prefill, decode) instance counts."""
    if text.strip().lower() == "all":
        return None
    out = []
    for part in (p.strip().upper() for p in text.split(",") if p.strip()):
        p, sep, d = part.replace("P", ":").replace("D", "").partition(":")
        try:
            pair = (int(p), int(d))
        except ValueError:
            raise PdsimError(f"--ratios: expected 'all' or items like 3:5 or 3P5D, got {part!r}") from None
        if not sep or min(pair) < 1:
            raise PdsimError(f"--ratios: expected 'all' or items like 3:5 or 3P5D, got {part!r}")
        out.append(pair)
    return out


def _template(base: ClusterConfig, pd_type: str | None) -> dict[str, Any]:
    """The base instance to copy for this role: one of that pd_type if the base has it, else the first."""
    refs = base.instances()
    chosen = next((r for r in refs if r.config.pd_type == pd_type), refs[0])
    return chosen.config.model_dump(mode="json")


def _instance(template: dict[str, Any], pd_type: str | None, tp: int) -> dict[str, Any]:
    inst = copy.deepcopy(template)
    inst.update(pd_type=pd_type, tp_size=tp, num_npus=tp, pp_size=1)
    return inst


def _pack(base: ClusterConfig, instances: list[dict[str, Any]], node_gpus: int) -> dict[str, Any]:
    """The base config with its nodes replaced: nodes of node_gpus GPUs filled in order (prefill instances
    come first), like a real placement would. Every other field (links, router, kv_transfer) is the base's,
    and each node keeps the base's first node's own settings (cpu_mem, nic_bw, intra_node_bw, ...)."""
    nodes: list[list[dict[str, Any]]] = []
    used = node_gpus  # forces a first node
    for inst in instances:
        if used + inst["num_npus"] > node_gpus:
            nodes.append([])
            used = 0
        nodes[-1].append(inst)
        used += inst["num_npus"]
    node_settings = base.nodes[0].model_dump(mode="json", exclude={"instances", "num_instances"})
    raw = base.model_dump(mode="json")  # replacing keys in place keeps the config's field order
    for key in ("link_bw", "link_latency"):  # a per-dimension list is written as the config gives it
        per_dim = raw.pop(f"{key}_per_dim")
        if per_dim is not None:
            raw[key] = list(per_dim)
    raw["num_nodes"] = len(nodes)
    raw["nodes"] = [{"num_instances": len(insts), **copy.deepcopy(node_settings), "instances": insts}
                    for insts in nodes]
    return raw


def expand(
    base: ClusterConfig,
    gpus: int,
    ratios: list[tuple[int, int]] | None = None,
    tp_prefill: list[int] | None = None,
    tp_decode: list[int] | None = None,
    colocated: bool = True,
    node_gpus: int | None = None,
) -> list[Variant]:
    """Every (num_prefill x tp_prefill + num_decode x tp_decode == gpus) split, prefill-light first,
    then the colocated baselines (gpus / tp instances, for each TP that divides the budget).

    `ratios` restricts the splits to these (prefill, decode) instance counts."""
    if gpus < 2:
        raise PdsimError(f"--gpus: a P:D split needs at least 2 GPUs, got {gpus}")
    tp_prefill = tp_prefill or [1]
    tp_decode = tp_decode or [1]
    base_node_gpus = max(sum(i.num_npus for i in node.instances) for node in base.nodes)
    node_gpus = node_gpus or max(NODE_GPUS, base_node_gpus)
    if max(tp_prefill + tp_decode) > node_gpus:
        raise PdsimError(f"TP {max(tp_prefill + tp_decode)} does not fit in a node of {node_gpus} GPUs")
    wanted = set(ratios) if ratios is not None else None
    p_tmpl, d_tmpl, c_tmpl = _template(base, "prefill"), _template(base, "decode"), _template(base, None)
    variants: list[Variant] = []
    for tp_p in tp_prefill:
        for tp_d in tp_decode:
            for n_p in range(1, gpus // tp_p + 1):
                rest = gpus - n_p * tp_p
                if rest < tp_d or rest % tp_d:
                    continue
                n_d = rest // tp_d
                if wanted is not None and (n_p, n_d) not in wanted:
                    continue
                insts = [_instance(p_tmpl, "prefill", tp_p) for _ in range(n_p)]
                insts += [_instance(d_tmpl, "decode", tp_d) for _ in range(n_d)]
                variants.append(Variant(f"{n_p}P{n_d}D-tp{tp_p}/{tp_d}", n_p, n_d, tp_p, tp_d, gpus,
                                        _pack(base, insts, node_gpus)))
    if colocated:
        for tp in sorted(set(tp_prefill) | set(tp_decode)):
            if gpus % tp:
                continue
            n = gpus // tp
            insts = [_instance(c_tmpl, None, tp) for _ in range(n)]
            variants.append(Variant(f"colo-{n}x-tp{tp}", n, 0, tp, tp, gpus, _pack(base, insts, node_gpus)))
    if not variants:
        raise PdsimError(f"no P:D split of {gpus} GPUs matches --ratios/--tp-prefill/--tp-decode")
    for v in variants:
        v.config()  # fail early, in the parent, with the config's own message (e.g. weights do not fit)
    return variants
