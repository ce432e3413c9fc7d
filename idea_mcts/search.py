"""IDEA-MCTS: every tree runs the paper's loop (Figure 2) on its own, all trees at once.

    for each tree, concurrently:
        evaluate the root (with `overlap_root`: while the first Expansion's rewrites are made)
        repeat `iterations` times:
            Selection        -> a node by UCT, down the expansion children to one not yet expanded
            Expansion        -> `expand_width` children of it, each from a distinct sampled action
            Evaluation       -> respond to and score every new node (each child as soon as its own rewrite is
                                back: a short rewrite does not wait for its siblings' longer ones)
            Simulation       -> random actions from a new child until a terminal node (rollout nodes are kept
                                as data but are not part of the search tree: selection never enters them)
            Backpropagation  -> the terminal node's reward to every node on its path

A tree never calls an engine itself: its requests go to the `Dispatcher` (idea_mcts/dispatch.py), which batches
the pending requests of every tree and role onto their engines. No tree waits for another, no role waits for a
role on another engine, and each engine sees large batches (one-call-at-a-time engines at the moment every
tree waits, servers as the requests come). Trees run in a window of `max_live_trees`; a finished tree is handed
to `on_tree` (written out) and, when `keep_trees` is off, dropped from memory.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from idea_mcts.actions import Action
from idea_mcts.config import SearchConfig
from idea_mcts.data import Seed
from idea_mcts.dispatch import Dispatcher
from idea_mcts.filters import Eliminator, ask_validity, gate_judge
from idea_mcts.roles import RoleClient, derive_seed
from idea_mcts.scoring import Origin, Reward
from idea_mcts.tree import Node, Tree

logger = logging.getLogger(__name__)


class BudgetExhausted(Exception):
    """The tree's next requests would exceed `max_calls`."""


@dataclass
class EvolveJob:
    """One evolution to attempt: `parent` rewritten by `action` into a child with id `node_id`."""

    parent: Node
    action: Action
    kind: str
    node_id: str


class IdeaMCTS:
    """The search. `on_nodes` is called with each group of evaluated nodes (durable logging), `on_progress` with
    their number, `on_tree` with each finished tree (its seed's index and the tree)."""

    wait_for_budget = False
    """A tree whose next expansion does not fit `max_calls` waits while other trees may still give budget back,
    instead of stopping at once (a budget-capped arm that should end close to its budget)."""

    def __init__(self, cfg: SearchConfig, actions: Sequence[Action], evolver: RoleClient, responder: RoleClient,
                 reward: Reward, *, max_calls: int | None = None,
                 on_nodes: Callable[[list[Node]], None] | None = None,
                 on_progress: Callable[[int], None] | None = None,
                 on_tree: Callable[[int, Tree], None] | None = None, keep_trees: bool = True) -> None:
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
        self.on_tree = on_tree
        self.keep_trees = keep_trees
        self.failures: Counter = Counter()
        """Evolver/responder outputs that could not be used (evolutions dropped by the filter, empty responses),
        nodes whose every scorer failed (`unscored`), rollouts cut short (`rollout_truncated`)."""
        self.eliminator = Eliminator([a.template_text() for a in self.actions],
                                     drop_answers=cfg.drop_answers, drop_truncated=cfg.drop_truncated)
        """The elimination filter; its `counts` are the dropped evolutions per reason."""
        self.stopped: str | None = None
        """Why the search ended early (`max_calls`), or None."""
        self.calls = 0
        self.discarded = 0
        """Rewrites of a root that its evaluation made terminal (`overlap_root` makes them before it is known)."""
        self.retried = 0
        """Rewrites made by Expansions after their first round (their first rewrites were eliminated)."""
        self.barren = 0
        """Expansions that ended with no scored child after every attempt (the iteration added nothing)."""
        self.seconds = 0.0
        self.dispatcher: Dispatcher | None = None
        self._completed: list[Node] = []

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self, seeds: Sequence[Seed], reference: Sequence[Seed] | None = None) -> list[Tree]:
        """Grow one tree per seed; the finished trees in seed order (none when `keep_trees` is off). The novelty
        term compares with `reference` (default: `seeds`; a shard of a run: every seed of the run)."""
        t0 = time.perf_counter()
        ref = seeds if reference is None else reference
        if self.reward.embeds:  # the seeds' embeddings are search requests too: charged (`counts.requests`)
            try:
                self._charge(len(ref))
                self.reward.refer_to([s.seed_id for s in ref], [s.instruction for s in ref])
            except BudgetExhausted:
                self._budget_exhausted()
                seeds = []  # no tree can start
        runner = asyncio.Runner()
        try:
            trees = runner.run(self._run(seeds))
        except BaseException:
            if self.dispatcher is not None:  # first: no engine call may go on, or start, while the strands end
                self.dispatcher.close()
            _end_tasks(runner.get_loop())
            raise
        finally:
            runner.close()
            if self.dispatcher is not None:
                self.dispatcher.close()
        self.seconds = time.perf_counter() - t0
        if self.stopped:
            logger.warning("stopped early: the next requests would exceed max_calls=%s", self.max_calls)
        return trees

    async def _run(self, seeds: Sequence[Seed]) -> list[Tree]:
        self.dispatcher = d = Dispatcher(on_barrier=self._flush_completed)
        done: dict[int, Tree] = {}
        queue = iter(enumerate(seeds))

        async def worker() -> None:
            """A strand that grows trees one after the other: `max_live_trees` of them share the seeds."""
            try:
                for i, seed in queue:
                    tree = Tree(seed.seed_id, seed.instruction, derive_seed(self.cfg.seed, "tree", seed.seed_id))
                    await self.grow(tree)
                    self.reward.forget(tree.seed_id)
                    if self.on_tree:
                        self.on_tree(i, tree)
                    if self.keep_trees:
                        done[i] = tree
            finally:
                d.end_strand()

        workers = min(max(1, self.cfg.max_live_trees), len(seeds))
        for _ in range(workers):  # all live before any runs: the first barrier sees every tree's requests
            d.start_strand()
        try:
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            d.close()
        self._flush_completed()
        return [done[i] for i in sorted(done)]

    async def grow(self, tree: Tree) -> None:
        """The paper's loop for one tree."""
        try:
            overlap = self.cfg.overlap_root and self.cfg.iterations > 0
            if not overlap:
                await self.evaluate(tree, [tree.root])
            for i in range(self.cfg.iterations):
                leaf = self.select(tree)
                if leaf is None:
                    break
                if overlap and i == 0:
                    children = await self.expand_evaluating_root(tree)
                    if tree.root.terminal:
                        break
                else:
                    children = await self.expand(tree, leaf)  # Expansion, and each child's Evaluation
                starts, done = self.choose_simulation_starts(tree, leaf, children)
                ends = await self.simulate(tree, starts)
                self.backpropagate(tree, done + ends)
        except BudgetExhausted:
            self._budget_exhausted()

    def select(self, tree: Tree) -> Node | None:
        """Selection: the node to expand by UCT (None when the tree has nothing left to expand)."""
        return tree.select(self.cfg.exploration_constant, self.cfg.value)

    async def expand(self, tree: Tree, leaf: Node, after: asyncio.Future[bool] | None = None) -> list[Node]:
        """Expansion and Evaluation: children of the leaf, each from a distinct sampled action. The evolutions are
        charged as one group; then each child is written and evaluated in a strand of its own, so its response
        and scorers go out as soon as its own rewrite is back (on engines that answer requests as they finish,
        a tree's chain is then its slowest child's rewrite + response, not its slowest rewrite + its slowest
        response). When the elimination filter (or the gate, or a refused response) leaves fewer than
        `expand_width` children, further rounds try actions not yet tried in this Expansion (then actions again,
        with other request seeds) until it has them or `expand_attempts` rewrites were made: an iteration is
        spent on an Expansion that grows the tree. The children join the tree in the order they were made. With
        `after` (a dispatcher signal) each child's evaluation waits for it, and no child is evaluated or kept when
        it fires False (`expand_evaluating_root`)."""
        k = min(self.cfg.expand_width, len(self.actions))
        limit = self.cfg.attempts()
        d = self._dispatcher()

        async def child(job: EvolveJob) -> Node | None:
            (node,) = await self._write(tree, [job], attach=False)
            if node is not None and after is not None and not await d.wait_signal(after):
                self.discarded += 1
                self._release(self.calls_per_node(evolved=False))  # its response and scorers are not sent
                return None
            if node is not None:
                await self.evaluate(tree, [node])
            return node

        made: list[Node] = []
        tried: list[Action] = []
        actions = tree.rng.sample(self.actions, k)
        for round_ in itertools.count():
            jobs = [EvolveJob(leaf, a, "expand", tree.next_id()) for a in actions]
            try:
                await self._reserve_evolutions(jobs)
            except BudgetExhausted:
                if not round_:  # nothing made: the tree stops here
                    raise
                self._budget_exhausted()  # keep what the earlier rounds made; the tree's next request stops it
                break
            tried += actions
            if round_:
                self.retried += len(jobs)
            made += [c for c in await d.run_strands([child(j) for j in jobs]) if c is not None]
            usable = sum(c.reward is not None for c in made)
            if usable >= k or len(tried) >= limit or (after is not None and after.done() and not after.result()):
                break
            actions = self._more_actions(tree, tried, min(k - usable, limit - len(tried)))
        for node in made:
            tree.attach(node)
        if not any(c.reward is not None for c in made):
            self.barren += 1
        return made

    def _more_actions(self, tree: Tree, tried: Sequence[Action], n: int) -> list[Action]:
        """`n` actions for an Expansion's next round: distinct ones not tried in it yet, then (when every action
        has been tried) any, each again with another request seed (a new node id)."""
        fresh = [a for a in self.actions if all(a is not t for t in tried)]
        picked = tree.rng.sample(fresh, min(n, len(fresh)))
        return picked + [tree.rng.choice(self.actions) for _ in range(n - len(picked))]

    async def expand_evaluating_root(self, tree: Tree) -> list[Node]:
        """The first Expansion while the root is still being evaluated (`overlap_root`). The root is then the
        tree's only node, so the first Selection picks it whatever its evaluation says, unless the evaluation makes
        it terminal (a reward above `reward_threshold`): then the rewrites already made are discarded (counted in
        `discarded`), as the loop would not have expanded it. The children's evaluations wait for the root's, so
        every score is the one the loop in order gives."""
        d = self._dispatcher()
        evaluated = d.signal()

        async def root() -> BaseException | None:
            ok = False
            try:
                await self.evaluate(tree, [tree.root])
                ok = not tree.root.terminal
            except Exception as exc:  # e.g. BudgetExhausted: raised once the rewrites in flight are done with
                return exc
            finally:
                d.fire(evaluated, ok)
            return None

        async def first() -> list[Node] | BaseException:
            try:
                return await self.expand(tree, tree.root, after=evaluated)
            except Exception as exc:
                return exc

        failed, children = await d.run_strands([root(), first()])
        if failed is not None:
            raise failed
        if isinstance(children, BaseException):
            raise children
        return children

    async def evaluate(self, tree: Tree, nodes: Sequence[Node]) -> None:
        """Evaluation: respond to each node's instruction, then score (instruction, response). An evolved node
        whose response is a short refusal is eliminated (counted as `response_refusal`): reward None, so the
        search treats it as a failed evaluation and the export skips it."""
        if not nodes:
            return
        d = self._dispatcher()
        if tree.root in nodes:
            self._charge(len(nodes) * self.calls_per_node(evolved=False))
        gens = await d.call(self.responder, "generate",
                            [([{"role": "user", "content": n.instruction}], n.node_id) for n in nodes])
        refused = []
        for node, g in zip(nodes, gens, strict=True):
            node.response = g.text.strip()
            if not node.response:
                self.failures["responder"] += 1
            elif node.depth > 0 and self.eliminator.check_response(node.response):
                refused.append(node)  # an evolution the responder cannot serve: eliminated, not scored
        kept = [n for n in nodes if all(n is not r for r in refused)]
        origins = [Origin(tree.seed_id, tuple(a.instruction for a in tree.path(n)[:-1])) for n in kept]
        scored = await self.reward.ascore([n.instruction for n in kept], [n.response or "" for n in kept],
                                          [n.node_id for n in kept], d, origins)
        for node, s in zip(kept, scored, strict=True):
            node.scores, node.failures, node.reward = s.scores, s.failures, s.reward
            if node.reward is None:
                self.failures["unscored"] += 1
        for node in refused:
            node.failures, node.reward = ["response_refusal"], None  # a failed evaluation: never exported
        self._release(len(refused) * len(self.reward.enabled()))  # their scorer requests are not sent
        for node in nodes:
            node.terminal = Tree.is_terminal(node, self.cfg.max_depth, self.cfg.reward_threshold)
        self._completed.extend(nodes)

    def choose_simulation_starts(self, tree: Tree, leaf: Node, children: Sequence[Node]
                                 ) -> tuple[list[Node], list[Node]]:
        """Which new children the simulation starts from (`random`, `best` or `all`), among those whose
        evaluation succeeded. With no such child the expanded node backs up its own reward (second list)."""
        kids = [k for k in children if k.reward is not None]
        if not kids:
            return [], [leaf]
        if self.cfg.simulate_from == "all":
            return kids, []
        if self.cfg.simulate_from == "random":
            return [tree.rng.choice(kids)], []
        return [max(kids, key=lambda k: k.reward or 0.0)], []

    async def simulate(self, tree: Tree, starts: Sequence[Node]) -> list[Node]:
        """Simulation: random actions from each start until a terminal node; a tree's rollouts advance
        together. Rollout nodes are kept in the tree as data. A rewrite the filter drops is tried again with
        another random action (up to `rollout_attempts` rewrites a step); a rollout whose every attempt, or whose
        evaluation, fails ends at its last scored node."""
        ends = list(starts)
        live = [i for i, node in enumerate(ends) if self.cfg.rollout and not node.terminal]
        while live:
            made: dict[int, Node] = {}
            pending = live
            for _ in range(self.cfg.rollout_attempts):
                jobs = [EvolveJob(ends[i], tree.rng.choice(self.actions), "rollout", tree.next_id()) for i in pending]
                out = await self.evolve(tree, jobs)
                made.update((i, c) for i, c in zip(pending, out, strict=True) if c is not None)
                pending = [i for i, c in zip(pending, out, strict=True) if c is None]
                if not pending:
                    break
            await self.evaluate(tree, [made[i] for i in live if i in made])
            still = []
            for i in live:
                child = made.get(i)
                if child is None or child.reward is None:
                    self.failures["rollout_truncated"] += 1
                    continue
                ends[i] = child
                if not child.terminal:
                    still.append(i)
            live = still
        return ends

    def backpropagate(self, tree: Tree, ends: Sequence[Node]) -> None:
        """Backpropagation: each end node's reward to every node on its root path. The path joins the export
        pool when it ends in a terminal node, or always when the simulation is off (then the backed-up paths
        are the only paths there are). A root whose every scorer failed has nothing to back up."""
        for end in ends:
            if end.reward is not None:
                tree.backpropagate(end, end.reward, mark=end.terminal or not self.cfg.rollout)

    # -- the evolver ---------------------------------------------------------------------------------------
    def _charge_evolutions(self, jobs: Sequence[EvolveJob]) -> None:
        """Reserve the budget before the evolutions go out: each evolved node's whole cost (evolution, gate,
        response, scorers), so that the search never starts a node it could not finish. What an eliminated
        evolution does not send is given back (`_release_filtered`, `_release_gated`)."""
        self._charge(len(jobs) * self.calls_per_node(evolved=True))

    def _charge_gate(self, n: int) -> None:
        """The validity gate's `n` requests (reserved with the evolutions here; a subclass may charge them now)."""

    def _charge_task(self, n: int) -> None:
        """The task check's `n` requests (reserved with the evolutions here; a subclass may charge them now)."""

    def _release_filtered(self, n: int) -> None:
        """`n` evolutions the filter dropped: their gate, response and scorer requests are not sent."""
        self._release(n * (self.calls_per_node(evolved=True) - 1))

    def _release_gated(self, n: int) -> None:
        """`n` evolutions the validity gate refused: their response and scorer requests are not sent."""
        self._release(n * self.calls_per_node(evolved=False))

    def _release_off_task(self, n: int) -> None:
        """`n` evolutions the task check dropped: their gate, response and scorer requests are not sent."""
        self._release(n * (self.calls_per_node(evolved=False) + (self.cfg.validity_gate is not None)))

    async def evolve(self, tree: Tree, jobs: Sequence[EvolveJob]) -> list[Node | None]:
        """One request group for the jobs' evolutions. The instruction is extracted from each reply; rewrites
        the elimination filter drops (empty, unchanged, template leaks, refusals, ...) are counted, not kept."""
        if not jobs:
            return []
        await self._reserve_evolutions(jobs)
        return await self._write(tree, jobs)

    async def _reserve_evolutions(self, jobs: Sequence[EvolveJob]) -> None:
        """Charge the jobs' evolutions; with `wait_for_budget`, wait while other trees may still give budget
        back (evolutions the filter drops send less)."""
        while True:
            try:
                self._charge_evolutions(jobs)
                return
            except BudgetExhausted:
                if not self.wait_for_budget or not await self._dispatcher().park():
                    raise

    async def _write(self, tree: Tree, jobs: Sequence[EvolveJob], attach: bool = True) -> list[Node | None]:
        """The charged jobs' evolutions, filtered and gated; the new nodes join the tree unless `attach` is off
        (then the caller attaches them, `Tree.attach`)."""
        prefill = self.cfg.prefill_parent
        gens = await self._dispatcher().call(
            self.evolver, "generate", [(j.action.messages(j.parent.instruction, prefill), j.node_id) for j in jobs])
        texts: list[str | None] = []
        for job, g in zip(jobs, gens, strict=True):
            reply = job.action.reply_prefix(job.parent.instruction, prefill) + g.text
            text, why = self.eliminator.check_reply(reply, job.parent.instruction, g.finish_reason)
            texts.append(None if why is not None else text)
        kept = sum(t is not None for t in texts)
        self._release_filtered(len(texts) - kept)
        if self.cfg.min_root_similarity is not None and kept:
            self._charge_task(kept)
            texts = await self._check_task(tree, texts)
            self._release_off_task(kept - sum(t is not None for t in texts))
            kept = sum(t is not None for t in texts)
        if self.cfg.validity_gate is not None:
            self._charge_gate(kept)
            texts = await self._gate(jobs, texts)
            self._release_gated(kept - sum(t is not None for t in texts))
        made: list[Node | None] = []
        for job, text in zip(jobs, texts, strict=True):
            if text is None:
                self.failures["evolver"] += 1
                made.append(None)
                continue
            node = tree.new_child(job.parent, job.action.name, text, job.kind, job.node_id)
            made.append(tree.attach(node) if attach else node)
        return made

    async def _check_task(self, tree: Tree, texts: list[str | None]) -> list[str | None]:
        """The task check (`min_root_similarity`): the rewrites that passed the filter, embedded with the novelty
        term's embedder, each dropped as `off_task` when its cosine similarity to the tree's root is below the
        threshold (the root's embedding is its seed's in the novelty reference, embedded before the search). Its
        requests are charged with the evolutions (`calls_per_node`)."""
        todo = [i for i, t in enumerate(texts) if t is not None]
        vectors = await self._dispatcher().call(self.reward.clients["embedder"], "embed", [texts[i] for i in todo])
        root = self.reward.seed_vector(tree.seed_id)
        out = list(texts)
        for i, v in zip(todo, vectors, strict=True):
            if float(np.asarray(v, dtype=np.float32) @ root) < self.cfg.min_root_similarity:  # type: ignore[operator]
                self.eliminator.counts["off_task"] += 1
                out[i] = None
        return out

    async def _gate(self, jobs: Sequence[EvolveJob], texts: list[str | None]) -> list[str | None]:
        """The validity gate: one Yes/No request group to the judge for the evolutions that passed the filter."""
        todo = [i for i, t in enumerate(texts) if t is not None]
        answers = await ask_validity(self._dispatcher(), gate_judge(self.reward.clients),
                                     [texts[i] or "" for i in todo], [jobs[i].parent.instruction for i in todo],
                                     self.reward.weights.top_logprobs)
        out = list(texts)
        for i, p in zip(todo, answers, strict=True):
            if p is None or p < self.cfg.validity_gate:  # type: ignore[operator]
                self.eliminator.counts["gate_unparsed" if p is None else "invalid"] += 1
                out[i] = None
        return out

    def calls_per_node(self, evolved: bool) -> int:
        """Requests one node costs: its evolution (and task and validity checks) if any, its response, one per
        scorer."""
        checks = (self.cfg.min_root_similarity is not None) + (self.cfg.validity_gate is not None)
        return int(evolved) * (1 + checks) + 1 + len(self.reward.enabled())

    def _charge(self, n: int) -> None:
        """Count `n` requests before issuing them; refuse them when they would pass `max_calls`."""
        if self.max_calls is not None and self.calls + n > self.max_calls:
            raise BudgetExhausted
        self.calls += n

    def _release(self, n: int) -> None:
        """Give back `n` charged requests that will not be sent: when the search ends, `calls` is the number of
        requests sent to the evolver, the responder and the scorers (run.json `counts.requests`). Trees parked
        for budget (`wait_for_budget`) try again."""
        self.calls -= n
        if n and self.dispatcher is not None:
            self.dispatcher.unpark()

    def _budget_exhausted(self) -> None:
        """A tree's next requests would pass `max_calls`: the run stops early (resumable with a larger one)."""
        self.stopped = "max_calls"

    def _flush_completed(self) -> None:
        """Hand the nodes evaluated since the last barrier to `on_nodes` (the node log) and `on_progress`."""
        nodes, self._completed = self._completed, []
        if nodes and self.on_nodes:
            self.on_nodes(nodes)
        if nodes and self.on_progress:
            self.on_progress(len(nodes))

    def _dispatcher(self) -> Dispatcher:
        assert self.dispatcher is not None, "the search is not running"
        return self.dispatcher


def estimate(cfg: SearchConfig, n_seeds: int, n_scorers: int, max_new_tokens: dict[str, int]) -> dict[str, int]:
    """Upper bounds on nodes, LLM calls (requests) and generated tokens for a run (every Expansion's retries
    included: `expand_attempts` rewrites each, `rollout_attempts` a simulation step; the task check's and validity
    gate's requests)."""
    sims = cfg.expand_width if cfg.simulate_from == "all" else 1
    rollout = cfg.max_depth if cfg.rollout else 0
    per_tree = 1 + cfg.iterations * (cfg.expand_width + sims * rollout)
    nodes = n_seeds * per_tree
    evolutions = n_seeds * cfg.iterations * (cfg.attempts() + sims * rollout * cfg.rollout_attempts)
    checks = (cfg.min_root_similarity is not None) + (cfg.validity_gate is not None)
    calls = evolutions * (1 + checks) + nodes * (1 + n_scorers)
    tokens = (evolutions * max_new_tokens.get("evolver", 0)
              + nodes * (max_new_tokens.get("responder", 0) + max_new_tokens.get("tagger", 0)))
    return {"nodes": nodes, "calls": calls, "generated_tokens": tokens}


def _end_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks an interrupted search left and run them to their end. A Ctrl-C or SIGTERM raised inside
    a strand (`KeyboardInterrupt`) leaves the loop at once, and asyncio's own clean-up re-raises it from the
    tasks it cancels, leaving the rest pending (their `finally` blocks never run, asyncio reports them destroyed):
    here the cancelling goes on until every task has ended, and their outcomes are read."""
    for _ in range(100):
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if not tasks:
            return
        for t in tasks:
            t.cancel()
        try:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        except (KeyboardInterrupt, SystemExit):
            for t in tasks:
                if t.done() and not t.cancelled():
                    t.exception()  # read: the interrupt is the caller's, already on its way
