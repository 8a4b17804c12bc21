import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pdsim.workload.cli import workload
from pdsim.workload.generate import generate_requests
from pdsim.workload.stats import prefix_reuse, trace_stats
from pdsim.workload.trace import TraceRequest, write_trace

TRACES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "traces"


def test_figures_match_numpy():
    reqs = generate_requests(3000, 7.0, "lognormal:900,500", "uniform:10,700", seed=11)
    s = trace_stats(reqs)
    t = np.array([r.arrival_time_ns for r in reqs]) / 1e9
    inp = np.array([r.input_toks for r in reqs])
    out = np.array([r.output_toks for r in reqs])
    assert s["requests"] == 3000
    assert s["span_s"] == pytest.approx(t[-1] - t[0])
    assert s["mean_rate_per_s"] == pytest.approx(2999 / (t[-1] - t[0]))
    gaps = np.diff(t)
    assert s["gap_cv"] == pytest.approx(gaps.std() / gaps.mean())
    for q in (50, 90, 99):
        assert s["input_toks"][f"p{q}"] == pytest.approx(np.percentile(inp, q))
        assert s["output_toks"][f"p{q}"] == pytest.approx(np.percentile(out, q))
    assert s["input_toks"]["mean"] == pytest.approx(inp.mean())
    assert s["total_output_toks"] == out.sum()
    assert s["prefix_reuse"] is None


def test_rate_over_time_counts_every_request_in_its_bin():
    # 10 requests in [0, 10) s, 30 in [10, 20) s, and a last one at 25 s: the last bin covers 5 s.
    times = [i * 1.0 for i in range(10)] + [10 + i / 3 for i in range(30)] + [25.0]
    reqs = [TraceRequest(i, 10, 10, round(t * 1e9)) for i, t in enumerate(times)]
    s = trace_stats(reqs, bin_s=10)
    rot = s["rate_over_time"]
    assert rot["start_s"] == [0, 10, 20]
    assert rot["end_s"] == [10, 20, 25]
    assert rot["rate_per_s"] == pytest.approx([1.0, 3.0, 1 / 5])
    assert sum(r * (e - b) for r, b, e in zip(rot["rate_per_s"], rot["start_s"], rot["end_s"])) == pytest.approx(41)
    assert s["rate_per_s"] == {"min": 1.0, "p50": 2.0, "max": 3.0}  # whole bins only


def test_prefix_reuse_counts_blocks_seen_before():
    reqs = [TraceRequest(0, 1024, 1, 0, (0, 1), 512),
            TraceRequest(1, 1100, 1, 1, (0, 1, 2), 512),  # 2 of 3 seen: 1024 tokens
            TraceRequest(2, 100, 1, 2, (5,), 512),
            TraceRequest(3, 100, 1, 3, (5,), 512)]  # 1 seen, a partial block of 100 tokens
    pr = prefix_reuse(reqs)
    assert (pr["blocks"], pr["reused_blocks"]) == (7, 3)
    assert pr["block_reuse_ratio"] == pytest.approx(3 / 7)
    assert pr["token_reuse_ratio"] == pytest.approx((1024 + 100) / (1024 + 1100 + 100 + 100))


def test_cli_text_json_and_plot(tmp_path):
    src = tmp_path / "t.jsonl"
    reqs = generate_requests(500, 5.0, "fixed:100", "fixed:20", seed=1)
    write_trace(src, reqs)
    res = CliRunner().invoke(workload, ["stats", str(src), "--json"])
    assert res.exit_code == 0, res.output
    figures = json.loads(res.output)
    assert figures["requests"] == 500 and figures["format"] == "pdsim"
    assert figures["input_toks"]["p99"] == 100
    png = tmp_path / "plots" / "t.png"
    res = CliRunner().invoke(workload, ["stats", str(src), "--plot", str(png), "--num-requests", "100"])
    assert res.exit_code == 0, res.output
    assert "100 requests" in res.output and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(workload, ["stats", str(src), "--plot", str(src)])
    assert res.exit_code == 2 and "would overwrite the input" in res.output


@pytest.mark.skipif(not TRACES.is_dir(), reason="no ../shared/data/traces (real traces)")
def test_real_mooncake_reuse_is_independent_count():
    from pdsim.workload.readers import load_dataset

    reqs = load_dataset(TRACES / "mooncake_conversation_trace.jsonl")
    ids = [h for r in reqs for h in r.hash_ids]
    # Independently: a block is reused when its id occurred at an earlier position.
    _, first = np.unique(np.array(ids), return_index=True)
    assert prefix_reuse(reqs)["block_reuse_ratio"] == pytest.approx(1 - len(first) / len(ids))


def test_trace_without_times_has_no_rate(tmp_path):
    reqs = [TraceRequest(i, 10 + i, 5, 0) for i in range(4)]
    s = trace_stats(reqs)
    assert s["mean_rate_per_s"] is None and s["rate_over_time"] is None and s["gap_cv"] is None
    assert s["input_toks"]["p50"] == pytest.approx(11.5)
    src = tmp_path / "lengths.csv"
    src.write_text("num_prefill_tokens,num_decode_tokens\n10,5\n11,5\n")
    res = CliRunner().invoke(workload, ["stats", str(src), "--plot", str(tmp_path / "l.png")])
    assert res.exit_code == 0, res.output
    assert "no arrival rate" in res.output and "note: no arrival times in the file" in res.output


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which Python writes but JSON has not."""
    def refuse(name: str):
        raise ValueError(f"{name} in JSON output")
    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_when_a_figure_is_undefined(tmp_path):
    # One request: no gap and no span, so no rate and no gap CV; they print as null, never NaN.
    src = tmp_path / "one.jsonl"
    write_trace(src, [TraceRequest(0, 100, 10, 0)])
    res = CliRunner().invoke(workload, ["stats", str(src), "--json"])
    assert res.exit_code == 0, res.output
    figures = _strict_json(res.output)
    assert figures["requests"] == 1 and figures["span_s"] == 0.0
    assert figures["mean_rate_per_s"] is None and figures["gap_cv"] is None and figures["rate_per_s"] is None
    assert figures["input_toks"]["max"] == 100.0


def test_an_infinite_bin_is_refused_not_printed_as_infinity(tmp_path):
    # --bin-s inf used to print "rate_bin_s": Infinity and NaN rates: invalid JSON from bad input.
    src = tmp_path / "t.jsonl"
    write_trace(src, generate_requests(50, 5.0, "fixed:100", "fixed:10", seed=1))
    res = CliRunner().invoke(workload, ["stats", str(src), "--bin-s", "inf", "--json"])
    assert res.exit_code == 2
    assert "--bin-s: expected a finite number of seconds > 0, got inf" in res.output
