"""`evolve` under a multi-process launch (`torchrun --nproc_per_node N`, `accelerate launch --num_processes N`):
the seeds split by a stable hash of their id, one ordinary run per rank, one merged result.

    OUT/shards/rank-00-of-02/   rank 0's run dir: state, node log, request cache, its trees and dataset
    OUT/shards/rank-01-of-02/   rank 1's (each exactly like a one-process run's OUT, resumable on its own)
    OUT/shards/rank-01.error    the error that stopped rank 1 (removed by the next launch)
    OUT/dataset, trees.jsonl, run.json, state.json   the merge, written by rank 0

Each rank searches the seeds with `shard_of(seed_id, N) == rank` on its own engines (its GPU, or its server of a
`base_urls` pool), so no tree depends on another rank's. When every rank is done (they exchange statuses through
torch.distributed), rank 0 merges the shards' trees in the seeds' order, checks that every seed is there exactly
once, selects the rows from the merged trees as a one-process run does (`export.mode=paper` samples over all of
them), writes the outputs and pushes once. With a deterministic engine (transformers: per-request seeds, batch
invariant) the dataset and trees are those of a one-process run of the same config, byte for byte.

A rank that fails writes `rank-K.error` and exits (`error: rank K of N failed: ...`); the launcher then stops the
others (SIGTERM: they keep their completed work). Relaunching the same command resumes every shard from its own
cache and node log. A relaunch with another number of processes is refused (one line, exit 2) while the run is
unfinished: the shards belong to their count. A finished run is left as is whatever the count.
"""

from __future__ import annotations

import heapq
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from idea_mcts import __version__
from idea_mcts.config import EvolveConfig, to_yaml
from idea_mcts.data import Seed, load_seeds
from idea_mcts.distributed import World, all_gather, barrier, init_group, place_engines
from idea_mcts.errors import EngineError, UsageError
from idea_mcts.evolve_plan import check_output_dir
from idea_mcts.export import Exported, stream_dataset
from idea_mcts.judge_check import reward_terms
from idea_mcts.pipeline import EvolveRun
from idea_mcts.run_files import (
    CACHE_FILE,
    NODES_FILE,
    OUTPUTS,
    SHARDS_DIR,
    STATE_FILE,
    TREES_FILE,
    RunReport,
    TreeCounts,
    atomic_write,
    error_file,
    error_files,
    is_export_warning,
    iter_tree_records,
    now,
    read_run_file,
    shard_dir,
    shard_dirs,
    shard_worlds,
    write_run_file,
)
from idea_mcts.scoring import SCORERS, ScoreMeans
from idea_mcts.search import estimate
from idea_mcts.store import RunStore

logger = logging.getLogger(__name__)
T = TypeVar("T")


def failed_ranks(out: Path) -> list[str]:
    """`rank K failed: ...` for every rank that left an error file (read by the ranks the launcher stops)."""
    return [f"rank {int(p.stem.split('-')[1])} failed: {p.read_text().strip()}" for p in error_files(out)]


def agree(world: World, build: Callable[[], T]) -> T:
    """`build()` on every rank (the input checks), then every rank learns every rank's outcome: when one failed,
    all stop (no rank is left waiting for a dead one). Rank 0 says which failed and why, in one line (once when
    all failed alike); the others exit with the same code silently (an empty message)."""
    try:
        result, err = build(), None
    except (UsageError, EngineError) as exc:
        result, err = None, (type(exc).__name__, str(exc))
    errors = [(r, e) for r, e in enumerate(all_gather(err)) if e is not None]
    if not errors:
        return result  # type: ignore[return-value]
    kind = EngineError if all(e[0] == "EngineError" for _, e in errors) else UsageError
    if not world.is_main:
        raise kind("")
    if len(errors) == world.size and len({e[1] for _, e in errors}) == 1:
        raise kind(errors[0][1][1])
    raise kind("; ".join(f"rank {r} of {world.size} failed: {e[1]}" for r, e in errors))


def other_fingerprint(out: Path, fingerprint: str) -> bool:
    """Whether OUT (its merged state or one of its shards) holds a run of another config."""
    dirs = [out, *shard_dirs(out)] if out.is_dir() else []
    states = [RunStore(d).state() for d in dirs]
    return any(st is not None and st["fingerprint"] != fingerprint for st in states)


class ShardedEvolve:
    """One rank's part of a multi-process `evolve`. Construction validates (every rank, reading only); `execute`
    joins the process group, runs the rank's shard and, on rank 0, merges. Same surface as `EvolveRun`."""

    def __init__(self, cfg: EvolveConfig, world: World, command: str = "", overwrite: bool = False) -> None:
        self.cfg, self.world, self.command, self.overwrite = cfg, world, command, overwrite
        self.out = Path(cfg.output_dir)
        if cfg.max_calls is not None:
            raise UsageError("--max_calls is a budget for one process: it cannot be split across the "
                             f"{world.size} processes of this launch; run it in one process")
        self.seeds: list[Seed] = load_seeds(cfg.data)
        self.fingerprint = cfg.fingerprint()
        self.mode = self._decide()
        """`new`, `resume` or `finished` for the launch as a whole."""
        if self.mode != "finished":
            check_output_dir(self.out)  # a finished run is left as is, on a read-only filesystem too
        self.seeds: list[Seed] = load_seeds(cfg.data)
        self.shard: EvolveRun | None = None
        if self.mode != "finished":
            shard_cfg = replace(cfg, output_dir=str(shard_dir(self.out, world.rank, world.size)))
            self.shard = EvolveRun(shard_cfg, command=command, overwrite=overwrite,
                                   shard=(world.rank, world.size), engines=place_engines(cfg.engines, world))
            self.estimate = estimate(cfg.search, len(self.seeds), len(self.shard.scorer_roles),
                                     {r: getattr(cfg.roles, r).max_new_tokens for r in ("evolver", "responder",
                                                                                       "tagger")})
        else:
            self.estimate = read_run_file(self.out).get("estimate", {})
        self.store = RunStore(self.out)

    def _decide(self) -> str:
        """What this launch does with OUT (read-only; every rank decides the same from the same files)."""
        state = RunStore(self.out).state() if self.out.is_dir() else None
        finished = (state is not None and state.get("status") == "finished"
                    and all((self.out / n).exists() for n in OUTPUTS))
        if state is not None and state["fingerprint"] != self.fingerprint and not self.overwrite:
            raise UsageError(f"{self.out} holds a run of another config ({state['fingerprint']}, this one is "
                             f"{self.fingerprint}): use another --output_dir, or --overwrite to replace its outputs "
                             "(the request caches are kept)")
        if finished and not self.overwrite:
            return "finished"
        if self.overwrite:
            return "new"
        single = [n for n in (NODES_FILE, CACHE_FILE) if (self.out / n).exists()]
        if single:
            raise UsageError(f"{self.out} holds the unfinished run of a 1-process launch ({', '.join(single)}); "
                             "relaunch it in one process to resume it, or pass --overwrite to start over with "
                             f"{self.world.size}")
        other = shard_worlds(self.out) - {self.world.size}
        if other:
            n = max(other)
            raise UsageError(f"{self.out} holds the unfinished run of a {n}-process launch; relaunch it with {n} "
                             f"processes to resume it (the shards belong to their count), or pass --overwrite to "
                             f"start over with {self.world.size}")
        return "resume" if shard_dir(self.out, self.world.rank, self.world.size).is_dir() else "new"

    # -- the run -------------------------------------------------------------------------------------------
    def execute(self, progress: bool = True) -> dict[str, Any]:
        """Run this rank's shard; rank 0 merges once every rank is done. Returns the merged report on every
        rank. Raises what stopped this rank after writing it to OUT/shards/rank-K.error."""
        if self.mode == "finished":
            logger.info("%s already holds this finished run: nothing to do", self.out)
            return read_run_file(self.out)
        assert self.shard is not None
        started, t0 = now(), time.perf_counter()
        init_group()
        w = self.world
        if w.is_main:
            self._prepare()
        barrier()  # the shards dir is ready, stale error files and (with --overwrite) old outputs are gone
        try:
            logger.info("%s: %d of %d seeds -> %s", w.tag(), len(self.shard.seeds), len(self.seeds),
                        self.shard.out)
            report = self.shard.execute(progress=progress and w.is_main)
            status = {"rank": w.rank, "ok": True, "report": report}
        except KeyboardInterrupt:
            raise  # stopped by the launcher (another rank failed) or the user: completed work is kept
        except BaseException as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            atomic_write(error_file(self.out, w.rank), f"{type(exc).__name__}: {msg}\n"
                         if not isinstance(exc, UsageError | EngineError) else msg + "\n")
            raise
        statuses = self._meet(lambda: all_gather(status))
        if w.is_main:
            self._merge([s["report"] for s in statuses], started, time.perf_counter() - t0)
        self._meet(barrier)  # the merged outputs are in place for every rank (the recipe trains on them next)
        return read_run_file(self.out)

    def _meet(self, collective: Callable[[], T]) -> T:
        """A collective with the other ranks; when one of them died, say which and why (its error file)."""
        try:
            return collective()
        except RuntimeError as exc:  # torch.distributed's errors when a peer is gone
            why = "; ".join(failed_ranks(self.out)) or f"a rank left the launch ({str(exc).splitlines()[0]})"
            raise EngineError(f"stopped because {why}") from None

    def _prepare(self) -> None:
        """Rank 0, before any rank writes: clear stale error files; with --overwrite the merged outputs and the
        shards of other process counts (this count's shards are overwritten by their ranks, caches kept)."""
        (self.out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        for p in error_files(self.out):
            p.unlink()
        if self.overwrite:
            for name in (*OUTPUTS, NODES_FILE, STATE_FILE):
                path = self.out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            for n in shard_worlds(self.out) - {self.world.size}:
                for d in shard_dirs(self.out, n):
                    shutil.rmtree(d)

    # -- the merge (rank 0) --------------------------------------------------------------------------------
    def _merged_trees(self) -> Iterator[list[dict[str, Any]]]:
        """Every shard's trees in the seeds' order (each shard's file is in that order already)."""
        order = {s.seed_id: i for i, s in enumerate(self.seeds)}
        streams = [iter_tree_records(shard_dir(self.out, r, self.world.size) / TREES_FILE)
                   for r in range(self.world.size)]
        yield from heapq.merge(*streams, key=lambda tree: order.get(tree[0]["seed_id"], -1))

    def _merge(self, reports: list[dict[str, Any]], started: str, wall: float) -> None:
        out, tmp = self.out, self.out / (TREES_FILE + ".tmp")
        for r in range(self.world.size):
            if not (shard_dir(out, r, self.world.size) / TREES_FILE).is_file():
                raise EngineError(f"rank {r} finished, but rank 0 cannot see its trees under "
                                  f"{shard_dir(out, r, self.world.size)}: on several nodes, output_dir must be on a "
                                  "filesystem every node shares")
        seen: set[str] = set()
        seed_scores = ScoreMeans()
        counts = TreeCounts()
        wanted = {s.seed_id for s in self.seeds}
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for tree in self._merged_trees():
                    sid = tree[0]["seed_id"]
                    if sid in seen or sid not in wanted:
                        raise EngineError(f"merge: seed {sid!r} is {'in two shards' if sid in seen else 'not a seed'}"
                                          f" of this run")
                    seen.add(sid)
                    root = next(r for r in tree if r["depth"] == 0)
                    seed_scores.add(root)
                    counts.add(tree)
                    f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tree))
            if missing := wanted - seen:
                raise EngineError(f"merge: {len(missing)} seeds are in no shard (e.g. {sorted(missing)[0]!r})")
            exported = stream_dataset(out, tmp, self.cfg.export)
            tmp.replace(out / TREES_FILE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        missing = exported.seeds_without_rows(s.seed_id for s in self.seeds if s.seed_id in seen)
        report = self._report(reports, counts, exported, missing, seed_scores, started, wall)
        write_run_file(out, report)
        state = {"version": __version__, "fingerprint": self.fingerprint, "started_at": started,
                 "status": "finished", "finished_at": now(), "world_size": self.world.size}
        atomic_write(out / STATE_FILE, json.dumps(state, indent=2) + "\n")
        logger.info("merged %d shards: %d rows from %d nodes of %d seeds -> %s", self.world.size, exported.rows,
                    counts.nodes, counts.seeds, out)

    def _report(self, reports: list[dict[str, Any]], counts: TreeCounts, exported: Exported, missing: list[str],
                seed_scores: ScoreMeans, started: str, wall: float) -> dict[str, Any]:
        first = reports[0]

        def add(dicts: list[dict[str, Any]]) -> dict[str, Any]:
            total: dict[str, Any] = {}
            for d in dicts:
                for k, v in d.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        total[k] = round(total.get(k, 0) + v, 3) if isinstance(v, float) else total.get(k, 0) + v
                    else:
                        total.setdefault(k, v)
            return total

        def per_key(name: str) -> dict[str, Any]:
            keys = dict.fromkeys(k for r in reports for k in r[name])
            return {k: add([r[name][k] for r in reports if k in r[name]]) for k in keys}

        def summed(key: str) -> int:
            return sum(r["counts"].get(key, 0) for r in reports)

        usage = per_key("usage")
        names = [s.name for s in SCORERS if s.role in first["usage"]]  # the scorers that had a client
        statuses = {r["status"] for r in reports}
        return RunReport(
            command=self.command, status="finished" if statuses == {"finished"} else "; ".join(sorted(statuses)),
            resumed=any(r["resumed"] for r in reports), started_at=started, config=self.cfg.to_dict(),
            config_yaml=to_yaml(self.cfg), config_fingerprint=self.fingerprint, actions=first["actions"],
            estimate=self.estimate, trees=counts, rows=exported.rows, seeds_without_rows=missing,
            export_mode=self.cfg.export.mode, requests=summed("requests"), cached_requests=summed("cached_requests"),
            discarded_rewrites=summed("discarded_rewrites"), retried_rewrites=summed("retried_rewrites"),
            barren_expansions=summed("barren_expansions"), usage=usage, engines=per_key("engines"),
            trust_remote_code=first["trust_remote_code"], parse_failures=add([r["parse_failures"] for r in reports]),
            scoring_method=first["scoring_method"], judge_check=first["judge_check"],
            reward_terms=reward_terms((r for tree in iter_tree_records(self.out / TREES_FILE) for r in tree), names),
            filtered=add([r["filtered"] for r in reports]),
            seed_means=seed_scores.result(), row_means=exported.means.result(),
            wall_seconds=wall, search_seconds=max(r["search_seconds"] for r in reports),
            role_requests=sum(u.get("requests", 0) for u in usage.values()),
            completion_tokens=sum(u.get("completion_tokens", 0) for u in usage.values()),
            prompt_tokens=sum(u.get("prompt_tokens", 0) for u in usage.values()),
            warnings=sorted({w for r in reports for w in r["warnings"] if not is_export_warning(w)}),  # the shards'
            distributed={"world_size": self.world.size, "sharding": "sha256(seed_id) % world_size",
                         "shards": [{"rank": i, "dir": str(shard_dir(self.out, i, self.world.size)),
                                     "seeds": r["counts"]["seeds"], "nodes": r["counts"]["nodes"],
                                     "search_seconds": r["search_seconds"], "wall_seconds": r["wall_seconds"],
                                     "resumed": r["resumed"]} for i, r in enumerate(reports)]},
        ).as_dict()
