"""The profiler on the CPU with pdsim/tiny-llama and tiny grids (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from pdsim.errors import PdsimError  # noqa: E402
from pdsim.models import load_model  # noqa: E402
from pdsim.perf.predictor import StepTimePredictor  # noqa: E402
from pdsim.perf.profile import profile_path, read_profile  # noqa: E402
from pdsim.profiler.cli import profile_group  # noqa: E402
from pdsim.profiler.compare import compare_profiles  # noqa: E402
from pdsim.profiler.grid import GridSpec, geometric_grid  # noqa: E402
from pdsim.profiler.timing import iter_timings  # noqa: E402

MODEL = "pdsim/tiny-llama"
GRID = ["--max-tokens", "64", "--max-kv", "64", "--max-batch", "8"]
FAST = ["--device", "cpu", "--threads", "1", "--warmup", "1", "--repeats", "3", "--quiet"]


def _invoke(*args: str):
    return CliRunner().invoke(profile_group, list(args), catch_exceptions=True)


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("profiles")
    result = _invoke("--model", MODEL, "--out", str(out), *GRID, *FAST)
    assert result.exit_code == 0, result.output + repr(result.exception)
    path = profile_path(out, "CPU-1core", MODEL, "bfloat16", 1)
    assert f"wrote {path}" in result.output
    assert f"runs use it with --profiles-root {out} (or --profile-dir {path})" in result.output  # how to use it
    return path


def test_grid_is_dense_then_geometric() -> None:
    grid = geometric_grid(8192)
    assert grid[:16] == list(range(1, 17))
    assert grid[-1] == 8192 and len(grid) == len(set(grid)) and grid == sorted(grid)
    ratios = [b / a for a, b in zip(grid[15:], grid[16:], strict=False)]
    assert max(ratios) <= 1.25 + 1e-9  # denser than doubling
    assert {128, 256, 512, 1024, 2048, 4096} <= set(grid)
    assert geometric_grid(100)[-1] == 100


def test_every_table_has_the_grid(profile_dir: Path) -> None:
    profile = read_profile(profile_dir)
    grid = GridSpec(max_tokens=64, max_batch=8, max_kv=64)
    assert profile.meta.source == "measured" and profile.meta.tool == "pdsim profile"
    assert profile.meta.num_layers == 2 and profile.meta.device["threads"] == 1
    assert profile.meta.activation_peak_bytes > 0 and profile.meta.activation_tokens == 64
    expected_dense = {
        "layernorm",
        "qkv_proj",
        "rotary_emb",
        "o_proj",
        "gate_up_proj",
        "act_fn",
        "down_proj",
        "residual_add",
        "embedding",
        "final_layernorm",
        "layer_overhead",
    }
    assert set(profile.dense) == expected_dense  # no qk_norm: tiny-llama is a Llama
    for op, table in profile.dense.items():
        assert table.xs.tolist() == grid.tokens()
        assert (table.ys >= 0).all() if op == "layer_overhead" else (table.ys > 0).all()
    assert set(profile.per_sequence) == {"lm_head", "sampler"}
    for table in profile.per_sequence.values():
        assert table.xs.tolist() == grid.sequences() and (table.ys > 0).all()
    assert profile.attention_prefill.xs.tolist() == grid.prefill_chunks()
    assert profile.attention_prefill.ys.tolist() == grid.prefill_prefixes()
    assert profile.attention_decode.xs.tolist() == grid.decode_batches()
    assert profile.attention_decode.ys.tolist() == grid.decode_kv()
    assert (profile.attention_prefill.values > 0).all() and (profile.attention_decode.values > 0).all()
    assert profile.allreduce is None
    raw = json.loads((profile_dir / "meta.json").read_text())
    assert raw["grid"]["max_tokens"] == 64
    assert set(raw["spread"]) == {"dense", "per_sequence", "attention_prefill", "attention_decode",
                                  "attention_decode_skew", "layer_forward"}
    # Uneven decode batches (one request at a long KV, the rest at an eighth of it), for the decode skew.
    assert sorted(r[:3] for r in profile.decode_skew_rows) == sorted(grid.decode_skew())
    assert all(r[3] > 0 for r in profile.decode_skew_rows) and min(r[0] for r in profile.decode_skew_rows) == 2
    assert "prefix 0" in raw["layer_overhead"]["definition"]


def test_layer_overhead_is_the_layer_forward_minus_its_ops(profile_dir: Path) -> None:
    from pdsim.perf.profile import layer_ops_us

    profile = read_profile(profile_dir)
    forward = {int(r["x"]): float(r["median_us"]) for r in iter_timings(profile_dir) if r["table"] == "layer_forward"}
    overhead = profile.dense["layer_overhead"]
    assert sorted(forward) == overhead.xs.tolist()
    for t, us in forward.items():
        assert overhead(t) >= 0
        # The files keep 6 significant digits, so the difference of two values of size `us` can be
        # off by a few millionths of `us`.
        assert overhead(t) == pytest.approx(max(0.0, us - layer_ops_us(profile, t)), rel=1e-4, abs=2e-5 * us)


def test_only_layer_overhead_keeps_the_other_tables(tmp_path: Path) -> None:
    small = ["--max-tokens", "16", "--max-kv", "16", "--max-batch", "2"]
    assert _invoke("--model", MODEL, "--out", str(tmp_path), *small, *FAST).exit_code == 0
    path = profile_path(tmp_path, "CPU-1core", MODEL, "bfloat16", 1)
    before = {f: (path / f).read_text() for f in ("per_sequence.csv", "attention_prefill.csv", "attention_decode.csv")}
    dense_before = [line for line in (path / "dense.csv").read_text().splitlines() if "layer_overhead" not in line]
    (path / "dense.csv").write_text("\n".join(dense_before) + "\n")  # as a profile made before the op
    assert "layer_overhead" not in read_profile(path).dense
    # the grid comes from meta.json, not from these (default) options
    result = _invoke("--model", MODEL, "--out", str(tmp_path), "--only", "layer_overhead", *FAST)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert {f: (path / f).read_text() for f in before} == before
    lines = (path / "dense.csv").read_text().splitlines()
    assert [line for line in lines if "layer_overhead" not in line] == dense_before
    profile = read_profile(path)
    assert profile.dense["layer_overhead"].xs.tolist() == GridSpec(16, 2, 16).tokens()
    assert (profile.dense["layer_overhead"].ys >= 0).all()
    meta = json.loads((path / "meta.json").read_text())
    assert "--only layer_overhead" in meta["layer_overhead"]["how"]
    assert sum(r["table"] == "layer_forward" for r in iter_timings(path)) == len(GridSpec(16, 2, 16).tokens())


def test_only_attention_decode_skew_adds_it_to_an_older_profile(tmp_path: Path) -> None:
    small = ["--max-tokens", "16", "--max-kv", "64", "--max-batch", "4"]
    assert _invoke("--model", MODEL, "--out", str(tmp_path), *small, *FAST).exit_code == 0
    path = profile_path(tmp_path, "CPU-1core", MODEL, "bfloat16", 1)
    (path / "attention_decode_skew.csv").unlink()  # as a profile made before the profiler timed it
    before = {f.name: f.read_text() for f in path.glob("*.csv") if f.name != "timings.csv"}
    assert read_profile(path).decode_skew_rows is None
    result = _invoke("--model", MODEL, "--out", str(tmp_path), "--only", "attention_decode_skew", *FAST)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert {f: (path / f).read_text() for f in before} == before
    rows = read_profile(path).decode_skew_rows
    assert sorted(r[:3] for r in rows) == sorted(GridSpec(16, 4, 64).decode_skew()) and all(r[3] > 0 for r in rows)
    meta = json.loads((path / "meta.json").read_text())
    assert "--only attention_decode_skew" in meta["attention_decode_skew"]["how"]
    timed = [r for r in iter_timings(path) if r["table"] == "attention_decode_skew"]
    assert len(timed) == len(rows)
    # A profile that does not record its grid: the series would be timed on the command's default grid, beyond
    # the decode table it is read against.
    meta.pop("grid")
    (path / "meta.json").write_text(json.dumps(meta))
    result = _invoke("--model", MODEL, "--out", str(tmp_path), "--only", "attention_decode_skew", *FAST)
    assert isinstance(result.exception, PdsimError), result.output
    assert "meta.json: no field 'grid'" in str(result.exception)
    assert read_profile(path).decode_skew_rows == rows


def test_predictor_uses_the_profile(profile_dir: Path) -> None:
    model = load_model(MODEL)
    predictor = StepTimePredictor(read_profile(profile_dir), model, 1, None)
    small = predictor.step_time_s([(4, 0)], 0, 0)
    large = predictor.step_time_s([(64, 0)], 0, 0)
    assert 0 < small < large
    assert predictor.step_time_s([], 4, 4 * 32) > 0


def test_check_returns_numbers(profile_dir: Path) -> None:
    result = _invoke(
        "--check",
        "--model",
        MODEL,
        "--profile-dir",
        str(profile_dir),
        *FAST,
        "--check-prefill",
        "16,64",
        "--check-decode",
        "1,4",
        "--check-kv",
        "32",
    )
    lines = result.output.splitlines()
    # The verdict on a tiny model on a shared CPU is timing noise; the exit status follows it (1 on FAIL)
    expected = 1 if lines and lines[-1].startswith("verdict: FAIL") else 0
    assert result.exit_code == expected, result.output + repr(result.exception)
    rows = [line for line in lines if line.startswith(("prefill N=", "decode B="))]
    # 2 prefills, 2 uniform decodes and one uneven (B=4: one request at 64 cached tokens, the grid's most)
    assert len(rows) == 5 and rows[-1].startswith("decode B=4 L=32,64 ")
    for row in rows:
        measured, predicted = (float(v) for v in row[22:].split()[:2])
        assert measured > 0 and predicted > 0


def test_check_refuses_a_tp_dtype_or_hardware_the_profile_it_is_given_is_not(profile_dir: Path) -> None:
    base = ("--check", "--model", MODEL, "--profile-dir", str(profile_dir), *FAST)
    for option, value, said in (("--tp", "2", "--tp 2: "), ("--dtype", "float16", "--dtype float16: "),
                                ("--hardware", "CPU-7core", "--hardware CPU-7core: ")):
        result = _invoke(*base, option, value)
        assert isinstance(result.exception, PdsimError), result.output
        assert str(result.exception).startswith(said) and "is a profile of" in str(result.exception)


def test_compare_same_profile_is_zero(profile_dir: Path) -> None:
    diffs = compare_profiles(profile_dir, profile_dir)
    assert {d.table for d in diffs} == {"dense", "per_sequence", "attention_prefill", "attention_decode"}
    assert all(d.max_diff_rel == 0 for d in diffs)


def test_suspicious_points_flags_only_slow_outliers() -> None:
    from pdsim.profiler.outliers import suspicious_points

    # 1-D: linear and convex series are fine; a point far above its neighbours' chord is not
    linear = {("dense", "a", (x,)): 10.0 + 2.0 * x for x in (1, 2, 4, 8, 16)}
    convex = {("dense", "b", (x,)): float(x * x) for x in (1, 2, 4, 8, 16)}
    bumped = {("dense", "c", (x,)): 10.0 * x for x in (1, 2, 4, 8, 16)}
    bumped[("dense", "c", (4,))] = 60.0  # chord 2..8 at 4: 40
    dip = {("dense", "d", (x,)): 10.0 * x for x in (1, 2, 4, 8)}
    dip[("dense", "d", (4,))] = 35.0  # a fast point is never flagged (load only adds time)
    first = {("per_sequence", "e", (x,)): 10.0 * x for x in (1, 2, 3)}
    first[("per_sequence", "e", (1,))] = 40.0  # slower than the next, larger point
    medians = {**linear, **convex, **bumped, **dip, **first}
    assert suspicious_points(medians, 0.15) == {("dense", "c", (4,)), ("per_sequence", "e", (1,))}
    assert suspicious_points(medians, 0.6) == {("per_sequence", "e", (1,))}
    # 2-D: each row and column of an attention table is a series
    key = ("attention_decode", "attention_decode")
    grid = {(*key, (b, kv)): float(b * kv) for b in (1, 2, 4, 8) for kv in (16, 32, 64)}
    grid[(*key, (4, 32))] *= 1.5
    assert suspicious_points(grid) == {(*key, (4, 32))}
    # The uneven decode batches: along the batch size at fixed KV lengths
    key = ("attention_decode_skew", "attention_decode_skew")
    skew = {(*key, (b, s, long)): float(b * long) for b in (2, 4, 8) for s, long in ((4, 32), (8, 64))}
    skew[(*key, (4, 8, 64))] *= 1.5
    assert suspicious_points(skew) == {(*key, (4, 8, 64))}


def test_passes_and_rechecks_keep_the_fastest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim.profiler import run

    flagged_once: list[bool] = []

    def flag_one(medians, tolerance):  # noqa: ANN001, ANN202
        key = ("attention_decode", "attention_decode", (2, 16))
        assert key in medians and tolerance == 0.2
        if flagged_once:
            return set()
        flagged_once.append(True)
        return {key}

    monkeypatch.setattr(run, "suspicious_points", flag_one)
    small = ["--max-tokens", "16", "--max-kv", "16", "--max-batch", "2"]
    args = ["--model", MODEL, "--out", str(tmp_path), *small, *FAST, "--passes", "2", "--recheck-tolerance", "0.2"]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    path = profile_path(tmp_path, "CPU-1core", MODEL, "bfloat16", 1)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["timing"]["passes"] == 2 and meta["timing"]["remeasured_points"] == 1
    assert meta["timing"]["suspicious_points_left"] == []
    runs = {(r["table"], r["x"], r["y"]): int(r["runs"]) for r in iter_timings(path)}
    assert runs.pop(("attention_decode", "2", "16")) == 3
    assert set(runs.values()) == {2}
    assert isinstance(_invoke(*args[:-4], "--passes", "0").exception, PdsimError)


def test_qwen3_shards_and_qk_norm() -> None:
    """Qwen3's per-head q/k norm runs on the TP-sharded head counts."""
    from pdsim.profiler import ops

    model = load_model("Qwen/Qwen3-8B")
    s = ops.ShardShapes.of(model, 8)
    assert s.qk_norm and s.heads == model.num_heads // 8 and s.kv_heads == model.num_kv_heads // 8
    assert s.intermediate == model.intermediate_size // 8
    w = ops.LayerWeights.random(s, torch.bfloat16, "cpu")
    q, k, _ = ops.split_qkv(torch.randn(2, s.q_size + 2 * s.kv_size, dtype=torch.bfloat16), s)
    q, k = ops.qk_rms_norm(q, k, w.q_norm, w.k_norm)
    assert q.shape == (2, s.heads, model.head_dim) and k.shape == (2, s.kv_heads, model.head_dim)


def test_missing_torch_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim.profiler import cli

    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(PdsimError, match=r"the profiler needs torch: pip install torch \(pdsim's profile extra\)"):
        cli._require_torch()


def test_bad_model_is_a_clean_error() -> None:
    result = _invoke("--model", "nobody/no-such-model", *FAST)
    assert isinstance(result.exception, PdsimError)
    assert "unknown model 'nobody/no-such-model'" in str(result.exception)


def test_missing_model_option_is_a_usage_error() -> None:
    result = _invoke(*FAST)
    assert result.exit_code == 2 and "--model is required" in result.output


def test_bad_tp_is_a_clean_error(tmp_path: Path) -> None:
    result = _invoke("--model", MODEL, "--tp", "3", "--out", str(tmp_path), *GRID, *FAST)
    assert isinstance(result.exception, PdsimError) and "tp=3" in str(result.exception)


def test_profile_records_the_elementwise_ops_and_timer(profile_dir: Path) -> None:
    """On the CPU the elementwise ops run eagerly and the timer is the host clock; meta says so."""
    meta = json.loads((profile_dir / "meta.json").read_text())
    assert meta["device"]["elementwise_ops"] == "eager"
    assert meta["timing"]["timer"] == "time.perf_counter_ns"
    assert "elementwise ops: eager" in meta["notes"]


def test_gpu_only_kernels_fall_back_where_they_cannot_run() -> None:
    """torch's bundled FlashAttention-2 and compiled elementwise ops are CUDA paths: on a machine
    without them, `auto` picks SDPA and eager ops, saying why when it tried."""
    from pdsim.profiler import elementwise, ops
    from pdsim.profiler.attention import make_attention, torch_flash_available

    s = ops.ShardShapes.of(load_model(MODEL), 1)
    assert not torch_flash_available(s, "cpu", torch.bfloat16)
    assert make_attention(s, torch.bfloat16, "cpu").name == "sdpa"
    assert elementwise.make_elementwise("cpu", torch.bfloat16) is elementwise.EAGER
    if not torch.cuda.is_available():
        try:
            import triton  # noqa: F401
        except ImportError:
            ew = elementwise.make_elementwise("cuda", torch.bfloat16)
            assert ew.name == "eager" and "torch.compile unavailable" in ew.note
            with pytest.raises(ImportError):
                elementwise.make_elementwise("cuda", torch.bfloat16, "compiled")


def test_eager_elementwise_ops_are_the_ops_functions() -> None:
    """The layer's elementwise ops through `Elementwise` compute what the plain op functions do."""
    from pdsim.profiler import elementwise, ops

    s = ops.ShardShapes.of(load_model("Qwen/Qwen3-8B"), 8)
    w = ops.LayerWeights.random(s, torch.float32, "cpu")
    rope = ops.Rope(s, torch.float32, "cpu", 16)
    q, k, _ = ops.split_qkv(torch.randn(3, s.q_size + 2 * s.kv_size), s)
    ew = elementwise.EAGER
    positions = torch.tensor([0, 5, 9])
    got_q, got_k = ew.rotary_emb(q, k, positions, rope)
    want_q, _ = ops.rotary(q, k, positions, rope.cos, rope.sin)
    assert torch.equal(got_q, want_q) and got_k.shape == k.shape
    # rotary at position 0 is the identity
    assert torch.allclose(got_q[0], q[0])
    x = torch.randn(3, s.hidden)
    normed = ew.layernorm(x, w.input_norm)
    assert torch.allclose(normed.pow(2).mean(-1), torch.ones(3), atol=1e-3)
    native = elementwise._rms_norm_native(x, w.input_norm)
    assert torch.allclose(native, normed, atol=1e-5)


def test_timer_spin_and_graphs_leave_cpu_timing_alone() -> None:
    from pdsim.profiler.timing import Timer, TimingConfig

    calls: list[int] = []
    timer = Timer("cpu", TimingConfig(warmup=2, repeats=4), graphs=True)
    t = timer.time([lambda: calls.append(1)])
    assert not timer.graphs and t.repeats == 4 and len(calls) == 6 and not timer.graph_failures


def test_one_shard_check_leaves_the_allreduce_out() -> None:
    """A tp 2 profile checked on one GPU compares without the all-reduces it cannot run."""
    from pdsim.hardware import get_hardware
    from pdsim.perf.estimate import estimate_profile

    model = load_model("meta-llama/Llama-3.1-8B")
    hw = get_hardware("H100-SXM")
    tp2 = StepTimePredictor(estimate_profile(hw, model, "bfloat16", 2), model, 2, hw)
    tp1 = StepTimePredictor(estimate_profile(hw, model, "bfloat16", 1), model, 1, hw)
    assert tp1.allreduce_s(1024) == 0.0
    comm = tp2.allreduce_s(1024)
    assert 0 < comm < tp2.step_time_s([(1024, 0)], 0, 0)
    assert tp2.allreduce_s(4096) > comm


def test_compiled_elementwise_ops_are_compiled_as_vllm_compiles_them() -> None:
    """Only the token dim is dynamic (another hidden size recompiles, another token count does not),
    and the residual add is fused into the norm, computing what the eager add and norm compute;
    the grid then has no separate residual_add."""
    from torch._dynamo.utils import counters

    from pdsim.profiler import elementwise, ops

    torch._dynamo.reset()
    counters.clear()
    ew = elementwise._compiled()
    assert ew.fused_residual and not elementwise.EAGER.fused_residual
    for tokens, hidden in ((5, 64), (7, 64), (9, 64), (6, 96)):
        x, r, w = torch.randn(tokens, hidden), torch.randn(tokens, hidden), torch.randn(hidden)
        got, got_residual = ew.add_layernorm(x, r, w)
        want, want_residual = elementwise.EAGER.add_layernorm(x, r, w)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_residual, want_residual)
        torch.testing.assert_close(want, ops.layernorm(x + r, w))
    assert counters["stats"]["unique_graphs"] == 2  # one per hidden size, whatever the token count


def test_a_folder_the_profile_may_not_replace_is_refused_before_measuring(tmp_path: Path, monkeypatch) -> None:
    import pdsim.profiler.run as profiler_run

    target = profile_path(tmp_path, "CPU-1core", MODEL, "bfloat16", 1)
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("not a profile")

    def never(*_args, **_kwargs):
        raise AssertionError("measured before the output folder was checked")

    monkeypatch.setattr(profiler_run, "measure", never)
    result = _invoke("--model", MODEL, "--out", str(tmp_path), *GRID, *FAST)
    assert result.exit_code != 0 and "no pdsim profile (no meta.json)" in str(result.exception)
    assert (target / "notes.txt").read_text() == "not a profile"


def test_the_profilers_timings_are_part_of_the_profile_it_swaps_in(profile_dir: Path) -> None:
    # Written into the staged folder with the tables, not beside the profile after it was put in place.
    assert (profile_dir / "timings.csv").is_file()
    assert not [p for p in profile_dir.parent.iterdir() if p.name.startswith(".")]


def test_gpu_profiles_are_filed_under_the_board_configs_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim.profiler.cli import _hardware, gpu_hardware_name

    sxm, pcie = "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"
    assert gpu_hardware_name(None, sxm) == "H100-SXM"  # the default: this device's board
    assert gpu_hardware_name("H100", pcie) == "H100-PCIe"  # a family name: this device's board of it
    assert gpu_hardware_name("h100_sxm5", sxm) == "H100-SXM"  # an alias: the name configs resolve it to
    assert gpu_hardware_name("my-rig", "NVIDIA Mystery GPU") == "my-rig"  # unknown device: kept as given
    with pytest.raises(PdsimError, match=r"--hardware H100-SXM: names the H100-SXM, but this GPU is 'NVIDIA H100 "
                                         r"PCIe' \(H100-PCIe\)"):
        gpu_hardware_name("H100-SXM", pcie)
    with pytest.raises(PdsimError, match="--hardware A100: a family of boards .* this GPU .* is none of them"):
        gpu_hardware_name("A100", sxm)
    with pytest.raises(PdsimError, match="MIG slice"):
        gpu_hardware_name(None, "NVIDIA H100 80GB HBM3 MIG 3g.40gb")
    with pytest.raises(PdsimError, match=r"--hardware is required: .*'NVIDIA Mystery GPU'"):
        gpu_hardware_name(None, "NVIDIA Mystery GPU")
    # the command reads torch's name of the device it runs on
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: pcie)
    assert _hardware({"threads": None, "hardware": "H100"}, "cuda") == "H100-PCIe"


def test_flash_attn_prefill_makes_no_tensor_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor made inside the timed call is a host-to-device copy on a GPU, timed and uncapturable in a graph."""
    import sys
    import types

    from pdsim.profiler.attention import FlashAttention
    from pdsim.profiler.ops import ShardShapes

    calls = []
    fake = types.ModuleType("flash_attn")
    fake.flash_attn_varlen_func = lambda q, k, v, cu_q, cu_k, max_q, max_k, causal: calls.append(
        (cu_q.tolist(), cu_k.tolist(), max_q, max_k)) or q
    fake.flash_attn_with_kvcache = None
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    s = ShardShapes.of(load_model(MODEL), 1)
    attn = FlashAttention(s, torch.float32, "cpu")
    cache = attn.new_cache(1, 8, 4)
    q, kv = torch.randn(4, s.heads, s.head_dim), torch.randn(4, s.kv_heads, s.head_dim)

    def no_new_tensors(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tensor was made inside the timed call")

    for name in ("tensor", "full", "arange", "zeros", "as_tensor"):
        monkeypatch.setattr(torch, name, no_new_tensors)
    attn.prefill(q, kv, kv, cache)
    assert calls == [([0, 4], [0, 12], 4, 12)]


def test_clocks_are_read_for_the_gpu_torch_runs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """nvidia-smi numbers GPUs in PCI order whatever CUDA_VISIBLE_DEVICES says: it is given the GPU's UUID."""
    import subprocess
    import types

    from pdsim.profiler import device

    seen: list[list[str]] = []

    real_run = subprocess.run

    def fake_run(args: list[str], **kwargs: object) -> object:
        if args[0] != "nvidia-smi":  # platform's own calls
            return real_run(args, **kwargs)
        seen.append(args)
        return types.SimpleNamespace(stdout="1980 MHz, 2619 MHz, 1980 MHz, 2619 MHz, 700.00 W, 570.1\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=80 * 2**30,
                                  multi_processor_count=132, L2_cache_size=50 * 2**20,
                                  uuid="6e4e2ab8-0c1c-d0d2-3f5e-1b2a7c9d0e11")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: props)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    info = device.describe_device("cuda", 1)
    assert seen[0][1] == "--id=GPU-6e4e2ab8-0c1c-d0d2-3f5e-1b2a7c9d0e11"
    assert info["clocks"]["clocks.max.sm"] == "1980 MHz"
    assert device.nvidia_smi_id("GPU-abc") == "GPU-abc" and device.nvidia_smi_id("") is None


def test_vllms_attention_kernel_by_compute_capability() -> None:
    from pdsim.perf.attention_kernel import kernel_fields, vllm_attention_kernel

    assert vllm_attention_kernel(9, 0) == "FlashAttention-3"  # Hopper
    assert vllm_attention_kernel(10, 0) == "FlashInfer"  # Blackwell: FlashInfer first
    assert vllm_attention_kernel(8, 0) == vllm_attention_kernel(8, 9) == "FlashAttention-2"
    assert vllm_attention_kernel(8, 9, "fp8_e4m3") == "FlashInfer"  # vLLM's FA2 reads no fp8 KV
    assert vllm_attention_kernel(9, 0, "fp8") == "FlashAttention-3"
    assert kernel_fields("torch_flash_attention_2", "9.0")["attention_kernel_matches_vllm"] is False
    assert kernel_fields("flash_attn", "8.0") == {"attention_kernel_timed": "FlashAttention-2",
                                                   "vllm_attention_kernel": "FlashAttention-2",
                                                   "attention_kernel_matches_vllm": True}


def test_a_profile_not_timed_with_vllms_kernels_says_so(tmp_path: Path, profile_dir: Path) -> None:
    import shutil

    from pdsim.config import cluster_config_from_dict
    from pdsim.profiler.run import run_warnings
    from tests.helpers import run

    meta = json.loads((profile_dir / "meta.json").read_text())
    assert "attention_kernel_matches_vllm" not in meta["device"] and run_warnings(meta) == []  # CPU: nothing said
    meta["device"].update(compute_capability="9.0", attention_kernel_timed="FlashAttention-2",
                          vllm_attention_kernel="FlashAttention-3", attention_kernel_matches_vllm=False,
                          elementwise_compile_failed="torch.compile unavailable (ImportError: no triton)")
    meta["timing"].update(points_timed_without_graph=3, graph_failures=["capture failed"])
    lines = run_warnings(meta)
    assert lines[0] == ("WARNING: the profile's attention was timed with FlashAttention-2, but vLLM 0.19 runs "
                        "FlashAttention-3 on this GPU (compute capability 9.0), so its attention times are not "
                        "vLLM's (on Hopper FlashAttention-2 takes about twice FlashAttention-3's time)")
    assert lines[1].startswith("WARNING: --elementwise auto fell back to eager ops, torch.compile unavailable")
    assert lines[2].startswith("WARNING: 3 grid point(s) timed without a CUDA graph (capture failed: capture failed)")
    # a run with the profile says it where it says the step times are measured
    copy = tmp_path / "profile"
    shutil.copytree(profile_dir, copy)
    (copy / "meta.json").write_text(json.dumps(meta))
    raw = json.loads((Path(__file__).parents[1] / "configs" / "cluster" / "cpu_llama160m.json").read_text())
    raw["nodes"][0]["instances"][0].update(model_name=MODEL, max_num_seqs=8, max_num_batched_tokens=64)
    cfg = cluster_config_from_dict(raw)
    notes = run(cfg, [(10, 3, 0.0)], profile_dir=copy).instances[0].predictor.notes
    assert lines[0].removeprefix("WARNING: ") in notes
    # A profile made before the match was recorded (the bundled H200 one) is judged by its backend and GPU.
    from pdsim.perf.attention_kernel import kernel_mismatch

    older = {"name": "NVIDIA H200", "compute_capability": "9.0", "attention_backend": "torch_flash_attention_2"}
    assert kernel_mismatch(older) == lines[0].removeprefix("WARNING: ")
    assert kernel_mismatch({**older, "compute_capability": "8.0"}) is None
    assert kernel_mismatch({"attention_backend": "sdpa"}) is None  # no GPU recorded: nothing to say


@pytest.mark.parametrize(("key", "recorded", "what"), [
    ("attention_backend", "flash_attn", "attention backend 'flash_attn'"),
    ("elementwise_ops", "torch.compile (inductor), token dim dynamic", "elementwise ops 'torch.compile (inductor)'"),
    ("name", "NVIDIA H100 80GB HBM3", "device 'NVIDIA H100 80GB HBM3'"),
])
def test_only_refuses_other_kernels_than_the_profiles(tmp_path: Path, profile_dir: Path, key: str, recorded: str,
                                                      what: str) -> None:
    import shutil

    out = tmp_path / "profiles"
    path = profile_path(out, "CPU-1core", MODEL, "bfloat16", 1)
    shutil.copytree(profile_dir, path)
    meta = json.loads((path / "meta.json").read_text())
    meta["device"][key] = recorded
    (path / "meta.json").write_text(json.dumps(meta))
    timings = (path / "timings.csv").read_bytes()
    result = _invoke("--model", MODEL, "--out", str(out), "--only", "layer_overhead", *FAST)
    assert result.exit_code != 0 and isinstance(result.exception, PdsimError)
    assert f"profile measured with {what}, but --only would measure with" in str(result.exception)
    assert (path / "timings.csv").read_bytes() == timings


def test_a_moe_model_is_profiled_without_its_experts_and_says_so(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim import models

    qwen = json.loads((Path(models.MODELS_DIR) / "Qwen" / "Qwen3-30B-A3B.json").read_text())
    tiny = {**qwen, "hidden_size": 128, "head_dim": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 256, "moe_intermediate_size": 64, "num_experts": 8, "num_experts_per_tok": 2,
            "num_hidden_layers": 2, "vocab_size": 512, "max_position_embeddings": 4096}
    config = tmp_path / "tiny-moe.json"
    config.write_text(json.dumps(tiny))
    monkeypatch.setitem(models._RUN_MODEL_FILES, "pdsim/tiny-qwen3-moe", config)
    out = tmp_path / "profiles"
    small = ["--max-tokens", "16", "--max-kv", "16", "--max-batch", "2"]
    result = _invoke("--model", "pdsim/tiny-qwen3-moe", "--out", str(out), *small, *FAST)
    assert result.exit_code == 0, result.output + repr(result.exception)
    note = ("NOTE: pdsim/tiny-qwen3-moe is a mixture-of-experts model: the profiler does not measure its expert "
            "layers, nor the dense MLP of intermediate_size, which none of its layers has; runs with this profile "
            "estimate the experts from the hardware's specs (pdsim/hardware.py)")
    lines = result.output.splitlines()
    assert lines[0] == note and lines[-1] == note  # said before measuring and at the end
    path = profile_path(out, "CPU-1core", "pdsim/tiny-qwen3-moe", "bfloat16", 1)
    assert json.loads((path / "meta.json").read_text())["device"]["moe_experts"] == note.removeprefix("NOTE: ")
    dense = read_profile(path).dense
    assert not {"gate_up_proj", "act_fn", "down_proj"} & set(dense) and "layer_overhead" in dense


def test_capped_grid_drops_whole_kv_columns_then_batches() -> None:
    from pdsim.profiler.grid import capped_grid

    grid = GridSpec(max_tokens=64, max_batch=8, max_kv=64)  # decode KV 1, 16, 24, 32, 48, 64; batches 1-4, 6, 8

    def fits_in(tokens: int):  # noqa: ANN202
        return lambda n, kv: n * kv <= tokens

    capped = capped_grid(grid, fits_in(8 * 40), lambda c, p: True)
    assert capped == GridSpec(max_tokens=64, max_batch=8, max_kv=32)
    assert all(n * kv <= 8 * 40 for n in capped.decode_batches() for kv in capped.decode_kv())  # a full rectangle
    # where not even the smallest KV fits the largest batch: KV 16 and the batches that fit there
    assert capped_grid(grid, fits_in(4 * 16), lambda c, p: True) == GridSpec(max_tokens=64, max_batch=4, max_kv=16)
    # the prefill table's chunk x prefix likewise
    assert capped_grid(grid, lambda n, kv: True, lambda c, p: c + p <= 64 + 24).max_kv == 24
    assert capped_grid(grid, lambda n, kv: True, lambda c, p: c + p <= 32).max_tokens == 16
    assert capped_grid(grid, fits_in(10**6), lambda c, p: True) == grid
    with pytest.raises(ValueError, match="smallest decode batch"):
        capped_grid(grid, fits_in(8), lambda c, p: True)


def test_a_24gb_card_caps_llama_8bs_decode_kv_to_its_free_memory() -> None:
    from pdsim.profiler.ops import ShardShapes
    from pdsim.profiler.points import PointBuilder
    from pdsim.profiler.run import memory_capped_grid, vllm_kv_tokens

    model = load_model("meta-llama/Llama-3.1-8B")
    b = object.__new__(PointBuilder)  # the byte count alone, without allocating 8B's weights
    b.s, b.elem, b.num_layers, b.flush_bytes = ShardShapes.of(model, 1), 2, 32, 2 * 48 * 2**20  # an L4's L2
    gib = 2**30
    # 256 sequences x 16385 tokens x K and V x 8 heads x 128 x 2 bytes, one copy (larger than the L2), q/k/v, output
    assert b.attention_bytes(256, 16384, 1) == 2 * 256 * 16385 * 1024 * 2 + 256 * (4096 + 2048) * 2 + 256 * 4096 * 2
    default = GridSpec(max_tokens=8192, max_batch=256, max_kv=16384)
    # an L4 / A10: ~22 GiB seen by CUDA, ~4 GiB held by the profiler's weight copies and embeddings
    assert memory_capped_grid(default, int(17.6 * gib), b.attention_bytes) == GridSpec(8192, 256, 12288)
    assert memory_capped_grid(default, 40 * gib, b.attention_bytes) == default
    with pytest.raises(PdsimError, match="--max-batch"):
        memory_capped_grid(default, gib, b.attention_bytes)  # all of it the margin
    # vLLM beside 8B's 16 GB of weights on a 24 GiB card: some 54k tokens of KV cache, far below 256 x 16384
    assert 50_000 < vllm_kv_tokens(model, "bfloat16", 1, 24 * gib) < 60_000


def test_the_grid_is_capped_to_the_free_gpu_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim.profiler import run
    from pdsim.profiler.points import PointBuilder

    # the CPU has no fixed free memory: stand in a GPU's, 1 GiB margin + a budget that holds decode 8 x 48
    monkeypatch.setattr(run, "_free_device_bytes", lambda device: (2**30 + 8 * 49 * 1000, 24 * 2**30))
    monkeypatch.setattr(PointBuilder, "attention_bytes", lambda self, n, cached, new: n * (cached + new) * 1000)
    result = _invoke("--model", MODEL, "--out", str(tmp_path), *GRID, *FAST)
    assert result.exit_code == 0, result.output + repr(result.exception)
    path = profile_path(tmp_path, "CPU-1core", MODEL, "bfloat16", 1)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["grid"]["max_kv"] == 48 and meta["grid"]["max_batch"] == 8
    cap = meta["grid_capped"][0]
    assert cap["by"] == "free memory" and cap["changed"] == {"max_kv": [64, 48]}
    assert "NOTE: grid capped to the free GPU memory: --max-kv 64 -> 48 (decode attention at 8x64" in result.output
    assert "tokens of KV cache on this GPU" in result.output
    profile = read_profile(path)
    assert max(profile.attention_decode.ys) == 48 and max(profile.attention_prefill.ys) == 48


def test_a_point_out_of_memory_caps_its_table_and_keeps_the_rest(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim.profiler.points import PointBuilder

    decode = PointBuilder.decode

    def oom_from_4x32(self, batch: int, kv: int):  # noqa: ANN001, ANN202
        if batch >= 4 and kv >= 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return decode(self, batch, kv)

    monkeypatch.setattr(PointBuilder, "decode", oom_from_4x32)
    result = _invoke("--model", MODEL, "--out", str(tmp_path), *GRID, *FAST, "--recheck-rounds", "0")
    assert result.exit_code == 0, result.output + repr(result.exception)
    path = profile_path(tmp_path, "CPU-1core", MODEL, "bfloat16", 1)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["timing"]["points_out_of_memory"] == 1 and meta["grid"]["max_kv"] == 24
    assert meta["grid_capped"] == [{"by": "out of memory", "changed": {"max_kv": [64, 24]},
                                    "point": "attention_decode 4x32"}]
    note = ("NOTE: 1 grid point(s) ran out of GPU memory (first attention_decode 4x32): --max-kv 64 -> 24, the "
            "attention tables stop at the largest full grid measured and steps beyond are extrapolated")
    assert note in result.output
    profile = read_profile(path)  # full rectangles still
    assert max(profile.attention_decode.ys) == 24 and max(profile.attention_decode.xs) == 8
    assert {long for _, _, long, _ in profile.decode_skew_rows} == {16, 24}
    # the points measured before the cap were kept, not measured again
    assert {r["runs"] for r in iter_timings(path)} == {"1"}


def test_a_dense_point_out_of_memory_names_the_option_to_lower(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim.profiler.points import PointBuilder

    def oom(self, op: str, t: int):  # noqa: ANN001, ANN202
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(PointBuilder, "dense", oom)
    result = _invoke("--model", MODEL, "--out", str(tmp_path), *GRID, *FAST)
    assert isinstance(result.exception, PdsimError)
    assert "out of GPU memory at grid point layernorm 1: lower --max-tokens" in str(result.exception)


def test_a_graph_capture_out_of_memory_is_no_graph_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim.profiler import timing

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(timing, "capture_cuda_graph", oom)
    timer = timing.Timer("cuda", timing.TimingConfig(warmup=1, repeats=3), graphs=True)
    monkeypatch.setattr(timer, "_time_once", lambda fn: 1.0)
    with pytest.raises(torch.OutOfMemoryError):
        timer._capture([lambda: None])
    assert timer.graph_failures == []


def test_a_failing_nccl_all_reduce_keeps_the_profile_and_falls_back_to_the_link_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim.hardware import get_hardware
    from pdsim.profiler import allreduce

    def nccl_fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error\n"
                           "Last error: Cuda failure 'peer access is not supported between these two devices'")

    monkeypatch.setattr(allreduce, "can_measure_allreduce", lambda device, tp: True)  # as with 2 GPUs visible
    monkeypatch.setattr(allreduce, "measure_allreduce", nccl_fails)
    result = _invoke("--model", MODEL, "--out", str(tmp_path), "--tp", "2", *GRID, *FAST)
    assert result.exit_code == 0, result.output + repr(result.exception)
    path = profile_path(tmp_path, "CPU-1core", MODEL, "bfloat16", 2)
    meta = json.loads((path / "meta.json").read_text())
    reason = ("RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error Last error: Cuda failure "
              "'peer access is not supported between these two devices'")
    assert meta["allreduce_skipped"] == reason
    assert meta["allreduce"].startswith(f"all-reduce not measured (NCCL over 2 GPUs failed, {reason})")
    assert f"WARNING: the all-reduce was not measured, NCCL failed ({reason})" in result.output
    assert not (path / "allreduce.csv").exists()
    profile = read_profile(path)
    assert profile.allreduce is None
    # priced as for a profile that never had the table: by the interconnect model, which the run's note names
    predictor = StepTimePredictor(profile, load_model(MODEL), 2, get_hardware("H100-SXM"))
    assert predictor.allreduce_source is not None and "allreduce.csv" not in predictor.allreduce_source
    assert f"TP all-reduce priced by {predictor.allreduce_source}" in predictor.notes
    assert predictor.allreduce_s(64) > 0
