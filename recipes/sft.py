"""LoRA/QLoRA SFT alone, with TRL's SFTTrainer, on a dataset with `messages` (loss on the assistant turn).

Usage:

    accelerate launch recipes/sft.py --config configs/recipes/demo.yaml --dataset_name outputs/demo/dataset
    python recipes/sft.py --config configs/recipes/demo.yaml --dataset_name org/name --output_dir outputs/sft

Writes OUT/sft/adapter (adapter + tokenizer), OUT/sft/train.json (log history) and OUT/sft/checkpoints; a
relaunch with the same settings resumes from the newest checkpoint (or skips a finished run).
"""

from __future__ import annotations

import sys

from idea_mcts.recipe import Recipe, launch_command, parse_recipe, run_main
from idea_mcts.report import loss_curve


def main(argv: list[str] | None = None, callbacks: list | None = None) -> int:
    script_args, sft_args, model_args, evolve_args, eval_args = parse_recipe(argv)
    evolve_args.evolve_config = None  # this script trains on dataset_name only
    recipe = Recipe(script_args, sft_args, model_args, evolve_args, eval_args, command=launch_command(),
                    evaluates=False)
    adapter = recipe.sft(recipe.rows, callbacks=callbacks)
    if not recipe.world.is_main:
        return 0
    curve = loss_curve(recipe.report_dict())
    print(f"adapter: {adapter} ({len(curve)} logged steps, last loss {curve[-1][1] if curve else 'n/a'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
