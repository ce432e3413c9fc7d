"""From trees to training data: row sampling, the `datasets.Dataset` (TRL `messages` + provenance), written as
OUT/dataset (save_to_disk) and OUT/trees.jsonl (every node). The names and the atomic writes are
`idea_mcts.run_files`'s."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idea_mcts.config import ExportConfig
from idea_mcts.run_files import DATASET_DIR, TREES_FILE, Record, TreeCounts, atomic_dir, atomic_write, iter_tree_records
from idea_mcts.scoring import PAPER_SCORES, SCORE_NAMES, ScoreMeans
from idea_mcts.tree import Node, Tree


def select_records(trees: Callable[[], Iterable[Sequence[Record]]], cfg: ExportConfig) -> Iterator[Record]:
    """The rows, as node records, streamed. `trees()` yields each tree's records (a fresh pass per call; `paper`
    makes two: count, then draw). `paper`: `num_samples` nodes at random from the nodes on backed-up
    root-to-terminal paths; `best_leaf`: per tree the scored leaf of highest reward (terminal leaves first);
    `all`: every scored node. Roots only with `include_roots`."""

    def ok(r: Record) -> bool:
        return (r.get("reward") is not None and r.get("response") is not None
                and (cfg.include_roots or r.get("depth", 0) > 0))

    if cfg.mode == "all":
        yield from (r for tree in trees() for r in tree if ok(r))
    elif cfg.mode == "best_leaf":
        for tree in trees():
            leaves = [r for r in tree if ok(r) and not r.get("children")]
            if leaves:
                yield max(leaves, key=lambda r: (r.get("terminal", False), r["reward"]))
    else:
        n = sum(ok(r) and r.get("on_terminal_path", False) for tree in trees() for r in tree)
        picked = set(random.Random(cfg.seed).sample(range(n), min(cfg.num_samples, n)))
        i = 0
        for tree in trees():
            for r in tree:
                if ok(r) and r.get("on_terminal_path", False):
                    if i in picked:
                        yield r
                    i += 1


def select_rows(trees: Sequence[Tree], cfg: ExportConfig) -> list[Node]:
    """`select_records` over trees in memory."""
    nodes = {n.node_id: n for t in trees for n in t}
    chosen = select_records(lambda: ([n.to_record() for n in t] for t in trees), cfg)
    return [nodes[r["node_id"]] for r in chosen]


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


def record_row(rec: Record) -> dict[str, Any]:
    """A training row (TRL `messages` + provenance + scores) from a node record."""
    r = {"messages": [{"role": "user", "content": rec["instruction"]},
                      {"role": "assistant", "content": rec.get("response") or ""}],
         "seed_id": rec["seed_id"], "node_id": rec["node_id"], "parent_id": rec["parent_id"], "depth": rec["depth"],
         "action_path": list(rec.get("action_path", [])), "instruction": rec["instruction"]}
    r.update({name: rec.get(name) for name in SCORE_NAMES})
    r.update({"reward": rec.get("reward"), "visits": rec.get("visits", 0), "value": rec.get("value")})
    return r


def row(node: Node, value_mode: str = "mean") -> dict[str, Any]:
    return record_row(node.to_record(value_mode))


def to_dataset(nodes: Iterable[Node], value_mode: str = "mean"):  # noqa: ANN201 - datasets.Dataset
    from datasets import Dataset

    rows = [row(n, value_mode) for n in nodes]
    feats = features()
    return Dataset.from_dict({k: [r[k] for r in rows] for k in feats}, features=feats)


def write_trees(out_dir: Path, trees: Sequence[Tree], value_mode: str = "mean") -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for t in trees for r in t.records(value_mode)]
    path = out_dir / TREES_FILE
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def write_dataset(out_dir: Path, dataset: Any) -> Path:
    """save_to_disk into a temporary dir, then swap it in (`atomic_dir`): a crash never leaves a half-written
    dataset."""
    final = out_dir / DATASET_DIR
    with atomic_dir(final) as tmp:
        # one shard even for 0 rows: datasets writes no shard for an empty dataset, which it then cannot load
        dataset.save_to_disk(str(tmp), num_shards=1 if len(dataset) == 0 else None)
    return final


class TreeWriter:
    """Finished trees streamed to OUT/trees.jsonl (through a temporary file renamed at `close`, so the file is
    whole or absent), in seed order whatever order they finish in (a reorder buffer holds early finishers), with
    the counts the run report needs. Each tree's records are written and the tree dropped: memory stays flat."""

    def __init__(self, out_dir: Path, value_mode: str) -> None:
        self.path = out_dir / TREES_FILE
        self.tmp = out_dir / (TREES_FILE + ".tmp")
        self.value_mode = value_mode
        self.file = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.pending: dict[int, list[Record]] = {}
        self.next = 0
        self.counts = TreeCounts()
        self.seed_scores = ScoreMeans()
        self.seed_ids: set[str] = set()
        """The seeds whose trees were written."""

    def add(self, index: int, tree: Tree) -> None:
        records = tree.records(self.value_mode)
        self.seed_ids.add(tree.seed_id)
        self.counts.add(records)
        self.seed_scores.add(tree.root.scores)
        self.pending[index] = records
        while self.next in self.pending:
            self.file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.pending.pop(self.next)))
            self.next += 1

    def close(self) -> Path:
        """Write what the buffer still holds (trees after a gap: a budget stopped some) and sync the temporary
        file; `commit` then puts it in place (after the dataset, so a failure keeps the old outputs whole)."""
        for i in sorted(self.pending):
            self.file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.pending.pop(i)))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.tmp

    def commit(self) -> Path:
        self.tmp.replace(self.path)
        return self.path

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _export_rows(trees_path: str, export: dict[str, Any]) -> Iterator[dict[str, Any]]:
    cfg = ExportConfig(**export)
    yield from (record_row(r) for r in select_records(lambda: iter_tree_records(Path(trees_path)), cfg))


@dataclass
class Exported:
    """What `stream_dataset` wrote: the number of rows, their score means and the seeds they come from."""

    rows: int
    means: ScoreMeans
    seeds: set[str]

    def seeds_without_rows(self, seed_ids: Iterable[str]) -> list[str]:
        """The ids among `seed_ids` (in their order) that no row comes from."""
        return [s for s in seed_ids if s not in self.seeds]


def stream_dataset(out_dir: Path, trees_path: Path, cfg: ExportConfig) -> Exported:
    """Select the rows from trees.jsonl and write them as OUT/dataset, streamed (`Dataset.from_generator`: no
    row list is held); return their number, score means and seeds."""
    import tempfile
    from dataclasses import asdict

    from datasets import Dataset

    kwargs = {"trees_path": str(trees_path), "export": asdict(cfg)}
    if next(_export_rows(**kwargs), None) is None:  # datasets cannot generate a split of no rows
        write_dataset(out_dir, Dataset.from_dict({k: [] for k in features()}, features=features()))
        return Exported(0, ScoreMeans(), set())
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".rows-") as cache:
        ds = Dataset.from_generator(_export_rows, features=features(), cache_dir=cache, gen_kwargs=kwargs)
        means, seeds = ScoreMeans(), set()
        for batch in ds.select_columns([*PAPER_SCORES, "seed_id"]).iter(batch_size=1000):
            seeds.update(batch["seed_id"])
            for j in range(len(batch[PAPER_SCORES[0]])):
                means.add({k: batch[k][j] for k in PAPER_SCORES})
        write_dataset(out_dir, ds)
        return Exported(len(ds), means, seeds)


def read_trees(out_dir: Path) -> list[Tree]:
    """Trees back from OUT/trees.jsonl, in file order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    with open(out_dir / TREES_FILE) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                groups.setdefault(rec["seed_id"], []).append(rec)
    return [Tree.from_records(recs) for recs in groups.values()]
