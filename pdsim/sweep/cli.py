"""`pdsim sweep` and `pdsim search`: which P:D ratio (and TP per pool) serves a workload within its
SLOs on the fewest GPUs."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import pandas as pd

from pdsim.bundled import InputFile, InputFolder, bundled_path
from pdsim.cli_checks import OutputFolder, existing_folder, number_in, slo_ms, split_items
from pdsim.config.base import MAX_NPUS
from pdsim.config.load import RUN_MODEL_CONFIG, config_inputs
from pdsim.errors import PdsimError
from pdsim.outputs import OutputSet, check_output_dir, check_output_file, json_text
from pdsim.sweep.rows import settings_path
from pdsim.text import listed, plural
from pdsim.workload.readers import dataset_options
from pdsim.workload.trace import MAX_REQUESTS

if TYPE_CHECKING:
    from pdsim.config.models import ClusterConfig
    from pdsim.progress import ProgressBar
    from pdsim.sweep.expand import Variant
    from pdsim.sweep.runner import Executor
    from pdsim.sweep.search import Bisection

# A million requests a second is beyond any cluster a config describes; past it a run's trace would not fit memory.
MAX_RATE_PER_S = 1e6

SWEEP_COLUMNS = ["label", "rate_per_s", "ttft_p90_ms", "tpot_p90_ms", "e2e_p90_ms", "output_tok_s_per_gpu",
                 "attain_ttft", "attain_tpot", "attain_both", "served_req_s", "stable"]
PLOTS = ("goodput", "latency", "pareto")
WINNER_TRACE = "search_winner_trace.jsonl"  # after --arrival poisson: the winner's probe trace, for `pdsim run`
OUTPUT_NAMES = ("runs.csv", "probes.csv", "sweep.csv", "search.csv", WINNER_TRACE,
                *(f"{stem}_{plot}.png" for stem in ("sweep", "search") for plot in PLOTS))
# Also written in --out, and kept: what a run streams to, and what a --resume compares with.
KEPT_NAMES = ("runs.partial.csv", "probes.partial.csv", "runs.settings.json", "probes.settings.json")
# In OUT/configs/: the files the last run wrote there. Only those may a later run replace or remove, so a
# user's own configs in that folder are never deleted.
WRITTEN_LIST = "written_by_pdsim.txt"

SEARCH_COLUMNS = ["label", "goodput_req_s", "goodput_req_s_per_gpu", "first_fail_req_s", "first_fail_why",
                  "metrics_at_req_s", "attain_both",
                  "ttft_p90_ms", "tpot_p90_ms", "est_capacity_req_s", "est_req_s_per_gpu", "est_bottleneck",
                  "sim_over_est"]


def recorded_configs(configs: Path) -> set[str]:
    """The config files an earlier run recorded writing in `configs` (plain .json names only: an edited list
    cannot point outside the folder)."""
    listed_file = configs / WRITTEN_LIST
    if not listed_file.is_file():
        return set()
    names = listed_file.read_text(encoding="utf-8", errors="replace").split()
    return {name for name in names if name.endswith(".json") and Path(name).name == name and name not in (".", "..")}


def _common(f: Callable) -> Callable:
    options = [*_space_options(), *_slo_options(), *_run_options(), *_execution_options()]
    for opt in reversed(options):
        f = opt(f)
    return dataset_options(f, rescales_itself=True)


def _space_options() -> list[Callable]:
    """What is tried: the base config, the trace, the GPU budget and the splits of it."""
    return [
        click.option("--base-config", required=True, type=InputFile("cluster config"),
                     help="Cluster config whose instance (model, hardware, memory, knobs) and link are the template."),
        click.option("--dataset", required=True, type=InputFile("dataset"),
                     help="Trace (pdsim JSONL, a public trace (docs/workloads.md) or a bundled name); its "
                          "lengths are replayed at each rate."),
        click.option("--num-requests", type=int, default=None,
                     callback=number_in(1, what="a request count"), help="Use the first N requests.  [default: all]"),
        click.option("--gpus", type=int, required=True, callback=number_in(1, MAX_NPUS, what="a GPU count"),
                     help="GPU budget every configuration uses."),
        click.option("--ratios", default="all", show_default=True,
                     help="P:D instance counts to try: 'all' or a list such as 1:7,2:6 (or 1P7D,2P6D)."),
        click.option("--tp-prefill", default="1", show_default=True, help="TP sizes for prefill instances, e.g. 1,2."),
        click.option("--tp-decode", default="1", show_default=True, help="TP sizes for decode instances, e.g. 1,2."),
        click.option("--pp-prefill", default="1", show_default=True,
                     help="Pipeline stages of prefill (and colocated) instances, e.g. 1,2: each instance is then "
                          "TP x PP GPUs on one node (docs/pipeline.md)."),
        click.option("--pp-decode", default="1", show_default=True,
                     help="Pipeline stages of decode (and colocated) instances, e.g. 1,2."),
        click.option("--decode-dp", default="1", show_default=True,
                     help="Decode DP-group sizes for MoE models, e.g. 1,8: each decode unit is that many ranks of "
                          "--tp-decode GPUs in one dp_group, experts split over all of them (DP attention)."),
        click.option("--decode-expert-parallel/--no-decode-expert-parallel", default=True, show_default=True,
                     help="How a decode DP group splits the experts: whole experts per GPU (vLLM's "
                          "--enable-expert-parallel), or each expert split over all the group's GPUs (vLLM's "
                          "DP without it; labels end in -noep)."),
        click.option("--colocated/--no-colocated", default=True, show_default=True,
                     help="Include the colocated baseline on the same GPUs."),
        click.option("--node-gpus", type=int, default=None, callback=number_in(1, what="a GPU count"),
                     help="GPUs per node when placing instances.  [default: 8, or the base's largest node]"),
    ]


def _slo_options() -> list[Callable]:
    """What counts as meeting the target."""
    from pdsim.sweep.search import SLO_MODES

    return [
        click.option("--slo-ttft-ms", type=float, required=True,
                     callback=slo_ms, help="TTFT SLO (ms)."),
        click.option("--slo-tpot-ms", type=float, required=True,
                     callback=slo_ms, help="TPOT SLO (ms)."),
        click.option("--attainment", type=float, default=0.9, show_default=True,
                     callback=number_in(0, 1, what="a share of requests"),
                     help="Share of requests that must meet the SLOs (0: the highest stable rate, whatever the "
                          "latency)."),
        click.option("--slo-mode", type=click.Choice(SLO_MODES), default="joint", show_default=True,
                     help="joint: a request must meet TTFT and TPOT together; separate: each SLO's attainment "
                          "must reach the target on its own."),
    ]


def _run_options() -> list[Callable]:
    """How each (config, rate) run is simulated."""
    from pdsim.sweep.runner import ARRIVAL_MODES

    return [
        click.option("--arrival", type=click.Choice(ARRIVAL_MODES), default="scale", show_default=True,
                     help="scale: the dataset's arrival times rescaled to each rate; poisson: new Poisson "
                          "arrivals at each rate (seeded)."),
        click.option("--seed", type=int, default=0, show_default=True, callback=number_in(0, 2**32 - 1, what="a seed"),
                     help="Seed of Poisson arrivals and random routing; runs are deterministic per seed."),
        click.option("--time-limit-slack-s", type=float, default=120.0, show_default=True,
                     callback=number_in(0, 1e9, what="a time (s)"),
                     help="Simulate this long past the last arrival (at least twice the longest request life the "
                          "SLOs allow); requests still running then miss their SLOs."),
        click.option("--min-duration-s", type=float, default=60.0, show_default=True,
                     callback=number_in(0, 1e9, what="a time (s)"),
                     help="Repeat the dataset until arrivals span at least this long at each rate, and at least "
                          "3 x the longest request life the SLOs allow (TTFT SLO + (longest output - 1) x TPOT "
                          "SLO), so a run measures the sustained rate, not the ramp-up. Requests arriving within "
                          "one such life of the first or last arrival are not scored."),
        click.option("--ttft-mode", type=click.Choice(["prefill", "client"]), default="prefill", show_default=True,
                     help="P/D: TTFT ends when the first token leaves the prefill instance, or when it reaches "
                          "the client through the decode instance (after the KV transfer and a decode step)."),
    ]


def _execution_options() -> list[Callable]:
    """Where the runs execute and where their results go."""
    return [
        click.option("--workers", type=int, default=None, callback=number_in(1, 4096, what="a process count"),
                     help="Local worker processes (1: run inline).  [default: CPU count]"),
        click.option("--ray-address", default=None,
                     help="Run on Ray instead: 'auto', HOST:PORT, or 'local' for a fresh local instance."),
        click.option("--profiles-root", type=InputFolder(), default=None,
                     help="Where profiles are looked up by hardware/model/dtype/tp.  [default: the bundled profiles/]"),
        click.option("--out", "--output", "out", required=True, type=OutputFolder(),
                     help="Output directory (CSV files, plots, and configs/ with one cluster config per split)."),
        click.option("--resume", is_flag=True, help="Keep the runs already in the output CSV and do only the rest."),
        click.option("--plots/--no-plots", default=True, show_default=True, help="Write the PNG plots."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option("--debug", is_flag=True, help="Show tracebacks for errors."),
    ]


class _Setup:
    """What both commands build from the shared options."""

    def __init__(self, kw: dict[str, Any], with_estimates: bool = False) -> None:
        from pdsim.config import load_cluster_config
        from pdsim.engine.build import mem_bw_note
        from pdsim.sweep.expand import colocated_from_pd, expand, parse_int_list, parse_ratios
        from pdsim.sweep.runner import RunSettings, Slo
        from pdsim.sweep.steady import longest_life_s, run_duration_s
        from pdsim.workload.readers import load_dataset

        for name in ("slo_ttft_ms", "slo_tpot_ms"):
            if not kw[name] > 0:
                raise PdsimError(f"--{name.replace('_', '-')}: expected a positive number, got {kw[name]}")
        if kw["workers"] is not None and kw["workers"] < 1:
            raise PdsimError(f"--workers: expected a positive integer, got {kw['workers']}")
        self.kw = kw
        existing_folder(kw["profiles_root"], "--profiles-root")
        if click.get_current_context().get_parameter_source("time_scale") != click.core.ParameterSource.DEFAULT:
            raise PdsimError("--time-scale: each rate rescales the trace's arrivals, so a time scale changes nothing "
                             "here; give the rates wanted")
        base = load_cluster_config(kw["base_config"])
        self.bandwidth_notes = list(dict.fromkeys(
            note for ref in base.instances() if (note := mem_bw_note(ref.config)) is not None))
        self.skipped: list[str] = []  # layouts left out, each with its reason
        tp_prefill = parse_int_list(kw["tp_prefill"], "--tp-prefill")
        tp_decode = parse_int_list(kw["tp_decode"], "--tp-decode")
        self.base_notes = _base_tp_notes(base, tp_prefill, tp_decode)
        ratios, decode_dp = parse_ratios(kw["ratios"]), parse_int_list(kw["decode_dp"], "--decode-dp")
        pp_prefill, pp_decode = (parse_int_list(kw[k], f"--{k.replace('_', '-')}") for k in ("pp_prefill", "pp_decode"))
        try:
            self.variants = expand(base, kw["gpus"], ratios, tp_prefill, tp_decode, kw["colocated"], kw["node_gpus"],
                                   decode_dp, self.skipped, pp_prefill, pp_decode, kw["decode_expert_parallel"])
        except PdsimError as e:  # nothing fits: the base's own TP, if the options replaced it, is the likely why
            raise PdsimError(str(e) + "".join(f"\nnote: {note}" for note in self.base_notes)) from None
        self.trace = load_dataset(kw["dataset"], kw["dataset_format"], kw["window"], kw["time_scale"],
                                  max_requests=kw["num_requests"])
        self.slo = Slo(kw["slo_ttft_ms"], kw["slo_tpot_ms"])
        profiles_root = str(kw["profiles_root"] or bundled_path("profiles"))
        self.estimates: dict[str, dict[str, Any]] = {}  # search's rate-matching estimate per label
        self.build_notes: set[str] = set()  # what priced each TP size's all-reduce, which board ran (_buildable)
        self.profile_folders: set[str] = set()  # the profile folders the builds read (_buildable)
        self.variants = self._buildable(self.variants, profiles_root, with_estimates)
        if all(v.colocated for v in self.variants):
            if ratios is not None:  # asked for by name, all fell out: the baseline alone answers another question
                baselines = sorted({v.label for v in self.variants})
                raise PdsimError(f"--ratios {kw['ratios']}: none of the P:D splits asked for can run on "
                                 f"{plural(kw['gpus'], 'GPU')} (only the colocated baseline"
                                 f"{'s' * (len(baselines) > 1)} {listed(baselines)} would): "
                                 + "; ".join(self.skipped)
                                 + "".join(f"\nnote: {note}" for note in self.base_notes))
            self.base_notes.append("one GPU holds no P:D split: the colocated baseline alone" if kw["gpus"] == 1 else
                                   "no P:D split can run (skipped above): only the colocated baseline does")
        colocated_note = colocated_from_pd(base)[1] if any(v.colocated for v in self.variants) else None
        if colocated_note:
            self.base_notes.append(colocated_note)
        self.life_s = longest_life_s(self.trace, self.slo.ttft_ms, self.slo.tpot_ms)
        self.settings = RunSettings(
            slo=self.slo, arrival=kw["arrival"], seed=kw["seed"], time_limit_slack_s=kw["time_limit_slack_s"],
            min_duration_s=run_duration_s(kw["min_duration_s"], self.life_s), warmup_s=self.life_s,
            ttft_mode=kw["ttft_mode"], profiles_root=profiles_root,
        )
        # The model the base brought (LLMServingSim's run layout), which goes with the configs written; None: none.
        model_config = Path(kw["base_config"]).parent / RUN_MODEL_CONFIG
        self.model_config: Path | None = model_config if model_config.is_file() else None
        # What the rows depend on besides their (label, rate) key: a --resume must find the same.
        self.fingerprint = json.loads(json.dumps({
            "base_config_sha256": _sha256(kw["base_config"]), "dataset": str(kw["dataset"]),
            "dataset_sha256": _sha256(kw["dataset"]),
            **{k: kw[k] for k in ("dataset_format", "window", "time_scale", "num_requests", "slo_ttft_ms",
                                  "slo_tpot_ms", "arrival", "seed", "time_limit_slack_s", "ttft_mode",
                                  "node_gpus")},
            "min_duration_s": self.settings.min_duration_s, "profiles_root": self.settings.profiles_root,
            # What is in them, not only where: a profile re-measured in place would otherwise be resumed over.
            "profiles_sha256": _folders_sha256(sorted(self.profile_folders)),
            "model_config_sha256": _sha256(self.model_config) if self.model_config else None,
        }, default=str))
        self.out: Path = kw["out"]
        check_output_dir(self.out, "--out")
        inputs = [*config_inputs(kw["base_config"]), kw["dataset"]]
        for name in (*OUTPUT_NAMES, *KEPT_NAMES):
            check_output_file(self.out / name, "--out", inputs)
        configs = self.out / "configs"
        if configs.exists() and not configs.is_dir():
            raise PdsimError(f"--out {self.out}: {configs} is a file; this command writes a folder of configs there")
        for source in inputs:  # configs/ is emptied of earlier runs' configs and written anew
            if source.exists() and configs.is_dir() and source.resolve().parent == configs.resolve():
                raise PdsimError(f"--out {self.out}: the input {source} is in {configs}, which this command "
                                 "rewrites; copy it elsewhere or choose another --out")
        recorded = recorded_configs(configs)
        foreign = sorted(name for name in self.config_names() if (configs / name).exists() and name not in recorded)
        if foreign:
            raise PdsimError(f"--out {self.out}: {configs} holds {listed(foreign)}, which this command would "
                             f"overwrite, and no earlier run recorded writing {'them' if len(foreign) > 1 else 'it'} "
                             f"({WRITTEN_LIST} there; an output folder of a pdsim before 2026-12-07 has none): move "
                             f"{'them' if len(foreign) > 1 else 'it'}, or choose another --out")

    def config_names(self) -> list[str]:
        """The files this command writes in OUT/configs/ (one per configuration, and a model config the base
        brought)."""
        names = [f"{config_file_stem(v.label)}.json" for v in self.variants]
        if self.model_config is not None:
            names.append(RUN_MODEL_CONFIG)
        return names

    def _buildable(self, variants: list, profiles_root: str, with_estimates: bool) -> list:
        """The variants whose clusters can be built (a profile or a spec for every instance): one that cannot is
        skipped with the reason, like a layout that does not fit, instead of stopping the command mid-way. With
        estimates, each is the rate-matching estimate's build (kept in self.estimates), so none is built twice."""
        import simpy

        from pdsim.engine.cluster import Cluster, SimOptions
        from pdsim.perf.interp import extrapolations_gathered
        from pdsim.sweep.ratematch import Lengths, estimate
        from pdsim.sweep.runner import unstartable_notes

        opts = SimOptions(profiles_root=profiles_root)
        lengths = (Lengths(sum(r.input_toks for r in self.trace) / len(self.trace),
                           sum(r.output_toks for r in self.trace) / len(self.trace)) if with_estimates else None)
        kept = []
        for v in variants:
            try:
                with extrapolations_gathered():  # the runs on the same profiles say where they leave its grid
                    cluster = Cluster(simpy.Environment(), v.config(), opts, v.label)
                    if lengths is not None:
                        self.estimates[v.label] = estimate(v, lengths, self.slo.tpot_ms, opts, cluster).as_dict()
                # Said once per source, from the builds, so a resumed command that runs nothing says it too; so
                # are the configuration's own notes, which each run repeats.
                self.build_notes.update(f"TP {inst.spec.tp} all-reduce priced by {inst.predictor.allreduce_source}"
                                        for inst in cluster.instances if inst.predictor.allreduce_source)
                self.build_notes.update([*cluster.notes, *unstartable_notes(v.label, cluster.infos)])
                # By TP: a profile measured on another board for one TP degree does not speak for the others.
                self.build_notes.update(f"TP {info.tp} instances: {info.board_note}"
                                        for info in cluster.infos if info.board_note)
                self.profile_folders.update(info.profile_path for info in cluster.infos
                                            if Path(info.profile_path).is_dir())
            except PdsimError as e:
                self.skipped.append(str(e) if str(e).startswith(f"{v.label}:") else f"{v.label}: {e}")
                continue
            kept.append(v)
        if not kept:
            raise PdsimError("no configuration can be built: " + "; ".join(self.skipped))
        return kept

    def outputs(self, stem: str, streamed: str) -> OutputSet:
        """The command's files, committed together once all are written: the streamed CSV, the
        summary CSV, the plots and configs/ (stale ones of an earlier run in this folder removed)."""
        from pdsim.sweep.rows import sort_rows
        from pdsim.sweep.runner import partial_path

        configs = self.out / "configs"
        stale = [self.out / name for name in OUTPUT_NAMES if name.startswith(f"{stem}")]
        stale += [configs / name for name in sorted(recorded_configs(configs))]  # an earlier run's, not a user's
        out = OutputSet(stale=stale)
        sort_rows(partial_path(self.out / streamed), [v.label for v in self.variants])
        out.adopt(partial_path(self.out / streamed), self.out / streamed)
        configs.mkdir(exist_ok=True)
        for v in self.variants:  # so the winner can be run on its own with `pdsim run`
            text = json_text(v.raw)
            out.stage(configs / f"{config_file_stem(v.label)}.json", lambda tmp, t=text: tmp.write_text(t))
        if self.model_config is not None:
            text = self.model_config.read_text(encoding="utf-8")
            out.stage(configs / RUN_MODEL_CONFIG, lambda tmp, t=text: tmp.write_text(t, encoding="utf-8"))
        written = "".join(f"{path.name}\n" for _, path in out.staged)
        out.stage(configs / WRITTEN_LIST, lambda tmp: tmp.write_text(written, encoding="utf-8"))
        return out

    def executor(self) -> Executor:
        from pdsim.sweep.runner import make_executor

        return make_executor(self.trace, self.settings, self.kw["workers"], self.kw["ray_address"])

    def can_lengthen(self, rate_per_s: float) -> bool:
        """Whether search's longer run of a probe at this rate stays within the request cap and the run clock."""
        from pdsim.sweep.runner import arrivals_span_s, requests_at_rate
        from pdsim.sweep.search import LONGER_X
        from pdsim.workload.trace import MAX_ARRIVAL_NS

        duration_s = arrivals_span_s(rate_per_s, LONGER_X, len(self.trace), self.settings.min_duration_s)
        return (requests_at_rate(len(self.trace), rate_per_s, duration_s) <= MAX_REQUESTS
                and duration_s * 1e9 < MAX_ARRIVAL_NS)

    def long_dataset_note(self, rate_per_s: float) -> None:
        """Each run holds the whole dataset at least: where its arrivals outlast the steady-state length many times
        over even at the highest rate, say how to cut them (runs cost in proportion to their requests)."""
        if not rate_per_s > 0:  # no estimate to size the runs by
            return
        span_s = len(self.trace) / rate_per_s
        if span_s > LONG_DATASET_X * self.settings.min_duration_s:
            self.base_notes.append(
                f"each run holds all {len(self.trace):,} requests of the dataset: {span_s:,.0f} s of arrivals even at "
                f"{rate_per_s:.4g} req/s, where {self.settings.min_duration_s:,.0f} s make a steady state; "
                "--num-requests or --window cuts each run (and the time it takes) to what the question needs")

    def describe(self) -> str:
        ex = f"Ray at {self.kw['ray_address']}" if self.kw["ray_address"] else (
            f"{self.kw['workers']} worker(s)" if self.kw["workers"] else "one worker per CPU")
        skipped = "".join(f"\nskipped {why}" for why in self.skipped)
        skipped += "".join(f"\nnote: {note}" for note in self.base_notes)
        return (f"{plural(len(self.variants), 'configuration')} of {plural(self.kw['gpus'], 'GPU')} x "
                f"{len(self.trace)} requests "
                f"of {self.kw['dataset']} ({self.kw['arrival']} arrivals), {ex}; {TTFT_MEANS[self.kw['ttft_mode']]}"
                f"{skipped}\n" + self.steady_rule())

    def steady_rule(self) -> str:
        s = self.settings
        why = ("--min-duration-s" if s.min_duration_s > 3 * self.life_s
               else f"3 x the longest request life, {self.life_s:.1f} s")
        return (f"steady state: arrivals span >= {s.min_duration_s:.0f} s per run ({why}); requests arriving in "
                f"the first and last {self.life_s:.1f} s are not scored; a run whose queue keeps growing is "
                "unstable and never meets the target")


# What TTFT means in a P/D split, said once per command: in prefill mode a slower link shows in TPOT, not TTFT.
TTFT_AT = {"prefill": "at the prefill instance", "client": "as the client sees it"}
TTFT_MEANS = {
    "prefill": ("TTFT at the prefill instance's first token (a P/D split's KV hand-off and wait for a decode slot "
                "count in TPOT; --ttft-mode client counts them in TTFT)"),
    "client": "TTFT as the client sees it, through the decode instance (KV hand-off included)",
}


# A dataset whose arrivals outlast the steady-state length this many times at the highest rate is said.
LONG_DATASET_X = 4


def config_file_stem(label: str) -> str:
    return label.replace("/", "-")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _folders_sha256(folders: list[str]) -> str:
    """One digest of every file in these folders (names and bytes, in a fixed order)."""
    digest = hashlib.sha256()
    for folder in folders:
        root = Path(folder)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(f"{folder}/{path.relative_to(root)}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _bar(quiet: bool) -> ProgressBar:
    from pdsim.progress import ProgressBar

    return ProgressBar("runs", enabled=False if quiet else None)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    from pdsim.sweep.search import floored

    df = pd.DataFrame(rows)
    cols = [c for c in columns if c in df.columns]
    shown = df[cols].copy()
    for c in cols:
        if c.startswith("attain"):
            shown[c] = [floored(float(x)) for x in shown[c]]
    return shown.to_string(index=False, float_format=lambda x: f"{x:.3g}", na_rep="-")


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.6g")


FULL_KV_FRAC = 0.99  # a peak at or above this share of the blocks: the cache filled (block rounding aside)


def _full_kv_note(win: dict[str, Any]) -> str:
    """The winner's KV cache filled at its goodput (it preempted, or a role's peak reached its capacity): the goodput
    rests on how the engine copes with a full cache, and an error in the predicted capacity moves it."""
    peaks = [peak for role in ("prefill", "decode")
             if not math.isnan(peak := float(win.get(f"{role}_peak_kv_frac", math.nan)))]
    preemptions = float(win.get("preemptions", math.nan))  # NaN: no probe ran (goodput_row's MEMORY_FIELDS)
    preempted = 0 if math.isnan(preemptions) else int(preemptions)
    if not preempted and not any(peak >= FULL_KV_FRAC for peak in peaks):
        return ""
    what = plural(preempted, "preemption") if preempted else "no preemption"
    return (f"NOTE: the winner's KV cache filled at its goodput ({what}; peak use {max(peaks, default=1.0):.0%} of "
            "a role's capacity, the *_peak_kv_frac columns): "
            "its goodput rests on a full cache, so an error in the predicted KV capacity moves it (docs/memory.md "
            "says how well that is known)")


# How far a run's offered load over its scored window may stray from its rate label before it is said: a Poisson
# window of a few hundred arrivals strays by about 1 / sqrt(n), under 10%.
RATE_LABEL_SLACK = 0.25


def _rate_label_note(rows: list[dict[str, Any]], arrival: str) -> str:
    """Runs whose scored window was offered another load than their rate: a bursty trace stretched to a mean rate
    (--arrival scale) puts its bursts in the window, so the row's rate is not the load its SLOs were met at."""
    def gap(r: dict[str, Any]) -> float:  # NaN (never over the slack) where the CSV has no offered load
        offered, rate = float(r.get("offered_req_s", math.nan)), float(r["rate_per_s"])
        return abs(offered / rate - 1) if offered > 0 and rate > 0 else math.nan

    off = [r for r in rows if gap(r) > RATE_LABEL_SLACK]
    if not off:
        return ""
    worst = max(off, key=gap)
    fix = ("--arrival poisson draws arrivals at the rate, or more --num-requests smooths the trace's bursts"
           if arrival == "scale" else "more --num-requests or a longer --min-duration-s narrows the window's spread")
    were = "was" if len(off) == 1 else "were"
    return (f"NOTE: {plural(len(off), 'run')} of {len(rows)} {were} offered a load over the scored window more than "
            f"{RATE_LABEL_SLACK:.0%} from the rate (e.g. {worst['label']} at {worst['rate_per_s']} req/s was offered "
            f"{float(worst['offered_req_s']):.3g}; offered_req_s in the CSV): their SLOs were met or missed at that "
            f"load, not the rate's; {fix}")


def _unstable_note(rows: list[dict[str, Any]], goodputs: set[tuple[str, str, str]] | None = None) -> str:
    """goodputs: (label, rate, duration_x) of the runs the search's goodputs rest on, the ones whose passing the
    stability test on chance matters there (None: a sweep, every run)."""
    from pdsim.sweep.steady import BACKLOG_TOLERANCE, within_chance

    bad = [r for r in rows if not r.get("stable", 1)]
    lucky = [r for r in rows if within_chance(r)
             and (goodputs is None or (r["label"], str(r["rate_per_s"]), str(r["duration_x"])) in goodputs)]
    rejected = [r for r in rows if r.get("rejected", 0)]
    lines = ([f"all {len(rows)} runs stable (no queue growth beyond chance over the scored window, none "
              "unfinished)"] if not bad
             else [f"UNSTABLE: {len(bad)} of {len(rows)} runs (stable = 0; never counted as meeting the target):"])
    lines += [f"  {r['label']} at {r['rate_per_s']} req/s{_longer(r)}: {r['unstable_reason']}" for r in _by_rate(bad)]
    if lucky:
        which = (f"{len(lucky)} stable run(s)" if goodputs is None else "1 of the goodputs rests on a stable run that"
                 if len(lucky) == 1 else f"{len(lucky)} of the goodputs rest on stable runs that")
        lines.append(f"WITHIN CHANCE: {which} served under {1 - BACKLOG_TOLERANCE:.0%} of the offered rate; on a "
                     "scored window this short the queue's growth did not stand out from its wandering, so they may "
                     "not keep up (a longer --min-duration-s tells):")
        # Rounded down: a share under 98% must not print as 98.0%.
        lines += [f"  {r['label']} at {r['rate_per_s']} req/s: served "
                  f"{math.floor(1000 * r['served_req_s'] / r['offered_req_s']) / 10:.1f}% "
                  f"(queue {int(r['backlog_growth_requests']):+d} requests){_longer(r)}" for r in _by_rate(lucky)]
    if rejected:  # a rejected request meets no SLO; say it, as a run of only rejections looks calm otherwise
        worst = max(rejected, key=lambda r: r["rejected"] / max(r["requests"], 1))
        lines.append(f"NOTE: {len(rejected)} of {len(rows)} runs rejected requests (too long for the model or the KV "
                     f"cache; counted as missing the SLOs), up to {worst['rejected']:,} of {worst['requests']:,} "
                     f"({worst['label']} at {worst['rate_per_s']} req/s): see the rejected column")
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4g}"  # no TPOT where every output is one token


def _longer(row: dict[str, Any]) -> str:
    x = int(row.get("duration_x", 1))
    return f" ({x}x as long)" if x > 1 else ""


def _lengthened_note(states: list[Bisection], min_duration_s: float) -> str:
    """The probes the default length could not tell and were re-run longer, and what that decided."""
    from pdsim.sweep.search import LONGER_X
    from pdsim.sweep.steady import BACKLOG_TOLERANCE

    done = [(st.variant.label, rate, passed) for st in states for rate, passed in st.lengthened]
    lines = [f"LENGTHENED: {plural(len(done), 'probe')} the default length (arrivals over {min_duration_s:.4g} s, or "
             f"the dataset's span) could not tell: a pass while serving under {1 - BACKLOG_TOLERANCE:.0%} of the "
             "offered rate, or an unstable flag for a small queue growth while meeting the target, both within "
             f"chance there; re-run with {LONGER_X}x the arrivals to tell (probes.csv: duration_x):"]
    lines += [f"  {label} at {rate:g} req/s: {'passed' if passed else 'failed'}" for label, rate, passed in done]
    return "\n".join(lines)


def _by_rate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By label, then by rate as a number (the rows' rates are their CSV text)."""
    return sorted(rows, key=lambda r: (r["label"], float(r["rate_per_s"]), int(r.get("duration_x", 1))))


def _base_tp_notes(base: ClusterConfig, tp_prefill: list[int], tp_decode: list[int]) -> list[str]:
    """The base config's instances are templates: their TP degree is replaced by --tp-prefill/--tp-decode,
    which a base at another TP may not expect; said, naming the options."""
    notes = []
    if all(ref.config.pd_type is None for ref in base.instances()):  # one template for both roles
        based = sorted({ref.config.tp_size for ref in base.instances()})
        other = [(role, swept, option) for role, swept, option in (("prefill", tp_prefill, "--tp-prefill"),
                                                                    ("decode", tp_decode, "--tp-decode"))
                 if not set(based) & set(swept)]
        if other:
            runs = "; ".join(f"{role} TP {', '.join(map(str, swept))} ({option}, default 1)"
                             for role, swept, option in other)
            notes.append(f"the base config's colocated instances run TP {', '.join(map(str, based))}; the variants "
                         f"run {runs}")
        return notes
    for role, swept, option in (("prefill", tp_prefill, "--tp-prefill"), ("decode", tp_decode, "--tp-decode")):
        based = sorted({ref.config.tp_size for ref in base.instances() if ref.config.pd_type in (role, None)})
        if based and not set(based) & set(swept):
            notes.append(f"the base config's {role} instances run TP {', '.join(map(str, based))}; the variants run "
                         f"TP {', '.join(map(str, swept))} ({option}, default 1)")
    return notes


def _run_notes(notes: set[str]) -> str:
    """What the runs of this command said besides their rows, once per profile table and axis (each run
    names the first point it looked up off the table's grid, so their points differ)."""
    from pdsim.perf.interp import extrapolation_key

    first: dict[str, str] = {}
    for note in sorted(notes):
        first.setdefault(extrapolation_key(note), note)
    return "\n".join(f"NOTE: {note}" for note in first.values())


def _kept_runs_note(kept: int, setup: _Setup) -> list[str]:
    """Runs kept by --resume are not run again, so where they left a measured profile's grid (said as each ran)
    is not said again."""
    if not kept or not setup.profile_folders:
        return []
    return [f"{plural(kept, 'run')} kept by --resume not run again: any notes of theirs on leaving a measured "
            "profile's grid were said by the command that ran them"]


def _estimated_note(rows: list[dict[str, Any]], setup: _Setup) -> str:
    n = sum(1 for r in rows if r.get("estimated_profile"))
    if not n:
        return "step times from measured profiles"
    return "\n".join([f"NOTE: step times estimated from hardware specs in {n} of {len(rows)} runs "
                      "(no measured profile for some instance, or no moe.csv in a MoE one)",
                      *(f"note: {b}" for b in setup.bandwidth_notes)])


@click.command("sweep")
@click.option("--rates", required=True, help="Request rates (req/s, whole cluster), e.g. 2,4,8,16.")
@_common
def sweep(rates: str, **kw: Any) -> None:
    """Every P:D split of a GPU budget x every rate: latency percentiles, throughput, SLO attainment."""
    from pdsim.sweep.runner import Job, requests_at_rate, run_sweep
    from pdsim.workload.trace import check_request_count

    try:
        # Rates are keyed by their %g text (6 digits): two that print alike are one rate.
        rate_list = sorted({float(f"{float(x):g}") for x in split_items(rates, "--rates")})
    except ValueError:
        raise PdsimError(f"--rates: expected comma-separated numbers, got {rates!r}") from None
    if not rate_list or not all(0 < r <= MAX_RATE_PER_S for r in rate_list):  # NaN fails too (min/max would not)
        raise PdsimError(f"--rates: expected numbers > 0 and <= {MAX_RATE_PER_S:g} (req/s), got {rates!r}")
    setup = _Setup(kw)
    for rate in rate_list:  # before any run starts (trace_at_rate checks it again for search's rates)
        check_request_count(requests_at_rate(len(setup.trace), rate, setup.settings.min_duration_s),
                            f"--rates {rate:g} (for at least {setup.settings.min_duration_s:g} s)")
    jobs = [Job(v, r) for v in setup.variants for r in rate_list]
    setup.long_dataset_note(rate_list[-1])
    click.echo(f"sweep: {setup.describe()}, {plural(len(rate_list), 'rate')}: {plural(len(jobs), 'run')}")
    bar = _bar(kw["quiet"])
    started = time.perf_counter()
    executor = setup.executor()
    try:
        notes: set[str] = set()
        kept: list[int] = []
        rows = run_sweep(jobs, executor, setup.out / "runs.csv", kw["resume"], settings=setup.fingerprint,
                         on_row=lambda done, total: bar.update(done, total, "runs"), commit=False, notes=notes,
                         kept=kept)
    finally:
        executor.close()
        bar.close()
    wall_s = time.perf_counter() - started
    click.echo(_table(rows, SWEEP_COLUMNS))
    click.echo(_unstable_note(rows))
    if said := _rate_label_note(rows, kw["arrival"]):
        click.echo(said)
    notes |= setup.build_notes
    notes.update(_kept_runs_note(kept[0], setup))
    if notes:
        click.echo(_run_notes(notes))
    good = goodput_from_grid(setup.variants, rows, kw["attainment"], kw["slo_mode"])
    click.echo(f"\ngoodput on this rate grid (highest swept rate with {kw['slo_mode']} attainment >= "
               f"{kw['attainment']:g}, every lower rate passing too):")
    click.echo(_table(good, ["label", "goodput_req_s", "goodput_req_s_per_gpu"]))
    for g in good:
        if g["chance_flags"]:
            click.echo(f"NOTE: {g['label']} at {', '.join(f'{r:g}' for r in g['chance_flags'])} req/s met the target "
                       "but was flagged unstable for a small queue growth, while a higher rate kept up: read as chance "
                       "(pdsim search re-runs such a probe 4x as long; a longer --min-duration-s tells them apart)")
    top = max(float(r) for r in rate_list)
    if at_top := [g["label"] for g in good if g["goodput_req_s"] >= top]:
        click.echo(f"NOTE: {', '.join(at_top)} passed the highest rate swept ({top:g} req/s): a lower bound, not a "
                   "limit found (raise --rates, or use pdsim search)")
    if none := [g["label"] for g in good if g["goodput_req_s"] <= 0]:
        low = min(float(r) for r in rate_list)
        click.echo(f"NOTE: {', '.join(none)} failed the lowest rate swept ({low:g} req/s): no goodput on this grid, "
                   "not a goodput of 0 (lower --rates, or use pdsim search, which halves the rate until one passes)")
    with setup.outputs("sweep", "runs.csv") as out:
        out.stage(setup.out / "sweep.csv", lambda tmp: _write_csv(rows, tmp))
        if kw["plots"]:
            _plots(setup, good, rows, "sweep", out)
        written = _with_settings([p for p in out.commit() if p.parent == setup.out])
    click.echo(_estimated_note(rows, setup))
    click.echo(f"{_runs_done(len(jobs), kept[0])} in {wall_s:.1f} s wall; wrote " + ", ".join(str(p) for p in written) +
               f" and {len(setup.variants)} configs in {setup.out / 'configs'}")


def _runs_done(total: int, kept: int) -> str:
    """How many runs the wall time covers: those kept by --resume took none of it."""
    if not kept:
        return plural(total, "run")
    return plural(total, "run") + (" (all kept by --resume)" if kept == total else
                                   f" ({kept} kept by --resume, {total - kept} run now)")


def _with_settings(written: list[Path]) -> list[Path]:
    """The files written, each rows file followed by the settings file kept beside it (--resume reads it)."""
    return [q for p in written for q in (p, settings_path(p)) if q == p or q.is_file()]


def goodput_from_grid(variants: list[Variant], rows: list[dict[str, Any]], attainment: float,
                      mode: str) -> list[dict[str, Any]]:
    """Per variant, the highest rate that meets the target with every lower rate meeting it too. A lower rate
    flagged unstable for a small queue growth alone (search.unstable_by_growth_alone) does not end the run of
    passes where a higher rate kept up: that rate's pass is the evidence that the growth was chance
    (its rates are listed in chance_flags)."""
    from pdsim.sweep.search import meets, unstable_by_growth_alone

    out = []
    for v in variants:
        mine = sorted((r for r in rows if r["label"] == v.label), key=lambda r: float(r["rate_per_s"]))
        best, flagged, chance = 0.0, [], []
        for r in mine:
            if meets(r, attainment, mode):
                best, chance = float(r["rate_per_s"]), chance + flagged
                flagged = []
            elif unstable_by_growth_alone(r, attainment, mode):
                flagged.append(float(r["rate_per_s"]))
            else:
                break
        out.append({"label": v.label, "ratio": v.ratio, "gpus": v.gpus, "goodput_req_s": best,
                    "goodput_req_s_per_gpu": best / v.gpus, "chance_flags": chance})
    return out


def _plots(setup: _Setup, good: list[dict[str, Any]], rows: list[dict[str, Any]], stem: str,
           out: OutputSet) -> None:
    from pdsim.sweep.plots import plot_goodput, plot_latency_vs_rate, plot_pareto
    from pdsim.sweep.search import meets

    kw = setup.kw
    # Where TTFT ends (--ttft-mode) moves a P/D split's figures between TTFT and TPOT: said on every plot.
    at = TTFT_AT[kw["ttft_mode"]]
    slo = (f"TTFT<={kw['slo_ttft_ms']:g} ms ({at}), TPOT<={kw['slo_tpot_ms']:g} ms, {kw['attainment']:.0%} "
           f"{kw['slo_mode']}")
    estimated = "(step times estimated from hardware specs)" if any(r.get("estimated_profile") for r in rows) else ""
    runs = f"{kw['dataset'].name}, {kw['gpus']} GPUs"  # every plot says which runs it shows
    title = f"{runs}, {slo}" + (f"\n{estimated}" if estimated else "")
    run = f"{runs} {estimated}".rstrip()
    out.stage(setup.out / f"{stem}_goodput.png", lambda tmp: plot_goodput(good, tmp, title))
    out.stage(setup.out / f"{stem}_latency.png",
              lambda tmp: plot_latency_vs_rate(rows, kw["slo_ttft_ms"], kw["slo_tpot_ms"], tmp, at, run))
    out.stage(setup.out / f"{stem}_pareto.png",
              lambda tmp: plot_pareto(rows, tmp, lambda r: meets(r, kw["attainment"], kw["slo_mode"]), slo, run))


@click.command("search")
@click.option("--rel-tol", type=float, default=0.05, show_default=True, callback=number_in(0, 1, low_open=True),
              help="Stop bisecting when the bracket is narrower than this fraction of the rate.")
@click.option("--max-probes", type=int, default=14, show_default=True, callback=number_in(1, what="a run count"),
              help="Most probed rates per configuration (a pass re-run longer to tell its stability counts once).")
@_common
def search(rel_tol: float, max_probes: int, **kw: Any) -> None:
    """Goodput per GPU of every P:D split (bisection on the rate), ranked, next to the rate-matching estimate."""
    from pdsim.sweep.runner import ROW_FIELDS, RowWriter, rate_key
    from pdsim.sweep.search import disagreements, goodput_row, rank
    from pdsim.sweep.search import search as run_search

    setup = _Setup(kw, with_estimates=True)
    setup.long_dataset_note(max((e["start_req_s"] for e in setup.estimates.values()), default=0.0))
    click.echo(f"search: {setup.describe()}; target {kw['attainment']:.0%} of requests within TTFT "
               f"{kw['slo_ttft_ms']:g} ms and TPOT {kw['slo_tpot_ms']:g} ms ({kw['slo_mode']})")
    estimates = setup.estimates
    # Start each bisection near its estimate, a little under it since tails bind before saturation.
    starts = {label: max(0.8 * e["start_req_s"], 0.01) for label, e in estimates.items()}
    bar = _bar(kw["quiet"])
    started = time.perf_counter()
    executor = setup.executor()
    writer = RowWriter(setup.out / "probes.csv", ROW_FIELDS, kw["resume"], setup.fingerprint)
    resumed_keys = set(writer.rows)
    budget = len(setup.variants) * max_probes
    # A probe runs at least --min-duration-s of arrivals: past this rate its trace would pass the request cap.
    min_duration_s = setup.settings.min_duration_s
    max_rate = min(MAX_RATE_PER_S, MAX_REQUESTS / min_duration_s if min_duration_s > 0 else math.inf)
    if starts and max_rate < min(starts.values()):  # every bisection would be held at the cap: refused, as sweep does
        raise PdsimError(f"--slo-ttft-ms {kw['slo_ttft_ms']:g} / --slo-tpot-ms {kw['slo_tpot_ms']:g}: a probe's "
                         f"arrivals span at least {min_duration_s:.4g} s (3 times the longest request life these SLOs "
                         f"allow, docs/sweep.md), so past {max_rate:.3g} req/s it would run more than "
                         f"{MAX_REQUESTS:,} requests, below every configuration's estimated start "
                         f"({min(starts.values()):.3g} req/s or more): tighten the SLOs, or shorten the dataset's "
                         "longest output")
    try:
        states = run_search(setup.variants, starts, executor, writer, kw["attainment"], kw["slo_mode"],
                            rel_tol, max_probes,
                            on_round=lambda rounds, probes, runs: bar.update(probes, budget, f"probes, round {rounds}"),
                            base_requests=0 if any(r.hash_ids for r in setup.trace) else len(setup.trace),
                            max_rate=max_rate, can_lengthen=setup.can_lengthen)
    finally:
        writer.close()
        executor.close()
        bar.close()
    wall_s = time.perf_counter() - started
    in_order = [goodput_row(st, estimates.get(st.variant.label)) for st in states]
    ranked = rank(in_order)
    click.echo(_table(ranked, SEARCH_COLUMNS))
    # This search's configurations only: a --resume with fewer keeps the others' probes in probes.csv, not here.
    searched = {v.label for v in setup.variants}
    keys = [k for k in sorted(writer.rows) if writer.rows[k]["label"] in searched]
    rows = [writer.rows[k] for k in keys]
    goodputs = {(st.variant.label, rate_key(st.lo), str(st.lo_row["duration_x"])) for st in states
                if st.lo_row is not None}
    click.echo(_unstable_note(rows, goodputs))
    if said := _rate_label_note(rows, kw["arrival"]):
        click.echo(said)
    if any(st.lengthened for st in states):
        click.echo(_lengthened_note(states, setup.settings.min_duration_s))
    said = writer.notes | setup.build_notes | set(_kept_runs_note(len(resumed_keys.intersection(keys)), setup))
    if said:
        click.echo(_run_notes(said))
    win = ranked[0]
    colo = [r for r in ranked if r["ratio"] == "colo"]
    vs = ""
    if colo and win["ratio"] != "colo" and colo[0]["goodput_req_s_per_gpu"] > 0:
        times = win["goodput_req_s_per_gpu"] / colo[0]["goodput_req_s_per_gpu"]
        vs = f", {times:.2f}x the best colocated ({colo[0]['label']})"
    if win["goodput_req_s_per_gpu"] <= 0:
        click.echo("\nno configuration meets the target at any probed rate")
    else:
        config = setup.out / "configs" / (config_file_stem(win["label"]) + ".json")
        click.echo(f"\nwinner: {win['label']} at {win['goodput_req_s']:.3g} req/s "
                   f"({win['goodput_req_s_per_gpu']:.3g} req/s per GPU){vs}; config: {config}")
        if kw["arrival"] == "poisson":  # `pdsim run --rate` rescales the dataset's own arrivals: not these
            # The probe's own TTFT mode and SLOs, so the run reports what the row did (pdsim run scores every
            # request; the probe left out the warm-up and drain).
            mode = " --ttft-mode client" if kw["ttft_mode"] == "client" else ""
            click.echo(f"to run it on the Poisson arrivals its probe at that rate had: pdsim run --cluster-config "
                       f"{config} --dataset {setup.out / WINNER_TRACE}{mode} --slo-ttft-ms {kw['slo_ttft_ms']:g} "
                       f"--slo-tpot-ms {kw['slo_tpot_ms']:g} (it scores every request; the probe left out the first "
                       f"and last {setup.life_s:.3g} s of arrivals)")
        if said := _full_kv_note(win):
            click.echo(said)
        if math.isnan(win["first_fail_req_s"]):
            within = "within --max-probes"
            if win["goodput_req_s"] * 2 > max_rate:
                within = (f"below {max_rate:g} req/s, past which a probe's {min_duration_s:g} s would hold more than "
                          f"{MAX_REQUESTS:,} requests" if max_rate < MAX_RATE_PER_S else
                          f"below {MAX_RATE_PER_S:g} req/s, the most a probe runs")
            click.echo(f"NOTE: no probe of the winner failed ({within}): its goodput is a lower bound, and the ranking "
                       "may change with more probes")
        if short := [st for st in states if st.cut_short]:
            brackets = ", ".join(f"{st.variant.label} [{st.lo:.3g}, {st.hi:.3g})" for st in short)
            click.echo(f"NOTE: --max-probes {max_probes} ended {len(short)} bisection(s) before their bracket "
                       f"narrowed to --rel-tol {rel_tol:g}: {brackets} req/s. Their goodput is the bracket's low end, "
                       "so the ranking and the ratios above (and the estimate's comparison below) may change with "
                       "more probes")
        tied = [r for r in ranked[1:] if r["goodput_req_s_per_gpu"] == win["goodput_req_s_per_gpu"]]
        if tied:
            # Layouts that share their bottleneck pool tie whatever the probes: their latency at the goodput
            # is what tells them apart.
            p90s = "; ".join(f"{r['label']} {_ms(r['ttft_p90_ms'])} / {_ms(r['tpot_p90_ms'])}" for r in [win, *tied])
            click.echo(f"NOTE: tied with {', '.join(r['label'] for r in tied)} at the same goodput per GPU; the "
                       "probes do not tell them apart (raise --max-probes or lower --rel-tol; layouts that share "
                       f"their bottleneck pool stay tied). TTFT / TPOT p90 (ms) at the goodput: {p90s}")
    notes = disagreements(ranked, arrival=kw["arrival"])
    if notes:
        click.echo("rate-matching estimate vs simulation:")
        for note in notes:
            click.echo(f"  - {note}")
    else:
        click.echo("rate-matching estimate and simulation agree (same winner, every goodput within 30%)")
    with setup.outputs("search", "probes.csv") as out:
        out.stage(setup.out / "search.csv", lambda tmp: _write_csv(ranked, tmp))
        if kw["arrival"] == "poisson" and win["goodput_req_s"] > 0:
            from pdsim.sweep.runner import arrivals_span_s, trace_at_rate
            from pdsim.workload.trace import write_trace

            win_x = next(int(st.lo_row["duration_x"]) for st in states if st.variant.label == win["label"])
            probe = trace_at_rate(setup.trace, win["goodput_req_s"], "poisson", kw["seed"],
                                  arrivals_span_s(win["goodput_req_s"], win_x, len(setup.trace),
                                                  setup.settings.min_duration_s))
            out.stage(setup.out / WINNER_TRACE, lambda tmp: write_trace(tmp, probe))
        if kw["plots"]:
            # A rate run twice (the second time longer) is drawn once, as the longer run decided it.
            decisive = {(r["label"], str(r["rate_per_s"])): r for r in sorted(rows, key=lambda r: int(r["duration_x"]))}
            _plots(setup, in_order, [r for r in decisive.values() if not math.isnan(r["ttft_p90_ms"])], "search", out)
        written = _with_settings([p for p in out.commit() if p.parent == setup.out])
    click.echo(_estimated_note(rows, setup))
    runs = _runs_done(len(rows), len(resumed_keys.intersection(keys)))
    click.echo(f"{runs} in {wall_s:.1f} s wall; wrote " + ", ".join(str(p) for p in written))
