"""Is the evolved data better than its seeds? Judged by a judge configuration the search did not optimise.

    figures = data_quality(Path("OUT"), EngineConfig(model="embedded:qwen2.5-coder-0.5b-instruct"))

OUT is an `idea-mcts evolve` output directory (dataset/, trees.jsonl, run.json). Measured:

1. Complexity of each instruction and quality of each (instruction, response), seeds (the tree roots with their
   responses) vs the exported rows, by a held-out judge: the same expected-score mechanics (softmax over the
   digits 1..6, dot [1..6]) on the given engine (by default the search's own model), but with the `heldout` prompt
   preset (`idea_mcts.scoring`: other rubric wording, scale anchors and scored examples) instead of the `general`
   prompts the search's reward used. Validate it first: `idea-mcts validate-judge --config C
   roles.complexity.prompt=heldout roles.quality.prompt=heldout` (or `python eval/judge.py`).
2. Per seed, the mean of its rows minus the seed's score; mean over seeds with a paired bootstrap 95% CI
   (resampling seeds). Again after a length adjustment: the residuals of an OLS fit of score on log(words) over
   seeds and rows together, so a judge that rewards length alone cannot make rows look better; and, for
   complexity, with the length slope measured within each seed's rows instead (`within_seed_adjusted`: the
   pooled fit also absorbs part of the rows-vs-seeds difference when rows are longer).
3. Broken rows by the project's checker (`idea_mcts.filters`): an evolution the elimination filter would drop,
   with the `answer` heuristic on, or a response that is a short refusal.
4. Diversity: distinct-1/2 (distinct n-grams / n-grams) and mean pairwise cosine distance of MiniLM embeddings,
   seeds vs rows.

`bench/data_quality.py OUT` and `eval/data_quality.py` both call `data_quality`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from idea_mcts.run_files import FinishedRun

QUALITY_KEYS = ("complexity", "quality", "complexity_adj", "quality_adj")
"""The judged scores compared seeds vs rows (raw and length-adjusted)."""
EMBEDDER = "embedded:all-minilm-l6-v2"
"""The sentence embedder of the diversity figures."""


def load_run(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(seeds, rows, run.json): seeds are the tree roots; rows the exported dataset, with parent instructions."""
    run = FinishedRun(out)
    nodes = list(run.nodes())
    by_id = {n["node_id"]: n for n in nodes}
    seeds = [{"seed_id": n["seed_id"], "instruction": n["instruction"], "response": n["response"] or ""}
             for n in nodes if n["kind"] == "root"]
    rows = []
    for r in run.dataset():
        msgs = r["messages"]
        rows.append({"seed_id": r["seed_id"], "instruction": msgs[0]["content"],
                     "response": msgs[1]["content"] if len(msgs) > 1 else "",
                     "parent": by_id[r["parent_id"]]["instruction"] if r["parent_id"] in by_id else ""})
    return seeds, rows, run.report


def check_run_dir(out: Path) -> None:
    """`out` holds a finished evolve run (dataset/, trees.jsonl, run.json), else UsageError."""
    FinishedRun(out)


def paired_bootstrap(seeds: list[dict[str, Any]], rows: list[dict[str, Any]], key: str, n_boot: int,
                     rng: np.random.Generator) -> dict[str, Any]:
    """Mean over seeds of (mean of the seed's rows - the seed), with a 95% percentile CI resampling seeds."""
    diffs = []
    for s in seeds:
        mine = [r[key] for r in rows if r["seed_id"] == s["seed_id"] and r[key] is not None]
        if mine and s[key] is not None:
            diffs.append(float(np.mean(mine)) - s[key])
    d = np.asarray(diffs)
    if not len(d):
        return {"seeds": 0, "mean_diff": None, "ci95": None}
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    return {"seeds": len(d), "mean_diff": round(float(d.mean()), 4),
            "ci95": [round(float(np.percentile(boots, 2.5)), 4), round(float(np.percentile(boots, 97.5)), 4)]}


def length_adjust(items: list[dict[str, Any]], key: str, length_of: str) -> None:
    """Add `<key>_adj`: the residual of an OLS fit of the score on log(1 + words of `length_of`)."""
    pts = [(math.log1p(len(it[length_of].split())), it[key]) for it in items if it[key] is not None]
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1) if len(pts) > 2 else (0.0, float(y.mean()) if len(y) else 0.0)
    for it in items:
        it[f"{key}_adj"] = (None if it[key] is None else
                            it[key] - (intercept + slope * math.log1p(len(it[length_of].split()))))


def within_seed_adjusted(seeds: list[dict[str, Any]], rows: list[dict[str, Any]], key: str, length_of: str,
                         n_boot: int, rng: np.random.Generator) -> dict[str, Any]:
    """The paired difference adjusted with the judge's length slope measured *within* each seed's rows (rows of one
    seed that are longer or shorter than each other: evolved against evolved), not across seeds and rows together:
    when the rows are longer than their seeds, a slope fitted over both groups also absorbs the group difference
    itself, which biases the adjusted difference toward zero. Per seed: (rows' mean - seed) - slope x (rows' mean
    log(1 + words) - the seed's); the slope is refitted in every bootstrap draw (resampling seeds)."""
    def loglen(it: dict[str, Any]) -> float:
        return math.log1p(len(it[length_of].split()))

    fam = []
    for s in seeds:
        mine = [r for r in rows if r["seed_id"] == s["seed_id"] and r[key] is not None]
        if mine and s[key] is not None:
            fam.append((np.array([loglen(r) for r in mine]), np.array([r[key] for r in mine]), loglen(s), s[key]))
    if not fam:
        return {"seeds": 0, "slope": None, "mean_diff": None, "ci95": None}

    def estimate(idx: np.ndarray) -> tuple[float, float]:
        picked = [fam[i] for i in idx]
        sxy = sum(float(((x - x.mean()) * (y - y.mean())).sum()) for x, y, _, _ in picked)
        sxx = sum(float(((x - x.mean()) ** 2).sum()) for x, _, _, _ in picked)
        slope = sxy / sxx if sxx > 0 else 0.0
        return slope, float(np.mean([y.mean() - ys - slope * (x.mean() - xs) for x, y, xs, ys in picked]))

    slope, mean = estimate(np.arange(len(fam)))
    boots = [estimate(rng.integers(0, len(fam), size=len(fam)))[1] for _ in range(n_boot)]
    return {"seeds": len(fam), "slope": round(slope, 4), "mean_diff": round(mean, 4),
            "ci95": [round(float(np.percentile(boots, 2.5)), 4), round(float(np.percentile(boots, 97.5)), 4)]}


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(w[i:i + n]) for t in texts for w in [re.findall(r"\w+", t.lower())]
             for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def embedding_diversity(engine: Any, texts: list[str]) -> float:
    """Mean pairwise cosine distance (embeddings are L2-normalised)."""
    v = np.asarray(engine.embed(texts), dtype=np.float32)
    sims = v @ v.T
    n = len(v)
    return float(1.0 - (sims.sum() - np.trace(sims)) / (n * (n - 1))) if n > 1 else 0.0


def data_quality(out: Path, engine_cfg: Any, n_boot: int = 2000, sample_rows: int = 20,
                 run_name: str | None = None) -> dict[str, Any]:
    """Every figure of the module docstring for the evolve run in `out`, judged by the model behind `engine_cfg`
    (an `EngineConfig`) with the `heldout` prompts. `run_name`: what the figures call the run (default `out`)."""
    from idea_mcts.actions import load_actions
    from idea_mcts.config import EngineConfig
    from idea_mcts.engines import build_engine
    from idea_mcts.filters import Eliminator, extract_instruction, is_refusal
    from idea_mcts.scoring import DIGITS, complexity_prompt, expected_score, quality_prompt

    seeds, rows, run = load_run(out)
    judge = build_engine(engine_cfg)
    items = seeds + rows
    top = 1000 if engine_cfg.backend == "transformers" else 20
    c = judge.next_token_logprobs([complexity_prompt("heldout", it["instruction"]) for it in items], DIGITS, top)
    q = judge.next_token_logprobs([quality_prompt("heldout", it["instruction"], it["response"]) for it in items],
                                  DIGITS, top)
    for it, cl, ql in zip(items, c, q, strict=True):
        it["complexity"], it["quality"] = expected_score(cl.logprobs), expected_score(ql.logprobs)
    length_adjust(items, "complexity", "instruction")
    length_adjust(items, "quality", "response")
    rng = np.random.default_rng(0)
    figures: dict[str, Any] = {"run": run_name if run_name is not None else str(out),
                               "judge": f"{engine_cfg.model} ({engine_cfg.backend}), the `heldout` prompt preset",
                               "seeds": len(seeds), "rows": len(rows)}
    for key in QUALITY_KEYS:
        figures[key] = {"seed_mean": round(float(np.mean([s[key] for s in seeds if s[key] is not None])), 4),
                        "row_mean": round(float(np.mean([r[key] for r in rows if r[key] is not None])), 4),
                        **paired_bootstrap(seeds, rows, key, n_boot, rng)}
    figures["complexity_adj_within_seed"] = within_seed_adjusted(seeds, rows, "complexity", "instruction",
                                                                 n_boot, rng)
    cfg_actions = run["config"]["search"]["actions"]
    checker = Eliminator([a.template_text() for a in load_actions(cfg_actions)], drop_answers=True)
    verdicts = []
    for r in rows:
        why = checker.reason(extract_instruction(r["instruction"]), r["parent"])
        if why is None and extract_instruction(r["instruction"]) != r["instruction"].strip():
            why = "chatter"
        if why is None and is_refusal(r["response"]):
            why = "response_refusal"
        verdicts.append(why)
    broken = [v for v in verdicts if v is not None]
    figures["broken_rows"] = {"rate": round(len(broken) / max(len(rows), 1), 4), "count": len(broken),
                              "by_reason": {k: broken.count(k) for k in sorted(set(broken))}}
    embedder = build_engine(EngineConfig(backend="embedding", model=EMBEDDER))
    figures["diversity"] = {
        name: {"distinct_1": round(distinct_n([t["instruction"] for t in group], 1), 4),
               "distinct_2": round(distinct_n([t["instruction"] for t in group], 2), 4),
               "embedding_distance": round(embedding_diversity(embedder, [t["instruction"] for t in group]), 4),
               "mean_words": round(float(np.mean([len(t["instruction"].split()) for t in group])), 2)}
        for name, group in (("seeds", seeds), ("rows", rows))}
    figures["filtered_in_run"] = run.get("filtered")
    pick = np.random.default_rng(1).choice(len(rows), size=min(sample_rows, len(rows)), replace=False)
    figures["sample"] = [{"instruction": rows[i]["instruction"], "parent": rows[i]["parent"],
                          "checker": verdicts[i] or "ok"} for i in sorted(pick)]
    judge.close()
    return figures
