"""A real search on the embedded default model (SmolLM2-135M-Instruct): 2 seeds, small budget."""

import json

import pytest
from datasets import load_from_disk

from idea_mcts.cli import main

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


def test_real_smollm2_search_two_seeds(tmp_path, smollm2_dir):
    out = tmp_path / "out"
    rc = main(["evolve", "--config", "configs/demo-transformers.yaml", "--output_dir", str(out), "--no_progress",
               f"engines.default.model={smollm2_dir}", "data.max_seeds=4", "export.mode=all",
               "roles.evolver.max_new_tokens=40", "roles.responder.max_new_tokens=40", "search.iterations=2",
               "search.expand_width=3", "search.max_depth=1", "search.drop_answers=true", "search.prefill_parent=true",
               "reward.novelty=2.0"])
    assert rc == 0
    nodes = [json.loads(line) for line in (out / "trees.jsonl").read_text().splitlines()]
    report = json.loads((out / "run.json").read_text())
    roots = [n for n in nodes if n["depth"] == 0]
    evolved = [n for n in nodes if n["depth"] > 0]
    assert len(roots) == 4 and evolved
    # real judgments: expected scores strictly inside [1, 6], rewards that differ
    for n in nodes:
        for k in ("quality", "complexity"):
            assert n[k] is None or 1.0 < n[k] < 6.0
    # a node without a reward names why (a failed scorer, a refused response); the others' rewards differ
    assert all(n["failures"] for n in nodes if n["reward"] is None)
    assert len({round(n["reward"], 6) for n in nodes if n["reward"] is not None}) > 1
    seeds_text = {n["instruction"] for n in roots}
    assert all(n["instruction"] not in seeds_text for n in evolved)
    ds = load_from_disk(str(out / "dataset"))
    # every scored evolved node is a row (export.mode=all; the paper mode's path sampling is tested on scripted
    # engines: with the elimination filter, SmolLM2's short rollouts often end before a terminal node)
    assert len(ds) >= 1 and set(ds["node_id"]) == {n["node_id"] for n in evolved if n["reward"] is not None}
    assert report["engines"].keys() == {"default", "embed"}  # one LLM served every LLM role; MiniLM the novelty
    # the demo's diversity term varies (a node left unscored, e.g. for a refused response, has none)
    assert len({round(n["novelty"], 6) for n in nodes if n["novelty"] is not None}) > 1
    assert set(report["filtered"]) >= {"template_leak", "unchanged", "empty"}
    # every rewrite sent is a node, a counted failure, or one of a root its evaluation made terminal (overlap_root)
    assert report["usage"]["evolver"]["requests"] == (len(evolved) + report["parse_failures"]["evolver"]
                                                      + report["counts"]["discarded_rewrites"])


def test_scoring_prompts_give_the_same_bits_whatever_their_batch(smollm2_dir):
    """A judge prompt's logprobs do not depend on the other prompts of the call. On a CPU the matmul kernels change
    with rows x tokens of a forward pass: batched with 23 prompts of its width, a prompt's logprobs differed in the
    last bits from those of a call with one other prompt (measured on SmolLM2 before long prompts ran alone)."""
    from idea_mcts.config import EngineConfig
    from idea_mcts.engines import build_engine
    from idea_mcts.engines.transformers import SOLO_PREFILL_TOKENS, _bucket

    engine = build_engine(EngineConfig(model=str(smollm2_dir), dtype="float32", max_model_len=1024))
    words = ["the", "sea", "poem", "write", "about", "sky", "blue", "why", "explain", "three", "tips", "healthy",
             "Python", "code"]
    prompts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(300 + i % 3)) + "\nScore: "
               for i in range(24)]
    lengths = [len(engine._encode(p, 1)) for p in prompts]
    assert min(lengths) >= SOLO_PREFILL_TOKENS and len({_bucket(n) for n in lengths}) == 1  # one padded width
    digits = [str(d) for d in range(1, 7)]
    many = engine.next_token_logprobs(prompts, digits)
    for i in (0, 5):
        pair = engine.next_token_logprobs([prompts[i], prompts[i + 1]], digits)
        assert pair[0].logprobs == many[i].logprobs and pair[1].logprobs == many[i + 1].logprobs


def test_judge_prompts_compute_their_scored_examples_once(smollm2_dir):
    """The `general` judges' prompts (five scored examples as earlier chat turns, ~700 tokens) reuse the KV cache
    of those turns: the expected scores are a whole forward pass's to rounding, the same bits in any order."""
    import torch

    from idea_mcts.config import EngineConfig
    from idea_mcts.engines import build_engine
    from idea_mcts.scoring import DIGITS, complexity_prompt, expected_score, quality_prompt

    engine = build_engine(EngineConfig(model=str(smollm2_dir), dtype="float32", max_model_len=1024))
    tasks = ["Say hi.", "Write a Python function that reverses a string using recursion and handles unicode.",
             "Plan a one-day sightseeing trip in a city of your choice on a budget of 50 euros."]
    prompts = [complexity_prompt("general", t) for t in tasks] + [
        quality_prompt("general", t, "Here is my answer: " + t.lower()) for t in tasks]
    digits = list(DIGITS)
    first = engine.next_token_logprobs(prompts, digits)
    again = engine.next_token_logprobs(prompts[::-1], digits)[::-1]
    assert [r.logprobs for r in again] == [r.logprobs for r in first]
    assert len(engine._prefixes) == 2  # the complexity judge's examples and the quality judge's
    ids = engine._candidate_ids[tuple(digits)]
    with torch.inference_mode():
        for p, r in zip(prompts, first, strict=True):
            seq = engine._encode(p, 1)
            whole = torch.log_softmax(engine.model(input_ids=torch.tensor([seq])).logits[0, -1].float(), -1)
            want = {c: float(whole[t]) for c, t in ids.items()}
            assert r.logprobs == pytest.approx(want, abs=1e-4)
            assert expected_score(r.logprobs) == pytest.approx(expected_score(want), abs=1e-4)
