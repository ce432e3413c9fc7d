"""In-process Hugging Face engines: the offline CPU default.

`TransformersEngine` runs a causal LM with its own batched decode loop rather than `model.generate`, because
the search needs per-request sampling parameters and per-request seeds in one batch: each row samples with its
own `torch.Generator`, so a request gives the same text whatever else shares its batch. Requests are sorted by
prompt length and cut into micro-batches of `max_batch_size` (less padding); rows that finish are dropped from
the KV cache as the batch decodes, so long stragglers do not drag finished rows along. In a pipelined search the
calls go to a continuous batch instead (`idea_mcts.engines.continuous`): rows join and leave one running decode
batch, admitted at the search's barriers so that results do not depend on timing. The KV caches grow in place and,
on a CPU, the attention shares the key/value heads (`idea_mcts.engines.cpu_decode`: the same bits as transformers'
own, a CPU decode step up to 5.5x cheaper).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from idea_mcts.config import EngineConfig
from idea_mcts.engines import BACKENDS
from idea_mcts.engines.base import (
    STEP_HOOK,
    Engine,
    Generation,
    GenerationRequest,
    Messages,
    Prompt,
    SamplingParams,
    TokenLogprobs,
    candidate_ids,
    is_continuation,
)
from idea_mcts.engines.continuous import Call, ContinuousBatcher
from idea_mcts.engines.cpu_decode import roomy_cache, share_kv_heads
from idea_mcts.errors import UsageError
from idea_mcts.models import resolve_model

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load_tokenizer(cfg: EngineConfig, path: str):  # noqa: ANN202 - transformers tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.tokenizer) if cfg.tokenizer else path,
                                        trust_remote_code=bool(cfg.engine_kwargs.get("trust_remote_code")))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load(cfg: EngineConfig, auto_cls: type, what: str, **kwargs: object):  # noqa: ANN202 - (tokenizer, model)
    """Tokenizer and model of `cfg` on its device in eval mode; a model that cannot load is the user's to fix."""
    path = resolve_model(cfg.model)
    try:
        tokenizer = _load_tokenizer(cfg, path)
        model = auto_cls.from_pretrained(path, **kwargs, **cfg.engine_kwargs)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load {what} {cfg.model!r}: {str(exc).splitlines()[0]}") from None
    return tokenizer, model.to(_device(cfg.device)).eval()


PAD_MULTIPLE = 32
"""Prompts are left-padded to the next multiple of this many tokens (always at least one pad, so the attention
always takes its masked path). Scoring prompts are batched only with prompts of the same padded width, so their
padding never depends on what else is in the batch; generation batches mix widths (`TransformersEngine._generate`).
Neither makes a request's bits independent of its batch on a real model: the CPU matmul kernels change with
rows x tokens of a forward pass (SmolLM2: a row's logits differ in the last bits between batches of 2 and of 24
rows of one width). A sampled token changes only when such a difference tips it; scoring prompts of
`SOLO_PREFILL_TOKENS` or more run alone and are exact."""


MIN_ROWS = 4
"""Fewest rows in a batched forward pass: a batch of 1 or 2 rows runs other CPU matmul kernels than one of 3 to
about 8 (the last bits of a row's logits would depend on how many rows share its batch); smaller batches get
filler rows. Large batches switch kernels again (see `PAD_MULTIPLE`)."""


SOLO_PREFILL_TOKENS = 256
"""On a CPU, a scoring prompt (`next_token_logprobs`: one forward pass, no decoding) of this many tokens or more
runs alone and unpadded. The CPU matmul kernels change with the rows x tokens of a forward pass, so a row's last
bits change with its batch at every width (SmolLM2: 2 rows vs 24 rows of the same width differ); a prompt alone
is computed the same way whatever else was asked, and for long prompts it is no slower (SmolLM2, 2 cores: 16
prompts of ~455 tokens 6.4 s one by one, 8.1 s in one batch; ~123 tokens 2.0 s vs 2.2 s; ~41 tokens 1.2 s vs
0.9 s, hence the bound). The search then scores at the flat batch's speed however few prompts a barrier holds
(no filler rows). On a GPU batches win and every prompt goes through the buckets."""


PREFIX_CACHE_TOKENS = 128
"""On a CPU, a chat scoring prompt that runs alone (`SOLO_PREFILL_TOKENS`) and whose turns before its last user
message render to this many tokens or more (the `general` judges' scored examples: ~650 of their ~700) keeps the
KV cache of those turns and computes only the rest: the judges' prompts of a run share them. A prompt's bits then
depend on where its turns split, never on what was scored before it or beside it (the shared turns are always
computed alone, first)."""

PREFIX_CACHE_SIZE = 16
"""Shared turns whose KV cache is kept (least recently used dropped): one per judge prompt and evolver action in
use (the general actions: 12)."""


def _bucket(n: int) -> int:
    return (n // PAD_MULTIPLE + 1) * PAD_MULTIPLE


def _chunks(seqs: list[list[int]], size: int, one_width: bool = True) -> Iterator[list[int]]:
    """Indices of `seqs` in micro-batches of at most `size`, shortest first; with `one_width`, each of one padded
    width (see `PAD_MULTIPLE`), else of any widths (generation: see `TransformersEngine._generate`)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    chunk: list[int] = []
    for i in order:
        if chunk and (len(chunk) == size
                      or (one_width and _bucket(len(seqs[i])) != _bucket(len(seqs[chunk[0]])))):
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


class TransformersEngine(Engine):
    """A causal LM in this process (CPU or one GPU) with batched, per-request-seeded generation."""

    backend = "transformers"
    logprob_method = BACKENDS[backend].logprob_method
    stepped = BACKENDS[backend].stepped

    def __init__(self, cfg: EngineConfig) -> None:
        from transformers import AutoModelForCausalLM

        super().__init__(cfg.model)
        self.cfg = cfg
        if cfg.dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
        self.device = _device(cfg.device)
        self.tokenizer, self.model = _load(cfg, AutoModelForCausalLM, "model", dtype=DTYPES[cfg.dtype])
        if self.device.type == "cpu":
            share_kv_heads(self.model)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = torch.tensor(sorted(i for i in eos_ids if i is not None), device=self.device)
        self._candidate_ids: dict[tuple[str, ...], dict[str, int]] = {}
        self.batcher: ContinuousBatcher | None = None
        """Serves the calls of a pipelined search (`Engine.stepped`), made on its first call."""
        self._prefixes: OrderedDict[str, tuple[list[int], Any]] = OrderedDict()
        """Rendered shared turns -> (their token ids, their KV cache), for `PREFIX_CACHE_TOKENS`."""
        self._prefix_lock = threading.Lock()
        self.decode_steps = 0
        """Batched one-token forward passes of generation run so far (benchmarks: on a CPU each costs about the
        same whatever its rows, so the steps, not the tokens, tell a search's generation time from a flat
        batch's)."""

    # -- prompts ---------------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        """The exact text fed to the model: raw prompts as is, chat prompts through the chat template."""
        if isinstance(prompt, str):
            return prompt
        cont = is_continuation(prompt)
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=not cont,
                                                  continue_final_message=cont)

    def _encode(self, prompt: Prompt, room: int) -> list[int]:
        ids = self.tokenizer(self.render(prompt), add_special_tokens=isinstance(prompt, str))["input_ids"]
        limit = max(1, self.cfg.max_model_len - room)
        if len(ids) > limit:
            logger.warning("prompt of %d tokens truncated from the left to %d", len(ids), limit)
            ids = ids[-limit:]
        return ids

    def solo_prefill(self, tokens: int) -> bool:
        """Whether a prompt of `tokens` is prefilled alone and unpadded (see `SOLO_PREFILL_TOKENS`)."""
        return self.device.type == "cpu" and tokens >= SOLO_PREFILL_TOKENS

    def _prefill(self, seqs: list[list[int]], padded: bool = True):  # noqa: ANN202
        """Logits of the next token, attention mask, last positions and KV cache of `seqs`, left-padded to their
        bucket (`padded` off: one prompt as it is). The cache grows in place as the batch decodes (`roomy_cache`)."""
        width = _bucket(max(len(s) for s in seqs)) if padded else len(seqs[0])
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = roomy_cache()
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float(), mask, positions[:, -1:], cache

    def _prefill_alone(self, prompt: Prompt | None, seq: list[int]):  # noqa: ANN202 - as `_prefill`
        """`_prefill` of one prompt, unpadded (a CPU admission): after a copy of its shared turns' kept KV cache
        (`PREFIX_CACHE_TOKENS`: the evolver's example exchange) when it has them, else the whole prompt."""
        with self._prefix_lock:
            shared = self._shared_turns(prompt, seq) if prompt is not None else None
            if shared is None:
                return self._prefill([seq], padded=False)
            n, kept = shared
            cache = roomy_cache()
            for i, layer in enumerate(kept.layers):
                cache.update(layer.keys, layer.values, i)  # copied into the row's own buffers
        mask = torch.ones(1, len(seq), dtype=torch.long, device=self.device)
        positions = torch.arange(n, len(seq), device=self.device)[None, :]
        out = self.model(input_ids=torch.tensor([seq[n:]], device=self.device), attention_mask=mask,
                         position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float(), mask, positions[:, -1:], cache

    # -- continuous batching (a pipelined search's calls) -----------------------------------------------
    def _submit(self, call: Call) -> list[Any]:
        if self.batcher is None:
            with self._lock:
                if self.batcher is None:
                    self.batcher = ContinuousBatcher(self)
        return self.batcher.submit(call)

    def reset_prefix_cache(self) -> None:
        """Drop the kept shared turns (`PREFIX_CACHE_TOKENS`)."""
        with self._prefix_lock:
            self._prefixes.clear()

    def step_state(self) -> tuple[int, bool]:
        return self.batcher.state() if self.batcher is not None else (0, True)

    def resume(self) -> None:
        if self.batcher is not None:
            self.batcher.resume()

    def cancel(self, on: bool = True) -> None:
        if self.batcher is not None:
            self.batcher.cancel(on)

    # -- generation ------------------------------------------------------------------------------------
    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        hook = STEP_HOOK.get()
        if hook is not None:  # a pipelined search's call: the continuous batch
            seqs = [self._encode(r.prompt, r.params.max_new_tokens) for r in requests]
            return self._submit(Call(hook, seqs, params=[r.params for r in requests],
                                     prompts=[r.prompt for r in requests]))
        return self._generate_now(requests)

    def _generate_now(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Micro-batches mix prompt widths (each padded to the bucket of its longest): a barrier of the pipelined
        search holds a few requests of many widths, and one micro-batch per width would decode each width's few
        rows for as many steps as the whole batch (bench/search_throughput.py, transformers, 20 seeds: the
        search's generation 139 s -> 117 s for the same texts). A row's padding then depends on its batch, which
        changes only the last bits of its logits, as the batch's size does anyway (`PAD_MULTIPLE`)."""
        seqs = [self._encode(r.prompt, r.params.max_new_tokens) for r in requests]
        results: list[Generation | None] = [None] * len(requests)
        for chunk in _chunks(seqs, self.cfg.max_batch_size, one_width=False):
            outs = self._decode([seqs[i] for i in chunk], [requests[i].params for i in chunk])
            for i, (tokens, reason) in zip(chunk, outs, strict=True):
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                results[i] = Generation(text=text, prompt_tokens=len(seqs[i]), completion_tokens=len(tokens),
                                        finish_reason=reason)
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _decode(self, seqs: list[list[int]], params: list[SamplingParams]) -> list[tuple[list[int], str]]:
        n = len(seqs)
        seqs = seqs + [seqs[0]] * (MIN_ROWS - n)  # filler rows (see MIN_ROWS), never read
        logits, mask, position, cache = self._prefill(seqs)
        params = params + [SamplingParams(temperature=0.0)] * (len(seqs) - n)
        gens = [torch.Generator().manual_seed(p.seed) if p.seed is not None else None for p in params]
        tokens: list[list[int]] = [[] for _ in seqs]
        reasons = ["length"] * len(seqs)
        done = [row >= n for row in range(len(seqs))]
        active = list(range(len(seqs)))  # original row of each batch row
        while True:
            nxt = self._sample(logits, [params[i] for i in active], [gens[i] for i in active])
            for b, row in enumerate(active):
                if done[row]:
                    continue
                tok = int(nxt[b])
                if bool((self.eos_ids == tok).any()):
                    reasons[row], done[row] = "stop", True
                    continue
                tokens[row].append(tok)
                done[row] = len(tokens[row]) >= params[row].max_new_tokens
            keep = [b for b, row in enumerate(active) if not done[row]]
            if not keep:
                break
            if len(keep) < MIN_ROWS:  # finished rows ride along: the batch never drops below MIN_ROWS rows
                keep = sorted(keep + [b for b in range(len(active)) if b not in keep][: MIN_ROWS - len(keep)])
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                mask, position, nxt = mask[idx], position[idx], nxt[idx]
                active = [active[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            position = position + 1
            self.decode_steps += 1
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=position,
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1, :].float()
        return list(zip(tokens, reasons, strict=True))[:n]

    @staticmethod
    def _sample(logits: torch.Tensor, params: Sequence[SamplingParams],
                gens: Sequence[torch.Generator | None]) -> torch.Tensor:
        out = logits.argmax(dim=-1)
        for b, (p, g) in enumerate(zip(params, gens, strict=True)):
            if p.temperature <= 0:
                continue
            probs = torch.softmax(logits[b] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_p, sorted_i = probs.sort(descending=True)
                drop = sorted_p.cumsum(0) - sorted_p > p.top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter(0, sorted_i, sorted_p)
            out[b] = torch.multinomial(probs.cpu(), 1, generator=g)[0]
        return out

    # -- scoring ---------------------------------------------------------------------------------------
    def _next_token_logprobs(self, prompts: list[Prompt], candidates: list[str], top_k: int
                             ) -> list[TokenLogprobs]:
        hook = STEP_HOOK.get()
        if hook is not None:  # a pipelined search's call: served between the continuous batch's steps
            seqs = [self._encode(p, 1) for p in prompts]
            return self._submit(Call(hook, seqs, prompts=list(prompts), candidates=list(candidates), top_k=top_k))
        return self._logprobs_now(prompts, candidates, top_k)

    @torch.inference_mode()
    def _logprobs_now(self, prompts: list[Prompt], candidates: list[str], top_k: int) -> list[TokenLogprobs]:
        """Every candidate's logprob from the full next-token distribution (`top_k` does not apply: this engine
        holds the whole distribution, so DEITA's softmax over all six digits is exact)."""
        key = tuple(candidates)
        if key not in self._candidate_ids:
            self._candidate_ids[key] = candidate_ids(self.tokenizer, candidates, self.model_id)
        ids = self._candidate_ids[key]
        seqs = [self._encode(p, 1) for p in prompts]
        results: list[TokenLogprobs | None] = [None] * len(prompts)

        def keep(rows: list[int], logits: torch.Tensor) -> None:
            logprobs = torch.log_softmax(logits, dim=-1)
            for b, i in enumerate(rows):
                results[i] = TokenLogprobs(logprobs={c: float(logprobs[b, t]) for c, t in ids.items()},
                                           prompt_tokens=len(seqs[i]))

        solo: list[int] = []
        batched: list[int] = []
        for i, s in enumerate(seqs):
            (solo if self.solo_prefill(len(s)) else batched).append(i)
        for i in solo:  # alone, unpadded (see SOLO_PREFILL_TOKENS), after the KV cache of shared turns if any
            keep([i], self._solo_logits(prompts[i], seqs[i]))
        for chunk in _chunks([seqs[i] for i in batched], self.cfg.max_batch_size):
            rows = [seqs[batched[j]] for j in chunk]
            logits, *_ = self._prefill(rows + [rows[0]] * (MIN_ROWS - len(rows)))
            keep([batched[j] for j in chunk], logits)
        return [r for r in results if r is not None]

    def _solo_logits(self, prompt: Prompt, seq: list[int]) -> torch.Tensor:
        """Next-token logits of one prompt run alone: the part after its shared turns (`PREFIX_CACHE_TOKENS`)
        on their kept KV cache, or the whole prompt."""
        with self._prefix_lock:
            shared = self._shared_turns(prompt, seq)
            if shared is None:
                out = self.model(input_ids=torch.tensor([seq], device=self.device), logits_to_keep=1)
                return out.logits[:, -1, :].float()
            n, cache = shared
            try:
                out = self.model(input_ids=torch.tensor([seq[n:]], device=self.device), past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
            finally:  # back to the shared turns alone, for the next prompt
                extra = cache.get_seq_length() - n
                if extra > 0:
                    cache.crop(-extra)
            return out.logits[:, -1, :].float()

    def _shared_turns(self, prompt: Prompt, seq: list[int]) -> tuple[int, Any] | None:
        """(tokens, KV cache) of the prompt's turns before its last user message when they begin `seq` and are
        long enough to keep (`PREFIX_CACHE_TOKENS`); computed alone the first time, then kept."""
        if isinstance(prompt, str) or self.device.type != "cpu":
            return None
        last_user = max((i for i, m in enumerate(prompt) if m["role"] == "user"), default=0)
        if last_user == 0:
            return None
        text = self.tokenizer.apply_chat_template(list(prompt[:last_user]), tokenize=False,
                                                  add_generation_prompt=False)
        kept = self._prefixes.get(text)
        if kept is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) < PREFIX_CACHE_TOKENS:
                return None
            cache = DynamicCache()
            self.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=cache, use_cache=True,
                       logits_to_keep=1)
            kept = self._prefixes[text] = (ids, cache)
            while len(self._prefixes) > PREFIX_CACHE_SIZE:
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(text)
        ids, cache = kept
        if len(ids) >= len(seq) or seq[:len(ids)] != ids:  # e.g. cut from the left to fit max_model_len
            return None
        return len(ids), cache


class EmbeddingEngine(Engine):
    """Sentence embeddings: mean pooling over the last hidden state, L2-normalised (all-MiniLM-L6-v2 style).

    Each text runs in a forward pass of its own, unpadded, so its embedding has the same bits whatever else the
    call holds: batched, a text's embedding differed in the last digits with the batch it was computed in (its
    padding and the batch's rows choose other matmul kernels), and the novelty term, hence the rewards, of a
    resumed run differed from an uninterrupted run's (issue 36). A search's calls hold a few texts each: one by one
    costs it little (a 4-seed demo: 2-3 s of embedding in a ~105 s search, 0.3-0.4 s batched; bench/embed_cost.py,
    docs/benchmarks.md). `max_batch_size` does not apply."""

    backend = "embedding"

    def __init__(self, cfg: EngineConfig) -> None:
        from transformers import AutoModel

        super().__init__(cfg.model)
        self.cfg = cfg
        self.device = _device(cfg.device)
        self.tokenizer, self.model = _load(cfg, AutoModel, "embedding model")
        self.tokenizer.padding_side = "right"

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> list[list[float]]:
        """One forward pass per distinct text (see the class doc)."""
        done: dict[str, list[float]] = {}
        for text in texts:
            if text not in done:
                done[text] = self._embed_one(text)
        return [done[t] for t in texts]

    def _embed_one(self, text: str) -> list[float]:
        enc = self.tokenizer([text], truncation=True, max_length=min(self.cfg.max_model_len, 512),
                             return_tensors="pt").to(self.device)
        hidden = self.model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)[0].tolist()


class RewardModelEngine(Engine):
    """Any HF sequence-classification reward model: the first logit of (user, assistant) conversations."""

    backend = "sequence_classification"

    def __init__(self, cfg: EngineConfig) -> None:
        from transformers import AutoModelForSequenceClassification

        super().__init__(cfg.model)
        self.cfg = cfg
        self.device = _device(cfg.device)
        self.tokenizer, self.model = _load(cfg, AutoModelForSequenceClassification, "reward model",
                                           dtype=DTYPES.get(cfg.dtype, torch.float32))
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def _text(self, conv: Messages) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(conv, tokenize=False)
        return "\n\n".join(m["content"] for m in conv)

    @torch.inference_mode()
    def _score(self, conversations: list[Messages]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(conversations), self.cfg.max_batch_size):
            texts = [self._text(c) for c in conversations[i : i + self.cfg.max_batch_size]]
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_model_len,
                                 return_tensors="pt", add_special_tokens=False).to(self.device)
            out.extend(self.model(**enc).logits[:, 0].float().tolist())
        return out
