"""The evaluation layer: instruction-following benchmarks (IFEval through lm-eval), judge evaluations (MT-Bench,
AlpacaEval-style win rates) with local judges served through the project's engines, judge validation's output
and the data quality of an evolved dataset, with one output schema (`results`).

The functions live inside the package so that the recipes, the CLI and the tests import one installed module
(`from idea_mcts.evaluation import ...` works from any working directory, under `accelerate launch` and in an
installed wheel); the top-level `eval/` holds one short runnable script per benchmark over them.
"""
