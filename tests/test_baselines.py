"""The comparison's arms (idea_mcts.baselines): evol-instruct at idea-mcts's request budget on the tiny random model,
its request accounting against what the engine was sent (scripted engine), the seed arm, idea-mcts+ with the
evolver scripted (the tiny model cannot write the meta-prompt's numbered list) and the rest on the tiny model,
and the per-seed paired difference of the report against a known answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import idea_mcts.engines
from idea_mcts.actions import EVOL_INSTRUCT
from idea_mcts.baselines import (
    BudgetedMCTSRun,
    EvolInstructRun,
    EvolInstructSettings,
    arm_budget,
    sample_rows,
    seed_rows,
)
from idea_mcts.compare_report import paired, per_seed
from idea_mcts.config import load_config
from idea_mcts.errors import UsageError
from idea_mcts.pipeline import EvolveRun
from tests.compare_scripted import build_engine as routed_build_engine
from tests.runs import tiny_args
from tests.scripted import ScriptedEngine

BUDGET_ROLES = ("evolver", "responder", "quality", "complexity", "tagger", "embedder", "reward_model")
OPERATORS = {a.name for a in EVOL_INSTRUCT} | {"create_new"}


def requests_in(out: Path) -> int:
    """The run's evolver + responder + scorer requests, summed from run.json's per-role usage."""
    usage = json.loads((out / "run.json").read_text())["usage"]
    return sum(usage[r]["requests"] for r in BUDGET_ROLES if r in usage)


def nodes_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trees.jsonl").read_text().splitlines()]


def tiny_cfg(model: Path, out: Path, *extra: str):
    return load_config(None, [*tiny_args(model), "data.max_seeds=3", "search.iterations=1",
                              "reward.check_judges=false", f"output_dir={out}", *extra])


@pytest.fixture(scope="module")
def mcts_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("arms") / "idea-mcts"
    report = EvolveRun(tiny_cfg(tiny_model_dir, out)).execute(progress=False)
    assert report["status"] == "finished"
    return out


def test_evol_instruct_arm_spends_the_idea_mcts_budget_on_the_tiny_model(mcts_run, tiny_model_dir, tmp_path):
    budget = requests_in(mcts_run)
    node_cost = 1 + 1 + 3  # an evolution, its response, quality + complexity + tagger
    out = tmp_path / "evol"
    cfg = tiny_cfg(tiny_model_dir, out, "export.mode=all")
    report = EvolInstructRun(cfg, EvolInstructSettings(rounds=2, budget=budget)).execute(progress=False)
    spent = requests_in(out)
    assert budget - node_cost < spent <= budget
    assert report["counts"]["requests"] == spent  # the search's own count is what the engines were sent
    assert report["baseline"]["budget_spent"] is True and report["status"] == "finished"
    nodes = nodes_of(out)
    evolved = [n for n in nodes if n["depth"] > 0]
    assert evolved and {n["action"] for n in evolved} <= OPERATORS
    assert max(n["depth"] for n in nodes) <= 2  # chains of 2 rounds
    assert report["counts"]["rows"] == sum(n["reward"] is not None for n in evolved)


def test_seed_arm_is_the_scored_roots(mcts_run):
    rows = seed_rows(mcts_run)
    roots = [n for n in nodes_of(mcts_run) if n["depth"] == 0]
    assert sorted(rows["node_id"]) == sorted(n["node_id"] for n in roots)
    by_id = {n["node_id"]: n for n in roots}
    for r in rows:  # the seed instruction and the responder's response to it
        assert r["messages"] == [{"role": "user", "content": by_id[r["node_id"]]["instruction"]},
                                 {"role": "assistant", "content": by_id[r["node_id"]]["response"]}]
    picked = sample_rows(rows, 2, seed=1)
    assert len(picked) == 2 and set(picked["node_id"]) <= set(rows["node_id"])
    with pytest.raises(ValueError):
        sample_rows(rows, len(rows) + 1)


def test_evol_instruct_counts_every_request_sent_and_goes_on_after_a_failed_evolution(tmp_path, monkeypatch):
    engine = ScriptedEngine(fail_evolve_every=3)  # every third rewrite is empty: the filter drops it
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: engine)
    out = tmp_path / "evol"
    cfg = load_config(None, [f"output_dir={out}", "data.max_seeds=2", "reward.check_judges=false",
                             "export.mode=all"])
    report = EvolInstructRun(cfg, EvolInstructSettings(rounds=3, budget=47)).execute(progress=False)
    sent = sum(n for _, n in engine.batches)  # what the engine was handed, request by request
    usage = report["usage"]  # + the repeats the run's request cache answered (a restarted chain repeats a prompt)
    cached = sum(usage[r]["cached"] for r in BUDGET_ROLES if r in usage)
    assert sent + cached == report["counts"]["requests"] == requests_in(out)
    assert 47 - 5 < report["counts"]["requests"] <= 47
    assert report["filtered"]["empty"] > 0
    for n in nodes_of(out):  # the scripted evolver appends " +1": a chain goes on from the last kept node
        assert n["instruction"].count("+1") == n["depth"]
        assert n["depth"] <= 3


@pytest.mark.parametrize("gate", [None, "0.5"])
def test_idea_mcts_counts_the_requests_sent_not_those_reserved(tmp_path, monkeypatch, gate):
    """The search reserves a node's whole cost before its evolution goes out and gives back what an eliminated
    evolution never sends (filter: gate, response, scorers; gate: response, scorers), so run.json's
    `counts.requests` is what the engines were handed, the figure the arms' budgets are compared by."""
    engine = ScriptedEngine(fail_evolve_every=3)  # every third rewrite is empty: the filter drops it
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: engine)
    out = tmp_path / "mcts"
    extra = [f"search.validity_gate={gate}"] if gate else []  # the scripted judge never says Yes/No: all refused
    cfg = load_config(None, [f"output_dir={out}", "data.max_seeds=3", "search.iterations=3",
                             "reward.check_judges=false", *extra])
    report = EvolveRun(cfg).execute(progress=False)
    sent = sum(n for _, n in engine.batches)
    usage = report["usage"]
    cached = sum(usage[r]["cached"] for r in BUDGET_ROLES if r in usage)
    assert report["filtered"]["empty"] > 0
    if gate:
        assert report["filtered"]["gate_unparsed"] > 0
    assert sent + cached == report["counts"]["requests"] == requests_in(out)


def test_idea_mcts_under_max_calls_sends_at_most_that_many_requests(tmp_path, monkeypatch):
    engine = ScriptedEngine(fail_evolve_every=3)
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: engine)
    out = tmp_path / "mcts"
    cfg = load_config(None, [f"output_dir={out}", "data.max_seeds=3", "search.iterations=5",
                             "reward.check_judges=false", "max_calls=40"])
    report = EvolveRun(cfg).execute(progress=False)
    assert report["status"] == "stopped early: max_calls"
    usage = report["usage"]
    cached = sum(usage[r]["cached"] for r in BUDGET_ROLES if r in usage)
    assert report["counts"]["requests"] == requests_in(out) == sum(n for _, n in engine.batches) + cached
    assert report["counts"]["requests"] <= 40


def test_a_failed_evolution_does_not_end_its_chain(tmp_path, monkeypatch):
    engine = ScriptedEngine(fail_evolve_every=3)  # evolver calls 3 and 6 (of 6) come back empty
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: engine)
    out = tmp_path / "evol"
    cfg = load_config(None, [f"output_dir={out}", "data.max_seeds=2", "reward.check_judges=false"])
    report = EvolInstructRun(cfg, EvolInstructSettings(rounds=3, max_chains=1)).execute(progress=False)
    assert report["usage"]["evolver"]["requests"] == 2 * 3  # every round of both chains was attempted
    assert report["filtered"]["empty"] == 2 and report["counts"]["evolved_nodes"] == 4
    # the chain whose second round failed evolved its third round from its first-round node: depth 2, not 3
    assert sorted(n["depth"] for n in nodes_of(out) if n["depth"] > 0) == [1, 1, 2, 2]


def test_evol_instruct_with_max_chains_and_no_budget_stops_after_its_chains(tmp_path, monkeypatch):
    engine = ScriptedEngine()
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: engine)
    out = tmp_path / "evol"
    cfg = load_config(None, [f"output_dir={out}", "data.max_seeds=2", "reward.check_judges=false"])
    report = EvolInstructRun(cfg, EvolInstructSettings(rounds=2, max_chains=3)).execute(progress=False)
    assert report["counts"]["evolved_nodes"] == 2 * 3 * 2
    assert report["baseline"]["budget_spent"] is False
    with pytest.raises(UsageError, match="budget or max_chains"):
        EvolInstructSettings(rounds=2)


def test_idea_mcts_plus_arm_with_a_scripted_evolver_and_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(idea_mcts.engines, "build_engine", routed_build_engine)
    scripted = tmp_path / "scripted-evolver"
    scripted.symlink_to(tiny_model_dir)
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"instruction": "Write a poem in exactly four lines."}\n')
    out = tmp_path / "plus"
    cfg = tiny_cfg(tiny_model_dir, out, f"engines.evolver.model={scripted}", "roles.evolver.engine=evolver",
                   f"search.task_actions={examples}", "search.num_task_actions=2", "search.task_source=my-file",
                   "search.expand_width=14")
    report = EvolveRun(cfg).execute(progress=False)
    assert [a["name"] for a in report["actions"]][-2:] == ["task_1", "task_2"]
    used = {n["action"] for n in nodes_of(out) if n["depth"] == 1}
    assert {"task_1", "task_2"} <= used
    assert report["usage"]["responder"]["completion_tokens"] > 0  # the tiny model answered


def test_idea_mcts_plus_arm_is_cut_at_the_budget_with_its_meta_prompt_paid_from_it(tmp_path, monkeypatch):
    """8 trees of one expansion each (2 children: 10 requests reserved), half the rewrites dropped by the filter
    (their 4 later requests given back): a tree whose expansion does not fit waits for what the others give
    back instead of stopping, so the arm ends within one expansion of B (it stopped 12 below B at 90 % of the
    uncut run when it did not wait)."""
    # a fresh engine per run: its count of rewrites (every second one fails) starts again
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: ScriptedEngine(fail_evolve_every=2))
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"instruction": "Write a poem in exactly four lines."}\n')

    def cfg(out: Path):
        return load_config(None, [f"output_dir={out}", "data.max_seeds=8", "search.iterations=1",
                                  "search.expand_width=2", "search.max_depth=1", "reward.check_judges=false",
                                  f"search.task_actions={examples}", "search.num_task_actions=2"])

    free = EvolveRun(cfg(tmp_path / "free")).execute(progress=False)
    budget = int(free["counts"]["requests"] * 0.9)
    report = BudgetedMCTSRun(cfg(tmp_path / "cut"), budget).execute(progress=False)
    spent = requests_in(tmp_path / "cut")
    assert any(a["name"] == "task_1" for a in report["actions"])
    expansion = 2 * (1 + 1 + 3)  # 2 children: evolution, response and three scorers each
    assert budget - expansion < spent <= budget  # the meta-prompt (1 evolver request) included
    assert report["counts"]["requests"] == spent - 1  # the search's own count: all but the meta-prompt
    assert report["baseline"]["search_budget"] == budget - 1  # the search may spend what the meta-prompt left
    assert report["status"] == "finished" and report["baseline"]["budget_spent"] is True
    assert BudgetedMCTSRun(cfg(tmp_path / "cut"), budget).mode == "finished"  # a relaunch has nothing to do
    with pytest.raises(UsageError, match="another config"):  # another budget is another run
        BudgetedMCTSRun(cfg(tmp_path / "cut"), budget + 5)
    again = BudgetedMCTSRun(cfg(tmp_path / "again"), budget).execute(progress=False)  # waiting is deterministic
    assert (tmp_path / "again" / "trees.jsonl").read_bytes() == (tmp_path / "cut" / "trees.jsonl").read_bytes()
    assert again["counts"] == report["counts"]


def test_per_seed_paired_difference_has_the_known_answer():
    seed = [{"seed_id": str(i), "quality": float(i % 5), "complexity": 2.0} for i in range(40)]
    # two rows per seed, each exactly 1 above its seed's quality: the difference is 1, with zero width
    arm = [{"seed_id": str(i), "quality": float(i % 5) + 1 + d, "complexity": 3.0} for i in range(40)
           for d in (-0.25, 0.25)]
    got = paired(per_seed(arm, "quality"), per_seed(seed, "quality"))
    assert (got["n"], got["difference"], got["ci95"]) == (40, 1.0, [1.0, 1.0])
    mean = paired(per_seed(arm, "mean"), per_seed(seed, "mean"))  # mean of (quality, complexity) per row
    assert mean["difference"] == pytest.approx(1.0)
    assert paired({"a": 1.0}, {"b": 2.0}) == {"n": 0, "difference": None, "ci95": None}


def test_evol_instruct_arm_resumes_from_its_cache_after_an_interrupt(tmp_path, monkeypatch):
    from idea_mcts.store import RunStore

    engine = ScriptedEngine()
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: engine)
    settings = EvolInstructSettings(rounds=2, budget=60)

    def cfg(out: Path):
        return load_config(None, [f"output_dir={out}", "data.max_seeds=2", "reward.check_judges=false",
                                  "export.mode=all"])

    ref = EvolInstructRun(cfg(tmp_path / "ref"), settings).execute(progress=False)
    log_nodes, waves = RunStore.log_nodes, []

    def interrupt_at_third_wave(self: RunStore, nodes: list) -> None:
        log_nodes(self, nodes)
        waves.append(len(nodes))
        if len(waves) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunStore, "log_nodes", interrupt_at_third_wave)
    with pytest.raises(KeyboardInterrupt):
        EvolInstructRun(cfg(tmp_path / "out"), settings).execute(progress=False)
    monkeypatch.setattr(RunStore, "log_nodes", log_nodes)
    run = EvolInstructRun(cfg(tmp_path / "out"), settings)
    assert run.mode == "resume"
    report = run.execute(progress=False)
    assert (tmp_path / "out" / "trees.jsonl").read_bytes() == (tmp_path / "ref" / "trees.jsonl").read_bytes()
    assert report["counts"]["requests"] == ref["counts"]["requests"]
    assert sum(u["cached"] for u in report["usage"].values()) > 0  # the first part came from the cache
    # the budget's tokens count what the cache answered too: the resumed arm cost what the uninterrupted one did
    assert arm_budget(report) == arm_budget(ref)
    assert arm_budget(ref)["completion_tokens"] > 0
    assert EvolInstructRun(cfg(tmp_path / "out"), settings).mode == "finished"
