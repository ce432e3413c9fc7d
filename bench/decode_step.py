"""Seconds per decode step of a transformers causal LM, stock vs the engine's CPU decode (one process, interleaved).

For each (rows, cache width): a left-padded prefill of random tokens, then `--steps` greedy decode steps, timed,
with transformers' `sdpa` attention and `DynamicCache` (stock) and with `idea_mcts.engines.cpu_decode`'s shared
key/value heads and in-place cache (ours), on the same model loaded twice. Prints ms per step each way and
stock ÷ ours; checks that both give the same logits.

    python bench/decode_step.py --json bench/results/decode-step.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from idea_mcts.engines.cpu_decode import roomy_cache, share_kv_heads
from idea_mcts.models import resolve_model

logger = logging.getLogger("bench.decode_step")


@torch.inference_mode()
def decode(model: torch.nn.Module, cache: DynamicCache, rows: int, width: int, steps: int
           ) -> tuple[float, torch.Tensor]:
    """Seconds per decode step after a prefill of `rows` x `width` (half the rows left-padded to half the width),
    and the last step's logits."""
    ids = torch.randint(100, 1000, (rows, width), generator=torch.Generator().manual_seed(rows * width))
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[: rows // 2, : width // 2] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    pos, nxt = pos[:, -1:], out.logits[:, -1].argmax(-1)
    start = time.perf_counter()
    for _ in range(steps):
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1)
    return (time.perf_counter() - start) / steps, out.logits[:, -1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2")
    ap.add_argument("--shapes", nargs="+", default=["64x64", "64x192", "64x448", "16x448", "4x448", "4x64"],
                    help="ROWSxWIDTH of the cache at the first step")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    path = resolve_model(args.model)
    stock = AutoModelForCausalLM.from_pretrained(path).eval()
    ours = AutoModelForCausalLM.from_pretrained(path).eval()
    if not share_kv_heads(ours):
        raise SystemExit(f"{args.model}: attention not switched (not sdpa, or no AttentionInterface)")
    figures: dict = {"model": args.model, "threads": torch.get_num_threads(), "steps": args.steps,
                     "repeats": args.repeats, "shapes": {}}
    for shape in args.shapes:
        rows, width = (int(x) for x in shape.split("x"))
        times: dict[str, list[float]] = {"stock": [], "ours": []}
        for _ in range(args.repeats):  # interleaved
            t_stock, a = decode(stock, DynamicCache(), rows, width, args.steps)
            t_ours, b = decode(ours, roomy_cache(), rows, width, args.steps)
            times["stock"].append(t_stock)
            times["ours"].append(t_ours)
            if not torch.equal(a, b):
                raise SystemExit(f"{shape}: logits differ")
        s, o = min(times["stock"]), min(times["ours"])
        figures["shapes"][shape] = {"stock_ms": round(s * 1000, 1), "ours_ms": round(o * 1000, 1),
                                    "stock_over_ours": round(s / o, 2), "same_logits": True}
        logger.info("%-8s stock %7.1f ms  ours %7.1f ms  stock/ours %.2f", shape, s * 1000, o * 1000, s / o)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
