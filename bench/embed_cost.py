"""What batch-invariant embeddings cost: the embedding engine one text per forward pass (as it runs now) against
the batched, padded forward passes it ran before (issue 36), in sentences per second, measured in one process.

    python bench/embed_cost.py [--texts ../shared/data/seeds/self_instruct_seed_tasks.jsonl] [--limit 200]
                               [--call_sizes 1,4,256] [--repeats 3] [--threads N] [--output_json PATH]

Texts: the `instruction` field of a JSONL file (default: the demo's seeds and the shipped judge probes). For each
call size (a search's barrier hands the embedder a few texts: 1-4 on the demo; `Reward.refer_to` embeds the seeds
256 at a time), the texts are embedded in calls of that many texts, both ways, interleaved `--repeats` times
(the machine may be shared: the median of each). Prints sentences/s by wall and by the process's CPU time, and
their ratio (one by one / batched), and checks what the change is for: one by one, a text's embedding has the same
bits in every call it is in; batched, how many texts differ between calls of different sizes. `--threads`: torch's
intra-op threads (default: torch's own choice, as in a run); one thread measures the work without the cost of
synchronising threads, which on a shared machine dominates small forward passes.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from idea_mcts.config import EngineConfig
from idea_mcts.engines import build_engine
from idea_mcts.engines.transformers import EmbeddingEngine

logger = logging.getLogger("bench.embed_cost")

DATA = Path(__file__).resolve().parents[1] / "idea_mcts" / "data"


def load_texts(path: str | None, limit: int) -> list[str]:
    files = [Path(path)] if path else [DATA / "demo_seeds.jsonl", DATA / "probes" / "complexity.jsonl"]
    texts = [json.loads(line)["instruction"] for f in files for line in f.read_text().splitlines() if line.strip()]
    return texts[:limit]


@torch.inference_mode()
def batched(engine: EmbeddingEngine, texts: list[str]) -> list[list[float]]:
    """The engine's `_embed` before issue 36: micro-batches of `max_batch_size`, right-padded to the longest."""
    out: list[list[float]] = []
    for i in range(0, len(texts), engine.cfg.max_batch_size):
        enc = engine.tokenizer(texts[i : i + engine.cfg.max_batch_size], padding=True, truncation=True,
                               max_length=min(engine.cfg.max_model_len, 512), return_tensors="pt").to(engine.device)
        hidden = engine.model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out.extend(torch.nn.functional.normalize(pooled, dim=-1).tolist())
    return out


def timed(fn: Callable[[list[str]], list[list[float]]], texts: list[str], size: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to embed `texts` in calls of `size`."""
    w, c = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), size):
        fn(texts[i : i + size])
    return time.perf_counter() - w, time.process_time() - c


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", help="JSONL with an `instruction` field (default: demo seeds + probes)")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--call_sizes", default="1,4,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="embedded:all-minilm-l6-v2")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--output_json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = load_texts(args.texts, args.limit)
    engine = build_engine(EngineConfig(backend="embedding", model=args.model))
    assert isinstance(engine, EmbeddingEngine)
    one = engine._embed
    one(texts[:4]), batched(engine, texts[:4])  # warm up

    # what the change is for: a text's bits in a call of its own and in one with every other text
    alone = [one([t])[0] for t in texts]
    same_one = sum(a == b for a, b in zip(alone, one(texts), strict=True))
    solo_b = [batched(engine, [t])[0] for t in texts]
    same_batched = sum(a == b for a, b in zip(solo_b, batched(engine, texts), strict=True))
    logger.info("%d texts (%d threads): identical bits alone and in one call with all: one by one %d, batched %d",
                len(texts), torch.get_num_threads(), same_one, same_batched)

    figures: dict[str, dict[str, float]] = {}
    for size in (int(s) for s in args.call_sizes.split(",")):
        runs: dict[str, list[tuple[float, float]]] = {"batched": [], "one": []}
        for _ in range(args.repeats):
            runs["batched"].append(timed(lambda c: batched(engine, c), texts, size))
            runs["one"].append(timed(one, texts, size))
        rate = {k: (len(texts) / statistics.median(w for w, _ in v), len(texts) / statistics.median(c for _, c in v))
                for k, v in runs.items()}
        figures[str(size)] = {"batched_per_s": rate["batched"][0], "one_per_s": rate["one"][0],
                              "batched_per_cpu_s": rate["batched"][1], "one_per_cpu_s": rate["one"][1],
                              "ratio_wall": rate["one"][0] / rate["batched"][0],
                              "ratio_cpu": rate["one"][1] / rate["batched"][1]}
        f = figures[str(size)]
        logger.info("calls of %3d: batched %7.1f/s, one by one %7.1f/s (x%.2f); per CPU second %7.1f vs %7.1f (x%.2f)",
                    size, f["batched_per_s"], f["one_per_s"], f["ratio_wall"], f["batched_per_cpu_s"],
                    f["one_per_cpu_s"], f["ratio_cpu"])
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"texts": len(texts), "threads": torch.get_num_threads(),
                                                      "identical_one": same_one, "identical_batched": same_batched,
                                                      "calls": figures}, indent=2) + "\n")
    return 0 if same_one == len(texts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
