"""Build pdsim profiles from NVIDIA aiconfigurator's per-kernel database (Apache-2.0 data).

aiconfigurator ships, per GPU (`systems/data/<system>/`), kernel latencies in ms measured with a
serving framework's own kernels: GEMM by (m, n, k, dtype), context attention by (batch, isl,
heads, kv heads, head_dim), generation attention by (batch, kv length = `step`, ...), custom
all-reduce and NCCL collectives by (message bytes, GPUs). A profile for any dense model follows
from the model's shapes:

- qkv_proj, o_proj, gate_up_proj, down_proj, lm_head: GEMMs (m = tokens or sequences) at the
  TP-sharded (n, k); n and k off the measured grid are interpolated linearly (GEMM time is close
  to linear in n and in k at fixed m), m likewise.
- attention_decode(batch, kv): generation attention at the sharded head counts.
- attention_prefill(chunk, prefix): context attention of one sequence whose causal work equals
  the chunk's: a chunk of c tokens over p cached ones does c * (p + c / 2) query-key pairs, as
  much as a fresh prompt of sqrt(c^2 + 2 c p) tokens.
- allreduce(bytes): the faster of vLLM's custom all-reduce (CUDA-graph mode) and NCCL, as vLLM
  picks custom all-reduce for small messages and NCCL beyond; looked up at bytes / element size.
- MoE experts (moe_layouts.csv): vLLM's fused expert kernels by (moe_tp, moe_ep, tokens) for the
  model's expert shape under balanced routing, every layout of tp GPUs the database measured; the
  router gate and top-k are estimated beside them (pdsim/perf/moe_time.py).
- element-wise ops (norms, rotary, activation, embedding) and the sampler: not in the database;
  taken from pdsim's roofline estimate (pdsim/perf/estimate.py), which the notes say.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.errors import ProfileError
from pdsim.hardware import HardwareSpec, get_hardware
from pdsim.models import ModelSpec, dtype_bytes
from pdsim.outputs import check_output_dir
from pdsim.perf.collectives import PCIE_CUSTOM_MAX_BYTES
from pdsim.perf.estimate import BATCH_GRID, CHUNK_GRID, KV_GRID, PREFIX_GRID, SEQUENCE_GRID, TOKEN_GRID, estimate_rows
from pdsim.perf.profile import ProfileMeta, profile_path, write_profile

# aiconfigurator system name -> pdsim hardware name (for the profile's place under profiles/). GB200's
# folder is `gb200` in aiconfigurator-core 0.12.0 (`systems/gb200.yaml`); `gb200_sxm` is kept for older trees.
SYSTEM_HARDWARE = {"h100_sxm": "H100-SXM", "h200_sxm": "H200", "a100_sxm": "A100-80GB", "l40s": "L40S",
                   "rtx_pro_6000_server": "RTXPRO6000", "b200_sxm": "B200", "gb200": "GB200", "gb200_sxm": "GB200"}
# The GPU each system's tables must say they were measured on (their `device` column).
SYSTEM_DEVICE = {"h100_sxm": "H100", "h200_sxm": "H200", "a100_sxm": "A100", "l40s": "L40S",
                 "rtx_pro_6000_server": "RTX PRO 6000", "b200_sxm": "B200", "gb200": "GB200", "gb200_sxm": "GB200"}
# pdsim quantization -> aiconfigurator's gemm_dtype (its GEMM tables' quant-mode column).
QUANT_GEMM_DTYPE = {"fp8": "fp8", "fp8_block": "fp8_block"}
# Attention kernels in order of preference: FlashAttention 3 on Hopper, FlashAttention 2 before it.
ATTENTION_KERNELS = ("vllm_flash_attn_fa3", "vllm_flash_attn")
ALLREDUCE_BYTES = [2 ** i for i in range(7, 30)]


def find_systems_dir() -> Path | None:
    """`systems/data` of an installed aiconfigurator(-core) package, if any."""
    for mod in ("aiconfigurator", "aiconfigurator_core"):
        try:
            pkg = __import__(mod)
        except ImportError:
            continue
        for base in getattr(pkg, "__path__", []):
            for cand in (Path(base) / "systems" / "data", Path(base) / "systems"):
                if cand.is_dir():
                    return cand
    return None


def importable_systems() -> list[str]:
    """The aiconfigurator systems pdsim can build a profile for (it has a hardware spec for them)."""
    return sorted(SYSTEM_HARDWARE)


def system_root(systems_dir: Path, system: str) -> Path:
    """<systems_dir>/<system>, or `systems_dir` itself when it is one system's folder (gemm/...)."""
    if system not in SYSTEM_HARDWARE:
        raise ProfileError(f"--system {system}: not one pdsim can import; importable: "
                           f"{', '.join(importable_systems())}")
    if (systems_dir / system).is_dir():
        return systems_dir / system
    if (systems_dir / "gemm").is_dir():
        return systems_dir
    present = sorted(s for s in SYSTEM_HARDWARE if (systems_dir / s).is_dir())
    raise ProfileError(f"--systems-dir {systems_dir}: no {system}/ folder in it (importable systems there: "
                       f"{', '.join(present) or 'none'})")


def _check_device(df: pd.DataFrame, system: str, path: Path) -> None:
    devices = sorted(set(df["device"].astype(str))) if "device" in df.columns else []
    want = SYSTEM_DEVICE.get(system)
    if want and devices and not any(want in d for d in devices):
        raise ProfileError(f"{path}: measured on {', '.join(devices)}, not on the {want} of --system {system}")


def _latest(root: Path, *parts: str) -> Path:
    """root/parts.../<newest version>/ (versions sort numerically)."""
    base = root.joinpath(*parts)
    if not base.is_dir():
        raise ProfileError(f"{base}: missing in the aiconfigurator database")
    versions = [d for d in base.iterdir() if d.is_dir()]
    if not versions:
        raise ProfileError(f"{base}: no version folder")
    return max(versions, key=lambda d: tuple(int(x) if x.isdigit() else 0 for x in d.name.split(".")))


def _read(path: Path) -> pd.DataFrame:
    """A table of the database; its latencies (ms) must be finite and > 0: a 0 or negative one would price a
    kernel at nothing, which no interpolation of the table repairs."""
    if not path.is_file():
        raise ProfileError(f"{path}: missing table in the aiconfigurator database")
    try:
        df = pd.read_parquet(path)
    except ImportError as e:  # pandas reads parquet through pyarrow, an optional dependency (or too old)
        raise ProfileError(f"{path}: reading aiconfigurator's parquet tables needs pyarrow: pip install -U pyarrow "
                           f"(or pdsim's [aiconfigurator] extra); pandas said: {e}") from None
    except Exception as e:  # pyarrow's own errors (ArrowInvalid, ...) for a file that is no parquet table
        raise ProfileError(f"{path}: not a readable parquet table ({type(e).__name__}: {e})") from None
    if "latency" not in df.columns or df.empty:
        raise ProfileError(f"{path}: expected rows with a 'latency' column (ms), got columns {list(df.columns)}")
    latency = pd.to_numeric(df.latency, errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(latency) & (latency > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ProfileError(f"{path}: row {i}: latency {df.latency.iloc[i]}: expected a finite time > 0 (ms)")
    return df


class _Gemm:
    """bf16 GEMM latency (us) at any (m, n, k): linear interpolation on the measured grid."""

    def __init__(self, df: pd.DataFrame, dtype: str) -> None:
        df = df[df.gemm_dtype == dtype]
        if df.empty:
            raise ProfileError(f"no {dtype} GEMM rows in the aiconfigurator database")
        df = df.groupby(["m", "n", "k"], as_index=False).latency.min()
        self.ms = np.sort(df.m.unique())
        self.ns = np.sort(df.n.unique())
        self.ks = np.sort(df.k.unique())
        grid = np.full((self.ms.size, self.ns.size, self.ks.size), np.nan)
        grid[np.searchsorted(self.ms, df.m), np.searchsorted(self.ns, df.n), np.searchsorted(self.ks, df.k)] = (
            df.latency.to_numpy() * 1e3)
        self.grid = grid

    @staticmethod
    def _w(axis: np.ndarray, x: float) -> tuple[int, int, float]:
        i = int(np.clip(np.searchsorted(axis, x) - 1, 0, axis.size - 2))
        return i, i + 1, (x - axis[i]) / (axis[i + 1] - axis[i])  # t outside [0, 1]: linear extrapolation

    def __call__(self, m: int, n: int, k: int) -> float:
        out = 0.0
        i0, i1, ti = self._w(self.ms, m)
        j0, j1, tj = self._w(self.ns, n)
        l0, l1, tl = self._w(self.ks, k)
        for i, wi in ((i0, 1 - ti), (i1, ti)):
            for j, wj in ((j0, 1 - tj), (j1, tj)):
                for ll, wl in ((l0, 1 - tl), (l1, tl)):
                    v = self.grid[i, j, ll]
                    if np.isnan(v):
                        raise ProfileError(f"GEMM grid has no point m={self.ms[i]}, n={self.ns[j]}, k={self.ks[ll]}")
                    out += wi * wj * wl * v
        return max(out, 0.0)


def _attn_table(path: Path, system: str, heads: int, kv_heads: int, head_dim: int, key: str
                ) -> tuple[pd.DataFrame, str]:
    """The rows of one attention shape (no sliding window, bf16 KV) in the table at `path`, and the kernel they
    come from."""
    df = _read_checked(path, system)
    sel = df[(df.num_heads == heads) & (df.num_key_value_heads == kv_heads) & (df.head_dim == head_dim)
             & (df.kv_cache_dtype == "bfloat16")]
    if "window_size" in sel.columns:  # older databases (A100's) measured full attention only
        sel = sel[sel.window_size == 0]
    if sel.empty:
        raise ProfileError(f"{path}: no attention rows for heads={heads}, kv_heads={kv_heads}, head_dim={head_dim} "
                           "(bf16 KV, no sliding window)")
    kernels = set(sel.kernel_source)
    # Else the kernel with the most rows: B200's context table holds FlashInfer's TRT-LLM prefill kernel
    # and, for isl 1 only, its decode kernel; one row per batch size would be extrapolated into nonsense.
    counts = sel.kernel_source.value_counts()
    kernel = next((k for k in ATTENTION_KERNELS if k in kernels), min(kernels, key=lambda k: (-counts[k], k)))
    sel = sel[sel.kernel_source == kernel]
    return sel.groupby(["batch_size", key], as_index=False).latency.min(), kernel


def _interp2(table: pd.DataFrame, x_col: str, y_col: str, x: float, y: float,
             where: Path | str = "") -> float:
    """Bilinear in (log x, log y) over a possibly ragged grid: linear in y within each x row (`where` names the
    table in errors)."""
    xs = np.sort(table[x_col].unique())
    lx = np.log(np.clip(x, xs[0], None))
    i = int(np.clip(np.searchsorted(np.log(xs), lx) - 1, 0, max(xs.size - 2, 0)))
    vals = []
    for xv in xs[i:i + 2]:
        row = table[table[x_col] == xv].sort_values(y_col)
        vals.append(float(np.interp(y, row[y_col], row.latency, right=np.nan)))
        if math.isnan(vals[-1]):  # beyond the row: extrapolate linearly from the last two points
            r = row.tail(2)
            if len(r) < 2:
                raise ProfileError(f"{where}: {x_col}={xv:g} has one {y_col} ({r[y_col].iloc[0]:g}), so nothing to "
                                   f"extrapolate {y_col}={y:g} from; expected several per {x_col}")
            y0, y1 = r[y_col].to_numpy(dtype=float)
            v0, v1 = r.latency.to_numpy(dtype=float)
            vals[-1] = v1 + (v1 - v0) * (y - y1) / (y1 - y0)
    if len(vals) == 1:
        return vals[0] * 1e3
    t = (lx - math.log(xs[i])) / (math.log(xs[i + 1]) - math.log(xs[i]))
    return ((1 - t) * vals[0] + t * vals[1]) * 1e3


def allreduce_rows(custom: pd.DataFrame, nccl: pd.DataFrame, bytes_per_element: int,
                   pcie_gpus: int | None = None) -> list[tuple[int, float]]:
    """(bytes, us) at ALLREDUCE_BYTES: the faster of the custom all-reduce and NCCL tables; on a PCIe
    system (`pcie_gpus`, the TP size) what vLLM picks instead: its custom all-reduce on two GPUs below
    its 8 MiB max_size, NCCL otherwise (pdsim/perf/collectives.py).

    Both tables are keyed by message size in ELEMENTS, not bytes: aiconfigurator's models pass
    `hidden_size` per token to CustomAllReduce and `num_elements_per_token` to NCCL
    (sdk/models/llama.py, aiconfigurator-core 0.12.0), and in the h100_sxm data NCCL's `half`
    rows take about twice as long as its `int8` rows of the same size once bandwidth-bound
    (tests/test_aiconfigurator.py checks it)."""
    out = []
    for nbytes in ALLREDUCE_BYTES:
        elements = nbytes / bytes_per_element
        tables = (custom, nccl)
        if pcie_gpus is not None and len(nccl):
            use_custom = pcie_gpus == 2 and nbytes < PCIE_CUSTOM_MAX_BYTES and len(custom)
            tables = (custom,) if use_custom else (nccl,)
        cands = [float(np.interp(elements, t.message_size, t.latency)) * 1e3
                 for t in (t.sort_values("message_size") for t in tables) if len(t)]
        out.append((nbytes, min(cands)))
    return out


def _read_checked(path: Path, system: str) -> pd.DataFrame:
    """A table of the database, refused when it was measured on another GPU than --system's."""
    df = _read(path)
    _check_device(df, system, path)
    return df


def _allreduce(comm: Path, tp: int, dtype: str, pcie: bool, system: str) -> list[tuple[int, float]]:
    custom = _read_checked(_latest(comm, "vllm") / "custom_allreduce_perf.parquet", system)
    custom = custom[(custom.num_gpus == tp) & (custom.backend == "vllm_graph")]
    nccl = _read_checked(_latest(comm, "nccl") / "nccl_perf.parquet", system)
    nccl = nccl[(nccl.num_gpus == tp) & (nccl.op_name == "all_reduce") & (nccl.nccl_dtype == "half")]
    if nccl.empty and custom.empty:
        raise ProfileError(f"no all-reduce rows for {tp} GPUs in the aiconfigurator database")
    return allreduce_rows(custom, nccl, dtype_bytes(dtype), tp if pcie else None)


# pdsim precision -> aiconfigurator's moe_dtype (its fused-MoE table's quant-mode column).
MOE_DTYPE = {None: "bfloat16", "fp8": "fp8", "fp8_block": "fp8_block"}


def moe_layout_rows(root: Path, system: str, model: ModelSpec, tp: int,
                    quantization: str | None) -> tuple[list[tuple[int, int, int, float]], str]:
    """(moe_tp, moe_ep, tokens, us) of vLLM's fused expert kernels for every expert layout of `tp` GPUs
    the database measured for this model's expert shape, under balanced routing (pdsim routes
    uniformly); and which kernels. Empty when it has none. Where a layout was measured with several
    kernels, vLLM's Triton fused_moe (its default path) is taken, else the kernel with most rows."""
    moe = model.moe
    base = root / "moe" / "vllm"
    if moe is None or not base.is_dir():
        return [], ""
    path = _latest(root, "moe", "vllm") / "moe_perf.parquet"
    df = _read(path)
    _check_device(df, system, path)
    df = df[(df.moe_dtype == MOE_DTYPE.get(quantization)) & (df.topk == moe.top_k)
            & (df.num_experts == moe.num_experts) & (df.hidden_size == model.hidden_size)
            & (df.inter_size == moe.expert_intermediate) & (df.distribution == "balanced")
            & (df.moe_tp_size * df.moe_ep_size == tp)]
    if df.empty:
        return [], ""
    rows, used = [], []
    for (moe_tp, moe_ep), layout in df.groupby(["moe_tp_size", "moe_ep_size"]):
        kernels = layout.kernel_source.value_counts()
        triton = [k for k in kernels.index if "triton" in k or k == "vllm_fused_moe"]
        kernel = triton[0] if triton else kernels.index[0]
        used.append(f"{moe_tp}x{moe_ep} {kernel}")
        times = layout[layout.kernel_source == kernel].groupby("num_tokens").latency.min()
        rows += [(int(moe_tp), int(moe_ep), int(t), float(ms) * 1e3) for t, ms in times.items()]
    return rows, f"vLLM {path.parent.name}, moe_tp x moe_ep: {', '.join(used)}"


def build_rows(systems_dir: Path, system: str, model: ModelSpec, tp: int, dtype: str = "bfloat16",
               quantization: str | None = None) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple],
                                                         list[tuple[int, float]] | None,
                                                         list[tuple[int, int, int, float]], str, HardwareSpec]:
    """(dense, per_sequence, prefill, decode, allreduce, MoE expert rows, notes, the GPU's spec) for
    write_profile. quantization:
    the layer GEMMs from the table's fp8 / fp8_block rows (lm_head stays in dtype, as in vLLM)."""
    if getattr(model, "mla", None) is not None:  # its tables are GQA attention shapes
        raise ProfileError(f"{model.name}: MLA attention is not in aiconfigurator's GQA tables; use the estimate")
    if getattr(model, "sliding_window", 0):  # its attention tables are full attention without sinks
        raise ProfileError(f"{model.name}: sliding-window attention is not in aiconfigurator's tables; "
                           "use the estimate")
    root = system_root(Path(systems_dir), system)
    model.check_tp(tp)
    hardware = get_hardware(SYSTEM_HARDWARE.get(system, system))
    if hardware is None:
        raise ProfileError(f"--system {system}: no pdsim hardware spec for the element-wise ops' estimate")
    dense, per_seq, _, _ = estimate_rows(hardware, model, dtype, tp, quantization)
    gemm_path = _latest(root, "gemm", "vllm") / "gemm_perf.parquet"
    gemm_rows = _read(gemm_path)
    _check_device(gemm_rows, system, gemm_path)
    gemm = _Gemm(gemm_rows, dtype)
    layer_gemm = gemm if quantization is None else _Gemm(gemm_rows, QUANT_GEMM_DTYPE[quantization])
    h = model.hidden_size
    shapes = {  # op -> (n, k) per TP shard
        "qkv_proj": (model.qkv_out(tp), h),
        "o_proj": (h, model.heads_per_shard(tp) * model.head_dim),
        "gate_up_proj": (2 * model.intermediate_per_shard(tp), h),
        "down_proj": (h, model.intermediate_per_shard(tp)),
    }
    dense = [(op, t, layer_gemm(t, *shapes[op], ) if op in shapes else us) for op, t, us in dense]
    per_seq = [(op, s, gemm(s, model.vocab_per_shard(tp), h) if op == "lm_head" else us)
               for op, s, us in per_seq]

    attn_dir = _latest(root, "attention", "vllm")
    heads, kv_heads = model.heads_per_shard(tp), max(model.num_kv_heads // tp, 1)
    gen_path = attn_dir / "generation_attention_perf.parquet"
    gen, kernel = _attn_table(gen_path, system, heads, kv_heads, model.head_dim, "step")
    ctx, _ = _attn_table(attn_dir / "context_attention_perf.parquet", system, heads, kv_heads, model.head_dim, "isl")
    ctx1 = ctx[ctx.batch_size == 1].sort_values("isl")
    decode = [(b, kv, _interp2(gen, "batch_size", "step", b, kv, gen_path)) for b in BATCH_GRID for kv in KV_GRID]

    def prefill_us(c: int, p: int) -> float:
        isl_eq = math.sqrt(c * c + 2.0 * c * p)
        return float(np.interp(isl_eq, ctx1.isl, ctx1.latency)) * 1e3 * max(1.0, isl_eq / ctx1.isl.max()) ** 2

    prefill = [(c, p, prefill_us(c, p)) for c in CHUNK_GRID for p in PREFIX_GRID]

    allreduce = (_allreduce(Path(root) / "comm", tp, dtype, hardware.intra_node_link == "pcie", system) if tp > 1
                 else None)
    gemms = f"GEMMs ({quantization} layer GEMMs from its {QUANT_GEMM_DTYPE[quantization]} table)" if quantization \
        else "GEMMs"
    moe_rows, moe_kernel = moe_layout_rows(Path(root), system, model, tp, quantization)
    experts = f", fused MoE experts ({moe_kernel}; balanced routing)" if moe_rows else ""
    notes = (f"aiconfigurator {system} database ({root}): {gemms}, attention ({kernel}){experts}, all-reduce "
             "measured; element-wise ops and sampler from pdsim's roofline estimate; prefill attention of a "
             "chunk over a cached prefix mapped to a fresh prompt of equal causal work")
    return dense, per_seq, prefill, decode, allreduce, moe_rows, notes, hardware


def import_profile(systems_dir: str | Path, system: str, model: ModelSpec, tp: int, out_root: str | Path,
                   dtype: str = "bfloat16", quantization: str | None = None) -> Path:
    """Write profiles/<hardware>/<model>/<dtype or quantization>/tp<N>/ from the database; returns the folder."""
    if dtype_bytes(dtype) != 2:
        raise ProfileError(f"--dtype {dtype}: activations must be 16-bit; fp8 weights are --quant fp8 or fp8_block")
    check_output_dir(Path(out_root), "--out")  # before the database is read: a file where the root should be
    if quantization is not None and quantization not in QUANT_GEMM_DTYPE:
        raise ProfileError(f"--quant {quantization}: expected one of {', '.join(QUANT_GEMM_DTYPE)}")
    try:
        dense, per_seq, prefill, decode, allreduce, moe_rows, notes, hardware = build_rows(
            Path(systems_dir), system, model, tp, dtype, quantization)
    except (KeyError, AttributeError, TypeError, ValueError) as e:  # a table of another layout than aiconfigurator's
        raise ProfileError(f"{systems_dir}: the {system} database has a table pdsim cannot read "
                           f"({type(e).__name__}: {e}); expected aiconfigurator's own layout") from None
    device = {"name": hardware.description, "aiconfigurator_system": system}
    if quantization is not None:
        device["gemm_precision"] = f"aiconfigurator {system} {QUANT_GEMM_DTYPE[quantization]} GEMM table"
    meta = ProfileMeta(
        hardware=hardware.name, model=model.name, dtype=dtype, tp=tp, source="measured",
        tool="pdsim profile import-aiconfigurator", tool_version="1",
        created_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        num_layers=model.num_layers, device=device,
        activation_peak_bytes=None, notes=notes,
    )
    out = profile_path(out_root, hardware.name, model.name, quantization or dtype, tp)
    write_profile(out, meta, dense, per_seq, prefill, decode, allreduce, moe_rows)
    return out


_ = (TOKEN_GRID, SEQUENCE_GRID)  # the estimate's grids are the profile's grids
