"""The paper's comparison: seed vs Evol-Instruct vs IDEA-MCTS vs IDEA-MCTS+ at an equal LLM-request budget.

Usage:

    accelerate launch recipes/compare.py --config configs/compare-demo.yaml     # = make compare-demo
    python recipes/compare.py --config configs/compare-demo.yaml --output_dir outputs/x --arms seed,idea-mcts

Builds every arm over the evolve section's seeds (idea_mcts.baselines), samples each arm's training set to the
same size, tunes the same base model on each with the same settings (the recipe's SFT stage), evaluates each
(IFEval slice; AlpacaEval-style win rate against the base model by a judge model) and writes OUT/compare.md,
compare.json and plots/*.png. The config is the recipes' flat YAML (TRL keys + `evolve:` + `ifeval_*`) plus the
comparison's keys (idea_mcts.compare.CompareArguments). A relaunch skips every finished stage of every arm.
"""

from __future__ import annotations

import sys

from idea_mcts.compare import Comparison, parse_compare
from idea_mcts.recipe import launch_command, run_main


def main(argv: list[str] | None = None) -> int:
    cmp = Comparison(*parse_compare(argv), command=launch_command())
    cmp.build_arms()
    cmp.training_sets()
    cmp.train()
    cmp.evaluate()
    path = cmp.report()
    print(f"\ncomparison: {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
