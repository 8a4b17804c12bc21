"""`pdsim workload generate` refuses options that would change nothing, instead of ignoring them.

Each refusal is checked through the CLI (exit code 2, the option named, no traceback, no trace
written). An option spelled out at its default value (a script that always passes it) is noted as
ignored instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pdsim.errors import PdsimError
from pdsim.workload.cli import workload
from pdsim.workload.generate import generate_requests, parse_length_dist
from pdsim.workload.trace import load_trace


def _generate(tmp_path: Path, *args: str) -> tuple[Result, Path]:
    out = tmp_path / "g.jsonl"
    res = CliRunner().invoke(workload, ["generate", "--num-requests", "20", *args, "--out", str(out)])
    return res, out


def _refused(tmp_path: Path, args: list[str], *words: str) -> str:
    res, out = _generate(tmp_path, *args)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # a message, not a traceback
    assert "Traceback" not in res.output
    for word in words:
        assert word in res.output, (word, res.output)
    assert not out.exists()
    return res.output


@pytest.mark.parametrize("over_time", [["--rate-schedule", "0:5,10:20"], ["--diurnal", "100,0.5"]])
def test_a_rate_over_time_is_refused_with_burst(tmp_path: Path, over_time: list[str]) -> None:
    _refused(tmp_path, ["--arrival", "burst", *over_time], over_time[0], "--arrival burst")


def test_rate_and_rate_schedule_together_are_refused(tmp_path: Path) -> None:
    _refused(tmp_path, ["--rate", "7", "--rate-schedule", "0:5,10:20"], "--rate 7", "--rate-schedule")


def test_an_option_at_its_default_that_does_not_apply_is_noted_not_refused(tmp_path: Path) -> None:
    # A script looping over --system-prompts 0,4,8 with --system-prompt-len 1024 (the default) keeps working.
    res, out = _generate(tmp_path, "--system-prompts", "0", "--system-prompt-len", "1024", "--cv", "2")
    assert res.exit_code == 0, res.output
    note = "note: --system-prompt-len 1024: given at its default value, which does not apply here; ignored"
    assert note in res.output
    assert "note: --cv 2.0: given at its default value" in res.output and len(load_trace(out)) == 20


@pytest.mark.parametrize("arrival", [[], ["--arrival", "poisson"], ["--arrival", "uniform"], ["--arrival", "burst"]])
def test_cv_is_refused_unless_the_arrivals_are_gamma(tmp_path: Path, arrival: list[str]) -> None:
    text = _refused(tmp_path, [*arrival, "--cv", "3"], "--cv 3", "only --arrival gamma")
    assert ("(the default)" in text) == (not arrival)


def test_lengths_format_is_refused_without_lengths_from(tmp_path: Path) -> None:
    _refused(tmp_path, ["--lengths-format", "azure"], "--lengths-format azure", "--lengths-from")


@pytest.mark.parametrize("prompts", [[], ["--system-prompts", "0"]])
def test_system_prompt_knobs_are_refused_without_system_prompts(tmp_path: Path, prompts: list[str]) -> None:
    _refused(tmp_path, [*prompts, "--system-prompt-len", "512", "--system-prompt-share", "0.5"],
             "--system-prompt-len and --system-prompt-share", "--system-prompts N")
    text = _refused(tmp_path, [*prompts, "--system-prompt-share", "0.4"], "--system-prompt-share")
    assert "--system-prompt-len" not in text  # only the knobs given are named


@pytest.mark.parametrize("turns", [[], ["--turns", "fixed:1"], ["--turns", "uniform:1,1"],
                                   ["--turns", "lognormal:3,1,max=1"]])
@pytest.mark.parametrize("timing", ["--think-time-s", "--expected-tpot-ms"])
def test_turn_timing_is_refused_without_a_second_turn(tmp_path: Path, turns: list[str], timing: str) -> None:
    _refused(tmp_path, [*turns, timing, "12"], timing, "--turns")


def test_hash_block_tokens_is_refused_without_prompts_or_turns(tmp_path: Path) -> None:
    _refused(tmp_path, ["--hash-block-tokens", "256"], "--hash-block-tokens 256", "--system-prompts", "--turns")


@pytest.mark.parametrize(("args", "option"), [
    (["--input-len", "9000"], "--input-len"),  # a bare N is fixed:N
    (["--output-len", "fixed:8193"], "--output-len"),
    (["--input-len", "uniform:9000,9500"], "--input-len"),
    (["--input-len", "lognormal:1000,400,min=200", "--max-len", "100"], "--input-len"),
])
def test_a_length_spec_entirely_above_max_len_is_refused(tmp_path: Path, args: list[str], option: str) -> None:
    _refused(tmp_path, args, option, "--max-len")


def test_max_len_still_trims_the_tail_of_a_distribution(tmp_path: Path) -> None:
    res, out = _generate(tmp_path, "--input-len", "uniform:100,900", "--output-len", "lognormal:300,300",
                         "--max-len", "500")
    assert res.exit_code == 0, res.output
    reqs = load_trace(out)
    assert max(r.input_toks for r in reqs) == 500 and max(r.output_toks for r in reqs) <= 500
    res, out = _generate(tmp_path, "--input-len", "fixed:500", "--max-len", "500")  # at the cap: fine
    assert res.exit_code == 0, res.output


def test_the_library_refuses_a_fixed_length_above_max_len_too() -> None:
    with pytest.raises(PdsimError, match="--output-len: 'fixed:200' is a fixed length of 200, above --max-len 100"):
        generate_requests(5, 1.0, "fixed:10", "fixed:200", max_len=100)
    assert parse_length_dist("uniform:100,200,max=150", "--input-len", 300).bounds() == (100, 150)  # its own max=
    assert parse_length_dist("uniform:5,9").bounds() == (5, 9)
    assert parse_length_dist("normal:50,10,min=3", max_len=80).bounds() == (3, 80)


def test_valid_combinations_still_work(tmp_path: Path) -> None:
    # Every option here applies: the gamma CV, the schedule, prompts with their knobs, turns with their timing.
    res, out = _generate(tmp_path, "--arrival", "gamma", "--cv", "3", "--rate-schedule", "0:1,10:4",
                         "--system-prompts", "2", "--system-prompt-len", "512", "--system-prompt-share", "0.5",
                         "--turns", "uniform:1,3", "--think-time-s", "5", "--expected-tpot-ms", "20",
                         "--hash-block-tokens", "256", "--input-len", "8192", "--max-len", "16384")
    assert res.exit_code == 0, res.output
    reqs = load_trace(out)
    assert len(reqs) == 20 and all(r.hash_ids and r.hash_block_tokens == 256 for r in reqs)
    for args in (["--arrival", "burst"], ["--arrival", "uniform", "--diurnal", "100,0.5"],
                 ["--hash-block-tokens", "64", "--turns", "fixed:1"], ["--turns", "fixed:2", "--think-time-s", "0"],
                 ["--arrival", "gamma", "--cv", "2"]):
        res, _ = _generate(tmp_path, *args)
        assert res.exit_code == 0, (args, res.output)


def test_the_help_says_where_each_option_applies() -> None:
    text = " ".join(CliRunner().invoke(workload, ["generate", "--help"]).output.split())
    for phrase in ("--arrival gamma only", "Not with --arrival burst", "--system-prompts: tokens in each",
                   "--turns (more than one turn): mean", "a length spec that gives only more"):
        assert phrase in text, phrase


@pytest.mark.parametrize(("args", "words"), [
    # Arrivals past the clock wrapped to int64's least value at exit 0.
    (["--rate", "1e-10"], ["--rate: the requests would arrive over", "past the simulator's clock"]),
    (["--rate-schedule", "0:1e-10"], ["--rate-schedule/--diurnal: the requests would arrive over"]),
    (["--rate", "0", "--diurnal", "100,0.5"], ["--rate: expected a finite number of requests/s > 0"]),
    (["--rate", "nan", "--diurnal", "100,0.5"], ["--rate: expected a finite number"]),
    (["--arrival", "gamma", "--cv", "1e155"], ["--cv: expected a number >= 1e-06 and <= 1e+06"]),
    (["--seed", "-1"], ["--seed: expected a seed >= 0"]),
    (["--turns", "fixed:3", "--think-time-s", "inf"], ["--think-time-s: expected a time (s)"]),
    (["--turns", "fixed:3", "--think-time-s", "1e9", "--num-requests", "30"],
     ["the last turn would arrive at", "past the simulator's clock"]),
    (["--system-prompts", "1000000", "--system-prompt-len", "100000", "--hash-block-tokens", "1"],
     ["100,000,000,000 prefix ids to build, more than 10,000,000"]),
    (["--input-len", "fixed:1e30"], ["lengths are at most 1,000,000,000 tokens"]),
    (["--rate-schedule", ""], ["--rate-schedule: the first time must be 0"]),  # was ignored at exit 0
    (["--diurnal", ""], ["--diurnal: expected PERIOD_S,AMPLITUDE"]),
    (["--lengths-from", str(Path(__file__).resolve().parent.parent / "workloads" / "example_trace.jsonl"),
      "--lengths-format", "foo"], ["--lengths-format: unknown format 'foo'"]),
])
def test_values_past_the_simulators_bounds_are_refused(tmp_path: Path, args: list[str], words: list[str]) -> None:
    _refused(tmp_path, args, *words)


def test_generate_measures_the_rate_from_the_first_arrival(tmp_path):
    # A schedule that starts idle: a run's clock (and workload stats) start at the first arrival.
    from click.testing import CliRunner

    from pdsim.workload.cli import workload

    res = CliRunner().invoke(workload, ["generate", "--num-requests", "5", "--rate-schedule", "0:0,60:5", "--out",
                                        str(tmp_path / "g.jsonl")])
    assert res.exit_code == 0, res.output
    assert "from the first at 60.0 s (a run's clock starts there)" in res.output
    assert "0.07 req/s" not in res.output


@pytest.mark.parametrize("spec", ["fixed:10,max=5", "uniform:10,20,min=30"])
def test_a_bound_outside_the_lengths_asked_for_is_refused(spec):
    from pdsim.errors import PdsimError
    from pdsim.workload.generate import parse_length_dist

    with pytest.raises(PdsimError, match="min/max lie outside"):
        parse_length_dist(spec, "--input-len")
    assert parse_length_dist("uniform:10,20,min=15", "--input-len").min_len == 15  # a partial clip stays


def test_lengths_from_says_how_many_pairs_the_default_cap_cut(tmp_path):
    from click.testing import CliRunner

    from pdsim.workload.cli import workload

    source = tmp_path / "src.jsonl"
    source.write_text("".join(json.dumps({"input_toks": n, "output_toks": 5, "arrival_time_ns": i})
                              + "\n" for i, n in enumerate([100, 9000, 20000])))
    res = CliRunner().invoke(workload, ["generate", "--num-requests", "5", "--lengths-from", str(source), "--out",
                                        str(tmp_path / "g.jsonl")])
    assert res.exit_code == 0, res.output
    assert "--max-len 8192 caps 2 of the 3 length pairs" in res.output


def test_a_drawn_length_tail_cut_at_max_len_is_said(tmp_path):
    res, out = _generate(tmp_path, "--input-len", "lognormal:4000,3000", "--output-len", "fixed:8192", "--max-len",
                         "8192")
    assert res.exit_code == 0, res.output
    at_cap = sum(r.input_toks == 8192 for r in load_trace(out))
    assert at_cap > 0 and f"note: --max-len 8192 cut the drawn lengths' tail: {at_cap} inputs of 20" in res.output
    assert "outputs" not in res.output.split("note:")[1].split("\n")[0]  # a fixed length is not a cut tail
    for spec, said in (("lognormal:100,10", False), ("lognormal:4000,3000,max=8192", False),  # its own max cuts
                       ("normal:4000,3000,min=8192", False), ("uniform:100,100000", True)):
        res, _ = _generate(tmp_path, "--input-len", spec, "--max-len", "8192")
        assert res.exit_code == 0 and ("cut the drawn lengths' tail" in res.output) is said, (spec, res.output)
