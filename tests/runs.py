"""Helpers for end-to-end `evolve` runs on the tiny random model (resume and bad-input tests)."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import load_from_disk

from idea_mcts.cli import main
from idea_mcts.run_files import CACHE_FILE, NODES_FILE, STATE_FILE
from idea_mcts.store import read_jsonl


def tiny_args(model_dir: Path) -> list[str]:
    """A small but complete search: 2 seeds, 2 iterations, expansion and rollouts, every scorer, float scores
    (top_logprobs over the whole tiny vocabulary), every scored node exported."""
    return [f"engines.default.model={model_dir}", "engines.default.max_model_len=512", "data.max_seeds=2",
            "search.iterations=2", "search.expand_width=2", "search.max_depth=1", "roles.evolver.max_new_tokens=8",
            "roles.responder.max_new_tokens=8", "roles.tagger.max_new_tokens=8", "export.mode=all",
            "reward.top_logprobs=1000"]


def evolve_argv(out: Path, model_dir: Path, *extra: str) -> list[str]:
    return ["evolve", "--output_dir", str(out), "--no_progress", *tiny_args(model_dir), *extra]


def evolve(out: Path, model_dir: Path, *extra: str) -> int:
    """`idea-mcts evolve` in this process (no interpreter start, imports already warm)."""
    return main(evolve_argv(out, model_dir, *extra))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones too) by relative path, with its bytes; a file root maps to ''."""
    if root.is_file():
        return {"": root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cache_lines(out: Path) -> int:
    try:
        return (out / CACHE_FILE).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def state(out: Path) -> dict:
    return json.loads((out / STATE_FILE).read_text())


def assert_same_run(out: Path, ref: Path, log_order: bool = True) -> None:
    """Same dataset (features, rows, every column), same trees.jsonl, same node log and request cache. The node
    log holds nodes in the order their evaluations completed; a resumed run's cached requests answer at once, so
    where the kill fell between two nodes' scorer calls they can complete in the other order (measured: kill -9
    at 3 cache lines under load, with and without `overlap_root`): `log_order=False` compares its records
    without their order."""
    got, want = load_from_disk(str(out / "dataset")), load_from_disk(str(ref / "dataset"))
    assert got.features == want.features
    assert got.to_list() == want.to_list()
    assert (out / "trees.jsonl").read_bytes() == (ref / "trees.jsonl").read_bytes()
    logged, ref_logged = read_jsonl(out / NODES_FILE)[0], read_jsonl(ref / NODES_FILE)[0]
    if not log_order:
        logged, ref_logged = (sorted(recs, key=lambda r: json.dumps(r, sort_keys=True))
                              for recs in (logged, ref_logged))
    assert logged == ref_logged  # nothing lost, nothing twice
    index = {}
    for rec in read_jsonl(out / CACHE_FILE)[0]:
        index.update(rec["results"])
    ref_index = {}
    for rec in read_jsonl(ref / CACHE_FILE)[0]:
        ref_index.update(rec["results"])
    assert index == ref_index
    assert state(out)["status"] == "finished"
