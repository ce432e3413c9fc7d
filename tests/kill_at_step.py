"""Run a recipe script (recipes/full.py or sft.py) with a trainer callback that signals this process right after
the checkpoint of step N is saved: a real `kill -9` (or Ctrl-C, or SIGTERM) mid-training at a deterministic point.

    python tests/kill_at_step.py recipes/sft.py N[:SIGNAL] --config ...     # SIGNAL: KILL (default), INT, TERM
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from idea_mcts.recipe import run_main


class SignalAfterSave(TrainerCallback):
    def __init__(self, step: int, signum: int = signal.SIGKILL) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


if __name__ == "__main__":
    # SIGINT as a terminal's Ctrl-C gives it: a suite started in the background (`make test &`) passes SIGINT on
    # ignored, and Python then keeps ignoring it (a SIGINT'd training ran to its end and exited 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    script, at, *argv = sys.argv[1:]
    step, _, name = at.partition(":")
    spec = importlib.util.spec_from_file_location("recipe_script", Path(script))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    callback = SignalAfterSave(int(step), getattr(signal, f"SIG{name or 'KILL'}"))
    sys.exit(run_main(lambda a: module.main(a, callbacks=[callback]), argv))
