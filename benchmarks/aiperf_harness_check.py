"""Does pdsim's closed-loop client behave like the real one? The real aiperf against an emulated engine.

aiconfigurator's H100 rows were measured by aiperf 0.13 (its bench template: `--concurrency C
--num-requests 20C --warmup-request-count 2C --isl/--osl fixed --extra-inputs ignore_eos:true
--streaming`). pdsim models that client (warm-up drained, all clients at once, a successor sent
when a request ends, plus a client delay). Here the real aiperf 0.13.0 runs, unmodified, against
an emulated engine: an OpenAI-compatible streaming endpoint in front of vLLM's own `Scheduler`
in an `EngineCore.step` loop (as in vllm_scheduler_check.py), each step lasting, in real time,
what pdsim's predictor gives for the batch vLLM chose (a virtual clock keeps late wake-ups from
adding up). aiperf's TTFT and TPOT (read with pdsim's aiperf reader) are then set beside pdsim's
prediction of the same row. Same engine timing on both sides: what differs is the client, its
real send times and HTTP; not the GPU, and not Dynamo's frontend, which this setup does not have.

    python benchmarks/aiperf_harness_check.py --setup /tmp/harness   # venvs: vLLM sources + pdsim, aiperf
    /tmp/harness/vllm/venv/bin/python benchmarks/aiperf_harness_check.py --work /tmp/harness   # ~10 min

`--setup` needs PyPI (vLLM's wheel, torch CPU, aiperf==0.13.0). The prompts are aiperf's own
synthetic ones, counted by a word-level tokenizer built here over aiperf's corpus (aiperf's
`builtin` tokenizer and HF tokenizers would need the internet); the engine takes each row's isl.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pdsim.config import ClusterConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED = REPO.parent / "shared" / "data" / "calibration" / "aiconfigurator-h100"
MODEL = "Qwen/Qwen3-32B"
AIPERF_VERSION = "0.13.0"
PORT = 8766
# (tp, isl, osl, concurrency): both isl, few and more clients, all three TP (osl 128 keeps a row ~1 min).
ROWS = [(2, 1024, 128, 8), (4, 1024, 128, 8), (4, 1024, 128, 32), (4, 4096, 128, 8), (4, 4096, 128, 32),
        (8, 4096, 128, 16)]


def setup(root: Path) -> None:
    import vllm_scheduler_check

    vllm_scheduler_check.setup(root / "vllm")
    venv = root / "aiperf"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"aiperf=={AIPERF_VERSION}"],
                   check=True)
    print(f"ready: {root / 'vllm' / 'venv' / 'bin' / 'python'} {Path(__file__).relative_to(REPO)} --work {root}")


def make_tokenizer(out: Path) -> None:
    """Run with aiperf's venv: a word-level tokenizer over the corpus aiperf builds prompts from."""
    import aiperf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    corpus = Path(aiperf.__file__).parent / "dataset" / "generator" / "assets" / "shakespeare.txt"
    vocab = {"[UNK]": 0}
    for word in sorted(set(re.findall(r"\w+|[^\w\s]", corpus.read_text())) | {"tok"}):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(out)


def sse_token_chunk(request_id: str, model: str) -> bytes:
    """One streamed OpenAI chat-completion chunk carrying one token (" tok")."""
    chunk = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


def row_cluster(tp: int, isl: int, conc: int, profile_dir: Path) -> ClusterConfig:
    from pdsim.perf.profile import profile_path
    from pdsim.validate.closed_loop import aiconfigurator_engine, row_config

    # As validate simulates the H100 rows (vLLM 0.12: no whole-sequence admission check).
    return row_config(MODEL, "H100-SXM", 80.0, tp, str(profile_path(profile_dir, "H100-SXM", MODEL, "bfloat16", tp)),
                      {**aiconfigurator_engine(conc, isl), "scheduler_reserve_full_isl": False})


def serve(tp: int, isl: int, conc: int, profile_dir: Path, work: Path, log_path: Path) -> None:
    """The emulated engine (sync scheduling, vLLM 0.12's default) behind /v1/chat/completions."""
    from aiohttp import web
    from vllm_scheduler_check import StepPlanner, make_scheduler, new_request

    from pdsim.engine.cluster import SimOptions

    v, sched, predictor = make_scheduler(row_cluster(tp, isl, conc, profile_dir), work,
                                         SimOptions(step_overhead_us=1000.0))  # as validated
    planner = StepPlanner(v, sched, predictor)
    incoming: list[tuple[str, int]] = []
    streams: dict[str, asyncio.Queue] = {}
    stamps: dict[str, dict] = {}
    log = log_path.open("w")
    wake = asyncio.Event()
    request_ids = itertools.count()

    async def engine() -> None:
        virtual_end = None  # where the previous step ended on the virtual clock
        while True:
            while incoming:  # EngineCore: new requests join between steps
                rid, osl = incoming.pop(0)
                sched.add_request(new_request(v, rid, isl, osl))
            if not sched.has_requests():
                wake.clear()
                await wake.wait()
                virtual_end = None
                continue
            start = time.monotonic()
            if virtual_end is not None and start - virtual_end < 0.005:
                start = virtual_end  # a late wake-up is not the engine's time: do not let it add up
            out, samples, seconds = planner.plan()
            virtual_end = start + seconds
            await asyncio.sleep(max(0.0, virtual_end - time.monotonic()))
            now = time.monotonic()
            for o in planner.finish(out, samples):
                st = stamps[o.request_id]
                if o.new_token_ids and "first" not in st:
                    st["first"] = now
                for _ in o.new_token_ids:
                    streams[o.request_id].put_nowait(1)
                if o.finish_reason is not None:
                    st["finish"] = now
                    streams[o.request_id].put_nowait(None)

    async def chat(request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.json()
        rid = str(next(request_ids))
        osl = int(body.get("max_completion_tokens") or body.get("max_tokens"))
        streams[rid], stamps[rid] = asyncio.Queue(), {"arrived": arrived}
        incoming.append((rid, osl))
        wake.set()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        while await streams[rid].get() is not None:
            await resp.write(sse_token_chunk(rid, "emulated"))
        await resp.write(b"data: [DONE]\n\n")
        log.write(json.dumps(stamps.pop(rid)) + "\n")
        log.flush()
        del streams[rid]
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "localhost", PORT).start()
        print("ready", flush=True)
        await engine()

    asyncio.run(main())


def client_gaps_ms(log_path: Path, skip: int) -> np.ndarray:
    """At the engine, per measured request: from the latest finish before it arrived to its arrival
    (aiperf's send gap plus both HTTP legs)."""
    from pdsim.validate.aiperf import gaps_since_latest

    rows = sorted((json.loads(line) for line in log_path.read_text().splitlines()), key=lambda r: r["arrived"])
    return gaps_since_latest([r["finish"] for r in rows], [r["arrived"] for r in rows[skip:]]) * 1e3


def run_row(row: tuple[int, int, int, int], args: argparse.Namespace) -> dict:
    from pdsim.engine.cluster import SimOptions
    from pdsim.validate.closed_loop import CLIENT_DELAY_S, ROUNDS, simulate_row
    from pdsim.validate.measured import read_measured

    tp, isl, osl, conc = row
    tag = f"tp{tp}_isl{isl}_osl{osl}_c{conc}"
    log_path, art = args.work / f"engine_{tag}.jsonl", args.work / f"aiperf_{tag}"
    server = subprocess.Popen([sys.executable, __file__, "--serve", f"{tp},{isl},{osl},{conc}", "--work",
                               str(args.work), "--profile-dir", str(args.profile_dir), "--log", str(log_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        for line in server.stdout:  # vLLM may log a few lines while it is imported
            if line.strip() == "ready":
                break
        else:
            sys.exit(f"{tag}: the emulated engine did not start")
        subprocess.run([str(args.work / "aiperf" / "bin" / "aiperf"), "profile", "-m", "emulated", "--endpoint-type",
                        "chat", "-u", f"localhost:{PORT}", "--tokenizer", str(args.work / "tokenizer"),
                        "--isl", str(isl), "--isl-stddev", "0", "--osl", str(osl), "--osl-stddev", "0",
                        "--extra-inputs", "ignore_eos:true", "--concurrency", str(conc),
                        "--num-requests", str(ROUNDS * conc), "--warmup-request-count", str(2 * conc),
                        "--random-seed", "100", "--streaming", "--artifact-dir", str(art), "--ui-type", "none",
                        "--workers-max", "2"], check=True, stdout=subprocess.DEVNULL)
    finally:
        server.terminate()
        server.wait()
    measured = read_measured(art)
    cfg = row_cluster(tp, isl, conc, args.profile_dir)
    # pdsim as it validates tables (uniform client delay, mean 1 ms), and as it validates an aiperf
    # run (also the run's own gaps between a request's end and the next send, on aiperf's clock).
    sim = simulate_row(cfg, isl, osl, conc, SimOptions(step_overhead_us=1000.0, client_delay_s=CLIENT_DELAY_S))
    own = simulate_row(cfg, isl, osl, conc, SimOptions(step_overhead_us=1000.0, client_delay_s=CLIENT_DELAY_S,
                                                       client_send_gaps_s=tuple(measured.client_gaps_s)))
    gaps = client_gaps_ms(log_path, 2 * conc)
    return {"tp": tp, "isl": isl, "osl": osl, "concurrency": conc,
            "aiperf_ttft_ms": measured.requests.ttft_ms.mean(), "pdsim_ttft_ms": sim["sim_ttft_ms"],
            "pdsim_own_gaps_ttft_ms": own["sim_ttft_ms"],
            "aiperf_tpot_ms": measured.requests.tpot_ms.mean(), "pdsim_tpot_ms": sim["sim_tpot_ms"],
            "aiperf_send_gap_p50_ms": float(np.median(measured.client_gaps_s) * 1e3),
            "engine_gap_p50_ms": float(np.median(gaps)), "engine_gap_p90_ms": float(np.percentile(gaps, 90))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", type=Path, help="make DIR/vllm (vLLM sources, pdsim) and DIR/aiperf, then stop")
    ap.add_argument("--work", type=Path, default=Path("/tmp/harness"), help="the --setup folder; runs go there")
    ap.add_argument("--profile-dir", type=Path, default=Path("/tmp/aic"),
                    help="H100 profiles from aiconfigurator's database (built there if missing)")
    ap.add_argument("--rows", default=None, help="tp,isl,osl,concurrency;... (default: six osl-128 rows)")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "aiperf_harness_check.csv")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--make-tokenizer", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.setup:
        setup(args.setup)
        return
    if args.make_tokenizer:
        make_tokenizer(args.make_tokenizer)
        return
    if args.serve:
        tp, isl, _osl, conc = (int(x) for x in args.serve.split(","))
        serve(tp, isl, conc, args.profile_dir, args.work, args.log)
        return
    import pandas as pd

    from pdsim.models import load_model
    from pdsim.perf.aiconfigurator import import_profile
    from pdsim.perf.profile import profile_path

    if not (args.work / "aiperf" / "bin" / "aiperf").exists():
        sys.exit(f"{args.work}/aiperf: not found; run with --setup {args.work} first")
    rows = ROWS if args.rows is None else [tuple(int(x) for x in r.split(",")) for r in args.rows.split(";")]
    for tp in sorted({r[0] for r in rows}):
        if not profile_path(args.profile_dir, "H100-SXM", MODEL, "bfloat16", tp).is_dir():
            import_profile(SHARED / "systems_data_h100_sxm", "h100_sxm", load_model(MODEL), tp, args.profile_dir)
    if not (args.work / "tokenizer").is_dir():
        subprocess.run([str(args.work / "aiperf" / "bin" / "python"), __file__, "--make-tokenizer",
                        str(args.work / "tokenizer")], check=True, capture_output=True)
    results = []
    for row in rows:
        results.append(run_row(row, args))
        r = results[-1]
        print(f"tp {r['tp']} isl {r['isl']} osl {r['osl']} conc {r['concurrency']}: TTFT aiperf "
              f"{r['aiperf_ttft_ms']:.1f} / pdsim {r['pdsim_ttft_ms']:.1f} (with aiperf's send gaps "
              f"{r['pdsim_own_gaps_ttft_ms']:.1f}) ms, TPOT {r['aiperf_tpot_ms']:.2f} / {r['pdsim_tpot_ms']:.2f} ms; "
              f"aiperf's send gap p50 {r['aiperf_send_gap_p50_ms']:.1f} ms", flush=True)
    df = pd.DataFrame(results)
    df["ttft_diff_pct"] = (df.pdsim_ttft_ms / df.aiperf_ttft_ms - 1) * 100
    df["own_gaps_ttft_diff_pct"] = (df.pdsim_own_gaps_ttft_ms / df.aiperf_ttft_ms - 1) * 100
    df["tpot_diff_pct"] = (df.pdsim_tpot_ms / df.aiperf_tpot_ms - 1) * 100
    silicon = SHARED / "silicon_h100_qwen3-32b_vllm-0.12.0_agg_bf16.csv"
    if silicon.is_file():
        s = pd.read_csv(silicon).rename(columns={"batch_size": "concurrency", "tp_size": "tp"})
        df = df.merge(s[["tp", "isl", "osl", "concurrency", "silicon_ttft_ms", "silicon_tpot_ms"]], how="left")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, float_format="%.3f")
    print(df.round(2).to_string(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
