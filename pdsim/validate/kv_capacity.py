"""The measured engine's KV-cache size, where the run records it (docs/memory.md).

Two sources: `kv_cache.num_gpu_blocks` (and `kv_cache.block_size`) in the meta.json written beside
LLMServingSim's vLLM runs, and vLLM's start-up log line "GPU KV cache size: N tokens" (tokens =
num_gpu_blocks // KV-cache groups x block_size, engine-wide: a hybrid model's pool, gpt-oss's, serves two
groups of layers). Both count vLLM's null block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pdsim.errors import PdsimError
from pdsim.text import plural

if TYPE_CHECKING:
    from pdsim.engine.instance import Instance

KV_LOG_LINE = "'GPU KV cache size: N tokens'"
_LOG_LINE = re.compile(r"GPU KV cache size:\s*(\S+)\s*tokens")
_ENGINE_TAG = re.compile(r"\((EngineCore_DP\d+)\b")  # vLLM's process prefix of a DP engine's log lines
_TOKEN_COUNT = re.compile(r"\d{1,3}(?:,\d{3})+|\d+")  # vLLM prints it with thousands separators


@dataclass(frozen=True)
class MeasuredKV:
    num_gpu_blocks: int  # vLLM's num_gpu_blocks: the pool, every KV-cache group's blocks
    block_size: int
    source: str
    groups: int = 1  # KV-cache groups the pool serves (pdsim/perf/memory.py, sliding_window_blocks)

    @property
    def tokens(self) -> int:
        """As vLLM logs them."""
        return self.num_gpu_blocks // self.groups * self.block_size


def positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PdsimError(f"{where}: expected a positive integer, got {value!r}")
    return value


def kv_from_meta(meta: dict, meta_source: str, default_block_size: int, groups: int = 1) -> MeasuredKV | None:
    """meta.json's kv_cache section, or None when it records no block count (no section, or a null
    num_gpu_blocks: a writer that keeps the key when the engine reported nothing)."""
    kv = meta.get("kv_cache")
    if kv is None:
        return None
    if not isinstance(kv, dict):
        raise PdsimError(f"{meta_source}: kv_cache: expected an object with num_gpu_blocks, got {kv!r}")
    if kv.get("num_gpu_blocks") is None:
        return None
    blocks = positive_int(kv["num_gpu_blocks"], f"{meta_source}: kv_cache.num_gpu_blocks")
    block_size = kv.get("block_size")
    where = f"{meta_source}: kv_cache.block_size"
    size = default_block_size if block_size is None else positive_int(block_size, where)
    return MeasuredKV(blocks, size, f"{meta_source} kv_cache.num_gpu_blocks", groups)


def kv_from_log(path: str | Path, block_size: int, groups: int = 1) -> MeasuredKV | None:
    """The last "GPU KV cache size: N tokens" line of a vLLM log (a restarted engine logs it again), or None
    where the log has none (cut before the engine sized its cache, or given for its other lines)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise PdsimError(f"{path}: cannot read the engine log ({e.strerror})") from None
    found = []
    engines: dict[str, set[int]] = {}  # a DP engine's tag ("EngineCore_DP1") -> the sizes it logged
    for line_no, line in enumerate(text.splitlines(), start=1):
        for value in _LOG_LINE.findall(line):
            if not _TOKEN_COUNT.fullmatch(value) or int(value.replace(",", "")) == 0:
                raise PdsimError(f"{path}:{line_no}: 'GPU KV cache size: {value} tokens': expected a positive whole "
                                 "number of tokens (vLLM logs num_gpu_blocks x block_size, e.g. 454,832)")
            found.append(value)
            if (tag := _ENGINE_TAG.search(line)) is not None:
                engines.setdefault(tag[1], set()).add(int(value.replace(",", "")))
    if not found:
        return None
    tokens = int(found[-1].replace(",", ""))
    if tokens % block_size:
        raise PdsimError(f"{path}: KV cache size {tokens:,} tokens is not a multiple of block_size {block_size}")
    sizes = list(dict.fromkeys(int(f.replace(",", "")) for f in found))
    also = (f"; the last of {len(found)} such lines, which also give {', '.join(f'{t:,}' for t in sizes[:-1])}"
            if len(sizes) > 1 else "")
    if len(engines) > 1 and len(set().union(*engines.values())) > 1:  # engines of a DP group, not a restart
        also += ("; NOTE: the DP engines log different sizes (" + ", ".join(
            f"{tag} {', '.join(f'{t:,}' for t in sorted(got))}" for tag, got in sorted(engines.items()))
                 + "): the last is taken for every instance")
    return MeasuredKV(tokens // block_size * groups, block_size, f"{path} 'GPU KV cache size'{also}", groups)


def measured_kv(meta: dict, meta_source: str, engine_log: Path | None, block_size: int,
                groups: int = 1) -> MeasuredKV | None:
    """The engine log's KV line when there is one, else meta.json's kv_cache, else None (a meta.json figure the
    log contradicts is named in the source)."""
    recorded = kv_from_meta(meta, meta_source, block_size, groups)
    logged = None if engine_log is None else kv_from_log(engine_log, block_size, groups)
    if logged is not None:
        if recorded is not None and recorded.tokens == logged.tokens:
            return recorded  # the log's tokens round the pool of a hybrid model down to whole groups: the exact count
        if recorded is not None and recorded.num_gpu_blocks != logged.num_gpu_blocks:
            apart_pct = (logged.num_gpu_blocks / recorded.num_gpu_blocks - 1) * 100
            return replace(logged, source=f"{logged.source}, taken over {recorded.source}'s "
                                          f"{recorded.num_gpu_blocks:,} blocks, {apart_pct:+.1f}% from it: is the "
                                          "log this run's engine's?")
        return logged
    if recorded is not None and engine_log is not None:
        return replace(recorded, source=f"{recorded.source}; {engine_log} has no {KV_LOG_LINE} line")
    return recorded


RULES = {"vllm": "vLLM's accounting", "llmservingsim": "LLMServingSim's rule, npu_mem.mem_util given",
         "override": "vLLM's kv_cache_memory_bytes or num_gpu_blocks_override"}


# Above this gap between predicted and measured capacity a replay that fills its cache carries a memory error.
KV_GAP_PCT = 5.0


def not_recorded(engine_log: Path | None) -> str:
    """Why a run has no measured KV capacity, and where one would come from."""
    if engine_log is None:
        return "not recorded by the run (give --engine-log, or a meta.json with kv_cache.num_gpu_blocks)"
    return f"not recorded by the run ({engine_log} has no {KV_LOG_LINE} line, and meta.json no kv_cache.num_gpu_blocks)"


def capacity_line(predicted_tokens: int, rule: str, measured: MeasuredKV | None, used: str,
                  replay_filled: bool = False, engine_log: Path | None = None, instances: int = 1) -> str:
    """One line: predicted vs measured KV capacity, and which one the replay used (on each of its `instances`);
    replay_filled: the replay's cache filled up (it preempted, or its peak reached the capacity)."""
    how = f" ({RULES[rule]})" if rule in RULES else ""
    head = f"KV capacity (tokens per instance, as vLLM reports it): predicted {predicted_tokens:,}{how}"
    if measured is None:
        return f"{head}; measured: {not_recorded(engine_log)}"
    err = 100.0 * (predicted_tokens - measured.tokens) / measured.tokens
    line = (f"{head} vs measured {measured.tokens:,} ({measured.num_gpu_blocks:,} blocks, {measured.source}): "
            f"{err:+.1f}%; the replay used the {used} capacity"
            + (f" on each of its {instances} instances" if used == "measured" and instances > 1 else ""))
    if used == "predicted" and replay_filled and abs(err) > KV_GAP_PCT:
        line += ("\nNOTE: the replay filled its KV cache, so the latencies below carry that capacity error as well "
                 "as the step times'; --kv-capacity measured replays with the engine's blocks to tell them apart")
    elif used == "predicted" and err > KV_GAP_PCT:
        # A cache that never filled cannot show the preemptions and waits for blocks of the engine's smaller one.
        line += ("\nNOTE: the replay's KV cache is larger than the engine's and did not fill: where the engine "
                 "preempted or held requests back for want of blocks, the replay did not; --kv-capacity measured "
                 "replays with the engine's blocks")
    return line


def replay_kv_line(instances: Sequence[Instance]) -> str:
    """How full the replay's KV caches got and how often they preempted (summed over the instances)."""
    peak = max(inst.kv.peak_used / inst.kv.num_blocks for inst in instances)
    preemptions = sum(inst.sched.num_preemptions for inst in instances)
    return f"the replay's KV cache: peak use {100 * peak:.1f}% of its blocks, {plural(preemptions, 'preemption')}"
