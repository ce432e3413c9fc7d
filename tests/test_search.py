import pytest

from idea_mcts.actions import GENERAL
from idea_mcts.config import RewardConfig, RoleConfig, SearchConfig
from idea_mcts.data import Seed
from idea_mcts.roles import RoleClient
from idea_mcts.scoring import Reward
from idea_mcts.search import IdeaMCTS, estimate
from tests.scripted import ScriptedEngine

SEEDS = [Seed("a", "Explain rain."), Seed("b", "Name a fruit."), Seed("c", "Write a haiku.")]


def make_search(engine, **search_kw):
    cfg = SearchConfig(**{"iterations": 1, "expand_width": 5, "max_depth": 3, "reward_threshold": 100.0,
                          **search_kw})
    client = lambda role: RoleClient(role, engine, RoleConfig(), run_seed=cfg.seed)  # noqa: E731
    reward = Reward(RewardConfig(), quality=client("quality"), complexity=client("complexity"),
                    tagger=client("tagger"))
    return IdeaMCTS(cfg, GENERAL, client("evolver"), client("responder"), reward)


def test_expansion_width_distinct_actions_and_one_batch_per_wave():
    engine = ScriptedEngine()
    search = make_search(engine)
    trees = search.run(SEEDS)
    for t in trees:
        kids = [t.nodes[k] for k in t.root.children]
        assert len(kids) == 5
        assert len({k.action for k in kids}) == 5  # distinct sampled actions
        assert all(k.kind == "expand" and k.depth == 1 for k in kids)
    # waves: roots evaluated together, then ONE evolve call for all 15 children, one respond call ...
    assert engine.batches[0] == ("respond", 3)
    assert ("evolve", 15) in engine.batches and ("respond", 15) in engine.batches
    assert all(n in (3, 15) for kind, n in engine.batches)  # no request ever sent alone


def test_rollout_reaches_terminal_depth_and_backprop_marks_path():
    search = make_search(ScriptedEngine(), max_depth=3)
    trees = search.run(SEEDS)
    for t in trees:
        rollout = [n for n in t if n.kind == "rollout"]
        terminal = [n for n in t if n.terminal]
        assert len(terminal) == 1 and terminal[0].depth == 4  # depth > max_depth ends the simulation
        assert len(rollout) == 3  # depths 2, 3, 4 from the chosen depth-1 child
        path = t.path(terminal[0])
        assert all(n.visits == 1 and n.on_terminal_path for n in path)
        assert all(n.value() == pytest.approx(terminal[0].reward) for n in path)
        off_path = [n for n in t if n not in path]
        assert all(n.visits == 0 and not n.on_terminal_path for n in off_path)
        # the simulation starts from the best child (highest reward)
        start = path[1]
        assert start.reward == max(t.nodes[k].reward for k in t.root.children)


def test_reward_threshold_makes_node_terminal_without_rollout():
    # complexity = 1 + number of '+1' -> a depth-1 child scores 4 + 2 + 2 tags = 8 > 7.5
    search = make_search(ScriptedEngine(), reward_threshold=7.5)
    trees = search.run(SEEDS)
    for t in trees:
        assert not [n for n in t if n.kind == "rollout"]
        assert all(t.nodes[k].terminal for k in t.root.children)


def test_scores_rewards_and_three_iterations():
    search = make_search(ScriptedEngine(), iterations=3, max_depth=4)
    trees = search.run(SEEDS[:1])
    t = trees[0]
    root = t.root
    assert root.scores == {"quality": 4.0, "complexity": 1.0, "diversity": 2.0}
    assert root.reward == pytest.approx(7.0)
    assert root.visits == 3
    # iteration 2 and 3 select unvisited root children (UCT = inf) and expand them
    expanded = [t.nodes[k] for k in root.children if t.nodes[k].children]
    assert len(expanded) == 3


def test_failed_evolutions_are_counted_not_kept():
    search = make_search(ScriptedEngine(fail_evolve_every=4))
    trees = search.run(SEEDS)
    assert search.failures["evolver"] > 0
    assert all(n.instruction for t in trees for n in t)
    attempts = sum(t.ids_issued - 1 for t in trees)  # every evolution attempt takes an id
    kept = sum(len(t.nodes) - 1 for t in trees)
    assert attempts - kept == search.failures["evolver"]
    assert sum(len(t.root.children) for t in trees) < 15


def test_max_calls_stops_before_a_wave():
    search = make_search(ScriptedEngine(), iterations=3)
    search.max_calls = 40
    search.run(SEEDS)
    assert search.stopped == "max_calls" and search.calls <= 40


def test_estimate_is_an_upper_bound():
    engine = ScriptedEngine()
    search = make_search(engine, iterations=2, max_depth=3)
    trees = search.run(SEEDS)
    est = estimate(search.cfg, len(SEEDS), 3, {"evolver": 1, "responder": 1, "tagger": 1})
    assert sum(len(t.nodes) for t in trees) <= est["nodes"]
    assert search.calls <= est["calls"]
