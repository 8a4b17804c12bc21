"""All-reduce over `tp` GPUs with NCCL, over a message-size grid (allreduce.csv).

One process per GPU (torch.multiprocessing.spawn); every rank times each size with CUDA
events, and the slowest rank's median is kept, since a TP layer waits for the last GPU.
Used only when at least `tp` GPUs are visible; otherwise the profile has no allreduce.csv and
the simulator models the all-reduce from the hardware's link (meta.json says which), as it does
where the measurement fails (run.py `_allreduce` keeps the rest of the profile then).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
from pathlib import Path

import torch

from pdsim.profiler.ops import torch_dtype
from pdsim.profiler.timing import TimingConfig

MIN_BYTES = 1024
MAX_BYTES = 512 * 2**20


def can_measure_allreduce(device: str, tp: int) -> bool:
    return (
        device == "cuda"
        and torch.cuda.device_count() >= tp
        and torch.distributed.is_available()
        and torch.distributed.is_nccl_available()
    )


def message_sizes(max_bytes: int = MAX_BYTES) -> list[int]:
    """1 KiB .. max_bytes, two sizes per doubling (x1 and x1.5)."""
    sizes, b = [], MIN_BYTES
    while b <= max_bytes:
        sizes += [b] + ([b * 3 // 2] if b * 3 // 2 <= max_bytes else [])
        b *= 2
    return sizes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    world: int,
    port: int,
    dtype: str,
    sizes: list[int],
    warmup: int,
    repeats: int,
    result_path: str,
) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    tdtype = torch_dtype(dtype)
    elem = torch.tensor([], dtype=tdtype).element_size()
    medians = []
    for nbytes in sizes:
        x = torch.ones(max(1, nbytes // elem), dtype=tdtype, device="cuda")
        for _ in range(warmup):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        samples = []
        for _ in range(repeats):
            dist.barrier()  # start together: measure the collective, not the ranks' skew
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dist.all_reduce(x)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1000.0)
        medians.append(statistics.median(samples))
    # slowest rank per size
    gathered = [None] * world
    dist.all_gather_object(gathered, medians)
    if rank == 0:
        worst = [max(ranks) for ranks in zip(*gathered, strict=True)]
        Path(result_path).write_text(json.dumps(worst))
    dist.destroy_process_group()


def measure_allreduce(
    tp: int, dtype: str, timing: TimingConfig, max_bytes: int = MAX_BYTES
) -> list[tuple[int, float]]:
    """(bytes, time_us) rows for allreduce.csv."""
    import torch.multiprocessing as mp

    sizes = message_sizes(max_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "allreduce.json"
        mp.spawn(
            _worker,
            args=(tp, _free_port(), dtype, sizes, max(timing.warmup, 1), timing.repeats, str(result)),
            nprocs=tp,
            join=True,
        )
        times = json.loads(result.read_text())
    return list(zip(sizes, times, strict=True))
