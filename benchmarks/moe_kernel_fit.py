"""pdsim's estimated MoE expert time against aiconfigurator-core's measured vLLM fused-MoE kernels.

    python benchmarks/moe_kernel_fit.py --aic-core /tmp/aicw/c/aiconfigurator_core [--fit h200_sxm]

Reads `systems/data/<system>/moe/vllm/<version>/moe_perf.parquet` of the aiconfigurator-core wheel
in place (Apache-2.0; not copied into the repo). Only the `balanced` rows are used: every expert
gets the same number of tokens, which is what pdsim's uniform-routing estimate assumes.

Shard semantics, read off the tables (and aiconfigurator's MoE op: the dispatch globalises the
tokens, so the expert kernel sees all of them): `num_tokens` is the tokens before dispatch,
`inter_size` the whole expert's width (a TP shard holds inter_size / moe_tp_size), and a rank holds
num_experts / moe_ep_size experts and gets num_tokens x topk / moe_ep_size token-expert pairs.
With balanced routing those pairs spread over min(local experts, pairs) experts.

Prints the relative error (predicted / measured - 1) of `MoERoofline.experts_us` by token range,
per system and dtype, with the constants pdsim ships (`MOE_KERNEL`) and with the dense-GEMM
constants it had before; `--fit SYSTEM[,SYSTEM]` refits the four MoEKernel constants (relative
least squares) on those systems' tables, then checks leave-one-shape-out and the other systems.

`--family mxfp4` does the same for gpt-oss's MXFP4 experts (moe_dtype w4a16_mxfp4: 4-bit weights
with E8M0 scales, bf16 activations; vLLM's gpt-oss MXFP4 kernels) against `MXFP4_MOE_KERNEL`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdsim.gpt_oss import MXFP4_BITS_PER_PARAM, GptOssModelSpec  # noqa: E402
from pdsim.hardware import get_hardware  # noqa: E402
from pdsim.models import ModelSpec  # noqa: E402
from pdsim.moe import MoESpec  # noqa: E402
from pdsim.perf.estimate import (  # noqa: E402
    DENSE_GEMM_MOE_KERNEL,
    MOE_KERNEL,
    MXFP4_MOE_KERNEL,
    MoEKernel,
    MoERoofline,
)

# aiconfigurator system -> (pdsim hardware, vLLM table version: the one closest to vLLM 0.19)
SYSTEMS = {
    "h200_sxm": ("H200", "0.19.0"),
    "h100_sxm": ("H100-SXM", "0.24.0"),
    "b200_sxm": ("B200", "0.19.0"),
    "l40s": ("L40S", "0.24.0"),
    "rtx_pro_6000_server": ("RTXPRO6000", "0.24.0"),
}
# moe_dtype -> pdsim's quantization of the instance (MXFP4 experts are the model's own weights: None)
DTYPES = {"bfloat16": None, "fp8": "fp8", "fp8_block": "fp8_block", "w4a16_mxfp4": None}
# Kernel families: the dtypes of each and the constants pdsim ships for it.
FAMILIES = {"fused": (["bfloat16", "fp8", "fp8_block"], MOE_KERNEL), "mxfp4": (["w4a16_mxfp4"], MXFP4_MOE_KERNEL)}
EXPERT_BITS = {"w4a16_mxfp4": MXFP4_BITS_PER_PARAM}
# MXFP4 tables: vLLM 0.19's (h200_sxm, b200_sxm) time every moe_ep_size like EP 1 (the same latency at
# EP 1..128: the collector did not shard the experts), so the family reads 0.24's, and 0.19's H200 EP 1
# rows (closest to the silicon rows' vLLM 0.18) as a case of their own, "h200_sxm@0.19.0".
MXFP4_VERSIONS = {"h200_sxm": "0.24.0", "b200_sxm": "0.24.0"}
MXFP4_EXTRA = {"h200_sxm@0.19.0": ("h200_sxm", "0.19.0")}
SHAPE = ["hidden_size", "inter_size", "topk", "num_experts"]
RANGES = [(1, 16), (17, 256), (257, 2048), (2049, 16384)]


@dataclass(frozen=True)
class Case:
    system: str
    dtype: str
    kernel_source: str
    frame: pd.DataFrame  # one row per measured point: shape, tp, ep, num_tokens, latency_us


def hardware_of(label: str) -> str:
    """pdsim hardware of a case label (an aiconfigurator system, or SYSTEM@VERSION)."""
    return SYSTEMS[label.split("@")[0]][0]


def tables(systems: list[str], family: str) -> dict[str, tuple[str, str]]:
    """Case label -> (aiconfigurator system, vLLM table version) read for this kernel family."""
    if family != "mxfp4":
        return {s: (s, SYSTEMS[s][1]) for s in systems}
    return {**{s: (s, MXFP4_VERSIONS.get(s, SYSTEMS[s][1])) for s in systems}, **MXFP4_EXTRA}


def load_cases(aic: Path, systems: list[str], dtypes: list[str] | None = None,
               versions: dict[str, tuple[str, str]] | None = None) -> list[Case]:
    dtypes = FAMILIES["fused"][0] if dtypes is None else dtypes
    versions = {s: (s, SYSTEMS[s][1]) for s in systems} if versions is None else versions
    cases = []
    for label, (system, version) in versions.items():
        path = aic / "systems" / "data" / system / "moe" / "vllm" / version / "moe_perf.parquet"
        if not path.is_file():
            print(f"{label}: no {path}, skipped")
            continue
        df = pd.read_parquet(path)
        if label in MXFP4_EXTRA:
            df = df[df.moe_ep_size == 1]
        df = df[(df.distribution == "balanced") & df.moe_dtype.isin(dtypes)]
        # compressed-tensors MXFP4 checkpoints (other models' w4a4 Marlin path) are not gpt-oss's kernel
        df = df[~df.kernel_source.str.contains("compressedtensors") | ~df.moe_dtype.str.contains("mxfp4")]
        for dtype, g in df.groupby("moe_dtype"):
            # Several kernels for one dtype (0.24's FlashInfer and Triton paths): vLLM's Triton fused_moe
            # (what vLLM 0.19 runs on Hopper) where measured, else the one with the most rows.
            counts = g.kernel_source.value_counts()
            triton = [s for s in counts.index if "triton" in s or s == "vllm_fused_moe"]
            source = triton[0] if triton else counts.index[0]
            g = g[g.kernel_source == source].copy()
            g["latency_us"] = g.latency * 1000.0
            cases.append(Case(label, str(dtype), source, g.reset_index(drop=True)))
    return cases


def _model(hidden: int, inter: int, topk: int, experts: int, expert_bits: float | None = None) -> ModelSpec:
    """One MoE layer of these shapes; expert_bits: MXFP4 experts (a gpt-oss spec) at that many bits."""
    spec = dict(name=f"moe-{hidden}-{inter}-{topk}of{experts}", architecture="synthetic", hidden_size=hidden,
                num_layers=1, num_heads=1, num_kv_heads=1, head_dim=128, intermediate_size=inter,
                vocab_size=32000, tie_word_embeddings=False, has_qk_norm=False,
                max_position_embeddings=32768, moe=MoESpec(experts, topk, inter, 1))
    if expert_bits is None:
        return ModelSpec(**spec)
    return GptOssModelSpec(**spec, expert_weight_bits=expert_bits)


def predict_us(case: Case, kernel: MoEKernel) -> np.ndarray:
    hw = get_hardware(hardware_of(case.system))
    out = np.empty(len(case.frame))
    keys = [*SHAPE, "moe_tp_size", "moe_ep_size"]
    for (h, inter, k, e, tp, ep), g in case.frame.groupby(keys):
        model = _model(h, inter, k, e, EXPERT_BITS.get(case.dtype))
        est = MoERoofline(hw, model, "bfloat16", int(tp), DTYPES[case.dtype], kernel=kernel)
        for i, t in zip(g.index, g.num_tokens):
            pairs = t * k / ep
            out[i] = est.experts_us(t, pairs, min(e / ep, pairs))
    return out


def errors(cases: list[Case], kernel: MoEKernel) -> pd.DataFrame:
    frames = []
    for c in cases:
        f = c.frame[[*SHAPE, "moe_tp_size", "moe_ep_size", "num_tokens", "latency_us"]].copy()
        f["system"], f["dtype"] = c.system, c.dtype
        f["err"] = predict_us(c, kernel) / f.latency_us - 1.0
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def summary(err: pd.DataFrame) -> pd.DataFrame:
    """Median signed error and median |error| per system, dtype and token range."""
    err = err.copy()
    err["tokens"] = pd.cut(err.num_tokens, [lo - 1 for lo, _ in RANGES] + [RANGES[-1][1]],
                           labels=[f"{lo}-{hi}" for lo, hi in RANGES])
    g = err.groupby(["system", "dtype", "tokens"], observed=True).err
    return pd.DataFrame({"median": g.median(), "median_abs": g.apply(lambda x: x.abs().median()), "n": g.size()})


def fit(cases: list[Case], start: MoEKernel) -> MoEKernel:
    """Relative least squares (log of predicted/measured) over the four constants."""
    from scipy.optimize import least_squares

    measured = np.concatenate([c.frame.latency_us.to_numpy() for c in cases])

    def residual(x: np.ndarray) -> np.ndarray:
        k = MoEKernel(*x)
        return np.log(np.concatenate([predict_us(c, k) for c in cases]) / measured)

    x0 = [start.compute_eff_max, start.half_eff_rows, start.mem_eff, start.fixed_us, max(start.row_passes, 1.0),
          start.block_scale_eff]
    r = least_squares(residual, x0, bounds=([0.05, 0.0, 0.1, 0.0, 0.0, 0.1], [1.0, 4096.0, 1.0, 200.0, 20.0, 1.0]),
                      x_scale=[0.1, 30.0, 0.1, 5.0, 1.0, 0.1])
    return MoEKernel(*(round(float(v), 3) for v in r.x))


def ep1_only(cases: list[Case]) -> list[Case]:
    return [Case(c.system, c.dtype, c.kernel_source, c.frame[c.frame.moe_ep_size == 1].reset_index(drop=True))
            for c in cases]


def _print(title: str, err: pd.DataFrame) -> None:
    print(f"\n{title}: median signed error / median |error| by token range (n points)")
    s = summary(err)
    table = s.apply(lambda r: f"{r['median']:+.0%} / {r['median_abs']:.0%} ({int(r['n'])})", axis=1).unstack()
    print(table.to_string())
    print(f"all: median |error| {err.err.abs().median():.1%}, median {err.err.median():+.1%}")


def leave_one_shape_out(cases: list[Case], start: MoEKernel) -> pd.DataFrame:
    shapes = pd.concat([c.frame[SHAPE] for c in cases]).drop_duplicates().itertuples(index=False)
    out = []
    for shape in shapes:
        mask = [np.all(c.frame[SHAPE].to_numpy() == np.array(shape), axis=1) for c in cases]
        train = [Case(c.system, c.dtype, c.kernel_source, c.frame[~m].reset_index(drop=True))
                 for c, m in zip(cases, mask) if (~m).any()]
        test = [Case(c.system, c.dtype, c.kernel_source, c.frame[m].reset_index(drop=True))
                for c, m in zip(cases, mask) if m.any()]
        k = fit(train, start)
        e = errors(test, k)
        out.append({"shape": "x".join(str(v) for v in shape), "fitted": k,
                    "median": e.err.median(), "median_abs": e.err.abs().median()})
    return pd.DataFrame(out)


def detail(cases: list[Case], spec: str, kernels: dict[str, MoEKernel]) -> None:
    """Measured vs predicted us per token count for one shape: SYSTEM:DTYPE:HIDDEN:INTER:TOPK:EXPERTS."""
    system, dtype, *shape = spec.split(":")
    want = [int(v) for v in shape]
    for c in cases:
        if (c.system, c.dtype) != (system, dtype):
            continue
        f = c.frame[np.all(c.frame[SHAPE].to_numpy() == np.array(want), axis=1)].reset_index(drop=True)
        one = Case(c.system, c.dtype, c.kernel_source, f)
        for name, k in kernels.items():
            f[name] = predict_us(one, k)
        print(f"\n{spec} ({c.kernel_source}), us per MoE block on one GPU:")
        cols = ["moe_tp_size", "moe_ep_size", "num_tokens", "latency_us", *kernels]
        print(f[cols].round(1).to_string(index=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aic-core", type=Path, required=True, help="unpacked aiconfigurator_core package")
    ap.add_argument("--family", choices=list(FAMILIES), default="fused",
                    help="fused: bf16/fp8 fused_moe (MOE_KERNEL); mxfp4: gpt-oss's MXFP4 experts (MXFP4_MOE_KERNEL)")
    ap.add_argument("--fit", default="", help="systems to refit the constants on, comma-separated")
    ap.add_argument("--loso", action="store_true", help="with --fit: leave-one-shape-out check")
    ap.add_argument("--ep1", action="store_true", help="fit on the moe_ep_size 1 rows only (vLLM's default "
                    "layout, no --enable-expert-parallel); errors are printed on all rows and on EP 1")
    ap.add_argument("--detail", default="", help="SYSTEM:DTYPE:HIDDEN:INTER:TOPK:EXPERTS, e.g. "
                    "h200_sxm:fp8_block:4096:1536:8:128 (Qwen3-235B-A22B)")
    ap.add_argument("--tokens", default="", help="with --detail: only these token counts, comma-separated")
    args = ap.parse_args()
    if not (args.aic_core / "systems" / "data").is_dir():
        print(f"error: {args.aic_core} has no systems/data (the unpacked aiconfigurator_core package)",
              file=sys.stderr)
        return 2
    unknown = [s for s in args.fit.split(",") if s and s not in SYSTEMS]
    if unknown:
        print(f"error: --fit {','.join(unknown)}: not a system of this check; known: {', '.join(SYSTEMS)}",
              file=sys.stderr)
        return 2
    dtypes, shipped = FAMILIES[args.family]
    cases = load_cases(args.aic_core, list(SYSTEMS), dtypes, tables(list(SYSTEMS), args.family))
    for c in cases:
        print(f"{c.system} {c.dtype}: {c.kernel_source}, {len(c.frame)} balanced points")
    _print(f"before (dense-GEMM constants {DENSE_GEMM_MOE_KERNEL})", errors(cases, DENSE_GEMM_MOE_KERNEL))
    _print(f"shipped {shipped}", errors(cases, shipped))
    if args.detail:
        if args.tokens:
            keep = {int(t) for t in args.tokens.split(",")}
            cases = [Case(c.system, c.dtype, c.kernel_source,
                          c.frame[c.frame.num_tokens.isin(keep)].reset_index(drop=True)) for c in cases]
        detail(cases, args.detail, {"before_us": DENSE_GEMM_MOE_KERNEL, "shipped_us": shipped})
    if args.ep1:
        _print("shipped, EP 1 rows", errors(ep1_only(cases), shipped))
    if args.fit:
        on = args.fit.split(",")
        train = [c for c in (ep1_only(cases) if args.ep1 else cases) if c.system in on]
        k = fit(train, shipped)
        _print(f"fitted on {on}{' EP 1' if args.ep1 else ''}: {k}", errors(cases, k))
        if args.ep1:
            _print("fitted, EP 1 rows", errors(ep1_only(cases), k))
        if args.loso:
            lo = leave_one_shape_out(train, k)
            print("\nleave one shape out (fit without it, error on it):")
            print(lo.to_string(index=False, formatters={"median": "{:+.1%}".format, "median_abs": "{:.1%}".format}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
