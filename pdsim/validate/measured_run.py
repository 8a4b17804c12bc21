"""One measured run, in the shape a replay is compared with, and the checks on the values its readers take."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.cli_checks import vllm_int
from pdsim.errors import PdsimError
from pdsim.validate.engine_meta import (
    compilation_config,
    optimization_level,
    vllm_async_scheduling_default,
    vllm_fuses_allreduce_norm,
    vllm_major_minor,
    vllm_pipelines_async,
    vllm_reserves_full_isl,
)
from pdsim.workload.trace import token_count

MEASURED_COLUMNS = ["input_toks", "output_toks", "arrival_s", "ttft_ms", "tpot_ms", "e2e_ms"]  # + queue_ms where known


@dataclass
class MeasuredRun:
    """One measured run: a row per request, plus what is needed to replay it."""

    source: str
    requests: pd.DataFrame  # MEASURED_COLUMNS
    itl_ms: np.ndarray | None = None  # every inter-token gap, when the file has them
    concurrency: int | None = None  # closed loop: the benchmark's --max-concurrency
    # Closed loop: per request, the client's gap from the latest request end to its send (seconds),
    # when the file has both times (aiperf).
    client_gaps_s: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    # What the engine beside the run says about itself (meta.json: vllm_version, engine_kwargs).
    engine_meta: dict = field(default_factory=dict)
    # Engine arguments meta.json records outside engine_kwargs, and where (engine_meta.with_cache_config): the
    # replay reads them with the others, and its notes name where they came from.
    kwargs_sources: dict[str, str] = field(default_factory=dict)
    # The instance keys the replay took from meta.json (recorded.replay_config), for errors they cause.
    applied_from_meta: dict = field(default_factory=dict)
    # Where TTFT and E2E start: "arrival" (the client sent it) or "pickup" (the engine first took it
    # in, between two steps: vLLM's `queued_ts`).
    latency_origin: str = "arrival"
    # Per request, its prompt's prefix-block ids (pdsim/validate/token_ids.py), when the ids are known.
    prefix_ids: list[tuple[int, ...]] | None = None
    prefix_block_tokens: int = 0
    # The client's wall-clock time (arrival_time, Unix seconds) of the request replayed first, where the
    # file has it: places the replay on the clock of the run's other records (timeseries.csv).
    first_arrival_wall_s: float | None = None
    # The model the benchmark client names (vllm bench's model_id, aiperf's model), and where: checked against the
    # config's as meta.json's is.
    client_model: tuple[str, str] | None = None

    @property
    def engine_kwargs(self) -> dict:
        """The engine arguments meta.json records (empty when it records none)."""
        return self.engine_meta.get("engine_kwargs") or {}

    @property
    def vllm_version(self) -> str:
        """The vLLM release meta.json names ("" where it names none)."""
        return str(self.engine_meta.get("vllm_version") or "")

    def recorded_in(self, key: str) -> str:
        """Where meta.json records engine argument `key`: engine_kwargs, or the field it was taken from."""
        return self.kwargs_sources.get(key, "engine_kwargs")

    @property
    def records_engine_kwargs(self) -> bool:
        """meta.json records the engine's arguments: one they leave out ran vLLM's default."""
        return isinstance(self.engine_meta.get("engine_kwargs"), dict)

    @property
    def max_model_len(self) -> int | None:
        """The max_model_len the engine was started with, where meta.json names one (also in vLLM's command-line
        form, '8k'); None where it records none or vLLM's fit-to-memory ('auto', -1). read_engine_jsonl
        checked the value."""
        limit = self.engine_kwargs.get("max_model_len")
        limit = vllm_int(limit) if isinstance(limit, str) else limit
        return limit if type(limit) is int and limit >= 1 else None

    @property
    def max_model_len_fits_memory(self) -> bool:
        """meta.json records vLLM's fit-to-memory max_model_len ('auto', -1, the only other values
        read_engine_jsonl lets through): the engine took the length its KV cache holds."""
        return self.engine_kwargs.get("max_model_len") is not None and self.max_model_len is None

    def async_scheduling(self) -> tuple[bool | None, str]:
        """Whether the measured vLLM scheduled asynchronously, and why pdsim thinks so (None: unknown)."""
        kwargs = self.engine_kwargs
        set_explicitly = isinstance(kwargs.get("async_scheduling"), bool)
        if not set_explicitly and kwargs.get("distributed_executor_backend") == "ray":
            # From 0.14 vLLM leaves its default off where the executor cannot schedule ahead (config/vllm.py):
            # only the multiprocessing and single-process executors can.
            return False, "off with distributed_executor_backend ray, which cannot schedule ahead (meta.json)"
        version = self.vllm_version
        pp = kwargs.get("pipeline_parallel_size")
        if kwargs.get("async_scheduling") is True and isinstance(pp, int) and pp > 1 \
                and vllm_pipelines_async(version) is False:
            raise PdsimError(f"{Path(self.source).with_name('meta.json')}: engine_kwargs.async_scheduling true with "
                             f"pipeline_parallel_size {pp}: vLLM {version} refuses to start so (\"not yet compatible\","
                             " config/vllm.py); no such run was measured")
        if not set_explicitly and vllm_major_minor(version) == (0, 14) and isinstance(pp, int) and pp > 1:
            return False, f"off with pipeline_parallel_size {pp}: vLLM {version}'s default (meta.json)"
        if vllm_major_minor(version) == (0, 15) and isinstance(pp, int) and pp > 1:
            # 0.15's scheduler skips a request whose step is still in the pipeline (v1/core/sched/scheduler.py), so
            # its micro-batches hold different requests, as when scheduling synchronously; 0.16 changed that.
            return False, (f"replayed as synchronous pipelining: vLLM {version} with pipeline_parallel_size {pp} skips "
                           "a request still in the pipeline, as synchronous scheduling does (meta.json)")
        return self._engine_setting("async_scheduling", vllm_async_scheduling_default)

    def reserve_full_isl(self) -> tuple[bool | None, str]:
        """Whether the measured vLLM admitted only requests whose whole sequence fits in the free
        KV cache (scheduler_reserve_full_isl), and why pdsim thinks so (None: unknown)."""
        return self._engine_setting("scheduler_reserve_full_isl", vllm_reserves_full_isl)

    def allreduce_rms_fusion(self) -> tuple[bool | None, str]:
        """False where the measured vLLM cannot have fused its TP all-reduces with the norms after them
        (enforce_eager, or a version before 0.17), and why; None: vLLM's own rule decides (by GPU and layout)."""
        if self.engine_kwargs.get("enforce_eager") is True:
            return False, "enforce_eager in meta.json engine_kwargs (nothing compiled)"
        compiled, mode = self.compiles()
        if not compiled:
            return False, f"{mode} (no inductor passes)"
        if (level := self.optimization_level()) in (0, 1):
            return False, f"optimization_level {level} in meta.json engine_kwargs (vLLM's -O{level} leaves it off)"
        version = self.vllm_version
        if vllm_fuses_allreduce_norm(version) is False:
            return False, f"vLLM {version} predates it (meta.json; on by default from 0.17)"
        return None, ""

    def compilation_config(self) -> dict:
        """meta.json engine_kwargs' compilation_config as an object ({} when not recorded; check_engine_meta
        checked its form)."""
        return compilation_config(self.engine_kwargs.get("compilation_config"))

    def optimization_level(self) -> int | None:
        """vLLM's -O level as recorded (None: not recorded, vLLM's default 2; check_engine_meta checked it)."""
        return optimization_level(self.engine_kwargs.get("optimization_level"))

    def compiles(self) -> tuple[bool, str]:
        """Whether the measured vLLM compiled the model as its default does (compilation_config mode VLLM_COMPILE:
        piecewise CUDA graphs and inductor's fusion passes), and the recorded setting where it did not: the mode,
        or -O0, which sets it to NONE where none is given (config/vllm.py)."""
        mode = self.compilation_config().get("mode")
        if mode is None:
            return (False, "optimization_level 0 in meta.json engine_kwargs") if self.optimization_level() == 0 \
                else (True, "")
        if mode == 3 or (isinstance(mode, str) and mode.upper() == "VLLM_COMPILE"):
            return True, ""
        return False, f"compilation_config mode {mode!r} in meta.json engine_kwargs"

    def _engine_setting(self, key: str, default_of: Callable[[str], bool | None]) -> tuple[bool | None, str]:
        """A boolean engine argument: as meta.json's engine_kwargs set it, else the default of the
        vLLM version meta.json names (default_of(version), None when not known)."""
        kwargs = self.engine_kwargs
        if isinstance(kwargs.get(key), bool):
            return kwargs[key], "set in meta.json engine_kwargs"
        version = self.vllm_version
        value = default_of(version)
        return (None, "") if value is None else (value, f"vLLM {version}'s default (meta.json)")


def count_field(value: object, where: str, key: str, least: int = 1) -> int:
    """A token count as a file gives it: a whole number >= `least`."""
    return token_count(value, where, key, least, error=PdsimError)


# A request's latency (or a gap within it) beyond a day is a corrupt value (or one in another unit): a benchmark
# that waited so long measured nothing a replay could be compared with.
MAX_LATENCY_S = 86_400.0


def duration_field(value: object, where: str, key: str, least: float = 0.0, most: float = MAX_LATENCY_S,
                   unit: str = "s") -> float:
    """A duration (or, with most=inf, a time) as a file gives it: a finite number from `least` to `most`."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not least <= value <= most):
        bounds = ("" if least == -math.inf and most == math.inf else f" >= {least:g}" if most == math.inf
                  else f" from {least:g} to {most:g} {unit}")
        raise PdsimError(f"{where}: field {key!r}: expected a finite number{bounds}, got {value!r:.60}")
    return float(value)
