"""pdsim validate / calibrate on inputs that are wrong, partial or given options that do nothing:
refused with file, line and field, or said in a note; never replayed silently."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from pdsim.engine.cluster import SimOptions, simulate
from pdsim.errors import PdsimError
from pdsim.validate.measured import read_measured
from tests.helpers import Terminal, cluster, instance, trace

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RTX = SHARED / "calibration" / "llmservingsim-rtxpro6000-llama31-8b"
needs_shared = pytest.mark.skipif(not RTX.is_dir(), reason="../shared data not present")

TABLE_HEADER = ("backend,backend_version,model_path,system,mode,isl,osl,batch_size,tp_size,pp_size,"
                "silicon_ttft_ms,silicon_tpot_ms\n")
TABLE_ROW = "vllm,{version},{model},{system},agg,256,16,2,1,1,{ttft},8.0\n"


def _row(version: str = "0.12.0", model: str = "meta-llama/Llama-3.1-8B", system: str = "h100_sxm",
         ttft: str = "30.0") -> str:
    return TABLE_ROW.format(version=version, model=model, system=system, ttft=ttft)


def _cli(command: str, *args: str) -> Result:
    from pdsim.validate.cli import calibrate, validate

    return CliRunner().invoke({"validate": validate, "calibrate": calibrate}[command], list(args),
                              catch_exceptions=False)


def _run(folder: Path, n: int = 30, meta: dict | None = None, instances: int = 1) -> tuple[Path, Path]:
    """A small simulated run written as LLMServingSim's vLLM runner records one (requests.jsonl, with
    request ids, and meta.json when given), and its one-engine cluster config (or `instances` engines)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(int(i * 37 % 500 + 60), int(i * 13 % 60 + 20), 0.05 * i) for i in range(n)]
    cfg = cluster(instance(None, max_num_seqs=16))
    made = simulate(cfg, trace(rows), SimOptions())
    records = [{"request_id": f"req-{r.id}", "input_toks": r.input_toks, "output_toks": r.output_toks,
                "arrival_time": 1_700_000_000.0 + r.arrival_s, "queued_ts": 5000.0 + r.arrival_s,
                "first_token_ts": 5000.0 + r.first_token_s, "last_token_ts": 5000.0 + r.finish_s}
               for r in sorted(made.requests, key=lambda r: r.arrival_s)]
    (folder / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    config = folder.parent / f"{folder.name}_cluster.json"
    config.write_text(cluster(*[instance(None, max_num_seqs=16)] * instances).model_dump_json(exclude_none=True))
    return folder / "requests.jsonl", config


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _write_raw_value(path: Path, index: int, key: str, value: str) -> None:
    """Line `index` (from 0) with field `key` written as the raw JSON text `value` (which json.dumps may not
    write: Infinity, a 400-digit integer)."""
    lines = path.read_text().splitlines()
    record = json.loads(lines[index])
    lines[index] = json.dumps(record).replace(json.dumps(record[key]), value)
    path.write_text("\n".join(lines) + "\n")


# -- 1. outputs over inputs -------------------------------------------------------------------------------------------

def test_an_output_over_a_file_the_run_reads_beside_it_is_refused(tmp_path):
    from pdsim.validate.measured import measured_inputs

    requests, config = _run(tmp_path / "run", meta={"vllm_version": "0.19.0", "num_requests": 30})
    meta = requests.with_name("meta.json")
    before = meta.read_bytes()
    # The run file names only itself, yet its meta.json is read: an output there is refused, for both commands.
    with pytest.raises(PdsimError, match=r"--output .*meta.json: would overwrite the input .*meta.json"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output", str(meta))
    with pytest.raises(PdsimError, match=r"--output .*meta.json: would overwrite the input .*meta.json"):
        _cli("calibrate", "--measured", str(requests), "--cluster-config", str(config), "--output", str(meta))
    assert meta.read_bytes() == before
    # A run folder is read through its requests.jsonl, with meta.json and a timeseries.csv beside it: those are
    # inputs; the folder is not (an output may go beside them).
    assert set(measured_inputs(requests.parent)) == {requests, meta, requests.with_name("timeseries.csv")}
    with pytest.raises(PdsimError, match=r"--output .*meta.json"):
        _cli("validate", "--measured", str(requests.parent), "--cluster-config", str(config), "--output", str(meta))
    assert meta.read_bytes() == before
    # --token-ids is an input too.
    ids = tmp_path / "workload.jsonl"
    _write_lines(ids, [{"input_tok_ids": [1] * 8} for _ in range(30)])
    with pytest.raises(PdsimError, match=r"would overwrite the input .*workload.jsonl"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--token-ids", str(ids),
             "--output", str(ids))
    # Nor the request-by-request companion (<stem>_requests.csv) over an input.
    companion = tmp_path / "v_requests.csv"
    shutil.copy(ids, companion)
    with pytest.raises(PdsimError, match=r"v.csv \(its companion v_requests.csv\): would overwrite the input"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--token-ids",
             str(companion), "--output", str(tmp_path / "v.csv"))


@needs_shared
def test_an_output_into_the_shared_run_folder_is_refused_and_meta_json_kept(tmp_path):
    run = tmp_path / "vllm_run"
    shutil.copytree(RTX / "vllm_run", run)
    before = (run / "meta.json").read_bytes()
    with pytest.raises(PdsimError, match=r"--output .*meta.json"):
        _cli("validate", "--measured", str(run), "--cluster-config", str(RTX / "cluster_config.json"),
             "--output", str(run / "meta.json"))
    assert (run / "meta.json").read_bytes() == before


def _validate_table(tmp_path: Path, *rows: str) -> tuple:
    """validate on a closed-loop table of these rows, one round each: its result and its CSV."""
    table = tmp_path / "t.csv"
    table.write_text(TABLE_HEADER + "".join(rows))
    res = _cli("validate", "--measured", str(table), "--rounds", "1", "--output", str(tmp_path / "v.csv"))
    return res, pd.read_csv(tmp_path / "v.csv")


# -- 2. the GPU a table row was measured on ---------------------------------------------------------------------------

def test_table_rows_of_another_gpu_are_skipped_with_the_reason(tmp_path):
    res, df = _validate_table(tmp_path, _row(), _row(system="b200_sxm"), _row(system="tpu_v9"), _row(system=""))
    assert list(df.status) == ["simulated", "skipped", "skipped", "skipped"]
    assert "system b200_sxm (pdsim's B200), not the simulated hardware H100-SXM" in df.reason[1]
    assert "system tpu_v9: a GPU pdsim does not know" in df.reason[2]
    assert "system empty" in df.reason[3]
    assert "1 x system b200_sxm" in res.output and "over 1 simulated rows of 4" in res.output
    # Simulated on the B200 (named by an alias), the H100 row is the one left out.
    _cli("validate", "--measured", str(tmp_path / "t.csv"), "--rounds", "1", "--hardware", "B200-SXM",
         "--output", str(tmp_path / "b.csv"))
    df = pd.read_csv(tmp_path / "b.csv")
    assert list(df.status[:2]) == ["skipped", "simulated"]
    assert "system h100_sxm (pdsim's H100-SXM), not the simulated hardware B200" in df.reason[0]


def test_table_memory_defaults_to_the_simulated_gpus_own(tmp_path):
    from pdsim.validate.cli import _table_mem_gb

    assert _table_mem_gb("H100-SXM", None) == 80  # as before: the H100 figures do not move
    assert _table_mem_gb("B200", None) == 180 and _table_mem_gb("B200", 96.0) == 96.0
    with pytest.raises(PdsimError, match="--mem-gb: needed"):
        _table_mem_gb("my-gpu", None)
    # Llama-3.1-70B at TP 1 (141 GB of weights) fits a B200's 180 GB, not 80.
    table = tmp_path / "t.csv"
    table.write_text(TABLE_HEADER + _row(model="meta-llama/Llama-3.1-70B", system="b200_sxm"))
    _cli("validate", "--measured", str(table), "--rounds", "1", "--hardware", "B200", "--output",
         str(tmp_path / "v.csv"))
    assert list(pd.read_csv(tmp_path / "v.csv").status) == ["simulated"]
    # Its one row does not fit: no row simulated, nothing to compare, nothing written.
    with pytest.raises(PdsimError, match=r"(?s)t.csv: no row of 1 simulated, so there is nothing to compare\n"
                                         r".*1 x .*t.csv line 2: "):
        _cli("validate", "--measured", str(table), "--rounds", "1", "--hardware", "B200", "--mem-gb", "80",
             "--output", str(tmp_path / "v80.csv"))
    assert not (tmp_path / "v80.csv").exists()


# -- 3. as many engines as the run ------------------------------------------------------------------------------------

def test_a_config_of_more_engines_than_the_run_is_refused_or_noted(tmp_path):
    requests, config = _run(tmp_path / "run", meta={"vllm_version": "0.19.0",
                                                    "engine_kwargs": {"data_parallel_size": 1}}, instances=2)
    with pytest.raises(PdsimError, match=r"2 independent instances, but the measured engine ran data_parallel_size 1"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
             str(tmp_path / "v.csv"))
    # engine_kwargs without data_parallel_size: vLLM's default, one engine, assumed and said.
    requests.with_name("meta.json").write_text(json.dumps({"vllm_version": "0.19.0",
                                                           "engine_kwargs": {"max_num_seqs": 16}}))
    res = _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
               str(tmp_path / "v.csv"))
    assert "NOTE: " in res.output and "record no data_parallel_size" in res.output


@needs_shared
def test_the_shared_one_engine_run_on_two_instances_is_refused(tmp_path):
    with pytest.raises(PdsimError, match=r"single_node_multi_instance.json: serves the requests with 2 independent "
                                         r"instances, but the measured engine ran data_parallel_size 1"):
        _cli("validate", "--measured", str(RTX / "vllm_run"), "--cluster-config",
             str(SHARED / "llmservingsim-configs" / "single_node_multi_instance.json"), "--profile-dir",
             str(RTX / "profile"), "--output", str(tmp_path / "v.csv"))


# -- 4. a cut or repeated request log --------------------------------------------------------------------------------

def test_a_cut_log_and_repeated_request_ids_are_said_or_refused(tmp_path):
    requests, _ = _run(tmp_path / "run", meta={"vllm_version": "0.19.0", "num_requests": 30})
    assert not any("num_requests" in n for n in read_measured(requests).notes)
    records = _lines(requests)
    _write_lines(requests, records[:20])
    assert any(n.startswith("NOTE: meta.json records num_requests 30, but requests.jsonl has 20") for n in
               read_measured(requests).notes)
    # A duplicated line: the engine logs each request once.
    _write_lines(requests, records + [records[4]])
    with pytest.raises(PdsimError, match=r"requests.jsonl:31: repeats line 5 exactly \(request_id 'req-"):
        read_measured(requests)
    # The same id on a request still in the engine, which vLLM refuses: the ids are not the engine's. Replayed,
    # said; a log whose ids are all one value is read in linear time.
    clash = {**records[4], "input_toks": records[4]["input_toks"] + 1}
    _write_lines(requests, records + [clash])
    run = read_measured(requests)
    assert len(run.requests) == 31 and any("1 request_id repeat(s) while an earlier request of that id was still "
                                           "in the engine" in n and "lines 5 and 31" in n for n in run.notes)
    _write_lines(requests, [{**r, "request_id": "same"} for r in records])
    assert len(read_measured(requests).requests) == 30
    # An id used again after its first request finished: possible, replayed, said.
    last = max(r["last_token_ts"] for r in records)
    again = {**records[4], "queued_ts": last + 1, "arrival_time": records[-1]["arrival_time"] + 1,
             "first_token_ts": last + 1.1, "last_token_ts": last + 2}
    _write_lines(requests, records + [again])
    run = read_measured(requests)
    assert len(run.requests) == 31 and any("1 request_id repeat(s) by another request after the first ended" in n
                                           for n in run.notes)


# -- 5. calibrate says what it fitted on ------------------------------------------------------------------------------

def test_calibrate_announces_estimated_step_times_and_a_best_fit_at_zero(tmp_path):
    from pdsim.validate.calibrate import fit_overhead

    bottom = fit_overhead(lambda us: np.array([us / 100 + 5.0]), grid_us=[0, 500, 1000])
    assert bottom["at_grid_bottom"] and not bottom["at_grid_edge"] and bottom["signed_err_pct"] == 5.0
    # A run made with no overhead, replayed on estimated step times (no profile): the best fit is 0.
    requests, config = _run(tmp_path / "run")
    out = tmp_path / "cal.json"
    res = _cli("calibrate", "--measured", str(requests), "--cluster-config", str(config), "--output", str(out))
    fit = json.loads(out.read_text())
    assert fit["estimated_profile"] is True and fit["step_overhead_us"] == 0 and fit["at_grid_bottom"]
    assert "NOTE: step times estimated from hardware specs" in res.output
    assert "NOTE: the best overhead is the grid's smallest, 0 us" in res.output
    assert "records its engine's KV capacity" not in res.output
    # What it was fitted under, and the metrics it was not fitted on, at the fit and at none.
    assert fit["settings"]["cluster_config"] == str(config) and fit["settings"]["profile_dir"] is None
    assert set(fit["held_out_at_fit"]) == {f"{m}_{s}_diff_pct" for m in ("ttft", "e2e") for s in ("mean", "p50", "p90")}
    assert re.search(r"held out, at the fitted overhead: TTFT mean [+-]\d+\.\d% \([+-]\d+\.\d% at 0 us\), E2E mean",
                     res.output), res.output
    # A run that records its engine's KV capacity: the fit's replays size it by the config, which it says.
    requests, config = _run(tmp_path / "kv", meta={"vllm_version": "0.19.0", "kv_cache": {"num_gpu_blocks": 3000}})
    res = _cli("calibrate", "--measured", str(requests), "--cluster-config", str(config), "--output", str(out))
    assert re.search(r"NOTE: the run records its engine's KV capacity, 48,000 tokens \(.*meta.json.*\); the fit's "
                     r"replays had the predicted [\d,]+ \(\+\d+\.\d%\)", res.output), res.output
    # A closed-loop table without a profile.
    table = tmp_path / "t.csv"
    table.write_text(TABLE_HEADER + _row())
    res = _cli("calibrate", "--measured", str(table), "--rounds", "1", "--output", str(out))
    assert json.loads(out.read_text())["estimated_profile"] is True
    fitted = json.loads(out.read_text())
    assert set(fitted["held_out_at_fit"]) == {"ttft_mape_pct"} and fitted["settings"]["rounds"] == 1
    assert "held out, at the fitted overhead: TTFT MAPE " in res.output
    assert "NOTE: step times estimated from hardware specs in 1 of 1 simulated rows" in res.output


# -- 6. client times that are not times of the run ---------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [
    ("Infinity", "expected a finite number of seconds"),
    ("NaN", "expected a finite number of seconds"),
    ('"soon"', "expected a finite number of seconds"),
    ("-1e12", "before the run's first engine time"),
    ("1e30", "after the run's last engine time"),
])
def test_an_arrival_time_that_is_no_time_of_the_run_names_file_line_and_field(tmp_path, value, words):
    requests, config = _run(tmp_path / "run")
    _write_raw_value(requests, 6, "arrival_time", value)
    with pytest.raises(PdsimError, match=rf"requests.jsonl:7: field 'arrival_time'.*{words}"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--clock", "client",
             "--output", str(tmp_path / "v.csv"))


def test_an_engine_time_that_is_not_a_number_is_refused_not_taken_as_missing(tmp_path):
    requests, _ = _run(tmp_path / "run")
    records = _lines(requests)
    records[2]["queued_ts"] = "later"
    _write_lines(requests, records)
    with pytest.raises(PdsimError, match=r"requests.jsonl:3: field 'queued_ts': expected a finite number"):
        read_measured(requests)
    records[2]["queued_ts"] = None  # null: never reached the engine, left out and counted
    _write_lines(requests, records)
    assert "1 request(s) without queued_ts left out of the replay" in read_measured(requests).notes


# -- 7. options that would change nothing -----------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [["--cluster-config", "CONFIG"], ["--engine-log", "CONFIG"],
                                   ["--token-ids", "CONFIG"], ["--kv-capacity", "measured"],
                                   ["--clock", "client"], ["--plot"]])
def test_per_request_options_on_a_table_are_refused(tmp_path, extra):
    table = tmp_path / "t.csv"
    table.write_text(TABLE_HEADER + _row())
    _, config = _run(tmp_path / "run", n=2)
    args = [a.replace("CONFIG", str(config)) for a in extra]
    refused = rf"^{extra[0]}: applies to per-request runs .* only; .*t.csv is a closed-loop"
    with pytest.raises(PdsimError, match=refused):
        _cli("validate", "--measured", str(table), "--rounds", "1", *args, "--output", str(tmp_path / "v.csv"))


def test_table_options_on_a_per_request_run_are_refused_and_defaults_are_fine(tmp_path):
    requests, config = _run(tmp_path / "run")
    base = ["--measured", str(requests), "--cluster-config", str(config)]
    for extra in (["--hardware", "B200"], ["--mem-gb", "80"], ["--model", "meta-llama/Llama-3.1-8B"],
                  ["--engine-preset", "vllm-serve"], ["--rounds", "10"]):
        for command in ("validate", "calibrate"):
            with pytest.raises(PdsimError, match=rf"^{extra[0]}: applies to closed-loop tables only; .*per-request"):
                _cli(command, *base, *extra, "--output", str(tmp_path / "out.x"))
    # An open-loop run: no client waits for its previous request, so a client delay does nothing.
    with pytest.raises(PdsimError, match=r"^--client-delay-ms: applies to closed-loop .*open-loop run"):
        _cli("validate", *base, "--client-delay-ms", "2", "--output", str(tmp_path / "v.csv"))
    # A table is given no cluster config by calibrate either; options left at their defaults are fine.
    table = tmp_path / "t.csv"
    table.write_text(TABLE_HEADER + _row())
    with pytest.raises(PdsimError, match=r"^--cluster-config: applies to per-request runs"):
        _cli("calibrate", "--measured", str(table), "--cluster-config", str(config), "--output", str(tmp_path / "c"))
    res = _cli("validate", "--measured", str(table), "--rounds", "1", "--kv-capacity", "predicted",
               "--output", str(tmp_path / "v.csv"))
    assert res.exit_code == 0, res.output
    assert _cli("validate", *base, "--output", str(tmp_path / "v.csv")).exit_code == 0
    # Spelled out at its default (a script that always passes it), an option is noted as ignored, not refused.
    res = _cli("validate", *base, "--hardware", "H100-SXM", "--rounds", "20", "--output", str(tmp_path / "v.csv"))
    assert res.exit_code == 0
    assert "note: --hardware H100-SXM: given at its default value, which does not apply here" in res.output


# -- 8, 9. a row's unreadable version, an empty cell, an empty log ---------------------------------------------------

def test_a_rows_unreadable_version_is_noted_and_an_empty_cell_is_named(tmp_path):
    res, df = _validate_table(tmp_path, _row(), _row(version="garbage"), _row(ttft="nan"), _row(ttft=""))
    assert list(df.status) == ["simulated", "simulated", "error", "error"]
    assert "notes: 1 simulated row(s)" in res.output
    assert "1 x backend_version 'garbage', not a vLLM release number" in res.output
    for reason in df.reason[2:]:
        assert "column silicon_ttft_ms: no measured value (the cell is empty or not a number)" in reason


def test_an_empty_request_log_says_it_has_no_requests(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "requests.jsonl").write_text("\n")
    with pytest.raises(PdsimError, match=r"requests.jsonl: no requests in the file"):
        read_measured(tmp_path / "run")


@pytest.mark.parametrize("value", ["true", "Infinity", "-Infinity", "NaN", "1" + "0" * 400, '"12.5x"'])
def test_an_engine_stamp_that_is_no_finite_number_is_refused_by_line(tmp_path, value):
    # The usual log (every stamp a finite float) is checked a column at a time; one odd value anywhere sends
    # that column through the per-value check, which must still name its line.
    requests, _ = _run(tmp_path / "run")
    _write_raw_value(requests, 4, "last_token_ts", value)
    with pytest.raises(PdsimError, match=r"requests.jsonl:5: field 'last_token_ts': expected a finite number"):
        read_measured(requests)


@pytest.mark.parametrize("command", ["validate", "calibrate"])
def test_validate_and_calibrate_show_progress_on_a_terminal_unless_quiet(tmp_path, monkeypatch, command):
    import pdsim.validate.cli
    from pdsim.progress import ProgressBar

    terminal = Terminal()
    monkeypatch.setattr(pdsim.validate.cli, "ProgressBar",
                        lambda label, enabled=None: ProgressBar(label, enabled, stream=terminal))
    requests, config = _run(tmp_path / "run")
    table = tmp_path / "t.csv"
    table.write_text(TABLE_HEADER + _row())
    for measured, extra, unit in ((requests, ["--cluster-config", str(config)], "requests"),
                                  (table, ["--rounds", "1"], "rows")):
        terminal.text = ""
        out = tmp_path / f"{command}_{unit}.out"
        res = _cli(command, "--measured", str(measured), *extra, "--output", str(out))
        assert res.exit_code == 0, res.output
        first = "replaying" if command == "validate" and unit == "requests" else \
            "simulating" if command == "validate" else "step_overhead_us 0"
        assert f"{first} [" in terminal.text and f"{unit} " in terminal.text
        if command == "calibrate":  # one bar per overhead of the grid
            assert "step_overhead_us 3000 [" in terminal.text
        else:  # and one for each side of the step-time margin
            assert "steps 2% faster [" in terminal.text and "steps 2% slower [" in terminal.text
        assert "\r\033[K" in terminal.text
        terminal.text = ""
        assert _cli(command, "--measured", str(measured), *extra, "--output", str(out), "--quiet").exit_code == 0
        assert terminal.text == ""


def test_an_llmservingsim_case_folder_is_read_and_its_config_and_profile_are_named(tmp_path):
    # <case>/vllm_run/requests.jsonl beside <case>/cluster_config.json and <case>/profile/, as LLMServingSim
    # lays a run out: the case folder is taken as --measured, and what the replay needs is named, not guessed.
    case = tmp_path / "case"
    _, config = _run(case / "vllm_run")
    shutil.copy(config, case / "cluster_config.json")
    with pytest.raises(PdsimError, match=r"--cluster-config: needed to replay a per-request run \(the run's case "
                                         rf"folder has one: --cluster-config {case / 'cluster_config.json'}\)"):
        _cli("validate", "--measured", str(case), "--output", str(tmp_path / "v.csv"))
    (case / "profile").mkdir()
    res = _cli("validate", "--measured", str(case), "--cluster-config", str(case / "cluster_config.json"),
               "--output", str(tmp_path / "v.csv"), "--step-time-margin-pct", "0")
    assert res.exit_code == 0, res.output
    assert f"{case / 'vllm_run' / 'requests.jsonl'}: 30 requests" in res.output
    assert f"NOTE: the run's case folder has its own profile: --profile-dir {case / 'profile'}" in res.output
    # a run file outside that layout: nothing is suggested
    other = tmp_path / "other"
    shutil.copytree(case / "vllm_run", other)
    shutil.copy(case / "cluster_config.json", tmp_path / "cluster_config.json")
    with pytest.raises(PdsimError, match=r"needed to replay a per-request run$"):
        _cli("validate", "--measured", str(other), "--output", str(tmp_path / "v.csv"))
    res = _cli("validate", "--measured", str(other), "--cluster-config", str(config), "--output",
               str(tmp_path / "v.csv"), "--step-time-margin-pct", "0")
    assert res.exit_code == 0 and "case folder" not in res.output


# -- 7. runs that leave nothing to compare, and records that contradict the run ---------------------------------------

@pytest.mark.parametrize("meta, words", [
    ({"engine_kwargs": 5}, r"engine_kwargs: expected an object"),
    ({"engine_kwargs": []}, r"engine_kwargs: expected an object"),
    ({"engine_kwargs": {"async_scheduling": "x"}}, r"engine_kwargs.async_scheduling: expected true or false"),
    ({"engine_kwargs": {"enforce_eager": 1}}, r"engine_kwargs.enforce_eager: expected true or false"),
    ({"engine_kwargs": {"max_model_len": 0}}, r"engine_kwargs.max_model_len: expected a whole number from 1 to "
                                               r"1,000,000,000"),
    ({"engine_kwargs": {"max_model_len": 10**30}}, r"engine_kwargs.max_model_len: expected a whole number from 1"),
    ({"model": 5}, r"model: expected a string, got 5"),
])
def test_engine_records_of_the_wrong_shape_name_meta_json_and_the_field(tmp_path, meta, words):
    requests, _ = _run(tmp_path / "run", meta={"vllm_version": "0.19.0", **meta})
    with pytest.raises(PdsimError, match=r"run/meta.json: " + words):
        read_measured(requests)


def test_every_recorded_switch_the_replay_takes_is_checked_when_the_run_is_read():
    from pdsim.validate.engine_meta import ENGINE_SWITCHES
    from pdsim.validate.recorded import _RECORDED_LIMITS

    assert {key for key, kind in _RECORDED_LIMITS.items() if kind is bool} <= set(ENGINE_SWITCHES)


def test_engine_records_vllm_accepts_are_read(tmp_path):
    for limit in (None, "auto", -1, "8k", 4096):
        requests, _ = _run(tmp_path / "run", n=4, meta={"engine_kwargs": {"max_model_len": limit,
                                                                          "enforce_eager": None}})
        assert len(read_measured(requests).requests) == 4


@pytest.mark.parametrize("value", ["0", "0,000", "-5", "1e3", "abc"])
def test_an_engine_log_kv_size_that_is_no_token_count_names_the_line(tmp_path, value):
    requests, config = _run(tmp_path / "run", meta={"vllm_version": "0.19.0"})
    log = tmp_path / "engine.log"
    log.write_text(f"INFO starting\nINFO GPU KV cache size: {value} tokens\n")
    with pytest.raises(PdsimError, match=rf"engine.log:2: 'GPU KV cache size: {value} tokens': expected a positive"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--engine-log", str(log),
             "--output", str(tmp_path / "v.csv"))
    assert not (tmp_path / "v.csv").exists()


def test_a_run_with_no_finished_request_or_no_start_time_is_refused(tmp_path):
    requests, config = _run(tmp_path / "run", meta={"vllm_version": "0.19.0"})
    records = _lines(requests)
    _write_lines(requests, [{**r, "first_token_ts": None, "last_token_ts": None} for r in records])
    with pytest.raises(PdsimError, match=r"requests.jsonl: no request has both a first_token_ts and a last_token_ts"):
        read_measured(requests)
    # With the client's clock a request without queued_ts is replayed at its arrival, but its latencies start at
    # queued_ts: when no finished request has one, there is nothing to compare.
    _write_lines(requests, [{**r, "queued_ts": None} for r in records])
    with pytest.raises(PdsimError, match=r"no finished request has queued_ts"):
        read_measured(requests, clock="client")
    _write_lines(requests, [{**r, "queued_ts": None} if i < 5 else r for i, r in enumerate(records)])
    assert any(n.startswith("5 request(s) without queued_ts") for n in read_measured(requests, "client").notes)


def test_a_recorded_kv_capacity_too_small_for_the_run_is_refused_naming_its_source(tmp_path):
    requests, config = _run(tmp_path / "run", meta={"vllm_version": "0.19.0", "kv_cache": {"num_gpu_blocks": 5}})
    out = tmp_path / "v.csv"
    with pytest.raises(PdsimError, match=r"meta.json kv_cache.num_gpu_blocks: 80 tokens \(5 blocks of 16\) cannot "
                                         r"hold a request the measured run finished"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--kv-capacity", "measured",
             "--output", str(out))
    # Predicted capacity: the record is only compared with (the replay runs).
    assert _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
                str(out)).exit_code == 0
    # An engine argument that sizes the replay's cache below every request: no request finishes in the replay.
    meta = requests.with_name("meta.json")
    meta.write_text(json.dumps({"vllm_version": "0.19.0", "engine_kwargs": {"num_gpu_blocks_override": 2}}))
    with pytest.raises(PdsimError, match=r"30 of 30 replayed requests did not finish in the replay \(30 rejected: .*"
                                         r"nothing to compare .*num_gpu_blocks_override 2 from meta.json"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output", str(out))


def test_one_token_outputs_are_said_and_a_late_last_token_noted(tmp_path):
    requests, config = _run(tmp_path / "run", meta={"vllm_version": "0.19.0"})
    records = _lines(requests)
    _write_lines(requests, [{**r, "output_toks": 1} for r in records])
    res = _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
               str(tmp_path / "v.csv"))
    tpot = [line.split() for line in res.output.splitlines() if line.startswith("TPOT (ms)")]
    assert tpot and all(cells[3:6] == ["-", "-", "n/a"] for cells in tpot) and "nan" not in res.output
    notes = read_measured(requests).notes
    assert "no request has more than one output token: TPOT and ITL have no samples" in notes
    assert any(n.startswith("NOTE: 30 request(s) with one output token end up to") for n in notes)
    _write_lines(requests, [{**r, "output_toks": 1, "last_token_ts": r["first_token_ts"]} for r in records])
    assert not any("one output token end" in n for n in read_measured(requests).notes)


def test_batch_limits_the_record_leaves_out_are_named_with_the_values_replayed(tmp_path):
    requests, config = _run(tmp_path / "run", meta={"vllm_version": "0.19.0",
                                                    "engine_kwargs": {"max_num_seqs": None, "dtype": "bfloat16"}})
    res = _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
               str(tmp_path / "v.csv"), "--step-time-margin-pct", "0")
    assert ("NOTE: meta.json engine_kwargs record no max_num_seqs or max_num_batched_tokens: replayed with "
            "max_num_seqs 16 and max_num_batched_tokens 2048 (the cluster config's, else vLLM's engine default") \
        in res.output
    # a record that gives them: nothing assumed
    requests, config = _run(tmp_path / "given", meta={"vllm_version": "0.19.0", "engine_kwargs": {
        "max_num_seqs": 16, "max_num_batched_tokens": 2048}})
    res = _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
               str(tmp_path / "v.csv"), "--step-time-margin-pct", "0")
    assert "record no max_num" not in res.output and "max_num_seqs 16 from meta.json engine_kwargs" in res.output
    # A config value of the wrong type there is the config's error, naming its field, not an internal one.
    requests, config = _run(tmp_path / "typed", meta={"vllm_version": "0.19.0", "engine_kwargs": {"seed": 0}},
                            instances=2)
    raw = json.loads(config.read_text())
    raw["nodes"][0]["instances"][0]["max_num_seqs"] = None
    config.write_text(json.dumps(raw))
    with pytest.raises(PdsimError, match=r"instances\[0\]\.max_num_seqs"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
             str(tmp_path / "v.csv"))


def test_a_case_folders_workload_is_named_for_the_prefix_cache(tmp_path):
    case = tmp_path / "case"
    requests, config = _run(case / "vllm_run", meta={"vllm_version": "0.19.0"})
    res = _cli("validate", "--measured", str(case), "--cluster-config", str(config), "--output",
               str(tmp_path / "v.csv"), "--step-time-margin-pct", "0")
    assert "no prefix-cache hits are modelled (--token-ids gives them)" in res.output
    (case / "workload.jsonl").write_text("")
    res = _cli("validate", "--measured", str(case), "--cluster-config", str(config), "--output",
               str(tmp_path / "v.csv"), "--step-time-margin-pct", "0")
    assert (f"no prefix-cache hits are modelled (the run's case folder has its workload: --token-ids "
            f"{case / 'workload.jsonl'} gives them)") in res.output


def _ticks(requests: Path, shift_s: float = 0.0) -> str:
    """timeseries.csv as LLMServingSim's runner writes it, counted from the run's own stamps: `t` seconds
    after the run started (0.05 s before the first request), running = picked up and not yet done."""
    records = _lines(requests)
    first_queued = min(r["queued_ts"] for r in records)
    rows = ["t,prompt_throughput,gen_throughput,running,waiting,kv_cache_pct"]
    last = max(r["last_token_ts"] for r in records)
    for t in np.arange(1.0, last - first_queued + 1.0, 1.0):
        at = first_queued - 0.05 + t + shift_s
        running = sum(r["queued_ts"] <= at < r["last_token_ts"] for r in records)
        rows.append(f"{t},0.0,0.0,{running},0,0.0")
    return "\n".join(rows) + "\n"


def test_the_engines_timeseries_is_compared_tick_by_tick_and_a_bad_one_is_said(tmp_path):
    started = "2023-11-14T22:13:19.950000Z"  # 0.05 s before the first arrival_time, 1_700_000_000
    requests, config = _run(tmp_path / "run", n=200, meta={"vllm_version": "0.19.0", "started_at": started})
    args = ["--measured", str(requests), "--cluster-config", str(config), "--output", str(tmp_path / "v.csv"),
            "--step-time-margin-pct", "0"]
    (tmp_path / "run" / "timeseries.csv").write_text(_ticks(requests))
    line = next(x for x in _cli("validate", *args).output.splitlines() if x.startswith("engine state over "))
    apart = [float(x) for x in re.findall(r"tick by tick ([\d.]+) apart", line)]
    assert "placed at tick time 0" not in line and apart[0] < 1.0, line
    # Counted a second late, the file matches the replay less well tick by tick.
    (tmp_path / "run" / "timeseries.csv").write_text(_ticks(requests, shift_s=1.0))
    late = next(x for x in _cli("validate", *args).output.splitlines() if x.startswith("engine state"))
    assert float(re.findall(r"tick by tick ([\d.]+) apart", late)[0]) > apart[0] + 0.5, (line, late)
    # Without started_at the replay is placed at tick time 0, and the line says so.
    (tmp_path / "run" / "meta.json").write_text(json.dumps({"vllm_version": "0.19.0"}))
    assert "the replay placed at tick time 0 (meta.json has no started_at)" in _cli("validate", *args).output
    # A timeseries that cannot be read, or has no ticks: said, and the comparison above still printed.
    count = "expected a whole number of requests from 0 to 1e+09"
    for text, said in (("t,running,waiting\n1.0,x,0\n", f"line 2, column 'running': {count}, got 'x'"),
                       ("t,running,waiting\n\n1.0,,0\n", f"line 3, column 'running': {count}, got an empty field"),
                       ("t,running,waiting\n", "has no ticks")):
        (tmp_path / "run" / "timeseries.csv").write_text(text)
        res = _cli("validate", *args)
        assert res.exit_code == 0 and "NOTE: engine state not compared: " in res.output and said in res.output
        assert "TTFT (ms)" in res.output
    # A run file of another name is no runner's layout: its neighbour is not taken for its timeseries.
    shutil.copy(requests, tmp_path / "run" / "other.jsonl")
    res = _cli("validate", *[str(tmp_path / "run" / "other.jsonl") if a == str(requests) else a for a in args])
    assert "engine state" not in res.output


@needs_shared
def test_a_replay_off_the_profiles_grid_says_so_in_notes_not_raw_warnings_and_an_fp8_cache_is_said(tmp_path):
    import warnings

    from pdsim.perf.interp import ExtrapolationWarning

    shutil.copytree(RTX / "vllm_run", tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    meta["engine_kwargs"].update(max_num_batched_tokens=8192, kv_cache_dtype="fp8")
    (tmp_path / "run" / "meta.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)  # a raw warning would fail the run
        res = _cli("validate", "--measured", str(tmp_path / "run"), "--cluster-config",
                   str(RTX / "cluster_config.json"), "--profile-dir", str(RTX / "profile"), "--output",
                   str(tmp_path / "v.csv"), "--step-time-margin-pct", "0", "--plot")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "v_engine_state.png").read_bytes()[:4] == b"\x89PNG"  # running and waiting over time
    assert "note: " + str(RTX / "profile" / "tp1") + ": profile table 'attention.csv': prefill_chunk=" in res.output
    assert ("note: kv_cache_dtype fp8: the profile's attention was timed with a bfloat16 KV cache; decode attention, "
            "which streams the cache, is priced at the KV length of the same bytes") in res.output
    # the KV line's arithmetic, under it
    # (vLLM's accounting: the engine ran its default utilization, 0.9, of which the config's mem_util is a copy)
    assert "\n  n0.i0: vLLM's accounting, 95.03 GiB (assumed 99.0% of 96 GB as on H100) x gpu_memory_utilization 0.9" \
        in res.output
    assert f"engine state over 67 ticks of {tmp_path / 'run' / 'timeseries.csv'} (measured / simulated" in res.output
    # The timeseries it read is an input whatever its folder is called: an output over it is refused.
    before = (tmp_path / "run" / "timeseries.csv").read_bytes()
    with pytest.raises(PdsimError, match=r"timeseries.csv: would overwrite the input .*timeseries.csv"):
        _cli("validate", "--measured", str(tmp_path / "run"), "--cluster-config", str(RTX / "cluster_config.json"),
             "--output", str(tmp_path / "run" / "timeseries.csv"))
    assert (tmp_path / "run" / "timeseries.csv").read_bytes() == before


def test_an_output_over_a_case_record_or_the_model_config_beside_the_config_is_refused(tmp_path):
    requests, config = _run(tmp_path / "case" / "vllm_run", meta={"vllm_version": "0.19.0"})
    series = requests.with_name("timeseries.csv")
    series.write_text("t,running\n1.0,3\n")
    model = config.with_name("model_config.json")
    model.write_text("{}")
    for target in (series, model):
        before = target.read_bytes()
        with pytest.raises(PdsimError, match=rf"would overwrite the input .*{target.name}"):
            _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output", str(target))
        assert target.read_bytes() == before


def test_engine_times_in_milliseconds_are_noted(tmp_path):
    requests, _ = _run(tmp_path / "run")
    records = _lines(requests)
    assert not any("read as seconds" in n for n in read_measured(requests).notes)
    stamps = ("queued_ts", "first_token_ts", "last_token_ts")
    _write_lines(requests, [{**r, **{k: r[k] * 1e3 for k in stamps}} for r in records])
    assert any(n.startswith("NOTE: the median time per output token is") and "read as seconds" in n
               for n in read_measured(requests).notes)


def test_a_recorded_or_configured_size_that_is_no_size_names_its_field(tmp_path):
    requests, config = _run(tmp_path / "run", meta={"engine_kwargs": {"data_parallel_size": 0}})
    with pytest.raises(PdsimError, match=r"meta.json: engine_kwargs.data_parallel_size: expected a whole number from"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
             str(tmp_path / "v.csv"))
    requests.with_name("meta.json").write_text(json.dumps({"engine_kwargs": {"tensor_parallel_size": 1}}))
    raw = json.loads(config.read_text())
    raw["nodes"][0]["instances"][0]["tp_size"] = 0
    config.write_text(json.dumps(raw))
    with pytest.raises(PdsimError, match=r"instances\[0\].tp_size: expected a number >= 1, got 0"):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
             str(tmp_path / "v.csv"))


@pytest.mark.parametrize(("value", "words"), [
    ('"5"', "field 'output_toks': expected an integer from 1 to 1e+09, got \"5\""),
    ("1e19", "got 10000000000000000000"),  # was wrapped round to a negative length and replayed
    ("100000000000000000000", "got 100000000000000000000"),  # was an OverflowError
])
def test_an_engine_log_token_count_that_is_no_count_names_file_and_line(tmp_path, value, words):
    requests, config = _run(tmp_path / "run", n=3)
    lines = requests.read_text().splitlines()
    record = json.loads(lines[1])
    lines[1] = json.dumps(record).replace(f'"output_toks": {record["output_toks"]}', f'"output_toks": {value}')
    requests.write_text("\n".join(lines) + "\n")
    with pytest.raises(PdsimError, match=re.escape(f"{requests}:2: {words}") if "field" in words else words):
        read_measured(requests)


BENCH = {"ttfts": [0.05, 0.06], "itls": [[0.01, 0.01], [0.01]], "input_lens": [100, 200], "output_lens": [3, 2],
         "request_rate": "inf"}


@pytest.mark.parametrize(("edit", "words"), [
    ({"ttfts": ["0.1", 0.06]}, "ttfts[0]: field 'ttft': expected a finite number from 0"),
    ({"input_lens": [100]}, "'input_lens': expected a list with one entry per request, like 'ttfts' (2)"),
    ({"request_rate": 0}, "'request_rate': expected a number > 0"),
    ({"request_rate": "abc"}, "'request_rate'"),
    ({"max_concurrency": "x"}, "'max_concurrency'"),
    ({"itls": [[None], [0.01]]}, "itls[0]: field 'itl'"),
    ({"output_lens": [-3, 2]}, "output_lens[0]: field 'output_len': expected an integer from 1"),
    ({"output_lens": [10**20, 2]}, "output_lens[0]"),
    ({"errors": ["boom", "boom"]}, "no successful request"),
    ({"ttfts": [float("inf"), 0.06]}, "ttfts[0]"),
    ({"ttfts": [1e300, 0.06]}, "ttfts[0]: field 'ttft': expected a finite number from 0 to 86400 s"),  # over a day
    ({"itls": [[0.01, 1e6], [0.01]]}, "itls[0]: field 'itl': expected a finite number from 0 to 86400 s"),
])
def test_a_vllm_bench_result_that_is_malformed_names_the_key(tmp_path, edit, words):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({**BENCH, **edit}))
    with pytest.raises(PdsimError, match=re.escape(words)):
        read_measured(path)


def test_a_run_without_meta_json_names_the_batch_limits_it_was_replayed_with(tmp_path):
    # A `vllm bench serve` result records no engine settings: the replay takes the config's (16 seqs, 2048
    # tokens), and says so, as vLLM's defaults depend on how the engine was started.
    _, config = _run(tmp_path / "run", n=3)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(BENCH))
    out = _validate_or_error(bench, config, tmp_path)
    assert ("NOTE: the run records no max_num_seqs or max_num_batched_tokens (no meta.json beside it): replayed "
            "with max_num_seqs 16 and max_num_batched_tokens 2048 (the cluster config's, else") in out


def test_a_recorded_utilization_the_configs_mem_util_overrides_is_a_note_of_its_own(tmp_path):
    requests, config = _run(tmp_path / "run", n=3, meta={"vllm_version": "0.19.0",
                                                          "engine_kwargs": {"gpu_memory_utilization": 0.5}})
    raw = json.loads(config.read_text())
    raw["nodes"][0]["instances"][0]["npu_mem"]["mem_util"] = 0.45  # below the engine's: may be calibrated
    raw["nodes"][0]["instances"][0].pop("gpu_memory_utilization", None)
    config.write_text(json.dumps(raw))
    out = _validate_or_error(requests, config, tmp_path)
    assert ("\nNOTE: meta.json engine_kwargs record gpu_memory_utilization 0.5, but the config's npu_mem.mem_util 0.45 "
            "sizes the KV cache (LLMServingSim's rule") in out
    assert "without npu_mem.mem_util the replay takes that" in out


def _aiperf(folder: Path, metrics: dict, start_ns: object = 1_000_000_000) -> Path:
    base = {"time_to_first_token": {"value": 50.0, "unit": "ms"}, "request_latency": {"value": 150.0, "unit": "ms"},
            "input_sequence_length": {"value": 100, "unit": "tokens"},
            "output_sequence_length": {"value": 11, "unit": "tokens"}}
    folder.mkdir()
    path = folder / "profile_export.jsonl"
    path.write_text(json.dumps({"metadata": {"request_start_ns": start_ns}, "metrics": {**base, **metrics}}) + "\n")
    return path


@pytest.mark.parametrize(("metrics", "start_ns", "words"), [
    ({"input_sequence_length": {"value": "abc", "unit": "tokens"}}, 1, "metrics.input_sequence_length"),
    ({"output_sequence_length": {"value": 0, "unit": "tokens"}}, 1, "metrics.output_sequence_length"),
    ({"time_to_first_token": {"value": -50, "unit": "ms"}}, 1, "metrics.time_to_first_token': expected a finite"),
    ({"time_to_first_token": {"value": "x", "unit": "ms"}}, 1, "metrics.time_to_first_token.value"),
    ({"request_latency": {"value": 10.0, "unit": "ms"}}, 1,
     "metrics.request_latency': expected a finite number from 50 to 8.64e+07 ms"),
    ({"time_to_first_token": {"value": 1e300, "unit": "ms"}}, 1, "time_to_first_token': expected a finite number"),
    ({"inter_chunk_latency": {"value": 3.0, "unit": "ms"}}, 1, "metrics.inter_chunk_latency: expected a list"),
    ({}, "x", "metadata.request_start_ns"),
    ({}, 10**30, "metadata.request_start_ns"),
])
def test_an_aiperf_record_that_is_malformed_names_line_and_metric(tmp_path, metrics, start_ns, words):
    path = _aiperf(tmp_path / "ai", metrics, start_ns)
    with pytest.raises(PdsimError, match=re.escape(f"{path}:1: ") + ".*" + re.escape(words)):
        read_measured(path)


@pytest.mark.parametrize("value", ["4", "4G", True, -1])
def test_recorded_offloading_in_any_form_is_refused_not_ignored(tmp_path, value):
    requests, config = _run(tmp_path / "run", n=3, meta={"vllm_version": "0.19.0",
                                                          "engine_kwargs": {"cpu_offload_gb": value}})
    res = _validate_or_error(requests, config, tmp_path)
    assert "cpu_offload_gb" in res


def _validate_or_error(requests: Path, config: Path, tmp_path: Path, *extra: str) -> str:
    try:
        res = _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
                   str(tmp_path / "v.csv"), "--step-time-margin-pct", "0", *extra)
    except PdsimError as e:
        return str(e)
    return res.output


def test_token_ids_that_are_not_utf8_or_outnumber_the_replay_are_said(tmp_path):
    requests, config = _run(tmp_path / "run", n=3)
    bad = tmp_path / "ids.jsonl"
    bad.write_bytes(b'{"input_tok_ids": [1]}\xe9\n')
    from pdsim.validate.token_ids import read_prompt_ids

    with pytest.raises(PdsimError, match=re.escape(f"{bad}:1: not valid UTF-8")):
        read_prompt_ids(bad)
    # One more prompt than the replay has requests (a request the run left out): matched by length, said.
    run = read_measured(requests)
    ids = tmp_path / "more.jsonl"
    lengths = [*run.requests.input_toks.astype(int), 7]
    ids.write_text("".join(json.dumps({"input_tok_ids": list(range(n))}) + "\n" for n in lengths))
    from pdsim.validate.token_ids import attach_prefix_ids

    attach_prefix_ids(run, ids, 16)
    assert any("1 of the 4 prompts" in note for note in run.notes)


def test_a_timeseries_row_with_a_field_too_many_or_a_negative_count_is_said(tmp_path):
    from pdsim.validate.timeseries import read_timeseries

    path = tmp_path / "timeseries.csv"
    path.write_text("t,running,waiting\n1.0,3,1,9\n")
    with pytest.raises(PdsimError, match="a row has more fields than the header"):
        read_timeseries(path)
    path.write_text("t,running,waiting\n1.0,3,-1\n")
    with pytest.raises(PdsimError, match="line 2, column 'waiting': expected a whole number of requests"):
        read_timeseries(path)


def test_the_table_keeps_a_space_between_columns_whatever_the_figures(tmp_path):
    from pdsim.validate.compare import format_table

    table = pd.DataFrame({"metric": ["TTFT (ms)"], "stat": ["mean"], "measured": [176.7],
                          "simulated": [123_456_789.04], "diff_pct": [69_866_600.0]})
    row = format_table(table).splitlines()[1]
    assert "123,456,789.04 +69866600.0%" in row


def test_the_block_size_the_engine_reported_with_its_kv_size_is_replayed(tmp_path):
    requests, config = _run(tmp_path / "run", n=3, meta={"vllm_version": "0.19.0", "engine_kwargs": {},
                                                          "kv_cache": {"num_gpu_blocks": 5000, "block_size": 32}})
    out = _validate_or_error(requests, config, tmp_path)
    assert "block_size 32 from meta.json kv_cache" in out
    assert "vs measured 160,000 (5,000 blocks" in out
    # The argument asked for 16, the cache ran with 32 (vLLM may change it): the cache's is replayed, and said.
    requests, config = _run(tmp_path / "run2", n=3, meta={
        "vllm_version": "0.19.0", "engine_kwargs": {"block_size": 16},
        "kv_cache": {"num_gpu_blocks": 5000, "block_size": 32}})
    out = _validate_or_error(requests, config, tmp_path, "--kv-capacity", "measured")
    assert ("block_size 32 from meta.json kv_cache, the block size the engine's cache ran with, not engine_kwargs' "
            "16") in out
    assert "the measured engine's 5,000 blocks" in out and "vs measured 160,000 (5,000 blocks" in out


def test_a_request_line_without_a_length_and_a_json_document_are_named_as_such(tmp_path):
    requests, _ = _run(tmp_path / "run", n=4)
    lines = _lines(requests)
    del lines[2]["input_toks"]  # the column exists (other lines have it): this line lacks it, not "null"
    requests.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(PdsimError, match=r"requests.jsonl:3: field 'input_toks' missing; expected a whole number"):
        read_measured(requests)
    lines[2]["input_toks"] = True
    requests.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(PdsimError, match=r"requests.jsonl:3: field 'input_toks': .*, got true"):  # JSON's spelling
        read_measured(requests)
    document = tmp_path / "doc.jsonl"
    document.write_text(json.dumps(lines[0], indent=2))
    with pytest.raises(PdsimError, match=r"doc.jsonl:1: a JSON document over several lines, not JSON lines"):
        read_measured(document)


def test_stamps_that_put_every_last_token_at_the_first_are_refused(tmp_path):
    # All stamps 0 (or one copied into the others) compared TTFT and TPOT of 0 against the replay, "n/a" without a word.
    requests, _ = _run(tmp_path / "run", n=4)
    lines = _lines(requests)
    for line in lines:
        line["last_token_ts"] = line["first_token_ts"]
    requests.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(PdsimError, match=r"requests.jsonl: every request of more than one output token has its "
                                         r"last_token_ts at its first_token_ts"):
        read_measured(requests)


def test_an_aiperf_request_ending_before_it_started_or_of_an_unknown_phase_is_said(tmp_path):
    path = _aiperf(tmp_path / "ai", {}, 5_000_000_000)
    record = json.loads(path.read_text())
    record["metadata"]["request_end_ns"] = 4_000_000_000
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(PdsimError, match=r"profile_export.jsonl:1: metadata.request_end_ns 4000000000 is before "
                                         r"request_start_ns 5000000000"):
        read_measured(path)
    record["metadata"]["request_end_ns"] = 5_200_000_000
    other = {**record, "metadata": {**record["metadata"], "benchmark_phase": "cooldown"}}
    path.write_text(json.dumps(record) + "\n" + json.dumps(other) + "\n")
    run = read_measured(path)
    assert len(run.requests) == 1
    assert ("NOTE: request(s) of a benchmark_phase neither warmup nor profiling left out: 1 of 'cooldown'"
            in run.notes)


def test_each_metric_is_compared_over_the_same_requests_on_both_sides(tmp_path):
    # A request stamped with its end but not its first token (aborted in the engine) had been left out of the
    # measured TTFT but not the simulated one, and one without scheduled_ts likewise for the queueing: a made-up
    # difference of several percent on a replay of the run's own simulation.
    requests, config = _run(tmp_path / "run")
    lines = _lines(requests)
    for i, line in enumerate(lines):
        line["scheduled_ts"] = line["queued_ts"] + 0.001
        if i % 3 == 0:
            line["first_token_ts"] = None
        elif i % 3 == 1:
            line["scheduled_ts"] = None
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    res = _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
               str(tmp_path / "v.csv"), "--step-time-margin-pct", "0")
    assert "10 request(s) without a first or last token time" in res.output
    assert "10 finished request(s) without scheduled_ts: left out of both sides' queueing" in res.output
    table = pd.read_csv(tmp_path / "v.csv").set_index(["metric", "stat"])
    per = pd.read_csv(tmp_path / "v_requests.csv")
    compared = per[per.in_comparison == 1]
    assert len(compared) == 20
    for metric, key in (("TTFT (ms)", "ttft_ms"), ("E2E latency (ms)", "e2e_ms")):
        for side in ("measured", "simulated"):
            assert table.loc[(metric, "mean"), side] == pytest.approx(compared[f"{side}_{key}"].mean(), rel=1e-5)
    queued = compared[compared.measured_queue_ms.notna()]
    assert len(queued) == 10
    assert table.loc[("queueing (ms)", "mean"), "simulated"] == pytest.approx(queued.simulated_queue_ms.mean(),
                                                                             rel=1e-5)


def test_a_stamp_later_than_the_whole_run_lasted_is_refused_with_its_line(tmp_path):
    # One end 3,000 s late in a 66 s run (within the stamps' own plausibility window) had been averaged in (E2E mean
    # +35%); here a minute late in a run of seven seconds.
    meta = {"vllm_version": "0.19.0", "started_at": "2026-04-25T18:47:18Z", "finished_at": "2026-04-25T18:47:25Z"}
    requests, config = _run(tmp_path / "run", meta=meta)
    lines = _lines(requests)
    assert lines[-1]["last_token_ts"] - lines[0]["queued_ts"] < 7
    _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output", str(tmp_path / "a.csv"),
         "--step-time-margin-pct", "0")
    lines[4]["last_token_ts"] += 60  # inside the stamps' own plausibility window, past the recorded run
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    said = (r"requests.jsonl:5: last_token_ts .* is 6\d\.\d s after the run's first queued_ts, but meta.json's "
            r"started_at and finished_at say the run lasted 7.0 s")
    with pytest.raises(PdsimError, match=said):
        _cli("validate", "--measured", str(requests), "--cluster-config", str(config), "--output",
             str(tmp_path / "b.csv"))


def test_a_table_row_repeated_whole_is_said(tmp_path):
    # Each copy is simulated and weighs in the MAPE as a row of its own: said, with the lines.
    table = tmp_path / "t.csv"
    table.write_text(TABLE_HEADER + _row() + _row(ttft="40.0") + _row())
    res = _cli("validate", "--measured", str(table), "--rounds", "1", "--step-time-margin-pct", "0",
               "--output", str(tmp_path / "v.csv"))
    assert "NOTE: 1 row(s) repeat an earlier row whole (line 4): each is simulated and counted" in res.output
    table.write_text(TABLE_HEADER + _row() + _row(ttft="40.0"))
    res = _cli("validate", "--measured", str(table), "--rounds", "1", "--step-time-margin-pct", "0",
               "--output", str(tmp_path / "v.csv"))
    assert "repeat an earlier row" not in res.output
