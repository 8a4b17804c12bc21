"""`pdsim profile --check`: its exit status follows the verdict, and extrapolations are summarised.

On the CPU with pdsim/tiny-llama and a tiny grid (seconds). The commands go through `pdsim.cli.main`,
as `python -m pdsim` does: it runs click with standalone_mode=False, under which a click `Exit`
would be swallowed, so the status is only right if it survives that path.
"""

from __future__ import annotations

import csv
import re
import shutil
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from pdsim.cli import main  # noqa: E402
from pdsim.perf.interp import ExtrapolationWarning, Table1D  # noqa: E402
from pdsim.perf.profile import profile_path  # noqa: E402
from pdsim.profiler import cli as profiler_cli  # noqa: E402
from pdsim.profiler.cli import profile_group  # noqa: E402

MODEL = "pdsim/tiny-llama"
FAST = ["--device", "cpu", "--threads", "1", "--warmup", "1", "--repeats", "3", "--quiet"]
# Inside the grid below (16 tokens, 16 KV, 2 sequences): no extrapolation.
IN_GRID = ["--check-prefill", "16", "--check-decode", "2", "--check-kv", "8"]
# Beyond it on every axis: tokens, KV and sequences.
BEYOND = ["--check-prefill", "64", "--check-decode", "4", "--check-kv", "32"]
TABLES = ("dense.csv", "per_sequence.csv", "attention_prefill.csv", "attention_decode.csv",
          "attention_decode_skew.csv")


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("profiles")
    grid = ["--max-tokens", "16", "--max-kv", "16", "--max-batch", "2"]
    result = CliRunner().invoke(profile_group, ["--model", MODEL, "--out", str(out), *grid, *FAST])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return profile_path(out, "CPU-1core", MODEL, "bfloat16", 1)


def _check(profile: Path, *cases: str) -> int:
    """Run `pdsim profile --check` as `python -m pdsim` does; its exit status."""
    try:
        main(["profile", "--check", "--model", MODEL, "--profile-dir", str(profile), *FAST, *cases])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def _slowed(profile: Path, dest: Path, factor: float) -> Path:
    """A copy of `profile` with every time multiplied by `factor`: its predictions are that far off."""
    shutil.copytree(profile, dest)
    for name in TABLES:
        path = dest / name
        if not path.exists():
            continue
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and "time_us" in rows[0]
        for row in rows:
            row["time_us"] = f"{float(row['time_us']) * factor:.3f}"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return dest


def test_fail_verdict_exits_1(profile_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = _slowed(profile_dir, tmp_path / "wrong", 20.0)  # predictions ~+1900%: FAIL whatever the noise
    assert _check(wrong, *IN_GRID) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("verdict: FAIL, 3 of 3 steps outside 10%")  # the report is printed first
    assert any(line.startswith("prefill N=16 ") for line in lines)


def test_pass_verdict_exits_0(
    profile_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Timing noise on a shared CPU can miss the 10% goal; a goal no step can miss makes PASS certain.
    monkeypatch.setattr(profiler_cli, "CHECK_GOAL", 100.0)
    assert _check(profile_dir, *IN_GRID) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("verdict: PASS, all 3 steps within 10000%")
    assert not any(line.startswith("note:") for line in lines)  # nothing extrapolated, nothing to note


def test_extrapolations_are_summarised(
    profile_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(profiler_cli, "CHECK_GOAL", 100.0)  # the verdict is not what this test is about
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        assert _check(profile_dir, *BEYOND) == 0
    assert not [w for w in leaked if issubclass(w.category, ExtrapolationWarning)]
    captured = capsys.readouterr()
    assert "ExtrapolationWarning" not in captured.out + captured.err
    lines = captured.out.splitlines()
    notes = [line for line in lines if line.startswith("note:")]
    # One line per kind of table and axis left, not one per op; after the table, before the verdict.
    assert len(notes) == 5
    assert lines[-1].startswith("verdict:") and lines[-len(notes) - 1 : -1] == notes
    dense = next(n for n in notes if " dense ops " in n)
    match = re.fullmatch(
        r"note: (\d+) dense ops were extrapolated beyond the profiled tokens range \[1, 16\] "
        r"\(first at tokens=64\): (.+)",
        dense,
    )
    assert match, dense
    ops = match.group(2).split(", ")
    assert int(match.group(1)) == len(ops) == len(set(ops)) and {"qkv_proj", "down_proj"} <= set(ops)
    assert ("note: 2 per_sequence ops were extrapolated beyond the profiled sequences range [1, 2] "
            "(first at sequences=4): lm_head, sampler") in notes
    # Both of its axes are beyond the grid, and each is said (once).
    assert ("note: the attention_decode table was extrapolated beyond the profiled batch_size range [1, 2] "
            "(first at batch_size=4)") in notes
    assert ("note: the attention_decode table was extrapolated beyond the profiled kv_tokens range [1, 16] "
            "(first at kv_tokens=32)") in notes
    assert any(n.startswith("note: the attention_prefill table was extrapolated beyond the profiled "
                            "chunk_tokens range [1, 16]") for n in notes)


def test_extrapolation_warning_carries_its_table() -> None:
    # Outside the check the warning is raised as before (the simulator's runs report it), with the
    # same text; the check summarises from its fields.
    table = Table1D("dense.csv:qkv_proj", [1, 2, 4], [1.0, 2.0, 4.0], "tokens")
    with pytest.warns(ExtrapolationWarning) as record:
        table(6)
    w = record[0].message
    assert str(w) == ("profile table 'dense.csv:qkv_proj': tokens=6 is outside the profiled range [1, 4]; "
                      "extrapolating linearly (said for the first such lookup)")
    assert (w.table, w.axis, w.value, w.lo, w.hi) == ("dense.csv:qkv_proj", "tokens", 6, 1, 4)


def test_summary_groups_by_table_kind_and_range() -> None:
    from pdsim.profiler.check import summarise_extrapolations

    caught = [
        ExtrapolationWarning("a", "dense.csv:qkv_proj", "tokens", 64, 1, 16),
        ExtrapolationWarning("b", "dense.csv:o_proj", "tokens", 64, 1, 16),
        ExtrapolationWarning("c", "dense.csv:o_proj", "tokens", 128, 1, 16),  # the same op again: named once
        ExtrapolationWarning("d", "attention_decode.csv", "batch_size", 4, 1, 2),
        ExtrapolationWarning("raw text of someone else's warning"),
    ]
    assert summarise_extrapolations(caught) == [
        "note: 2 dense ops were extrapolated beyond the profiled tokens range [1, 16] (first at tokens=64, 128): "
        "qkv_proj, o_proj",
        "note: the attention_decode table was extrapolated beyond the profiled batch_size range [1, 2] "
        "(first at batch_size=4)",
        "note: raw text of someone else's warning",
    ]
    assert summarise_extrapolations([]) == []


def test_other_warnings_are_not_swallowed() -> None:
    from pdsim.profiler.check import _extrapolations_summarised

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with _extrapolations_summarised(notes):
            warnings.warn(ExtrapolationWarning("x", "dense.csv:layernorm", "tokens", 9, 1, 8), stacklevel=1)
            warnings.warn("unrelated", RuntimeWarning, stacklevel=1)
    assert [(w.category, str(w.message)) for w in outer] == [(RuntimeWarning, "unrelated")]
    assert notes == ["note: 1 dense op was extrapolated beyond the profiled tokens range [1, 8] "
                     "(first at tokens=9): layernorm"]
