"""Bad rows of a closed-loop table (`pdsim validate --measured <table.csv>`): each is reported with its line and
why, counted, never aborts the table and is never simulated as something else; a table with no row simulated
is an error. Rows taken from the shared H100 Qwen3-32B table (skip only without ../shared)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from pdsim.errors import PdsimError
from pdsim.perf.interp import ExtrapolationWarning
from tests.test_aiconfigurator import AIC, needs_shared
from tests.test_validate import _validate_cli

TABLE = AIC / "silicon_h100_qwen3-32b_vllm-0.12.0_agg_bf16.csv"
# The shared table's first row: isl 1024, osl 128, 8 clients, TP 2 (the one profile imported below).
COLUMNS = ["backend", "backend_version", "model_path", "system", "mode", "isl", "osl", "batch_size", "tp_size",
           "pp_size", "silicon_ttft_ms", "silicon_tpot_ms"]

pytestmark = needs_shared


@pytest.fixture(scope="module")
def profile_root(tmp_path_factory) -> Path:
    """A --profile-dir root with Qwen3-32B at TP 2 from aiconfigurator's H100 tables (as import-aiconfigurator)."""
    from pdsim.models import load_model
    from pdsim.perf.aiconfigurator import import_profile

    root = tmp_path_factory.mktemp("aic")
    import_profile(AIC / "systems_data_h100_sxm", "h100_sxm", load_model("Qwen/Qwen3-32B"), 2, root)
    return root


def _row(**change: str) -> list[str]:
    """The shared table's first row as CSV cells, with these cells changed."""
    first = pd.read_csv(TABLE, dtype=str, nrows=1).iloc[0]
    assert list(first.index) == COLUMNS
    return [change.get(column, str(first[column])) for column in COLUMNS]


def _table(tmp_path: Path, rows: list[list[str]]) -> Path:
    path = tmp_path / "t.csv"
    path.write_text("\n".join(",".join(cells) for cells in [COLUMNS, *rows]) + "\n")
    return path


def _validate(table: Path, profile_root: Path, *more: str):
    """validate on the table, 1 round, no step-time margin runs: the CLI result and the CSV it wrote."""
    out = table.with_name("v.csv")
    res = _validate_cli("--measured", str(table), "--profile-dir", str(profile_root), "--rounds", "1",
                        "--step-time-margin-pct", "0", "--output", str(out), *more)
    assert res.exit_code == 0, res.output
    return res, pd.read_csv(out)


def test_text_in_a_number_column_is_a_bad_row_not_a_crash(tmp_path, profile_root):
    # Text in silicon_tpot_ms, the header line repeated inside the table, text and 0 in pp_size: bad rows with
    # their line, column, value and what was expected; pp_size 2 stays a layout pdsim does not build.
    table = _table(tmp_path, [_row(), _row(silicon_tpot_ms="abc"), COLUMNS, _row(pp_size="abc"),
                              _row(pp_size="0"), _row(pp_size="2")])
    res, df = _validate(table, profile_root)
    assert list(df.status) == ["simulated", "error", "error", "error", "error", "skipped"]
    assert df.reason[1].endswith(".csv line 3: column silicon_tpot_ms: expected a positive number of ms, got 'abc' "
                                 "(not a number)")
    assert df.reason[2].endswith(".csv line 4: column isl: expected a positive integer, got 'isl' (not a number)")
    assert df.reason[3].endswith(".csv line 5: column pp_size: expected a whole number >= 1, got 'abc' "
                                 "(not a number)")
    assert df.reason[4].endswith(".csv line 6: column pp_size: expected a whole number >= 1, got '0'")
    assert df.reason[5].startswith("pp_size 2 (the closed-loop replay builds no pipelined instances)")
    assert "over 1 simulated rows of 6" in res.output and "bad rows: 4 row(s)" in res.output
    assert "skipped: 1 row(s)" in res.output
    # The number columns are numbers, the bad rows' text left out of them (NaN).
    for column in ("isl", "osl", "concurrency", "tp", "ttft_ms", "tpot_ms", "ttft_err_pct"):
        assert pd.api.types.is_numeric_dtype(df[column]), column
    assert df.isl.tolist()[:2] == [1024, 1024] and pd.isna(df.isl[2]) and pd.isna(df.tpot_ms[1])


def test_a_row_longer_than_the_models_max_length_is_not_simulated(tmp_path, profile_root):
    # Qwen3-32B's max length is 40960: vLLM refuses a 1024 + 100000-token request, so the row has no mean to
    # compare; it is a bad row with that reason, not a simulated row with empty figures.
    res, df = _validate(_table(tmp_path, [_row(), _row(osl="100000")]), profile_root)
    assert list(df.status) == ["simulated", "error"]
    assert df.reason[1].split(".csv ", 1)[1].startswith("line 3: not simulatable: prompt + output (isl 1024 + osl "
                                                        "100000 = 101024 tokens) is longer than Qwen/Qwen3-32B's "
                                                        "max length 40960")
    assert "over 1 simulated rows of 2" in res.output and "one output token" not in res.output
    assert "nan" not in res.output.lower()


def test_extrapolated_profile_tables_are_a_note_and_wide_values_keep_their_columns(tmp_path, profile_root):
    # isl 40000 leaves the profile's 16384-token grid: said once as the row's note, not as raw warnings (with
    # file and line) on stderr. Its 1 ms measured TTFT makes an error of over +100000%, wider than its column.
    table = _table(tmp_path, [_row(isl="40000", batch_size="1", silicon_ttft_ms="1")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res, df = _validate(table, profile_root)
    assert not [w for w in caught if issubclass(w.category, ExtrapolationWarning)]
    assert df.status.tolist() == ["simulated"]
    assert df.note[0].startswith("step times extrapolated beyond the profile's measured range: ")
    assert "dense (10 ops) tokens above 16384" in df.note[0]
    assert "notes: 1 simulated row(s)" in res.output and f"1 x {df.note[0]}" in res.output
    row = res.output.splitlines()[1].split()
    assert len(row) == 10 and row[:4] == ["40000", "128", "1", "2"], row
    assert float(row[6].rstrip("%")) > 1e5


@pytest.mark.parametrize(("change", "options", "why"), [
    ({"system": "b200_sxm"}, (), "2 x system b200_sxm (pdsim's B200), not the simulated hardware H100-SXM"),
    ({}, ("--hardware", "H200"), "2 x system h100_sxm (pdsim's H100-SXM), not the simulated hardware H200"),
    ({}, ("--model", "meta-llama/Llama-3.1-8B"), "meta-llama/Llama-3.1-8B/bfloat16/tp2: profile directory not found"),
])
def test_a_table_with_no_row_simulated_is_an_error_saying_why(tmp_path, profile_root, change, options, why):
    table = _table(tmp_path, [_row(**change), _row(**change, osl="512")])
    with pytest.raises(PdsimError, match=r"no row of 2 simulated, so there is nothing to compare") as e:
        _validate_cli("--measured", str(table), "--profile-dir", str(profile_root), "--rounds", "1",
                      "--step-time-margin-pct", "0", "--output", str(tmp_path / "v.csv"), *options)
    assert why in str(e.value)
    if "--model" in options:  # the rows' error names their lines, once, not the config builder's placeholder
        assert "2 x " + str(table) + " lines 2, 3: nodes[0].instances[0]: " in str(e.value)
        assert "<config>" not in str(e.value)


def test_no_row_simulated_exits_non_zero(tmp_path, profile_root, capsys):
    from pdsim.cli import main

    table = _table(tmp_path, [_row(system="b200_sxm")])
    with pytest.raises(SystemExit) as e:
        main(["validate", "--measured", str(table), "--profile-dir", str(profile_root), "--rounds", "1", "--quiet",
              "--output", str(tmp_path / "v.csv")])
    assert e.value.code != 0
    assert ".csv: no row of 1 simulated" in capsys.readouterr().err


def test_a_tables_path_names_its_rows_in_messages(tmp_path, profile_root):
    # Where the table says where it was read from (attrs["source"]), a row's config error names the file and line.
    from pdsim.engine.cluster import SimOptions
    from pdsim.validate.closed_loop import simulate_table
    from pdsim.validate.closed_loop_table import read_closed_loop_table

    table = read_closed_loop_table(_table(tmp_path, [_row()]))
    table.attrs["source"] = "t.csv"
    df = simulate_table(table, "meta-llama/Llama-3.1-8B", "H100-SXM", 80, None, SimOptions(), rounds=1,
                        profile_lookup=lambda model, tp, _precision: str(profile_root / model / f"tp{tp}"))
    assert df.status[0] == "error"
    assert df.reason[0].startswith("t.csv line 2: nodes[0].instances[0]: "), df.reason[0]


def test_a_rows_line_counts_blank_lines_and_follows_the_rows_kept(tmp_path, profile_root):
    # pandas skips blank lines: row + 2 named line 3 for the row on line 5; a caller's filter keeps each row's line.
    from pdsim.engine.cluster import SimOptions
    from pdsim.validate.closed_loop import simulate_table
    from pdsim.validate.closed_loop_table import read_closed_loop_table

    path = tmp_path / "t.csv"
    path.write_text("\n".join([",".join(COLUMNS), ",".join(_row()), "", "  ", ",".join(_row(osl="64"))]) + "\n")
    table = read_closed_loop_table(path)
    table = table[table.osl == 64]
    df = simulate_table(table, "meta-llama/Llama-3.1-8B", "H100-SXM", 80, None, SimOptions(), rounds=1,
                        profile_lookup=lambda model, tp, _precision: str(profile_root / model / f"tp{tp}"))
    assert df.reason.tolist()[0].startswith(f"{path} line 5: "), df.reason.tolist()


def test_unknown_hardware_is_named_and_rounds_are_bounded(tmp_path, profile_root):
    table = _table(tmp_path, [_row()])
    # Every row read "measured on other hardware" when --hardware was no GPU pdsim knows.
    with pytest.raises(PdsimError, match="system h100_sxm: --hardware foo is no GPU pdsim knows"):
        _validate_cli("--measured", str(table), "--profile-dir", str(profile_root), "--rounds", "1",
                      "--hardware", "foo", "--mem-gb", "80", "--output", str(tmp_path / "h.csv"))
    with pytest.raises(PdsimError, match="--rounds: expected a number from 1 to 1000"):
        _validate_cli("--measured", str(table), "--profile-dir", str(profile_root), "--rounds", "1000000",
                      "--output", str(tmp_path / "r.csv"))


def test_calibrate_says_which_simulated_rows_have_no_sample_of_the_metric(tmp_path, profile_root):
    from click.testing import CliRunner

    from pdsim.validate.cli import calibrate

    table = _table(tmp_path, [_row(), _row(osl="1")])  # one output token: no TPOT, silently out of the fit
    res = CliRunner().invoke(calibrate, ["--measured", str(table), "--profile-dir", str(profile_root), "--rounds",
                                         "1", "--quiet", "--out", str(tmp_path / "c.json")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "left out of the fit: 1 simulated row(s) with no tpot_ms to compare" in res.output


def test_reasons_that_differ_only_in_their_line_are_counted_once_naming_the_lines():
    from pdsim.validate.closed_loop import _by_reason

    reasons = pd.Series([f"t.csv line {n}: profile directory not found" for n in range(2, 9)]
                        + ["t.csv line 9: other", "system b200_sxm (pdsim's B200)"])
    assert _by_reason(reasons) == [("t.csv lines 2, 3, 4, 5, 6 and 2 more: profile directory not found", 7),
                                   ("t.csv line 9: other", 1), ("system b200_sxm (pdsim's B200)", 1)]
