"""MCTS+ end to end: the evolver turns example instructions into task-specific actions that the search uses."""

import json

import idea_mcts.engines
from idea_mcts.cli import main
from tests.scripted import ScriptedEngine


def test_task_specific_actions_are_generated_and_used(tmp_path, monkeypatch):
    engine = ScriptedEngine()
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: engine)
    examples = tmp_path / "poems.jsonl"
    examples.write_text('{"instruction": "Write a sonnet about rain."}\n{"prompt": "Write a limerick."}\n')
    out = tmp_path / "out"
    rc = main(["evolve", "--output_dir", str(out), "--no_progress", "data.max_seeds=2",
               "search.actions=evol_instruct", f"search.task_actions={examples}", "search.num_task_actions=2",
               "search.task_source=my_poems", "search.iterations=2", "search.expand_width=7", "search.max_depth=1"])
    assert rc == 0
    report = json.loads((out / "run.json").read_text())
    names = [a["name"] for a in report["actions"]]
    assert names[-2:] == ["task_1", "task_2"] and len(names) == 7
    assert "Require a rhyme scheme in the answer." in report["actions"][-2]["prompt"]
    nodes = [json.loads(line) for line in (out / "trees.jsonl").read_text().splitlines()]
    used = {n["action"] for n in nodes if n["depth"] == 1}
    assert {"task_1", "task_2"} <= used  # expand_width 7 = every action, task ones included
    assert ("meta", 1) in engine.batches


def test_meta_prompt_without_a_list_is_an_engine_error(tmp_path, monkeypatch, capsys):
    engine = ScriptedEngine()
    engine._generate_orig = engine._generate
    monkeypatch.setattr(engine, "_generate", lambda reqs: [type(g)(text="no list here") for g in
                                                           engine._generate_orig(reqs)])
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: engine)
    examples = tmp_path / "ex.txt"
    examples.write_text("Write a sonnet about rain.\n")
    rc = main(["evolve", "--output_dir", str(tmp_path / "o"), "--no_progress", "data.max_seeds=1",
               f"search.task_actions={examples}"])
    assert rc == 1
    assert "meta-prompt" in capsys.readouterr().err
