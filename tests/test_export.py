from idea_mcts.config import ExportConfig
from idea_mcts.export import read_trees, select_rows, to_dataset, write_trees
from idea_mcts.tree import Tree


def scored_tree(seed_id: str) -> Tree:
    """root -> a (terminal path: a -> c -> d terminal), b (off path)."""
    t = Tree(seed_id, "root", 0)
    a = t.add_child(t.root, "x", "A", "expand", t.next_id())
    b = t.add_child(t.root, "y", "B", "expand", t.next_id())
    c = t.add_child(a, "z", "C", "rollout", t.next_id())
    d = t.add_child(c, "z", "D", "rollout", t.next_id())
    for i, n in enumerate(t):
        n.response, n.reward = f"resp {n.instruction}", float(i)
        n.scores = {"quality": 1.0 + i, "complexity": 2.0, "diversity": 3.0}
    d.terminal = True
    t.backpropagate(d, d.reward)
    t.backpropagate(b, b.reward)
    return t


def test_paper_sampling_draws_only_path_nodes():
    trees = [scored_tree("s1"), scored_tree("s2")]
    rows = select_rows(trees, ExportConfig(mode="paper", num_samples=1000))
    assert {n.instruction for n in rows} == {"A", "C", "D"} and len(rows) == 6  # b is not on a terminal path
    with_roots = select_rows(trees, ExportConfig(mode="paper", include_roots=True))
    assert len(with_roots) == 8
    few = select_rows(trees, ExportConfig(mode="paper", num_samples=4, seed=1))
    ids = lambda nodes: [n.node_id for n in nodes]  # noqa: E731
    assert len(few) == 4 and set(ids(few)) <= set(ids(with_roots))
    assert ids(few) == ids(select_rows(trees, ExportConfig(mode="paper", num_samples=4, seed=1)))  # seeded


def test_best_leaf_and_all_modes():
    trees = [scored_tree("s1")]
    assert [n.instruction for n in select_rows(trees, ExportConfig(mode="best_leaf"))] == ["D"]
    assert len(select_rows(trees, ExportConfig(mode="all"))) == 4
    assert len(select_rows(trees, ExportConfig(mode="all", include_roots=True))) == 5


def test_dataset_has_messages_and_provenance(tmp_path):
    trees = [scored_tree("s1")]
    ds = to_dataset(select_rows(trees, ExportConfig(mode="all")))
    assert ds.column_names[:7] == ["messages", "seed_id", "node_id", "parent_id", "depth", "action_path",
                                   "instruction"]
    r = ds[2]
    assert r["messages"] == [{"role": "user", "content": "C"}, {"role": "assistant", "content": "resp C"}]
    assert r["action_path"] == ["x", "z"] and r["depth"] == 2 and r["parent_id"] == "s1/1"
    assert r["visits"] == 1 and r["value"] == 4.0 and r["novelty"] is None
    write_trees(tmp_path, trees)
    back = read_trees(tmp_path)
    assert [n.to_record() for n in back[0]] == [n.to_record() for n in trees[0]]


def test_a_run_that_exports_zero_rows_warns(tiny_model_dir, tmp_path, caplog):
    import json
    import logging

    from tests.runs import evolve

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="idea_mcts"):
        assert evolve(out, tiny_model_dir, "search.iterations=0", "export.mode=paper") == 0
    report = json.loads((out / "run.json").read_text())
    assert report["counts"]["rows"] == 0
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "dataset"))) == 0  # an empty dataset that loads
    assert report["warnings"] and "0 rows exported" in report["warnings"][0]
    assert any("0 rows" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
