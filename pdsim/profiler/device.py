"""Which device the profiler runs on, and the description of it recorded in meta.json."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from pdsim.errors import PdsimError


def pick_device(requested: str | None) -> str:
    """ "cuda" when a GPU is visible (or asked for), else "cpu"."""
    if requested in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise PdsimError("--device cuda: no CUDA device is visible to torch")
    if requested not in ("cpu", "cuda"):
        raise PdsimError(f"--device: expected auto, cpu or cuda, got {requested!r}")
    return requested


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (Linux); {} elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def _cache_bytes(level: int) -> int | None:
    """Size of the CPU cache of `level` from sysfs (e.g. "32768K"), or None."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in base.glob("index*"):
            if (index / "level").read_text().strip() == str(level):
                size = (index / "size").read_text().strip()
                mult = {"K": 1024, "M": 1024**2}.get(size[-1], 1)
                return int(size.rstrip("KM")) * mult
    except (OSError, ValueError):
        return None
    return None


def last_level_cache_bytes(device: str) -> int:
    """Bytes of the cache that the op's operands could stay hot in between repeats."""
    if device == "cuda":
        return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20))
    return _cache_bytes(3) or _cache_bytes(2) or 32 * 2**20


def nvidia_smi_id(uuid: object) -> str | None:
    """nvidia-smi's --id for a device torch reports `uuid` for ("GPU-<uuid>"), None when there is none. Not torch's
    index: nvidia-smi ignores CUDA_VISIBLE_DEVICES and numbers GPUs in PCI order, so index 0 may be another GPU."""
    text = str(uuid or "").strip()
    if not text:
        return None
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _nvidia_smi(device_id: str | None) -> dict[str, str]:
    fields = "clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit,driver_version"
    if device_id is None:  # no way to name this GPU to nvidia-smi: no clocks rather than another GPU's
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device_id}", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(zip(fields.split(","), (v.strip() for v in out.split(",")), strict=False))


def describe_device(device: str, threads: int) -> dict:
    """meta.json's "device" object: what the times were measured on."""
    info: dict = {
        "type": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": threads,
        "host": platform.machine(),
        "cpu": _cpuinfo().get("model name", platform.processor()),
        "cpu_count": os.cpu_count(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            memory_bytes=props.total_memory,
            sm_count=props.multi_processor_count,
            l2_cache_bytes=last_level_cache_bytes(device),
            gpus_visible=torch.cuda.device_count(),
            cudnn=torch.backends.cudnn.version(),
            clocks=_nvidia_smi(nvidia_smi_id(getattr(props, "uuid", None))),
        )
    else:
        cpu = _cpuinfo()
        flags = set(cpu.get("flags", "").split())
        info.update(
            name=f"{info['cpu']} ({threads} threads)",
            cpu_family=cpu.get("cpu family"),
            cpu_model=cpu.get("model"),
            cpu_mhz=cpu.get("cpu MHz"),
            l2_cache_bytes=_cache_bytes(2),
            l3_cache_bytes=_cache_bytes(3),
            isa=sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))),
            hypervisor="hypervisor" in flags,
            mkldnn=torch.backends.mkldnn.is_available(),
        )
    return info
