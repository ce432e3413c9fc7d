"""A real 2-seed search on any engine: every role on the one engine, the demo seeds, a small budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from idea_mcts.actions import GENERAL
from idea_mcts.config import RewardConfig, RoleConfig, SearchConfig
from idea_mcts.data import Seed
from idea_mcts.engines.base import Engine
from idea_mcts.roles import RoleClient
from idea_mcts.scoring import Reward
from idea_mcts.search import IdeaMCTS
from idea_mcts.tree import Tree

SEEDS = [Seed("s0", "Give three tips for staying healthy."), Seed("s1", "Explain why the sky is blue.")]


def two_seed_search(engine: Engine, overlap_root: bool = False, **kwargs: Any) -> tuple[IdeaMCTS, list[Tree]]:
    """`kwargs` go to `IdeaMCTS` (e.g. `on_nodes`)."""
    cfg = SearchConfig(iterations=1, expand_width=2, max_depth=1, seed=3, overlap_root=overlap_root)
    roles = {"evolver": RoleConfig(max_new_tokens=32), "responder": RoleConfig(max_new_tokens=32),
             "quality": RoleConfig(max_new_tokens=1, temperature=0.0),
             "complexity": RoleConfig(max_new_tokens=1, temperature=0.0),
             "tagger": RoleConfig(max_new_tokens=24, temperature=0.0)}
    clients = {r: RoleClient(r, engine, c, cfg.seed) for r, c in roles.items()}
    reward = Reward(RewardConfig(), quality=clients["quality"], complexity=clients["complexity"],
                    tagger=clients["tagger"])
    search = IdeaMCTS(cfg, GENERAL, clients["evolver"], clients["responder"], reward, **kwargs)
    return search, search.run(SEEDS)


def check_search(search: IdeaMCTS, trees: list[Tree]) -> None:
    """What any engine must give: evolved children, responses, expected scores in (1, 6), counted failures."""
    assert len(trees) == 2
    nodes = [n for t in trees for n in t]
    evolved = [n for n in nodes if n.depth > 0]
    assert evolved, f"no evolution survived: {search.failures}"
    assert all(n.response for n in nodes)
    judged = [n for n in nodes if "response_refusal" not in n.failures]  # refusals are eliminated, not scored
    assert all(set(n.scores) == {"quality", "complexity", "diversity"} for n in judged)
    scored = [n.scores[k] for n in judged for k in ("quality", "complexity") if n.scores[k] is not None]
    assert scored and all(1.0 <= v <= 6.0 for v in scored)
    missing = sum(n.scores[k] is None for n in judged for k in ("quality", "complexity", "diversity"))
    assert missing == sum(search.reward.failures.values())
    assert all(t.root.visits >= 1 for t in trees)


def until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait (polling) until `cond()` holds; a test failure naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
