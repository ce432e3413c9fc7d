"""Memory and per-node overhead of a whole `evolve` run as a function of the number of seeds, on an instant engine.

    python bench/search_memory.py [--seeds 1000 10000 100000] [--json PATH] [--tracemalloc] [--concurrent]

Each N runs in its own subprocess (so peaks do not mix) through the real `EvolveRun` path: seeds read from a
JSONL file, the request cache and node log under an output dir, finished trees streamed to trees.jsonl and
dropped, the dataset exported by streaming. The engine (bench/instant_engine.py) answers at once, so the search's
wall time is the search's own overhead: dispatcher, trees, request cache (SQLite index + JSONL), node log.

Search settings (small, stated): 1 iteration, 2 children, max_depth 1 (nodes deeper than 1 are terminal: one
rollout step), so 4 nodes and 19 requests per seed (root, 2 children, 1 rollout node: 3 evolutions, 4 responses,
4 x 3 scorer requests: quality, complexity, tagger); `max_live_trees` 1024 (the default). Goals (issue 13): peak
RSS < 1 GiB at 100k seeds, overhead < 1 ms per node. `--tracemalloc` prints the top allocation sites still alive
at the end of the search (slow: use it on the smaller N). `--concurrent` treats the engine as a server (requests
sent as strands wait, no barriers). `--bare` runs `IdeaMCTS` alone (no request cache, node log or export): the
difference to the full run is the store's share of the overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from idea_mcts.run_files import NODES_FILE

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ["search.iterations=1", "search.expand_width=2", "search.max_depth=1",
            # the paper's reward (InsTag diversity, no embedder: the demo's novelty term would load MiniLM)
            "reward.diversity=1.0", "reward.novelty=0.0", "roles.embedder.engine=null"]


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class Sampler(threading.Thread):
    """Peak RSS per phase, sampled every 20 ms (ru_maxrss gives the process's overall peak)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.phase = "setup"
        self.peaks: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rss = _rss_mib()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            self.stop.wait(0.02)


def child(n: int, seeds_file: Path, work: Path, tracemalloc_on: bool, concurrent: bool, bare: bool
          ) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from instant_engine import InstantEngine

    import idea_mcts.pipeline as pipeline
    from idea_mcts.config import load_config

    rss_imports = _rss_mib()
    sampler = Sampler()
    sampler.start()
    marks: dict[str, float] = {}
    base = pipeline.IdeaMCTS

    class Timed(base):  # type: ignore[misc, valid-type]
        """The library's search, with the phase and RSS marks of this bench around `run`."""

        def run(self, seeds):  # type: ignore[no-untyped-def]
            marks["rss_search_start"] = _rss_mib()
            marks["cpu_search_start"] = time.process_time()
            sampler.phase = "search"
            if tracemalloc_on:
                import tracemalloc

                tracemalloc.start(8)
            try:
                return super().run(seeds)
            finally:
                if tracemalloc_on:
                    snap = tracemalloc.take_snapshot()
                    tracemalloc.stop()
                    marks["tracemalloc_top"] = [str(s) for s in snap.statistics("traceback")[:12]]  # type: ignore
                marks["rss_search_end"] = _rss_mib()
                marks["cpu_search_s"] = time.process_time() - marks["cpu_search_start"]
                sampler.phase = "export"

    pipeline.IdeaMCTS = Timed  # type: ignore[misc]
    fake_model = work / "model"  # an existing dir: check_models passes; the engine below is never built
    fake_model.mkdir(exist_ok=True)
    (fake_model / "config.json").write_text("{}")
    backend = "openai" if concurrent else "transformers"
    cfg = load_config(REPO / "configs" / "demo-transformers.yaml", [
        f"output_dir={work / 'out'}", f"data.seeds={seeds_file}", f"data.max_seeds={n}",
        f"engines.default.model={fake_model}", f"engines.default.backend={backend}",
        "engines.default.base_url=http://127.0.0.1:9/v1", *SETTINGS])
    t0 = time.perf_counter()
    engine = InstantEngine()
    if bare:  # the search alone: IdeaMCTS on the engine, no request cache, no node log, trees counted and dropped
        from idea_mcts.actions import load_actions
        from idea_mcts.data import load_seeds
        from idea_mcts.roles import RoleClient
        from idea_mcts.scoring import build_reward

        engine.concurrent = concurrent

        def client(role: str) -> RoleClient:
            return RoleClient(role, engine, getattr(cfg.roles, role), cfg.search.seed)

        counted = {"nodes": 0}

        def on_tree(_: int, tree: Any) -> None:
            counted["nodes"] += len(tree.nodes)

        seeds = load_seeds(cfg.data)
        search = Timed(cfg.search, load_actions(cfg.search.actions), client("evolver"), client("responder"),
                       build_reward(cfg, client), on_tree=on_tree, keep_trees=False)
        t_setup = time.perf_counter() - t0
        search.run(seeds)
        report = {"counts": {"nodes": counted["nodes"], "requests": search.calls, "rows": 0},
                  "search_seconds": search.seconds}
    else:
        run = pipeline.EvolveRun(cfg)
        run.pool._engines["default"] = engine  # the pool hands out the instant engine for the config's key
        t_setup = time.perf_counter() - t0
        report = run.execute(progress=False)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    nodes = report["counts"]["nodes"]
    search_s = report["search_seconds"]
    engine_s = engine.stats.seconds
    out = work / "out"
    sizes = {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    return {
        "seeds": n, "nodes": nodes, "requests": report["counts"]["requests"], "rows": report["counts"]["rows"],
        "setup_s": round(t_setup, 2), "search_s": round(search_s, 2), "engine_s": round(engine_s, 2),
        "export_s": round(wall - t_setup - search_s, 2), "wall_s": round(wall, 2),
        "overhead_ms_per_node": round(1000 * search_s / nodes, 3),
        "cpu_ms_per_node": round(1000 * marks["cpu_search_s"] / nodes, 3),
        "overhead_ms_per_node_minus_engine": round(1000 * (search_s - engine_s) / nodes, 3),
        "rss_after_imports_mib": round(rss_imports, 1),
        "rss_search_start_mib": round(marks["rss_search_start"], 1),
        "rss_search_end_mib": round(marks["rss_search_end"], 1),
        "peak_rss_search_mib": round(sampler.peaks.get("search", 0.0), 1),
        "peak_rss_export_mib": round(sampler.peaks.get("export", 0.0), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "output_bytes": sum(sizes.values()),
        "largest_files": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:4]),
        "backend_path": "concurrent (server-like)" if concurrent else "barriers (one call at a time)",
        "path": "IdeaMCTS alone (no store)" if bare else "EvolveRun (request cache, node log, trees.jsonl, export)",
        "tracemalloc_top": marks.get("tracemalloc_top"),
    }


_watched: dict[str, float] = {}


def watch(cmd: list[str], env: dict[str, str], timeout: int, work: Path) -> subprocess.CompletedProcess | None:
    """Run the child, sampling its RSS every 0.5 s (so a run stopped by `timeout` still gives its peak so far);
    None when it was stopped."""
    import psutil

    out, err = work / "stdout", work / "stderr"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, text=True)
        ps = psutil.Process(proc.pid)
        _watched.clear()
        deadline = time.perf_counter() + timeout
        while proc.poll() is None:
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                return None
            with contextlib.suppress(psutil.Error):
                _watched["peak_rss_mib"] = max(_watched.get("peak_rss_mib", 0.0), ps.memory_info().rss / 2**20)
            time.sleep(0.5)
    return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), err.read_text())


def partial_result(n: int, work: Path, timeout: int, t0: float) -> dict[str, Any]:
    """What a run stopped by the timeout got through: nodes in its node log, its peak RSS as sampled."""
    log = work / "out" / NODES_FILE
    nodes = 0
    if log.exists():
        with open(log, "rb") as f:
            nodes = sum(1 for _ in f)
    return {"seeds": n, "stopped_after_s": timeout, "nodes_logged": nodes, "seeds_done_about": nodes // 4,
            "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mib_sampled": round(_watched.get("peak_rss_mib", 0.0), 1)}


def write_seeds(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{i}", "instruction": f"Write a short poem about the number {i} and "
                                                              f"what it means to a child learning to count."}) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--concurrent", action="store_true")
    ap.add_argument("--bare", action="store_true", help="the search alone: no request cache, node log or export")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per N before it is stopped")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seeds_file", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = child(args.child, Path(args.seeds_file), Path(args.work), args.tracemalloc, args.concurrent, args.bare)
        print("RESULT " + json.dumps(res))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="search-memory-") as tmp:
        seeds_file = Path(tmp) / "seeds.jsonl"
        write_seeds(seeds_file, max(args.seeds))
        for n in args.seeds:
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf"), "HF_HUB_OFFLINE": "1",
                   "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            cmd = [sys.executable, __file__, "--child", str(n), "--seeds_file", str(seeds_file), "--work", str(work)]
            cmd += ["--tracemalloc"] * args.tracemalloc + ["--concurrent"] * args.concurrent
            cmd += ["--bare"] * args.bare
            t0 = time.perf_counter()
            p = watch(cmd, env, args.timeout, work)
            if p is None:
                continue_with = partial_result(n, work, args.timeout, t0)
                print(json.dumps(continue_with), file=sys.stderr)
                results.append(continue_with)
                continue
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if p.returncode or line is None:
                print(f"{n} seeds failed (exit {p.returncode}):\n{p.stderr[-3000:]}", file=sys.stderr)
                return 1
            res = json.loads(line[7:])
            res["process_s"] = round(time.perf_counter() - t0, 2)
            results.append(res)
            print(json.dumps(res, indent=2), flush=True)
            import shutil

            shutil.rmtree(work, ignore_errors=True)  # disk: a 100k run writes a few hundred MB
    print("| seeds | nodes | requests | search s | overhead ms/node (wall) | CPU ms/node | peak RSS search MiB "
          "| peak RSS MiB |")
    for r in results:
        if "nodes" in r:
            print(f"| {r['seeds']} | {r['nodes']} | {r['requests']} | {r['search_s']} | {r['overhead_ms_per_node']} | "
                  f"{r['cpu_ms_per_node']} | {r['peak_rss_search_mib']} | {r['peak_rss_mib']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
