"""Time of one tensor-parallel all-reduce when the profile has no measured all-reduce table.

Every model here has the alpha-beta form, in nccl-tests' terms:

    time_us = call_us + 2 (n - 1) hop_us + 2 (n - 1) / n * nbytes / bus_bw

NCCL's and NVLink's measured models two such lines, the faster taken at each size (a small-message and a
large-message protocol or algorithm: the comment above NVLINK4_BY_GPUS); a PCIe server's custom all-reduce one.

`bus_bw` is nccl-tests' "bus bandwidth" (busbw = algbw * 2 (n - 1) / n), so the achieved figure
can be set directly; `call_us` is the per-call cost (kernel launch and synchronisation),
`hop_us` a per-ring-step cost. Which source prices an instance's TP all-reduce, first that
applies (docs/validation.md, "TP collectives"):

1. the profile's measured all-reduce table (the predictor reads it);
2. a GPU with NVLink: NVLINK_MEASURED where its own server was measured (A100, B200, GB200), else
   NVLINK4_BY_GPUS, derived from aiconfigurator's H100 measurements;
3. a PCIe GPU whose server was measured (RTX PRO 6000, L40S): PCIE_MEASURED, derived from
   aiconfigurator-core's collective tables for it;
4. another PCIe GPU: the measured PCIe server of its generation (PCIE_ASSUMED_SOURCE), said to be assumed;
5. a GPU pdsim has no spec for: the same, taken as a PCIe 4.0 x16 card, said to be an assumption; one its name
   says is a GeForce card, without peer-to-peer access (NCCL alone, as rule 3's RTX 4090).

A config's TP link (the innermost of per-dimension link_bw lists, both directions together as LLMServingSim
writes GPU links: ClusterConfig.gpu_link halves it) scales the bandwidth of the model the GPU gets at its own link, its
per-call cost kept (_link_scale): a faster link never prices a slower all-reduce.

A cluster config's scalar link_bw / link_latency never price TP collectives: they are the network that
carries KV between instances (LLMServingSim prices TP collectives over them too; the TP 2 RTX
PRO 6000 check in docs/validation.md is why pdsim does not).

vLLM's `--disable-custom-all-reduce` (InstanceConfig.disable_custom_all_reduce; also what vLLM falls
back to when its peer-to-peer check fails) leaves every all-reduce to NCCL: rules 2-5 then price
NCCL alone, from its own measurements where there are some.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import NamedTuple

from pdsim.hardware import HardwareSpec, get_hardware


@dataclass(frozen=True)
class AllReduceModel:
    source: str  # what priced the all-reduce, as reports name it
    call_us: float
    hop_us: float
    bus_bw_gbps: float
    # The algorithm the engine switches to for messages of `large_from_bytes` and more (vLLM's
    # custom all-reduce hands messages of its max_size, 8 MiB, and up to NCCL).
    large: AllReduceModel | None = None
    large_from_bytes: float = float("inf")
    # A second (call us, bus bandwidth GB/s) line, the faster of the two taken at each size: NCCL's protocols, as its
    # own tuner models them (a latency and a bandwidth each; LL for small messages, Simple for large).
    other_protocol: tuple[float, float] | None = None
    # NCCL's own model where this one is the faster of vLLM's custom all-reduce and NCCL (NVLink): the logits'
    # all-gather runs on NCCL whatever the all-reduce runs on.
    nccl: AllReduceModel | None = None

    def time_us(self, nbytes: float, n: int) -> float:
        if n <= 1:
            return 0.0
        if self.large is not None and nbytes >= self.large_from_bytes:
            return self.large.time_us(nbytes, n)
        steps = 2 * (n - 1)
        us = self._fastest(steps * self.hop_us, steps / n * nbytes)
        # The faster of the custom all-reduce and NCCL is never slower than NCCL alone (where the two fits part).
        return us if self.nccl is None else min(us, self.nccl.time_us(nbytes, n))

    def all_gather_us(self, nbytes: float, n: int) -> float:
        """An NCCL all-gather whose output is `nbytes` (vLLM gathers the logits of a TP group with
        NCCL; its custom kernel only all-reduces). A ring moves (n - 1) / n of the output through
        each link, half of what an all-reduce of that size moves, at the same bus bandwidth."""
        if n <= 1:
            return 0.0
        nccl = self.nccl or self.large or self
        return nccl._fastest((n - 1) * nccl.hop_us, (n - 1) / n * nbytes)

    def _fastest(self, hops_us: float, bus_bytes: float) -> float:
        """The call's time with `bus_bytes` through each link (GB/s = 1e3 B/us), on the faster protocol line."""
        us = self.call_us + hops_us + bus_bytes / (self.bus_bw_gbps * 1e3)
        if self.other_protocol is None:
            return us
        call_us, bus_bw = self.other_protocol
        return min(us, call_us + bus_bytes / (bus_bw * 1e3))


# Each collective model below is two lines, time = call + 2 (n - 1) / n x bytes / busbw each, the faster taken at
# each size (AllReduceModel.other_protocol), least squares in relative error with each line fitted on the sizes
# below / from the split where the two fit best (benchmarks/allreduce_fit.py `fit_protocols`): NCCL's own tuner
# models its protocols so (LL for small messages, Simple for large), and "the faster of vLLM's custom all-reduce
# and NCCL" is a small-message and a large-message algorithm. One line over all sizes (what pdsim had before) missed
# the tables by up to 30-61% where the two meet. Per GPU count: (call us, bus bandwidth GB/s) of the small-message
# line, then of the large-message one.
Lines = tuple[float, float, float, float]
# NVLink 4 (H100/H200 SXM): the faster of vLLM's custom all-reduce (CUDA-graph mode, vLLM 0.24.0) and NCCL
# all_reduce (half), as measured in aiconfigurator's h100_sxm database (comm/vllm/0.24.0/custom_allreduce_perf.parquet,
# comm/nccl/2.27.3/nccl_perf.parquet, whose rows say NCCL 2.29.2; message sizes there are elements, x2 for bytes), over
# 8 KB..256 MB. tests/test_collectives.py re-derives it from the data; its errors are in docs/validation.md ("TP
# collectives").
NVLINK4_BY_GPUS: dict[int, Lines] = {2: (4.22, 236.0, 34.4, 310.0), 4: (4.53, 129.0, 8.21, 305.0),
                                     8: (4.91, 78.0, 9.88, 373.0)}
# NCCL all_reduce (half) alone, same data and fit: what runs with vLLM's custom all-reduce disabled.
NVLINK4_NCCL_BY_GPUS: dict[int, Lines] = {2: (6.67, 119.0, 18.3, 285.0), 4: (10.5, 202.0, 25.2, 340.0),
                                          8: (17.2, 223.0, 58.4, 445.0)}
NVLINK4_LINE_GBPS = 450.0  # NVLink 4 per GPU and direction: the data's reference link
NVLINK_SOURCE = "NVLink model (aiconfigurator H100 custom all-reduce / NCCL measurements)"
# Other NVLink servers measured in aiconfigurator-core 0.12.0's systems data (the PyPI wheel, Apache-2.0;
# `systems/data/<system>/comm/`, sizes in bf16 elements), fitted as above: per GPU count, the lines of the faster of
# vLLM's custom all-reduce (CUDA-graph mode) and NCCL all_reduce (half), and of NCCL alone.
# benchmarks/allreduce_fit.py re-derives them and prints the fit errors. The H100 model scaled by line rate does not
# follow A100's or B200's tables, so those servers have their own; H200's tables refit close to the H100 constants,
# so H200 (and H20, the same NVLink 4) keeps the H100 model (docs/validation.md, "NVLink servers with their own
# tables").
NVLINK_MEASURED: dict[str, tuple[str, dict[int, Lines], dict[int, Lines]]] = {
    # hardware: (what was measured, custom or NCCL by GPU count, NCCL alone by GPU count)
    "A100-80GB": ("A100 SXM4 server (NVLink 3): vLLM 0.14 custom all-reduce, NCCL 2.27.3",
                  {2: (4.98, 165.0, 30.8, 188.0), 4: (5.51, 88.7, 9.87, 180.0), 8: (5.83, 43.0, 13.0, 188.0)},
                  {2: (11.3, 49.0, 36.0, 184.0), 4: (15.9, 113.0, 53.4, 209.0), 8: (24.0, 135.0, 85.9, 220.0)}),
    "B200": ("B200 server (NVLink 5): vLLM 0.19 custom all-reduce, NCCL 2.29.2",
             {2: (6.71, 164.0, 25.1, 558.0), 4: (7.07, 128.0, 19.5, 577.0), 8: (6.99, 48.6, 15.9, 619.0)},
             {2: (10.4, 206.0, 25.1, 558.0), 4: (15.5, 264.0, 59.8, 763.0), 8: (26.8, 393.0, 158.0, 978.0)}),
    # GB200 was measured at 2 and 4 GPUs (one compute tray); larger groups take the 4-GPU figures.
    "GB200": ("GB200 (NVLink 5): vLLM 0.19 custom all-reduce, NCCL 2.29.2",
              {2: (4.66, 201.0, 25.9, 563.0), 4: (5.44, 273.0, 40.0, 684.0)},
              {2: (11.0, 208.0, 25.9, 563.0), 4: (16.0, 254.0, 63.3, 779.0)}),
}
NVLINK_MEASURED_LIKE = {"A100-40GB": "A100-80GB"}  # the same SXM4 board and NVLink 3
NVLINK_MEASURED_SOURCE = "NVLink model measured on {} (aiconfigurator-core 0.12 collective tables)"

# PCIe servers that were measured: aiconfigurator-core 0.12.0's systems data (Apache-2.0, the PyPI
# wheel aiconfigurator-core; `systems/data/<system>/comm/`), message sizes in elements of bf16 (x2 for
# bytes, as for H100 above). Per GPU count: the (call us, bus bandwidth GB/s) of vLLM's custom all-reduce
# in CUDA-graph mode (`vLLM_custom_graph`), which vLLM 0.19 runs on two PCIe GPUs for messages under
# its 8 MiB max_size, and the two lines of NCCL all_reduce (half), which it runs for larger messages and on more than
# two PCIe GPUs. The custom all-reduce is one line over 8 KB..8 MiB; NCCL two, over 8 KB..256 MB, fitted as the
# NVLink models above (one line over all sizes was 27-55% fast at 512 KiB and 4-9% slow at a prefill's 8-128 MiB);
# benchmarks/allreduce_fit.py re-derives them and prints the fit errors:
# - rtx_pro_6000_server (8 x RTX PRO 6000 Blackwell Server Edition, PCIe 5): custom all-reduce of vLLM
#   0.19.0, NCCL 2.29.2.
# - l40s (8 x L40S, PCIe 4): custom all-reduce of vLLM 0.14.0, NCCL 2.27.3. Its 4- and 8-GPU NCCL
#   bandwidths are that server's: the ranks then cross CPU sockets without peer-to-peer access.
# These are the measured servers' topologies; another server of the same GPU may differ (docs/validation.md).
PCIE_CUSTOM_MAX_BYTES = 8 * 2**20


class PcieServer(NamedTuple):
    """A measured PCIe server and the two algorithms measured on it, as sources name them."""

    name: str
    custom: str
    nccl: str

    def measured(self, custom_runs: bool) -> str:
        """What was measured of the algorithms a model of it runs."""
        return f"{self.name}: {f'{self.custom}, ' if custom_runs else ''}{self.nccl}"


Fit = tuple[float, float]  # (call us, bus bandwidth GB/s)
PCIE_MEASURED: dict[str, tuple[PcieServer, dict[int, Fit], dict[int, Lines]]] = {
    # hardware: (what was measured, custom all-reduce by GPU count, NCCL by GPU count)
    "RTXPRO6000": (PcieServer("RTX PRO 6000 Server", "vLLM 0.19 custom all-reduce", "NCCL 2.29.2"),
                   {2: (18.8, 14.7)},
                   {2: (6.49, 22.3, 16.6, 37.0), 4: (12.4, 15.2, 35.7, 26.7), 8: (23.3, 8.52, 81.3, 25.3)}),
    "L40S": (PcieServer("L40S server", "vLLM 0.14 custom all-reduce", "NCCL 2.27.3"),
             {2: (5.41, 19.4)},
             {2: (6.54, 11.0, 23.3, 20.5), 4: (9.98, 4.33, 23.7, 5.31), 8: (11.2, 0.78, 112.0, 1.76)}),
}
PCIE_MEASURED_SOURCE = "PCIe model measured on {} (aiconfigurator-core 0.12 collective tables)"
# GeForce cards have no peer-to-peer access (NVIDIA left it off the RTX 40 and 50 series), so vLLM's custom
# all-reduce fails its P2P check and NCCL runs: priced by the NCCL table of the measured server of the same
# PCIe generation. NCCL without P2P stages through host memory, so this is a lower bound on the time.
PCIE_WITHOUT_P2P_LIKE = {"RTX4090": "L40S", "RTX5090": "RTXPRO6000"}


# Other PCIe GPUs: no collective measurement of them is at hand. They take the measured server of their
# PCIe generation (the nearest line rate; bandwidths scaled by the line-rate ratio where it differs):
# PCIe 4 GPUs (L40, A10, A40, L4, RTX A6000, RTX 6000 Ada) the L40S server's tables, PCIe 5 ones
# (H100 PCIe) the RTX PRO 6000 server's: a measured server's achieved bandwidth and per-call cost, far from
# what protocol overheads alone give (docs/validation.md). Beyond two GPUs the tables carry their server's topology
# (the L40S server's ranks cross CPU sockets without peer-to-peer access), which the source says.
PCIE_ASSUMED_SOURCE = ("PCIe model measured on the {} (aiconfigurator-core 0.12 collective tables), assumed for "
                       "{}: no measurement of its own{}")
NCCL_ONLY = "; NCCL only (vLLM's custom all-reduce disabled)"


def _nearest_gpus(table: dict[int, tuple[float, ...]], n: int) -> int:
    """The measured GPU count nearest n (the smaller of two as near)."""
    return min(table, key=lambda g: (abs(g - n), g))


def nvlink_model(hardware: HardwareSpec, n: int, custom_all_reduce: bool = True) -> AllReduceModel:
    """The GPU's own measured NVLink behaviour where its server was measured; else H100's, with another
    NVLink generation's bandwidth scaled by its line rate."""
    measured = measured_nvlink_model(hardware, n, custom_all_reduce)
    if measured is not None:
        return measured
    gpus = _nearest_gpus(NVLINK4_NCCL_BY_GPUS, n)  # the two tables have the same GPU counts
    scale = hardware.intra_node_bw_gbps / NVLINK4_LINE_GBPS
    if scale != 1.0:
        source = f"{NVLINK_SOURCE}, bandwidth scaled x{scale:.2f} to {hardware.name}"
    elif hardware.name != "H100-SXM":
        source = f"{NVLINK_SOURCE}, taken for {hardware.name}'s NVLink of the same rate"
    else:
        source = NVLINK_SOURCE
    return _custom_or_nccl(source, NVLINK4_BY_GPUS[gpus], NVLINK4_NCCL_BY_GPUS[gpus], scale, custom_all_reduce)


def _custom_or_nccl(source: str, best: Lines, nccl: Lines, bw_scale: float, custom_all_reduce: bool) -> AllReduceModel:
    """An NVLink server's model: the faster of vLLM's custom all-reduce and NCCL, capped by NCCL alone (whose model
    also prices the logits' all-gather); NCCL alone where the custom all-reduce is disabled."""
    nccl_model = _lines_model(source + NCCL_ONLY, nccl, bw_scale)
    if not custom_all_reduce:
        return nccl_model
    return dataclasses.replace(_lines_model(source, best, bw_scale), nccl=nccl_model)


def _lines_model(source: str, lines: Lines, bw_scale: float) -> AllReduceModel:
    """A model of two lines (module comment above), their bandwidths scaled by bw_scale."""
    call_us, bus_bw, large_call_us, large_bus_bw = lines
    return AllReduceModel(source, call_us, 0.0, bus_bw * bw_scale,
                          other_protocol=(large_call_us, large_bus_bw * bw_scale))


def _measured(servers: dict[str, tuple], like: dict[str, str], hardware: HardwareSpec) -> tuple[str, tuple] | None:
    """(name, entry) of the measured server of this GPU (or of the GPU it is measured like); None when there
    is none."""
    name = like.get(hardware.name, hardware.name)
    return (name, servers[name]) if name in servers else None


def _link_scale(hardware: HardwareSpec) -> tuple[float, str]:
    """How a config's TP link (per-dimension link_bw) scales the bandwidth of the GPU's own: the GPU, its
    driver and vLLM's kernels keep their per-call cost, the link sets the bandwidth, so a faster link is never
    slower (taking another GPU's server at another rate would trade per-call costs). 1 at the spec's rate."""
    spec = get_hardware(hardware.name)
    if spec is None or hardware.intra_node_bw_gbps == spec.intra_node_bw_gbps:
        return 1.0, ""
    scale = hardware.intra_node_bw_gbps / spec.intra_node_bw_gbps
    return scale, f", bandwidth scaled x{scale:.2f} to its {hardware.intra_node_bw_gbps:g} GB/s link"


def measured_nvlink_model(hardware: HardwareSpec, n: int, custom_all_reduce: bool = True) -> AllReduceModel | None:
    """NVLINK_MEASURED's model for n GPUs (the nearest measured count), or None (see _measured)."""
    found = _measured(NVLINK_MEASURED, NVLINK_MEASURED_LIKE, hardware)
    if found is None:
        return None
    what, best, nccl = found[1]
    gpus = _nearest_gpus(nccl, n)  # the two tables have the same GPU counts
    scale, scaled = _link_scale(hardware)
    source = NVLINK_MEASURED_SOURCE.format(what) + scaled
    if gpus != n:
        source += f", its {gpus}-GPU figures"
    return _custom_or_nccl(source, best[gpus], nccl[gpus], scale, custom_all_reduce)


# A GPU pdsim has no spec for: taken as a PCIe 4.0 x16 card (the link of most PCIe cards in service),
# which the source says is an assumption.
UNKNOWN_GPU_PCIE_GBPS = 32.0


# A GeForce card by its name ("NVIDIA GeForce RTX 5090", "RTX5090", "rtx_3090_ti"): no peer-to-peer access, as
# on the RTX 4090 (PCIE_WITHOUT_P2P_LIKE). Workstation boards (RTX 6000 Ada, RTX A6000, RTX PRO 6000) have it.
_GEFORCE = re.compile(r"GEFORCE|RTX[ _-]?[2-5]0[5-9]0(?!\d)", re.IGNORECASE)


def unknown_gpu_model(hardware_name: str, n: int, custom_all_reduce: bool = True) -> AllReduceModel:
    return pcie_model(hardware_name, UNKNOWN_GPU_PCIE_GBPS, n, custom_all_reduce, generation_gbps=UNKNOWN_GPU_PCIE_GBPS,
                      why=f", taken as PCIe 4.0 x16 (no spec for {hardware_name!r}: add one in pdsim/hardware.py, "
                          "or measure allreduce.csv)", no_p2p=_GEFORCE.search(hardware_name) is not None)


def pcie_model(hardware_name: str, line_gbps: float, n: int, custom_all_reduce: bool = True,
               why: str = "", generation_gbps: float | None = None, no_p2p: bool = False) -> AllReduceModel:
    """The measured server of the GPU's PCIe generation (the nearest line rate to generation_gbps; default its
    spec's link, else line_gbps), its bandwidths scaled to line_gbps (a config's TP link, _link_scale)."""
    line = {name: get_hardware(name).intra_node_bw_gbps for name in PCIE_MEASURED}
    spec = get_hardware(hardware_name)
    generation = (generation_gbps if generation_gbps is not None else
                  spec.intra_node_bw_gbps if spec is not None else line_gbps)
    server = min(PCIE_MEASURED, key=lambda name: (abs(math.log(generation / line[name])), name))
    measured, custom, nccl = PCIE_MEASURED[server]
    scale = line_gbps / line[server]
    if scale != 1.0:
        why += f", bandwidth scaled x{scale:.2f} to its {line_gbps:g} GB/s link"
    if hardware_name in PCIE_WITHOUT_P2P_LIKE or no_p2p:
        custom = {}
        why += ", and without peer-to-peer access (a GeForce card) NCCL alone, a lower bound"
    source = PCIE_ASSUMED_SOURCE.format(measured.name, hardware_name, why) + _topology(n)
    return _server_model(source, custom, nccl, n, custom_all_reduce, scale)


def _topology(n: int) -> str:
    """Beyond two GPUs a server's NCCL figures are its own topology's (the L40S server's ranks cross CPU sockets
    without peer-to-peer access)."""
    return ("" if n <= 2 else "; beyond 2 GPUs that server's topology, which another server may not share "
            "(measure allreduce.csv)")


def _server_model(source: str, custom: dict[int, Fit], nccl: dict[int, Lines],
                  n: int, custom_all_reduce: bool, bw_scale: float = 1.0) -> AllReduceModel:
    """A PCIe server's tables for n GPUs (the nearest measured count), as vLLM picks the algorithm:
    custom all-reduce on two GPUs below 8 MiB (unless disabled), NCCL otherwise."""
    if not custom_all_reduce and custom:
        custom, source = {}, source + NCCL_ONLY
    gpus = _nearest_gpus(nccl, n)
    if gpus != n:
        source += f", its {gpus}-GPU figures"
    nccl_model = _lines_model(source, nccl[gpus], bw_scale)
    if not _custom_runs(custom, n, custom_all_reduce):
        return nccl_model
    call_us, bus_bw = custom[2]
    return AllReduceModel(source, call_us, 0.0, bus_bw * bw_scale, large=nccl_model,
                          large_from_bytes=PCIE_CUSTOM_MAX_BYTES)


def _custom_runs(custom: dict[int, tuple[float, float]], n: int, custom_all_reduce: bool) -> bool:
    """Whether a server's custom all-reduce table prices n GPUs' small messages (two GPUs, not disabled)."""
    return custom_all_reduce and n == 2 and 2 in custom


def measured_pcie_model(hardware: HardwareSpec, n: int, custom_all_reduce: bool = True) -> AllReduceModel | None:
    """The GPU's measured server's model for n GPUs (_server_model), its bandwidth scaled to a config's TP link
    (_link_scale). None when the GPU's server was not measured."""
    found = _measured(PCIE_MEASURED, PCIE_WITHOUT_P2P_LIKE, hardware)
    if found is None:
        return None
    name, (server, custom, nccl) = found
    scale, scaled = _link_scale(hardware)
    if name != hardware.name:  # no P2P: NCCL only, lower bound
        return _server_model(f"{hardware.name} without peer-to-peer: NCCL as measured on the {server.name} "
                             f"(same PCIe generation; aiconfigurator-core 0.12 tables){scaled}, a lower bound", {},
                             nccl, n, custom_all_reduce, scale)
    # Named by what runs: where NCCL alone does, only what was measured of it.
    source = PCIE_MEASURED_SOURCE.format(server.measured(_custom_runs(custom, n, custom_all_reduce)))
    return _server_model(source + scaled + _topology(n), custom, nccl, n, custom_all_reduce, scale)


def custom_all_reduce_runs(hardware: HardwareSpec | None, n: int) -> bool:
    """Whether vLLM 0.19 runs its custom all-reduce for small messages on n of these GPUs (when not
    disabled): world sizes 2, 4, 6, 8; fully connected (NVLink), or two PCIe GPUs with peer-to-peer access."""
    if hardware is None or n not in (2, 4, 6, 8):
        return False
    if hardware.intra_node_link == "nvlink":
        return True
    return n == 2 and hardware.name not in PCIE_WITHOUT_P2P_LIKE


def interconnect_model(hardware: HardwareSpec, n: int, custom_all_reduce: bool = True) -> AllReduceModel:
    """The model for a TP group of n GPUs without a measured table (rules 2-4 above); custom_all_reduce
    False: vLLM's --disable-custom-all-reduce."""
    if hardware.intra_node_link == "nvlink":
        return nvlink_model(hardware, n, custom_all_reduce)
    if hardware.nvlink_bridge_gbps:
        return bridged_pair_model(hardware, n, custom_all_reduce)
    return (measured_pcie_model(hardware, n, custom_all_reduce)
            or pcie_model(hardware.name, hardware.intra_node_bw_gbps, n, custom_all_reduce))


def bridged_pair_model(hardware: HardwareSpec, n: int, custom_all_reduce: bool = True) -> AllReduceModel:
    """PCIe cards bridged in pairs by NVLink (H100 NVL): two GPUs, one pair, all-reduce over the bridge,
    priced as H100 SXM's NVLink with the bridge's bandwidth; a larger group is not NVLink-connected
    throughout, so vLLM's custom all-reduce is off and NCCL's ring is held to PCIe (the PCIe model). Neither
    was measured on such cards."""
    if n > 2:
        return pcie_model(hardware.name, hardware.intra_node_bw_gbps, n, custom_all_reduce,
                          why=f", {n} GPUs beyond its NVLink-bridged pair")
    bridge = dataclasses.replace(hardware, intra_node_bw_gbps=hardware.nvlink_bridge_gbps, intra_node_link="nvlink")
    scale = hardware.nvlink_bridge_gbps / NVLINK4_LINE_GBPS
    source = (f"{NVLINK_SOURCE}, bandwidth scaled x{scale:.2f} to {hardware.name}'s NVLink bridge (one bridged "
              "pair), assumed: not measured on such cards")
    return dataclasses.replace(nvlink_model(bridge, n, custom_all_reduce),
                               source=source + ("" if custom_all_reduce else NCCL_ONLY))


# vLLM >= 0.17's default compilation (-O2) fuses each TP all-reduce with the residual add and RMSNorm
# after it into one FlashInfer kernel (`compilation/passes/fusion/allreduce_rms_fusion.py`,
# `config/vllm.py` enable_allreduce_rms_fusion): on compute capability 9.0 and 10.x, TP 2/4/8, no DP
# and no PP, for steps whose all-reduce message is at most this many MiB (by capability, then TP;
# the same in 0.17.0 to 0.19.0, which added 10.3). Larger steps run the plain all-reduce and norm.
FUSED_ALLREDUCE_NORM_MAX_MIB: dict[str, dict[int, float]] = {
    "9.0": {2: 64, 4: 2, 8: 0.5},
    "10.0": {2: 64, 4: 32, 8: 1},
    "10.3": {2: 64, 4: 64, 8: 2},
}


def fused_allreduce_norm_tokens(hardware: HardwareSpec | None, tp: int, act_bytes_per_token: int) -> int | None:
    """The most tokens a step may have for vLLM to run its all-reduces fused with the norms after them
    (max size // (hidden x activation bytes), as the pass computes it), or None where it never does."""
    max_mib = FUSED_ALLREDUCE_NORM_MAX_MIB.get(hardware.compute_capability, {}).get(tp) if hardware else None
    return None if max_mib is None else int(max_mib * 2**20) // act_bytes_per_token
