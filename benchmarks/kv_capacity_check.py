"""Predicted vs measured KV-cache capacity on every public vLLM start-up report pdsim has.

Reads ../shared/data/calibration/vllm-kv-capacity/vllm_kv_capacity_h100.csv (vLLM 0.19 start-up logs and
vLLM 0.11 summary rows on H100 80GB) and predicts each row's KV cache with pdsim's memory model
(pdsim/perf/memory.py): CUDA-visible memory x gpu_memory_utilization - weights - activation peak -
non-torch memory. Prints the table of docs/memory.md, and the leave-one-out error of the one fitted
coefficient (the sampler's bytes per logit).

    python benchmarks/kv_capacity_check.py [--csv PATH] [--markdown]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pdsim.hardware import get_hardware  # noqa: E402
from pdsim.models import ModelSpec, load_model  # noqa: E402
from pdsim.perf import memory  # noqa: E402
from pdsim.validate.engine_meta import vllm_top_k_top_p  # noqa: E402

CSV = REPO.parent / "shared" / "data" / "calibration" / "vllm-kv-capacity" / "vllm_kv_capacity_h100.csv"
GIB = 1024**3


def _spec(name: str, arch: str, hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int,
          max_pos: int) -> ModelSpec:
    return ModelSpec(name=name, architecture=arch, hidden_size=hidden, num_layers=layers, num_heads=heads,
                     num_kv_heads=kv_heads, head_dim=hidden // heads, intermediate_size=inter, vocab_size=vocab,
                     tie_word_embeddings=False, has_qk_norm=False, max_position_embeddings=max_pos)


# Shapes from the model's Hugging Face config.json, for a model pdsim bundles no config of. Its memory
# arithmetic needs only the shapes.
EXTRA_SHAPES: dict[str, tuple[ModelSpec, str]] = {
    "codellama/CodeLlama-7b-hf": (_spec("codellama/CodeLlama-7b-hf", "llama", 4096, 32, 32, 32, 11008, 32016, 16384),
                                  ""),
}
SAME_ARCH = {"meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
             "RedHatAI/Llama-3.3-70B-Instruct-fp8-dynamic": "meta-llama/Llama-3.3-70B-Instruct",
             "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/Mixtral-8x7B-v0.1",
             "Qwen/Qwen3-30B-A3B": "Qwen/Qwen3-30B-A3B",
             "Qwen/Qwen3-8B": "Qwen/Qwen3-8B", "Qwen/Qwen3-32B": "Qwen/Qwen3-32B",
             "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B-Instruct",
             "Qwen/Qwen2.5-72B-Instruct": "Qwen/Qwen2.5-72B-Instruct", "microsoft/phi-4": "microsoft/phi-4"}
# The CSV's quantization column -> pdsim's InstanceConfig.quantization (compressed-tensors FP8-dynamic
# W8A8 checkpoints carry per-channel fp8 weight scales: pdsim's "fp8").
QUANTIZATION = {"compressed-tensors (FP8 dynamic W8A8)": "fp8"}


@dataclass
class Case:
    row: int
    model: str
    tp: int
    kv_dtype: str
    quantization: str | None
    spec: ModelSpec | None
    caveat: str  # what pdsim cannot express, empty when nothing
    tokens: int  # max_num_batched_tokens used for the activation peak
    seqs: int
    util: float
    block_size: int
    measured: pd.Series
    # the sampler's top-k/top-p by the row's vLLM release: 0.11's sorts in PyTorch (a counted, not fitted, peak)
    top_k_top_p: str


def load_cases(path: Path) -> list[Case]:
    df = pd.read_csv(path)
    cases = []
    for _, r in df.iterrows():
        model, tp = str(r.model_id), int(r.tensor_parallel_size)
        caveats = []
        if model in EXTRA_SHAPES:
            spec, why = EXTRA_SHAPES[model]
            caveats += [why] if why else []
        else:
            spec = load_model(SAME_ARCH[model])
        quant = str(r.quantization).strip() if isinstance(r.quantization, str) else ""
        quantization = QUANTIZATION[quant] if quant else None
        kv_dtype = "fp8" if str(r.kv_cache_dtype).strip() == "fp8" else "bfloat16"
        tokens, seqs = r.max_num_batched_tokens, r.max_num_seqs
        if pd.isna(tokens) or pd.isna(seqs):
            # Not in the summary table: vLLM's defaults for >= 70 GiB GPUs (vllm/engine/arg_utils.py).
            tokens, seqs = 8192, 1024
            caveats.append("vLLM 0.11 summary row: engine args not recorded (assumed 8192 tokens, 1024 seqs)")
        sampler = vllm_top_k_top_p(str(r.vllm_version).split()[0]) or "triton"
        cases.append(Case(int(r.row_id), model, tp, kv_dtype, quantization, spec, "; ".join(caveats), int(tokens),
                          int(seqs), float(r.gpu_memory_utilization), int(r.block_size), r, sampler))
    return cases


H100_SMS = get_hardware("H100-SXM").sm_count  # the GPU of every row


@dataclass
class Prediction:
    weights_gib: float
    activation_gib: float
    non_torch_gib: float
    kv_gib: float
    kv_tokens: int


def predict(case: Case, sampler_bytes: float, activation_bytes: float | None = None) -> Prediction | None:
    """activation_bytes: use this peak (the log's) instead of the model's."""
    if case.spec is None:
        return None
    spec = case.spec
    # what vLLM's model loading took: the weights and the rotary cos/sin cache (ModelSpec.rope_cache_bytes)
    weights = spec.weight_bytes("bfloat16", case.tp, quantization=case.quantization) + spec.rope_cache_bytes("bfloat16")
    if activation_bytes is None:
        # sampler_bytes is the Triton sampler's coefficient; a sorting sampler's peak is counted (perf/memory.py)
        sorts = case.top_k_top_p == "pytorch"
        activation = memory.activation_peak_bytes(spec, "bfloat16", case.tp, case.tokens, case.seqs,
                                                  bytes_per_logit=None if sorts else sampler_bytes,
                                                  top_k_top_p=case.top_k_top_p, sm_count=H100_SMS)
    else:
        activation = activation_bytes
    non_torch = memory.non_torch_bytes(case.tp, "H100-SXM")
    total = memory.GPU_VISIBLE_MEMORY["H100-SXM"].total_gib * GIB
    kv = total * case.util - weights - activation - non_torch
    block_bytes = case.block_size * spec.kv_bytes_per_token(case.kv_dtype, case.tp)
    blocks = math.floor(kv / block_bytes)
    return Prediction(weights / GIB, activation / GIB, non_torch / GIB, kv / GIB, blocks * case.block_size)


def sampler_bound(case: Case, sampler_bytes: float) -> bool:
    spec = case.spec
    forward = memory.forward_peak_bytes(spec, "bfloat16", case.tp, case.tokens)
    return not spec.is_moe and sampler_bytes * min(case.tokens, case.seqs) * spec.vocab_size > forward


def fit_sampler_bytes(cases: list[Case]) -> float:
    """Least-squares bytes per logit on the sampler-bound rows: measured peak - held [T, hidden] - the Triton
    kernel's buffer (counted, memory.triton_buffer_rows)."""
    xs, ys = [], []
    for c in cases:
        if sampler_bound(c, memory.SAMPLER_BYTES_PER_LOGIT):
            rows = min(c.tokens, c.seqs)
            buffer = (memory.triton_buffer_rows(rows, H100_SMS) * c.spec.vocab_size
                      * memory.TRITON_BUFFER_BYTES_PER_ELEMENT)
            xs.append(rows * c.spec.vocab_size)
            ys.append(c.measured.activation_peak_gib * GIB - c.tokens * c.spec.hidden_size * 2 - buffer)
    xs, ys = np.array(xs, float), np.array(ys, float)
    # Relative least squares: each row weighs the same whatever its vocabulary.
    return float(np.sum(xs * ys / ys**2) / np.sum(xs**2 / ys**2))


def fit_cases(cases: list[Case]) -> list[Case]:
    """The rows the coefficient is fitted on: vLLM 0.19 logs with known engine args (MoE rows are
    evaluated with it but not fitted: sampler_bound excludes them)."""
    return [c for c in cases if c.spec is not None and "0.11" not in c.caveat]


def evaluate(cases: list[Case]) -> pd.DataFrame:
    fit = fit_cases(cases)
    rows = []
    for c in cases:
        held_out = [o for o in fit if o.row != c.row]
        coef_loo = fit_sampler_bytes(held_out) if c in fit else memory.SAMPLER_BYTES_PER_LOGIT
        p = predict(c, memory.SAMPLER_BYTES_PER_LOGIT)
        p_loo = predict(c, coef_loo)
        p_act = predict(c, memory.SAMPLER_BYTES_PER_LOGIT, c.measured.activation_peak_gib * GIB)
        m = c.measured
        tokens = None if pd.isna(m.kv_tokens) else int(m.kv_tokens)
        row = {"row": c.row, "model": c.model.split("/")[-1], "tp": c.tp, "kv_dtype": c.kv_dtype,
               "quant": c.quantization or "",
               "meas_weights_gib": m.weights_gib, "meas_act_gib": m.activation_peak_gib,
               "meas_non_torch_gib": m.non_torch_gib, "meas_kv_gib": m.kv_cache_gib, "meas_kv_tokens": tokens,
               "caveat": c.caveat}
        if p is not None:
            row.update({"pred_weights_gib": p.weights_gib, "pred_act_gib": p.activation_gib,
                        "pred_non_torch_gib": p.non_torch_gib, "pred_kv_gib": p.kv_gib, "pred_kv_tokens": p.kv_tokens,
                        "kv_err_pct": 100 * (p.kv_gib - m.kv_cache_gib) / m.kv_cache_gib,
                        "kv_err_loo_pct": 100 * (p_loo.kv_gib - m.kv_cache_gib) / m.kv_cache_gib,
                        "kv_err_logged_act_pct": 100 * (p_act.kv_gib - m.kv_cache_gib) / m.kv_cache_gib,
                        "act_err_loo_pct": 100 * (p_loo.activation_gib - m.activation_peak_gib)
                        / m.activation_peak_gib})
            if tokens:
                row["tokens_err_pct"] = 100 * (p.kv_tokens - tokens) / tokens
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    def f(x: float | None, digits: int = 2) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"

    lines = ["| row | model | TP | weights GiB meas/pred | activation GiB meas/pred | non-torch GiB meas/pred | "
             "KV GiB meas | KV GiB pred | KV err | KV err (LOO) | KV err, logged activation | "
             "KV tokens meas/pred | note |",
             "|---:|---|---:|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for _, r in df.iterrows():
        pred = r.get("pred_kv_gib")
        has = pred is not None and not (isinstance(pred, float) and math.isnan(pred))
        tok = (f"{f(r.meas_kv_tokens, 0)} / {f(r.get('pred_kv_tokens'), 0)}" if has and r.meas_kv_tokens
               else f(r.meas_kv_tokens, 0))
        lines.append(
            f"| {r.row} | {r.model}{' (FP8 KV)' if r.kv_dtype == 'fp8' else ''}{' (fp8 weights)' if r.quant else ''}"
            f" | {r.tp} | "
            f"{f(r.meas_weights_gib)} / {f(r.get('pred_weights_gib'))} | "
            f"{f(r.meas_act_gib)} / {f(r.get('pred_act_gib'))} | "
            f"{f(r.meas_non_torch_gib)} / {f(r.get('pred_non_torch_gib'))} | {f(r.meas_kv_gib)} | {f(pred)} | "
            + (f"{r.kv_err_pct:+.2f}% | {r.kv_err_loo_pct:+.2f}% | {r.kv_err_logged_act_pct:+.2f}% | " if has
               else "- | - | - | ")
            + f"{tok} | {r.caveat or ''} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, default=CSV)
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown (docs/memory.md)")
    args = ap.parse_args()
    if not args.csv.is_file():
        sys.exit(f"{args.csv}: not found (the shared vLLM start-up reports)")
    cases = load_cases(args.csv)
    df = evaluate(cases)
    fit = fit_cases(cases)
    coef = fit_sampler_bytes(fit)
    loo = [fit_sampler_bytes([o for o in fit if o.row != c.row]) for c in fit]
    dense = df[df.row.isin([c.row for c in fit])]
    print(f"sampler bytes per logit: {coef:.2f} fitted on {sum(sampler_bound(c, coef) for c in fit)} sampler-bound "
          f"rows (pdsim uses {memory.SAMPLER_BYTES_PER_LOGIT}); leave-one-out {min(loo):.2f}-{max(loo):.2f}")
    print(f"activation peak, leave-one-out: MAPE {dense.act_err_loo_pct.abs().mean():.1f}%, "
          f"max |err| {dense.act_err_loo_pct.abs().max():.1f}% over {len(dense)} vLLM 0.19 rows")
    print(f"KV capacity, leave-one-out: MAPE {dense.kv_err_loo_pct.abs().mean():.2f}%, "
          f"max |err| {dense.kv_err_loo_pct.abs().max():.2f}% over the same rows")
    if args.markdown:
        print(markdown(df))
    else:
        cols = ["row", "model", "tp", "meas_act_gib", "pred_act_gib", "meas_kv_gib", "pred_kv_gib", "kv_err_pct",
                "kv_err_loo_pct", "kv_err_logged_act_pct", "caveat"]
        shown = {"display.width": 250, "display.max_colwidth": 70, "display.float_format": "{:.2f}".format}
        with pd.option_context(*[x for kv in shown.items() for x in kv]):
            print(df[cols].to_string(index=False))


if __name__ == "__main__":
    main()


