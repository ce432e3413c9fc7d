"""Evolve throughput with 1 and 2 processes on the tiny random model: the per-process scaling of a sharded run.

    PYTHONPATH=$PWD python bench/evolve_scaling.py [--seeds 20] [--json bench/results/evolve-scaling.json]

Three real runs of `idea-mcts evolve` on the same config, each in fresh processes, one after the other:

- `1 process x 1 thread`   (OMP_NUM_THREADS=1): the unit the scaling is measured against;
- `1 process x 2 threads`  (OMP_NUM_THREADS=2): the best one process does with the machine's 2 cores;
- `2 processes x 1 thread` (`torchrun --nproc_per_node 2`, gloo): each rank searches its shard of the seeds.

Figures per run: the CPU seconds of the whole process tree (launcher and ranks); the process wall time (launch
to exit: interpreter start, imports, model load, judge check, search, merge); the search throughput (nodes /
search seconds; with 2 processes the slowest shard's search seconds, as run.json `search_seconds`). Ratios: 2
processes over each 1-process run. The 2-process trees are checked byte-identical to the 1-process ones. One run
each: on a shared machine the wall-clock ratios move with the load; `cpu_bound_2_free_cores` (2 x the 1-process
CPU seconds / the 2-process CPU seconds) is what two free cores would give if the work spread perfectly, a bound
the machine's other jobs move much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from idea_mcts.run_files import RUN_FILE, TREES_FILE  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402


def tiny_args(model: Path, seeds: int) -> list[str]:
    """The tests' tiny search (tests/runs.py), a little deeper: every scorer, float scores, every node exported."""
    return [f"engines.default.model={model}", "engines.default.max_model_len=512", f"data.max_seeds={seeds}",
            "search.iterations=3", "search.expand_width=2", "search.max_depth=2", "roles.evolver.max_new_tokens=16",
            "roles.responder.max_new_tokens=16", "roles.tagger.max_new_tokens=8", "export.mode=all",
            "reward.top_logprobs=1000"]


def run(procs: int, threads: int, out: Path, args: list[str]) -> dict[str, Any]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ACCELERATE_"))},
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    cli = ["-m", "idea_mcts.cli", "evolve", "--output_dir", str(out), "--no_progress", *args]
    cmd = [sys.executable, *cli] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *cli]
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"{procs} x {threads}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    report = json.loads((out / RUN_FILE).read_text())
    nodes = report["counts"]["nodes"]
    return {"processes": procs, "threads_per_process": threads, "process_wall_s": round(wall, 2),
            "search_s": report["search_seconds"], "nodes": nodes, "requests": report["counts"]["requests"],
            "search_nodes_per_s": round(nodes / report["search_seconds"], 2),
            "end_to_end_nodes_per_s": round(nodes / wall, 2), "cpu_s": round(cpu, 2),
            "shards": [{k: s[k] for k in ("rank", "seeds", "nodes", "search_seconds", "wall_seconds")}
                       for s in report.get("distributed", {}).get("shards", [])]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="evolve-scaling-") as tmp:
        base = Path(tmp)
        model = build_tiny_model(base / "tiny")
        args = tiny_args(model, a.seeds)
        runs = {name: run(n, t, base / name, args) for name, n, t in
                (("1x1", 1, 1), ("1x2", 1, 2), ("2x1", 2, 1))}
        identical = all((base / n / TREES_FILE).read_bytes() == (base / "1x1" / TREES_FILE).read_bytes()
                        for n in ("1x2", "2x1"))
    two = runs["2x1"]
    ratios = {f"2x1_over_{k}": {"search": round(two["search_nodes_per_s"] / r["search_nodes_per_s"], 2),
                                "end_to_end": round(two["end_to_end_nodes_per_s"] / r["end_to_end_nodes_per_s"], 2)}
              for k, r in runs.items() if k != "2x1"}
    # what 2 processes would give on 2 cores of their own: the CPU work of each run spread over the cores it
    # can use (1 for the 1x1 run; 2 for 2x1), a bound that the machine's other jobs do not move
    ratios["2x1_over_1x1"]["cpu_bound_2_free_cores"] = round(2 * runs["1x1"]["cpu_s"] / two["cpu_s"], 2)
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "seeds": a.seeds,
              "settings": args[1:], "runs": runs, "ratios": ratios, "identical_trees": identical}
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
