import re

import pytest

from idea_mcts.actions import GENERAL
from idea_mcts.config import RewardConfig, RoleConfig, SearchConfig
from idea_mcts.data import Seed
from idea_mcts.roles import RoleClient
from idea_mcts.scoring import Reward
from idea_mcts.search import IdeaMCTS, estimate
from tests.scripted import RewritesOf, ScriptedEmbedder, ScriptedEngine

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
    search = make_search(ScriptedEngine(fail_evolve_every=4), expand_attempts=5)  # one round: no retries
    trees = search.run(SEEDS)
    assert search.failures["evolver"] > 0
    assert all(n.instruction for t in trees for n in t)
    attempts = sum(t.ids_issued - 1 for t in trees)  # every evolution attempt takes an id
    kept = sum(len(t.nodes) - 1 for t in trees)
    assert attempts - kept == search.failures["evolver"]
    assert sum(len(t.root.children) for t in trees) < 15
    assert search.retried == 0


class FirstRewritesFail(ScriptedEngine):
    """The first `n` evolutions of each instruction are empty (eliminated); later ones succeed."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.seen: dict[str, int] = {}

    def _generate(self, requests):
        out = super()._generate(requests)
        for i, r in enumerate(requests):
            text = r.prompt if isinstance(r.prompt, str) else "\n".join(m["content"] for m in r.prompt)
            if "Reply with the new instruction only" in text:
                parent = text.rsplit("\n\nInstruction: ", 1)[1]
                self.seen[parent] = self.seen.get(parent, 0) + 1
                if self.seen[parent] <= self.n:
                    out[i].text = ""
        return out


def test_an_expansion_whose_rewrites_are_eliminated_tries_other_actions():
    """The first 7 rewrites of every instruction are eliminated: each Expansion tries further distinct actions in
    rounds (5, then 5, then 2) and still grows `expand_width` children per iteration."""
    engine = FirstRewritesFail(7)
    search = make_search(engine, iterations=2, expand_width=5, max_depth=1, rollout=False, expand_attempts=15)
    trees = search.run(SEEDS)
    for t in trees:
        kids = [t.nodes[k] for k in t.root.children if t.nodes[k].kind == "expand"]
        assert len(kids) == 5 and all(k.reward is not None for k in kids)
        assert len({k.action for k in kids}) == 5
        assert t.ids_issued - 1 == 2 * (7 + 5)  # two Expansions: 7 eliminated and 5 made each
        grand = [n for n in t if n.kind == "expand" and n.depth == 2]
        assert len(grand) == 5  # iteration 2 expanded a child into 5 more
    assert search.failures["evolver"] == 3 * 2 * 7
    assert search.retried == 3 * 2 * 7  # rounds 2 and 3 of every Expansion: 5 + 2 rewrites
    assert search.barren == 0


def test_retries_use_distinct_actions_before_repeating_them():
    """With every action tried and still too few children, actions are tried again (with other node ids, so
    other request seeds); the retries stop at `expand_attempts`."""
    engine = FirstRewritesFail(14)  # 12 actions: all are tried once, then 2 again fail too
    search = make_search(engine, iterations=1, expand_width=5, max_depth=1, rollout=False, expand_attempts=30)
    (t,) = search.run(SEEDS[:1])
    kids = [t.nodes[k] for k in t.root.children]
    assert len(kids) == 5 and t.ids_issued - 1 == 14 + 5
    assert search.retried == 14


def test_a_rollout_step_whose_rewrite_is_eliminated_tries_again():
    """Every instruction's first 2 rewrites are eliminated: each simulation step tries another random action (up to
    `rollout_attempts`), so the rollout still reaches the terminal depth; with 1 attempt it ends at once."""
    search = make_search(FirstRewritesFail(2), iterations=1, expand_width=2, max_depth=3, expand_attempts=6,
                         rollout_attempts=3)
    (t,) = search.run(SEEDS[:1])
    assert max(n.depth for n in t) == 4 and any(n.terminal and n.kind == "rollout" for n in t)
    assert search.failures["rollout_truncated"] == 0
    short = make_search(FirstRewritesFail(2), iterations=1, expand_width=2, max_depth=3, expand_attempts=6,
                        rollout_attempts=1)
    (t,) = short.run(SEEDS[:1])
    assert max(n.depth for n in t) == 1 and short.failures["rollout_truncated"] == 1


def test_an_expansion_that_never_yields_a_child_is_counted_and_the_run_ends():
    search = make_search(FirstRewritesFail(10_000), iterations=3, expand_width=2, max_depth=1, expand_attempts=6)
    trees = search.run(SEEDS)
    assert all(len(t.nodes) == 1 for t in trees)
    assert search.barren == 3 * 3  # every iteration of every tree
    assert search.failures["evolver"] == 3 * 3 * 6  # each Expansion made its 6 attempts
    assert search.stopped is None


def test_expand_attempts_is_at_least_the_width():
    from idea_mcts.config import ConfigValueError

    with pytest.raises(ConfigValueError, match="expand_attempts"):
        SearchConfig(expand_width=5, expand_attempts=4)
    assert SearchConfig(expand_width=5).attempts() == 15


def test_max_calls_stops_before_a_wave():
    search = make_search(ScriptedEngine(), iterations=3)
    search.max_calls = 40
    search.run(SEEDS)
    assert search.stopped == "max_calls" and search.calls <= 40


def test_overlap_root_sends_the_first_rewrites_with_the_roots_responses_and_grows_the_same_trees():
    ref = make_search(ScriptedEngine(), iterations=2, max_depth=2)
    want = [t.records() for t in ref.run(SEEDS)]
    engine = ScriptedEngine()
    search = make_search(engine, iterations=2, max_depth=2, overlap_root=True)
    trees = search.run(SEEDS)
    # the first barrier holds every tree's root response and first rewrites: one engine job, before any score
    assert sorted(engine.batches[:2]) == [("evolve", 15), ("respond", 3)]
    assert [t.records() for t in trees] == want
    assert (search.calls, search.discarded) == (ref.calls, 0)


def test_overlap_root_discards_the_rewrites_of_a_root_its_evaluation_makes_terminal():
    # a root scores 4 + 1 + 2 tags = 7 > 6.5: terminal, so the loop never expands it
    ref = make_search(ScriptedEngine(), reward_threshold=6.5)
    want = [t.records() for t in ref.run(SEEDS)]
    engine = ScriptedEngine()
    search = make_search(engine, reward_threshold=6.5, overlap_root=True)
    trees = search.run(SEEDS)
    assert [t.records() for t in trees] == want and all(len(t.nodes) == 1 for t in trees)
    assert search.discarded == 15
    # the rewrites were sent and are counted; their responses and scorers were not sent
    assert search.calls == ref.calls + 15 == sum(n for _, n in engine.batches)
    assert sum(n for kind, n in engine.batches if kind == "respond") == 3


def test_overlap_root_ends_a_tree_whose_first_rewrites_do_not_fit_max_calls():
    # the roots cost 3 x 4 requests; no tree's 5 rewrites (5 x 5 requests reserved) fit in what is left
    ref = make_search(ScriptedEngine())
    ref.max_calls = 20
    want = [t.records() for t in ref.run(SEEDS)]
    search = make_search(ScriptedEngine(), overlap_root=True)
    search.max_calls = 20
    trees = search.run(SEEDS)
    assert search.stopped == ref.stopped == "max_calls"
    assert [t.records() for t in trees] == want and all(len(t.nodes) == 1 and t.root.reward for t in trees)
    assert search.calls == ref.calls == 12


def test_estimate_is_an_upper_bound():
    engine = ScriptedEngine()
    search = make_search(engine, iterations=2, max_depth=3)
    trees = search.run(SEEDS)
    est = estimate(search.cfg, len(SEEDS), 3, {"evolver": 1, "responder": 1, "tagger": 1})
    assert sum(len(t.nodes) for t in trees) <= est["nodes"]
    assert search.calls <= est["calls"]


class RecordingSearch(IdeaMCTS):
    """Records every selection: (seed id, selected node)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.selected: list[tuple] = []

    def select(self, tree):
        node = super().select(tree)
        self.selected.append((tree.seed_id, node))
        return node


def make_recording(engine, **search_kw):
    base = make_search(engine, **search_kw)
    return RecordingSearch(base.cfg, base.actions, base.evolver, base.responder, base.reward)


def test_paper_settings_every_iteration_expands_a_non_terminal_node():
    # 10 iterations at width 5, depth > 4 terminal: rollout chains must not trap selection
    search = make_recording(ScriptedEngine(), iterations=10, max_depth=4)
    trees = search.run(SEEDS[:2])
    for t in trees:
        picks = [node for seed_id, node in search.selected if seed_id == t.seed_id]
        assert len(picks) == 10  # the tree selected something every iteration
        for node in picks:
            assert node is not None and not node.terminal and node.kind != "rollout"
            assert len(t.expansion_children(node)) == 5  # the iteration added 5 nodes under it
        expanded = [n for n in t if t.expansion_children(n)]
        assert len(expanded) == 10  # ten different nodes expanded, none twice


def test_simulate_from_random_best_and_all():
    seeds = [Seed(f"s{i}", f"Task number {i}.") for i in range(12)]

    def start_indices(mode):
        trees = make_search(ScriptedEngine(), simulate_from=mode, max_depth=2).run(seeds)
        out = []
        for t in trees:
            kids = t.expansion_children(t.root)
            starts = [i for i, k in enumerate(kids) if any(t.nodes[c].kind == "rollout" for c in k.children)]
            out.append(starts)
        return out

    # equal rewards: `best` takes the first child, `random` a child drawn from the tree's own stream
    assert all(s == [0] for s in start_indices("best"))
    random_starts = start_indices("random")
    assert all(len(s) == 1 for s in random_starts) and len({s[0] for s in random_starts}) > 1
    assert start_indices("random") == random_starts  # the same seed gives the same draws
    assert all(s == [0, 1, 2, 3, 4] for s in start_indices("all"))  # one rollout per child


def test_rollout_off_backs_up_children_and_paper_export_has_rows():
    from idea_mcts.config import ExportConfig
    from idea_mcts.export import select_rows

    search = make_search(ScriptedEngine(), rollout=False, iterations=2)
    trees = search.run(SEEDS)
    assert not [n for t in trees for n in t if n.kind == "rollout"]
    rows = select_rows(trees, ExportConfig(mode="paper"))
    # the paths backed up: iteration 1 backs up a root child; iteration 2 expands an unvisited sibling (UCT
    # +inf) and backs up one of its depth-2 children through it -> 3 non-root nodes per tree
    assert len(rows) == 3 * len(SEEDS)
    assert all(n.on_terminal_path and n.visits >= 1 for n in rows)
    assert {n.depth for n in rows} == {1, 2}


def test_value_max_is_used_by_selection(monkeypatch):
    from idea_mcts.tree import Tree

    modes = []
    real = Tree.uct

    def spy(node, parent, c, mode="mean"):
        modes.append(mode)
        return real(node, parent, c, mode)

    monkeypatch.setattr(Tree, "uct", staticmethod(spy))
    trees = make_search(ScriptedEngine(), value="max", iterations=6, max_depth=2).run(SEEDS[:1])
    assert modes and set(modes) == {"max"}
    root = trees[0].root
    ends = [n for n in trees[0] if n.terminal and n.visits]
    assert root.value("max") == max(n.reward for n in ends)


def _depth2(text: str) -> bool:
    """The scripted evolver appends ' +1' per depth: exactly two of them follow the seed."""
    return re.search(r"[^1] \+1 \+1(?! \+1)", text) is not None


class UnscorableDepth2(ScriptedEngine):
    """Every scorer fails on depth-2 instructions: no digit, no tag list."""

    def _generate(self, requests):
        out = super()._generate(requests)
        for r, g in zip(requests, out, strict=True):
            text = r.prompt if isinstance(r.prompt, str) else r.prompt[0]["content"]
            if "tags of user intentions" in text and _depth2(text):
                g.text = "no tags here"
        return out

    def _next_token_logprobs(self, prompts, candidates, top_k):
        out = super()._next_token_logprobs(prompts, candidates, top_k)
        for p, r in zip(prompts, out, strict=True):
            if _depth2([m for m in p if m["role"] == "user"][-1]["content"]):  # the item, after any examples
                r.logprobs = {}
        return out


def test_node_whose_every_scorer_failed_is_a_failed_evaluation():
    from idea_mcts.config import ExportConfig
    from idea_mcts.export import select_rows

    search = make_search(UnscorableDepth2(), iterations=4, max_depth=4)
    trees = search.run(SEEDS)
    unscored = [n for t in trees for n in t if n.depth == 2]
    assert unscored and all(n.reward is None for n in unscored)
    assert search.failures["unscored"] == len(unscored) == search.reward.unscored
    rows = select_rows(trees, ExportConfig(mode="all"))
    assert rows and not [n for n in rows if n.reward is None]
    for t in trees:
        assert not [n for n in t if n.reward is None and n.children]  # never expanded, never simulated from
    assert search.failures["rollout_truncated"] > 0  # rollouts end at their last scored node


class DriftingEvolver(RewritesOf):
    """Rewrites of "Name a fruit." drift to an unrelated task; embeddings are one-hot by topic, so the drifted
    rewrite has similarity 0 to its root and the others 1."""

    rewrite = "Solve a logic puzzle about knights and knaves."

    embedded = 0

    def _embed(self, texts):
        self.embedded += len(texts)
        return [[0.0, 1.0] if "puzzle" in t else [1.0, 0.0] for t in texts]


def test_a_rewrite_that_leaves_its_seeds_task_is_dropped_and_counted():
    engine = DriftingEvolver()
    cfg = SearchConfig(iterations=1, expand_width=2, max_depth=1, rollout=False, reward_threshold=100.0,
                       min_root_similarity=0.5, expand_attempts=4)
    client = lambda role: RoleClient(role, engine, RoleConfig(), run_seed=cfg.seed)  # noqa: E731
    reward = Reward(RewardConfig(novelty=1.0), quality=client("quality"), complexity=client("complexity"),
                    embedder=client("embedder"))
    search = IdeaMCTS(cfg, GENERAL, client("evolver"), client("responder"), reward)
    trees = search.run(SEEDS)
    kids = {t.seed_id: [n.instruction for n in t if n.depth > 0] for t in trees}
    assert kids["b"] == [] and len(kids["a"]) == len(kids["c"]) == 2
    assert search.eliminator.counts["off_task"] == 4  # every attempt of b's Expansion
    # every request sent is counted: per tree its seed's embedding (the novelty reference, also the task check's
    # root) and its root's response and 3 scorers; per rewrite its evolution and embedding (a: 2, b: 4, c: 2); per
    # kept child its response and 3 scorers
    assert search.calls == 3 + 3 * (1 + 3) + (2 + 4 + 2) * 2 + 4 * (1 + 3)
    assert engine.embedded == 3 + 8 + (3 + 4)  # the seeds once, every rewrite, and novelty of every scored node


def test_novelty_compares_with_the_seeds_and_the_lineage_whatever_the_scheduling():
    """Issue 36: a node's novelty is 1 - its highest cosine similarity to every seed of the run (a root: to the
    other seeds) and to the instructions it was evolved from, computed here on its own; so it is the same with
    all trees at once or one after the other, and in a shard that grows some of the seeds (with every seed as the
    reference). Before, it compared with whatever had been scored before it, in the order of scoring."""

    def run(seeds: list[Seed], reference: list[Seed] | None = None, **search_kw: int) -> dict[str, object]:
        engine, embedder = ScriptedEngine(), ScriptedEmbedder()
        cfg = SearchConfig(iterations=2, expand_width=2, max_depth=2, reward_threshold=100.0, seed=5, **search_kw)
        clients = {r: RoleClient(r, embedder if r == "embedder" else engine, RoleConfig(), run_seed=cfg.seed)
                   for r in ("evolver", "responder", "quality", "complexity", "embedder")}
        reward = Reward(RewardConfig(novelty=1.0), quality=clients["quality"], complexity=clients["complexity"],
                        embedder=clients["embedder"])
        search = IdeaMCTS(cfg, GENERAL, clients["evolver"], clients["responder"], reward)
        trees = search.run(seeds, reference)
        nodes = {n.node_id: (n, t) for t in trees for n in t}
        # one embedding per seed of the reference and per scored node, each charged: the search's count is what
        # the engines were sent; no tree's embeddings are kept once it has finished
        assert sum(embedder.calls) == len(reference or seeds) + sum(n.scores != {} for n, _ in nodes.values())
        assert search.calls == sum(c.stats.requests for c in clients.values()) and reward.kept == {}
        return nodes

    together = run(SEEDS)
    one_by_one = run(SEEDS, max_live_trees=1)
    shard = run(SEEDS[1:], reference=SEEDS)
    novelty = {k: n.scores["novelty"] for k, (n, _) in together.items()}
    assert len(novelty) > 3 * 3 and len({round(v, 6) for v in novelty.values()}) > 2  # depth 2: lineage counts
    assert {k: n.scores["novelty"] for k, (n, _) in one_by_one.items()} == novelty
    assert {k: n.scores["novelty"] for k, (n, _) in shard.items()} == {k: v for k, v in novelty.items()
                                                                        if not k.startswith("a/")}
    vec = ScriptedEmbedder().vector
    for key, (node, tree) in together.items():
        refs = [s.instruction for s in SEEDS if node.depth > 0 or s.seed_id != node.seed_id]
        refs += [a.instruction for a in tree.path(node)[:-1]]
        sims = [sum(x * y for x, y in zip(vec(node.instruction), vec(r), strict=True)) for r in refs]
        assert novelty[key] == pytest.approx(1.0 - max([0.0, *sims]), abs=1e-6), key

