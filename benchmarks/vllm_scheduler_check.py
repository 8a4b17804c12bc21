"""Does pdsim schedule exactly as vLLM does? A differential check against vLLM's own scheduler.

vLLM's `Scheduler` / `AsyncScheduler` classes (vllm/v1/core/sched/) are run here, unmodified and
on the CPU, inside a loop that follows vLLM's engine core (`EngineCore.step` for synchronous
scheduling; `EngineCore.step_with_batch_queue` with a queue of two for async scheduling): new
requests join between steps, each step's outputs are processed when it ends. Every step takes the
time pdsim's predictor gives for the batch vLLM chose. pdsim then simulates the same requests,
and the two are compared request by request (first-token and finish times).

    python benchmarks/vllm_scheduler_check.py --setup /tmp/vllm-check     # once: venv + vLLM sources
    /tmp/vllm-check/venv/bin/python benchmarks/vllm_scheduler_check.py    # the check (--rows N: only N H100 rows)

`--setup` needs PyPI: it downloads the vLLM wheel (0.19.0, or `--vllm-version`; about 450 MB),
unpacks its Python sources only (no CUDA kernel is used), and installs torch (CPU build), vLLM's
pure-Python requirements and pdsim into a venv of their own. The check then covers
  - the 90 H100 closed-loop rows (profiles from aiconfigurator's database, as in
    docs/validation.md; `--profile-dir`, built if missing) with the benchmark harness pdsim uses,
  - the RTX PRO 6000 run's 300 requests, synchronous and asynchronous scheduling.
`--random N` runs N random small engines under memory pressure instead; `--random-prefixes N`
the same with prompts that share prefixes (`hash_ids`: system prompts, later turns of a
conversation), vLLM hashing the same tokens for the same ids; `--random-wide N` engines of a wider
range (chunked prefill off, 1 to 128 sequences, blocks of 64; `--seed` for any of them). `--record`
writes tests/data/vllm_scheduler_golden_<vLLM version>.json: small scenarios (closed and open
loop, preemption, shared prefixes, a chunk cap, sync and async) with closed-form step times,
which tests/test_engine.py replays without vLLM. pdsim is configured as the vLLM version
compared (its whole-sequence admission check exists from 0.19 on).
"""

from __future__ import annotations

import argparse
import heapq
import inspect
import json
import random
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "calibration"
sys.path.insert(0, str(REPO))  # tests.helpers (the closed-form step times of the golden scenarios)

if TYPE_CHECKING:
    from pdsim.config import ClusterConfig
    from pdsim.engine.cluster import SimOptions

# (input_toks, output_toks, arrival_s[, hash_ids, hash_block_tokens]); vLLM's own objects are typed Any
# (its sources are importable only in the check's venv); a step-time model is made by a factory such as
# StepTimePredictor.
Row = tuple
StepTimes = Callable[..., Any]
Times = list[tuple[float | None, float | None]]

VLLM_VERSION = "0.19.0"
MAX_MODEL_LEN = 32768  # of the scheduler check's vLLM engines
# vLLM's requirements that the scheduler does not need and that would pull CUDA builds or large
# native packages (torch is installed as the CPU build first).
SKIP_REQUIREMENTS = {
    "torch", "torchaudio", "torchvision", "flashinfer-python", "ray", "numba", "opencv-python-headless",
    "compressed-tensors", "depyf", "lm-format-enforcer", "outlines_core", "anthropic",
    "model-hosting-container-standards", "scipy", "setuptools", "ninja",
}


# -- set-up ------------------------------------------------------------------------------------
def setup(root: Path, version: str = VLLM_VERSION) -> None:
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0", "-e", str(REPO)], check=True)
    wheels = sorted(root.glob(f"vllm-{version}-*.whl"))
    if not wheels:
        subprocess.run([str(py), "-m", "pip", "download", "-q", f"vllm=={version}", "--no-deps", "-d", str(root)],
                       check=True)
        wheels = sorted(root.glob(f"vllm-{version}-*.whl"))
    src = root / "src"
    requirements = []
    with zipfile.ZipFile(wheels[0]) as whl:
        for name in whl.namelist():
            if name.startswith("vllm/") and name.endswith(".py"):
                whl.extract(name, src)
        meta = whl.read(f"vllm-{version}.dist-info/METADATA").decode()
    for line in meta.splitlines():
        if line.startswith("Requires-Dist: ") and "extra ==" not in line:
            spec = line.removeprefix("Requires-Dist: ")
            name = spec.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()
            if name not in SKIP_REQUIREMENTS:
                requirements.append(spec)
    subprocess.run(pip + requirements, check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "vllm_sources.pth").write_text(str(src) + "\n")
    print(f"ready: {py} {Path(__file__).relative_to(REPO)}")


# -- vLLM's scheduler, driven --------------------------------------------------------------------
def _vllm() -> SimpleNamespace:
    try:
        import logging

        import torch
        import vllm.platforms as platforms
        from vllm.platforms.cpu import CpuPlatform

        platforms._current_platform = CpuPlatform()  # no GPU here; the scheduler needs none
        from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
        from vllm.sampling_params import SamplingParams
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.outputs import ModelRunnerOutput
        from vllm.v1.request import Request
        from vllm.v1.structured_output import StructuredOutputManager
        from vllm.version import __version__ as vllm_version
        try:
            from vllm.utils.hashing import get_hash_fn_by_name
        except ImportError:  # 0.12 keeps it in vllm.utils
            from vllm.utils import get_hash_fn_by_name
    except ImportError as exc:
        sys.exit(f"vLLM's sources are not importable ({exc}); run with --setup DIR first, then "
                 f"DIR/venv/bin/python {Path(__file__).relative_to(REPO)}")
    logging.disable(logging.WARNING)
    return SimpleNamespace(
        version=vllm_version, torch=torch, CacheConfig=CacheConfig, DeviceConfig=DeviceConfig, ModelConfig=ModelConfig,
        SchedulerConfig=SchedulerConfig, VllmConfig=VllmConfig, SamplingParams=SamplingParams,
        AsyncScheduler=AsyncScheduler, Scheduler=Scheduler, FullAttentionSpec=FullAttentionSpec,
        KVCacheConfig=KVCacheConfig, KVCacheGroupSpec=KVCacheGroupSpec, ModelRunnerOutput=ModelRunnerOutput,
        Request=Request, StructuredOutputManager=StructuredOutputManager,
        get_request_block_hasher=get_request_block_hasher, init_none_hash=init_none_hash,
        get_hash_fn_by_name=get_hash_fn_by_name)


def has_async_pp(v: SimpleNamespace) -> bool:
    """vLLM 0.12 refuses async scheduling with pipeline parallelism; 0.19 runs it."""
    import inspect

    from vllm.config import vllm as config_module
    return "Async scheduling is not yet compatible with" not in inspect.getsource(config_module)


def has_reserve_full_isl(v: SimpleNamespace) -> bool:
    """vLLM 0.19 added the whole-sequence admission check (SchedulerConfig.scheduler_reserve_full_isl)."""
    return "scheduler_reserve_full_isl" in v.SchedulerConfig.__dataclass_fields__


def _model_dir(model_name: str, work: Path) -> str:
    """A folder with the model's config.json, which is all vLLM's ModelConfig reads here."""
    from pdsim.models import MODELS_DIR

    folder = work / model_name.replace("/", "--")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((MODELS_DIR / f"{model_name}.json").read_text())
    return str(folder)


def make_scheduler(cfg: ClusterConfig, work: Path, opts: SimOptions | None = None,
                   step_times: StepTimes | None = None) -> tuple[SimpleNamespace, Any, Any]:
    """vLLM's Scheduler (AsyncScheduler with async scheduling) set up as the cluster's single
    instance, with pdsim's step-time predictor for it (made by step_times, default StepTimePredictor).
    Returns (vllm namespace, scheduler, predictor)."""
    import simpy

    from pdsim.engine.cluster import Cluster, SimOptions
    from pdsim.perf.predictor import StepTimePredictor

    v = _vllm()
    ic = next(iter(cfg.instances())).config
    instance = Cluster(simpy.Environment(), cfg, opts or SimOptions(), step_times=step_times or StepTimePredictor)
    predictor, num_blocks = instance.instances[0].predictor, instance.infos[0].num_kv_blocks
    async_mode = bool(ic.async_scheduling)
    max_model_len = MAX_MODEL_LEN
    knobs = {}
    if has_reserve_full_isl(v):
        knobs["scheduler_reserve_full_isl"] = ic.scheduler_reserve_full_isl
    elif ic.scheduler_reserve_full_isl:
        raise SystemExit(f"vLLM {v.version} has no scheduler_reserve_full_isl: give pdsim's config false")
    scheduler_config = v.SchedulerConfig(
        max_num_seqs=ic.max_num_seqs, max_num_batched_tokens=ic.max_num_batched_tokens, max_model_len=max_model_len,
        enable_chunked_prefill=ic.enable_chunked_prefill, is_encoder_decoder=False, async_scheduling=async_mode,
        long_prefill_token_threshold=ic.long_prefill_token_threshold, **knobs)
    model_config = v.ModelConfig(model=_model_dir(ic.model_name, work), skip_tokenizer_init=True, dtype="bfloat16",
                                    max_model_len=max_model_len, seed=0)
    cache_config = v.CacheConfig(block_size=ic.block_size, gpu_memory_utilization=0.9, cache_dtype="auto",
                                    enable_prefix_caching=ic.enable_prefix_caching)
    vllm_config = v.VllmConfig(scheduler_config=scheduler_config, model_config=model_config,
                                  cache_config=cache_config, device_config=v.DeviceConfig(device="cpu"))
    # pdsim's pool plus vLLM's null block (block 0, never handed out).
    blocks = num_blocks + 1
    spec = v.FullAttentionSpec(block_size=ic.block_size, num_kv_heads=1, head_size=1, dtype=v.torch.float32)
    kv_config = v.KVCacheConfig(num_blocks=blocks, kv_cache_tensors=[],
                                kv_cache_groups=[v.KVCacheGroupSpec(["layer"], spec)])
    cache_config.num_gpu_blocks = blocks
    cls = v.AsyncScheduler if async_mode else v.Scheduler
    sched = cls(vllm_config=vllm_config, kv_cache_config=kv_config,
                structured_output_manager=v.StructuredOutputManager(vllm_config), block_size=ic.block_size,
                log_stats=False)
    assert sched.max_num_scheduled_tokens == ic.max_num_batched_tokens
    # As vLLM's EngineCore sets up prefix caching: every request hashes its full blocks.
    sched.block_hasher = None
    if ic.enable_prefix_caching:
        hash_fn = v.get_hash_fn_by_name(cache_config.prefix_caching_hash_algo)
        v.init_none_hash(hash_fn)
        sched.block_hasher = v.get_request_block_hasher(ic.block_size, hash_fn)
    return v, sched, predictor


def new_request(v: SimpleNamespace, request_id: str, input_toks: int, output_toks: int, block_hasher: Any = None,
                hash_ids: tuple[int, ...] = (), hash_block_tokens: int = 0) -> Any:
    """A vLLM request of that many prompt tokens, generating exactly output_toks (ignore_eos).
    Prefix id j stands for hash_block_tokens tokens of id SPAN_TOKEN + hash_ids[j], so two prompts
    that start with the same ids start with the same tokens, as pdsim reads `hash_ids`; the rest
    of the prompt is its own (token id 3 + its number): it can hit only its own blocks."""
    # The EOS id is a Request argument up to 0.12 and gone by 0.19 (ignore_eos makes it moot).
    eos = {"eos_token_id": 2} if "eos_token_id" in inspect.signature(v.Request.__init__).parameters else {}
    params = v.SamplingParams(max_tokens=output_toks, ignore_eos=True, temperature=0.0)
    hasher = {"block_hasher": block_hasher} if block_hasher is not None else {}
    prompt = [SPAN_TOKEN + h for h in hash_ids for _ in range(hash_block_tokens)][:input_toks]
    prompt += [3 + int(request_id)] * (input_toks - len(prompt))
    return v.Request(request_id, prompt, params, None, **eos, **hasher)


# Prompt tokens of prefix ids, and of what each request samples: apart from every request's own
# prompt token (3 + its number), so that only equal prefix ids make equal blocks. Sampled tokens
# are the request's own too: two requests with the same prompt do not share their output blocks
# (pdsim keys those by request).
SPAN_TOKEN = 1_000_000
SAMPLED_TOKEN = 2_000_000


class StepPlanner:
    """One engine step: vLLM's scheduler decides the batch, pdsim's predictor prices it, and what
    vLLM's model runner would sample is handed back (nothing for a partial prefill or recompute)."""

    def __init__(self, v: SimpleNamespace, sched: Any, predictor: Any, num_stages: int = 1) -> None:
        self.v, self.sched, self.predictor, self.num_stages = v, sched, predictor, num_stages
        # Requests past their prefill (or recompute), as pdsim's decode cohort, with their
        # preemption count then: a later preemption sends them back to computing.
        self.decoding: dict[str, int] = {}

    def plan(self) -> tuple[Any, dict[str, bool], Any]:
        """-> (scheduler output, {request id: samples a token}, step seconds; with pipeline stages,
        (seconds per stage, seconds per activation send))."""
        sched = self.sched
        # Tokens each request must have computed to sample its next one (async: with the token
        # of the step in flight, a placeholder), taken before schedule() advances anything.
        due = {rid: r.num_tokens + r.num_output_placeholders for rid, r in sched.requests.items()}
        out = sched.schedule()
        chunks, n_decode, kv_sum, kv_max, samples = [], 0, 0, 0, {}
        for rid, n in out.num_scheduled_tokens.items():
            req = sched.requests[rid]
            before = req.num_computed_tokens - n  # schedule() has already advanced it
            if before == 0 or self.decoding.get(rid) != req.num_preemptions:
                # New, or recomputing after a preemption (from a prefix-cache hit, not always 0).
                self.decoding.pop(rid, None)
            if rid in self.decoding:
                n_decode += 1
                kv_sum += before
                kv_max = max(kv_max, before)
            else:
                chunks.append((n, before))
            # vLLM's model runner discards what a partial prefill samples.
            samples[rid] = before + n >= due[rid]
        for rid, sampled in samples.items():
            if sampled:
                self.decoding[rid] = sched.requests[rid].num_preemptions
        kv_max = kv_max if n_decode else None
        tokens = sum(c for c, _ in chunks) + n_decode
        if not tokens:
            return out, samples, None  # nothing scheduled
        if self.num_stages > 1:  # pipeline stages: each stage's time, and the activation send between two
            stage_s = self.predictor.stage_times_s(tuple(chunks), n_decode, kv_sum, kv_max)
            return out, samples, (stage_s, self.predictor.send_s(tokens))
        return out, samples, self.predictor.step_time_s(tuple(chunks), n_decode, kv_sum, kv_max)

    def finish(self, out: Any, samples: dict[str, bool]) -> list[Any]:
        """Hand the step's samples to the scheduler; -> its outputs (EngineCoreOutput per request)."""
        ids = list(out.num_scheduled_tokens)
        output = self.v.ModelRunnerOutput(
            req_ids=ids, req_id_to_index={r: k for k, r in enumerate(ids)},
            sampled_token_ids=[[SAMPLED_TOKEN + int(r)] if samples[r] else [] for r in ids], logprobs=None,
            prompt_logprobs_dict={}, pooler_output=[])
        return [o for client in self.sched.update_from_output(out, output).values() for o in client.outputs]


def vllm_run(cfg: ClusterConfig, rows: list[Row], work: Path, concurrency: int | None = None,
             client_delay_s: float = 0.0, seed: int = 0, opts: SimOptions | None = None,
             step_times: StepTimes | None = None) -> Times:
    """rows: [(input_toks, output_toks, arrival_s[, hash_ids, hash_block_tokens])] (arrivals ignored in
    a closed loop). Returns
    [(first_token_s, finish_s)] per request, as vLLM's scheduler orders the steps."""
    v, sched, predictor = make_scheduler(cfg, work, opts, step_times)
    ic = next(iter(cfg.instances())).config
    async_mode, num_stages = bool(ic.async_scheduling), ic.pp_size
    planner = StepPlanner(v, sched, predictor, num_stages)
    plan = planner.plan

    rng = random.Random(seed)
    arrivals: list[tuple[float, int]] = []
    first: dict[int, float] = {}
    finish: dict[int, float] = {}
    sent = 0

    def send(now: float) -> None:  # as pdsim's closed-loop clients draw their delays
        nonlocal sent
        if sent < len(rows):
            delay = rng.uniform(0.0, 2.0 * client_delay_s) if client_delay_s > 0 else 0.0
            heapq.heappush(arrivals, (now + delay, sent))
            sent += 1

    if concurrency is None:
        arrivals = [(row[2], i) for i, row in enumerate(rows)]
        heapq.heapify(arrivals)
        sent = len(rows)
    else:
        for _ in range(concurrency):
            send(0.0)

    def add_arrived(now: float) -> None:
        while arrivals and arrivals[0][0] <= now:
            _, i = heapq.heappop(arrivals)
            sched.add_request(new_request(v, str(i), rows[i][0], rows[i][1], sched.block_hasher, *rows[i][3:]))

    def process(out: Any, samples: dict[str, bool], now: float) -> None:
        for o in planner.finish(out, samples):
            i = int(o.request_id)
            if o.new_token_ids and i not in first:
                first[i] = now
            if o.finish_reason is not None:
                finish[i] = now
                if concurrency is not None:
                    send(now)

    stage_free = [0.0] * num_stages

    def through_stages(now: float, priced: tuple[tuple[float, ...], float]) -> float:
        """When a micro-batch launched now leaves the last stage: each stage takes one at a time, in
        launch order, and hands it on with an activation send (pdsim's PipelinedInstance)."""
        stage_s, send_s = priced
        t = now
        for i, seconds in enumerate(stage_s):
            t = stage_free[i] = max(t, stage_free[i]) + seconds
            if i < num_stages - 1:
                t += send_s
        return stage_free[-1]

    now = 0.0
    if not async_mode and num_stages == 1:
        # EngineCore.step: schedule, execute, process the output; arrivals join between steps.
        while len(finish) < len(rows):
            add_arrived(now)
            if not sched.has_requests():
                now = arrivals[0][0]
                continue
            out, samples, seconds = plan()
            now += seconds or 0.0  # None: nothing was scheduled
            process(out, samples, now)
    else:
        # EngineCore.step_with_batch_queue, its queue 2 long with async scheduling (step n+1 is
        # scheduled while step n runs; step n's output is processed when it ends, after that
        # decision) and as long as the pipeline stages with pipeline parallelism (vLLM's sync
        # Scheduler then; a request whose step is in flight has nothing left to schedule; with
        # async scheduling its AsyncScheduler, pp_size 2).
        queue_size = num_stages if num_stages > 1 else 2
        in_flight: list[tuple] = []  # newest first
        gpu_free = 0.0
        while len(finish) < len(rows):
            add_arrived(now)
            if not sched.has_requests() and not in_flight:
                now = arrivals[0][0]
                continue
            if sched.has_requests():
                out, samples, seconds = plan()
                if out.total_num_scheduled_tokens > 0:
                    if num_stages > 1 and async_mode:
                        # Async scheduling with PP (vLLM 0.19): the first stage takes the previous
                        # micro-batch's sampled tokens, broadcast from the last one, before its next
                        # forward (gpu_model_runner, read, not run): no two micro-batches overlap.
                        stage_s, send_s = seconds
                        end = gpu_free = (max(now, gpu_free) + sum(stage_s) + (num_stages - 1) * send_s
                                          + planner.predictor.send_s(0))
                    elif num_stages > 1:
                        end = through_stages(now, seconds)
                    else:
                        end = gpu_free = max(now, gpu_free) + seconds
                    in_flight.insert(0, (out, samples, end))
                    if len(in_flight) < queue_size and in_flight[-1][2] > now:
                        continue  # don't block on the running step: schedule the next one
                else:
                    in_flight.insert(0, (out, samples, now))
            if in_flight:
                out, samples, end = in_flight.pop()
                now = max(now, end)
                process(out, samples, now)
    return [(first[i], finish[i]) for i in range(len(rows))]


def pdsim_run(cfg: ClusterConfig, rows: list[Row], concurrency: int | None = None, client_delay_s: float = 0.0,
              seed: int = 0, opts: SimOptions | None = None, step_times: StepTimes | None = None) -> Times:
    from dataclasses import replace

    from pdsim.engine.cluster import SimOptions, simulate
    from pdsim.perf.predictor import StepTimePredictor
    from pdsim.workload.trace import TraceRequest

    trace = [TraceRequest(i, a, b, int(round(t * 1e9)), *prefix) for i, (a, b, t, *prefix) in enumerate(rows)]
    opts = replace(opts or SimOptions(), concurrency=concurrency, client_delay_s=client_delay_s, seed=seed)
    result = simulate(cfg, trace, opts, step_times=step_times or StepTimePredictor)
    return [(r.first_token_s, r.finish_s) for r in result.requests]


def _max_diff(a: Times, b: Times) -> float:
    return max(max(abs(x[0] - y[0]), abs(x[1] - y[1])) for x, y in zip(a, b))


# -- the checks ---------------------------------------------------------------------------------
def check_h100(profile_dir: Path, work: Path, limit: int | None) -> None:
    from pdsim.engine.cluster import SimOptions
    from pdsim.models import load_model
    from pdsim.perf.aiconfigurator import import_profile
    from pdsim.perf.profile import profile_path
    from pdsim.validate.closed_loop import CLIENT_DELAY_S, ROUNDS, aiconfigurator_engine, row_config
    from pdsim.validate.closed_loop_table import read_closed_loop_table
    from pdsim.validate.engine_meta import vllm_reserves_full_isl

    aic = SHARED / "aiconfigurator-h100"
    table = read_closed_loop_table(aic / "silicon_h100_qwen3-32b_vllm-0.12.0_agg_bf16.csv")
    model = "Qwen/Qwen3-32B"
    for tp in sorted(set(table.tp)):
        if not profile_path(profile_dir, "H100-SXM", model, "bfloat16", int(tp)).is_dir():
            import_profile(aic / "systems_data_h100_sxm", "h100_sxm", load_model(model), int(tp), profile_dir)
    opts = SimOptions(step_overhead_us=1000.0)  # as docs/validation.md
    worst, n, checked = 0.0, 0, list(table.itertuples(index=False))[:limit]
    started = time.perf_counter()
    for row in checked:
        isl, osl, conc, tp = int(row.isl), int(row.osl), int(row.concurrency), int(row.tp)
        # As validate simulates the row: the whole-sequence admission check only from vLLM 0.19 on.
        reserve = vllm_reserves_full_isl(row.backend_version) is not False
        cfg = row_config(model, "H100-SXM", 80.0, tp, str(profile_path(profile_dir, "H100-SXM", model, "bfloat16", tp)),
                         {**aiconfigurator_engine(conc, isl), "scheduler_reserve_full_isl": reserve})
        rows = [(isl, osl, 0.0)] * (ROUNDS * conc)
        theirs = vllm_run(cfg, rows, work, conc, CLIENT_DELAY_S, opts=opts)
        ours = pdsim_run(cfg, rows, conc, CLIENT_DELAY_S, opts=opts)
        worst = max(worst, _max_diff(theirs, ours))
        n += len(rows)
    print(f"H100 closed-loop rows (vLLM {_vllm().version}'s scheduler): {len(checked)} rows, "
          f"{n} requests; largest difference "
          f"in a first-token or finish time: {worst * 1e6:.3f} us ({time.perf_counter() - started:.0f} s)")


def check_rtx(work: Path) -> None:
    from pdsim.config import load_cluster_config
    from pdsim.engine.cluster import SimOptions
    from pdsim.validate.compare import trace_of
    from pdsim.validate.measured import read_measured

    root = SHARED / "llmservingsim-rtxpro6000-llama31-8b"
    run = read_measured(root / "vllm_run" / "requests.jsonl")
    rows = [(r.input_toks, r.output_toks, r.arrival_time_ns * 1e-9) for r in trace_of(run)]
    opts = SimOptions(profile_dir=str(root / "profile"))
    v = _vllm()
    for async_mode in (False, True):
        cfg = load_cluster_config(root / "cluster_config.json", {
            "max_num_seqs": 128, "max_num_batched_tokens": 2048, "async_scheduling": async_mode,
            "scheduler_reserve_full_isl": has_reserve_full_isl(v)})
        theirs = vllm_run(cfg, rows, work, opts=opts)
        ours = pdsim_run(cfg, rows, opts=opts)
        print(f"RTX PRO 6000 run, {'async' if async_mode else 'sync'} scheduling (vLLM {v.version}'s scheduler): "
              f"{len(rows)} requests; largest difference in a first-token or finish time: "
              f"{_max_diff(theirs, ours) * 1e6:.3f} us")


def check_random(count: int, work: Path, seed: int = 1, mode: str = "") -> None:
    """Random small engines under memory pressure: open and closed loops, chunk caps, block sizes,
    sync and async scheduling, prefix caching on and off, with closed-form step times. mode
    "prefixes": the requests share prompt prefixes (`hash_ids`) and prefix caching is always on;
    "wide": also chunked prefill off, 1 to 128 sequences, blocks of 64, half the scenarios with
    shared prefixes, and a KV cache of 700-1,500 blocks of 16 tokens' size."""
    from pdsim.engine.cluster import SimOptions
    from pdsim.workload.generate import generate_requests
    from tests.helpers import AnalyticStepTimes

    v = _vllm()
    rng = random.Random(seed)
    worst, preempted, hits, started, asynchronous, differing = 0.0, 0, 0, time.perf_counter(), 0, 0
    for k in range(count):
        concurrency = rng.choice([None, None, 4, 16] if mode == "wide" else [None, None, 8, 24])
        # At most 2,500 tokens a request: each fits the smallest KV cache drawn here (vLLM would
        # otherwise wait for it forever).
        rows = [(r.input_toks, r.output_toks, 0.0 if concurrency else r.arrival_time_ns * 1e-9)
                for r in generate_requests(100 if mode in ("", "prefixes") else 80, rng.choice([10, 30, 60]),
                                           "lognormal:700,600", "lognormal:120,100",
                                           seed={"wide": 5000, "pp": 7000}.get(mode, 1000) + k)
                if r.input_toks + r.output_toks <= 2500]
        if mode == "wide":
            engine, blocks = _wide_engine(rng, v)
            if rng.random() < 0.5:
                rows = with_shared_prefixes(rows, random.Random(seed * 7 + k))
        elif mode == "pp":
            engine, blocks = _pp_engine(rng, v)
            asynchronous += engine["async_scheduling"]
        else:
            if mode == "prefixes":
                rows = with_shared_prefixes(rows, random.Random(seed * 100_003 + k))
            engine = {"mem_size_gb": rng.choice([18.5, 19.0, 19.5]), "max_num_seqs": rng.choice([8, 32, 64]),
                      "max_num_batched_tokens": rng.choice([512, 1024, 2048]),
                      "long_prefill_token_threshold": rng.choice([0, 0, 256]),
                      "scheduler_reserve_full_isl": has_reserve_full_isl(v) and rng.random() < 0.7,
                      "async_scheduling": rng.random() < 0.5, "enable_prefix_caching": rng.random() < 0.7,
                      "block_size": rng.choice([16, 16, 32])}
            if mode == "prefixes":
                engine["enable_prefix_caching"] = True
            blocks = None
        cfg = golden_config(engine)
        opts = SimOptions(kv_gpu_blocks={"n0.i0": blocks or _num_gpu_blocks(cfg, AnalyticStepTimes)})
        delay = 0.001 if concurrency else 0.0
        theirs = vllm_run(cfg, rows, work, concurrency, delay, opts=opts, step_times=AnalyticStepTimes)
        ours = pdsim_run(cfg, rows, concurrency, delay, opts=opts, step_times=AnalyticStepTimes)
        diff = _max_diff(theirs, ours)
        differing += diff > 1e-6
        if diff > 1e-6:
            print(f"scenario {k}: {engine}, concurrency {concurrency}, {opts.kv_gpu_blocks['n0.i0']} KV blocks: "
                  f"differs by {diff * 1e6:.3f} us")
        worst = max(worst, diff)
        counts = _counts(cfg, rows, concurrency, delay, opts)
        preempted += counts[0]
        hits += counts[1]
    shared = f", {hits:,} prompt tokens from the prefix cache" if hits else ""
    label = {"prefixes": " with shared prefixes", "wide": " (wide)",
             "pp": f" with pipeline stages, {asynchronous} of them async"}.get(mode, "")
    print(f"{count} random scenarios{label} (vLLM {v.version}'s scheduler, {preempted} preemptions in pdsim{shared}): "
          f"largest difference in a first-token or finish time: {worst * 1e6:.3f} us, {differing} scenarios "
          f"differing by more than 1 us ({time.perf_counter() - started:.0f} s)")


def _pp_engine(rng: random.Random, v: SimpleNamespace) -> tuple[dict, int]:
    """An engine of 2-4 pipeline stages (vLLM's batch queue as long), and its KV blocks."""
    pp = rng.choice([2, 3, 4])
    engine = {"mem_size_gb": 80.0, "pp_size": pp, "num_npus": pp, "max_num_seqs": rng.choice([8, 32, 64]),
              "max_num_batched_tokens": rng.choice([512, 1024, 2048]),
              "long_prefill_token_threshold": rng.choice([0, 0, 256]),
              "scheduler_reserve_full_isl": has_reserve_full_isl(v) and rng.random() < 0.7,
              "async_scheduling": False, "enable_prefix_caching": rng.random() < 0.7,
              "block_size": rng.choice([16, 32])}
    blocks = rng.choice([100000, 1500, 700]) * 16 // engine["block_size"] + 1
    # Async scheduling with PP, where vLLM allows it (0.19; 0.12 refuses it).
    engine["async_scheduling"] = has_async_pp(v) and rng.random() < 0.5
    return engine, blocks


def _wide_engine(rng: random.Random, v: SimpleNamespace) -> tuple[dict, int]:
    """An engine of the wide random mode, and its KV blocks (vLLM's null block included). Without
    chunked prefill vLLM needs a budget of at least max_model_len, whose activation peak would not
    fit a small GPU: the memory is ample and the block count is pinned instead."""
    chunked = rng.random() < 0.5
    engine = {"mem_size_gb": 80.0, "max_num_seqs": rng.choice([1, 2, 4, 16, 128]),
              "max_num_batched_tokens": rng.choice([256, 512, 4096]) if chunked else MAX_MODEL_LEN,
              "enable_chunked_prefill": chunked,
              "long_prefill_token_threshold": rng.choice([0, 0, 128]) if chunked else 0,
              "scheduler_reserve_full_isl": has_reserve_full_isl(v) and rng.random() < 0.7,
              "async_scheduling": rng.random() < 0.5, "enable_prefix_caching": rng.random() < 0.7,
              "block_size": rng.choice([16, 32, 64])}
    engine["max_num_seqs"] = min(engine["max_num_seqs"], engine["max_num_batched_tokens"])
    return engine, rng.choice([700, 1000, 1500]) * 16 // engine["block_size"] + 1


def with_shared_prefixes(rows: list[Row], rng: random.Random) -> list[Row]:
    """The rows with prefix ids (`hash_ids`) as a chat service's prompts share them: a few system
    prompts, follow-up turns that start with an earlier prompt, and prompts of their own; a prompt
    may end inside its last id's span. Each row fits the same 2,500 tokens."""
    span = rng.choice([16, 32, 64, 128])
    next_id = 0

    def fresh(n: int) -> list[int]:
        nonlocal next_id
        next_id += n
        return list(range(next_id - n, next_id))

    systems = [fresh(rng.randint(1, 6)) for _ in range(3)]
    out: list[tuple] = []
    for input_toks, output_toks, arrival in rows:
        pick = rng.random()
        earlier = [r[3] for r in out if r[3]]
        if pick < 0.3 and earlier:
            ids = list(rng.choice(earlier)) + fresh(rng.randint(1, 4))  # a later turn of that conversation
        elif pick < 0.8:
            ids = rng.choice(systems) + fresh(rng.randint(0, 3))
        else:
            ids = []  # no prefix information: a prompt of its own
        ids = ids[:max(0, (2500 - output_toks) // span)]
        if not ids:
            out.append((input_toks, output_toks, arrival, (), 0))
            continue
        covered = len(ids) * span
        input_toks = covered - rng.randrange(span) if rng.random() < 0.2 else covered + rng.randrange(2 * span)
        input_toks = max(1, min(input_toks, 2500 - output_toks))
        out.append((input_toks, output_toks, arrival, tuple(ids), span))
    return out


def _counts(cfg: ClusterConfig, rows: list[Row], concurrency: int | None, delay: float,
            opts: SimOptions) -> tuple[int, int]:
    """pdsim's preemptions and prompt tokens taken from the prefix cache in that scenario."""
    from dataclasses import replace

    from pdsim.engine.cluster import simulate
    from pdsim.workload.trace import TraceRequest
    from tests.helpers import AnalyticStepTimes

    trace = [TraceRequest(i, a, b, int(round(t * 1e9)), *prefix) for i, (a, b, t, *prefix) in enumerate(rows)]
    result = simulate(cfg, trace, replace(opts, concurrency=concurrency, client_delay_s=delay),
                      step_times=AnalyticStepTimes)
    return sum(r.preemptions for r in result.requests), sum(r.cached_tokens for r in result.requests)


# -- golden scenarios for the test suite --------------------------------------------------------
def _pp_rows(seed: int, rate_per_s: float) -> list[tuple[int, int, float]]:
    """An open loop of the random pipeline mode's kind (--random-pp): 80 requests, each fitting 2,500 tokens."""
    from pdsim.workload.generate import generate_requests

    return [(r.input_toks, r.output_toks, r.arrival_time_ns * 1e-9)
            for r in generate_requests(80, rate_per_s, "lognormal:700,600", "lognormal:120,100", seed=seed)
            if r.input_toks + r.output_toks <= 2500]


def golden_scenarios(reserve_full_isl: bool, async_pp: bool) -> list[dict]:
    """reserve_full_isl: the vLLM being recorded has the whole-sequence admission check (0.19+);
    async_pp: it runs async scheduling with pipeline parallelism (0.19; 0.12 refuses it)."""
    from pdsim.workload.generate import generate_requests

    open_rows = [(r.input_toks, r.output_toks, r.arrival_time_ns * 1e-9)
                 for r in generate_requests(120, 40, "lognormal:600,400", "lognormal:120,80", seed=7)]
    base = {"mem_size_gb": 96.0, "max_num_seqs": 8, "max_num_batched_tokens": 8 + 1024 + 1500,
            "scheduler_reserve_full_isl": reserve_full_isl, "enable_prefix_caching": False}
    tight = {**base, "mem_size_gb": 18.5, "max_num_seqs": 32, "max_num_batched_tokens": 512}
    out = []
    for async_mode in (False, True):
        tag = "async" if async_mode else "sync"
        out.append({"name": f"closed_loop_{tag}", "engine": {**base, "async_scheduling": async_mode},
                    "concurrency": 8, "client_delay_s": 0.001, "rows": [(1024, 40, 0.0)] * 48})
        out.append({"name": f"open_loop_preemption_{tag}", "engine": {**tight, "async_scheduling": async_mode},
                    "concurrency": None, "client_delay_s": 0.0, "rows": open_rows})
        # vLLM's default: a preempted request's blocks stay cached and its recompute reuses them.
        out.append({"name": f"open_loop_preemption_prefix_caching_{tag}",
                    "engine": {**tight, "async_scheduling": async_mode, "enable_prefix_caching": True},
                    "concurrency": None, "client_delay_s": 0.0, "rows": open_rows})
    # A busier open loop, where async preemptions hit requests whose decode token is in flight
    # (its block is not cached yet: vLLM still holds a placeholder for that token).
    busy_rows = [(r.input_toks, r.output_toks, r.arrival_time_ns * 1e-9)
                 for r in generate_requests(150, 80, "lognormal:600,500", "lognormal:150,120", seed=105)
                 if r.input_toks + r.output_toks <= 3000]
    out.append({"name": "open_loop_preemption_prefix_caching_async_busy",
                "engine": {**tight, "async_scheduling": True, "enable_prefix_caching": True},
                "concurrency": None, "client_delay_s": 0.0, "rows": busy_rows})
    # Prompts sharing prefixes (system prompts, later turns of a conversation): hits at admission,
    # blocks shared while their first owner computes them, eviction from the free queue.
    shared_rows = with_shared_prefixes([(r.input_toks, r.output_toks, r.arrival_time_ns * 1e-9)
                                        for r in generate_requests(150, 60, "lognormal:600,500", "lognormal:150,120",
                                                                   seed=211) if r.input_toks + r.output_toks <= 2500],
                                       random.Random(5))
    for async_mode in (False, True):
        out.append({"name": f"open_loop_shared_prefixes_preemption_{'async' if async_mode else 'sync'}",
                    "engine": {**tight, "async_scheduling": async_mode, "enable_prefix_caching": True},
                    "concurrency": None, "client_delay_s": 0.0, "rows": shared_rows})
    # Clients whose requests finish in the same step but arrived out of order (their delays
    # differ): vLLM frees them in admission order, which decides whose cached prefix is evicted first.
    closed_rows = with_shared_prefixes([(r.input_toks, r.output_toks, 0.0)
                                        for r in generate_requests(100, 10, "lognormal:700,600", "lognormal:120,100",
                                                                   seed=1022) if r.input_toks + r.output_toks <= 2500],
                                       random.Random(100_025))
    out.append({"name": "closed_loop_shared_prefixes_sync",
                "engine": {**tight, "mem_size_gb": 19.5, "max_num_seqs": 64, "max_num_batched_tokens": 1024,
                           "long_prefill_token_threshold": 256, "block_size": 32, "async_scheduling": False,
                           "enable_prefix_caching": True},
                "concurrency": 24, "client_delay_s": 0.001, "rows": closed_rows})
    # Requests that compute the same prefix at once: vLLM caches both copies, and the later one
    # is found once the earlier is evicted.
    async_rows = with_shared_prefixes([(r.input_toks, r.output_toks, 0.0)
                                       for r in generate_requests(100, 10, "lognormal:700,600", "lognormal:120,100",
                                                                  seed=1036) if r.input_toks + r.output_toks <= 2500],
                                      random.Random(300_045))
    out.append({"name": "closed_loop_shared_prefixes_async",
                "engine": {**tight, "max_num_batched_tokens": 1024, "long_prefill_token_threshold": 256,
                           "async_scheduling": True, "enable_prefix_caching": True},
                "concurrency": 24, "client_delay_s": 0.001, "rows": async_rows})
    # Pipeline parallelism, 4 stages, a batch queue as long, KV ample.
    def pipelined(name: str, pp: int, seqs: int, budget: int, blocks: int, rows: list[Row], **knobs: Any) -> dict:
        """An open loop on an engine of `pp` stages (its batch queue as long), 80 GB per GPU."""
        engine = {**base, "mem_size_gb": 80.0, "pp_size": pp, "num_npus": pp, "max_num_seqs": seqs,
                  "max_num_batched_tokens": budget, **knobs, "kv_gpu_blocks": blocks}
        return {"name": name, "engine": engine, "concurrency": None, "client_delay_s": 0.0, "rows": rows}

    out.append(pipelined("open_loop_pipeline_4_stages", 4, 64, 2048, 100_001, _pp_rows(7007, 30),
                         long_prefill_token_threshold=256, enable_prefix_caching=True))
    # Four stages, a few sequences: a small micro-batch right behind a large one waits for it at every
    # stage (each stage's worker runs the forwards in the order they were issued).
    out.append(pipelined("open_loop_pipeline_4_stages_in_order", 4, 8, 2048, 1501, _pp_rows(7003, 30)))
    # Two stages under memory pressure: the newest request of vLLM's running list is often one
    # whose micro-batch is in flight, and it is the one preempted.
    out.append(pipelined("open_loop_pipeline_preemption_in_flight", 2, 32, 512, 351, _pp_rows(7002, 60),
                         enable_prefix_caching=True, block_size=32))
    # Three stages under memory pressure: a request preempted in flight is admitted again, and its
    # earlier batch returns (appending the token it sampled) while the new last chunk is in flight:
    # vLLM schedules that token at once, beside the chunk, and appends the chunk's token too later.
    out.append(pipelined("open_loop_pipeline_late_token", 3, 32, 2048, 351, _pp_rows(7013, 30),
                         enable_prefix_caching=True, block_size=32))
    # Four stages under memory pressure: a step that preempts and has nothing else to run is queued
    # empty (no admission in a step that preempted), and the engine decides again when the oldest
    # batch returns, not at once.
    out.append(pipelined("open_loop_pipeline_empty_step_after_preemption", 4, 32, 2048, 351, _pp_rows(7010, 30),
                         long_prefill_token_threshold=256, block_size=32))
    if async_pp:
        # Two stages with async scheduling under memory pressure: every micro-batch holds every decode
        # (output placeholders) and waits for the previous one's sampled tokens.
        out.append(pipelined("open_loop_pipeline_2_stages_async_preemption", 2, 32, 1024, 701, _pp_rows(7020, 30),
                             enable_prefix_caching=True, async_scheduling=True))
        # Four stages: vLLM decides three steps ahead, so a finished request is in the next two steps, and
        # a preempted one's tokens from the steps decided before reach it over the next decisions.
        out.append(pipelined("open_loop_pipeline_4_stages_async_preemption", 4, 32, 1024, 701, _pp_rows(7008, 30),
                             enable_prefix_caching=True, async_scheduling=True))
        # Four stages, a closed loop on a tight cache: a request preempted late finishes with the token its
        # recompute chunk samples, and vLLM puts it in no step after that (one token it has not seen cannot
        # fall short of max_tokens), where a request whose last token was a decode's is in the next two.
        recompute = pipelined("closed_loop_pipeline_4_stages_async_recompute_finish", 4, 8, 2048, 161,
                              [(1577, 139, 0.0), (839, 119, 0.0), (891, 80, 0.0), (278, 143, 0.0), (245, 171, 0.0),
                               (1315, 49, 0.0), (243, 37, 0.0)],
                              long_prefill_token_threshold=0, scheduler_reserve_full_isl=False, block_size=32,
                              async_scheduling=True)
        out.append({**recompute, "concurrency": 6})
        # Three stages, one-token requests (a prefill instance's): a decision with nothing to run, taken two steps
        # ahead, is queued as an empty step, and the engine decides again when the oldest batch returns, where
        # the finished request still holds its slot; not at once, seeing every arrival.
        out.append(pipelined("open_loop_pipeline_3_stages_async_empty_decision", 3, 2, 512, 321,
                             [(778, 1, 0.041210386), (1, 1, 0.049873047), (1, 1, 0.057926489)],
                             long_prefill_token_threshold=0, async_scheduling=True))
        closed = pipelined("closed_loop_pipeline_3_stages_async_empty_decision", 3, 32, 256, 161,
                           [(228, 1, 0.0), (300, 1, 0.0), (236, 1, 0.0)], long_prefill_token_threshold=0,
                           scheduler_reserve_full_isl=False, block_size=32, async_scheduling=True)
        out.append({**closed, "concurrency": 3, "client_delay_s": 0.001})
        # Four stages, a step that preempts the only request running: vLLM queues it empty and decides again when
        # the oldest batch returned, one more of the victim's tokens seen (its recompute chunk one token longer).
        out.append(pipelined("open_loop_pipeline_4_stages_async_empty_after_preempting_all", 4, 3, 32768, 48,
                             [(151, 369, 0.0), (293, 321, 0.002988785), (254, 616, 0.017596252),
                              (249, 332, 0.05413995), (511, 211, 0.066274202), (1306, 127, 0.079134098),
                              (1923, 244, 0.135764845), (589, 638, 0.215860206)],
                             enable_chunked_prefill=False, long_prefill_token_threshold=0, block_size=64,
                             enable_prefix_caching=True, async_scheduling=True))
    # A chunk that no longer fits preempts every request left running (its own included): vLLM's step is empty and
    # its next decision admits with the whole token budget and, async, after the step in flight returned (what
    # finished there freed, every arrival seen).
    thrash = {**base, "mem_size_gb": 80.0, "long_prefill_token_threshold": 256, "scheduler_reserve_full_isl": False,
              "enable_prefix_caching": False}
    out.append({"name": "open_loop_async_empty_step_after_preempting_all",
                "engine": {**thrash, "max_num_batched_tokens": 2048, "async_scheduling": True, "kv_gpu_blocks": 46},
                "concurrency": None, "client_delay_s": 0.0,
                "rows": [(301, 27, 0.0), (615, 9, 0.029808), (456, 18, 0.057599)]})
    # The same where the budget tells: the decodes preempted had taken a token of it each.
    out.append({"name": "open_loop_async_full_budget_after_preempting_all",
                "engine": {**thrash, "max_num_seqs": 4, "max_num_batched_tokens": 512, "block_size": 32,
                           "async_scheduling": True, "kv_gpu_blocks": 38},
                "concurrency": None, "client_delay_s": 0.0,
                "rows": [(242, 32, 0.0), (855, 10, 0.014967), (1023, 20, 0.04375), (92, 24, 0.051737),
                         (348, 39, 0.063275), (419, 8, 0.084025)]})
    out.append({"name": "chunk_cap_sync", "engine": {**tight, "mem_size_gb": 96.0, "max_num_batched_tokens": 1024,
                                                     "long_prefill_token_threshold": 256},
                "concurrency": None, "client_delay_s": 0.0, "rows": open_rows})
    return out


def golden_config(engine: dict) -> ClusterConfig:
    from tests.helpers import cluster, instance

    knobs = {k: v for k, v in engine.items() if k not in ("mem_size_gb", "kv_gpu_blocks")}
    return cluster(instance(None, engine["mem_size_gb"], **knobs))


def _num_gpu_blocks(cfg: ClusterConfig, step_times: StepTimes) -> int:
    import simpy

    from pdsim.engine.cluster import Cluster, SimOptions

    return Cluster(simpy.Environment(), cfg, SimOptions(), step_times=step_times).infos[0].num_kv_blocks + 1


def record(path: Path | None, work: Path) -> None:
    from pdsim.engine.cluster import SimOptions
    from tests.helpers import AnalyticStepTimes

    v = _vllm()
    path = path or REPO / "tests" / "data" / f"vllm_scheduler_golden_{v.version}.json"
    scenarios = []
    for sc in golden_scenarios(has_reserve_full_isl(v), has_async_pp(v)):
        cfg = golden_config(sc["engine"])
        # Recorded with the engine's block count (the null block included), which the test pins.
        blocks = {"n0.i0": sc["engine"].get("kv_gpu_blocks") or _num_gpu_blocks(cfg, AnalyticStepTimes)}
        sc["engine"]["kv_gpu_blocks"] = blocks["n0.i0"]
        times = vllm_run(cfg, sc["rows"], work, sc["concurrency"], sc["client_delay_s"],
                         opts=SimOptions(kv_gpu_blocks=blocks), step_times=AnalyticStepTimes)
        ours = pdsim_run(cfg, sc["rows"], sc["concurrency"], sc["client_delay_s"],
                         opts=SimOptions(kv_gpu_blocks=blocks), step_times=AnalyticStepTimes)
        print(f"{sc['name']}: {len(times)} requests, largest difference from pdsim "
              f"{_max_diff(times, ours) * 1e6:.3f} us")
        scenarios.append({**sc, "vllm_times_s": times})
    path.parent.mkdir(parents=True, exist_ok=True)
    source = (f"benchmarks/vllm_scheduler_check.py --record: vLLM {v.version}'s Scheduler/AsyncScheduler driven as "
              "its engine core does, with tests.helpers.AnalyticStepTimes")
    lines = ",\n".join(json.dumps(sc) for sc in scenarios)  # one scenario per line
    path.write_text(f'{{"source": {json.dumps(source)},\n"scenarios": [\n{lines}\n]}}\n')
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", type=Path, help="make DIR/venv with vLLM's sources and pdsim, then stop")
    ap.add_argument("--profile-dir", type=Path, default=Path("/tmp/aic"),
                    help="H100 profiles from aiconfigurator's database (built there if missing)")
    ap.add_argument("--rows", type=int, default=None, help="only the first N H100 rows")
    ap.add_argument("--record", type=Path, nargs="?", const=Path(), default=None,
                    help="write the golden scenarios (default: tests/data/vllm_scheduler_golden_<vLLM version>.json)")
    ap.add_argument("--random", type=int, default=0, metavar="N",
                    help="only N random small engines under memory pressure (closed-form step times)")
    ap.add_argument("--random-prefixes", type=int, default=0, metavar="N",
                    help="only N random small engines whose requests share prompt prefixes (prefix caching on)")
    ap.add_argument("--random-wide", type=int, default=0, metavar="N",
                    help="only N random engines of a wider range (chunked prefill off, 1 to 128 sequences, ...)")
    ap.add_argument("--random-pp", type=int, default=0, metavar="N",
                    help="only N random engines of 2-4 pipeline stages (docs/pipeline.md)")
    ap.add_argument("--seed", type=int, default=1, help="for the --random modes: draws the engines (and the prefix "
                    "modes' shared prefixes); scenario k's request lengths and arrivals are the same for every seed")
    ap.add_argument("--vllm-version", default=VLLM_VERSION, help="for --setup")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vllm-check-work"))
    args = ap.parse_args()
    if args.setup:
        setup(args.setup, args.vllm_version)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    if args.record is not None:
        record(args.record if args.record != Path() else None, args.work)
        return
    modes = ((args.random, ""), (args.random_prefixes, "prefixes"), (args.random_wide, "wide"), (args.random_pp, "pp"))
    for count, mode in modes:
        if count:
            check_random(count, args.work, args.seed, mode)
    if any(count for count, _ in modes):
        return
    if not SHARED.is_dir():
        sys.exit(f"{SHARED}: not found (the measured runs this check replays)")
    check_rtx(args.work)
    check_h100(args.profile_dir, args.work, args.rows)


if __name__ == "__main__":
    main()
