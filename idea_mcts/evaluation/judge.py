"""A judge model behind any engine: verdict parsing, one retry of unparsable verdicts, failure counts.

Verdict formats are MT-Bench's (FastChat llm_judge): a rating `[[7]]` (single-answer grading, 1-10) and a
pairwise choice `[[A]]` / `[[B]]` / `[[C]]` (tie). The *last* verdict in the judge's text counts: judges restate
the format ("for example: Rating: [[5]]") before giving their own, and the final verdict closes the answer.

A judge output without a verdict is retried once, as a follow-up in the same conversation: the judge's first
text as the assistant turn, a short user message asking for the verdict alone, and (`retry_prefill`) the
answer's start prefilled, `Rating: [[` or `Verdict: [[`, so that the judge only has to continue with the value.
(Re-sending the same prompt would give the same text again on a greedy judge.) The retry's text is parsed with
its prefill. A verdict still missing after the retry is a failure: it is
counted in `VerdictCounts.failed`, its item is left out of every aggregate, and it is never replaced by a
default value.

Pairwise comparisons are run in both orders (the model's answer as A, then as B) to cancel position bias, and
combined as FastChat does: the same winner in both orders wins, anything else (a tie, or two orders that
disagree: "inconsistent") is a tie.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from idea_mcts.config import RoleConfig
from idea_mcts.engines.base import Engine, Messages, UsageStats
from idea_mcts.errors import UsageError
from idea_mcts.roles import RoleClient

logger = logging.getLogger(__name__)

T = TypeVar("T")
Choice = Literal["A", "B", "C"]
Outcome = Literal["win", "tie", "loss"]
OUTCOME_SCORE: dict[str, float] = {"win": 1.0, "tie": 0.5, "loss": 0.0}
"""Per-item score of a pairwise outcome for the model under evaluation (ties count half, as in AlpacaEval)."""

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_BACKUP = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")
_CHOICE = re.compile(r"\[\[\s*([ABC])\s*\]\]")

RATING_PREFILL = "Rating: [["
CHOICE_PREFILL = "Verdict: [["
RATING_RETRY = ("Your reply did not end with a rating in the required format. Reply with only your rating of "
                "the response, on a scale of 1 to 10, strictly in this format: [[rating]], for example [[5]].")
CHOICE_RETRY = ('Your reply did not end with a verdict in the required format. Reply with only your final '
                'verdict: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for a tie.')


def parse_rating(text: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """The last `[[x]]` in `text` (FastChat's backup `[x]` when there is none), if it lies in [low, high]."""
    matches = _RATING.findall(text) or _RATING_BACKUP.findall(text)
    if not matches:
        return None
    value = float(matches[-1])
    return value if low <= value <= high else None


def parse_choice(text: str) -> Choice | None:
    """The last `[[A]]`, `[[B]]` or `[[C]]` in `text`."""
    matches = _CHOICE.findall(text)
    return matches[-1] if matches else None  # type: ignore[return-value]


def combine_orders(model_as_a: Choice | None, model_as_b: Choice | None) -> tuple[Outcome | None, bool]:
    """The outcome for the model from its two games (model's answer shown as A, then as B), and whether the two
    orders agreed. A missing verdict in either order makes the item a failure (None)."""
    if model_as_a is None or model_as_b is None:
        return None, False
    first = {"A": "win", "B": "loss", "C": "tie"}[model_as_a]
    second = {"B": "win", "A": "loss", "C": "tie"}[model_as_b]
    if first == second:
        return first, True  # type: ignore[return-value]
    return "tie", False


@dataclass
class JudgeConfig:
    """How the judge model samples its verdicts."""

    max_new_tokens: int = 512
    """Most tokens per judgment (FastChat gives GPT-4 2048; the explanation comes before the verdict, so a cut
    explanation is an unparsable verdict)."""
    temperature: float = 0.0
    """Judge sampling temperature (MT-Bench judges greedily)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    retry_unparsable: bool = True
    """Ask once more, in the same conversation, for the verdict alone when a judgment has none."""
    retry_max_new_tokens: int = 16
    """Most tokens for the retry's answer (a verdict alone)."""
    retry_prefill: bool = True
    """Prefill the retry's answer with the verdict's opening (`Rating: [[`, `Verdict: [[`): the judge continues
    it (engines continue a chat whose last message is the assistant's; OpenAI's own API does not, vLLM does)."""
    seed: int = 0
    """Run seed for the per-request seeds of the judge's calls."""


@dataclass
class JudgedBenchConfig:
    """What every judged benchmark (AlpacaEval, MT-Bench) takes besides its data: how many items, how the judge
    judges, the run seed. Subclasses add their data and answer settings."""

    limit: int | None = None
    """Evaluate only the first `limit` items (after any selection of the benchmark's own); for demos and tests."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """Judge sampling and retry settings."""
    seed: int = 0
    """Run seed: per-request seeds of the evaluated model's outputs and of the judgments derive from it."""

    bench: ClassVar[str] = "benchmark"
    """The benchmark's name in error messages."""

    def __post_init__(self) -> None:
        if isinstance(self.judge, dict):
            self.judge = JudgeConfig(**self.judge)
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"{self.bench} limit must be >= 1, got {self.limit}")


@dataclass
class VerdictCounts:
    """What happened to the judge's verdicts."""

    requests: int = 0
    """Judgments asked for (not counting retries)."""
    parsed_first: int = 0
    """Verdicts parsed from the first answer."""
    retried: int = 0
    """Judgments without a verdict that were asked again once."""
    recovered: int = 0
    """Retries that gave a verdict."""
    failed: int = 0
    """Judgments still without a verdict after the retry (or with retries off): left out of every figure."""

    def add(self, other: VerdictCounts) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Verdict(Generic[T]):
    """One judgment: the parsed value (None = failure) and the judge's text(s)."""

    key: str
    value: T | None
    text: str
    """The judge's first answer."""
    retry_text: str | None = None
    """The retry's answer, when there was one."""


@dataclass
class Judge:
    """A judge model: batched judgments through a `RoleClient` (per-request seeds derived from the key)."""

    engine: Engine
    cfg: JudgeConfig = field(default_factory=JudgeConfig)
    role: str = "judge"

    def __post_init__(self) -> None:
        self.client = RoleClient(self.role, self.engine, RoleConfig(
            engine=None, max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
            top_p=self.cfg.top_p), self.cfg.seed)
        self.retry_client = RoleClient(self.role, self.engine, RoleConfig(
            engine=None, max_new_tokens=self.cfg.retry_max_new_tokens, temperature=self.cfg.temperature,
            top_p=self.cfg.top_p), self.cfg.seed)
        self.counts = VerdictCounts()

    @property
    def usage(self) -> UsageStats:
        total = UsageStats()
        total.add(self.client.stats)
        total.add(self.retry_client.stats)
        return total

    def judge(self, prompts: Sequence[Messages], keys: Sequence[str], parse: Callable[[str], T | None],
              retry_message: str, retry_prefill: str = "") -> list[Verdict[T]]:
        """Judge every prompt in one batch, retry the unparsable ones once in one more batch."""
        if len(prompts) != len(keys):
            raise ValueError("one key per judge prompt")
        outs = self.client.generate(list(prompts), list(keys))
        verdicts = [Verdict(key=k, value=parse(g.text), text=g.text) for k, g in zip(keys, outs, strict=True)]
        counts = VerdictCounts(requests=len(verdicts), parsed_first=sum(v.value is not None for v in verdicts))
        bad = [i for i, v in enumerate(verdicts) if v.value is None]
        if bad and self.cfg.retry_unparsable:
            prefill = retry_prefill if self.cfg.retry_prefill else ""
            follow_ups: list[Messages] = [[*prompts[i], {"role": "assistant", "content": verdicts[i].text},
                                           {"role": "user", "content": retry_message}] for i in bad]
            if prefill:
                follow_ups = [[*f, {"role": "assistant", "content": prefill}] for f in follow_ups]
            again = self.retry_client.generate(follow_ups, [f"{keys[i]}:retry" for i in bad])
            counts.retried = len(bad)
            for i, g in zip(bad, again, strict=True):
                verdicts[i].retry_text = prefill + g.text
                verdicts[i].value = parse(verdicts[i].retry_text)
            counts.recovered = sum(verdicts[i].value is not None for i in bad)
        counts.failed = sum(v.value is None for v in verdicts)
        if counts.failed:
            logger.warning("judge %s: %d of %d verdicts unparsable%s", self.engine.model_id, counts.failed,
                           counts.requests, " after one retry" if self.cfg.retry_unparsable else "")
        self.counts.add(counts)
        return verdicts

    def ratings(self, prompts: Sequence[Messages], keys: Sequence[str]) -> list[Verdict[float]]:
        return self.judge(prompts, keys, parse_rating, RATING_RETRY, RATING_PREFILL)

    def choices(self, prompts: Sequence[Messages], keys: Sequence[str]) -> list[Verdict[Choice]]:
        return self.judge(prompts, keys, parse_choice, CHOICE_RETRY, CHOICE_PREFILL)

    def report(self) -> dict[str, Any]:
        """Verdict counts and the judge's usage (calls, tokens, time)."""
        return {"model": self.engine.model_id, "config": asdict(self.cfg), "verdicts": self.counts.as_dict(),
                "usage": self.usage.as_dict()}


def summarize_pairwise(outcomes: Sequence[Outcome | None], consistent: Sequence[bool], *, seed: int = 0
                       ) -> dict[str, Any]:
    """Win rate of the model (ties half) with its bootstrap 95% CI, counts, and position consistency; failed
    items (None) are counted and left out."""
    from idea_mcts.evaluation.stats import bootstrap_mean_ci

    done = [(o, c) for o, c in zip(outcomes, consistent, strict=True) if o is not None]
    out: dict[str, Any] = {
        "n": len(done), "failed": len(outcomes) - len(done),
        "wins": sum(o == "win" for o, _ in done), "ties": sum(o == "tie" for o, _ in done),
        "losses": sum(o == "loss" for o, _ in done),
        "inconsistent": sum(not c for _, c in done),
    }
    if done:
        ci = bootstrap_mean_ci([OUTCOME_SCORE[o] for o, _ in done], seed=seed)
        out.update(win_rate=round(ci.estimate, 4), win_rate_ci95=[round(ci.low, 4), round(ci.high, 4)],
                   consistency=round(sum(c for _, c in done) / len(done), 4))
    else:
        out.update(win_rate=None, win_rate_ci95=None, consistency=None)
    return out


def item_scores(result: dict[str, Any]) -> dict[str, float]:
    """Per-item scores of a judge-evaluation result (`mtbench.grade_single`: the rating of each question's turn;
    `grade_pairwise` / `alpaca.judge_win_rate`: 1 / 0.5 / 0 per item), keyed by item; failed items are absent."""
    out: dict[str, float] = {}
    for row in result["rows"]:
        key = f"{row['question_id']}:turn{row['turn']}" if "question_id" in row else str(row["index"])
        if row.get("rating") is not None:
            out[key] = float(row["rating"])
        elif row.get("outcome") is not None:
            out[key] = OUTCOME_SCORE[row["outcome"]]
    return out


def paired_difference(result_a: dict[str, Any], result_b: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap 95% CI of mean(score of A) - mean(score of B) over the items both results scored (two
    models or two data arms evaluated on the same questions with the same judge). Items that failed in either
    are left out and counted."""
    from idea_mcts.evaluation.stats import paired_bootstrap_diff_ci

    a, b = item_scores(result_a), item_scores(result_b)
    common = sorted(a.keys() & b.keys())
    out: dict[str, Any] = {"n": len(common), "only_a": len(a.keys() - b.keys()), "only_b": len(b.keys() - a.keys())}
    if not common:
        return {**out, "difference": None, "ci95": None}
    ci = paired_bootstrap_diff_ci([a[k] for k in common], [b[k] for k in common], seed=seed)
    return {**out, "difference": round(ci.estimate, 4), "ci95": [round(ci.low, 4), round(ci.high, 4)]}
