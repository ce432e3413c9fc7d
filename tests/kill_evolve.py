"""Run `idea-mcts evolve` and kill this process with SIGKILL at a deterministic point: a real `kill -9`, placed
where a signal from outside could only land by luck.

    python tests/kill_evolve.py POINT evolve --config ... --output_dir OUT ...

POINT is one of
- `line:N` — right after the N-th line of the request cache is durable (`RequestCache.put` returned);
- `line:N:KIND` — the same, counting only lines of one kind of call (`generate`, `logprobs`, `embed`, `score`);
- `final-write` — during the final write: the dataset's rows are saved in its temporary dir and trees.jsonl is
  written to its temporary file, neither put in place yet.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import idea_mcts.export as export
from idea_mcts.cli import main
from idea_mcts.store import RequestCache


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_line(n: int, kind: str | None) -> None:
    """SIGKILL once the `n`-th cache line (of `kind`, if given) is written."""
    put = RequestCache.put
    lock, seen = threading.Lock(), [0]

    def counted(self: RequestCache, call_kind: str, results: dict[str, Any]) -> dict[str, Any]:
        out = put(self, call_kind, results)
        if kind is None or call_kind == kind:
            with lock:
                seen[0] += 1
                if seen[0] >= n:
                    die()
        return out

    RequestCache.put = counted  # type: ignore[method-assign]


def kill_in_final_write() -> None:
    """SIGKILL inside `atomic_dir` for the dataset, after its rows are saved and before the swap."""
    atomic_dir = export.atomic_dir

    @contextmanager
    def dying(target: Path) -> Iterator[Path]:
        with atomic_dir(target) as tmp:
            yield tmp
            if target.name == export.DATASET_DIR:
                die()

    export.atomic_dir = dying  # type: ignore[assignment]


if __name__ == "__main__":
    point, *argv = sys.argv[1:]
    if point == "final-write":
        kill_in_final_write()
    elif point.startswith("line:"):
        _, count, *kind = point.split(":")
        kill_after_line(int(count), kind[0] if kind else None)
    else:
        sys.exit(f"unknown kill point {point!r}")
    sys.exit(main(argv))
