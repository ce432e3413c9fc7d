"""Write a small run output directory in the exact layout `idea-mcts evolve --output_dir OUT` produces.

`OUT/dataset/` (`Dataset.save_to_disk`: TRL `messages` + provenance + scores), `OUT/trees.jsonl` (every node
of every tree) and `OUT/run.json` (command, full config, counts, usage, parse failures, status). The trees are
deterministic for a given `variant`; scores rise with depth the way a working search's do, one node has a
failed quality scorer (None + `failures`), so the card's statistics have something real to compute.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import datasets

from idea_mcts.config import EvolveConfig, to_yaml

ACTIONS = ["add_constraints", "add_reasoning", "add_domain_knowledge", "format_output_style", "create_new"]
SEEDS = ["Give three tips for staying healthy.", "Describe the water cycle.", "Write a haiku about autumn.",
         "Explain what a hash table is.", "List five uses of vinegar."]

ROW_FEATURES = datasets.Features({  # as idea_mcts.export.features() writes them
    "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
    "seed_id": datasets.Value("string"), "node_id": datasets.Value("string"),
    "parent_id": datasets.Value("string"), "depth": datasets.Value("int32"),
    "action_path": datasets.List(datasets.Value("string")), "instruction": datasets.Value("string"),
    **{k: datasets.Value("float64")
       for k in ("quality", "complexity", "diversity", "novelty", "reward_model", "reward", "value")},
    "visits": datasets.Value("int32"),
})


def _node(rng: random.Random, seed_id: str, node_id: str, parent: dict | None, action: str | None,
          kind: str, text: str) -> dict[str, Any]:
    depth = 0 if parent is None else parent["depth"] + 1
    quality = round(2.0 + 0.5 * depth + rng.random(), 4)
    complexity = round(1.2 + 0.7 * depth + rng.random() * 0.5, 4)
    diversity = float(2 + depth + rng.randint(0, 1))
    return {"seed_id": seed_id, "node_id": node_id,
            "parent_id": None if parent is None else parent["node_id"], "depth": depth, "action": action,
            "action_path": [] if parent is None else [*parent["action_path"], action],
            "kind": kind, "instruction": text, "response": f"Response to: {text}",
            "quality": quality, "complexity": complexity, "diversity": diversity, "novelty": None,
            "reward_model": None, "reward": round(quality + complexity + diversity, 4), "visits": 0,
            "value": None,
            "terminal": False, "on_terminal_path": False, "children": [], "failures": []}


def _tree(rng: random.Random, seed_id: str, text: str, width: int, depth: int) -> list[dict[str, Any]]:
    """A root, `width` expanded children, and a rollout chain from the best child until `depth` (terminal)."""
    root = _node(rng, seed_id, f"{seed_id}-0", None, None, "root", text)
    nodes = [root]
    children = []
    for i, action in enumerate(rng.sample(ACTIONS, width)):
        child = _node(rng, seed_id, f"{seed_id}-1.{i}", root, action, "expand",
                      f"{text} ({action.replace('_', ' ')} #{i})")
        root["children"].append(child["node_id"])
        children.append(child)
    nodes += children
    node = max(children, key=lambda n: n["reward"])
    path = [root, node]
    while node["depth"] < depth:
        action = rng.choice(ACTIONS)
        nxt = _node(rng, seed_id, f"{node['node_id']}.r", node, action, "rollout",
                    f"{node['instruction']} Then {action.replace('_', ' ')}.")
        node["children"].append(nxt["node_id"])
        nodes.append(nxt)
        path.append(nxt)
        node = nxt
    node["terminal"] = True
    for n in path:
        n["on_terminal_path"] = True
        n["visits"] = 1
        n["value"] = node["reward"]
    return nodes


def make_config(task_actions: str | None = None, task_source: str | None = None,
                **search: Any) -> EvolveConfig:
    """The evolve config recorded in run.json (the embedded CPU default for every role)."""
    cfg = EvolveConfig(output_dir="outputs/fixture")
    cfg.search.task_actions = task_actions
    cfg.search.task_source = task_source
    for k, v in search.items():
        setattr(cfg.search, k, v)
    cfg.export.num_samples = 50
    return cfg


def write_run(out: Path, *, variant: int = 0, num_seeds: int = 3, task_actions: str | None = None,
              task_source: str | None = None) -> dict[str, Any]:
    """Write OUT/dataset, OUT/trees.jsonl and OUT/run.json; return {"nodes", "rows", "run"} as written."""
    rng = random.Random(1000 + variant)
    out.mkdir(parents=True, exist_ok=True)
    nodes: list[dict[str, Any]] = []
    for s in range(num_seeds):
        nodes += _tree(rng, f"seed{s}", SEEDS[s % len(SEEDS)], width=3, depth=2 + (s + variant) % 3)
    # one scorer failure: the quality judge's answer did not parse
    failed = nodes[2]
    failed["quality"], failed["failures"] = None, ["quality"]
    failed["reward"] = round(failed["complexity"] + failed["diversity"], 4)

    rows = [{"messages": [{"role": "user", "content": n["instruction"]},
                          {"role": "assistant", "content": n["response"]}],
             **{k: n[k] for k in ("seed_id", "node_id", "parent_id", "depth", "action_path", "instruction",
                                  "quality", "complexity", "diversity", "novelty", "reward_model", "reward",
                                  "value", "visits")}}
            for n in nodes if n["on_terminal_path"] and n["depth"] > 0]
    datasets.Dataset.from_list(rows, features=ROW_FEATURES).save_to_disk(str(out / "dataset"))
    with (out / "trees.jsonl").open("w", encoding="utf-8") as f:
        for n in nodes:
            f.write(json.dumps(n) + "\n")

    cfg = make_config(task_actions, task_source)
    roles = ("evolver", "responder", "quality", "complexity", "tagger")
    run = {
        "version": "0.1.0",
        "command": f"idea-mcts evolve --config configs/demo.yaml --output_dir {out}",
        "config": cfg.to_dict(),
        "config_yaml": to_yaml(cfg),
        "counts": {"seeds": num_seeds, "nodes": len(nodes), "rows": len(rows)},
        "usage": {r: {"calls": len(nodes), "requests": len(nodes), "prompt_tokens": 100 * len(nodes),
                      "completion_tokens": 10 * len(nodes), "seconds": 1.5} for r in roles},
        "parse_failures": {"quality": 1, "complexity": 0, "tagger": 0},
        "wall_seconds": 12.5,
        "status": "finished",
    }
    (out / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    return {"nodes": nodes, "rows": rows, "run": run}
