"""Engines whose requests are coroutines on a private event loop (the OpenAI client, vLLM's async engine).

The loop runs in a daemon thread, so the batched sync API of `Engine` works from the search's worker threads, from
plain scripts and from code that already runs an event loop (notebooks) alike. A batch runs its requests
concurrently (`gather_or_cancel`); when the search stops (`cancel`), the batches in flight are cancelled on the
loop, which aborts their requests (vLLM frees their sequences, the HTTP client closes their connections), and
their callers fail at once with `SearchStopped` instead of waiting for the answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

from idea_mcts.engines.base import Engine
from idea_mcts.errors import SearchStopped

T = TypeVar("T")


async def gather_or_cancel(coros: Sequence[Awaitable[T]]) -> list[T]:
    """`asyncio.gather` that cancels the rest of the batch when one request fails or the batch is cancelled."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


class EventLoopEngine(Engine):
    """An `Engine` that runs its requests as coroutines on its own event loop thread (`_start_loop`)."""

    def _start_loop(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._batches: set[concurrent.futures.Future[Any]] = set()
        """Batches in flight, cancelled by `cancel`."""
        self._cancelled = False
        self._cancel_lock = threading.Lock()

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop and wait for it (start-up and shut-down: never cancelled)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _batch(self, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
        """Run one batch of requests concurrently on the loop and wait for every answer; `SearchStopped` when the
        search stops (`cancel`) before the last one."""
        with self._cancel_lock:
            if self._cancelled:
                for c in coros:
                    c.close()
                raise SearchStopped("the search stopped before this call reached the engine")
            batch = asyncio.run_coroutine_threadsafe(gather_or_cancel(coros), self._loop)
            self._batches.add(batch)
        try:
            return batch.result()
        except concurrent.futures.CancelledError:
            raise SearchStopped("the search stopped: this call's requests were aborted") from None
        finally:
            with self._cancel_lock:
                self._batches.discard(batch)

    def cancel(self, on: bool = True) -> None:
        """The search has stopped: abort every batch in flight, and fail every batch that comes until
        `cancel(False)`, with `SearchStopped`."""
        with self._cancel_lock:
            self._cancelled = on
            batches = list(self._batches) if on else []
        for batch in batches:
            batch.cancel()

    def _stop_loop(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
