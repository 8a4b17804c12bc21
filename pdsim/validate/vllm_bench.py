"""The JSON of `vllm bench serve --save-result --save-detailed`: per-request `ttfts`, `itls`, `input_lens`,
`output_lens`, as the client measured them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.errors import PdsimError, json_shown, parse_json
from pdsim.validate.measured_run import MeasuredRun, count_field, duration_field
from pdsim.workload.trace import MAX_ARRIVAL_NS


def read_vllm_bench_json(path: str | Path, obj: dict | None = None) -> MeasuredRun:
    """`vllm bench serve --save-result --save-detailed` output. Times there are in seconds.

    An infinite `request_rate` with `max_concurrency` is a closed loop with that many clients. Otherwise arrivals are
    the recorded `start_times` where saved (the sends, after a `max_concurrency` slot was free); else, with a finite
    rate, spaced evenly at it (the benchmark drew Poisson gaps, whose draw is not recorded; a `max_concurrency`
    beside it is not modelled), and with an infinite rate alone all at 0. The notes say which.
    """
    p = Path(path)
    if obj is None:
        obj = parse_json(p.read_bytes(), str(p))
    if not isinstance(obj, dict):
        raise PdsimError(f"{p}: expected a JSON object")
    for key in ("ttfts", "itls", "input_lens", "output_lens"):
        if key not in obj:
            raise PdsimError(f"{p}: missing {key!r}; save it with `vllm bench serve --save-result --save-detailed`")
    ttfts = obj["ttfts"]
    n = len(ttfts) if isinstance(ttfts, list) else 0
    lists = ["ttfts", "itls", "input_lens", "output_lens"] + [k for k in ("errors", "start_times")
                                                              if obj.get(k) is not None]
    for key in lists:
        if not isinstance(obj[key], list) or len(obj[key]) != n:
            got = f"a list of {len(obj[key])}" if isinstance(obj[key], list) else json_shown(obj[key])
            raise PdsimError(f"{p}: {key!r}: expected a list with one entry per request, like 'ttfts' ({n}), got {got}")
    errors = obj.get("errors") or [""] * n
    # A failed request has an error or no TTFT (vllm bench saves 0 or null for it).
    ok = [i for i in range(n) if not errors[i] and ttfts[i] is not None and ttfts[i] != 0]
    if not ok:
        raise PdsimError(f"{p}: no successful request (each has an error or no TTFT): nothing to compare")
    ttft = np.array([duration_field(ttfts[i], f"{p}: ttfts[{i}]", "ttft", 0.0) for i in ok]) * 1e3
    itls = []
    for i in ok:
        if not isinstance(obj["itls"][i], list):
            raise PdsimError(f"{p}: itls[{i}]: expected a list of seconds, got {obj['itls'][i]!r:.60}")
        itls.append(np.array([duration_field(x, f"{p}: itls[{i}]", "itl") for x in obj["itls"][i]], dtype=float) * 1e3)
    out_lens = np.array([count_field(obj["output_lens"][i], f"{p}: output_lens[{i}]", "output_len") for i in ok])
    in_lens = np.array([count_field(obj["input_lens"][i], f"{p}: input_lens[{i}]", "input_len") for i in ok])
    e2e = ttft + np.array([x.sum() for x in itls])
    tpot = np.where(out_lens > 1, (e2e - ttft) / np.maximum(out_lens - 1, 1), np.nan)
    notes = []
    # A streamed token is one gap at most (vLLM may send several in one chunk, never a chunk without one).
    overfull = [j for j, (gaps, out) in enumerate(zip(itls, out_lens)) if len(gaps) > max(out - 1, 0)]
    if overfull:
        j = overfull[0]
        notes.append(f"NOTE: {len(overfull)} request(s) have more inter-token gaps than output tokens after the first "
                     f"(the first: request {ok[j]}, {len(itls[j])} gaps for output_len {out_lens[j]}): check "
                     "output_lens, by which TPOT is divided")
    conc = obj.get("max_concurrency")
    if conc is not None and (type(conc) is not int or conc < 1):
        raise PdsimError(f"{p}: 'max_concurrency': expected a whole number >= 1 or null, got {conc!r:.60}")
    rate = obj.get("request_rate", "inf")
    if rate in (None, "inf", "Infinity") or rate == math.inf:
        rate = math.inf
    elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
        raise PdsimError(f"{p}: 'request_rate': expected a number > 0 or \"inf\", got {rate!r:.60}")
    if obj.get("start_times") is not None:
        starts = np.array([duration_field(obj["start_times"][i], f"{p}: start_times[{i}]", "start_time", -math.inf,
                                          math.inf) for i in ok])
        arrival = starts - starts.min()
        if conc is not None and math.isfinite(rate):  # the sends came at the rate and waited for a free slot
            notes.append(f"arrival times: the recorded start_times (request rate {rate:g}/s held to max_concurrency "
                         f"{conc}, which is in them)")
            conc = None
    elif math.isfinite(rate):
        arrival = np.arange(len(ok)) / rate
        notes.append(f"arrival times not recorded: spaced evenly at the request rate {rate:g}/s"
                     + (f"; max_concurrency {conc} is not modelled (where it held requests back in the client, the "
                        "replay lets them in at once)" if conc is not None else ""))
        conc = None
    else:
        arrival = np.zeros(len(ok))
        if conc is None:
            notes.append("request_rate inf (vllm bench's default) and no max_concurrency: every request arrives at "
                         "once")
    if arrival.size and arrival.max() > MAX_ARRIVAL_NS / 1e9:
        source = "start_times" if obj.get("start_times") is not None else "request_rate"
        raise PdsimError(f"{p}: {source!r}: the last request would arrive {arrival.max():.3g} s after the first, past "
                         f"the {MAX_ARRIVAL_NS / 1e9:.0e} s a run's clock holds")
    if len(ok) < n:
        notes.append(f"{n - len(ok)} failed request(s) left out")
    df = pd.DataFrame({"input_toks": in_lens, "output_toks": out_lens, "arrival_s": arrival,
                       "ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": e2e})
    # Results are in completion order: the replay lets requests in by arrival, so they are sorted so.
    df = df.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    itl = np.concatenate(itls) if itls else np.empty(0)
    model = obj.get("model_id")
    return MeasuredRun(str(p), df, itl_ms=itl, concurrency=int(conc) if conc else None, notes=notes,
                       client_model=(model, "the benchmark's model_id") if isinstance(model, str) else None)
