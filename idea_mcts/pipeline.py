"""`idea-mcts evolve` as a library call: seeds -> trees -> dataset, trees.jsonl and run.json under OUT.

    run = EvolveRun(load_config("configs/demo.yaml"))
    print(run.estimate, run.mode)  # upper bounds on nodes, LLM calls and tokens; new / resume / finished
    report = run.execute()         # writes OUT/dataset, OUT/trees.jsonl, OUT/run.json

The constructor is `plan_evolve` (idea_mcts.evolve_plan: validate, estimate, read OUT's state; no side effects)
then `EvolveRun.from_plan` (the store object and the engine pool). Every input is validated before OUT is
touched, and every engine is loaded before it is: bad input never costs an output. While the search runs,
completed nodes and engine results are logged under OUT (`idea_mcts.store`); an interrupted run re-run with
the same config resumes by replaying them.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter
from functools import partial
from typing import Any

from idea_mcts.actions import Action, meta_prompt, parse_task_methods, task_actions
from idea_mcts.config import EngineConfig, EvolveConfig, to_yaml
from idea_mcts.data import Seed
from idea_mcts.engines import EnginePool, UsageStats, max_in_flight
from idea_mcts.engines.cached import CachedEngine, engine_identity
from idea_mcts.errors import EngineError, UsageError
from idea_mcts.evolve_plan import EvolvePlan, plan_evolve
from idea_mcts.export import Exported, TreeWriter, stream_dataset
from idea_mcts.filters import REASONS
from idea_mcts.judge_check import reward_terms, validate_reward, warn_failures
from idea_mcts.roles import RoleClient
from idea_mcts.run_files import (
    TREES_FILE,
    RunReport,
    iter_tree_records,
    now,
    read_run_file,
    write_run_file,
)
from idea_mcts.scoring import SCORE_NAMES, Reward, build_reward
from idea_mcts.search import IdeaMCTS
from idea_mcts.store import RunStore

logger = logging.getLogger(__name__)

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
"""Errors writing under OUT that are the user's to fix (exit 2); completed work is kept."""


class EvolveRun:
    """One `evolve` run: validated inputs and the estimate up front; `execute` does the work."""

    def __init__(self, cfg: EvolveConfig, command: str = "", overwrite: bool = False,
                 shard: tuple[int, int] | None = None, engines: dict[str, EngineConfig] | None = None) -> None:
        self.cfg = cfg  # first: a subclass's fingerprint() may read it
        self._open(plan_evolve(cfg, overwrite, shard, fingerprint=self.fingerprint()), command, engines)

    @classmethod
    def from_plan(cls, plan: EvolvePlan, command: str = "", engines: dict[str, EngineConfig] | None = None
                  ) -> EvolveRun:
        """The run of a plan (`plan_evolve`): opens the store object and the engine pool (the engines load in
        `execute`). A subclass whose fingerprint needs more than the config is built through its constructor."""
        if cls.fingerprint is not EvolveRun.fingerprint:
            raise TypeError(f"{cls.__name__} adds its own settings to the fingerprint: build it with its constructor")
        run = cls.__new__(cls)
        run.cfg = plan.cfg
        run._open(plan, command, engines)
        return run

    def _open(self, plan: EvolvePlan, command: str, engines: dict[str, EngineConfig] | None) -> None:
        if plan.fingerprint != self.fingerprint():  # the plan's mode was decided for another run's results
            raise ValueError(f"the plan is for fingerprint {plan.fingerprint}, this {type(self).__name__} has "
                             f"{self.fingerprint()}: plan_evolve(cfg, fingerprint=...) with the run's")
        self.plan = plan
        """What was validated and decided before anything was opened."""
        self.command = command
        self.overwrite = plan.overwrite
        """Replace OUT's run (outputs, node log, state) by this one; the request cache is kept."""
        self.out = plan.out
        self.store = RunStore(self.out)
        self.seeds: list[Seed] = plan.seeds
        self.reference = plan.reference
        """Every seed of the run: what the novelty term compares with, in every process of a sharded run."""
        self.actions: list[Action] = plan.actions
        if plan.task_examples is not None:
            self.task_examples = plan.task_examples
        self.scorer_roles = plan.scorer_roles
        self.engine_keys = plan.engine_keys
        self.trust_remote_code = plan.trust_remote_code
        """Models that run code from their own repository (`engine_kwargs.trust_remote_code`)."""
        self.estimate = plan.estimate
        self.mode = plan.mode
        """`new`, `resume` (OUT holds an unfinished run of this config) or `finished` (nothing to do)."""
        self.pool = EnginePool(engines or self.cfg.engines)
        """The engines; `engines` places them for one rank (its GPU, its server), outside the fingerprint."""
        self.engines: dict[str, CachedEngine] = {}
        self.clients: dict[str, RoleClient] = {}
        self.judge_check: dict[str, Any] | None = None
        """The quick judge validation run before the search (None when `reward.check_judges` is off)."""

    def fingerprint(self) -> str:
        """What identifies this run's results in OUT's store (the config's fingerprint; a run with another search
        algorithm over the same config adds its own settings)."""
        return self.cfg.fingerprint()

    def make_search(self, actions: list[Action], reward: Reward, **hooks: Any) -> IdeaMCTS:
        """The search this run executes (IDEA-MCTS; `idea_mcts.baselines` swaps in Evol-Instruct)."""
        return IdeaMCTS(self.cfg.search, actions, self.client("evolver"), self.client("responder"), reward,
                        max_calls=self.cfg.max_calls, on_nodes=self.store.log_nodes, keep_trees=False, **hooks)

    def client(self, role: str) -> RoleClient:
        """The role's client on its engine behind the run's request cache (the store must be open)."""
        if role not in self.clients:
            key = self.cfg.role_engine(role)
            assert key is not None and self.store.cache is not None
            if key not in self.engines:
                cfg = self.cfg.engines[key]
                self.engines[key] = CachedEngine(partial(self.pool.get, key), self.store.cache, engine_identity(cfg),
                                                 max_in_flight(cfg))
            role_cfg = getattr(self.cfg.roles, role)
            self.clients[role] = RoleClient(role, self.engines[key], role_cfg, self.cfg.search.seed)
        return self.clients[role]

    def _task_actions(self) -> list[Action]:
        """MCTS+: the evolver writes task-specific methods from the example instructions."""
        n = self.cfg.search.num_task_actions
        gen = self.client("evolver").generate([[{"role": "user", "content": meta_prompt(self.task_examples, n)}]],
                                              ["meta-prompt"])[0]
        methods = parse_task_methods(gen.text, n)
        if not methods:
            raise EngineError("the evolver's reply to the task meta-prompt held no numbered list of methods")
        if len(methods) < n:
            logger.warning("meta-prompt gave %d of %d task-specific actions", len(methods), n)
        return task_actions(methods)

    def execute(self, progress: bool = True) -> dict[str, Any]:
        """Run (or resume) the search and write the outputs; a finished run returns its report untouched."""
        if self.mode == "finished":
            logger.info("%s already holds this finished run: nothing to do", self.out)
            return read_run_file(self.out)
        started, t0 = now(), time.perf_counter()
        try:
            if self.mode != "resume":  # a resume only appends to OUT: its engines load on the first cache miss
                self.load_engines()
            self.mode = self.store.open(self.fingerprint(), self.overwrite)
            if self.mode == "resume":
                assert self.store.cache is not None
                logger.info("resuming the run in %s: %d cached requests, %d nodes logged; replaying", self.out,
                            len(self.store.cache), len(self.store.logged))
            report = self._search(progress, started, t0)
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            raise UsageError(f"cannot write {exc.filename or self.out}: {exc.strerror}; completed work is kept, "
                             "fix this and re-run the same command to resume") from None
        finally:
            self.store.close()
            self.pool.close()
        logger.info("wrote %d rows from %d nodes to %s", report["counts"]["rows"], report["counts"]["nodes"],
                    self.out)
        return report

    def load_engines(self) -> None:
        """Load every engine the roles use, before OUT is touched: a model that cannot load costs no output
        (with --overwrite, none of the old run's)."""
        for key in self.engine_keys:
            try:
                self.pool.get(key)
            except (UsageError, EngineError):
                raise
            except Exception as exc:  # corrupt weights, unknown backend, ...: the user's to fix
                ecfg = self.cfg.engines[key]
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UsageError(f"cannot load engine {key!r} ({ecfg.backend}: {ecfg.model}): {msg}") from None

    def _search(self, progress: bool, started: str, t0: float) -> dict[str, Any]:
        from tqdm.auto import tqdm

        actions = self.actions + (self._task_actions() if self.cfg.search.task_actions else [])
        reward = build_reward(self.cfg, self.client)
        self.judge_check = (validate_reward(reward, quick=True, gate=self.cfg.search.validity_gate is not None)
                            if self.cfg.reward.check_judges else None)
        if self.judge_check is not None:
            warn_failures(self.judge_check)
        bar = tqdm(total=self.estimate["nodes"], unit="node", disable=not progress, dynamic_ncols=True)

        def tick(n: int) -> None:
            bar.update(n)
            done = sum(c.stats.completion_tokens for c in self.clients.values())
            bar.set_postfix(trees=len(self.seeds), tok_s=f"{done / max(time.perf_counter() - t0, 1e-9):.1f}")

        trees = TreeWriter(self.out, self.cfg.search.value)  # finished trees go to disk and leave memory
        search = self.make_search(actions, reward, on_progress=tick, on_tree=trees.add)
        try:
            search.run(self.seeds, reference=self.reference)
            bar.close()
            exported = stream_dataset(self.out, trees.close(), self.cfg.export)
            trees.commit()
        except BaseException:
            trees.discard()
            raise
        if not exported.rows:
            logger.warning("the export selected 0 rows (export.mode=%s): the dataset is empty; run.json "
                           "`warnings` says why", self.cfg.export.mode)
        report = self.report(trees, exported, search, reward, actions, started, time.perf_counter() - t0)
        write_run_file(self.out, report)
        self.store.finish("finished" if search.stopped is None else "stopped")
        return report

    def report(self, trees: TreeWriter, exported: Exported, search: IdeaMCTS, reward: Reward,
               actions: list[Action], started: str, wall: float) -> dict[str, Any]:
        counts = trees.counts
        total = UsageStats()
        for c in self.clients.values():
            total.add(c.stats)
        failures = Counter(reward.failures) + search.failures
        missing = exported.seeds_without_rows(s.seed_id for s in self.seeds if s.seed_id in trees.seed_ids)
        if missing:
            logger.warning("%d of %d seeds have no row: %s", len(missing), counts.seeds, ", ".join(missing[:10]))
        if search.barren:
            logger.warning("%d Expansions made no child after %d attempts each (run.json counts.barren_expansions)",
                           search.barren, self.cfg.search.attempts())
        return RunReport(
            command=self.command, status="finished" if search.stopped is None else f"stopped early: {search.stopped}",
            resumed=self.mode == "resume", started_at=started, config=self.cfg.to_dict(),
            config_yaml=to_yaml(self.cfg), config_fingerprint=self.fingerprint(),
            actions=[{"name": a.name, "prompt": a.prompt} for a in actions], estimate=self.estimate, trees=counts,
            rows=exported.rows, seeds_without_rows=missing, export_mode=self.cfg.export.mode,
            requests=search.calls, cached_requests=total.cached, discarded_rewrites=search.discarded,
            retried_rewrites=search.retried, barren_expansions=search.barren,
            usage={role: c.stats.as_dict() for role, c in self.clients.items()},
            engines={k: {"backend": e.backend, "model": e.model_id, **e.work.as_dict(), "cached": e.stats.cached}
                     for k, e in self.engines.items()},
            trust_remote_code=self.trust_remote_code,
            parse_failures={k: failures.get(k, 0) for k in
                            (*SCORE_NAMES, "evolver", "responder", "unscored", "rollout_truncated")},
            scoring_method=reward.methods(), judge_check=self.judge_check,
            reward_terms=reward_terms((r for tree in iter_tree_records(self.out / TREES_FILE) for r in tree),
                                      reward.enabled()),
            filtered={r: search.eliminator.counts.get(r, 0) for r in REASONS},
            seed_means=trees.seed_scores.result(), row_means=exported.means.result(),
            wall_seconds=wall, search_seconds=search.seconds, role_requests=total.requests,
            completion_tokens=total.completion_tokens, prompt_tokens=total.prompt_tokens,
        ).as_dict()
