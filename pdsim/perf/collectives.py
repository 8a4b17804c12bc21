"""Time of one tensor-parallel all-reduce when the profile has no measured all-reduce table.

Every model here has the alpha-beta form, in nccl-tests' terms:

    time_us = call_us + 2 (n - 1) hop_us + 2 (n - 1) / n * nbytes / bus_bw

`bus_bw` is nccl-tests' "bus bandwidth" (busbw = algbw * 2 (n - 1) / n), so the achieved figure
can be set directly; `call_us` is the per-call cost (kernel launch and synchronisation),
`hop_us` a per-ring-step cost. Which source prices an instance's TP all-reduce, first that
applies (docs/validation.md, "TP collectives"):

1. the profile's measured all-reduce table (the predictor reads it);
2. a GPU with NVLink: NVLINK4_BY_GPUS, derived from aiconfigurator's H100 measurements;
3. a PCIe GPU: the PCIe model below.

A cluster config's link_bw / link_latency never price TP collectives: they are the network that
carries KV between instances (LLMServingSim prices TP collectives over them too; the TP 2 RTX
PRO 6000 check in docs/validation.md is why pdsim does not).
"""

from __future__ import annotations

from dataclasses import dataclass

from pdsim.hardware import HardwareSpec


@dataclass(frozen=True)
class AllReduceModel:
    source: str  # what priced the all-reduce, as reports name it
    call_us: float
    hop_us: float
    bus_bw_gbps: float

    def time_us(self, nbytes: float, n: int) -> float:
        if n <= 1:
            return 0.0
        steps = 2 * (n - 1)
        return self.call_us + steps * self.hop_us + steps / n * nbytes / (self.bus_bw_gbps * 1e3)  # GB/s = 1e3 B/us


# NVLink 4 (H100/H200 SXM), per GPU count: (per-call latency us, bus bandwidth GB/s). Least-squares
# fit (relative error) to the faster of vLLM's custom all-reduce (CUDA-graph mode, vLLM 0.24.0)
# and NCCL 2.27.3 all_reduce (half), as measured in aiconfigurator's h100_sxm database
# (comm/vllm/0.24.0/custom_allreduce_perf.parquet, comm/nccl/2.27.3/nccl_perf.parquet; message
# sizes there are elements, x2 for bytes), over 8 KB..256 MB. Mean |error| 5% / 10% / 13% for
# 2 / 4 / 8 GPUs, worst 17% / 30% / 31% (tests/test_collectives.py re-derives it from the data).
# The data's small-message floor is 4.2-4.7 us; its busbw at 256-512 MB is 320-470 GB/s.
NVLINK4_BY_GPUS: dict[int, tuple[float, float]] = {2: (4.30, 254.0), 4: (5.15, 282.0), 8: (6.10, 340.0)}
NVLINK4_LINE_GBPS = 450.0  # NVLink 4 per GPU and direction: the data's reference link
NVLINK_SOURCE = "NVLink model (aiconfigurator H100 custom all-reduce / NCCL measurements)"

# PCIe without NVLink. Estimated, not measured: no PCIe collective measurement is in ../shared.
# Bus bandwidth 3/4 of the line rate: the PCIe protocol itself caps a x16 link's payload at about
# 0.87 of it (128b/130b coding is in the line rate; a 256-byte TLP carries ~26 bytes of header,
# sequence number, LCRC and framing; ACK and flow-control DLLPs take a few % more), and NCCL's
# topology model rates a Gen3 x16 link at 12 of its 15.75 GB/s (src/graph/topo.h, PCI_BW; recalled,
# not checked here). Per call about 10 us, against the 4.3 us NVLink floor measured above: the
# kernel synchronises with its peers through flags that cross PCIe. vLLM 0.19's custom all-reduce
# runs on two PCIe GPUs when peer-to-peer access works and is off beyond two ("not supported on
# more than two PCIe-only GPUs", vllm/distributed/device_communicators/custom_all_reduce.py;
# read in the 0.19.0 wheel), where NCCL's ring takes a PCIe hop per step (1 us, estimated). docs/validation.md
# ("TP collectives") checks the model against a reported TP 2 RTX PRO 6000 run.
PCIE_BUS_EFFICIENCY = 0.75
PCIE_CALL_US = 10.0
PCIE_HOP_US = 1.0
PCIE_SOURCE = "PCIe model (estimated: 3/4 of the PCIe line rate, 10 us per call)"


def nvlink_model(hardware: HardwareSpec, n: int) -> AllReduceModel:
    """H100's measured NVLink behaviour; another NVLink generation's bandwidth scaled by its line rate."""
    gpus = min(NVLINK4_BY_GPUS, key=lambda g: (abs(g - n), g))
    call_us, bus_bw = NVLINK4_BY_GPUS[gpus]
    scale = hardware.intra_node_bw_gbps / NVLINK4_LINE_GBPS
    source = NVLINK_SOURCE if scale == 1.0 else f"{NVLINK_SOURCE}, bandwidth scaled x{scale:.2f} to {hardware.name}"
    return AllReduceModel(source, call_us, 0.0, bus_bw * scale)


def pcie_model(hardware: HardwareSpec, n: int) -> AllReduceModel:
    hop_us = PCIE_HOP_US if n > 2 else 0.0  # two GPUs: vLLM's one-shot custom all-reduce, one call
    return AllReduceModel(PCIE_SOURCE, PCIE_CALL_US, hop_us, PCIE_BUS_EFFICIENCY * hardware.intra_node_bw_gbps)


def interconnect_model(hardware: HardwareSpec, n: int) -> AllReduceModel:
    """The model for a TP group of n GPUs without a measured table (rules 2-3 above)."""
    if hardware.intra_node_link == "nvlink":
        return nvlink_model(hardware, n)
    return pcie_model(hardware, n)
