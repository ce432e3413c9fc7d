"""From trees to training data: row sampling, the `datasets.Dataset` (TRL `messages` + provenance) and the run's
files: OUT/dataset (save_to_disk), OUT/trees.jsonl (every node), OUT/run.json (the report)."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from idea_mcts.config import ExportConfig
from idea_mcts.scoring import SCORE_NAMES
from idea_mcts.tree import Node, Tree

DATASET_DIR = "dataset"
TREES_FILE = "trees.jsonl"
REPORT_FILE = "run.json"


def _scored(node: Node) -> bool:
    return node.reward is not None and node.response is not None


def select_rows(trees: Sequence[Tree], cfg: ExportConfig) -> list[Node]:
    """`paper`: `num_samples` nodes at random from root-to-terminal paths; `best_leaf`: per tree the scored leaf
    of highest reward (terminal leaves first); `all`: every scored node. Roots only with `include_roots`."""

    def ok(n: Node) -> bool:
        return _scored(n) and (cfg.include_roots or n.depth > 0)

    if cfg.mode == "all":
        return [n for t in trees for n in t if ok(n)]
    if cfg.mode == "best_leaf":
        rows = []
        for t in trees:
            leaves = [n for n in t if ok(n) and not n.children]
            if leaves:
                rows.append(max(leaves, key=lambda n: (n.terminal, n.reward)))
        return rows
    pool = [n for t in trees for n in t if ok(n) and n.on_terminal_path]
    picked = set(id(n) for n in random.Random(cfg.seed).sample(pool, min(cfg.num_samples, len(pool))))
    return [n for n in pool if id(n) in picked]


def features():  # noqa: ANN201 - datasets.Features
    from datasets import Features, List, Value

    cols: dict[str, Any] = {
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "seed_id": Value("string"), "node_id": Value("string"), "parent_id": Value("string"),
        "depth": Value("int32"), "action_path": List(Value("string")), "instruction": Value("string"),
    }
    cols.update({name: Value("float64") for name in SCORE_NAMES})
    cols.update({"reward": Value("float64"), "visits": Value("int32"), "value": Value("float64")})
    return Features(cols)


def row(node: Node, value_mode: str = "mean") -> dict[str, Any]:
    r = {"messages": [{"role": "user", "content": node.instruction},
                      {"role": "assistant", "content": node.response or ""}],
         "seed_id": node.seed_id, "node_id": node.node_id, "parent_id": node.parent_id, "depth": node.depth,
         "action_path": list(node.action_path), "instruction": node.instruction}
    r.update({name: node.scores.get(name) for name in SCORE_NAMES})
    r.update({"reward": node.reward, "visits": node.visits, "value": node.value(value_mode)})
    return r


def to_dataset(nodes: Iterable[Node], value_mode: str = "mean"):  # noqa: ANN201 - datasets.Dataset
    from datasets import Dataset

    rows = [row(n, value_mode) for n in nodes]
    feats = features()
    return Dataset.from_dict({k: [r[k] for r in rows] for k in feats}, features=feats)


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to a temporary file, fsync it, then rename it over `path`: `path` is either the old or the
    new content, never a mix, even when the write fails (disk full) or the process dies."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_trees(out_dir: Path, trees: Sequence[Tree], value_mode: str = "mean") -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for t in trees for r in t.records(value_mode)]
    path = out_dir / TREES_FILE
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def write_dataset(out_dir: Path, dataset: Any) -> Path:
    """save_to_disk into a temporary dir, then swap it in: a crash never leaves a half-written dataset."""
    final = out_dir / DATASET_DIR
    tmp, old = out_dir / (DATASET_DIR + ".tmp"), out_dir / (DATASET_DIR + ".old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    try:
        dataset.save_to_disk(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    path = out_dir / REPORT_FILE
    atomic_write(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def read_trees(out_dir: Path) -> list[Tree]:
    """Trees back from OUT/trees.jsonl, in file order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    with open(out_dir / TREES_FILE) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                groups.setdefault(rec["seed_id"], []).append(rec)
    return [Tree.from_records(recs) for recs in groups.values()]
