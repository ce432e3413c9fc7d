"""Is a judge fit to steer the search? Score probe sets shipped with the package and compare with their intended
order.

Probe sets (`idea_mcts/data/probes/`, written for this project):

- `complexity.jsonl`: 24 instructions in six tiers of rising complexity ("Say hi." ... a multi-part expert
  project). Reported: Spearman rho of the complexity scores against the tiers.
- `complexity_pairs.jsonl`: 12 pairs of a simple-but-wordy and a complex-but-terse instruction of about the same
  length, so that length alone cannot win. Reported: share of pairs where the complex one scores higher.
- `quality_pairs.jsonl`: 12 instructions with a good and a bad response (wrong, refusal, off-topic, degenerate),
  mostly of similar length. Reported: share of pairs where the good response scores higher.
- `validity_pairs.jsonl` (only when the run uses `search.validity_gate`): 12 instructions, each with a valid
  rewrite and a broken one of about the same length (contradicts itself, loses the task, makes no sense,
  answers itself, chatter: the kinds a small evolver writes). Reported: share of pairs where the gate's judge
  gives the valid rewrite the higher P(Yes).

Each set has a held-out split (`*_heldout.jsonl`: 12 tiered instructions, 8 length-matched pairs, 12 quality
pairs, 12 validity pairs), written after the prompts were tuned on the sets above and never used to tune them:
every check is reported on both splits (`split`: `tuned`, `held_out`), and a judge passes only when it passes
on both (a pass that holds only on the items the prompt was tuned on is not a pass).

The complexity and quality checks also report Spearman rho of the scores with length (instruction words for
complexity, response words for quality): a judge that tracks length more than the intended order is measuring
length. A pair or probe whose score cannot be parsed counts against the judge (and is reported).

    report = validate_reward(reward, gate=True)  # every expected-score judge the reward uses, and the gate
    print(format_report(report))

`idea-mcts validate-judge --config C` runs it from the command line; `evolve` runs the quick version (half of each
set) before the search and warns when a judge fails.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from idea_mcts.errors import UsageError

logger = logging.getLogger(__name__)

THRESHOLDS = {"complexity_rho": 0.8, "complexity_pairs": 0.8, "quality_pairs": 0.8, "validity_pairs": 0.8}
"""Pass marks: Spearman rho against the tiers, share of length-matched pairs ordered right, share of quality
pairs ordered right, share of validity pairs ordered right."""
QUICK_SHARE = 2
"""The quick check uses every QUICK_SHARE-th probe of each set (half)."""
SPLITS = {"tuned": "", "held_out": "_heldout"}
"""Probe splits by name, with the suffix of their files."""

ScoreInstructions = Callable[[list[str]], list[float | None]]
ScorePairs = Callable[[list[str], list[str]], list[float | None]]
"""(instructions, responses) -> scores; also (rewrites, parents) -> the validity gate's P(Yes)."""


def load_probes(name: str, split: str = "tuned") -> list[dict[str, Any]]:
    """A shipped probe set by name (`complexity`, `complexity_pairs`, `quality_pairs`, `validity_pairs`) and split
    (`tuned`, `held_out`)."""
    text = (files("idea_mcts") / "data" / "probes" / f"{name}{SPLITS[split]}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    a = np.asarray(x, dtype=float)
    order = a.argsort(kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tie = a == v
        r[tie] = r[tie].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks); None when fewer than 3 points or a constant."""
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass
class Check:
    """One measurement against its pass mark."""

    judge: str
    metric: str
    value: float | None
    threshold: float | None
    n: int
    unparsed: int
    split: str = "tuned"
    """The probe split measured (`SPLITS`)."""

    @property
    def passed(self) -> bool | None:
        """None for metrics without a pass mark (the length correlations)."""
        if self.threshold is None:
            return None
        return self.value is not None and self.value >= self.threshold

    @property
    def name(self) -> str:
        """`judge.metric`, with the split when it is not the tuned one (`... (held_out)`)."""
        return f"{self.judge}.{self.metric}" + ("" if self.split == "tuned" else f" ({self.split})")


def _subset(items: list[dict[str, Any]], quick: bool) -> list[dict[str, Any]]:
    return items[::QUICK_SHARE] if quick else items


def _words(text: str) -> int:
    return len(text.split())


def check_complexity(score: ScoreInstructions, quick: bool = False, split: str = "tuned") -> list[Check]:
    """Spearman rho vs the tiers, length-matched pairs ordered right, and rho with instruction length."""
    tiers = _subset(load_probes("complexity", split), quick)
    pairs = _subset(load_probes("complexity_pairs", split), quick)
    texts = [t["instruction"] for t in tiers] + [p["simple"] for p in pairs] + [p["complex"] for p in pairs]
    scores = score(texts)
    s_tiers, s_simple, s_complex = (scores[:len(tiers)], scores[len(tiers):len(tiers) + len(pairs)],
                                    scores[len(tiers) + len(pairs):])
    ok = [(s, t["tier"]) for s, t in zip(s_tiers, tiers, strict=True) if s is not None]
    rho = spearman([s for s, _ in ok], [t for _, t in ok]) if ok else None
    right = sum(a is not None and b is not None and b > a for a, b in zip(s_simple, s_complex, strict=True))
    known = [(s, _words(t)) for s, t in zip(scores, texts, strict=True) if s is not None]
    length_rho = spearman([s for s, _ in known], [w for _, w in known]) if known else None
    unparsed_pairs = sum(a is None or b is None for a, b in zip(s_simple, s_complex, strict=True))
    return [Check("complexity", "rho_vs_tiers", rho, THRESHOLDS["complexity_rho"], len(tiers),
                  len(tiers) - len(ok), split),
            Check("complexity", "length_matched_pairs_right", right / len(pairs), THRESHOLDS["complexity_pairs"],
                  len(pairs), unparsed_pairs, split),
            Check("complexity", "rho_with_length", length_rho, None, len(texts), len(texts) - len(known), split)]


def check_quality(score: ScorePairs, quick: bool = False, split: str = "tuned") -> list[Check]:
    """Good-vs-bad response pairs ordered right, and rho of the scores with response length."""
    pairs = _subset(load_probes("quality_pairs", split), quick)
    instructions = [p["instruction"] for p in pairs] * 2
    responses = [p["good"] for p in pairs] + [p["bad"] for p in pairs]
    scores = score(instructions, responses)
    good, bad = scores[:len(pairs)], scores[len(pairs):]
    right = sum(g is not None and b is not None and g > b for g, b in zip(good, bad, strict=True))
    known = [(s, _words(r)) for s, r in zip(scores, responses, strict=True) if s is not None]
    length_rho = spearman([s for s, _ in known], [w for _, w in known]) if known else None
    return [Check("quality", "pairs_right", right / len(pairs), THRESHOLDS["quality_pairs"], len(pairs),
                  sum(g is None or b is None for g, b in zip(good, bad, strict=True)), split),
            Check("quality", "rho_with_length", length_rho, None, len(responses), len(responses) - len(known),
                  split)]


def check_gate(ask: ScorePairs, quick: bool = False, split: str = "tuned") -> list[Check]:
    """Valid-vs-broken rewrite pairs ordered right by the validity gate's P(Yes)."""
    pairs = _subset(load_probes("validity_pairs", split), quick)
    parents = [p["parent"] for p in pairs] * 2
    answers = ask([p["valid"] for p in pairs] + [p["broken"] for p in pairs], parents)
    valid, broken = answers[:len(pairs)], answers[len(pairs):]
    right = sum(v is not None and b is not None and v > b for v, b in zip(valid, broken, strict=True))
    return [Check("validity_gate", "pairs_right", right / len(pairs), THRESHOLDS["validity_pairs"], len(pairs),
                  sum(v is None or b is None for v, b in zip(valid, broken, strict=True)), split)]


def validate(complexity: ScoreInstructions | None, quality: ScorePairs | None, quick: bool = False,
             gate: ScorePairs | None = None) -> dict[str, Any]:
    """Every check of the judges given (None = not used by the run), on both probe splits. `passed` is False
    when any check with a pass mark fails on either split; `failed` names them (`Check.name`)."""
    checks: list[Check] = []
    for split in SPLITS:
        if complexity is not None:
            checks += check_complexity(complexity, quick, split)
        if quality is not None:
            checks += check_quality(quality, quick, split)
        if gate is not None:
            checks += check_gate(gate, quick, split)
    failed = [c.name for c in checks if c.passed is False]
    return {"quick": quick, "checks": [{**asdict(c), "passed": c.passed} for c in checks],
            "passed": not failed, "failed": failed}


def reward_judges(reward: Any) -> tuple[ScoreInstructions | None, ScorePairs | None]:
    """The complexity and quality scoring functions of a `Reward` (its registry scorers, with the prompts the run
    uses; None for a judge the reward does not use)."""
    from idea_mcts.dispatch import DirectCalls, run_sync
    from idea_mcts.scoring import SCORERS, Batch

    def scorer(name: str) -> ScorePairs | None:
        spec = next(s for s in SCORERS if s.name == name)
        client = reward.clients.get(spec.role)
        if client is None:
            return None

        def run(instructions: list[str], responses: list[str]) -> list[float | None]:
            keys = [f"judge-check:{name}:{i}" for i in range(len(instructions))]
            batch = Batch(instructions, responses, keys, reward.weights.top_logprobs)
            return run_sync(spec.run(reward, client, batch, DirectCalls()))

        return run

    complexity_pairs, quality = scorer("complexity"), scorer("quality")
    complexity = None if complexity_pairs is None else (lambda texts: complexity_pairs(texts, [""] * len(texts)))
    return complexity, quality


def reward_gate(reward: Any) -> ScorePairs:
    """The validity gate as the search asks it (`idea_mcts.filters.ask_validity`), on a `Reward`'s judges."""
    from idea_mcts.dispatch import DirectCalls, run_sync
    from idea_mcts.filters import ask_validity, gate_judge

    judge = gate_judge(reward.clients)
    return lambda rewrites, parents: run_sync(ask_validity(DirectCalls(), judge, rewrites, parents,
                                                           reward.weights.top_logprobs))


def validate_reward(reward: Any, quick: bool = False, gate: bool = False) -> dict[str, Any]:
    """`validate` on the judges of a `Reward`, and on its validity gate with `gate` (the run uses one)."""
    complexity, quality = reward_judges(reward)
    return validate(complexity, quality, quick, reward_gate(reward) if gate else None)


def warn_failures(report: dict[str, Any]) -> None:
    """One warning per failed check (the `evolve` pre-flight)."""
    for c in report["checks"]:
        if c["passed"] is False:
            value = "unscored" if c["value"] is None else f"{c['value']:.2f}"
            logger.warning("judge check: %s %s (%s probes) = %s, below %.2f: this judge may not rank what the reward "
                           "assumes (idea-mcts validate-judge --config ... for the full probe sets)", c["judge"],
                           c["metric"], c.get("split", "tuned"), value, c["threshold"])


def format_report(report: dict[str, Any]) -> str:
    """Markdown table of the checks."""
    lines = ["| judge | metric | probes | value | pass mark | n | unparsed | result |",
             "|---|---|---|---|---|---|---|---|"]
    for c in report["checks"]:
        value = "-" if c["value"] is None else f"{c['value']:.3f}"
        mark = "-" if c["threshold"] is None else f">= {c['threshold']:.2f}"
        result = {True: "pass", False: "FAIL", None: "info"}[c["passed"]]
        lines.append(f"| {c['judge']} | {c['metric']} | {c.get('split', 'tuned')} | {value} | {mark} | {c['n']} | "
                     f"{c['unparsed']} | {result} |")
    return "\n".join(lines)


# -- CLI ---------------------------------------------------------------------------------------------------
def judge_engines(cfg: Any) -> dict[str, str]:
    """The engine key of each judge role (complexity, quality) an `EvolveConfig` uses; UsageError when none."""
    engines = {r: k for r in ("complexity", "quality") if (k := cfg.role_engine(r)) is not None}
    if not engines:
        raise UsageError("the config uses neither a complexity nor a quality judge: nothing to validate")
    return engines


def validate_config(cfg: Any, quick: bool = False) -> dict[str, Any]:
    """`validate_reward` on the judges of an `EvolveConfig` (its engines, role prompts and validity gate): what
    `idea-mcts validate-judge` and `eval/judge.py` run. Engines are opened here and closed after."""
    from idea_mcts.engines import EnginePool
    from idea_mcts.evolve_plan import check_models
    from idea_mcts.roles import RoleClient
    from idea_mcts.scoring import Reward

    engines = judge_engines(cfg)
    check_models(cfg, set(engines.values()))  # every judge's model can be found before any is loaded
    pool = EnginePool(cfg.engines)
    try:
        clients = {r: RoleClient(r, pool.get(k), getattr(cfg.roles, r), cfg.search.seed) for r, k in engines.items()}
        return validate_reward(Reward(cfg.reward, **clients), quick=quick, gate=cfg.search.validity_gate is not None)
    finally:
        pool.close()


def cmd_validate_judge(args: argparse.Namespace) -> int:
    from idea_mcts.cli import check_output_file
    from idea_mcts.config import load_config

    cfg = load_config(args.config, args.overrides)
    judge_engines(cfg)
    if args.output_json:  # before minutes of scoring, not after
        check_output_file(Path(args.output_json), "--output_json")
    report = validate_config(cfg, quick=args.quick)
    print(format_report(report))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        print(f"judge check failed: {', '.join(report['failed'])}")
        return 3
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `validate-judge --config C [--quick] [--output_json F] [key=value ...]`; exit 0 when every judge
    passes, 3 when one fails."""
    p = subparsers.add_parser(
        "validate-judge", help="check the config's judges on shipped probe sets (rank correlation, pairs)",
        description="Score the shipped probe sets with the config's complexity and quality judges and report "
                    "Spearman rho against the intended order, the share of pairs ordered right (pairs matched "
                    "in length included) and the correlation with length; with search.validity_gate set, the "
                    "share of valid-vs-broken rewrite pairs the gate orders right. Exit 3 when a judge fails a "
                    "pass mark.")
    p.add_argument("--config", help="YAML config naming the judge engines (default: the embedded model)")
    p.add_argument("--quick", action="store_true", help="half of each probe set (what `evolve` runs first)")
    p.add_argument("--output_json", help="also write the report as JSON")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. "
                   "roles.complexity.prompt=deita")
    p.set_defaults(func=cmd_validate_judge)
    return p


# -- the reward terms of a run -------------------------------------------------------------------------------
LENGTH_RHO_WARN = 0.8
"""A reward term whose Spearman rho with instruction length reaches this is flagged as tracking length."""


def reward_terms(records: Iterable[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Spread of every reward term `names` over the records (trees.jsonl records, or any mapping holding the
    scores and the `instruction`): min, max, std, and Spearman rho with instruction length in words;
    `warnings` names terms that are constant (add nothing to the reward) or track length."""
    values: dict[str, list[tuple[float, int]]] = {n: [] for n in names}
    for rec in records:
        for name in names:
            if (v := rec.get(name)) is not None:
                values[name].append((float(v), _words(rec["instruction"])))
    out: dict[str, Any] = {"terms": {}, "warnings": []}
    for name, pts in values.items():
        if not pts:
            continue
        vals = np.array([v for v, _ in pts])
        rho = spearman([v for v, _ in pts], [w for _, w in pts])
        out["terms"][name] = {"n": len(pts), "min": round(float(vals.min()), 4), "max": round(float(vals.max()), 4),
                              "std": round(float(vals.std()), 4),
                              "rho_with_length": None if rho is None else round(rho, 3)}
        if len(pts) > 1 and float(vals.std()) < 1e-9:
            out["warnings"].append(f"{name} is constant ({vals[0]:g}) over {len(pts)} nodes: it adds nothing to "
                                   "the reward")
        elif rho is not None and abs(rho) >= LENGTH_RHO_WARN:
            out["warnings"].append(f"{name} tracks instruction length (Spearman rho {rho:.2f})")
    for w in out["warnings"]:
        logger.warning("reward term: %s", w)
    return out
