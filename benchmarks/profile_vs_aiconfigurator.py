"""Compare a measured pdsim profile with aiconfigurator-core's measured kernel tables for the same
GPU and model, op by op and step by step (the table in profiles/PROFILER.md for the bundled H200
profile).

    pip download aiconfigurator-core==0.12.0 --no-deps -d /tmp/aic && unzip -q /tmp/aic/*.whl -d /tmp/aic
    python benchmarks/profile_vs_aiconfigurator.py --systems-dir /tmp/aic/aiconfigurator_core/systems/data

Defaults: the bundled `profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1` against `h200_sxm`.
`--profile` also takes an LLMServingSim profile's tp folder, e.g. the RTX PRO 6000 one in
../shared/data/calibration/llmservingsim-rtxpro6000-llama31-8b/profile/tp1 with
`--system rtx_pro_6000_server` (docs/validation.md, RTX PRO 6000).
The aiconfigurator profile is imported into a temporary folder (`pdsim profile
import-aiconfigurator`); nothing of the wheel is copied into pdsim. Nothing is fitted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pdsim

from pdsim.hardware import get_hardware  # noqa: E402
from pdsim.models import load_model  # noqa: E402
from pdsim.perf.predictor import StepTimePredictor  # noqa: E402
from pdsim.perf.profile import read_profile  # noqa: E402
from pdsim.perf.profile_format import Profile  # noqa: E402

GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
ELEMENTWISE = {"layernorm": 2, "rotary_emb": 1, "act_fn": 1, "residual_add": 2}


def _elementwise_us(profile: Profile, tokens: int) -> float:
    return sum(n * profile.dense[op](tokens) for op, n in ELEMENTWISE.items() if op in profile.dense)


def _prefill_attn_us(profile: Profile, chunk: int) -> float:
    """One layer's attention over a fresh prompt, from either profile format (pdsim's 2-D tables or
    LLMServingSim's 4-D grid of mixed batches)."""
    if profile.attention_grid4d is not None:
        return float(profile.attention_grid4d(float(chunk), 0.0, 0.0, 0.0))
    return profile.attention_prefill(chunk, 0)


def _decode_attn_us(profile: Profile, batch: int, kv: int) -> float:
    if profile.attention_grid4d is not None:
        return float(profile.attention_grid4d(0.0, 0.0, float(batch), float(kv)))
    return profile.attention_decode(batch, kv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems-dir", required=True, help="aiconfigurator-core's systems/data folder")
    ap.add_argument("--system", default="h200_sxm")
    ap.add_argument("--profile", default=str(ROOT / "profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1"))
    args = ap.parse_args()

    ours = read_profile(Path(args.profile))
    meta = ours.meta
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pdsim", "profile", "import-aiconfigurator", "--systems-dir", args.systems_dir,
             "--system", args.system, "--model", meta.model, "--tp", str(meta.tp), "--out", tmp],
            check=True, cwd=ROOT, capture_output=True, text=True,
        )
        theirs = read_profile(next(Path(tmp).glob(f"*/{meta.model}/{meta.dtype}/tp{meta.tp}")))
    model, hw = load_model(meta.model), get_hardware(meta.hardware)

    diffs = []
    for op in GEMMS:
        diffs += [ours.dense[op](t) / theirs.dense[op](t) - 1 for t in ours.dense[op].xs]
    diffs_abs = np.abs(diffs)
    print(f"GEMMs, {len(diffs)} grid points: |ours/theirs - 1| median {np.median(diffs_abs):.1%}, "
          f"p90 {np.percentile(diffs_abs, 90):.1%}, max {diffs_abs.max():.1%}")
    print("\nper layer, us (ours / theirs)")
    top = max(ours.dense["qkv_proj"].xs)  # compare inside the profiled range only
    for t in [t for t in (8, 1024, 8192) if t <= top]:
        row = "  ".join(f"{op} {ours.dense[op](t):.1f}/{theirs.dense[op](t):.1f}" for op in GEMMS)
        print(f"  {t:>5} tokens: {row}  elementwise {_elementwise_us(ours, t):.0f}/{_elementwise_us(theirs, t):.0f}")
    for c in [c for c in (2048, 8192) if c <= top]:
        print(f"  attention, fresh prompt {c}: {_prefill_attn_us(ours, c):.0f}/{_prefill_attn_us(theirs, c):.0f}")
    decode = _decode_attn_us(ours, 64, 1024), _decode_attn_us(theirs, 64, 1024)
    print(f"  attention, decode 64 at KV 1024: {decode[0]:.0f}/{decode[1]:.0f}")

    p_ours = StepTimePredictor(ours, model, meta.tp, hw)
    p_theirs = StepTimePredictor(theirs, model, meta.tp, hw)
    print("\nwhole steps, ms (ours / theirs, theirs - ours)")
    steps = [("prefill", n) for n in (16, 128, 512, 1024, 2048, 4096, 8192) if n <= top]
    steps += [("decode", b) for b in (1, 8, 32, 64, 128, 256)]
    for kind, n in steps:
        if kind == "prefill":
            a, b = p_ours.step_time_s([(n, 0)], 0, 0), p_theirs.step_time_s([(n, 0)], 0, 0)
        else:
            a, b = p_ours.step_time_s([], n, n * 1024), p_theirs.step_time_s([], n, n * 1024)
        label = f"{kind} {n}" + (" at KV 1024" if kind == "decode" else "")
        print(f"  {label:<22} {a * 1e3:8.2f} / {b * 1e3:8.2f}  {b / a - 1:+.1%}")


if __name__ == "__main__":
    main()
