"""The reward: DEITA-style expected-score scorers, InsTag-style tag counting, embedding novelty, an optional HF
reward model, and their weighted sum.

Expected score (hkust-nlp/deita): at the first generated position take the logprobs of the tokens "1".."6",
softmax over those present, and dot with [1..6]. Token ids come from each engine's tokenizer; vLLM and OpenAI
servers return only the top-k (default 20) tokens, so the softmax is over the digits present there. When no
digit is present the score is None and the failure is counted (deita returns 3.0 silently: their issue #36).
Each scorer makes one batched call per wave.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from idea_mcts.config import RewardConfig
from idea_mcts.engines.base import Prompt
from idea_mcts.roles import RoleClient

DIGITS = ("1", "2", "3", "4", "5", "6")

DEITA_COMPLEXITY = ("You are a helpful assistant. Please identify the complexity score of the following user query. "
                    "\n##Query: {instruction}  \n##Complexity: ")
DEITA_QUALITY = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to "
                 "the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
GENERAL_COMPLEXITY = (
    "Rate how complex the following user query is to answer well, from 1 (trivial, one simple step) to 6 (very "
    "complex: many constraints, steps, or expert knowledge). Answer with one digit.\n\n##Query: {instruction}")
GENERAL_QUALITY = (
    "Rate the quality of the response to the question, from 1 (useless or wrong) to 6 (excellent: correct, "
    "complete, helpful and well written). Answer with one digit.\n\n#Question#:\n{instruction}\n\n"
    "#Response#:\n{output}")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
TAG_REQUEST = ("Please identify tags of user intentions in the following user query and provide an explanation "
               "for each tag. Please respond in the JSON format {\"tag\": str, \"explanation\": str}.\n"
               "User query: {instruction}")
TAG_PREFILL = '[{"tag": "'


def score_means(scores: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """Mean quality, diversity and complexity over score mappings (node scores, dataset rows, trees.jsonl
    records), and `mean`: the mean of those present — the paper's "mean of (Q, D, C)" data-quality table.
    Missing and NaN values are left out."""
    rows = list(scores)
    out: dict[str, float | None] = {}
    for name in ("quality", "diversity", "complexity"):
        vals = [float(v) for r in rows if (v := r.get(name)) is not None and not math.isnan(float(v))]
        out[name] = sum(vals) / len(vals) if vals else None
    present = [v for v in out.values() if v is not None]
    out["mean"] = sum(present) / len(present) if present else None
    return out


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


def complexity_prompt(preset: str, instruction: str) -> Prompt:
    if preset == "deita":
        return DEITA_COMPLEXITY.replace("{instruction}", instruction)
    return [{"role": "user", "content": GENERAL_COMPLEXITY.replace("{instruction}", instruction)},
            {"role": "assistant", "content": "Complexity score: "}]


def quality_prompt(preset: str, instruction: str, output: str) -> Prompt:
    if preset == "deita":
        return DEITA_QUALITY.replace("{instruction}", instruction).replace("{output}", output)
    return [{"role": "user", "content": GENERAL_QUALITY.replace("{instruction}", instruction)
             .replace("{output}", output)},
            {"role": "assistant", "content": "Quality score: "}]


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
    reward: float


@dataclass
class Reward:
    """v = sum of weight * score over the enabled scorers. Scorers whose client is None are off."""

    weights: RewardConfig
    quality: RoleClient | None = None
    complexity: RoleClient | None = None
    tagger: RoleClient | None = None
    embedder: RoleClient | None = None
    reward_model: RoleClient | None = None
    failures: Counter = field(default_factory=Counter)
    """Parse failures per scorer over the whole run."""
    pool: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    """Embeddings of every instruction scored so far (the novelty reference)."""

    def enabled(self) -> list[str]:
        names = {"quality": "quality", "complexity": "complexity", "tagger": "diversity",
                 "embedder": "novelty", "reward_model": "reward_model"}
        return [score for role, score in names.items() if getattr(self, role) is not None]

    def score(self, instructions: Sequence[str], responses: Sequence[str], keys: Sequence[str]) -> list[Scored]:
        """Score a batch: one batched call per scorer."""
        cols: dict[str, list[float | None]] = {}
        top_k = self.weights.top_logprobs
        if self.quality:
            prompts = [quality_prompt(self.quality.cfg.prompt, i, r) for i, r in zip(instructions, responses,
                                                                                     strict=True)]
            cols["quality"] = [expected_score(r.logprobs) for r in
                               self.quality.next_token_logprobs(prompts, DIGITS, top_k)]
        if self.complexity:
            prompts = [complexity_prompt(self.complexity.cfg.prompt, i) for i in instructions]
            cols["complexity"] = [expected_score(r.logprobs) for r in
                                  self.complexity.next_token_logprobs(prompts, DIGITS, top_k)]
        if self.tagger:
            pairs = [tagger_prompt(self.tagger.cfg.prompt, i) for i in instructions]
            outs = self.tagger.generate([p for p, _ in pairs], keys)
            tags = [parse_tags(prefix + g.text) for (_, prefix), g in zip(pairs, outs, strict=True)]
            cols["diversity"] = [None if t is None else float(len(t)) for t in tags]
        if self.embedder:
            cols["novelty"] = self._novelty(self.embedder.embed(list(instructions)))
        if self.reward_model:
            convs = [[{"role": "user", "content": i}, {"role": "assistant", "content": r}]
                     for i, r in zip(instructions, responses, strict=True)]
            cols["reward_model"] = [float(x) for x in self.reward_model.score(convs)]
        weight = {"quality": self.weights.quality, "complexity": self.weights.complexity,
                  "diversity": self.weights.diversity, "novelty": self.weights.novelty,
                  "reward_model": self.weights.reward_model}
        out = []
        for j in range(len(instructions)):
            scores = {name: col[j] for name, col in cols.items()}
            failed = [name for name, v in scores.items() if v is None]
            self.failures.update(failed)
            reward = sum(weight[n] * v for n, v in scores.items() if v is not None)
            out.append(Scored(scores=scores, failures=failed, reward=reward))
        return out

    def _novelty(self, vectors: list[list[float]]) -> list[float | None]:
        """1 - the highest cosine similarity to the pool (vectors are L2-normalised); 1.0 for the first."""
        out: list[float | None] = []
        for v in np.asarray(vectors, dtype=np.float32):
            best = float((self.pool @ v).max()) if len(self.pool) else 0.0
            out.append(1.0 - max(best, 0.0))
            self.pool = np.vstack([self.pool, v]) if len(self.pool) else v[None, :]
        return out
