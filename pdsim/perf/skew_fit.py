"""The decode-skew alpha a profile ships (docs/validation.md): LLMServingSim's overall
`alpha_default` in meta.yaml and its per-bucket fit in skew_fit.csv, read for the predictor."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from pdsim.errors import ProfileError
from pdsim.perf.profile import Profile


def profile_skew_alpha(profile: Profile) -> float:
    """The decode-skew alpha a profile ships: LLMServingSim's `skew_fit.per_tp.<tp>.alpha_default`
    in meta.yaml (the key quoted or not), else an `alpha_default` directly under `skew_fit`; 0 (uniform-batch
    lookup) for profiles without one."""
    if profile.meta.fmt != "llmservingsim":
        return 0.0
    meta_yaml = Path(profile.meta.path).parent / "meta.yaml"
    try:
        text = meta_yaml.read_text()
    except OSError:
        return 0.0
    # skew_fit: ... per_tp:\n    1:\n      method: ...\n      alpha_default: 0.0543
    tp = profile.meta.tp
    m = re.search(rf"\n(\s+)(['\"]?){tp}\2:\s*\n(?:\1\s+.*\n)*?\1\s+alpha_default:[ \t]*(\S*)", text)
    if m:
        return _alpha(m.group(3), f"{meta_yaml}: skew_fit.per_tp.{tp}.alpha_default")
    # skew_fit:\n  enabled: true\n  alpha_default: 0.0543 (one fit for every TP)
    block = re.search(r"(?:^|\n)skew_fit:[ \t]*\n((?:[ \t]+.*\n|[ \t]*\n)*)", text + "\n")
    indent = block and re.match(r"\n*([ \t]+)\S", block.group(1))
    flat = indent and re.search(rf"(?:^|\n){indent.group(1)}alpha_default:[ \t]*(\S*)", block.group(1))
    if flat:
        return _alpha(flat.group(1), f"{meta_yaml}: skew_fit.alpha_default")
    return 0.0


# LLMServingSim's fitted alphas reach a few hundred in sparse buckets (-735 in the shared RTX PRO 6000 tp2
# fit); beyond this bound a value is a corrupt cell, and it would price steps in hours.
MAX_ABS_ALPHA = 1e6


def _alpha(cell: str, where: str) -> float:
    value = _number(cell)
    if not abs(value) <= MAX_ABS_ALPHA:  # NaN fails too
        raise ProfileError(f"{where}: expected a decode-skew alpha (a number, |alpha| <= {MAX_ABS_ALPHA:g}), got "
                           f"{cell!r}")
    return value


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


class SkewFit:
    """LLMServingSim's per-bucket decode-skew fit (`skew_fit.csv` beside the tables): alpha by
    prefill chunk tokens (`pc`, a profiled grid point; 0 for decode-only steps), decode batch-size
    bucket (`n<=N`), skew-rate bucket (the share of the batch at the long KV, `sr<=P%`),
    prefill-prefix bucket (`kp=0`, `kp<=N`) and longest-KV bucket.

    pdsim's batches know their longest decode, not how many share it, so a batch of n is taken as
    one long member among n: the skew-rate bucket that holds 1/n. The longest-KV buckets are
    averaged, weighted by their sample counts. Between two profiled chunk sizes alpha is
    interpolated linearly; outside them it is the nearest one's."""

    def __init__(self, alphas: dict[tuple[float, float, float], dict[int, float]]) -> None:
        # (n bucket upper, skew-rate bucket upper, kp bucket upper) -> (profiled pcs, their alphas)
        self._by_bucket = {
            key: (np.array(sorted(by_pc), dtype=float), np.array([by_pc[pc] for pc in sorted(by_pc)]))
            for key, by_pc in alphas.items()
        }
        self._n_uppers = sorted({n for n, _, _ in alphas})
        self._sr_uppers = sorted({sr for _, sr, _ in alphas})
        self._kp_uppers = sorted({kp for _, _, kp in alphas})
        self._cache: dict[tuple[int, int, int], float | None] = {}

    def __bool__(self) -> bool:
        return bool(self._by_bucket)

    @classmethod
    def read(cls, profile: Profile) -> SkewFit | MeasuredSkew | None:
        """The profile's fit: LLMServingSim's, or pdsim's profiler's uneven decode batches; None for
        profiles without one (aiconfigurator's, estimated ones, older pdsim profiles)."""
        if profile.meta.fmt != "llmservingsim":
            return MeasuredSkew.from_profile(profile)
        path = Path(profile.meta.path) / "skew_fit.csv"
        if not path.is_file():
            return None
        sums: dict[tuple[float, float, float, int], list[float]] = {}
        with path.open(encoding="utf-8-sig") as f:  # a BOM is no part of the first column's name
            header = f.readline().strip().split(",")
            col = {c: i for i, c in enumerate(header)}
            need = {"pc", "n_label", "skew_rate_label", "kp_label", "alpha", "n_samples"}
            if not need <= col.keys():  # a fit pdsim cannot read would be left out without a word
                raise ProfileError(f"{path}: columns {', '.join(sorted(need - col.keys()))} missing; expected "
                                   f"LLMServingSim's skew fit ({', '.join(sorted(need))})")
            for line_no, line in enumerate(f, start=2):
                r = line.strip().split(",")
                if not line.strip() or r == header:  # a blank line, a repeated header
                    continue
                pc = _number(r[col["pc"]]) if len(r) >= len(header) else math.nan
                if not (pc >= 0 and pc.is_integer()):  # NaN fails too; a row pdsim skipped would change the fit
                    what = (f"column 'pc': expected a whole number of prefill tokens >= 0, got {r[col['pc']]!r}"
                            if len(r) >= len(header) else f"{len(r)} fields, expected {len(header)}")
                    raise ProfileError(f"{path}:{line_no}: {what}")
                n_upper = _bucket_upper(r[col["n_label"]], "n")
                sr_upper = _bucket_upper(r[col["skew_rate_label"]], "sr")
                kp_upper = _bucket_upper(r[col["kp_label"]], "kp")
                for column, upper in (("n_label", n_upper), ("skew_rate_label", sr_upper), ("kp_label", kp_upper)):
                    if upper is None:  # a bucket pdsim cannot place would drop out of the fit without a word
                        raise ProfileError(f"{path}:{line_no}: column {column!r}: {r[col[column]]!r} is no bucket "
                                           "label LLMServingSim writes (n<=128, sr<=5%, kp<=2k, kp=0, kp>8k, ...)")
                w = _number(r[col["n_samples"]])
                if not (math.isfinite(w) and w >= 0):
                    raise ProfileError(f"{path}:{line_no}: column 'n_samples': expected a count >= 0, got "
                                       f"{r[col['n_samples']]!r}")
                alpha = _alpha(r[col["alpha"]], f"{path}:{line_no}: column 'alpha'")
                acc = sums.setdefault((n_upper, min(sr_upper, 1.0), kp_upper, int(pc)), [0.0, 0.0])
                acc[0] += w * alpha
                acc[1] += w
        alphas: dict[tuple[float, float, float], dict[int, float]] = {}
        for (n_upper, sr_upper, kp_upper, pc), (a, w) in sums.items():
            if w > 0:
                alphas.setdefault((n_upper, sr_upper, kp_upper), {})[pc] = a / w
        if not alphas:  # read as no fit, it would price every step at meta.yaml's alpha_default without a word
            raise ProfileError(f"{path}: no row with samples (n_samples > 0), so no alpha to use; expected "
                               "LLMServingSim's skew fit (remove the file to take meta.yaml's alpha_default)")
        return cls(alphas)

    def alpha(self, chunk_sum: int, prefix_sum: int, n_decode: int) -> float | None:
        """alpha for a step of n_decode decodes beside prefill chunks of chunk_sum new tokens on
        prefix_sum cached ones (0, 0: a decode-only step); None where the fit has no bucket."""
        key = (chunk_sum, prefix_sum, n_decode)
        if key in self._cache:
            return self._cache[key]
        n_upper = next((u for u in self._n_uppers if n_decode <= u), None)
        sr_upper = next((u for u in self._sr_uppers if 1.0 / max(n_decode, 1) <= u), None)
        kp_upper = next((u for u in self._kp_uppers if prefix_sum <= u), None)
        found = self._by_bucket.get((n_upper, sr_upper, kp_upper))
        alpha = None
        if found is not None:
            pcs, values = found
            if chunk_sum == 0:
                alpha = float(values[0]) if pcs[0] == 0 else None
            else:
                mixed = pcs > 0  # a decode-only step is no end point for a mixed one
                if mixed.any():
                    alpha = float(np.interp(chunk_sum, pcs[mixed], values[mixed]))
        self._cache[key] = alpha
        return alpha


class MeasuredSkew:
    """The decode skew from pdsim's profiler's uneven decode batches (`attention_decode_skew.csv`: one
    request at a long KV beside n - 1 at an eighth of it). Per batch size n, alpha = (t_uneven - t(n, mean
    KV)) / (t(n, long KV) - t(n, mean KV)) on the uniform decode table, the median over the KV lengths
    timed, within [0, 1]; linear in n between the measured sizes, the nearest one's outside them. The same
    alpha serves a decode-only step and the decodes of a mixed one (prefill attention is its own table
    in this format). A row whose long and mean KV cost the same (within 1%) says nothing and is left out."""

    def __init__(self, batch_sizes: list[int], alphas: list[float]) -> None:
        self._ns = np.array(batch_sizes, dtype=float)
        self._alphas = np.array(alphas, dtype=float)
        self._by_n: dict[int, float] = {}

    @classmethod
    def from_profile(cls, profile: Profile) -> MeasuredSkew | None:
        table = profile.attention_decode
        if not profile.decode_skew_rows or table is None:
            return None
        by_n: dict[int, list[float]] = {}
        for n, short, long, us in profile.decode_skew_rows:
            mean = (long + (n - 1) * short) / n
            at_mean, at_long = table(n, mean), table(n, long)
            if at_long - at_mean > 0.01 * at_mean:
                by_n.setdefault(n, []).append(min(1.0, max(0.0, (us - at_mean) / (at_long - at_mean))))
        if not by_n:
            return None
        ns = sorted(by_n)
        return cls(ns, [float(np.median(by_n[n])) for n in ns])

    def alpha(self, chunk_sum: int, prefix_sum: int, n_decode: int) -> float:
        found = self._by_n.get(n_decode)
        if found is None:
            found = self._by_n[n_decode] = float(np.interp(n_decode, self._ns, self._alphas))
        return found

    def describe(self) -> str:
        return (f"decode skew measured (attention_decode_skew.csv): alpha {self._alphas[0]:.2f} at {self._ns[0]:g} "
                f"decodes to {self._alphas[-1]:.2f} at {self._ns[-1]:g}")


def _bucket_upper(label: str, axis: str) -> float | None:
    """Upper bound of a skew-fit bucket label: `n<=128` -> 128, `kp<=2k` -> 2048, `kp=0` -> 0,
    `sr<=5%` -> 0.05, `kp>8k` -> inf; None for anything else."""
    m = re.fullmatch(rf"{axis}(<=|=|>)(\d+)(k|%)?", label)
    if not m:
        return None
    if m.group(1) == ">":
        return float("inf")
    value = int(m.group(2))
    return value / 100 if m.group(3) == "%" else float(value * (1024 if m.group(3) == "k" else 1))
