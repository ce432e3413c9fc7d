"""Is a judge fit to steer the search? The probe sets of `idea-mcts validate-judge` scored by a model as the
complexity and quality judge (and the validity gate when the config uses one), against their intended order.

    python eval/judge.py --config configs/eval/judge.yaml
    python eval/judge.py --config configs/eval/judge.yaml --model_name_or_path embedded:smollm2 --quick true
    python eval/judge.py --config configs/eval/judge.yaml --overrides roles.complexity.prompt=heldout

Writes OUT/eval/judge.json (every check: Spearman rho against the tiers, pairs ordered right, rho with length,
on the tuned and held-out probe splits, with pass marks) and OUT/eval/judge.md; exits 3 when a judge fails a pass
mark, as validate-judge does. The model under test replaces the model of every engine the judge roles use.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from idea_mcts.config import load_config
from idea_mcts.evaluation.arguments import check_model, merged_root, parse_eval_args
from idea_mcts.evaluation.results import judge_check_result, write_result
from idea_mcts.evaluation.serving import served_model
from idea_mcts.judge_check import format_report, judge_engines, validate_config
from idea_mcts.recipe import run_main


@dataclass
class JudgeCheckArguments:
    """Which judges, prompts and probes."""

    evolve_config: str | None = None
    """An `idea-mcts evolve` YAML whose judge roles (prompt presets, engine settings, validity gate) are validated;
    null: the built-in defaults (the `general` prompts)."""
    overrides: list[str] | None = None
    """Dotted overrides of that config, as validate-judge takes them: `roles.complexity.prompt=heldout`,
    `reward.top_logprobs=1000`."""
    quick: bool = False
    """Half of each probe set (what `evolve` runs before its search)."""


def main(argv: list[str] | None = None) -> int:
    model_args, args = parse_eval_args(argv, (JudgeCheckArguments,))
    model, adapter = check_model(model_args, "judge")
    cfg = load_config(args.evolve_config, args.overrides)
    engines = set(judge_engines(cfg).values())
    served = served_model(model, adapter, merged_root(model_args.output_dir))
    for key in engines:
        cfg.engines[key].model = served
    report = validate_config(cfg, quick=args.quick)
    settings = {"evolve_config": args.evolve_config, "overrides": args.overrides or [],
                "engines": {k: cfg.engines[k].backend for k in sorted(engines)}}
    result = judge_check_result(report, model_args.model_name_or_path or model, adapter, settings)
    table = format_report(report)
    path = write_result(model_args.output_dir, "judge", result, table)
    print(f"\n{table}\n\nresults: {path}")
    if not report["passed"]:
        print(f"judge check failed: {', '.join(report['failed'])}")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
