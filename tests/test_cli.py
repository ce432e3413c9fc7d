"""End to end through the CLI on the tiny random model: files written, show, score, bad input."""

import json

import pytest
from datasets import load_from_disk

from idea_mcts.cli import main


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    rc = main(["evolve", "--output_dir", str(out), "--no_progress",
               f"engines.default.model={tiny_model_dir}", "engines.default.max_model_len=512",
               "data.max_seeds=3", "search.iterations=2", "search.expand_width=2", "search.max_depth=2",
               "roles.evolver.max_new_tokens=12", "roles.responder.max_new_tokens=12",
               "roles.tagger.max_new_tokens=12", "export.mode=all"])
    assert rc == 0
    return out


def test_evolve_writes_dataset_trees_and_report(tiny_run):
    ds = load_from_disk(str(tiny_run / "dataset"))
    assert len(ds) > 0 and ds[0]["messages"][0]["role"] == "user"
    nodes = [json.loads(line) for line in (tiny_run / "trees.jsonl").read_text().splitlines()]
    assert len({n["seed_id"] for n in nodes}) == 3
    assert {n["node_id"] for n in nodes} >= set(ds["node_id"])
    report = json.loads((tiny_run / "run.json").read_text())
    assert report["status"] == "finished" and report["counts"]["nodes"] == len(nodes)
    assert set(report["usage"]) == {"evolver", "responder", "quality", "complexity", "tagger"}
    assert report["usage"]["evolver"]["completion_tokens"] > 0
    # the random model's tagger output rarely parses: failures are counted, never defaulted
    failed = sum(1 for n in nodes if n["diversity"] is None)
    assert report["parse_failures"]["diversity"] == failed
    assert report["config"]["search"]["expand_width"] == 2


def test_show_prints_outline(tiny_run, capsys):
    assert main(["show", str(tiny_run)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 3
    assert main(["show", str(tiny_run), "--seed", "demo-01"]) == 0
    outline = capsys.readouterr().out.splitlines()
    nodes = [json.loads(line) for line in (tiny_run / "trees.jsonl").read_text().splitlines()]
    root = next(n for n in nodes if n["seed_id"] == "demo-01" and n["depth"] == 0)
    assert f"[seed] Q {root['quality']:.2f} C {root['complexity']:.2f} " in outline[0]
    assert outline[0].endswith(" ".join(root["instruction"].split())[:99])  # the root's own text
    assert len(outline) == sum(n["seed_id"] == "demo-01" for n in nodes)  # one line per node
    assert any(line[4:6] == "  " and line[6] == "[" for line in outline[1:])  # children indented
    assert main(["show", str(tiny_run), "--seed", "nope"]) == 2


def test_score_prints_table(tiny_run, tiny_model_dir, tmp_path, capsys):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Say hi.", "output": "Hi!"}\n{"instruction": "Add 2 and 2."}\n')
    rc = main(["score", str(tiny_run), str(seeds), "--output_json", str(tmp_path / "t.json"),
               f"engines.default.model={tiny_model_dir}", "roles.responder.max_new_tokens=4",
               "roles.tagger.max_new_tokens=8", "reward.top_logprobs=1000"])  # whole tiny vocab: no misses
    assert rc == 0
    out = capsys.readouterr().out
    assert "| data | rows | quality | diversity | complexity |" in out
    table = json.loads((tmp_path / "t.json").read_text())
    assert table[str(seeds)]["rows"] == 2
    assert 1.0 <= table[str(seeds)]["quality"] <= 6.0 and 1.0 <= table[str(seeds)]["complexity"] <= 6.0


# bad input (exit 2, one line, outputs intact): tests/test_bad_input.py
