"""Evolution actions: prompts that make the evolver rewrite an instruction.

Sets: `general` (the paper's 12 actions, our wording: the paper did not publish its prompts), `evol_instruct`
(the 5 classic in-depth operators of WizardLM's Evol-Instruct, for the random-evolution baseline), user actions
from a YAML file, and task-specific actions (MCTS+) written by the evolver from example instructions of a
target task through a meta-prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from idea_mcts.errors import UsageError

DEPTH_TEMPLATE = (
    "Rewrite the instruction below into a new, more demanding version. {method} Keep its topic and its task, "
    "keep it self-contained and answerable, keep any input data it needs, and add no more than 40 words. Reply "
    "with the new instruction only: do not answer it and do not explain it.\n\nInstruction: {instruction}"
)
BREADTH_TEMPLATE = (
    "Taking the instruction below as inspiration, write a brand-new instruction in the same domain that is rarer "
    "and more specific, of similar length and difficulty. Reply with the new instruction only: do not answer it "
    "and do not explain it.\n\nInstruction: {instruction}"
)
EXAMPLE_INSTRUCTION = "Write a poem about the sea."
"""The instruction each built-in action's example rewrites. The example is shown to the evolver as a previous
chat turn: small instruct models then reply with an instruction, not with chatter, headers or an answer."""


def stem(instruction: str) -> str:
    """The instruction without its closing punctuation: how a prefilled rewrite starts (`Action.reply_prefix`)."""
    return instruction.strip().rstrip(".!?;:").rstrip()


@dataclass(frozen=True)
class Action:
    """An evolution prompt. `prompt` holds `{instruction}` where the node's instruction goes; `example`, when
    set, is this action's rewrite of `EXAMPLE_INSTRUCTION`, shown as a previous turn of the chat. `extends`:
    the rewrite builds on the instruction itself (an in-depth action), so its reply may be prefilled with it."""

    name: str
    prompt: str
    example: str | None = None
    extends: bool = False

    def render(self, instruction: str) -> str:
        return self.prompt.replace("{instruction}", instruction)

    def reply_prefix(self, instruction: str, prefill: bool) -> str:
        """The start of the evolver's reply written for it (`search.prefill_parent`): the instruction without its
        closing punctuation for an in-depth action, so that the evolver continues it with the new requirement;
        '' otherwise."""
        return stem(instruction) if prefill and self.extends else ""

    def messages(self, instruction: str, prefill: bool = False) -> list[dict[str, str]]:
        """The evolver's chat: the example exchange (if any), the request for `instruction`, and the reply's
        prefix when `prefill` (`reply_prefix`)."""
        shot = ([{"role": "user", "content": self.render(EXAMPLE_INSTRUCTION)},
                 {"role": "assistant", "content": self.example}] if self.example else [])
        prefix = self.reply_prefix(instruction, prefill)
        return [*shot, {"role": "user", "content": self.render(instruction)},
                *([{"role": "assistant", "content": prefix}] if prefix else [])]

    def template_text(self) -> str:
        """The words of the prompt that are not the instruction (what the elimination filter calls a leak)."""
        return self.prompt + ("\n" + self.example if self.example else "")


def _depth(name: str, method: str, example: str | None = None) -> Action:
    return Action(name, DEPTH_TEMPLATE.replace("{method}", method), example, extends=True)


GENERAL = [
    _depth("add_goals", "Add a global goal, or a local sub-goal, that the answer must also achieve.",
           "Write a poem about the sea that also teaches a child the names of three sea creatures."),
    _depth("add_constraints", "Add one key constraint the answer must respect, such as a limit on length, "
           "audience, resources or content.",
           "Write a poem about the sea in exactly four rhyming lines, without using the word 'blue'."),
    _depth("add_task_requirements", "Add a concrete task requirement: an extra deliverable, step or check "
           "that the answer must include.",
           "Write a poem about the sea, then add a one-sentence note explaining its main image."),
    _depth("add_problem_solving", "Require a specific problem-solving skill, such as comparing alternatives, "
           "estimating quantities, finding a counter-example or debugging.",
           "Write two short poems about the sea, one calm and one stormy, and compare which images make them feel "
           "different."),
    _depth("add_reasoning", "Make the instruction require explicit multi-step reasoning instead of a single "
           "direct step.",
           "Write a poem about the sea whose stanzas follow a ship from departure to return, and explain step by "
           "step how each stanza moves the journey on."),
    _depth("add_domain_knowledge", "Require specialised knowledge from a relevant field, such as science, law, "
           "finance, medicine, engineering or history.",
           "Write a poem about the sea that correctly explains how the Moon's gravity causes the tides."),
    _depth("add_life_topics", "Ground the instruction in an everyday-life situation, such as family, health, "
           "travel, work or hobbies.",
           "Write a poem about the sea for a friend who is moving abroad, recalling a family holiday on the coast."),
    _depth("add_real_world_application", "Tie the instruction to a realistic real-world application in which "
           "the answer would actually be used.",
           "Write a short poem about the sea to be printed on a poster inviting volunteers to a beach clean-up."),
    _depth("add_emotional_expression", "Add emotional context, or ask for an emotionally aware tone such as "
           "empathy, encouragement or humour.",
           "Write a poem about the sea in the voice of a fisherman's widow, moving from grief to hope."),
    _depth("format_input", "Change how the input is presented: give the information the task needs inside "
           "the instruction as a table, a list, JSON, a code snippet or quoted text.",
           'Write a poem about the sea that uses every word in this list: ["harbour", "salt", "gull", "horizon"].'),
    _depth("format_output", "Specify the exact format of the answer, such as a numbered list, a table, JSON, "
           "headed sections or a word limit.",
           "Write a poem about the sea as three numbered stanzas of four lines each, with a title in capitals."),
    Action("create_new", BREADTH_TEMPLATE,
           "Write a sonnet about a lighthouse keeper's last night before the light is automated."),
]

EVOL_INSTRUCT = [
    _depth("constraints", "Add one more constraint or requirement to the instruction.",
           "Write a poem about the sea in exactly four rhyming lines, without using the word 'blue'."),
    _depth("deepening", "If the instruction asks about a topic, increase the depth and breadth of the inquiry.",
           "Write a poem about the sea that shows both its beauty and its danger to the people who work on it."),
    _depth("concretizing", "Replace general concepts with more specific ones.",
           "Write a poem about the North Sea on a winter night, seen from the deck of a fishing trawler."),
    _depth("increased_reasoning", "If the instruction can be solved with a few simple thinking steps, rewrite "
           "it to explicitly ask for multiple-step reasoning.",
           "Write a poem about the sea whose stanzas follow a ship from departure to return, and explain step by "
           "step how each stanza moves the journey on."),
    _depth("complicate_input", "Add complex input data the task must work on, such as a table, code or a "
           "longer passage.",
           "Write a poem about the sea using the facts in this table: | ocean | depth (m) |; | Pacific | 10,994 |; "
           "| Atlantic | 8,376 |."),
]

SETS = {"general": GENERAL, "evol_instruct": EVOL_INSTRUCT}

META_PROMPT = (
    "Here are example instructions of a target task:\n\n{examples}\n\nWrite {n} different methods for rewriting "
    "any instruction so that it becomes harder and closer to the style, skills and requirements of these "
    "examples. Each method is one sentence starting with a verb. Reply with a numbered list only, one method "
    "per line."
)


def load_actions(spec: str) -> list[Action]:
    """An action set by name, or a YAML file: a list of {name, prompt} (prompt with `{instruction}`) or
    {name, method} (a sentence slotted into the standard rewriting template)."""
    if spec in SETS:
        return list(SETS[spec])
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"unknown action set {spec!r}: use {' or '.join(SETS)} or a YAML file path")
    try:
        items = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"cannot parse actions file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(items, list) or not items:
        raise UsageError(f"actions file {path} must hold a non-empty list of {{name, prompt|method}}")
    actions: list[Action] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise UsageError(f"actions file {path}: entry {i} needs a string 'name'")
        if isinstance(item.get("prompt"), str):
            if "{instruction}" not in item["prompt"]:
                raise UsageError(f"actions file {path}: action {item['name']!r} prompt lacks {{instruction}}")
            actions.append(Action(item["name"], item["prompt"]))
        elif isinstance(item.get("method"), str):
            actions.append(_depth(item["name"], item["method"]))
        else:
            raise UsageError(f"actions file {path}: action {item['name']!r} needs 'prompt' or 'method'")
    names = [a.name for a in actions]
    if len(set(names)) != len(names):
        raise UsageError(f"actions file {path}: duplicate action names")
    return actions


def meta_prompt(examples: list[str], n: int) -> str:
    """The MCTS+ meta-prompt asking the evolver for `n` task-specific evolution methods."""
    listed = "\n".join(f"- {' '.join(e.split())}" for e in examples)
    return META_PROMPT.replace("{examples}", listed).replace("{n}", str(n))


def parse_task_methods(text: str, n: int) -> list[str]:
    """Methods from the meta-prompt's numbered (or bulleted) list; lines that are not list items are ignored."""
    methods = []
    for line in text.splitlines():
        m = re.match(r"^\s*(?:\d+[.)]|[-*•])\s+(.+?)\s*$", line)
        if m and len(m.group(1).split()) >= 3:
            methods.append(m.group(1))
    return methods[:n]


def task_actions(methods: list[str]) -> list[Action]:
    return [_depth(f"task_{i + 1}", m if m.endswith(".") else m + ".") for i, m in enumerate(methods)]
