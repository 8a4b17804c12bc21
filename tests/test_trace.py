import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pdsim.errors import PdsimError, TraceError
from pdsim.workload.cli import workload
from pdsim.workload.generate import generate_requests, parse_length_dist
from pdsim.workload.trace import TraceRequest, load_trace, read_trace, write_trace

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


def test_keys_outside_the_format_are_named(tmp_path):
    # A misspelt hash_ids would turn prefix caching off without a word.
    text = "\n".join([_line(hash_id=[1, 2]), _line(t=5, hash_id=[1], extra=1), _line(t=9, input_tok_ids=[1] * 10)])
    reqs, notes = read_trace(_trace(tmp_path, text + "\n"))
    assert len(reqs) == 3 and not any(r.hash_ids for r in reqs)
    assert notes == [notes[0]] and notes[0].startswith(
        "key(s) not in the trace format, ignored: 'extra' (1 line(s)), 'hash_id' (2 line(s)); its keys are ")
    assert read_trace(_trace(tmp_path, _line(input_tok_ids=[1] * 10, hash_ids=[3]) + "\n"))[1] == []


def test_token_ids_give_prefix_block_ids_as_vllm_hashes_blocks(tmp_path):
    # One id per full 16-token block, chained: equal for equal prefixes, different after the first block that differs.
    shared = list(range(40))
    text = "\n".join([_line(40, t=0, input_tok_ids=shared), _line(50, t=1, input_tok_ids=shared[:32] + [7] * 18),
                      _line(15, t=2, input_tok_ids=shared[:15])]) + "\n"
    (a, b, c), notes = read_trace(_trace(tmp_path, text))
    assert a.hash_block_tokens == b.hash_block_tokens == 16 and len(a.hash_ids) == 2 and len(b.hash_ids) == 3
    assert b.hash_ids[:2] == a.hash_ids and b.hash_ids[2] not in a.hash_ids and c.hash_ids == ()
    assert notes == ["input_tok_ids read as prefix-block ids (16 tokens each, chained as vLLM hashes blocks)"]
    # What `workload stats` says of the prefix reuse: 32 of the 90 prompt tokens of the prompts with a full block.
    from pdsim.workload.stats import prefix_reuse

    assert prefix_reuse([a, b, c])["token_reuse_ratio"] == pytest.approx(32 / 90)
    for bad, expected in ((_line(3, input_tok_ids=[1, 2]), "field 'input_tok_ids': 2 ids, but input_toks is 3"),
                          (_line(2, input_tok_ids=[1, "2"]), "field 'input_tok_ids': expected a list of integers"),
                          (_line(2, input_tok_ids=[1, -1]), "expected token ids from 0 to 4294967295, got -1")):
        with pytest.raises(TraceError, match=expected):
            load_trace(_trace(tmp_path, bad + "\n"))


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


POS = "expected an integer from 1 to 1e+09, got"
ARR = "field 'arrival_time_ns': expected a finite number >= 0"


@pytest.mark.parametrize(
    ("fields", "expect"),
    [
        ('"input_toks": 5, "output_toks": "abc", "arrival_time_ns": 0', f"field 'output_toks': {POS} \"abc\""),
        # Values as the file writes them (NaN, true, "abc"), not as Python does.
        ('"input_toks": NaN, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} NaN"),
        ('"input_toks": 5, "output_toks": Infinity, "arrival_time_ns": 0', f"field 'output_toks': {POS} Infinity"),
        ('"input_toks": -4, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} -4"),
        ('"input_toks": 0, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} 0"),
        ('"input_toks": 2.5, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} 2.5"),
        ('"input_toks": true, "output_toks": 1, "arrival_time_ns": 0', f"field 'input_toks': {POS} true"),
        ('"input_toks": 1, "output_toks": 1, "arrival_time_ns": -1', f"{ARR} (ns), got -1"),
        ('"input_toks": 1, "output_toks": 1, "arrival_time_ns": NaN', f"{ARR} (ns), got NaN"),
        ('"input_toks": 1, "output_toks": 1, "arrival_time_ns": "5"', f"{ARR} (ns), got \"5\""),
    ],
)
def test_bad_values(tmp_path, fields, expect):
    p = _trace(tmp_path, _line() + "\n{" + fields + "}\n")
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert str(e.value) == f"{p}:2: {expect}"


def test_line_not_an_object(tmp_path):
    with pytest.raises(TraceError, match=r"t\.jsonl:1: expected a JSON object, got a list"):
        load_trace(_trace(tmp_path, "[1, 2, 3]\n"))
    with pytest.raises(TraceError, match=r"t\.jsonl:2: expected a JSON object, got null"):  # JSON's word
        load_trace(_trace(tmp_path, _line() + "\nnull\n"))


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
    line = _line(50, 200, 123456789, input_tok_ids=list(range(50))) + "\n"
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
        ("uniform:1.5,1.9", "LO and HI must be whole numbers"),  # every length was drawn as 1
        ("uniform:10,20.5", "LO and HI must be whole numbers"),
        ("lognormal:0,1", "need MEAN >= 1"),
        ("lognormal:1e-300,1", "need MEAN >= 1"),  # (STD/MEAN)^2 overflowed
        ("lognormal:100,1e300", "lengths are at most 1,000,000,000 tokens"),
        ("fixed:1e30", "lengths are at most 1,000,000,000 tokens"),  # wrapped to a negative int64 length
        ("uniform:1,1e30", "lengths are at most 1,000,000,000 tokens"),
        ("normal:100,10,min=99999999999999999999", "lengths are at most 1,000,000,000 tokens"),
        ("normal:10,1,cap=5", "unknown option 'cap'"),
    ],
)
def test_bad_length_spec(spec, why):
    with pytest.raises(PdsimError) as e:
        parse_length_dist(spec, "--input-len")
    msg = str(e.value)
    assert msg.startswith("--input-len: ") and why in msg and "accepted forms: fixed:N" in msg


def test_a_far_lognormal_tail_is_cut_at_the_token_bound():
    lengths = parse_length_dist("lognormal:1e9,1e9").sample(np.random.default_rng(0), 5000)
    assert lengths.min() >= 1 and lengths.max() == 10**9


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


# -- prefix-block ids ------------------------------------------------------------------------------


def test_hash_ids_read_written_and_defaulted(tmp_path):
    text = "\n".join([_line(1000, 5, 0, hash_ids=[0, 1]), _line(600, 5, 7, hash_ids=[0], hash_block_tokens=16),
                      _line(3, 3, 9)]) + "\n"
    reqs = load_trace(_trace(tmp_path, text))
    assert [(r.hash_ids, r.hash_block_tokens) for r in reqs] == [((0, 1), 512), ((0,), 16), ((), 0)]
    out = tmp_path / "w.jsonl"
    write_trace(out, reqs)
    assert load_trace(out) == reqs
    assert "hash_ids" not in out.read_text().splitlines()[2]  # no prefix information: nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl", "w.jsonl"]  # the temporary file is gone


@pytest.mark.parametrize(("extra", "expect"), [
    ({"hash_ids": [1, -2]}, "field 'hash_ids': expected a list of integers from 0 to"),
    ({"hash_ids": "0,1"}, "field 'hash_ids'"),
    ({"hash_ids": [1], "hash_block_tokens": 0}, "field 'hash_block_tokens': expected a positive integer"),
    # checked where the prefix ids do not come from it too
    ({"hash_block_tokens": "abc"}, "field 'hash_block_tokens': expected a positive integer"),
    ({"input_tok_ids": list(range(10)), "hash_block_tokens": 0}, "field 'hash_block_tokens': expected a positive"),
    ({"hash_ids": [1], "input_tok_ids": [5, 6]}, "field 'input_tok_ids': 2 ids, but input_toks is"),
])
def test_bad_hash_ids(tmp_path, extra, expect):
    p = _trace(tmp_path, _line() + "\n" + _line(**extra) + "\n")
    with pytest.raises(TraceError, match=r"t\.jsonl:2: " + expect.replace("[", r"\[")):
        load_trace(p)


# -- arrival processes and shapes ------------------------------------------------------------------


def _times_s(reqs) -> np.ndarray:
    return np.array([r.arrival_time_ns for r in reqs]) / 1e9


def test_gamma_arrivals_have_the_cv_and_rate():
    t = _times_s(generate_requests(20_000, 5.0, "fixed:10", "fixed:10", arrival="gamma", cv=2.0, seed=1))
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.05)
    assert len(gaps) / t[-1] == pytest.approx(5.0, rel=0.05)
    with pytest.raises(PdsimError, match="--cv"):
        generate_requests(5, 1.0, "fixed:1", "fixed:1", arrival="gamma", cv=0)


def test_rate_schedule_counts_per_segment():
    from pdsim.workload.arrivals import parse_rate_schedule

    sched = parse_rate_schedule("0:5,60:20,120:0,150:5")
    t = _times_s(generate_requests(3000, 1.0, "fixed:10", "fixed:10", rate_fn=sched, seed=2))
    counts = np.histogram(t, bins=[0, 60, 120, 150, 180])[0]
    assert counts[2] == 0  # a zero-rate segment gets nothing
    assert counts[0] == pytest.approx(300, abs=4 * 300**0.5)
    assert counts[1] == pytest.approx(1200, abs=4 * 1200**0.5)
    assert counts[3] == pytest.approx(150, abs=4 * 150**0.5)
    for bad in ("5:1,10:2", "0:1,0:2", "0:5,60:0", "0:x", "0-5"):
        with pytest.raises(PdsimError, match="--rate-schedule"):
            parse_rate_schedule(bad)


def test_diurnal_rate_follows_the_sine():
    from pdsim.workload.arrivals import parse_diurnal

    t = _times_s(generate_requests(20_000, 10.0, "fixed:1", "fixed:1", rate_fn=parse_diurnal("100,0.8", 10.0),
                                   seed=3))
    assert len(t) / t[-1] == pytest.approx(10.0, rel=0.03)
    phase = t % 100
    high = ((phase > 15) & (phase < 35)).sum()  # around the peak at 25 s: rate ~ 10 x 1.8
    low = ((phase > 65) & (phase < 85)).sum()  # around the trough at 75 s: rate ~ 10 x 0.2
    assert 6 < high / low < 12  # exact ratio of the integrals: 7.9
    with pytest.raises(PdsimError, match="--diurnal"):
        parse_diurnal("100,1.5", 10.0)


def test_lengths_from_a_trace_keep_pairs():
    src = [TraceRequest(i, 100 + i, 7 * i + 1, 0) for i in range(5)]
    reqs = generate_requests(200, 3.0, "fixed:1", "fixed:1", lengths_from=src, seed=4, max_len=8192)
    pairs = {(r.input_toks, r.output_toks) for r in reqs}
    assert pairs <= {(s.input_toks, s.output_toks) for s in src} and len(pairs) == 5


def test_system_prompts_share_prefix_ids():
    from pdsim.workload.sessions import SystemPrompts

    reqs = generate_requests(2000, 5.0, "fixed:300", "fixed:10", prompts=SystemPrompts(3, 1024, 0.4), seed=5)
    with_prompt = [r for r in reqs if r.input_toks == 1324]
    assert len(with_prompt) == pytest.approx(800, abs=4 * (2000 * 0.24) ** 0.5)
    prefixes = {r.hash_ids[:2] for r in with_prompt}
    assert len(prefixes) == 3  # three prompts of two 512-token blocks each
    assert all(len(r.hash_ids) == 3 and r.hash_block_tokens == 512 for r in with_prompt)
    others = [h for r in reqs if r.input_toks == 300 for h in r.hash_ids]
    seen = {h for r in with_prompt for h in r.hash_ids}
    assert len(set(others)) == len(others) and not seen & set(others)  # unique content has unique ids


def test_sessions_carry_the_conversation_as_prefix():
    reqs = generate_requests(300, 0.5, "fixed:300", "fixed:400", turns="fixed:3", think_time_s=2.0,
                             expected_tpot_ms=20.0, hash_block_tokens=256, seed=6, max_len=100_000)
    firsts = {r.hash_ids[0]: r for r in reqs if r.input_toks == 300}
    assert len(firsts) == 100  # 300 requests, 3 turns each
    by_session: dict[int, list] = {}
    for r in reqs:
        by_session.setdefault(r.hash_ids[0], []).append(r)
    for turns in by_session.values():
        assert [r.input_toks for r in turns] == [300, 1000, 1700]  # previous input + reply + new message
        for a, b in zip(turns, turns[1:]):
            full = (a.input_toks + a.output_toks) // 256
            assert b.hash_ids[: a.input_toks // 256] == a.hash_ids[: a.input_toks // 256]
            assert len(b.hash_ids) == -(-b.input_toks // 256) and len(set(b.hash_ids[full:])) == len(b.hash_ids[full:])
            # The next turn comes a think time after the previous one's expected end (400 x 20 ms).
            assert b.arrival_time_ns - a.arrival_time_ns >= 400 * 20e6
    assert generate_requests(300, 0.5, "fixed:300", "fixed:400", turns="fixed:3", hash_block_tokens=256, seed=6,
                             max_len=100_000) == generate_requests(300, 0.5, "fixed:300", "fixed:400",
                                                                   turns="fixed:3", hash_block_tokens=256, seed=6,
                                                                   max_len=100_000)


def test_sessions_end_when_the_context_outgrows_max_len():
    reqs = generate_requests(50, 1.0, "fixed:300", "fixed:400", turns="fixed:10", max_len=1500, seed=7)
    assert len(reqs) == 50 and max(r.input_toks for r in reqs) <= 1500
    assert {r.input_toks for r in reqs} == {300, 1000}


def test_cli_generate_sessions_and_help(tmp_path):
    out = tmp_path / "s.jsonl"
    args = ["generate", "--num-requests", "40", "--turns", "uniform:2,4", "--system-prompts", "2",
            "--arrival", "gamma", "--cv", "3", "--rate-schedule", "0:1,10:4", "--out", str(out)]
    res = CliRunner().invoke(workload, args)
    assert res.exit_code == 0, res.output
    reqs = load_trace(out)
    assert len(reqs) == 40 and all(r.hash_ids for r in reqs)
    help_text = CliRunner().invoke(workload, ["generate", "--help"]).output
    for option in ("--arrival", "--cv", "--rate-schedule", "--diurnal", "--lengths-from", "--system-prompts",
                   "--system-prompt-len", "--system-prompt-share", "--turns", "--think-time-s",
                   "--expected-tpot-ms", "--hash-block-tokens"):
        assert option in help_text
    res = CliRunner().invoke(workload, ["generate", "--rate-schedule", "0:1", "--diurnal", "10,0.5", "--out", str(out)])
    assert res.exit_code == 2 and "give one of them" in res.output


@pytest.mark.parametrize(("data", "said"), [
    ("utf-16", "not UTF-8 (looks like UTF-16); save the file as UTF-8"),
    (b"\xcf\xff{}", ":1: not valid UTF-8 (byte 0xcf at offset 0)"),
    (b"\0" * 100, "not text (it starts with NUL bytes); expected a UTF-8 text file"),
    ("utf-16-be", "not UTF-8 (looks like UTF-16); save the file as UTF-8"),
    # a NUL byte here and there is binary data, not UTF-16 (it was said to be)
    (b"\x00\x01\x02garbage", "not text (a NUL byte at offset 0: binary data?); expected a UTF-8 text file"),
])
def test_a_trace_that_is_not_utf8_says_so_not_its_bytes(tmp_path, data, said):
    from pdsim.workload.readers import read_dataset as read_any

    p = tmp_path / "t.jsonl"
    p.write_bytes(_line().encode(data) if isinstance(data, str) else data)
    with pytest.raises(TraceError) as e:
        read_any(p)
    assert str(e.value) == f"{p}{said}" if said.startswith(":") else str(e.value) == f"{p}: {said}"


def test_a_long_first_line_cut_inside_a_character_is_still_read(tmp_path):
    # The format is told from the file's first 64 KiB, which may end inside a multi-byte character.
    p = tmp_path / "t.jsonl"
    p.write_text('{"input_toks": 5, "output_toks": 3, "arrival_time_ns": 0, "note": "' + "\u00e9" * 40000 + '"}\n',
                 encoding="utf-8")
    from pdsim.workload.readers import detect_format

    assert detect_format(p) == "pdsim"
