"""The evaluation layer: instruction-following benchmarks (IFEval through lm-eval) and judge evaluations
(MT-Bench, AlpacaEval-style win rates) with local judges served through the project's engines.

It lives inside the package (not a top-level `eval/`) so that the recipes, the CLI and the tests import one
installed module: `from idea_mcts.evaluation import ...` works from any working directory, under
`accelerate launch` and in an installed wheel, which a top-level folder would not.
"""
