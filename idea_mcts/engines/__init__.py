"""Engines behind one protocol (see `base.py`), built by backend name, shared between roles."""

from __future__ import annotations

import importlib
import logging

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


ENGINE_CLASSES = {
    "transformers": "idea_mcts.engines.transformers:TransformersEngine",
    "vllm": "idea_mcts.engines.vllm:VLLMEngine",
    "openai": "idea_mcts.engines.openai:OpenAIEngine",
    "embedding": "idea_mcts.engines.transformers:EmbeddingEngine",
    "sequence_classification": "idea_mcts.engines.transformers:RewardModelEngine",
}
"""Engine class per backend, imported on use (vLLM and openai are optional extras, imported by their engines
only when one is built)."""


def engine_class(backend: str) -> type[Engine]:
    """The engine class of a backend, without building it (its class attributes: `logprob_method`...)."""
    if backend not in ENGINE_CLASSES:
        raise ValueError(f"unknown engine backend {backend!r}")
    module, name = ENGINE_CLASSES[backend].split(":")
    return getattr(importlib.import_module(module), name)


def build_engine(cfg: EngineConfig) -> Engine:
    """Instantiate the engine for `cfg.backend`."""
    return engine_class(cfg.backend)(cfg)  # type: ignore[call-arg]


class EnginePool:
    """Engines by config key, built on first use: roles naming the same key share one loaded model."""

    def __init__(self, configs: dict[str, EngineConfig]) -> None:
        self.configs = configs
        self._engines: dict[str, Engine] = {}

    def get(self, key: str) -> Engine:
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
