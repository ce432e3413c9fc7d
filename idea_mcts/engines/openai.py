"""Engine for any OpenAI-compatible server (`backend: openai`), `vllm serve` first.

A whole batch is sent concurrently (at most `max_concurrency` requests in flight) so that the server's
continuous batching stays full. Retries are the openai client's own: exponential backoff with jitter on
connection errors, timeouts, 408/409/429 and 5xx, `max_retries` times; each retried HTTP attempt is counted
in `stats.retries`. A server still unreachable or failing after that raises `EngineError` naming the URL.
HTTP goes through the client's aiohttp backend unless `http_backend: httpx`: with hundreds of requests in flight
httpx's connection pool costs about as much CPU as the rest of the client (docs/benchmarks.md).

The API key is read from the environment variable named by `api_key_env` (default `OPENAI_API_KEY`; local
servers take any key, "EMPTY" when unset) and handed to the client only: it is never logged, stored on the
engine, or put in ids and error messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from idea_mcts.config import EngineConfig
from idea_mcts.engines import BACKENDS, max_in_flight
from idea_mcts.engines.base import (
    Generation,
    GenerationRequest,
    Prompt,
    SamplingParams,
    TokenLogprobs,
    UsageStats,
    is_continuation,
)
from idea_mcts.engines.event_loop import EventLoopEngine
from idea_mcts.errors import EngineError, UsageError

logger = logging.getLogger(__name__)

T = TypeVar("T")
CONTINUE_FINAL_MESSAGE = {"continue_final_message": True, "add_generation_prompt": False}
"""vLLM's chat-template switches for continuing a prefilled assistant message."""


class OpenAIEngine(EventLoopEngine):
    """Chat and text completions, and next-token logprobs, through an OpenAI-compatible HTTP API."""

    backend = "openai"
    concurrent = BACKENDS[backend].concurrent

    def __init__(self, cfg: EngineConfig) -> None:
        if not cfg.base_url:
            raise UsageError("backend 'openai' needs base_url, e.g. http://127.0.0.1:8000/v1")
        super().__init__(f"{cfg.base_url}#{cfg.model}")
        try:
            import openai
        except ImportError:  # optional extra
            raise UsageError("backend 'openai' needs the openai client: pip install 'idea-mcts[openai]'") from None
        self._openai = openai
        self.cfg = cfg
        self.base_url = cfg.base_url
        self.model = cfg.model
        self._start_loop("openai-engine")
        self._semaphore = asyncio.Semaphore(cfg.max_concurrency)
        self.max_in_flight = max_in_flight(cfg)
        transport = openai.DefaultAioHttpClient if cfg.http_backend == "aiohttp" else openai.DefaultAsyncHttpxClient
        try:
            http_client = transport(event_hooks={"request": [self._count_retry]})
        except RuntimeError:  # the client's aiohttp backend without aiohttp installed
            self._stop_loop()
            raise UsageError("http_backend 'aiohttp' needs the openai client's aiohttp extra: pip install "
                             "'openai[aiohttp]' (or set http_backend: httpx)") from None
        self.http_client = http_client
        """The openai client's HTTP client (`EngineConfig.http_backend`), with the client's own defaults."""
        self.client = openai.AsyncOpenAI(
            base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
            max_retries=cfg.max_retries, timeout=cfg.timeout, http_client=self.http_client)

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.model_id!r})"

    # -- Engine ----------------------------------------------------------------------------------------
    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        return self._run([self._complete(r.prompt, r.params) for r in requests])

    def _next_token_logprobs(self, prompts: list[Prompt], candidates: list[str], top_k: int
                             ) -> list[TokenLogprobs]:
        return self._run([self._logprobs(p, candidates, top_k) for p in prompts])

    def close(self) -> None:
        """Close the HTTP connections and stop the event loop thread."""
        if self._loop.is_closed():
            return
        self._on_loop(self.client.close())
        self._stop_loop()

    # -- requests ------------------------------------------------------------------------------------
    async def _complete(self, prompt: Prompt, p: SamplingParams) -> Generation:
        kw: dict[str, Any] = {"model": self.model, "max_tokens": p.max_new_tokens,
                              "temperature": p.temperature, "top_p": p.top_p}
        if p.seed is not None:
            kw["seed"] = p.seed
        r = await self._post(prompt, kw)
        text = r.choices[0].text if isinstance(prompt, str) else r.choices[0].message.content or ""
        usage = r.usage
        return Generation(text=text, prompt_tokens=usage.prompt_tokens if usage else 0,
                          completion_tokens=usage.completion_tokens if usage else 0,
                          finish_reason=r.choices[0].finish_reason)

    async def _logprobs(self, prompt: Prompt, candidates: list[str], top_k: int) -> TokenLogprobs:
        """Top-k at the first generated position; a candidate matches a token equal to it once stripped of
        whitespace ("1" and " 1"), the highest-ranked such token counting."""
        kw: dict[str, Any] = {"model": self.model, "max_tokens": 1, "temperature": 0.0}
        if isinstance(prompt, str):
            r = await self._post(prompt, {**kw, "logprobs": top_k})
            lp = r.choices[0].logprobs
            top = sorted((lp.top_logprobs or [{}])[0].items(), key=lambda t: -t[1]) if lp else []
        else:
            r = await self._post(prompt, {**kw, "logprobs": True, "top_logprobs": top_k})
            content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
            top = [(t.token, t.logprob) for t in content[0].top_logprobs] if content else []
        wanted = set(candidates)
        found: dict[str, float] = {}
        for token, logprob in top:
            key = token.strip()
            if key in wanted and key not in found:
                found[key] = logprob
        return TokenLogprobs(found, prompt_tokens=r.usage.prompt_tokens if r.usage else 0)

    async def _post(self, prompt: Prompt, kw: dict[str, Any]) -> Any:
        """One completion (a text prompt) or chat completion (messages; a prefilled assistant turn is continued)
        through the client's `post`: its retries, timeout, errors and typed response, as with `create`. The
        typed `create` methods first walk every message through the client's request-params transform, which
        costs as much CPU as the rest of the request for the judges' few-shot chats (11 messages: 4.4 vs 2.4 ms
        per request, bench/client_cost.py); the body here is plain JSON already."""
        async with self._semaphore:
            if isinstance(prompt, str):
                return await self.client.post("/completions", cast_to=self._openai.types.Completion,
                                              body={"prompt": prompt, **kw})
            body = {"messages": prompt, **kw, **(CONTINUE_FINAL_MESSAGE if is_continuation(prompt) else {})}
            return await self.client.post("/chat/completions", cast_to=self._openai.types.chat.ChatCompletion,
                                          body=body)

    async def _count_retry(self, request: Any) -> None:
        """httpx request hook: the client marks each retried attempt with `x-stainless-retry-count` > 0."""
        if request.headers.get("x-stainless-retry-count", "0") != "0":
            self._record(UsageStats(retries=1))

    # -- plumbing ------------------------------------------------------------------------------------
    def _run(self, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
        """Run the batch concurrently on the engine's loop; errors left after retries -> EngineError."""
        try:
            return self._batch(coros)
        except self._openai.APIConnectionError as exc:  # includes timeouts
            raise EngineError(f"OpenAI-compatible server at {self.base_url} unreachable after "
                              f"{self.cfg.max_retries} retries ({type(exc).__name__})") from None
        except self._openai.APIStatusError as exc:
            raise EngineError(f"OpenAI-compatible server at {self.base_url} answered HTTP {exc.status_code} "
                              f"for model {self.model!r}: {self._redact(exc.message)}") from None

    def _redact(self, message: str) -> str:
        line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
        key = self.client.api_key
        return line.replace(key, "***") if key and key != "EMPTY" else line
