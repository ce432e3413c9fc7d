"""Role overlap: how busy each model server is during a search, pipelined vs waves.

    python bench/role_overlap.py [--seeds 40] [--waves_ref 16f92626] [--json PATH]

Four OpenAI-compatible servers, simulated on loopback by bench/sim_server.py (a model of a GPU: a fixed number
of slots, the other requests queue; a per-token service time), one per model of the paper's deployment:

    policy      evolver + responder (the paper's one instruct LLM rewrites and answers)
    quality     DEITA quality scorer (prefill-only: next-token logprobs)
    complexity  DEITA complexity scorer (prefill-only)
    tagger      InsTagger (generation)

The same search (the demo config's search settings as they are, `configs/demo-transformers.yaml`; the paper's
reward, InsTag diversity) runs twice against them, every role on `backend: openai`:

- **pipelined**: this checkout's search (idea_mcts/search.py + dispatch.py);
- **waves**: the landed wave search, the library as it was at `--waves_ref` (the last commit before the
  pipelined search), extracted with `git archive` and run in its own process: the real algorithm, not an
  emulation (every tree evolves, then every tree responds, then each scorer in turn, ...).

`--slots N` gives every server N slots (a GPU server batches far more than 4): then the search process's own
CPU per request can bound the servers' busy fraction (bench/client_cost.py). `--httpx` runs the pipelined search a
second time with the OpenAI engine's httpx transport instead of the client's aiohttp backend (the default):
requests/s of the default ÷ httpx, and each one's CPU ms per request.

Each server reports the seconds during which at least one request was in service (`busy`), divided by the
search's wall time (between a reset right before `search.run` and a read right after). Also printed: mean slots
in use (`occupancy`). Goals (issue 13): >= 0.8 pipelined, waves expected near 0.25.
The servers listen on 127.0.0.1 only; the bench stops them and itself when done (each search is bounded by
`--timeout`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WAVES_REF = "16f926260d797a9c51fa7060240566ef4aab7e00"
"""A commit of main with the wave search (its search, dispatch-free, unchanged up to a8b9384, the last one before the
pipelined search)."""

SERVERS = [
    # name, slots, prefill ms/token, decode ms/token: a GPU scaled down so that the search's own CPU time per
    # request (a few ms on this shared 2-core machine) stays small beside a request's service time, with the
    # delays chosen so that each server's total work (`slot_s`) is of the same order: a deployment sizes each
    # model's GPU share to its load, and a server with less work than the others cannot be busy all the time.
    {"name": "policy", "slots": 4, "prefill_ms": 0.1, "decode_ms": 10.0},
    # The judges' prompts are few-shot now (scored examples, ~4-8x the tokens of the zero-shot prompts these were
    # first set for: quality 5, complexity 10 ms/token); at the old delays the complexity server had 10x the
    # policy server's work (1,320 vs 121 slot-seconds at 40 seeds), so the prefill delays were scaled to match.
    # The waves reference (16f9262) sends the old, shorter prompts: compare its busy fractions, not its wall time.
    {"name": "quality", "slots": 4, "prefill_ms": 1.6, "decode_ms": 10.0},
    {"name": "complexity", "slots": 4, "prefill_ms": 1.0, "decode_ms": 10.0},
    {"name": "tagger", "slots": 4, "prefill_ms": 0.1, "decode_ms": 40.0},
]
ROLE_SERVER = {"evolver": "policy", "responder": "policy", "quality": "quality", "complexity": "complexity",
               "tagger": "tagger"}


def http(url: str, post: bool = False) -> dict[str, Any]:
    req = urllib.request.Request(url, data=b"{}" if post else None, method="POST" if post else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def search_child(ports: dict[str, int], n_seeds: int, threads: int | None, http_backend: str = "") -> dict[str, Any]:
    """Run the search of whichever idea_mcts is on the path (this checkout or the wave one) on the servers
    (`http_backend`: the OpenAI engine's HTTP transport, '' for the library's default)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from idea_mcts.actions import load_actions
    from idea_mcts.config import load_config
    from idea_mcts.data import Seed, load_seeds
    from idea_mcts.engines import EnginePool
    from idea_mcts.roles import RoleClient
    from idea_mcts.scoring import build_reward
    from idea_mcts.search import IdeaMCTS

    overrides = []
    for name, port in ports.items():
        overrides += [f"engines.{name}.backend=openai", f"engines.{name}.model={name}",
                      f"engines.{name}.base_url=http://127.0.0.1:{port}/v1", f"engines.{name}.max_concurrency=256"]
        if http_backend:
            overrides.append(f"engines.{name}.http_backend={http_backend}")
    overrides += [f"roles.{role}.engine={server}" for role, server in ROLE_SERVER.items()]
    from idea_mcts.config import RewardConfig

    if "novelty" in RewardConfig.__dataclass_fields__:
        # the paper's reward (InsTag diversity on the tagger server): the demo's novelty term needs an embedder
        overrides += ["reward.diversity=1.0", "reward.novelty=0.0", "roles.embedder.engine=null"]
    # the demo config of the library under test (cwd: this repo, or the waves reference's extracted tree)
    configs = Path.cwd() / "configs"
    demo = configs / "demo-transformers.yaml"
    cfg = load_config(demo if demo.exists() else configs / "demo.yaml", overrides)
    pool = EnginePool(cfg.engines)

    def client(role: str) -> RoleClient:
        return RoleClient(role, pool.get(ROLE_SERVER[role]), getattr(cfg.roles, role), cfg.search.seed)

    demo = load_seeds(cfg.data)
    seeds = [Seed(f"{s.seed_id}-{i // len(demo)}", s.instruction) for i, s in
             ((i, demo[i % len(demo)]) for i in range(n_seeds))]
    search = IdeaMCTS(cfg.search, load_actions(cfg.search.actions), client("evolver"), client("responder"),
                      build_reward(cfg, client))
    for name in ports:  # connect every client before the clock starts
        engine = pool.get(name)
        if threads:  # diagnosis: the calls the dispatcher keeps in flight on each server (each holds a thread)
            engine.max_in_flight = threads
    for port in ports.values():
        http(f"http://127.0.0.1:{port}/reset", post=True)
    t0, c0 = time.perf_counter(), time.process_time()
    trees = search.run(seeds)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = {name: http(f"http://127.0.0.1:{port}/stats") for name, port in ports.items()}
    pool.close()
    return {"search_s": wall, "search_cpu_s": cpu, "dispatch_threads": threads or "default",
            "http_backend": http_backend or "default", "requests_per_s": search.calls / wall,
            "cpu_ms_per_request": 1000 * cpu / max(1, search.calls),
            "nodes": sum(len(t.nodes) for t in trees), "requests": search.calls,
            "pipelined": hasattr(search, "dispatcher"),
            "peak_overlap": getattr(getattr(search, "dispatcher", None), "peak_overlap", None), "servers": stats}


def extract(ref: str, dest: Path) -> None:
    tar = subprocess.run(["git", "-C", str(REPO), "archive", ref, "idea_mcts", "configs"], capture_output=True,
                         check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar.stdout, check=True)


def run_mode(src: Path, ports: dict[str, int], n_seeds: int, timeout: int, threads: int = 0,
             http_backend: str = "") -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(ports), "--seeds", str(n_seeds),
           "--dispatch_threads", str(threads), *(["--http_backend", http_backend] if http_backend else [])]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=src)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode or line is None:
        raise RuntimeError(f"search in {src} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    res = json.loads(line[7:])
    if res["nodes"] <= n_seeds:  # it broke silently twice: the servers' replies no longer read as rewrites
        raise RuntimeError(f"search in {src}: {res['nodes']} nodes for {n_seeds} seeds, every evolution was "
                           "dropped (do bench/sim_server.py's replies still match the evolver's prompts?)")
    for s in res["servers"].values():
        s["busy_fraction"] = round(s["busy_s"] / res["search_s"], 3)
        s["occupancy"] = round(s["slot_s"] / res["search_s"], 2)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--waves_ref", default=WAVES_REF, help="git ref of the wave search ('' to skip it)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per search before it is stopped")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--dispatch_threads", type=int, default=0,
                    help="diagnosis: the pipelined search's dispatcher threads per server, i.e. its calls in flight "
                         "there (default: the engine's max_in_flight, its max_concurrency: 256 here)")
    ap.add_argument("--slots", type=int, default=0,
                    help="slots of every server (default: the 4 of SERVERS): a GPU server batches far more")
    ap.add_argument("--httpx", action="store_true",
                    help="also run the pipelined search with the OpenAI engine's httpx transport (the default is "
                         "the client's aiohttp backend): same servers, ratio of requests/s")
    ap.add_argument("--http_backend", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    servers = [{**s, "slots": args.slots or s["slots"]} for s in SERVERS]
    if args.child:
        print("RESULT " + json.dumps(search_child(json.loads(args.child), args.seeds, args.dispatch_threads,
                                                  args.http_backend)))
        return 0
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "sim_server.py"),
                               "--spec", json.dumps(servers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    results: dict[str, Any] = {"servers": servers, "role_server": ROLE_SERVER, "seeds": args.seeds}
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("PORTS "):
            raise RuntimeError("the simulated servers did not start")
        ports = json.loads(line[6:])
        results["pipelined"] = run_mode(REPO, ports, args.seeds, args.timeout, args.dispatch_threads)
        if args.httpx:
            results["pipelined_httpx"] = run_mode(REPO, ports, args.seeds, args.timeout, args.dispatch_threads,
                                                  "httpx")
            results["ratio_requests_per_s_default_vs_httpx"] = round(
                results["pipelined"]["requests_per_s"] / results["pipelined_httpx"]["requests_per_s"], 3)
        if args.waves_ref:
            with tempfile.TemporaryDirectory(prefix="waves-") as tmp:
                extract(args.waves_ref, Path(tmp))
                results["waves"] = run_mode(Path(tmp), ports, args.seeds, args.timeout)
                results["waves"]["ref"] = args.waves_ref
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    print(json.dumps(results, indent=2))
    print("| mode | search s | nodes | requests/s | CPU ms/request | "
          + " | ".join(f"{s['name']} busy (occ.)" for s in SERVERS) + " |")
    for mode in ("pipelined", "pipelined_httpx", "waves"):
        if mode in results:
            r = results[mode]
            cells = [f"{r['servers'][s['name']]['busy_fraction']} ({r['servers'][s['name']]['occupancy']})"
                     for s in SERVERS]
            rate = f"{r['requests_per_s']:.0f} | {r['cpu_ms_per_request']:.2f}" if "requests_per_s" in r else "- | -"
            print(f"| {mode} | {r['search_s']:.1f} | {r['nodes']} | {rate} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
