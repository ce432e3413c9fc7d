"""Prefill cost of the continuous batch's admissions, three ways, on the same rows in one process.

Runs a search (`idea-mcts evolve` on `--config`, a transformers engine) recording the prompt tokens of every
admission into the continuous decode batch, then prefills each admission again, interleaved: every row alone and
unpadded (what the engine does on a CPU), in groups of one padded width (prompts of `SOLO_PREFILL_TOKENS` or more
alone), and in those groups with filler rows up to `MIN_ROWS` (what it did before). Prints seconds per way and
their ratios to "alone".

    python bench/admission_prefill.py --config configs/demo-transformers.yaml --seeds 20
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from idea_mcts.cli import main as cli_main
from idea_mcts.config import load_config
from idea_mcts.engines import build_engine, continuous
from idea_mcts.engines.transformers import MIN_ROWS, _chunks

logger = logging.getLogger("bench.admission_prefill")


def record_admissions(config: str, seeds: int) -> list[list[list[int]]]:
    """The prompt tokens of every admission of one search (the batcher's `_admit`, wrapped)."""
    seen: list[list[list[int]]] = []
    real = continuous.ContinuousBatcher._admit

    def admit(self: continuous.ContinuousBatcher) -> None:
        room = max(self.engine.cfg.max_batch_size - sum(not r.done for r in self.rows), 0)
        if take := self.backlog[:room]:
            seen.append([s for _, s in take])
        real(self)

    continuous.ContinuousBatcher._admit = admit  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as out:
            rc = cli_main(["evolve", "--config", config, "--output_dir", out, f"data.max_seeds={seeds}"])
    finally:
        continuous.ContinuousBatcher._admit = real  # type: ignore[method-assign]
    if rc != 0:
        raise SystemExit(f"the search failed (exit {rc})")
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo-transformers.yaml")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    admissions = record_admissions(args.config, args.seeds)
    cfg = load_config(args.config, [])
    engine = build_engine(cfg.engines[cfg.role_engine("evolver")])

    def grouped(seqs: list[list[int]], fillers: bool) -> None:
        solo = [[i] for i, s in enumerate(seqs) if engine.solo_prefill(len(s))]
        rest = [i for i, s in enumerate(seqs) if not engine.solo_prefill(len(s))]
        for g in solo + [[rest[j] for j in c] for c in _chunks([seqs[i] for i in rest], len(rest) or 1)]:
            rows = [seqs[i] for i in g]
            alone = len(rows) == 1 and engine.solo_prefill(len(rows[0]))
            n = 0 if alone or not fillers else max(0, MIN_ROWS - len(rows))
            engine._prefill(rows + [rows[0]] * n, padded=not alone)

    ways = {"alone": lambda seqs: [engine._prefill([s], padded=False) for s in seqs],
            "by_width": lambda seqs: grouped(seqs, False),
            "by_width_fillers": lambda seqs: grouped(seqs, True)}
    seconds: dict[str, float] = collections.defaultdict(float)
    with torch.inference_mode():
        for _ in range(args.repeats):
            for seqs in admissions:
                for name, way in ways.items():
                    t0 = time.perf_counter()
                    way(seqs)
                    seconds[name] += time.perf_counter() - t0
    lengths = [len(s) for seqs in admissions for s in seqs]
    figures = {
        "config": args.config, "seeds": args.seeds, "admissions": len(admissions), "rows": len(lengths),
        "rows_per_admission": collections.Counter(map(len, admissions)).most_common(),
        "mean_prompt_tokens": round(sum(lengths) / len(lengths), 1),
        "seconds": {k: round(v / args.repeats, 2) for k, v in seconds.items()},
        "ratio_to_alone": {k: round(v / seconds["alone"], 3) for k, v in seconds.items()},
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
