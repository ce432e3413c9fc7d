"""Where a pipelined search's time goes inside the transformers engine: seconds per part of the engine thread.

Runs `idea-mcts evolve` in process on `--config` (a transformers engine) with the engine's parts wrapped in timers:
judge prompts (`TransformersEngine._logprobs_now`), prefill of admitted generation rows (`_prefill`, which the
continuous batch calls per row on a CPU; judge prompts under `SOLO_PREFILL_TOKENS` go through it too, inside
`_logprobs_now`), joining them to the decode batch's cache (`ContinuousBatcher._merge`), decode
steps (`_step`), dropping finished rows and unused columns (`_compact`), everything between decode steps
(`_serve`: judge prompts and admissions); and the embedding engine's calls (`EmbeddingEngine._embed`, the
novelty term's MiniLM), which run in another thread, with the seconds during which they overlapped the engine
thread's work (two torch computations then share the CPU's cores). Prints calls and seconds per part.

    python bench/engine_parts.py --config configs/demo-transformers.yaml --seeds 20
    python bench/engine_parts.py --seeds 60 data.seeds=../shared/data/seeds/self_instruct_seed_tasks.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from idea_mcts.cli import main as cli_main
from idea_mcts.engines import continuous
from idea_mcts.engines import transformers as tf_engine

logger = logging.getLogger("bench.engine_parts")

PARTS = [(tf_engine.TransformersEngine, "_logprobs_now"), (tf_engine.TransformersEngine, "_prefill"),
         (continuous.ContinuousBatcher, "_merge"), (continuous.ContinuousBatcher, "_step"),
         (continuous.ContinuousBatcher, "_compact"), (continuous.ContinuousBatcher, "_serve"),
         (tf_engine.EmbeddingEngine, "_embed")]
ENGINE_THREAD = ("_serve", "_step")
"""The engine thread's work, in spans that do not nest: `_serve` (judge prompts, admissions: prefill, join,
compaction) and `_step` (a decode step, its compaction), for the overlap with the embedder."""


def timed(seconds: collections.Counter, calls: collections.Counter, spans: dict[str, list[tuple[float, float]]],
          name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            end = time.perf_counter()
            seconds[name] += end - start
            calls[name] += 1
            spans.setdefault(name, []).append((start, end))

    return wrapper


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo-transformers.yaml")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("overrides", nargs="*", help="config overrides, as for idea-mcts evolve")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    seconds: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    spans: dict[str, list[tuple[float, float]]] = {}
    originals = [(cls, name, getattr(cls, name)) for cls, name in PARTS]
    for cls, name, real in originals:
        setattr(cls, name, timed(seconds, calls, spans, name, real))
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as out:
            rc = cli_main(["evolve", "--config", args.config, "--output_dir", out, f"data.max_seeds={args.seeds}",
                           *args.overrides])
    finally:
        for cls, name, real in originals:
            setattr(cls, name, real)
    if rc != 0:
        raise SystemExit(f"the search failed (exit {rc})")
    figures = {"config": args.config, "seeds": args.seeds, "overrides": args.overrides,
               "wall_s": round(time.perf_counter() - start, 1),
               "parts": {name: {"calls": calls[name], "seconds": round(seconds[name], 1)} for _, name in PARTS}}
    engine_spans = [sp for name in ENGINE_THREAD for sp in spans.get(name, [])]
    figures["embed_overlap_s"] = round(overlap(spans.get("_embed", []), engine_spans), 1)
    for name, part in figures["parts"].items():
        logger.info("%-15s %5d calls %8.1f s", name, part["calls"], part["seconds"])
    logger.info("the embedder's calls overlapped the engine thread's parts for %.1f s", figures["embed_overlap_s"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Seconds during which a span of `a` and a span of `b` both ran (the spans within each list do not
    overlap one another)."""
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


if __name__ == "__main__":
    raise SystemExit(main())
