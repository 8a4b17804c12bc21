"""Burst against sustained: how much slower an op runs when the GPU is kept busy, as an engine
under load keeps it, than when it is timed alone, as a profiler times it (needs a CUDA GPU).

    python benchmarks/gpu_sustained_clock.py [--hidden 4096 --inter 14336] [--seconds 4]

For GEMMs of Llama-3.1-8B's gate_up shape at several token counts it prints the time per call
  - timed as `pdsim profile` times an op (pdsim.profiler.timing.Timer: a spin kernel, then the
    op replayed from a CUDA graph, 20 repeats; the GPU mostly idles between repeats), and
  - in the last 0.5 s of `--seconds` of back-to-back calls (pdsim.profiler.check.sustained_us, as
    the self-check's `sustained ms` column times a forward),
with the SM clock, board power and clock-event reasons nvidia-smi reports meanwhile (sampled every
20 ms; reason 0x4 is the software power cap). Nothing is fitted. profiles/PROFILER.md has the
H200's figures and what they mean for profiles measured in bursts.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pdsim

import torch  # noqa: E402

from pdsim.profiler.check import SUSTAINED_WINDOW_S, sustained_us  # noqa: E402
from pdsim.profiler.timing import Timer, TimingConfig  # noqa: E402

SMI_FIELDS = "timestamp,clocks.sm,power.draw,clocks_event_reasons.active"


class Smi:
    """nvidia-smi sampling in the background; None fields when nvidia-smi is missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits",
                                          "-lms", "20"], stdout=path.open("w"), stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            self.proc = None

    def between(self, t0: float, t1: float) -> tuple[float | None, float | None, str]:
        """Median SM clock (MHz), median power (W) and the reasons seen between two time.time()s."""
        clocks, power, reasons = [], [], set()
        if self.proc is None:
            return None, None, "-"
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 4:
                continue
            try:
                stamp = time.mktime(time.strptime(parts[0].split(".")[0], "%Y/%m/%d %H:%M:%S"))
                stamp += float("0." + parts[0].split(".")[1]) if "." in parts[0] else 0.0
                clocks.append((stamp, float(parts[1])))
                power.append(float(parts[2]))
            except (ValueError, IndexError):
                continue
            if t0 <= stamp <= t1:
                reasons.add(parts[3])
        inside = [i for i, (s, _) in enumerate(clocks) if t0 <= s <= t1]
        if not inside:
            return None, None, "-"
        return (statistics.median(clocks[i][1] for i in inside), statistics.median(power[i] for i in inside),
                " ".join(sorted(reasons)))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()


def _num(v: float | None, width: int) -> str:
    return f"{v:{width}.0f}" if v is not None else f"{'-':>{width}}"


def case(tokens: int, args: argparse.Namespace, smi: Smi) -> str:
    dt, dev = torch.bfloat16, "cuda"
    ws = [torch.randn(args.hidden, 2 * args.inter, device=dev, dtype=dt) for _ in range(4)]
    x = torch.randn(tokens, args.hidden, device=dev, dtype=dt)
    out = torch.empty(tokens, 2 * args.inter, device=dev, dtype=dt)
    calls = [lambda w=w: torch.mm(x, w, out=out) for w in ws]  # weight copies: no L2 reuse
    burst = Timer("cuda", TimingConfig(warmup=5, repeats=20), graphs=True).time(calls).median_us
    turn = [0]

    def one() -> None:
        turn[0] += 1
        calls[turn[0] % len(calls)]()

    loaded = sustained_us(one, burst, heat_s=args.seconds - SUSTAINED_WINDOW_S)
    t1 = time.time()
    clock, power, reasons = smi.between(t1 - SUSTAINED_WINDOW_S, t1)
    return (f"{tokens:7d} {burst:12.1f} {loaded:13.1f} {loaded / burst:6.3f} {_num(clock, 7)} {_num(power, 8)}  "
            f"{reasons}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=14336, help="MLP intermediate size (gate_up has twice it)")
    ap.add_argument("--tokens", default="64,512,1024,2048,8192")
    ap.add_argument("--seconds", type=float, default=4.0, help="back-to-back run per case (more than 0.5)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_sustained_clock.py needs a CUDA GPU")
    smi = Smi(Path(tempfile.mkdtemp()) / "smi.csv")
    print(f"{torch.cuda.get_device_name(0)}; GEMM [T x {args.hidden}] @ [{args.hidden} x {2 * args.inter}] bf16")
    print(f"{'tokens':>7} {'profiler us':>12} {'sustained us':>13} {'ratio':>6} {'SM MHz':>7} {'power W':>8}  reasons")
    try:
        for t in (int(v) for v in args.tokens.split(",")):
            print(case(t, args, smi), flush=True)
            torch.cuda.synchronize()
            time.sleep(1.0)  # let the clocks recover before the next case
    finally:
        smi.stop()


if __name__ == "__main__":
    main()
