"""SFT overhead of the recipe: tokens/s of the recipe's SFT stage vs a plain TRL `SFTTrainer` on the same model,
data and settings, measured in one run; and the peak RSS of each.

    python bench/sft_overhead.py [--config configs/recipes/demo.yaml] [--dataset outputs/recipe-demo/data/dataset]
                                 [--max_steps 8] [--rounds 2] [--docs docs/benchmarks.md]

Each side runs in its own fresh process (so its peak RSS is its own), alternating plain / recipe `--rounds` times:
- plain: `SFTTrainer(model=path, args=SFTConfig(...), train_dataset=rows, peft_config=LoraConfig(...))`, the
  `messages` rows as they are (TRL's documented minimal use);
- recipe: `Recipe(...).sft(rows)` from `recipes/sft.py`'s parser and config (prompt-completion rows, loss on
  the assistant turn, checkpoints and adapter written atomically, stage fingerprint).
Both get the same SFTConfig and LoRA settings from the config file and the same `max_steps`. Tokens/s =
tokens trained on (the non-padding tokens of the batches the trainer consumed: its `num_input_tokens_seen`)
÷ the trainer's `train_runtime`. Goal: recipe ÷ plain >= 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(side: str, config: str, dataset: str, max_steps: int, out: str) -> None:
    """One side, in this process: train, print {"tokens", "train_runtime", "peak_rss_mb"} as JSON."""
    from idea_mcts.recipe import Recipe, parse_recipe

    argv = ["--config", config, "--dataset_name", dataset, "--output_dir", out, "--max_steps", str(max_steps),
            "--save_strategy", "no", "--logging_steps", "1000"]
    script_args, sft_args, model_args, evolve_args, eval_args = parse_recipe(argv)
    sft_args.include_num_input_tokens_seen = "non_padding"  # the parser reads this str | bool field as a bool
    evolve_args.evolve_config = None
    recipe = Recipe(script_args, sft_args, model_args, evolve_args, eval_args)
    if side == "recipe":
        recipe.sft(recipe.rows)
        info = recipe.info["sft"]
        metrics, tokens = info["metrics"], info["num_input_tokens_seen"]
    else:
        from trl import SFTTrainer, get_peft_config

        sft_args.output_dir = str(Path(out) / "plain")
        sft_args.model_init_kwargs = {"dtype": model_args.dtype}
        trainer = SFTTrainer(model=recipe.model_path, args=sft_args, train_dataset=recipe.rows,
                             peft_config=get_peft_config(model_args))
        metrics = trainer.train().metrics
        tokens = trainer.state.num_input_tokens_seen
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens": int(tokens), "train_runtime": metrics["train_runtime"], "peak_rss_mb": rss}))


def run_side(side: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"sft-bench-{side}-") as out:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, __file__, "--child", side, "--config", args.config, "--dataset",
                            args.dataset, "--max_steps", str(args.max_steps), "--out", out],
                           env=env, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            sys.exit(f"{side} failed:\n{r.stderr[-3000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
    res["tokens_per_s"] = res["tokens"] / res["train_runtime"]
    print(f"{side}: {res['tokens']} tokens in {res['train_runtime']:.1f} s = {res['tokens_per_s']:.1f} tok/s, "
          f"peak RSS {res['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return res


def write_docs(path: Path, text: str) -> None:
    """Replace (or append) the '## SFT overhead' section of a Markdown file."""
    doc = path.read_text() if path.is_file() else ""
    pattern = re.compile(r"^## SFT overhead\n.*?(?=^## |\Z)", re.S | re.M)
    doc = pattern.sub(text, doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/recipes/demo.yaml")
    p.add_argument("--dataset", default="outputs/recipe-demo/data/dataset")
    p.add_argument("--max_steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--docs", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.config, args.dataset, args.max_steps, args.out)
        return 0
    t0 = time.perf_counter()
    results: dict[str, list[dict]] = {"plain": [], "recipe": []}
    for _ in range(args.rounds):
        for side in ("plain", "recipe"):
            results[side].append(run_side(side, args))
    tok = {s: sum(r["tokens"] for r in rs) / sum(r["train_runtime"] for r in rs) for s, rs in results.items()}
    rss = {s: max(r["peak_rss_mb"] for r in rs) for s, rs in results.items()}
    ratio = tok["recipe"] / tok["plain"]
    summary = {"tokens_per_s": tok, "ratio": ratio, "peak_rss_mb": rss, "runs": results,
               "wall_s": time.perf_counter() - t0}
    print(json.dumps(summary, indent=1))
    if args.docs:
        text = (f"## SFT overhead\n\n`python bench/sft_overhead.py --config {args.config} --dataset {args.dataset} "
                f"--max_steps {args.max_steps} --rounds {args.rounds}` ({date.today()}, {platform.machine()}, "
                f"{os.cpu_count()} cores). Each side in its own process, alternating, {args.rounds} rounds of "
                f"{args.max_steps} steps; tokens = the non-padding tokens the trainer consumed.\n\n"
                "| side | tokens/s | peak RSS (MB) |\n|---|---|---|\n"
                f"| plain TRL `SFTTrainer` (messages rows) | {tok['plain']:.1f} | {rss['plain']:.0f} |\n"
                f"| recipe SFT stage (`Recipe.sft`) | {tok['recipe']:.1f} | {rss['recipe']:.0f} |\n\n"
                f"**recipe ÷ plain = {ratio:.2f}** (goal ≥ 1.0).\n")
        write_docs(Path(args.docs), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
