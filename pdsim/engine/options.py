"""How to run a simulation: seed, router overrides, calibration knobs, closed-loop clients, sampling."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field

from pdsim.config import TTFT_MODES
from pdsim.config.base import MAX_OVERHEAD_US, ROUTER_POLICIES
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
    # The measured engine's max_model_len (validate, from meta.json), where it set one: the longest request
    # vLLM checks its KV cache can hold at start-up, in place of the model's max length.
    recorded_max_model_len: int | None = None
    # Where validate read none: "fit" where the engine fitted it to its cache (vLLM's -1 / "auto"), "default" where
    # the run records its engine's arguments without one (the model's max length, which its cache held).
    max_model_len_recorded_as: str | None = None
    # Every engine step this many times as long as predicted (validate's step-time sensitivity replays).
    step_time_scale: float = 1.0

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every field in its range, else a ConfigError naming it. simulate() asks again, since a caller may set a
        field after construction; a NaN overhead, for one, would never let the clock reach the next step."""
        for name in ("profile_dir", "profiles_root"):
            folder = getattr(self, name)
            if folder is not None and not isinstance(folder, (str, os.PathLike)):
                raise ConfigError(f"{name}: expected a folder path or None, got {folder!r}")
        if not isinstance(self.client_send_gaps_s, (tuple, list)):
            raise ConfigError(f"client_send_gaps_s: expected a tuple of seconds, got {self.client_send_gaps_s!r}")
        if not isinstance(self.kv_gpu_blocks, dict):
            raise ConfigError(f"kv_gpu_blocks: expected a dict of instance id -> blocks, got {self.kv_gpu_blocks!r}")
        if not _whole(self.seed) or self.seed < 0:
            raise ConfigError(f"seed: expected a whole number >= 0, got {self.seed!r}")
        self.seed = int(self.seed)  # random.Random takes no numpy integer
        for name in ("prefill_policy", "decode_policy"):
            policy = getattr(self, name)
            if policy is not None and policy not in ROUTER_POLICIES:
                raise ConfigError(f"{name}: expected one of {', '.join(ROUTER_POLICIES)}, got {policy!r}")
        if self.ttft_mode not in TTFT_MODES:
            raise ConfigError(f"ttft_mode: expected one of {', '.join(TTFT_MODES)}, got {self.ttft_mode!r}")
        # A sample per 1e-12 s would never end; the CLI's --log-interval refuses the same range.
        if not (_finite(self.sample_interval_s) and self.sample_interval_s >= 1e-3):
            raise ConfigError(f"sample_interval_s: expected a finite number >= 0.001 s, got {self.sample_interval_s}")
        if not (_finite(self.step_time_scale) and self.step_time_scale > 0):
            raise ConfigError(f"step_time_scale: expected a finite number > 0, got {self.step_time_scale}")
        if self.max_sim_time_s is not None and not (_finite(self.max_sim_time_s) and self.max_sim_time_s > 0):
            raise ConfigError(f"max_sim_time_s: expected a finite number > 0 (s), got {self.max_sim_time_s}")
        # The instance keys' range (InstanceConfig), which these override.
        for name in ("step_overhead_us", "step_overhead_per_seq_us"):
            value = getattr(self, name)
            if value is not None and not (_finite(value) and 0 <= value <= MAX_OVERHEAD_US):
                raise ConfigError(f"{name}: expected a number from 0 to {MAX_OVERHEAD_US:g} (us), got {value!r}")
        alpha = self.decode_skew_alpha
        if alpha is not None and not (_finite(alpha) and 0 <= alpha <= 1):
            raise ConfigError(f"decode_skew_alpha: expected a number from 0 to 1, got {alpha!r}")
        if not _whole(self.max_decode_run_steps) or self.max_decode_run_steps < 1:
            raise ConfigError(f"max_decode_run_steps: expected a whole number >= 1, got {self.max_decode_run_steps!r}")
        if self.concurrency is not None and (not _whole(self.concurrency) or self.concurrency < 1):
            raise ConfigError(f"concurrency: expected a whole number >= 1 (clients) or None, got {self.concurrency!r}")
        for name in ("client_start_spread_s", "client_delay_s"):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0):
                raise ConfigError(f"{name}: expected a finite number >= 0 (s), got {value!r}")
        bad_gaps = [g for g in self.client_send_gaps_s if not (_finite(g) and g >= 0)]
        if bad_gaps:
            raise ConfigError(f"client_send_gaps_s: expected finite numbers >= 0 (s), got {bad_gaps[0]!r}")
        bad_blocks = {k: v for k, v in self.kv_gpu_blocks.items() if not _whole(v) or v < 1}
        if bad_blocks:
            key, value = next(iter(bad_blocks.items()))
            raise ConfigError(f"kv_gpu_blocks[{key!r}]: expected a whole number of blocks >= 1, got {value!r}")
        util = self.recorded_gpu_memory_utilization
        if util is not None and not (_finite(util) and 0 < util <= 1):
            raise ConfigError(f"recorded_gpu_memory_utilization: expected a number in (0, 1], got {util!r}")
        limit = self.recorded_max_model_len
        if limit is not None and not (_whole(limit) and limit >= 1):
            raise ConfigError(f"recorded_max_model_len: expected a whole number of tokens >= 1, got {limit!r}")


def _finite(value: object) -> bool:
    """A real number (numpy's too; bool is none) that is finite."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
