"""Every cluster config that ships with LLMServingSim either runs a tiny trace to completion or
stops with the one-line reason pdsim does not model it (../shared/data/llmservingsim-configs)."""

from pathlib import Path

import pytest

from pdsim.config import load_cluster_config
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.errors import ConfigError
from tests.helpers import trace

CONFIGS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "llmservingsim-configs"
FILES = sorted(CONFIGS.glob("*.json")) if CONFIGS.is_dir() else []

# file -> the reason it stops with; every other file must run (the five pp_size > 1 files included).
REFUSED: dict[str, str] = {
    "single_node_cxl_instance.json": 'key "cxl_mem" is not supported: CXL memory expansion',
    "single_node_memory_instance.json": 'key "placement" is not supported: per-layer weight/KV placement',
    "single_node_pim_instance.json": 'key "pim_config" is not supported: processing-in-memory (PIM)',
}
PP_FILES = {"single_node_moe_dp_pp_instance.json", "single_node_moe_dp_tp_pp_instance.json",
            "single_node_moe_pp_instance.json", "single_node_pp_instance.json", "single_node_tp_pp_instance.json"}
TINY = [(200, 8, 0.0), (900, 4, 0.01), (60, 12, 0.02), (1500, 3, 0.03)]

pytestmark = pytest.mark.skipif(not FILES, reason="needs ../shared/data/llmservingsim-configs")


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_config_runs_or_stops_with_its_reason(path: Path):
    if path.name in REFUSED:
        with pytest.raises(ConfigError) as exc:
            load_cluster_config(path)
        first = str(exc.value).splitlines()[0]
        assert first.startswith(f"{path}: ") and REFUSED[path.name] in first, first
        return
    res = simulate(load_cluster_config(path), trace(TINY), SimOptions())
    assert [r.status for r in res.requests] == ["finished"] * len(TINY), [r.reason for r in res.requests]


def test_how_many_run():
    runs = [p.name for p in FILES if p.name not in REFUSED]
    print(f"\n{len(runs)} of {len(FILES)} LLMServingSim cluster configs run in pdsim")
    assert len(FILES) == 27 and len(runs) == 24
    assert {p.name for p in FILES if p.name not in REFUSED and '_pp_' in p.name} == PP_FILES
    assert set(REFUSED) <= {p.name for p in FILES}
