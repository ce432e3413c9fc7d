"""The request dispatcher of the pipelined search: every tree advances on its own, requests of every tree and
role stream to their engines, which see them in batches.

Trees (and the sub-strands a tree forks, e.g. its scorers) run as asyncio coroutines. A strand never calls an
engine itself: it `submit`s requests (one per prompt, tagged with its role client) and `wait`s for them. Pending
requests are grouped by (role client, call kind, call arguments) and handed to the role's engine as one batched
call, in a worker thread, so the event loop keeps the other trees moving while an engine works:

- engines that serve one call at a time (transformers: `Engine.concurrent` false) get a batch when **every live
  strand is waiting** (a barrier, not a timer): then the batch holds everything any tree could ask for at that
  point, and a run's batches — so its results — do not depend on timing. An engine that is still busy takes its
  queue at the next barrier after it is free. Roles on different engines overlap.
- engines with continuous batching (in-process vLLM's async engine, OpenAI-compatible servers: `concurrent`
  true) get each strand's requests as soon as it waits (each group blocks a worker thread while in flight: each
  engine has `Engine.max_in_flight` threads of its own, so a busy engine never holds back another's calls); the
  engine's scheduler batches whatever is in flight.
- `stepped` engines (the transformers engine: continuous batching kept deterministic) get each strand's requests
  as soon as it waits too, but admit them into their decode batch only when the dispatcher `resume`s them: at a
  barrier where nothing else can answer (no other engine busy, every call sent to them inside them, every one of
  them paused). Their answers are held and handed out in the order the calls were sent, once each of them has
  paused again, so strands resume in the same order in every run.

`max_calls`, progress and the node log stay with the search (`idea_mcts.search`), which charges requests before
it submits them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from idea_mcts.engines.base import STEP_HOOK, Engine
from idea_mcts.roles import RoleClient

logger = logging.getLogger(__name__)

T = TypeVar("T")

STEPPED_THREADS = 1 << 16
"""Upper bound of the stepped engines' worker threads (in practice: about one per live strand)."""


@dataclass
class _Ticket:
    """One `wait`: how many of its requests are still unanswered."""

    remaining: int


@dataclass
class _Group:
    """Pending requests of one role client for one kind of call with the same arguments."""

    client: RoleClient
    method: str
    args: tuple[Any, ...]
    items: list[Any] = field(default_factory=list)
    futures: list[asyncio.Future[Any]] = field(default_factory=list)


class Dispatcher:
    """Collects requests from the strands of a running search and batches them onto their engines."""

    def __init__(self, on_barrier: Callable[[], None] | None = None, max_threads: int = 64) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_barrier = on_barrier
        """Called at every barrier (every strand waits), before batches go out: the search writes the nodes
        completed since the last one to its log there, so logging follows the waves of work, not each tree."""
        self.groups: dict[tuple[int, str, tuple[Any, ...]], _Group] = {}
        self.live = 0
        """Strands that may still submit requests (trees, and the sub-strands a tree forks)."""
        self.waiting = 0
        """Live strands blocked in `wait`."""
        self.busy: set[int] = set()
        """Engines (by id) running a batch, for engines that serve one call at a time."""
        self.in_flight: dict[str, int] = {}
        """Requests handed to each role's engine and not yet answered (for tests and benchmarks)."""
        self.peak_overlap = 0
        """Most roles with requests in flight at the same moment."""
        self.server_calls = 0
        """Groups in flight on `concurrent` engines."""
        self.servers: dict[int, Engine] = {}
        """The `concurrent` engines (by id) that have had calls."""
        self.stepped: dict[int, Engine] = {}
        """The `stepped` engines (by id) that have had calls."""
        self.unreturned: dict[int, int] = {}
        """Groups sent to each stepped engine whose call has not returned."""
        self._held: list[tuple[int, list[tuple[_Group, list[Any] | None, BaseException | None]]]] = []
        """Returned calls of stepped engines, by send order, not yet handed to their strands."""
        self._sent = 0
        self.stopped = False
        """`on_barrier` failed (the node log cannot be written) or was interrupted (Ctrl-C, SIGTERM): the search
        is being torn down (`close`), and callbacks still queued on the loop must not log or dispatch again."""
        self._tickets: dict[asyncio.Future[Any], _Ticket] = {}
        self._parked: list[asyncio.Future[bool]] = []
        self._signals: dict[asyncio.Future[bool], int] = {}
        """Signals not fired yet, with how many strands wait for each."""
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="engine")
        """The jobs of one-call-at-a-time engines (one job per engine at a time)."""
        self._server_pools: dict[int, ThreadPoolExecutor] = {}
        """A pool per `concurrent` engine (by id), of its `max_in_flight` threads: calls to one engine never wait
        for a thread that a call to another holds (one shared pool let a saturated server starve the others)."""
        self._step_pool = ThreadPoolExecutor(max_workers=STEPPED_THREADS, thread_name_prefix="stepped")
        """A thread per call in flight on a stepped engine: the engine resumes only when every call sent to it is
        inside it, so a call must never wait for a free thread (a capped pool could deadlock)."""
        self._closed = False
        """`close` ran (it runs again when an interrupted search's coroutine is collected, maybe during the next
        search on the same engines: that must not cancel its calls)."""

    # -- strands ---------------------------------------------------------------------------------------
    async def run_strands(self, coros: Sequence[Awaitable[T]]) -> list[T]:
        """Run `coros` as concurrent strands. The caller counts as waiting until the last of them ends (at
        that very moment it is ready again, before it resumes). Exceptions propagate like `asyncio.gather`'s."""
        if not coros:
            return []
        pending = [len(coros)]
        self.live += len(coros)
        self.waiting += 1

        async def strand(c: Awaitable[T]) -> T:
            try:
                return await c
            finally:
                self.live -= 1
                pending[0] -= 1
                if not pending[0]:
                    self.waiting -= 1
                self._barrier()

        return list(await asyncio.gather(*(strand(c) for c in coros)))

    def start_strand(self) -> None:
        """A top-level strand (a tree) begins."""
        self.live += 1

    def end_strand(self) -> None:
        """A top-level strand ends: the others may now all be waiting."""
        self.live -= 1
        self._barrier()

    async def park(self) -> bool:
        """Pause this strand, counting as waiting, until another strand `unpark`s (e.g. gives back budget this
        one is waiting for): True then. False when every live strand waits and nothing is pending, in flight or
        parked-and-woken: nothing can wake it any more."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._parked.append(fut)
        self.waiting += 1
        self._barrier()
        return await fut

    def unpark(self) -> None:
        """Wake every parked strand. Each stops counting as waiting now (as an answered request does), so no
        barrier fires before it has resumed."""
        parked, self._parked = self._parked, []
        for fut in parked:
            self.waiting -= 1
            fut.set_result(True)

    # -- strands waiting for strands -------------------------------------------------------------------
    def signal(self) -> asyncio.Future[bool]:
        """A one-shot signal from one strand to others: they `wait_signal`, it `fire`s."""
        sig: asyncio.Future[bool] = self.loop.create_future()
        self._signals[sig] = 0
        return sig

    async def wait_signal(self, sig: asyncio.Future[bool]) -> bool:
        """Block this strand until another `fire`s `sig` (its value), counting as waiting meanwhile: the strand
        that will fire it may itself need a barrier (a one-call-at-a-time or stepped engine) to get there."""
        if sig.done():
            return sig.result()
        self._signals[sig] += 1
        self.waiting += 1
        try:
            self._barrier()
            return await sig
        finally:
            if not sig.done():  # cancelled while waiting (a stopped search)
                self._signals[sig] -= 1
                self.waiting -= 1

    def fire(self, sig: asyncio.Future[bool], value: bool) -> None:
        """Set `sig`. Its waiters stop counting as waiting at once (as an answered request's strand does), so no
        barrier fires before they have resumed."""
        self.waiting -= self._signals.pop(sig, 0)
        sig.set_result(value)

    # -- requests --------------------------------------------------------------------------------------
    def submit(self, client: RoleClient, method: str, item: Any, *args: Any) -> asyncio.Future[Any]:
        """Queue one request (`item`: what the batched client method takes per request) and return its
        future; nothing is sent until a strand waits."""
        key = (id(client), method, args)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(client, method, args)
        fut: asyncio.Future[Any] = self.loop.create_future()
        group.items.append(item)
        group.futures.append(fut)
        return fut

    async def wait(self, futures: Sequence[asyncio.Future[T]]) -> list[T]:
        """Block this strand until its requests are answered. The strand stops counting as waiting the moment
        its last answer is set (not when it resumes), so a barrier never fires on answers not yet read."""
        ticket = _Ticket(len(futures))
        for fut in futures:
            self._tickets[fut] = ticket
        self.waiting += 1
        try:
            self._send_concurrent()
            self._barrier()
            return list(await asyncio.gather(*futures))
        finally:
            if ticket.remaining:  # cancelled or failed before every answer came
                self.waiting -= 1
                for fut in futures:
                    self._tickets.pop(fut, None)

    async def call(self, client: RoleClient, method: str, items: Sequence[Any], *args: Any) -> list[Any]:
        """Submit one request per item and wait for all of them."""
        if not items:
            return []
        return await self.wait([self.submit(client, method, item, *args) for item in items])

    def close(self) -> None:
        """End the search's engine work (idempotent). Calls still inside a stepped or concurrent engine (a strand
        failed, or Ctrl-C/SIGTERM stopped the search) are dropped (a server's requests aborted), as are those of a
        thread that reaches the engine only now: nothing the stopped search did not see is cached, so a resume
        redoes what an uninterrupted run would, and a stop does not wait for the longest generation in flight.
        When this returns no worker thread is left, and the caller may close what they write to (the request
        cache's SQLite index: closed under a live thread, it crashed the process)."""
        if self._closed:
            return
        self._closed = True
        engines = [*self.stepped.values(), *self.servers.values()]
        for engine in engines:
            engine.cancel()
        try:
            for pool in [self._pool, self._step_pool, *self._server_pools.values()]:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            for engine in engines:
                engine.cancel(False)

    # -- batching --------------------------------------------------------------------------------------
    def _send_concurrent(self) -> None:
        """Engines that keep many requests in flight (or take them as they come: `stepped`) get everything
        pending now."""
        for key, group in list(self.groups.items()):
            if group.client.engine.concurrent or group.client.engine.stepped:
                del self.groups[key]
                self._launch([group])

    def _barrier(self) -> None:
        """When every live strand waits, every free one-call-at-a-time engine gets its queue, and stepped engines
        resume when nothing else can answer."""
        if self.stopped or self._closed:
            return
        if self._held and self._stepped_settled():
            held, self._held = sorted(self._held, key=lambda h: h[0]), []
            for _, done in held:
                self._finish(done, None)
        if self.live and self.waiting < self.live:
            return
        if self.on_barrier is not None:
            try:
                self.on_barrier()
            except Exception as exc:  # e.g. the node log's disk is full: every waiting strand fails with it
                self.stopped = True  # (those waiting on calls in flight too: nothing may be logged after it)
                for fut in [*(f for g in self.groups.values() for f in g.futures), *self._tickets]:
                    if not fut.done():
                        fut.set_exception(exc)
                self.groups.clear()
                return
            except BaseException:  # Ctrl-C / SIGTERM in the log: the search is over, no more barriers
                self.stopped = True
                raise
        by_engine: dict[int, list[_Group]] = {}
        for key, group in list(self.groups.items()):
            engine = group.client.engine
            if engine.concurrent or engine.stepped:
                continue
            if id(engine) not in self.busy:
                del self.groups[key]
                by_engine.setdefault(id(engine), []).append(group)
        for engine_id, groups in by_engine.items():
            self.busy.add(engine_id)
            self._launch(groups, engine_id)
        if self._parked and not self.groups and not self.busy and not any(self.in_flight.values()):
            parked, self._parked = self._parked, []  # every strand waits and no answer can come: none is woken
            for fut in parked:
                self.waiting -= 1
                fut.set_result(False)
        if self.stepped and not self.busy and not self.server_calls and not self._held and self._stepped_settled():
            for engine in self.stepped.values():
                engine.resume()

    def _stepped_settled(self) -> bool:
        """Every stepped engine is paused and every call sent to it has either returned or is waiting in it."""
        for engine_id, engine in self.stepped.items():
            inside, paused = engine.step_state()
            if not paused or inside != self.unreturned[engine_id]:
                return False
        return True

    def _launch(self, groups: list[_Group], engine_id: int | None = None) -> None:
        """Run the groups' batched calls one after the other in a worker thread. A one-call-at-a-time engine's
        answers are all delivered together when its job ends, in group order: strands then resume in the same
        order in every run, whatever the threads' timing."""
        if self._closed:  # as the pools' own `submit` refuses after `close` shut them down
            raise RuntimeError("the search's dispatcher is closed: no engine call may start")
        for g in groups:
            self.in_flight[g.client.role] = self.in_flight.get(g.client.role, 0) + len(g.items)
        self.peak_overlap = max(self.peak_overlap, sum(1 for n in self.in_flight.values() if n))
        engine = groups[0].client.engine
        stepped = engine.stepped and engine_id is None
        if stepped:
            self.stepped.setdefault(id(engine), engine)
            self.unreturned[id(engine)] = self.unreturned.get(id(engine), 0) + len(groups)
        elif engine_id is None:
            self.servers.setdefault(id(engine), engine)
            self.server_calls += 1
        self._sent += 1
        order = self._sent

        def wake() -> None:
            self.loop.call_soon_threadsafe(self._barrier)

        def work() -> None:
            token = STEP_HOOK.set(wake) if stepped else None
            done = []
            try:
                for g in groups:
                    try:
                        done.append((g, _call(g), None))
                    except BaseException as exc:  # handed to the waiting strands, raised there
                        done.append((g, None, exc))
            finally:
                if token is not None:
                    STEP_HOOK.reset(token)
            if stepped:
                self.loop.call_soon_threadsafe(self._returned, id(engine), order, done)
            else:
                self.loop.call_soon_threadsafe(self._finish, done, engine_id, engine_id is None)

        if stepped:
            pool = self._step_pool
        elif engine_id is None:  # a concurrent engine: its own threads
            pool = self._server_pools.get(id(engine))
            if pool is None:
                pool = self._server_pools[id(engine)] = ThreadPoolExecutor(
                    max_workers=max(1, engine.max_in_flight), thread_name_prefix=f"server-{len(self._server_pools)}")
        else:
            pool = self._pool
        pool.submit(work)

    def _returned(self, engine_id: int, order: int,
                  done: list[tuple[_Group, list[Any] | None, BaseException | None]]) -> None:
        """A stepped engine's call returned: held until the engine pauses (see `_barrier`)."""
        if self._closed:  # the search is being torn down: nobody waits for it
            return
        self.unreturned[engine_id] -= len(done)
        self._held.append((order, done))
        self._barrier()

    def _finish(self, done: list[tuple[_Group, list[Any] | None, BaseException | None]],
                engine_id: int | None, server: bool = False) -> None:
        """Hand answers to their strands (`server`: the call went to a `concurrent` engine)."""
        if self._closed:  # the search is being torn down: nobody waits for them
            return
        if server:
            self.server_calls -= 1
        for group, result, error in done:
            self.in_flight[group.client.role] -= len(group.items)
            for i, fut in enumerate(group.futures):
                ticket = self._tickets.pop(fut, None)
                if ticket is not None:
                    ticket.remaining -= 1
                    if ticket.remaining == 0:
                        self.waiting -= 1
                if fut.done():
                    continue
                if error is not None:
                    fut.set_exception(error)
                else:
                    assert result is not None
                    fut.set_result(result[i])
        if engine_id is not None:
            self.busy.discard(engine_id)
            self._barrier()


class DirectCalls:
    """The `Calls` of code that is not a pipelined search (`idea-mcts score`, tests, benchmarks): each call goes
    straight to the client's batched method, strands run one after the other. Coroutines using it never
    suspend, so `run_sync` runs them without an event loop."""

    async def call(self, client: RoleClient, method: str, items: Sequence[Any], *args: Any) -> list[Any]:
        if not items:
            return []
        return _call(_Group(client, method, args, list(items)))

    async def run_strands(self, coros: Sequence[Awaitable[T]]) -> list[T]:
        return [await c for c in coros]


Calls = Dispatcher | DirectCalls
"""How scoring code reaches its role clients: through the search's dispatcher, or directly."""


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (one that only uses `DirectCalls`) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("run_sync: the coroutine suspended (it awaited something other than DirectCalls)")


def _call(g: _Group) -> list[Any]:
    """One batched call of the group's role client."""
    method: Callable[..., list[Any]] = getattr(g.client, g.method)
    if g.method == "generate":
        prompts, keys = zip(*g.items, strict=True)
        return method(list(prompts), list(keys))
    return method(list(g.items), *g.args)
