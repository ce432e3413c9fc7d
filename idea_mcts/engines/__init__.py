"""Engines behind one protocol (see `base.py`), built by backend name, shared between roles."""

from __future__ import annotations

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


def build_engine(cfg: EngineConfig) -> Engine:
    """Instantiate the engine for `cfg.backend` (imports are lazy: vLLM and openai are optional extras)."""
    if cfg.backend == "transformers":
        from idea_mcts.engines.transformers import TransformersEngine

        return TransformersEngine(cfg)
    if cfg.backend == "vllm":
        from idea_mcts.engines.vllm import VLLMEngine

        return VLLMEngine(cfg)
    if cfg.backend == "openai":
        from idea_mcts.engines.openai import OpenAIEngine

        return OpenAIEngine(cfg)
    if cfg.backend == "embedding":
        from idea_mcts.engines.transformers import EmbeddingEngine

        return EmbeddingEngine(cfg)
    if cfg.backend == "sequence_classification":
        from idea_mcts.engines.transformers import RewardModelEngine

        return RewardModelEngine(cfg)
    raise ValueError(f"unknown engine backend {cfg.backend!r}")


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
