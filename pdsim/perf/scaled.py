"""A step-time model whose engine-step times are all `scale` times another's.

`pdsim validate` replays a run again with every step a little faster and a little slower, to show
how far each latency figure moves for a given step-time error (near saturation, queueing turns
1% of step time into several % of TTFT). The wrapper scales what the engine waits on for a step:
whole steps, decode runs, pipeline stages, an idle DP rank's dummy step and a DP group's MoE
layer; links (KV transfers, pipeline sends) keep their own times.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# What an instance, a pipeline or a DP group waits on, in seconds or microseconds.
_TIMED = frozenset({"step_time_s", "decode_run_s", "dummy_step_s", "stage_times_s", "dummy_stage_times_s",
                    "step_us", "layer_us"})


def margin_scales(margin_pct: float) -> dict[str, float]:
    """The step-time scales of "every step margin_pct % faster" and "... slower"."""
    return {"faster": 1 - margin_pct / 100, "slower": 1 + margin_pct / 100}


class ScaledStepTimes:
    def __init__(self, inner: Any, scale: float) -> None:
        self._inner = inner
        self._scale = float(scale)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name == "moe_layer" and value is not None:  # a DP group prices its MoE layer from it
            return ScaledStepTimes(value, self._scale)
        if name not in _TIMED:
            return value
        scale = self._scale

        def scaled(*args: Any, **kwargs: Any) -> Any:
            times = value(*args, **kwargs)
            if isinstance(times, tuple):
                return tuple(t * scale for t in times)
            return np.asarray(times) * scale if isinstance(times, np.ndarray) else times * scale

        return scaled
