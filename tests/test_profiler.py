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
    }
    assert set(profile.dense) == expected_dense  # no qk_norm: tiny-llama is a Llama
    for table in profile.dense.values():
        assert table.xs.tolist() == grid.tokens() and (table.ys > 0).all()
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
    assert set(raw["spread"]) == {"dense", "per_sequence", "attention_prefill", "attention_decode"}


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
    assert result.exit_code == 0, result.output + repr(result.exception)
    lines = result.output.splitlines()
    rows = [line for line in lines if line.startswith(("prefill N=", "decode B="))]
    assert len(rows) == 4
    for row in rows:
        measured, predicted = (float(v) for v in row[22:].split()[:2])
        assert measured > 0 and predicted > 0


def test_compare_same_profile_is_zero(profile_dir: Path) -> None:
    diffs = compare_profiles(profile_dir, profile_dir)
    assert {d.table for d in diffs} == {"dense", "per_sequence", "attention_prefill", "attention_decode"}
    assert all(d.max_diff_rel == 0 for d in diffs)


def test_qwen3_shards_and_qk_norm() -> None:
    """Qwen3's per-head q/k norm runs on the TP-sharded head counts."""
    from pdsim.profiler import ops

    model = load_model("Qwen/Qwen3-8B")
    s = ops.ShardShapes.of(model, 8)
    assert s.qk_norm and s.heads == model.num_heads // 8 and s.kv_heads == model.num_kv_heads // 8
    assert s.intermediate == model.intermediate_size // 8
    w = ops.LayerWeights.random(s, torch.bfloat16, "cpu")
    q, k, _ = ops.split_qkv(torch.randn(2, s.q_size + 2 * s.kv_size, dtype=torch.bfloat16), s)
    q, k = ops.qk_norm(q, k, w)
    assert q.shape == (2, s.heads, model.head_dim) and k.shape == (2, s.kv_heads, model.head_dim)


def test_missing_torch_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pdsim.profiler import cli

    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(PdsimError, match=r"the profiler needs torch: pip install -e '\.\[profile\]'"):
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
