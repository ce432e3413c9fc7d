"""IDEA-MCTS over every seed at once.

Each iteration follows the paper (Figure 2) for every live tree together:

    Selection        -> a node per tree by UCT, down the expansion children to one not yet expanded
    Expansion        -> `expand_width` children of it, each from a distinct sampled action
    Evaluation       -> respond to and score every new node
    Simulation       -> random actions from a new child until a terminal node (rollout nodes are kept as
                        data but are not part of the search tree: selection never enters them)
    Backpropagation  -> the terminal node's reward to every node on its path

Every step is one batched engine call per role across all trees: one evolve call for the children of every
tree, one respond call, one call per scorer; a simulation step advances every unfinished rollout together.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from idea_mcts.actions import Action, clean_evolution
from idea_mcts.config import SearchConfig
from idea_mcts.data import Seed
from idea_mcts.roles import RoleClient, derive_seed
from idea_mcts.scoring import Reward
from idea_mcts.tree import Node, Tree

logger = logging.getLogger(__name__)


class BudgetExhausted(Exception):
    """The next wave would exceed `max_calls`."""


@dataclass
class EvolveJob:
    """One evolution to attempt: `parent` rewritten by `action` into a child with id `node_id`."""

    tree: Tree
    parent: Node
    action: Action
    kind: str
    node_id: str


class IdeaMCTS:
    """The search. `on_nodes` is called with the nodes completed by each wave (for durable logging)."""

    def __init__(self, cfg: SearchConfig, actions: Sequence[Action], evolver: RoleClient, responder: RoleClient,
                 reward: Reward, *, max_calls: int | None = None,
                 on_nodes: Callable[[list[Node]], None] | None = None,
                 on_progress: Callable[[int], None] | None = None) -> None:
        if len(actions) < 1:
            raise ValueError("the search needs at least one action")
        self.cfg = cfg
        self.actions = list(actions)
        self.evolver = evolver
        self.responder = responder
        self.reward = reward
        self.max_calls = max_calls
        self.on_nodes = on_nodes
        self.on_progress = on_progress
        self.failures: Counter = Counter()
        """Evolver/responder outputs that could not be used (empty or unchanged evolutions, empty responses),
        nodes whose every scorer failed (`unscored`), rollouts cut short (`rollout_truncated`)."""
        self.stopped: str | None = None
        """Why the search ended early (`max_calls`), or None."""
        self.calls = 0
        self.seconds = 0.0

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self, seeds: Sequence[Seed]) -> list[Tree]:
        t0 = time.perf_counter()
        trees = [Tree(s.seed_id, s.instruction, derive_seed(self.cfg.seed, "tree", s.seed_id)) for s in seeds]
        try:
            self._charge(len(trees) * self.calls_per_node(evolved=False))
            self.evaluate([t.root for t in trees])
            for iteration in range(self.cfg.iterations):
                logger.debug("iteration %d", iteration + 1)
                leaves = self.select(trees)
                children = self.expand(leaves)
                self.evaluate([c for kids in children for c in kids])
                starts, done = self.choose_simulation_starts(leaves, children)
                ends = self.simulate(starts)
                self.backpropagate(done + ends)
        except BudgetExhausted:
            self.stopped = "max_calls"
            logger.warning("stopped early: the next wave would exceed max_calls=%s", self.max_calls)
        self.seconds = time.perf_counter() - t0
        return trees

    def select(self, trees: Sequence[Tree]) -> list[tuple[Tree, Node]]:
        """Selection: one node to expand per tree by UCT (trees with nothing left to expand sit out)."""
        picked = [(t, t.select(self.cfg.exploration_constant, self.cfg.value)) for t in trees]
        return [(t, node) for t, node in picked if node is not None]

    def expand(self, leaves: Sequence[tuple[Tree, Node]]) -> list[list[Node]]:
        """Expansion: children of every non-terminal leaf, each from a distinct sampled action, in one call."""
        jobs = []
        for tree, leaf in leaves:
            k = min(self.cfg.expand_width, len(self.actions))
            jobs += [EvolveJob(tree, leaf, a, "expand", tree.next_id()) for a in tree.rng.sample(self.actions, k)]
        made = self.evolve(jobs)
        by_leaf: dict[str, list[Node]] = {leaf.node_id: [] for _, leaf in leaves}
        for job, child in zip(jobs, made, strict=True):
            if child is not None:
                by_leaf[job.parent.node_id].append(child)
        return [by_leaf[leaf.node_id] for _, leaf in leaves]

    def evaluate(self, nodes: Sequence[Node]) -> None:
        """Evaluation: respond to each node's instruction, then score (instruction, response), batched."""
        if not nodes:
            return
        gens = self.responder.generate([[{"role": "user", "content": n.instruction}] for n in nodes],
                                       [n.node_id for n in nodes])
        for node, g in zip(nodes, gens, strict=True):
            node.response = g.text.strip()
            if not node.response:
                self.failures["responder"] += 1
        scored = self.reward.score([n.instruction for n in nodes], [n.response or "" for n in nodes],
                                   [n.node_id for n in nodes])
        for node, s in zip(nodes, scored, strict=True):
            node.scores, node.failures, node.reward = s.scores, s.failures, s.reward
            node.terminal = Tree.is_terminal(node, self.cfg.max_depth, self.cfg.reward_threshold)
            if node.reward is None:
                self.failures["unscored"] += 1
        if self.on_nodes:
            self.on_nodes(list(nodes))
        if self.on_progress:
            self.on_progress(len(nodes))

    def choose_simulation_starts(self, leaves: Sequence[tuple[Tree, Node]], children: Sequence[list[Node]]
                                 ) -> tuple[list[tuple[Tree, Node]], list[tuple[Tree, Node]]]:
        """Which new child each tree simulates from (`random`, `best` or `all`), among the children whose
        evaluation succeeded. Trees with no such child back up the expanded node's own reward (second list)."""
        starts, done = [], []
        for (tree, leaf), made in zip(leaves, children, strict=True):
            kids = [k for k in made if k.reward is not None]
            if not kids:
                done.append((tree, leaf))
            elif self.cfg.simulate_from == "all":
                starts += [(tree, k) for k in kids]
            elif self.cfg.simulate_from == "random":
                starts.append((tree, tree.rng.choice(kids)))
            else:
                starts.append((tree, max(kids, key=lambda k: k.reward or 0.0)))
        return starts, done

    def simulate(self, starts: Sequence[tuple[Tree, Node]]) -> list[tuple[Tree, Node]]:
        """Simulation: random actions from each start until a terminal node; all rollouts advance together.
        Rollout nodes are kept in the tree as data. A rollout whose evolution or evaluation fails ends at its
        last scored node."""
        ends = list(starts)
        live = [i for i, (_, node) in enumerate(ends) if self.cfg.rollout and not node.terminal]
        while live:
            jobs = [EvolveJob(ends[i][0], ends[i][1], ends[i][0].rng.choice(self.actions), "rollout",
                              ends[i][0].next_id()) for i in live]
            made = self.evolve(jobs)
            self.evaluate([c for c in made if c is not None])
            still = []
            for i, child in zip(live, made, strict=True):
                if child is None or child.reward is None:
                    self.failures["rollout_truncated"] += 1
                    continue
                ends[i] = (ends[i][0], child)
                if not child.terminal:
                    still.append(i)
            live = still
        return ends

    def backpropagate(self, ends: Sequence[tuple[Tree, Node]]) -> None:
        """Backpropagation: each end node's reward to every node on its root path. The path joins the export
        pool when it ends in a terminal node, or always when the simulation is off (then the backed-up paths
        are the only paths there are). A root whose every scorer failed has nothing to back up."""
        for tree, end in ends:
            if end.reward is not None:
                tree.backpropagate(end, end.reward, mark=end.terminal or not self.cfg.rollout)

    # -- the evolver ---------------------------------------------------------------------------------------
    def evolve(self, jobs: Sequence[EvolveJob]) -> list[Node | None]:
        """One batched evolver call for every job; unusable rewrites (empty, unchanged) are counted, not kept."""
        if not jobs:
            return []
        self._charge(len(jobs) * self.calls_per_node(evolved=True))
        prompts = [[{"role": "user", "content": j.action.render(j.parent.instruction)}] for j in jobs]
        gens = self.evolver.generate(prompts, [j.node_id for j in jobs])
        made: list[Node | None] = []
        for job, g in zip(jobs, gens, strict=True):
            text = clean_evolution(g.text)
            if not text or " ".join(text.lower().split()) == " ".join(job.parent.instruction.lower().split()):
                self.failures["evolver"] += 1
                made.append(None)
                continue
            made.append(job.tree.add_child(job.parent, job.action.name, text, job.kind, job.node_id))
        return made

    def calls_per_node(self, evolved: bool) -> int:
        """Requests one node costs: its evolution (if any), its response, one per scorer."""
        return int(evolved) + 1 + len(self.reward.enabled())

    def _charge(self, n: int) -> None:
        """Count `n` requests before issuing them; refuse the wave when it would pass `max_calls`."""
        if self.max_calls is not None and self.calls + n > self.max_calls:
            raise BudgetExhausted
        self.calls += n


def estimate(cfg: SearchConfig, n_seeds: int, n_scorers: int, max_new_tokens: dict[str, int]) -> dict[str, int]:
    """Upper bounds on nodes, LLM calls (requests) and generated tokens for a run."""
    sims = cfg.expand_width if cfg.simulate_from == "all" else 1
    rollout = cfg.max_depth if cfg.rollout else 0
    per_tree = 1 + cfg.iterations * (cfg.expand_width + sims * rollout)
    nodes = n_seeds * per_tree
    evolutions = nodes - n_seeds
    calls = evolutions + nodes * (1 + n_scorers)
    tokens = (evolutions * max_new_tokens.get("evolver", 0)
              + nodes * (max_new_tokens.get("responder", 0) + max_new_tokens.get("tagger", 0)))
    return {"nodes": nodes, "calls": calls, "generated_tokens": tokens}
