"""Sampling a running cluster: each instance's queues, memory and transfer rates, and each link's
load, every sample interval (skipping idle gaps), until every request is done or nothing can move."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from typing import Any

import simpy

from pdsim.config import GB
from pdsim.engine.instance import Instance
from pdsim.engine.link import Link
from pdsim.engine.network import Network
from pdsim.engine.result import LinkSample, Sample

# An idle span longer than this many sample intervals is skipped (its samples would all repeat the
# one before it): a lone request at t = 1e6 s, or Unix-epoch arrival times, must not cost a sample
# per simulated second. Normal runs never idle this long, so their timelines keep every row.
_IDLE_SAMPLES_KEPT = 1000
# Timeline rows (one per instance per sample time, and one per link in use in the link timeline) taken at one
# interval before it doubles: a timeline of more (a day of simulated time at 1 s, fewer hours on a large cluster, or
# step times of hours from a corrupt profile) would cost more than the simulation itself, gigabytes for a week-long
# trace on a few dozen instances.
MAX_ROWS_PER_INTERVAL = 100_000


class Monitor:
    """Collects the timeline (`samples`) and the link timeline (`link_samples`)."""

    def __init__(self, env: simpy.Environment, instances: Sequence[Instance], network: Network,
                 links: dict[str, Link], interval_s: float) -> None:
        self.env = env
        self.instances = instances
        self.network = network
        self.links = links  # the topology's own dict: links appear as transfers first use them
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.link_samples: list[LinkSample] = []
        self._last_link_sample: tuple[float, dict[str, float]] = (0.0, {})
        self.coarsened: list[tuple[float, float]] = []  # (from time_s, interval_s) where the interval doubled

    def run(self, num_done: Callable[[], int], total: int, all_done: simpy.Event,
            on_sample: Callable[[float, list[Sample]], None] | None = None,
            on_progress: Callable[[int, int], None] | None = None) -> Generator[Any, Any, None]:
        """The SimPy process: sample until `total` requests are done (or nothing else can happen)."""
        env = self.env
        rows = 0  # at this interval
        while True:
            if rows >= MAX_ROWS_PER_INTERVAL:
                self.interval_s *= 2
                self.coarsened.append((env.now, self.interval_s))
                rows = 0
            snap = self.sample()
            self.samples.extend(snap)
            rows += len(snap) + len(self.sample_links())
            if on_sample is not None:
                on_sample(env.now, snap)
            if on_progress is not None:
                on_progress(num_done(), total)
            if num_done() >= total:
                return
            # Wake at the next sample time, or as soon as the last request is done, so the run
            # ends there and not at the next multiple of the sample interval.
            yield env.timeout(self.next_delay_s()) | all_done
            if env.peek() == math.inf and num_done() < total:
                # Nothing else will ever happen: what is left is stuck; simulate reports it.
                self.samples.extend(self.sample())
                self.sample_links()
                return

    def coarsening_note(self) -> str:
        """What the timeline's rows are spaced by where the interval doubled; "" where it never did."""
        if not self.coarsened:
            return ""
        (first_s, _), (_, last_interval_s) = self.coarsened[0], self.coarsened[-1]
        return (f"timeline: {MAX_ROWS_PER_INTERVAL:,} rows at one interval (over the instances and the links in use), "
                f"so it doubled from t = {first_s:,.6g} s on, to {last_interval_s:g} s between rows by the end")

    def is_still(self) -> bool:
        """Nothing changes until the next scheduled event: no bytes moving, no run of decode steps
        passing in one event (whose steps end in between)."""
        return (not any(flow.rate_bytes_per_s > 0 for flow in self.network.flows)
                and not any(inst.in_run for inst in self.instances))

    def next_delay_s(self) -> float:
        """The next sample interval, or, when nothing changes before the next event, a jump to the last
        sample time before it (the timeline then shows the idle state at both ends of the gap)."""
        interval_s = self.interval_s
        if not self.is_still():
            return interval_s
        gap_s = self.env.peek() - self.env.now
        if gap_s == math.inf or gap_s <= _IDLE_SAMPLES_KEPT * interval_s:
            return interval_s
        steps = math.floor(gap_s / interval_s)
        if steps * interval_s >= gap_s:
            steps -= 1  # strictly before the event, as a sample at its very time might see it or not
        return max(steps, 1) * interval_s

    def sample(self) -> list[Sample]:
        now = self.env.now
        self.network.settle()
        send, recv = self._transfer_rates()
        out = []
        for inst in self.instances:
            prefill, decode, used_blocks, decode_tokens = inst.snapshot()
            kv_gb = used_blocks * inst.kv.block_bytes / GB
            fixed_gb = (inst.spec.weight_bytes + inst.spec.activation_bytes) / GB
            out.append(Sample(
                time_s=now, instance=inst.id, prefill_reqs=prefill, decode_reqs=decode,
                waiting_reqs=inst.num_waiting, kv_used_gb=kv_gb,
                mem_used_gb=fixed_gb + kv_gb, prompt_tokens=inst.stats.prompt_tokens, decode_tokens=decode_tokens,
                kv_held_for_transfer_gb=inst.held_for_transfer_blocks * inst.kv.block_bytes / GB,
                kv_send_gbps=send.get(inst.id, 0.0) / 1e9, kv_recv_gbps=recv.get(inst.id, 0.0) / 1e9,
                prefix_query_tokens=inst.kv.query_tokens, prefix_hit_tokens=inst.kv.hit_tokens,
                prefix_hit_rate=inst.kv.hit_rate,
            ))
        return out

    def _transfer_rates(self) -> tuple[dict[str, float], dict[str, float]]:
        """Bytes per second each instance is sending and receiving right now."""
        send: dict[str, float] = {}
        recv: dict[str, float] = {}
        for flow in self.network.flows:
            src, dst = flow.endpoints
            send[src] = send.get(src, 0.0) + flow.rate_bytes_per_s
            recv[dst] = recv.get(dst, 0.0) + flow.rate_bytes_per_s
        return send, recv

    def sample_links(self) -> list[LinkSample]:
        """Every link used so far, its load now and its utilisation since the previous call."""
        self.network.settle()
        now = self.env.now
        last_s, last_bytes = self._last_link_sample
        span_s = now - last_s
        out = []
        for name, link in self.links.items():
            moved = link.bytes_moved - last_bytes.get(name, 0.0)
            util = moved / (link.capacity_bytes_per_s * span_s) if span_s > 0 else 0.0
            out.append(LinkSample(
                time_s=now, link=name, kind=link.kind, capacity_gbps=link.capacity_bytes_per_s / 1e9,
                active_transfers=link.num_active, rate_gbps=link.rate_bytes_per_s / 1e9,
                utilisation=util, moved_gb=link.bytes_moved / 1e9,
            ))
        self._last_link_sample = (now, {name: link.bytes_moved for name, link in self.links.items()})
        self.link_samples.extend(out)
        return out
