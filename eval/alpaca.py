"""AlpacaEval-style win rate of a model against a reference (the source's reference outputs, or a reference
model's), each pair judged in both orders by a local judge.

    python eval/alpaca.py --config configs/eval/alpaca.yaml
    python eval/alpaca.py --config configs/eval/alpaca.yaml --source hub --reference_model ""    # GPT-4 refs
    python eval/alpaca.py --config configs/eval/alpaca.yaml --model_name_or_path BASE --adapter_path A

Writes OUT/eval/alpaca.json (win rate with its bootstrap 95% CI, length-controlled win rate, wins/ties/losses,
failures, output lengths, every judgment) and OUT/eval/alpaca.md. Settings: `AlpacaEvalConfig` (`source: builtin`
= 12 shipped instructions, offline), `EngineArguments` (`judge_engine`, `answer_engine`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from idea_mcts.engines import build_engine
from idea_mcts.errors import UsageError
from idea_mcts.evaluation.alpaca import AlpacaEvalConfig, load_instructions, run_alpaca_eval
from idea_mcts.evaluation.arguments import (
    EngineArguments,
    answer_engine_config,
    check_model,
    merged_root,
    parse_eval_args,
)
from idea_mcts.evaluation.results import alpaca_result, metrics_table, write_result
from idea_mcts.evaluation.serving import engine_config, served_model
from idea_mcts.recipe import run_main
from idea_mcts.recipe_checks import check_base_model


@dataclass
class AlpacaArguments:
    """The reference side of the win rate."""

    reference_model: str | None = None
    """The model that writes the reference outputs of instructions the source gives none (Hub id, local dir or
    `embedded:` name); null (or `--reference_model ""`): every instruction must come with its reference
    (`source: hub`)."""


def main(argv: list[str] | None = None) -> int:
    model_args, engine_args, args, cfg = parse_eval_args(argv, (EngineArguments, AlpacaArguments, AlpacaEvalConfig))
    model, adapter = check_model(model_args, "alpaca")
    reference = check_base_model(args.reference_model) if args.reference_model else None
    judge_cfg = engine_config(engine_args.judge_engine, "judge_engine")
    answer_engine_config(engine_args, model)  # its keys are checked before any work
    items = load_instructions(cfg)  # the instructions can be read before any model loads
    if reference is None and any(it.reference is None for it in items):
        raise UsageError(f"source {cfg.source!r} gives instructions without a reference output: set reference_model")
    name = model_args.model_name_or_path or model
    engines = [build_engine(answer_engine_config(engine_args, served_model(model, adapter,
                                                                           merged_root(model_args.output_dir)))),
               build_engine(judge_cfg)]
    try:
        if reference is not None:
            engines.append(build_engine(answer_engine_config(engine_args, reference)))
        res = run_alpaca_eval(engines[0], engines[1], cfg, reference_engine=engines[2] if reference else None,
                              model_name=name, reference_name=args.reference_model or "reference")
    finally:
        for e in engines:
            e.close()
    result = alpaca_result(res, name, adapter)
    table = metrics_table(result["metrics"])
    path = write_result(model_args.output_dir, "alpaca", result, table)
    print(f"\n{table}\n\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
