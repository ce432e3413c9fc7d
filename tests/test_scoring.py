import math

import pytest

from idea_mcts.config import RewardConfig, RoleConfig
from idea_mcts.engines.base import Engine, TokenLogprobs
from idea_mcts.roles import RoleClient
from idea_mcts.scoring import (
    DEITA_COMPLEXITY,
    Reward,
    complexity_prompt,
    expected_score,
    parse_tags,
    quality_prompt,
    tagger_prompt,
)


def test_expected_score_matches_hand_computation():
    # logits for "1".."6"; softmax by hand then dot with 1..6
    logits = [0.1, 0.5, 2.0, 1.0, -1.0, 0.0]
    z = sum(math.exp(x) for x in logits)
    hand = sum((i + 1) * math.exp(x) / z for i, x in enumerate(logits))
    # the engine returns log-softmax over the whole vocab: a constant shift, which must not matter
    lp = {str(i + 1): x - 7.3 for i, x in enumerate(logits)}
    assert expected_score(lp) == pytest.approx(hand)
    assert expected_score({"3": -0.2}) == pytest.approx(3.0)
    assert expected_score({"1": math.log(0.5), "6": math.log(0.5)}) == pytest.approx(3.5)


def test_expected_score_renormalises_over_present_digits_and_fails_without_any():
    assert expected_score({"2": -1.0, "4": -1.0, "x": 0.0}) == pytest.approx(3.0)
    assert expected_score({}) is None
    assert expected_score({"7": -0.1, " ": -0.2}) is None


@pytest.mark.parametrize(("text", "tags"), [
    ('[{"tag": "Writing", "explanation": "e"}, {"tag": "poetry", "explanation": "f"}]', ["writing", "poetry"]),
    ('Sure! [{"tag": "math"}, {"tag": "math"}] hope this helps', ["math"]),
    ('{"tag": "coding", "explanation": "x"}', ["coding"]),
    ('[{"tag": "a", "explanation": "x"}, {"tag": "b", "expl', ["a", "b"]),  # truncated JSON -> regex fallback
    ('["travel", "planning"]', ["travel", "planning"]),
])
def test_parse_tags_good(text, tags):
    assert parse_tags(text) == tags


@pytest.mark.parametrize("text", ["", "I cannot help with that.", "[]", '[{"name": "x"}]', "{not json"])
def test_parse_tags_bad(text):
    assert parse_tags(text) is None


def test_deita_preset_is_the_published_format():
    p = complexity_prompt("deita", "Say hi.")
    assert p == ("You are a helpful assistant. Please identify the complexity score of the following user query. "
                 "\n##Query: Say hi.  \n##Complexity: ")
    assert p == DEITA_COMPLEXITY.replace("{instruction}", "Say hi.")
    q = quality_prompt("deita", "Q?", "A.")
    assert q.endswith("#Question#:\nQ?\n#Response#:\nA. \n##Quality: ")
    general = complexity_prompt("general", "Say hi.")
    assert general[-1] == {"role": "assistant", "content": "Complexity score: "}
    instag, prefix = tagger_prompt("instag", "Say hi.")
    assert instag.endswith("User query: Say hi. ASSISTANT:") and prefix == ""


class FixedLogprobs(Engine):
    backend = "fixed"

    def __init__(self, answers):
        super().__init__("fixed")
        self.answers = list(answers)

    def _next_token_logprobs(self, prompts, candidates, top_k):
        return [TokenLogprobs(self.answers.pop(0)) for _ in prompts]


def test_reward_weighted_sum_and_failures_counted():
    engine = FixedLogprobs([{"5": 0.0}, {}, {"2": 0.0}, {"3": 0.0}])
    client = lambda role: RoleClient(role, engine, RoleConfig(), 0)  # noqa: E731
    reward = Reward(RewardConfig(quality=2.0, complexity=0.5), quality=client("quality"),
                    complexity=client("complexity"))
    out = reward.score(["i1", "i2"], ["r1", "r2"], ["k1", "k2"])
    assert out[0].scores == {"quality": 5.0, "complexity": 2.0} and out[0].reward == pytest.approx(11.0)
    assert out[1].scores == {"quality": None, "complexity": 3.0} and out[1].failures == ["quality"]
    assert out[1].reward == pytest.approx(1.5)  # the failed term is absent, not defaulted
    assert reward.failures == {"quality": 1}


def test_general_judge_prompts_keep_braces_of_the_instruction_as_they_are():
    """An instruction about templates ("{output}") must reach the judge unchanged, not filled with the response."""
    from idea_mcts.scoring import quality_prompt

    item = quality_prompt("general", "Explain what {output} does in this template.", "RESPONSE")[-2]["content"]
    assert "Explain what {output} does in this template." in item
    assert item.count("RESPONSE") == 1
