"""The evolution extraction and the elimination filter on recorded bad outputs of small evolvers (the examples
quoted in the issues, and rows read from SmolLM2 demo runs)."""

import math

import pytest

from idea_mcts.actions import EVOL_INSTRUCT, EXAMPLE_INSTRUCTIONS, GENERAL, Action
from idea_mcts.config import ExportConfig, RewardConfig, RoleConfig, SearchConfig
from idea_mcts.data import Seed
from idea_mcts.engines.base import TokenLogprobs
from idea_mcts.export import select_rows
from idea_mcts.filters import (
    VALIDITY_CANDIDATES,
    Eliminator,
    cut_off,
    extract_instruction,
    is_refusal,
    looks_like_request,
    p_yes,
)
from idea_mcts.roles import RoleClient
from idea_mcts.scoring import Reward
from idea_mcts.search import IdeaMCTS
from tests.scripted import ScriptedEngine

SEED = "Give three tips for staying healthy."


def eliminator(drop_answers: bool = False) -> Eliminator:
    return Eliminator([a.template_text() for a in GENERAL], drop_answers=drop_answers)


@pytest.mark.parametrize(("raw", "instruction"), [
    ("Here is a new, more demanding instruction: Give three tips for staying healthy that a nurse on night shifts "
     "can follow. #New Instruction#:",
     "Give three tips for staying healthy that a nurse on night shifts can follow."),
    ("Sure, I can assist you with that! Here's a new version of the instruction:\n\nGive three tips for staying "
     "healthy while travelling for work, each under 20 words.",
     "Give three tips for staying healthy while travelling for work, each under 20 words."),
    ("#New Instruction#: Give three evidence-based tips for staying healthy for office workers.",
     "Give three evidence-based tips for staying healthy for office workers."),
    ("New Instruction: List three tips for staying healthy in winter.\n\nAnswer: 1. Drink water.",
     "List three tips for staying healthy in winter."),
    ("**Rewritten Prompt:** Give three tips for staying healthy on a budget.",
     "Give three tips for staying healthy on a budget."),
    ('"Give three tips for staying healthy on a budget of 20 dollars a week."',
     "Give three tips for staying healthy on a budget of 20 dollars a week."),
    ("Explain why the sky is blue to a five-year-old, using an analogy.\n#Instruction#:\nExplain why the sky is "
     "blue.", "Explain why the sky is blue to a five-year-old, using an analogy."),
    ("Certainly. Give three tips for staying healthy as a student.", "Give three tips for staying healthy as a "
     "student."),
    ("Write a haiku about autumn.", "Write a haiku about autumn."),
    ("   ", ""),
    # a label glued in front (seen on landed main: "Explanation: Explain why the sky is blue." was kept)
    ("Explanation: Explain why the sky is blue.", "Explain why the sky is blue."),
    ("**Task:** Write a haiku about autumn rain.", "Write a haiku about autumn rain."),
    ("Instruction:\n\nWrite a haiku about autumn rain.", "Write a haiku about autumn rain."),
    ("Question: Why do leaves change colour in autumn?", "Why do leaves change colour in autumn?"),
    ("Task management tips: list five for students.", "Task management tips: list five for students."),
])
def test_extract_instruction_from_chatter_and_markers(raw, instruction):
    assert extract_instruction(raw) == instruction


@pytest.mark.parametrize(("raw", "reason"), [
    ("The old instruction: Give three tips for staying healthy.", "template_leak"),
    ("### Original Instruction# Give three tips for staying healthy.", "template_leak"),
    ("Rewrite the instruction below into a new, more demanding version of the tips.", "template_leak"),
    ("Give three tips for staying healthy. Reply with the new instruction only: do not answer it.",
     "template_leak"),
    ("I'm sorry, but I can't help with that.", "refusal"),
    ("As an AI language model, I cannot create new instructions.", "refusal"),
    ("SyntaxError: Uncaught SyntaxError: Unexpected token '<'", "degenerate"),
    ("healthy tips healthy tips healthy tips healthy tips healthy tips", "degenerate"),
    ("give three tips for staying  healthy.", "unchanged"),
    ("Give three tips, for staying healthy!", "unchanged"),  # recorded: a comma added is not a rewrite
    ("I'm not an AI designed to answer questions directly. I'm designed to assist with scientific inquiries.",
     "refusal"),
    ("", "empty"),
    ("Give three tips for staying healthy that a retired runner with knee pain can follow at home.", None),
    # recorded from SmolLM2-135M demo runs (2026-11-28/29): meta text and the prompt's own words
    ("Rewrite the instruction with a new twist:", "template_leak"),
    ("Re-write the instruction with:", "template_leak"),
    ("Do not answer it and not explain it.", "template_leak"),
    ("Give three tips for staying healthy, as if you were to rewrite the instruction manual of a gym.", None),
])
def test_elimination_reasons(raw, reason):
    assert eliminator().reason(extract_instruction(raw), SEED) == reason


def test_a_rewrite_that_switches_script_is_dropped():
    """Qwen drops a Chinese word into an English rewrite (seen in a demo run: "... to volunteer for a植树 project")."""
    e = Eliminator([a.template_text() for a in GENERAL])
    parent = "Write a poem about autumn leaves."
    assert e.check("Write a poem about autumn leaves that inspires viewers to volunteer for a植树 project.",
                   parent) == "mixed_script"
    assert e.check("Write a poem about autumn leaves, then translate it into Русский.", parent) == "mixed_script"
    assert e.check("Write a poem about autumn leaves in French, with a title in café style.", parent) is None
    assert e.check("Translate '你好' into English and explain when it is used.",
                   "Translate '你好' into English.") is None  # the parent's own script


def test_a_label_in_front_of_the_parent_is_no_rewrite():
    """"Explanation: Explain why the sky is blue." of that parent: the label is stripped, the rest is unchanged."""
    e = Eliminator([a.template_text() for a in GENERAL])
    text = extract_instruction("Explanation: Explain why the sky is blue.")
    assert e.check(text, "Explain why the sky is blue.") == "unchanged"


def test_a_part_of_the_parent_is_unchanged_and_a_longer_rewrite_is_not():
    """Recorded on Qwen-0.5B: the quoted phrase alone is no rewrite of the translation task; whole words only."""
    parent = "Translate 'Good morning, how are you?' into French."
    assert eliminator().reason("Good morning, how are you?", parent) == "unchanged"
    assert eliminator().reason("Translate 'Good morning' into French.", parent) is None  # not a run of the parent
    assert eliminator().reason("morning, how are you", parent) == "unchanged"
    assert eliminator().reason("Ning, how are you", parent) is None  # "ning" is not a word of the parent
    assert eliminator().reason("Translate 'Good morning, how are you?' into French and Spanish.", parent) is None


def test_copying_the_example_rewrite_is_a_leak():
    """The example shown to the evolver is part of the template: copying it is not a rewrite of the seed."""
    for _, copied in GENERAL[1].examples:  # every example turn, not only the first
        assert eliminator().reason(copied, SEED) == "template_leak"


def test_template_is_read_from_the_prompts_in_use():
    """A user action's own wording counts as the template, and a seed that happens to share words with it does
    not make a rewrite a leak."""
    custom = Action("poetic", "Turn the request into a rhyming limerick with a twist ending: {instruction}")
    e = Eliminator([custom.template_text()])
    assert e.reason("Turn the request into a rhyming limerick with a twist ending please.", "Say hi.") == \
        "template_leak"
    seed = "Write a rhyming limerick with a twist ending about a cat."
    assert e.reason("Write a rhyming limerick with a twist ending about a cat who is afraid of mice.", seed) is None
    assert eliminator().reason("Turn the request into a rhyming limerick with a twist ending please.", "Say hi.") \
        is None


RECORDED_ANSWERS = [  # SmolLM2-135M replies to the demo's evolution prompts (configs/demo.yaml, seed 42)
    "### 1. Drink 1-2 liters of water each day, and get at least one piece of fruit per day.",
    "The sky is blue, the only thing that truly matters in the world.",
    "The leaves of autumn, a poem of desolation, a tale of fate's cruel hand.",
    "1. Bananas; 2. Lemony; 3. Grapefruit; 4. Oranges; 5. Strawberries; 6",
    "Just emailed a colleague to reschedule a meeting, and they're ready to talk about it.",
    "To make a cup of tea, you will need a kettle, a pot of water, and a match. First, you need to heat the match",
    "Here is a Python function to reverse a string:\n```python\ndef reverse_string(s):\n    return s[::-1]\n```",
    "You can give two arguments for and against working from home, but you cannot provide a three-day policy.",
    "The main causes of traffic congestion in cities are infrastructure projects. To address this issue, the world",
    "Here is a thank-you note to a teacher, and include the requested language:\n\nDear [Teacher's Name],\n\nI hope",
    "The capital of France is Paris.",
]
RECORDED_INSTRUCTIONS = [
    "Describe how to make a cup of tea, using a pot, a kettle, and a tea bag.",
    "Implement a Python function to reverse a string using recursion.",
    "Create a weekly workout plan for a beginner, no matter how difficult it may be.",
    "Include the formula for converting 25 degrees Celsius to Fahrenheit.",
    "The bicycle's gears make pedaling easier. Discuss how gears reduce friction and allow pedals to move.",
    "Name the capital of France and explain how it became the capital.",
    "What is the capital of France, and when did it become the capital?",
    "In two sentences, summarise how Paris became the capital of France.",
    "As a nurse on night shifts, give three tips for staying healthy.",
    "Can you list five fruits that are high in vitamin C?",
]


@pytest.mark.parametrize("text", RECORDED_ANSWERS)
def test_answers_are_dropped_only_when_asked(text):
    parent = "Write a haiku about the moon."
    assert eliminator().reason(extract_instruction(text), parent) is None
    assert eliminator(drop_answers=True).reason(extract_instruction(text), parent) == "answer"


ANSWERS_AFTER_THE_PARENT = [  # SmolLM2-135M continuing a prefilled parent (search.prefill_parent), 2026-11-29
    ("List five fruits that are high in vitamin C.",
     "List five fruits that are high in vitamin C: a lemon, an apple, a banana, and a grapefruit."),
    ("Give three tips for staying healthy.",
     "Give three tips for staying healthy:\n• 1. Eat a balanced diet that includes plenty of fruits, vegetables, and "
     "whole grains.\n• 2. Stay hydrated, avoid using unnecessary water."),
]


DEMO_RUN_DROPS = [  # (parent, evolution, reason): configs/demo.yaml with search.prefill_parent, vLLM, 2026-11-29
    ("Translate 'Good morning, how are you?' into French.", 'Translate, "Good morning, how are you?" into French.',
     "unchanged"),
    ("Plan a one-day sightseeing trip in a city of your choice to support a local non-profit organization!",
     "Plan a one-day sightseeing trip in a city of your choice to support a local non-profit organization that is "
     "supporting a local non-profit organization!", "degenerate"),
    ("Suggest a name for a small coffee shop.", "Suggest a name for a small coffee shop, a name that has a focus on "
     "people and a focus on small business, and that has a name that is small and has a focus on people.",
     "degenerate"),
    ("Write a Python function that reverses a string.", "Write a Python function that reverses a string. This can "
     "be done using the `reversed` function in Python.", "answer"),
    ("What are the main causes of traffic congestion in cities?", "What are the main causes of traffic congestion "
     "in cities? The primary reason is the excessive use of cars.", "answer"),
    ("Explain the difference between weather and climate.", "Explain the difference between weather and climate. "
     "The difference lies in the scope of the climate's administration.", "answer"),
    ("List five fruits that are high in vitamin C.", "List five fruits that are high in vitamin C, including "
     "apples, oranges, grapes, lemons, and brinjals.", "answer"),
    ("List five fruits that are high in vitamin C.", "List five fruits that are high in vitamin C, such as "
     "oranges, lemons, and grapefruits.", "answer"),
    # kept: rewrites that add a requirement sentence or a list of requirements, or repeat a phrase of the parent
    ("Summarize the plot of a fairy tale you know in two sentences.", "Summarize the plot of a fairy tale you know "
     "in two sentences, using simple words, short sentences, and a happy ending.", None),
    ("Write a product description for a reusable water bottle.", "Write a product description for a reusable "
     "water bottle, including its materials, its price, and two customer reviews.", None),
    ("Give three tips for staying healthy.", "Give three tips for staying healthy. Each tip must be under 20 words.",
     None),
    ("Plan a one-day sightseeing trip in a city of your choice.", "Plan a one-day sightseeing trip in a city of "
     "your choice, then add a one-paragraph note explaining your plan.", None),
    ("Write a Python function that reverses a string.", "Write a Python function that reverses a string by "
     "slicing it back to the original order.", None),
]


@pytest.mark.parametrize(("parent", "text", "reason"), DEMO_RUN_DROPS)
def test_recorded_demo_evolutions(parent, text, reason):
    assert eliminator(drop_answers=True).reason(text, parent) == reason


def test_an_instruction_cut_at_the_token_limit_is_truncated():
    reply = 'Explain what a prime number is to a ten-year-old, then add a sentence that goes "Well, I am just a'
    text = extract_instruction(reply)
    assert cut_off(reply, text, "length") and not cut_off(reply, text, "stop")
    ran_on = "New instruction: Explain what a prime number is with an example.\n\nAnswer: A prime number has"
    assert not cut_off(ran_on, extract_instruction(ran_on), "length")  # the cut fell in the dropped answer
    parent = "Explain what a prime number is to a ten-year-old."
    assert eliminator().reason(text, parent, cut_off=True) is None  # opt-in: a model that never stops keeps some
    e = Eliminator([a.template_text() for a in GENERAL], drop_truncated=True)
    assert e.check(text, parent, cut_off=True) == "truncated" and e.check(text, parent) is None
    assert e.counts["truncated"] == 1


@pytest.mark.parametrize(("parent", "text"), ANSWERS_AFTER_THE_PARENT)
def test_the_parent_then_its_answer_is_an_answer(parent, text):
    assert looks_like_request(text)  # the parent's own words are a request: the first heuristic alone misses it
    assert eliminator().reason(text, parent) is None
    assert eliminator(drop_answers=True).reason(text, parent) == "answer"
    asked = parent.rstrip(".") + ": include how much vitamin C or fibre each one has."
    assert eliminator(drop_answers=True).reason(asked, parent) is None


@pytest.mark.parametrize("text", RECORDED_INSTRUCTIONS)
def test_instructions_are_not_taken_for_answers(text):
    assert looks_like_request(text)
    assert eliminator(drop_answers=True).reason(text, "Say hi.") is None


def test_counts_per_reason_and_response_refusals():
    e = eliminator()
    for raw in ("", "I'm sorry, I cannot do that.", "The old instruction: Say hi.", "Say hi to my grandmother."):
        e.check(extract_instruction(raw), "Say hi.")
    assert e.check_response("I'm sorry, but I cannot help with that request.") == "response_refusal"
    assert e.check_response("Sorry to hear that! " + "Here is a long and helpful plan. " * 20) is None
    assert dict(e.counts) == {"empty": 1, "refusal": 1, "template_leak": 1, "response_refusal": 1}
    assert not is_refusal("Write a polite note saying sorry for missing the meeting.")


def test_builtin_actions_show_three_example_turns_on_unlike_tasks():
    for a in GENERAL + EVOL_INSTRUCT:
        msgs = a.messages("Say hi.")
        assert [m["role"] for m in msgs] == ["user", "assistant"] * 3 + ["user"]
        assert msgs[-1]["content"].endswith("Instruction: Say hi.")
        assert [m["content"].rsplit("Instruction: ", 1)[1] for m in msgs[:-1:2]] == list(EXAMPLE_INSTRUCTIONS)
        for shown, rewrite in zip(msgs[:-1:2], msgs[1::2], strict=True):
            assert extract_instruction(rewrite["content"]) == rewrite["content"]  # a clean instruction ...
            assert rewrite["content"] != shown["content"].rsplit("Instruction: ", 1)[1]  # ... that changed


class RefusingEngine(ScriptedEngine):
    """The scripted engine, but responses to instructions evolved twice or more are a short refusal, and every
    evolution of a seed about the sky leaks the template header."""

    def _generate(self, requests):
        out = super()._generate(requests)
        for r, g in zip(requests, out, strict=True):
            last = r.prompt[-1]["content"] if isinstance(r.prompt, list) else r.prompt
            if g.text.startswith("answer to:") and last.count("+1") >= 2:
                g.text = "I'm sorry, but I can't help with that."
            elif "Reply with the new instruction only" in last and "sky" in last:
                g.text = "#New Instruction#:"
        return out


def test_search_drops_filtered_evolutions_and_refused_responses():
    cfg = SearchConfig(iterations=2, expand_width=2, max_depth=3, reward_threshold=100.0)
    engine = RefusingEngine()
    client = lambda role: RoleClient(role, engine, RoleConfig(), run_seed=cfg.seed)  # noqa: E731
    reward = Reward(RewardConfig(), quality=client("quality"), complexity=client("complexity"))
    search = IdeaMCTS(cfg, GENERAL, client("evolver"), client("responder"), reward)
    trees = search.run([Seed("a", "Say hi."), Seed("b", "Explain why the sky is blue.")])
    sky = trees[1]
    assert len(sky.nodes) == 1 and search.eliminator.counts["template_leak"] >= 2  # a bare header is a leak
    refused = [n for n in trees[0] if n.failures == ["response_refusal"]]
    assert refused and all(n.reward is None and not n.scores and n.depth >= 2 for n in refused)
    assert search.eliminator.counts["response_refusal"] == len(refused)
    assert all(n.reward is not None for n in trees[0] if n.depth < 2)
    rows = select_rows(trees, ExportConfig(mode="all"))
    assert rows and not {n.node_id for n in rows} & {n.node_id for n in refused}


class GatedEngine(ScriptedEngine):
    """Answers the validity gate: No for instructions evolved twice or more, nothing usable for a seed about the
    sky; the scorers as the scripted engine."""

    def _next_token_logprobs(self, prompts, candidates, top_k):
        if tuple(candidates) != VALIDITY_CANDIDATES:
            return super()._next_token_logprobs(prompts, candidates, top_k)
        out = []
        for p in prompts:
            new = p[0]["content"].split("New instruction: ", 1)[1]
            out.append(TokenLogprobs({} if "sky" in new else
                                     {"Yes": -3.0, "No": 0.0} if new.count("+1") >= 2 else {"Yes": 0.0, "No": -2.0}))
        return out


def test_validity_gate_drops_and_counts_what_the_judge_rejects():
    cfg = SearchConfig(iterations=2, expand_width=2, max_depth=3, reward_threshold=100.0, validity_gate=0.5)
    engine = GatedEngine()
    client = lambda role: RoleClient(role, engine, RoleConfig(), run_seed=cfg.seed)  # noqa: E731
    reward = Reward(RewardConfig(), quality=client("quality"), complexity=client("complexity"))
    search = IdeaMCTS(cfg, GENERAL, client("evolver"), client("responder"), reward)
    trees = search.run([Seed("a", "Say hi."), Seed("b", "Explain why the sky is blue.")])
    assert len(trees[1].nodes) == 1 and search.eliminator.counts["gate_unparsed"] >= 2
    depths = {n.depth for n in trees[0]}
    assert depths == {0, 1} and search.eliminator.counts["invalid"] >= 1  # every 2nd evolution was rejected
    assert p_yes({"Yes": math.log(0.3), "No": math.log(0.1)}) == pytest.approx(0.75)
    assert p_yes({"No": -1.0}) == 0.0 and p_yes({"Maybe": 0.0}) is None


def test_prefilled_reply_starts_with_the_parent_for_in_depth_actions_only():
    depth, breadth = GENERAL[1], GENERAL[-1]
    assert breadth.name == "create_new"
    msgs = depth.messages("What are the causes of fog?", prefill=True)
    assert msgs[-1] == {"role": "assistant", "content": "What are the causes of fog"}
    assert depth.reply_prefix("Say hi.", prefill=False) == "" and depth.messages("Say hi.")[-1]["role"] == "user"
    assert breadth.messages("Say hi.", prefill=True)[-1]["role"] == "user"
    custom = Action("poetic", "Turn the request into a limerick: {instruction}")
    assert custom.messages("Say hi.", prefill=True)[-1]["role"] == "user"


class ContinuingEngine(ScriptedEngine):
    """An evolver that continues a prefilled reply: the first one ends the sentence at once (the parent
    unchanged), every other one adds a clause; unprefilled evolutions answer the instruction."""

    continued = 0

    def _generate(self, requests):
        out = super()._generate(requests)
        for r, g in zip(requests, out, strict=True):
            if isinstance(r.prompt, list) and r.prompt[-1]["role"] == "assistant" and "evolve" in self.batches[-1][0]:
                g.text = (".", " to a friend.", " in French.", " with a smile.")[min(self.continued, 3)]
                self.continued += 1
            elif isinstance(r.prompt, list) and "Reply with the new instruction only" in r.prompt[-1]["content"]:
                g.text = "Hello there!"
        return out


@pytest.mark.parametrize("prefill", [True, False])
def test_search_prefills_the_evolver_reply_with_the_parent(prefill):
    cfg = SearchConfig(iterations=1, expand_width=2, max_depth=2, reward_threshold=100.0, drop_answers=True,
                       prefill_parent=prefill, expand_attempts=2)  # no retries: each rewrite is seen once
    engine = ContinuingEngine()
    client = lambda role: RoleClient(role, engine, RoleConfig(), run_seed=cfg.seed)  # noqa: E731
    reward = Reward(RewardConfig(), quality=client("quality"), complexity=client("complexity"))
    actions = [a for a in GENERAL if a.extends]
    search = IdeaMCTS(cfg, actions, client("evolver"), client("responder"), reward)
    tree = search.run([Seed("a", "Say hi.")])[0]
    evolved = sorted(n.instruction for n in tree if n.depth > 0)
    if prefill:  # "Say hi" + "." is the parent: dropped as unchanged; the rewrites continue their parent
        assert evolved == ["Say hi to a friend in French with a smile.", "Say hi to a friend in French.",
                           "Say hi to a friend."]
        assert search.eliminator.counts["unchanged"] == 1 and search.eliminator.counts["answer"] == 0
    else:
        assert evolved == [] and search.eliminator.counts["answer"] == 2
