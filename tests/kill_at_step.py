"""Run a recipe script (recipes/full.py or sft.py) with a trainer callback that kills this process with SIGKILL
right after the checkpoint of step N is saved: a real `kill -9` mid-training at a deterministic point.

    python tests/kill_at_step.py recipes/sft.py N --config ...
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


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    script, step, *argv = sys.argv[1:]
    spec = importlib.util.spec_from_file_location("recipe_script", Path(script))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.exit(run_main(lambda a: module.main(a, callbacks=[KillAfterSave(int(step))]), argv))
