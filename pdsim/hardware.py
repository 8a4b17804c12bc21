"""GPU specifications from vendor datasheets.

Used for estimated profiles (roofline), to choose the TP all-reduce model when a profile has no
measured all-reduce table (pdsim/perf/collectives.py), and to check names in cluster configs.
Numbers are dense (non-sparse) tensor-core peaks with FP32 accumulation, as published; they are upper bounds that real
kernels reach only partly, which `pdsim/perf/estimate.py` accounts for with efficiencies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    description: str
    bf16_tflops: float  # dense BF16/FP16 tensor peak, FP32 accumulate
    fp8_tflops: float  # dense FP8 tensor peak (0 where unsupported)
    mem_bw_gbps: float  # HBM/GDDR bandwidth, GB/s
    mem_size_gb: float
    intra_node_bw_gbps: float  # per-direction GPU-to-GPU bandwidth inside a node (NVLink or PCIe)
    intra_node_latency_ns: float
    intra_node_link: str  # "nvlink" or "pcie": which all-reduce model applies (pdsim/perf/collectives.py)
    compute_capability: str  # CUDA's, e.g. "9.0": vLLM picks kernels and fusions by it
    sm_count: int  # streaming multiprocessors: how many attention tiles run at once (pdsim/perf/estimate.py)
    source: str
    # Per-direction NVLink bandwidth between the two GPUs of a bridged pair (H100 NVL), 0 where there is no
    # bridge: a TP 2 group on one pair all-reduces over it, larger groups over PCIe (intra_node_*).
    nvlink_bridge_gbps: float = 0.0


HARDWARE: dict[str, HardwareSpec] = {
    spec.name: spec
    for spec in [
        HardwareSpec(
            name="RTXPRO6000",
            description="NVIDIA RTX PRO 6000 Blackwell Server Edition (96 GB GDDR7)",
            bf16_tflops=503.8,
            fp8_tflops=1007.6,
            mem_bw_gbps=1792.0,
            mem_size_gb=96.0,
            intra_node_bw_gbps=64.0,  # PCIe 5.0 x16, no NVLink
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="12.0",
            sm_count=188,  # 24,064 CUDA cores / 128 per SM
            source="NVIDIA RTX PRO 6000 Blackwell datasheet",
        ),
        HardwareSpec(
            name="H100-SXM",
            description="NVIDIA H100 SXM5 80 GB",
            bf16_tflops=989.4,
            fp8_tflops=1978.9,
            mem_bw_gbps=3350.0,
            mem_size_gb=80.0,
            intra_node_bw_gbps=450.0,  # NVLink 4, 900 GB/s bidirectional
            intra_node_latency_ns=1000.0,
            intra_node_link="nvlink",
            compute_capability="9.0",
            sm_count=132,  # Hopper whitepaper: 16,896 CUDA cores / 128 per SM
            source="NVIDIA H100 Tensor Core GPU datasheet",
        ),
        HardwareSpec(
            name="H200",
            description="NVIDIA H200 SXM 141 GB",
            bf16_tflops=989.4,
            fp8_tflops=1978.9,
            mem_bw_gbps=4800.0,
            mem_size_gb=141.0,
            intra_node_bw_gbps=450.0,
            intra_node_latency_ns=1000.0,
            intra_node_link="nvlink",
            compute_capability="9.0",
            sm_count=132,  # the H100 SXM5's GH100 configuration
            source="NVIDIA H200 Tensor Core GPU datasheet",
        ),
        HardwareSpec(
            name="B200",
            description="NVIDIA B200 SXM 180 GB HBM3e (HGX B200)",
            bf16_tflops=2250.0,  # 36 PFLOPS sparse FP16/BF16 per 8-GPU HGX B200 -> 2.25 dense per GPU
            fp8_tflops=4500.0,  # 72 PFLOPS sparse FP8 per HGX B200 -> 4.5 dense per GPU
            mem_bw_gbps=8000.0,
            mem_size_gb=180.0,  # 1,440 GB per HGX B200
            intra_node_bw_gbps=900.0,  # NVLink 5, 1.8 TB/s bidirectional
            intra_node_latency_ns=1000.0,
            intra_node_link="nvlink",
            compute_capability="10.0",
            sm_count=148,  # as reported of HGX B200 (CUDA device properties); not in the datasheet
            source="NVIDIA HGX B200 datasheet (per-GPU = 8-GPU totals / 8; dense = sparse / 2); NVIDIA Blackwell "
                   "architecture technical brief (NVLink 5: 1.8 TB/s per GPU)",
        ),
        HardwareSpec(
            name="GB200",
            description="NVIDIA Blackwell GPU of a GB200 Superchip (186 GB HBM3e, GB200 NVL72)",
            bf16_tflops=2500.0,  # 360 PFLOPS sparse FP16/BF16 per NVL72 / 72 GPUs -> 2.5 dense per GPU
            fp8_tflops=5000.0,  # 720 PFLOPS sparse FP8 per NVL72 -> 5 dense per GPU
            mem_bw_gbps=8000.0,  # 576 TB/s per NVL72 / 72
            mem_size_gb=186.0,  # 13.4 TB HBM3e per NVL72 / 72
            intra_node_bw_gbps=900.0,  # NVLink 5, 1.8 TB/s bidirectional; 130 TB/s per NVL72 / 72
            intra_node_latency_ns=1000.0,
            intra_node_link="nvlink",
            compute_capability="10.0",
            sm_count=148,  # the B200 GPU
            source="NVIDIA GB200 NVL72 datasheet (per-GPU = rack totals / 72; dense = sparse / 2); NVIDIA Blackwell "
                   "architecture technical brief (NVLink 5: 1.8 TB/s per GPU)",
        ),
        HardwareSpec(
            name="A100-80GB",
            description="NVIDIA A100 SXM4 80 GB",
            bf16_tflops=312.0,
            fp8_tflops=0.0,
            mem_bw_gbps=2039.0,
            mem_size_gb=80.0,
            intra_node_bw_gbps=300.0,  # NVLink 3, 600 GB/s bidirectional
            intra_node_latency_ns=1000.0,
            intra_node_link="nvlink",
            compute_capability="8.0",
            sm_count=108,  # Ampere GA100 whitepaper
            source="NVIDIA A100 Tensor Core GPU datasheet",
        ),
        HardwareSpec(
            name="A100-40GB",
            description="NVIDIA A100 SXM4 40 GB",
            bf16_tflops=312.0,
            fp8_tflops=0.0,
            mem_bw_gbps=1555.0,
            mem_size_gb=40.0,
            intra_node_bw_gbps=300.0,  # NVLink 3, 600 GB/s bidirectional
            intra_node_latency_ns=1000.0,
            intra_node_link="nvlink",
            compute_capability="8.0",
            sm_count=108,  # Ampere GA100 whitepaper
            source="NVIDIA A100 Tensor Core GPU datasheet",
        ),
        HardwareSpec(
            name="A100-PCIe-80GB",
            description="NVIDIA A100 PCIe 80 GB (no NVLink bridge)",
            bf16_tflops=312.0,
            fp8_tflops=0.0,
            mem_bw_gbps=1935.0,
            mem_size_gb=80.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.0",
            sm_count=108,  # Ampere GA100 whitepaper
            source="NVIDIA A100 Tensor Core GPU datasheet (A100 80GB PCIe column)",
        ),
        HardwareSpec(
            name="A100-PCIe-40GB",
            description="NVIDIA A100 PCIe 40 GB (no NVLink bridge)",
            bf16_tflops=312.0,
            fp8_tflops=0.0,
            mem_bw_gbps=1555.0,
            mem_size_gb=40.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.0",
            sm_count=108,  # Ampere GA100 whitepaper
            source="NVIDIA A100 Tensor Core GPU datasheet (A100 40GB PCIe column)",
        ),
        HardwareSpec(
            name="H100-PCIe",
            description="NVIDIA H100 PCIe 80 GB (no NVLink bridge)",
            bf16_tflops=756.0,
            fp8_tflops=1513.0,
            mem_bw_gbps=2000.0,
            mem_size_gb=80.0,
            intra_node_bw_gbps=64.0,  # PCIe 5.0 x16
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="9.0",
            sm_count=114,  # Hopper whitepaper: 14,592 CUDA cores / 128 per SM
            source="NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe column)",
        ),
        HardwareSpec(
            name="H100-NVL",
            description="NVIDIA H100 NVL 94 GB (PCIe card, NVLink bridge per pair)",
            bf16_tflops=835.5,  # the datasheet's 1,671 with sparsity
            fp8_tflops=1670.5,  # 3,341 with sparsity
            mem_bw_gbps=3900.0,
            mem_size_gb=94.0,
            intra_node_bw_gbps=64.0,  # PCIe 5.0 x16: beyond the bridged pair
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="9.0",
            sm_count=132,  # the SXM board's 16,896 CUDA cores / 128 per SM
            source="NVIDIA H100 NVL product brief",
            nvlink_bridge_gbps=300.0,  # NVLink bridge, 600 GB/s bidirectional
        ),
        HardwareSpec(
            name="H800",
            description="NVIDIA H800 SXM5 80 GB",
            bf16_tflops=989.4,
            fp8_tflops=1978.9,
            mem_bw_gbps=3350.0,
            mem_size_gb=80.0,
            intra_node_bw_gbps=200.0,  # NVLink 4 at 400 GB/s bidirectional (the export variant)
            intra_node_latency_ns=1000.0,
            intra_node_link="nvlink",
            compute_capability="9.0",
            sm_count=132,  # the H100 SXM5's GH100 configuration
            source="NVIDIA H800 product brief (H100 SXM compute and memory, NVLink 400 GB/s)",
        ),
        HardwareSpec(
            name="H20",
            description="NVIDIA H20 96 GB HBM3",
            bf16_tflops=148.0,
            fp8_tflops=296.0,
            mem_bw_gbps=4000.0,
            mem_size_gb=96.0,
            intra_node_bw_gbps=450.0,  # NVLink 4, 900 GB/s bidirectional
            intra_node_latency_ns=1000.0,
            intra_node_link="nvlink",
            compute_capability="9.0",
            sm_count=78,  # as reported (CUDA device properties); not in the datasheet
            source="NVIDIA H20 product brief",
        ),
        HardwareSpec(
            name="L4",
            description="NVIDIA L4 24 GB GDDR6",
            bf16_tflops=121.0,
            fp8_tflops=242.5,
            mem_bw_gbps=300.0,
            mem_size_gb=24.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.9",
            sm_count=58,  # Ada AD104 configuration, 7,424 CUDA cores
            source="NVIDIA L4 Tensor Core GPU datasheet",
        ),
        HardwareSpec(
            name="L40",
            description="NVIDIA L40 48 GB GDDR6",
            bf16_tflops=181.0,
            fp8_tflops=362.0,
            mem_bw_gbps=864.0,
            mem_size_gb=48.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.9",
            sm_count=142,  # Ada AD102 configuration, 18,176 CUDA cores
            source="NVIDIA L40 GPU datasheet",
        ),
        HardwareSpec(
            name="L40S",
            description="NVIDIA L40S 48 GB GDDR6",
            bf16_tflops=362.05,
            fp8_tflops=733.0,
            mem_bw_gbps=864.0,
            mem_size_gb=48.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.9",
            sm_count=142,  # Ada AD102 configuration, 18,176 CUDA cores
            source="NVIDIA L40S datasheet",
        ),
        HardwareSpec(
            name="RTX4090",
            description="NVIDIA GeForce RTX 4090 24 GB GDDR6X",
            bf16_tflops=165.2,
            fp8_tflops=330.3,
            mem_bw_gbps=1008.0,
            mem_size_gb=24.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16, no P2P over NVLink
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.9",
            sm_count=128,  # Ada whitepaper, 16,384 CUDA cores
            source="NVIDIA Ada Lovelace architecture whitepaper (RTX 4090)",
        ),
        HardwareSpec(
            name="RTX5090",
            description="NVIDIA GeForce RTX 5090 32 GB GDDR7",
            bf16_tflops=209.5,  # dense, FP32 accumulate (GeForce's half rate), as the RTX 4090's 165.2
            fp8_tflops=419.0,
            mem_bw_gbps=1792.0,
            mem_size_gb=32.0,
            intra_node_bw_gbps=64.0,  # PCIe 5.0 x16, no NVLink, no P2P
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="12.0",
            sm_count=170,  # 21,760 CUDA cores / 128 per SM
            source="NVIDIA RTX Blackwell GPU architecture whitepaper (RTX 5090)",
        ),
        HardwareSpec(
            name="RTX6000Ada",
            description="NVIDIA RTX 6000 Ada Generation 48 GB GDDR6",
            bf16_tflops=364.2,  # half the datasheet's 728.5 sparse; FP8 1,457 sparse
            fp8_tflops=728.5,
            mem_bw_gbps=960.0,
            mem_size_gb=48.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.9",
            sm_count=142,  # Ada AD102 configuration, 18,176 CUDA cores
            source="NVIDIA RTX 6000 Ada Generation datasheet",
        ),
        HardwareSpec(
            name="RTXA6000",
            description="NVIDIA RTX A6000 48 GB GDDR6",
            bf16_tflops=154.8,  # half the datasheet's 309.7 sparse; no FP8
            fp8_tflops=0.0,
            mem_bw_gbps=768.0,
            mem_size_gb=48.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16 (an optional 2-GPU NVLink bridge is not modelled)
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.6",
            sm_count=84,  # Ampere GA102 configuration, 10,752 CUDA cores
            source="NVIDIA RTX A6000 datasheet",
        ),
        HardwareSpec(
            name="A40",
            description="NVIDIA A40 48 GB GDDR6",
            bf16_tflops=149.7,
            fp8_tflops=0.0,
            mem_bw_gbps=696.0,
            mem_size_gb=48.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16 (an optional 2-GPU NVLink bridge is not modelled)
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.6",
            sm_count=84,  # Ampere GA102 configuration, 10,752 CUDA cores
            source="NVIDIA A40 datasheet",
        ),
        HardwareSpec(
            name="A10",
            description="NVIDIA A10 24 GB GDDR6",
            bf16_tflops=125.0,
            fp8_tflops=0.0,
            mem_bw_gbps=600.0,
            mem_size_gb=24.0,
            intra_node_bw_gbps=32.0,  # PCIe 4.0 x16
            intra_node_latency_ns=2000.0,
            intra_node_link="pcie",
            compute_capability="8.6",
            sm_count=72,  # Ampere GA102 configuration, 9,216 CUDA cores
            source="NVIDIA A10 datasheet",
        ),
    ]
}


def known_hardware() -> list[str]:
    return sorted(HARDWARE)


def get_hardware(name: str) -> HardwareSpec | None:
    """The spec for `name` (or an alias of it), or None (a measured profile may still exist for
    unlisted hardware)."""
    return HARDWARE.get(canonical_hardware_name(name))


# Names other tools use for the GPUs above (LLMServingSim's configs say "H100"), in one place; other spellings of
# these and of the spec names (case, spaces, '-' and '_') are matched by canonical_hardware_name.
HARDWARE_ALIASES: dict[str, str] = {
    "H100": "H100-SXM",
    "H100-SXM5": "H100-SXM",
    "H200-SXM": "H200",
    "B200-SXM": "B200",
    "HGX-B200": "B200",
    "GB200-SXM": "GB200",
    "A100": "A100-80GB",
    "A100-SXM4-40GB": "A100-40GB",
    "A100-PCIe": "A100-PCIe-80GB",
    "H800-SXM": "H800",
    "H20-SXM": "H20",
    "A100-SXM-80GB": "A100-80GB",
    # Names that give the form but not the memory: the default board's, or the one npu_mem tells (family_board).
    "A100-SXM4": "A100-80GB",
    "A100-SXM": "A100-80GB",
    # Torch calls the SXM board "H100 80GB HBM3" and the PCIe one "H100 PCIe": "80GB" alone is the SXM's name.
    "H100-80GB": "H100-SXM",
    "RTXPRO6000-Blackwell": "RTXPRO6000",
    "A6000": "RTXA6000",
}


def _name_key(name: str) -> str:
    """A GPU name compared loosely: case, spaces, '-' and '_' aside, and the vendor's words that name no board
    ("NVIDIA GeForce RTX 4090" and "rtx_4090" are one name)."""
    key = re.sub(r"[\s_-]+", "", name).upper()
    return re.sub(r"^(NVIDIA)?(GEFORCE)?", "", key)


_NAMES_BY_KEY: dict[str, str] = {_name_key(alias): board for alias, board in
                                 [*((name, name) for name in HARDWARE), *HARDWARE_ALIASES.items()]}


def canonical_hardware_name(name: str) -> str:
    """The name pdsim knows `name` by: aliases resolved, in any case and spelling ("h100", "H100_SXM5"), and
    device names as torch reports them ("NVIDIA H100 80GB HBM3"); unknown names are returned unchanged."""
    if name in HARDWARE or name in HARDWARE_ALIASES:
        return HARDWARE_ALIASES.get(name, name)
    if is_gpu_slice(name):  # a slice of a GPU has a fraction of its compute: no board's spec
        return name
    found = _NAMES_BY_KEY.get(_name_key(name))
    if found is not None:
        return found
    for pattern, _, board in (*_BOARD_PATTERNS, *_DEVICE_PATTERNS):
        if re.search(pattern, _spaced(name), re.IGNORECASE):
            return board
    return name


def _spaced(name: str) -> str:
    """'_' read as a space, so the patterns' word boundaries hold in "NVIDIA_H100_80GB_HBM3" ('_' is a word
    character to re)."""
    return name.replace("_", " ")


# Boards that one family name covers, told apart by the device name a profile records (torch's
# get_device_name: "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-40GB", ...). LLMServingSim's
# configs say "H100" for any H100, but the SXM and PCIe boards differ in TP link (NVLink against PCIe 5), memory
# bandwidth and the non-torch memory NCCL takes. Each board here has a spec in HARDWARE.
_BOARD_PATTERNS: tuple[tuple[str, str, str], ...] = (  # (pattern, family, board); the first match wins
    (r"\bH100\b.*\bNVL\b", "H100", "H100-NVL"),  # not "NVLink"
    (r"\bH100\b.*PCIe", "H100", "H100-PCIe"),
    (r"\bH100\b.*(HBM3|SXM)", "H100", "H100-SXM"),
    (r"\bA100\b.*(40 ?GB.*PCIe|PCIe.*40 ?GB)", "A100", "A100-PCIe-40GB"),
    (r"\bA100\b.*PCIe", "A100", "A100-PCIe-80GB"),
    (r"\bA100\b.*SXM.*80 ?GB", "A100", "A100-80GB"),
    (r"\bA100\b.*SXM.*40 ?GB", "A100", "A100-40GB"),
)
_FAMILY = {board: family for _, family, board in _BOARD_PATTERNS}
_MIG = re.compile(r"\bMIG\b")  # "NVIDIA A100-SXM4-80GB MIG 3g.40gb": a Multi-Instance GPU slice
# Device names of one-board GPUs whose torch name is not a spelling of pdsim's (family None: nothing to tell apart).
_DEVICE_PATTERNS: tuple[tuple[str, None, str], ...] = (
    (r"\bRTX PRO 6000\b", None, "RTXPRO6000"),
    (r"\bRTX 6000 Ada\b", None, "RTX6000Ada"),
    (r"\bRTX A6000\b", None, "RTXA6000"),
)


def device_board(device_name: str, hardware: str) -> str | None:
    """The board of `hardware`'s family that a recorded device name says (None: another family, or a name it
    cannot tell)."""
    family = _FAMILY.get(canonical_hardware_name(hardware))
    if is_gpu_slice(device_name):  # measured on a slice: its times are no whole board's
        return None
    for pattern, board_family, board in _BOARD_PATTERNS:
        if re.search(pattern, _spaced(device_name), re.IGNORECASE):
            return board if board_family == family else None
    return None


def is_gpu_slice(device_name: str) -> bool:
    """A device name of a Multi-Instance GPU slice ("NVIDIA H100 80GB HBM3 MIG 3g.40gb")."""
    return _MIG.search(_spaced(device_name)) is not None


def board_family(board: str) -> str | None:
    """The family name of a board pdsim tells apart within its family ("H100" for H100-PCIe), else None."""
    return _FAMILY.get(board)


# How far under a board's nominal memory a config's mem_size may be and still name that board: 94 GB and 93 GB
# are an H100 NVL; 85.5 (an 80 GB H100 SXM counted in 10^9 bytes) is no board's, and is refused, not guessed.
BOARD_MEMORY_SLACK = 0.02


def family_board(name: str, mem_size_gb: float, mem_bw_gbps: float | None = None) -> str | None:
    """The board a name that leaves the board open stands for where the config's memory says another than its
    default: "H100" with 94 GB is the H100 NVL, "A100" or "A100-SXM4" with 40 GB the A100 40GB (of two such boards,
    the one with the default's link: the SXM4, not the PCIe card). Where the memory fits several boards, a mem_bw
    that is one board's datasheet figure (within BOARD_BANDWIDTH_SLACK) tells it: "H100" with 80 GB at 2,000 GB/s
    is the H100 PCIe. None: the default board (or a name that leaves nothing open)."""
    family = is_family_name(name)
    if not (family or _name_key(name) in _MEMORY_OPEN_KEYS):
        return None
    default = canonical_hardware_name(name)
    fits = [board for board in family_boards(_FAMILY[default]) if _memory_of(board, mem_size_gb)]
    link = HARDWARE[default].intra_node_link
    linked_as_default = [board for board in fits if HARDWARE[board].intra_node_link == link]
    if not family:  # the name gives the form (SXM4, PCIe): the memory alone is open
        fits = linked_as_default
    elif mem_bw_gbps is not None:
        by_bandwidth = [board for board in fits if _bandwidth_of(board, mem_bw_gbps)]
        if len(by_bandwidth) == 1:
            return None if by_bandwidth[0] == default else by_bandwidth[0]
    if default in fits:
        return None
    if len(fits) > 1:
        fits = linked_as_default
    return fits[0] if len(fits) == 1 else None


# Keys (_name_key) of board names that leave the memory open: mem_size tells the 40 GB board from the 80 GB one.
_MEMORY_OPEN_KEYS = frozenset({"A100SXM", "A100SXM4", "A100PCIE"})
# How near a config's mem_bw must be to a board's datasheet figure to name it: the A100 80GB's SXM4 and PCIe
# boards are 5% apart (2,039 and 1,935 GB/s).
BOARD_BANDWIDTH_SLACK = 0.02


def _bandwidth_of(board: str, mem_bw_gbps: float) -> bool:
    datasheet = HARDWARE[board].mem_bw_gbps
    return abs(mem_bw_gbps - datasheet) <= BOARD_BANDWIDTH_SLACK * datasheet + 1e-9  # 2% of 2000 is within


def _memory_of(board: str, mem_size_gb: float) -> bool:
    """Whether a config's mem_size is the board's memory (or up to BOARD_MEMORY_SLACK under it)."""
    return (1 - BOARD_MEMORY_SLACK) * HARDWARE[board].mem_size_gb <= mem_size_gb <= HARDWARE[board].mem_size_gb


def family_boards(family: str) -> list[str]:
    """The boards pdsim tells apart under one family name ("H100": H100-NVL, H100-PCIe, H100-SXM)."""
    return [board for board, of in _FAMILY.items() if of == family]


def is_family_name(name: str) -> bool:
    """A name that stands for a GPU family of several boards pdsim tells apart ("H100", "A100"), not one board."""
    board = canonical_hardware_name(name)
    return board != name and board in _FAMILY and _name_key(name) == _FAMILY[board]
