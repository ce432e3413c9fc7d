"""`plan_evolve` (idea_mcts.evolve_plan): every check and the estimate of an `evolve` run with no side effect —
OUT stays absent, no engine pool is built — the same UsageError as the CLI on bad input, the mode read from
OUT's state (a finished run's plan says `finished`), and a subclass's own fingerprint deciding the mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import idea_mcts.engines
import idea_mcts.pipeline
from idea_mcts.baselines import BudgetedMCTSRun, budgeted_fingerprint
from idea_mcts.cli import main
from idea_mcts.config import EvolveConfig, load_config
from idea_mcts.errors import UsageError
from idea_mcts.evolve_plan import plan_evolve
from idea_mcts.pipeline import EvolveRun
from tests.runs import evolve, evolve_argv, snapshot, tiny_args


def tiny_cfg(model: Path, out: Path, *extra: str) -> EvolveConfig:
    """The config `evolve_argv(out, model, *extra)` gives the CLI."""
    return replace(load_config(None, [*tiny_args(model), *extra]), output_dir=str(out))


@pytest.fixture
def no_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building an engine pool or an engine fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an engine pool or engine was built")

    monkeypatch.setattr(idea_mcts.pipeline, "EnginePool", refuse)
    monkeypatch.setattr(idea_mcts.engines, "EnginePool", refuse)
    monkeypatch.setattr(idea_mcts.engines, "build_engine", refuse)


@pytest.fixture(scope="module")
def finished(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "out"
    assert evolve(out, tiny_model_dir) == 0
    return out


def test_plan_creates_nothing_and_gives_the_estimate_seeds_and_mode(tiny_model_dir, tmp_path, no_engines):
    out = tmp_path / "parent" / "out"
    before = snapshot(tmp_path)
    plan = plan_evolve(tiny_cfg(tiny_model_dir, out))
    assert not out.exists() and not out.parent.exists()
    assert snapshot(tmp_path) == before
    assert plan.mode == "new" and plan.out == out
    assert len(plan.seeds) == 2 and plan.reference == plan.seeds
    assert plan.fingerprint == plan.cfg.fingerprint()
    assert set(plan.estimate) == {"nodes", "calls", "generated_tokens"} and plan.estimate["nodes"] > 0
    assert plan.engine_keys == ["default"] and plan.task_examples is None


def test_the_constructor_is_the_plan_then_open(tiny_model_dir, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "out")
    plan = plan_evolve(cfg)
    run, opened = EvolveRun(cfg), EvolveRun.from_plan(plan, command="idea-mcts evolve")
    for r in (run, opened):
        assert (r.seeds, r.reference, r.actions, r.scorer_roles, r.engine_keys, r.estimate, r.mode) == \
               (plan.seeds, plan.reference, plan.actions, plan.scorer_roles, plan.engine_keys, plan.estimate, "new")
        assert r.out == plan.out and r.store.out == plan.out and not r.pool._engines
    assert opened.command == "idea-mcts evolve" and opened.plan is plan
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["unknown seed file", "OUT is a file"])
def test_bad_input_raises_the_clis_usage_error(case, tiny_model_dir, tmp_path, capsys, no_engines):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    out, extra = ((tmp_path / "out", [f"data.seeds={tmp_path / 'none.jsonl'}"]) if case == "unknown seed file"
                  else (notes, []))
    with pytest.raises(UsageError) as exc:
        plan_evolve(tiny_cfg(tiny_model_dir, out, *extra))
    assert main(evolve_argv(out, tiny_model_dir, *extra)) == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [f"error: {exc.value}"]
    assert ("seed file not found" if case == "unknown seed file" else "not a directory") in str(exc.value)
    assert notes.read_text() == "keep me\n" and not (tmp_path / "out").exists()


def test_a_finished_runs_plan_says_finished(finished, tiny_model_dir, no_engines):
    before = snapshot(finished)
    assert plan_evolve(tiny_cfg(tiny_model_dir, finished)).mode == "finished"
    assert plan_evolve(tiny_cfg(tiny_model_dir, finished), overwrite=True).mode == "new"
    with pytest.raises(UsageError, match="another config"):
        plan_evolve(tiny_cfg(tiny_model_dir, finished, "search.iterations=3"))
    assert snapshot(finished) == before


def test_a_subclass_fingerprint_decides_the_mode(finished, tiny_model_dir, no_engines):
    """OUT holds a finished run of the plain config: to a budget-capped run of the same config (its fingerprint
    adds the budget) it is another run, never `finished`."""
    cfg = tiny_cfg(tiny_model_dir, finished)
    with pytest.raises(UsageError, match="another config"):
        BudgetedMCTSRun(cfg, 10)
    with pytest.raises(UsageError, match="another config"):
        plan_evolve(cfg, fingerprint=budgeted_fingerprint(cfg, 10))
    plan = plan_evolve(cfg, overwrite=True, fingerprint=budgeted_fingerprint(cfg, 10))
    with pytest.raises(ValueError, match="fingerprint"):  # a plan for another run's results
        EvolveRun.from_plan(plan)
    with pytest.raises(TypeError, match="constructor"):
        BudgetedMCTSRun.from_plan(plan)
