"""Judge validation: the metrics on scripted judges whose answers are known, the probe sets, the CLI on the tiny
model (mechanics), and the pass marks of the default `general` prompts on the real models."""

import json
import re

import pytest

from idea_mcts.cli import main
from idea_mcts.config import RewardConfig, RoleConfig
from idea_mcts.engines.base import TokenLogprobs
from idea_mcts.filters import VALIDITY_CANDIDATES
from idea_mcts.judge_check import THRESHOLDS, load_probes, spearman, validate, validate_reward
from idea_mcts.roles import RoleClient
from idea_mcts.run_files import NODES_FILE
from idea_mcts.scoring import Reward
from tests.runs import evolve
from tests.scripted import ScriptedEngine

TIERS = {t["instruction"]: t["tier"] for t in load_probes("complexity")}
PAIRS = load_probes("complexity_pairs")
QPAIRS = load_probes("quality_pairs")
VPAIRS = load_probes("validity_pairs")
BOTH = {name: load_probes(name) + load_probes(name, "held_out")
        for name in ("complexity", "complexity_pairs", "quality_pairs", "validity_pairs")}
"""Both splits of every probe set (the scripted judges below know the answers of both)."""
ALL_TIERS = {t["instruction"]: t["tier"] for t in BOTH["complexity"]}
SIMPLE = {p["simple"] for p in BOTH["complexity_pairs"]}
GOOD = {p["good"] for p in BOTH["quality_pairs"]}
PARENT_OF = {r: p["parent"] for p in BOTH["validity_pairs"] for r in (p["valid"], p["broken"])}
VALID = {p["valid"] for p in BOTH["validity_pairs"]}


def by_tier(texts):
    """A perfect complexity judge: the tier, and 1 / 6 for the simple / complex side of a pair."""
    return [float(ALL_TIERS.get(t, 1 if t in SIMPLE else 6)) for t in texts]


def by_length(texts):
    return [float(len(t.split())) for t in texts]


def check(report, metric, split="tuned"):
    return next(c for c in report["checks"] if f"{c['judge']}.{c['metric']}" == metric and c["split"] == split)


@pytest.mark.parametrize("split", ["tuned", "held_out"])
def test_probe_sets_are_what_they_claim(split):
    assert sorted({t["tier"] for t in load_probes("complexity", split)}) == [1, 2, 3, 4, 5, 6]
    for p in load_probes("complexity_pairs", split):  # matched in length: within a quarter of the longer one
        a, b = len(p["simple"].split()), len(p["complex"].split())
        assert abs(a - b) <= 0.25 * max(a, b), p["id"]
    qpairs, vpairs = load_probes("quality_pairs", split), load_probes("validity_pairs", split)
    assert len(qpairs) >= 10 and all(p["good"] != p["bad"] for p in qpairs)
    assert len(vpairs) >= 10
    for p in vpairs:  # a valid and a broken rewrite of the parent, about as long as each other
        a, b = len(p["valid"].split()), len(p["broken"].split())
        assert p["valid"] != p["broken"] and abs(a - b) <= 0.25 * max(a, b), p["id"]


def test_the_held_out_split_shares_no_item_with_the_tuned_one():
    for name in ("complexity", "complexity_pairs", "quality_pairs", "validity_pairs"):
        tuned, held = load_probes(name), load_probes(name, "held_out")
        texts = lambda rows: {v for r in rows for k, v in r.items() if k not in ("id", "tier", "kind", "parent")}  # noqa: E731
        assert not texts(tuned) & texts(held), name
        assert not {r["id"] for r in tuned} & {r["id"] for r in held}


def test_a_judge_right_only_on_the_tuned_split_fails():
    """A judge that knows the tuned items' answers and guesses on the others passes the tuned split only: it
    fails, and `failed` names the held-out checks."""
    report = validate(lambda texts: [float(TIERS.get(t, 3)) if t in TIERS else (1.0 if t in {p["simple"] for p in PAIRS}
                                                                               else 6.0 if t in {p["complex"] for p in
                                                                                                 PAIRS} else 3.0)
                                     for t in texts],
                      lambda i, r: [6.0 if x in {p["good"] for p in QPAIRS} else 1.0 for x in r])
    assert check(report, "complexity.rho_vs_tiers")["passed"] and check(report, "quality.pairs_right")["passed"]
    assert not report["passed"]
    assert set(report["failed"]) == {"complexity.rho_vs_tiers (held_out)",
                                     "complexity.length_matched_pairs_right (held_out)",
                                     "quality.pairs_right (held_out)"}


def test_spearman_against_hand_computed_values():
    assert spearman([1, 2, 3, 4], [1, 10, 100, 10000]) == pytest.approx(1.0)  # ranks, not values
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1,2,3 ; y = 1.5,1.5,3 (a tie): pearson of the ranks = 0.8660254
    assert spearman([1, 2, 3], [5, 5, 9]) == pytest.approx(0.8660254, abs=1e-6)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 2, 3], [7, 7, 7]) is None


def test_a_judge_that_ranks_right_passes():
    report = validate(by_tier, lambda i, r: [6.0 if x in GOOD else 1.0 for x in r])
    assert report["passed"] and report["failed"] == []
    assert check(report, "complexity.rho_vs_tiers")["value"] > 0.95
    assert check(report, "complexity.length_matched_pairs_right")["value"] == 1.0
    assert check(report, "quality.pairs_right")["value"] == 1.0


def test_a_judge_that_measures_length_fails_the_matched_pairs():
    report = validate(by_length, lambda i, r: by_length(r))
    assert check(report, "complexity.rho_with_length")["value"] == pytest.approx(1.0)
    assert check(report, "complexity.rho_vs_tiers")["value"] > THRESHOLDS["complexity_rho"]  # tiers grow longer
    assert check(report, "complexity.length_matched_pairs_right")["passed"] is False
    assert "complexity.length_matched_pairs_right" in report["failed"] and not report["passed"]


def test_unparsed_scores_count_against_the_judge_and_quick_halves_the_sets():
    report = validate(lambda texts: [None] * len(texts), None, quick=True)
    rho = check(report, "complexity.rho_vs_tiers")
    assert rho["value"] is None and rho["passed"] is False and rho["unparsed"] == rho["n"] == len(TIERS) // 2
    pairs = check(report, "complexity.length_matched_pairs_right")
    assert pairs["value"] == 0.0 and pairs["unparsed"] == len(PAIRS) // 2
    assert not any(c["judge"] == "quality" for c in report["checks"])


def test_the_gate_check_counts_valid_rewrites_put_above_broken_ones():
    def perfect(rewrites, parents):  # P(Yes) 0.9 for a valid rewrite asked with its own parent, else 0.1
        return [0.9 if r in VALID and PARENT_OF[r] == p else 0.1 for r, p in zip(rewrites, parents, strict=True)]

    report = validate(None, None, gate=perfect)
    assert check(report, "validity_gate.pairs_right")["value"] == 1.0 and report["passed"]
    says_yes = validate(None, None, gate=lambda rewrites, parents: [1.0] * len(rewrites))  # ties order nothing
    assert check(says_yes, "validity_gate.pairs_right")["value"] == 0.0
    assert says_yes["failed"] == ["validity_gate.pairs_right", "validity_gate.pairs_right (held_out)"]
    mute = check(validate(None, None, quick=True, gate=lambda rewrites, parents: [None] * len(rewrites)),
                 "validity_gate.pairs_right")
    assert mute["value"] == 0.0 and mute["unparsed"] == mute["n"] == len(VPAIRS) // 2


class GateJudge(ScriptedEngine):
    """Answers the validity gate's question: Yes for a valid probe rewrite asked with its own parent, else No
    (the complexity probes as the scripted engine)."""

    def _next_token_logprobs(self, prompts, candidates, top_k):
        if tuple(candidates) != VALIDITY_CANDIDATES:
            return super()._next_token_logprobs(prompts, candidates, top_k)
        out = []
        for p in prompts:
            parent, new = re.match(r"Original instruction: (.*)\n\nNew instruction: (.*)\n\nIs the new",
                                   p[0]["content"], re.S).groups()
            ok = new in VALID and PARENT_OF[new] == parent
            out.append(TokenLogprobs({"Yes": 0.0, "No": -2.0} if ok else {"Yes": -2.0, "No": 0.0}))
        return out


def test_the_gate_check_asks_the_searchs_question_of_the_gate_judge():
    judge = RoleClient("complexity", GateJudge(), RoleConfig(), run_seed=0)
    report = validate_reward(Reward(RewardConfig(quality=0.0), complexity=judge), gate=True)
    assert check(report, "validity_gate.pairs_right")["value"] == 1.0
    assert "validity_gate.pairs_right" not in {f"{c['judge']}.{c['metric']}"
                                               for c in validate_reward(Reward(RewardConfig(quality=0.0),
                                                                               complexity=judge))["checks"]}


def test_validate_judge_with_a_gate_the_model_cannot_answer(tiny_model_dir, tmp_path, capsys):
    """With `search.validity_gate` the gate is checked too: the tiny model has no single token for Yes, which
    is a one-line error (without the gate the same model validates: test below)."""
    rc = main(["validate-judge", "--quick", f"engines.default.model={tiny_model_dir}", "reward.top_logprobs=1000",
               "search.validity_gate=0.5"])
    assert rc == 2 and "no single token for 'Yes'" in capsys.readouterr().err


def test_validate_judge_cli_on_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["validate-judge", "--quick", "--output_json", str(out), f"engines.default.model={tiny_model_dir}",
               "reward.top_logprobs=1000"])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert rc == (0 if report["passed"] else 3)
    assert "| complexity | rho_vs_tiers | tuned |" in printed and "| quality | pairs_right | held_out |" in printed
    assert {f"{c['judge']}.{c['metric']}" for c in report["checks"]} == {
        "complexity.rho_vs_tiers", "complexity.length_matched_pairs_right", "complexity.rho_with_length",
        "quality.pairs_right", "quality.rho_with_length"}
    assert all(c["unparsed"] == 0 for c in report["checks"])  # every digit is inside the top 1000


def test_validate_judge_needs_a_judge(tmp_path, capsys):
    rc = main(["validate-judge", "reward.quality=0", "reward.complexity=0"])
    assert rc == 2 and "nothing to validate" in capsys.readouterr().err


@pytest.mark.embedded
@pytest.mark.slow
def test_default_general_prompts_on_qwen(tmp_path):
    """The default `general` prompts on the embedded default, Qwen2.5-Coder-0.5B-Instruct (transformers engine,
    batch-invariant, so the same answers every run). Measured: complexity rho 0.959 and 12 of 12 matched pairs on
    the tuned split, 0.905 and 8 of 8 held out; quality 10 of 12 pairs tuned (0.83), 9 of 12 held out (0.75, under
    the 0.8 mark: the model does not know that ice floats or that a spider has eight legs). validate-judge names
    that one check and exits 3."""
    out = tmp_path / "report.json"
    rc = main(["validate-judge", "--output_json", str(out)])  # every role on the default engine
    report = json.loads(out.read_text())
    for split in ("tuned", "held_out"):
        assert check(report, "complexity.rho_vs_tiers", split)["passed"] is True
        assert check(report, "complexity.length_matched_pairs_right", split)["passed"] is True
    assert check(report, "quality.pairs_right")["passed"] is True
    assert report["failed"] == ["quality.pairs_right (held_out)"] and rc == 3


def test_evolve_checks_the_gate_before_it_searches(tiny_model_dir, tmp_path, capsys):
    """`evolve`'s pre-flight judge check covers the validity gate when the run uses one: a judge that cannot
    answer it stops the run before any node is searched (else the search would stop at its first gate call)."""
    out = tmp_path / "out"
    assert evolve(out, tiny_model_dir, "search.validity_gate=0.5") == 2
    assert "no single token for 'Yes'" in capsys.readouterr().err
    assert not (out / NODES_FILE).exists() or not (out / NODES_FILE).read_text().strip()


@pytest.mark.smollm2
def test_smollm2_fails_the_gate_check(smollm2_dir, tmp_path):
    """SmolLM2-135M as the validity gate's judge orders 9 of the 12 probe pairs right (0.75, under the 0.8 mark;
    on 322 rows of demo runs read by hand its P(Yes) was higher for the broken ones, AUC 0.40): validate-judge
    says so on both probe splits and exits 3. (Its quality pairs fail too since the quality prompt was tuned for
    Qwen2.5-Coder-0.5B; its complexity judge still passes.)"""
    out = tmp_path / "report.json"
    rc = main(["validate-judge", "--output_json", str(out), f"engines.default.model={smollm2_dir}",
               "search.validity_gate=0.5"])
    report = json.loads(out.read_text())
    gate = check(report, "validity_gate.pairs_right")
    assert gate["n"] == len(VPAIRS) and gate["unparsed"] == 0 and gate["passed"] is False
    assert {"validity_gate.pairs_right", "validity_gate.pairs_right (held_out)"} <= set(report["failed"])
    assert not [name for name in report["failed"] if name.startswith("complexity")] and rc == 3
