"""Profiles built from aiconfigurator's H100 per-kernel database, checked on 90 real closed-loop rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdsim.engine.cluster import SimOptions
from pdsim.models import load_model
from pdsim.perf.aiconfigurator import import_profile
from pdsim.perf.profile import read_profile
from pdsim.validate.closed_loop import mape, simulate_table
from pdsim.validate.closed_loop_table import read_closed_loop_table

AIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "calibration" / "aiconfigurator-h100"
needs_shared = pytest.mark.skipif(not AIC.is_dir(), reason="../shared data not present")
STEP_OVERHEAD_US = 1500.0  # fitted on TPOT in docs/validation.md (leave-one-out MAPE 5.8%)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    out = tmp_path_factory.mktemp("aic")
    model = load_model("Qwen/Qwen3-32B")
    return {tp: import_profile(AIC / "systems_data_h100_sxm", "h100_sxm", model, tp, out) for tp in (2, 4, 8)}


@needs_shared
def test_import_reads_back_with_allreduce(profiles):
    prof = read_profile(profiles[4])
    assert prof.allreduce is not None and prof.meta.source == "measured"
    # qkv GEMM grows with tokens; decode attention grows with KV.
    assert prof.dense["qkv_proj"](4096) > prof.dense["qkv_proj"](16)
    assert prof.attention_decode(64, 8192) > prof.attention_decode(64, 512)


@needs_shared
def test_a_run_on_an_imported_profile_says_which_ops_are_estimated(profiles, tmp_path):
    from tests.helpers import cluster, instance, run

    prof = read_profile(profiles[2])
    assert prof.meta.imported and not prof.estimated
    inst = instance(None, 80, "H100-SXM", model_name="Qwen/Qwen3-32B", tp_size=2, num_npus=2,
                    profile_dir=str(profiles[2]))
    notes = run(cluster(inst), [(100, 4, 0.0)]).instances[0].predictor.notes
    assert any(n.startswith("step times from a profile built by pdsim profile import-aiconfigurator: kernels "
                            "from its database are measured, the ops it lacks") for n in notes), notes


@needs_shared
def test_h100_qwen3_32b_closed_loop(profiles):
    table = read_closed_loop_table(AIC / "silicon_h100_qwen3-32b_vllm-0.12.0_agg_bf16.csv")
    # The benchmark as aiperf runs it (burst start, 20 rounds) on the engine aiconfigurator deploys.
    df = simulate_table(table, "Qwen/Qwen3-32B", "H100-SXM", 80, lambda tp: str(profiles[tp]),
                        SimOptions(step_overhead_us=STEP_OVERHEAD_US, client_delay_s=0.001))
    assert len(df) == 90
    assert mape(df.tpot_err_pct) <= 8.0  # measured 5.8%
    # Measured 25.6% with the all-reduce looked up in elements; the target is 15%
    # (docs/validation.md says what is left). A guard against getting worse, not a target.
    assert mape(df.ttft_err_pct) <= 27.0
    # A request's whole time, TTFT + (osl - 1) TPOT (the closed loop's throughput): measured 6.5%.
    measured = df.ttft_ms + (df.osl - 1) * df.tpot_ms
    simulated = df.sim_ttft_ms + (df.osl - 1) * df.sim_tpot_ms
    assert mape((simulated / measured - 1) * 100) <= 7.5
    # The harness matters: `vllm serve` defaults pack eight 1024-token prompts per step, which the
    # measurements contradict (TTFT per lone prefill is the same for isl 1024 and 4096).
    serve = simulate_table(table[table.tp == 8], "Qwen/Qwen3-32B", "H100-SXM", 80, lambda tp: str(profiles[tp]),
                           SimOptions(step_overhead_us=STEP_OVERHEAD_US, client_delay_s=0.001),
                           engine="vllm-serve")
    assert mape(serve.ttft_err_pct) > mape(df[df.tp == 8].ttft_err_pct) + 10


def test_every_mapped_system_has_a_hardware_spec():
    # The element-wise ops the database lacks are estimated from the pdsim hardware spec, so a
    # system mapped to a name without one would fail at import time.
    from pdsim.hardware import get_hardware
    from pdsim.perf.aiconfigurator import SYSTEM_HARDWARE

    missing = {system: name for system, name in SYSTEM_HARDWARE.items() if get_hardware(name) is None}
    assert not missing


def test_allreduce_tables_are_looked_up_in_elements():
    import pandas as pd

    from pdsim.perf.aiconfigurator import allreduce_rows

    # Latency (ms) = elements / 1e6: at 2 bytes per element, 2 MiB is 1 Mi elements -> 1.048576 ms.
    sizes = [2 ** i for i in range(7, 30)]
    table = pd.DataFrame({"message_size": sizes, "latency": [s / 1e6 for s in sizes]})
    rows = dict(allreduce_rows(table, table.iloc[0:0], 2))
    assert rows[2 ** 21] == pytest.approx(2 ** 20 / 1e6 * 1e3)
    # The faster of the two tables wins, each at the same element count.
    slower = table.assign(latency=table.latency * 3)
    assert dict(allreduce_rows(slower, table, 1))[2 ** 21] == pytest.approx(2 ** 21 / 1e6 * 1e3)


@needs_shared
def test_h100_nccl_sizes_are_elements():
    import pandas as pd

    # Bandwidth-bound NCCL all-reduce: if message_size were bytes, `half` and `int8` rows of one
    # size would take the same time; they differ by the element size.
    nccl = pd.read_parquet(AIC / "systems_data_h100_sxm" / "comm" / "nccl" / "2.27.3" / "nccl_perf.parquet")
    big = nccl[(nccl.op_name == "all_reduce") & (nccl.message_size >= 2 ** 26)]
    lat = big.pivot_table(index=["num_gpus", "message_size"], columns="nccl_dtype", values="latency").dropna()
    ratio = lat["half"] / lat["int8"]
    assert len(ratio) >= 6 and ratio.between(1.5, 2.1).all()


@needs_shared
def test_imported_allreduce_is_the_measured_one_at_bytes_over_two(profiles):
    # TP 8, 1 MiB = 512 Ki bf16 elements: vLLM custom all-reduce (graph) measured 15.0 us there.
    prof = read_profile(profiles[8])
    assert prof.allreduce(2 ** 20) == pytest.approx(15.0, abs=0.1)


def test_pcie_all_reduce_table_follows_vllms_choice_not_the_faster():
    # On PCIe vLLM runs its custom all-reduce on two GPUs below 8 MiB even where NCCL is faster
    # (as on the RTX PRO 6000 server's tables), NCCL above, and NCCL only on more GPUs.
    import pandas as pd

    from pdsim.perf.aiconfigurator import ALLREDUCE_BYTES, allreduce_rows

    sizes = [2**k for k in range(6, 28)]  # elements
    custom = pd.DataFrame({"message_size": sizes, "latency": [0.002 * (1 + s / 2**16) for s in sizes]})
    nccl = pd.DataFrame({"message_size": sizes, "latency": [0.001 * (1 + s / 2**17) for s in sizes]})
    faster = dict(allreduce_rows(custom, nccl, 2))
    two = dict(allreduce_rows(custom, nccl, 2, pcie_gpus=2))
    four = dict(allreduce_rows(custom, nccl, 2, pcie_gpus=4))
    small = [b for b in ALLREDUCE_BYTES if b < 8 * 2**20]
    large = [b for b in ALLREDUCE_BYTES if b >= 8 * 2**20]
    assert small and large
    assert all(two[b] > faster[b] for b in small)  # the slower custom kernel, as vLLM picks it
    assert all(two[b] == faster[b] for b in large)
    assert four == faster  # NCCL is the faster table here


@needs_shared
def test_fused_moe_tables_become_the_profiles_expert_kernels(tmp_path):
    """aiconfigurator's moe_perf table (here a synthetic one beside the shared H100 tables) is imported
    per expert layout, Triton kernel preferred, balanced routing only; the predictor uses it for a
    layout it measured and estimates the others, saying which."""
    import shutil

    import pandas as pd

    from pdsim.hardware import get_hardware
    from pdsim.perf.moe_time import ExpertPlacement
    from pdsim.perf.predictor import StepTimePredictor

    pytest.importorskip("pyarrow")
    db = tmp_path / "h100_sxm"
    shutil.copytree(AIC / "systems_data_h100_sxm", db)
    model = load_model("Qwen/Qwen3-30B-A3B")
    rows = []
    for moe_tp, moe_ep, kernel, scale in ((2, 1, "vllm_unquantizedfusedmoe_triton_tritonexperts", 1.0),
                                          (2, 1, "vllm_other_kernel", 0.5), (1, 2, "vllm_other_kernel", 2.0)):
        for dist in ("balanced", "power_law_1.2"):
            for tokens in (1, 64, 1024):
                rows.append({"framework": "VLLM", "version": "0.24.0", "device": "NVIDIA H100 80GB HBM3",
                             "op_name": "moe", "kernel_source": kernel, "moe_dtype": "bfloat16",
                             "num_tokens": tokens, "hidden_size": 2048, "inter_size": 768, "topk": 8,
                             "num_experts": 128, "moe_tp_size": moe_tp, "moe_ep_size": moe_ep, "distribution": dist,
                             "latency": scale * (0.05 + tokens * 1e-4) * (3.0 if dist != "balanced" else 1.0)})
    (db / "moe/vllm/0.24.0").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(db / "moe/vllm/0.24.0/moe_perf.parquet")
    prof = read_profile(import_profile(db, "h100_sxm", model, 2, tmp_path / "p"))
    assert prof.moe_layouts.layouts() == [(1, 2), (2, 1)]
    assert prof.moe_layouts(2, 1, 64) == pytest.approx((0.05 + 64e-4) * 1e3)  # Triton, balanced
    assert prof.moe_layouts(1, 2, 544) == pytest.approx(2 * (0.05 + 544e-4) * 1e3)  # between 64 and 1024
    assert "2x1 vllm_unquantizedfusedmoe_triton_tritonexperts" in prof.meta.notes
    hw = get_hardware("H100-SXM")
    split = StepTimePredictor(prof, model, 2, hw, moe_placement=ExpertPlacement(2, ep_size=1))
    assert not split.estimated and any("moe_layouts.csv (moe_tp 2, moe_ep 1)" in n for n in split.notes)
    est = split.moe_layer._estimate
    pairs, active = 64 * 8, model.moe.expected_active_experts(64, 128)
    expected = est.layer_us(64, pairs, active) - est.experts_us(64, pairs, active) + prof.moe_layouts(2, 1, 64)
    assert split.moe_layer.experts_us(64) == pytest.approx(expected)
    # A layout the table lacks is estimated, and said so.
    prof.moe_layouts._rows.pop((1, 2))  # as if the database had not measured it
    ep = StepTimePredictor(prof, model, 2, hw, moe_placement=ExpertPlacement(2, ep_size=2))
    assert ep.estimated and any("has no moe_tp 1 x moe_ep 2" in n for n in ep.notes)


@needs_shared
def test_the_imported_all_reduce_is_vllms_choice_and_is_set_aside_without_the_custom_kernel(profiles):
    import dataclasses

    from pdsim.hardware import get_hardware
    from pdsim.perf.predictor import StepTimePredictor

    prof, model, h100 = read_profile(profiles[8]), load_model("Qwen/Qwen3-32B"), get_hardware("H100-SXM")
    default = StepTimePredictor(prof, model, 8, h100)
    assert default.allreduce_source.startswith("measured table") and "not measured" not in default.allreduce_source
    nccl = StepTimePredictor(prof, model, 8, h100, custom_all_reduce=False)
    assert "NCCL only" in nccl.allreduce_source and "set aside" in nccl.allreduce_source
    # One decode token of Qwen3-32B (10 KiB) at TP 8: the custom kernel's ~5 us against NCCL's ~18 us.
    assert default._allreduce_us(10240) < 8.0 < 15.0 < nccl._allreduce_us(10240)
    # A table of NCCL alone (pdsim's own profiler) is used as measured, and says what it leaves out.
    prof.meta = dataclasses.replace(prof.meta, tool="pdsim profile")
    own = StepTimePredictor(prof, model, 8, h100)
    assert "custom all-reduce for small messages" in own.allreduce_source
    assert StepTimePredictor(prof, model, 8, h100, custom_all_reduce=False).allreduce_source.endswith("profile)")


def test_a_missing_parquet_engine_names_pyarrow(tmp_path, monkeypatch):
    import pandas as pd

    from pdsim.errors import ProfileError
    from pdsim.perf import aiconfigurator

    table = tmp_path / "gemm_perf.parquet"
    table.write_bytes(b"PAR1")

    def no_engine(path, *args, **kwargs):
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow', 'fastparquet'.")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    with pytest.raises(ProfileError, match=r"gemm_perf.parquet: reading aiconfigurator's parquet tables needs "
                                           r"pyarrow: pip install -U pyarrow .*pandas said: Unable to find"):
        aiconfigurator._read(table)


@needs_shared
@pytest.mark.parametrize("table", ["attention/vllm/0.24.0/generation_attention_perf.parquet",
                                   "attention/vllm/0.24.0/context_attention_perf.parquet",
                                   "comm/nccl/2.27.3/nccl_perf.parquet",
                                   "comm/vllm/0.24.0/custom_allreduce_perf.parquet"])
def test_a_table_measured_on_another_gpu_than_the_system_is_refused(tmp_path, table):
    # As a GEMM table of another GPU is: each table read is checked, not the GEMMs alone.
    import shutil

    import pandas as pd

    from pdsim.errors import ProfileError

    systems = tmp_path / "systems"
    shutil.copytree(AIC / "systems_data_h100_sxm", systems)
    df = pd.read_parquet(systems / table)
    df["device"] = "NVIDIA A100-SXM4-80GB"
    df.to_parquet(systems / table)
    with pytest.raises(ProfileError, match=rf"{table.rsplit('/', 1)[-1]}: measured on NVIDIA A100-SXM4-80GB, not on "
                                           r"the H100 of --system h100_sxm"):
        import_profile(systems, "h100_sxm", load_model("Qwen/Qwen3-32B"), 2, tmp_path / "out")
