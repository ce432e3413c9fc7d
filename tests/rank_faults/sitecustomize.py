"""Fault injection for the multi-process tests: put this directory on PYTHONPATH and set
IDEA_MCTS_RANK_FAULT=RANK:KIND:N; the process of that rank (torchrun's RANK) then, after its node log's N-th
write (a completed evaluation wave):

    kill    kills itself with SIGKILL (a real `kill -9` of one rank mid-run, at a deterministic point)
    enospc  fails the next write with "No space left on device" (a rank that fails with an error)

Python imports `sitecustomize` at start-up from sys.path, so the real `idea-mcts evolve` under torchrun runs with
no change to its code.
"""

from __future__ import annotations

import errno
import os
import signal

_spec = os.environ.get("IDEA_MCTS_RANK_FAULT", "")
if _spec and _spec.split(":")[0] == os.environ.get("RANK"):
    _kind, _after = _spec.split(":")[1], int(_spec.split(":")[2])
    from idea_mcts.store import RunStore

    _log_nodes = RunStore.log_nodes
    _writes = [0]

    def _faulty_log_nodes(self, nodes):  # noqa: ANN001, ANN202
        if _writes[0] >= _after:
            if _kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.out / "nodes.jsonl"))
        _log_nodes(self, nodes)
        _writes[0] += 1

    RunStore.log_nodes = _faulty_log_nodes
