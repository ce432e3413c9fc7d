import pytest

from idea_mcts.actions import (
    EVOL_INSTRUCT,
    GENERAL,
    load_actions,
    meta_prompt,
    parse_task_methods,
    task_actions,
)
from idea_mcts.errors import UsageError
from idea_mcts.filters import extract_instruction


def test_builtin_sets():
    assert len(GENERAL) == 12 and len({a.name for a in GENERAL}) == 12
    assert len(EVOL_INSTRUCT) == 5
    assert "create_new" in {a.name for a in GENERAL}
    for a in GENERAL + EVOL_INSTRUCT:
        assert a.render("Say hi.").count("Say hi.") == 1 and "{" not in a.render("Say hi.")
    assert load_actions("general") == GENERAL and load_actions("evol_instruct") == EVOL_INSTRUCT


def test_yaml_actions(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("- {name: poetic, method: Turn the request into a rhyming one.}\n"
                 "- {name: raw, prompt: 'Make harder: {instruction}'}\n")
    acts = load_actions(str(p))
    assert [a.name for a in acts] == ["poetic", "raw"]
    assert acts[1].render("X") == "Make harder: X"
    assert "Turn the request into a rhyming one." in acts[0].render("X")


@pytest.mark.parametrize(("text", "needle"), [
    ("- {name: a}\n", "needs 'prompt' or 'method'"),
    ("- {name: a, prompt: no placeholder}\n", "lacks {instruction}"),
    ("- {name: a, method: m}\n- {name: a, method: n}\n", "duplicate"),
    ("{}\n", "non-empty list"),
    ("- [\n", "cannot parse"),
])
def test_yaml_action_errors(tmp_path, text, needle):
    p = tmp_path / "a.yaml"
    p.write_text(text)
    with pytest.raises(UsageError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        load_actions(str(p))


def test_task_specific_actions_from_meta_prompt():
    prompt = meta_prompt(["Write a limerick about cats.", "Compose  a sonnet\nabout rain."], 3)
    assert "- Write a limerick about cats." in prompt and "- Compose a sonnet about rain." in prompt
    assert "Write 3 different methods" in prompt
    reply = ("Here are the methods:\n1. Require a strict rhyme scheme for the poem.\n2) Ask for a specific meter "
             "like iambic pentameter.\n- Add a surprising final line twist.\n4. Extra one too many here.\nThanks")
    methods = parse_task_methods(reply, 3)
    assert methods == ["Require a strict rhyme scheme for the poem.",
                       "Ask for a specific meter like iambic pentameter.", "Add a surprising final line twist."]
    acts = task_actions(methods)
    assert [a.name for a in acts] == ["task_1", "task_2", "task_3"]
    assert "strict rhyme scheme" in acts[0].render("X")
    assert parse_task_methods("no list at all", 3) == []


@pytest.mark.parametrize(("raw", "clean"), [
    ("#New Instruction#: Write a poem.", "Write a poem."),
    ('"Explain rain in 3 steps."', "Explain rain in 3 steps."),
    ("Rewritten prompt: Do X.\n\n### Answer\nX done", "Do X."),
    ("   ", ""),
])
def test_extract_instruction(raw, clean):
    assert extract_instruction(raw) == clean
