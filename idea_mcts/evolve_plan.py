"""What an `evolve` run will do, decided before anything is opened: every input validated, the estimate, and
the mode (`new` / `resume` / `finished`) read from OUT's state. Reads files only; creates nothing.

    plan = plan_evolve(load_config("configs/demo.yaml"))   # bad input raises UsageError here
    print(plan.estimate, plan.mode)
    report = EvolveRun.from_plan(plan).execute()          # opens the store and the engines (idea_mcts.pipeline)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from idea_mcts.actions import Action, load_actions
from idea_mcts.config import EvolveConfig
from idea_mcts.data import Seed, load_seeds, shard_of
from idea_mcts.errors import UsageError
from idea_mcts.hub import check_reachable
from idea_mcts.models import resolve_model
from idea_mcts.run_files import SHARDS_DIR, shard_worlds
from idea_mcts.scoring import SCORER_ROLES
from idea_mcts.search import estimate
from idea_mcts.store import RunStore, check_layout

logger = logging.getLogger(__name__)


def read_examples(path: str, column: str = "instruction") -> list[str]:
    """Example instructions for MCTS+: a JSONL file (the `instruction`/`prompt` field) or one per line."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"task examples file not found: {p}")
    out = []
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{p}: line {i + 1} is not JSON") from None
            text = rec.get(column) or rec.get("prompt") if isinstance(rec, dict) else None
            if not isinstance(text, str):
                raise UsageError(f"{p}: line {i + 1} has no {column!r} or 'prompt' text")
            out.append(text)
        else:
            out.append(line.strip())
    if not out:
        raise UsageError(f"task examples file {p} is empty")
    return out


def check_output_dir(out: Path) -> None:
    """OUT is a directory or can be made one (its nearest existing ancestor is a writable directory), and
    everything a run writes under it can be written (`idea_mcts.store.check_layout`)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir {out} exists and is not a directory")
    base = out.absolute()
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise UsageError(f"output_dir {out}: {base} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"output_dir {out}: {base} is not writable")
    check_layout(out)


def check_models(cfg: EvolveConfig, keys: Iterable[str]) -> None:
    """The models of engines `keys` can be loaded, as far as can be told without loading them: a local path is
    a model directory, an embedded model is prepared, a Hub name can be reached (or is cached, offline)."""
    for key in keys:
        ecfg = cfg.engines[key]
        for name in (ecfg.model, ecfg.tokenizer) if ecfg.backend != "openai" else ():
            if name and resolve_model(name) == name and not Path(name).expanduser().exists():
                check_reachable(name, "model", f"engines.{key}")  # a Hub name: fail fast when unreachable


def check_no_shards(out: Path) -> None:
    """A one-process run refuses an OUT holding an unfinished multi-process run: it would start over beside the
    shards instead of resuming them (a finished one is left as is: its outputs are the same at any count)."""
    worlds = shard_worlds(out)
    if worlds and (RunStore(out).state() or {}).get("status") != "finished":
        n = max(worlds)
        raise UsageError(f"{out} holds the unfinished run of a {n}-process launch ({out / SHARDS_DIR}); relaunch it "
                         f"with {n} processes (torchrun --nproc_per_node {n} ...) to resume it, or pass --overwrite "
                         "to start over (the shards are removed)")


@dataclass(frozen=True)
class EvolvePlan:
    """One `evolve` run's validated inputs, its estimate and what it does with OUT (`plan_evolve`)."""

    cfg: EvolveConfig
    """The run's config."""
    overwrite: bool
    """Replace OUT's run (outputs, node log, state) by this one; the request cache is kept."""
    shard: tuple[int, int] | None
    """(rank, world size) of one rank's share of a multi-process launch (`idea_mcts.shards`); None for one
    process."""
    fingerprint: str
    """What identifies this run's results in OUT's store: the config's fingerprint, or the one a subclass of
    `EvolveRun` adds its own settings to (`EvolveRun.fingerprint`); the mode is decided with it."""
    seeds: list[Seed]
    """The seeds this process searches (a rank's share when `shard` is set)."""
    reference: list[Seed]
    """Every seed of the run: what the novelty term compares with, in every process of a sharded run."""
    actions: list[Action]
    """The search's actions (`search.actions`), without the task-specific ones the evolver writes at run time."""
    task_examples: list[str] | None
    """MCTS+: the example instructions of `search.task_actions`; None when it is off."""
    scorer_roles: list[str]
    """The scorer roles with an engine, in `SCORER_ROLES` order."""
    engine_keys: list[str]
    """The engines the roles use (sorted keys of `cfg.engines`)."""
    trust_remote_code: list[str]
    """Models that run code from their own repository (`engine_kwargs.trust_remote_code`)."""
    estimate: dict[str, int]
    """Upper bounds on nodes, LLM calls and generated tokens (`idea_mcts.search.estimate`)."""
    mode: str
    """`new`, `resume` (OUT holds an unfinished run of this fingerprint) or `finished` (nothing to do)."""

    @property
    def out(self) -> Path:
        """The run's OUT."""
        return Path(self.cfg.output_dir)


def plan_evolve(cfg: EvolveConfig, overwrite: bool = False, shard: tuple[int, int] | None = None,
                fingerprint: str | None = None) -> EvolvePlan:
    """Validate every input of a run of `cfg` and decide what it does, without side effects: UsageError on bad
    input (OUT, seeds, actions, task examples, models, OUT's state). `fingerprint` is the run's (default: the
    config's); an `EvolveRun` subclass passes its own."""
    fp = cfg.fingerprint() if fingerprint is None else fingerprint
    out = Path(cfg.output_dir)
    store = RunStore(out)  # reads only: `check` and `state`
    if overwrite or store.check(fp) != "finished":
        check_output_dir(out)  # a finished run is left as is, on a read-only filesystem too
    reference = load_seeds(cfg.data)
    seeds = reference
    if shard is not None:  # one rank's share of a multi-process launch (idea_mcts.shards)
        seeds = [s for s in reference if shard_of(s.seed_id, shard[1]) == shard[0]]
    elif not overwrite:
        check_no_shards(out)
    actions = load_actions(cfg.search.actions)
    task_examples = read_examples(cfg.search.task_actions) if cfg.search.task_actions else None
    scorer_roles = [r for r in SCORER_ROLES if cfg.role_engine(r)]
    engine_keys = sorted({k for r in ("evolver", "responder", *scorer_roles) if (k := cfg.role_engine(r)) is not None})
    check_models(cfg, engine_keys)
    trust_remote_code = sorted({cfg.engines[k].model for k in engine_keys
                                if cfg.engines[k].engine_kwargs.get("trust_remote_code")})
    for model in trust_remote_code:
        logger.warning("trust_remote_code is on for %s: it runs Python code shipped with that model", model)
    max_new: dict[str, int] = {r: getattr(cfg.roles, r).max_new_tokens for r in ("evolver", "responder", "tagger")}
    if "tagger" not in scorer_roles:
        max_new["tagger"] = 0
    return EvolvePlan(
        cfg=cfg, overwrite=overwrite, shard=shard, fingerprint=fp, seeds=seeds, reference=reference,
        actions=actions, task_examples=task_examples, scorer_roles=scorer_roles, engine_keys=engine_keys,
        trust_remote_code=trust_remote_code,
        estimate=estimate(cfg.search, len(seeds), len(scorer_roles), max_new),
        mode=store.check(fp, overwrite),
    )
