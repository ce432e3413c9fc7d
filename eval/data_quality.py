"""Is an evolved dataset better than its seeds? Complexity and quality of the rows vs their seeds by a held-out
judge (the `heldout` prompts, which the search did not optimise), raw and length-adjusted, with paired bootstrap
95% CIs over seeds; broken rows; diversity.

    python eval/data_quality.py --config configs/eval/data_quality.yaml --dataset_dir outputs/demo
    python eval/data_quality.py --config configs/eval/data_quality.yaml --dataset_dir outputs/recipe-demo/data

Writes OUT/eval/data_quality.json and the data-quality table in OUT/eval/data_quality.md. The model under test is
the judge (validate it first: eval/judge.py with `roles.complexity.prompt=heldout roles.quality.prompt=heldout`).
bench/data_quality.py prints the same figures.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idea_mcts.errors import UsageError
from idea_mcts.evaluation.arguments import check_model, merged_root, parse_eval_args
from idea_mcts.evaluation.data_quality import check_run_dir, data_quality
from idea_mcts.evaluation.results import data_quality_result, data_quality_table, write_result
from idea_mcts.evaluation.serving import engine_config, served_model
from idea_mcts.recipe import run_main


@dataclass
class DataQualityArguments:
    """The dataset and the judge's engine."""

    dataset_dir: str | None = None
    """An `idea-mcts evolve` output directory (dataset/, trees.jsonl, run.json): its rows against its seeds."""
    bootstrap: int = 2000
    """Bootstrap resamples of the CIs."""
    sample_rows: int = 20
    """Random rows kept in the JSON for reading by hand."""
    engine: dict[str, Any] | None = None
    """EngineConfig keys of the judge's engine (`model` is model_name_or_path); default transformers, float32."""


def main(argv: list[str] | None = None) -> int:
    model_args, args = parse_eval_args(argv, (DataQualityArguments,))
    if not args.dataset_dir:
        raise UsageError("dataset_dir is not set (an idea-mcts evolve output directory)")
    if args.bootstrap < 1 or args.sample_rows < 0:
        raise UsageError("bootstrap must be >= 1 and sample_rows >= 0")
    check_run_dir(Path(args.dataset_dir))
    model, adapter = check_model(model_args, "data_quality")
    judge_cfg = engine_config(args.engine, "engine", model=model)
    judge_cfg.model = served_model(model, adapter, merged_root(model_args.output_dir))
    figures = data_quality(Path(args.dataset_dir), judge_cfg, n_boot=args.bootstrap, sample_rows=args.sample_rows)
    settings = {"dataset_dir": args.dataset_dir, "bootstrap": args.bootstrap, "prompts": "heldout"}
    result = data_quality_result(figures, model_args.model_name_or_path or model, adapter, settings)
    table = data_quality_table(result)
    path = write_result(model_args.output_dir, "data_quality", result, table)
    print(f"\n{table}\n\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
