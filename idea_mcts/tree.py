"""Search trees: one per seed instruction. A node is an instruction with its response, scores and statistics.

UCT(node) = V(node) + C * sqrt(ln N(parent) / N(node)), with N(node) = 0 scoring +inf; V is the mean of the
rewards backed up through the node (or their max). The search tree is made of expansion children: simulation
(rollout) nodes are kept as data — they lie on the root-to-terminal paths the export samples — but selection
never descends into them, so a node whose only children are rollout nodes is still a leaf to be expanded.

Node ids are `<seed_id>/<n>` in the order evolutions are attempted, so a run with the same seed and the same
engine outputs builds the same trees.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from idea_mcts.scoring import SCORE_NAMES


@dataclass
class Node:
    """One instruction in a tree."""

    node_id: str
    seed_id: str
    parent_id: str | None
    depth: int
    action: str | None
    """Name of the action whose evolution produced this node (None for the root)."""
    kind: str
    """`root`, `expand` (child of an expansion) or `rollout` (made by a simulation)."""
    instruction: str
    action_path: list[str] = field(default_factory=list)
    response: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    """Scorers whose output could not be parsed for this node (their score is None)."""
    reward: float | None = None
    visits: int = 0
    value_sum: float = 0.0
    value_max: float | None = None
    children: list[str] = field(default_factory=list)
    terminal: bool = False
    on_terminal_path: bool = False
    """On a backed-up path that the export samples from: a root-to-terminal path (paper), or any backed-up path
    when the simulation is off."""

    def value(self, mode: str = "mean") -> float | None:
        if not self.visits:
            return None
        return self.value_max if mode == "max" else self.value_sum / self.visits

    def to_record(self, value_mode: str = "mean") -> dict[str, Any]:
        """Flat JSON record (trees.jsonl / the `trees` dataset config)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "scores"}  # shallow: asdict deep-
        for name in ("action_path", "failures", "children"):  # copies, the costliest step of logging a node
            d[name] = list(d[name])
        for name in SCORE_NAMES:
            d[name] = self.scores.get(name)
        d["value"] = self.value(value_mode)
        return d


class Tree:
    """A search tree rooted at one seed instruction, with its own seeded random stream."""

    def __init__(self, seed_id: str, instruction: str, rng_seed: int) -> None:
        self.seed_id = seed_id
        self.rng = random.Random(rng_seed)
        self.nodes: dict[str, Node] = {}
        self.ids_issued = 0
        self.root = self._add(Node(node_id=self.next_id(), seed_id=seed_id, parent_id=None, depth=0,
                                   action=None, kind="root", instruction=instruction))

    def _add(self, node: Node) -> Node:
        self.nodes[node.node_id] = node
        return node

    def next_id(self) -> str:
        """A fresh node id; every evolution attempt takes one, so ids are stable even when attempts fail."""
        self.ids_issued += 1
        return f"{self.seed_id}/{self.ids_issued - 1}"

    def add_child(self, parent: Node, action: str, instruction: str, kind: str, node_id: str) -> Node:
        return self.attach(self.new_child(parent, action, instruction, kind, node_id))

    def new_child(self, parent: Node, action: str, instruction: str, kind: str, node_id: str) -> Node:
        """A child of `parent`, not yet in the tree (`attach` adds it)."""
        return Node(node_id=node_id, seed_id=self.seed_id, parent_id=parent.node_id, depth=parent.depth + 1,
                    action=action, kind=kind, instruction=instruction, action_path=[*parent.action_path, action])

    def attach(self, child: Node) -> Node:
        """Add a `new_child` to the tree, after its parent's other children."""
        assert child.parent_id is not None, "the root is not attached"
        self.nodes[child.parent_id].children.append(child.node_id)
        return self._add(child)

    def parent(self, node: Node) -> Node | None:
        return self.nodes[node.parent_id] if node.parent_id else None

    def path(self, node: Node) -> list[Node]:
        """Root ... node."""
        out = [node]
        while (p := self.parent(out[-1])) is not None:
            out.append(p)
        return out[::-1]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    # -- the paper's search primitives ---------------------------------------------------------------
    @staticmethod
    def uct(node: Node, parent: Node, c: float, mode: str = "mean") -> float:
        if node.visits == 0:
            return math.inf
        exploit = node.value(mode) or 0.0
        return exploit + c * math.sqrt(math.log(max(parent.visits, 1)) / node.visits)

    def expansion_children(self, node: Node) -> list[Node]:
        """The node's children in the search tree: those made by expanding it (not its rollout children)."""
        return [self.nodes[k] for k in node.children if self.nodes[k].kind == "expand"]

    def is_open(self, node: Node) -> bool:
        """Whether selection can still reach an expandable node through `node`: a node not yet expanded that is
        neither terminal nor a failed evaluation (every scorer failed), or one with an open expansion child."""
        if node.terminal or (node.reward is None and node is not self.root):
            return False
        kids = self.expansion_children(node)
        return not kids or any(self.is_open(k) for k in kids)

    def select(self, c: float, mode: str = "mean") -> Node | None:
        """Selection: from the root, follow the open expansion child of highest UCT (ties broken at random) to
        a node not yet expanded. None when the tree has nothing left to expand."""
        if not self.is_open(self.root):
            return None
        node = self.root
        while kids := [k for k in self.expansion_children(node) if self.is_open(k)]:
            scores = [self.uct(k, node, c, mode) for k in kids]
            best = max(scores)
            node = self.rng.choice([k for k, s in zip(kids, scores, strict=True) if s == best])
        return node

    @staticmethod
    def is_terminal(node: Node, max_depth: int, reward_threshold: float) -> bool:
        """Terminal when depth > max_depth or reward > reward_threshold (paper: 4 and 10)."""
        return node.depth > max_depth or (node.reward is not None and node.reward > reward_threshold)

    def backpropagate(self, end: Node, reward: float, mark: bool | None = None) -> None:
        """Add `reward` to every node on the root-to-`end` path; `mark` (default: `end` is terminal) puts the
        path in the export pool (`on_terminal_path`: the search marks the paths that end in a terminal node, or
        every backed-up path when the simulation is off)."""
        mark = end.terminal if mark is None else mark
        for node in self.path(end):
            node.visits += 1
            node.value_sum += reward
            node.value_max = reward if node.value_max is None else max(node.value_max, reward)
            node.on_terminal_path = node.on_terminal_path or mark

    # -- (de)serialisation ----------------------------------------------------------------------------
    def records(self, value_mode: str = "mean") -> list[dict[str, Any]]:
        return [n.to_record(value_mode) for n in self.nodes.values()]

    @classmethod
    def from_records(cls, records: list[dict[str, Any]], rng_seed: int = 0) -> Tree:
        """Rebuild a tree from its `to_record` rows (for `show`, `score`, publishing)."""
        root = next(r for r in records if r["parent_id"] is None)
        tree = cls(root["seed_id"], root["instruction"], rng_seed)
        tree.nodes.clear()
        for r in records:
            scores = {k: r.get(k) for k in SCORE_NAMES}
            visits = r.get("visits", 0)
            node = Node(node_id=r["node_id"], seed_id=r["seed_id"], parent_id=r["parent_id"], depth=r["depth"],
                        action=r["action"], kind=r["kind"], instruction=r["instruction"],
                        action_path=list(r.get("action_path", [])), response=r.get("response"), scores=scores,
                        failures=list(r.get("failures", [])), reward=r.get("reward"), visits=visits,
                        value_sum=r.get("value_sum", 0.0), value_max=r.get("value_max"),
                        children=list(r.get("children", [])),
                        terminal=r.get("terminal", False), on_terminal_path=r.get("on_terminal_path", False))
            tree.nodes[node.node_id] = node
        tree.root = tree.nodes[root["node_id"]]
        suffixes = [n.rsplit("/", 1)[-1] for n in tree.nodes]
        tree.ids_issued = 1 + max((int(x) for x in suffixes if x.isdigit()), default=len(tree.nodes) - 1)
        return tree

    def outline(self, value_mode: str = "mean", width: int = 100, max_lines: int | None = None) -> str:
        """The tree as an indented outline (`idea-mcts show`, the dataset card). Each line: marks, `[action]`,
        Q(uality) C(omplexity) D(iversity) R(eward) | V(alue) N (visits) | the instruction's start. Marks: `*`
        on a root-to-terminal path (eligible for the rows), `T` terminal, `~` rollout node."""
        lines: list[str] = []

        def fmt(x: float | None, digits: int = 2) -> str:
            return "–" if x is None else f"{x:.{digits}f}"

        def walk(node: Node, indent: int) -> None:
            if max_lines is not None and len(lines) >= max_lines:
                return
            marks = ("*" if node.on_terminal_path else " ") + ("T" if node.terminal else " ") + (
                "~" if node.kind == "rollout" else " ")
            text = " ".join(node.instruction.split())
            text = text if len(text) <= width else text[: width - 1] + "…"
            s = node.scores
            lines.append(f"{marks} {'  ' * indent}[{node.action or 'seed'}] Q {fmt(s.get('quality'))} "
                         f"C {fmt(s.get('complexity'))} D {fmt(s.get('diversity'), 0)} R {fmt(node.reward)} | "
                         f"V {fmt(node.value(value_mode))} N {node.visits} | {text}")
            for k in node.children:
                walk(self.nodes[k], indent + 1)

        walk(self.root, 0)
        if len(lines) < len(self.nodes):
            lines.append(f"… {len(self.nodes) - len(lines)} more nodes")
        return "\n".join(lines)
