"""IFEval (instruction following, through lm-eval) for a model, or a base model + LoRA adapter.

    python eval/ifeval.py --config configs/eval/ifeval.yaml
    python eval/ifeval.py --config configs/eval/ifeval.yaml --model_name_or_path org/model --data hub
    python eval/ifeval.py --config configs/eval/ifeval.yaml --model_name_or_path BASE --adapter_path OUT/sft/adapter

Writes OUT/eval/ifeval.json (prompt- and instruction-level accuracies, strict and loose, with standard errors and
95% CIs; every sample) and OUT/eval/ifeval.md. Settings: `IFEvalSettings` (`data: builtin` runs the 541 shipped
prompts offline); recipes/evaluate.py runs the same `run_ifeval`.
"""

from __future__ import annotations

import sys

from idea_mcts.evaluation.arguments import check_model, parse_eval_args
from idea_mcts.evaluation.ifeval import IFEvalSettings, run_ifeval
from idea_mcts.evaluation.results import ifeval_result, ifeval_table, write_result
from idea_mcts.recipe import run_main
from idea_mcts.recipe_checks import check_ifeval_source


def main(argv: list[str] | None = None) -> int:
    model_args, settings = parse_eval_args(argv, (IFEvalSettings,))
    model, adapter = check_model(model_args, "ifeval")
    check_ifeval_source(settings)
    res = run_ifeval(model, settings, adapter=adapter)
    result = ifeval_result(res, model_args.model_name_or_path or model, adapter)
    table = ifeval_table(result)
    path = write_result(model_args.output_dir, "ifeval", result, table)
    print(f"\n{table}\n\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
