"""The files `pdsim run` writes: names, column names with their units, and writing them all or none.

GB in these files: memory columns (`*_gb` of KV and GPU memory) are GiB (2^30 bytes), as GPU
memory is counted; link and transfer columns (`*_gb_per_s`, `cumulative_moved_gb`) are 10^9 bytes,
as link bandwidth is quoted. `cumulative_*` columns count from the start of the run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pdsim.engine.result import SimulationResult
from pdsim.errors import PdsimError
from pdsim.outputs import OutputSet, check_output_file, json_text

# The engine's sample fields -> the CSV column names (units and cumulative counts said in the name).
TIMELINE_COLUMNS = {
    "prompt_tokens": "cumulative_prompt_tokens",
    "decode_tokens": "cumulative_decode_tokens",
    "kv_send_gbps": "kv_send_gb_per_s",
    "kv_recv_gbps": "kv_recv_gb_per_s",
}
LINK_COLUMNS = {
    "capacity_gbps": "capacity_gb_per_s",
    "rate_gbps": "rate_gb_per_s",
    "utilisation": "utilisation_since_last_sample",
    "moved_gb": "cumulative_moved_gb",
}
# Every file a run can write beside <stem>.csv; those an earlier run left and this one does not
# write (a P/D run's links, plots) are removed, so one stem never mixes two runs.
RUN_COMPANIONS = ("_summary.json", "_timeline.csv", "_links.csv", "_latency_cdf.png", "_memory.png",
                  "_throughput.png")


# Suffixes of the files pdsim reads or writes in other formats.
OTHER_FORMATS = frozenset({".json", ".jsonl", ".png", ".parquet", ".yaml", ".yml", ".gz"})


def companion_paths(output: Path) -> list[Path]:
    if not output.name:  # '' or '/': check_output_file says what is wrong with it
        return []
    return [output.with_name(output.stem + suffix) for suffix in RUN_COMPANIONS]


def check_run_output(output: Path, inputs: list[Path | None]) -> None:
    """Before simulating: exit 2 when --output (or a companion) would overwrite an input or
    cannot be written."""
    check_output_file(output, "--output", inputs, companion_paths(output))
    if output.suffix.lower() in OTHER_FORMATS:  # a CSV written under another format's name misleads every reader
        raise PdsimError(f"--output {output}: the per-request output is a CSV; name it .csv (its summary is "
                         f"{output.stem}_summary.json beside it)")


def timeline_frame(result: SimulationResult) -> pd.DataFrame:
    return pd.DataFrame([s.__dict__ for s in result.samples]).rename(columns=TIMELINE_COLUMNS)


def links_frame(result: SimulationResult) -> pd.DataFrame:
    return pd.DataFrame([s.__dict__ for s in result.link_samples]).rename(columns=LINK_COLUMNS)


def write_run_outputs(output: Path, df: pd.DataFrame, summary: dict, result: SimulationResult,
                      plot: bool) -> list[Path]:
    """Writes <stem>.csv, _summary.json, _timeline.csv, _links.csv (P/D) and with `plot` the
    PNGs, all or none (see pdsim.outputs); returns the paths written."""
    from pdsim.metrics.plots import write_plots

    timeline = timeline_frame(result)
    stem = output.with_suffix("")
    with OutputSet(stale=companion_paths(output)) as out:
        out.stage(output, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6f"))
        out.stage(_with(stem, "_summary.json"),
                  lambda tmp: tmp.write_text(json_text(summary)))
        out.stage(_with(stem, "_timeline.csv"), lambda tmp: timeline.to_csv(tmp, index=False, float_format="%.6f"))
        if result.link_samples:
            links = links_frame(result)
            out.stage(_with(stem, "_links.csv"), lambda tmp: links.to_csv(tmp, index=False, float_format="%.6f"))
        if plot:
            write_plots(df, timeline, summary, stem, out.stage)
        return out.commit()


def _with(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)
