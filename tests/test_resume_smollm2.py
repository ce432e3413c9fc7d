"""kill -9, then the same command, on the real demo (issue 36): `configs/demo-transformers.yaml` with SmolLM2-135M
(the smallest real model) for every LLM role, MiniLM for the novelty term, killed right after its first LLM
answer is cached, in the middle of the run, and during the final write, then resumed, ends with the
uninterrupted run's dataset (every column, every score) and trees.jsonl, byte for byte, and the same node log and
request cache.

Before issue 36 the novelty term compared a node with every instruction scored before it, in the order the
answers came; a resumed run's cached answers come at once, in another order, so its rows carried other novelty
values (and rewards), and an embedding's last digits moved with the batch it was computed in.

Smallest config that failed before: 4 of the demo's seeds (11 nodes, 7 rows) and no judge check before the search
(it scores probe sets only: nothing of the dataset; ~110 s on this CPU). The kills are placed from inside the
process (tests/kill_evolve.py): a real SIGKILL, at the same point in every run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from idea_mcts.cli import main
from tests.runs import assert_same_run, cache_lines, state

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
KILLER = ROOT / "tests" / "kill_evolve.py"


def argv(out: Path) -> list[str]:
    return ["evolve", "--config", str(ROOT / "configs" / "demo-transformers.yaml"), "--output_dir", str(out),
            "--no_progress", "engines.default.model=embedded:smollm2", "data.max_seeds=4", "reward.check_judges=false",
            "roles.evolver.max_new_tokens=48", "roles.responder.max_new_tokens=48"]


def killed(point: str, out: Path) -> subprocess.Popen[str]:
    """`evolve` into `out` in a new process that SIGKILLs itself at `point` (tests/kill_evolve.py)."""
    return subprocess.Popen([sys.executable, str(KILLER), point, "--log_level", "WARNING", *argv(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish(proc: subprocess.Popen[str], out: Path) -> None:
    _, err = proc.communicate(timeout=1800)
    assert proc.returncode == -signal.SIGKILL, f"not killed: {err[-2000:]}"
    assert state(out)["status"] == "running" and not (out / "run.json").exists()


@pytest.fixture(scope="module")
def runs(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted run and three killed ones, not yet resumed. The run killed after its first LLM answer
    and the one killed during its final write go side by side with the uninterrupted run; the one killed in the
    middle (after half of the uninterrupted run's cache lines) starts once that has ended."""
    base = tmp_path_factory.mktemp("demo-resume")
    out = {name: base / name for name in ("reference", "first-answer", "mid-run", "final-write")}
    procs = {"first-answer": killed("line:1:generate", out["first-answer"]),
             "final-write": killed("final-write", out["final-write"])}
    try:
        assert main(argv(out["reference"])) == 0
        procs["mid-run"] = killed(f"line:{cache_lines(out['reference']) // 2}", out["mid-run"])
        for name, proc in procs.items():
            finish(proc, out[name])
    finally:  # a failed fixture leaves no process behind
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


@pytest.mark.parametrize("point", ["first-answer", "mid-run", "final-write"])
def test_demo_killed_then_resumed_is_the_uninterrupted_run(point: str, runs: dict[str, Path]) -> None:
    out, ref = runs[point], runs["reference"]
    before = cache_lines(out)
    assert 0 < before <= cache_lines(ref)
    if point == "final-write":  # killed with every request done, its outputs half written
        assert (out / "trees.jsonl.tmp").exists() and (out / ".dataset.tmp").exists()
    assert main(argv(out)) == 0
    rows, want = load_from_disk(str(out / "dataset")).to_list(), load_from_disk(str(ref / "dataset")).to_list()
    assert rows and "novelty" in rows[0] and len(rows) == len(want)
    for got_row, want_row in zip(rows, want, strict=True):  # the first difference by node and column, if any
        assert got_row == want_row, {k: (want_row[k], got_row[k]) for k in want_row if got_row[k] != want_row[k]}
    # every column and score of the dataset, trees.jsonl byte for byte, the node log (as a set: see
    # assert_same_run) and the request cache
    assert_same_run(out, ref, log_order=False)
    report = json.loads((out / "run.json").read_text())
    assert report["resumed"] and report["counts"]["cached_requests"] >= before
