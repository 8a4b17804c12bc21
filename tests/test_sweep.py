"""P:D sweep and goodput search: expansion, traces at a rate, executors agreeing, resume, bisection."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from pdsim.cli import cli
from pdsim.config import cluster_config_from_dict, load_cluster_config
from pdsim.errors import PdsimError
from pdsim.sweep.expand import colocated_from_pd, expand, parse_ratios
from pdsim.sweep.runner import (
    ROW_FIELDS,
    InlineExecutor,
    Job,
    PoolExecutor,
    RowWriter,
    RunSettings,
    Slo,
    rate_key,
    run_sweep,
    trace_at_rate,
)
from pdsim.sweep.search import Bisection, search
from pdsim.workload.trace import TraceRequest, load_trace

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "cluster" / "sweep_base_h100.json"
DATASET = ROOT / "workloads" / "prefill_heavy.jsonl"
SETTINGS = RunSettings(slo=Slo(ttft_ms=1000, tpot_ms=25), min_duration_s=0.0,
                       profiles_root=str(ROOT / "profiles"))


@pytest.fixture(scope="module")
def small():
    """4 GPUs (1P3D, 2P2D, 3P1D, colo-4x), 60 requests, 2 rates: 8 runs of a few ms each."""
    variants = expand(load_cluster_config(BASE), 4)
    base_trace = load_trace(DATASET, max_requests=60)
    jobs = [Job(v, r) for v in variants for r in (10.0, 40.0)]
    return variants, base_trace, jobs


def test_expand_every_split_and_colocated():
    variants = expand(load_cluster_config(BASE), 8)
    assert [v.label for v in variants] == [f"{p}P{8 - p}D-tp1/1" for p in range(1, 8)] + ["colo-8x-tp1"]
    v = variants[2]
    cfg = v.config()
    types = [ref.config.pd_type for ref in cfg.instances()]
    assert types == ["prefill"] * 3 + ["decode"] * 5  # prefill first
    assert sum(ref.config.num_npus for ref in cfg.instances()) == 8


def test_colocated_baseline_of_a_pd_base_takes_both_roles_larger_batch_limits():
    raw = json.loads(BASE.read_text())
    inst = raw["nodes"][0]["instances"][0]
    prefill = {**inst, "pd_type": "prefill", "max_num_seqs": 16, "max_num_batched_tokens": 8192}
    decode = {**inst, "pd_type": "decode", "max_num_seqs": 256, "max_num_batched_tokens": 512,
              "gpu_memory_utilization": 0.85}
    raw["nodes"][0].update(num_instances=3, instances=[prefill, decode, {**decode, "max_num_seqs": 384}])
    base = cluster_config_from_dict(raw, "<test>")
    colo = expand(base, 4)[-1]
    assert colo.colocated
    limits = {(r.config.max_num_seqs, r.config.max_num_batched_tokens, r.config.gpu_memory_utilization)
              for r in colo.config().instances()}
    assert limits == {(384, 8192, 0.9)}  # the prefill instance, each limit the largest of any instance
    assert colocated_from_pd(base)[1] == (
        "the base config has no colocated instance: the colocated baseline copies its prefill instance with the "
        "largest batch limits of either role, max_num_seqs 384 (decode's), max_num_batched_tokens 8192 (prefill's); "
        "its gpu_memory_utilization: the prefill instance's, not the decode instance's")
    assert colocated_from_pd(load_cluster_config(BASE))[1] is None  # a colocated base is copied as is
    # Other GPUs for decode: the baseline runs on the prefill GPU, and says so.
    mixed = load_cluster_config(ROOT / "configs" / "cluster" / "heterogeneous_h100p_a100d.json")
    assert {r.config.hardware for r in expand(mixed, 2)[-1].config().instances()} == {"H100-SXM"}
    assert "; its hardware, npu_mem: the prefill instance's, not the decode instance's" in colocated_from_pd(mixed)[1]


def test_each_role_keeps_the_nodes_and_links_of_its_base_node():
    # A base with its A100 decode GPUs on a node of their own (intra_node_bw 300, nic_bw 25): the split's decode
    # instance had been put on the H100s' node, on their links, its KV hand-offs 23x as fast as across the NICs.
    mixed = load_cluster_config(ROOT / "configs" / "cluster" / "heterogeneous_h100p_a100d.json")
    (split,) = [v for v in expand(mixed, 4, ratios=[(3, 1)]) if v.label == "3P1D-tp1/1"]
    nodes = [(n.get("intra_node_bw"), n.get("nic_bw"), {i["hardware"] for i in n["instances"]})
             for n in split.raw["nodes"]]
    assert nodes == [(450, 50, {"H100-SXM"}), (300, 25, {"A100-80GB"})]
    # One base node for both roles: packed together as before.
    (same,) = [v for v in expand(load_cluster_config(BASE), 4, ratios=[(3, 1)]) if v.label == "3P1D-tp1/1"]
    assert len(same.raw["nodes"]) == 1


def test_a_large_budget_shares_one_instance_dict_per_role():
    # 1000 GPUs in every split: a copy of the instance per GPU per split would be a million dicts (GBs).
    variants = expand(load_cluster_config(BASE), 1000, colocated=False)
    assert len(variants) == 999
    dicts = {id(i) for v in variants for n in v.raw["nodes"] for i in n["instances"]}
    assert len(dicts) == 2
    v = variants[499]
    cfg = v.config()  # the shared dicts still make a whole config of 500 + 500 instances
    assert [r.config.pd_type for r in cfg.instances()].count("decode") == v.num_decode == 500


def test_a_refused_layout_names_the_role_of_its_instance():
    # The refusal comes from the layout's smallest config; its node/instance index would not be the
    # variant's, so the instance is named by its role.
    skipped: list[str] = []
    base = load_cluster_config(ROOT / "configs" / "cluster" / "deepseek_v3_pd_h200.json")
    expand(base, 16, tp_prefill=[8], tp_decode=[1, 8], skipped=skipped)
    assert [s.split(": ")[:2] for s in skipped] == [["1P8D-tp8/1", "decode instance"],
                                                    ["colo-16x-tp1", "colocated instance"]]
    assert all("weights need 628.83 GiB per NPU" in s for s in skipped)


def test_a_base_config_of_two_models_is_refused():
    raw = json.loads(BASE.read_text())
    other = {**raw["nodes"][0]["instances"][0], "model_name": "Qwen/Qwen3-8B"}
    raw["nodes"][0]["instances"].append(other)
    raw["nodes"][0]["num_instances"] = 2
    with pytest.raises(PdsimError, match=r"serves 2 models \(meta-llama/Llama-3.1-8B, Qwen/Qwen3-8B\)"):
        expand(cluster_config_from_dict(raw), 8)


def test_a_layout_no_split_of_the_budget_fits_is_said():
    skipped: list[str] = []  # TP 3 prefill on 2 GPUs: every split dropped without a word
    variants = expand(load_cluster_config(BASE), 2, tp_prefill=[3], skipped=skipped)
    assert [v.label for v in variants] == ["colo-2x-tp1"]
    assert skipped == ["prefill of 3 GPU(s) + decode of 1 GPU(s) (tp3/1): no whole number of them makes exactly 2 GPUs",
                       "colocated of 3 GPU(s) (tp3): no whole number of them makes exactly 2 GPUs"]


def test_a_ratio_no_layout_fits_is_said():
    skipped: list[str] = []
    variants = expand(load_cluster_config(BASE), 2, [(3, 5), (1, 1)], skipped=skipped)
    assert {v.label for v in variants} == {"1P1D-tp1/1", "colo-2x-tp1"}
    assert any(r.startswith("3:5: no layout") and "on exactly 2 GPUs" in r for r in skipped)


def test_expand_tp_pools_fill_nodes_of_eight():
    variants = expand(load_cluster_config(BASE), 16, tp_prefill=[1, 2], tp_decode=[2], colocated=True)
    labels = [v.label for v in variants]
    assert "4P6D-tp1/2" in labels and "2P6D-tp2/2" in labels and "colo-8x-tp2" in labels
    for v in variants:
        for node in v.raw["nodes"]:
            assert sum(i["num_npus"] for i in node["instances"]) <= 8
        assert sum(i["num_npus"] for n in v.raw["nodes"] for i in n["instances"]) == 16
    assert [v.label for v in expand(load_cluster_config(BASE), 8, parse_ratios("3P5D,6:2"), colocated=False)] == [
        "3P5D-tp1/1", "6P2D-tp1/1"]
    with pytest.raises(PdsimError):
        parse_ratios("3-5")


def test_expand_pipeline_stages_per_role():
    # --pp-prefill / --pp-decode: each instance is TP x PP GPUs on one node, the budget is spent
    # exactly, and the colocated baseline takes every layout either list gives.
    variants = expand(load_cluster_config(BASE), 8, pp_prefill=[1, 2], pp_decode=[2])
    labels = [v.label for v in variants]
    assert "2P3D-tp1/1-pp1/2" in labels and "2P2D-tp1/1-pp2/2" in labels
    assert "colo-8x-tp1" in labels and "colo-4x-tp1-pp2" in labels
    for v in variants:
        insts = [i for n in v.raw["nodes"] for i in n["instances"]]
        assert sum(i["num_npus"] for i in insts) == 8
        assert all(i["num_npus"] == i["tp_size"] * i["pp_size"] for i in insts)
        if not v.colocated:
            assert {i["pp_size"] for i in insts if i["pd_type"] == "prefill"} == {v.pp_prefill}
            assert {i["pp_size"] for i in insts if i["pd_type"] == "decode"} == {v.pp_decode}
    with pytest.raises(PdsimError, match=r"TP 4 x PP 4 \(decode\) does not fit in a node of 8 GPUs"):
        expand(load_cluster_config(BASE), 32, tp_decode=[4], pp_decode=[4])
    # One layout too large among others that fit: skipped with its reason, the sweep goes on.
    skipped: list[str] = []
    variants = expand(load_cluster_config(BASE), 16, tp_decode=[1, 8], pp_decode=[1, 2], skipped=skipped)
    assert variants and all(v.tp_decode * v.pp_decode <= 8 for v in variants)
    assert any("TP 8 x PP 2: 16 GPUs do not fit a node of 8 GPUs" in r for r in skipped), skipped


def test_rate_match_prices_overlapping_stages_by_the_slowest_one():
    # Synchronous stages overlap their micro-batches: a prefill step holds the instance for its
    # slowest stage, not the whole traversal. Async scheduling at two stages runs one step at a time.
    from pdsim.sweep.ratematch import prefill_rate
    from tests.helpers import cluster, instance, run

    def rate(**knobs) -> tuple[float, float, float]:
        inst = run(cluster(instance(None, 96, pp_size=2, num_npus=2, **knobs)), [(10, 2, 0.0)]).instances[0]
        chunks = ((2000, 0),)
        return (prefill_rate(inst, 2000), 1 / max(inst.predictor.stage_times_s(chunks, 0, 0)),
                1 / inst.predictor.step_time_s(chunks, 0, 0))

    sync, slowest_stage, _ = rate()
    assert sync == pytest.approx(slowest_stage)
    asynchronous, _, traversal = rate(async_scheduling=True)
    assert asynchronous == pytest.approx(traversal) and asynchronous < 0.6 * sync


def test_trace_at_rate_scales_and_lengthens():
    base = load_trace(DATASET, max_requests=100)
    t = trace_at_rate(base, 20.0, "scale", 0)
    assert len(t) == 100 and t[-1].arrival_time_ns == pytest.approx(99 / 20 * 1e9, rel=1e-6)
    assert [(r.input_toks, r.output_toks) for r in t] == [(r.input_toks, r.output_toks) for r in base]
    long = trace_at_rate(base, 20.0, "scale", 0, min_duration_s=30)
    assert len(long) == 600 and long[-1].arrival_time_ns == pytest.approx(599 / 20 * 1e9, rel=1e-6)
    assert all(a.arrival_time_ns <= b.arrival_time_ns for a, b in zip(long, long[1:]))
    assert long[100].input_toks == base[0].input_toks
    p1, p2 = trace_at_rate(base, 5.0, "poisson", 7), trace_at_rate(base, 5.0, "poisson", 7)
    assert [r.arrival_time_ns for r in p1] == [r.arrival_time_ns for r in p2]
    # Poisson arrivals offer the rate they are probed at (as drawn, seed 0's came 0.86x it over 60 s).
    for seed in (0, 2, 7):
        p = trace_at_rate(base, 5.0, "poisson", seed, min_duration_s=60)
        assert len(p) == 300 and p[-1].arrival_time_ns == pytest.approx(299 / 5 * 1e9, abs=1)
        gaps = np.diff([r.arrival_time_ns for r in p]) / 1e9
        assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.15)  # still exponential-like


def test_repeated_copies_of_64_bit_prefix_ids_stay_64_bit_and_their_own():
    from pdsim.workload.trace import MAX_HASH_ID, check_requests

    # Small ids: each copy shifted past the dataset's largest, as before. 64-bit hashes: wrapped, still apart.
    small_ids = [TraceRequest(i, 64, 4, i * 10**8, (2 * i, 2 * i + 1), 16) for i in range(5)]
    t = trace_at_rate(small_ids, 5.0, "scale", 0, min_duration_s=3)
    assert [r.hash_ids for r in t[5:7]] == [(10, 11), (12, 13)]
    hashes = [TraceRequest(i, 64, 4, i * 10**8, (MAX_HASH_ID - 2 * i, MAX_HASH_ID - 2 * i - 1), 16)
              for i in range(5)]
    t = trace_at_rate(hashes, 5.0, "scale", 0, min_duration_s=3)
    ids = [h for r in t for h in r.hash_ids]
    assert len(t) == 15 and len(set(ids)) == len(ids) and all(0 <= h <= MAX_HASH_ID for h in ids)
    check_requests(t)  # what the engine takes


def test_pool_matches_inline_and_resume_is_exact(small, tmp_path):
    variants, base_trace, jobs = small
    inline = run_sweep(jobs, InlineExecutor(base_trace, SETTINGS), tmp_path / "a.csv", resume=False)
    pool = PoolExecutor(base_trace, SETTINGS, workers=2)
    try:
        pooled = run_sweep(jobs, pool, tmp_path / "b.csv", resume=False)
    finally:
        pool.close()
    assert pooled == inline
    # A killed sweep: half the rows and a torn last line; resume redoes only the missing runs.
    lines = (tmp_path / "a.csv").read_text().splitlines()
    (tmp_path / "c.csv").write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    ran: list[Job] = []

    class Counting(InlineExecutor):
        def run(self, todo):
            ran.extend(todo)
            yield from super().run(todo)

    resumed = run_sweep(jobs, Counting(base_trace, SETTINGS), tmp_path / "c.csv", resume=True)
    assert resumed == inline
    assert len(ran) == len(jobs) - 4
    # Cut right after a comma (every field there, the last empty), or inside the last number (a whole row that
    # reads as another): a line without its end is torn all the same, and that run is done again.
    for name, torn in (("d.csv", lines[5][:lines[5].rfind(",") + 1]), ("e.csv", lines[5][:-1])):
        assert torn.count(",") == lines[5].count(",")
        (tmp_path / name).write_text("\n".join(lines[:5]) + "\n" + torn)
        ran.clear()
        assert run_sweep(jobs, Counting(base_trace, SETTINGS), tmp_path / name, resume=True) == inline
        assert len(ran) == len(jobs) - 4
    # A resume of a smaller grid runs nothing and writes that grid's rows alone, as the same command run fresh does
    # (the others' rows stayed in the file, their configs no longer written beside them).
    ran.clear()
    fewer = jobs[: len(jobs) // 2]
    assert run_sweep(fewer, Counting(base_trace, SETTINGS), tmp_path / "c.csv", resume=True) == inline[: len(fewer)]
    fresh = tmp_path / "f.csv"
    run_sweep(fewer, InlineExecutor(base_trace, SETTINGS), fresh, resume=False)
    assert not ran and (tmp_path / "c.csv").read_text() == fresh.read_text()


KILLED_SWEEP = """
import multiprocessing, os, sys, time
from pdsim.sweep.runner import PoolExecutor

def report(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(120)

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[2])
    pool = PoolExecutor([], None, workers=2)
    pool.pool.submit(report, sys.argv[1])
    time.sleep(120)
"""


def _checkout_env() -> dict[str, str]:
    """The environment for a child Python that imports this checkout's pdsim, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _running_in_group(pgid: int) -> list[int]:
    """Processes of the group still running (a zombie, exited but not yet reaped, has ended)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(group) == pgid and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _stop_group(pgid: int, within_s: float) -> list[int]:
    """Wait up to within_s for the group's processes to end; kill and return those that did not."""
    import signal
    import time

    deadline = time.monotonic() + within_s
    while (left := _running_in_group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_pool_workers_end_when_the_sweep_is_killed(tmp_path, start_method):
    import multiprocessing
    import subprocess
    import sys
    import time

    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} start method here")
    script, pid_file = tmp_path / "sweep.py", tmp_path / "worker.pid"
    script.write_text(KILLED_SWEEP)
    sweep = subprocess.Popen([sys.executable, str(script), str(pid_file), start_method], start_new_session=True,
                             env=_checkout_env())
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            assert time.monotonic() < deadline and sweep.poll() is None, "the worker never started"
            time.sleep(0.05)
    finally:
        sweep.kill()  # SIGKILL: no clean-up runs in the sweep process
        sweep.wait()
    # Before, the workers ran on and then waited for ever for work, holding their memory (under
    # forkserver the fork server stayed too).
    assert not _stop_group(sweep.pid, 15.0), "pool workers outlived the killed sweep"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_stops_a_sweep_at_once(tmp_path, how):
    # SIGTERM, to the sweep's process alone (`kill`, a job scheduler), stops it as Ctrl-C does. The workers had
    # inherited its SIGTERM handler, so the SIGTERM that stops them was handed back as a run's error and the
    # sweep waited for them.
    import signal
    import subprocess
    import sys
    import time

    trace = tmp_path / "trace.jsonl"
    res = CliRunner().invoke(cli, ["workload", "generate", "--num-requests", "150000", "--rate", "20",
                                   "--out", str(trace)])
    assert res.exit_code == 0, res.output
    # Python as a terminal starts it (Ctrl-C raises KeyboardInterrupt), whatever this process ignores.
    start = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "runpy.run_module('pdsim', run_name='__main__')")
    cmd = [sys.executable, "-c", start, "sweep", "--base-config", str(BASE), "--dataset", str(trace),
           "--rates", "5,10,20", "--gpus", "16", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "100",
           "--workers", "2", "--quiet", "--out", str(tmp_path / "s")]
    sweep = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_checkout_env())
    try:
        assert sweep.stdout.readline().startswith("sweep: ")
        time.sleep(2.0)  # the workers are inside their first runs (each takes far longer than this)
        if how == "ctrl-c":
            os.killpg(sweep.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole process group
        else:
            os.kill(sweep.pid, signal.SIGTERM)
        interrupted = time.monotonic()
        # Before, each worker took the interrupt for its run's result and went on to the run queued
        # behind it: the sweep ended only when that run did (tens of seconds here).
        _, err = sweep.communicate(timeout=120)
        took_s = time.monotonic() - interrupted
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
        left = _stop_group(sweep.pid, 5.0)
    said, code = {"ctrl-c": ("aborted", 130), "sigterm": ("terminated", 143)}[how]
    assert sweep.returncode == code and said in err and "Traceback" not in err, err
    assert took_s < 5.0, f"the sweep took {took_s:.1f} s to stop"
    assert not left, "pool workers outlived the interrupted sweep"


def test_a_ctrl_c_while_runs_are_submitted_stops_those_submitted(small, monkeypatch):
    # A Ctrl-C held back while the pool forks its workers is raised as the submissions end. It used to come
    # before the executor counted its runs as pending, so close() waited for the runs it had submitted.
    _, base_trace, jobs = small
    pool = PoolExecutor(base_trace, SETTINGS, workers=1)
    submit = pool.pool.submit
    submitted = []

    def interrupted(fn, job):
        if len(submitted) == 2:
            raise KeyboardInterrupt
        submitted.append(job)
        return submit(fn, job)

    monkeypatch.setattr(pool.pool, "submit", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            next(pool.run(jobs))
        assert pool.interrupted
    finally:
        pool.close()


def test_rows_carry_each_roles_kv_capacity_and_peak_share(small, tmp_path):
    variants, base_trace, jobs = small
    rows = run_sweep(jobs, InlineExecutor(base_trace, SETTINGS), tmp_path / "m.csv", resume=False)
    by = {(r["label"], r["rate_per_s"]): r for r in rows}
    colo, split_low, split_high = by[("colo-4x-tp1", "40")], by[("1P3D-tp1/1", "10")], by[("1P3D-tp1/1", "40")]
    # One H100 instance of Llama-3.1-8B per GPU: the same capacity in every role (docs/memory.md's arithmetic).
    caps = {r[f"{role}_kv_capacity_gb"] for r in (colo, split_low) for role in ("prefill", "decode")}
    assert len(caps) == 1 and 40 < caps.pop() < 80
    assert colo["prefill_peak_kv_frac"] == colo["decode_peak_kv_frac"]  # the same instances
    assert 0 < split_low["decode_peak_kv_frac"] < split_high["decode_peak_kv_frac"] <= 1  # more load holds more
    assert split_low["prefill_peak_kv_frac"] < split_low["decode_peak_kv_frac"]  # prefill hands its KV over


def test_resume_refuses_rows_made_under_other_settings(tmp_path):
    runner = CliRunner()
    common = ["--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "30", "--gpus", "2",
              "--slo-tpot-ms", "25", "--workers", "1", "--min-duration-s", "0", "--out", str(tmp_path / "s")]
    res = runner.invoke(cli, ["sweep", *common, "--rates", "5", "--slo-ttft-ms", "1000"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "s"
    assert f"wrote {out / 'runs.csv'}, {out / 'runs.settings.json'}, " in res.output  # both kept for --resume
    before = (tmp_path / "s" / "runs.csv").read_text()
    res = runner.invoke(cli, ["sweep", *common, "--rates", "5,20", "--slo-ttft-ms", "500", "--resume"])
    message = str(res.exception)
    assert "were made with other settings (" in message and "slo_ttft_ms 1000 -> 500" in message, res.output
    # The derived duration changes with the SLO; shown to 6 digits, not with float noise (40.050000000000004).
    assert re.search(r"min_duration_s [\d.]{1,7} -> [\d.]{1,7}; ", message), message
    assert (tmp_path / "s" / "runs.csv").read_text() == before
    res = runner.invoke(cli, ["sweep", *common, "--rates", "5,20", "--slo-ttft-ms", "1000", "--resume"])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "s" / "runs.csv").read_text().splitlines()) == len(before.splitlines()) + 2
    # The wall time is of the runs made now: the line said "4 runs" where two were only read back.
    assert re.search(r"^4 runs \(2 kept by --resume, 2 run now\) in [\d.]+ s wall", res.output, re.M), res.output


def test_resume_refuses_rows_made_with_a_profile_since_changed_in_place(tmp_path):
    # The settings named the profiles' folder only: a profile re-measured there was resumed over, old rows kept.
    root = tmp_path / "profiles"
    shutil.copytree(ROOT / "profiles" / "H100-SXM", root / "H100-SXM")
    runner = CliRunner()
    common = ["--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "20", "--gpus", "2",
              "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers", "1", "--min-duration-s", "0",
              "--profiles-root", str(root), "--out", str(tmp_path / "s")]
    assert runner.invoke(cli, ["sweep", *common, "--rates", "5"]).exit_code == 0
    dense = root / "H100-SXM" / "meta-llama" / "Llama-3.1-8B" / "bfloat16" / "tp1" / "dense.csv"
    dense.write_text(dense.read_text().replace(",", ", ", 1))  # any change to its bytes
    res = runner.invoke(cli, ["sweep", *common, "--rates", "5,20", "--resume"])
    assert isinstance(res.exception, PdsimError) and "profiles_sha256" in str(res.exception), res.output


def test_a_resumed_command_says_the_configurations_notes_and_that_kept_runs_were_not_run(tmp_path):
    # A --resume that ran nothing dropped the configuration's notes (KV hand-off defaults, async scheduling),
    # which only the runs had said.
    root = tmp_path / "profiles"
    shutil.copytree(ROOT / "profiles" / "H100-SXM", root / "H100-SXM")  # measured tables: grid notes possible
    runner = CliRunner()
    for command, extra in (("sweep", ["--rates", "5"]), ("search", [])):
        common = [command, "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "20",
                  "--gpus", "2", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers", "1",
                  "--min-duration-s", "0", "--profiles-root", str(root), "--out", str(tmp_path / command), *extra]
        fresh = runner.invoke(cli, common)
        assert fresh.exit_code == 0, fresh.output
        resumed = runner.invoke(cli, [*common, "--resume"])
        assert resumed.exit_code == 0, resumed.output
        said = [line for line in fresh.output.splitlines() if line.startswith("NOTE: ")]
        assert any("KV hand-offs reach" in line for line in said) and any("async_scheduling" in line for line in said)
        assert [line for line in said if line not in resumed.output] == []
        assert "kept by --resume not run again" in resumed.output
        assert "kept by --resume not run again" not in fresh.output


def test_ray_matches_local_pool(small, tmp_path):
    ray = pytest.importorskip("ray")
    from pdsim.sweep.runner import RayExecutor

    variants, base_trace, jobs = small
    pool = PoolExecutor(base_trace, SETTINGS, workers=2)
    try:
        pooled = run_sweep(jobs, pool, tmp_path / "pool.csv", resume=False)
    finally:
        pool.close()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_sweep(jobs, RayExecutor(base_trace, SETTINGS, address=None), tmp_path / "ray.csv", False)
    finally:
        ray.shutdown()
    assert on_ray == pooled
    assert (tmp_path / "ray.csv").read_text().count("\n") == len(jobs) + 1


def test_bisection_brackets_then_narrows():
    st = Bisection(variant=None, start_rate=10.0, rel_tol=0.05)  # type: ignore[arg-type]
    true_goodput = 23.0
    while (rate := st.next_rate()) is not None:
        st.record(rate, {"rate": rate}, rate <= true_goodput)
    assert st.lo <= true_goodput < st.hi and (st.hi - st.lo) <= 0.05 * st.hi
    st = Bisection(variant=None, start_rate=10.0)  # type: ignore[arg-type]
    while (rate := st.next_rate()) is not None:
        st.record(rate, {}, False)
    assert st.lo == 0.0 and len(st.probes) <= st.max_probes


def test_bisection_ends_its_bracket_at_the_highest_rate_a_probe_may_run():
    # Past max_rate a probe's trace would hold more requests than pdsim runs: the search stops there, a lower
    # bound, instead of failing the whole command on the probe's request count.
    st = Bisection(variant=None, start_rate=10.0, max_rate=35.0)  # type: ignore[arg-type]
    while (rate := st.next_rate()) is not None:
        st.record(rate, {}, True)
    assert [r for r, _ in st.probes] == [10.0, 20.0] and st.lo == 20.0 and math.isinf(st.hi)
    st = Bisection(variant=None, start_rate=50.0, max_rate=35.0)  # type: ignore[arg-type]
    assert st.next_rate() == 35.0


def test_a_goodput_no_probe_failed_is_not_explained_as_a_shortfall():
    from pdsim.sweep.search import disagreements

    row = {"label": "colo-8x-tp1", "ratio": "colo", "goodput_req_s": 0.16, "goodput_req_s_per_gpu": 0.02,
           "est_req_s_per_gpu": 12.0, "sim_over_est": 0.002, "first_fail_req_s": math.nan, "first_fail_why": "-",
           "low_load_miss": 0, "est_bottleneck": "decode"}
    (note,) = disagreements([row])
    assert "a lower bound: no probe failed" in note and "stretch TPOT" not in note


def test_bisection_stops_where_load_no_longer_matters():
    # Halving the rate changed neither attainment nor the p90s: no lower rate can pass.
    def row(ttft: float, tpot: float, attain: float = 0.0, stable: int = 1) -> dict:
        return {"attain_both": attain, "attain_ttft": 1.0, "attain_tpot": attain, "ttft_p90_ms": ttft,
                "tpot_p90_ms": tpot, "stable": stable}

    st = Bisection(variant=None, start_rate=10.0)  # type: ignore[arg-type]
    st.record(st.next_rate(), row(114.0, 7.6), False)
    st.record(st.next_rate(), row(113.8, 7.55), False)
    assert not st.low_load_miss and st.next_rate() == 2.5  # one flat halving is not enough
    st.record(st.next_rate(), row(113.7, 7.55), False)
    assert st.low_load_miss and st.next_rate() is None and len(st.probes) == 3
    # Said as what it is: flat figures, which a burst the rate does not spread or rejections make too.
    from pdsim.sweep.search import _why_failed

    assert _why_failed(st.hi_row, st.low_load_miss, st.low_load_by_lone).startswith(
        "flat as the rate halved: attain 0 (TTFT 1, TPOT 0)")
    # Still queueing (p90 TTFT moves with the rate, or a run is unstable): keep halving.
    for rows in ((row(900.0, 7.6), row(450.0, 7.6), row(440.0, 7.6)),
                 (row(114.0, 7.6, stable=0), row(114.0, 7.6), row(114.0, 7.6)),
                 (row(520.0, 7.6), row(505.0, 7.6), row(500.0, 7.6))):  # 3% closer to an SLO just above
        st = Bisection(variant=None, start_rate=10.0)  # type: ignore[arg-type]
        for r in rows:
            st.record(st.next_rate(), r, False)
        assert not st.low_load_miss and st.next_rate() == 1.25


def test_alone_marks_requests_whose_lives_overlap_no_other():
    import pandas as pd

    from pdsim.sweep.runner import _alone

    # Lives: [0, 1], [1, 2] (touching only), [5, 9], [6, 7] (inside the previous), [10, never], [20, 21];
    # a rejection at 0.5 takes no time in the cluster and is not alone itself.
    df = pd.DataFrame({"arrival_s": [5.0, 0.0, 1.0, 6.0, 10.0, 20.0, 0.5],
                       "finish_s": [9.0, 1.0, 2.0, 7.0, math.nan, 21.0, math.nan],
                       "status": ["finished"] * 4 + ["unfinished", "finished", "rejected"]})
    assert _alone(df).tolist() == [False, True, True, False, False, False, False]  # the unfinished one never ends


def test_bisection_stops_when_lone_misses_keep_attainment_below_the_target():
    def row(attain: float, alone_missed: int, requests: int = 100) -> dict:
        return {"attain_both": attain, "attain_ttft": attain, "attain_tpot": 1.0, "alone": alone_missed,
                "alone_missed": alone_missed, "scored": 60, "requests": requests, "stable": 1,
                "ttft_p90_ms": 80.0, "tpot_p90_ms": 12.0}

    # The run holds the dataset's 100 requests once; 11 missed alone: at most 0.89 meet the SLOs at any rate.
    st = Bisection(variant=None, start_rate=10.0, attainment=0.9, base_requests=100)  # type: ignore[arg-type]
    st.record(st.next_rate(), row(0.0, 11), False)
    assert st.low_load_miss and st.next_rate() is None
    # 10 lone misses leave 0.9 reachable; a repeated dataset or separate attainment: lone requests do not tell.
    for r, mode in [(row(0.0, 10), "joint"), (row(0.0, 50, requests=200), "joint"), (row(0.0, 50), "separate")]:
        st = Bisection(variant=None, start_rate=10.0, attainment=0.9, mode=mode,  # type: ignore[arg-type]
                       base_requests=100)
        st.record(st.next_rate(), r, False)
        assert not st.low_load_miss and st.next_rate() == 5.0, (r, mode)
    # Where they tell, flat figures over two halvings do not stop the search (the scored requests may not have
    # changed yet); where they do not, they do.
    for base, stops in [(100, False), (0, True)]:
        st = Bisection(variant=None, start_rate=10.0, attainment=0.9, base_requests=base)  # type: ignore[arg-type]
        for _ in range(3):
            st.record(st.next_rate(), row(0.0, 5), False)
        assert st.low_load_miss is stops, base


def test_bisection_stops_when_rejected_requests_keep_attainment_below_the_target():
    from pdsim.sweep.search import _why_failed, disagreements

    def row(rejected: int, alone_missed: int = 0, scored: int = 199) -> dict:
        return {"attain_both": 0.6, "attain_ttft": 0.6, "attain_tpot": 0.6, "alone": 0, "alone_missed": alone_missed,
                "rejected": rejected, "scored": scored, "requests": 200, "stable": 1, "ttft_p90_ms": 80.0,
                "tpot_p90_ms": 12.0}

    # 75 of the dataset's 200 requests are too long for the KV cache: rejected at any rate; of 199 scored, at least
    # 74 were rejected, so at most 1 - 74 / 199 = 0.63 can meet the SLOs, in either reading of attainment. Before,
    # the search halved the rate 23 times towards zero.
    for mode in ("joint", "separate"):
        st = Bisection(variant=None, start_rate=10.0, attainment=0.9, mode=mode,  # type: ignore[arg-type]
                       base_requests=200)
        st.record(st.next_rate(), row(75), False)
        assert st.low_load_miss and st.next_rate() is None, mode
    # Rejections and lone misses add up (joint): 11 + 10 of 199 leave at most 0.894.
    st = Bisection(variant=None, start_rate=10.0, attainment=0.9, base_requests=200)  # type: ignore[arg-type]
    st.record(st.next_rate(), row(12, alone_missed=10), False)
    assert st.low_load_miss
    # A run that scored every request had no window; a lower rate's may leave those rejected out: nothing told.
    st = Bisection(variant=None, start_rate=10.0, attainment=0.9, base_requests=200)  # type: ignore[arg-type]
    st.record(st.next_rate(), row(75, scored=200), False)
    assert not st.low_load_miss and st.next_rate() == 5.0
    # 12 rejected alone leave 0.94 reachable: keep halving (separate: the flat rule decides later). So do 75
    # rejected when 80 requests fell outside the scored window: all 75 may have, and a lower rate's window may
    # add only the others. 75 with 27 outside: at least 48 were scored, at most 1 - 48 / 173 = 0.72 can meet.
    for mode in ("joint", "separate"):
        for r in (row(12), row(75, scored=120)):
            st = Bisection(variant=None, start_rate=10.0, attainment=0.9, mode=mode,  # type: ignore[arg-type]
                           base_requests=200)
            st.record(st.next_rate(), r, False)
            assert not st.low_load_miss and st.next_rate() == 5.0, (mode, r)
        st = Bisection(variant=None, start_rate=10.0, attainment=0.9, mode=mode,  # type: ignore[arg-type]
                       base_requests=200)
        st.record(st.next_rate(), row(75, scored=173), False)
        assert st.low_load_miss, mode
    why = _why_failed(row(75), low_load=True)  # the reasons count the whole run's rejections
    assert why == "misses at low load: attain 0.6 (TTFT 0.6, TPOT 0.6; 75 of 200 rejected, 0 missed alone)"
    # Under --slo-mode separate a failure is told by the SLO that missed, not by the joint share (which the target
    # does not read: 0.755 had been quoted for a rate whose TTFT passed and TPOT missed at 0.846).
    split = {"stable": 1, "attain_ttft": 0.923, "attain_tpot": 0.8465, "attain_both": 0.755}
    assert _why_failed(split, attainment=0.85, mode="separate") == "attain TPOT 0.846"
    assert _why_failed(split, attainment=0.85) == "attain 0.755"
    note = disagreements([{"label": "1P1D-tp1/1", "ratio": "1:1", "goodput_req_s_per_gpu": 0.0,
                           "est_req_s_per_gpu": 1.0, "sim_over_est": 0.0, "low_load_miss": 1, "first_fail_why": why,
                           "est_bottleneck": "decode"}])
    assert note[0].endswith("requests rejected at any rate (too long for the model or its KV cache: see the rejected "
                            "column of probes.csv), not capacity, are the limit")


def test_search_says_a_config_misses_even_at_low_load(small, tmp_path):
    from pdsim.sweep.ratematch import Lengths, estimate
    from pdsim.sweep.search import disagreements, goodput_row

    variants, base_trace, _ = small
    lengths = Lengths(sum(r.input_toks for r in base_trace) / len(base_trace),
                      sum(r.output_toks for r in base_trace) / len(base_trace))
    # A TPOT SLO below a lone request's step time: no capacity, but the search still starts where
    # batch one would run.
    est = estimate(variants[0], lengths, 1.0).as_dict()
    assert est["capacity_req_s"] == 0.0 and est["start_req_s"] > 0
    settings = RunSettings(slo=Slo(ttft_ms=1000, tpot_ms=1.0), min_duration_s=0.0,
                           profiles_root=str(ROOT / "profiles"))
    writer = RowWriter(tmp_path / "probes.csv", ROW_FIELDS, False)
    states = search(variants[:1], {variants[0].label: est["start_req_s"]}, InlineExecutor(base_trace, settings),
                    writer, attainment=0.9, mode="joint")
    writer.close()
    st = states[0]
    assert st.lo == 0.0 and st.low_load_miss and len(st.probes) < st.max_probes  # stopped before the cap
    out = goodput_row(st, est)
    # No base_requests given: the requests that ran alone do not tell, two flat halvings do.
    assert out["first_fail_why"].startswith("flat as the rate halved: attain 0 (TTFT 1, TPOT 0)")
    assert out["metrics_at_req_s"] == st.hi and out["tpot_p90_ms"] > 1.0  # the lowest failing rate's metrics
    assert out["decode_peak_kv_frac"] == st.hi_row["decode_peak_kv_frac"] > 0  # memory too
    assert any("stayed put over two halvings" in n and "requests that miss even alone" in n
               and "--arrival poisson" in n for n in disagreements([out]))


def test_search_finds_a_goodput_per_config(small, tmp_path):
    variants, base_trace, _ = small
    writer = RowWriter(tmp_path / "probes.csv", ROW_FIELDS, False)
    states = search(variants, {v.label: 20.0 for v in variants}, InlineExecutor(base_trace, SETTINGS), writer,
                    attainment=0.9, mode="joint", rel_tol=0.2, max_probes=6)
    writer.close()
    for st in states:
        assert st.lo == 0.0 or st.lo_row["attain_both"] >= 0.9
        assert math.isinf(st.hi) or st.hi > st.lo


def test_cli_sweep_and_search(tmp_path):
    runner = CliRunner()
    common = ["--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "40", "--gpus", "2",
              "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers", "1", "--min-duration-s", "0"]
    res = runner.invoke(cli, ["sweep", *common, "--rates", "5,20", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "sweep.csv").exists() and (tmp_path / "s" / "sweep_pareto.png").exists()
    swept = pd.read_csv(tmp_path / "s" / "sweep.csv")
    assert set(swept.dp_decode) == set(swept.ep_decode) == {1}  # a dense model: no DP group, no expert split
    res = runner.invoke(cli, ["search", *common, "--max-probes", "5", "--ttft-mode", "client",
                              "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    assert "winner:" in res.output or "no configuration" in res.output
    assert "TTFT as the client sees it" in res.output and "steady state: arrivals span >= " in res.output
    assert (tmp_path / "q" / "search_goodput.png").exists()
    assert "mem_bw" not in res.output  # the template's bandwidth is its GPU's datasheet figure
    # A template moved to another GPU but not its bandwidth: the estimate's bandwidth is named.
    moved = json.loads(BASE.read_text())
    moved["nodes"][0]["instances"][0]["hardware"] = "A100-80GB"
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    res = runner.invoke(cli, ["sweep", *common, "--rates", "5", "--out", str(tmp_path / "m")]
                        + ["--base-config", str(tmp_path / "moved.json")])
    assert res.exit_code == 0, res.output
    assert ("note: step times estimated at npu_mem.mem_bw 3350 GB/s, the config's; A100-80GB's datasheet gives"
            in res.output)


def test_duration_rule_covers_the_longest_request_life():
    from pdsim.sweep.steady import longest_life_s, run_duration_s
    from pdsim.workload.trace import TraceRequest

    base = [TraceRequest(0, 100, 101, 0), TraceRequest(1, 100, 11, 10**9)]
    life_s = longest_life_s(base, ttft_slo_ms=1000, tpot_slo_ms=25)
    assert life_s == pytest.approx(1.0 + 100 * 0.025)  # TTFT SLO + 100 more tokens at the TPOT SLO
    assert run_duration_s(60.0, life_s) == 60.0
    assert run_duration_s(5.0, life_s) == pytest.approx(3 * life_s)
    # A 2k-token output at a 45 ms TPOT SLO lives ~90 s: 60 s is too short, the rule gives 3 lives.
    long_out = [TraceRequest(0, 100, 2048, 0)]
    assert run_duration_s(60.0, longest_life_s(long_out, 1000, 45)) == pytest.approx(3 * (1 + 2047 * 0.045))
    trace = trace_at_rate(base, 4.0, "scale", 0, run_duration_s(5.0, life_s))
    assert trace[-1].arrival_time_ns / 1e9 >= 3 * life_s - 0.25  # (n - 1) gaps of 1/rate


def _sweep(tmp_path, name: str, *extra: str):
    args = ["sweep", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "40", "--gpus", "2",
            "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers", "1", "--time-limit-slack-s", "5",
            "--no-plots", "--out", str(tmp_path / name), *extra]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    import pandas as pd

    return res.output, pd.read_csv(tmp_path / name / "sweep.csv")


def test_an_overloaded_run_is_unstable_and_never_meets_the_target(tmp_path):
    # Attainment target 0: every run passes on attainment alone; the 60 req/s run on two GPUs
    # (prompts ~3,000 tokens) is far beyond what they prefill, its queue grows, and it must not count.
    out, df = _sweep(tmp_path, "s", "--rates", "2,60", "--attainment", "0", "--ratios", "1:1", "--no-colocated")
    low, high = df[df.rate_per_s == 2].iloc[0], df[df.rate_per_s == 60].iloc[0]
    assert low.stable == 1 and high.stable == 0
    assert "queue grew" in high.unstable_reason and high.served_req_s < 0.5 * high.offered_req_s
    assert "UNSTABLE: 1 of 2 runs" in out
    goodput_line = out.split("goodput on this rate grid")[1].splitlines()[2].split()
    assert goodput_line[:2] == ["1P1D-tp1/1", "2"]  # goodput stops at the stable rate
    from pdsim.sweep.search import meets

    assert not meets(high.to_dict(), 0.0, "joint") and meets(low.to_dict(), 0.0, "joint")
    # Warm-up and drain are not scored: fewer requests scored than simulated.
    assert low.scored < low.requests


def test_a_grid_whose_lowest_rate_fails_says_it_found_no_goodput(tmp_path):
    out, df = _sweep(tmp_path, "s", "--rates", "60", "--attainment", "0", "--ratios", "1:1", "--no-colocated")
    assert df.stable.tolist() == [0]
    assert ("NOTE: 1P1D-tp1/1 failed the lowest rate swept (60 req/s): no goodput on this grid, not a goodput of 0 "
            "(lower --rates") in out


def test_runs_offered_another_load_than_their_rate_are_said():
    # A bursty trace stretched to a mean rate (--arrival scale) can offer its scored window twice the label's load.
    from pdsim.sweep.cli import _rate_label_note

    rows = [{"label": "2P6D", "rate_per_s": "3.74", "offered_req_s": 8.4},
            {"label": "2P6D", "rate_per_s": "10", "offered_req_s": 10.6},
            {"label": "4P4D", "rate_per_s": "5", "offered_req_s": float("nan")}]
    said = _rate_label_note(rows, "scale")
    assert said.startswith("NOTE: 1 run of 3 was offered a load over the scored window more than 25% from the rate "
                           "(e.g. 2P6D at 3.74 req/s was offered 8.4;")
    assert said.endswith("--arrival poisson draws arrivals at the rate, or more --num-requests smooths the trace's "
                         "bursts")
    assert _rate_label_note(rows[1:], "scale") == ""


def test_ttft_mode_reaches_the_runs(tmp_path):
    common = ("--rates", "2", "--ratios", "1:1", "--no-colocated")
    said, prefill = _sweep(tmp_path, "p", *common)
    out, client = _sweep(tmp_path, "c", *common, "--ttft-mode", "client")
    assert "TTFT as the client sees it" in out
    # The default says where a slower link shows: not in TTFT.
    assert "wait for a decode slot count in TPOT; --ttft-mode client counts them in TTFT" in said
    # The splits' KV hand-offs take pdsim's measured transfer defaults, which the sweep says once.
    assert said.count("NOTE: KV hand-offs reach 73% of link_bw / nic_bw and pay 10.5 us per model layer") == 1
    # Client TTFT adds the KV transfer and the first decode step to the prefill-side TTFT.
    assert client.ttft_p50_ms[0] > prefill.ttft_p50_ms[0] + 1.0
    # TPOT follows the mode: from the first token the client sees, so without the hand-off in it.
    assert client.tpot_p50_ms[0] < prefill.tpot_p50_ms[0]
    # The CSV read alone says where its TTFT ends.
    assert list(prefill.ttft_mode) == ["prefill"] and list(client.ttft_mode) == ["client"]


def test_trace_at_rate_keeps_prefix_ids_and_gives_repeats_their_own():
    base = [TraceRequest(0, 1024, 8, 0, (1, 2), 512), TraceRequest(1, 600, 8, 10**9, (1, 3), 512)]
    reqs = trace_at_rate(base, 1.0, "scale", 0, min_duration_s=4)
    assert len(reqs) == 4
    assert [r.hash_ids for r in reqs[:2]] == [(1, 2), (1, 3)]  # shared first block kept within a copy
    assert all(r.hash_block_tokens == 512 for r in reqs)
    first, second = {h for r in reqs[:2] for h in r.hash_ids}, {h for r in reqs[2:] for h in r.hash_ids}
    assert not first & second  # a repeated copy is not a cache hit of the first


def test_swept_variants_keep_every_base_field_but_the_nodes():
    """A variant replaces the nodes only: kv_transfer, router, links (per-dimension lists too) and the
    per-node network (nic_bw, intra_node_bw, cpu_mem) of the base config reach every swept config."""
    raw = json.loads(BASE.read_text())
    raw["link_bw"], raw["link_latency"] = [400.0, 50.0], [100.0, 5000.0]
    raw["kv_transfer"] = {"mode": "layerwise", "dtype": "fp8", "bandwidth_efficiency": 0.5}
    raw["router"] = {"prefill_policy": "round_robin", "decode_policy": "random"}
    raw["nodes"][0].update(nic_bw=25.0, intra_node_bw=300.0, intra_node_latency=1500.0)
    base = cluster_config_from_dict(raw, "<test base>")
    node_fields = {"instances", "num_instances"}
    base_top = base.model_dump(exclude={"nodes", "num_nodes"})
    base_node = base.nodes[0].model_dump(exclude=node_fields)
    variants = expand(base, 16, tp_prefill=[1, 2], tp_decode=[1])
    assert len(variants) > 2 and any(len(v.raw["nodes"]) > 1 for v in variants)
    for v in variants:
        cfg = v.config()
        assert cfg.model_dump(exclude={"nodes", "num_nodes"}) == base_top, v.label
        for node in cfg.nodes:
            assert node.model_dump(exclude=node_fields) == base_node, v.label


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--attainment", "nan", r"--attainment: expected a share of requests >= 0 and <= 1, got nan"),
    ("--seed", "-1", r"--seed: expected a seed >= 0"),
    ("--gpus", "99999999999999999999", r"--gpus: expected a GPU count >= 1 and <= 65536"),
    ("--rates", "1e308", r"--rates: expected numbers > 0 and <= 1e\+06 \(req/s\), got '1e308'"),
    ("--rates", "nan,5", r"--rates: expected numbers > 0 and <= 1e\+06 \(req/s\), got 'nan,5'"),
    ("--ratios", "", r"--ratios: expected 'all' or items like 3:5 or 3P5D, got ''"),  # not colocated alone
    ("--ratios", "1:1,0:2", r"--ratios: '0:2': a P:D split needs at least 1 prefill and 1 decode instance"),
    # An empty item may be a lost value: "1,,2" ran 1 and 2 without a word.
    ("--rates", "1,,2", r"--rates: an empty item in '1,,2' \(two commas in a row, or one at an end\)"),
    ("--ratios", "1:1,", r"--ratios: an empty item in '1:1,'"),
    ("--tp-decode", ",2", r"--tp-decode: an empty item in ',2'"),
    # Every split asked for by name falls out: it ran the colocated baseline alone and exited 0.
    # It names the baseline that would run ("the colocated baseline alone" read as a contradiction beside another
    # colocated layout that cannot).
    ("--ratios", "3:3", r"--ratios 3:3: none of the P:D splits asked for can run on 2 GPUs \(only the colocated "
                        r"baseline colo-2x-tp1 would\): 3:3: no layout"),
])
def test_sweep_options_out_of_range_are_refused_before_any_run(tmp_path, option, value, words):
    args = {"--attainment": "0.9", "--seed": "0", "--gpus": "2", "--rates": "5", "--ratios": "all", option: value}
    res = CliRunner().invoke(cli, ["sweep", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests",
                                   "20", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers", "1",
                                   "--out", str(tmp_path / "s"), *[x for kv in args.items() for x in kv]])
    assert isinstance(res.exception, PdsimError) and re.search(words, str(res.exception)), res.output
    assert not (tmp_path / "s" / "runs.csv").exists()


def test_resume_refuses_rows_it_did_not_write_and_configs_over_inputs(tmp_path):
    runner = CliRunner()
    out = tmp_path / "s"
    common = ["--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "20", "--gpus", "2",
              "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers", "1", "--min-duration-s", "0",
              "--rates", "5"]
    assert runner.invoke(cli, ["sweep", *common, "--out", str(out)]).exit_code == 0
    runs = out / "runs.csv"
    lines = runs.read_text().splitlines()
    header = lines[0].split(",")
    # Out-of-range cells were kept, printed and ranked; a rate written 5.0 is not the key 5 (it ran again).
    for column, value in (("finished", "abc"), ("rate_per_s", "nan"), ("attain_both", "5"), ("ttft_p90_ms", "-5"),
                          ("stable", "7"), ("rate_per_s", "5.0"), ("served_req_s", "inf"), ("alone_missed", "999"),
                          ("decode_peak_kv_frac", "1.5"), ("preemptions", "-1"), ("rejected", "999"),
                          ("scored", "999")):
        cells = lines[1].split(",")
        cells[header.index(column)] = value
        runs.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
        res = runner.invoke(cli, ["sweep", *common, "--out", str(out), "--resume"])
        assert isinstance(res.exception, PdsimError), res.output
        assert "runs.csv:2: " in str(res.exception) and "this command did not write it" in str(res.exception)
    # An older pdsim's file: other columns, each named.
    old_header = ",".join(c.replace("rate_per_s_per_gpu", "rate_per_gpu") for c in header if c != "preemptions")
    runs.write_text("\n".join([old_header, *lines[1:]]) + "\n")
    res = runner.invoke(cli, ["sweep", *common, "--out", str(out), "--resume"])
    assert isinstance(res.exception, PdsimError)
    said = "(it lacks rate_per_s_per_gpu, preemptions; it has rate_per_gpu; an older pdsim's file?)"
    assert said in str(res.exception)
    # The base config inside the configs/ folder the sweep rewrites, and a file where that folder goes.
    inside = out / "configs" / "base.json"
    inside.write_text(BASE.read_text())
    res = runner.invoke(cli, ["sweep", *common[2:], "--base-config", str(inside), "--out", str(out)])
    assert isinstance(res.exception, PdsimError) and "which this command rewrites" in str(res.exception)
    assert inside.read_text() == BASE.read_text()
    other = tmp_path / "t"
    other.mkdir()
    (other / "configs").write_text("x")
    res = runner.invoke(cli, ["sweep", *common, "--out", str(other)])
    assert isinstance(res.exception, PdsimError) and "configs is a file" in str(res.exception)


def test_a_sweep_replaces_only_the_configs_a_run_wrote(tmp_path):
    # OUT/configs/ may hold the user's own configs (`--out .` in a project that keeps them there): a run removes or
    # replaces only the files an earlier run recorded writing, and refuses to overwrite one it did not.
    runner = CliRunner()
    out = tmp_path / "s"
    common = ["--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "20", "--gpus", "2",
              "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers", "1", "--min-duration-s", "0",
              "--rates", "5", "--out", str(out)]
    configs = out / "configs"
    configs.mkdir(parents=True)
    mine = configs / "my_cluster.json"
    mine.write_text(BASE.read_text())
    assert runner.invoke(cli, ["sweep", *common]).exit_code == 0
    written = set((configs / "written_by_pdsim.txt").read_text().split())
    assert mine.read_text() == BASE.read_text() and "my_cluster.json" not in written
    assert written == {p.name for p in configs.glob("*.json")} - {"my_cluster.json"} and written
    # An earlier run's config that this run does not write is removed; the user's stays.
    (configs / "old-split.json").write_text("{}")
    (configs / "written_by_pdsim.txt").write_text("old-split.json\n../runs.csv\n" + "\n".join(sorted(written)))
    assert runner.invoke(cli, ["sweep", *common]).exit_code == 0
    assert not (configs / "old-split.json").exists() and mine.exists() and (out / "runs.csv").exists()
    # A config of the user's under a name the run writes: refused before anything runs, the file kept.
    clash = configs / sorted(written)[0]
    (configs / "written_by_pdsim.txt").unlink()
    clash.write_text("mine")
    res = runner.invoke(cli, ["sweep", *common])
    assert isinstance(res.exception, PdsimError) and "which this command would overwrite" in str(res.exception)
    assert clash.read_text() == "mine"


def test_a_rate_too_low_for_the_clock_and_a_bad_ray_address_are_said(tmp_path):
    base = [TraceRequest(i, 100, 10, i * 1_000_000) for i in range(100)]
    with pytest.raises(PdsimError, match=r"rate 1e-09 req/s: 100 requests would arrive over 9.9e\+10 s"):
        trace_at_rate(base, 1e-9, "scale", 0)
    res = CliRunner().invoke(cli, ["sweep", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests",
                                   "20", "--gpus", "2", "--rates", "5", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25",
                                   "--workers", "99999999999999999999", "--out", str(tmp_path / "s")])
    assert isinstance(res.exception, PdsimError) and "--workers: expected a process count" in str(res.exception)
    pytest.importorskip("ray")
    import socket
    import time

    from pdsim.sweep.runner import RayExecutor

    with socket.socket() as free:  # a port nothing listens on: ray.init retried it for minutes
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(PdsimError, match=rf"--ray-address '127.0.0.1:{port}': nothing answers at 127.0.0.1:{port}"):
        RayExecutor(base, SETTINGS, f"127.0.0.1:{port}")
    assert time.monotonic() - started < 60


def test_runs_that_reject_requests_are_said(tmp_path):
    trace = tmp_path / "long.jsonl"
    trace.write_text("".join(json.dumps({"input_toks": 500_000, "output_toks": 5, "arrival_time_ns": i * 10**8})
                             + "\n" for i in range(10)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plots of runs with no latency figure drew an empty legend (warned)
        res = CliRunner().invoke(cli, ["sweep", "--base-config", str(BASE), "--dataset", str(trace), "--gpus", "2",
                                       "--ratios", "1:1", "--rates", "5", "--slo-ttft-ms", "1000", "--slo-tpot-ms",
                                       "25", "--workers", "1", "--min-duration-s", "0", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "runs rejected requests (too long for the model or the KV cache; counted as missing the SLOs)" in res.output


def test_a_winner_whose_bracket_never_closed_is_a_lower_bound(tmp_path):
    res = CliRunner().invoke(cli, ["search", "--base-config", str(BASE), "--dataset", str(DATASET), "--gpus", "2",
                                   "--num-requests", "30", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25",
                                   "--max-probes", "1", "--workers", "1", "--no-plots", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "NOTE: no probe of the winner failed (within --max-probes): its goodput is a lower bound" in res.output


def test_profile_tables_left_are_one_note_not_a_warning_per_run(tmp_path):
    import shutil

    root = tmp_path / "profiles"
    prof = root / "H200/meta-llama/Llama-3.1-8B/bfloat16/tp1"
    shutil.copytree(ROOT / "profiles" / "H200/meta-llama/Llama-3.1-8B/bfloat16/tp1", prof)
    decode = prof / "attention_decode.csv"
    decode.write_text("".join(decode.read_text().splitlines(keepends=True)[:3]))  # kv_tokens 1 and 16 only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every worker printed the ExtrapolationWarning with its source line
        res = CliRunner().invoke(cli, ["sweep", "--base-config", str(ROOT / "configs/cluster/single_node_pd_h200.json"),
                                       "--dataset", str(DATASET), "--num-requests", "20", "--gpus", "2",
                                       "--rates", "5,10", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25",
                                       "--workers", "1", "--min-duration-s", "0", "--profiles-root", str(root),
                                       "--no-plots", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert res.output.count(f"NOTE: {prof}: profile table 'attention_decode.csv': kv_tokens=") == 1, res.output


def test_run_notes_are_one_per_profile_table_and_axis_naming_the_profile():
    from pdsim.sweep.cli import _run_notes

    def note(profile: str, table: str, value: int) -> str:
        return (f"{profile}: profile table '{table}': kv_tokens={value} is outside the profiled range [1, 16]; "
                "extrapolating linearly (said for the first such lookup)")

    notes = {note("p/tp1", "attention_decode.csv", 900), note("p/tp1", "attention_decode.csv", 1415),
             note("p/tp2", "attention_decode.csv", 1415), note("p/tp1", "attention_prefill.csv", 70)}
    said = _run_notes(notes).splitlines()
    assert said == [f"NOTE: {n}" for n in sorted(notes - {note("p/tp1", "attention_decode.csv", 900)})]


@pytest.mark.parametrize("held_share, stable", [(0.03, 0), (0.01, 1)])
def test_a_run_serving_97_percent_of_its_rate_is_unstable_and_one_at_99_is_not(held_share, stable):
    """10,000 arrivals over a 100 s window, each served in 1 s except a share that stays queued past the
    window's end: at 3% the queue grew faster than the 2% rule allows (the old 10% let it pass), at 1% it did
    not."""
    from pdsim.sweep.steady import Window, stability

    arrival = [i * 0.01 for i in range(10_000)]
    held = set(range(0, 10_000, round(1 / held_share)))
    finish = [a + (150.0 if i in held else 1.0) for i, a in enumerate(arrival)]
    df = pd.DataFrame({"status": "finished", "arrival_s": arrival, "finish_s": finish})
    got = stability(df, Window(5.0, 99.99))  # in service at both ends: about 100 requests
    assert got["stable"] == stable, got
    assert got["served_req_s"] / got["offered_req_s"] == pytest.approx(1 - held_share, abs=0.002)


def test_a_run_just_over_capacity_that_passes_on_chance_is_named(tmp_path):
    """5P3D decode-heavy serves about 58.2 req/s. Offered 59.7 over the default window it served 97.8%: the
    queue grew by 68 requests, beyond 2% of the arrivals but within 3 sqrt(N_start + N_end) = 3 sqrt(443 + 511)
    = 93, so it stays stable; the output names it."""
    res = CliRunner().invoke(cli, ["sweep", "--base-config", str(BASE), "--dataset", str(ROOT / "workloads" /
                                   "decode_heavy.jsonl"), "--gpus", "8", "--ratios", "5:3", "--no-colocated",
                                   "--rates", "50,59.7", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25",
                                   "--workers", "1", "--no-plots", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "s" / "sweep.csv")
    high = df[df.rate_per_s == 59.7].iloc[0]
    assert high.stable == 1 and high.served_req_s < 0.98 * high.offered_req_s
    assert "all 2 runs stable (no queue growth beyond chance" in res.output
    lines = res.output.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("WITHIN CHANCE: 1 stable run(s) served under 98%")))
    assert re.fullmatch(r"  5P3D-tp1/1 at 59.7 req/s: served 97\.\d% \(queue \+\d+ requests\)", lines[at + 1])


def test_only_the_runs_a_goodput_rests_on_are_named_as_passing_on_chance():
    from pdsim.sweep.cli import _unstable_note

    def row(label, rate, served, stable=1):  # over a 10 s window
        return {"label": label, "rate_per_s": str(rate), "duration_x": 1, "offered_req_s": rate, "served_req_s": served,
                "stable": stable, "backlog_growth_requests": round(10 * (rate - served)),
                "unstable_reason": "queue grew"}

    # a at 10 served 97%, a at 5 96% (b's 98.5% is within the 2% tolerance; c is unstable); d's 97.96% is not 98.0%
    rows = [row("a", 10, 9.7), row("a", 5, 4.8), row("b", 10, 9.85), row("c", 10, 9.0, stable=0),
            row("d", 100, 97.96)]
    said = _unstable_note(rows).splitlines()
    assert said[-1] == "  d at 100 req/s: served 97.9% (queue +20 requests)"
    said = said[:-1]
    assert said[-3].startswith("WITHIN CHANCE: 3 stable run(s)")
    assert said[-2:] == ["  a at 5 req/s: served 96.0% (queue +2 requests)",  # by rate as a number
                         "  a at 10 req/s: served 97.0% (queue +3 requests)"]
    said = _unstable_note(rows, {("a", "10", "1"), ("b", "10", "1")}).splitlines()
    assert said[-2].startswith("WITHIN CHANCE: 1 of the goodputs rests on a stable run that served under 98% of "
                               "the offered rate")
    assert said[-1] == "  a at 10 req/s: served 97.0% (queue +3 requests)"


def test_a_goodput_at_the_highest_rate_swept_is_said_to_be_a_lower_bound(tmp_path):
    common = ["sweep", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "20", "--gpus", "2",
              "--slo-ttft-ms", "5000", "--slo-tpot-ms", "200", "--workers", "1", "--min-duration-s", "0",
              "--no-plots"]
    res = CliRunner().invoke(cli, [*common, "--rates", "0.5,1", "--out", str(tmp_path / "low")])
    assert res.exit_code == 0, res.output
    assert "passed the highest rate swept (1 req/s): a lower bound" in res.output
    res = CliRunner().invoke(cli, [*common, "--rates", "1,300", "--out", str(tmp_path / "high")])
    assert res.exit_code == 0 and "a lower bound" not in res.output, res.output


def test_a_simulation_above_its_estimate_is_put_down_to_what_the_estimate_leaves_out():
    from pdsim.sweep.search import disagreements

    def row(label, ratio, bottleneck):
        return {"label": label, "ratio": ratio, "goodput_req_s_per_gpu": 1.0, "est_req_s_per_gpu": 1.0,
                "sim_over_est": 1.5, "low_load_miss": 0, "est_bottleneck": bottleneck}

    notes = disagreements([row("colo-2x-tp1", "colo", "colocated"), row("1P1D-tp1/1", "1:1", "prefill"),
                           row("1P3D-tp1/1", "1:3", "decode")])
    assert notes[0].startswith("colo-2x-tp1: simulated goodput is 1.50x the estimate (the estimate counts a "
                               "colocated instance's prefills and decodes apart")
    assert "next prompt's chunk, as chunked prefill does)" in notes[1]
    assert notes[2].endswith("(the estimate's simplifications (pdsim/sweep/ratematch.py) undercount it)")


def test_rates_that_print_alike_are_one_rate(tmp_path):
    # Rows are keyed by the rate's %g text: two rates equal to 6 digits were two runs under one key.
    _, df = _sweep(tmp_path, "s", "--rates", "5,5.0000001", "--ratios", "1:1", "--no-colocated",
                   "--min-duration-s", "0")
    assert list(df.rate_per_s) == [5]


@pytest.mark.parametrize(("extra", "words"), [
    (["--time-scale", "3"], "--time-scale: each rate rescales the trace's arrivals"),
    (["--profiles-root", "/nonexistent/profiles"], "--profiles-root /nonexistent/profiles: no such folder"),
])
def test_sweep_options_that_would_change_nothing_or_fall_back_silently_are_refused(tmp_path, extra, words):
    with pytest.raises(PdsimError, match=re.escape(words)):
        CliRunner().invoke(cli, ["sweep", "--base-config", str(BASE), "--dataset", str(DATASET), "--gpus", "2",
                                 "--rates", "5", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers", "1",
                                 "--out", str(tmp_path / "o"), *extra], catch_exceptions=False)


def test_a_variant_that_cannot_be_built_is_skipped_with_its_reason(tmp_path):
    # The CPU profile has no TP 2 table and the CPU no spec to estimate one: those splits are skipped up front,
    # the others run (the command stopped with an error mid-way before).
    res = CliRunner().invoke(cli, ["sweep", "--base-config", str(ROOT / "configs/cluster/cpu_llama160m.json"),
                                   "--dataset", str(ROOT / "workloads/cpu_trace.jsonl"), "--num-requests", "20",
                                   "--gpus", "4", "--tp-decode", "1,2", "--rates", "2", "--slo-ttft-ms", "1000",
                                   "--slo-tpot-ms", "100", "--min-duration-s", "0", "--workers", "1", "--no-plots",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert re.search(r"skipped 2P1D-tp1/2: nodes\[0\]\.instances\[2\]\.hardware: no measured profile", res.output)
    labels = set(pd.read_csv(tmp_path / "o" / "sweep.csv").label)
    assert labels and not any(label.endswith("/2") or label.endswith("tp2") for label in labels)


def test_a_sweep_says_what_priced_its_tp_all_reduces(tmp_path):
    # An L40 has no collective measurement of its own: its TP 2 runs take the L40S server's tables, which the
    # sweep says (before, only `pdsim run` on a variant's config did).
    raw = json.loads(BASE.read_text())
    raw["nodes"][0]["instances"][0].update(hardware="L40")
    raw["nodes"][0]["instances"][0]["npu_mem"]["mem_size"] = 48
    base = tmp_path / "l40.json"
    base.write_text(json.dumps(raw))
    res = CliRunner().invoke(cli, ["sweep", "--base-config", str(base), "--dataset", str(DATASET), "--num-requests",
                                   "20", "--gpus", "4", "--ratios", "1:1", "--tp-prefill", "2", "--tp-decode", "2",
                                   "--no-colocated", "--rates", "2", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "50",
                                   "--min-duration-s", "0", "--workers", "1", "--no-plots",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    note = ("NOTE: TP 2 all-reduce priced by PCIe model measured on the L40S server (aiconfigurator-core 0.12 "
            "collective tables), assumed for L40: no measurement of its own")
    assert note in res.output
    # A resume that runs nothing again says it too (it comes from the builds, not the runs).
    res = CliRunner().invoke(cli, ["sweep", "--base-config", str(base), "--dataset", str(DATASET), "--num-requests",
                                   "20", "--gpus", "4", "--ratios", "1:1", "--tp-prefill", "2", "--tp-decode", "2",
                                   "--no-colocated", "--rates", "2", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "50",
                                   "--min-duration-s", "0", "--workers", "1", "--no-plots", "--resume",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 0 and note in res.output, res.output


def test_a_tie_at_the_top_names_each_layouts_latency_at_the_goodput(tmp_path):
    # One prefill instance binds both layouts (prefill-heavy prompts): they tie whatever the probes, and their
    # TPOT at the goodput (two TP 1 decoders against one TP 2) is what tells them apart.
    res = CliRunner().invoke(cli, ["search", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests",
                                   "40", "--gpus", "3", "--ratios", "1:2,1:1", "--tp-decode", "1,2", "--no-colocated",
                                   "--slo-ttft-ms", "1000", "--slo-tpot-ms", "50", "--min-duration-s", "10",
                                   "--workers", "1", "--no-plots", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    note = next(line for line in res.output.splitlines() if line.startswith("NOTE: tied with"))
    found = re.search(r"TTFT / TPOT p90 \(ms\) at the goodput: 1P2D-tp1/1 ([\d.]+) / ([\d.]+); "
                      r"1P1D-tp1/2 ([\d.]+) / ([\d.]+)$", note)
    assert found, note
    ttft_a, tpot_a, ttft_b, tpot_b = map(float, found.groups())
    assert ttft_a == ttft_b and tpot_b < 0.8 * tpot_a


def test_a_sweep_of_every_split_where_none_fits_says_the_colocated_baseline_runs_alone(tmp_path):
    out, df = _sweep(tmp_path, "s", "--rates", "1", "--tp-prefill", "2", "--tp-decode", "2", "--min-duration-s", "0")
    assert "note: no P:D split can run (skipped above): only the colocated baseline does" in out
    assert list(df.label) == ["colo-1x-tp2"]


def test_resume_is_refused_when_the_node_size_changed(tmp_path):
    # --node-gpus places the instances (and so the KV links) without changing the labels.
    args = ["--rates", "5", "--ratios", "1:1", "--no-colocated", "--min-duration-s", "0"]
    _sweep(tmp_path, "s", *args, "--node-gpus", "2")
    res = CliRunner().invoke(cli, ["sweep", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests",
                                   "40", "--gpus", "2", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers",
                                   "1", "--time-limit-slack-s", "5", "--no-plots", "--out", str(tmp_path / "s"), *args,
                                   "--node-gpus", "1", "--resume"])
    assert res.exit_code != 0 and "node_gpus" in str(res.exception), res.output


def test_a_sweep_where_nothing_fits_says_the_base_ran_another_tp_once_per_layout(tmp_path):
    raw = json.loads(BASE.read_text())
    for inst in raw["nodes"][0]["instances"]:
        inst.update(model_name="meta-llama/Llama-3.1-70B", tp_size=4, num_npus=4)
    base = tmp_path / "base70b.json"
    base.write_text(json.dumps(raw))
    res = CliRunner().invoke(cli, ["sweep", "--base-config", str(base), "--dataset", str(DATASET), "--gpus", "16",
                                   "--rates", "4", "--slo-ttft-ms", "2000", "--slo-tpot-ms", "50",
                                   "--out", str(tmp_path / "s")])
    message = str(res.exception)
    assert "no P:D split of 16 GPUs" in message and "and 11 more: prefill and decode instances:" in message, res.output
    assert message.count("weights need 131.42 GiB") == 2  # one line per layout: P/D and colocated
    assert ("note: the base config's colocated instances run TP 4; the variants run prefill TP 1 (--tp-prefill, "
            "default 1); decode TP 1 (--tp-decode, default 1)" in message)
    typo = CliRunner().invoke(cli, ["sweep", "--base-config", str(base), "--dataset", str(DATASET), "--gpus", "16",
                                    "--rates", "4", "--ratios", "1:x", "--slo-ttft-ms", "2000", "--slo-tpot-ms", "50",
                                    "--out", str(tmp_path / "t")])
    assert "--ratios" in str(typo.exception) and "note:" not in str(typo.exception)  # a typo is only itself


def test_a_poisson_search_writes_its_winners_probe_trace_to_run(tmp_path):
    args = ["search", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "30", "--gpus", "2",
            "--slo-ttft-ms", "1000", "--slo-tpot-ms", "50", "--workers", "1", "--min-duration-s", "10", "--no-plots"]
    poisson = CliRunner().invoke(cli, [*args, "--arrival", "poisson", "--out", str(tmp_path / "p")])
    assert poisson.exit_code == 0, poisson.output
    hint = next(line for line in poisson.output.splitlines() if line.startswith("to run it on the Poisson arrivals"))
    trace_path = tmp_path / "p" / "search_winner_trace.jsonl"
    assert f"--dataset {trace_path} --slo-ttft-ms 1000 --slo-tpot-ms 50 (it scores every request" in hint
    assert f"--cluster-config {tmp_path / 'p' / 'configs'}" in hint and "--ttft-mode" not in hint
    winner = pd.read_csv(tmp_path / "p" / "search.csv").iloc[0]
    probes = pd.read_csv(tmp_path / "p" / "probes.csv")
    assert winner.ttft_mode == "prefill" and set(probes.ttft_mode) == {"prefill"}
    # The run that decided the goodput: a pass within chance is re-run longer (duration_x), which then decides.
    probed = probes[(probes.label == winner.label) & (probes.rate_per_s == winner.goodput_req_s)].sort_values(
        "duration_x").iloc[-1]
    # The trace its probe at the goodput ran: the dataset repeated to span the run's duration, Poisson at that rate.
    written = load_trace(trace_path)
    assert len(written) == probed.requests > 30
    probe = trace_at_rate(load_trace(DATASET)[:30], float(winner.goodput_req_s), "poisson", 0,
                          (len(written) - 0.5) / float(winner.goodput_req_s))
    assert [(r.input_toks, r.output_toks, r.arrival_time_ns) for r in written] == \
        [(r.input_toks, r.output_toks, r.arrival_time_ns) for r in probe]
    scaled = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "s")])
    assert scaled.exit_code == 0 and "to run it on the Poisson" not in scaled.output
    assert not (tmp_path / "s" / "search_winner_trace.jsonl").exists()


def test_a_base_that_brings_its_model_writes_it_beside_the_configs_it_makes(tmp_path):
    # LLMServingSim's run layout: model_config.json beside the cluster config names a model pdsim does not bundle;
    # the configs a sweep writes run on their own only with it beside them too.
    base = json.loads(BASE.read_text())
    for node in base["nodes"]:
        for inst in node["instances"]:
            inst["model_name"] = "acme/sweep-run-local-test"
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "cluster_config.json").write_text(json.dumps(base))
    llama = json.loads((ROOT / "configs" / "models" / "meta-llama" / "Llama-3.1-8B.json").read_text())
    (tmp_path / "base" / "model_config.json").write_text(json.dumps(llama))
    res = CliRunner().invoke(cli, [
        "sweep", "--base-config", str(tmp_path / "base" / "cluster_config.json"), "--dataset", str(DATASET),
        "--num-requests", "20", "--gpus", "2", "--ratios", "1:1", "--rates", "1", "--slo-ttft-ms", "1000",
        "--slo-tpot-ms", "25", "--workers", "1", "--no-plots", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    written = tmp_path / "s" / "configs"
    assert json.loads((written / "model_config.json").read_text()) == llama
    # In a process of its own: this one has the model registered from the base already.
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "pdsim", "run", "--cluster-config", str(written / "1P1D-tp1-1.json"),
                          "--dataset", str(DATASET), "--num-requests", "5", "--output", str(tmp_path / "r.csv"),
                          "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


def _fake_search(variant, path: Path, figures, **options):
    """search() over one variant whose probe at (rate, duration_x) gives the row fields figures(rate, duration_x)
    returns; -> (its Bisection, the jobs run)."""
    ran: list[Job] = []

    class Fake:
        def run(self, jobs):
            for job in jobs:
                ran.append(job)
                yield job, {f: 0 for f in ROW_FIELDS} | {
                    "label": job.variant.label, "rate_per_s": rate_key(job.rate_per_s), "duration_x": job.duration_x,
                    "attain_ttft": 1.0, "attain_tpot": 1.0, "offered_req_s": job.rate_per_s, "unstable_reason": "",
                    **figures(job.rate_per_s, job.duration_x)}

    start = options.pop("start", 1.0)
    writer = RowWriter(path, ROW_FIELDS, resume=False)
    try:
        (st,) = search([variant], {variant.label: start}, Fake(), writer, 0.9, "joint", **options)
    finally:
        writer.close()
    return st, ran


def test_a_pass_within_chance_is_decided_by_a_longer_run(small, tmp_path):
    # A cluster that keeps up to 8 req/s: above it the default run's queue growth stays within chance while it
    # serves 96% of the offered rate (steady.within_chance), and a run 4x as long shows it growing.
    from pdsim.sweep.search import LONGER_X

    variants, _, _ = small

    def figures(r: float, duration_x: int) -> dict:
        kept_up = r <= 8.0
        return {"attain_both": 1.0, "served_req_s": r if kept_up else 0.96 * r if r <= 10.0 else 0.8 * r,
                "stable": int(kept_up or (r <= 10.0 and duration_x == 1))}

    st, ran = _fake_search(variants[0], tmp_path / "probes.csv", figures)
    longer = [j.rate_per_s for j in ran if j.duration_x == LONGER_X]
    assert longer and all(8.0 < r <= 10.0 for r in longer)  # only the passes within chance were re-run
    assert st.lengthened == [(r, False) for r in longer]
    assert 7.6 <= st.lo <= 8.0 and st.lo_row["duration_x"] == 1  # not a rate the longer runs failed
    assert all(r > 10.0 or r in longer for r in (j.rate_per_s for j in ran if j.rate_per_s > 8.0))
    # Where the longer run cannot be made (past the request cap or the run clock), the pass stands.
    st, ran = _fake_search(variants[0], tmp_path / "capped.csv", figures, can_lengthen=lambda rate: rate < 8.0)
    assert not st.lengthened and all(j.duration_x == 1 for j in ran) and 9.5 <= st.lo <= 10.0


def test_an_unstable_flag_by_growth_alone_is_decided_by_a_longer_run(small, tmp_path):
    # A cluster that keeps up to 12 req/s, whose default-length runs from 7.5 to 10 req/s meet the target but are
    # flagged unstable by a queue growth that chance gave them: runs 4x as long keep up there.
    from pdsim.sweep.search import LONGER_X

    variants, _, _ = small

    def figures(r: float, duration_x: int) -> dict:
        chance = 7.5 <= r <= 10.0 and duration_x == 1
        kept_up = r <= 12.0 and not chance
        return {"attain_both": 1.0 if r <= 12.0 else 0.5, "served_req_s": r if kept_up else 0.96 * r,
                "stable": int(kept_up), "unstable_reason": "" if kept_up else "queue grew"}

    st, ran = _fake_search(variants[0], tmp_path / "probes.csv", figures)
    longer = [j.rate_per_s for j in ran if j.duration_x == LONGER_X]
    assert longer and all(7.5 <= r <= 10.0 for r in longer)
    assert st.lengthened == [(r, True) for r in longer]
    assert 11.4 <= st.lo <= 12.0  # not stopped at the flag


def test_a_colocated_base_at_another_tp_is_said_as_colocated():
    from pdsim.config import cluster_config_from_dict
    from pdsim.sweep.cli import _base_tp_notes

    raw = json.loads(BASE.read_text())
    for inst in raw["nodes"][0]["instances"]:
        inst.update(pd_type=None, tp_size=2, num_npus=2)
    base = cluster_config_from_dict(raw)
    assert _base_tp_notes(base, [1], [1]) == ["the base config's colocated instances run TP 2; the variants run "
                                              "prefill TP 1 (--tp-prefill, default 1); decode TP 1 (--tp-decode, "
                                              "default 1)"]
    assert _base_tp_notes(base, [2], [1]) == ["the base config's colocated instances run TP 2; the variants run "
                                              "decode TP 1 (--tp-decode, default 1)"]
    assert _base_tp_notes(base, [1, 2], [2]) == []


def test_one_gpu_runs_the_colocated_baseline_alone(tmp_path):
    args = ["sweep", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "40", "--gpus", "1",
            "--rates", "2", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "25", "--workers", "1", "--no-plots"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "1 configuration of 1 GPU x" in res.output and "one GPU holds no P:D split" in res.output
    import pandas as pd

    assert list(pd.read_csv(tmp_path / "a" / "sweep.csv").label) == ["colo-1x-tp1"]
    res = CliRunner().invoke(cli, [*args, "--no-colocated", "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "leave out --no-colocated" in str(res.exception)


def test_a_dataset_far_longer_than_a_steady_state_is_said_with_the_options_that_cut_it(tmp_path):
    said, _ = _sweep(tmp_path, "long", "--rates", "0.1", "--ratios", "1:1", "--no-colocated")
    assert "note: each run holds all 40 requests of the dataset: 400 s of arrivals even at 0.1 req/s" in said
    assert "--num-requests or --window cuts each run" in said
    said, _ = _sweep(tmp_path, "short", "--rates", "2", "--ratios", "1:1", "--no-colocated")
    assert "each run holds all" not in said


def test_a_lengthened_probe_runs_four_times_the_arrivals_of_its_default_run():
    # The dataset alone may outlast the minimum duration; the longer run is 4x the default run's own span.
    from pdsim.sweep.runner import arrivals_span_s
    from pdsim.sweep.search import LONGER_X

    base = load_trace(DATASET)
    for rate, min_duration_s in ((2.0, 10.0), (2.0, 1000.0)):
        default = trace_at_rate(base, rate, "poisson", 0, arrivals_span_s(rate, 1, len(base), min_duration_s))
        longer = trace_at_rate(base, rate, "poisson", 0, arrivals_span_s(rate, LONGER_X, len(base), min_duration_s))
        assert len(longer) == pytest.approx(LONGER_X * len(default), rel=0.01)


def test_a_slow_link_is_the_estimates_bottleneck():
    # The prompt's KV over the one pair's link at its achieved rate (73% of 1 GB/s) caps 1P1D well below
    # what either pool serves; at 50 GB/s the pools bind again.
    from pdsim.engine.kv_transfer import kv_transfer_bytes
    from pdsim.models import load_model
    from pdsim.sweep.ratematch import Lengths, estimate

    lengths = Lengths(1000.0, 200.0)
    raw = json.loads(BASE.read_text())
    per_request = kv_transfer_bytes(load_model(raw["nodes"][0]["instances"][0]["model_name"]), 1000, 16,
                                    "bfloat16", 1)
    for link_bw, bound in ((1, True), (50, False)):
        variant = next(v for v in expand(cluster_config_from_dict({**raw, "link_bw": link_bw}), 2)
                       if v.ratio == "1:1")
        est = estimate(variant, lengths, 100.0)
        if bound:
            assert est.bottleneck == "link"
            assert est.capacity_req_s == pytest.approx(0.73 * 1e9 / per_request, rel=1e-9)
        else:
            assert est.bottleneck in ("prefill", "decode") and 0 < est.capacity_req_s < 0.73 * 50e9 / per_request


def test_written_configs_leave_out_the_settings_the_base_left_out():
    # A budget the base did not give stays vLLM's default in a written config: run with chunked prefill off,
    # it becomes the model's max length (config.models.unchunked_budget), not a copied 2048.
    base = load_cluster_config(ROOT / "configs" / "cluster" / "single_node_pd_instance.json")
    assert not any("max_num_batched_tokens" in r.config.model_fields_set for r in base.instances())
    for variant in expand(base, 2):
        for inst in (i for n in variant.raw["nodes"] for i in n["instances"]):
            assert "max_num_batched_tokens" not in inst and "max_num_seqs" not in inst, variant.label
            unchunked = cluster_config_from_dict(
                {**variant.raw, "nodes": [{**n, "instances": [{**i, "enable_chunked_prefill": False}
                                                              for i in n["instances"]]} for n in variant.raw["nodes"]]},
                "<test>")
            assert {r.config.max_num_batched_tokens for r in unchunked.instances()} == {131072}
    raw = json.loads(BASE.read_text())
    raw["nodes"][0]["instances"][0]["max_num_batched_tokens"] = 4096  # one the base gives is kept
    kept = expand(cluster_config_from_dict(raw, "<test>"), 2)
    assert {i.get("max_num_batched_tokens") for v in kept for n in v.raw["nodes"] for i in n["instances"]} == {4096}


def test_streamed_rows_are_written_in_a_fixed_order(tmp_path):
    # Parallel runs end in an order that differs between commands; the committed CSV must not.
    from pdsim.sweep.rows import sort_rows

    path = tmp_path / "probes.partial.csv"
    rows = [("2P6D", "20", "1"), ("1P7D", "40", "1"), ("1P7D", "5.5", "4"), ("1P7D", "5.5", "1"), ("2P6D", "10", "1")]
    lines = "".join(f"{label},{rate},{x},{i}\n" for i, (label, rate, x) in enumerate(rows))
    path.write_text("label,rate_per_s,duration_x,x\n" + lines)
    sort_rows(path, ["1P7D", "2P6D"])
    got = [line.split(",")[:3] for line in path.read_text().splitlines()[1:]]
    assert got == [["1P7D", "5.5", "1"], ["1P7D", "5.5", "4"], ["1P7D", "40", "1"], ["2P6D", "10", "1"],
                   ["2P6D", "20", "1"]]


def test_a_grids_unstable_flag_by_growth_alone_does_not_end_its_passes_below_a_rate_that_kept_up(small):
    from pdsim.sweep.cli import goodput_from_grid

    variants, _, _ = small
    v = variants[0]

    def row(rate: float, attain: float, stable: int, served: float) -> dict:
        return {f: 0 for f in ROW_FIELDS} | {"label": v.label, "rate_per_s": rate, "attain_ttft": attain,
                                            "attain_tpot": attain, "attain_both": attain, "stable": stable,
                                            "offered_req_s": rate, "served_req_s": served * rate}

    rows = [row(8, 1.0, 1, 1.0), row(9.875, 1.0, 0, 0.96), row(12, 0.99, 1, 1.0), row(14, 0.5, 0, 0.8)]
    (good,) = goodput_from_grid([v], rows, 0.9, "joint")
    assert good["goodput_req_s"] == 12 and good["chance_flags"] == [9.875]
    # Growth too large for chance (served 80%), or no higher rate that kept up: the passes end there.
    (good,) = goodput_from_grid([v], [*rows[:1], row(9.875, 1.0, 0, 0.8), *rows[2:]], 0.9, "joint")
    assert good["goodput_req_s"] == 8 and good["chance_flags"] == []
    (good,) = goodput_from_grid([v], [*rows[:2], row(12, 0.5, 0, 0.8)], 0.9, "joint")
    assert good["goodput_req_s"] == 8 and good["chance_flags"] == []


def test_a_failing_attainment_never_prints_as_the_target():
    from pdsim.sweep.cli import _table
    from pdsim.sweep.search import _why_failed

    assert _why_failed({"stable": 1, "attain_both": 0.8996}) == "attain 0.899"  # 1800 of 2001 fails 0.9
    assert "0.899" in _table([{"label": "a", "attain_both": 0.8996}], ["label", "attain_both"])
    assert _why_failed({"stable": 1, "attain_both": 0.75}) == "attain 0.75"


def test_a_bisection_ended_by_max_probes_says_its_bracket_is_wide(small, tmp_path):
    variants, _, _ = small

    def figures(r: float, duration_x: int) -> dict:  # keeps up to 10 req/s
        return {"attain_both": 1.0 if r <= 10.0 else 0.5, "stable": 1, "served_req_s": r}

    for probes, short in ((5, True), (14, False)):
        st, _ = _fake_search(variants[0], tmp_path / f"p{probes}.csv", figures, start=3.0, max_probes=probes)
        assert st.cut_short is short and (st.hi - st.lo > 0.05 * st.hi) is short


def test_a_search_whose_slos_hold_every_probe_at_the_request_cap_is_refused(tmp_path):
    # SLOs of 11 days make each probe span 46 years of arrivals: past 0.007 req/s a probe would pass the request cap,
    # far below the rates the configurations serve. Refused up front, as sweep refuses such a rate, not run for hours.
    res = CliRunner().invoke(cli, ["search", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests",
                                   "20", "--gpus", "2", "--workers", "1", "--no-plots", "--slo-ttft-ms", "1e9",
                                   "--slo-tpot-ms", "1e9", "--out", str(tmp_path / "s")])
    assert isinstance(res.exception, PdsimError), res.output
    assert "would run more than 10,000,000 requests, below every configuration's estimated start" in str(res.exception)
    assert not (tmp_path / "s" / "probes.csv").exists()


def test_a_resumed_search_of_fewer_configurations_reports_only_those(tmp_path):
    # probes.csv keeps the earlier search's other configurations for a later resume; the stability line, the plots
    # and the run count had drawn on them too.
    args = ["search", "--base-config", str(BASE), "--dataset", str(DATASET), "--num-requests", "20", "--gpus", "2",
            "--slo-ttft-ms", "1000", "--slo-tpot-ms", "50", "--workers", "1", "--min-duration-s", "5", "--no-plots",
            "--max-probes", "3", "--out", str(tmp_path / "s")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    probes = pd.read_csv(tmp_path / "s" / "probes.csv")
    assert set(probes.label) == {"1P1D-tp1/1", "colo-2x-tp1"}
    again = CliRunner().invoke(cli, [*args, "--no-colocated", "--resume"])
    assert again.exit_code == 0, again.output
    mine = int((probes.label == "1P1D-tp1/1").sum())
    assert re.search(rf"(all {mine} runs stable|UNSTABLE: \d+ of {mine} runs)", again.output), again.output
    assert f"\n{mine} runs (all kept by --resume) in " in again.output
    assert set(pd.read_csv(tmp_path / "s" / "probes.csv").label) == {"1P1D-tp1/1", "colo-2x-tp1"}  # kept for later


def test_the_latency_plot_says_where_ttft_ends(tmp_path, monkeypatch):
    # --ttft-mode moves a P/D split's hand-off between TTFT and TPOT: the axis says which the plot shows.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from pdsim.sweep.cli import TTFT_AT
    from pdsim.sweep.plots import plot_latency_vs_rate

    labels: list[str] = []
    set_ylabel = Axes.set_ylabel
    monkeypatch.setattr(Axes, "set_ylabel", lambda self, text, *a, **k: (labels.append(text),
                                                                          set_ylabel(self, text, *a, **k))[1])
    rows = [{"label": "1P1D", "rate_per_s": "1", "ttft_p90_ms": 50.0, "tpot_p90_ms": 10.0, "stable": 1}]
    plot_latency_vs_rate(rows, 100, 20, tmp_path / "l.png", TTFT_AT["client"])
    assert labels == ["TTFT p90 (ms), as the client sees it", "TPOT p90 (ms)"]


def test_a_layout_whose_kv_cache_holds_no_max_length_request_says_vllm_needs_a_shorter_max_model_len(tmp_path):
    # Llama-3.1-70B over two RTX PRO 6000s holds 125,968 KV tokens, under its 131,072: vLLM refuses to start so
    # unless --max-model-len is lowered. `pdsim run` said it; a sweep's winner could be such a layout without a word.
    args = ["sweep", "--base-config", str(ROOT / "configs/cluster/sweep_base_rtxpro6000_70b.json"), "--dataset",
            str(ROOT / "workloads/example_trace.jsonl"), "--num-requests", "20", "--gpus", "4", "--tp-prefill", "2",
            "--tp-decode", "2", "--ratios", "1:1", "--no-colocated", "--rates", "1", "--slo-ttft-ms", "2000",
            "--slo-tpot-ms", "100", "--workers", "1", "--no-plots", "--out", str(tmp_path / "s")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert ("1P1D-tp2/2: a KV cache of 125,968 tokens holds no request of the model's max length (131,072): vLLM "
            "starts it only with --max-model-len 125,968 or less") in res.output


def test_a_winner_whose_kv_cache_filled_at_its_goodput_is_said_to_rest_on_it():
    # DeepSeek-V3's DP 3 x TP 2 decode won a search at decode_peak_kv_frac 1.0 and 80 preemptions without a word.
    from pdsim.sweep.cli import _full_kv_note

    full = _full_kv_note({"prefill_peak_kv_frac": 0.3, "decode_peak_kv_frac": 1.0, "preemptions": 80})
    assert full.startswith("NOTE: the winner's KV cache filled at its goodput (80 preemptions; peak use 100% of a "
                           "role's capacity")
    assert "no preemption" in _full_kv_note({"prefill_peak_kv_frac": 0.2, "decode_peak_kv_frac": 0.995,
                                             "preemptions": 0})
    assert _full_kv_note({"prefill_peak_kv_frac": 0.3, "decode_peak_kv_frac": 0.6, "preemptions": 0}) == ""
    assert _full_kv_note({"prefill_peak_kv_frac": math.nan, "decode_peak_kv_frac": math.nan,
                          "preemptions": math.nan}) == ""


def test_a_latency_axis_within_one_decade_labels_its_minor_ticks():
    # TPOT p90s of 30-70 ms left the log axis without a single value: no power of ten fell inside it.
    from pdsim.sweep.plots import log_minor_label

    assert log_minor_label(28.0, 72.0)(40.0, None) == "40"
    assert log_minor_label(8.0, 1200.0)(40.0, None) == ""  # across decades the powers of ten carry the values


def test_tied_best_goodputs_are_all_marked_and_none_when_nothing_met_the_target():
    # The bar colour marked the first of two tied configurations as the one best, and a bar of 0 as best when
    # nothing met the target.
    from pdsim.sweep.plots import goodput_bar_colors

    rows = [{"ratio": "1:3", "goodput_req_s_per_gpu": 2.5}, {"ratio": "2:2", "goodput_req_s_per_gpu": 4.0},
            {"ratio": "3:1", "goodput_req_s_per_gpu": 4.0}, {"ratio": "colo", "goodput_req_s_per_gpu": 3.0}]
    assert goodput_bar_colors(rows) == ["tab:blue", "tab:green", "tab:green", "tab:red"]  # colocated as elsewhere
    assert goodput_bar_colors([{**r, "goodput_req_s_per_gpu": 0.0} for r in rows]) == [
        "tab:blue", "tab:blue", "tab:blue", "tab:red"]
    assert goodput_bar_colors([]) == []


def test_the_pareto_list_says_runs_it_could_not_draw_and_never_that_none_met_the_slos_when_one_did():
    # A trace of one-token outputs has no TPOT, so no speed per user: every run met the SLOs, and the plot said
    # "no run meets the SLOs".
    from pdsim.sweep.plots import front_lines

    assert front_lines([], 4, 4) == ["no run drawn meets the SLOs",
                                     "\nnot drawn: 4 runs with no TPOT or no throughput (4 meeting the SLOs)"]
    assert front_lines([], 0, 0) == ["no run meets the SLOs"]
    front = [{"label": "2P2D-tp1/1", "rate_per_s": "20"}]
    assert front_lines(front, 0, 1) == ["1: 2P2D-tp1/1 at 20 req/s", "\nnot drawn: 1 run with no TPOT or no throughput"]


def test_every_sweep_plot_says_which_runs_it_shows(tmp_path, monkeypatch):
    # The latency plot had no title and the Pareto plot's did not say the dataset, GPUs or estimated step times.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pdsim.sweep.plots import plot_latency_vs_rate, plot_pareto

    said: list[str] = []
    suptitle, set_title = Figure.suptitle, Axes.set_title
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, *a, **k: (said.append(t), suptitle(self, t, *a, **k))[1])
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **k: (said.append(t), set_title(self, t, *a, **k))[1])
    run = "prefill_heavy.jsonl, 4 GPUs (step times estimated from hardware specs)"
    rows = [{"label": "1P1D", "rate_per_s": "1", "ttft_p90_ms": 50.0, "tpot_p90_ms": 10.0, "stable": 1,
             "output_tok_s_per_user": 100.0, "output_tok_s_per_gpu": 300.0}]
    plot_latency_vs_rate(rows, 100, 20, tmp_path / "l.png", "", run)
    plot_pareto(rows, tmp_path / "p.png", lambda r: True, "TTFT<=100 ms", run)
    assert said[0] == run and said[1].endswith(f"(TTFT<=100 ms)\n{run}")
