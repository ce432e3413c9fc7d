"""How many example turns the evolver sees, and whether its reply is prefilled: one rewrite of every (seed, action).

    python bench/evolver_examples.py --config configs/demo.yaml --json OUT.json [--variants three one none]
        [--prefill both|on|off] [overrides]

For every seed of the config and every action of `general`, the evolver rewrites the seed once per variant:
`three` (the built-in actions as shipped: example rewrites of three unlike instructions), `one` (only the first,
the poem example), `none` (no example turn); each with and without `prefill_parent`. Each rewrite goes through the
search's extraction and elimination filter (answers and truncations dropped, as in the demo). The JSON holds, per
variant, the filter's counts, the number kept and every rewrite (seed, action, raw reply, extracted text, reason):
read a random sample of the kept ones blind (variants mixed) to judge which variant breaks fewer rows.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from idea_mcts.actions import GENERAL
from idea_mcts.config import load_config
from idea_mcts.data import load_seeds
from idea_mcts.engines import EnginePool
from idea_mcts.filters import Eliminator
from idea_mcts.roles import RoleClient

logger = logging.getLogger("bench")
SHOTS = {"three": 3, "one": 1, "none": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--json", required=True, help="write the counts and every rewrite here")
    ap.add_argument("--variants", nargs="+", choices=list(SHOTS), default=list(SHOTS))
    ap.add_argument("--prefill", choices=["both", "on", "off"], default="both")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config, args.overrides)
    seeds = load_seeds(cfg.data)
    prefills = {"both": [False, True], "on": [True], "off": [False]}[args.prefill]
    out: dict = {"config": args.config, "overrides": args.overrides, "seeds": len(seeds), "variants": {}}
    pool = EnginePool(cfg.engines)
    try:
        evolver = RoleClient("evolver", pool.get(cfg.role_engine("evolver")), cfg.roles.evolver, cfg.search.seed)
        for shots in args.variants:
            actions = [replace(a, examples=a.examples[:SHOTS[shots]]) for a in GENERAL]
            for prefill in prefills:
                name = f"{shots}{'+prefill' if prefill else ''}"
                eliminator = Eliminator([a.template_text() for a in GENERAL], drop_answers=True, drop_truncated=True)
                items = [(s, a) for s in seeds for a in actions]
                gens = evolver.generate([a.messages(s.instruction, prefill) for s, a in items],
                                        [f"{name}/{s.seed_id}/{a.name}" for s, a in items])
                rows = []
                for (s, a), g in zip(items, gens, strict=True):
                    reply = a.reply_prefix(s.instruction, prefill) + g.text
                    text, why = eliminator.check_reply(reply, s.instruction, g.finish_reason)
                    rows.append({"seed": s.instruction, "action": a.name, "raw": g.text, "text": text, "why": why})
                kept = sum(r["why"] is None for r in rows)
                out["variants"][name] = {"kept": kept, "of": len(rows), "counts": dict(eliminator.counts),
                                         "rows": rows}
                logger.info("%s: kept %d of %d %s", name, kept, len(rows), dict(eliminator.counts))
    finally:
        pool.close()
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
