"""A role (evolver, responder, a scorer) bound to its engine: sampling settings, per-request seeds, usage.

Several roles may share one engine; each keeps its own usage counters for the run report. A request's seed is
derived from the run seed, the role and a stable key (the node id), so a request is the same request whenever
and in whatever batch it is issued.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

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
    usage_of,
)

if TYPE_CHECKING:
    from idea_mcts.config import EvolveConfig
    from idea_mcts.engines import EnginePool

T = TypeVar("T")


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any parts (stable across processes, unlike `hash`)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def pool_client(cfg: EvolveConfig, pool: EnginePool) -> Callable[[str], RoleClient]:
    """`client(role)`: a role's client straight on its engine from `pool` (no request cache)."""

    def client(role: str) -> RoleClient:
        key = cfg.role_engine(role)
        if key is None:
            raise ValueError(f"role {role!r} is disabled in this config")
        return RoleClient(role, pool.get(key), getattr(cfg.roles, role), cfg.search.seed)

    return client


class RoleClient:
    """Batched calls for one role, counted per role."""

    def __init__(self, role: str, engine: Engine, cfg: RoleConfig, run_seed: int) -> None:
        self.role = role
        self.engine = engine
        self.cfg = cfg
        self.run_seed = run_seed
        self.stats = UsageStats()
        self._lock = threading.Lock()

    def params(self, key: str) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                              top_p=self.cfg.top_p, seed=derive_seed(self.run_seed, self.role, key))

    def generate(self, prompts: Sequence[Prompt], keys: Sequence[str]) -> list[Generation]:
        requests = [GenerationRequest(p, self.params(k)) for p, k in zip(prompts, keys, strict=True)]
        return self._counted(self.engine.generate, requests)

    def next_token_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str], top_k: int
                            ) -> list[TokenLogprobs]:
        return self._counted(self.engine.next_token_logprobs, prompts, candidates, top_k)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._counted(self.engine.embed, texts)

    def score(self, conversations: Sequence[Messages]) -> list[float]:
        return self._counted(self.engine.score, conversations)

    def _counted(self, method: Callable[..., list[T]], *args: Any) -> list[T]:
        """Call the engine and add what the call added to the engine's counters (requests, tokens, retries,
        cached, time) to this role's."""
        out, usage = usage_of(self.engine, lambda: method(*args))
        with self._lock:
            self.stats.add(usage)
        return out
