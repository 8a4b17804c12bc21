"""Prefix caching (vLLM v1's, from Mooncake-style hash_ids) and the cache-aware routers."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pdsim.config import load_cluster_config
from pdsim.engine.cluster import SimOptions, simulate
from pdsim.engine.kv_cache import BlockManager, blocks_for, prefix_block_keys
from pdsim.engine.kv_transfer import kv_transfer_bytes
from pdsim.engine.request import Request
from pdsim.engine.router import Router
from pdsim.errors import TraceError
from pdsim.metrics.summary import requests_frame, summarize
from pdsim.models import load_model
from pdsim.workload.generate import generate_requests
from pdsim.workload.trace import TraceRequest, load_trace
from tests.helpers import MODEL, all_released, cluster, instance


def req(i: int, inp: int, out: int, t_s: float, ids: tuple[int, ...] = (), block: int = 512) -> TraceRequest:
    return TraceRequest(i, inp, out, int(round(t_s * 1e9)), ids, block if ids else 0)


def run(cfg, rows, **opts):
    return simulate(cfg, rows, SimOptions(**opts))


# -- keys --------------------------------------------------------------------------------------
def test_equal_prefixes_map_to_equal_block_keys_and_differ_after_the_first_different_id():
    a = prefix_block_keys((1, 2, 3), 512, 1536, 16)
    b = prefix_block_keys((1, 2, 9), 512, 1536, 16)
    assert len(a) == len(b) == 96  # 3 spans x 32 engine blocks
    assert a[:64] == b[:64]
    assert all(x != y for x, y in zip(a[64:], b[64:]))
    assert len(set(a)) == 96
    # Same ids in another order name other blocks: a block's key depends on the whole prefix.
    assert prefix_block_keys((2, 1), 512, 1024, 16)[32:] != a[32:64]


def test_ids_a_whole_int_hash_modulus_apart_name_other_blocks():
    # CPython hashes an int modulo 2^61 - 1: a 64-bit id there must not name the blocks of the small id.
    wrap = 2**61 - 1
    small = prefix_block_keys((1, 2), 512, 1024, 16)
    for ids in ((1 + wrap, 2 + wrap), (1 + 2 * wrap, 2 + 2 * wrap), (2**64 - 1, 2)):
        assert not set(prefix_block_keys(ids, 512, 1024, 16)) & set(small), ids
    assert not set(prefix_block_keys((2**64 - 1, 2), 512, 1024, 16)) & set(prefix_block_keys((2**64 - 2, 2), 512,
                                                                                           1024, 16))


def test_partial_last_span_is_cached_up_to_its_last_full_block_only():
    keys = prefix_block_keys((1, 2), 512, 512 + 100, 16)
    assert len(keys) == 32 + 100 // 16
    # A span longer than the prompt it belongs to caches no block past the prompt.
    assert len(prefix_block_keys((1, 2, 3), 512, 700, 16)) == 700 // 16
    # Spans that are not a multiple of the block size: a block straddling two spans needs both.
    odd_a = prefix_block_keys((1, 2), 24, 48, 16)
    odd_b = prefix_block_keys((1, 3), 24, 48, 16)
    assert odd_a[0] == odd_b[0] and odd_a[1] != odd_b[1]


# -- the block pool ----------------------------------------------------------------------------
def test_freed_cached_blocks_are_evicted_least_recently_freed_first_and_never_over_capacity():
    kv = BlockManager(10, 16, 1, enable_caching=True)
    a_keys, b_keys = [101, 102, 103, 104], [201, 202, 203, 204]
    for keys in (a_keys, b_keys):
        kv.allocate(4)
        held: list[int] = []
        kv.register(tuple(keys), 0, 4, held)
        assert held == keys
    assert kv.free == 2
    kv.free_request(4, a_keys)  # A ends first, then B
    kv.free_request(4, b_keys)
    assert kv.free == 10 and kv.used == 0
    assert kv.longest_hit(tuple(a_keys), 10) == (4, 4)
    kv.allocate(2)  # the two never-cached blocks go first
    assert kv.longest_hit(tuple(a_keys), 10) == (4, 4)
    kv.allocate(1)  # then A's blocks, its last one first (vLLM frees a request's blocks in reverse)
    assert kv.longest_hit(tuple(a_keys), 10) == (3, 3)
    assert kv.longest_hit(tuple(b_keys), 10) == (4, 4)
    # A hit takes the cached block out of the free queue: it is no longer evicted.
    kv.touch(b_keys[:2])
    kv.allocate(5)
    assert kv.free == 0 and kv.longest_hit(tuple(b_keys), 10) == (2, 0)
    assert kv.longest_hit(tuple(a_keys), 10) == (0, 0)
    with pytest.raises(Exception, match="allocating"):
        kv.allocate(1)


def test_a_shared_block_is_counted_once():
    kv = BlockManager(8, 16, 1, enable_caching=True)
    kv.allocate(3)
    held: list[int] = []
    kv.register((1, 2, 3), 0, 3, held)
    kv.touch([1, 2, 3])  # a second request shares all three
    assert kv.used == 3
    kv.free_request(3, held)
    assert kv.used == 3  # still held by the second
    kv.free_request(3, [1, 2, 3])
    assert kv.used == 0 and kv.free == 8


class _OneEntryPerBlock:
    """vLLM's block pool kept plainly, as the reference BlockManager must match block for block: the
    free queue with one entry per block (here an OrderedDict), a dict key -> the copy a lookup finds,
    and a reference count per copy (0 when free)."""

    def __init__(self, num_blocks: int) -> None:
        self.free = num_blocks
        self.anon_head = num_blocks  # anonymous free blocks ahead of the queue's entries
        self.entries: OrderedDict = OrderedDict()  # a copy -> None, or (run number,) -> anonymous count
        self.runs = 0
        self.cached: dict = {}
        self.later_copies: dict = {}
        self.refs: dict = {}
        self.serial = 0

    def allocate(self, n: int) -> None:
        self.free -= n
        if n <= self.anon_head:
            self.anon_head -= n
            return
        n -= self.anon_head
        self.anon_head = 0
        while n > 0:
            entry, count = self.entries.popitem(last=False)
            if count is None:
                self.evict(entry)
                n -= 1
            elif count > n:
                self.anon_head, n = count - n, 0
            else:
                n -= count

    def evict(self, copy) -> None:
        del self.refs[copy]
        key = copy if type(copy) is int else copy[0]
        later = self.later_copies.get(key, [])
        if self.cached[key] == copy:
            if later:
                self.cached[key] = later.pop(0)
            else:
                del self.cached[key]
        else:
            later.remove(copy)
        if key in self.later_copies and not later:
            del self.later_copies[key]

    def release(self, n: int) -> None:
        self.free += n
        if not self.entries:
            self.anon_head += n
        elif n:
            self.runs += 1
            self.entries[(self.runs,)] = n

    def longest_hit(self, keys, max_blocks):
        hits = 0
        for key in keys[:max_blocks]:
            if key not in self.cached:
                break
            hits += 1
        return hits, sum(self.refs[self.cached[key]] == 0 for key in keys[:hits])

    def touch(self, keys):
        copies = [self.cached[key] for key in keys]
        for copy in copies:
            if self.refs[copy] == 0:
                del self.entries[copy]
                self.free -= 1
            self.refs[copy] += 1
        return copies

    def register(self, keys, start, stop, held) -> None:
        for key in keys[start:stop]:
            if key in self.cached:
                self.serial += 1
                copy = (key, self.serial)
                self.later_copies.setdefault(key, []).append(copy)
            else:
                copy = self.cached[key] = key
            self.refs[copy] = 1
            held.append(copy)

    def free_request(self, num_blocks, held):
        self.release(num_blocks - len(held))
        for copy in reversed(held):
            self.refs[copy] -= 1
            if self.refs[copy] == 0:
                self.entries[copy] = None
                self.free += 1


@pytest.mark.parametrize("seed", range(6))
def test_the_segmented_free_queue_evicts_exactly_what_one_entry_per_block_does(seed):
    """Random requests over shared prefixes (hits, evictions, blocks computed again while cached, so
    cached twice) on both queues: the same blocks stay cached, with the same references, after every
    step."""
    rng = random.Random(seed)
    segmented, reference = BlockManager(40, 16, 1, True), _OneEntryPerBlock(40)
    running: list[tuple[int, list, list]] = []
    for _ in range(3000):
        if running and (rng.random() < 0.45 or len(running) > 6):
            blocks, held_s, held_r = running.pop(rng.randrange(len(running)))
            segmented.free_request(blocks, held_s)
            reference.free_request(blocks, held_r)
        else:
            doc, length, extra = rng.randrange(4), rng.randint(1, 12), rng.randint(0, 3)
            keys = tuple(hash((doc, i)) for i in range(length))
            hit = segmented.longest_hit(keys, length)
            assert hit == reference.longest_hit(keys, length)
            if rng.random() < 0.2:  # looked up before another request cached the same blocks: computed again
                hit = (0, 0)
            if segmented.free - hit[1] < length - hit[0] + extra:
                continue
            held_s, held_r = segmented.touch(keys[:hit[0]]), reference.touch(keys[:hit[0]])
            for kv, held in ((segmented, held_s), (reference, held_r)):
                kv.allocate(length - hit[0] + extra)
                kv.register(keys, hit[0], length, held)
            running.append((length + extra, held_s, held_r))
        assert held_s == held_r and segmented.free == reference.free
        assert segmented.cached == reference.cached and segmented._later_copies == reference.later_copies
        assert {c: max(r, 0) for c, r in segmented.refs.items()} == reference.refs


def test_blocks_a_hit_took_out_of_the_queue_do_not_pile_up_in_it():
    """A prefix freed and hit again and again, never evicted: each hit leaves its copies stale in
    their segment; the queue is compacted before they outnumber the live ones by more than a bound."""
    kv = BlockManager(1000, 16, 1, True)
    other: list = []  # another prefix, freed and left cached: the queue is never empty
    kv.allocate(10)
    kv.register(tuple(range(1000, 1010)), 0, 10, other)
    kv.free_request(10, other)
    keys = tuple(range(100))
    kv.allocate(100)
    held: list = []
    kv.register(keys, 0, 100, held)
    for _ in range(1000):
        kv.free_request(100, held)
        held = kv.touch(keys)
        assert kv.longest_hit(keys, 100) == (100, 0)
    assert sum(len(e[1]) - e[2] for e in kv._queue if type(e) is list) < 2 * 100 + 4096 + 100
    kv.free_request(100, held)
    assert kv.longest_hit(tuple(range(1000, 1010)), 10) == (10, 10)
    kv.allocate(1000)  # every block, the cached ones evicted
    assert kv.free == 0 and not kv.cached and not kv.refs

# -- end to end --------------------------------------------------------------------------------
def test_a_prefix_shared_by_two_requests_is_computed_once():
    rows = [req(0, 2048, 4, 0.0, (1, 2, 3, 4)), req(1, 2048, 4, 1.0, (1, 2, 3, 5))]
    on = run(cluster(instance(None)), rows)
    off = run(cluster(instance(None, enable_prefix_caching=False)), rows)
    assert on.requests[1].cached_tokens == 1536
    assert on.instances[0].stats.prompt_tokens == 2048 + 512
    assert off.instances[0].stats.prompt_tokens == 2 * 2048
    ttft = [r.first_token_s - r.arrival_s for r in on.requests]
    assert ttft[1] < 0.5 * ttft[0]
    assert on.requests[0].first_token_s == off.requests[0].first_token_s


def test_an_identical_prompt_still_computes_its_last_block():
    rows = [req(0, 2048, 4, 0.0, (1, 2, 3, 4)), req(1, 2048, 4, 1.0, (1, 2, 3, 4))]
    res = run(cluster(instance(None)), rows)
    assert res.requests[1].cached_tokens == 2048 - 16  # vLLM: at most num_tokens - 1, in full blocks
    assert res.instances[0].stats.prompt_tokens == 2048 + 16


def test_concurrent_requests_share_blocks_without_double_counting():
    # B arrives while A is still prefilling: A's blocks are cached as they are allocated.
    rows = [req(0, 4096, 50, 0.0, tuple(range(8))), req(1, 4096, 50, 0.0, (*range(7), 99))]
    res = run(cluster(instance(None)), rows)
    inst = res.instances[0]
    assert res.requests[1].cached_tokens == 3584
    assert inst.stats.prompt_tokens == 4096 + 512
    separate = 2 * blocks_for(4096 + 50, 16)
    assert inst.kv.peak_used <= separate - 3584 // 16
    assert all_released(inst)


def _chat_trace(n: int, seed: int, rate: float, sessions: int = 12, turn_ids: int = 3) -> list[TraceRequest]:
    """Multi-turn sessions: each turn's prompt is its session's previous prompt plus new spans."""
    rng = random.Random(seed)
    history: dict[int, list[int]] = {s: [s * 10_000] for s in range(sessions)}
    next_id = 1_000_000
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(rate)
        s = rng.randrange(sessions)
        for _ in range(rng.randint(1, turn_ids)):
            history[s].append(next_id)
            next_id += 1
        ids = tuple(history[s][:12])
        inp = 512 * (len(ids) - 1) + rng.randint(1, 512)
        out.append(req(i, inp, rng.randint(2, 300), t, ids))
    return out


@pytest.mark.parametrize("pd", [False, True])
def test_eviction_under_memory_pressure_conserves_requests_and_memory(pd):
    small = 19.5  # a few thousand tokens of KV on a 15 GB model
    cfg = cluster(instance("prefill", small), instance("decode", small)) if pd else cluster(instance(None, small))
    rows = _chat_trace(150, seed=4, rate=20)
    res = run(cfg, rows)
    df = requests_frame(res)
    assert (df.status == "finished").all(), df[df.status != "finished"].reason.unique()
    distinct = len({k for r in rows for k in prefix_block_keys(r.hash_ids, 512, r.input_toks, 16)})
    for inst in res.instances:
        assert all_released(inst)
        assert 0 < inst.kv.peak_used <= inst.kv.num_blocks
        assert len(inst.kv.cached) <= inst.kv.num_blocks
    prefill = res.instances[0]
    assert distinct > prefill.kv.num_blocks, "the test needs more distinct blocks than fit"
    assert len(prefill.kv.cached) < distinct  # so blocks were evicted
    assert prefill.kv.hit_tokens > 0
    assert res.instances[-1].sched.num_preemptions > 0, "the test needs preemptions to mean anything"


def test_fast_forward_matches_stepping_with_prefix_hits():
    cfg = cluster(instance("prefill", 19.5), instance("decode", 19.5))
    rows = _chat_trace(120, seed=5, rate=20)
    fast = run(cfg, rows)
    slow = run(cfg, rows, max_decode_run_steps=1)
    assert fast.instances[0].kv.hit_tokens > 0
    for a, b in zip(fast.requests, slow.requests):
        assert a.status == b.status == "finished"
        assert a.cached_tokens == b.cached_tokens
        assert a.first_token_s == pytest.approx(b.first_token_s, rel=1e-9, abs=1e-9)
        assert a.finish_s == pytest.approx(b.finish_s, rel=1e-9, abs=1e-9)


def test_hit_rate_accounting_matches_the_requests():
    rows = _chat_trace(80, seed=1, rate=5)
    res = run(cluster(instance(None), instance(None)), rows, prefill_policy="prefix_aware")
    df = requests_frame(res)
    summary = summarize(res, df)
    total_hit = 0
    for inst, info in zip(res.instances, summary["instances"]):
        mine = df[df.prefill_instance == inst.id]
        assert inst.kv.query_tokens == mine.input_toks.sum()
        assert inst.kv.hit_tokens == mine.cached_tokens.sum()
        assert info["prefix_hit_rate"] == pytest.approx(mine.cached_tokens.sum() / mine.input_toks.sum())
        total_hit += inst.kv.hit_tokens
    assert 0 < total_hit < df.input_toks.sum()
    # The timeline's cumulative counters end at the totals.
    last = {s.instance: s for s in res.samples}
    assert sum(s.prefix_hit_tokens for s in last.values()) == total_hit


def test_requests_without_prefix_ids_share_nothing_and_reuse_only_their_own_blocks():
    rows = generate_requests(120, 30, "lognormal:1500,800,max=6000", "lognormal:300,200,max=1500", seed=3)

    def both(mem_gb: float):
        return [run(cluster(instance("prefill", mem_gb, enable_prefix_caching=c),
                            instance("decode", mem_gb, enable_prefix_caching=c)), rows) for c in (True, False)]

    # Without a preemption caching changes nothing: no request can hit another's blocks.
    on, off = both(40.0)
    assert on.instances[1].sched.num_preemptions == 0
    for a, b in zip(on.requests, off.requests):
        assert (a.first_token_s, a.finish_s, a.kv_bytes) == (b.first_token_s, b.finish_s, b.kv_bytes)
    assert on.instances[0].kv.hit_tokens == on.instances[1].kv.hit_tokens == 0
    # With preemptions on the decode instance, a resumed request finds its own blocks.
    on, off = both(19.5)
    assert on.instances[1].sched.num_preemptions > 0 and off.instances[1].sched.num_preemptions > 0
    assert on.instances[1].stats.prompt_tokens < off.instances[1].stats.prompt_tokens
    assert [r.kv_bytes for r in on.requests] == [r.kv_bytes for r in off.requests]


def test_a_decode_instance_that_holds_the_prefix_receives_fewer_bytes():
    rows = [req(0, 3000, 20, 0.0, (1, 2, 3, 4, 5, 6)), req(1, 3500, 20, 5.0, (1, 2, 3, 4, 5, 6, 7))]
    res = run(cluster(instance("prefill"), instance("decode")), rows)
    a, b = res.requests
    model = load_model(MODEL)
    assert a.kv_bytes == kv_transfer_bytes(model, 3000, 16, "bfloat16", 1)
    # The decode instance kept A's prompt blocks cached: 3000 // 16 full blocks.
    assert b.decode_cached_tokens == 3000 // 16 * 16
    assert b.kv_bytes == kv_transfer_bytes(model, 3500 - 2992, 16, "bfloat16", 1)
    assert b.kv_bytes < a.kv_bytes / 5
    off = run(cluster(instance("prefill"), instance("decode", enable_prefix_caching=False)), rows)
    assert off.requests[1].kv_bytes == kv_transfer_bytes(model, 3500, 16, "bfloat16", 1)
    assert b.kv_transfer_end_s - b.kv_transfer_start_s < off.requests[1].kv_transfer_end_s - \
        off.requests[1].kv_transfer_start_s


# -- routing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["prefix_aware", "kv_aware"])
def test_routers_prefer_the_instance_holding_the_prefix(policy):
    rows = [req(0, 4000, 10, 0.0, tuple(range(8))), req(1, 4200, 10, 3.0, tuple(range(9)))]
    cfg = cluster(instance(None), instance(None))
    aware = requests_frame(run(cfg, rows, prefill_policy=policy))
    plain = requests_frame(run(cfg, rows, prefill_policy="least_loaded"))
    assert plain.prefill_instance[0] != plain.prefill_instance[1]  # idle ties rotate
    assert aware.prefill_instance[0] == aware.prefill_instance[1]
    assert aware.cached_tokens[1] == 4000 // 16 * 16


def test_decode_router_prefers_the_decode_instance_holding_the_prefix():
    rows = [req(0, 4000, 10, 0.0, tuple(range(8))), req(1, 4200, 10, 3.0, tuple(range(9)))]
    cfg = cluster(instance("prefill"), instance("decode"), instance("decode"))
    aware = run(cfg, rows, decode_policy="kv_aware")
    assert aware.requests[0].decode_instance == aware.requests[1].decode_instance
    assert aware.requests[1].decode_cached_tokens > 0
    plain = run(cfg, rows, decode_policy="least_loaded")
    assert plain.requests[1].kv_bytes > aware.requests[1].kv_bytes


@dataclass
class FakeInstance:
    load_tokens: int
    num_requests: int
    hit: int

    def prefix_hit_tokens(self, req: Request) -> int:
        return self.hit


def test_prefix_aware_falls_back_to_the_least_loaded_when_imbalanced_as_sglang():
    r = Request(0, 1000, 10, 0.0)
    holder = FakeInstance(load_tokens=50_000, num_requests=100, hit=900)
    idle = FakeInstance(load_tokens=10, num_requests=10, hit=0)
    router = Router("prefix_aware", 0)
    assert router.choose([idle, holder], r) is idle  # 100 - 10 > 64 and 100 > 1.5 x 10
    holder.num_requests = 70  # 60 apart: balanced enough, the cache wins
    assert router.choose([idle, holder], r) is holder
    holder.hit = 300  # 30% of the prompt is not more than the threshold: least loaded
    assert router.choose([idle, holder], r) is idle


def test_kv_aware_trades_cached_tokens_against_queued_work_as_dynamo():
    r = Request(0, 1000, 10, 0.0)
    holder = FakeInstance(load_tokens=600, num_requests=1, hit=800)  # cost 200 + 600
    other = FakeInstance(load_tokens=500, num_requests=1, hit=0)  # cost 1000 + 500
    router = Router("kv_aware", 0)
    assert router.choose([other, holder], r) is holder
    holder.load_tokens = 1400  # cost 1600
    assert router.choose([other, holder], r) is other


def test_power_of_two_takes_the_less_loaded_of_two_random_draws():
    busy = [FakeInstance(load_tokens=1000 + i, num_requests=1, hit=0) for i in range(3)]
    light = FakeInstance(load_tokens=1, num_requests=1, hit=0)
    router = Router("power_of_two", 7)
    picks = [router.choose([*busy, light]) for _ in range(400)]
    assert picks.count(light) == pytest.approx(400 * (1 - 0.75 * 2 / 3), rel=0.2)  # drawn in half the pairs
    assert busy[2] not in picks  # the most loaded never wins a pair
    assert all(router.choose([busy[0], light]) is light for _ in range(20))


# -- inputs --------------------------------------------------------------------------------------
def test_trace_reader_takes_hash_ids_with_512_tokens_each_by_default(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"input_toks": 700, "output_toks": 5, "arrival_time_ns": 0, "hash_ids": [4, 5]}\n'
        '{"input_toks": 70, "output_toks": 5, "arrival_time_ns": 1, "hash_ids": [4], "hash_block_tokens": 64}\n'
        '{"input_toks": 70, "output_toks": 5, "arrival_time_ns": 2}\n'
    )
    a, b, c = load_trace(path)
    assert (a.hash_ids, a.hash_block_tokens) == ((4, 5), 512)
    assert (b.hash_ids, b.hash_block_tokens) == ((4,), 64)
    assert (c.hash_ids, c.hash_block_tokens) == ((), 0)
    path.write_text('{"input_toks": 7, "output_toks": 5, "arrival_time_ns": 0, "hash_ids": [1, "x"]}\n')
    with pytest.raises(TraceError, match=r"t.jsonl:1: field 'hash_ids': expected a list of integers"):
        load_trace(path)
    path.write_text('{"input_toks": 700, "output_toks": 5, "arrival_time_ns": 0, "hash_ids": [18446744073709551615]}\n'
                    '{"input_toks": 700, "output_toks": 5, "arrival_time_ns": 0, "hash_ids": [18446744073709551616]}\n')
    with pytest.raises(TraceError, match=r"t.jsonl:2: field 'hash_ids': expected a list of integers from 0 to "
                                         r"18446744073709551615 \(2\^64 - 1\)"):
        load_trace(path)


def test_enable_prefix_caching_is_a_config_field_and_an_override(tmp_path):
    cfg = cluster(instance(None))
    assert cfg.nodes[0].instances[0].enable_prefix_caching is True  # vLLM's default
    path = tmp_path / "c.json"
    path.write_text(cfg.model_dump_json())
    off = load_cluster_config(path, {"enable_prefix_caching": False})
    assert off.nodes[0].instances[0].enable_prefix_caching is False


def test_command_line_reports_cached_tokens_and_hit_rates_and_turns_caching_off(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    trace_path = tmp_path / "chat.jsonl"
    trace_path.write_text("".join(
        json.dumps({"input_toks": 1100 + 512 * i, "output_toks": 8, "arrival_time_ns": i * 10**9,
                    "hash_ids": list(range(3 + i))}) + "\n" for i in range(4)))

    def cli(*extra: str) -> tuple[pd.DataFrame, dict, pd.DataFrame, str]:
        out = tmp_path / "run.csv"
        r = subprocess.run([sys.executable, "-m", "pdsim", "--cluster-config",
                            str(repo / "configs/cluster/single_node_pd_instance.json"), "--dataset", str(trace_path),
                            "--output", str(out), "--quiet", *extra],
                           capture_output=True, text=True, cwd=repo, timeout=300)
        assert r.returncode == 0, r.stderr
        summary = json.loads((tmp_path / "run_summary.json").read_text())
        return pd.read_csv(out), summary, pd.read_csv(tmp_path / "run_timeline.csv"), r.stdout

    df, summary, timeline, stdout = cli()
    # Each prompt extends the previous one: all of it but the new span's partial block is cached.
    assert list(df.cached_tokens) == [0, 1100 // 16 * 16, (1100 + 512) // 16 * 16, (1100 + 1024) // 16 * 16]
    prefill = summary["instances"][0]
    assert prefill["prefix_hit_rate"] == pytest.approx(df.cached_tokens.sum() / df.input_toks.sum())
    assert "prefix cache hit rate" in stdout
    assert timeline[timeline.instance == "n0.i0"].prefix_hit_tokens.iloc[-1] == df.cached_tokens.sum()
    assert df.kv_bytes.iloc[3] < df.kv_bytes.iloc[0]  # the decode instance held the earlier turns
    df_off, summary_off, _, stdout_off = cli("--no-enable-prefix-caching")
    assert (df_off.cached_tokens == 0).all() and "prefix cache hit rate" not in stdout_off
    assert df_off.kv_bytes.iloc[3] > df_off.kv_bytes.iloc[0]


# -- a preempted request's own blocks ------------------------------------------------------------
def test_a_preempted_request_recomputes_from_its_own_blocks_still_cached():
    # vLLM hashes every full block of a request, prompt and output, and a freed block stays cached
    # until an allocation reaches it, so a recompute after a preemption starts from the longest
    # run of its own blocks left. Requests without prefix ids can hit nothing else.
    from tests.helpers import AnalyticStepTimes
    from tests.helpers import run as run_rows

    rows = [(r.input_toks, r.output_toks, r.arrival_time_ns * 1e-9)
            for r in generate_requests(120, 40, "lognormal:600,400", "lognormal:120,80", seed=7)]
    runs = {}
    for caching in (False, True):
        cfg = cluster(instance(None, 18.5, max_num_seqs=32, max_num_batched_tokens=512,
                               enable_prefix_caching=caching))
        res = run_rows(cfg, rows, step_times=AnalyticStepTimes, kv_gpu_blocks={"n0.i0": 707})
        assert all(r.status == "finished" for r in res.requests)
        runs[caching] = res
    preempted = {c: sum(r.preemptions for r in res.requests) for c, res in runs.items()}
    assert preempted[False] > 5 and preempted[True] > 5
    prompt = {c: res.instances[0].stats.prompt_tokens for c, res in runs.items()}
    fresh = sum(r[0] for r in rows)
    # Without caching every recompute redoes prompt and output; with it, most of that is found.
    assert prompt[False] - fresh > 2 * (prompt[True] - fresh) > 0
    assert runs[True].instances[0].kv.hit_tokens == 0  # recompute lookups are not counted as hits (vLLM)


def test_a_decode_run_passed_in_one_event_matches_stepping_when_an_arrived_prefix_lets_a_hand_off_in():
    # A hand-off's KV arrived on a decode instance in a run of decode steps passed in one event and cached the
    # prefix that a pending hand-off would hit, letting it fit; the run was not woken (only a request it could
    # admit woke it), so that hand-off reserved later than when stepping one by one.
    prefix = tuple(range(1000, 1016))
    rows = [req(0, 16, 150, 0.0), req(1, 256, 10, 0.01, prefix, 16), req(2, 256, 10, 0.011, prefix, 16)]
    cfg = cluster(instance("prefill"), instance("decode", max_num_seqs=1))
    runs = [run(cfg, rows, kv_gpu_blocks={"n0.i1": 30}, max_decode_run_steps=steps) for steps in (4096, 1)]
    assert runs[1].requests[2].decode_cached_tokens == 240  # the case: the third hits the second's prompt
    for fast, stepped in zip(*(r.requests for r in runs)):
        assert fast.kv_transfer_start_s == pytest.approx(stepped.kv_transfer_start_s)
        assert fast.finish_s == pytest.approx(stepped.finish_s)


def test_prefix_aware_routing_sees_the_evictions_of_a_decode_run_passed_in_one_event():
    # A run of decode steps passed in one event allocated its later steps' blocks only at its end, so the cached
    # free blocks stepping would already have evicted still counted as hits: prefix_aware routing sent a request
    # to the instance whose cache no longer held its prefix (stepping one by one sent it elsewhere).
    prefix = tuple(range(1000, 1008))
    rows = [req(0, 128, 2, 0.0, prefix, 16)] + [req(1 + i, 16, 150, 0.05 + 0.01 * i) for i in range(3)] \
        + [req(4, 128, 5, 1.0, prefix, 16)]
    cfg = cluster(instance("prefill"), instance("decode"), instance("decode"),
                  router={"prefill_policy": "round_robin", "decode_policy": "prefix_aware"})
    runs = [run(cfg, rows, kv_gpu_blocks={"n0.i1": 14, "n0.i2": 12}, max_decode_run_steps=steps) for steps in (4096, 1)]
    for fast, stepped in zip(*(r.requests for r in runs)):
        assert fast.decode_instance == stepped.decode_instance
        assert fast.finish_s == pytest.approx(stepped.finish_s)
    assert all(all_released(inst) for r in runs for inst in r.instances)


def test_an_instance_that_looked_nothing_up_has_no_hit_rate_not_a_rate_of_0():
    import math

    from pdsim.engine.kv_cache import BlockManager
    from pdsim.outputs import json_text

    cache = BlockManager(16, 16, 1024, enable_caching=True)
    assert math.isnan(cache.hit_rate)
    assert json.loads(json_text({"prefix_hit_rate": cache.hit_rate})) == {"prefix_hit_rate": None}
    # One instance of two gets every request: the other's rate is none, printed as such.
    rows = _chat_trace(20, seed=1, rate=5)
    res = run(cluster(instance(None), instance(None)), rows, prefill_policy="round_robin")
    idle = res.instances[1]
    idle.kv.query_tokens = idle.kv.hit_tokens = 0
    from pdsim.metrics.summary import _instance_lines

    said = "\n".join(_instance_lines(summarize(res, requests_frame(res))))
    assert f"{idle.id} -" in said and "nan" not in said
