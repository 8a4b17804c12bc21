"""Expand a base cluster config into every P:D split (and the colocated baseline) of a GPU budget, with
the decode pool as plain instances or as data-parallel groups (MoE DP attention, docs/moe.md)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from pdsim.cli_checks import split_items
from pdsim.config import ClusterConfig, InstanceConfig, cluster_config_from_dict
from pdsim.config.models import effective_ep_size
from pdsim.errors import PdsimError
from pdsim.models import ModelSpec, load_model
from pdsim.perf.moe_time import ExpertPlacement, check_placement
from pdsim.text import listed

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
    dp_decode: int = 1  # decode DP-group size; num_decode then counts DP groups
    pp_prefill: int = 1  # pipeline stages of each prefill (for colocated: each) instance
    pp_decode: int = 1

    @property
    def colocated(self) -> bool:
        return self.num_decode == 0

    @property
    def ep_decode(self) -> int:
        """Expert-parallel size of a decode (for colocated: every) instance as it runs (a MoE instance without
        ep_size runs LLMServingSim's default, ep_size = tp_size; InstanceConfig.effective_ep_size); 1 where the
        experts are split over each GPU's tensor slices (ep_size 1, vLLM's default) and for any dense model."""
        role = None if self.colocated else "decode"
        for node in self.raw["nodes"]:
            for inst in node["instances"]:
                if inst.get("pd_type") == role:
                    return effective_ep_size(inst["model_name"], inst["tp_size"], inst.get("ep_size"))
        return 1

    @property
    def ratio(self) -> str:
        """The P:D ratio as plots label it ("3:5", "colo")."""
        return "colo" if self.colocated else f"{self.num_prefill}:{self.num_decode}"

    def config(self) -> ClusterConfig:
        return cluster_config_from_dict(self.raw, f"<sweep {self.label}>")


def parse_int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in split_items(text, option)]
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
    for part in (p.upper() for p in split_items(text, "--ratios")):
        p, sep, d = part.replace("P", ":").replace("D", "").partition(":")
        try:
            pair = (int(p), int(d))
        except ValueError:
            raise PdsimError(f"--ratios: expected 'all' or items like 3:5 or 3P5D, got {part!r}") from None
        if not sep:
            raise PdsimError(f"--ratios: expected 'all' or items like 3:5 or 3P5D, got {part!r}")
        if min(pair) < 1:
            raise PdsimError(f"--ratios: {part!r}: a P:D split needs at least 1 prefill and 1 decode instance "
                             "(the colocated baseline is --colocated)")
        out.append(pair)
    if not out:  # else only the colocated baseline would run, as if no split had been asked for
        raise PdsimError(f"--ratios: expected 'all' or items like 3:5 or 3P5D, got {text!r}")
    return out


# A colocated engine does both roles' work: a base without a colocated instance lends it its prefill
# instance (the one the splits' prefill instances copy) with the largest batch limits of any of its
# instances, since each role's limit was chosen as enough for that role's work.
COLOCATED_BATCH_LIMITS = ("max_num_seqs", "max_num_batched_tokens")
# Fields a split sets itself, left out when the note names what the roles' instances differ in.
_LAYOUT_FIELDS = {"pd_type", "tp_size", "num_npus", "pp_size", "dp_group", "ep_size", *COLOCATED_BATCH_LIMITS}


def _template(base: ClusterConfig, pd_type: str | None) -> dict[str, Any]:
    """The base instance to copy for this role: the first of that pd_type if the base has it, else the
    first; a colocated instance from a P/D base: colocated_from_pd."""
    refs = base.instances()
    chosen = next((r for r in refs if r.config.pd_type == pd_type), None)
    if chosen is None and pd_type is None:
        return colocated_from_pd(base)[0]
    return _as_written((chosen or refs[0]).config)


def _as_written(instance: InstanceConfig) -> dict[str, Any]:
    """An instance's fields as its config gave them: a default left out stays out of the configs a sweep
    writes, so a run of one that changes a setting gets that setting's own default with it (vLLM's step
    budget without chunked prefill depends on whether one was given: config.models.unchunked_budget)."""
    return instance.model_dump(mode="json", exclude_unset=True)


def colocated_from_pd(base: ClusterConfig) -> tuple[dict[str, Any], str | None]:
    """The colocated template, and, for a base without a colocated instance, what it took from where
    (None when the base has a colocated instance, which is then copied as is)."""
    refs = base.instances()
    colocated = next((r for r in refs if r.config.pd_type is None), None)
    if colocated is not None:
        return _as_written(colocated.config), None
    roles = {role: [r.config for r in refs if r.config.pd_type == role] for role in ("prefill", "decode")}
    roles = {role: configs for role, configs in roles.items() if configs}  # a P/D base has both
    first = next(iter(roles.values()))[0]
    template = _as_written(first)
    taken: list[str] = []
    for key in COLOCATED_BATCH_LIMITS:
        by_role = {role: max(getattr(c, key) for c in configs) for role, configs in roles.items()}
        largest = max(by_role.values())
        if any(key in c.model_fields_set for configs in roles.values() for c in configs):
            template[key] = largest  # else every instance has the default, which stays unwritten
        whose = [role for role, value in by_role.items() if value == largest]
        label = "both roles'" if len(whose) > 1 else f"{whose[0]}'s"
        taken.append(f"{key} {largest} ({label})")
    what = (f"the base config has no colocated instance: the colocated baseline copies its {first.pd_type} "
            f"instance with the largest batch limits of either role, {', '.join(taken)}")
    mine, other = first.model_dump(mode="json"), roles.get("decode", [first])[0].model_dump(mode="json")
    differ = [k for k in mine if k not in _LAYOUT_FIELDS and mine[k] != other[k]]
    if differ:
        what += f"; its {', '.join(differ)}: the prefill instance's, not the decode instance's"
    return template, what


def _instance(template: dict[str, Any], pd_type: str | None, tp: int, pp: int = 1, dp_group: str | None = None,
              ep_size: int | None = None) -> dict[str, Any]:
    """A copy of the template as one instance of `pp` stages of `tp` GPUs. Outside a DP group the experts
    are split over a stage's GPUs: the template's ep_size capped at tp (None stays None, which runs as ep_size =
    tp_size, LLMServingSim's default; the run says vLLM's differs)."""
    inst = copy.deepcopy(template)
    if dp_group is None and ep_size is None and inst.get("ep_size") is not None:
        ep_size = min(inst["ep_size"], tp)
    inst.update(pd_type=pd_type, tp_size=tp, num_npus=tp * pp, pp_size=pp, dp_group=dp_group, ep_size=ep_size)
    return inst


def _dp_group(template: dict[str, Any], tp: int, dp: int, name: str, pp: int = 1,
              expert_parallel: bool = True) -> list[dict[str, Any]]:
    """`dp` decode ranks of `pp` stages of `tp` GPUs in one DP group with the experts split over each
    stage's ranks: whole experts per GPU (vLLM's --data-parallel-size dp --enable-expert-parallel: EP size =
    DP x TP), or, without expert parallelism, every expert split over them (ep_size 1, docs/moe.md).
    The ranks are one dict: a variant's dicts are read, never changed (see _Pools.splits)."""
    return [_instance(template, "decode", tp, pp, name, _group_ep_size(tp, dp, expert_parallel))] * dp


def _group_ep_size(tp: int, dp: int, expert_parallel: bool) -> int:
    """A decode DP group's ep_size: DP x TP with expert parallelism, else 1 (each expert over the group)."""
    return dp * tp if expert_parallel else 1


def dp_layout_problem(model: ModelSpec, tp: int, dp: int, node_gpus: int, expert_parallel: bool = True) -> str | None:
    """Why a decode DP group of `dp` ranks of TP `tp` cannot be built, or None."""
    if dp == 1:
        return None
    if not model.is_moe:
        return (f"{model.name} is dense: vLLM runs dense DP ranks as independent engines, which the "
                f"splits with {dp}x more TP{tp} decode instances already cover")
    if dp * tp > node_gpus:
        return (f"DP {dp} x TP {tp} = {dp * tp} GPUs does not fit a node of {node_gpus} GPUs (the sweep lays a DP "
                "group out on one node; vLLM also runs them across nodes, which a config of its own can give)")
    return check_placement(model, ExpertPlacement(tp, _group_ep_size(tp, dp, expert_parallel), dp))


def _node_settings(base: ClusterConfig, pd_type: str | None) -> dict[str, Any]:
    """A node's own settings (cpu_mem, nic_bw, intra_node_bw, ...) for a unit of this role: those of the base node
    holding the role's template instance (_template), so that a base with its prefill and decode GPUs on nodes of
    their own keeps each role's links; the first node's for a role the base lacks."""
    ref = next((r for r in base.instances() if r.config.pd_type == pd_type),
               next((r for r in base.instances() if r.config.pd_type == "prefill"), None) if pd_type is None else None)
    node = base.nodes[ref.node_index if ref is not None else 0]
    return node.model_dump(mode="json", exclude={"instances", "num_instances"})


def _pack(base: ClusterConfig, units: list[list[dict[str, Any]]], node_gpus: int) -> dict[str, Any]:
    """The base config with its nodes replaced: nodes of node_gpus GPUs filled in order (prefill instances
    come first), like a real placement would; a unit (one instance, or a DP group's ranks) is never split
    over nodes. Every other field (links, router, kv_transfer) is the base's; each node keeps the settings of the
    base node its role came from (_node_settings), and units whose nodes differ never share one (an A100 decode
    instance of a base with its A100s on a node of their own is not put beside the H100s, on their links)."""
    nodes: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    settings_of: dict[str | None, dict[str, Any]] = {}  # by role: looked up once, not per unit of thousands
    used = node_gpus  # forces a first node
    for unit in units:
        size = sum(inst["num_npus"] for inst in unit)
        role = unit[0]["pd_type"]
        if role not in settings_of:
            settings_of[role] = _node_settings(base, role)
        settings = settings_of[role]
        if used + size > node_gpus or settings != nodes[-1][0]:
            nodes.append((settings, []))
            used = 0
        nodes[-1][1].extend(unit)
        used += size
    raw = base.model_dump(mode="json")  # replacing keys in place keeps the config's field order
    # The KV transfer settings as written: one left to pdsim's measured defaults stays so (the run says it is).
    raw["kv_transfer"] = base.kv_transfer.model_dump(mode="json", exclude_unset=True)
    for key in ("link_bw", "link_latency"):  # a per-dimension list is written as the config gives it
        per_dim = raw.pop(f"{key}_per_dim")
        if per_dim is not None:
            raw[key] = list(per_dim)
    raw["num_nodes"] = len(nodes)
    raw["nodes"] = [{"num_instances": len(insts), **copy.deepcopy(settings), "instances": insts}
                    for settings, insts in nodes]
    return raw


@dataclass(frozen=True)
class _Pools:
    """What every split of one expansion shares: the base, its templates and the node size."""

    base: ClusterConfig
    gpus: int
    node_gpus: int
    wanted: set[tuple[int, int]] | None
    expert_parallel: bool = True  # how a decode DP group splits the experts

    def template(self, pd_type: str | None) -> dict[str, Any]:
        return _template(self.base, pd_type)

    def splits(self, tp_p: int, tp_d: int, dp: int, pp_p: int = 1, pp_d: int = 1) -> _Layout:
        """Every n_p x tp_p x pp_p + n_d x dp x tp_d x pp_d == gpus split (n_d decode instances, or DP
        groups). The splits share their instance dicts: at a budget of thousands of GPUs a copy per GPU per
        split costs GBs, and nothing changes a variant's dicts (each worker validates its own copy)."""
        p_unit, unit = tp_p * pp_p, dp * tp_d * pp_d
        prefill = [_instance(self.template("prefill"), "prefill", tp_p, pp_p)]
        d_tmpl = self.template("decode")
        single = [_instance(d_tmpl, "decode", tp_d, pp_d)]
        groups: dict[int, list[dict[str, Any]]] = {}  # DP group g's ranks (groups differ only in their name)

        def decode_units(n: int) -> list[list[dict[str, Any]]]:
            if dp == 1:
                return [single] * n
            for g in range(len(groups), n):
                groups[g] = _dp_group(d_tmpl, tp_d, dp, f"decode{g}", pp_d, self.expert_parallel)
            return [groups[g] for g in range(n)]

        staged = "" if pp_p == pp_d == 1 else f"-pp{pp_p}/{pp_d}"
        layout = _Layout(self._pack([prefill, *decode_units(1)]),
                         f"prefill of {p_unit} GPU(s) + decode of {unit} GPU(s) (tp{tp_p}/{tp_d}{staged}"
                         f"{f', DP {dp}' if dp > 1 else ''})")
        for n_p in range(1, self.gpus // p_unit + 1):
            rest = self.gpus - n_p * p_unit
            if rest < unit or rest % unit:
                continue
            n_d = rest // unit
            if self.wanted is not None and (n_p, n_d) not in self.wanted:
                continue
            if dp == 1:
                label = f"{n_p}P{n_d}D-tp{tp_p}/{tp_d}{staged}"
            else:
                label = f"{n_p}P{n_d}D-tp{tp_p}/dp{dp}xtp{tp_d}{staged}" + ("" if self.expert_parallel else "-noep")
            layout.variants.append(Variant(label, n_p, n_d, tp_p, tp_d, self.gpus,
                                           self._pack([prefill] * n_p + decode_units(n_d)), dp, pp_p, pp_d))
        return layout

    def colocated(self, tp: int, pp: int) -> _Layout:
        """gpus / (tp x pp) instances of this layout (none when it does not divide the budget)."""
        units = [[_instance(self.template(None), None, tp, pp)]]
        layout = _Layout(self._pack(units), f"colocated of {tp * pp} GPU(s) (tp{tp}{f', pp{pp}' if pp > 1 else ''})")
        if self.gpus % (tp * pp) == 0:
            n = self.gpus // (tp * pp)
            label = f"colo-{n}x-tp{tp}" + (f"-pp{pp}" if pp > 1 else "")
            layout.variants.append(Variant(label, n, 0, tp, tp, self.gpus, self._pack(units * n),
                                           pp_prefill=pp, pp_decode=pp))
        return layout

    def _pack(self, units: list[list[dict[str, Any]]]) -> dict[str, Any]:
        return _pack(self.base, units, self.node_gpus)


@dataclass
class _Layout:
    """The variants of one instance layout, and the smallest config of that layout (one unit of each
    role): whether a config is refused depends on its instances and DP groups, not on how many there are,
    so that config is validated for all of them."""

    probe: dict[str, Any]
    what: str  # the layout in words, for a reason it is left out
    variants: list[Variant] = field(default_factory=list)

    def refusal(self) -> str | None:
        """The first line of the probe config's refusal, its instance named by role, or None."""
        try:
            cluster_config_from_dict(self.probe, "<sweep>")
        except PdsimError as exc:
            first = str(exc).splitlines()[0].removeprefix("<sweep>: ")
            # The instances the error names (one, or several where it is the same in each), by role.
            where = re.match(r"(nodes\[\d+\]\.instances\[\d+\](, )?)+: ", first)
            if where is None:
                return first
            places = re.findall(r"nodes\[(\d+)\]\.instances\[(\d+)\]", where[0])
            roles = list(dict.fromkeys(self.probe["nodes"][int(n)]["instances"][int(i)]["pd_type"] or "colocated"
                                       for n, i in places))
            return f"{' and '.join(roles)} instance{'s' if len(roles) > 1 else ''}: {first[where.end():]}"
        return None


def expand(
    base: ClusterConfig,
    gpus: int,
    ratios: list[tuple[int, int]] | None = None,
    tp_prefill: list[int] | None = None,
    tp_decode: list[int] | None = None,
    colocated: bool = True,
    node_gpus: int | None = None,
    dp_decode: list[int] | None = None,
    skipped: list[str] | None = None,
    pp_prefill: list[int] | None = None,
    pp_decode: list[int] | None = None,
    expert_parallel: bool = True,
) -> list[Variant]:
    """Every (num_prefill x tp_prefill x pp_prefill + num_decode x dp_decode x tp_decode x pp_decode == gpus)
    split, prefill-light first, then the colocated baselines (gpus / (tp x pp) instances, for each layout
    of the prefill or decode lists that divides the budget). An instance's stages share a node.

    `ratios` restricts the splits to these (prefill, decode) instance counts (a DP group counts as one
    decode instance). `dp_decode` (default [1]): decode DP-group sizes, each group `dp` ranks of TP
    `tp_decode` with the experts split over all dp x tp GPUs (MoE models): whole experts per GPU, or with
    `expert_parallel` False each expert split over them (vLLM's DP without expert parallelism). A layout vLLM could not
    build, or a variant whose config is refused (e.g. its weights do not fit), is left out with its
    reason appended to `skipped`; an error only when nothing is left."""
    if gpus < 1 or (gpus == 1 and not colocated):
        alone = " (one GPU runs the colocated baseline alone: leave out --no-colocated)" if gpus == 1 else ""
        raise PdsimError(f"--gpus: a P:D split needs at least 2 GPUs, got {gpus}{alone}")
    models = list(dict.fromkeys(ref.config.model_name for ref in base.instances()))
    if len(models) > 1:  # the templates would take one model's instances and drop the other's silently
        raise PdsimError(f"the base config serves {len(models)} models ({', '.join(models)}); a sweep splits one "
                         "model's GPU budget: keep the instances of one model")
    tp_prefill, tp_decode, dp_decode = tp_prefill or [1], tp_decode or [1], dp_decode or [1]
    pp_prefill, pp_decode = pp_prefill or [1], pp_decode or [1]
    base_node_gpus = max(sum(i.num_npus for i in node.instances) for node in base.nodes)
    node_gpus = node_gpus or max(NODE_GPUS, base_node_gpus)
    reasons = skipped if skipped is not None else []
    for role, tps, pps in (("prefill", tp_prefill, pp_prefill), ("decode", tp_decode, pp_decode)):
        # A layout too large for a node is skipped with its reason; only when none of a role's fits is it an error.
        too_big = [(tp, pp) for tp in tps for pp in pps if tp * pp > node_gpus]
        for tp, pp in too_big:
            what = f"TP {tp}" if pp == 1 else f"TP {tp} x PP {pp}"
            if len(too_big) == len(tps) * len(pps):
                raise PdsimError(f"{what} ({role}) does not fit in a node of {node_gpus} GPUs")
            if role == "prefill":  # decode layouts are skipped in the loop below, with the DP size
                reasons.append(f"{what} (prefill): does not fit in a node of {node_gpus} GPUs")
    pools = _Pools(base, gpus, node_gpus, set(ratios) if ratios is not None else None, expert_parallel)
    model = load_model(pools.template("decode")["model_name"])
    layouts: list[_Layout] = []
    prefill_layouts = [(tp, pp) for tp in tp_prefill for pp in pp_prefill if tp * pp <= node_gpus]
    for tp_p, pp_p in prefill_layouts if gpus > 1 else []:  # one GPU holds no split: the colocated baseline only
        for tp_d in tp_decode:
            for dp in dp_decode:
                layout_problem = dp_layout_problem(model, tp_d, dp, node_gpus, expert_parallel)
                for pp_d in pp_decode:
                    problem = layout_problem
                    if problem is None and dp * tp_d * pp_d > node_gpus:
                        problem = f"{dp * tp_d * pp_d} GPUs do not fit a node of {node_gpus} GPUs"
                    if problem is not None:
                        reason = f"decode DP {dp} x TP {tp_d}" + (f" x PP {pp_d}" if pp_d > 1 else "") + f": {problem}"
                        if reason not in reasons:  # once per decode layout
                            reasons.append(reason)
                        continue
                    layouts.append(pools.splits(tp_p, tp_d, dp, pp_p, pp_d))
    if ratios is not None:  # a ratio no layout fits into the budget is said, not dropped silently
        found = {(v.num_prefill, v.num_decode) for layout in layouts for v in layout.variants}
        reasons += [f"{p}:{d}: no layout of --tp-prefill/--tp-decode/--pp-prefill/--pp-decode/--decode-dp puts "
                    f"{p} prefill and {d} decode instances on exactly {gpus} GPUs"
                    for p, d in ratios if (p, d) not in found]
    if colocated:
        layouts += [pools.colocated(tp, pp) for tp, pp in sorted(
            set(prefill_layouts) | {(tp, pp) for tp in tp_decode for pp in pp_decode if tp * pp <= node_gpus})]
    variants = []
    for layout in layouts:
        if not layout.variants:
            if ratios is None or layout.what.startswith("colocated"):  # else the ratios' own reasons say it
                reasons.append(f"{layout.what}: no whole number of them makes exactly {gpus} GPUs")
            continue
        refusal = layout.refusal()  # in the parent, with the config's own message
        if refusal is None:
            variants += layout.variants
        else:
            reasons.append(f"{listed([v.label for v in layout.variants])}: {refusal}")  # one line per layout
    if not variants:
        why = "".join(f"\n  {r}" for r in reasons)
        raise PdsimError(f"no P:D split of {gpus} GPUs matches --ratios/--tp-prefill/--tp-decode/--pp-prefill/"
                         f"--pp-decode/--decode-dp{why}")
    return variants
