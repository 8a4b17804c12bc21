"""TP all-reduce models (pdsim/perf/collectives.py) and which one prices an instance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pdsim.hardware import get_hardware
from pdsim.perf.collectives import NVLINK4_BY_GPUS, NVLINK4_NCCL_BY_GPUS, interconnect_model

COMM = (Path(__file__).resolve().parents[2] / "shared" / "data" / "calibration" / "aiconfigurator-h100"
        / "systems_data_h100_sxm" / "comm")
needs_shared = pytest.mark.skipif(not COMM.is_dir(), reason="../shared data not present")


def test_nvlink_small_messages_cost_what_h100_measures():
    model = interconnect_model(get_hardware("H100-SXM"), 8)
    assert "NVLink" in model.source
    # TP 8, one decode token of Qwen3-32B (10 KB): a few us as measured, not the old 14 us.
    assert 4.0 < model.time_us(10240, 8) < 8.0


def test_an_unmeasured_pcie_gpu_takes_the_measured_server_of_its_pcie_generation():
    from dataclasses import replace

    l40s, rtx = get_hardware("L40S"), get_hardware("RTXPRO6000")
    m = 1 << 20
    for n in (2, 4, 8):
        # The L40 is the L40S's board on the same PCIe 4 link: the same all-reduce, not one 4.7x faster at TP 4.
        l40 = interconnect_model(get_hardware("L40"), n)
        assert l40.time_us(m, n) == interconnect_model(l40s, n).time_us(m, n)
        assert "measured on the L40S server" in l40.source
        assert "assumed for L40: no measurement of its own" in l40.source
        # PCIe 5: the RTX PRO 6000 server's.
        h100 = interconnect_model(get_hardware("H100-PCIe"), n)
        assert h100.time_us(m, n) == interconnect_model(rtx, n).time_us(m, n)
    # An RTX PRO 6000 on another link keeps its own server's per-call costs, the bandwidth scaled by the link
    # (PCIe 3, 16 GB/s: its NCCL's large-message line at a quarter of its bandwidth, 16.6 us + 9.25 GB/s), and so
    # does a GPU without a server of its own (the L40 on a PCIe 5 link is still priced from the L40S server, at
    # twice its bandwidth).
    gen3 = interconnect_model(replace(rtx, intra_node_bw_gbps=16.0), 2)
    assert "RTX PRO 6000 Server" in gen3.source and "scaled x0.25 to its 16 GB/s link" in gen3.source
    assert gen3.time_us(16 * m, 2) == pytest.approx(16.6 + 16 * m / (0.25 * 37.0e3))
    l40_gen5 = interconnect_model(replace(get_hardware("L40"), intra_node_bw_gbps=64.0), 2)
    assert "measured on the L40S server" in l40_gen5.source and "scaled x2.00 to its 64 GB/s link" in l40_gen5.source
    # A faster link is never a slower all-reduce: no jump where another server's per-call cost would take over.
    for hw in (rtx, l40s, get_hardware("L40"), get_hardware("H100-PCIe"), get_hardware("RTX4090")):
        for n in (2, 4, 8):
            for size in (16 * 1024, m, 64 * m):
                times = [interconnect_model(replace(hw, intra_node_bw_gbps=gbps), n).time_us(size, n)
                         for gbps in (8, 16, 24, 32, 40, 48, 56, 64, 128, 1000)]
                assert times == sorted(times, reverse=True), (hw.name, n, size, times)


def test_a_gpu_without_peer_to_peer_gets_nccl_of_its_pcie_generation():
    # RTX 4090: no P2P, so no custom all-reduce; the L40S server's NCCL (PCIe 4): 6.54 us + 11.0 GB/s for small
    # messages, 23.3 us + 20.5 GB/s for large ones, the faster taken.
    model = interconnect_model(get_hardware("RTX4090"), 2)
    assert "without peer-to-peer" in model.source and model.large is None
    assert model.time_us(64 * 1024, 2) == pytest.approx(6.54 + 64 * 1024 / 11.0e3)
    assert model.time_us(4 * 2**20, 2) == pytest.approx(23.3 + 4 * 2**20 / 20.5e3)


def test_measured_pcie_servers_follow_their_tables():
    # aiconfigurator-core 0.12's rtx_pro_6000_server tables (benchmarks/allreduce_fit.py), bf16:
    # vLLM 0.19 custom all-reduce (graph) of 262,144 elements (512 KiB, a 64-token decode of a
    # 4096-wide model) 55.5 us; NCCL 2.29.2 of 4,194,304 / 8,388,608 / 16,777,216 / 67,108,864 elements (8 / 16
    # / 32 / 128 MiB, a prefill of 1,024 to 16,384 tokens) 243.8 / 473.5 / 930.6 / 3,620.3 us. NCCL's two
    # protocol lines follow them within 1%, where one line over all sizes was 4-9% slow.
    rtx = get_hardware("RTXPRO6000")
    two = interconnect_model(rtx, 2)
    assert "measured on RTX PRO 6000" in two.source
    assert two.time_us(512 * 1024, 2) == pytest.approx(55.5, rel=0.05)
    for mib, measured_us in ((8, 243.8), (16, 473.5), (32, 930.6), (128, 3620.3)):
        assert two.time_us(mib * 2**20, 2) == pytest.approx(measured_us, rel=0.01)
    # The logits' all-gather is NCCL's too, on the faster line for its size (the small-message one at 1 MiB).
    assert two.all_gather_us(2**20, 2) == pytest.approx(6.49 + 0.5 * 2**20 / 22.3e3)
    # vLLM hands 8 MiB and more to NCCL, which on this server moves big messages faster.
    assert two.time_us(8 * 2**20, 2) < two.time_us(8 * 2**20 - 16, 2)
    # Four GPUs: NCCL only (vLLM's custom all-reduce is off beyond two PCIe GPUs).
    four = interconnect_model(rtx, 4)
    assert four.large is None and four.call_us == pytest.approx(12.4)
    # The L40S server: custom all-reduce of 512 KiB 32.1 us measured (vLLM 0.14).
    assert interconnect_model(get_hardware("L40S"), 2).time_us(512 * 1024, 2) == pytest.approx(32.1, rel=0.05)


def test_disabling_vllms_custom_all_reduce_prices_nccl_alone():
    # RTX PRO 6000 server, 2 GPUs: NCCL 2.29.2 moves 512 KiB in 31.3 us where vLLM's custom kernel
    # takes 55.5 us (aiconfigurator-core 0.12 tables); H100 TP 8: NCCL's small-message floor is
    # 16-19 us against the custom kernel's 4.7 us.
    rtx = get_hardware("RTXPRO6000")
    nccl = interconnect_model(rtx, 2, custom_all_reduce=False)
    assert nccl.large is None and "NCCL only" in nccl.source
    assert nccl.time_us(512 * 1024, 2) == pytest.approx(31.3, rel=0.05)
    assert nccl.time_us(512 * 1024, 2) < 0.7 * interconnect_model(rtx, 2).time_us(512 * 1024, 2)
    h100 = get_hardware("H100-SXM")
    assert interconnect_model(h100, 8, custom_all_reduce=False).time_us(10240, 8) > 15.0
    # A GPU priced by another server's tables: NCCL alone too (the L40S server's, 6.54 us per small call).
    l40 = interconnect_model(get_hardware("L40"), 2, custom_all_reduce=False)
    assert l40.large is None and "NCCL only" in l40.source and l40.time_us(0, 2) == pytest.approx(6.54)


def test_models_are_zero_for_one_gpu_and_grow_with_size():
    for model in (interconnect_model(get_hardware("A100-80GB"), 4), interconnect_model(get_hardware("L40S"), 4)):
        assert model.time_us(1 << 20, 1) == 0.0
        assert model.time_us(1 << 24, 4) > model.time_us(1 << 20, 4) > 0.0


# aiconfigurator-core 0.12's collective tables (benchmarks/allreduce_fit.py re-derives the constants
# from them), bf16, bytes -> us: the faster of vLLM's custom all-reduce (graph) and NCCL all_reduce at
# each size, and NCCL alone. A100 SXM4 (vLLM 0.14.0, NCCL 2.27.3) and B200 (0.19.0, 2.29.2) at 8 GPUs,
# GB200 (0.19.0, 2.29.2) at 4.
NVLINK_POINTS = {
    ("A100-80GB", 8): ({16384: 6.5, 131072: 11.4, 1048576: 21.7, 8388608: 128.0, 67108864: 594.2,
                        268435456: 2170.2}, {16384: 22.6, 1048576: 38.8, 8388608: 128.0, 268435456: 2182.5}),
    ("B200", 8): ({16384: 8.2, 131072: 9.4, 1048576: 16.7, 8388608: 38.9, 67108864: 222.5, 268435456: 715.3},
                  {16384: 26.6, 1048576: 30.1, 8388608: 71.6, 268435456: 715.4}),
    ("GB200", 4): ({16384: 5.4, 131072: 6.0, 1048576: 12.5, 8388608: 50.4, 67108864: 182.4, 268435456: 662.8},
                   {16384: 16.8, 1048576: 19.7, 8388608: 87.9, 268435456: 662.8}),
}


def _errors(model, points: dict[int, float], n: int) -> np.ndarray:
    return np.array([model.time_us(b, n) / us - 1 for b, us in points.items()])


@pytest.mark.parametrize(("hardware", "n"), list(NVLINK_POINTS))
def test_nvlink_gpus_with_their_own_tables_use_them(hardware, n):
    spec = get_hardware(hardware)
    for points, custom in zip(NVLINK_POINTS[(hardware, n)], (True, False)):
        own = interconnect_model(spec, n, custom_all_reduce=custom)
        assert "measured on" in own.source and ("NCCL only" in own.source) != custom
        # One alpha-beta line through each table: unbiased, within about 20% at these sizes.
        err = _errors(own, points, n)
        assert abs(err.mean()) < 0.1 and np.abs(err).mean() < 0.25
        # The H100 model scaled by line rate, which priced these GPUs before, is 14-30% too fast here.
        h100_scaled = interconnect_model(replace(spec, name="H100-SXM"), n, custom_all_reduce=custom)
        assert "scaled" in h100_scaled.source and _errors(h100_scaled, points, n).mean() < -0.1


def test_which_nvlink_model_prices_a_gpu():
    # A100-40GB: the same SXM4 board and NVLink as the measured A100-80GB.
    assert "measured on A100" in interconnect_model(get_hardware("A100-40GB"), 4).source
    # GB200 was measured at 2 and 4 GPUs: 8 take the 4-GPU figures, and the source says so.
    gb = interconnect_model(get_hardware("GB200"), 8)
    assert gb.source.endswith("its 4-GPU figures")
    assert gb.call_us == interconnect_model(get_hardware("GB200"), 4).call_us
    # H200 keeps the H100 model (its own tables refit within 6% of it); H800 has no tables: scaled.
    h100 = interconnect_model(get_hardware("H100-SXM"), 8)
    h200 = interconnect_model(get_hardware("H200"), 8)
    assert (h200.call_us, h200.bus_bw_gbps) == (h100.call_us, h100.bus_bw_gbps)
    assert h200.source == h100.source + ", taken for H200's NVLink of the same rate"  # said, not silent
    h800 = interconnect_model(get_hardware("H800"), 8)
    assert "scaled" in h800.source and h800.bus_bw_gbps == pytest.approx(h100.bus_bw_gbps * 200 / 450)
    # A config that gives the A100 another link: its own measured model, the bandwidth scaled to that link.
    a100 = interconnect_model(get_hardware("A100-80GB"), 8)
    other = interconnect_model(replace(get_hardware("A100-80GB"), intra_node_bw_gbps=600.0), 8)
    assert "measured on A100" in other.source and "bandwidth scaled x2.00 to its 600 GB/s link" in other.source
    assert (other.call_us, other.bus_bw_gbps) == (a100.call_us, pytest.approx(2 * a100.bus_bw_gbps))


@needs_shared
def test_nvlink_constants_follow_from_aiconfigurator_h100_data():
    pd = pytest.importorskip("pandas")
    custom = pd.read_parquet(COMM / "vllm" / "0.24.0" / "custom_allreduce_perf.parquet")
    nccl = pd.read_parquet(COMM / "nccl" / "2.27.3" / "nccl_perf.parquet")
    custom = custom[custom.backend == "vllm_graph"]
    nccl = nccl[(nccl.op_name == "all_reduce") & (nccl.nccl_dtype == "half")]
    h100 = get_hardware("H100-SXM")
    # The faster of the two (vLLM's default), and NCCL alone (its custom all-reduce disabled).
    for with_custom, constants in ((True, NVLINK4_BY_GPUS), (False, NVLINK4_NCCL_BY_GPUS)):
        for n, lines in constants.items():
            _check_nvlink_fit(pd, custom if with_custom else None, nccl, h100, n, lines)


def _check_nvlink_fit(pd, custom, nccl, h100, n: int, lines: tuple[float, ...]) -> None:
    tables = [nccl[nccl.num_gpus == n].groupby("message_size").latency.min()]
    if custom is not None:
        tables.append(custom[custom.num_gpus == n].groupby("message_size").latency.min())
    best = pd.concat(tables, axis=1).min(axis=1)
    nbytes = best.index.to_numpy(dtype=float) * 2  # elements of bf16
    keep = (nbytes >= 8e3) & (nbytes <= 256e6)
    measured_us = best.to_numpy()[keep] * 1e3
    model = interconnect_model(h100, n, custom_all_reduce=custom is not None)
    rel = np.array([model.time_us(b, n) for b in nbytes[keep]]) / measured_us - 1
    # The fits' own figures (docs/validation.md): mean |error| 2-4%, worst 7-13%.
    assert np.abs(rel).mean() < 0.05 and np.abs(rel).max() < 0.15
    # A refit lands on the same constants: two lines, each least squares in relative error on the sizes below / from
    # the split whose two lines, the faster taken, fit best.
    x = 2 * (n - 1) / n * nbytes[keep] / 1e3

    def line(part):
        a = np.column_stack([1 / measured_us[part], x[part] / measured_us[part]])
        (call_us, us_per_kb), *_ = np.linalg.lstsq(a, np.ones(a.shape[0]), rcond=None)
        return call_us, us_per_kb

    fits = []
    for split in range(2, len(x) - 1):
        (c1, k1), (c2, k2) = line(slice(None, split)), line(slice(split, None))
        if min(c1, k1, c2, k2) > 0:
            err = np.minimum(c1 + k1 * x, c2 + k2 * x) / measured_us - 1
            fits.append(((err ** 2).sum(), (c1, 1 / k1, c2, 1 / k2)))
    refit = min(fits)[1]
    assert refit == pytest.approx(lines, rel=0.05)


def test_run_summary_names_the_source_per_instance(tmp_path):
    from pdsim.config import cluster_config_from_dict
    from pdsim.engine.cluster import SimOptions, simulate
    from pdsim.metrics.summary import format_summary, requests_frame, summarize
    from tests.helpers import instance, trace

    def node(hardware: str, tp: int) -> dict:
        return {"num_instances": 1, "instances": [instance(None, 80, hardware, tp_size=tp, num_npus=tp)]}

    # A 16 GB/s, 20 us cluster link (the P/D KV network) prices no TP collective.
    cfg = cluster_config_from_dict({"num_nodes": 3, "link_bw": 16, "link_latency": 20000, "nodes": [
        node("H100-SXM", 2), node("RTXPRO6000", 2), node("RTXPRO6000", 1)]})
    # An empty profiles root: every instance runs on an estimated profile, which has no table.
    result = simulate(cfg, trace([(64, 4, 0.0), (64, 4, 0.0), (64, 4, 0.0)]),
                      SimOptions(profiles_root=str(tmp_path)))
    summary = summarize(result, requests_frame(result))
    sources = [inst["allreduce_source"] for inst in summary["instances"]]
    assert "NVLink" in sources[0] and sources[1].startswith("PCIe model") and sources[2] is None
    assert f"note: TP all-reduce priced by {sources[1]}" in format_summary(summary)


def _run_tp2(tmp_path: Path, hardware: str, mem_gb: float, *flags: str):
    """`pdsim run` of five requests on one TP 2 instance with these flags: the process and its instance's summary."""
    import json
    import subprocess
    import sys

    from tests.helpers import cluster, instance

    repo = Path(__file__).resolve().parents[1]
    config = tmp_path / f"{hardware}_tp2.json"
    config.write_text(cluster(instance(None, mem_gb, hardware, tp_size=2, num_npus=2)).model_dump_json())
    out = tmp_path / "run.csv"
    res = subprocess.run([sys.executable, "-m", "pdsim", "--cluster-config", str(config), "--dataset",
                          str(repo / "workloads" / "example_trace.jsonl"), "--num-requests", "5", "--output", str(out),
                          "--quiet", "--profiles-root", str(tmp_path), *flags], capture_output=True, text=True)
    summary = json.loads(out.with_name("run_summary.json").read_text()) if res.returncode == 0 else None
    return res, summary["instances"][0] if summary else None


def test_run_takes_vllms_all_reduce_and_kv_size_flags(tmp_path):
    # `pdsim run --disable-custom-all-reduce --kv-cache-memory-bytes 2G`, as vLLM spells them.
    def instance(*flags: str) -> dict:
        res, inst = _run_tp2(tmp_path, "RTXPRO6000", 96, "--kv-cache-memory-bytes", "2G", *flags)
        assert res.returncode == 0, res.stderr
        assert "kv_cache_memory_bytes 2,147,483,648" in res.stdout
        return inst

    assert "NCCL only" in instance("--disable-custom-all-reduce")["allreduce_source"]
    assert "NCCL only" not in instance()["allreduce_source"]
    # The RTX PRO 6000 (compute capability 12.0) never fuses the all-reduce with the norm, even when asked:
    # vLLM has no size for it.
    assert instance("--allreduce-rms-fusion")["allreduce_norm_fused_max_tokens"] is None
    res, _ = _run_tp2(tmp_path, "RTXPRO6000", 96, "--kv-cache-memory-bytes", "2.5G")
    assert res.returncode == 2 and "--kv-cache-memory-bytes: expected a whole number" in res.stderr


def test_vllm_fuses_the_all_reduce_with_the_norm_after_it_where_it_does():
    # vLLM >= 0.17 (-O2): FlashInfer's all-reduce + residual add + RMSNorm kernel on compute capability 9.0 /
    # 10.x at TP 2/4/8, for steps up to its max message size (H100 TP 4: 2 MiB, 256 tokens of a 4096-wide
    # bf16 model). Those steps pay the all-reduce alone; larger ones the norms too.
    from pdsim.models import load_model
    from pdsim.perf.collectives import fused_allreduce_norm_tokens
    from pdsim.perf.estimate import load_or_estimate
    from pdsim.perf.predictor import StepTimePredictor

    h100, model = get_hardware("H100-SXM"), load_model("meta-llama/Llama-3.1-8B")
    width = model.hidden_size * 2
    assert [fused_allreduce_norm_tokens(h100, tp, width) for tp in (2, 4, 8)] == [8192, 256, 64]
    assert fused_allreduce_norm_tokens(get_hardware("B200"), 4, width) == 4096
    for other, tp in (("RTXPRO6000", 2), ("A100-80GB", 4), ("L40S", 2), ("H100-SXM", 3)):
        assert fused_allreduce_norm_tokens(get_hardware(other), tp, width) is None
    profile = load_or_estimate("H100-SXM", model, "bfloat16", 4)
    plain = StepTimePredictor(profile, model, 4, h100)
    fused = StepTimePredictor(profile, model, 4, h100, fused_norm_tokens=256)
    assert any("fused with the residual add and RMSNorm" in n for n in fused.notes)
    assert not any("fused" in n for n in plain.notes)

    def norms(t: int) -> float:  # seconds of the norms and residual adds a step of t tokens runs
        per_layer = sum(profile.dense[op](t) * c for op, c in (("layernorm", 2), ("residual_add", 2))
                        if op in profile.dense)
        return (model.num_layers * per_layer + profile.dense["final_layernorm"](t)) * 1e-6

    for n in (1, 64, 256):
        saved = plain.step_time_s([], n, n * 1000) - fused.step_time_s([], n, n * 1000)
        assert saved == pytest.approx(norms(n)) and saved > 0
    assert fused.step_time_s([(200, 0)], 57, 57_000) == plain.step_time_s([(200, 0)], 57, 57_000)


def test_instances_fuse_as_vllm_decides_by_gpu_layout_and_setting(tmp_path):
    from pdsim.config import cluster_config_from_dict
    from pdsim.engine.cluster import SimOptions, simulate
    from pdsim.metrics.summary import format_summary, requests_frame, summarize
    from tests.helpers import instance, trace

    def fused(**keys) -> bool:
        inst = instance(None, 80, keys.pop("hardware", "H100-SXM"), **{"tp_size": 2, "num_npus": 2, **keys})
        cfg = cluster_config_from_dict({"num_nodes": 1, "link_bw": 16, "link_latency": 20000,
                                        "nodes": [{"num_instances": 1, "instances": [inst]}]})
        result = simulate(cfg, trace([(64, 4, 0.0)]), SimOptions(profiles_root=str(tmp_path)))
        summary = summarize(result, requests_frame(result))
        said = "fused with the residual add and RMSNorm" in format_summary(summary)
        assert said == (summary["instances"][0]["allreduce_norm_fused_max_tokens"] == 2048)  # the 2,048-token budget
        return said

    assert fused() and fused(hardware="B200")
    assert not fused(hardware="RTXPRO6000") and not fused(tp_size=1, num_npus=1)
    assert not fused(allreduce_rms_fusion=False)  # vLLM 0.16 or older, enforce_eager, -O0/-O1
    assert not fused(pp_size=2, num_npus=4)  # vLLM leaves it off with PP ...
    assert fused(pp_size=2, num_npus=4, allreduce_rms_fusion=True)  # ... unless set by hand


def test_run_turns_the_all_reduce_norm_fusion_off_as_for_an_older_vllm(tmp_path):
    def fused(*flags: str) -> int | None:
        res, inst = _run_tp2(tmp_path, "H100-SXM", 80, *flags)
        assert res.returncode == 0, res.stderr
        return inst["allreduce_norm_fused_max_tokens"]

    assert fused() == 2048 and fused("--no-allreduce-rms-fusion") is None


def test_nccl_is_two_protocol_lines_and_runs_the_logits_gather():
    # NCCL's tuner models each protocol as a latency and a bandwidth and takes the faster: RTX PRO 6000 server, two
    # GPUs, NCCL alone, 6.49 us + 22.3 GB/s for small messages and 16.6 us + 37.0 GB/s for large ones.
    nccl = interconnect_model(get_hardware("RTXPRO6000"), 2, custom_all_reduce=False)
    for nbytes in (8 * 1024, 256 * 1024, 2**20, 64 * 2**20):
        assert nccl.time_us(nbytes, 2) == pytest.approx(min(6.49 + nbytes / 22.3e3, 16.6 + nbytes / 37.0e3))
    # On NVLink the all-reduce is the faster of vLLM's custom kernel and NCCL, but the logits' all-gather is NCCL's
    # (the H100 model's and a measured server's alike): at 16 MiB on 8 H100s 83 us against 67 us measured, where the
    # custom kernel's lines gave 49 us.
    for hardware in ("H100-SXM", "A100-80GB", "B200"):
        spec = get_hardware(hardware)
        best, alone = interconnect_model(spec, 8), interconnect_model(spec, 8, custom_all_reduce=False)
        assert best.all_gather_us(16 * 2**20, 8) == alone.all_gather_us(16 * 2**20, 8)
        assert best.time_us(2**20, 8) < alone.time_us(2**20, 8)
    assert interconnect_model(get_hardware("H100-SXM"), 8).all_gather_us(16 * 2**20, 8) == pytest.approx(83.0, abs=0.5)


def test_the_faster_of_the_custom_all_reduce_and_nccl_is_never_slower_than_nccl_alone():
    # Where the two NVLink fits part (H100 TP 4 at 128 MiB: 668 us on the custom-or-NCCL lines, 617 us on NCCL's,
    # 615 us measured), the custom-or-NCCL model takes NCCL's.
    for hardware in ("H100-SXM", "H200", "A100-80GB", "B200", "GB200", "H800"):
        for n in (2, 4, 8):
            best = interconnect_model(get_hardware(hardware), n)
            alone = interconnect_model(get_hardware(hardware), n, custom_all_reduce=False)
            for nbytes in np.geomspace(1e3, 1e9, 61):
                assert best.time_us(nbytes, n) <= alone.time_us(nbytes, n) + 1e-9, (hardware, n, nbytes)
    h100 = get_hardware("H100-SXM")
    assert interconnect_model(h100, 4).time_us(128 * 2**20, 4) == pytest.approx(617.3, abs=0.1)


def test_a_geforce_card_pdsim_has_no_spec_for_runs_nccl_alone():
    # GeForce cards have no peer-to-peer access (as the RTX 4090 pdsim knows), so vLLM's custom all-reduce fails its
    # check and NCCL runs; an unknown workstation or data-center card keeps the custom all-reduce on two GPUs.
    from pdsim.perf.collectives import unknown_gpu_model

    geforce = [unknown_gpu_model(name, 2) for name in ("NVIDIA GeForce RTX 3090", "RTX3090", "rtx_3090_ti")]
    other = unknown_gpu_model("NVIDIA RTX 6000 Ada Generation", 2)
    small = 64 * 1024  # bytes: where the custom all-reduce, when it runs, is the faster
    assert all("without peer-to-peer access (a GeForce card) NCCL alone" in m.source for m in geforce)
    assert "peer-to-peer" not in other.source
    assert all(m.time_us(small, 2) > other.time_us(small, 2) for m in geforce)


def test_the_rtx_5090_runs_nccl_alone_as_measured_on_the_pcie_5_server():
    from pdsim.perf.collectives import interconnect_model

    model = interconnect_model(get_hardware("NVIDIA GeForce RTX 5090"), 2)
    assert model.source.startswith("RTX5090 without peer-to-peer: NCCL as measured on the RTX PRO 6000 Server")
