"""How much time per TP all-reduce a reported TP 2 RTX PRO 6000 run implies, against candidate models.

    python benchmarks/tp_collectives_check.py

A TP 2 run on two PCIe RTX PRO 6000 GPUs (Llama-3.1-8B, vLLM 0.19, LLMServingSim's measured
profile, whose tp2/ tables have no all-reduce) was reported (issue 13) with pdsim's old spec
model (ring at 64 GB/s, 2 us per hop) giving TPOT -20%, TTFT -31%, E2E -25% and throughput +24%. That run
is not in ../shared; its workload and engine settings are taken to be those of the TP 1 run
that is (llmservingsim-rtxpro6000-llama31-8b), with tp_size 2. This script replays that
workload at TP 2 with the old model, then adds a constant d us to every all-reduce until each
reported error is undone, and prints the implied time per all-reduce beside what each
candidate gives (LLMServingSim's reading of the config's link, pdsim's PCIe model), and the
metrics each candidate simulates. The reported run's arrival rate is not known, so the last lines
set the candidates against the run the reports imply at 1.5, 2 and 2.5 times the TP 1 run's rate.
Nothing is fitted into pdsim.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pdsim

from pdsim.hardware import get_hardware  # noqa: E402
from pdsim.perf import predictor  # noqa: E402
from pdsim.perf.collectives import AllReduceModel, measured_pcie_model  # noqa: E402
from pdsim.validate.cli import _sim_options  # noqa: E402
from pdsim.validate.compare import compare, replay  # noqa: E402
from pdsim.validate.measured import read_measured  # noqa: E402
from pdsim.validate.recorded import replay_config  # noqa: E402

RUN = Path(__file__).resolve().parents[2] / "shared" / "data" / "calibration" / "llmservingsim-rtxpro6000-llama31-8b"
# The reported errors of the old model, simulated / real - 1.
REPORTED = {"TPOT (ms)": -0.20, "E2E latency (ms)": -0.25, "throughput (req/s)": +0.24, "TTFT (ms)": -0.31}
MESSAGE_TOKENS = (64, 128, 2048)
RATES = (1.5, 2.0, 2.5)
BYTES_PER_TOKEN = 4096 * 2  # Llama-3.1-8B hidden size, bf16


def link_model(link_bw_gbps: float, link_latency_ns: float) -> AllReduceModel:
    """LLMServingSim's reading of the config: a ring over link_bw / link_latency, as ASTRA-Sim
    prices it, 2 (n - 1) steps of (latency + nbytes / n / bw)."""
    return AllReduceModel(f"config link (ring over link_bw {link_bw_gbps:g} GB/s, link_latency "
                          f"{link_latency_ns:g} ns)", 0.0, link_latency_ns * 1e-3, link_bw_gbps)


def simulate(model: AllReduceModel, config: Path, rate: float = 1.0) -> dict[str, float]:
    """Means of the replay with `model` pricing every TP all-reduce; rate: the TP 1 run's arrival
    rate times this (its arrival times divided by it)."""
    predictor.interconnect_model = lambda hardware, n, custom_all_reduce=True: model
    run = read_measured(RUN / "vllm_run" / "requests.jsonl")
    first = run.requests.arrival_s.min()
    run.requests["arrival_s"] = first + (run.requests.arrival_s - first) / rate
    # The TP 1 run's engine, as if it had run at TP 2 (the reported run's layout).
    run.engine_meta = {**run.engine_meta, "engine_kwargs": {**run.engine_kwargs, "tensor_parallel_size": 2}}
    cfg = replay_config(config, run, None)
    table = compare(run, replay(cfg, run, _sim_options(RUN / "profile", 0.0, run), str(config)))
    return table[table.stat == "mean"].set_index("metric").simulated.to_dict()


def implied_offset_us(base: AllReduceModel, config: Path, metric: str, target: float) -> float:
    """d such that `base` + d us per call simulates `metric` = target (secant on d)."""
    def at(d: float) -> float:
        return simulate(AllReduceModel("offset", base.call_us + d, base.hop_us, base.bus_bw_gbps), config)[metric]
    d0, d1, f0, f1 = 0.0, 60.0, at(0.0) - target, at(60.0) - target
    for _ in range(6):
        if abs(f1 - f0) < 1e-12 or abs(f1) < 1e-3 * abs(target):
            break
        d0, d1, f0 = d1, d1 - f1 * (d1 - d0) / (f1 - f0), f1
        f1 = at(d1) - target
    return d1


def main() -> None:
    if not RUN.is_dir():
        sys.exit(f"{RUN}: not found (this check reads ../shared beside the repository)")
    rtx = get_hardware("RTXPRO6000")
    cfg = json.loads((RUN / "cluster_config.json").read_text())
    inst = cfg["nodes"][0]["instances"][0]
    inst["tp_size"], inst["num_npus"] = 2, 2
    old = AllReduceModel("old spec model (64 GB/s, 2 us per hop)", 0.0, 2.0, 64.0)
    # The estimate that priced unmeasured PCIe GPUs before the measured servers did: 3/4 of the line rate,
    # 10 us per call (one-shot on two GPUs).
    estimate = AllReduceModel("estimated PCIe model (3/4 of the line rate, 10 us per call; before)", 10.0, 0.0, 48.0)
    candidates = [old, link_model(cfg["link_bw"], cfg["link_latency"]), estimate, measured_pcie_model(rtx, 2),
                  measured_pcie_model(rtx, 2, custom_all_reduce=False)]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "cluster_config_tp2.json"
        config.write_text(json.dumps(cfg))
        base = simulate(old, config)
        print("per all-reduce (us) at " + ", ".join(f"{t} tokens" for t in MESSAGE_TOKENS))
        for metric, err in REPORTED.items():
            d = implied_offset_us(old, config, metric, base[metric] / (1 + err))
            times = ", ".join(f"{old.time_us(t * BYTES_PER_TOKEN, 2) + d:.1f}" for t in MESSAGE_TOKENS)
            print(f"  implied by {metric} {err:+.0%}: {times}  (old model + {d:.1f} us)")
        for model in candidates:
            times = ", ".join(f"{model.time_us(t * BYTES_PER_TOKEN, 2):.1f}" for t in MESSAGE_TOKENS)
            print(f"  {model.source}: {times}")
        print("simulated means, and against the run the report implies (old model's figure / (1 + error))")
        for model in candidates:
            sim = simulate(model, config)
            parts = [f"{m} {sim[m]:.2f} ({sim[m] / (base[m] / (1 + e)) - 1:+.1%})" for m, e in REPORTED.items()]
            print(f"  {model.source}: " + ", ".join(parts))
        # The reported run's arrival rate is not known: at other rates the old model's reported errors
        # imply another run. A candidate that matches all four at one rate explains the report.
        print("against the run the report implies at other arrival rates (x the TP 1 run's): "
              + ", ".join(m.split(" (")[0] for m in REPORTED))
        for rate in RATES:
            at = simulate(old, config, rate)
            for model in candidates[1:]:
                sim = simulate(model, config, rate)
                errors = " / ".join(f"{sim[m] / (at[m] / (1 + e)) - 1:+.1%}" for m, e in REPORTED.items())
                print(f"  x{rate:g} {model.source}: {errors}")


if __name__ == "__main__":
    main()
