"""Is the evolved data better than its seeds? Judged by a judge configuration the search did not optimise.

    python bench/data_quality.py OUT [--config configs/demo.yaml] [--json PATH] [--bootstrap 2000]

OUT is an `idea-mcts evolve` output directory (dataset/, trees.jsonl, run.json); the judge is the config's default
engine with the `heldout` prompts. What is measured, and how: `idea_mcts.evaluation.data_quality` (which
`eval/data_quality.py` runs too, writing OUT/eval/data_quality.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from idea_mcts.config import load_config
from idea_mcts.evaluation.data_quality import data_quality

logger = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("--config", default="configs/demo.yaml", help="its default engine is the held-out judge")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--json", type=Path, help="save the figures here")
    ap.add_argument("--rows", type=int, default=20, help="random rows to print for reading by hand")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine_cfg = load_config(args.config).engines["default"]
    figures = data_quality(args.output_dir, engine_cfg, n_boot=args.bootstrap, sample_rows=args.rows,
                           run_name=str(args.output_dir))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
