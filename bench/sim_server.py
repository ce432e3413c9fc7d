"""Loopback OpenAI-compatible servers that model a GPU: a fixed number of slots (requests in service at once;
the others queue, first come first served) and a per-token service time. Used by bench/role_overlap.py.

    python bench/sim_server.py --spec '[{"name": "policy", "slots": 8, "prefill_ms": 0.0, "decode_ms": 4.0}]'

Prints one line `PORTS {"policy": 41234, ...}` once every server listens (127.0.0.1 only), then serves until
stdin closes (the parent's exit ends it). A request occupies one slot for
`prefill_tokens * prefill_ms + generated_tokens * decode_ms` (tokens counted as characters / 4); a generation
always runs to `max_tokens`. Answers `/v1/chat/completions` (with `logprobs`/`top_logprobs`: digits 1-6, "4"
most likely) and `/v1/completions`. `GET /stats` gives, since the last `POST /reset`: the seconds with at least
one request in service (`busy_s`), slot-seconds in service (`slot_s`), requests, and the window's length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from typing import Any

from aiohttp import web


def tokens(text: str) -> int:
    return max(1, len(text) // 4)


def prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def is_evolution(prompt: str) -> bool:
    """An evolver prompt: the action templates in use, or those of the wave search (commit 16f9262)."""
    return "Reply with the new instruction only" in prompt or "#New Instruction#:" in prompt


def continues(body: dict[str, Any]) -> bool:
    """The chat ends with the start of the assistant's reply (the evolver's prefilled parent, `prefill_parent`)."""
    messages = body.get("messages") or []
    return bool(messages) and messages[-1].get("role") == "assistant"


def reply_text(prompt: str, n_tokens: int, cont: bool = False) -> str:
    """A rewrite for evolver prompts (the rest of it when `cont`: the reply's start was written for the model),
    tags for the tagger, otherwise an answer; `n_tokens` long (4 chars each)."""
    if is_evolution(prompt):
        if cont:
            return ", in exactly three parts."
        if "#New Instruction#:" in prompt:  # the wave search's templates (16f9262)
            return prompt.split("#Instruction#:\n", 1)[1].split("\n\n#New Instruction#:")[0] + " +1"
        return prompt.rsplit("\n\nInstruction: ", 1)[1] + " +1"  # the action templates in use
    if "tags of user intentions" in prompt:
        return '[{"tag": "a", "explanation": "x"}, {"tag": "b", "explanation": "y"}]'
    return ("answer " * n_tokens)[: 4 * n_tokens]


class SimGPU:
    def __init__(self, name: str, slots: int, prefill_ms: float, decode_ms: float) -> None:
        self.name = name
        self.slots = asyncio.Semaphore(slots)
        self.prefill_s = prefill_ms / 1000
        self.decode_s = decode_ms / 1000
        self.reset()

    def reset(self) -> None:
        self.t0 = time.monotonic()
        self.in_service = 0
        self.busy_since: float | None = None
        self.busy_s = 0.0
        self.slot_s = 0.0
        self.requests = 0

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        busy = self.busy_s + (now - self.busy_since if self.busy_since is not None else 0.0)
        return {"name": self.name, "window_s": now - self.t0, "busy_s": busy, "slot_s": self.slot_s,
                "requests": self.requests}

    async def serve(self, seconds: float) -> None:
        async with self.slots:
            self.in_service += 1
            if self.in_service == 1:
                self.busy_since = time.monotonic()
            try:
                await asyncio.sleep(seconds)
            finally:
                self.in_service -= 1
                self.slot_s += seconds
                self.requests += 1
                if self.in_service == 0 and self.busy_since is not None:
                    self.busy_s += time.monotonic() - self.busy_since
                    self.busy_since = None

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = prompt_text(body)
        p_tok = tokens(prompt)
        max_tokens = int(body.get("max_tokens") or 16)
        if body.get("logprobs"):
            await self.serve(p_tok * self.prefill_s + self.decode_s)
            k = int(body.get("top_logprobs") or 5)
            top = [{"token": d, "logprob": -abs(4 - int(d)) - 0.1, "bytes": None} for d in "456321"][:k]
            choice = {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "4"},
                      "logprobs": {"content": [{"token": "4", "logprob": -0.1, "bytes": None, "top_logprobs": top}]}}
            return self.answer("chat.completion", [choice], p_tok, 1)
        text = reply_text(prompt, max_tokens, continues(body))
        g_tok = tokens(text) if is_evolution(prompt) or "tags of user" in prompt else max_tokens
        await self.serve(p_tok * self.prefill_s + g_tok * self.decode_s)
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text},
                  "logprobs": None}
        return self.answer("chat.completion", [choice], p_tok, g_tok)

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = prompt_text(body)
        p_tok, max_tokens = tokens(prompt), int(body.get("max_tokens") or 16)
        text = reply_text(prompt, max_tokens)
        await self.serve(p_tok * self.prefill_s + max_tokens * self.decode_s)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "text": text, "logprobs": None}
        if body.get("logprobs"):
            k = int(body["logprobs"])
            choice["logprobs"] = {"tokens": ["4"], "token_logprobs": [-0.1],
                                  "top_logprobs": [{d: -abs(4 - int(d)) - 0.1 for d in "456321"[:k]}],
                                  "text_offset": [0]}
        return self.answer("text_completion", [choice], p_tok, max_tokens)

    def answer(self, obj: str, choices: list[dict[str, Any]], p_tok: int, g_tok: int) -> web.Response:
        return web.json_response({"id": f"sim-{self.requests}", "object": obj, "created": int(time.time()),
                                  "model": self.name, "choices": choices,
                                  "usage": {"prompt_tokens": p_tok, "completion_tokens": g_tok,
                                            "total_tokens": p_tok + g_tok}})

    def app(self) -> web.Application:
        async def stats(_: web.Request) -> web.Response:
            return web.json_response(self.stats())

        async def reset(_: web.Request) -> web.Response:
            self.reset()
            return web.json_response({"ok": True})

        app = web.Application(client_max_size=2**24)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/stats", stats)
        app.router.add_post("/reset", reset)
        return app


async def main_async(spec: list[dict[str, Any]]) -> None:
    ports = {}
    runners = []
    for s in spec:
        gpu = SimGPU(s["name"], int(s["slots"]), float(s["prefill_ms"]), float(s["decode_ms"]))
        runner = web.AppRunner(gpu.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        ports[s["name"]] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runners.append(runner)
    print("PORTS " + json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin (or exits)
    for r in runners:
        await r.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="JSON list of {name, slots, prefill_ms, decode_ms}")
    args = ap.parse_args()
    spec = json.loads(args.spec)
    if not spec or any(not math.isfinite(float(s["decode_ms"])) for s in spec):
        sys.exit("bad --spec")
    asyncio.run(main_async(spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
