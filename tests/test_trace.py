import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pdsim.errors import PdsimError, TraceError
from pdsim.workload.cli import workload
from pdsim.workload.generate import generate_requests, parse_length_dist
from pdsim.workload.trace import TraceRequest, load_trace, write_trace

EXAMPLE = Path(__file__).resolve().parent.parent / "workloads" / "example_trace.jsonl"


def _trace(tmp_path, text: str) -> Path:
    p = tmp_path / "t.jsonl"
    p.write_text(text)
    return p


def _line(i=10, o=5, t=0, **extra) -> str:
    return json.dumps({"input_toks": i, "output_toks": o, "arrival_time_ns": t, **extra})


def test_load_sorts_by_arrival_stably_and_keeps_file_order_ids(tmp_path):
    text = "\n".join([_line(1, 1, 300), _line(2, 2, 100), "", _line(3, 3, 100), _line(4, 4, 0)]) + "\n"
    reqs = load_trace(_trace(tmp_path, text))
    assert [r.request_id for r in reqs] == [3, 1, 2, 0]
    assert [r.input_toks for r in reqs] == [4, 2, 3, 1]
    assert [r.arrival_time_ns for r in reqs] == [0, 100, 100, 300]


def test_token_ids_accepted_and_floats_that_are_integral(tmp_path):
    text = _line(12.0, 3, 1.6e3, input_tok_ids=list(range(12)), output_tok_ids=[1, 2, 3]) + "\n"
    (r,) = load_trace(_trace(tmp_path, text))
    assert (r.input_toks, r.output_toks, r.arrival_time_ns) == (12, 3, 1600)
    assert type(r.input_toks) is int and type(r.arrival_time_ns) is int


def test_max_requests_keeps_earliest(tmp_path):
    text = "\n".join(_line(t=t) for t in (50, 10, 30, 20)) + "\n"
    reqs = load_trace(_trace(tmp_path, text), max_requests=2)
    assert [r.arrival_time_ns for r in reqs] == [10, 20]


def test_malformed_line_reports_line_number(tmp_path):
    p = _trace(tmp_path, _line() + "\n\n" + '{"input_toks": 3, \n')
    with pytest.raises(TraceError, match=r"t\.jsonl:3: not valid JSON"):
        load_trace(p)


def test_missing_field(tmp_path):
    p = _trace(tmp_path, _line() + "\n" + json.dumps({"output_toks": 3, "arrival_time_ns": 0}) + "\n")
    with pytest.raises(TraceError, match=r"t\.jsonl:2: missing field 'input_toks'$"):
        load_trace(p)


POS = "expected a positive integer, got"
ARR = "field 'arrival_time_ns': expected a finite number >= 0"


@pytest.mark.parametrize(
    ("fields", "expect"),
    [
        ('"input_toks": 5, "output_toks": "abc", "arrival_time_ns": 0', f"field 'output_toks': {POS} 'abc'"),
        ('"input_toks": NaN, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} nan"),
        ('"input_toks": 5, "output_toks": Infinity, "arrival_time_ns": 0', f"field 'output_toks': {POS} inf"),
        ('"input_toks": -4, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} -4"),
        ('"input_toks": 0, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} 0"),
        ('"input_toks": 2.5, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} 2.5"),
        ('"input_toks": true, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} True"),
        ('"input_toks": 1, "output_toks": 1, "arrival_time_ns": -1', f"{ARR} (ns), got -1"),
        ('"input_toks": 1, "output_toks": 1, "arrival_time_ns": NaN', f"{ARR} (ns), got nan"),
        ('"input_toks": 1, "output_toks": 1, "arrival_time_ns": "5"', f"{ARR} (ns), got '5'"),
    ],
)
def test_bad_values(tmp_path, fields, expect):
    p = _trace(tmp_path, _line() + "\n{" + fields + "}\n")
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert str(e.value) == f"{p}:2: {expect}"


def test_line_not_an_object(tmp_path):
    with pytest.raises(TraceError, match=r"t\.jsonl:1: expected a JSON object, got list"):
        load_trace(_trace(tmp_path, "[1, 2, 3]\n"))


def test_empty_trace(tmp_path):
    with pytest.raises(TraceError, match="has no requests"):
        load_trace(_trace(tmp_path, "\n  \n"))


def test_missing_file(tmp_path):
    with pytest.raises(TraceError, match="trace file not found"):
        load_trace(tmp_path / "none.jsonl")


def test_write_then_load_roundtrip(tmp_path):
    reqs = [TraceRequest(0, 7, 3, 0), TraceRequest(1, 9, 4, 2_000_000_000)]
    p = tmp_path / "sub" / "rt.jsonl"
    write_trace(p, reqs)
    assert load_trace(p) == reqs
    assert json.loads(p.read_text().splitlines()[1]) == {
        "input_toks": 9,
        "output_toks": 4,
        "arrival_time_ns": 2000000000,
    }


def test_load_is_fast(tmp_path):
    line = _line(1000, 200, 123456789, input_tok_ids=list(range(50))) + "\n"
    p = _trace(tmp_path, line * 100_000)
    start = time.perf_counter()
    assert len(load_trace(p)) == 100_000
    assert time.perf_counter() - start < 5.0  # ~0.5 s on a laptop; generous for slow CI


def test_example_trace_loads():
    reqs = load_trace(EXAMPLE)
    assert len(reqs) == 200
    assert max(r.input_toks for r in reqs) <= 4096 and max(r.output_toks for r in reqs) <= 1024


# ---- generator ----


def test_generator_is_deterministic():
    a = generate_requests(50, 4.0, "lognormal:1000,500", "uniform:10,20", seed=7)
    b = generate_requests(50, 4.0, "lognormal:1000,500", "uniform:10,20", seed=7)
    c = generate_requests(50, 4.0, "lognormal:1000,500", "uniform:10,20", seed=8)
    assert a == b and a != c
    assert [r.request_id for r in a] == list(range(50))
    assert all(10 <= r.output_toks <= 20 for r in a)


def test_lognormal_mean_std_and_poisson_rate():
    reqs = generate_requests(20_000, 5.0, "lognormal:1000,400", "lognormal:200,100", seed=1)
    inp = np.array([r.input_toks for r in reqs])
    out = np.array([r.output_toks for r in reqs])
    assert inp.mean() == pytest.approx(1000, rel=0.03) and inp.std() == pytest.approx(400, rel=0.06)
    assert out.mean() == pytest.approx(200, rel=0.03)
    t_s = np.array([r.arrival_time_ns for r in reqs]) / 1e9
    assert t_s[0] == 0 and np.all(np.diff(t_s) >= 0)
    assert (len(t_s) - 1) / t_s[-1] == pytest.approx(5.0, rel=0.03)
    gaps = np.diff(t_s)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential gaps


def test_uniform_and_burst_arrivals_and_fixed_lengths():
    u = generate_requests(5, 2.0, "fixed:100", "fixed:10", arrival="uniform")
    assert [r.arrival_time_ns for r in u] == [0, 500_000_000, 1_000_000_000, 1_500_000_000, 2_000_000_000]
    assert {(r.input_toks, r.output_toks) for r in u} == {(100, 10)}
    assert {r.arrival_time_ns for r in generate_requests(5, 2.0, "fixed:1", "fixed:1", arrival="burst")} == {
        0
    }


def test_clipping():
    reqs = generate_requests(2000, 1.0, "normal:100,300,min=20,max=150", "lognormal:500,800", max_len=600)
    assert min(r.input_toks for r in reqs) == 20 and max(r.input_toks for r in reqs) == 150
    assert max(r.output_toks for r in reqs) == 600


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("gauss:1,2", "unknown distribution 'gauss'"),
        ("1000", "missing 'KIND:'"),
        ("fixed:1,2", "fixed takes 1 number(s), got 2"),
        ("uniform:10,x", "'x' is not a number"),
        ("uniform:20,10", "need 1 <= LO <= HI"),
        ("lognormal:0,1", "need MEAN > 0"),
        ("normal:10,1,cap=5", "unknown option 'cap'"),
    ],
)
def test_bad_length_spec(spec, why):
    with pytest.raises(PdsimError) as e:
        parse_length_dist(spec, "--input-len")
    msg = str(e.value)
    assert msg.startswith("--input-len: ") and why in msg and "accepted forms: fixed:N" in msg


def test_bad_rate_and_arrival():
    with pytest.raises(PdsimError, match="--rate"):
        generate_requests(5, 0.0, "fixed:1", "fixed:1")
    with pytest.raises(PdsimError, match="--arrival: unknown process 'weibull'"):
        generate_requests(5, 1.0, "fixed:1", "fixed:1", arrival="weibull")


def test_cli_generate(tmp_path):
    out = tmp_path / "g.jsonl"
    args = ["generate", "--num-requests", "30", "--rate", "3", "--input-len", "uniform:5,9", "--seed", "3"]
    res = CliRunner().invoke(workload, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"wrote 30 requests to {out}")
    reqs = load_trace(out)
    assert reqs == generate_requests(30, 3.0, "uniform:5,9", "lognormal:200,100", seed=3, max_len=8192)
    bad = CliRunner().invoke(workload, ["generate", "--input-len", "zipf:1", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown distribution 'zipf'" in bad.output
