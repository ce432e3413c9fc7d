"""Engines behind one protocol (see `base.py`), built by backend name, shared between roles."""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass

from idea_mcts.config import EngineConfig
from idea_mcts.engines.base import (
    Engine,
    Generation,
    GenerationRequest,
    Prompt,
    SamplingParams,
    TokenLogprobs,
    UsageStats,
)

__all__ = ["Engine", "EnginePool", "Generation", "GenerationRequest", "Prompt", "SamplingParams",
           "TokenLogprobs", "UsageStats", "build_engine"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """An engine backend: where its class lives and the traits the search needs before (or without) loading it:
    a replay that the request cache answers whole never imports the backend's libraries (torch, vLLM)."""

    target: str
    """`module:Class` of the engine, imported on use (vLLM and openai are optional extras)."""
    logprob_method: str = "top_k"
    """See `Engine.logprob_method`."""
    concurrent: bool = False
    """See `Engine.concurrent`."""
    stepped: bool = False
    """See `Engine.stepped`."""


BACKENDS = {
    "transformers": Backend("idea_mcts.engines.transformers:TransformersEngine", logprob_method="full",
                            stepped=True),
    "vllm": Backend("idea_mcts.engines.vllm:VLLMEngine", concurrent=True),
    "openai": Backend("idea_mcts.engines.openai:OpenAIEngine", concurrent=True),
    "embedding": Backend("idea_mcts.engines.transformers:EmbeddingEngine"),
    "sequence_classification": Backend("idea_mcts.engines.transformers:RewardModelEngine"),
}
"""Every backend by name; the engine classes take their traits from here."""


def engine_class(backend: str) -> type[Engine]:
    """The engine class of a backend (imports its module)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown engine backend {backend!r}")
    module, name = BACKENDS[backend].target.split(":")
    return getattr(importlib.import_module(module), name)


def build_engine(cfg: EngineConfig) -> Engine:
    """Instantiate the engine for `cfg.backend`."""
    return engine_class(cfg.backend)(cfg)  # type: ignore[call-arg]


def max_in_flight(cfg: EngineConfig) -> int:
    """`Engine.max_in_flight` of the engine `cfg` builds, known without building it (`max_concurrency` for an
    OpenAI-compatible server)."""
    return cfg.max_concurrency if cfg.backend == "openai" else Engine.max_in_flight


class EnginePool:
    """Engines by config key, built on first use: roles naming the same key share one loaded model."""

    def __init__(self, configs: dict[str, EngineConfig]) -> None:
        self.configs = configs
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Engine:
        """The engine of `key`, loaded on first use (once, however many of the search's threads ask at once)."""
        with self._lock:
            if key not in self._engines:
                logger.info("loading engine %r (%s: %s)", key, self.configs[key].backend, self.configs[key].model)
                self._engines[key] = build_engine(self.configs[key])
            return self._engines[key]

    def loaded(self) -> dict[str, Engine]:
        return dict(self._engines)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
