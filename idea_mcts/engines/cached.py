"""An engine behind the run's request cache (`idea_mcts.store.RequestCache`).

Each batched call answers the requests already in the cache from it and sends the others to the wrapped engine
as one batch (a request repeated in the batch goes once), then stores their results as one cache line before
returning. Results are always returned decoded from their cached form, so a replayed run sees exactly the
values the first run saw. The wrapped engine is loaded on the first request the cache cannot answer: a replay
that the cache answers whole loads no model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from idea_mcts.config import EngineConfig
from idea_mcts.engines import BACKENDS
from idea_mcts.engines.base import (
    Engine,
    Generation,
    GenerationRequest,
    Messages,
    Prompt,
    TokenLogprobs,
    UsageStats,
    expect_len,
    usage_of,
)
from idea_mcts.store import MISSING, RequestCache

logger = logging.getLogger(__name__)

NOT_IN_KEY = ("device", "max_batch_size", "tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization",
              "enforce_eager", "enable_prefix_caching", "base_url", "base_urls", "api_key_env", "max_concurrency",
              "timeout", "max_retries", "env")
"""Engine settings that change how a result is computed or fetched, not what it is: left out of cache keys."""


def engine_identity(cfg: EngineConfig) -> dict[str, Any]:
    """What identifies an engine in cache keys: backend, model, tokenizer, dtype, context length, engine seed,
    engine kwargs (every setting not in `NOT_IN_KEY`, so a new setting counts until said otherwise)."""
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_KEY}


class CachedEngine(Engine):
    """The engine that `load` returns, behind `cache`. `stats` counts every request and, as `cached`, those the
    cache answered (or that repeated another request of the batch); tokens, retries and engine work are the
    inner engine's only."""

    def __init__(self, load: Callable[[], Engine], cache: RequestCache, identity: dict[str, Any],
                 max_in_flight: int = Engine.max_in_flight) -> None:
        super().__init__(str(identity.get("model", "")))
        self.max_in_flight = max_in_flight  # the dispatcher sizes this engine's threads before it is loaded
        self.backend = str(identity.get("backend", "cached"))
        self._stepped = False
        if self.backend in BACKENDS:  # known without importing the backend (a replay may never load it)
            self.logprob_method = BACKENDS[self.backend].logprob_method
            self.concurrent = BACKENDS[self.backend].concurrent
            self._stepped = BACKENDS[self.backend].stepped
        self.cache = cache
        self.identity = identity
        self._load = load
        self._inner: Engine | None = None

    @property
    def stepped(self) -> bool:  # type: ignore[override]
        """The loaded engine's trait (a test may load another engine than the backend's), else the backend's."""
        return self._inner.stepped if self._inner is not None else self._stepped

    @property
    def inner(self) -> Engine:
        """The wrapped engine, loaded on first use (once: the search's worker threads may ask at once)."""
        if self._inner is None:
            with self._lock:
                if self._inner is None:
                    self._inner = self._load()
        return self._inner

    @property
    def work(self) -> UsageStats:
        """What the wrapped engine did (nothing when it was never loaded)."""
        return self._inner.stats if self._inner is not None else UsageStats()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return self._through("generate", [{"prompt": r.prompt, "params": asdict(r.params)} for r in requests],
                             lambda idx: self.inner.generate([requests[i] for i in idx]),
                             asdict, lambda d: Generation(**d))

    def next_token_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str], top_k: int = 20
                            ) -> list[TokenLogprobs]:
        return self._through("logprobs", [{"prompt": p, "candidates": list(candidates), "top_k": top_k}
                                          for p in prompts],
                             lambda idx: self.inner.next_token_logprobs([prompts[i] for i in idx], candidates, top_k),
                             asdict, lambda d: TokenLogprobs(**d))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._through("embed", [{"text": t} for t in texts],
                             lambda idx: self.inner.embed([texts[i] for i in idx]), list, list)

    def score(self, conversations: Sequence[Messages]) -> list[float]:
        return self._through("score", [{"conversation": c} for c in conversations],
                             lambda idx: self.inner.score([conversations[i] for i in idx]), float, float)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()

    def reset_prefix_cache(self) -> None:
        if self._inner is not None:
            self._inner.reset_prefix_cache()

    def step_state(self) -> tuple[int, bool]:
        return self._inner.step_state() if self._inner is not None else (0, True)

    def resume(self) -> None:
        if self._inner is not None:
            self._inner.resume()

    def cancel(self, on: bool = True) -> None:
        if self._inner is not None:
            self._inner.cancel(on)

    def _through(self, kind: str, payloads: list[dict[str, Any]], call: Callable[[list[int]], Sequence[Any]],
                 encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> list[Any]:
        if not payloads:
            return []
        t0 = time.perf_counter()
        keys = [RequestCache.key(self.identity, kind, p) for p in payloads]
        results: dict[str, Any] = {}  # key -> decoded result
        todo: dict[str, int] = {}  # missing key -> first request with it
        for i, k in enumerate(keys):
            if k in results or k in todo:
                continue
            stored = self.cache.lookup(k)
            if stored is not MISSING:
                try:
                    results[k] = _checked(decode(stored))
                    continue
                except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a hand-edited or foreign line
                    logger.warning("request cache: the %s result under key %s… is malformed (%s): dropped, the "
                                   "request is sent again", kind, k[:12], exc)
                    self.cache.drop(k)
            todo[k] = i
        work = UsageStats()
        if todo:
            fresh, work = usage_of(self.inner, lambda: call(list(todo.values())))
            expect_len(fresh, len(todo), f"{self.backend} {kind}")
            stored = self.cache.put(kind, {k: encode(r) for k, r in zip(todo, fresh, strict=True)})
            results.update({k: decode(stored[k]) for k in todo})
        sent = set(todo.values())
        answered = [results[k] for i, k in enumerate(keys) if i not in sent]  # by the cache or a twin request
        self._record(UsageStats(calls=1, requests=len(keys), cached=len(answered),
                                  prompt_tokens=work.prompt_tokens, completion_tokens=work.completion_tokens,
                                  retries=work.retries, seconds=time.perf_counter() - t0,
                                  cached_prompt_tokens=sum(getattr(r, "prompt_tokens", 0) for r in answered),
                                  cached_completion_tokens=sum(getattr(r, "completion_tokens", 0) for r in answered)))
        return [results[k] for k in keys]


def _checked(result: Any) -> Any:
    """`result` when its values have the types its class declares (a cached line may have been edited); a
    TypeError otherwise."""
    if isinstance(result, float) and not math.isnan(result):
        return result
    if isinstance(result, list):
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in result):
            raise TypeError("an embedding holds a non-number")
        return result
    if isinstance(result, Generation):
        ok = (isinstance(result.text, str) and _is_int(result.prompt_tokens) and _is_int(result.completion_tokens)
              and (result.finish_reason is None or isinstance(result.finish_reason, str)))
    elif isinstance(result, TokenLogprobs):
        ok = (isinstance(result.logprobs, dict) and _is_int(result.prompt_tokens)
              and all(isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                      for k, v in result.logprobs.items()))
    else:
        ok = False
    if not ok:
        raise TypeError(f"a field of {type(result).__name__} has the wrong type")
    return result


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
