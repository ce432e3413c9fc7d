"""Resume cost: the wall time of a run vs re-running it from its request cache, measured in one run.

    python bench/resume_cost.py [--config configs/demo-transformers.yaml] [--seeds 6] [--docs docs/benchmarks.md] [...]

1. `idea-mcts evolve` into a fresh output dir (a new process, as a user runs it).
2. Resume: the state a crash leaves just before the outputs are written (outputs gone, state `running`), then the
   same command. The search replays every request from the cache: the most a resume adds to the work it has
   left (a resume after an earlier crash replays less, then does the unfinished work, which costs what it
   would have cost anyway). A resume loads a model only on its first cache miss: here, none.
3. The same command with `--overwrite`: old outputs go, the cache stays, the whole search replays; the models
   load first (before the old outputs are removed), as they do for any run that could destroy an output.

Checks that neither replay sent a request to an engine and both rebuilt the very same trees, then prints the
wall times (the whole process, and `execute` from run.json: the process minus interpreter start and imports)
and their ratios to the run (goal: resume <= 5%). `--docs PATH` writes the figures under a "## Resume" heading
of that Markdown file (that section only; other sections are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from idea_mcts.run_files import CACHE_FILE, DATASET_DIR, RUN_FILE, STATE_FILE, TREES_FILE


def evolve(args: list[str]) -> tuple[float, dict]:
    """Run `idea-mcts evolve` in a new process; (wall seconds, run.json)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "idea_mcts.cli", "--log_level", "WARNING", "evolve", "--no_progress",
                    *args], check=True)
    wall = time.perf_counter() - t0
    out = Path(args[args.index("--output_dir") + 1])
    return wall, json.loads((out / RUN_FILE).read_text())


def write_section(path: Path, section: str) -> None:
    """Replace the `## Resume` section of `path` (up to the next `## ` heading) or append it."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(r"^## Resume\n.*?(?=^## |\Z)", flags=re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo-transformers.yaml")
    parser.add_argument("--seeds", type=int, default=6, help="data.max_seeds (the demo's 20 take ~5 min on 2 cores)")
    parser.add_argument("--output_dir", default="outputs/bench-resume")
    parser.add_argument("--docs", help="write the figures into this Markdown file under '## Resume'")
    args, overrides = parser.parse_known_args()

    out = Path(args.output_dir)
    if out.exists():
        shutil.rmtree(out)
    frozen = out.with_name(out.name + ".yaml")  # the config as it is now: all three runs see the same one
    frozen.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.config, frozen)
    cmd = ["--config", str(frozen), "--output_dir", str(out), f"data.max_seeds={args.seeds}", *overrides]
    run_wall, run = evolve(cmd)
    trees = (out / TREES_FILE).read_bytes()

    shutil.rmtree(out / DATASET_DIR)  # a crash just before the outputs
    (out / TREES_FILE).unlink()
    (out / RUN_FILE).unlink()
    state = json.loads((out / STATE_FILE).read_text())
    state = {k: v for k, v in state.items() if k != "finished_at"}
    (out / STATE_FILE).write_text(json.dumps({**state, "status": "running"}))
    resume_wall, resume = evolve(cmd)
    assert (out / TREES_FILE).read_bytes() == trees, "the resume built other trees"
    overwrite_wall, overwrite = evolve([*cmd, "--overwrite"])
    assert (out / TREES_FILE).read_bytes() == trees, "the --overwrite replay built other trees"
    for name, report in (("resume", resume), ("--overwrite", overwrite)):
        sent = sum(e["requests"] for e in report["engines"].values())
        assert sent == 0, f"the {name} replay sent {sent} requests to an engine"

    figures = {
        "seeds": run["counts"]["seeds"], "nodes": run["counts"]["nodes"],
        "requests": sum(u["requests"] for u in run["usage"].values()),
        "cache_bytes": (out / CACHE_FILE).stat().st_size,
    }
    for name, wall, report in (("run", run_wall, run), ("resume", resume_wall, resume),
                               ("overwrite", overwrite_wall, overwrite)):
        figures[f"{name}_process_s"] = round(wall, 2)
        figures[f"{name}_execute_s"] = report["wall_seconds"]
        if name != "run":
            figures[f"{name}_process_ratio"] = round(wall / run_wall, 4)
            figures[f"{name}_execute_ratio"] = round(report["wall_seconds"] / run["wall_seconds"], 4)
    print(json.dumps(figures, indent=2))
    print(f"resume cost: a resume that replays the whole run from its cache takes {figures['resume_process_ratio']:.1%}"
          f" of the run's wall time ({figures['resume_execute_ratio']:.1%} without interpreter start and imports); "
          f"--overwrite replay {figures['overwrite_process_ratio']:.1%}; goal <= 5%")
    if args.docs:
        f = figures
        section = (
            "## Resume\n\n"
            f"`python bench/resume_cost.py --config {args.config} --seeds {args.seeds}"
            f"{' ' + ' '.join(overrides) if overrides else ''}` ({date.today()}, {platform.machine()}, "
            f"{os.cpu_count()} cores; {f['seeds']} seeds, {f['nodes']} nodes, {f['requests']} requests, request "
            f"cache {f['cache_bytes'] / 1e6:.2f} MB). One run, then two replays of it from its request cache; "
            "neither sends a request to the engine, both rebuild byte-identical trees.\n\n"
            "- **resume**: the state a crash leaves just before the outputs are written, then the same command: the "
            "most a resume adds to the work it has left. No model is loaded (engines load on the first cache "
            "miss).\n"
            "- **--overwrite**: the same command with `--overwrite` (old outputs removed, cache kept): the models "
            "load first, before anything of the old run is removed.\n\n"
            "| | wall time, process (s) | ratio to the run | `execute` only (s) | ratio |\n|---|---|---|---|---|\n"
            f"| run | {f['run_process_s']} | | {f['run_execute_s']} | |\n"
            f"| resume | {f['resume_process_s']} | {f['resume_process_ratio']:.1%} | {f['resume_execute_s']} | "
            f"{f['resume_execute_ratio']:.1%} |\n"
            f"| --overwrite | {f['overwrite_process_s']} | {f['overwrite_process_ratio']:.1%} | "
            f"{f['overwrite_execute_s']} | {f['overwrite_execute_ratio']:.1%} |\n\n"
            "Goal: resume <= 5% of the run. `execute` is run.json's `wall_seconds`: the process minus interpreter "
            "start and the CLI's imports (model loading, with its torch/transformers imports, included: most of "
            "the --overwrite replay). Measured with nothing else running on the machine.\n"
        )
        write_section(Path(args.docs), section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
