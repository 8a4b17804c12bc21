"""Regenerate this folder: a genuine aiperf 0.13.0 export of a closed-loop run against a fake server.

The files are aiperf's own output, so the test that reads them checks pdsim's reader against the
real format (records and summary), not against our idea of it. The server is not an LLM: it
streams " tok" chunks (first after 40 ms plus 0.05 ms per prompt character, then one per 8 ms),
so nothing here is a measurement of any engine.

    python -m venv /tmp/aiperf-venv && /tmp/aiperf-venv/bin/pip install aiperf==0.13.0
    /tmp/aiperf-venv/bin/python tests/data/aiperf_0.13.0_mock/regenerate.py

The tokenizer is benchmarks/aiperf_harness_check.py's (a word-level one over aiperf's own corpus): aiperf's
`builtin` tokenizer downloads its encoding, and HF tokenizers need the hub.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "benchmarks"))
from aiperf_harness_check import make_tokenizer, sse_token_chunk  # noqa: E402  (one tokenizer, one chunk format)

PORT = 8765
KEEP = ("profile_export.jsonl", "profile_export_aiperf.json")


def serve() -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 8)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.040 + 0.00005 * len(json.dumps(body.get("messages", ""))))
        for i in range(n):
            if i:
                await asyncio.sleep(0.008)
            await resp.write(sse_token_chunk("x", "mock-model"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    asyncio.set_event_loop(asyncio.new_event_loop())
    web.run_app(app, port=PORT, print=None, handle_signals=False)


def main() -> None:
    threading.Thread(target=serve, daemon=True).start()
    time.sleep(2)
    with tempfile.TemporaryDirectory() as tmp:
        make_tokenizer(Path(tmp) / "tok")
        art = Path(tmp) / "art"
        aiperf = Path(sys.executable).with_name("aiperf")
        subprocess.run([str(aiperf), "profile", "--model", "mock-model", "--url", f"localhost:{PORT}",
                        "--endpoint-type", "chat", "--streaming", "--tokenizer", str(Path(tmp) / "tok"),
                        "--concurrency", "4", "--request-count", "24", "--warmup-request-count", "4",
                        "--synthetic-input-tokens-mean", "200", "--synthetic-input-tokens-stddev", "50",
                        "--output-tokens-mean", "12", "--output-tokens-stddev", "3",
                        "--artifact-dir", str(art), "--ui-type", "none"], check=True)
        for name in KEEP:
            shutil.copy(art / name, HERE / name)
    print(f"wrote {', '.join(KEEP)} in {HERE}")


if __name__ == "__main__":
    main()
