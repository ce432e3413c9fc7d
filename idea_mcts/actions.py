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
EXAMPLE_INSTRUCTIONS = ("Write a poem about the sea.", "Explain how a refrigerator keeps food cold.",
                        "List three ways to save money on groceries.")
"""The instructions each built-in action's examples rewrite, shown to the evolver as previous chat turns: small
instruct models then reply with an instruction, not with chatter, headers or an answer. Three unlike tasks, not
one: shown a single poem example, Qwen2.5-0.5B copied its addition into unrelated seeds ("three tips for staying
healthy ... in the voice of a fisherman's widow"; 34 % of 50 survivors read as broken, 20 % with these three:
docs/benchmarks.md "Evolver examples")."""
EXAMPLE_INSTRUCTION = EXAMPLE_INSTRUCTIONS[0]


def stem(instruction: str) -> str:
    """The instruction without its closing punctuation: how a prefilled rewrite starts (`Action.reply_prefix`)."""
    return instruction.strip().rstrip(".!?;:").rstrip()


@dataclass(frozen=True)
class Action:
    """An evolution prompt. `prompt` holds `{instruction}` where the node's instruction goes; `examples`:
    (instruction, this action's rewrite of it) pairs, shown as previous turns of the chat. `extends`: the
    rewrite builds on the instruction itself (an in-depth action), so its reply may be prefilled with it."""

    name: str
    prompt: str
    examples: tuple[tuple[str, str], ...] = ()
    extends: bool = False

    def render(self, instruction: str) -> str:
        return self.prompt.replace("{instruction}", instruction)

    def reply_prefix(self, instruction: str, prefill: bool) -> str:
        """The start of the evolver's reply written for it (`search.prefill_parent`): the instruction without its
        closing punctuation for an in-depth action, so that the evolver continues it with the new requirement;
        '' otherwise."""
        return stem(instruction) if prefill and self.extends else ""

    def messages(self, instruction: str, prefill: bool = False) -> list[dict[str, str]]:
        """The evolver's chat: the example exchanges (if any), the request for `instruction`, and the reply's
        prefix when `prefill` (`reply_prefix`)."""
        shot = [turn for before, after in self.examples
                for turn in ({"role": "user", "content": self.render(before)},
                             {"role": "assistant", "content": after})]
        prefix = self.reply_prefix(instruction, prefill)
        return [*shot, {"role": "user", "content": self.render(instruction)},
                *([{"role": "assistant", "content": prefix}] if prefix else [])]

    def template_text(self) -> str:
        """The words of the prompt that are not the instruction (what the elimination filter calls a leak)."""
        return "\n".join([self.prompt, *(after for _, after in self.examples)])


def _shots(*rewrites: str) -> tuple[tuple[str, str], ...]:
    """Rewrites of `EXAMPLE_INSTRUCTIONS`, in order, as (instruction, rewrite) pairs."""
    return tuple(zip(EXAMPLE_INSTRUCTIONS, rewrites, strict=True))


def _depth(name: str, method: str, *rewrites: str) -> Action:
    return Action(name, DEPTH_TEMPLATE.replace("{method}", method), _shots(*rewrites) if rewrites else (),
                  extends=True)


GENERAL = [
    _depth("add_goals", "Add a global goal, or a local sub-goal, that the answer must also achieve.",
           "Write a poem about the sea that also teaches a child the names of three sea creatures.",
           "Explain how a refrigerator keeps food cold, and use the explanation to say why its door should not stay "
           "open.",
           "List three ways to save money on groceries that also help a family eat more vegetables."),
    _depth("add_constraints", "Add one key constraint the answer must respect, such as a limit on length, "
           "audience, resources or content.",
           "Write a poem about the sea in exactly four rhyming lines, without using the word 'blue'.",
           "Explain how a refrigerator keeps food cold in under 100 words, without using technical terms.",
           "List three ways to save money on groceries for a student with no car."),
    _depth("add_task_requirements", "Add a concrete task requirement: an extra deliverable, step or check "
           "that the answer must include.",
           "Write a poem about the sea, then add a one-sentence note explaining its main image.",
           "Explain how a refrigerator keeps food cold, then name one common fault and how to spot it.",
           "List three ways to save money on groceries and estimate how much each saves in a month."),
    _depth("add_problem_solving", "Require a specific problem-solving skill, such as comparing alternatives, "
           "estimating quantities, finding a counter-example or debugging.",
           "Write two short poems about the sea, one calm and one stormy, and compare which images make them feel "
           "different.",
           "Explain how a refrigerator keeps food cold, and compare it with how an ice box without electricity does.",
           "List three ways to save money on groceries, and say which one saves the most for a single person and why."),
    _depth("add_reasoning", "Make the instruction require explicit multi-step reasoning instead of a single "
           "direct step.",
           "Write a poem about the sea whose stanzas follow a ship from departure to return, and explain step by "
           "step how each stanza moves the journey on.",
           "Explain step by step how a refrigerator moves heat from inside to outside, following the refrigerant "
           "around its loop.",
           "List three ways to save money on groceries, and for each one work out the saving on a weekly budget of "
           "$80."),
    _depth("add_domain_knowledge", "Require specialised knowledge from a relevant field, such as science, law, "
           "finance, medicine, engineering or history.",
           "Write a poem about the sea that correctly explains how the Moon's gravity causes the tides.",
           "Explain, using the thermodynamics of evaporation and compression, how a refrigerator keeps food cold.",
           "List three ways to save money on groceries, using what nutrition science says about cheap sources of "
           "protein."),
    _depth("add_life_topics", "Ground the instruction in an everyday-life situation, such as family, health, "
           "travel, work or hobbies.",
           "Write a poem about the sea for a friend who is moving abroad, recalling a family holiday on the coast.",
           "Explain to a roommate who keeps leaving the fridge open how a refrigerator keeps food cold.",
           "List three ways to save money on groceries for a parent feeding three children on one income."),
    _depth("add_real_world_application", "Tie the instruction to a realistic real-world application in which "
           "the answer would actually be used.",
           "Write a short poem about the sea to be printed on a poster inviting volunteers to a beach clean-up.",
           "Explain how a refrigerator keeps food cold, for a leaflet that helps households cut their electricity "
           "bill.",
           "List three ways to save money on groceries, for a newsletter sent to new tenants of a housing "
           "cooperative."),
    _depth("add_emotional_expression", "Add emotional context, or ask for an emotionally aware tone such as "
           "empathy, encouragement or humour.",
           "Write a poem about the sea in the voice of a fisherman's widow, moving from grief to hope.",
           "Explain how a refrigerator keeps food cold to a child who is afraid of the noise it makes, in a "
           "reassuring tone.",
           "List three ways to save money on groceries, with encouragement for someone who feels ashamed of a tight "
           "budget."),
    _depth("format_input", "Change how the input is presented: give the information the task needs inside "
           "the instruction as a table, a list, JSON, a code snippet or quoted text.",
           'Write a poem about the sea that uses every word in this list: ["harbour", "salt", "gull", "horizon"].',
           "Explain how a refrigerator keeps food cold, using these parts: compressor, condenser, expansion valve, "
           "evaporator.",
           "List three ways to save money on groceries, given this weekly list: {\"milk\": 3.5, \"bread\": 2.8, "
           "\"chicken\": 9.0, \"apples\": 4.2}."),
    _depth("format_output", "Specify the exact format of the answer, such as a numbered list, a table, JSON, "
           "headed sections or a word limit.",
           "Write a poem about the sea as three numbered stanzas of four lines each, with a title in capitals.",
           "Explain how a refrigerator keeps food cold as a numbered list of at most five steps.",
           "List three ways to save money on groceries as a table with the columns: tip, effort, saving per month."),
    Action("create_new", BREADTH_TEMPLATE,
           _shots("Write a sonnet about a lighthouse keeper's last night before the light is automated.",
                  "Describe how a thermos flask keeps a drink hot for hours without any power.",
                  "Suggest three ways to cut the cost of a family's weekly laundry.")),
]

EVOL_INSTRUCT = [
    _depth("constraints", "Add one more constraint or requirement to the instruction.",
           "Write a poem about the sea in exactly four rhyming lines, without using the word 'blue'.",
           "Explain how a refrigerator keeps food cold in under 100 words, without using technical terms.",
           "List three ways to save money on groceries for a student with no car."),
    _depth("deepening", "If the instruction asks about a topic, increase the depth and breadth of the inquiry.",
           "Write a poem about the sea that shows both its beauty and its danger to the people who work on it.",
           "Explain how a refrigerator keeps food cold, how that process uses electricity, and why a frost-free "
           "model uses more.",
           "List three ways to save money on groceries, and for each say who it suits and what it costs in time."),
    _depth("concretizing", "Replace general concepts with more specific ones.",
           "Write a poem about the North Sea on a winter night, seen from the deck of a fishing trawler.",
           "Explain how the compressor and the evaporator coils of a kitchen refrigerator keep milk at 4 °C.",
           "List three ways a family of four in a small town can cut its weekly supermarket bill of $150."),
    _depth("increased_reasoning", "If the instruction can be solved with a few simple thinking steps, rewrite "
           "it to explicitly ask for multiple-step reasoning.",
           "Write a poem about the sea whose stanzas follow a ship from departure to return, and explain step by "
           "step how each stanza moves the journey on.",
           "Explain step by step how a refrigerator moves heat from inside to outside, following the refrigerant "
           "around its loop.",
           "List three ways to save money on groceries, and for each one work out the saving on a weekly budget of "
           "$80."),
    _depth("complicate_input", "Add complex input data the task must work on, such as a table, code or a "
           "longer passage.",
           "Write a poem about the sea using the facts in this table: | ocean | depth (m) |; | Pacific | 10,994 |; "
           "| Atlantic | 8,376 |.",
           "Explain how a refrigerator keeps food cold, using these readings: | time | inside (°C) | coil (°C) |; | "
           "0 min | 12 | 5 |; | 30 min | 4 | -20 |.",
           "List three ways to save money on groceries, given this receipt: milk $3.50, bread $2.80, chicken $9.00, "
           "apples $4.20, crisps $3.00."),
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
