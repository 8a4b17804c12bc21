"""`layer_overhead` (dense.csv): what one whole decoder-layer forward takes beyond the sum of its
isolated ops, derived from the measured `layer_forward` series and written into a profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pdsim.outputs import write_json_atomic
from pdsim.perf.profile import LAYER_OVERHEAD_DECODE_KV, Profile, layer_ops_us, read_profile, replace_dense_op

if TYPE_CHECKING:
    from pdsim.profiler.run import Measurements


LAYER_OVERHEAD_DEFINITION = (
    "max(0, one decoder-layer forward (pdsim.profiler.model.decoder_layer) of T new tokens minus that "
    "layer as this profile composes it (sum of count x dense op(T) + its attention)); for T <= the "
    f"largest decode batch a decode step of T sequences with {LAYER_OVERHEAD_DECODE_KV} cached tokens "
    "each (attention_decode(T, 16)), above a prefill of T tokens with KV prefix 0 (attention_prefill(T, 0)); "
    "added once per layer to every step of T tokens"
)


def layer_overhead_rows(profile: Profile, layer_rows: list[tuple]) -> list[tuple[int, float]]:
    """(tokens, us) of `layer_overhead` from the measured ("layer_forward", T, us) rows."""
    return [(int(t), max(0.0, us - layer_ops_us(profile, t))) for _, t, us in layer_rows]


def write_layer_overhead(out_dir: Path, measured: Measurements, how: str) -> None:
    """Derive `layer_overhead` from the measured layer forwards and the profile on disk, write it
    into dense.csv and record how it was made in meta.json."""
    layer_rows = sorted(measured.rows["layer_forward"], key=lambda r: r[1])
    overhead = layer_overhead_rows(read_profile(out_dir), layer_rows)
    replace_dense_op(out_dir, "layer_overhead", overhead)
    meta_path = out_dir / "meta.json"
    raw = json.loads(meta_path.read_text())
    raw["layer_overhead"] = {
        "definition": LAYER_OVERHEAD_DEFINITION,
        "how": how,
        "clipped_to_zero": [t for t, us in overhead if us == 0.0],
        "median_fraction_of_layer": round(
            sorted(o / r[2] for (_, o), r in zip(overhead, layer_rows, strict=True))[len(overhead) // 2], 4
        ),
    }
    raw.setdefault("spread", {}).update(
        {k: v for k, v in measured.spread_summary().items() if k == "layer_forward"}
    )
    write_json_atomic(meta_path, raw)
