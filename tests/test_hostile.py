"""Hostile input (issue 17, parts 4-5): every case exits with code 2 and one line on stderr that names
the file and field or the flag, with no traceback and no output file written."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from pdsim.cli import main
from pdsim.errors import PdsimError
from pdsim.models import load_model

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs/cluster/single_node_pd_instance.json"
TRACE = REPO / "workloads/example_trace.jsonl"
PROFILE = REPO / "profiles/CPU-1core/JackFram/llama-160m/bfloat16/tp1"
TRACE_LINE = '{"input_toks": 20, "output_toks": 4, "arrival_time_ns": 0}\n'


def _run_cli(capsys, args: list[str], timeout_s: float = 30) -> tuple[int, str]:
    def stop(_sig, _frame):
        raise TimeoutError(f"pdsim {' '.join(args)} ran over {timeout_s} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return code, capsys.readouterr().err


def _config_text(tmp_path: Path, edit) -> Path:
    raw = json.loads(CONFIG.read_text())
    text = edit(raw)
    path = tmp_path / "cfg.json"
    path.write_text(text if isinstance(text, str) else json.dumps(raw))
    return path


def _set(path: tuple, literal: str):
    """Put `literal` (raw JSON text such as Infinity or 1e400) at `path` of the config."""

    def edit(raw: dict) -> str:
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = "@@VALUE@@"
        return json.dumps(raw).replace('"@@VALUE@@"', literal)

    return edit


INST = ("nodes", 0, "instances", 0)
CONFIG_CASES = [
    (("link_bw",), "Infinity", "link_bw"),
    (("link_bw",), "1e400", "link_bw"),
    (("link_bw",), "1e-300", "link_bw"),
    (("link_bw",), "NaN", "link_bw"),
    (("link_latency",), "Infinity", "link_latency"),
    (("link_latency",), "1e400", "link_latency"),
    (("nodes", 0, "nic_bw"), "Infinity", "nodes[0].nic_bw"),
    (("nodes", 0, "nic_bw"), "1e-300", "nodes[0].nic_bw"),
    (("nodes", 0, "intra_node_bw"), "1e400", "nodes[0].intra_node_bw"),
    (("nodes", 0, "intra_node_bw"), "1e-300", "nodes[0].intra_node_bw"),
    ((*INST, "step_overhead_us"), "Infinity", "step_overhead_us"),
    ((*INST, "step_overhead_us"), "1e400", "step_overhead_us"),
    ((*INST, "npu_mem", "mem_size"), "1e300", "npu_mem.mem_size"),
    ((*INST, "npu_mem", "mem_size"), "Infinity", "npu_mem.mem_size"),
    (("link_bw",), "[1e-300, 16]", "link_bw[0]: expected a number >= 0.001"),  # the inner (TP) dimension
    (("link_bw",), "[16, Infinity]", "link_bw[1]"),
    (("link_latency",), "[0, 1e300]", "link_latency[1]: expected a number >= 0 and <= 1e+09 (ns)"),
    (("link_bw_per_dim",), "[16, 16]", "link_bw_per_dim is not a config key: give link_bw as a list"),
    (("kv_transfer",), '{"bandwidth_efficiency": 1e-9}', "kv_transfer.bandwidth_efficiency: expected a number >= 0.01"),
    ((*INST, "block_size"), "1" + "0" * 30, "block_size"),
    ((*INST, "max_num_batched_tokens"), "1" + "0" * 30, "max_num_batched_tokens"),
]


def _assert_clean_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize(("path", "literal", "field"), CONFIG_CASES)
def test_hostile_config_value_is_one_line_naming_file_and_field(tmp_path, capsys, path, literal, field):
    cfg = _config_text(tmp_path, _set(path, literal))
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE_LINE)
    out = tmp_path / "out" / "run.csv"
    code, err = _run_cli(capsys, ["--cluster-config", str(cfg), "--dataset", str(trace), "--output", str(out),
                                  "--quiet"])
    _assert_clean_error(code, err, str(cfg), field)
    assert not out.parent.exists()


def test_model_name_of_another_type_beside_a_model_config_names_the_field(tmp_path, capsys):
    """LLMServingSim's run layout (model_config.json beside the config) must not turn a model_name
    that is not a string into an internal error: validation names the field."""
    cfg = _config_text(tmp_path, _set((*INST, "model_name"), "{}"))
    (tmp_path / "model_config.json").write_text("{}")
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE_LINE)
    code, err = _run_cli(capsys, ["--cluster-config", str(cfg), "--dataset", str(trace), "--output",
                                  str(tmp_path / "out" / "run.csv"), "--quiet"])
    assert code == 2, err
    assert "internal error" not in err and "Traceback" not in err
    assert "instances[0].model_name: expected a string" in err


OPTION_CASES = [
    ("--step-overhead-us", "nan"), ("--step-overhead-us", "inf"), ("--step-overhead-us", "-5"),
    ("--client-delay-ms", "nan"), ("--client-delay-ms", "inf"),
    ("--max-sim-time", "nan"), ("--max-sim-time", "0"), ("--max-sim-time", "-1"),
    ("--log-interval", "1e-12"), ("--log-interval", "nan"),
    ("--num-requests", "0"), ("--concurrency", "0"),
    ("--client-delay-ms", "5"),  # an open-loop trace: the delay would apply to nothing
    ("--slo-ttft-ms", "nan"), ("--slo-tpot-ms", "inf"),  # printed "TTFT <= nan ms: 0.0%" at exit 0
]


@pytest.mark.parametrize(("flag", "value"), OPTION_CASES)
def test_hostile_option_is_one_line_naming_the_flag(tmp_path, capsys, flag, value):
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE_LINE)
    out = tmp_path / "out" / "run.csv"
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), "--dataset", str(trace), "--output", str(out),
                                  "--quiet", flag, value])
    _assert_clean_error(code, err, flag)
    assert "max_requests" not in err
    assert not out.parent.exists()


def test_options_that_would_do_nothing_or_change_the_config_are_said(tmp_path, capsys):
    out = tmp_path / "out"
    # --lengths-from draws both lengths: an --input-len beside it would be ignored.
    code, err = _run_cli(capsys, ["workload", "generate", "--lengths-from", str(TRACE), "--input-len", "5",
                                  "--output", str(out / "t.jsonl")])
    _assert_clean_error(code, err, "--input-len", "--lengths-from")
    cases = ((["search", "--max-probes", "0"], "--max-probes"), (["sweep", "--rates", "1", "--node-gpus", "0"],
                                                                 "--node-gpus"))
    for args, flag in cases:
        code, err = _run_cli(capsys, [*args, "--base-config", str(CONFIG), "--dataset", str(TRACE), "--gpus", "2",
                                      "--slo-ttft-ms", "100", "--slo-tpot-ms", "50", "--out", str(out)])
        _assert_clean_error(code, err, flag)
    # A config error the command line caused names the option.
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--max-num-batched-tokens",
                                  "1000000000", "--output", str(out / "r.csv"), "--quiet"])
    said = "note: --max-num-batched-tokens 1000000000: 1,000,000,000 is above meta-llama/Llama-3.1-8B's context length"
    assert err.startswith(said)  # the option, named once, not each instance's field
    _assert_clean_error(code, err.split("\n", 1)[1], "no room for the KV cache",
                        "(with --max-num-batched-tokens 1000000000 from the command line)")
    # A KV size too small names the option's field, not npu_mem.mem_size.
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--kv-cache-memory-bytes",
                                  "1k", "--output", str(out / "r.csv"), "--quiet"])
    _assert_clean_error(code, err, "instances[0].kv_cache_memory_bytes: no room for the KV cache",
                        "(with --kv-cache-memory-bytes 1000 from the command line)")
    # A config wrong as written is said without the options, which did not cause it.
    bad = json.loads(CONFIG.read_text())
    bad["nodes"][0]["instances"][0]["npu_mem"]["mem_size"] = -96
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, err = _run_cli(capsys, ["--cluster-config", str(tmp_path / "bad.json"), "--dataset", str(TRACE),
                                  "--async-scheduling", "--output", str(out / "r.csv"), "--quiet"])
    _assert_clean_error(code, err, "npu_mem.mem_size: expected a number > 0, got -96")
    assert "from the command line" not in err
    # One the options fix, beside one they cause: the one they cause is said, naming them.
    bad["nodes"][0]["instances"][0]["npu_mem"]["mem_size"] = 96
    bad["nodes"][0]["instances"][0]["max_num_seqs"] = -5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, err = _run_cli(capsys, ["--cluster-config", str(tmp_path / "bad.json"), "--dataset", str(TRACE),
                                  "--max-num-seqs", "64", "--block-size", "0", "--output", str(out / "r.csv"),
                                  "--quiet"])
    assert code == 2 and "Traceback" not in err and "max_num_seqs" not in err
    assert "block_size: expected a number >= 1, got 0" in err and "--block-size 0 from the command line" in err
    assert not out.exists()
    # Said, not refused: LLMServingSim's 0 = unlimited, and a request count past the trace.
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), "--dataset", str(TRACE), "--max-num-seqs", "0",
                                  "--num-requests", "500", "--output", str(out / "r.csv"), "--quiet"])
    assert code == 0, err
    # The option is named, once, not the config's fields it set.
    assert err.count("note: --max-num-seqs 0: 0 is LLMServingSim's 'unlimited': max_num_seqs becomes "
                     "max_num_batched_tokens\n") == 1 and "instances[0].max_num_seqs" not in err
    assert "note: --num-requests 500: the trace has 200 requests; all are used" in err
    # An option replacing what an instance sets is said (LLMServingSim's flags give way to it); one setting a
    # key no instance sets, or the same value, is not.
    own = json.loads(CONFIG.read_text())
    own["nodes"][0]["instances"][1]["max_num_seqs"] = 256
    own["nodes"][0]["instances"][0]["block_size"] = 32
    (tmp_path / "own.json").write_text(json.dumps(own))
    code, err = _run_cli(capsys, ["--cluster-config", str(tmp_path / "own.json"), "--dataset", str(TRACE),
                                  "--max-num-seqs", "64", "--block-size", "32", "--dtype", "bfloat16",
                                  "--output", str(out / "r2.csv"), "--quiet"])
    assert code == 0, err
    assert ("note: --max-num-seqs 64 replaces the max_num_seqs of nodes[0].instances[1] (256) in the config "
            "(pdsim's options apply to every instance; LLMServingSim's keep an instance's own value)") in err
    assert "replaces the block_size" not in err and "replaces the dtype" not in err
    # A switch is named by its flag; unchunked prefill without a budget takes vLLM's, which is said.
    code, err = _run_cli(capsys, ["--cluster-config", str(tmp_path / "own.json"), "--dataset", str(TRACE),
                                  "--disable-chunked-prefill", "--output", str(out / "r3.csv"), "--quiet"])
    assert code == 0, err
    assert err.count("note: --disable-chunked-prefill: chunked prefill off with no max_num_batched_tokens: the step "
                     "budget becomes vLLM's for unchunked prefill") == 1


def _bad_file_cases(tmp_path: Path) -> list[tuple[str, Path, str]]:
    base = CONFIG.read_text()
    cases = []
    p = tmp_path / "dup.json"
    p.write_text(base.replace('"link_bw"', '"link_bw": 1, "link_bw"', 1))
    cases.append(("config", p, "'link_bw' appears twice"))
    p = tmp_path / "utf16.json"
    p.write_bytes(base.encode("utf-16"))
    cases.append(("config", p, "UTF-16"))
    p = tmp_path / "latin1.json"
    p.write_bytes(base.replace('"num_nodes"', '"_note": "caf\u00e9", "num_nodes"', 1).encode("latin-1"))
    cases.append(("config", p, "not valid UTF-8"))
    p = tmp_path / "deep.json"
    p.write_text('{"num_nodes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    cases.append(("config", p, "nested too deeply"))
    p = tmp_path / "surrogate.json"  # a JSON escape of half a UTF-16 pair: ASCII text that decodes to no character
    p.write_text(base.replace('"num_nodes"', '"_note\\ud800": 1, "num_nodes"', 1))
    cases.append(("config", p, "a lone UTF-16 surrogate escape, \\ud800"))
    p = tmp_path / "config.json"  # the two files swapped, first mistakes: each says what it is and where it goes
    p.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096}))
    cases.append(("config", p, "a Hugging Face model config (architectures, model_type), not a cluster config"))
    cases.append(("trace", CONFIG, "a cluster config (num_nodes, nodes), not a trace: give it as --cluster-config"))
    p = tmp_path / "dup.jsonl"
    p.write_text('{"input_toks": 20, "output_toks": 4, "arrival_time_ns": 0, "output_toks": 9}\n')
    cases.append(("trace", p, "'output_toks' appears twice"))
    p = tmp_path / "far.jsonl"
    p.write_text('{"input_toks": 20, "output_toks": 4, "arrival_time_ns": 1e30}\n')
    cases.append(("trace", p, "arrival_time_ns"))
    p = tmp_path / "deep.jsonl"
    p.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    cases.append(("trace", p, "nested too deeply"))
    return cases


def test_hostile_files_are_one_line_naming_the_file(tmp_path, capsys):
    for kind, path, words in _bad_file_cases(tmp_path):
        trace = tmp_path / "t.jsonl"
        trace.write_text(TRACE_LINE)
        args = ["--cluster-config", str(path if kind == "config" else CONFIG),
                "--dataset", str(path if kind == "trace" else trace)]
        out = tmp_path / "out" / "run.csv"
        code, err = _run_cli(capsys, [*args, "--output", str(out), "--quiet"])
        _assert_clean_error(code, err, str(path), words)
        assert not out.parent.exists()


def _profile_copy(tmp_path: Path, edit) -> Path:
    dst = tmp_path / "profile"
    shutil.copytree(PROFILE, dst)
    meta = json.loads((dst / "meta.json").read_text())
    edit(meta)
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


PROFILE_CASES = [
    (lambda m: m["memory"].update(activation_peak_bytes=-(2**40)), "activation_peak_bytes"),
    (lambda m: m.update(memory=[1, 2]), "'memory'"),
    (lambda m: m.update(device="gpu"), "'device'"),
    (lambda m: m.update(dtype="bf17"), "'dtype'"),
    (lambda m: m.update(num_layers=-3), "'num_layers'"),
    (lambda m: m.update(tp=0), "'tp'"),
    (lambda m: m.update(model="meta-llama/Llama-3.1-8B"), "'model'"),
]


def _run_with_profile(tmp_path: Path, capsys, profile: Path) -> tuple[int, str, Path]:
    """The CPU example run on a one-request trace with `profile` as --profile-dir: (exit code, stderr, output)."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE_LINE)
    out = tmp_path / "out" / "run.csv"
    code, err = _run_cli(capsys, ["--cluster-config", str(REPO / "configs/cluster/cpu_llama160m.json"),
                                  "--dataset", str(trace), "--profile-dir", str(profile), "--output", str(out),
                                  "--quiet"])
    return code, err, out


@pytest.mark.parametrize(("edit", "field"), PROFILE_CASES)
def test_malformed_or_foreign_profile_meta_is_one_line(tmp_path, capsys, edit, field):
    profile = _profile_copy(tmp_path, edit)
    code, err, out = _run_with_profile(tmp_path, capsys, profile)
    _assert_clean_error(code, err, str(profile / "meta.json"), field)
    assert not out.parent.exists()


def test_head_dim_null_takes_the_hf_default_or_names_the_field(tmp_path):
    raw = json.loads((REPO / "configs/models/pdsim/tiny-llama.json").read_text())
    (tmp_path / "pdsim").mkdir()
    raw["head_dim"] = None
    (tmp_path / "pdsim/ok.json").write_text(json.dumps(raw))
    assert load_model("pdsim/ok", tmp_path).head_dim == 64
    raw["hidden_size"] = 250  # not a multiple of 4 heads: null gives no head_dim to fall back on
    (tmp_path / "pdsim/bad.json").write_text(json.dumps(raw))
    with pytest.raises(PdsimError, match="bad.json: hidden_size 250"):
        load_model("pdsim/bad", tmp_path)


def test_a_billion_clients_do_not_loop_a_billion_times(tmp_path, capsys):
    out = tmp_path / "run.csv"
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), "--concurrency", "1000000000",
                                  "--num-requests", "3", "--input-len", "50", "--output-len", "5",
                                  "--output", str(out), "--quiet"], timeout_s=60)
    assert code == 0, err
    assert json.loads((tmp_path / "run_summary.json").read_text())["finished"] == 3


@pytest.mark.parametrize("args", [
    ["workload", "generate", "--num-requests", "1000000000", "--output", "OUT/t.jsonl"],
    ["run", "--cluster-config", str(CONFIG), "--concurrency", "4", "--num-requests", "1000000000", "--input-len", "10",
     "--output-len", "2", "--output", "OUT/r.csv"],
    ["sweep", "--base-config", str(CONFIG), "--dataset", str(TRACE), "--gpus", "2", "--slo-ttft-ms", "200",
     "--slo-tpot-ms", "50", "--rates", "1e6", "--min-duration-s", "1e6", "--workers", "1", "--out", "OUT"],
])
def test_a_request_count_past_memory_is_refused_before_it_is_built(tmp_path, capsys, args):
    # A billion requests would take ~1.6 TB: refused with the limit, not run out of memory.
    out = tmp_path / "out"
    code, err = _run_cli(capsys, [a.replace("OUT", str(out)) for a in args], timeout_s=60)
    assert code == 2 and "pdsim runs at most 10,000,000 in one simulation" in err, err
    assert "Traceback" not in err and not list(out.glob("*.csv")) and not list(out.glob("*.jsonl"))


@pytest.mark.parametrize("args", [
    ["sweep", "--base-config", str(CONFIG), "--dataset", str(TRACE), "--gpus", "2", "--slo-ttft-ms", "nan",
     "--slo-tpot-ms", "5", "--out", "OUT"],
    ["search", "--base-config", str(CONFIG), "--dataset", str(TRACE), "--gpus", "2", "--slo-ttft-ms", "50",
     "--slo-tpot-ms", "inf", "--out", "OUT"],
    ["validate", "--measured", str(CONFIG), "--step-overhead-us", "-5", "--output", "OUT/v.csv"],
    ["calibrate", "--measured", str(CONFIG), "--client-delay-ms", "nan", "--out", "OUT/c.json"],
])
def test_hostile_sweep_and_validate_options(tmp_path, capsys, args):
    out = tmp_path / "out"
    code, err = _run_cli(capsys, [a.replace("OUT", str(out)) for a in args])
    flag = next(a for a, v in zip(args, args[1:]) if v in ("nan", "inf", "-5"))
    _assert_clean_error(code, err, flag)
    assert not out.exists()


def test_hostile_measured_runs_name_the_file(tmp_path, capsys):
    line = ('{"input_toks": 20, "output_toks": 4, "arrival_time": 0, "queued_ts": 0, "first_token_ts": 0.1, '
            '"last_token_ts": 0.2}')
    cases = {
        "utf16.jsonl": ((line + "\n").encode("utf-16"), "UTF-16"),
        "dup.jsonl": ((line[:-1] + ', "queued_ts": 5}\n').encode(), "'queued_ts' appears twice"),
        "deep.jsonl": (("[" * 100_000 + "]" * 100_000 + "\n").encode(), "nested too deeply"),
        "bench.json": (b'{"ttfts": [0.1], "itls": [[]], "input_lens": [5], "output_lens": [1], "ttfts": [1]}',
                       "'ttfts' appears twice"),
        "order.jsonl": ((line + "\n" + line.replace('"first_token_ts": 0.1', '"first_token_ts": 0.3') + "\n").encode(),
                        "order.jsonl:2: last_token_ts 0.2 is before first_token_ts 0.3"),
        "broken.jsonl": ((line + "\n" + line.replace(", ", " ", 1) + "\n").encode(), "broken.jsonl:2:19: not valid"),
        # A placeholder stamp, in order within its request, made its TTFT 480,000 s at exit 0.
        "far.jsonl": ("".join(line.replace('"queued_ts": 0', f'"queued_ts": {479748 + i}')
                              .replace('"first_token_ts": 0.1', f'"first_token_ts": {479748.1 + i}')
                              .replace('"last_token_ts": 0.2', f'"last_token_ts": {479748.2 + i}') + "\n"
                              for i in range(5)).replace('"queued_ts": 479750', '"queued_ts": -1').encode(),
                      "far.jsonl:3: field 'queued_ts': -1 lies far outside the run's engine times"),
    }
    for name, (data, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        out = tmp_path / "out" / "v.csv"
        code, err = _run_cli(capsys, ["validate", "--measured", str(path), "--cluster-config", str(CONFIG),
                                      "--output", str(out)])
        _assert_clean_error(code, err, str(path), words)
        assert not out.exists()  # (validate makes the output folder before reading: the files task's remit)


@pytest.mark.parametrize(("name", "mangle", "words"), [
    ("dense.csv", lambda b: b.decode().encode("utf-16"), "UTF-16"),
    ("dense.csv", lambda b: b.replace(b"op,", b"op\xe9,", 1), "not valid UTF-8"),
    ("meta.json", lambda b: b.replace(b'"tp"', b'"tp": 1, "tp"', 1), "'tp' appears twice"),
])
def test_profile_files_that_are_not_utf8_json_or_csv_name_the_file(tmp_path, capsys, name, mangle, words):
    profile = _profile_copy(tmp_path, lambda m: None)
    (profile / name).write_bytes(mangle((profile / name).read_bytes()))
    code, err, out = _run_with_profile(tmp_path, capsys, profile)
    _assert_clean_error(code, err, str(profile / name), words)
    assert not out.parent.exists()


def test_a_bad_jsonl_line_is_located_as_file_line_column():
    from pdsim.errors import parse_json

    with pytest.raises(PdsimError, match=r"^f\.jsonl:2:9: not valid JSON \(Expecting ',' delimiter\)$"):
        parse_json('{"a": 1 "b": 2}', "f.jsonl:2")
    with pytest.raises(PdsimError, match=r"^f\.json:2:6: not valid JSON"):
        parse_json('{"a": 1,\n "b" 2}', "f.json")


@pytest.mark.parametrize(("args", "words"), [
    (["--max-kv", "8"], "max_kv must be >= 16"),  # the layer-overhead point's KV: an IndexError
    (["--attention", "flash"], "--attention flash: flash-attn does not run here"),  # ModuleNotFoundError
    (["--hardware", "H100-SXM"], "--hardware H100-SXM: a GPU pdsim knows, but this runs on the CPU"),
    (["--hardware", "../../escape"], "--hardware '../../escape': expected a name of letters"),  # wrote outside --out
    (["--check", "--check-kv", "-5"], "--check-kv: expected a KV length >= 1"),  # negative dimension
])
def test_hostile_profiler_options_are_refused_before_measuring(tmp_path, capsys, args, words):
    code, err = _run_cli(capsys, ["profile", "--model", "JackFram/llama-160m", "--device", "cpu", "--max-tokens", "4",
                                  "--max-batch", "4", "--out", str(tmp_path / "p"), "--quiet", *args])
    _assert_clean_error(code, err, words)
    assert not (tmp_path / "p").exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--check-kv", "2048"], "--check-kv 2048: a decode step at that KV length holds 2049 tokens, past "
                             "JackFram/llama-160m's context of 2048"),
    (["--check-prefill", "16,4096"], "--check-prefill 4096: past JackFram/llama-160m's context of 2048 tokens"),
])
def test_profile_check_past_the_models_context_is_refused(capsys, args, words):
    # The decode step reads KV of --check-kv and writes one more token: 2048 + 1 is past the context.
    cpu_profile = REPO / "profiles/CPU-1core/JackFram/llama-160m/bfloat16/tp1"
    code, err = _run_cli(capsys, ["profile", "--check", "--model", "JackFram/llama-160m", "--device", "cpu",
                                  "--profile-dir", str(cpu_profile), "--threads", "1", "--quiet", *args])
    _assert_clean_error(code, err, words)


def test_resume_settings_that_are_no_object_are_one_line(tmp_path, capsys):
    from pdsim.sweep.rows import RowWriter

    runs = tmp_path / "runs.csv"
    runs.write_text("label\n")
    (tmp_path / "runs.settings.json").write_text("[1, 2]")
    with pytest.raises(PdsimError, match=r"runs.settings.json: expected the JSON object of settings pdsim writes"):
        RowWriter(runs, ["label"], True, {"seed": 0})


def test_import_aiconfigurator_checks_every_tp_and_the_folder_first(tmp_path, capsys):
    args = ["profile", "import-aiconfigurator", "--system", "h100_sxm", "--model", "Qwen/Qwen3-32B",
            "--out", str(tmp_path / "p")]
    (tmp_path / "f.txt").write_text("x")
    code, err = _run_cli(capsys, [*args, "--systems-dir", str(tmp_path / "f.txt"), "--tp", "1"])
    _assert_clean_error(code, err, "--systems-dir", "not a folder")
    # TP 3 fails after TP 1 was written: checked first, nothing is left behind.
    code, err = _run_cli(capsys, [*args, "--systems-dir", str(tmp_path), "--tp", "1", "--tp", "3"])
    _assert_clean_error(code, err, "cannot be split over tp=3")
    assert not (tmp_path / "p").exists()


def test_profile_compare_names_a_bad_timings_cell_and_says_when_setups_differ(tmp_path, capsys):
    prof = tmp_path / "a"
    shutil.copytree(PROFILE, prof)
    timings = prof / "timings.csv"
    good = timings.read_text()
    lines = good.splitlines()
    header = lines[0].split(",")
    cells = lines[2].split(",")
    cells[header.index("median_us")] = "abc"  # crashed with ValueError
    timings.write_text("\n".join([lines[0], lines[1], ",".join(cells), *lines[3:]]) + "\n")
    code, err = _run_cli(capsys, ["profile", "compare", str(prof), str(PROFILE)])
    _assert_clean_error(code, err, f"{timings}:3: median_us 'abc'")
    timings.write_bytes(good.encode().replace(b"dense", b"d\xe9nse", 1))
    code, err = _run_cli(capsys, ["profile", "compare", str(prof), str(PROFILE)])
    _assert_clean_error(code, err, "not valid UTF-8")
    timings.write_text(good)
    main(["profile", "compare", str(PROFILE), str(REPO / "profiles/H200/meta-llama/Llama-3.1-8B/bfloat16/tp1")])
    assert "NOTE: the profiles differ in model (JackFram/llama-160m vs meta-llama/Llama-3.1-8B)" in \
        capsys.readouterr().out


@pytest.mark.parametrize("grid", ['"abc"', '{"max_tokens": 64, "oops": 1}', '{"max_tokens": -5}'])
def test_only_names_a_malformed_grid_in_meta_json(tmp_path, capsys, grid):
    root = tmp_path / "profiles"
    prof = root / "CPU-1core/JackFram/llama-160m/bfloat16/tp1"
    shutil.copytree(PROFILE, prof)
    meta = json.loads((prof / "meta.json").read_text())
    meta["grid"] = json.loads(grid)
    (prof / "meta.json").write_text(json.dumps(meta))
    code, err = _run_cli(capsys, ["profile", "--model", "JackFram/llama-160m", "--device", "cpu", "--threads", "1",
                                  "--out", str(root), "--quiet", "--only", "layer_overhead"])
    _assert_clean_error(code, err, f"{prof / 'meta.json'}: field 'grid'")  # a TypeError or ValueError before


GPT_OSS = {"model_name": "openai/gpt-oss-20b", "hardware": "H100-SXM", "npu_mem": {"mem_size": 80, "mem_bw": 3350},
           "pd_type": None}


@pytest.mark.parametrize(("knobs", "field", "words"), [
    # A pipeline stage of a hybrid (sliding + full) KV cache was a division by zero.
    ({"pp_size": 2, "num_npus": 2}, "instances[0]", "pp_size 2: pipeline stages of openai/gpt-oss-20b"),
    ({"quantization": "fp8"}, "instances[0]", "gpt-oss expert weights are the checkpoint's MXFP4"),
    ({"num_gpu_blocks_override": 6, "max_num_seqs": 16}, "instances[0].num_gpu_blocks_override", "no room"),
    ({"profile_dir": ""}, "instances[0].profile_dir", "at least 1 character"),
])
def test_configs_the_fuzzer_broke_are_one_line_naming_the_field(tmp_path, capsys, knobs, field, words):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"num_nodes": 1, "link_bw": 16, "link_latency": 20000, "nodes": [
        {"num_instances": 1, "instances": [{**GPT_OSS, **knobs}]}]}))
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE_LINE)
    code, err = _run_cli(capsys, ["--cluster-config", str(cfg), "--dataset", str(trace), "--output",
                                  str(tmp_path / "out" / "run.csv"), "--quiet"])
    _assert_clean_error(code, err, str(cfg), field, words)


def test_dp_group_members_must_share_the_engines_arguments(tmp_path, capsys):
    # One vLLM engine with --data-parallel-size: its ranks cannot take different batch limits.
    raw = json.loads((REPO / "configs/cluster/single_node_pd_instance.json").read_text())
    insts = raw["nodes"][0]["instances"]
    for inst in insts:
        inst.update(pd_type=None, dp_group="A")
    insts[1]["max_num_seqs"] = 7
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(raw))
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE_LINE)
    code, err = _run_cli(capsys, ["--cluster-config", str(cfg), "--dataset", str(trace), "--output",
                                  str(tmp_path / "out" / "run.csv"), "--quiet"])
    _assert_clean_error(code, err, str(cfg), "dp_group \"A\"", "max_num_seqs 7")


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys")
def test_an_output_folder_no_file_can_be_made_in_is_refused_up_front(tmp_path, capsys):
    # os.access lets root write anywhere; /sys takes no new file even from root.
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE_LINE)
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), "--dataset", str(trace), "--output",
                                  "/sys/kernel/run.csv", "--quiet"])
    _assert_clean_error(code, err, "--output /sys/kernel/run.csv")


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's overflow warning was a second line
def test_a_rate_that_overflows_the_clock_is_one_line(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE_LINE + TRACE_LINE.replace('"arrival_time_ns": 0', '"arrival_time_ns": 1000'))
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), "--dataset", str(trace), "--rate", "1e-300",
                                  "--output", str(tmp_path / "out" / "run.csv"), "--quiet"])
    _assert_clean_error(code, err, "--rate 1e-300", "past the")


@pytest.mark.parametrize(("args", "words"), [
    (["--concurrency", "3", "--input-len", "10", "--output-len", "5", "--num-requests", "3", "--window", "0:1"],
     "--window: applies to a --dataset"),
    (["--concurrency", "3", "--input-len", "10", "--output-len", "5", "--num-requests", "3", "--time-scale", "2"],
     "--time-scale: applies to a --dataset"),
    (["--dataset", str(TRACE), "--concurrency", "2", "--time-scale", "2"],
     "--time-scale: a closed loop's clients send when their last request ends"),
])
def test_trace_options_that_would_change_nothing_are_refused(tmp_path, capsys, args, words):
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), *args, "--output", str(tmp_path / "o" / "r.csv"),
                                  "--quiet"])
    _assert_clean_error(code, err, words)


@pytest.mark.parametrize(("text", "words"), [
    ("5", "expected a JSON object"),
    ('{"ttfts": [0.1, 0.2], "itls": [[0.01], [0.01]], "input_lens": [10, 20], "output_lens": [2, 2], '
     '"start_times": [0, 1e12]}', "'start_times': the last request would arrive 1e+12 s after the first"),
])
def test_a_vllm_bench_trace_that_is_no_object_or_past_the_clock_is_one_line(tmp_path, capsys, text, words):
    trace = tmp_path / "bench.json"
    trace.write_text(text)
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), "--dataset", str(trace), "--dataset-format",
                                  "vllm-bench", "--output", str(tmp_path / "o" / "r.csv"), "--quiet"])
    _assert_clean_error(code, err, str(trace), words)


def test_a_csv_token_column_of_true_false_words_is_refused(tmp_path, capsys):
    # pandas reads such a column as booleans, which counted as 1 and 0 tokens.
    trace = tmp_path / "az.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:15:47,True,3\n2023-11-16 18:15:48,true,5\n")
    code, err = _run_cli(capsys, ["--cluster-config", str(CONFIG), "--dataset", str(trace), "--output",
                                  str(tmp_path / "o" / "r.csv"), "--quiet"])
    _assert_clean_error(code, err, f"{trace}:2: field 'ContextTokens'", "got True")
