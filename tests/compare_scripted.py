"""Run recipes/compare.py with the scripted engine (tests/scripted.py) behind every engine whose model directory's
name starts with `scripted`: the evolve arms and the judge are scripted (deterministic, instant, MCTS+ methods
included), while SFT, IFEval and the win-rate answers run the real tiny model.

    python tests/compare_scripted.py --config CONFIG [flags]
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import idea_mcts.engines
from idea_mcts.engines.base import Generation, GenerationRequest
from idea_mcts.recipe import run_main
from tests.scripted import ScriptedEngine, _text

ROOT = Path(__file__).resolve().parents[1]


class ScriptedJudge(ScriptedEngine):
    """A judge that always prefers the first output shown (`[[A]]`): every pair judged in both orders is a tie."""

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        out = [Generation(text="Output (a) is better. [[A]]", completion_tokens=8) if "[[A]]" in _text(r.prompt)
               else g for r, g in zip(requests, super()._generate(requests), strict=True)]
        return out


def build_engine(cfg: Any, _real: Any = idea_mcts.engines.build_engine) -> Any:
    name = Path(str(cfg.model)).name
    if name.startswith("scripted-judge"):
        return ScriptedJudge()
    if name.startswith("scripted"):
        return ScriptedEngine(fail_evolve_every=5)
    return _real(cfg)


if __name__ == "__main__":
    idea_mcts.engines.build_engine = build_engine
    spec = importlib.util.spec_from_file_location("recipe_compare", ROOT / "recipes" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.exit(run_main(module.main, sys.argv[1:]))
