"""CPU per request of the OpenAI-compatible engine, against the raw openai client, in one run.

    python bench/client_cost.py [--requests 2000] [--json PATH]

One loopback server (bench/sim_server.py with no service time: it answers at once, so the seconds are the
client process's own) and the demo's judge prompts (`general` presets: the scored examples as earlier chat turns,
11-12 messages) and a one-message evolver-size chat. For each: the client's typed `chat.completions.create`, its
`post` with the same JSON body, and `OpenAIEngine.next_token_logprobs` (one batch of every request; the search
sends the same requests a few at a time from its dispatcher threads), on the client's httpx transport and on its
aiohttp backend (the engine's default, `http_backend`). Figures: CPU ms per request of this process (all its
threads), engine ÷ raw `create`, and aiohttp ÷ httpx. With a pool of GPU servers a search process that needs more
CPU per request than the servers leave it becomes the bound: see docs/benchmarks.md, "Role overlap".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from idea_mcts.config import EngineConfig  # noqa: E402
from idea_mcts.engines.openai import OpenAIEngine  # noqa: E402
from idea_mcts.scoring import complexity_prompt, quality_prompt  # noqa: E402

CANDIDATES = list("123456")


def prompts() -> dict[str, Any]:
    instruction = "Plan a one-day sightseeing trip in a city of your choice, on a budget of 50 euros."
    return {
        "complexity judge": complexity_prompt("general", instruction),
        "quality judge": quality_prompt("general", instruction, "Start at the old town ... " * 20),
        "one-message chat": [{"role": "user", "content": instruction}],
    }


async def many(client: Any, prompt: Any, n: int, typed: bool) -> None:
    """`n` judge requests, 128 in flight, through the client's typed `create` or its `post` (same JSON body)."""
    from openai.types.chat import ChatCompletion

    body = {"model": "sim", "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 20}
    sem = asyncio.Semaphore(128)

    async def one() -> None:
        async with sem:
            if typed:
                await client.chat.completions.create(messages=prompt, **body)
            else:
                await client.post("/chat/completions", cast_to=ChatCompletion, body={"messages": prompt, **body})

    await asyncio.gather(*(one() for _ in range(n)))


def cpu_per_request(fn: Any, n: int) -> float:
    fn(50)  # connections open, code paths warm
    c0 = time.process_time()
    fn(n)
    return 1000 * (time.process_time() - c0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    spec = [{"name": "sim", "slots": 100000, "prefill_ms": 0.0, "decode_ms": 0.0}]
    server = subprocess.Popen([sys.executable, str(REPO / "bench" / "sim_server.py"), "--spec", json.dumps(spec)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        port = json.loads(server.stdout.readline()[6:])["sim"]

        def engine_on(http_backend: str) -> OpenAIEngine:
            return OpenAIEngine(EngineConfig(backend="openai", model="sim", base_url=f"http://127.0.0.1:{port}/v1",
                                             max_concurrency=128, http_backend=http_backend))

        httpx_engine, engine = engine_on("httpx"), engine_on("aiohttp")
        client = httpx_engine.client  # the raw client as most code makes it: httpx, its default transport
        results: dict[str, Any] = {"requests": args.requests, "in_flight": 128}
        for name, prompt in prompts().items():
            row = {
                "messages": len(prompt),
                "create_ms": cpu_per_request(lambda n, p=prompt: httpx_engine._on_loop(many(client, p, n, True)),
                                             args.requests),
                "post_ms": cpu_per_request(lambda n, p=prompt: httpx_engine._on_loop(many(client, p, n, False)),
                                           args.requests),
                "engine_httpx_ms": cpu_per_request(
                    lambda n, p=prompt: httpx_engine.next_token_logprobs([p] * n, CANDIDATES, 20), args.requests),
                "engine_ms": cpu_per_request(
                    lambda n, p=prompt: engine.next_token_logprobs([p] * n, CANDIDATES, 20), args.requests),
            }
            row["engine_over_create"] = row["engine_ms"] / row["create_ms"]
            row["engine_over_engine_httpx"] = row["engine_ms"] / row["engine_httpx_ms"]
            results[name] = row
            print(f"{name} ({row['messages']} messages): create {row['create_ms']:.2f} ms, post "
                  f"{row['post_ms']:.2f} ms, engine on httpx {row['engine_httpx_ms']:.2f} ms, engine (aiohttp) "
                  f"{row['engine_ms']:.2f} ms per request (engine / create {row['engine_over_create']:.2f}, "
                  f"aiohttp / httpx {row['engine_over_engine_httpx']:.2f})")
        engine.close()
        httpx_engine.close()
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
