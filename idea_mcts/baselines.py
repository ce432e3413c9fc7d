"""The paper's baselines as arms over the same seeds, at an equal LLM-request budget (arXiv 2410.10392, "Results").

    ARMS = seed | evol-instruct | idea-mcts | idea-mcts+

- `seed`: the seed instructions with the responder's responses: the roots of the idea-mcts arm's trees (the
  same responder, the same per-request seeds), so the arm costs no request of its own (`seed_rows`).
- `evol-instruct`: WizardLM's random evolution (Xu et al. 2023, arXiv 2304.12244) through the same engines,
  request cache, node log, scorers, elimination filter and export as the search (`EvolInstructRun`): each round
  one operator chosen uniformly at random from the five in-depth operators (add constraints, deepening,
  concretizing, increased reasoning steps, complicate input) and the in-breadth one; chains of a fixed number
  of rounds from each seed; an evolution the filter drops, or whose response is a short refusal, is a failed
  evolution and the chain goes on from its parent (WizardLM returns it to the pool). Chains are started again
  from every seed until the request budget is spent. The operator prompts are the project's
  (`idea_mcts.actions.EVOL_INSTRUCT` and the in-breadth `create_new`), written after WizardLM's operator
  descriptions: WizardLM's own prompt texts are not reproduced.
- `idea-mcts`: the search with the general actions; its requests set the budget B.
- `idea-mcts+`: the same with task-specific actions written by the evolver from example instructions of the
  target task (MCTS+). Clean mode: the examples come from a source other than the evaluation sets.

Budget: the requests to the evolver, the responder and every scorer (run.json `usage`, summed over those
roles: `arm_budget`). The evol-instruct arm stops before a request group would pass B, so it ends within one
node's requests below B; the idea-mcts+ arm is cut at B too (`BudgetedMCTSRun`: within one expansion below B).
Tokens are reported beside the requests (those the request cache answered included).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idea_mcts.actions import EVOL_INSTRUCT, GENERAL, Action
from idea_mcts.config import EvolveConfig, SearchConfig
from idea_mcts.errors import UsageError
from idea_mcts.export import Exported, features, record_row
from idea_mcts.pipeline import EvolveRun
from idea_mcts.roles import RoleClient
from idea_mcts.run_files import FinishedRun
from idea_mcts.scoring import SCORER_ROLES, Reward
from idea_mcts.search import BudgetExhausted, EvolveJob, IdeaMCTS
from idea_mcts.stages import fingerprint
from idea_mcts.tree import Node, Tree

logger = logging.getLogger(__name__)

ARMS = ("seed", "evol-instruct", "idea-mcts", "idea-mcts+")
"""Every arm of the comparison, in the order of the paper's table (seed, Evol-Instruct, IDEA-MCTS, MCTS+)."""
BUDGET_ROLES = ("evolver", "responder", *SCORER_ROLES)
"""The roles whose requests make up the budget."""
EVOL_INSTRUCT_OPERATORS = [*EVOL_INSTRUCT, next(a for a in GENERAL if a.name == "create_new")]
"""WizardLM's five in-depth operators and its in-breadth one, in the project's wording."""


@dataclass
class EvolInstructSettings:
    """The Evol-Instruct arm: fixed-length chains of random operators, repeated until the budget is spent."""

    rounds: int = 4
    """Evolution rounds per chain (WizardLM: 4)."""
    max_chains: int | None = None
    """Most chains started from each seed (None: as many as the budget allows; then `budget` must be set)."""
    budget: int | None = None
    """Most requests to the evolver, responder and scorers (the idea-mcts arm's count in a comparison)."""

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise UsageError(f"evol-instruct rounds must be >= 1, got {self.rounds}")
        if self.max_chains is not None and self.max_chains < 1:
            raise UsageError(f"evol-instruct max_chains must be >= 1, got {self.max_chains}")
        if self.budget is not None and self.budget < 1:
            raise UsageError(f"evol-instruct budget must be >= 1, got {self.budget}")
        if self.max_chains is None and self.budget is None:
            raise UsageError("evol-instruct needs a request budget or max_chains (it would never stop)")


class EvolInstructSearch(IdeaMCTS):
    """Random evolution through the search's machinery (dispatcher, filter, reward, node log). Requests are
    counted as issued: `calls` is exactly the number of evolver, responder and scorer requests sent, and a
    request group that would pass `max_calls` is not sent."""

    def __init__(self, cfg: SearchConfig, actions: Sequence[Action], evolver: RoleClient, responder: RoleClient,
                 reward: Reward, settings: EvolInstructSettings, **kw: Any) -> None:
        super().__init__(cfg, actions, evolver, responder, reward, max_calls=settings.budget, **kw)
        self.settings = settings
        self.chains = 0
        """Chains started, over all seeds."""
        self.budget_spent = False
        """The run ended because the next request group would pass the budget: the arm's normal end (not an
        early stop: `stopped` stays None, so the run is finished, not resumable)."""

    async def grow(self, tree: Tree) -> None:
        try:
            await self.evaluate(tree, [tree.root])
            n = 0
            while self.settings.max_chains is None or n < self.settings.max_chains:
                n += 1
                self.chains += 1
                current = tree.root
                for _ in range(self.settings.rounds):
                    job = EvolveJob(current, tree.rng.choice(self.actions), "rollout", tree.next_id())
                    (child,) = await self.evolve(tree, [job])
                    if child is None:
                        continue  # a failed evolution: the chain goes on from its parent
                    await self.evaluate(tree, [child])
                    if child.reward is not None:
                        current = child
        except BudgetExhausted:
            self._budget_exhausted()

    def _budget_exhausted(self) -> None:
        self.budget_spent = True

    def _charge_evolutions(self, jobs: Sequence[EvolveJob]) -> None:
        """The evolutions only (one request each): responses and scorers are charged when they are sent."""
        self._charge(len(jobs))

    def _charge_gate(self, n: int) -> None:
        """The validity gate: one request per evolution the filter kept."""
        if n:
            self._charge(n)

    def _charge_task(self, n: int) -> None:
        """The task check: one request per evolution the filter kept."""
        if n:
            self._charge(n)

    def _release_off_task(self, n: int) -> None:
        """Nothing to give back: a node's later requests are charged when they are sent."""

    def _release_filtered(self, n: int) -> None:
        """Nothing to give back: a node's later requests are charged when they are sent."""

    def _release_gated(self, n: int) -> None:
        """Nothing to give back: a node's later requests are charged when they are sent."""

    async def evaluate(self, tree: Tree, nodes: Sequence[Node]) -> None:
        """Respond and score; evolved nodes are charged here (the root's charge is the search's own; the search
        gives back the scorer requests of a node eliminated for a refused response)."""
        if not nodes:
            return
        evolved = [n for n in nodes if n.depth > 0]
        if evolved:
            self._charge(len(evolved) * self.calls_per_node(evolved=False))
        await super().evaluate(tree, nodes)


class EvolInstructRun(EvolveRun):
    """An `EvolveRun` whose search is `EvolInstructSearch` over WizardLM's operators: the same engines,
    request cache, node log, resume, export and run.json. Rows: every evolved node that was scored
    (`export.mode=all` unless the config says otherwise)."""

    def __init__(self, cfg: EvolveConfig, settings: EvolInstructSettings, command: str = "",
                 overwrite: bool = False) -> None:
        self.settings = settings
        if cfg.search.task_actions:
            raise UsageError("the evol-instruct arm takes no task_actions (its operators are WizardLM's)")
        if cfg.search.validity_gate is not None:
            logger.info("evol-instruct: the validity gate is on, as in the search")
        super().__init__(cfg, command=command, overwrite=overwrite)
        self.actions = list(EVOL_INSTRUCT_OPERATORS)
        n_scorers = len(self.scorer_roles)
        chains = settings.max_chains or 0
        per_seed = chains * settings.rounds
        max_new = {r: getattr(cfg.roles, r).max_new_tokens for r in ("evolver", "responder", "tagger")}
        tag = max_new["tagger"] if "tagger" in self.scorer_roles else 0
        nodes = len(self.seeds) * (1 + per_seed)
        calls = len(self.seeds) * per_seed + nodes * (1 + n_scorers)
        if settings.budget is not None:
            calls = min(calls, settings.budget) if chains else settings.budget
        self.estimate = {"nodes": nodes if chains else calls, "calls": calls,
                         "generated_tokens": len(self.seeds) * per_seed * max_new["evolver"]
                         + nodes * (max_new["responder"] + tag)}

    def fingerprint(self) -> str:
        return evol_fingerprint(self.cfg, self.settings)

    def make_search(self, actions: list[Action], reward: Reward, **hooks: Any) -> IdeaMCTS:
        return EvolInstructSearch(self.cfg.search, actions, self.client("evolver"), self.client("responder"),
                                  reward, self.settings, on_nodes=self.store.log_nodes, keep_trees=False, **hooks)

    def report(self, trees: Any, exported: Exported, search: IdeaMCTS, reward: Reward,
               actions: list[Action], started: str, wall: float) -> dict[str, Any]:
        out = super().report(trees, exported, search, reward, actions, started, wall)
        out["baseline"] = {"arm": "evol-instruct", "rounds": self.settings.rounds,
                           "max_chains": self.settings.max_chains, "budget": self.settings.budget,
                           "chains_started": getattr(search, "chains", None),
                           "budget_spent": getattr(search, "budget_spent", None),
                           "operators": [a.name for a in actions],
                           "prompts": "the project's operator prompts (idea_mcts.actions.EVOL_INSTRUCT + create_new), "
                                      "written after WizardLM's operator descriptions; not WizardLM's texts"}
        return out


class BudgetedMCTS(IdeaMCTS):
    """IDEA-MCTS cut at an arm's request budget: reaching it is the arm's normal end, not an early stop."""

    budget_spent = False
    """The run ended because a tree's next requests would pass the budget."""

    wait_for_budget = True

    def _budget_exhausted(self) -> None:
        self.budget_spent = True


class BudgetedMCTSRun(EvolveRun):
    """The idea-mcts+ arm: the search with its task-specific actions, cut at the idea-mcts arm's request budget
    B. The meta-prompt that writes the task actions is paid from B (it is an evolver request), the search gets
    the rest: the arm sends at most B requests, and ends within one request group (an expansion's children)
    below B unless its search finishes first."""

    def __init__(self, cfg: EvolveConfig, budget: int, command: str = "", overwrite: bool = False) -> None:
        if budget < 1:
            raise UsageError(f"the arm's budget must be >= 1 request, got {budget}")
        self.budget = budget
        super().__init__(cfg, command=command, overwrite=overwrite)

    def fingerprint(self) -> str:
        return budgeted_fingerprint(self.cfg, self.budget)

    def make_search(self, actions: list[Action], reward: Reward, **hooks: Any) -> IdeaMCTS:
        before = sum(c.stats.requests for role, c in self.clients.items() if role in BUDGET_ROLES)
        return BudgetedMCTS(self.cfg.search, actions, self.client("evolver"), self.client("responder"), reward,
                            max_calls=self.budget - before, on_nodes=self.store.log_nodes, keep_trees=False,
                            **hooks)

    def report(self, trees: Any, exported: Exported, search: IdeaMCTS, reward: Reward,
               actions: list[Action], started: str, wall: float) -> dict[str, Any]:
        out = super().report(trees, exported, search, reward, actions, started, wall)
        out["baseline"] = {"arm": "idea-mcts+", "budget": self.budget,
                           "budget_spent": getattr(search, "budget_spent", None),
                           "search_budget": search.max_calls}
        return out


def budgeted_fingerprint(cfg: EvolveConfig, budget: int) -> str:
    """What identifies a budget-capped search's results: the config and the budget."""
    return fingerprint(cfg.fingerprint(), "budgeted", budget)


def evol_fingerprint(cfg: EvolveConfig, settings: EvolInstructSettings) -> str:
    """What identifies an Evol-Instruct run's results: the config, the arm's settings and its operators."""
    return fingerprint(cfg.fingerprint(), "evol-instruct", settings,
                       [(a.name, a.prompt, a.examples) for a in EVOL_INSTRUCT_OPERATORS])


def arm_budget(run: dict[str, Any]) -> dict[str, int]:
    """An evolve run's cost from its run.json: requests and tokens of the evolver, responder and scorers (the
    tokens of requests its request cache answered included, as counted when they were sent)."""
    usage = run.get("usage") or {}
    roles = [r for r in BUDGET_ROLES if r in usage]
    return {"requests": sum(int(usage[r]["requests"]) for r in roles),
            "prompt_tokens": sum(int(usage[r]["prompt_tokens"]) + int(usage[r].get("cached_prompt_tokens", 0))
                                 for r in roles),
            "completion_tokens": sum(int(usage[r]["completion_tokens"])
                                     + int(usage[r].get("cached_completion_tokens", 0)) for r in roles),
            **{f"requests_{r}": int(usage[r]["requests"]) for r in roles}}


def seed_rows(out: Path) -> Any:
    """The `seed` arm: the scored roots of an evolve run's trees (seeds with the responder's responses), as a
    dataset with the export's columns."""
    from datasets import Dataset

    rows = [record_row(r) for r in FinishedRun(out).nodes()
            if r.get("depth") == 0 and r.get("reward") is not None and r.get("response")]
    feats = features()
    return Dataset.from_dict({k: [r[k] for r in rows] for k in feats}, features=feats)


def sample_rows(rows: Any, n: int, seed: int = 0) -> Any:
    """`n` rows drawn at random (seeded) without replacement, in their original order."""
    if n > len(rows):
        raise ValueError(f"cannot sample {n} rows from {len(rows)}")
    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    return rows.select(picked)
