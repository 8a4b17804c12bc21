"""How to run a simulation: seed, router overrides, calibration knobs, closed-loop clients, sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pdsim.config import TTFT_MODES
from pdsim.errors import ConfigError


@dataclass
class SimOptions:
    seed: int = 0
    prefill_policy: str | None = None  # None: the config's router section (default least_loaded)
    decode_policy: str | None = None
    profile_dir: str | None = None  # overrides every instance's profile lookup
    profiles_root: str | None = None  # where <hardware>/<model>/<dtype>/tp<N> profiles live
    # Calibration knobs; when left at None (0.0 for step_overhead_us) each instance's config decides.
    step_overhead_us: float = 0.0
    step_overhead_per_seq_us: float | None = None
    decode_skew_alpha: float | None = None
    max_decode_run_steps: int = 4096  # 1 steps every decode one event at a time (for checking)
    sample_interval_s: float = 1.0  # timeline resolution (simulated seconds)
    max_sim_time_s: float | None = None
    # Closed loop: this many clients, each sending its next request (the next one of the trace,
    # whose arrival time is then ignored) when its previous one ends, as `vllm bench serve
    # --max-concurrency` does. None: open loop, requests arrive at their trace times.
    concurrency: int | None = None
    # Closed loop: client i sends its first request at i * spread / concurrency instead of all at
    # 0. Real closed loops drift apart (jitter, chunked prefills); with fixed lengths a simulated
    # one that starts in lockstep stays in lockstep, so a steady-state measurement spreads them.
    client_start_spread_s: float = 0.0
    # Closed loop: each request reaches the engine this long after its client sends it (HTTP,
    # tokenisation, API-server queue): uniform on [0, 2 * mean], seeded. TTFT counts it (it is
    # measured from the client's send). It also breaks the exact lockstep of equal-length clients.
    client_delay_s: float = 0.0
    # Closed loop: measured gaps between a request's end and its client's next send (seconds; each
    # send draws one at random, seeded), e.g. an aiperf run's own. Not counted in TTFT: the request
    # is sent after it; the client delay above then applies as usual.
    client_send_gaps_s: tuple[float, ...] = ()
    # What TTFT means for a P/D request (docs/pd_realism.md): "prefill", the first token leaves the
    # prefill instance (as papers count it); "client", it reaches the user through the decode
    # instance after the KV transfer and the first decode step (what a client of vLLM's P/D proxy
    # measures). Colocated requests are the same either way.
    ttft_mode: str = "prefill"
    # Instance id -> the measured engine's num_gpu_blocks, used instead of the predicted KV capacity
    # (validate --kv-capacity measured), so memory and timing errors can be seen apart.
    kv_gpu_blocks: dict[str, int] = field(default_factory=dict)
    # The measured engine's gpu_memory_utilization (validate, from meta.json): vLLM's accounting is shown at it,
    # also where the config's npu_mem.mem_util sizes the KV cache by LLMServingSim's rule.
    recorded_gpu_memory_utilization: float | None = None
    # Every engine step this many times as long as predicted (validate's step-time sensitivity replays).
    step_time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.ttft_mode not in TTFT_MODES:
            raise ConfigError(f"ttft_mode: expected one of {', '.join(TTFT_MODES)}, got {self.ttft_mode!r}")
        # A sample per 1e-12 s would never end; the CLI's --log-interval refuses the same range.
        if not (math.isfinite(self.sample_interval_s) and self.sample_interval_s >= 1e-3):
            raise ConfigError(f"sample_interval_s: expected a finite number >= 0.001 s, got {self.sample_interval_s}")
        if not (math.isfinite(self.step_time_scale) and self.step_time_scale > 0):
            raise ConfigError(f"step_time_scale: expected a finite number > 0, got {self.step_time_scale}")
        if self.max_sim_time_s is not None and not (math.isfinite(self.max_sim_time_s) and self.max_sim_time_s > 0):
            raise ConfigError(f"max_sim_time_s: expected a finite number > 0 (s), got {self.max_sim_time_s}")
