"""A role (evolver, responder, a scorer) bound to its engine: sampling settings, per-request seeds, usage.

Several roles may share one engine; each keeps its own usage counters for the run report. A request's seed is
derived from the run seed, the role and a stable key (the node id), so a request is the same request whenever
and in whatever batch it is issued.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from idea_mcts.config import RoleConfig
from idea_mcts.engines.base import (
    Engine,
    Generation,
    GenerationRequest,
    Messages,
    Prompt,
    SamplingParams,
    TokenLogprobs,
    UsageStats,
)


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any parts (stable across processes, unlike `hash`)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class RoleClient:
    """Batched calls for one role, counted per role."""

    def __init__(self, role: str, engine: Engine, cfg: RoleConfig, run_seed: int) -> None:
        self.role = role
        self.engine = engine
        self.cfg = cfg
        self.run_seed = run_seed
        self.stats = UsageStats()

    def params(self, key: str) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                              top_p=self.cfg.top_p, seed=derive_seed(self.run_seed, self.role, key))

    def generate(self, prompts: Sequence[Prompt], keys: Sequence[str]) -> list[Generation]:
        t0 = time.perf_counter()
        out = self.engine.generate([GenerationRequest(p, self.params(k)) for p, k in zip(prompts, keys, strict=True)])
        self._count(len(prompts), t0, sum(g.prompt_tokens for g in out), sum(g.completion_tokens for g in out))
        return out

    def next_token_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str], top_k: int
                            ) -> list[TokenLogprobs]:
        t0 = time.perf_counter()
        out = self.engine.next_token_logprobs(prompts, candidates, top_k)
        self._count(len(prompts), t0, sum(r.prompt_tokens for r in out), 0)
        return out

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        t0 = time.perf_counter()
        out = self.engine.embed(texts)
        self._count(len(texts), t0, 0, 0)
        return out

    def score(self, conversations: Sequence[Messages]) -> list[float]:
        t0 = time.perf_counter()
        out = self.engine.score(conversations)
        self._count(len(conversations), t0, 0, 0)
        return out

    def _count(self, n: int, t0: float, prompt_tokens: int, completion_tokens: int) -> None:
        if n:
            self.stats.add(UsageStats(calls=1, requests=n, prompt_tokens=prompt_tokens,
                                      completion_tokens=completion_tokens, seconds=time.perf_counter() - t0))
