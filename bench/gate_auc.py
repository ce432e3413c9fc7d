"""Does the validity gate separate broken rewrites from good ones? Its P(Yes) on hand-labelled rows, as an AUC.

    python bench/gate_auc.py --config configs/demo.yaml [--rows bench/results/demo_readings_stop19.json ...]
        [--json PATH] [overrides]

Each rows file is a JSON object with `rows`: [{"text": rewrite, "parent": its parent instruction, "broken": 0/1}]
(the hand readings under bench/results/). The gate asks the config's gate judge (the complexity judge, else the
quality judge) the search's question (`idea_mcts.filters.ask_validity`: is the rewrite a self-contained instruction
that keeps its parent's task?) and reads P(Yes) from the next-token logprobs. AUC = the chance that a random good
row gets a higher P(Yes) than a random broken one (ties count half): 0.5 is no better than chance; the project
turns the gate on by default only from 0.8 (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sklearn.metrics import roc_auc_score

from idea_mcts.config import load_config
from idea_mcts.dispatch import DirectCalls, run_sync
from idea_mcts.engines import EnginePool
from idea_mcts.filters import ask_validity
from idea_mcts.roles import RoleClient

logger = logging.getLogger("bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--rows", nargs="+", default=["bench/results/demo_readings_stop19.json"])
    ap.add_argument("--json", help="write the figures (and every row's P(Yes)) here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config, args.overrides)
    role = "complexity" if cfg.role_engine("complexity") else "quality"
    pool = EnginePool(cfg.engines)
    out: dict = {"config": args.config, "overrides": args.overrides, "judge_role": role, "files": {}}
    try:
        judge = RoleClient(role, pool.get(cfg.role_engine(role)), getattr(cfg.roles, role), cfg.search.seed)
        for path in args.rows:
            rows = json.loads(Path(path).read_text())["rows"]
            p = run_sync(ask_validity(DirectCalls(), judge, [r["text"] for r in rows], [r["parent"] for r in rows],
                                      cfg.reward.top_logprobs))
            known = [(x, r["broken"]) for x, r in zip(p, rows, strict=True) if x is not None]
            value = roc_auc_score([1 - b for _, b in known], [x for x, _ in known])  # good rows are positives
            out["files"][path] = {"rows": len(rows), "broken": sum(b for _, b in known),
                                  "unparsed": len(rows) - len(known), "auc": round(float(value), 4), "p_yes": p}
            logger.info("%s: %d rows (%d broken), AUC %.3f, %d unparsed", path, len(rows),
                        sum(b for _, b in known), value, len(rows) - len(known))
    finally:
        pool.close()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
