"""The reward: DEITA-style expected-score scorers, InsTag-style tag counting, embedding novelty, an optional HF
reward model, and their weighted sum.

Expected score (hkust-nlp/deita): at the first generated position take the logprobs of the tokens "1".."6",
softmax over those present, and dot with [1..6]. Token ids come from each engine's tokenizer; vLLM and OpenAI
servers return only the top-k (default 20) tokens, so the softmax is over the digits present there. When no
digit is present the score is None and the failure is counted (deita returns 3.0 silently: their issue #36).
Each scorer makes one batched call per wave. `SCORERS` is the registry: every other module (config, export,
card, report) derives the scores and roles of a run from it.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from idea_mcts.config import RewardConfig
from idea_mcts.dispatch import Calls, DirectCalls, run_sync
from idea_mcts.engines.base import Prompt
from idea_mcts.roles import RoleClient

if TYPE_CHECKING:
    from idea_mcts.config import EvolveConfig

DIGITS = ("1", "2", "3", "4", "5", "6")
PAPER_SCORES = ("quality", "diversity", "complexity")
"""The three scores of the paper's reward, in the order of its data-quality table."""

DEITA_COMPLEXITY = ("You are a helpful assistant. Please identify the complexity score of the following user query. "
                    "\n##Query: {instruction}  \n##Complexity: ")
DEITA_QUALITY = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to "
                 "the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
GENERAL_COMPLEXITY = (
    "Rate how complex the user query below is to answer well, on a scale of 1 to 6: 1 = trivial, one fact or word; "
    "2 = simple, one short step; 3 = a short task with one requirement; 4 = several steps or requirements; 5 = many "
    "constraints or specialist knowledge; 6 = a multi-part expert project. Answer with one digit.\n\n"
    "##Query: {instruction}")
GENERAL_COMPLEXITY_SHOTS = (
    ("What is 2 + 2?", 1),
    ("Design a scalable recommendation system for an online bookstore with ten million users: describe the data "
     "pipeline, the model, how you evaluate it offline and online, and how you handle cold-start users.", 6),
    ("Describe the water cycle in a paragraph.", 3),
    ("Write a persuasive letter to a city council asking for more bike lanes, with three arguments backed by "
     "figures and a reply to the main objection.", 5),
    ("Name a colour.", 1),
)
"""Scored queries anchoring the scale, shown to a general judge as earlier chat turns. Zero-shot, SmolLM2-135M
ranks the shipped complexity probes against their order (Spearman rho -0.43, 1 of 12 length-matched pairs
right); with these turns, rho 0.89 and 12 of 12 (`idea-mcts validate-judge`)."""
GENERAL_QUALITY = (
    "Response: {output}\n\nThe response above was written to answer this request: {instruction}\n\nHow good is the "
    "response as an answer to the request, from 1 (wrong, repetitive, off topic or a refusal) to 6 (correct, complete "
    "and helpful)? Answer with one digit.")
GENERAL_QUALITY_SHOTS = (
    ("What is the boiling point of water at sea level?", "Water boils at 100 °C (212 °F) at sea level.", 6),
    ("Name a primary colour.", "I'm sorry, I cannot help with that.", 1),
    ("Spell the word 'house'.", "house house house house house house house house", 1),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by Charles Dickens in 1850.", 1),
    ("Name three vegetables.", "Apples, bananas and cherries are three vegetables.", 1),
    ("Give a tip for better sleep.", "Keep a regular bedtime and avoid screens for an hour before bed.", 5),
)
"""Scored (question, response) pairs anchoring the quality scale, shown as earlier chat turns; the response comes
before the request in the prompt. Tuned on the shipped quality probes (tuned split) with Qwen2.5-Coder-0.5B-Instruct:
the previous prompt (request first, four examples) ordered 8 of 12 pairs right, this one 10 of 12; the two it
misses are facts the model does not know (it answers that a spider has four legs). docs/benchmarks.md."""
GENERAL_QUALITY_LABEL = "Rating"
HELDOUT_COMPLEXITY = (
    "How much work and expertise does it take to answer the request below well? 1 = none (a word or a greeting); "
    "2 = a fact or one sentence; 3 = a paragraph or a small task; 4 = a task with several steps or conditions; 5 = a "
    "hard task needing expert knowledge and many conditions; 6 = a large professional project. Reply with a single "
    "digit.\n\nRequest: {instruction}")
HELDOUT_COMPLEXITY_SHOTS = (
    ("Say thanks.", 1),
    ("Write a parser for ISO 8601 dates in Rust that validates time zones, reports malformed input with line numbers "
     "and comes with unit tests and a benchmark.", 6),
    ("Describe a sunset in two sentences.", 2),
    ("Plan a birthday party for ten children with a budget, a schedule and two indoor games in case of rain.", 4),
)
HELDOUT_QUALITY = (
    "Request: {instruction}\n\nAnswer given: {output}\n\nGrade the answer given from 1 to 6: 1 if it is false, "
    "repeats itself, ignores the request or refuses; 6 if it is accurate, complete and useful. Reply with a single "
    "digit.")
HELDOUT_QUALITY_SHOTS = (
    ("What is the capital of France?", "Paris is the capital of France.", 6),
    ("What does the Moon orbit?", "The Moon is made of cheese and orbits Mars.", 1),
    ("How long should I boil an egg?", "I cannot answer questions about cooking.", 1),
    ("Are whales mammals?", "Whales are fish that breathe water, like sharks.", 1),
    ("Write a sentence about a cat.", "cat cat cat cat cat cat cat cat", 1),
    ("Give a tip for staying hydrated.", "Drink water before you feel thirsty and carry a bottle when you go out.", 5),
)
"""The `heldout` preset: a second judge prompt of each kind, with other wording, scale anchors and examples than
`general`, for judging data that a search optimised with `general` (bench/data_quality.py, the comparison's data
table): a gain the search's own prompt reports could be the search fitting that prompt. Validated on the probes
like any judge (`idea-mcts validate-judge roles.complexity.prompt=heldout roles.quality.prompt=heldout`)."""
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
TAG_REQUEST = ("Please identify tags of user intentions in the following user query and provide an explanation "
               "for each tag. Please respond in the JSON format {\"tag\": str, \"explanation\": str}.\n"
               "User query: {instruction}")
TAG_PREFILL = '[{"tag": "'


class ScoreMeans:
    """Running means of quality, diversity and complexity over score mappings (node scores, dataset rows,
    trees.jsonl records); missing and NaN values are left out. `result()` adds `mean`: the mean of those
    present — the paper's "mean of (Q, D, C)" data-quality table. Sums are exact (`math.fsum`), so a mean does
    not depend on the order values came in (trees finish in another order in a sharded run)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {name: [] for name in PAPER_SCORES}

    def add(self, scores: Mapping[str, Any]) -> None:
        for name in PAPER_SCORES:
            v = scores.get(name)
            if v is not None and not math.isnan(float(v)):
                self.values[name].append(float(v))

    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {n: math.fsum(vs) / len(vs) if vs else None for n, vs in self.values.items()}
        present = [v for v in out.values() if v is not None]
        out["mean"] = math.fsum(present) / len(present) if present else None
        return out


def score_means(scores: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """`ScoreMeans` over `scores`."""
    acc = ScoreMeans()
    for s in scores:
        acc.add(s)
    return acc.result()


def expected_score(logprobs: dict[str, float], digits: Sequence[str] = DIGITS) -> float | None:
    """Softmax over the digits present, dotted with their values; None when no digit is present."""
    present = [(int(d), logprobs[d]) for d in digits if d in logprobs]
    if not present:
        return None
    top = max(lp for _, lp in present)
    weights = [(v, math.exp(lp - top)) for v, lp in present]
    return sum(v * w for v, w in weights) / sum(w for _, w in weights)


def parse_tags(text: str) -> list[str] | None:
    """Distinct intent tags from a tagger reply: a JSON list of {"tag", "explanation"} objects (or strings, or
    one object), else a regex over `"tag": "..."`. None when nothing parses."""
    tags: list[str] = []
    for candidate in (text, *re.findall(r"\[.*\]", text, flags=re.S)):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        items = data if isinstance(data, list) else [data]
        tags = [str(it.get("tag", "")) if isinstance(it, dict) else str(it) for it in items
                if isinstance(it, (dict, str))]
        break
    if not tags:
        tags = re.findall(r'"tag"\s*:\s*"([^"]+)"', text)
    distinct = list(dict.fromkeys(t.strip().lower() for t in tags if t and t.strip()))
    return distinct or None


def _fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with its `{name}` fields filled in one pass (a value holding "{output}" stays as it is)."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


@cache
def _shot_turns(template: str, label: str, names: tuple[str, ...], shots: tuple[tuple[Any, ...], ...]
                ) -> tuple[tuple[str, str], ...]:
    """The (role, content) turns of the scored examples (the same for every prompt: rendered once)."""
    turns: list[tuple[str, str]] = []
    for *values, score in shots:
        turns += [("user", _fill(template, dict(zip(names, values, strict=True)))), ("assistant", f"{label}: {score}")]
    return tuple(turns)


def _few_shot(template: str, names: tuple[str, ...], shots: tuple[tuple[Any, ...], ...], fields: dict[str, str],
              label: str) -> Prompt:
    """Chat turns: each scored example (`names` values, then its score) as a user turn and its `label: <digit>`
    reply, then the item with the reply prefilled up to the digit."""
    msgs = [{"role": r, "content": c} for r, c in _shot_turns(template, label, names, shots)]
    return [*msgs, {"role": "user", "content": _fill(template, fields)}, {"role": "assistant", "content": f"{label}: "}]


def complexity_prompt(preset: str, instruction: str) -> Prompt:
    if preset == "deita":
        return DEITA_COMPLEXITY.replace("{instruction}", instruction)
    if preset == "heldout":
        return _few_shot(HELDOUT_COMPLEXITY, ("instruction",), HELDOUT_COMPLEXITY_SHOTS, {"instruction": instruction},
                         "Effort")
    return _few_shot(GENERAL_COMPLEXITY, ("instruction",), GENERAL_COMPLEXITY_SHOTS, {"instruction": instruction},
                     "Complexity score")


def quality_prompt(preset: str, instruction: str, output: str) -> Prompt:
    if preset == "deita":
        return DEITA_QUALITY.replace("{instruction}", instruction).replace("{output}", output)
    if preset == "heldout":
        return _few_shot(HELDOUT_QUALITY, ("instruction", "output"), HELDOUT_QUALITY_SHOTS,
                         {"instruction": instruction, "output": output}, "Grade")
    return _few_shot(GENERAL_QUALITY, ("instruction", "output"), GENERAL_QUALITY_SHOTS,
                     {"instruction": instruction, "output": output}, GENERAL_QUALITY_LABEL)


def tagger_prompt(preset: str, instruction: str) -> tuple[Prompt, str]:
    """The tagger prompt and the prefix to put back before its reply for parsing."""
    msg = TAG_REQUEST.replace("{instruction}", instruction)
    if preset == "instag":  # OFA-Sys/InsTagger, FastChat vicuna_v1.1 template
        return f"{VICUNA_SYSTEM} USER: {msg} ASSISTANT:", ""
    return [{"role": "user", "content": msg}, {"role": "assistant", "content": TAG_PREFILL}], TAG_PREFILL


@dataclass
class Scored:
    """Scores of one (instruction, response) pair."""

    scores: dict[str, float | None]
    failures: list[str]
    reward: float | None
    """Weighted sum of the scores present; None when every scorer failed (a failed evaluation)."""


@dataclass(frozen=True)
class Origin:
    """Where a scored instruction comes from, for the novelty term (`Reward.novelty`): the seed whose tree holds
    it and the instructions it was evolved from."""

    seed_id: str
    lineage: tuple[str, ...] = ()
    """Its ancestors' instructions, root first, parent last; empty for the root (the seed itself)."""


@dataclass(frozen=True)
class Batch:
    """What the scorers of one call see: the pairs, a stable key per pair (request seeds), the top-k, and where
    each pair's instruction comes from (`origins`, the search's nodes; None outside a search)."""

    instructions: Sequence[str]
    responses: Sequence[str]
    keys: Sequence[str]
    top_logprobs: int
    origins: Sequence[Origin] | None = None


ScoreFn = Callable[["Reward", RoleClient, Batch, Calls], Awaitable[list[float | None]]]


@dataclass(frozen=True)
class Scorer:
    """One term of the reward. `name` is the score's name everywhere: its weight in `RewardConfig`, its key in
    node scores, its dataset column. `role` is the role whose client computes it (roles.<role> in the config);
    `run` scores a batch through `Calls` (the pipelined search's dispatcher, or direct batched calls)."""

    name: str
    role: str
    run: ScoreFn


def _expected(prompt: Callable[[str, str, str], Prompt]) -> ScoreFn:
    """A DEITA-style scorer: the role's prompt preset, then the expected digit at the first generated position."""

    async def run(reward: Reward, client: RoleClient, b: Batch, calls: Calls) -> list[float | None]:
        prompts = [prompt(client.cfg.prompt, i, r) for i, r in zip(b.instructions, b.responses, strict=True)]
        out = await calls.call(client, "next_token_logprobs", prompts, DIGITS, b.top_logprobs)
        return [expected_score(r.logprobs) for r in out]

    return run


async def _tag_count(reward: Reward, client: RoleClient, b: Batch, calls: Calls) -> list[float | None]:
    pairs = [tagger_prompt(client.cfg.prompt, i) for i in b.instructions]
    outs = await calls.call(client, "generate", [(p, k) for (p, _), k in zip(pairs, b.keys, strict=True)])
    tags = [parse_tags(prefix + g.text) for (_, prefix), g in zip(pairs, outs, strict=True)]
    return [None if t is None else float(len(t)) for t in tags]


async def _novelty(reward: Reward, client: RoleClient, b: Batch, calls: Calls) -> list[float | None]:
    """One embed request per instruction (as charged: one request per scorer per node). Its ancestors'
    embeddings are those they were scored with, kept per tree (`Reward.forget`); one not kept (scoring outside a
    search) is requested in the same call."""
    origins = b.origins if b.origins is not None else [None] * len(b.instructions)
    missing = list(dict.fromkeys(t for o in origins if o is not None for t in o.lineage
                                 if t not in reward.kept.get(o.seed_id, {})))
    vectors = await calls.call(client, "embed", [*b.instructions, *missing])
    extra = dict(zip(missing, vectors[len(b.instructions):], strict=True))
    out: list[float | None] = []
    for text, vector, o in zip(b.instructions, vectors[: len(b.instructions)], origins, strict=True):
        if o is None:
            out.append(reward.novelty(vector))
            continue
        kept = reward.kept.setdefault(o.seed_id, {})
        lineage = [kept[t] if t in kept else extra[t] for t in o.lineage]
        out.append(reward.novelty(vector, lineage, None if o.lineage else o.seed_id))
        kept[text] = vector
    return out


async def _reward_model(reward: Reward, client: RoleClient, b: Batch, calls: Calls) -> list[float | None]:
    convs = [[{"role": "user", "content": i}, {"role": "assistant", "content": r}]
             for i, r in zip(b.instructions, b.responses, strict=True)]
    return [float(x) for x in await calls.call(client, "score", convs)]


SCORERS: tuple[Scorer, ...] = (
    Scorer("quality", "quality", _expected(quality_prompt)),
    Scorer("complexity", "complexity", _expected(lambda preset, i, r: complexity_prompt(preset, i))),
    Scorer("diversity", "tagger", _tag_count),
    Scorer("novelty", "embedder", _novelty),
    Scorer("reward_model", "reward_model", _reward_model),
)
"""Every scorer the reward knows; adding one is one entry here (plus its weight in `RewardConfig` and its role
in `RolesConfig`). The paper's reward is the first three: quality + complexity + diversity."""

REFERENCE_CHUNK = 256
"""Seeds per embed call of `Reward.refer_to`."""

SCORE_NAMES = tuple(s.name for s in SCORERS)
SCORER_ROLES = tuple(s.role for s in SCORERS)


class Reward:
    """v = sum of weight * score over the enabled scorers: those given a client (by role)."""

    def __init__(self, weights: RewardConfig, **clients: RoleClient | None) -> None:
        unknown = set(clients) - set(SCORER_ROLES)
        if unknown:
            raise ValueError(f"not scorer roles: {', '.join(sorted(unknown))} (known: {', '.join(SCORER_ROLES)})")
        self.weights = weights
        self.clients = {role: c for role, c in clients.items() if c is not None}
        self.scorers = [s for s in SCORERS if s.role in self.clients]
        self.failures: Counter[str] = Counter()
        """Parse failures per score over the whole run."""
        self.unscored = 0
        """Nodes whose every scorer failed (reward None) over the whole run."""
        self.reference = np.zeros((0, 0), dtype=np.float32)
        """Embeddings of the seeds (`refer_to`): the fixed part of what the novelty term compares with."""
        self.reference_rows: dict[str, int] = {}
        """Seed id -> its row of `reference`."""
        self.kept: dict[str, dict[str, list[float]]] = {}
        """Per tree (seed id), the embeddings of its instructions scored so far: a node's lineage (`forget` drops
        a finished tree's)."""

    def enabled(self) -> list[str]:
        return [s.name for s in self.scorers]

    def methods(self) -> dict[str, str]:
        """How each expected-score scorer read its digits: `full` softmax or `top_k` renormalisation."""
        return {s.name: self.clients[s.role].engine.logprob_method for s in self.scorers
                if s.role in ("quality", "complexity")}

    def score(self, instructions: Sequence[str], responses: Sequence[str], keys: Sequence[str],
              origins: Sequence[Origin] | None = None) -> list[Scored]:
        """Score a batch: one batched call per scorer, straight to the clients."""
        return run_sync(self.ascore(instructions, responses, keys, DirectCalls(), origins))

    async def ascore(self, instructions: Sequence[str], responses: Sequence[str], keys: Sequence[str],
                     calls: Calls, origins: Sequence[Origin] | None = None) -> list[Scored]:
        """Score a batch through `calls`: the scorers run as concurrent strands (roles on different engines
        overlap in the pipelined search). `origins`: where each instruction comes from (the novelty term)."""
        batch = Batch(instructions, responses, keys, self.weights.top_logprobs, origins)
        values = await calls.run_strands([s.run(self, self.clients[s.role], batch, calls) for s in self.scorers])
        cols = {s.name: v for s, v in zip(self.scorers, values, strict=True)}
        out = []
        for j in range(len(instructions)):
            scores = {name: col[j] for name, col in cols.items()}
            failed = [name for name, v in scores.items() if v is None]
            self.failures.update(failed)
            present = [(n, v) for n, v in scores.items() if v is not None]
            reward = sum(getattr(self.weights, n) * v for n, v in present) if present or not scores else None
            self.unscored += reward is None
            out.append(Scored(scores=scores, failures=failed, reward=reward))
        return out

    @property
    def embeds(self) -> bool:
        """Whether the novelty term is on (an embedder): `refer_to` then sends one request per seed."""
        return "embedder" in self.clients

    def refer_to(self, seed_ids: Sequence[str], instructions: Sequence[str]) -> None:
        """Embed the seeds: the reference set of the novelty term, fixed before the search (every seed of the run,
        in every process of a sharded run). Nothing to do without an embedder. The embeddings go through the
        embedder in calls of `REFERENCE_CHUNK` texts (one request-cache line each)."""
        client = self.clients.get("embedder")
        if client is None:
            return
        self.kept.clear()
        vectors: list[list[float]] = []
        for i in range(0, len(instructions), REFERENCE_CHUNK):
            vectors += client.embed(list(instructions[i : i + REFERENCE_CHUNK]))
        self.reference = np.asarray(vectors, dtype=np.float32) if vectors else np.zeros((0, 0), dtype=np.float32)
        self.reference_rows = {sid: i for i, sid in enumerate(seed_ids)}

    def seed_vector(self, seed_id: str) -> np.ndarray:
        """A seed's embedding in the reference (`refer_to`)."""
        return self.reference[self.reference_rows[seed_id]]

    def forget(self, seed_id: str) -> None:
        """The tree of `seed_id` has finished: drop its kept embeddings (memory stays flat in the seeds)."""
        self.kept.pop(seed_id, None)

    def novelty(self, vector: Sequence[float], lineage: Sequence[Sequence[float]] = (),
                seed_id: str | None = None) -> float:
        """1 - the highest cosine similarity (vectors are L2-normalised; below 0 counts as 0) of an instruction to
        the seeds (`refer_to`) and to the instructions it was evolved from (`lineage`); a root (`seed_id`: the
        seed it is) is compared with the other seeds. 1.0 when there is nothing to compare with. A function of
        the instruction, its lineage and the seeds alone: whatever ran before it, in whatever order."""
        v = np.asarray(vector, dtype=np.float32)
        best = 0.0
        if len(self.reference):
            sims = self.reference @ v
            row = self.reference_rows.get(seed_id) if seed_id is not None else None
            if row is not None:
                sims[row] = -1.0  # a root is not compared with itself
            best = max(best, float(sims.max()))
        if len(lineage):
            best = max(best, float((np.asarray(lineage, dtype=np.float32) @ v).max()))
        return 1.0 - best


def build_reward(cfg: EvolveConfig, client: Callable[[str], RoleClient]) -> Reward:
    """The run's reward: a client (from `client(role)`) for every scorer whose role has an engine and weight."""
    return Reward(cfg.reward, **{s.role: client(s.role) for s in SCORERS if cfg.role_engine(s.role)})
