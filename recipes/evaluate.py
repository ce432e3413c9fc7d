"""IFEval alone: the base model and base + a LoRA adapter, through lm-eval; writes OUT/eval and the report.

Usage:

    python recipes/evaluate.py --config configs/recipes/demo.yaml                       # OUT/sft/adapter
    python recipes/evaluate.py --config configs/recipes/demo.yaml --adapter_path DIR --ifeval_limit 50
    python recipes/evaluate.py --model_name_or_path M --adapter_path DIR --ifeval_data hub --output_dir OUT

`ifeval_data: hub` runs lm-eval's `ifeval` task (google/IFEval); `builtin` the 541 prompts shipped with
idea-mcts (offline); `ifeval_backend: vllm` evaluates through vLLM with the adapter as a LoRA request.
"""

from __future__ import annotations

import sys

from idea_mcts.recipe import Recipe, launch_command, parse_recipe, run_main
from idea_mcts.report import headline_table


def main(argv: list[str] | None = None) -> int:
    recipe = Recipe(*parse_recipe(argv), command=launch_command(), needs_data=False)
    if not recipe.world.is_main:  # under a multi-process launch rank 0 evaluates, once
        return 0
    recipe.evaluate()
    path = recipe.report()
    print(f"\nreport: {path}\n\n{headline_table(recipe.report_dict())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
