"""Optional scorers on real models: embedding novelty (the embedded all-MiniLM-L6-v2) and an HF
sequence-classification reward model (a tiny random one built here)."""

import pytest

from idea_mcts.config import EngineConfig, RewardConfig, RoleConfig
from idea_mcts.engines import build_engine
from idea_mcts.roles import RoleClient
from idea_mcts.scoring import Origin, Reward


@pytest.fixture(scope="module")
def minilm():
    return build_engine(EngineConfig(backend="embedding", model="embedded:all-minilm-l6-v2"))


def test_embedding_engine_normalised(minilm):
    a, b, c = minilm.embed(["How do I bake bread?", "How can I bake a loaf of bread?", "Explain tensor algebra."])
    assert sum(x * x for x in a) == pytest.approx(1.0, abs=1e-4)
    sim = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731
    assert sim(a, b) > sim(a, c) + 0.2  # paraphrases are closer than unrelated text


def test_embedding_does_not_depend_on_its_batch(minilm):
    """Issue 36: a text's embedding has the same bits alone, in a call with others, anywhere in the call. Batched
    and padded, most texts' embeddings differed in the last digits between calls (36 of the 44 texts of
    bench/embed_cost.py, alone vs in one call)."""
    texts = ["Say hi.", "How do I bake bread?", "Explain tensor algebra to a first-year student in three short "
             "paragraphs, with one worked example of a rank-2 tensor.", "Name a fruit.",
             "Write a haiku about the sea at night.", "Prove that sqrt(2) is irrational."]
    together = minilm.embed(texts)
    assert [minilm.embed([t])[0] for t in texts] == together
    assert minilm.embed(texts[::-1]) == together[::-1]
    assert minilm.embed([texts[2], texts[0], texts[2]]) == [together[2], together[0], together[2]]


def test_novelty_against_the_seeds_and_the_lineage(minilm):
    """1 - the highest cosine similarity to the seeds (a root: to the other seeds) and to the node's ancestors,
    checked against the cosines computed here from the embeddings."""
    reward = Reward(RewardConfig(quality=0, complexity=0, diversity=0, novelty=2.0),
                    embedder=RoleClient("embedder", minilm, RoleConfig(), 0))
    assert reward.score(["How do I bake bread?"], [""], ["k0"])[0].reward == pytest.approx(2.0)  # nothing to compare
    seeds = ["How do I bake bread?", "Explain tensor algebra."]
    reward.refer_to(["s0", "s1"], seeds)
    texts = ["How do I bake bread?", "Explain tensor algebra.", "Prove that sqrt(2) is irrational.",
             "How can I bake a loaf of rye bread at home with a sourdough starter?"]
    lineage = ("How do I bake bread?", "How can I bake a loaf of rye bread?")
    root, dup, new, child = reward.score(texts, [""] * 4, ["s0/0", "s1/4", "s1/5", "s0/7"],
                                         [Origin("s0"), Origin("s1", ("Explain tensor algebra.",)),
                                          Origin("s1", ("Explain tensor algebra.",)), Origin("s0", lineage)])
    vec = dict(zip(seeds + texts + list(lineage), minilm.embed(seeds + texts + list(lineage)), strict=True))
    cos = lambda a, b: sum(x * y for x, y in zip(vec[a], vec[b], strict=True))  # noqa: E731
    assert root.scores["novelty"] == pytest.approx(1 - cos(texts[0], seeds[1]), abs=1e-5)  # not with itself
    assert dup.scores["novelty"] == pytest.approx(0.0, abs=1e-5)  # the same as a seed
    assert new.scores["novelty"] > 0.5
    assert new.scores["novelty"] == pytest.approx(1 - max(cos(texts[2], s) for s in seeds), abs=1e-5)
    nearest = max(cos(texts[3], t) for t in [*seeds, *lineage])
    assert cos(texts[3], lineage[1]) == nearest > max(cos(texts[3], s) for s in seeds)  # its parent is nearest
    assert child.scores["novelty"] == pytest.approx(1 - nearest, abs=1e-5)
    assert child.reward == pytest.approx(2.0 * child.scores["novelty"])


def test_sequence_classification_reward_model(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = build_engine(EngineConfig(backend="sequence_classification", model=str(tmp_path)))
    reward = Reward(RewardConfig(quality=0, complexity=0, diversity=0, reward_model=0.5),
                    reward_model=RoleClient("reward_model", engine, RoleConfig(), 0))
    out = reward.score(["Say hi.", "Write a long essay."], ["Hi!", "No."], ["a", "b"])
    raw = engine.score([[{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]])[0]
    assert out[0].scores["reward_model"] == pytest.approx(raw, abs=1e-5)
    assert out[0].reward == pytest.approx(0.5 * raw, abs=1e-5)
    assert out[0].scores["reward_model"] != out[1].scores["reward_model"]
