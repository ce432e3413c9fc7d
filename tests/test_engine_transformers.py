import pytest

from idea_mcts.config import EngineConfig
from idea_mcts.engines import EnginePool, GenerationRequest, SamplingParams, build_engine
from idea_mcts.errors import UsageError


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return build_engine(EngineConfig(model=str(tiny_model_dir), max_batch_size=3, max_model_len=256))


def chat(text):
    return [{"role": "user", "content": text}]


def test_per_request_seed_is_batch_invariant(engine):
    target = GenerationRequest(chat("Write a poem about the sea."), SamplingParams(12, 1.0, 0.9, seed=7))
    others = [GenerationRequest(chat(f"Explain {w} in detail please."), SamplingParams(12, 1.0, seed=i))
              for i, w in enumerate(["rain", "the sky", "a fruit that is blue", "x"])]
    alone = engine.generate([target])[0]
    mixed = engine.generate([others[0], others[1], target, others[2], others[3]])[2]  # other micro-batches
    assert alone.text == mixed.text and alone.completion_tokens == mixed.completion_tokens
    reseeded = engine.generate([GenerationRequest(target.prompt, SamplingParams(12, 1.0, 0.9, seed=8))])[0]
    assert reseeded.text != alone.text  # the seed matters (random weights: near-uniform sampling)


def test_lengths_counts_and_order(engine):
    reqs = [GenerationRequest(chat("a" * n), SamplingParams(n_new, 0.0)) for n, n_new in [(50, 3), (1, 9), (20, 5)]]
    out = engine.generate(reqs)
    assert all(0 < g.completion_tokens <= r.params.max_new_tokens or g.finish_reason == "stop"
               for g, r in zip(out, reqs, strict=True))
    # results come back in request order although micro-batches are length-sorted
    assert out[0].prompt_tokens > out[2].prompt_tokens > out[1].prompt_tokens
    assert engine.stats.calls >= 1 and engine.stats.requests >= 3


def test_greedy_is_deterministic_and_continuation_differs(engine):
    p = chat("Rate this.")
    a = engine.generate([GenerationRequest(p, SamplingParams(6, 0.0))])[0]
    b = engine.generate([GenerationRequest(p, SamplingParams(6, 0.0, seed=99))])[0]
    assert a.text == b.text
    cont = [*p, {"role": "assistant", "content": "Score: "}]
    assert engine.render(cont).endswith("<|im_start|>assistant\nScore: ")
    assert engine.render(p).endswith("<|im_start|>assistant\n")


def test_next_token_logprobs_every_candidate_from_the_full_distribution(engine):
    digits = [str(i) for i in range(1, 7)]
    full = engine.next_token_logprobs([chat("Score: ")], digits, top_k=10_000)[0]
    assert set(full.logprobs) == set(digits) and all(v <= 0 for v in full.logprobs.values())
    # the engine holds the whole distribution: top_k does not drop digits (DEITA's softmax is over all six)
    top1 = engine.next_token_logprobs([chat("Score: ")], digits, top_k=1)[0]
    assert top1.logprobs == pytest.approx(full.logprobs)
    assert engine.logprob_method == "full"
    with pytest.raises(UsageError, match="no single token for '12345'"):
        engine.next_token_logprobs([chat("x")], ["12345"], top_k=5)


def test_pool_shares_one_model_between_roles(tiny_model_dir):
    pool = EnginePool({"m": EngineConfig(model=str(tiny_model_dir))})
    assert pool.get("m") is pool.get("m")
    assert len(pool.loaded()) == 1


def test_unreadable_model_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a readable model directory"):
        build_engine(EngineConfig(model=str(tmp_path)))


def test_generation_micro_batches_mix_prompt_widths(engine, monkeypatch):
    """Prompts of different padded widths decode as one micro-batch (a barrier of the search holds a few requests
    of many widths; one micro-batch per width multiplied the decode steps); each text is the one it gets alone."""
    from idea_mcts.engines.transformers import _bucket

    reqs = [GenerationRequest(chat("Tell me. " * n), SamplingParams(4, 1.0, seed=n)) for n in (1, 12, 30)]
    assert len({_bucket(len(engine._encode(r.prompt, 4))) for r in reqs}) == 3
    alone = [engine.generate([r])[0].text for r in reqs]
    batches: list[int] = []
    real = engine._decode
    monkeypatch.setattr(engine, "_decode", lambda seqs, params: batches.append(len(seqs)) or real(seqs, params))
    assert [g.text for g in engine.generate(reqs)] == alone
    assert batches == [3]


def test_decode_steps_count_the_batched_forward_passes(engine):
    """`decode_steps` (read by bench/search_throughput.py) counts one step per batched forward pass after the
    prefill: requests decoded together cost the steps of the longest of them, not the sum."""
    reqs = [GenerationRequest(chat(f"Count {n}."), SamplingParams(n, 1.0, seed=n)) for n in (3, 9)]
    before = engine.decode_steps
    gens = engine.generate(reqs)
    # the prefill gives the first token; a row ending on its limit needs one step per further token, a row ending
    # on an end-of-sequence token one more step (the one that sampled it)
    need = [g.completion_tokens - (g.finish_reason == "length") for g in gens]
    assert engine.decode_steps - before == max(need)
    before = engine.decode_steps
    for r in reqs:
        engine.generate([r])
    assert engine.decode_steps - before == sum(need)


def test_scoring_prompts_reuse_the_kv_cache_of_their_shared_turns(tiny_model_dir):
    """Long chat scoring prompts (run alone on a CPU) that share their earlier turns (a judge's scored examples)
    compute those turns once: every prompt's logprobs equal a whole forward pass of it (to rounding), and are the
    same bits whichever prompt came first and whatever was scored before."""
    import torch

    from idea_mcts.engines.transformers import PREFIX_CACHE_TOKENS, SOLO_PREFILL_TOKENS

    engine = build_engine(EngineConfig(model=str(tiny_model_dir), max_model_len=1024))
    shots = []
    for i in range(6):
        shots += [chat(f"Rate the sea poem number {i} about the sky and the rain, why it is blue " * 3)[0],
                  {"role": "assistant", "content": f"Score: {i % 6 + 1}"}]
    prompts = [[*shots, *chat(f"Rate this: {w} " * 4), {"role": "assistant", "content": "Score: "}]
               for w in ("a fruit", "the sky", "x")]
    shared = len(engine._encode(shots, 0))
    assert shared >= PREFIX_CACHE_TOKENS and all(len(engine._encode(p, 1)) >= SOLO_PREFILL_TOKENS for p in prompts)
    digits = [str(d) for d in range(1, 7)]
    passes = []
    hook = engine.model.register_forward_pre_hook(lambda _m, _a, kw: passes.append(kw["input_ids"].shape[1]),
                                                  with_kwargs=True)
    try:
        first = engine.next_token_logprobs(prompts, digits)
        again = engine.next_token_logprobs(prompts[::-1], digits)[::-1]
        engine.reset_prefix_cache()  # forgotten: computed again by the next call
        fresh = engine.next_token_logprobs(prompts, digits)
    finally:
        hook.remove()
    # the shared turns once, alone; then only each prompt's own tokens; again once after the reset
    n = len(prompts)
    assert passes[0] >= PREFIX_CACHE_TOKENS and len(passes) == 2 + 3 * n
    assert passes[1 + 2 * n] == passes[0] and max(passes[1:1 + 2 * n] + passes[2 + 2 * n:]) < passes[0]
    assert [r.logprobs for r in again] == [r.logprobs for r in first] == [r.logprobs for r in fresh]
    ids = engine._candidate_ids[tuple(digits)]
    with torch.inference_mode():
        for p, r in zip(prompts, first, strict=True):
            seq = engine._encode(p, 1)
            whole = torch.log_softmax(engine.model(input_ids=torch.tensor([seq])).logits[0, -1].float(), -1)
            assert r.prompt_tokens == len(seq)
            assert r.logprobs == pytest.approx({c: float(whole[t]) for c, t in ids.items()}, abs=1e-4)
