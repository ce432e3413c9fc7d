"""The pipelined search: roles on different engines overlap, results do not depend on how requests were
batched, and the request cache survives a kill."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from datasets import load_from_disk

from idea_mcts.actions import GENERAL
from idea_mcts.config import RewardConfig, RoleConfig, SearchConfig
from idea_mcts.data import Seed
from idea_mcts.roles import RoleClient
from idea_mcts.scoring import Reward
from idea_mcts.search import IdeaMCTS
from tests.runs import evolve
from tests.scripted import RewritesOf, ScriptedEngine


class TimedEngine(ScriptedEngine):
    """A scripted engine whose every call takes a little while and is recorded as a (start, end) interval."""

    def __init__(self, name: str, **kw) -> None:
        super().__init__(**kw)
        self.model_id = name
        self.intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def _timed(self, call):
        start = time.monotonic()
        time.sleep(0.02)
        out = call()
        with self._lock:
            self.intervals.append((start, time.monotonic()))
        return out

    def _generate(self, requests):
        return self._timed(lambda: ScriptedEngine._generate(self, requests))

    def _next_token_logprobs(self, prompts, candidates, top_k):
        return self._timed(lambda: ScriptedEngine._next_token_logprobs(self, prompts, candidates, top_k))


def test_roles_on_two_engines_overlap():
    """Evolver and responder on one engine, the scorers on another: while one engine works on some trees'
    requests, the other works on other trees' (failed evolutions put the trees out of step)."""
    gen, judge = TimedEngine("gen", fail_evolve_every=3), TimedEngine("judge")
    cfg = SearchConfig(iterations=2, expand_width=3, max_depth=3, reward_threshold=100.0)
    client = lambda role, e: RoleClient(role, e, RoleConfig(), cfg.seed)  # noqa: E731
    reward = Reward(RewardConfig(), quality=client("quality", judge), complexity=client("complexity", judge),
                    tagger=client("tagger", judge))
    seeds = [Seed(f"s{i}", f"Task number {i}.") for i in range(6)]
    search = IdeaMCTS(cfg, GENERAL, client("evolver", gen), client("responder", gen), reward)
    trees = search.run(seeds)
    assert len(trees) == 6 and sum(len(t.nodes) for t in trees) > 6
    overlapping = [(a, b) for a in gen.intervals for b in judge.intervals if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, "no call of one engine ever ran while the other engine had a call in flight"


class HeldServer(ScriptedEngine):
    """A `concurrent` engine taking at most two calls at once, each held until `release` is set (or 5 s pass)."""

    concurrent = True
    max_in_flight = 2

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.inside = self.most_inside = self.timed_out = 0
        self._lock = threading.Lock()

    def _generate(self, requests):
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        released = self.release.wait(timeout=5.0)
        with self._lock:
            self.inside -= 1
            self.timed_out += not released
        return ScriptedEngine._generate(self, requests)


def test_a_saturated_server_does_not_hold_back_another_servers_calls():
    """Three calls held by a server that takes two at once, then a call to a second server: the second is
    answered while the first server's calls are still held (its answer releases them), and the first server never
    had more than its `max_in_flight` calls inside. (With one thread pool for all servers, sized like the first
    server's, the second call waited for a thread until the held calls timed out.)"""
    from idea_mcts.dispatch import Dispatcher

    held, free = HeldServer(), ScriptedEngine()
    free.concurrent = True
    slow = RoleClient("evolver", held, RoleConfig(), 0)
    judge = RoleClient("responder", free, RoleConfig(), 0)

    async def main() -> list[list[object]]:
        d = Dispatcher(max_threads=HeldServer.max_in_flight)

        async def to_held(i: int) -> list[object]:
            return await d.call(slow, "generate", [(f"Rewrite {i}.", f"k{i}")])

        async def to_free() -> list[object]:
            while held.inside < HeldServer.max_in_flight:  # the held server is full
                await asyncio.sleep(0.01)
            out = await d.call(judge, "generate", [("Answer this.", "j")])
            held.release.set()
            return out

        try:
            return await d.run_strands([to_held(0), to_held(1), to_held(2), to_free()])
        finally:
            d.close()

    out = asyncio.run(main())
    assert [g[0].text for g in out] == ["answer to: Rewrite 0.", "answer to: Rewrite 1.", "answer to: Rewrite 2.",
                                        "answer to: Answer this."]
    assert held.timed_out == 0, "the second server's call waited for the first server's held calls"
    assert held.most_inside == HeldServer.max_in_flight


def test_transformers_same_dataset_whatever_the_batching(tiny_model_dir, tmp_path):
    """The same seed and config give the same trees and dataset with micro-batches of 64 and of 3 rows, and
    with every tree at once or one tree at a time (batch-invariant engine, deterministic dispatch)."""
    wide, narrow = tmp_path / "wide", tmp_path / "narrow"
    assert evolve(wide, tiny_model_dir, "engines.default.max_batch_size=64", "data.max_seeds=3") == 0
    assert evolve(narrow, tiny_model_dir, "engines.default.max_batch_size=3", "search.max_live_trees=1",
                  "data.max_seeds=3") == 0
    assert (wide / "trees.jsonl").read_bytes() == (narrow / "trees.jsonl").read_bytes()
    assert load_from_disk(str(wide / "dataset")).to_list() == load_from_disk(str(narrow / "dataset")).to_list()


def test_overlap_root_reports_the_rewrites_of_roots_their_evaluation_made_terminal(tiny_model_dir, tmp_path):
    """`search.overlap_root` with a threshold below every reward: each root is terminal, so its first rewrites,
    sent beside its evaluation, are discarded. run.json counts them as sent and discarded; nothing else of theirs
    was sent (no response, no score), and the trees hold the roots alone. The loop in order sends no rewrite."""
    on, off = tmp_path / "on", tmp_path / "off"
    assert evolve(on, tiny_model_dir, "search.overlap_root=true", "search.reward_threshold=-1000") == 0
    assert evolve(off, tiny_model_dir, "search.reward_threshold=-1000") == 0
    got, want = (json.loads((out / "run.json").read_text()) for out in (on, off))
    assert (got["counts"]["discarded_rewrites"], want["counts"]["discarded_rewrites"]) == (2 * 2, 0)
    assert (got["usage"]["evolver"]["requests"], want["usage"]["evolver"]["requests"]) == (4, 0)
    assert got["counts"]["requests"] == want["counts"]["requests"] + 4
    others = [r for r in want["usage"] if r != "evolver"]
    assert [got["usage"][r]["requests"] for r in others] == [want["usage"][r]["requests"] for r in others]
    assert (on / "trees.jsonl").read_bytes() == (off / "trees.jsonl").read_bytes()
    assert got["counts"]["nodes"] == 2


def test_request_index_survives_kill_mid_transaction(tiny_model_dir, tmp_path):
    """kill -9 after a cache line is written and while its index transaction is open: the index has not seen the
    line; the resume rebuilds the index from the log and ends identical to an uninterrupted run."""
    import json
    import signal
    import sqlite3
    import subprocess
    import sys

    from idea_mcts.cli import main
    from idea_mcts.run_files import CACHE_FILE, INDEX_NAME
    from tests.runs import assert_same_run, evolve_argv

    ref, out = tmp_path / "ref", tmp_path / "out"
    assert evolve(ref, tiny_model_dir) == 0
    script = f"""
import os, signal, sys
from idea_mcts import store
real, n = store.LogIndex._insert, [0]
def dying(self, rows):
    n[0] += self.table == "results" and bool(rows)
    if n[0] == 5:  # the 5th engine call's line is in the log, its index transaction open: die here
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, rows)
store.LogIndex._insert = dying
from idea_mcts.cli import main
sys.exit(main({evolve_argv(out, tiny_model_dir)!r}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    logged = sum(len(json.loads(line)["results"]) for line in (out / CACHE_FILE).read_text().splitlines())
    db = sqlite3.connect(out / "cache" / INDEX_NAME)
    indexed = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    db.close()
    assert indexed < logged  # the last line's keys never reached the index
    assert main(evolve_argv(out, tiny_model_dir)) == 0
    # the 5th engine call is one of the two trees' root responses of one decode batch (after the judge check's
    # calls): on resume one root is answered by the cache and the other by the engine, so the trees' nodes are
    # logged in another order than the uninterrupted run's (as in the disk-full test); what they hold is the same
    assert_same_run(out, ref, log_order=False)
    keys = [k for line in (out / CACHE_FILE).read_text().splitlines() for k in json.loads(line)["results"]]
    assert len(keys) == len(set(keys))  # the line the index missed was found again, not re-issued


class OneSeedNeverEvolves(RewritesOf):
    """Every rewrite of the seed "Name a fruit." (and of nothing else) is empty: eliminated."""

    rewrite = ""


def test_run_json_reports_barren_expansions_and_seeds_without_rows(tmp_path, monkeypatch, tiny_model_dir):
    """A seed whose every rewrite is eliminated: each of its iterations is a barren Expansion (after
    `expand_attempts` rewrites), the seed has no row, and both are counted and warned about; the run ends 0."""
    import idea_mcts.engines

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": i, "instruction": t}) + "\n"
                             for i, t in (("s0", "Explain rain."), ("s1", "Name a fruit."), ("s2", "Write a haiku."))))
    monkeypatch.setattr(idea_mcts.engines, "build_engine", lambda cfg: OneSeedNeverEvolves())
    out = tmp_path / "out"
    assert evolve(out, tiny_model_dir, f"data.seeds={seeds}", "data.max_seeds=3", "search.iterations=2",
                  "search.expand_width=2", "search.expand_attempts=5", "reward.check_judges=false") == 0
    report = json.loads((out / "run.json").read_text())
    counts = report["counts"]
    assert counts["seeds_without_rows"] == 1 and counts["barren_expansions"] == 2
    assert report["parse_failures"]["evolver"] >= 2 * 5 and report["filtered"]["empty"] >= 2 * 5
    assert any("1 of 3 seeds have no row" in w and "s1" in w for w in report["warnings"])
    assert set(load_from_disk(str(out / "dataset"))["seed_id"]) == {"s0", "s2"}
    # the plan's upper bound counts every Expansion's attempts: 3 seeds x 2 iterations x (5 + 1 rollout step)
    assert report["estimate"]["calls"] >= 3 * 2 * (5 + 1)
