"""Continuous batching for the in-process transformers engine, deterministic at the search's barriers.

The pipelined search sends a `stepped` engine each strand's requests as they come (`Engine.stepped`). The calls
enter `ContinuousBatcher.submit` from the dispatcher's worker threads and block there; one scheduler thread
owns the model:

    repeat:
        pause until the search says that every strand waits (`resume`)
        take every queued call, in an order fixed by the calls' contents (not by their arrival)
        answer the scoring calls; admit the generation rows into the running decode batch
        decode step after step until a step completes a call (all its rows ended); deliver it

The decode batch runs on across pauses: admitted rows are prefilled and merged into its KV cache (left-padded to
one length), finished rows leave it. Every admission happens at a pause the search reached with every strand
waiting, so what is admitted, and at which step, is the same in every run whatever the threads' timing: results
stay independent of scheduling, as the barrier engine's are, while a short request no longer waits for the
longest row of its barrier (a tree's rewrite that ended early gets its response at once).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from idea_mcts.engines.base import Generation, Prompt, SamplingParams
from idea_mcts.errors import SearchStopped

if TYPE_CHECKING:
    from idea_mcts.engines.transformers import TransformersEngine

logger = logging.getLogger(__name__)


@dataclass
class Call:
    """One engine call waiting in the batcher: generations (`params` set) or scoring prompts (`params` None);
    `prompts` are the calls' prompts before tokenisation (`seqs`), for their shared turns' kept KV cache."""

    hook: Callable[[], None]
    """The dispatcher's wake-up (`idea_mcts.engines.base.STEP_HOOK`)."""
    seqs: list[list[int]]
    params: list[SamplingParams] | None = None
    prompts: list[Prompt] | None = None
    candidates: list[str] = field(default_factory=list)
    top_k: int = 0
    results: list[Any] = field(default_factory=list)
    left: int = 0
    """Rows not yet finished (generation)."""
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def order(self) -> str:
        """A key fixed by the call's contents: queued calls are served in this order, not in arrival order."""
        params = [asdict(p) for p in self.params] if self.params is not None else None
        return json.dumps([self.params is None, self.candidates, self.top_k, self.seqs, params], sort_keys=True)


@dataclass
class _Row:
    """One generation in the decode batch."""

    call: Call
    index: int
    prompt_tokens: int
    params: SamplingParams
    gen: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    reason: str = "length"


@dataclass
class _Batch:
    """Prefilled rows waiting to join the decode batch (`ContinuousBatcher._prefilled`)."""

    rows: list[_Row]
    logits: torch.Tensor
    mask: torch.Tensor
    position: torch.Tensor
    cache: Any


class ContinuousBatcher:
    """The scheduler thread of a `TransformersEngine` in a pipelined search (see the module docstring)."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.cond = threading.Condition()
        self.queue: list[Call] = []
        self.waiting = 0
        """Calls inside the batcher, not yet answered."""
        self.paused = True
        self._go = False
        self._cancelled = False
        """The search has stopped (`cancel`): calls fail with `SearchStopped` instead of being served."""
        self._hook: Callable[[], None] | None = None
        self._delivered = False
        """A call was answered since the last pause: the dispatcher must hear of the pause (see `_pause`)."""
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.admissions: list[tuple[int, int, int]] = []
        """(engine decode step, rows admitted, rows already decoding) of every admission: the schedule."""
        self.backlog: list[tuple[_Row, list[int]]] = []
        """Rows waiting for room in the decode batch (`max_batch_size`), with their prompt tokens."""
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.position: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    # -- the dispatcher's side ---------------------------------------------------------------------------
    def submit(self, call: Call) -> list[Any]:
        """Queue `call`, tell the dispatcher, block until it is answered."""
        with self.cond:
            if self._failed is not None:
                raise self._failed
            if self._cancelled:
                raise SearchStopped("the search stopped before this call reached the engine")
            self.queue.append(call)
            self.waiting += 1
            self._hook = call.hook
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="continuous-batcher", daemon=True)
                self._thread.start()
        call.hook()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.results

    def state(self) -> tuple[int, bool]:
        with self.cond:
            return self.waiting, self.paused

    def resume(self) -> None:
        """Admit what has come (the search: every strand waits)."""
        with self.cond:
            if self.paused:
                self._go = True
                self.cond.notify_all()

    def cancel(self, on: bool = True) -> None:
        """The search has stopped: fail every call inside, and every call that comes until `cancel(False)`."""
        with self.cond:
            self._cancelled = on
            self.cond.notify_all()

    # -- the scheduler thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    delivered = self._serve(self._pause())
                    while self.rows and not delivered and not self._cancelled:
                        delivered = self._step()
        except BaseException as exc:  # handed to every waiting call, raised in its thread
            logger.exception("continuous batcher failed")
            with self.cond:
                self._failed = exc
                self.paused = True  # for good: the dispatcher hands out answers (these errors) only to a paused engine
            self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        """Every call inside gets `exc`; the decode batch is emptied."""
        with self.cond:
            calls = {id(c): c for c in self.queue}
            calls.update({id(r.call): r.call for r in self.rows})
            calls.update({id(r.call): r.call for r, _ in self.backlog})
            self.queue, self.rows, self.backlog, self.waiting = [], [], [], 0
            self.cache = self.mask = self.position = self.logits = None
        for c in calls.values():
            c.error = exc
            c.done.set()

    def _pause(self) -> list[Call]:
        """Wait for `resume`, then take the queue in content order."""
        with self.cond:
            self.paused = True  # `_go` is kept: a resume sent before the thread's first pause admits what is queued
            busy = bool(self.queue or self.rows or self.backlog)
            # after answering a call, wake the dispatcher even with nothing left inside: it hands the answers out
            # only to a paused engine, and may have looked (and found it running) before this pause
            delivered, self._delivered = self._delivered, False
            hook = self._hook if (busy or delivered) and not self._cancelled else None
        if hook is not None:
            with contextlib.suppress(RuntimeError):  # the search that sent the work is gone
                hook()
        with self.cond:
            while not (self._go or self._cancelled and (self.queue or self.rows or self.backlog)):
                self.cond.wait()
            cancelled = self._cancelled
            if cancelled:
                work = []
            else:
                self.paused, self._go = False, False
                work, self.queue = self.queue, []
        if cancelled:
            self._fail_all(SearchStopped("the search stopped: this call's work was dropped"))
        return sorted(work, key=Call.order)

    def _deliver(self, call: Call) -> None:
        with self.cond:
            self.waiting -= 1
            self._delivered = True
        call.done.set()

    def _serve(self, work: list[Call]) -> bool:
        """Answer the scoring calls, admit the generations; whether a call was answered."""
        scoring: dict[tuple[tuple[str, ...], int], list[Call]] = {}
        for call in work:
            if call.params is None:
                scoring.setdefault((tuple(call.candidates), call.top_k), []).append(call)
            else:
                call.results = [None] * len(call.seqs)
                call.left = len(call.seqs)
                for i, (seq, p) in enumerate(zip(call.seqs, call.params, strict=True)):
                    gen = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
                    self.backlog.append((_Row(call, i, len(seq), p, gen), seq))
        for (cands, top_k), calls in scoring.items():
            prompts = [p for c in calls for p in c.prompts or []]
            try:
                out = self.engine._logprobs_now(prompts, list(cands), top_k)
            except Exception as exc:  # e.g. a candidate with no single token: these calls fail, not the batch
                out = [None] * len(prompts)
                for c in calls:
                    c.error = exc
            at = 0
            for c in calls:
                c.results, at = out[at : at + len(c.seqs)], at + len(c.seqs)
                self._deliver(c)
        self._admit()
        return bool(scoring)

    def _admit(self) -> None:
        """Prefill the backlog's first rows (as many as there is room for) and merge them into the batch."""
        from idea_mcts.engines.transformers import _chunks

        live = sum(not r.done for r in self.rows)
        room = max(self.engine.cfg.max_batch_size - live, 0)
        take, self.backlog = self.backlog[:room], self.backlog[room:]
        if not take:
            return
        self.admissions.append((self.engine.decode_steps, len(take), live))
        seqs = [s for _, s in take]
        # on a CPU every row alone and unpadded (see `_prefilled`); on a GPU in groups of one padded width (mixed
        # widths would pad a short response prompt to a long evolver's)
        cpu = self.engine.device.type == "cpu"
        groups = [[i] for i in range(len(seqs))] if cpu else list(_chunks(seqs, len(seqs)))
        self._merge([self._prefilled([take[i][0] for i in group], [seqs[i] for i in group]) for group in groups])
        self._fill()
        self._compact()

    def _fill(self) -> None:
        """Give the batch at least `MIN_ROWS` rows: copies of its first row's cache, riding along as finished rows
        (a decode step's kernels, hence a row's last bits, differ between 1-2 rows and more)."""
        from idea_mcts.engines.transformers import MIN_ROWS

        short = MIN_ROWS - len(self.rows)
        if short <= 0:
            return
        assert self.mask is not None and self.position is not None and self.logits is not None
        idx = torch.tensor(list(range(len(self.rows))) + [0] * short, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.position, self.logits = self.mask[idx], self.position[idx], self.logits[idx]
        self.rows += [_Row(self.rows[0].call, 0, 0, SamplingParams(temperature=0.0), None, done=True)] * short

    def _prefilled(self, rows: list[_Row], seqs: list[list[int]]) -> _Batch:
        """`seqs` prefilled: their rows (with filler rows), next-token logits, attention mask, positions, KV cache.

        On a CPU each admitted row is prefilled alone and unpadded, so its KV cache and first logits have the same
        bits whatever else is admitted with it: a resumed run, whose cached requests leave its batches, admits
        fewer rows at a time and must still compute the rest as the uninterrupted run did. In a batch they would
        not: a row's first logits differ in the last bits between batches of 1-2 rows and of 3+ (the final
        projection's kernels change with the rows; tests/test_continuous.py), and SmolLM2's KV cache between 1
        row and 4 (measured at 40-230 tokens). Filler rows up to `MIN_ROWS` fixed that at a cost; alone costs
        about what batches without fillers cost (bench/admission_prefill.py, a 20-seed demo search's 67
        admissions: 57 s alone, 55 s by padded width, 65 s with fillers). On a GPU, groups of one padded width,
        with filler rows as in the engine's barrier calls. A row's decode steps still depend on the batch's
        width (docs/method.md)."""
        from idea_mcts.engines.transformers import MIN_ROWS

        alone = self.engine.device.type == "cpu"
        assert not alone or len(seqs) == 1
        fillers = 0 if alone else max(0, MIN_ROWS - len(seqs))
        if alone:  # after the kept KV cache of the prompt's shared turns, if it has them (the evolver's example)
            prompts = rows[0].call.prompts
            logits, mask, position, cache = self.engine._prefill_alone(
                prompts[rows[0].index] if prompts is not None else None, seqs[0])
        else:
            logits, mask, position, cache = self.engine._prefill(seqs + [seqs[0]] * fillers)
        # fillers ride along as finished rows (never sampled into a result) until the batch has enough live ones
        rows = rows + [_Row(rows[0].call, 0, 0, SamplingParams(temperature=0.0), None, done=True)] * fillers
        return _Batch(rows, logits, mask, position, cache)

    def _merge(self, parts: list[_Batch]) -> None:
        """Join the prefilled `parts` to the decode batch, left-padded to one width, in one copy of the cache
        (a copy per admitted row cost a 20-seed demo search ~11 s of its ~240)."""
        if not self.rows:
            first, parts = parts[0], parts[1:]
            self.rows, self.logits, self.mask = first.rows, first.logits, first.mask
            self.position, self.cache = first.position, first.cache
            if not parts:
                return
        assert self.mask is not None and self.position is not None and self.logits is not None
        masks = [self.mask, *(p.mask for p in parts)]
        width = max(m.shape[1] for m in masks)
        self.mask = torch.cat([_left_pad(m, width, 1) for m in masks])
        for i, layer in enumerate(self.cache.layers):
            layer.keys = torch.cat([_left_pad(layer.keys, width, 2),
                                    *(_left_pad(p.cache.layers[i].keys, width, 2) for p in parts)])
            layer.values = torch.cat([_left_pad(layer.values, width, 2),
                                      *(_left_pad(p.cache.layers[i].values, width, 2) for p in parts)])
        self.position = torch.cat([self.position, *(p.position for p in parts)])
        self.logits = torch.cat([self.logits, *(p.logits for p in parts)])
        self.rows += [r for p in parts for r in p.rows]

    def _step(self) -> bool:
        """Sample one token for every row and run one forward pass; whether a call was completed (delivered)."""
        assert self.logits is not None and self.mask is not None and self.position is not None
        engine = self.engine
        nxt = engine._sample(self.logits, [r.params for r in self.rows], [r.gen for r in self.rows])
        completed = []
        for b, row in enumerate(self.rows):
            if row.done:
                continue
            tok = int(nxt[b])
            if bool((engine.eos_ids == tok).any()):
                row.reason, row.done = "stop", True
            else:
                row.tokens.append(tok)
                row.done = len(row.tokens) >= row.params.max_new_tokens
            if row.done:
                row.call.results[row.index] = Generation(
                    text=engine.tokenizer.decode(row.tokens, skip_special_tokens=True),
                    prompt_tokens=row.prompt_tokens, completion_tokens=len(row.tokens), finish_reason=row.reason)
                row.call.left -= 1
                if row.call.left == 0:
                    completed.append(row.call)
        self.logits = None
        keep = self._compact(nxt)
        if keep is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
            self.position = self.position + 1
            engine.decode_steps += 1
            out = engine.model(input_ids=keep[:, None], attention_mask=self.mask, position_ids=self.position,
                               past_key_values=self.cache, use_cache=True, logits_to_keep=1)
            self.logits = out.logits[:, -1, :].float()
        for call in completed:
            self._deliver(call)
        return bool(completed)

    def _compact(self, nxt: torch.Tensor | None = None) -> torch.Tensor | None:
        """Drop finished rows (finished ones ride along while fewer than `MIN_ROWS` are live) and the cache
        columns no row attends to any more; `nxt` (this step's tokens) cut to the kept rows, None when no row is
        live (the batch is then empty)."""
        from idea_mcts.engines.transformers import MIN_ROWS

        live = [b for b, r in enumerate(self.rows) if not r.done]
        if not live:
            self.rows, self.cache, self.mask, self.position, self.logits = [], None, None, None, None
            return None
        keep = live
        if len(keep) < MIN_ROWS:
            keep = sorted(keep + [b for b in range(len(self.rows)) if b not in live][: MIN_ROWS - len(keep)])
        assert self.mask is not None and self.position is not None
        if len(keep) < len(self.rows):
            idx = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(idx)
            self.mask, self.position = self.mask[idx], self.position[idx]
            if self.logits is not None:
                self.logits = self.logits[idx]
            if nxt is not None:
                nxt = nxt[idx]
            self.rows = [self.rows[b] for b in keep]
        unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # leading columns masked in every row
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
        return nxt


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` padded with zeros on the left of `dim` to `width`."""
    short = width - t.shape[dim]
    if not short:
        return t
    shape = list(t.shape)
    shape[dim] = short
    return torch.cat([t.new_zeros(shape), t], dim=dim)
