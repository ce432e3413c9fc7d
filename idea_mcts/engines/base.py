"""The engine protocol: batched generation and batched next-token logprobs.

Every call takes a whole batch. The search hands an engine every request of a wave at once (all trees
together), so an in-process engine fills its batches and a server engine keeps enough requests in flight for
continuous batching. Prompts are either raw text (completion) or chat messages; chat messages ending with an
assistant message are continued (the assistant turn is prefilled), not answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

Messages = list[dict[str, str]]
Prompt = str | Messages
"""Raw text (sent as is, no chat template) or chat messages (the engine applies the model's chat template)."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings."""

    max_new_tokens: int = 256
    """Most tokens to generate."""
    temperature: float = 0.7
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    seed: int | None = None
    """Per-request seed: the same request with the same seed gives the same text on a deterministic engine,
    whatever else is in the batch."""


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete."""

    prompt: Prompt
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Generation:
    """What an engine returns for one request."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass
class TokenLogprobs:
    """Next-token logprobs of the candidate tokens at the first generated position: every candidate where the
    engine holds the full distribution (`Engine.logprob_method == "full"`), else those inside the top-k."""

    logprobs: dict[str, float]
    """candidate -> logprob; with a top-k engine a candidate outside the top-k is absent."""
    prompt_tokens: int = 0


@dataclass
class UsageStats:
    """Calls, requests, tokens and time, per engine or per role."""

    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    retries: int = 0
    cached: int = 0
    cached_prompt_tokens: int = 0
    """Tokens of the requests the run's request cache answered, as counted when they were sent: with the tokens
    above, what the requests cost (a resumed run's engines do not process them again)."""
    cached_completion_tokens: int = 0
    """As `cached_prompt_tokens`, for completions."""

    def add(self, other: UsageStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def since(self, before: UsageStats) -> UsageStats:
        """What was added since `before` (a copy taken earlier with `dataclasses.replace`)."""
        return UsageStats(**{k: v - getattr(before, k) for k, v in asdict(self).items()})

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["completion_tokens_per_s"] = round(self.completion_tokens / self.seconds, 2) if self.seconds else 0.0
        return d


def is_continuation(prompt: Prompt) -> bool:
    """Chat prompts whose last message is the assistant's are continued (prefill), not answered."""
    return not isinstance(prompt, str) and bool(prompt) and prompt[-1]["role"] == "assistant"


def candidate_ids(tokenizer: Any, candidates: Sequence[str], model_id: str) -> dict[str, int]:
    """Token id of each single-token candidate (e.g. the score digits "1".."6") from a model's tokenizer: its
    exact vocabulary entry first (SentencePiece tokenizers such as LLaMA's, the DEITA scorers' and InsTagger's,
    encode "1" as "▁" + "1", yet "1" is the token that follows "Score: "), else the text when it encodes to
    exactly one token; anything else is a one-line UsageError naming the model."""
    from idea_mcts.errors import UsageError

    vocab = tokenizer.get_vocab()
    ids: dict[str, int] = {}
    for c in candidates:
        tokens = [vocab[c]] if c in vocab else tokenizer.encode(c, add_special_tokens=False)
        if len(tokens) != 1:
            raise UsageError(f"the tokenizer of {model_id} has no single token for {c!r} "
                             f"(it encodes to {len(tokens)} tokens): it cannot serve an expected-score scorer")
        ids[c] = tokens[0]
    return ids


_USAGE_SINK: ContextVar[tuple[Engine, UsageStats] | None] = ContextVar("idea_mcts_usage_sink", default=None)

STEP_HOOK: ContextVar[Callable[[], None] | None] = ContextVar("idea_mcts_step_hook", default=None)
"""Set by the pipelined search's dispatcher around the calls it hands a `stepped` engine: the engine calls it
(from any thread) when a call has entered it and when it pauses, so the dispatcher re-checks whether every strand
waits (see `Engine.stepped`). Calls without it (not from a search) take the engine's ordinary batched path."""


def usage_of(engine: Engine, call: Callable[[], T]) -> tuple[T, UsageStats]:
    """Run `call` (a call of `engine`'s public API) and return its result with the usage that call alone added
    to `engine`'s counters (requests, tokens, cached, time), even while other threads use the same engine."""
    usage = UsageStats()
    token = _USAGE_SINK.set((engine, usage))
    try:
        return call(), usage
    finally:
        _USAGE_SINK.reset(token)


class Engine:
    """A loaded model behind a batched API. Subclasses implement the `_generate` / `_next_token_logprobs`
    (LLMs), `_embed` (embedders) or `_score` (reward models) they support."""

    backend: str = "base"
    concurrent: bool = False
    """Serves many calls at once (a server with continuous batching): the pipelined search sends each tree's
    requests as they come. False: one call at a time, batched at the search's barriers (deterministic)."""
    stepped: bool = False
    """Continuous batching at the search's barriers (the transformers engine): the pipelined search sends each
    strand's requests as they come, like a `concurrent` engine's, and the engine holds them until the search
    tells it (`resume`) that every strand waits; then it admits them into its running decode batch, which pauses
    again after every step that finished a call. Admissions then happen at the same steps whatever the threads'
    timing, so results stay independent of scheduling, and a short request no longer waits for the longest row
    of its barrier."""
    max_in_flight: int = 256
    """A `concurrent` engine: the calls the pipelined search keeps in flight on it at once (each holds one of the
    dispatcher's threads for this engine until it is answered; an OpenAI-compatible server's: its
    `max_concurrency`). Each engine has threads of its own, so calls to one never wait for another's."""
    logprob_method: str = "top_k"
    """How `next_token_logprobs` sees the candidates: `full` (the whole next-token distribution, every
    candidate returned) or `top_k` (servers that return only the top-k tokens: absent candidates are left out
    and the expected score renormalises over those present)."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        """Identity of the model (used in cache keys and reports)."""
        self.stats = UsageStats()
        self._lock = threading.Lock()

    # -- public, batched ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if not requests:
            return []
        t0 = time.perf_counter()
        out = self._generate(list(requests))
        self._account(len(requests), t0, sum(g.prompt_tokens for g in out), sum(g.completion_tokens for g in out))
        return out

    def next_token_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str], top_k: int = 20
                            ) -> list[TokenLogprobs]:
        """Logprobs of `candidates` (single tokens, e.g. the digits "1".."6") at the first generated position:
        all of them on a `full` engine, those inside the top-`top_k` tokens on a `top_k` engine."""
        if not prompts:
            return []
        t0 = time.perf_counter()
        out = self._next_token_logprobs(list(prompts), list(candidates), top_k)
        self._account(len(prompts), t0, sum(r.prompt_tokens for r in out), 0)
        return out

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """L2-normalised sentence embeddings."""
        if not texts:
            return []
        t0 = time.perf_counter()
        out = self._embed(list(texts))
        self._account(len(texts), t0, 0, 0)
        return out

    def score(self, conversations: Sequence[Messages]) -> list[float]:
        """Scalar reward of each (user, assistant) conversation."""
        if not conversations:
            return []
        t0 = time.perf_counter()
        out = self._score(list(conversations))
        self._account(len(conversations), t0, 0, 0)
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model (engines holding processes or GPU memory override this)."""

    def reset_prefix_cache(self) -> None:  # noqa: B027 - optional hook
        """Forget the prompt prefixes (their KV cache) kept from earlier calls, so that the next calls compute
        their prompts afresh: a benchmark replaying the same requests must not find them already computed. Call
        it with no call in flight. Engines that keep none (and servers, whose cache is theirs) do nothing."""

    def step_state(self) -> tuple[int, bool]:
        """A `stepped` engine's (calls waiting inside it, whether it is paused for the search)."""
        return 0, True

    def resume(self) -> None:  # noqa: B027 - optional hook
        """A `stepped` engine: every strand waits; admit what has come and go on decoding."""

    def cancel(self, on: bool = True) -> None:  # noqa: B027 - optional hook
        """The search has stopped: every call inside a `stepped` or `concurrent` engine, and every call that comes
        until `cancel(False)`, fails at once with `SearchStopped` (its work is dropped: a resume redoes it)."""

    # -- to implement --------------------------------------------------------------------------------
    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        raise NotImplementedError(f"{type(self).__name__} does not generate text")

    def _next_token_logprobs(self, prompts: list[Prompt], candidates: list[str], top_k: int
                             ) -> list[TokenLogprobs]:
        raise NotImplementedError(f"{type(self).__name__} does not return logprobs")

    def _embed(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError(f"{type(self).__name__} does not embed")

    def _score(self, conversations: list[Messages]) -> list[float]:
        raise NotImplementedError(f"{type(self).__name__} is not a reward model")

    def _account(self, n: int, t0: float, prompt_tokens: int, completion_tokens: int) -> None:
        self._record(UsageStats(calls=1, requests=n, prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens, seconds=time.perf_counter() - t0))

    def _record(self, usage: UsageStats) -> None:
        """Add one call's usage to the engine's counters and to the caller's sink (see `usage_of`): calls may
        run concurrently from several threads (the pipelined search), so a caller cannot diff the counters."""
        with self._lock:
            self.stats.add(usage)
        sink = _USAGE_SINK.get(None)
        if sink is not None and sink[0] is self:
            sink[1].add(usage)


class EngineProtocolError(RuntimeError):
    """An engine returned something the protocol does not allow (wrong count, missing field)."""


def expect_len(out: Sequence[Any], n: int, what: str) -> None:
    if len(out) != n:
        raise EngineProtocolError(f"{what}: expected {n} results, got {len(out)}")

