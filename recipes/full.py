"""The whole pipeline: seed instructions -> IDEA-MCTS evolved dataset -> (Hub) -> LoRA SFT -> IFEval -> report.

Usage:

    accelerate launch recipes/full.py --config configs/recipes/demo.yaml
    accelerate launch --config_file configs/accelerate/ddp.yaml recipes/full.py --config ...   # N GPUs
    python recipes/full.py --config configs/recipes/demo.yaml --output_dir outputs/x --ifeval_limit 10

The config is one flat YAML read by TRL's `TrlParser`: TRL's `ScriptArguments`, `SFTConfig` and `ModelConfig`
keys, plus `evolve:` (an `idea-mcts evolve` config: `config: FILE` and keys overriding it) and the `ifeval_*`
keys. Flags override the file. With `dataset_name` (a Hub id or a save_to_disk dir) the data is loaded
instead of evolved. Outputs go under `output_dir` (OUT): data/, sft/, eval/, report.md, report.json, plots/.
A relaunch skips every stage whose outputs exist for the same settings and resumes SFT from its checkpoint.
"""

from __future__ import annotations

import sys

from idea_mcts.recipe import Recipe, launch_command, parse_recipe, run_main
from idea_mcts.report import headline_table


def main(argv: list[str] | None = None, callbacks: list | None = None) -> int:
    recipe = Recipe(*parse_recipe(argv), command=launch_command())
    rows = recipe.data()
    recipe.push()
    adapter = recipe.sft(rows, callbacks=callbacks)
    if not recipe.world.is_main:  # under torchrun / accelerate launch: rank 0 evaluates once and reports
        return 0
    recipe.evaluate(adapter)
    path = recipe.report()
    print(f"\nreport: {path}\n\n{headline_table(recipe.report_dict())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
