"""Engines with their own event loop (vLLM's async engine, the OpenAI client) when the search stops: the requests
in flight are aborted and their calls fail at once, instead of the stop waiting for the longest generation.
Here on a scripted server-like engine; tests/test_engine_vllm.py and tests/test_engine_openai.py check the real
vLLM and `vllm serve`."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from idea_mcts.engines.base import Generation, GenerationRequest, Prompt, TokenLogprobs
from idea_mcts.engines.event_loop import EventLoopEngine
from idea_mcts.errors import SearchStopped
from tests.scripted import ScriptedEngine
from tests.search_helpers import two_seed_search, until

EVOLVE = "Reply with the new instruction only"
"""Words of the evolver's prompts (idea_mcts/actions.py): the scripted server holds those requests."""


class SlowServer(EventLoopEngine):
    """A `concurrent` engine answering like `ScriptedEngine`, each evolver request after `hold` seconds."""

    backend = "scripted-server"
    concurrent = True

    def __init__(self, hold: float) -> None:
        super().__init__("scripted-server")
        self.hold = hold
        self.script = ScriptedEngine()
        self.started = self.cancelled = self.running = 0
        self._start_loop("scripted-server")

    async def _answer(self, request: GenerationRequest) -> Generation:
        held = EVOLVE in str(request.prompt)
        self.started += held
        self.running += 1
        try:
            if held:
                await asyncio.sleep(self.hold)
            return self.script.generate([request])[0]
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def _logprobs(self, prompt: Prompt, candidates: list[str]) -> TokenLogprobs:
        return self.script.next_token_logprobs([prompt], candidates)[0]

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        return self._batch([self._answer(r) for r in requests])

    def _next_token_logprobs(self, prompts: list[Prompt], candidates: list[str], top_k: int) -> list[TokenLogprobs]:
        return self._batch([self._logprobs(p, candidates) for p in prompts])

    def close(self) -> None:
        self._stop_loop()


@pytest.fixture
def server():
    engine = SlowServer(hold=60.0)
    yield engine
    engine.close()


def test_cancel_aborts_the_calls_in_flight_and_refuses_new_ones_until_lifted(server):
    outcome: dict[str, BaseException] = {}

    def call() -> None:
        try:
            server.generate([GenerationRequest(f"{EVOLVE}\n\nInstruction: Say hi.")] * 3)
        except BaseException as exc:  # noqa: BLE001 - the test looks at what ended the call
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    until(lambda: server.started == 3, "the requests to start")
    server.cancel()
    thread.join(timeout=10)  # the server would hold the requests for 60 s
    assert not thread.is_alive(), "the call went on waiting for its answers after cancel"
    assert isinstance(outcome["error"], SearchStopped)
    until(lambda: server.running == 0, "the requests to be aborted")
    assert server.cancelled == 3
    with pytest.raises(SearchStopped):  # a call that comes while the search stops is refused
        server.generate([GenerationRequest("Say hi.")])
    server.cancel(False)
    assert server.generate([GenerationRequest("Say hi.")])[0].text == "answer to: Say hi."
    assert server.running == 0


def test_a_stopped_search_aborts_its_server_requests_instead_of_waiting_for_them(server, caplog):
    """Ctrl-C (a KeyboardInterrupt in the node log) while every tree's rewrites are in flight on a server that
    holds them for a minute: the search returns at once, every held request aborted, every task of the search
    ended (asyncio reports none destroyed while pending, no exception left unread), and the engine serves the
    next search."""

    def interrupt(nodes):
        until(lambda: server.started > 0, "a rewrite to reach the server")  # sent before this barrier fired
        raise KeyboardInterrupt

    outcome: dict[str, BaseException] = {}

    def search() -> None:
        try:
            two_seed_search(server, on_nodes=interrupt)
        except BaseException as exc:  # noqa: BLE001 - the test looks at whatever ends the search
            outcome["error"] = exc

    thread = threading.Thread(target=search, daemon=True)
    thread.start()
    thread.join(timeout=30)  # the server would hold the rewrites for 60 s
    assert not thread.is_alive(), "the stopped search waited for the server's requests in flight"
    assert isinstance(outcome["error"], KeyboardInterrupt)
    outcome.clear()  # the exception's traceback holds the search's frames
    gc.collect()
    left = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not left, left
    until(lambda: server.running == 0, "the held requests to be aborted")
    assert server.cancelled == server.started
    server.hold = 0.0
    assert len(two_seed_search(server)[1]) == 2
