"""What every `eval/` script shares: the model under test, the engines, parsing and the checks made before any
work (so that bad input is one line on stderr and exit 2, with nothing written).

    model_args, engine_args, settings = parse_eval_args(argv, (EngineArguments, MTBenchConfig))
    model, adapter = check_model(model_args, "mtbench")      # resolved path (embedded / dir / Hub id), adapter
    judge = engine_config(engine_args.judge_engine, "judge_engine")

`--config configs/eval/<bench>.yaml` is a flat YAML read by TRL's `TrlParser`; `--flag value` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idea_mcts.errors import UsageError
from idea_mcts.run_files import EVAL_DIR, MERGED_DIR


@dataclass
class EvalModelArguments:
    """The model under test and where its results go (in eval/judge.py and eval/data_quality.py the model under
    test is the judge)."""

    model_name_or_path: str | None = None
    """Hub id, local model directory, or an embedded model (`embedded:qwen2.5-coder-0.5b-instruct`,
    `embedded:smollm2`, `embedded:gemma-3-270m`: shipped in PyPI packages, converted once)."""
    adapter_path: str | None = None
    """A PEFT LoRA adapter directory evaluated on top of `model_name_or_path` (base + adapter); the judged
    benchmarks serve its merge, made once under OUT/eval/merged/."""
    output_dir: str = "outputs/eval"
    """OUT: the results go to OUT/eval/<bench>.json and OUT/eval/<bench>.md (replaced on each run); nothing else
    in OUT is changed."""


@dataclass
class EngineArguments:
    """The engines of the judged benchmarks (MT-Bench, AlpacaEval-style): `EngineConfig` keys, as in an
    `idea-mcts evolve` config's `engines:` section."""

    answer_engine: dict[str, Any] | None = None
    """The engine the evaluated models (and a baseline or reference model) answer through; `model` is set per
    model. Default: transformers, float32, the machine's device."""
    judge_engine: dict[str, Any] | None = None
    """The judge model's engine. Default: `EngineConfig()`, the embedded Qwen2.5-Coder-0.5B-Instruct on
    transformers; a real judge: `{backend: openai, model: NAME, base_url: http://HOST:PORT/v1}`."""


def parse_eval_args(argv: list[str] | None, sections: tuple[type, ...]) -> tuple[Any, ...]:
    """(EvalModelArguments, *sections) from `--config FILE` and flags; a missing config file, an unknown key or a
    value of the wrong type -> UsageError."""
    import sys

    from idea_mcts.recipe_checks import check_types, parse_config_args, usage_parser

    args = parse_config_args(usage_parser((EvalModelArguments, *sections)), sys.argv[1:] if argv is None else argv)
    for section in args:
        check_types(section)
        nested = getattr(section, "judge", None)  # a judged benchmark's JudgeConfig (a mapping in the YAML)
        if nested is not None and not isinstance(nested, dict | str):
            check_types(nested)
    return args


def check_model(args: EvalModelArguments, bench: str) -> tuple[str, str | None]:
    """The model's local path or Hub id (an `embedded:` name prepared, a directory with its config.json, a Hub id
    that can be reached or is cached) and the adapter (a PEFT dir that fits the model), after checking that OUT
    and the bench's result files can be written. UsageError before any work."""
    from idea_mcts.evaluation.results import check_result_paths
    from idea_mcts.recipe_checks import check_base_model
    from idea_mcts.training import check_adapter_fits

    check_result_paths(args.output_dir, bench)
    path = check_base_model(args.model_name_or_path)
    if args.adapter_path is not None:
        if not Path(args.adapter_path).is_dir():
            raise UsageError(f"adapter_path {args.adapter_path} is not a directory")
        check_adapter_fits(args.adapter_path, path)
    return path, args.adapter_path


def answer_engine_config(engine_args: EngineArguments, model: str, **over: Any) -> Any:
    """The `EngineConfig` a model answers through: transformers, float32, `auto` device unless `answer_engine`
    says otherwise; `model` set."""
    from idea_mcts.evaluation.serving import engine_config

    base = {"backend": "transformers", "dtype": "float32", "device": "auto", **(engine_args.answer_engine or {})}
    return engine_config(base, "answer_engine", model=model, **over)


def merged_root(out_dir: str | Path) -> Path:
    """Where the judged benchmarks keep merged adapters: OUT/eval/merged/<hash of adapter and base>."""
    return Path(out_dir) / EVAL_DIR / MERGED_DIR
