import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pdsim.errors import TraceError
from pdsim.workload.cli import workload
from pdsim.workload.readers import detect_format, load_dataset, parse_window, read_dataset
from pdsim.workload.trace import load_trace

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO.parent / "shared" / "data" / "traces"
needs_shared = pytest.mark.skipif(not TRACES.is_dir(), reason="no ../shared/data/traces (real traces)")

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:48.1000000,1000,5
"""
AZURE_2024 = """TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-10 00:00:00.0097750+00:00,4808,10
2024-05-10 00:00:01.5097750+00:00,100,20
"""
BURST = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
46,GPT-4,417,276,693,Conversation log
47,ChatGPT,200,30,230,API log
80.5,ChatGPT,10,300,310,Conversation log
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _mooncake_line(t=0, i=1000, o=10, ids=(0, 1)) -> str:
    return json.dumps({"timestamp": t, "input_length": i, "output_length": o, "hash_ids": list(ids)})


def test_azure_2023_sorted_rebased_ns(tmp_path):
    p = _write(tmp_path, "a.csv", AZURE)
    d = read_dataset(p)
    assert d.fmt == "azure"
    assert [(r.request_id, r.input_toks, r.output_toks) for r in d.requests] == [(0, 374, 44), (2, 1000, 5),
                                                                                  (1, 396, 109)]
    # 7-digit fractions: 100 ns resolution kept exactly.
    assert [r.arrival_time_ns for r in d.requests] == [0, 1_419_410_000, 4_314_579_000]


def test_azure_2024_layout_with_utc_offset(tmp_path):
    reqs = load_dataset(_write(tmp_path, "a.csv", AZURE_2024))
    assert [r.arrival_time_ns for r in reqs] == [0, 1_500_000_000]
    assert reqs[0].input_toks == 4808
    # Rows with and without an offset in one file: the naive ones were read as UTC beside local times, silently.
    mixed = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,374,44\n2023-11-16 18:15:47+05:00,100,10\n"
    with pytest.raises(TraceError, match=r"m.csv:3: field 'TIMESTAMP': '2023-11-16 18:15:47\+05:00' has a UTC offset "
                                         "where the trace's other rows have none"):
        load_dataset(_write(tmp_path, "m.csv", mixed + "2023-11-16 18:15:48,10,10\n"))


@pytest.mark.parametrize(("row", "field", "line"), [
    ("2023-11-16 18:15:47.0,abc,4", "ContextTokens", 3),
    ("2023-11-16 18:15:47.0,12.5,4", "ContextTokens", 3),
    ("2023-11-16 18:15:47.0,12,-1", "GeneratedTokens", 3),
    ("yesterday,12,4", "TIMESTAMP", 3),
])
def test_azure_bad_cell_names_file_line_field(tmp_path, row, field, line):
    p = _write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,1,1\n" + row + "\n")
    with pytest.raises(TraceError, match=rf"a\.csv:{line}: field '{field}'"):
        read_dataset(p)


def test_a_numeric_azure_timestamp_is_shown_as_written(tmp_path):
    p = _write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n1700000000,1,1\n1700000001,2,2\n")
    with pytest.raises(TraceError, match=r"a\.csv:2: field 'TIMESTAMP': expected a date-time such as .*, got "
                                         r"1700000000$"):
        read_dataset(p)


def test_a_bad_cell_after_blank_lines_is_named_by_its_own_line(tmp_path):
    # pandas skips blank lines (whitespace-only too, and before the header): row + 2 named line 3 here.
    p = _write(tmp_path, "a.csv", "\nTIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,1,1\n\n  \n"
                                  "2023-11-16 18:15:47.0,abc,4\n")
    with pytest.raises(TraceError, match=r"a\.csv:6: field 'ContextTokens'"):
        read_dataset(p)
    # pandas reads a .gz CSV through its suffix: the lines are counted in the text, not the compressed bytes.
    import gzip

    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    with pytest.raises(TraceError, match=r"a\.csv\.gz:6: field 'ContextTokens'"):
        read_dataset(gz, "azure")


def test_azure_missing_column_named(tmp_path):
    p = _write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,Other\n2023-11-16 18:15:46.0,1,1\n")
    with pytest.raises(TraceError, match="lacks column.*GeneratedTokens"):
        read_dataset(p, "azure")


def test_mooncake_hash_ids_and_ms(tmp_path):
    text = "\n".join([_mooncake_line(0, 1000, 5, (0, 1)), "", _mooncake_line(1500, 600, 7, (0, 2))]) + "\n"
    reqs = load_dataset(_write(tmp_path, "m.jsonl", text))
    assert [r.arrival_time_ns for r in reqs] == [0, 1_500_000_000]
    assert reqs[1].hash_ids == (0, 2) and reqs[1].hash_block_tokens == 512
    assert (reqs[1].input_toks, reqs[1].output_toks) == (600, 7)


@pytest.mark.parametrize(("line", "expect"), [
    ('{"timestamp": 0, "input_length": 5}', "m.jsonl:2: missing field 'output_length'"),
    ('{"timestamp": -3, "input_length": 5, "output_length": 1}', "m.jsonl:2: field 'timestamp'"),
    ('{"timestamp": 0, "input_length": 0, "output_length": 1}', "m.jsonl:2: field 'input_length'"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1, "x"]}', "m.jsonl:2: field 'hash_ids'"),
    ('{"timestamp": 0, "input_length": 5,', "m.jsonl:2: not valid JSON"),
    ('[1, 2]', "m.jsonl:2: expected a JSON object"),
])
def test_mooncake_bad_lines(tmp_path, line, expect):
    p = _write(tmp_path, "m.jsonl", _mooncake_line() + "\n" + line + "\n")
    with pytest.raises(TraceError) as e:
        read_dataset(p, "mooncake")
    assert expect in str(e.value)


def test_burstgpt_filters_and_failures(tmp_path):
    p = _write(tmp_path, "b.csv", BURST)
    d = read_dataset(p)
    assert d.fmt == "burstgpt"
    assert [r.input_toks for r in d.requests] == [472, 417, 200, 10]  # the failed row (0 response) left out
    assert any("1 failed request" in n for n in d.notes)
    d = read_dataset(p, "burstgpt:model=ChatGPT,log=Conversation log")
    assert [r.input_toks for r in d.requests] == [472, 10]
    assert [r.arrival_time_ns for r in d.requests] == [0, 75_500_000_000]
    with pytest.raises(TraceError, match="no row has Model 'Claude'"):
        read_dataset(p, "burstgpt:model=Claude")
    with pytest.raises(TraceError, match="burstgpt takes options model=..., log=..."):
        read_dataset(p, "burstgpt:colour=red")
    with pytest.raises(TraceError, match=r"model= given twice \('ChatGPT' and 'GPT-4'\); give it once"):
        read_dataset(p, "burstgpt:model=ChatGPT,model=GPT-4")
    bad = _write(tmp_path, "bad.csv", BURST.replace("47,ChatGPT,200", "47,ChatGPT,many"))
    with pytest.raises(TraceError, match=r"bad\.csv:5: field 'Request tokens'"):
        read_dataset(bad)


def test_sharegpt_estimate_and_given_counts(tmp_path):
    convs = [
        {"id": "a", "conversations": [{"from": "human", "value": "x" * 400}, {"from": "gpt", "value": "y" * 81}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "hi"}]},  # no prompt-reply pair: left out
        {"id": "c", "input_tokens": 12, "output_tokens": 3},
        {"id": "d", "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}]},  # empty: out
    ]
    d = read_dataset(_write(tmp_path, "s.json", json.dumps(convs)))
    assert d.fmt == "sharegpt" and not d.has_times
    assert [(r.input_toks, r.output_toks) for r in d.requests] == [(100, 20), (12, 3)]
    assert {r.arrival_time_ns for r in d.requests} == {0}
    assert any("2 conversation(s)" in n for n in d.notes)
    d = read_dataset(tmp_path / "s.json", "sharegpt:chars_per_token=2")
    assert d.requests[0].input_toks == 200
    bad = [{"id": "a", "conversations": "oops"}]
    with pytest.raises(TraceError, match=r"s2\.json: conversation 0: field 'conversations'"):
        read_dataset(_write(tmp_path, "s2.json", json.dumps(bad)))
    with pytest.raises(TraceError, match=r"s3\.json: conversation 1: expected a conversation object, got null$"):
        read_dataset(_write(tmp_path, "s3.json", json.dumps([convs[0], None])))


def test_vllm_bench_result_reused_from_measured(tmp_path):
    obj = {"ttfts": [0.1, 0.2, 0.0], "itls": [[0.01], [0.02], []], "input_lens": [100, 200, 300],
           "output_lens": [2, 2, 0], "errors": ["", "", "timeout"], "start_times": [10.0, 10.5, 11.0],
           "request_rate": 4}
    p = _write(tmp_path, "bench.json", json.dumps(obj, indent=2))
    d = read_dataset(p)
    assert d.fmt == "vllm-bench"
    assert [(r.input_toks, r.arrival_time_ns) for r in d.requests] == [(100, 0), (200, 500_000_000)]
    assert any("1 failed" in n for n in d.notes)
    obj["max_concurrency"] = 8
    # A rate held to a concurrency: the start times are the sends, the cap in them (a closed loop drops the rate).
    notes = read_dataset(_write(tmp_path, "bench_c.json", json.dumps(obj))).notes
    assert any("the recorded start_times (request rate 4/s held to max_concurrency 8" in n for n in notes)
    assert not any("--concurrency" in n for n in notes)
    obj["request_rate"] = "inf"  # no rate, a concurrency: a closed loop
    assert any("replay it with --concurrency 8" in n for n in read_dataset(
        _write(tmp_path, "bench_ci.json", json.dumps(obj))).notes)
    obj.pop("max_concurrency")
    obj.pop("start_times")
    assert any("every request arrives at once" in n for n in read_dataset(
        _write(tmp_path, "bench_inf.json", json.dumps(obj))).notes)
    obj.update(request_rate=2, max_concurrency=4)
    assert any("spaced evenly at the request rate 2/s; max_concurrency 4 is not modelled" in n for n in read_dataset(
        _write(tmp_path, "bench_r.json", json.dumps(obj))).notes)
    obj["start_times"] = [10.0, 10.5, 11.0]
    # More gaps than tokens: output_lens cannot be right (TPOT divides by them).
    odd = {**obj, "itls": [[0.01, 0.01, 0.01], [0.02], []]}
    assert any("NOTE: 1 request(s) have more inter-token gaps than output tokens after the first (the first: request "
               "0, 3 gaps for output_len 2)" in n for n in read_dataset(_write(tmp_path, "bench_g.json",
                                                                              json.dumps(odd))).notes)
    del obj["input_lens"]
    with pytest.raises(TraceError, match="missing 'input_lens'"):
        read_dataset(_write(tmp_path, "bench2.json", json.dumps(obj)), "vllm-bench")


def test_window_time_scale_and_cap(tmp_path):
    lines = [_mooncake_line(t * 1000, 100 + t, 5, ()) for t in range(10)]  # one a second
    p = _write(tmp_path, "m.jsonl", "\n".join(lines) + "\n")
    reqs = load_dataset(p, window="2:5")
    assert [r.input_toks for r in reqs] == [102, 103, 104]
    assert [r.arrival_time_ns for r in reqs] == [0, 1_000_000_000, 2_000_000_000]
    reqs = load_dataset(p, window="2:", time_scale=0.5, max_requests=3)
    assert [r.arrival_time_ns for r in reqs] == [0, 500_000_000, 1_000_000_000]
    with pytest.raises(TraceError, match="no request in the window"):
        load_dataset(p, window="100:200")
    for bad in ("5:2", "abc", "3", "-1:4"):
        with pytest.raises(TraceError, match="--window"):
            parse_window(bad)
    with pytest.raises(TraceError, match="--time-scale"):
        load_dataset(p, time_scale=0)


def test_a_format_given_that_the_file_is_not_names_the_one_it_is(tmp_path):
    azure = _write(tmp_path, "azure.csv",
                   "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n")
    with pytest.raises(TraceError, match=r"azure\.csv:1: not valid JSON .*--dataset-format mooncake was given, but "
                                         r"the file reads as the azure format: give --dataset-format azure"):
        read_dataset(azure, "mooncake")
    assert len(read_dataset(azure, "azure").requests) == 1
    odd = _write(tmp_path, "odd.csv", "a,b,c\n1,2,3\n")  # no format told: the reader's own error alone
    with pytest.raises(TraceError) as e:
        read_dataset(odd, "azure")
    assert "was given" not in str(e.value)


def test_undetectable_format_says_how(tmp_path):
    p = _write(tmp_path, "x.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match=r"x\.csv:1: cannot tell the trace's format.*--dataset-format"):
        detect_format(p)
    with pytest.raises(TraceError, match="unknown format 'parquet'"):
        read_dataset(p, "parquet")
    # pdsim's own columns written as a CSV: how to write them as pdsim reads them.
    csv = _write(tmp_path, "own.csv", "input_toks,output_toks,arrival_time_ns\n10,5,0\n")
    with pytest.raises(TraceError, match=r"own.csv: a CSV of pdsim's trace columns; pdsim reads them as JSONL"):
        detect_format(csv)
    # A pdsim trace with a misspelt key: the key it likely meant is named.
    typo = _write(tmp_path, "t.jsonl", '{"input_tokens": 10, "output_toks": 5, "arrival_time_ns": 0}\n')
    with pytest.raises(TraceError, match=r"; 'input_tokens' \(did you mean 'input_toks'\?\); give --dataset-format"):
        detect_format(typo)


def test_formats_are_told_from_a_quoted_header_and_from_token_ids_filling_the_head(tmp_path):
    quoted = _write(tmp_path, "q.csv", "\n".join(['"' + '","'.join(line.split(",")) + '"' if i == 0 else line
                                                   for i, line in enumerate(AZURE.splitlines())]) + "\n")
    assert quoted.read_text().startswith('"TIMESTAMP","ContextTokens","GeneratedTokens"')
    assert detect_format(quoted) == "azure"
    ids = list(range(20000))  # a first line past the 64 KiB head, the ids before the lengths
    line = json.dumps({"input_tok_ids": ids, "input_toks": len(ids), "output_toks": 3, "arrival_time_ns": 0})
    long = _write(tmp_path, "long.jsonl", line + "\n")
    assert len(line) > 65536 and detect_format(long) == "pdsim"
    assert [r.input_toks for r in read_dataset(long).requests] == [20000]


def test_convert_writes_pdsim_jsonl_atomically_and_never_over_input(tmp_path):
    src = _write(tmp_path, "b.csv", BURST)
    out = tmp_path / "out" / "b.jsonl"
    res = CliRunner().invoke(workload, ["convert", str(src), "--out", str(out), "--format", "burstgpt:model=ChatGPT"])
    assert res.exit_code == 0, res.output
    assert "wrote 3 requests" in res.output
    assert [(r.input_toks, r.arrival_time_ns) for r in load_trace(out)] == [(472, 0), (200, 42e9), (10, 75.5e9)]
    assert [p.name for p in out.parent.iterdir()] == ["b.jsonl"]  # no temporary file left behind
    before = src.read_text()
    res = CliRunner().invoke(workload, ["convert", str(src), "--out", str(src)])
    assert res.exit_code == 2 and "would overwrite the input" in res.output
    assert src.read_text() == before
    res = CliRunner().invoke(workload, ["convert", str(tmp_path / "nope.csv"), "--out", str(out)])
    assert res.exit_code == 2 and "nope.csv: no such file" in res.output
    # The trace is written as plain JSONL: a compressed or CSV name would be read back as what it is not.
    for name in ("b.jsonl.gz", "b.csv"):
        res = CliRunner().invoke(workload, ["convert", str(src), "--out", str(tmp_path / "out" / name),
                                            "--format", "burstgpt:model=ChatGPT"])
        assert res.exit_code == 2 and "plain, uncompressed JSONL" in res.output and "name it .jsonl" in res.output
    assert [p.name for p in out.parent.iterdir()] == ["b.jsonl"]


def test_mooncake_convert_roundtrip_keeps_hash_ids(tmp_path):
    src = _write(tmp_path, "m.jsonl", _mooncake_line(0, 1000, 5, (3, 4)) + "\n" + _mooncake_line(7, 600, 2, (3,)))
    out = tmp_path / "p.jsonl"
    assert CliRunner().invoke(workload, ["convert", str(src), "--out", str(out)]).exit_code == 0
    assert load_trace(out) == load_dataset(src)
    assert load_trace(out)[0].hash_ids == (3, 4)


def test_run_reads_an_azure_trace(tmp_path):
    from pdsim.cli import cli

    src = _write(tmp_path, "a.csv", AZURE)
    out = tmp_path / "run.csv"
    config = REPO / "configs/cluster/single_node_pd_instance.json"
    res = CliRunner().invoke(cli, ["run", "--cluster-config", str(config), "--dataset", str(src),
                                   "--output", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "3 requests" in res.output and "3 finished" in res.output


@needs_shared
@pytest.mark.parametrize(("name", "fmt", "n"), [
    ("AzureLLMInferenceTrace_conv_2023.csv", "azure", 19366),
    ("AzureLLMInferenceTrace_code_2023.csv", "azure", 8819),
    ("mooncake_conversation_trace.jsonl", "mooncake", 12031),
    ("mooncake_synthetic_trace.jsonl", "mooncake", 3993),
    ("sharegpt_8k_filtered_stats_llama2_tokenizer.csv", "lengths-csv", 30731),
])
def test_real_traces(name, fmt, n):
    d = read_dataset(TRACES / name)
    assert (d.fmt, len(d.requests)) == (fmt, n)  # row counts from the traces' README
    t = np.array([r.arrival_time_ns for r in d.requests])
    assert t[0] == 0 and (np.diff(t) >= 0).all()
    assert min(r.input_toks for r in d.requests) >= 1 and min(r.output_toks for r in d.requests) >= 1
    if fmt == "mooncake":
        assert all(len(r.hash_ids) == -(-r.input_toks // 512) for r in d.requests)


@needs_shared
def test_real_azure_span_and_rate():
    reqs = load_dataset(TRACES / "AzureLLMInferenceTrace_conv_2023.csv")
    span_s = reqs[-1].arrival_time_ns / 1e9
    assert 57 * 60 < span_s < 59 * 60 and 5.4 < (len(reqs) - 1) / span_s < 5.7  # README: ~58 min, 5.53 req/s


def test_empty_file_says_no_requests(tmp_path):
    with pytest.raises(TraceError, match=r"e\.csv: the trace has no requests"):
        read_dataset(_write(tmp_path, "e.csv", "\n\n"))


def test_pdsim_trace_through_load_dataset_is_load_trace(tmp_path):
    lines = [json.dumps({"input_toks": i + 1, "output_toks": 2, "arrival_time_ns": t, **extra})
             for i, (t, extra) in enumerate([(300, {}), (100, {"hash_ids": [4, 5], "hash_block_tokens": 1}), (100, {}),
                                             (0, {})])]
    p = _write(tmp_path, "t.jsonl", "\n".join(lines) + "\n")
    assert load_dataset(p) == load_trace(p)
    assert [r.request_id for r in load_dataset(p)] == [3, 1, 2, 0]


def test_run_reports_rows_left_out(tmp_path):
    from pdsim.cli import cli

    src = _write(tmp_path, "b.csv", BURST)
    config = REPO / "configs/cluster/single_node_pd_instance.json"
    res = CliRunner().invoke(cli, ["run", "--cluster-config", str(config), "--dataset", str(src),
                                   "--dataset-format", "burstgpt:log=Conversation log",
                                   "--output", str(tmp_path / "run.csv"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "1 failed request(s) (0 response tokens) left out" in res.stderr
    assert "3 requests" in res.output


def test_generate_lengths_from_an_azure_csv(tmp_path):
    src = _write(tmp_path, "a.csv", AZURE)
    out = tmp_path / "g.jsonl"
    res = CliRunner().invoke(workload, ["generate", "--num-requests", "50", "--lengths-from", str(src),
                                        "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert {(r.input_toks, r.output_toks) for r in load_trace(out)} <= {(374, 44), (396, 109), (1000, 5)}


@pytest.mark.parametrize(("name", "text", "words"), [
    ("t.jsonl", '{"input_toks": 100000000000000000000, "output_toks": 5, "arrival_time_ns": 0}\n',
     r"t.jsonl:1: field 'input_toks': expected an integer from 1 to 1e\+09"),
    ("l.csv", "num_prefill_tokens,num_decode_tokens\n10,5\n10,1e20\n",
     r"l.csv:3: field 'num_decode_tokens': expected an integer from 1 to 1e\+09, got 1e\+20"),
    ("a.csv", AZURE.replace(",44\n", ",1e300\n"), r"a.csv:2: field 'GeneratedTokens': expected an integer from 0"),
    ("b.csv", BURST.replace("5,ChatGPT,472", "5,ChatGPT,1e19"), r"b.csv:2: field 'Request tokens'"),
    ("b.csv", BURST.replace("46,GPT-4", "1e20,GPT-4"), r"b.csv:4: field 'Timestamp': expected seconds from 0 to "
                                                       r"4e\+09, got 1e\+20"),
    ("b.csv", BURST.replace("46,GPT-4", "-5,GPT-4"), r"b.csv:4: field 'Timestamp': .*, got -5.0$"),
    ("m.jsonl", _mooncake_line(t=1e19) + "\n", r"m.jsonl:1: field 'timestamp': expected ms from 0 to 4e\+12"),
    ("m.jsonl", _mooncake_line(i=10**20) + "\n", r"m.jsonl:1: field 'input_length': expected an integer from 1"),
])
def test_counts_and_times_past_the_clocks_range_name_the_cell(tmp_path, name, text, words):
    """Values past int64 (or past what a run's clock holds) are refused with their line, not wrapped into
    negative lengths and times."""
    fmt = {"l.csv": "lengths-csv", "a.csv": "azure", "b.csv": "burstgpt", "m.jsonl": "mooncake"}.get(name)
    with pytest.raises(TraceError, match=words):
        load_dataset(_write(tmp_path, name, text), fmt=fmt)


def test_a_window_or_time_scale_past_the_clocks_range_is_said_not_overflowed(tmp_path):
    p = _write(tmp_path, "m.jsonl", "\n".join(_mooncake_line(t * 1000, 100, 5, ()) for t in range(3)) + "\n")
    assert len(load_dataset(p, window="0:1e300")) == 3
    with pytest.raises(TraceError, match="no request in the window"):
        load_dataset(p, window="1e300:")
    with pytest.raises(TraceError, match=r"--time-scale 1e\+12: the last arrival would be 2e\+12 s after the first"):
        load_dataset(p, time_scale=1e12)


def test_a_json_list_of_trace_records_says_they_are_jsonl(tmp_path):
    p = _write(tmp_path, "t.json", json.dumps([{"input_toks": 5, "output_toks": 3, "arrival_time_ns": 0}]))
    with pytest.raises(TraceError, match=r"it has 'input_toks', a field of pdsim's and Mooncake's traces, which are "
                                         r"JSONL"):
        load_dataset(p)


def _stats(path: Path, *args: str):
    return CliRunner().invoke(workload, ["stats", str(path), *args])


@pytest.mark.parametrize(("name", "text", "args", "words"), [
    # More prefix ids than the prompt has blocks: stats printed a reuse of -7530% of input tokens.
    ("ids.jsonl", '{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 0, "hash_ids": [1, 2, 3]}\n', [],
     "ids.jsonl:1: field 'hash_ids': 3 ids of 512 tokens each, but 10 input tokens make at most 1 blocks"),
    ("mc.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1, 2, 3, 4]}\n', [],
     "mc.jsonl:1: field 'hash_ids': 4 ids"),
    # Years past int64 ns wrapped into arrival times at exit 0; so did a span over the clock's.
    ("old.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04,10,5\n1023-11-16 18:17:04,10,5\n",
     [], "old.csv:3: field 'TIMESTAMP': expected a date-time between the years 1678 and 2261"),
    ("span.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n1700-01-01 00:00:00,10,5\n2200-01-01 00:00:00,10,5\n",
     [], "span.csv:3: field 'TIMESTAMP': '2200-01-01 00:00:00' is more than 4e+09 s after"),
    ("empty.csv", "", ["--format", "azure"], "empty.csv: the file is empty; read as: Azure trace"),
    # A key given twice: json.loads kept the last one without a word.
    ("twice.jsonl", '{"timestamp": 0, "input_length": 10, "input_length": 900, "output_length": 5}\n', [],
     "twice.jsonl:1: key 'input_length' appears twice in one object"),
    ("twice2.jsonl", '{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 0, "hash_ids": [1], "hash_ids": [2]}\n',
     [], "twice2.jsonl:1: key 'hash_ids' appears twice in one object"),
    ("twice3.jsonl", '{"id": "a", "input_toks": 10, "output_toks": 5, "arrival_time_ns": 0, "id": "b"}\n',
     [], "twice3.jsonl:1: key 'id' appears twice in one object"),  # string values counted, a key still caught
    ("twice4.jsonl", '{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 0, "m": {"s": "a", "s": "b"}}\n',
     [], "twice4.jsonl:1: key 's' appears twice in one object"),
    ("sg.json", '[{"input_tokens": 1000000000000, "output_tokens": 5}]', [],
     "field 'input_tokens': expected an integer from 1 to 1e+09"),
    ("sg2.json", '[{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]',
     ["--format", "sharegpt:chars_per_token=1e-320"], "chars_per_token: expected a number from 0.1 to 100"),
    ("t.jsonl", '{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 0}\n'
     '{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 1000000000}\n', ["--bin-s", "1e-300"],
     "--bin-s 1e-300: 1e+300 bins over the trace's 1 s, more than 1,000,000"),  # asked for 3 TiB
])
def test_trace_values_past_the_bounds_are_refused_naming_the_line(tmp_path, name, text, args, words):
    path = tmp_path / name
    path.write_text(text)
    res = _stats(path, *args)
    assert res.exit_code == 2 and words in res.output, res.output


@pytest.mark.parametrize(("name", "line"), [
    ("s.jsonl", '{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 0, "note": "say \\"input_toks\\": 3"}'),
    ("n.jsonl", '{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 0, "meta": {"input_toks": 3}}'),
    ("m.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1], "src": {"hash_ids": []}}'),
])
def test_a_key_name_in_a_string_or_a_nested_object_is_no_repeated_key(tmp_path, name, line):
    # The repeated-key check counts quotes on the raw line; these lines have more than their keys, and no key twice.
    path = _write(tmp_path, name, line + "\n")
    assert len(read_dataset(path).requests) == 1


def test_readers_take_what_they_misread(tmp_path):
    # A numeric Model column crashed the BurstGPT model filter; a trailing comma made the first column the index
    # (a wrong error about the cells).
    burst = tmp_path / "b.csv"
    burst.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                     "1,1,10,5,15,Conversation log\n2,2,10,5,15,Conversation log\n")
    assert len(read_dataset(burst, "burstgpt:model=1").requests) == 1
    comma = tmp_path / "a.csv"
    comma.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,10,5,\n2023-11-16 18:15:47,11,6,\n")
    with pytest.raises(TraceError, match="rows have more fields than the header"):
        read_dataset(comma)
    latin = tmp_path / "l.csv"
    latin.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,10,5\n"
                      b"2023-11-16 18:15:47,1\xff,6\n")
    with pytest.raises(TraceError, match=r"l.csv:3: not valid UTF-8"):  # the line was not named
        read_dataset(latin)
    # A pdsim line longer than the 64 KB the format is told from (token ids of a long prompt).
    long = tmp_path / "long.jsonl"
    ids = list(range(20_000))
    long.write_text(json.dumps({"input_toks": 20_000, "output_toks": 2, "arrival_time_ns": 0, "input_tok_ids": ids})
                    + "\n")
    assert detect_format(long) == "pdsim"


def test_pipes_and_special_outputs_are_refused(tmp_path):
    import os

    trace = tmp_path / "t.jsonl"
    trace.write_text('{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 0}\n')
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # A FIFO as the output became a regular file (so did /dev/null); as the input, the format was told
    # from bytes the reader then no longer had.
    res = CliRunner().invoke(workload, ["convert", str(trace), "--out", str(fifo)])
    assert res.exit_code == 2 and "not a regular file" in res.output, res.output
    assert fifo.is_fifo()
    res = CliRunner().invoke(workload, ["stats", str(fifo)])
    assert res.exit_code == 2 and "not a regular file (a pipe, FIFO or device)" in res.output, res.output
    # --lengths-from is read twice (its format, then its lengths): a pipe was read empty the second time, and
    # "the trace has no requests"; a FIFO nothing writes to hung. A measured run was "not found".
    res = CliRunner().invoke(workload, ["generate", "--lengths-from", str(fifo), "--num-requests", "3",
                                        "--output", str(tmp_path / "g.jsonl")])
    assert res.exit_code == 2 and "--lengths-from" in res.output and "not a regular file" in res.output, res.output
    from pdsim.errors import PdsimError
    from pdsim.validate.measured import read_measured

    with pytest.raises(PdsimError, match=f"{fifo}: not a regular file"):
        read_measured(fifo)
    res = _stats(trace, "--plot", str(trace / "p.png"))
    assert res.exit_code == 2 and "is a file, not a folder" in res.output, res.output


def test_mooncake_keys_it_does_not_read_are_noted(tmp_path):
    # A misspelt hash_ids would otherwise read as a trace without prefix ids, without a word.
    path = tmp_path / "m.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_id": [0, 1]}\n')
    loaded = read_dataset(path, "mooncake")
    assert any("not in the Mooncake format, ignored: 'hash_id' (1 line(s))" in note for note in loaded.notes)


@pytest.mark.parametrize(("fmt", "text", "key"), [
    ("vllm-bench", '{"ttfts": [0.1], "itls": [[0.01]], "input_lens": [10], "input_lens": [20], "output_lens": [2]}',
     "input_lens"),
    ("sharegpt", '[{"input_tokens": 5, "output_tokens": 3, "input_tokens": 7}]', "input_tokens"),
])
def test_a_key_given_twice_in_a_json_trace_is_refused(tmp_path, fmt, text, key):
    # json.loads keeps the last silently; the JSONL readers and validate already refused repeats.
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(TraceError, match=f"key '{key}' appears twice in one object"):
        read_dataset(path, fmt)


def test_a_csv_trace_with_a_column_twice_is_refused(tmp_path):
    # pandas renamed the second ContextTokens "ContextTokens.1" and the first was read, without a word.
    path = tmp_path / "a.csv"
    path.write_text("TIMESTAMP,ContextTokens,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,20,5\n")
    with pytest.raises(TraceError, match=re.escape(f"{path}:1: column 'ContextTokens' appears 2 times")):
        read_dataset(path)


def test_a_compressed_trace_needs_its_format_and_a_column_twice_is_found_in_one(tmp_path):
    import gzip

    path = tmp_path / "l.csv.gz"
    with gzip.open(path, "wt") as f:  # a BOM, blank lines before the header and a quoted name after a space
        f.write('\ufeff\n\nnum_prefill_tokens, "num_prefill_tokens",num_decode_tokens\n100,200,10\n')
    with pytest.raises(TraceError, match=re.escape(f"{path}: a compressed file's format is not told from its bytes; "
                                                   "give --dataset-format")):
        read_dataset(path)
    with pytest.raises(TraceError, match=re.escape(f"{path}:1: column 'num_prefill_tokens' appears 2 times")):
        read_dataset(path, "lengths-csv")


def test_a_bad_cell_in_a_zipped_csv_is_named_by_its_own_line(tmp_path):
    import zipfile

    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:  # blank lines: data row 2 is the file's line 6
        archive.writestr("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n\n\n2023-11-16 18:15:46.0,1,1\n\n"
                                  "2023-11-16 18:15:47.0,abc,1\n")
    with pytest.raises(TraceError, match=r"a\.zip:6: field 'ContextTokens'"):
        read_dataset(path, "azure")
    # An archive of several files, or of none, is no CSV pandas reads: said, not an internal error.
    for name, members in (("two.zip", ("a.csv", "b.csv")), ("none.zip", ())):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            for member in members:
                archive.writestr(member, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,1,1\n")
        with pytest.raises(TraceError, match=rf"{name}: not a readable CSV \(.*\); read as: Azure trace"):
            read_dataset(tmp_path / name, "azure")


def test_lengths_from_takes_a_bundled_trace_by_name(tmp_path):
    res = CliRunner().invoke(workload, ["generate", "--lengths-from", "prefill_heavy", "--num-requests", "5",
                                        "--output", str(tmp_path / "g.jsonl")])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "g.jsonl").read_text().splitlines()) == 5


def test_a_record_missing_its_closing_brace_is_placed_at_its_lines_end(tmp_path):
    # json counts the line's newline as a second line and put the error at column 1.
    bad = '{"input_toks": 5, "output_toks": 3, "arrival_time_ns": 10'
    for end in ("\n", "\r\n", ""):
        p = _write(tmp_path, "t.jsonl", '{"input_toks": 5, "output_toks": 3, "arrival_time_ns": 0}\n' + bad + end)
        with pytest.raises(TraceError, match=rf"t\.jsonl:2: not valid JSON \(Expecting ',' delimiter at column "
                                             rf"{len(bad) + 1}\)"):
            load_dataset(p)


def test_a_compressed_trace_cut_short_or_of_other_bytes_is_one_line_naming_it(tmp_path, capsys):
    import gzip
    import lzma

    from pdsim.cli import main

    whole = gzip.compress(b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,1,1\n" * 50)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[:60])  # gzip raised EOFError, which click reported as Ctrl-C: "aborted", exit 130
    with pytest.raises(TraceError, match=re.escape(f"{cut}: the compressed file ends early (cut short?)")):
        read_dataset(cut, "azure")
    xz = tmp_path / "cut.csv.xz"
    xz.write_bytes(lzma.compress(b"TIMESTAMP,ContextTokens,GeneratedTokens\n" * 50)[:30])
    with pytest.raises(TraceError, match="the compressed file ends early"):
        read_dataset(xz, "azure")
    plain = tmp_path / "plain.csv.gz"  # not gzip at all: "Not a gzipped file", no file named
    plain.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(TraceError, match=re.escape(f"{plain}: cannot decompress it (Not a gzipped file")):
        read_dataset(plain, "azure")
    tar = tmp_path / "cut.csv.tar"  # "internal error: ReadError: unexpected end of data"
    tar.write_bytes(b"TIMESTAMP,ContextTokens" * 30)
    with pytest.raises(TraceError, match=re.escape(f"{tar}: cannot decompress it (")):
        read_dataset(tar, "azure")
    jsonl = tmp_path / "t.jsonl.gz"  # "not valid UTF-8" before
    jsonl.write_bytes(gzip.compress(b'{"input_toks": 5, "output_toks": 2, "arrival_time_ns": 0}\n'))
    with pytest.raises(TraceError, match="a pdsim trace is read uncompressed"):
        read_dataset(jsonl, "pdsim")
    with pytest.raises(SystemExit) as exc:
        main(["workload", "stats", str(cut), "--dataset-format", "azure"])
    assert exc.value.code == 2 and "ends early" in capsys.readouterr().err
