"""The evolved instruction out of an evolver's reply, and the elimination filter (WizardLM's Evol-Instruct).

Small instruct models wrap their rewrite in chatter ("Sure, I can assist you with that! Here's a new version of
the instruction:"), echo the prompt's headers ("#New Instruction#:", "The old instruction: ..."), and run on into
an answer. `extract_instruction` takes the instruction out: it drops leading chatter, takes the text after a
"new instruction" header when there is one, and stops at the next template marker or answer section.

`Eliminator` then drops, with a reason that is counted for run.json (`filtered`), evolutions that:

- `empty`: hold nothing once extracted;
- `truncated` (opt-in, `search.drop_truncated`): stop at the evolver's token limit inside the instruction;
- `unchanged`: equal the parent instruction, or a part of it (no information gain: a Qwen-0.5B rewrite of "Translate
  'Good morning, how are you?' into French." was "Good morning, how are you?");
- `template_leak`: still copy the evolution prompt's template words: a `#Header#` or "New Instruction" /
  "Rewritten Prompt" / "The old instruction" / "Rewrite the instruction" style marker, a run of `LEAK_NGRAM`
  words of the action prompt actually used (the prompts are read, not a fixed list, so user action files are
  covered too), or only the prompt's words and none of the parent's ("Do not answer it and not explain it.");
- `refusal`: are a short refusal ("I'm sorry, I can't ...");
- `degenerate`: are error text, loops of repeated words, or say a run of four words twice;
- `mixed_script`: switch into a script their parent does not use (CJK, Cyrillic, Arabic, ...: small multilingual
  evolvers such as Qwen drop a Chinese word into an English rewrite);
- `answer` (opt-in, `search.drop_answers`): answer the instruction instead of rewriting it. A heuristic (no
  sentence starts like a request: an imperative verb, a question, "Can you", "As a ...", ...; or the parent
  followed by its answer; or by a list of the things it asks a number of), so it is off by default: it also
  drops valid instructions that start otherwise, and misses answers made of imperatives.

`refused_response` flags responses that are a short refusal (WizardLM: "sorry" and under 80 words): the evolved
instruction is then one the responder cannot serve, and the node is dropped (`response_refusal`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from idea_mcts.actions import stem

if TYPE_CHECKING:
    from idea_mcts.dispatch import Calls
    from idea_mcts.roles import RoleClient

LEAK_NGRAM = 6
"""Words in a row shared with the action prompt's own text that count as copying the template."""
REFUSAL_MAX_WORDS = 80
"""A refusal longer than this is taken as a real answer that happens to decline part of the task."""

_NEW = r"(?:new|rewritten|evolved|revised|updated|more\s+(?:demanding|complex|difficult)|harder)"
_THING = r"(?:instruction|prompt|version|task|question|query)"
NEW_HEADER = re.compile(
    rf"(?:^|\n|(?<=[.!:]))[ \t>*_`]*(?:#+[ \t]*)?(?:(?:the|a|my|here\s+is\s+(?:the|a|my)|here's\s+(?:the|a|my))"
    rf"[ \t]+)?(?:{_NEW}[ ,]*)+(?:{_NEW}[ \t]+)?{_THING}s?[ \t]*#*[ \t]*(?:\*\*)?[ \t]*(?::|#|\n)[ \t*]*",
    re.I)
"""A header announcing the rewrite ("#New Instruction#:", "Rewritten Prompt:", "Here is the new instruction:")."""
OLD_HEADER = re.compile(
    r"(?:^|\n)[ \t>*_`]*(?:#+[ \t]*)?(?:the[ \t]+)?(?:old|original|given|initial|input|seed)?[ \t]*"
    r"(?:instruction|prompt)[ \t]*#*[ \t]*(?:\*\*)?[ \t]*:", re.I)
"""A header echoing the input ("#Instruction#:", "The old instruction:", "### Original Instruction#")."""
MARKER = re.compile(
    r"#[ \t]*[A-Za-z][A-Za-z ]{0,30}#|\b(?:new|rewritten|old|original|given|evolved)[ \t]+(?:instruction|prompt)s?\b"
    r"|^\s*#{1,6}[ \t]*(?:original|old|given)\b"
    r"|\bre-?(?:write|phrase|word)[ \t]+(?:the|this|that|your|my)[ \t]+(?:\w+[ \t]+)?(?:instruction|prompt)s?\b"
    r"(?![ \t]+(?:manual|booklet|leaflet|sheet|card)s?\b)", re.I | re.M)
"""Template words that must not survive extraction."""
ANSWER_SECTION = re.compile(
    r"\n[ \t*#>]*(?:answer|response|explanation|solution|output|note|example(?: answer)?|reasoning)\b[ \t*#]*:?",
    re.I)
LABEL = re.compile(
    r"^[ \t>*_`#]*(?:explanation|instruction|task|prompt|question|query|request|rewrite)"
    r"[ \t]*(?:\*\*|__)?[ \t]*:\s*(?:\*\*|__)?\s*(?=\S)", re.I)
"""A label glued in front of the rewrite ("Explanation: Explain why ...", "**Task:** Write ..."). "Answer:" and
"Response:" are not labels of an instruction: what follows them is left to the filter."""
CHATTER = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely|great|alright|yes)\b[^\n.!:]*[.!:]+\s*"
    r"|(?:i(?:'d| would) be happy to|i can (?:help|assist))[^\n.!:]*[.!:]+\s*"
    r"|(?:here(?:'s| is| are)|below is|this is)\b[^\n:]{0,100}:\s*)",
    re.I)
REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|sorry, |i apologi[sz]e|i can(?:no|')t (?:help|assist|provide|do|comply|"
    r"fulfil|answer|write|create)|i(?: am|'m) (?:unable|not able) to|as an ai\b|i(?: am|'m) (?:not )?an ai\b"
    r"|i don'?t have the ability)", re.I)
FOREIGN_SCRIPT = re.compile(r"[\u0400-\u04ff\u0600-\u06ff\u0900-\u097f\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf"
                            r"\u4e00-\u9fff\uac00-\ud7af]")
"""Letters of scripts other than Latin and Greek (Cyrillic, Arabic, Devanagari, Thai, kana, CJK, Hangul)."""
DEGENERATE = re.compile(r"^\W*\w*(?:error|exception|traceback)\b|\b([a-z]{2,}\w*(?:\W+\w+){0,3})(?:\W+\1\b){3,}",
                        re.I)
"""Error text, or a phrase of words repeated four times in a row (numbers alone do not count: `[0, 0, 0, 0]`)."""
VERBS = (
    "act add adapt analy[sz]e answer apply argue arrange assess assume begin brainstorm build calculate categori[sz]e "
    "change check choose cite classify collect combine come compare compile complete compose compute condense "
    "consider construct continue convert correct count craft create critique debate debug decide define describe "
    "design detail determine develop devise discuss distinguish do draft draw edit elaborate email enumerate "
    "ensure estimate evaluate examine expand explain explore express extract fill find finish fix focus follow "
    "format formulate generate give go greet guess help highlight identify illustrate imagine implement improve "
    "include incorporate indicate infer interpret investigate justify keep label let list locate make map match "
    "mention modify name note offer optimi[sz]e order organi[sz]e outline paraphrase perform pick plan play predict "
    "prepare present pretend produce propose prove provide put rank rate read recommend reflect refactor rephrase "
    "replace reply report research respond restate review revise rewrite say schedule select send share show "
    "simplify sketch solve sort specify spell split state suggest summari[sz]e support take talk teach tell test "
    "think trace transform translate try turn use verify walk write")
REQUEST = re.compile(
    rf"^(?:\W*(?:please|kindly|now|then|also|briefly|first|next|finally|carefully|quickly)\W+)?"
    rf"(?:{'|'.join(VERBS.split())})\b"
    r"|^\W*(?:can|could|would|will|should|do|does|did|is|are|what|which|who|whom|whose|when|where|why|how)\b.*\?"
    r"|^\W*(?:can|could|would) you\b|^\W*(?:i need|i want|i'd like|i would like|help me|you are|suppose|given|using"
    r"|based on|as an?|for an?|in (?:an?|one|two|three|four|five|\d+)|with(?:out)?|if|imagine|pretend)\b",
    re.I)
"""How an instruction's sentence starts: an imperative verb (optionally after "please" and the like), a question,
or a request opener ("Can you", "I need", "As a ...", "Given ...", "In 100 words, ...")."""


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _words(text: str) -> list[str]:
    """Lower-case words; quotes around a word are not part of it ("'Good" is "good")."""
    return [w.strip("'") for w in re.findall(r"[a-z0-9']+", text.lower()) if w.strip("'")]


def _strip_wrappers(text: str) -> str:
    text = text.strip().strip("*_`").strip()
    if len(text) >= 2 and (text[0] + text[-1]) in ('""', "''", "\u201c\u201d"):
        text = text[1:-1].strip()
    return text


def extract_instruction(text: str) -> str:
    """The evolved instruction from the evolver's reply ('' when none is left): leading chatter, headers and a
    glued-on label ("Explanation:", "Task:") dropped, the text after a "new instruction" header taken, cut at the
    next template marker or answer section."""
    text = text.strip()
    for _ in range(3):  # "Sure! Here is the new instruction:" is two chatter sentences
        text = CHATTER.sub("", text, count=1).lstrip()
    text = LABEL.sub("", text, count=1)
    headers = list(NEW_HEADER.finditer(text))
    tail = [m for m in headers if text[m.end():].strip()]
    if tail:  # the rewrite follows its header; an empty trailing header is a leak cut below
        text = text[tail[-1].end():] if not text[:tail[-1].start()].strip() or OLD_HEADER.search(text) \
            else text[tail[0].end():]
    cut = [m.start() for rx in (NEW_HEADER, OLD_HEADER, ANSWER_SECTION) if (m := rx.search(text)) and m.start() > 0]
    if cut:
        text = text[:min(cut)]
    text = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0] if OLD_HEADER.match(text) is None else text
    return _strip_wrappers(text)


def template_ngrams(prompts: Iterable[str], n: int = LEAK_NGRAM) -> set[tuple[str, ...]]:
    """Word n-grams of the action prompts (with the `{instruction}` slot removed): copying one is a leak."""
    grams: set[tuple[str, ...]] = set()
    for p in prompts:
        words = re.findall(r"[a-z0-9']+", p.replace("{instruction}", " ").lower())
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return grams


def template_markers(prompts: Iterable[str]) -> set[str]:
    """The `#Header#` markers the action prompts use (e.g. `#instruction#`, `#new instruction#`)."""
    return {_norm(m) for p in prompts for m in re.findall(r"#[^#\n]{1,40}#", p)}


def is_refusal(text: str, max_words: int = REFUSAL_MAX_WORDS) -> bool:
    """A short refusal: refusal wording in a text of at most `max_words` words."""
    return bool(REFUSAL.search(text)) and len(text.split()) <= max_words


def looks_like_request(text: str) -> bool:
    """Whether the text asks for something: one of its sentences starts like a request (`REQUEST`) or ends
    with a question mark. The `answer` heuristic drops evolutions for which this is False."""
    sentences = [s.strip(" \t*#>-\"'") for s in re.split(r"(?<=[.!?:;])\s+|\n", text) if s.strip()]
    return any(REQUEST.search(s) or s.endswith("?") for s in sentences)


def _content(words: Iterable[str]) -> set[str]:
    """The words of four letters or more (a rough cut of the content words)."""
    return {w for w in words if len(w) >= 4}


REQUIREMENT = re.compile(r"\b(?:must|should|make sure|(?:is|are) required|no more than|at (?:least|most)|exactly)\b",
                         re.I)
"""Words of a sentence that states a requirement of the answer."""


def answers_after_parent(text: str, parent: str) -> bool:
    """The parent instruction whole, then a colon or a sentence end, then an answer ("List five fruits that are
    high in vitamin C: a lemon, an apple, a banana."; "What are the main causes of traffic congestion in cities?
    The primary reason is the excessive use of cars."): the rewrite gives its answer away. What follows is
    taken as an answer when it neither asks for anything (`looks_like_request`) nor states a requirement
    (`REQUIREMENT`: "Each tip must be under 20 words."), so added input data after a colon is dropped too."""
    for m in re.finditer(r"[:.!?](?=\s|$)", text):
        if _words(text[:m.start()]) == _words(parent):
            tail = text[m.end():]
            return bool(tail.strip()) and not looks_like_request(tail) and not REQUIREMENT.search(tail)
    return False


COUNT = re.compile(r"\b(?:two|three|four|five|six|seven|eight|nine|ten|\d+)\b", re.I)
LIST_START = re.compile(r"\b(?:such as|including|like|e\.g\.)|:", re.I)
LIST_SPLIT = re.compile(r"[,;\[\]\"\u201c\u201d]|\b(?:and|or)\b", re.I)


def gives_items_away(text: str, parent: str, min_items: int = 3) -> bool:
    """The parent asks for a number of things ("List five fruits ...") and the rewrite extends it with a list of
    at least `min_items` short items after "such as", "including", "like" or a colon ("..., including apples,
    oranges, grapes, lemons, and brinjals."): the rewrite gives its answer away."""
    head = stem(parent)
    if not COUNT.search(parent) or not text.lower().startswith(head.lower()):
        return False
    listed = LIST_START.split(text[len(head):], maxsplit=1)
    items = [x for x in LIST_SPLIT.split(listed[-1]) if 1 <= len(_words(x)) <= 3]
    return len(listed) == 2 and len(items) >= min_items


def repeats_itself(text: str, parent: str, n: int = 4) -> bool:
    """A run of `n` words that the rewrite says twice, and the parent did not ("... to support a local
    non-profit organization that is supporting a local non-profit organization")."""
    mine, before = Counter(_ngrams(_words(text), n)), Counter(_ngrams(_words(parent), n))
    return any(c > 1 and c > before[g] for g, c in mine.items())


@dataclass
class Eliminator:
    """The elimination filter for one run; `counts` holds the drops per reason."""

    action_prompts: Sequence[str]
    """The action prompts in use (their words and `#Header#` markers are the template)."""
    drop_answers: bool = False
    """Also drop evolutions that look like an answer, not an instruction (heuristic)."""
    drop_truncated: bool = False
    """Also drop evolutions cut at the token limit inside the instruction (`cut_off`)."""
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._grams = template_ngrams(self.action_prompts)
        self._markers = template_markers(self.action_prompts)
        self._vocab = {w for p in self.action_prompts for w in _words(p.replace("{instruction}", " "))}

    def reason(self, text: str, parent: str, cut_off: bool = False) -> str | None:
        """Why an extracted evolution of `parent` is dropped, or None to keep it (not counted). `cut_off`: the
        reply stopped at its token limit inside the extracted text (`cut_off`): dropped with `drop_truncated`."""
        if not text.strip():
            return "empty"
        if cut_off and self.drop_truncated:
            return "truncated"
        said = " ".join(_words(text))
        if said and f" {said} " in f" {' '.join(_words(parent))} ":  # nor do punctuation, case or a cut
            return "unchanged"
        if is_refusal(text):
            return "refusal"
        low = _norm(text)
        if MARKER.search(text) or any(m in low for m in self._markers):
            return "template_leak"
        words = re.findall(r"[a-z0-9']+", low)
        parent_grams = {tuple(w) for w in _ngrams(re.findall(r"[a-z0-9']+", _norm(parent)), LEAK_NGRAM)}
        if any(g in self._grams and g not in parent_grams for g in _ngrams(words, LEAK_NGRAM)):
            return "template_leak"
        if len(words) >= 3 and set(words) <= self._vocab and not _content(words) & _content(_words(parent)):
            return "template_leak"  # made of the prompt's own words only ("Do not answer it and not explain it.")
        if FOREIGN_SCRIPT.search(text) and not FOREIGN_SCRIPT.search(parent):
            return "mixed_script"
        if DEGENERATE.search(text) or (len(words) >= 15 and len(set(words)) / len(words) < 0.35) \
                or repeats_itself(text, parent):
            return "degenerate"
        if self.drop_answers and (not looks_like_request(text) or answers_after_parent(text, parent)
                                  or gives_items_away(text, parent)):
            return "answer"
        return None

    def check(self, text: str, parent: str, cut_off: bool = False) -> str | None:
        """`reason`, counted."""
        why = self.reason(text, parent, cut_off)
        if why is not None:
            self.counts[why] += 1
        return why

    def check_reply(self, reply: str, parent: str, finish_reason: str | None) -> tuple[str, str | None]:
        """An evolver's whole reply (any prefilled start included) -> the extracted instruction and `check`'s
        reason to drop it (counted), or None to keep it."""
        text = extract_instruction(reply)
        return text, self.check(text, parent, cut_off(reply, text, finish_reason))

    def check_response(self, response: str) -> str | None:
        """`response_refusal` (counted) when the response is a short refusal, else None."""
        if is_refusal(response):
            self.counts["response_refusal"] += 1
            return "response_refusal"
        return None


REASONS = ("empty", "truncated", "unchanged", "template_leak", "refusal", "degenerate", "mixed_script", "answer",
           "off_task", "invalid", "gate_unparsed", "response_refusal")
"""Every reason `Eliminator` counts (run.json lists them all, zeros included)."""


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def cut_off(reply: str, text: str, finish_reason: str | None) -> bool:
    """Whether the evolver's reply stopped at its token limit (`finish_reason` "length") inside the extracted
    instruction: the instruction runs to the reply's end. A reply cut in an answer section that the extraction
    dropped is not cut off."""
    tail = _words(text)[-5:]
    return finish_reason == "length" and bool(tail) and _words(reply)[-len(tail):] == tail


VALIDITY_PROMPT = (
    "Original instruction: {parent}\n\nNew instruction: {text}\n\nIs the new instruction a complete, "
    "self-contained instruction that someone could answer, and does it keep the task of the original one? "
    "Answer Yes or No.")
VALIDITY_CANDIDATES = ("Yes", "No")


def validity_prompt(text: str, parent: str) -> list[dict[str, str]]:
    """The validity gate's question, with the reply prefilled up to the Yes/No token."""
    return [{"role": "user", "content": VALIDITY_PROMPT.replace("{parent}", parent).replace("{text}", text)},
            {"role": "assistant", "content": "Answer:"}]


def p_yes(logprobs: dict[str, float]) -> float | None:
    """P(Yes) renormalised over Yes and No (those present); None when neither is present."""
    if not any(c in logprobs for c in VALIDITY_CANDIDATES):
        return None
    weights = {c: math.exp(logprobs[c]) if c in logprobs else 0.0 for c in VALIDITY_CANDIDATES}
    return weights["Yes"] / (weights["Yes"] + weights["No"])


def gate_judge(clients: Mapping[str, RoleClient]) -> RoleClient:
    """The judge that answers the validity gate: the complexity judge, else the quality judge."""
    judge = clients.get("complexity") or clients.get("quality")
    if judge is None:
        raise ValueError("search.validity_gate needs a complexity or quality judge")
    return judge


async def ask_validity(calls: Calls, judge: RoleClient, texts: Sequence[str], parents: Sequence[str], top_k: int
                       ) -> list[float | None]:
    """The validity gate's P(Yes) for each rewrite of its parent (one request group; None where neither Yes nor
    No is among the judge's top-k: `p_yes`)."""
    prompts = [validity_prompt(t, p) for t, p in zip(texts, parents, strict=True)]
    results = await calls.call(judge, "next_token_logprobs", prompts, VALIDITY_CANDIDATES, top_k)
    return [p_yes(r.logprobs) for r in results]
